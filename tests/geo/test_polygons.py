import itertools
import math

import numpy as np
import pytest
from affine import Affine
from shapely import affinity
from shapely.geometry import Polygon

from rscrisis.geo.polygons import (
    BuildingLayer,
    BuildingShaper,
    OutlineOptions,
    Piece,
    PolygonCollector,
    mask_buildings,
    regularize,
)

T = Affine(0.5, 0, 1000.0, 0, -0.5, 2000.0)
EXACT = OutlineOptions(min_area=0, simplify=0)


def _collect(mask: np.ndarray, strip: int, transform: Affine = T, gsd=(0.5, 0.5)):
    """Buildings as map-coordinate pieces, plus the most pieces ever held at once."""
    shaper = BuildingShaper(transform, gsd, EXACT)
    out: list[Piece] = []

    def emit(piece: Piece) -> None:
        rec = shaper(piece)
        out.append(Piece(rec["geometry"], rec["pixels"], piece.prob_sum))

    col = PolygonCollector(mask.shape[0], emit)
    prob = np.where(mask, 0.9, 0.1)
    held = 0
    for r in range(0, mask.shape[0], strip):
        col.add_strip(r, mask[r : r + strip], prob[r : r + strip])
        held = max(held, len(col._open))
    col.finish()
    _collect.held = held
    return out


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
    pieces = _collect(mask, 256, t, (0.3, 0.3))
    assert len(pieces) == 1 and pieces[0].pixels == 5000
    assert pieces[0].geom.bounds == pytest.approx((354_030.0, 3_056_838.0, 354_060.0, 3_056_853.0))


def test_buildings_are_emitted_as_soon_as_complete_so_memory_does_not_grow_with_their_number():
    """A grid of 400 small buildings, 8 strips: only those on the current border are held."""
    mask = np.zeros((400, 400), bool)
    for r in range(5, 400, 20):
        for c in range(5, 400, 20):
            mask[r : r + 8, c : c + 8] = True
    pieces = _collect(mask, strip=50)
    assert len(pieces) == 400
    assert {p.pixels for p in pieces} == {64}
    assert _collect.held <= 20  # one row of buildings at most, never all of them


def test_a_building_spanning_many_strips_and_an_empty_strip_gap():
    mask = np.zeros((64, 16), bool)
    mask[0:40, 2:6] = True  # spans strips 0-4 (8 rows each)
    mask[56:64, 2:6] = True  # after two empty strips: a different building
    pieces = _collect(mask, strip=8)
    assert sorted(p.pixels for p in pieces) == [32, 160]


def test_shaper_filters_by_area_and_simplifies_in_metres():
    t = Affine(0.25, 0, 500_000.0, 0, -0.25, 4_000_000.0)
    shaper = BuildingShaper(t, (0.25, 0.25), OutlineOptions(min_area=2.0, simplify=0.3))
    small = Piece(Polygon([(0, 0), (5, 0), (5, 5), (0, 5)]), 25, 20.0)  # 1.56 m²
    assert shaper(small) is None
    # a staircase diagonal edge, steps of one pixel: simplified away at 0.3 m
    ring = [(0, 0), (20, 0), (20, 10)]
    for i in range(10):
        ring += [(20 - i, 10 + i + 1), (20 - i - 1, 10 + i + 1)]
    ring += [(0, 20)]
    poly = Polygon(ring)
    assert poly.is_valid
    rec = shaper(Piece(poly, int(poly.area), poly.area * 0.8))
    assert rec["area_m2"] == pytest.approx(int(poly.area) * 0.0625, abs=0.005)
    assert rec["mean_prob"] == pytest.approx(0.8)
    out = rec["geometry"]
    assert len(out.exterior.coords) < len(poly.exterior.coords) / 3
    assert out.bounds == pytest.approx((500_000.0, 4_000_000.0 - 5.0, 500_005.0, 4_000_000.0))


