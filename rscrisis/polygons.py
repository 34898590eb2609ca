"""Building polygons from a scene mask written strip by strip, merged across strip borders.

Why not polygonise each window: a building on a window border would come out as two (or four)
pieces. Here the *stitched* mask is polygonised in block-aligned strips as it is written; a
polygon touching an internal strip border is held back, and at the end the held polygons that
share a border segment (not just a corner: 4-connectivity, like the raster) are unioned. Pixel
edges coincide exactly on both sides, so the union is exact and a building straddling any number
of strips is one polygon.

Each polygon carries its pixel count and summed probability, so ``area_m2`` and ``mean_prob``
are exact after merging, whatever the CRS (geographic included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
import shapely.affinity
from affine import Affine
from shapely.geometry import Polygon, shape


@dataclass
class _Piece:
    geom: Polygon
    pixels: int
    prob_sum: float


@dataclass
class PolygonCollector:
    """Receives mask strips top to bottom; :meth:`finish` returns merged building records."""

    transform: Affine
    height: int
    closed: list[_Piece] = field(default_factory=list)
    open: list[_Piece] = field(default_factory=list)

    def add_strip(self, first_row: int, mask: np.ndarray, prob: np.ndarray) -> None:
        """Polygonise ``mask`` (bool, rows ``first_row`` ...) of the scene; prob for scores."""
        from rasterio.features import shapes
        from scipy import ndimage

        if not mask.any():
            return
        labels, n = ndimage.label(mask)  # 4-connectivity, as rasterio.features.shapes
        pixels = np.bincount(labels.ravel(), minlength=n + 1)
        prob_sum = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=n + 1)
        at_top = set(np.unique(labels[0])) if first_row > 0 else set()
        last = first_row + len(mask) >= self.height
        at_bottom = set(np.unique(labels[-1])) if not last else set()
        # polygonise in scene *pixel* coordinates: integer vertices, so pieces from two strips
        # share their border exactly (map coordinates would differ in the last bits)
        transform = Affine.translation(0, first_row)
        for geom, value in shapes(
            labels.astype(np.int32), mask=labels > 0, connectivity=4, transform=transform
        ):
            k = int(value)
            piece = _Piece(shape(geom), int(pixels[k]), float(prob_sum[k]))
            (self.open if k in at_top or k in at_bottom else self.closed).append(piece)

    def finish(self) -> list[_Piece]:
        """All buildings in map coordinates: closed pieces plus the open ones merged along
        shared borders."""
        t = self.transform
        matrix = [t.a, t.b, t.d, t.e, t.c, t.f]
        pieces = self.closed + merge_pieces(self.open)
        return [
            _Piece(shapely.affinity.affine_transform(p.geom, matrix), p.pixels, p.prob_sum)
            for p in pieces
        ]


def merge_pieces(pieces: list[_Piece]) -> list[_Piece]:
    """Union pieces sharing a border segment (connected components of the 'shares an edge'
    graph); corner-only contacts stay apart, as in the 4-connected raster."""
    if not pieces:
        return []
    geoms = np.array([p.geom for p in pieces], dtype=object)
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    parent = list(range(len(pieces)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left, right, strict=True):
        if a < b and shapely.intersection(geoms[a], geoms[b]).length > 0:
            parent[find(a)] = find(b)
    groups: dict[int, list[int]] = {}
    for i in range(len(pieces)):
        groups.setdefault(find(i), []).append(i)
    merged = []
    for members in groups.values():
        if len(members) == 1:
            merged.append(pieces[members[0]])
            continue
        geom = shapely.union_all(geoms[members])
        if geom.geom_type == "MultiPolygon":  # numerically touching only: keep the largest
            geom = max(geom.geoms, key=lambda g: g.area)
        merged.append(
            _Piece(
                geom,
                sum(pieces[i].pixels for i in members),
                sum(pieces[i].prob_sum for i in members),
            )
        )
    return merged


def regularize(poly: Polygon, tolerance: float, max_area_change: float = 0.25) -> Polygon:
    """Orthogonalise a building outline: every edge parallel or perpendicular to its main axis.

    The main axis is the length-weighted mean edge direction modulo 90° (buildings have right
    angles). After a Douglas-Peucker pass (``tolerance``), the outline is rotated onto that
    axis, each edge is classed horizontal or vertical, runs of the same class merge into one
    line at their length-weighted mean position, and corners are the crossings of consecutive
    lines. Holes are dropped. Falls back to the simplified outline when the result is invalid
    or changes the area by more than ``max_area_change``. Input must be in a metric frame.
    """
    simple = poly.simplify(tolerance, preserve_topology=True)
    if simple.is_empty or simple.geom_type != "Polygon":
        return poly
    ring = np.asarray(simple.exterior.coords)[:-1]
    origin = ring.mean(axis=0)
    ring = ring - origin
    if len(ring) < 4:
        return simple
    edges = np.roll(ring, -1, axis=0) - ring
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    angles = np.arctan2(edges[:, 1], edges[:, 0])
    # mean direction of angles mod 90°: average on the circle of 4*angle
    theta = math.atan2((lengths * np.sin(4 * angles)).sum(), (lengths * np.cos(4 * angles)).sum())
    theta /= 4
    c, s = math.cos(-theta), math.sin(-theta)
    rot = ring @ np.array([[c, s], [-s, c]])  # rotate by -theta: main axis -> x
    e = np.roll(rot, -1, axis=0) - rot
    horizontal = np.abs(e[:, 0]) >= np.abs(e[:, 1])
    # runs of consecutive edges of the same class (cyclic), each becoming one line
    start = int(np.argmax(horizontal != np.roll(horizontal, 1))) if not horizontal.all() else 0
    if horizontal.all() or (~horizontal).all():
        return simple
    order = [(start + k) % len(rot) for k in range(len(rot))]
    runs: list[tuple[bool, float]] = []
    acc_w = acc_v = 0.0
    current = horizontal[order[0]]
    for i in order:
        if horizontal[i] != current:
            runs.append((bool(current), acc_v / max(acc_w, 1e-12)))
            acc_w = acc_v = 0.0
            current = horizontal[i]
        a, b = rot[i], rot[(i + 1) % len(rot)]
        length = float(np.hypot(*(b - a)))
        coord = (a[1] + b[1]) / 2 if current else (a[0] + b[0]) / 2
        acc_w += length
        acc_v += length * coord
    runs.append((bool(current), acc_v / max(acc_w, 1e-12)))
    if len(runs) < 4 or len(runs) % 2:
        return simple
    corners = []
    for k in range(len(runs)):
        (h1, v1), (_h2, v2) = runs[k - 1], runs[k]
        corners.append((v2, v1) if h1 else (v1, v2))  # (x, y): vertical gives x, horizontal y
    pts = np.asarray(corners)
    c2, s2 = math.cos(theta), math.sin(theta)
    back = pts @ np.array([[c2, s2], [-s2, c2]]) + origin
    out = Polygon(back)
    if not out.is_valid or out.is_empty:
        return simple
    if abs(out.area - poly.area) > max_area_change * poly.area:
        return simple
    return out


def buildings_frame(
    pieces: list[_Piece],
    crs,
    transform: Affine,
    gsd_m: tuple[float, float],
    *,
    min_area: float = 2.0,
    simplify: float = 0.3,
    regularize_outlines: bool = False,
):
    """GeoDataFrame of buildings from merged pieces: filtered by area (m²), simplified or
    regularised with tolerances in metres (a local metric frame, so EPSG:4326 works too)."""
    import geopandas as gpd
    from shapely import affinity

    from rscrisis.raster_io import crs_units_per_metre

    px_area = gsd_m[0] * gsd_m[1]
    x0, y0 = transform.c, transform.f
    ux, uy = crs_units_per_metre(crs, x0, y0)
    records = []
    for piece in pieces:
        area = piece.pixels * px_area
        if area < min_area:
            continue
        geom = affinity.scale(piece.geom, 1 / ux, 1 / uy, origin=(x0, y0))
        if regularize_outlines:
            geom = regularize(geom, max(simplify, 0.5 * min(gsd_m)))
        elif simplify > 0:
            geom = geom.simplify(simplify, preserve_topology=True)
        geom = affinity.scale(geom, ux, uy, origin=(x0, y0))
        if geom.is_empty:
            continue
        records.append(
            {
                "area_m2": round(area, 2),
                "mean_prob": round(piece.prob_sum / max(piece.pixels, 1), 4),
                "pixels": piece.pixels,
                "geometry": geom,
            }
        )
    frame = gpd.GeoDataFrame(
        records or None,
        columns=["area_m2", "mean_prob", "pixels", "geometry"],
        geometry="geometry",
        crs=crs,
    )
    frame = frame.sort_values(["area_m2"], ascending=False, kind="stable").reset_index(drop=True)
    frame.insert(0, "building_id", np.arange(1, len(frame) + 1))
    return frame


def mask_buildings(mask: np.ndarray, prob: np.ndarray, transform: Affine, crs, gsd_m, **options):
    """Buildings of one small raster (a tile): polygonise, then :func:`buildings_frame`."""
    collector = PolygonCollector(transform, mask.shape[0])
    collector.add_strip(0, mask, prob)
    return buildings_frame(collector.finish(), crs, transform, gsd_m, **options)
