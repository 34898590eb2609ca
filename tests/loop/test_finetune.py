"""Batch export -> simulated human edits -> ingest -> finetune -> rank excludes the labels."""

import csv
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import Point, Polygon, box

from rscrisis.config import FinetuneConfig, PredictConfig, RankConfig
from rscrisis.io.batch import BatchLayout
from rscrisis.loop.export import rank
from rscrisis.loop.finetune import finetune
from rscrisis.ml.model import read_meta
from rscrisis.predict.tiles import predict_tiles


@pytest.fixture(scope="module")
def exported(tiny_pred, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "batch-01"
    rank(tiny_pred, out, config=RankConfig(top=3))
    return out


@pytest.fixture
def batch(exported, tmp_path):
    copy = tmp_path / "batch-01"
    shutil.copytree(exported, copy)
    return copy


def _tasks(batch):
    return BatchLayout(batch).read_status()


def _set_status(batch, statuses):
    with open(batch / "status.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row, status in zip(rows, statuses, strict=False):
        row["status"] = status
        row["annotator"] = "tester"
    with open(batch / "status.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _tile_square(batch, task, frac=(0.25, 0.25, 0.75, 0.75)):
    """A square covering the middle of the task's tile, in the tile CRS, and its pixel box."""
    with rasterio.open(batch / "tasks" / task / "image.tif") as ds:
        t, w, h, crs = ds.transform, ds.width, ds.height, ds.crs
    c0, r0, c1, r1 = (int(frac[0] * w), int(frac[1] * h), int(frac[2] * w), int(frac[3] * h))
    x0, y0 = t @ (c0, r0)
    x1, y1 = t @ (c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), crs, (r0, r1, c0, c1)


def _write(path, geoms, crs, driver=None):
    gpd.GeoDataFrame({"building": ["yes"] * len(geoms)}, geometry=geoms, crs=crs).to_file(
        path, driver=driver, engine="pyogrio"
    )


def test_edit_finetune_record_and_exclude(batch, tiny_model, tiny_tiles, tmp_path):
    tasks = _tasks(batch)
    # task 1: corrected in QGIS (GeoPackage); task 2: accepted as is; task 3: JOSM (GeoJSON)
    sq, crs, (r0, r1, c0, c1) = _tile_square(batch, tasks[0].task)
    _write(batch / "tasks" / tasks[0].task / "buildings.gpkg", [sq], crs)
    sq3, crs3, _ = _tile_square(batch, tasks[2].task, (0.0, 0.0, 0.5, 0.5))
    _write(
        batch / "tasks" / tasks[2].task / "buildings.geojson",
        [gpd.GeoSeries([sq3], crs=crs3).to_crs(4326)[0]],
        "EPSG:4326",
        driver="GeoJSON",
    )
    _set_status(batch, ["done", "done", "done"])
    out = tmp_path / "ft.safetensors"
    result = finetune(
        tiny_model,
        [batch],
        out,
        config=FinetuneConfig(steps=2, batch_size=2, threads=1, replay=(str(tiny_tiles),)),
    )
    report = result.batches[0]
    assert report["taken"] == [t.task for t in tasks] and report["refused"] == []
    assert report["sources"][tasks[0].task] == "buildings.gpkg"
    assert report["sources"][tasks[2].task] == "buildings.geojson"
    # replay: the --replay set (here also the model's own training set), less the new tiles
    assert result.new_tiles == 3 and result.replay_tiles == 16 - 3
    assert result.check["before"] and result.check["after"]  # scored before and after
    assert result.check["trusted"] is False  # 3 tiles: no held-out slice to trust
    assert "labelled tiles themselves" in result.check["on"]
    with rasterio.open(batch / "labels" / "masks" / f"{tasks[0].tile_id}.tif") as ds:
        mask = ds.read(1)
        with rasterio.open(batch / "tasks" / tasks[0].task / "image.tif") as img:
            assert ds.transform == img.transform and ds.crs == img.crs
    expected = np.zeros_like(mask)
    expected[r0:r1, c0:c1] = 1
    np.testing.assert_array_equal(mask, expected)
    meta = read_meta(out)
    assert meta.training["batches"][0]["tile_ids"] == [t.tile_id for t in tasks]
    assert set(meta.training["labelled_tiles"]) == {t.tile_id for t in tasks}
    assert meta.training["init"] == str(tiny_model)
    # the next round: predict with the new model, rank: labelled tiles are not proposed
    predict_tiles(out, [tiny_tiles], tmp_path / "pred2", config=PredictConfig(threads=1))
    nxt = rank(tmp_path / "pred2", tmp_path / "batch-02", config=RankConfig(top=16, spatial=False))
    assert not set(nxt.tile_ids) & {t.tile_id for t in tasks}
    assert nxt.excluded["labelled (model metadata)"] == 3


def _bowtie(batch, task):
    sq, crs, _ = _tile_square(batch, task)
    x0, y0, x1, y1 = sq.bounds
    return Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)]), crs


