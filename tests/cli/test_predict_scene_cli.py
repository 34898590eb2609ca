"""``rscrisis predict MODEL scene.tif``: the real (tiny) model end to end, and bad inputs."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from tests.conftest import gradient, utm_transform, write_raster


def _rgb_scene(path, h=160, w=200, dtype="uint8"):
    return write_raster(path, gradient(3, h, w, dtype), transform=utm_transform(0.3))


def test_predict_scene_writes_every_product(invoke, tiny_model, tmp_path):
    scene = _rgb_scene(tmp_path / "scene.tif")
    out = tmp_path / "map"
    r = invoke("predict", tiny_model, scene, "-o", out, "--json", "--geojson", "--tta", "-q")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["width"] == 200 and summary["height"] == 160
    for name in (
        "probability.tif",
        "mask.tif",
        "buildings.gpkg",
        "buildings.geojson",
        "windows.gpkg",
        "predict.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*partial*"))
    with rasterio.open(out / "probability.tif") as ds, rasterio.open(scene) as src:
        assert ds.transform == src.transform and ds.crs == src.crs
        assert (ds.width, ds.height) == (200, 160)
    win = gpd.read_file(out / "windows.gpkg")
    assert win.pred_iou.between(0, 1).all() and "tta_agreement" in win
    # existing outputs are never replaced silently
    again = invoke("predict", tiny_model, scene, "-o", out)
    assert again.exit_code == 2 and "--overwrite" in again.stderr


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize(
    ("make", "extra", "needle"),
    [
        (lambda p: write_raster(p, gradient(1, 64, 64), transform=utm_transform(0.3)), [], "band"),
        (lambda p: _rgb_scene(p, dtype="uint16"), [], "uint16"),
        (lambda p: write_raster(p, gradient(3, 64, 64), crs=None), [], "georef"),
        (lambda p: p.write_bytes(b"not a tiff") and p, [], "scene.tif"),
        (lambda p: _rgb_scene(p), ["--window", "64", "--overlap", "64"], "overlap"),
        (lambda p: _rgb_scene(p), ["--window", "100"], "multiple of 32"),
        (lambda p: _rgb_scene(p), ["--bands", "1,2,7"], "band"),
        (lambda p: _rgb_scene(p), ["--mc-samples", "4"], "--tta"),
    ],
)
def test_bad_scene_inputs_exit_2_and_write_nothing(
    invoke, tiny_model, tmp_path, make, extra, needle
):
    scene = tmp_path / "scene.tif"
    make(scene)
    out = tmp_path / "map"
    r = invoke("predict", tiny_model, scene, "-o", out, *extra)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert needle.lower() in r.stderr.lower()
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert not out.exists()


def test_two_scenes_map_side_by_side_and_mixed_inputs_are_refused(
    invoke, tiny_model, tiny_tiles, tmp_path
):
    a = _rgb_scene(tmp_path / "a.tif")
    b = _rgb_scene(tmp_path / "b.tif")
    r = invoke("predict", tiny_model, tiny_tiles, a, "-o", tmp_path / "m")
    assert r.exit_code == 2 and "a.tif" in r.stderr
    assert not (tmp_path / "m").exists()
    r = invoke("predict", tiny_model, a, b, "-o", tmp_path / "m", "--threads", "1")
    assert r.exit_code == 0, r.stderr  # several scenes: one product (rscrisis.predict.many)
    assert (tmp_path / "m" / "scenes" / "a" / "mask.tif").exists()
    assert (tmp_path / "m" / "scenes" / "b" / "mask.tif").exists()
    assert (tmp_path / "m" / "mask.vrt").exists() and (tmp_path / "m" / "scenes.gpkg").exists()


def test_scene_with_nodata_keeps_nodata(invoke, tiny_model, tmp_path):
    data = gradient(3, 128, 192)
    data[:, :, :64] = 0
    scene = write_raster(tmp_path / "s.tif", data, transform=utm_transform(0.3), nodata=0)
    r = invoke("predict", tiny_model, scene, "-o", tmp_path / "m", "-q")
    assert r.exit_code == 0, r.stderr
    with rasterio.open(tmp_path / "m" / "mask.tif") as ds:
        mask = ds.read(1)
    assert (mask[:, :64] == 255).all() and np.isin(mask[:, 64:], [0, 1]).all()
