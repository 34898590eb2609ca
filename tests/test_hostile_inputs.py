"""Hostile and broken inputs, command by command (issue 13): every case exits 0 or 2 with one
``rscrisis: error:`` line and no traceback, writes nothing outside ``--out`` and leaves no partial
output behind. The path-escape cases live in ``test_names.py``; the fuzz test in
``test_fuzz_inputs.py``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from rscrisis.config import RankConfig
from tests.conftest import gradient, mark_all_done, write_raster


def _one_error_line(result, code: int = 2) -> str:
    """The single error line of a failed command (asserting exit code and no traceback)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("rscrisis: error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.fixture
def scene(tmp_path) -> Path:
    return write_raster(tmp_path / "scene.tif", gradient(3, 200, 200), nodata=None)


# --- tile --------------------------------------------------------------------------------


def test_truncated_geotiff_exits_2_and_leaves_nothing(invoke, tmp_path):
    src = write_raster(
        tmp_path / "full.tif",
        np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8),
        tiled=True,
        blockxsize=128,
        blockysize=128,
        compress="deflate",
    )
    data = src.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) * 2 // 3])
    r = invoke("tile", cut, "--out", tmp_path / "t", "--size", "64")
    assert "truncated or corrupt" in _one_error_line(r)
    assert not (tmp_path / "t").exists()


def test_all_nodata_scene_exits_2_and_leaves_nothing(invoke, tmp_path):
    src = write_raster(tmp_path / "nd.tif", np.zeros((3, 100, 100), np.uint8), nodata=0)
    r = invoke("tile", src, "--out", tmp_path / "t", "--size", "32")
    assert "no tile has valid pixels" in _one_error_line(r)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_non_finite_or_negative_resolution_is_a_usage_error(invoke, scene, tmp_path, value):
    r = invoke("tile", scene, "--out", tmp_path / "t", f"--resolution={value}")
    assert "--resolution" in _one_error_line(r)
    assert not (tmp_path / "t").exists()


def test_a_tiny_resolution_is_refused_by_its_output_size(invoke, scene, tmp_path):
    r = invoke("tile", scene, "--out", tmp_path / "t", "--resolution", "0.0001")
    line = _one_error_line(r)
    assert "GB" in line and "--max-output-gb" in line
    assert not (tmp_path / "t").exists()


def _huge_sparse(path: Path, side: int = 400_000) -> Path:
    """A few-MB sparse GeoTIFF whose header claims side x side px."""
    profile = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32645",
        "transform": Affine(0.3, 0, 354_000, 0, -0.3, 3_057_000),
        "tiled": True,
        "blockxsize": 1024,
        "blockysize": 1024,
        "compress": "deflate",
        "sparse_ok": True,
        "BIGTIFF": "YES",
    }
    with rasterio.open(path, "w", **profile):
        pass
    return path


def test_a_header_claiming_a_huge_scene_is_refused_at_once(invoke, tiny_model, tmp_path):
    huge = _huge_sparse(tmp_path / "huge.tif")
    assert huge.stat().st_size < 50 * 2**20
    r = invoke("tile", huge, "--out", tmp_path / "t")
    assert "400,000 x 400,000 px" in _one_error_line(r)
    r = invoke("predict", tiny_model, huge, "--out", tmp_path / "map")
    assert "GB limit" in _one_error_line(r)
    assert not (tmp_path / "t").exists() and not (tmp_path / "map").exists()


def test_float_imagery_with_nan_and_inf_is_tiled_as_nodata(invoke, tmp_path):
    data = np.random.default_rng(1).random((3, 64, 64)).astype(np.float32)
    data[:, 10:20, 10:20] = np.nan
    data[1, 40, 40] = np.inf
    src = write_raster(tmp_path / "f.tif", data)
    r = invoke("tile", src, "--out", tmp_path / "t", "--size", "64", "-q")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "t" / "images" / "f_r0000_c0000.tif") as ds:
        pixels, valid = ds.read(), ds.read_masks(1) > 0
    assert np.isfinite(pixels).all()
    assert not valid[10:20, 10:20].any() and not valid[40, 40] and valid[0, 0]


def test_a_second_writer_of_one_output_folder_is_refused(invoke, scene, tmp_path):
    from rscrisis.io.outputs import _FolderLock

    out = tmp_path / "t"
    out.mkdir()
    held = _FolderLock(out)
    held.acquire()  # another run is writing here
    try:
        r = invoke("tile", scene, "--out", out, "--size", "64")
        line = _one_error_line(r)
        assert "being written by another rscrisis run" in line and "pid" in line
    finally:
        held.release()
    assert invoke("tile", scene, "--out", out, "--size", "64", "-q").exit_code == 0
    assert not (out / ".rscrisis.lock").exists()