def _wrong_crs(batch, task):
    sq, _, _ = _tile_square(batch, task)
    _write(batch / "tasks" / task / "buildings.gpkg", [sq], "EPSG:4326")  # UTM numbers


def _invalid(batch, task):
    geom, crs = _bowtie(batch, task)
    _write(batch / "tasks" / task / "buildings.gpkg", [geom], crs)


def _missing(batch, task):
    for name in ("buildings.gpkg", "buildings.geojson", "buildings.osm"):
        (batch / "tasks" / task / name).unlink()


def _both_edited(batch, task):
    sq, crs, _ = _tile_square(batch, task)
    _write(batch / "tasks" / task / "buildings.gpkg", [sq], crs)
    _write(
        batch / "tasks" / task / "buildings.geojson",
        [gpd.GeoSeries([sq.buffer(-1)], crs=crs).to_crs(4326)[0]],
        "EPSG:4326",
        driver="GeoJSON",
    )


def _points(batch, task):
    sq, crs, _ = _tile_square(batch, task)
    _write(batch / "tasks" / task / "buildings.gpkg", [sq, Point(sq.centroid)], crs)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_wrong_crs, "crs"),
        (_invalid, "invalid polygon"),
        (_missing, "has none of"),
        (_both_edited, "were all edited"),
        (_points, "non-polygon"),
    ],
)
def test_malformed_corrections_exit_2_and_change_nothing(
    batch, tiny_model, tmp_path, invoke, damage, needle
):
    task = _tasks(batch)[0].task
    damage(batch, task)
    _set_status(batch, ["done", "done"])
    out = tmp_path / "ft.safetensors"
    r = invoke("finetune", tiny_model, batch, "--out", out, "--steps", "1", "--threads", "1")
    assert r.exit_code == 2, r.stderr
    assert needle in r.stderr.lower() and r.stderr.count("\n") == 1
    assert task in r.stderr
    assert not out.exists() and not (batch / "labels").exists()


def test_repair_fixes_invalid_polygons(batch, tiny_model, tmp_path):
    task = _tasks(batch)[0].task
    _invalid(batch, task)
    _set_status(batch, ["done"])
    result = finetune(
        tiny_model,
        [batch],
        tmp_path / "ft.safetensors",
        config=FinetuneConfig(steps=1, threads=1, repair=True, replay_ratio=0),
    )
    assert result.batches[0]["repaired"] == 1
    assert [r["reason"] for r in result.batches[0]["refused"]] == ["status todo"] * 2


@pytest.mark.parametrize(
    ("statuses", "needle"), [(["finished"], "status"), (["todo", "skipped"], "no task")]
)
def test_status_problems_exit_2(batch, tiny_model, tmp_path, invoke, statuses, needle):
    _set_status(batch, statuses)
    r = invoke("finetune", tiny_model, batch, "--out", tmp_path / "ft.safetensors")
    assert r.exit_code == 2 and needle in r.stderr.lower()
    assert not (batch / "labels").exists()


@pytest.mark.slow
def test_a_trusted_slice_scores_the_start_first_and_keeps_the_best(
    tiny_model, tiny_tiles, tmp_path
):
    from rscrisis.loop.finetune import finetune_tilesets

    out = tmp_path / "ft.safetensors"
    config = FinetuneConfig(
        steps=4, eval_every=2, batch_size=4, threads=1, val_fraction=0.5, min_val_tiles=4
    )
    result = finetune_tilesets(tiny_model, [tiny_tiles], out, config=config)
    check = result.check
    assert check["trusted"] and check["on"] == "held-out slice" and check["tiles"] >= 4
    # the start is in the running: what is kept is never worse than the start on the slice
    assert check["after"]["val_iou"] >= check["before"]["val_iou"]
    assert (check["chosen"] == "start") == (result.warning is not None)
    meta = read_meta(out)
    assert meta.training["finetune"]["check"] == check
    # one calibration sample per new tile, measured with the starting model before training
    assert len(meta.training["calibration_samples"]) == 16
    assert meta.training["iou_calibrator"]["samples"] == 16
    # measured as predict measures (the 8 views), so each carries the views' agreement
    assert all(0 <= s["tta_agreement"] <= 1 for s in meta.training["calibration_samples"])
    assert meta.training["iou_calibrator"]["agreement_samples"] == 16
    assert meta.training["pretraining_tilesets"] == [str(tiny_tiles.resolve())]
    assert (tmp_path / "ft.finetune.json").exists()


