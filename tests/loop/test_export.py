"""``rank``: a prediction set exported as an annotation batch people can edit."""

import csv
import json

import geopandas as gpd
import pytest
import rasterio

from rscrisis.config import RankConfig
from rscrisis.errors import InputError
from rscrisis.io.batch import BatchLayout, geometry_fingerprint
from rscrisis.loop.export import rank


def test_batch_holds_everything_an_annotator_needs(tiny_pred, tiny_tiles, tmp_path):
    out = tmp_path / "batch"
    config = RankConfig(top=3, label_studio=True, formula="entropy-iou")  # with components
    result = rank(tiny_pred, out, config=config)
    assert result.tasks == 3 and len(result.tile_ids) == 3
    ranking = gpd.read_file(out / "ranking.gpkg", layer="ranking")
    assert list(ranking["rank"]) == [1, 2, 3]
    assert list(ranking.score) == sorted(ranking.score, reverse=True)
    assert {"entropy_norm", "expected_error", "pred_iou", "mean_entropy"} <= set(ranking.columns)
    with open(out / "ranking.csv") as f:
        assert [r["tile_id"] for r in csv.DictReader(f)] == list(ranking.tile_id)
    tasks = gpd.read_file(out / "tasks.geojson")
    assert tasks.crs.to_epsg() == 4326 and list(tasks.status) == ["todo"] * 3
    status = BatchLayout(out).read_status()
    assert [t.status for t in status] == ["todo"] * 3
    manifest = json.loads((out / "batch.json").read_text())
    for row, meta in zip(ranking.itertuples(), manifest["tasks"], strict=True):
        task_dir = out / "tasks" / row.task
        with (
            rasterio.open(task_dir / "image.tif") as chip,
            rasterio.open(tiny_tiles / "images" / f"{row.tile_id}.tif") as tile,
        ):
            assert chip.transform == tile.transform and chip.crs == tile.crs
            assert (chip.read() == tile.read()).all()
        pre = gpd.read_file(task_dir / "buildings.gpkg", layer="buildings")
        assert pre.crs == ranking.crs
        assert (pre.building == "yes").all()
        josm = gpd.read_file(task_dir / "buildings.geojson")
        assert josm.crs.to_epsg() == 4326 and len(josm) == len(pre)
        assert meta["fingerprints"]["buildings.gpkg"] == geometry_fingerprint(pre)
        assert (task_dir / "image.png").exists()
    studio = json.loads((out / "labelstudio.json").read_text())
    assert len(studio) == 3
    for item in studio:
        for res in item["predictions"][0]["result"]:
            assert all(0 <= v <= 100 for pt in res["value"]["points"] for v in pt)
    readme = (out / "README.md").read_text()
    assert "status.csv" in readme and "finetune" in readme


def test_random_ranking_is_deterministic_under_seed(tiny_pred, tmp_path):
    def ids(seed, name):
        cfg = RankConfig(formula="random", top=4, seed=seed, spatial=False)
        return rank(tiny_pred, tmp_path / name, config=cfg).tile_ids

    assert ids(5, "a") == ids(5, "b")
    assert ids(5, "a2") != ids(6, "c")


def test_earlier_batches_are_excluded(tiny_pred, tmp_path):
    first = rank(tiny_pred, tmp_path / "b1", config=RankConfig(top=4, spatial=False))
    second = rank(
        tiny_pred,
        tmp_path / "b2",
        config=RankConfig(top=4, spatial=False, exclude=(str(tmp_path / "b1"),)),
    )
    assert not set(first.tile_ids) & set(second.tile_ids)
    assert second.excluded["in an earlier batch"] == 4


def test_bald_needs_mc_samples_and_nothing_is_written(tiny_pred, tmp_path):
    with pytest.raises(InputError, match="mc-samples"):
        rank(tiny_pred, tmp_path / "b", config=RankConfig(formula="bald"))
    assert not (tmp_path / "b").exists()


def test_a_scene_map_is_not_a_prediction_set(tmp_path):
    (tmp_path / "map").mkdir()
    (tmp_path / "map" / "probability.tif").write_bytes(b"")
    with pytest.raises(InputError, match="tile the scene"):
        rank(tmp_path / "map", tmp_path / "b")