def test_an_interrupt_is_one_line_and_exit_130(invoke, scene, tmp_path, monkeypatch):
    import rscrisis.geo.tiling

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rscrisis.geo.tiling._SceneTiler, "run", interrupted)
    r = invoke("tile", scene, "--out", tmp_path / "t", "--size", "64")
    assert "--resume" in _one_error_line(r, 130)


def test_permission_errors_are_not_reported_as_bugs(invoke, tiny_pred, tmp_path, monkeypatch):
    import rscrisis.loop.export

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "batch"))

    monkeypatch.setattr(rscrisis.loop.export, "rank", denied)
    line = _one_error_line(invoke("rank", tiny_pred, "--out", tmp_path / "batch"))
    assert "Permission denied" in line and "bug" not in line and "--out" in line


def test_usage_errors_are_one_line(invoke, scene, tmp_path):
    line = _one_error_line(invoke("tile", scene, "--out", tmp_path / "t", "--size", "abc"))
    assert "--size" in line and "rscrisis tile --help" in line
    assert "╭" not in invoke("tile", scene, "--bogus").output


@pytest.mark.parametrize("option", ["--size-a", "--size-b"])
def test_sample_data_sizes_are_bounded(invoke, tmp_path, option):
    line = _one_error_line(invoke("sample-data", "--out", tmp_path / "sd", option, "1000000"))
    assert option in line
    assert not (tmp_path / "sd").exists()


@pytest.mark.parametrize(("epsg", "message"), [(999999, "not a known CRS"), (4326, "in metres")])
def test_sample_data_refuses_a_crs_it_cannot_use(tmp_path, epsg, message):
    from rscrisis.config import SyntheticConfig
    from rscrisis.errors import InputError
    from rscrisis.synth.scenes import generate_sample_data

    with pytest.raises(InputError, match=message):
        generate_sample_data(tmp_path / "sd", SyntheticConfig(epsg=epsg))
    assert not (tmp_path / "sd").exists()


# --- model files ---------------------------------------------------------------------------


def _tampered_model(src: Path, dst: Path, change) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), "pt") as f:
        meta = json.loads(f.metadata()["rscrisis"])
    text = change(meta)
    save_file(load_file(str(src)), str(dst), metadata={"rscrisis": text})
    return dst


def _with(**fields):
    return lambda meta: json.dumps({**meta, **fields})


METADATA_CASES = {
    "a list": (lambda meta: json.dumps([1, 2]), "not an object"),
    "a string": (lambda meta: json.dumps("model"), "not an object"),
    "in_channels three": (_with(in_channels="three"), "in_channels"),
    "dropout 5": (_with(dropout=5), "dropout"),
    "negative gsd": (_with(gsd_m=-0.3), "gsd_m"),
    "negative tile size": (_with(tile_size=-64), "tile_size"),
    "a zero std": (lambda meta: json.dumps({**meta, "std": [0.0] * len(meta["std"])}), "std"),
    "NaN threshold": (
        lambda meta: json.dumps(meta).replace('"threshold": 0.5', '"threshold": NaN'),
        "threshold",
    ),
    "mean of the wrong length": (_with(mean=[0.5]), "mean and std"),
    "batch record without labels": (
        lambda meta: json.dumps({**meta, "training": {**meta["training"], "batches": [{}]}}),
        "training.batches",
    ),
}


@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_malformed_model_metadata_is_refused_on_load(
    invoke, tiny_model, tiny_tiles, tmp_path, case
):
    change, where = METADATA_CASES[case]
    model = _tampered_model(tiny_model, tmp_path / "m.safetensors", change)
    line = _one_error_line(invoke("predict", model, tiny_tiles, "--out", tmp_path / "p"))
    assert "metadata" in line and where in line
    assert not (tmp_path / "p").exists()
    assert _one_error_line(invoke("info", model))


def test_a_batch_record_without_labels_does_not_touch_the_batch(
    invoke, tiny_model, tiny_pred, tmp_path
):
    from rscrisis.loop.export import rank

    batch = tmp_path / "batch"
    rank(tiny_pred, batch, config=RankConfig(top=2))
    mark_all_done(batch)
    model = _tampered_model(
        tiny_model,
        tmp_path / "m.safetensors",
        lambda meta: json.dumps(
            {**meta, "training": {**meta["training"], "batches": [{"batch": 1}]}}
        ),
    )
    before = _files(tmp_path)
    r = invoke("finetune", model, batch, "--out", tmp_path / "ft.safetensors", "--steps", "1")
    assert "training.batches" in _one_error_line(r)
    assert _files(tmp_path) == before  # labels/ was not rewritten first


