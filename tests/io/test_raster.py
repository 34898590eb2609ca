import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rscrisis.config import TileConfig
from rscrisis.errors import BandError, NotGeoreferencedError, RasterReadError
from rscrisis.io.raster import (
    expand_raster_inputs,
    inspect_scene,
    open_grid,
    read_padded,
    target_grid,
)
from tests.conftest import gradient, utm_transform, write_raster

SIDECAR = """<PAMDataset>
  <SRS dataAxisToSRSAxisMapping="2,1">EPSG:4326</SRS>
  <GeoTransform>  8.55e+01,  1.0e-05,  0.0,  2.76e+01,  0.0, -1.0e-05</GeoTransform>
</PAMDataset>
"""


NO_GEOREF_WRITE = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@NO_GEOREF_WRITE
def test_sidecar_georeferencing_is_read(tmp_path):
    path = tmp_path / "chip.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8") as dst:
        dst.write(gradient(3, 8, 8))
    (tmp_path / "chip.tif.aux.xml").write_text(SIDECAR)
    info = inspect_scene(path)
    assert info.crs.to_epsg() == 4326
    assert info.transform.c == pytest.approx(85.5) and info.transform.a == pytest.approx(1e-5)
    assert info.gsd_m[0] == pytest.approx(1e-5 * 111320 * np.cos(np.radians(27.6)), rel=0.01)


@NO_GEOREF_WRITE
def test_missing_georeferencing_is_an_input_error(tmp_path):
    path = tmp_path / "plain.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(NotGeoreferencedError, match="plain.tif: has no georeferencing") as err:
        inspect_scene(path)
    assert err.value.exit_code == 2


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00garbage")
    with pytest.raises(RasterReadError, match="broken.tif: cannot be read"):
        inspect_scene(path)


def test_band_selection_and_alpha(tmp_path):
    data = gradient(3, 16, 16)
    alpha = np.full((16, 16), 255, np.uint8)
    path = write_raster(tmp_path / "rgba.tif", data, alpha=alpha)
    info = inspect_scene(path)
    assert info.has_alpha and info.bands == (1, 2, 3)
    assert info.colorinterp == ("red", "green", "blue")
    assert inspect_scene(path, [3, 1]).bands == (3, 1)
    with pytest.raises(BandError, match="band 5 does not exist: the raster has 4 band"):
        inspect_scene(path, [1, 5])


def test_expand_inputs_files_folders_globs(tmp_path):
    for name in ("b.tif", "a.tif"):
        write_raster(tmp_path / name, gradient(1, 4, 4))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in expand_raster_inputs([tmp_path])] == ["a.tif", "b.tif"]
    assert [p.name for p in expand_raster_inputs([str(tmp_path / "a*.tif")])] == ["a.tif"]
    assert len(expand_raster_inputs([tmp_path / "a.tif", tmp_path])) == 2  # de-duplicated
    with pytest.raises(RasterReadError, match="no such file"):
        expand_raster_inputs([tmp_path / "missing.tif"])
    with pytest.raises(RasterReadError, match="matches no file"):
        expand_raster_inputs([str(tmp_path / "zz*.tif")])


def test_read_padded_marks_padding_and_nodata_invalid(tmp_path):
    data = gradient(2, 10, 12, "uint16")
    data[:, 0, 0] = 9999
    path = write_raster(tmp_path / "s.tif", data, nodata=9999)
    with rasterio.open(path) as ds:
        out, valid = read_padded(ds, [1, 2], Window(8, 6, 8, 8), fill=9999)
        assert out.shape == (2, 8, 8) and out.dtype == np.uint16
        np.testing.assert_array_equal(out[:, :4, :4], data[:, 6:10, 8:12])
        assert valid[:4, :4].all() and not valid[4:, :].any() and not valid[:, 4:].any()
        assert (out[:, 4:, :] == 9999).all()
        _, valid0 = read_padded(ds, [1, 2], Window(0, 0, 4, 4))
        assert not valid0[0, 0] and valid0.sum() == 15


def test_target_grid_in_metres_for_projected_and_geographic(tmp_path):
    path = write_raster(tmp_path / "s.tif", gradient(1, 100, 60), transform=utm_transform(0.1))
    info = inspect_scene(path)
    grid = target_grid(info, 0.3, "bilinear")
    # UTM: 0.3 ground m = 0.29996 CRS m at this easting (scale factor 0.99986)
    assert grid.resampled and grid.transform.a == pytest.approx(0.3, rel=2e-4)
    assert (grid.width, grid.height) == (20, 34)  # 6 m x 10 m, last row padded by the grid
    assert grid.transform.c == info.transform.c and grid.transform.f == info.transform.f
    geo = write_raster(
        tmp_path / "g.tif",
        gradient(1, 50, 50),
        crs="EPSG:4326",
        transform=rasterio.Affine(1e-5, 0, 85.5, 0, -1e-5, 27.6),
    )
    ginfo = inspect_scene(geo)
    ggrid = target_grid(ginfo, 2.0, "bilinear")
    assert ggrid.crs.to_epsg() == 4326
    assert ggrid.gsd_m == (2.0, 2.0)
    assert ggrid.transform.a * 111320 * np.cos(np.radians(27.6)) == pytest.approx(2.0, rel=0.01)
    with open_grid(ginfo, ggrid) as ds:
        assert (ds.width, ds.height) == (ggrid.width, ggrid.height)
        assert ds.crs.to_epsg() == 4326


