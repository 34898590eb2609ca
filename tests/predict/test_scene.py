"""Whole-scene prediction with a pixel-wise stand-in model, so every output value is known."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch

from rscrisis.config import SceneConfig
from rscrisis.ml.model import read_meta
from rscrisis.predict.scene import predict_scene
from tests.conftest import utm_transform, write_raster


class PixelModel(torch.nn.Module):
    """logit = 4 x (normalised band 1): equivariant to any flip/rotation, no context."""

    threshold = 0.5
    embedding_dim = 3

    def forward(self, x, valid=None):
        return 4 * x[:, :1], torch.sigmoid(x.mean((1, 2, 3))), x.mean((2, 3))


@pytest.fixture
def pixel_model(tiny_model, monkeypatch):
    meta = read_meta(tiny_model)
    monkeypatch.setattr(
        "rscrisis.ml.model.load_model", lambda path, device="cpu": (PixelModel(), read_meta(path))
    )
    return tiny_model, meta


BUILDINGS = [  # (row0, row1, col0, col1): one crosses a strip seam (row 512) and windows
    (490, 540, 100, 200),
    (40, 60, 40, 70),
    (300, 330, 560, 600),
]


def _scene(path, h=600, w=640, nodata_block=True):
    data = np.full((3, h, w), 60, np.uint8)
    for r0, r1, c0, c1 in BUILDINGS:
        data[:, r0:r1, c0:c1] = 220
    if nodata_block:
        data[:, h - 50 :, :80] = 0
    return write_raster(
        path, data, transform=utm_transform(0.3), nodata=0 if nodata_block else None
    )


def _expected_prob(scene, meta):
    with rasterio.open(scene) as ds:
        band = ds.read(1).astype(np.float32)
    return 1 / (1 + np.exp(-4 * (band - meta.mean[0]) / meta.std[0]))


def test_map_equals_the_pixelwise_model_everywhere_and_georeferences_exactly(pixel_model, tmp_path):
    model, meta = pixel_model
    scene = _scene(tmp_path / "scene.tif")
    cfg = SceneConfig(window=64, overlap=16, batch_size=3, prefetch=1)
    result = predict_scene(model, scene, tmp_path / "map", config=cfg)
    with rasterio.open(scene) as src:
        valid = src.dataset_mask() > 0
        crs, transform = src.crs, src.transform
    with rasterio.open(tmp_path / "map" / "probability.tif") as ds:
        assert ds.crs == crs and ds.transform == transform
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.overviews(1)
        assert ds.nodata == 255 and ds.scales[0] == pytest.approx(1 / 254)
        raw = ds.read(1)
    with rasterio.open(tmp_path / "map" / "mask.tif") as ds:
        mask = ds.read(1)
        assert ds.transform == transform and ds.overviews(1)
    np.testing.assert_array_equal(raw == 255, ~valid)
    np.testing.assert_array_equal(mask == 255, ~valid)
    expected = _expected_prob(scene, meta)
    assert np.abs(raw[valid] / 254 - expected[valid]).max() <= 0.5 / 254 + 1e-6
    np.testing.assert_array_equal(mask[valid], (expected[valid] > 0.5).astype(np.uint8))
    assert result.windows == 13 * 13 and result.windows_skipped == 0
    manifest = json.loads((tmp_path / "map" / "predict.json").read_text())
    assert manifest["config"]["window"] == 64 and manifest["resampled"] is False


def test_buildings_across_window_and_strip_borders_are_single_polygons(pixel_model, tmp_path):
    model, _ = pixel_model
    scene = _scene(tmp_path / "scene.tif")
    predict_scene(
        model,
        scene,
        tmp_path / "map",
        config=SceneConfig(window=64, overlap=16, geojson=True),
    )
    frame = gpd.read_file(tmp_path / "map" / "buildings.gpkg", layer="buildings")
    assert len(frame) == len(BUILDINGS)
    areas = sorted(frame.area_m2)
    assert areas == pytest.approx(  # ground m² (UTM's scale factor is 0.99986 here)
        sorted((r1 - r0) * (c1 - c0) * 0.09 for r0, r1, c0, c1 in BUILDINGS), rel=1e-3
    )
    assert frame.crs == "EPSG:32645"
    big = frame.loc[frame.area_m2.idxmax()]
    assert big.geometry.area == pytest.approx(50 * 100 * 0.09)
    assert frame.mean_prob.min() > 0.9
    geojson = gpd.read_file(tmp_path / "map" / "buildings.geojson")
    assert geojson.crs == "EPSG:4326"  # RFC 7946; the GeoPackage keeps the scene's CRS
    assert list(geojson.building_id) == list(frame.building_id)
    assert geojson.area_m2.tolist() == frame.area_m2.tolist()
    assert not frame.oversize.any()
    assert not list((tmp_path / "map").glob(".*partial*"))


def test_a_region_over_max_area_is_written_as_flagged_parts(pixel_model, tmp_path):
    """The 450 m² building crossing the row-512 strip border, with --max-area 300: two parts
    flagged oversize; the small buildings stay whole and unflagged."""
    model, _ = pixel_model
    scene = _scene(tmp_path / "scene.tif")
    cfg = SceneConfig(window=64, overlap=16, max_area=300.0)
    predict_scene(model, scene, tmp_path / "map", config=cfg)
    frame = gpd.read_file(tmp_path / "map" / "buildings.gpkg", layer="buildings")
    parts = frame[frame.oversize]
    assert len(parts) == 2
    assert sorted(parts.pixels) == [22 * 100, 28 * 100]  # cut at the strip border, row 512
    assert len(frame) == len(BUILDINGS) + 1


def test_windows_layer_tiles_the_scene_and_skips_nodata_windows(pixel_model, tmp_path):
    model, _ = pixel_model
    data = np.full((3, 256, 256), 60, np.uint8)
    data[:, :, :128] = 0  # the western half is nodata
    scene = write_raster(tmp_path / "half.tif", data, transform=utm_transform(0.3), nodata=0)
    result = predict_scene(model, scene, tmp_path / "map", config=SceneConfig(window=64, overlap=0))
    assert result.windows == 16 and result.windows_skipped == 8
    win = gpd.read_file(tmp_path / "map" / "windows.gpkg", layer="windows")
    assert len(win) == 8
    assert win.area.sum() == pytest.approx(128 * 256 * 0.09)
    assert {"pred_iou", "soft_iou", "mean_entropy", "building_fraction"} <= set(win.columns)
    with rasterio.open(tmp_path / "map" / "probability.tif") as ds:
        assert (ds.read(1)[:, :128] == 255).all()


def test_tta_of_an_equivariant_model_changes_nothing_and_agrees(pixel_model, tmp_path):
    model, meta = pixel_model
    scene = _scene(tmp_path / "scene.tif", h=200, w=200, nodata_block=False)
    predict_scene(model, scene, tmp_path / "tta", config=SceneConfig(window=64, tta=True))
    win = gpd.read_file(tmp_path / "tta" / "windows.gpkg")
    assert (win.tta_agreement > 0.999).all() and (win.tta_spread < 1e-5).all()
    with rasterio.open(tmp_path / "tta" / "probability.tif") as ds:
        raw = ds.read(1)
    expected = _expected_prob(scene, meta)
    assert np.abs(raw / 254 - expected).max() <= 0.5 / 254 + 1e-6


def test_float16_probabilities_use_nan_nodata(pixel_model, tmp_path):
    model, meta = pixel_model
    scene = _scene(tmp_path / "scene.tif", h=200, w=300)
    predict_scene(
        model, scene, tmp_path / "f16", config=SceneConfig(window=64, prob_format="float16")
    )
    with rasterio.open(tmp_path / "f16" / "probability.tif") as ds:
        prob = ds.read(1)
        assert ds.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "16"
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    with rasterio.open(scene) as src:
        valid = src.dataset_mask() > 0
    assert np.isnan(prob[~valid]).all() and not np.isnan(prob[valid]).any()
    assert np.abs(prob[valid] - _expected_prob(scene, meta)[valid]).max() < 1e-3


def test_geographic_scene_is_resampled_to_the_model_resolution(pixel_model, tmp_path):
    model, meta = pixel_model
    from affine import Affine

    deg = 0.15 / 111_320  # ~0.15 m pixels: half the model's 0.3 m
    data = np.full((3, 300, 300), 60, np.uint8)
    data[:, 100:200, 100:200] = 220
    scene = write_raster(
        tmp_path / "geo.tif",
        data,
        crs="EPSG:4326",
        transform=Affine(deg, 0, 85.52, 0, -deg, 27.63),
    )
    result = predict_scene(model, scene, tmp_path / "map", config=SceneConfig(window=64))
    manifest = json.loads((tmp_path / "map" / "predict.json").read_text())
    assert manifest["resampled"] is True and manifest["gsd_m"][0] == pytest.approx(meta.gsd_m)
    shrink = np.cos(np.radians(27.63))  # a degree of longitude is shorter than one of latitude
    assert result.width == pytest.approx(300 * 0.5 * shrink, abs=2)
    assert result.height == pytest.approx(300 * 0.5, rel=0.02)
    with rasterio.open(tmp_path / "map" / "mask.tif") as ds:
        assert ds.crs == "EPSG:4326"
    frame = gpd.read_file(tmp_path / "map" / "buildings.gpkg")
    assert len(frame) == 1
    assert frame.area_m2.iloc[0] == pytest.approx(15.0 * 15.0 * shrink, rel=0.08)


def test_regularized_outlines_are_rectangles(pixel_model, tmp_path):
    model, _ = pixel_model
    scene = _scene(tmp_path / "scene.tif", h=200, w=200, nodata_block=False)
    predict_scene(model, scene, tmp_path / "map", config=SceneConfig(window=64, regularize=True))
    frame = gpd.read_file(tmp_path / "map" / "buildings.gpkg")
    assert len(frame) == 1
    assert len(frame.geometry.iloc[0].exterior.coords) == 5


def test_an_engine_that_fails_stops_the_reader_started_beside_it(pixel_model, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    """The reader starts on the first batches while the engine is made ready; when that
    fails, the error is the engine's, the reader is stopped, and nothing is left in --out."""
    import threading

    from rscrisis.errors import ProcessingError
    from rscrisis.predict import scene as scenes

    model_path, _ = pixel_model
    scene = _scene(tmp_path / "scene.tif")
    started = threading.Event()
    reader = scenes._read_batches

    def watched(*args, **kwargs):
        started.set()
        yield from reader(*args, **kwargs)

    def failing(*args, **kwargs):
        assert started.wait(10)  # the reader is already running
        raise ProcessingError("no engine here")

    monkeypatch.setattr(scenes, "_read_batches", watched)
    monkeypatch.setattr("rscrisis.ml.engine.select_engine", failing)
    out = tmp_path / "map"
    with pytest.raises(ProcessingError, match="no engine here"):
        predict_scene(model_path, scene, out, config=SceneConfig(window=128, threads=1))
    assert not [t for t in threading.enumerate() if t.name == "rscrisis-reader" and t.is_alive()]
    assert not out.exists() or not any(out.iterdir())
