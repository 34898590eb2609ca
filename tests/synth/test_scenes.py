"""The sample-data generator: seeded, georeferenced, with truth that matches the pixels."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from rscrisis.config import SyntheticConfig
from rscrisis.synth.scenes import generate_sample_data
from tests.conftest import SAMPLE_DATA

SMALL = SyntheticConfig(size_a=256, size_b=256, seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd")
    return out, generate_sample_data(out, SMALL)


def test_layout_crs_and_truth_inside_scene(small):
    out, summary = small
    for area in ("area_a", "area_b"):
        with rasterio.open(out / area / f"{area}.tif") as ds:
            assert ds.crs.to_epsg() == 32645 and ds.count == 3 and ds.dtypes[0] == "uint8"
            assert ds.res == (0.3, 0.3)
            bounds = shapely.box(*ds.bounds)
            image = ds.read()
        truth = gpd.read_file(out / area / "buildings.gpkg")
        assert len(truth) == summary["areas"][area]["buildings"] > 5
        assert truth.intersects(bounds).all()
        assert image.std() > 10  # not a flat image
    assert (out / "area_a" / "buildings_osm.gpkg").exists()
    assert not (out / "area_b" / "buildings_osm.gpkg").exists()


def test_noisy_labels_differ_from_truth_but_stay_close(small):
    out, _ = small
    truth = gpd.read_file(out / "area_a" / "buildings.gpkg").union_all()
    noisy = gpd.read_file(out / "area_a" / "buildings_osm.gpkg").union_all()
    iou = truth.intersection(noisy).area / truth.union(noisy).area
    assert 0.3 < iou < 0.95


def test_roof_pixels_differ_from_ground(small):
    out, _ = small
    with rasterio.open(out / "area_a" / "area_a.tif") as ds:
        image = ds.read().astype(float)
        from rasterio.features import rasterize

        truth = gpd.read_file(out / "area_a" / "buildings.gpkg")
        roof = rasterize(
            truth.geometry.buffer(-0.6), out_shape=ds.shape, transform=ds.transform
        ).astype(bool)
    assert roof.mean() > 0.05
    diff = np.abs(image[:, roof].mean(axis=1) - image[:, ~roof].mean(axis=1)).max()
    assert diff > 8


def test_collar_is_masked_in_area_b(small):
    out, _ = small
    with rasterio.open(out / "area_b" / "area_b.tif") as ds:
        mask = ds.read_masks(1)
    assert 0.05 < (mask == 0).mean() < 0.4


def test_same_seed_same_pixels(tmp_path, small):
    out, _ = small
    generate_sample_data(tmp_path, SMALL)
    for area in ("area_a", "area_b"):
        a = rasterio.open(out / area / f"{area}.tif").read()
        b = rasterio.open(tmp_path / area / f"{area}.tif").read()
        np.testing.assert_array_equal(a, b)
    other = tmp_path / "other"
    generate_sample_data(other, SMALL.model_copy(update={"seed": 4}))
    assert not np.array_equal(
        rasterio.open(other / "area_a/area_a.tif").read(),
        rasterio.open(out / "area_a/area_a.tif").read(),
    )


def test_committed_sample_data_is_what_the_generator_makes(tmp_path):
    """sample_data/ must come from the project's own code: regenerate and compare."""
    generate_sample_data(tmp_path, SyntheticConfig())
    for area in ("area_a", "area_b"):
        ours = rasterio.open(tmp_path / area / f"{area}.tif").read()
        committed = rasterio.open(SAMPLE_DATA / area / f"{area}.tif").read()
        # footprints are pure numpy/shapely and must match exactly; pixels pass through the
        # JPEG codec of the installed GDAL, so allow for a different libjpeg build
        assert ours.shape == committed.shape
        assert np.abs(ours.astype(int) - committed).mean() < 0.5
        a = gpd.read_file(tmp_path / area / "buildings.gpkg")
        b = gpd.read_file(SAMPLE_DATA / area / "buildings.gpkg")
        assert a.geometry.geom_equals_exact(b.geometry, 1e-6).all()