@pytest.mark.slow
def test_a_slice_too_small_to_trust_is_not_used(tiny_model, tiny_tiles, tmp_path):
    from rscrisis.loop.finetune import finetune_tilesets

    config = FinetuneConfig(steps=2, batch_size=4, threads=1, val_fraction=0.1, min_val_tiles=4)
    result = finetune_tilesets(tiny_model, [tiny_tiles], tmp_path / "ft.safetensors", config=config)
    assert not result.check["trusted"] and result.check["chosen"] == "final"
    assert result.train["train_tiles"] == 16  # the would-be slice trains too


def test_folds_are_dealt_stratified_and_seeded():
    from rscrisis.loop.finetune import fold_of

    has = np.array([True] * 5 + [False] * 3)
    folds = fold_of(has, 2, seed=3)
    assert sorted(np.bincount(folds)) == [4, 4]
    for k in (0, 1):  # both folds get tiles with buildings and tiles without
        assert has[folds == k].any() and (~has[folds == k]).any()
    assert (fold_of(has, 2, seed=3) == folds).all()
    assert not all((fold_of(has, 2, seed=s) == folds).all() for s in range(4, 10))


@pytest.mark.slow
def test_cross_fitting_and_prior_tiles_keep_a_share_of_the_plain_fit(
    tiny_model, tiny_tiles, tmp_path
):
    """With ``interpolate_folds`` the kept weights are the chosen share of the way from the
    start to exactly the fit a run without folds makes, and the choice is recorded; with
    ``prior_tiles`` N the share is n / (n + N)."""
    import torch

    from rscrisis.loop.finetune import finetune_tilesets
    from rscrisis.ml.model import load_model
    from rscrisis.ml.training import INTERPOLATION_GRID, toward_start

    base = FinetuneConfig(steps=3, batch_size=4, threads=1, val_fraction=0.0)
    plain = finetune_tilesets(tiny_model, [tiny_tiles], tmp_path / "plain.safetensors", config=base)
    assert "cross_fit" not in plain.check and plain.check["interpolate"] == 1.0
    folded = finetune_tilesets(
        tiny_model,
        [tiny_tiles],
        tmp_path / "folded.safetensors",
        config=base.model_copy(update={"interpolate_folds": 2}),
    )
    cross = folded.check["cross_fit"]
    assert cross["folds"] == 2 and cross["tiles"] == 16
    assert [float(a) for a in cross["iou"]] == list(INTERPOLATION_GRID)
    best = max(cross["iou"].values())
    assert cross["iou"][str(cross["chosen"])] == best
    assert folded.check["interpolate"] == cross["chosen"]
    start = load_model(tiny_model)[0].state_dict()
    fit = load_model(tmp_path / "plain.safetensors")[0].state_dict()
    kept = load_model(tmp_path / "folded.safetensors")[0].state_dict()
    expected = toward_start(start, fit, cross["chosen"])
    for k, v in kept.items():
        torch.testing.assert_close(v, expected[k], msg=k)
    assert read_meta(tmp_path / "folded.safetensors").training["finetune"]["check"] == (
        folded.check
    )
    # --prior-tiles 16 on 16 tiles: the start weighs as much as the tiles, so halfway
    prior = finetune_tilesets(
        tiny_model,
        [tiny_tiles],
        tmp_path / "prior.safetensors",
        config=base.model_copy(update={"prior_tiles": 16.0}),
    )
    assert prior.check["interpolate"] == 0.5 and "cross_fit" not in prior.check
    kept = load_model(tmp_path / "prior.safetensors")[0].state_dict()
    expected = toward_start(start, fit, 0.5)
    for k, v in kept.items():
        torch.testing.assert_close(v, expected[k], msg=k)


