"""The prediction engine: ONNX Runtime gives the eager model's outputs, and the choice rules."""

import json
import logging

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch

from rscrisis.config import PredictConfig, SceneConfig
from rscrisis.errors import InputError, ProcessingError
from rscrisis.ml import device as devices
from rscrisis.ml import engine as engines
from rscrisis.ml.engine import onnx_runner, onnxruntime_missing, select_engine
from rscrisis.ml.model import ENCODERS, BuildingSegmenter, load_model, read_meta
from rscrisis.ml.tta import D4, forward_views

needs_ort = pytest.mark.skipif(onnxruntime_missing() is not None, reason="no ONNX Runtime")
CPU = torch.device("cpu")


@pytest.fixture
def no_native_bf16(monkeypatch):
    """Every machine behaves like an AVX2 laptop, where auto picks ONNX Runtime (for jobs of
    any size here: the tests' are small). The engine and ``precision auto`` both ask
    rscrisis.ml.device, so a machine with AVX512-BF16 or AMX is hidden from both."""
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(engines, "ONNX_MIN_WINDOWS", 0)


@pytest.fixture
def model(tiny_model):
    m, _ = load_model(tiny_model, "cpu")
    return m.eval()


@needs_ort
def test_onnx_runner_gives_the_eager_outputs_at_any_size_and_under_every_view(model):
    runner = onnx_runner(model, threads=1)
    g = torch.Generator().manual_seed(3)
    for shape, views in [((1, 3, 64, 64), D4), ((5, 3, 96, 160), (0, 2, 4, 6))]:
        x = torch.randn(*shape, generator=g)
        valid = torch.rand(shape[0], shape[2], shape[3], generator=g) > 0.2
        with torch.no_grad():
            want = forward_views(model, x, valid, None, views)
        got = forward_views(runner, x, valid, None, views)
        for name in ("prob", "iou", "embedding", "spread", "agreement"):
            a, b = getattr(want, name), getattr(got, name)
            assert b.shape == a.shape, name
            np.testing.assert_allclose(b.numpy(), a.numpy(), atol=2e-4, err_msg=name)
        # masked pixels change the IoU head's pooled input: valid reaches the graph
        ones = torch.ones_like(valid)
        assert not torch.allclose(runner(x, ones.unsqueeze(1))[1], got.iou)


@needs_ort
def test_a_runner_is_reused_until_the_weights_change(model):
    first = onnx_runner(model, threads=1)
    assert onnx_runner(model, threads=1) is first
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = first(x)[0]
    with torch.no_grad():
        model.unet.segmentation_head[0].bias.add_(1.5)  # in place, as an optimiser would
    second = onnx_runner(model, threads=1)
    assert second is not first
    np.testing.assert_allclose(second(x)[0].numpy(), before.numpy() + 1.5, atol=1e-4)


