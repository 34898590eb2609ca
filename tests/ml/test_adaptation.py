"""``adapt``: batch-norm statistics of the new area, D4-consistent pseudo-labels, SimSiam, the
lineage in the model, and ``simulate --adapt``."""

import json

import numpy as np
import pytest
import rasterio
import torch
from pydantic import ValidationError
from torch import nn

from rscrisis.config import AdaptConfig, FinetuneConfig, PredictConfig, SimulateConfig
from rscrisis.io.tileset import MASK_IGNORE
from rscrisis.loop.simulate import simulate
from rscrisis.ml.adaptation import adabn, adapt, pseudo_labels
from rscrisis.ml.data import TileDataset, load_tiles
from rscrisis.ml.model import load_model, read_meta
from rscrisis.ml.tta import D4, apply_view
from rscrisis.predict.tiles import predict_tiles


@pytest.fixture(scope="module")
def darker_tiles(tiny_tiles, tmp_path_factory):
    """The tiny tile set with its imagery darkened and flattened: another sensor, another light."""
    import shutil

    out = tmp_path_factory.mktemp("dark") / "tiles"
    shutil.copytree(tiny_tiles, out)
    for path in (out / "images").glob("*.tif"):
        path.chmod(0o644)
        with rasterio.open(path, "r+") as ds:
            ds.write((ds.read().astype(np.float32) * 0.5 + 20).astype(np.uint8))
    return out


def _dataset(tiles, meta):
    table = load_tiles([tiles], need_masks=False)
    frame = table.frame
    return TileDataset(frame.image_path, [None] * len(frame), meta.mean, meta.std, table.dtype)


def test_config_rejects_no_method_and_repeats_and_orders_them():
    with pytest.raises(ValidationError):
        AdaptConfig(methods=())
    with pytest.raises(ValidationError):
        AdaptConfig(methods=("adabn", "adabn"))
    cfg = AdaptConfig(methods=("selftrain", "adabn", "simsiam"))
    assert cfg.ordered == ("simsiam", "adabn", "selftrain")


def test_adabn_moves_the_statistics_to_the_new_area_and_nothing_else(tiny_model, darker_tiles):
    model, meta = load_model(tiny_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = _dataset(darker_tiles, meta)
    info = adabn(model, data, passes=4, seed=0, device=torch.device("cpu"))
    assert info["layers"] > 10 and info["images"] == 4 * len(data)
    after = model.state_dict()
    for k, v in before.items():
        if "running" in k or "num_batches" in k:
            continue
        assert torch.equal(v, after[k]), f"{k} changed"  # weights and biases untouched
    # the first batch norm's running mean is now the mean of its inputs on the new tiles
    # (averaged over the D4 views, which adabn draws at random)
    seen = []
    hook = model.unet.encoder.bn1.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        x = torch.stack([data[i][0] for i in range(len(data))])
        for view in D4:
            model(apply_view(x, view))
    hook.remove()
    actual = torch.stack([s.mean((0, 2, 3)) for s in seen]).mean(0)
    spread = torch.stack([s.std((0, 2, 3)) for s in seen]).mean(0)
    new_mean = after["unet.encoder.bn1.running_mean"]
    old_mean = before["unet.encoder.bn1.running_mean"]
    assert ((new_mean - actual).abs() / spread).mean() < 0.1
    assert ((old_mean - actual).abs() / spread).mean() > 3 * (
        (new_mean - actual).abs() / spread
    ).mean()


class _Threshold(nn.Module):
    """A per-pixel model (so D4-equivariant): probability sigmoid(8 x band 1)."""

    threshold = 0.5

    def forward(self, x, valid=None):
        logits = 8 * x[:, :1]
        return logits, torch.zeros(len(x)), torch.zeros(len(x), 4)


class _Stack:
    def __init__(self, x, valid):
        self.x, self.valid = x, valid

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], torch.zeros(self.x.shape[-2:], dtype=torch.uint8), self.valid[i]


