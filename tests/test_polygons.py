import itertools
import math

import numpy as np
import pytest
from affine import Affine
from shapely import affinity
from shapely.geometry import Polygon

from rscrisis.polygons import PolygonCollector, regularize

T = Affine(0.5, 0, 1000.0, 0, -0.5, 2000.0)


def _collect(mask: np.ndarray, strip: int):
    col = PolygonCollector(T, mask.shape[0])
    prob = np.where(mask, 0.9, 0.1)
    for r in range(0, mask.shape[0], strip):
        col.add_strip(r, mask[r : r + strip], prob[r : r + strip])
    return col.finish()


def test_a_building_across_several_strips_is_one_polygon_with_exact_area():
    mask = np.zeros((100, 60), bool)
    mask[5:95, 10:20] = True  # crosses every 16-row strip border
    mask[30:33, 40:50] = True  # inside one strip
    pieces = _collect(mask, strip=16)
    assert len(pieces) == 2
    big = max(pieces, key=lambda p: p.pixels)
    assert big.pixels == 90 * 10
    assert big.geom.area == pytest.approx(90 * 10 * 0.25)
    assert big.geom.geom_type == "Polygon" and big.geom.is_valid
    assert big.prob_sum / big.pixels == pytest.approx(0.9)
    assert big.geom.bounds == (1005.0, 2000 - 47.5, 1010.0, 2000 - 2.5)


def test_u_shape_joined_only_in_a_later_strip_is_merged():
    mask = np.zeros((40, 40), bool)
    mask[0:30, 5:10] = True
    mask[0:30, 25:30] = True
    mask[25:30, 5:30] = True  # the bottom bar joins the two arms in the second strip
    pieces = _collect(mask, strip=20)
    assert len(pieces) == 1
    assert pieces[0].pixels == int(mask.sum())


def test_corner_contact_across_a_strip_border_stays_two_buildings():
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    mask[10:15, 10:15] = True  # touches the first only at a corner (4-connectivity)
    pieces = _collect(mask, strip=10)
    assert sorted(p.pixels for p in pieces) == [25, 25]


def _noisy_outline(poly: Polygon, sigma: float, seed: int = 0) -> Polygon:
    rng = np.random.default_rng(seed)
    pts = []
    coords = list(poly.exterior.coords)
    for a, b in itertools.pairwise(coords):
        for t in np.linspace(0, 1, 6)[:-1]:
            pts.append(np.array(a) * (1 - t) + np.array(b) * t + rng.normal(0, sigma, 2))
    return Polygon(pts)


@pytest.mark.parametrize("angle", [0, 17, 30, 62])
def test_regularize_gives_right_angles_close_to_the_true_outline(angle):
    ell = Polygon([(0, 0), (10, 0), (10, 4), (4, 4), (4, 8), (0, 8)])
    truth = affinity.rotate(ell, angle, origin=(0, 0))
    noisy = affinity.rotate(_noisy_outline(ell, 0.15), angle, origin=(0, 0))
    out = regularize(noisy, tolerance=0.3)
    coords = np.asarray(out.exterior.coords)
    assert len(coords) - 1 == 6
    edges = np.diff(coords, axis=0)
    for e1, e2 in zip(edges, np.roll(edges, -1, axis=0), strict=True):
        cos = abs(e1 @ e2) / (np.linalg.norm(e1) * np.linalg.norm(e2))
        assert cos < 1e-6  # every corner is a right angle
    assert truth.symmetric_difference(out).area < 0.1 * truth.area
    assert math.isclose(out.area, truth.area, rel_tol=0.1)


def test_regularize_falls_back_on_shapes_it_cannot_square():
    circle = Polygon(
        [(math.cos(t) * 5, math.sin(t) * 5) for t in np.linspace(0, 2 * math.pi, 40)[:-1]]
    )
    out = regularize(circle, tolerance=0.2)
    assert out.is_valid
    assert abs(out.area - circle.area) <= 0.25 * circle.area


def test_merging_is_exact_with_real_world_coordinates():
    """UTM-sized origins and 0.3 m pixels: strip borders computed from two strips' transforms
    differ in the last bits; pieces are merged in pixel space, so they still join."""
    t = Affine(0.3, 0, 354_000.0, 0, -0.3, 3_057_000.0)
    mask = np.zeros((600, 300), bool)
    mask[490:540, 100:200] = True
    col = PolygonCollector(t, 600)
    for r in range(0, 600, 256):
        col.add_strip(r, mask[r : r + 256], mask[r : r + 256].astype(float))
    pieces = col.finish()
    assert len(pieces) == 1 and pieces[0].pixels == 5000
    assert pieces[0].geom.bounds == pytest.approx((354_030.0, 3_056_838.0, 354_060.0, 3_056_853.0))
