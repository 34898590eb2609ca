"""Prediction sets and evaluation on tile sets, checked by reopening the outputs."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from rscrisis.config import PredictConfig, TileConfig
from rscrisis.errors import InputError, OutputExistsError
from rscrisis.geo.tiling import tile
from rscrisis.predict.evaluate import evaluate
from rscrisis.predict.tiles import SCORES_LAYER, predict_tiles, read_prob
from tests.conftest import gradient, write_raster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prediction(tiny_model, tiny_tiles, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "pred"
    result = predict_tiles(
        tiny_model, [tiny_tiles], out, config=PredictConfig(batch_size=4, mc_samples=3)
    )
    return out, result


def test_prediction_set_layout_and_georeferencing(prediction, tiny_tiles):
    out, result = prediction
    scores = gpd.read_file(out / "scores.gpkg", layer=SCORES_LAYER)
    index = gpd.read_file(tiny_tiles / "index.gpkg")
    assert result.tiles == len(scores) == len(index) == 16
    assert list(scores.tile_id) == list(index.tile_id)
    for col in (
        "pred_iou",
        "mean_entropy",
        "mean_margin",
        "soft_iou",
        "building_fraction",
        "valid_fraction",
        "bald",
        "mc_agreement",
    ):
        assert scores[col].between(0, 1).all(), col
    assert scores.crs == index.crs
    assert scores.geometry.geom_equals(index.geometry).all()
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == (16, 512) and np.isfinite(emb).all()
    tid = scores.tile_id.iloc[5]
    with (
        rasterio.open(out / "probs" / f"{tid}.tif") as p,
        rasterio.open(tiny_tiles / "images" / f"{tid}.tif") as t,
    ):
        assert p.transform == t.transform and p.crs == t.crs
        assert p.nodata == 255 and p.scales == (1 / 254,)
    prob, valid = read_prob(out / "probs" / f"{tid}.tif")
    assert valid.all() and prob.min() >= 0 and prob.max() <= 1
    manifest = json.loads((out / "predict.json").read_text())
    assert manifest["config"]["mc_samples"] == 3 and manifest["embedding_dim"] == 512


def test_entropy_matches_probability_rasters(prediction):
    out, _ = prediction
    scores = gpd.read_file(out / "scores.gpkg")
    row = scores.iloc[3]
    prob, _ = read_prob(out / "probs" / f"{row.tile_id}.tif")
    p = np.clip(prob, 1e-6, 1 - 1e-6)
    ent = -(p * np.log2(p) + (1 - p) * np.log2(1 - p)).mean()
    assert ent == pytest.approx(row.mean_entropy, abs=0.01)  # uint8 quantisation


def test_predict_refuses_existing_output(prediction, tiny_model, tiny_tiles):
    out, _ = prediction
    with pytest.raises(OutputExistsError):
        predict_tiles(tiny_model, [tiny_tiles], out)


def test_band_mismatch_and_bad_tile_size(tiny_model, tmp_path):
    src = write_raster(tmp_path / "four.tif", gradient(4, 64, 64), photometric="minisblack")
    tile([src], tmp_path / "t4", config=TileConfig(size=64))
    with pytest.raises(InputError, match="has 4 band.s. but the model expects 3"):
        predict_tiles(tiny_model, [tmp_path / "t4"], tmp_path / "p")
    assert not (tmp_path / "p").exists()
    src3 = write_raster(tmp_path / "three.tif", gradient(3, 50, 50))
    tile([src3], tmp_path / "t3", config=TileConfig(size=50))
    with pytest.raises(InputError, match="multiple of 32"):
        predict_tiles(tiny_model, [tmp_path / "t3"], tmp_path / "p")


def test_evaluate_writes_metrics_and_per_tile_table(tiny_model, tiny_tiles, tmp_path):
    result = evaluate(tiny_model, [tiny_tiles], out=tmp_path / "ev")
    assert result.tiles == 16
    for key in ("iou", "f1", "precision", "recall"):
        assert 0 <= result.pixel[key] <= 1
    assert 0 <= result.objects["f1"] <= 1
    assert -1 <= result.pred_iou_calibration["spearman"] <= 1
    saved = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert saved["pixel"] == result.pixel
    import csv

    rows = list(csv.DictReader((tmp_path / "ev" / "per_tile.csv").open()))
    assert len(rows) == 16
    tp = sum(int(r["tp"]) for r in rows)
    fp = sum(int(r["fp"]) for r in rows)
    fn = sum(int(r["fn"]) for r in rows)
    assert result.pixel["iou"] == pytest.approx(tp / (tp + fp + fn))


def test_tile_sets_predict_with_the_8_views_by_default_and_rank_by_their_agreement(
    invoke, tiny_model, tiny_tiles, tmp_path
):
    """The views' agreement is the IoU estimate (rscrisis.ml.calibration): on for tile sets
    unless --no-tta, off for a scene unless --tta (one option, two defaults)."""
    out = tmp_path / "views"
    r = invoke("predict", tiny_model, tiny_tiles, "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    scores = gpd.read_file(out / "scores.gpkg", layer=SCORES_LAYER)
    assert scores.tta_agreement.between(0, 1).all() and scores.tta_spread.ge(0).all()
    # no calibrator yet: the expected IoU is the agreement itself (blank tiles included)
    assert scores.calibrated_iou.to_numpy() == pytest.approx(scores.tta_agreement.to_numpy())
    assert json.loads((out / "predict.json").read_text())["config"]["tta"] is True
    plain = tmp_path / "plain"
    r = invoke("predict", tiny_model, tiny_tiles, "-o", plain, "--no-tta", "-q")
    assert r.exit_code == 0, r.stderr
    scores = gpd.read_file(plain / "scores.gpkg", layer=SCORES_LAYER)
    assert "tta_agreement" not in scores
    blank = scores.building_fraction.to_numpy() <= 0
    assert scores.calibrated_iou.to_numpy()[~blank] == pytest.approx(
        scores.pred_iou.to_numpy()[~blank]
    )
    # a scene keeps its own default: one view
    scene = write_raster(tmp_path / "scene.tif", gradient(3, 96, 96))
    r = invoke("predict", tiny_model, scene, "-o", tmp_path / "map", "-q")
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "map" / "predict.json").read_text())["config"]["tta"] is False
    assert "tta_agreement" not in gpd.read_file(tmp_path / "map" / "windows.gpkg")
