"""Real (tiny) training runs: outputs, resume, determinism, transfer with frozen encoder."""

import csv
import json

import pytest
import torch

from rscrisis.config import TrainConfig
from rscrisis.errors import InputError, OutputExistsError
from rscrisis.ml.model import load_model, read_meta
from rscrisis.ml.training import batch_tile_iou, train

pytestmark = pytest.mark.slow
TINY = {"epochs": 2, "batch_size": 4, "val_fraction": 0.25, "block_tiles": 1, "threads": 1}


def test_batch_tile_iou_conventions():
    pred = torch.zeros(3, 2, 2, dtype=torch.bool)
    pred[1, 0, 0] = True
    mask = torch.zeros(3, 2, 2, dtype=torch.uint8)
    mask[1, 0, :] = 1
    valid = torch.ones(3, 2, 2, dtype=torch.bool)
    valid[2] = False
    iou = batch_tile_iou(pred, mask, valid)
    assert iou[0] == 1.0 and iou[1] == pytest.approx(0.5) and torch.isnan(iou[2])


def test_trained_model_files_and_metadata(tiny_model, tiny_tiles):
    meta = read_meta(tiny_model)
    assert meta.in_channels == 3 and meta.tile_size == 64 and meta.dtype == "uint8"
    assert len(meta.history) == 2 and "val_iou" in meta.history[0]
    assert meta.training["tilesets"] == [str(tiny_tiles)]
    assert meta.gsd_m == pytest.approx(0.3, rel=1e-3)  # ground metres: UTM's k = 0.99986
    history = tiny_model.with_name("tiny.history.csv")
    rows = list(csv.DictReader(history.open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    summary = json.loads(tiny_model.with_name("tiny.train.json").read_text())
    assert summary["config"]["epochs"] == 2 and summary["result"]["train_tiles"] > 0
    assert not tiny_model.with_name("tiny.state.pt").exists()


def test_refuses_existing_model(tiny_model, tiny_tiles):
    with pytest.raises(OutputExistsError, match="--overwrite"):
        train([tiny_tiles], tiny_model, config=TrainConfig(**TINY))
    with pytest.raises(InputError, match="nothing to resume"):
        train([tiny_tiles], tiny_model.with_name("other.safetensors"), resume=True)


def test_same_seed_same_weights(tiny_tiles, tmp_path):
    cfg = TrainConfig(**{**TINY, "epochs": 1})
    train([tiny_tiles], tmp_path / "a.safetensors", config=cfg)
    train([tiny_tiles], tmp_path / "b.safetensors", config=cfg)
    a, _ = load_model(tmp_path / "a.safetensors")
    b, _ = load_model(tmp_path / "b.safetensors")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), k


def test_resume_after_interruption_is_bit_identical(tiny_tiles, tmp_path):
    """Killed in epoch 2 and resumed, training ends exactly where an uninterrupted run does:
    same weights, same losses (every random stream is restored: torch, the data order, NumPy,
    Python and the augmentation pipeline's own)."""
    cfg = TrainConfig(**{**TINY, "epochs": 3})
    whole = train([tiny_tiles], tmp_path / "whole.safetensors", config=cfg)
    out = tmp_path / "r.safetensors"

    def kill_in_epoch_2(step, total, desc=""):
        if desc.startswith("epoch 2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train([tiny_tiles], out, config=cfg, progress=kill_in_epoch_2)
    assert out.with_name("r.state.pt").exists()
    assert not out.exists()  # no final-named model while a run is unfinished
    with pytest.raises(OutputExistsError, match="--resume"):
        train([tiny_tiles], out, config=cfg)
    result = train([tiny_tiles], out, config=cfg, resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    for a, b in zip(whole.history, result.history, strict=True):
        assert a["seg_loss"] == b["seg_loss"] and a["val_iou"] == b["val_iou"], (a, b)
    resumed, _ = load_model(out)
    uninterrupted, _ = load_model(tmp_path / "whole.safetensors")
    for (k, x), (_, y) in zip(
        uninterrupted.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), k
    assert sorted(p.name for p in tmp_path.glob("r*")) == [
        "r.history.csv",
        "r.history.png",
        "r.safetensors",
        "r.train.json",
    ]
    assert not list(tmp_path.glob(".r*"))


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip at all", b"PK\x03\x04" + bytes(200)],
    ids=["empty", "garbage", "broken-zip"],
)
def test_resume_from_a_foreign_state_file_says_so(tiny_tiles, tmp_path, content):
    out = tmp_path / "r.safetensors"
    out.with_name("r.state.pt").write_bytes(content)
    with pytest.raises(InputError, match="not a training state") as info:
        train([tiny_tiles], out, config=TrainConfig(**TINY), resume=True)
    assert "weights_only" not in str(info.value)


def test_resume_from_a_pickle_with_code_refuses_it(tiny_tiles, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    out = tmp_path / "r.safetensors"
    torch.save({"model": Evil()}, out.with_name("r.state.pt"))
    with pytest.raises(InputError, match="cannot be read safely"):
        train([tiny_tiles], out, config=TrainConfig(**TINY), resume=True)


def test_init_with_frozen_encoder_keeps_encoder(tiny_model, tiny_tiles, tmp_path):
    out = tmp_path / "ft.safetensors"
    train(
        [tiny_tiles],
        out,
        init=tiny_model,
        config=TrainConfig(**{**TINY, "epochs": 1, "freeze_encoder": True}),
    )
    before, bmeta = load_model(tiny_model)
    after, ameta = load_model(out)
    for (k, x), (_, y) in zip(
        before.unet.encoder.state_dict().items(),
        after.unet.encoder.state_dict().items(),
        strict=True,
    ):
        assert torch.equal(x, y), k
    changed = any(
        not torch.equal(x, y)
        for x, y in zip(
            before.unet.decoder.state_dict().values(),
            after.unet.decoder.state_dict().values(),
            strict=True,
        )
    )
    assert changed
    assert ameta.mean == bmeta.mean  # normalisation is inherited
    assert len(ameta.history) == len(bmeta.history) + 1
    assert ameta.training["init"] == str(tiny_model)


@pytest.mark.parametrize("transfer", ["encoder", "encoder+decoder"])
def test_transfer_keeps_only_the_transferred_part(tiny_model, tiny_tiles, tmp_path, transfer):
    """--transfer encoder(+decoder) --freeze-transferred: transferred weights arrive unchanged
    and stay so; everything else starts fresh (it no longer equals the starting model)."""
    from rscrisis.ml.training import transferred_parts

    out = tmp_path / "t.safetensors"
    cfg = {**TINY, "epochs": 1, "transfer": transfer, "freeze_transferred": True}
    train([tiny_tiles], out, init=tiny_model, config=TrainConfig(**cfg))
    before, _ = load_model(tiny_model)
    after, _ = load_model(out)
    for src, dst in zip(
        transferred_parts(before, transfer), transferred_parts(after, transfer), strict=True
    ):
        for (k, x), y in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
            if "num_batches_tracked" not in k:
                assert torch.equal(x, y), k
    head_before = before.unet.segmentation_head.state_dict()
    head_after = after.unet.segmentation_head.state_dict()
    assert any(not torch.equal(head_before[k], head_after[k]) for k in head_before)
    last_block = before.unet.decoder.blocks[-1].state_dict()
    fresh_block = after.unet.decoder.blocks[-1].state_dict()
    assert any(not torch.equal(last_block[k], fresh_block[k]) for k in last_block)


def test_schedule_warms_up_decays_and_replans():
    from rscrisis.ml.training import WarmupCosine

    plan = WarmupCosine(100)
    assert plan(0) == pytest.approx(0.1) and plan(9) == pytest.approx(1.0)
    assert plan(100) == pytest.approx(0.01) and plan(99) < 0.015
    assert plan(50) < plan(20)
    plan.replan(40)  # a budget shows only 40 steps fit: decay must end by then
    assert plan(40) == pytest.approx(0.01) and plan(39) < 0.03
    assert plan.warmup == 4


def test_time_budget_replans_and_stops(tiny_tiles, tmp_path):
    cfg = TrainConfig(**{**TINY, "epochs": 50, "max_minutes": 0.05})
    result = train([tiny_tiles], tmp_path / "b.safetensors", config=cfg)
    # 50 epochs cannot fit in 3 s: the plan shrinks and the run ends early (no timing asserted)
    assert 1 <= result.planned_epochs < 50
    assert 1 <= result.epochs_run <= result.planned_epochs