def test_web_mercator_is_measured_in_ground_metres_like_utm(tmp_path):
    """The same 100 m square scene at 60° N in UTM and in Web Mercator (where one CRS metre is
    cos 60° = 0.5 ground metres): ground resolution, resampling to metres and building areas
    agree; taking EPSG:3857 units as metres would double the resolution and quadruple areas."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from rscrisis.geo.polygons import mask_buildings
    from rscrisis.geo.tiling import tile

    utm_crs, res = "EPSG:32633", 0.5
    utm = write_raster(
        tmp_path / "utm.tif",
        gradient(3, 200, 200),
        crs=utm_crs,
        transform=rasterio.Affine(res, 0, 500_000, 0, -res, 6_655_000),
    )
    with rasterio.open(utm) as src:
        transform, w, h = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds
        )
        data = np.zeros((3, h, w), np.uint8)
        reproject(
            src.read(),
            data,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs="EPSG:3857",
            resampling=Resampling.nearest,
        )
    merc = write_raster(tmp_path / "merc.tif", data, crs="EPSG:3857", transform=transform)
    a, b = inspect_scene(utm), inspect_scene(merc)
    assert a.gsd_m[0] == pytest.approx(res, rel=1e-3)
    assert b.transform.a == pytest.approx(2 * b.gsd_m[0], rel=0.01)  # 1 CRS m = 0.5 ground m
    assert b.gsd_m[0] == pytest.approx(a.gsd_m[0], rel=0.02)
    ga, gb = target_grid(a, 1.0, "bilinear"), target_grid(b, 1.0, "bilinear")
    assert ga.width in (100, 101) and abs(gb.width - ga.width) <= 2  # 100 m = 100.04 UTM m
    # the tiler plans the same number of 1 m tiles from both
    ra = tile([utm], tmp_path / "ta", config=TileConfig(size=32, resolution=1.0))
    rb = tile([merc], tmp_path / "tb", config=TileConfig(size=32, resolution=1.0))
    assert ra.scenes[0]["grid"] == rb.scenes[0]["grid"] == [4, 4]
    # a 40 x 40 px building is 20 m x 20 m = 400 m² on both grids
    mask = np.zeros((100, 100), bool)
    mask[30:70, 30:70] = True
    prob = mask.astype(np.float32)
    for info in (a, b):
        frame = mask_buildings(mask, prob, info.transform, info.crs, info.gsd_m, simplify=0)
        assert frame.area_m2.iloc[0] == pytest.approx(400, rel=0.02)


def _textured(dtype: str = "uint8", seed: int = 0, shape=(90, 110)) -> np.ndarray:
    """Smooth structure plus noise: resampling errors show up as value differences."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    smooth = 100 + 60 * np.sin(xx / 7.0) + 50 * np.cos(yy / 5.0)
    bands = [smooth + rng.normal(0, 8, smooth.shape) + 20 * b for b in range(3)]
    return np.clip(np.stack(bands), 1, 250).astype(dtype)


@pytest.mark.parametrize("mask", ["none", "nodata", "alpha"])
@pytest.mark.parametrize("resolution", [0.2, 0.45, 1.1])  # up, and down by 1.5 and 3.7
def test_scaled_reader_matches_the_gdal_warper(tmp_path, mask, resolution):
    """open_grid's separable bilinear reader gives GDAL's warped values (within one grey
    level) and the same validity, up- and downsampling, with nodata holes and alpha, in
    windows that run past the grid on every side."""
    from rscrisis.io.raster import ScaledReader

    data = _textured()
    extra: dict = {}
    if mask == "nodata":
        data[:, 30:50, 40:70] = 0
        data[:, :, :3] = 0
        extra["nodata"] = 0
    elif mask == "alpha":
        alpha = np.full((90, 110), 255, np.uint8)
        alpha[60:, 80:] = 0
        extra["alpha"] = alpha
    path = write_raster(tmp_path / "s.tif", data, transform=utm_transform(0.3), **extra)
    info = inspect_scene(path)
    grid = target_grid(info, resolution, "bilinear")
    with open_grid(info, grid, gdal=True) as ref, open_grid(info, grid) as fast:
        assert isinstance(fast, ScaledReader) and not isinstance(ref, ScaledReader)
        windows = [
            Window(0, 0, grid.width, grid.height),
            Window(-5, 3, grid.width + 9, 17),
            Window(7, -2, 13, grid.height + 6),
        ]
        for window in windows:
            want, want_valid = ref.read([1, 2, 3], window, fill=7)
            got, got_valid = fast.read([1, 2, 3], window, fill=7)
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got_valid, want_valid)
            diff = np.abs(got.astype(int) - want)[:, got_valid]
            assert diff.max() <= 1
            assert (got[:, ~got_valid] == 7).all()
            if mask == "none":
                assert got_valid[:, max(0, -int(window.col_off))].any()