def test_shaper_squares_buildings_in_a_geographic_crs():
    """Non-square pixels in degrees: squaring runs in a frame that is metric up to scale."""
    t = Affine(1e-5, 0, 85.5, 0, -1e-5, 27.6)
    gsd = (1e-5 * 111_320 * math.cos(math.radians(27.6)), 1e-5 * 110_574)
    shaper = BuildingShaper(t, gsd, OutlineOptions(min_area=1, simplify=0.3, regularize=True))
    rect = affinity.rotate(Polygon([(0, 0), (40, 0), (40, 20), (0, 20)]), 25, origin=(20, 10))
    noisy = _noisy_outline(rect, 0.3)
    rec = shaper(Piece(noisy, int(noisy.area), noisy.area))
    # back in a local metric frame the corners are right angles
    lon0, lat0 = 85.5, 27.6
    metric = affinity.affine_transform(
        rec["geometry"],
        [gsd[0] / 1e-5, 0, 0, gsd[1] / 1e-5, -lon0 * gsd[0] / 1e-5, -lat0 * gsd[1] / 1e-5],
    )
    coords = np.asarray(metric.exterior.coords)
    assert len(coords) - 1 == 4
    edges = np.diff(coords, axis=0)
    for e1, e2 in zip(edges, np.roll(edges, -1, axis=0), strict=True):
        assert abs(e1 @ e2) / (np.linalg.norm(e1) * np.linalg.norm(e2)) < 1e-6


def test_building_layer_streams_chunks_into_gpkg_and_geojson(tmp_path):
    import geopandas as gpd
    from rasterio.crs import CRS

    crs = CRS.from_epsg(32645)
    layer = BuildingLayer(tmp_path / "b.gpkg", crs, tmp_path / "b.geojson", chunk=3)
    for i in range(8):
        x = 354_000.0 + 10 * i
        layer.add(
            {
                "area_m2": 4.0 + i,
                "mean_prob": 0.5,
                "pixels": 64,
                "oversize": False,
                "geometry": Polygon([(x, 0), (x + 2, 0), (x + 2, 2), (x, 2)]),
            }
        )
        if i == 4:  # chunks are on disk under the partial name only
            assert not (tmp_path / "b.gpkg").exists()
    layer.add(None)
    assert layer.commit() == 8
    gpkg, geojson = (gpd.read_file(tmp_path / n) for n in ("b.gpkg", "b.geojson"))
    for frame in (gpkg, geojson):
        assert list(frame.building_id) == list(range(1, 9))
        assert frame.area_m2.tolist() == [4.0 + i for i in range(8)]
    assert gpkg.crs.to_epsg() == 32645  # the scene's CRS
    assert gpkg.geometry.iloc[7].bounds == (354_070.0, 0.0, 354_072.0, 2.0)
    assert geojson.crs.to_epsg() == 4326  # RFC 7946
    back = geojson.to_crs(32645).geometry.iloc[7].bounds
    assert back == pytest.approx((354_070.0, 0.0, 354_072.0, 2.0), abs=0.02)  # 7 decimals
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.geojson", "b.gpkg"]