def test_infinite_learning_rate_is_a_usage_error(invoke, tiny_tiles, tmp_path):
    line = _one_error_line(
        invoke("train", tiny_tiles, "--out", tmp_path / "m.safetensors", "--lr", "inf")
    )
    assert "--lr" in line and "finite" in line


def test_a_loss_that_turns_nan_stops_training_and_saves_nothing(tiny_tiles, tmp_path, monkeypatch):
    import torch

    import rscrisis.ml.training
    from rscrisis.config import TrainConfig
    from rscrisis.errors import TrainingDivergedError

    def nan_losses(model, x, *args, **kwargs):
        logits, _, _ = model(x)
        return logits.mean() * torch.tensor(float("nan")), logits.mean() * 0

    monkeypatch.setattr(rscrisis.ml.training, "batch_losses", nan_losses)
    out = tmp_path / "m.safetensors"
    with pytest.raises(TrainingDivergedError, match="became nan at epoch 1, step 1"):
        rscrisis.ml.training.train(
            [tiny_tiles], out, config=TrainConfig(epochs=1, batch_size=4, val_fraction=0)
        )
    assert not out.exists() and not list(tmp_path.glob(".m*"))


def test_mask_values_outside_the_convention_are_refused(invoke, tiny_tiles, tmp_path):
    tiles = tmp_path / "tiles"
    shutil.copytree(tiny_tiles, tiles)
    mask = sorted((tiles / "masks").glob("*.tif"))[0]
    with rasterio.open(mask, "r+") as ds:
        values = ds.read(1)
        values[:4, :4] = 7
        ds.write(values, 1)
    line = _one_error_line(
        invoke("train", tiles, "--out", tmp_path / "m.safetensors", "--epochs", "1")
    )
    assert "values other than 0, 1 and 255" in line and mask.name in line


# --- prediction sets and batches -----------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("target", "content", "message"),
    [
        ("scores.gpkg", b"garbage" * 100, "cannot be read"),
        ("predict.json", b"[1, 2, 3]", "not an object"),
        ("predict.json", b"{not json", "not valid JSON"),
        ("embeddings.npy", b"\x93NUMPY garbage", "embeddings"),
    ],
)
def test_a_damaged_prediction_set_exits_2(invoke, tiny_pred, tmp_path, target, content, message):
    pred = _copy(tiny_pred, tmp_path / "pred")
    (pred / target).write_bytes(content)
    r = invoke("rank", pred, "--out", tmp_path / "batch", "--top", "2")
    assert message in _one_error_line(r)
    assert not (tmp_path / "batch").exists()


def test_a_deleted_probability_raster_leaves_no_batch(invoke, tiny_pred, tmp_path):
    pred = _copy(tiny_pred, tmp_path / "pred")
    for p in (pred / "probs").glob("*.tif"):
        p.unlink()
    r = invoke("rank", pred, "--out", tmp_path / "batch", "--top", "2")
    assert "probability raster" in _one_error_line(r)
    assert not (tmp_path / "batch").exists()


def test_nan_scores_are_ranked_last_with_a_warning(invoke, tiny_pred, tmp_path):
    import geopandas as gpd

    pred = _copy(tiny_pred, tmp_path / "pred")
    scores = gpd.read_file(pred / "scores.gpkg", layer="scores")
    first = scores.tile_id.iloc[0]
    for column in ("pred_iou", "mean_entropy", "calibrated_iou", "expected_iou"):
        if column in scores:
            scores.loc[0, column] = np.nan
    scores.to_file(pred / "scores.gpkg", layer="scores", driver="GPKG", engine="pyogrio")
    r = invoke("rank", pred, "--out", tmp_path / "batch", "--top", str(len(scores)), "--no-spatial")
    assert r.exit_code == 0, r.output
    assert "no finite" in r.output
    with open(tmp_path / "batch" / "status.csv", newline="") as f:
        assert [row["tile_id"] for row in csv.DictReader(f)][-1] == first