def test_scaled_reader_float_and_uint16(tmp_path):
    """Other dtypes: float32 is not rounded, uint16 is, both within 0.2 % of GDAL's warper
    (its downsampling kernel differs by a hair outside Byte). Pixels whose centre lies
    outside the scene are invalid, where the warper's alpha is lost on float bands."""
    for dtype, scale in (("float32", 1.0), ("uint16", 40)):
        data = (_textured("float32") * scale).astype(dtype)
        path = write_raster(tmp_path / f"{dtype}.tif", data, transform=utm_transform(0.3))
        info = inspect_scene(path)
        for resolution in (0.2, 0.45):
            grid = target_grid(info, resolution, "bilinear")
            with open_grid(info, grid, gdal=True) as ref, open_grid(info, grid) as fast:
                full = Window(0, 0, grid.width, grid.height)
                want, _ = ref.read([1, 2, 3], full)
                got, valid = fast.read([1, 2, 3], full)
                assert got.dtype == np.dtype(dtype)
                diff = np.abs(got.astype(float) - want)[:, valid]
                assert diff.max() < 2e-3 * want.max()
                if dtype == "float32" and resolution == 0.2:
                    # 166 columns of 0.2 m cover 33.2 m of a 33 m scene: the last lies outside
                    # (and the last row: 136 x 0.2 m > 27 m)
                    assert not valid[:, -1].any() and valid[:-1, -2].all()
                    assert not np.array_equal(got, np.round(got))


def test_open_grid_resamples_rotated_and_rgba_scenes(tmp_path):
    """A rotated scene is warped by GDAL (the separable reader needs a north-up one); an RGBA
    scene no longer makes the warper refuse a second alpha band."""
    from rscrisis.io.raster import ScaledReader

    alpha = np.full((90, 110), 255, np.uint8)
    alpha[:10] = 0
    rgba = write_raster(
        tmp_path / "rgba.tif", _textured(), transform=utm_transform(0.3), alpha=alpha
    )
    rotated = write_raster(
        tmp_path / "rot.tif",
        _textured(),
        transform=utm_transform(0.3) @ rasterio.Affine.rotation(10),
        alpha=alpha,
    )
    for path, fast in ((rgba, True), (rotated, False)):
        info = inspect_scene(path)
        grid = target_grid(info, 0.5, "bilinear")
        with open_grid(info, grid) as reader:
            assert isinstance(reader, ScaledReader) is fast
            data, valid = reader.read([1, 2, 3], Window(0, 0, grid.width, grid.height))
        assert valid.any() and not valid.all()
        assert data[:, valid].min() > 0


def test_scaled_reader_bounds_its_source_blocks(tmp_path, monkeypatch):
    """However strong the downsampling, one resampling step reads at most about
    SCALED_READ_BYTES of source pixels (a header may claim a 1 mm scene), and the blocks
    give the same values as one read."""
    import rscrisis.io.raster as raster

    image = _textured(shape=(600, 640))
    path = write_raster(tmp_path / "fine.tif", image, transform=utm_transform(0.01))
    info = inspect_scene(path)
    grid = target_grid(info, 0.2, "bilinear")  # 20x downsampling: 400 source px per output px
    window = Window(-2, -1, grid.width + 3, grid.height + 2)
    with open_grid(info, grid) as reader:
        whole, whole_valid = reader.read([1, 2, 3], window)
        seen: list[int] = []
        real = raster.read_padded

        def recording(ds, bands, win, fill=0):
            seen.append(int(win.width) * int(win.height))
            return real(ds, bands, win, fill)

        monkeypatch.setattr(raster, "read_padded", recording)
        monkeypatch.setattr(raster, "SCALED_READ_BYTES", 3 * 4 * 60_000)
        parts, parts_valid = reader.read([1, 2, 3], window)
    assert len(seen) >= 30 and max(seen) <= 60_000  # a whole read: 384,000 px
    np.testing.assert_array_equal(parts, whole)
    np.testing.assert_array_equal(parts_valid, whole_valid)
    assert whole_valid[1:-1, 2:-1].all() and not whole_valid[0].any()