def _check_rfc7946(doc: dict) -> None:
    """The parts of RFC 7946 a reader relies on: no crs member, lon/lat in range, at most 7
    decimals, closed rings with exterior rings counter-clockwise and holes clockwise."""
    from shapely.geometry import LinearRing

    assert "crs" not in doc and doc["type"] == "FeatureCollection"
    for feature in doc["features"]:
        geometry = feature["geometry"]
        polygons = (
            [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        )
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        for rings in polygons:
            for k, ring in enumerate(rings):
                assert ring[0] == ring[-1] and len(ring) >= 4
                for lon, lat in ring:
                    assert -180 <= lon <= 180 and -90 <= lat <= 90
                    assert round(lon, 7) == lon and round(lat, 7) == lat
                assert LinearRing(ring).is_ccw == (k == 0)


def test_building_layer_geojson_passes_an_rfc7946_check(tmp_path):
    import json

    from rasterio.crs import CRS

    layer = BuildingLayer(tmp_path / "b.gpkg", CRS.from_epsg(32645), tmp_path / "b.geojson")
    outer = [(354_000, 3_057_000), (354_000, 3_057_020), (354_020, 3_057_020), (354_020, 3_057_000)]
    hole = [(354_005, 3_057_005), (354_010, 3_057_005), (354_010, 3_057_010), (354_005, 3_057_010)]
    layer.add(
        {
            "area_m2": 375.0,
            "mean_prob": 0.9,
            "pixels": 4000,
            "oversize": False,
            "geometry": Polygon(outer, [hole]),  # clockwise exterior, as rasters give them
        }
    )
    layer.commit()
    _check_rfc7946(json.loads((tmp_path / "b.geojson").read_text()))


def test_building_layer_discard_leaves_nothing(tmp_path):
    from rasterio.crs import CRS

    layer = BuildingLayer(tmp_path / "b.gpkg", CRS.from_epsg(3857), tmp_path / "b.geojson", chunk=1)
    layer.add(
        {
            "area_m2": 4.0,
            "mean_prob": 0.5,
            "pixels": 64,
            "oversize": False,
            "geometry": Polygon([(0, 0), (2, 0), (2, 2)]),
        }
    )
    layer.discard()
    assert list(tmp_path.iterdir()) == []


def test_empty_layer_and_tile_buildings_have_typed_columns(tmp_path):
    from rasterio.crs import CRS

    frame = mask_buildings(
        np.zeros((8, 8), bool), np.zeros((8, 8)), T, CRS.from_epsg(32645), (0.5, 0.5)
    )
    assert len(frame) == 0
    assert str(frame.building_id.dtype) == "int64" and str(frame.area_m2.dtype) == "float64"
    layer = BuildingLayer(tmp_path / "b.gpkg", CRS.from_epsg(32645))
    assert layer.commit() == 0
    import pyogrio

    info = pyogrio.read_info(tmp_path / "b.gpkg", layer="buildings")
    assert info["features"] == 0 and list(info["fields"]) == [
        "building_id",
        "area_m2",
        "mean_prob",
        "pixels",
        "oversize",
    ]


def test_a_blob_spanning_every_strip_is_one_polygon_and_its_neighbours_are_released():
    """A comb (spine through all strips, a tooth per strip) next to small buildings: the comb
    is held as parts and unioned once; the small buildings are emitted strip by strip."""
    mask = np.zeros((320, 200), bool)
    mask[:, 10:14] = True  # the spine touches every strip border
    for r in range(4, 320, 16):
        mask[r : r + 4, 14:40] = True  # teeth
        mask[r : r + 4, 100:104] = True  # separate buildings
    pieces = _collect(mask, strip=32)
    comb = max(pieces, key=lambda p: p.pixels)
    assert len(pieces) == 1 + 20
    assert comb.pixels == 320 * 4 + 20 * 4 * 26
    assert comb.geom.geom_type == "Polygon" and comb.geom.is_valid
    assert comb.geom.area == pytest.approx(comb.pixels * 0.25)
    assert _collect.held == 1  # only the comb is ever held across a border


def test_a_region_over_the_size_budget_is_written_as_flagged_strip_parts():
    """A field of touching roofs spanning the scene is not one building: past ``max_pixels``
    it is emitted part by part (bounded memory), flagged; normal buildings are unaffected."""
    mask = np.zeros((256, 100), bool)
    mask[:, 0:40] = True  # 40 px wide, through all 8 strips of 32 rows
    mask[10:20, 60:70] = True
    mask[40:70, 60:70] = True  # crosses a strip border: still merged
    out: list[Piece] = []
    col = PolygonCollector(256, out.append, max_pixels=3 * 32 * 40)
    for r in range(0, 256, 32):
        col.add_strip(r, mask[r : r + 32], mask[r : r + 32].astype(float))
        assert sum(len(g.parts) for g in col._open) <= 4  # never the whole region
    col.finish()
    big = [p for p in out if p.oversize]
    normal = sorted(p.pixels for p in out if not p.oversize)
    assert normal == [100, 300]
    assert sum(p.pixels for p in big) == 256 * 40 and len(big) == 8
    assert all(p.geom.is_valid for p in big)


def test_small_holes_are_filled_before_polygonising_and_the_buildings_stay_the_same():
    """A speckled region's one-pixel holes are filled in the raster (so they never become
    rings), and so is a small hole around a fleck once the fleck is dropped; a courtyard and a
    hole cut by a strip border are left to the polygon pass. The buildings equal those of the
    polygon pass alone."""
    mask = np.zeros((96, 80), bool)
    mask[8:90, 4:76] = True
    rows = [12, 16, 20, 24, 36, 52, 56, 68, 72, 76, 80, 84]  # clear of the strip borders
    mask[np.ix_(rows, [8, 14, 36, 42, 66, 72])] = False  # 72 one-pixel holes (0.25 m² each)
    mask[40:50, 20:30] = False  # a courtyard of 25 m²: stays
    mask[60:63, 50:53] = False
    mask[61, 51] = True  # a fleck in a 3 x 3 hole
    mask[31:33, 60:62] = False  # a small hole across the border of the 32-row strips
    options = OutlineOptions(min_area=3.0, simplify=0)
    shaper = BuildingShaper(T, (0.5, 0.5), options)

    def run(too_small):
        raw, shaped = [], []

        def emit(piece):
            raw.append(piece)
            shaped.append(shaper(piece))

        col = PolygonCollector(mask.shape[0], emit, too_small=too_small)
        prob = np.where(mask, 0.8, 0.1)
        for r in range(0, mask.shape[0], 32):
            col.add_strip(r, mask[r : r + 32], prob[r : r + 32])
        col.finish()
        return raw, [s for s in shaped if s is not None]

    raw_filled, filled = run(shaper.too_small)
    raw_plain, plain = run(None)
    big_filled = max(raw_filled, key=lambda p: p.pixels)
    big_plain = max(raw_plain, key=lambda p: p.pixels)
    assert big_filled.pixels == big_plain.pixels  # pixel counts are the mask's, unfilled
    assert big_filled.prob_sum == pytest.approx(big_plain.prob_sum)
    # without the raster fill every hole is a ring; with it, the courtyard and the cut hole
    assert len(big_plain.geom.interiors) == 72 + 3
    assert len(big_filled.geom.interiors) == 2
    assert len(filled) == len(plain) == 1  # the island is too small to be a building
    assert filled[0]["pixels"] == plain[0]["pixels"]
    assert filled[0]["geometry"].equals(plain[0]["geometry"])
    assert len(filled[0]["geometry"].interiors) == 1  # the courtyard


def test_simplify_falls_back_to_preserving_topology_where_douglas_peucker_breaks_it():
    from rscrisis.geo.polygons import simplify

    square = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)])
    stair = Polygon([(0, 0), (10, 0), (10, 10), (5.2, 10), (5, 10.3), (4.8, 10), (0, 10)])
    assert simplify(stair, 1.0).equals(square)  # plain Douglas-Peucker where it is valid
    # a hole inside the bump that Douglas-Peucker would cut off: it would end up outside
    shell = [(0, 0), (10, 0), (10, 10), (6, 10), (5, 10.8), (4, 10), (0, 10)]
    hole = [(4.8, 10.2), (5.2, 10.2), (5, 10.5)]
    bumped = Polygon(shell, [hole])
    out = simplify(bumped, 1.0)
    assert out.is_valid and len(out.interiors) == 1
    assert Polygon(out.exterior).contains(Polygon(hole))
    # a region part too large to be a building: no repair, the outline as it is
    assert simplify(bumped, 1.0, fallback=False) is bumped