def test_pseudo_labels_keep_only_confident_agreeing_pixels():
    x = torch.linspace(-1, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[1, :4] = False
    masks, info = pseudo_labels(
        _Threshold(), _Stack(x, valid), AdaptConfig(confidence=0.9), torch.device("cpu"), None
    )
    prob = torch.sigmoid(8 * x[:, 0]).numpy()
    for m, p, v in zip(masks, prob, valid.numpy(), strict=True):
        assert set(np.unique(m)) <= {0, 1, MASK_IGNORE}
        assert (m[~v] == MASK_IGNORE).all()
        np.testing.assert_array_equal(m == 1, (p >= 0.9) & v)
        np.testing.assert_array_equal(m == 0, (p <= 0.1) & v)
    assert 0 < info["pixels_labelled"] < 1


def test_pseudo_labels_ignore_pixels_where_the_views_disagree():
    class Oriented(_Threshold):  # sees only the top half: rotations disagree
        def forward(self, x, valid=None):
            logits = torch.full_like(x[:, :1], -8.0)
            logits[..., : x.shape[-2] // 2, :] = 8.0
            return logits, torch.zeros(len(x)), torch.zeros(len(x), 4)

    x = torch.zeros(1, 3, 16, 16)
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    masks, _ = pseudo_labels(Oriented(), _Stack(x, valid), AdaptConfig(), torch.device("cpu"), None)
    assert (masks[0] == MASK_IGNORE).all()


def test_adapt_cli_runs_every_method_records_its_lineage_and_predicts(
    invoke, tiny_model, tiny_tiles, darker_tiles, tmp_path
):
    from rscrisis.io.tileset import read_index, write_subset

    # 4 tiles of the new area; the model's 12 other pretraining tiles are replayed
    new = write_subset(darker_tiles, tmp_path / "new", sorted(read_index(darker_tiles).tile_id)[:4])
    out = tmp_path / "adapted.safetensors"
    r = invoke(
        "adapt", str(tiny_model), str(new), "--out", str(out),
        "--method", "selftrain", "--method", "adabn", "--method", "simsiam",
        "--steps", "3", "--batch-size", "2", "--threads", "1", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert [m["method"] for m in result["methods"]] == ["simsiam", "adabn", "selftrain"]
    assert result["replay_tiles"] == 12  # pretraining tiles, less those being adapted to
    lineage = read_meta(out).training["adaptation"][-1]
    assert lineage["tiles"] == 4 and lineage["from_model"] == str(tiny_model)
    assert [m["method"] for m in lineage["methods"]] == ["simsiam", "adabn", "selftrain"]
    assert read_meta(out).training["pretraining_tilesets"]  # finetune still replays them
    assert (tmp_path / "adapted.adapt.json").exists()
    # the head and decoder are usable: predict writes finite IoU estimates
    pred = predict_tiles(out, [darker_tiles], tmp_path / "pred", config=PredictConfig(threads=1))
    assert pred.tiles == 16
    import geopandas as gpd

    scores = gpd.read_file(tmp_path / "pred" / "scores.gpkg")
    assert np.isfinite(scores.pred_iou).all() and scores.pred_iou.between(0, 1).all()


def test_adapt_refuses_an_existing_output_and_a_bad_name(invoke, tiny_model, tiny_tiles, tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"x")
    r = invoke("adapt", str(tiny_model), str(tiny_tiles), "--out", str(out))
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = invoke("adapt", str(tiny_model), str(tiny_tiles), "--out", str(tmp_path / "m.pt"))
    assert r.exit_code == 2 and ".safetensors" in r.output


def test_adabn_only_keeps_every_weight_and_drops_a_stale_calibrator(
    tiny_model, darker_tiles, tmp_path
):
    from rscrisis.ml.model import save_model

    model, meta = load_model(tiny_model)
    sample = {"tile_id": "t", "pred_iou": 0.5, "max_prob": 0.9, "mean_prob": 0.1}
    meta.training = {
        **meta.training,
        "calibration_samples": [{**sample, "building_fraction": 0.1, "true_iou": 0.2}],
        "iou_calibrator": {"kind": "whatever"},
    }
    calibrated = tmp_path / "calibrated.safetensors"
    save_model(model, meta, calibrated)
    out = tmp_path / "bn.safetensors"
    adapt(calibrated, [darker_tiles], out, config=AdaptConfig(methods=("adabn",), threads=1))
    training = read_meta(out).training
    assert "iou_calibrator" not in training and "calibration_samples" not in training
    assert training["adaptation"][-1]["calibration_samples_dropped"] == 1
    a, _ = load_model(tiny_model)
    b, _ = load_model(out)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(
        torch.equal(sa[k], sb[k]) for k in sa if "running" not in k and "num_batches" not in k
    )
    assert not torch.equal(sa["unet.encoder.bn1.running_mean"], sb["unet.encoder.bn1.running_mean"])


def test_simulate_with_adapt_starts_every_curve_from_the_adapted_model(
    tiny_model, tiny_tiles, tmp_path
):
    config = SimulateConfig(
        formulas=("random",),
        rounds=1,
        batch=1,
        seed_batch=1,
        seeds=(0,),
        test_fraction=0.25,
        block_tiles=2,
        ceiling=False,
        finetune=FinetuneConfig(
            steps=2, batch_size=4, threads=1, val_fraction=0.0, replay_norm="source"
        ),
        adapt=AdaptConfig(methods=("adabn",)),
    )
    out = tmp_path / "sim"
    simulate(tiny_model, tiny_tiles, out, config=config)
    adapted = out / "work" / "adapted" / "model.safetensors"
    assert read_meta(adapted).training["adaptation"][0]["methods"][0]["method"] == "adabn"
    state = json.loads((out / "state.json").read_text())
    assert state["chains"]["-1/start"]["model"] == str(adapted)
    seed_model = state["chains"]["0/random"]["model"]
    assert read_meta(seed_model).training["finetune"]["from_model"] == str(adapted)
    assert load_model(seed_model)[0].has_source_norm  # the next round can replay with them too


def test_adabn_weight_blends_the_new_statistics_with_the_models_own(tiny_model, darker_tiles):
    full, meta = load_model(tiny_model)
    half, _ = load_model(tiny_model)
    own = {k: v.clone() for k, v in full.state_dict().items() if "bn1.running" in k}
    data = _dataset(darker_tiles, meta)
    adabn(full, data, passes=1, seed=3, device=torch.device("cpu"))
    info = adabn(half, data, passes=1, seed=3, device=torch.device("cpu"), weight=0.5)
    assert info["weight"] == 0.5
    for k, was in own.items():
        new = full.state_dict()[k]
        assert not torch.allclose(new, was)
        torch.testing.assert_close(half.state_dict()[k], (new + was) / 2)


def test_adabn_keeps_the_source_statistics_in_the_model_file(tiny_model, darker_tiles, tmp_path):
    """The statistics before adaptation travel in the model file (``source_norm.*``), once:
    a second adaptation keeps the first source; a model without them loads as before."""
    plain, _ = load_model(tiny_model)
    assert not plain.has_source_norm
    out = tmp_path / "bn.safetensors"
    adapt(tiny_model, [darker_tiles], out, config=AdaptConfig(methods=("adabn",), threads=1))
    adapted, _ = load_model(out)
    assert adapted.has_source_norm
    layers = plain.norm_layers()
    with adapted.source_statistics():
        for name, m in adapted.norm_layers().items():
            assert torch.equal(m.running_mean, layers[name].running_mean), name
            assert torch.equal(m.running_var, layers[name].running_var), name
    bn1 = adapted.unet.encoder.bn1
    assert not torch.equal(bn1.running_mean, plain.unet.encoder.bn1.running_mean)  # restored
    twice = tmp_path / "bn2.safetensors"
    adapt(out, [darker_tiles], twice, config=AdaptConfig(methods=("adabn",), threads=1))
    again, _ = load_model(twice)
    kept = again.state_dict()["source_norm.unet__encoder__bn1__mean"]
    assert torch.equal(kept, plain.unet.encoder.bn1.running_mean)
    plain.load_state_dict(adapted.state_dict())  # an adapted state into a plain model
    assert plain.has_source_norm


@pytest.mark.slow
def test_replayed_pretraining_tiles_are_normalised_with_the_source_statistics(
    tiny_model, tiny_tiles, darker_tiles
):
    """finetune --replay-norm source: in every step the new tiles see the adapted statistics
    and the replayed pretraining tiles the source ones; other replayed tiles (earlier batches,
    in the new area) the adapted ones. The default uses the adapted statistics for all."""
    from rscrisis.ml.data import replay_dataset
    from rscrisis.ml.training import StepPlan, fit_steps

    model, meta = load_model(tiny_model)
    source_mean = model.unet.encoder.bn1.running_mean.clone()
    adabn(model, _dataset(darker_tiles, meta), passes=1, seed=0, device=torch.device("cpu"))
    adapted_mean = model.unet.encoder.bn1.running_mean.clone()
    table = load_tiles([darker_tiles], need_masks=True)
    f = table.frame
    new = TileDataset(f.image_path, f.mask_path, meta.mean, meta.std, table.dtype)
    both = replay_dataset([tiny_tiles, darker_tiles], meta, set(), 0, source_domain=[tiny_tiles])
    assert both.source_domain.sum() == len(f) and (~both.source_domain).sum() == len(f)

    def run(replay_norm: str) -> list[tuple[int, str]]:
        seen: list[tuple[int, str]] = []

        def record(m, inputs):
            if m.training:
                return
            which = "source" if torch.equal(m.running_mean, source_mean) else "adapted"
            if torch.equal(m.running_mean, adapted_mean) or which == "source":
                seen.append((len(inputs[0]), which))

        hook = model.unet.encoder.bn1.register_forward_pre_hook(record)
        plan = StepPlan(steps=3, batch_size=6, lr=1e-5, replay_ratio=2.0, replay_norm=replay_norm)
        fit_steps(model, meta, new, np.ones(len(f), bool), plan, replay=both)
        hook.remove()
        return seen

    seen = run("source")
    steps, step = [], []
    for n, which in seen:  # a step: the adapted part (6 tiles when no source tile was drawn),
        step.append((n, which))  # then the source part
        if sum(k for k, _ in step) == 6:
            steps.append(step)
            step = []
    assert len(steps) == 3 and not step
    for s in steps:
        assert s[0][1] == "adapted" and s[0][0] >= 2  # the new tiles and new-area replays
        assert [w for _, w in s[1:]] in ([], ["source"])
    assert any(len(s) == 2 for s in steps)
    assert torch.equal(model.unet.encoder.bn1.running_mean, adapted_mean)
    assert run("current") == [(6, "adapted")] * 3