@pytest.mark.slow
def test_cross_fitting_that_finds_the_start_best_keeps_it_and_warns(
    tiny_model, tiny_tiles, tmp_path, monkeypatch
):
    import torch

    import rscrisis.ml.training as training
    from rscrisis.loop.finetune import finetune_tilesets
    from rscrisis.ml.metrics import Confusion
    from rscrisis.ml.model import load_model

    def start_wins(model, start, fitted, check, **kw):  # the start predicts the held-out best
        return {a: Confusion(10 - int(8 * a), 5, 5, 0) for a in training.INTERPOLATION_GRID}

    monkeypatch.setattr(training, "path_confusions", start_wins)
    config = FinetuneConfig(steps=2, batch_size=4, threads=1, val_fraction=0.0, interpolate_folds=3)
    result = finetune_tilesets(tiny_model, [tiny_tiles], tmp_path / "ft.safetensors", config=config)
    assert result.check["cross_fit"]["chosen"] == 0.0 and result.check["interpolate"] == 0.0
    assert "starting weights were kept" in result.warning
    start = load_model(tiny_model)[0].state_dict()
    kept = load_model(tmp_path / "ft.safetensors")[0].state_dict()
    for k, v in kept.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, start[k], msg=k)


def test_one_fold_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        FinetuneConfig(interpolate_folds=1)


@pytest.mark.parametrize(
    "both",
    [
        {"interpolate": 0.5, "prior_tiles": 4},
        {"prior_tiles": 4, "interpolate_folds": 2},
        {"interpolate": 0.5, "interpolate_folds": 2},
    ],
)
def test_one_way_to_set_the_interpolation(both):
    with pytest.raises(ValueError, match="give one of"):
        FinetuneConfig(**both)


def test_prior_tiles_trust_the_fit_more_as_tiles_come():
    from rscrisis.loop.finetune import kept_share

    config = FinetuneConfig(prior_tiles=4)
    assert [kept_share(config, n) for n in (4, 12, 36)] == [0.5, 0.75, 0.9]
    assert kept_share(FinetuneConfig(interpolate=0.3), 50) == 0.3


