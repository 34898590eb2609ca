import geopandas as gpd
import pytest
from shapely.geometry import box

from rscrisis.config import NoiseConfig
from rscrisis.errors import InputError
from rscrisis.geo.label_noise import apply_label_noise
from tests.conftest import UTM


def grid_of_buildings(n=20):
    geoms = [
        box(354_000 + 20 * i, 3_057_000 + 20 * j, 354_010 + 20 * i, 3_057_010 + 20 * j)
        for i in range(n)
        for j in range(n)
    ]
    return gpd.GeoDataFrame(geometry=geoms, crs=UTM)


def test_each_knob_does_what_it_says():
    clean = grid_of_buildings()
    dropped = apply_label_noise(
        clean,
        NoiseConfig(
            drop=0.3, global_shift_m=(0, 0), jitter_m=0, buffer_std_m=0, simplify_m=0, false_blobs=0
        ),
    )
    assert len(dropped) == pytest.approx(0.7 * len(clean), abs=25)
    assert dropped.geometry.area.sum() == pytest.approx(100 * len(dropped))
    shifted = apply_label_noise(
        clean,
        NoiseConfig(
            drop=0, global_shift_m=(2, -1), jitter_m=0, buffer_std_m=0, simplify_m=0, false_blobs=0
        ),
    )
    assert shifted.total_bounds[0] - clean.total_bounds[0] == pytest.approx(2)
    assert shifted.total_bounds[1] - clean.total_bounds[1] == pytest.approx(-1)
    blobs = apply_label_noise(
        clean,
        NoiseConfig(
            drop=0, global_shift_m=(0, 0), jitter_m=0, buffer_std_m=0, simplify_m=0, false_blobs=0.1
        ),
    )
    assert len(blobs) == len(clean) + 40


def test_seeded_and_needs_metres():
    clean = grid_of_buildings(5)
    a = apply_label_noise(clean, NoiseConfig(seed=1))
    b = apply_label_noise(clean, NoiseConfig(seed=1))
    assert a.geometry.geom_equals_exact(b.geometry, 0).all()
    with pytest.raises(InputError, match="projected CRS"):
        apply_label_noise(clean.to_crs(4326), NoiseConfig())


def test_noise_command_on_geographic_labels(invoke, tmp_path):
    """Knobs in metres work on EPSG:4326 input (noised in UTM), output keeps the input CRS."""
    import geopandas as gpd
    from shapely.geometry import box

    from tests.conftest import write_vector

    deg = 1 / 111_000
    squares = [
        box(85.5 + i * 20 * deg, 27.6, 85.5 + (i * 20 + 10) * deg, 27.6 + 10 * deg)
        for i in range(40)
    ]
    src = write_vector(tmp_path / "b.geojson", squares, "EPSG:4326", driver="GeoJSON")
    out = tmp_path / "noisy.gpkg"
    r = invoke("noise", src, "--out", out, "--drop", "0.5", "--false-blobs", "0", "--json")
    assert r.exit_code == 0, r.stderr
    noisy = gpd.read_file(out)
    assert noisy.crs.to_epsg() == 4326
    assert 10 <= len(noisy) <= 30  # about half dropped
    shift = (
        noisy.to_crs(32645).centroid.x.mean()
        - gpd.GeoSeries(squares, crs=4326).to_crs(32645).centroid.x.mean()
    )
    assert abs(shift) < 20  # metres, not degrees: the shift did not blow up
    again = invoke("noise", src, "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    bad = invoke("noise", src, "--out", tmp_path / "x.gpkg", "--drop", "1.5")
    assert bad.exit_code == 2
