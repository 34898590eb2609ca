"""Batch export -> simulated human edits -> ingest -> finetune -> rank excludes the labels."""

import csv
import shutil

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
    assert meta.training["pretraining_tilesets"] == [str(tiny_tiles.resolve())]
    assert (tmp_path / "ft.finetune.json").exists()


@pytest.mark.slow
def test_a_slice_too_small_to_trust_is_not_used(tiny_model, tiny_tiles, tmp_path):
    from rscrisis.loop.finetune import finetune_tilesets

    config = FinetuneConfig(steps=2, batch_size=4, threads=1, val_fraction=0.1, min_val_tiles=4)
    result = finetune_tilesets(tiny_model, [tiny_tiles], tmp_path / "ft.safetensors", config=config)
    assert not result.check["trusted"] and result.check["chosen"] == "final"
    assert result.train["train_tiles"] == 16  # the would-be slice trains too
