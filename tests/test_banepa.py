"""Tiling the real Banepa data in ../shared (skipped when it is absent)."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from rscrisis.config import TileConfig
from rscrisis.geo.tiling import tile
from rscrisis.io.tileset import read_index

pytestmark = pytest.mark.shared


def test_raw_chips_with_sidecars(banepa, tmp_path):
    chips = sorted((banepa / "raw" / "train").glob("*.tif"))[:4]
    out = tmp_path / "raw"
    res = tile(
        chips, out, labels=[banepa / "train" / "buildings_osm.geojson"], config=TileConfig(size=256)
    )
    assert res.tiles == 4 * 4
    for chip in chips:
        with rasterio.open(chip) as src:
            assert src.crs.to_epsg() == 4326  # from the .aux.xml sidecar
            chip_t = src.transform
            chip_px = src.read(window=Window(256, 256, 256, 256))
        with rasterio.open(out / "images" / f"{chip.stem}_r0001_c0001.tif") as ds:
            assert ds.crs.to_epsg() == 4326
            assert ds.transform == window_transform(Window(256, 256, 256, 256), chip_t)
            np.testing.assert_array_equal(ds.read(), chip_px)
    index = read_index(out)
    assert index.crs.to_epsg() == 4326
    assert index.building_fraction.mean() > 0.1


def test_mosaic_native_and_resampled(banepa, tmp_path):
    labels = banepa / "train" / "buildings_osm.geojson"
    res = tile(
        [banepa / "train" / "scene.tif"],
        tmp_path / "native",
        labels=[labels],
        config=TileConfig(size=512),
    )
    assert res.scenes[0]["grid"] == [8, 6] and res.tiles == 48
    index = read_index(tmp_path / "native")
    assert 0.15 < index.building_fraction.mean() < 0.7

    res = tile(
        [banepa / "train" / "scene.tif"],
        tmp_path / "r03",
        labels=[labels],
        config=TileConfig(size=256, resolution=0.3),
    )
    manifest = json.loads((tmp_path / "r03" / "tileset.json").read_text())
    scene = manifest["scenes"][0]
    assert scene["resampled"] and scene["gsd_m"] == [0.3, 0.3]
    assert scene["native_gsd_m"][0] == pytest.approx(0.132, abs=0.002)
    # burnt building area in m^2 agrees with the footprints' area inside the tiles
    index = read_index(tmp_path / "r03")
    burnt = 0
    for tid in index.tile_id:
        with rasterio.open(tmp_path / "r03" / "masks" / f"{tid}.tif") as ds:
            burnt += int((ds.read(1) == 1).sum())
    footprints = gpd.read_file(labels).to_crs(32645)
    area = gpd.GeoSeries(index.union_all(), crs=4326).to_crs(32645).iloc[0]
    truth = footprints.geometry.intersection(area).union_all().area
    assert burnt * 0.09 == pytest.approx(truth, rel=0.05)


def test_predict_scene_without_labels(banepa, tmp_path):
    res = tile(
        [banepa / "predict" / "scene.tif"], tmp_path / "p", config=TileConfig(size=256, overlap=32)
    )
    assert res.tiles == 81 and not (tmp_path / "p" / "masks").exists()


@pytest.mark.slow
def test_train_and_predict_on_real_chips(banepa, tmp_path):
    import geopandas as gpd

    from rscrisis.config import PredictConfig, TrainConfig
    from rscrisis.ml.training import train
    from rscrisis.predict.tiles import predict_tiles, read_prob

    chips = sorted((banepa / "raw" / "train").glob("*.tif"))[:6]
    tile(
        chips,
        tmp_path / "t",
        labels=[banepa / "train" / "buildings_osm.geojson"],
        config=TileConfig(size=256),
    )
    model = tmp_path / "m.safetensors"
    result = train(
        [tmp_path / "t"],
        model,
        config=TrainConfig(epochs=1, batch_size=4, val_fraction=0.2, block_tiles=1, threads=2),
    )
    assert result.train_tiles > 0 and result.history[0]["seg_loss"] > 0
    predict_tiles(model, [tmp_path / "t"], tmp_path / "p", config=PredictConfig(batch_size=4))
    scores = gpd.read_file(tmp_path / "p" / "scores.gpkg")
    assert len(scores) == 24 and scores.crs.to_epsg() == 4326
    tid = scores.tile_id.iloc[0]
    with (
        rasterio.open(tmp_path / "p" / "probs" / f"{tid}.tif") as p,
        rasterio.open(tmp_path / "t" / "images" / f"{tid}.tif") as t,
    ):
        assert p.crs.to_epsg() == 4326 and p.transform == t.transform
    prob, valid = read_prob(tmp_path / "p" / "probs" / f"{tid}.tif")
    assert valid.all() and prob.shape == (256, 256)


def test_predict_a_raw_chip_with_sidecar_georeferencing(banepa, tiny_model, tmp_path):
    """A 512 px JPEG chip whose georeferencing lives only in .aux.xml, in EPSG:4326 at 0.13 m:
    resampled to the model's 0.3 m, mapped in EPSG:4326 over the chip's footprint."""
    from rscrisis.config import SceneConfig
    from rscrisis.io.raster import inspect_scene
    from rscrisis.predict.scene import predict_scene

    chip = sorted((banepa / "raw" / "predict").glob("*.tif"))[0]
    result = predict_scene(tiny_model, chip, tmp_path / "map", config=SceneConfig(window=64))
    info = inspect_scene(chip)
    with rasterio.open(tmp_path / "map" / "probability.tif") as ds:
        assert ds.crs.to_epsg() == 4326
        chip_bounds = rasterio.transform.array_bounds(info.height, info.width, info.transform)
        assert ds.bounds.left == pytest.approx(chip_bounds[0], abs=1e-12)
        assert ds.bounds.top == pytest.approx(chip_bounds[3], abs=1e-12)
        assert ds.overviews(1) or min(ds.width, ds.height) <= 512
    assert result.width < info.width  # 0.13 m -> 0.3 m
    manifest = json.loads((tmp_path / "map" / "predict.json").read_text())
    assert manifest["resampled"] and manifest["gsd_m"][0] == pytest.approx(0.3, rel=1e-3)