def test_ring_by_ring_douglas_peucker_is_geos_where_it_is_valid():
    """The ring by ring pass gives GEOS' polygon Douglas-Peucker outline wherever it is valid
    and keeps every hole: on the pixel outlines of random blobs with holes, at several
    tolerances."""
    import shapely
    from rasterio.features import shapes

    from rscrisis.geo.polygons import _polygon, _same_topology, _simplify_rings

    rng = np.random.default_rng(3)
    blobs = rng.random((120, 160)) < 0.55
    compared = 0
    for geom, _ in shapes(blobs.astype(np.uint8), mask=blobs, connectivity=4):
        poly = _polygon(geom["coordinates"])
        for tolerance in (0.5, 1.0, 2.0):
            ours = _simplify_rings(poly, tolerance)
            if _same_topology(ours, poly):
                geos = shapely.simplify(poly, tolerance, preserve_topology=False)
                assert ours.equals(geos)  # topologically: GEOS versions order vertices apart
                compared += 1
    assert compared > 50


@pytest.mark.parametrize(
    ("options", "gsd"),
    [
        (OutlineOptions(min_area=2.0, simplify=0.3), (0.25, 0.25)),  # the scene defaults
        (OutlineOptions(min_area=2.0, simplify=0.6), (0.25, 0.25)),  # rings that collapse
        (OutlineOptions(min_area=1.0, simplify=0.3, regularize=True), (0.25, 0.25)),
        (OutlineOptions(min_area=2.0, simplify=0.3), (0.25, 0.3)),  # non-square pixels
    ],
)
def test_shaping_a_strips_pieces_at_once_gives_the_one_by_one_records(options, gsd):
    """BuildingShaper.shape_many takes the common case through whole-array shapely calls:
    its records are those of shaping each piece alone, float for float, in the same order,
    on a map with buildings of every kind: small ones dropped, holes filled or kept, thin
    parts that Douglas-Peucker collapses, blocks across strip borders."""
    rng = np.random.default_rng(7)
    mask = np.zeros((300, 260), bool)
    for _ in range(90):
        r, c = rng.integers(0, 290), rng.integers(0, 250)
        h, w = rng.integers(1, 16), rng.integers(1, 16)
        mask[r : r + h, c : c + w] = True
    mask[100:140, 100:160] = True
    mask[110:112, 120:122] = False  # a small hole (filled) and a large one (kept)
    mask[120:135, 130:150] = False
    mask[200:260, 20:22] = True  # a thin line
    mask &= rng.random(mask.shape) > 0.02  # speckle: pixel holes, ragged edges
    prob = np.where(mask, rng.uniform(0.5, 1, mask.shape), 0.1)
    t = Affine(gsd[0], 0, 500_000.0, 0, -gsd[1], 4_000_000.0)
    shaper = BuildingShaper(t, gsd, options)
    strips: list[list[Piece]] = []
    col = PolygonCollector(mask.shape[0], lambda p: strips[-1].append(p),
                           too_small=shaper.too_small)  # fmt: skip
    for r in range(0, mask.shape[0], 64):
        strips.append([])
        col.add_strip(r, mask[r : r + 64], prob[r : r + 64])
    strips.append([])
    col.finish()
    pieces = [p for strip in strips for p in strip]
    assert len(pieces) > 30 and any(len(p.geom.interiors) for p in pieces)
    want = [r for r in map(shaper, pieces) if r is not None]
    got = [r for strip in strips for r in shaper.shape_many(strip)]
    assert len(got) == len(want) > 20
    for a, b in zip(want, got, strict=True):
        assert b["geometry"].equals_exact(a["geometry"], 0), a
        assert {k: v for k, v in a.items() if k != "geometry"} == {
            k: v for k, v in b.items() if k != "geometry"
        }
    assert shaper.shape_many([]) == []
