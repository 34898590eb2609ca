import itertools

import numpy as np
import pytest

from rscrisis.geo.windows import WindowPlan, core_bounds, taper, window_offsets


@pytest.mark.parametrize(
    ("length", "size", "stride"),
    [(1000, 256, 192), (256, 256, 192), (100, 256, 192), (513, 64, 48)],
)
def test_offsets_cover_the_axis_without_running_past_it(length, size, stride):
    offsets = window_offsets(length, size, stride)
    covered = np.zeros(max(length, size), bool)
    for o in offsets:
        covered[o : o + size] = True
    assert covered[:length].all()
    assert offsets[0] == 0
    assert offsets[-1] + size == max(length, size)
    assert all(b - a <= stride for a, b in itertools.pairwise(offsets))


def test_ramps_are_a_partition_of_unity_over_a_regular_overlap():
    size, overlap = 64, 16
    left = taper(size, overlap, start=False, end=True)
    right = taper(size, overlap, start=True, end=False)
    np.testing.assert_allclose(left[-overlap:] + right[:overlap], 1.0, atol=1e-6)
    assert (left > 0).all() and (right > 0).all()
    assert left[0] == 1.0 and right[-1] == 1.0  # scene borders are not tapered


def test_cores_tile_the_axis_exactly():
    offsets = window_offsets(1000, 256, 192)
    cores = core_bounds(offsets, 256, 1000)
    assert cores[0][0] == 0 and cores[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(cores))
    for (lo, hi), o in zip(cores, offsets, strict=True):
        assert o <= lo < hi <= o + 256  # a window owns only pixels it sees


def test_plan_lists_windows_row_major():
    plan = WindowPlan.build(300, 200, 128, 32)
    specs = plan.windows()
    assert len(specs) == len(plan) == 2 * 3
    assert [(s.row, s.col) for s in specs] == [(r, c) for r in range(2) for c in range(3)]
    assert plan.weights(specs[0]).shape == (128, 128)
    with pytest.raises(ValueError, match="overlap"):
        WindowPlan.build(300, 200, 128, 128)
