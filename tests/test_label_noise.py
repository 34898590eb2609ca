import geopandas as gpd
import pytest
from shapely.geometry import box

from rscrisis.errors import InputError
from rscrisis.label_noise import LabelNoise, apply_label_noise
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
        LabelNoise(
            drop=0.3, global_shift_m=(0, 0), jitter_m=0, buffer_std_m=0, simplify_m=0, false_blobs=0
        ),
    )
    assert len(dropped) == pytest.approx(0.7 * len(clean), abs=25)
    assert dropped.geometry.area.sum() == pytest.approx(100 * len(dropped))
    shifted = apply_label_noise(
        clean,
        LabelNoise(
            drop=0, global_shift_m=(2, -1), jitter_m=0, buffer_std_m=0, simplify_m=0, false_blobs=0
        ),
    )
    assert shifted.total_bounds[0] - clean.total_bounds[0] == pytest.approx(2)
    assert shifted.total_bounds[1] - clean.total_bounds[1] == pytest.approx(-1)
    blobs = apply_label_noise(
        clean,
        LabelNoise(
            drop=0, global_shift_m=(0, 0), jitter_m=0, buffer_std_m=0, simplify_m=0, false_blobs=0.1
        ),
    )
    assert len(blobs) == len(clean) + 40


def test_seeded_and_needs_metres():
    clean = grid_of_buildings(5)
    a = apply_label_noise(clean, LabelNoise(seed=1))
    b = apply_label_noise(clean, LabelNoise(seed=1))
    assert a.geometry.geom_equals_exact(b.geometry, 0).all()
    with pytest.raises(InputError, match="projected CRS"):
        apply_label_noise(clean.to_crs(4326), LabelNoise())