@needs_ort
def test_auto_picks_onnxruntime_only_where_it_is_the_faster_exact_engine(model, monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    chosen = select_engine(model, CPU, None, "auto")
    assert chosen.name == "onnxruntime" and chosen.amp is None and not chosen.channels_last
    # bf16 autocast asked for, MC dropout, or a CPU with native bf16: PyTorch
    assert select_engine(model, CPU, torch.bfloat16, "auto").name == "torch"
    assert select_engine(model, CPU, None, "auto", mc_dropout=True).name == "torch"
    # a job too small to repay the export runs in PyTorch, unless asked for by name
    few = engines.ONNX_MIN_WINDOWS - 1
    assert select_engine(model, CPU, None, "auto", windows=few).name == "torch"
    assert select_engine(model, CPU, None, "auto", windows=few + 1).name == "onnxruntime"
    assert select_engine(model, CPU, None, "onnxruntime", windows=1).name == "onnxruntime"
    # PyTorch folds the batch norms of large bf16 jobs on a CPU, and only there
    assert select_engine(model, CPU, None, "torch").model is model
    bf16 = select_engine(model, CPU, torch.bfloat16, "torch")
    assert bf16.model is engines.folded_model(model) and bf16.model is not model
    small = engines.FOLD_MIN_WINDOWS - 1  # too few windows to repay the fold
    assert select_engine(model, CPU, torch.bfloat16, "torch", windows=small).model is model
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    eager = select_engine(model, CPU, torch.bfloat16, "auto", channels_last=True)
    assert (eager.name, eager.amp, eager.channels_last) == ("torch", torch.bfloat16, True)
    # asked for by name, it is used even there
    assert select_engine(model, CPU, None, "onnxruntime").name == "onnxruntime"


def test_onnxruntime_by_name_says_why_it_cannot_run(model, monkeypatch):
    with pytest.raises(InputError, match="mc-samples"):
        select_engine(model, CPU, None, "onnxruntime", mc_dropout=True)
    with pytest.raises(InputError, match="on cuda"):
        select_engine(model, torch.device("cuda"), None, "onnxruntime")
    with pytest.raises(InputError, match="bf16"):
        select_engine(model, CPU, torch.bfloat16, "onnxruntime")
    monkeypatch.setattr(engines, "onnxruntime_missing", lambda: "onnxruntime not installed")
    with pytest.raises(InputError, match="not installed") as e:
        select_engine(model, CPU, None, "onnxruntime")
    assert "pip install" in str(e.value)
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert select_engine(model, CPU, None, "auto").name == "torch"


@needs_ort
def test_a_failed_export_falls_back_under_auto_and_fails_by_name(
    model, no_native_bf16, monkeypatch, caplog
):
    def broken(_model):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(engines, "export_onnx", broken)
    with caplog.at_level(logging.WARNING, logger="rscrisis.ml.engine"):
        assert select_engine(model, CPU, None, "auto").model is model
    assert "unsupported operator" in caplog.text
    with pytest.raises(ProcessingError, match="unsupported operator"):
        select_engine(model, CPU, None, "onnxruntime")


@needs_ort
def test_an_export_that_disagrees_with_the_model_is_refused(model, tiny_model, monkeypatch):
    torch.manual_seed(1)
    other = BuildingSegmenter(read_meta(tiny_model).encoder, 3).eval()  # other weights
    export = engines.export_onnx
    monkeypatch.setattr(engines, "export_onnx", lambda _m: export(other))
    with pytest.raises(ProcessingError, match="differs from the model"):
        onnx_runner(model, threads=1)


@needs_ort
def test_scene_and_tile_predictions_are_the_same_with_either_engine(
    tiny_model, tiny_tiles, no_native_bf16, tmp_path
):
    from rscrisis.predict.scene import predict_scene
    from rscrisis.predict.tiles import predict_tiles

    scene = sorted((tiny_tiles / "images").glob("*.tif"))[0]
    maps = {}
    for name in ("torch", "auto"):
        cfg = SceneConfig(window=64, overlap=16, batch_size=2, engine=name, threads=1)
        out = tmp_path / f"map-{name}"
        predict_scene(tiny_model, scene, out, config=cfg)
        manifest = json.loads((out / "predict.json").read_text())
        assert manifest["engine"] == ("torch" if name == "torch" else "onnxruntime")
        with rasterio.open(out / "probability.tif") as ds:
            maps[name] = ds.read(1).astype(int)
    assert np.abs(maps["torch"] - maps["auto"]).max() <= 1  # one step of 1/254 at most

    scores = {}
    for name in ("torch", "onnxruntime"):
        out = tmp_path / f"pred-{name}"
        predict_tiles(tiny_model, [tiny_tiles], out, config=PredictConfig(engine=name, threads=1))
        assert json.loads((out / "predict.json").read_text())["engine"] == name
        scores[name] = gpd.read_file(out / "scores.gpkg", layer="scores")
        scores[name + "-emb"] = np.load(out / "embeddings.npy")
    for col in ("pred_iou", "mean_entropy", "soft_iou", "building_fraction"):
        np.testing.assert_allclose(scores["onnxruntime"][col], scores["torch"][col], atol=1e-4)
    np.testing.assert_allclose(scores["onnxruntime-emb"], scores["torch-emb"], atol=1e-4)


def _with_running_statistics(model):
    """Batch norms with statistics of their own, so that folding them changes the weights."""
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_folded_batch_norms_give_the_models_outputs_for_every_encoder(encoder):
    torch.manual_seed(0)
    model = _with_running_statistics(BuildingSegmenter(encoder, 4))
    model.enable_mc_dropout()  # a mode of the caller's, which folding must leave as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = engines.folded_model(model)
    assert folded is not model
    norms = [m for m in folded.modules() if type(m) is torch.nn.BatchNorm2d]
    if encoder.startswith("resnet"):
        assert not norms  # every one of them folded, the encoder's and the decoder's
    x = torch.randn(3, 4, 64, 96, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(3, 1, 64, 96, dtype=torch.bool)
    valid[2, :, 40:] = False
    model.eval()
    with torch.no_grad():
        want, got = model(x, valid), folded(x, valid)
    for name, a, b in zip(engines.OUTPUTS, want, got, strict=True):
        scale = max(1.0, float(a.abs().max()))  # an untrained resnet34's logits reach 1e3
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-4 * scale, err_msg=name)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert any(type(m) is torch.nn.BatchNorm2d for m in model.modules())


def test_a_folded_model_is_kept_until_the_weights_change(model):
    folded = engines.folded_model(model)
    assert engines.folded_model(model) is folded
    assert engines.folded_model(model, channels_last=True) is not folded
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = folded(x)[0]
    with torch.no_grad():
        model.unet.segmentation_head[0].bias.add_(1.5)  # in place, as an optimiser would
    again = engines.folded_model(model)
    assert again is not folded
    with torch.no_grad():
        np.testing.assert_allclose(again(x)[0].numpy(), before.numpy() + 1.5, atol=1e-4)


def test_a_fold_that_disagrees_with_the_model_is_not_used(model, tiny_model, monkeypatch):
    torch.manual_seed(1)
    other = BuildingSegmenter(read_meta(tiny_model).encoder, 3).eval()  # other weights
    monkeypatch.setattr(engines, "_fold", lambda _m: other)
    assert engines.folded_model(model) is model
    assert select_engine(model, CPU, torch.bfloat16, "torch").model is model


def test_a_bf16_scene_map_is_the_same_with_folded_batch_norms(
    tiny_model, tiny_tiles, monkeypatch, tmp_path
):
    from rscrisis.predict.scene import predict_scene

    folds = []
    fold = engines.folded_model
    monkeypatch.setattr(engines, "folded_model", lambda *a: folds.append(1) or fold(*a))
    scene = sorted((tiny_tiles / "images").glob("*.tif"))[0]
    maps = {}
    for name, least in (("plain", 10**9), ("folded", 0)):
        monkeypatch.setattr(engines, "FOLD_MIN_WINDOWS", least)
        cfg = SceneConfig(window=64, overlap=16, batch_size=2, engine="torch", threads=1,
                          precision="bf16", channels_last=True)  # fmt: skip
        predict_scene(tiny_model, scene, tmp_path / name, config=cfg)
        assert json.loads((tmp_path / name / "predict.json").read_text())["engine"] == "torch"
        with rasterio.open(tmp_path / name / "probability.tif") as ds:
            maps[name] = ds.read(1).astype(int)
        assert len(folds) == (name == "folded")
    # bf16 rounds the folded weights and activations differently: a few grey levels at most
    diff = np.abs(maps["plain"] - maps["folded"])
    assert diff.max() <= 6 and diff.mean() < 1


def test_a_model_that_cannot_be_folded_is_not_kept_alive(tiny_model, monkeypatch):
    import gc
    import weakref

    def broken(_model):
        raise RuntimeError("not traceable")

    monkeypatch.setattr(engines, "_fold", broken)
    m, _ = load_model(tiny_model, "cpu")
    assert engines.folded_model(m.eval()) is m
    alive = weakref.ref(m)
    del m
    gc.collect()
    assert alive() is None  # the cache does not hold what it could not fold


@needs_ort
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_a_batch_run_in_parts_gives_the_whole_batchs_outputs(model, n):
    one = onnx_runner(model, threads=1)
    two = onnx_runner(model, threads=2)  # a new session for another thread count
    assert (one.streams, two.streams) == (1, 2) and two is not one
    x = torch.randn(n, 3, 64, 96, generator=torch.Generator().manual_seed(n))
    valid = torch.rand(n, 1, 64, 96, generator=torch.Generator().manual_seed(1)) > 0.3
    with torch.no_grad():
        want = model.scored(x, valid)
    for runner in (one, two):
        # the module's three outputs, and with ``scored`` the probabilities and statistics
        # the graph computes for the IoU head
        for names, got in ((engines.OUTPUTS, runner(x, valid)),
                           (engines.SCORED, runner.scored(x, valid))):  # fmt: skip
            assert len(got) == len(names)
            for name, a, b in zip(names, want, got, strict=False):
                assert b.shape == a.shape, name
                np.testing.assert_allclose(b.numpy(), a.numpy(), atol=2e-4, err_msg=name)


@needs_ort
def test_a_cached_graph_skips_the_export_in_a_later_process(model, monkeypatch, tmp_path):
    monkeypatch.setenv("RSCRISIS_CACHE_DIR", str(tmp_path))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    first = onnx_runner(model, threads=1, cache=True)
    entries = list((tmp_path / "onnx").iterdir())
    assert [p.name for p in entries] == [f"{engines.graph_digest(model)}.onnx"]
    engines._RUNNERS.clear()  # as a new process starts: only the disk cache is left

    def no_export(_model):
        raise AssertionError("exported again")

    monkeypatch.setattr(engines, "export_onnx", no_export)
    again = onnx_runner(model, threads=1, cache=True)
    assert again is not first
    np.testing.assert_allclose(again(x)[0].numpy(), first(x)[0].numpy(), atol=1e-6)
    # other weights (AdaBN, a fine-tuned copy) are another graph: exported, not the cached one
    monkeypatch.undo()
    monkeypatch.setenv("RSCRISIS_CACHE_DIR", str(tmp_path))
    with torch.no_grad():
        model.unet.segmentation_head[0].bias.add_(1.0)
    changed = onnx_runner(model, threads=1, cache=True)
    np.testing.assert_allclose(changed(x)[0].numpy(), first(x)[0].numpy() + 1.0, atol=1e-4)
    assert len(list((tmp_path / "onnx").iterdir())) == 2
    # a new threshold (calibrate) is a constant of the graph: its statistics follow it
    with_bias = onnx_runner(model, threads=1, cache=True)
    assert with_bias is changed
    model.threshold = 0.95  # above most of the probe's probabilities
    higher = onnx_runner(model, threads=1, cache=True)
    assert higher is not changed
    assert len(list((tmp_path / "onnx").iterdir())) == 3
    with torch.no_grad():
        want = model.scored(x)[4]
    np.testing.assert_allclose(higher.scored(x)[4].numpy(), want.numpy(), atol=1e-5)
    assert not np.allclose(changed.scored(x)[4].numpy(), want.numpy(), atol=1e-3)
    # without cache=True (the loop's models) nothing is written
    with torch.no_grad():
        model.unet.segmentation_head[0].bias.add_(1.0)
    onnx_runner(model, threads=1)
    assert len(list((tmp_path / "onnx").iterdir())) == 3


@needs_ort
def test_a_damaged_or_foreign_cached_graph_is_exported_again(
    model, tiny_model, monkeypatch, tmp_path, caplog
):
    monkeypatch.setenv("RSCRISIS_CACHE_DIR", str(tmp_path))
    entry = tmp_path / "onnx" / f"{engines.graph_digest(model)}.onnx"
    entry.parent.mkdir()
    torch.manual_seed(1)
    other = BuildingSegmenter(read_meta(tiny_model).encoder, 3).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)[0]
    for content in (b"\x08\x07 not a graph", engines.export_onnx(other)):
        entry.write_bytes(content)
        engines._RUNNERS.clear()
        with caplog.at_level(logging.WARNING, logger="rscrisis.ml.engine"):
            runner = onnx_runner(model, threads=1, cache=True)
        assert "exporting again" in caplog.text
        caplog.clear()
        np.testing.assert_allclose(runner(x)[0].numpy(), want.numpy(), atol=2e-4)
        assert entry.read_bytes() == engines.export_onnx(model)  # replaced by the right one


@needs_ort
def test_a_scene_run_keeps_its_graph_for_the_next(tiny_model, tiny_tiles, no_native_bf16,
                                                   monkeypatch, tmp_path):  # fmt: skip
    from rscrisis.predict.scene import predict_scene

    monkeypatch.setenv("RSCRISIS_CACHE_DIR", str(tmp_path / "cache"))
    scene = sorted((tiny_tiles / "images").glob("*.tif"))[0]
    cfg = SceneConfig(window=64, overlap=16, batch_size=2, threads=1)
    predict_scene(tiny_model, scene, tmp_path / "a", config=cfg)
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    engines._RUNNERS.clear()
    monkeypatch.setattr(engines, "export_onnx", lambda _m: pytest.fail("exported again"))
    predict_scene(tiny_model, scene, tmp_path / "b", config=cfg)
    timings = json.loads((tmp_path / "b" / "predict.json").read_text())["timings"]
    assert timings["engine_s"] >= 0
    for name in ("probability.tif", "mask.tif"):
        with rasterio.open(tmp_path / "a" / name) as a, rasterio.open(tmp_path / "b" / name) as b:
            assert (a.read() == b.read()).all()