@pytest.mark.slow
def test_finetune_command_reports_the_cross_fitted_choice(batch, tiny_model, invoke, tmp_path):
    import json

    _set_status(batch, ["done", "done", "done"])  # the pre-annotations accepted as they are
    out = tmp_path / "ft.safetensors"
    r = invoke("finetune", tiny_model, batch, "-o", out, "--steps", "2", "--threads", "1",
               "--interpolate-folds", "2", "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    cross = result["check"]["cross_fit"]
    assert cross["folds"] == 2 and cross["tiles"] == 3
    assert result["check"]["interpolate"] == cross["chosen"]
    assert "cross-fitting over 3 tiles (2 folds)" in r.stderr
    manifest = json.loads((tmp_path / "ft.finetune.json").read_text())
    assert manifest["config"]["interpolate_folds"] == 2


@pytest.mark.slow
def test_finetune_takes_the_loss_options_of_training(batch, tiny_model, invoke, tmp_path):
    """--loss and the robust options are FittingConfig's, as for train: finetune records them
    in its sidecar and the model's lineage."""
    import json

    from rscrisis.ml.model import read_meta

    _set_status(batch, ["done", "done", "done"])
    out = tmp_path / "ft.safetensors"
    r = invoke("finetune", tiny_model, batch, "-o", out, "--steps", "1", "--threads", "1",
               "--loss", "sce", "--label-smoothing", "0.1", "--edge-ignore", "2")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((tmp_path / "ft.finetune.json").read_text())
    assert (manifest["config"]["loss"], manifest["config"]["edge_ignore"]) == ("sce", 2)
    recorded = read_meta(out).training["finetune"]["config"]
    assert recorded["label_smoothing"] == 0.1 and recorded["confidence_weighting"] == 0.0


@pytest.mark.slow
def test_model_targets_are_the_starting_models_own_map(
    tiny_model, tiny_tiles, tmp_path, monkeypatch
):
    """--replay-targets model: each replayed pretraining tile's mask is the starting model's
    map of it (predict's 8 views, thresholded), with the label's nodata kept; the maps are made
    once per model and tile set, and the replay dataset reads them instead of the labels."""
    from rscrisis.io.raster import read_raster
    from rscrisis.io.tileset import MASK_IGNORE
    from rscrisis.loop.finetune import model_targets
    from rscrisis.ml.data import load_tiles, replay_dataset
    from rscrisis.ml.model import read_meta
    from rscrisis.predict.tiles import read_prob

    cache = tmp_path / "cache"
    maps = model_targets(tiny_model, [tiny_tiles], cache, threads=1)
    folder = maps[tiny_tiles]
    frame = load_tiles([tiny_tiles], need_masks=True).frame
    assert sorted(p.name for p in folder.glob("*.tif")) == sorted(
        Path(m).name for m in frame.mask_path
    )
    threshold = read_meta(tiny_model).threshold
    pred = tmp_path / "pred"
    predict_tiles(tiny_model, [tiny_tiles], pred)
    tid, mask_path = frame.tile_id.iloc[0], frame.mask_path.iloc[0]
    prob, valid = read_prob(pred / "probs" / f"{tid}.tif")
    with read_raster(folder / Path(mask_path).name) as ds, read_raster(mask_path) as lab:
        target, label = ds.read(1), lab.read(1)
        assert ds.crs == lab.crs and ds.transform == lab.transform
    keep = valid & (label != MASK_IGNORE)
    assert np.array_equal(target[keep], (prob[keep] > threshold).astype(np.uint8))
    assert (target[~keep] == MASK_IGNORE).all()
    assert not list(cache.glob(".partial-*"))  # nothing half-made left behind

    import rscrisis.predict.tiles as tiles

    monkeypatch.setattr(tiles, "predict_tiles", lambda *a, **k: pytest.fail("predicted again"))
    assert model_targets(tiny_model, [tiny_tiles], cache, threads=1) == maps
    meta = read_meta(tiny_model)
    ds = replay_dataset([tiny_tiles], meta, set(), 0, False, targets=maps)
    assert all(Path(p).parent == folder for p in ds.masks)


@pytest.mark.slow
def test_finetune_replays_the_models_map_and_cleans_up(batch, tiny_model, invoke, tmp_path):
    import json

    _set_status(batch, ["done", "done", "done"])
    out = tmp_path / "models" / "ft.safetensors"
    out.parent.mkdir()
    r = invoke("finetune", tiny_model, batch, "-o", out, "--steps", "2", "--threads", "1",
               "--replay-targets", "model", "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["replay_tiles"] > 0
    # the maps lived in a temporary folder beside the model, gone with the fine-tuning
    assert sorted(p.name for p in out.parent.iterdir()) == ["ft.finetune.json", "ft.safetensors"]
    manifest = json.loads((out.parent / "ft.finetune.json").read_text())
    assert manifest["config"]["replay_targets"] == "model"


@pytest.mark.parametrize("evil", ["../../../x", "/tmp/x"])
def test_model_targets_refuse_a_tampered_tile_set_before_writing(
    tiny_model, tiny_tiles, tmp_path, evil
):
    """A tile id from a pretraining set's index never names a map outside the cache: the set
    is refused before anything is kept."""
    from rscrisis.errors import InputError
    from rscrisis.io.tileset import INDEX, INDEX_LAYER
    from rscrisis.loop.finetune import model_targets

    tiles = tmp_path / "tiles"
    shutil.copytree(tiny_tiles, tiles)
    frame = gpd.read_file(tiles / INDEX, layer=INDEX_LAYER)
    frame.loc[0, "tile_id"] = evil
    (tiles / INDEX).unlink()
    frame.to_file(tiles / INDEX, layer=INDEX_LAYER, driver="GPKG")
    before = set(tmp_path.rglob("*"))
    with pytest.raises(InputError, match="unsafe tile id"):
        model_targets(tiny_model, [tiles], tmp_path / "cache", threads=1)
    made = set(tmp_path.rglob("*")) - before
    assert all(p.is_dir() and p.is_relative_to(tmp_path / "cache") for p in made)
    assert not (tmp_path.parent / "x.tif").exists() and not list(tmp_path.parent.glob("x*"))


@pytest.mark.slow
def test_replay_maps_made_or_cached_give_the_same_fine_tuning(tiny_model, tiny_tiles, tmp_path):
    """Making the maps must not move the random draws of the fine-tuning after it: a round
    whose maps were cached (simulate) fits exactly as one that makes them (finetune)."""
    import torch

    from rscrisis.io.tileset import write_subset
    from rscrisis.loop.finetune import finetune_tilesets
    from rscrisis.ml.model import load_model

    new = write_subset(tiny_tiles, tmp_path / "new", ["area_a_r0000_c0000", "area_a_r0001_c0001"])
    config = FinetuneConfig(
        steps=3, batch_size=4, threads=1, val_fraction=0.0, replay_targets="model"
    )
    cache = tmp_path / "cache"
    fits = []
    for name, where in (("made", None), ("made-in-cache", cache), ("cached", cache)):
        out = tmp_path / f"{name}.safetensors"
        finetune_tilesets(tiny_model, [new], out, config=config, replay_targets_cache=where)
        fits.append(load_model(out)[0].state_dict())
    for state in fits[1:]:
        assert all(torch.equal(v, fits[0][k]) for k, v in state.items())
