"""Tiling: exact georeferencing, mask correctness, CRS handling, nodata, padding, resume."""

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from shapely.geometry import Polygon, box

from rscrisis.config import TileConfig
from rscrisis.errors import BandError, InputError, NoOverlapError, OutputExistsError
from rscrisis.geo.tiling import grid_positions, tile
from rscrisis.io.tileset import MASK_IGNORE, TileSetLayout, read_index
from tests.conftest import ORIGIN, UTM, gradient, utm_transform, write_raster, write_vector


def read_tile(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.read_masks(), ds.transform, ds.crs, ds.nodata


@pytest.mark.parametrize(
    ("length", "size", "stride", "expected"),
    [
        (256, 256, 256, [0]),
        (100, 256, 256, [0]),
        (257, 256, 256, [0, 256]),
        (600, 256, 192, [0, 192, 384]),
        (576, 256, 192, [0, 192, 384]),
        (700, 256, 192, [0, 192, 384, 576]),
    ],
)
def test_grid_positions_cover_the_axis(length, size, stride, expected):
    pos = grid_positions(length, size, stride)
    assert list(pos) == expected
    assert pos[-1] + size >= length


def test_tiles_georeference_exactly_and_hold_source_pixels(tmp_path):
    data = gradient(3, 100, 150)
    src = write_raster(tmp_path / "scene.tif", data, transform=utm_transform(0.5))
    out = tmp_path / "tiles"
    result = tile([src], out, config=TileConfig(size=64))
    assert result.tiles == 2 * 3
    layout = TileSetLayout(out)
    for row, r in enumerate([0, 64]):
        for col, c in enumerate([0, 64, 128]):
            image, masks, transform, crs, _ = read_tile(
                layout.image_path(f"scene_r{row:04d}_c{col:04d}")
            )
            assert crs.to_string() == UTM
            assert transform == window_transform(Window(c, r, 64, 64), utm_transform(0.5))
            h, w = min(64, 100 - r), min(64, 150 - c)
            np.testing.assert_array_equal(image[:, :h, :w], data[:, r : r + h, c : c + w])
            assert (masks[:, :h, :w] == 255).all()
            assert (masks[:, h:, :] == 0).all() and (masks[:, :, w:] == 0).all()
    index = read_index(out)
    assert list(index.tile_id) == sorted(index.tile_id)
    row = index.set_index("tile_id").loc["scene_r0001_c0002"]
    assert (row.col_off, row.row_off, row.width, row.height) == (128, 64, 64, 64)
    assert row.geometry.equals(box(ORIGIN[0] + 64, ORIGIN[1] - 64, ORIGIN[0] + 96, ORIGIN[1] - 32))
    assert row.nodata_fraction == pytest.approx(1 - (36 * 22) / 64**2)
    assert index.crs.to_epsg() == 32645
    manifest = json.loads(layout.manifest.read_text())
    assert manifest["status"] == "complete" and manifest["config"]["size"] == 64


def test_rotated_transform_round_trips(tmp_path):
    rot = utm_transform(0.5) @ Affine.rotation(20)
    src = write_raster(tmp_path / "rot.tif", gradient(1, 40, 40), transform=rot)
    tile([src], tmp_path / "t", config=TileConfig(size=32))
    _, _, transform, _, _ = read_tile(tmp_path / "t/images/rot_r0001_c0001.tif")
    assert transform.almost_equals(rot @ Affine.translation(32, 32), precision=1e-9)


def test_mask_area_matches_polygons_within_one_pixel_ring(tmp_path):
    res = 0.5
    src = write_raster(tmp_path / "scene.tif", gradient(3, 128, 128), transform=utm_transform(res))
    x0, y0 = ORIGIN
    polys = [
        box(x0 + 3.2, y0 - 20.7, x0 + 17.9, y0 - 4.1),
        shapely.affinity.rotate(box(x0 + 30, y0 - 40, x0 + 45, y0 - 31), 33),
        Polygon([(x0 + 10, y0 - 60), (x0 + 30, y0 - 50), (x0 + 22, y0 - 35), (x0 + 8, y0 - 45)]),
        box(x0 + 28, y0 - 20, x0 + 40, y0 - 8),  # crosses the tile border at x = 32 m
    ]
    labels = write_vector(tmp_path / "b.gpkg", polys, UTM)
    out = tmp_path / "tiles"
    tile([src], out, labels=[labels], config=TileConfig(size=64))
    # reassemble the full mask from the four tiles
    full = np.zeros((128, 128), np.uint8)
    for r in range(2):
        for c in range(2):
            with rasterio.open(out / f"masks/scene_r{r:04d}_c{c:04d}.tif") as ds:
                assert ds.dtypes[0] == "uint8" and ds.nodata == MASK_IGNORE
                full[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64] = ds.read(1)
    assert set(np.unique(full)) <= {0, 1}
    pix = res * res
    for poly in polys:
        inner = poly.buffer(-res * 1.5)
        outer = poly.buffer(res * 1.5)
        minx, miny, maxx, maxy = outer.bounds
        c0, c1 = int((minx - x0) / res), int(np.ceil((maxx - x0) / res))
        r0, r1 = int((y0 - maxy) / res), int(np.ceil((y0 - miny) / res))
        burnt = full[r0:r1, c0:c1].sum() * pix
        assert inner.area <= burnt <= outer.area, poly
        assert burnt == pytest.approx(poly.area, rel=0.08)
    index = read_index(out).set_index("tile_id")
    assert index.loc["scene_r0000_c0000", "building_fraction"] > 0


def test_labels_are_reprojected_to_the_scene_crs(tmp_path):
    """The same building given in EPSG:4326 or in UTM burns the same pixels, both ways round."""
    x0, y0 = ORIGIN
    building = box(x0 + 5, y0 - 25, x0 + 20, y0 - 10)
    utm_labels = write_vector(tmp_path / "utm.gpkg", [building], UTM)
    wgs = gpd.GeoSeries([shapely.segmentize(building, 0.5)], crs=UTM).to_crs(4326)
    wgs_labels = write_vector(tmp_path / "wgs.geojson", list(wgs), "EPSG:4326", driver="GeoJSON")
    src = write_raster(tmp_path / "utm.tif", gradient(1, 64, 64), transform=utm_transform(0.5))
    tile([src], tmp_path / "a", labels=[utm_labels], config=TileConfig(size=64))
    tile([src], tmp_path / "b", labels=[wgs_labels], config=TileConfig(size=64))
    ma = rasterio.open(tmp_path / "a/masks/utm_r0000_c0000.tif").read(1)
    mb = rasterio.open(tmp_path / "b/masks/utm_r0000_c0000.tif").read(1)
    assert ma.sum() == 30 * 30
    assert np.abs(ma.astype(int) - mb).sum() <= 4
    # a geographic scene with projected labels
    lon0, lat0 = 85.5195, 27.6315
    geo_t = Affine(5e-6, 0, lon0, 0, -5e-6, lat0)
    geo = write_raster(tmp_path / "geo.tif", gradient(3, 64, 64), crs="EPSG:4326", transform=geo_t)
    corner = gpd.GeoSeries([shapely.Point(lon0, lat0)], crs=4326).to_crs(UTM).iloc[0]
    b_utm = box(corner.x + 5, corner.y - 20, corner.x + 15, corner.y - 10)
    labels = write_vector(tmp_path / "geo_utm.gpkg", [b_utm], UTM)
    tile([geo], tmp_path / "c", labels=[labels], config=TileConfig(size=64))
    with rasterio.open(tmp_path / "c/masks/geo_r0000_c0000.tif") as ds:
        mc = ds.read(1)
        assert ds.crs.to_epsg() == 4326
    px_m2 = (5e-6 * 111_320 * np.cos(np.radians(lat0))) * (5e-6 * 110_850)
    assert mc.sum() * px_m2 == pytest.approx(100, rel=0.15)


def test_nodata_value_and_edge_padding(tmp_path):
    data = gradient(2, 50, 70, "uint16")
    data[:, :10, :10] = 0
    src = write_raster(tmp_path / "s.tif", data, nodata=0)
    x0, y0 = ORIGIN
    labels = write_vector(tmp_path / "b.gpkg", [box(x0, y0 - 15, x0 + 15, y0)], UTM)
    out = tmp_path / "t"
    tile([src], out, labels=[labels], config=TileConfig(size=64))
    image, _, _, _, nodata = read_tile(out / "images/s_r0000_c0001.tif")
    assert image.dtype == np.uint16 and nodata == 0
    assert (image[:, :, 6:] == 0).all() and (image[:, 50:, :] == 0).all()  # padding = nodata
    mask = rasterio.open(out / "masks/s_r0000_c0000.tif").read(1)
    assert (mask[:10, :10] == MASK_IGNORE).all()  # nodata in the scene
    assert (mask[50:, :] == MASK_IGNORE).all()  # padding below the scene
    assert mask[20, 20] == 1 and mask[45, 45] == 0
    assert (rasterio.open(out / "masks/s_r0000_c0001.tif").read(1)[:, 6:] == MASK_IGNORE).all()


def test_alpha_band_becomes_mask_and_is_not_imagery(tmp_path):
    data = gradient(3, 32, 32)
    alpha = np.full((32, 32), 255, np.uint8)
    alpha[:, :8] = 0
    src = write_raster(tmp_path / "a.tif", data, alpha=alpha)
    out = tmp_path / "t"
    tile([src], out, config=TileConfig(size=32))
    image, masks, _, _, nodata = read_tile(out / "images/a_r0000_c0000.tif")
    assert image.shape == (3, 32, 32) and nodata is None
    assert (masks[:, :, :8] == 0).all() and (masks[:, :, 8:] == 255).all()
    assert read_index(out).nodata_fraction.iloc[0] == pytest.approx(0.25)


def test_band_selection_order_and_uint16_multiband(tmp_path):
    data = gradient(5, 32, 32, "uint16") + 1000
    src = write_raster(tmp_path / "ms.tif", data)
    tile([src], tmp_path / "t", config=TileConfig(size=32, bands=(4, 2)))
    image, *_ = read_tile(tmp_path / "t/images/ms_r0000_c0000.tif")
    np.testing.assert_array_equal(image, data[[3, 1]])
    with pytest.raises(BandError, match="band 6 does not exist"):
        tile([src], tmp_path / "u", config=TileConfig(size=32, bands=(6,)))
    assert not (tmp_path / "u").exists()


def test_overlap_grid_count_and_min_valid(tmp_path):
    data = gradient(1, 300, 500)
    data[:, :, 400:] = 0
    src = write_raster(tmp_path / "s.tif", data, nodata=0)
    res = tile([src], tmp_path / "t", config=TileConfig(size=128, overlap=32))
    # stride 96: rows ceil((300-128)/96)+1 = 3, cols ceil((500-128)/96)+1 = 5
    assert res.scenes[0]["grid"] == [3, 5] and res.tiles == 15
    ids = sorted(p.stem for p in (tmp_path / "t/images").iterdir())
    assert ids[0] == "s_r0000_c0000" and ids[-1] == "s_r0002_c0004"
    res2 = tile([src], tmp_path / "u", config=TileConfig(size=128, overlap=32, min_valid=0.5))
    # column 4 starts at x=384: 16 valid columns of 128 -> skipped
    assert res2.skipped_low_valid == 3 and res2.tiles == 12


def test_rerun_refuses_overwrite_and_resume(tmp_path):
    src = write_raster(tmp_path / "s.tif", gradient(1, 64, 128))
    out = tmp_path / "t"
    tile([src], out, config=TileConfig(size=32))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        tile([src], out, config=TileConfig(size=32))
    # simulate a killed run: one tile missing, a partial file, no index
    layout = TileSetLayout(out)
    layout.image_path("s_r0001_c0003").unlink()
    layout.index.unlink()
    (layout.images / ".s_r0001_c0003.partial.tif").write_bytes(b"half")
    before = layout.image_path("s_r0000_c0000").stat().st_mtime_ns
    res = tile([src], out, config=TileConfig(size=32), resume=True)
    assert (res.written, res.resumed, res.tiles) == (1, 7, 8)
    assert layout.image_path("s_r0000_c0000").stat().st_mtime_ns == before
    assert not list(layout.images.glob(".*"))
    assert len(read_index(out)) == 8
    with pytest.raises(InputError, match="different settings"):
        tile([src], out, config=TileConfig(size=64), resume=True)
    res = tile([src], out, config=TileConfig(size=64), overwrite=True)
    assert res.tiles == 2 and len(list(layout.images.iterdir())) == 2


def test_labels_outside_every_scene_write_nothing(tmp_path):
    src = write_raster(tmp_path / "s.tif", gradient(1, 32, 32))
    far = write_vector(tmp_path / "far.gpkg", [box(0, 0, 10, 10)], UTM)
    with pytest.raises(NoOverlapError, match="no label polygon overlaps"):
        tile([src], tmp_path / "t", labels=[far])
    assert not (tmp_path / "t").exists()


def test_resampling_to_a_coarser_resolution(tmp_path):
    src = write_raster(tmp_path / "s.tif", gradient(3, 200, 200), transform=utm_transform(0.1))
    x0, y0 = ORIGIN
    labels = write_vector(tmp_path / "b.gpkg", [box(x0 + 2, y0 - 8, x0 + 8, y0 - 2)], UTM)
    out = tmp_path / "t"
    res = tile([src], out, labels=[labels], config=TileConfig(size=32, resolution=0.4))
    assert res.scenes[0]["grid"] == [2, 2]  # 20 m / 0.4 m = 50 px -> 2 x 2 tiles of 32
    _, _, transform, _, _ = read_tile(out / "images/s_r0000_c0000.tif")
    # 0.4 ground m is 0.39995 CRS m here (UTM's scale factor 0.99986)
    assert transform.almost_equals(Affine(0.4, 0, x0, 0, -0.4, y0), precision=1e-4)
    mask = rasterio.open(out / "masks/s_r0000_c0000.tif").read(1)
    assert (mask == 1).sum() == 15 * 15
    _, masks11, _, _, _ = read_tile(out / "images/s_r0001_c0001.tif")
    assert masks11[0, :18, :18].all() and not masks11[0, 18:, :].any()


def test_mixed_band_counts_are_refused(tmp_path):
    a = write_raster(tmp_path / "a.tif", gradient(3, 32, 32))
    b = write_raster(tmp_path / "b.tif", gradient(4, 32, 32), photometric="minisblack")
    with pytest.raises(BandError, match="one tile set feeds one model"):
        tile([a, b], tmp_path / "t")


def test_scenes_in_different_crs_share_one_index(tmp_path):
    utm = write_raster(tmp_path / "utm.tif", gradient(1, 32, 32))
    lon0, lat0 = 85.5195, 27.6315
    geo = write_raster(
        tmp_path / "geo.tif",
        gradient(1, 32, 32),
        crs="EPSG:4326",
        transform=Affine(5e-6, 0, lon0, 0, -5e-6, lat0),
    )
    tile([utm, geo], tmp_path / "t", config=TileConfig(size=32))
    index = read_index(tmp_path / "t").set_index("tile_id")
    assert index.crs.to_epsg() == 32645
    assert index.loc["geo_r0000_c0000", "crs"] == "EPSG:4326"
    assert index.loc["utm_r0000_c0000", "crs"] == UTM
    footprint = gpd.GeoSeries([index.loc["geo_r0000_c0000", "geometry"]], crs=UTM).to_crs(4326)
    minx, miny, maxx, maxy = footprint.total_bounds
    assert (minx, maxy) == pytest.approx((lon0, lat0), abs=1e-8)
    assert (maxx, miny) == pytest.approx((lon0 + 32 * 5e-6, lat0 - 32 * 5e-6), abs=1e-8)
    with rasterio.open(tmp_path / "t/images/geo_r0000_c0000.tif") as ds:
        assert ds.crs.to_epsg() == 4326