def test_damaged_tile_sets_exit_2(invoke, tiny_model, tiny_tiles, tmp_path):
    tiles = _copy(tiny_tiles, tmp_path / "tiles")
    (tiles / "tileset.json").write_text('{"scenes": "none"}')
    r = invoke("predict", tiny_model, tiles, "--out", tmp_path / "p")
    assert "scenes" in _one_error_line(r)
    (tiles / "tileset.json").write_text("{}")
    (tiles / "index.gpkg").write_bytes(b"SQLite format 3\x00" + bytes(500))
    r = invoke("predict", tiny_model, tiles, "--out", tmp_path / "p")
    assert "index.gpkg" in _one_error_line(r)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("target", "content", "message"),
    [
        ("status.csv", "task,tile_id,status\nx,y,done\n", "no 'rank' column"),
        ("status.csv", bytes(range(256)) * 4, "not UTF-8"),
        ("batch.json", "[]", "not an object"),
    ],
)
def test_a_damaged_batch_exits_2(invoke, tiny_model, tiny_pred, tmp_path, target, content, message):
    from rscrisis.loop.export import rank

    batch = tmp_path / "batch"
    rank(tiny_pred, batch, config=RankConfig(top=2))
    mark_all_done(batch)
    path = batch / target
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    before = _files(tmp_path)
    r = invoke("finetune", tiny_model, batch, "--out", tmp_path / "ft.safetensors", "--steps", "1")
    assert message in _one_error_line(r)
    assert _files(tmp_path) == before


def test_batch_chips_are_copies_so_editing_one_leaves_the_tile_set_alone(tiny_pred, tmp_path):
    from rscrisis.io.tileset import TileSetLayout
    from rscrisis.loop.export import rank

    batch = tmp_path / "batch"
    rank(tiny_pred, batch, config=RankConfig(top=1))
    chip = next((batch / "tasks").glob("*/image.tif"))
    tile_id = chip.parent.name.split("_", 1)[1]
    tiles = json.loads((tiny_pred / "predict.json").read_text())["tilesets"][0]
    source = TileSetLayout(Path(tiles)).image_path(tile_id)
    assert chip.stat().st_ino != source.stat().st_ino
    before = source.read_bytes()
    with rasterio.open(chip, "r+") as ds:  # what gdal_edit -a_srs does
        ds.crs = "EPSG:4326"
    assert source.read_bytes() == before


def test_output_exists_hints_only_offer_options_the_command_has(
    invoke, tiny_model, tiny_tiles, tmp_path
):
    out = tmp_path / "p"
    assert invoke("predict", tiny_model, tiny_tiles, "--out", out, "-q").exit_code == 0
    line = _one_error_line(invoke("predict", tiny_model, tiny_tiles, "--out", out))
    assert "--overwrite" in line and "--resume" not in line


# --- noise ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["noisy.shp", "noisy.txt", "noisy"])
def test_noise_writes_only_single_file_formats(invoke, tmp_path, name):
    from tests.conftest import REPO

    out = tmp_path / "out" / name
    r = invoke("noise", REPO / "sample_data" / "area_a" / "buildings.gpkg", "--out", out)
    assert "atomically" in _one_error_line(r)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_noise_refuses_non_finite_knobs(invoke, tmp_path):
    from tests.conftest import REPO

    r = invoke(
        "noise",
        REPO / "sample_data" / "area_a" / "buildings.gpkg",
        "--out",
        tmp_path / "n.gpkg",
        "--jitter",
        "nan",
    )
    assert "--jitter" in _one_error_line(r)
    assert not (tmp_path / "n.gpkg").exists()


def test_simulate_on_too_small_a_pool_leaves_no_output_folder(
    invoke, tiny_model, tiny_tiles, tmp_path
):
    out = tmp_path / "sim"
    r = invoke("simulate", tiny_model, tiny_tiles, "--out", out, "--rounds", "50", "--batch", "10")
    assert "fewer than the budget" in _one_error_line(r)
    assert not out.exists()


def test_every_option_a_message_suggests_exists():
    """Hints name options to fix a problem with; each must be a real option of some command
    (a hint once suggested predict --resume and simulate --val-fraction, which do not exist)."""
    import ast
    import re

    import typer.main

    from rscrisis.cli.main import app

    group = typer.main.get_command(app)
    options = {"--help", "--version"}
    for command in group.commands.values():
        for param in command.params:
            options.update(o.split("/")[0] for o in [*param.opts, *param.secondary_opts])
    package = Path(__file__).resolve().parents[1] / "rscrisis"
    unknown = {}
    for path in (p for p in package.rglob("*.py") if "cli" not in p.parts):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) in docstrings:
                    continue
                for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", node.value):
                    if option not in options:
                        unknown.setdefault(option, path.name)
    assert not unknown, unknown
