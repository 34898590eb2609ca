"""Building polygons from a scene mask written strip by strip, merged across strip borders.

Why not polygonise each window: a building on a window border would come out as two (or four)
pieces. Here the *stitched* mask is polygonised in block-aligned strips as it is written. The
pieces touching the bottom of the latest strip are held; the next strip's pieces join them
where pixels share an edge across the border (not just a corner: 4-connectivity, like the
raster). Pixel edges coincide exactly on both sides, so the union is exact and a building
straddling any number of strips is one polygon.

A building is emitted as soon as no later strip can touch it, then filtered, simplified or
squared (:class:`BuildingShaper`) and streamed to disk (:class:`BuildingLayer`). Nothing in this
module holds more than one strip's worth of polygons, so a city of 100,000 buildings costs no
more memory than a village.

Each polygon carries its pixel count and summed probability, so ``area_m2`` and ``mean_prob``
are exact after merging, whatever the CRS (geographic included).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import shapely.affinity
from affine import Affine
from shapely.geometry import Polygon

from rscrisis.config import SceneConfig

#: holes are filled in the raster only in strips where more than this share of the pixels is
#: building (an undertrained model's speckle: 80 %): below it holes are few, and labelling the
#: background costs more (0.25 CPU-s on a trained model's 24 Mpx map, 30 % building) than the
#: polygon pass spends filling them. The buildings are the same either way.
FILL_HOLES_FRACTION = 0.5


@dataclass
class Piece:
    """One building (or the part of it seen so far) in scene *pixel* coordinates (col, row)."""

    geom: Polygon
    pixels: int
    prob_sum: float
    #: part of a connected region too large to be one building, cut at strip borders
    oversize: bool = False


@dataclass
class _Open:
    """A building still open at the bottom of the last strip, as its strip parts: they are
    unioned once, when it is complete (re-unioning a growing polygon at every strip is
    quadratic). ``oversize``: past the size budget, its parts are emitted as they come."""

    parts: list[Piece]
    pixels: int
    vertices: int
    oversize: bool = False


class PolygonCollector:
    """Receives mask strips top to bottom and emits each building as soon as it is complete.

    Only the pieces touching the bottom row of the latest strip are held, so memory depends on
    the scene width, not on the number of buildings. A piece of a new strip joins the held
    pieces whose last-row pixels sit directly above one of its first-row pixels (an edge
    contact: 4-connectivity, like the raster; corner contacts stay apart). Polygons are in
    pixel coordinates, so the vertices along a strip border are integers on both sides and the
    union is exact.

    A connected region larger than ``max_pixels`` or ``max_vertices`` is not one building (a
    block of touching roofs, a false-positive field spanning the scene) and one polygon of it
    would cost memory without bound: its parts are emitted per strip, flagged ``oversize``.
    """

    def __init__(
        self,
        height: int,
        emit: Callable[[Piece], None],
        max_pixels: float = math.inf,
        max_vertices: int = 200_000,
        too_small: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.height = height
        self.emit = emit
        self.max_pixels = max_pixels
        self.too_small = too_small
        self.max_vertices = max_vertices
        self._open: list[_Open] = []
        #: per column of the previous strip's last row: index into ``_open``, -1 for none
        self._border: np.ndarray | None = None
        self._next_row = 0

    def add_strip(self, first_row: int, mask: np.ndarray, prob: np.ndarray) -> None:
        """Polygonise ``mask`` (bool, scene rows ``first_row`` ...); ``prob`` (read where
        ``mask`` is set only) gives the buildings' mean probability."""
        from rasterio.features import shapes
        from scipy import ndimage

        if first_row != self._next_row:  # not contiguous with what came before
            self._close_open()
        self._next_row = first_row + len(mask)
        if not mask.any():
            self._close_open()
            return
        labels, n = ndimage.label(mask)  # 4-connectivity, as rasterio.features.shapes
        inside = labels[mask]  # buildings are a small share of a strip: count only their pixels
        pixels = np.bincount(inside, minlength=n + 1)
        prob_sum = np.bincount(inside, weights=prob[mask], minlength=n + 1)
        if self.too_small is not None and n:
            labels = self._drop_small(labels, pixels)
            if inside.size > FILL_HOLES_FRACTION * mask.size:
                labels = self._fill_small_holes(labels, n)
        new: dict[int, Piece] = {}
        transform = Affine.translation(0, first_row)
        for geom, value in shapes(labels, mask=labels > 0, connectivity=4, transform=transform):
            k = int(value)
            new[k] = Piece(_polygon(geom["coordinates"]), int(pixels[k]), float(prob_sum[k]))

        held = len(self._open)
        parent = np.arange(held + n + 1)  # nodes: held pieces, then labels 1..n at held + k

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return int(i)

        if self._border is not None and held:
            touching = (self._border >= 0) & (labels[0] > 0)
            links = np.unique(np.stack([self._border[touching], labels[0][touching]], 1), axis=0)
            for a, k in links:
                parent[find(int(a))] = find(held + int(k))
        groups: dict[int, list[int]] = {}
        for node in [*range(held), *(held + k for k in sorted(new))]:  # first-pixel order
            groups.setdefault(find(node), []).append(node)

        at_bottom = set() if self._next_row >= self.height else set(np.unique(labels[-1]).tolist())
        still_open: list[_Open] = []
        label_to_open = np.full(n + 1, -1, np.int64)
        for members in groups.values():
            group = self._merge(
                [self._open[i] for i in members if i < held],
                [new[i - held] for i in members if i >= held],
            )
            open_labels = [i - held for i in members if i >= held and i - held in at_bottom]
            if open_labels:
                label_to_open[open_labels] = len(still_open)
                still_open.append(group)
            else:
                self._close(group)
        self._open = still_open
        self._border = label_to_open[labels[-1]] if still_open else None

    def _drop_small(self, labels: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """Labels without the regions ``too_small`` would discard anyway, before they are
        polygonised: a region that touches neither the strip's first row (where it could join
        a held piece) nor its last (where it could go on) is complete, and its pixel count
        decides its fate, so dropping it here changes no output. On the speckled map of an
        undertrained model almost every region is such a fleck; polygonising them as Python
        objects took 80 % of a scene's time."""
        small = np.asarray(self.too_small(pixels), bool)  # type: ignore[misc]
        small[0] = False
        small[labels[0]] = False
        small[labels[-1]] = False
        if small.any():
            labels = np.where(small[labels], 0, labels)
        return labels

    def _fill_small_holes(self, labels: np.ndarray, n: int) -> np.ndarray:
        """Labels with the holes that ``too_small`` would fill anyway filled in, before they
        are polygonised (:meth:`BuildingShaper.fill_small_holes` fills the same holes in the
        polygons). On an undertrained model's speckled map a region holds hundreds of
        thousands of one-pixel holes, and building them as polygon rings took 9 of the 16 CPU-s
        of a 17 Mpx scene's polygons; the mask and the buildings' pixel counts are unchanged.

        A hole is an 8-connected background component (the dual of the regions'
        4-connectivity) that touches no side of the strip (one touching the first or last row
        may go on in the next strip) and whose 4-neighbours all belong to one region (not an
        annulus around an island). Its pixel count is the area of the ring it would make, or
        more when two rings touch at a corner: so this fills a subset of what the polygon pass
        fills, and the polygons come out the same.
        """
        from scipy import ndimage

        holes, m = ndimage.label(labels == 0, structure=np.ones((3, 3), bool))
        if m == 0:
            return labels
        small = np.asarray(self.too_small(np.bincount(holes.ravel(), minlength=m + 1)), bool)  # type: ignore[misc]
        small[0] = False
        small[holes[0]] = small[holes[-1]] = False
        small[holes[:, 0]] = small[holes[:, -1]] = False
        if not small.any():
            return labels
        # candidates touch no side of the strip, so their 4-neighbours are inside it and
        # flat indices +-1 stay in the same row
        at = np.flatnonzero(small[holes.ravel()])
        hole = holes.ravel()[at].astype(np.int64)
        flat = labels.ravel()
        span = np.int64(n + 1)
        keys = []
        for step in (1, -1, labels.shape[1], -labels.shape[1]):
            region = flat[at + step]
            keys.append((hole * span + region)[region > 0])  # (hole, region) as one key
        pairs = np.unique(np.concatenate(keys))
        hole_of, region_of = pairs // span, pairs % span
        owner = np.zeros(m + 1, labels.dtype)
        owner[hole_of] = region_of
        one_region = np.bincount(hole_of, minlength=m + 1) == 1
        fill = one_region[hole]
        if fill.any():
            labels = labels.copy()
            labels.ravel()[at[fill]] = owner[hole[fill]]
        return labels

    def finish(self) -> None:
        """Emit the pieces still held (they touch the bottom of the scene)."""
        self._close_open()

    def _close_open(self) -> None:
        for group in self._open:
            self._close(group)
        self._open, self._border = [], None

    def _merge(self, held: list[_Open], new: list[Piece]) -> _Open:
        group = _Open(
            [p for g in held for p in g.parts] + new,
            sum(g.pixels for g in held) + sum(p.pixels for p in new),
            sum(g.vertices for g in held) + sum(shapely.get_num_coordinates(p.geom) for p in new),
            any(g.oversize for g in held),
        )
        if group.pixels > self.max_pixels or group.vertices > self.max_vertices:
            group.oversize = True
        if group.oversize:  # emit what is held; keep only the flag for later strips
            for part in group.parts:
                part.oversize = True
                self.emit(part)
            group.parts, group.vertices = [], 0
        return group

    def _close(self, group: _Open) -> None:
        if group.parts:
            self.emit(_union(group.parts))


def _polygon(rings: list) -> Polygon:
    """A polygon from GeoJSON rings (lists of coordinate pairs), as arrays: ``shape()`` walks
    every coordinate in Python, which took 9.5 of the 16 CPU-s of a speckled 17 Mpx scene's
    polygons."""
    shell = shapely.linearrings(np.asarray(rings[0], dtype=np.float64))
    if len(rings) == 1:
        return shapely.polygons(shell)
    arrays = [np.asarray(r, dtype=np.float64) for r in rings[1:]]
    which = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays])
    holes = shapely.linearrings(np.concatenate(arrays), indices=which)
    return shapely.polygons(shell, holes)


def simplify(geom, tolerance: float, fallback: bool = True):
    """Douglas-Peucker simplification, topology-preserving only where it has to be.

    Plain Douglas-Peucker is 10-20x faster than GEOS' topology-preserving variant (17x on a
    trained model's 1,258 buildings, 5x on a speckled map's region parts) and gives the same
    outline for 99.8 % of buildings. It runs ring by ring first (:func:`_simplify_rings`):
    GEOS' polygon version repairs an invalid result with ``buffer(0)``, which took 3.1 of the
    4.0 CPU-s of a speckled map's simplification, on the 20 region parts of 60,000 to 80,000
    vertices and a thousand holes each. Where that result is valid and keeps every part and
    hole, it is the outline GEOS' version gives. Otherwise GEOS' version is tried, then the
    topology-preserving one; a result that is invalid (a ring crossing itself or a hole),
    collapses, or loses a part or a hole (GEOS drops a hole that ends up outside the
    simplified shell) is not used, and the outline is kept as it is where the last is invalid
    too (GEOS 3.11 lets a hole end up outside). Without ``fallback`` (the ``oversize`` parts of
    a region too large to be a building) the outline is kept as it is as soon as the ring by
    ring result fails: its repair cost seconds for a few per cent fewer vertices.
    """
    simple = _simplify_rings(geom, tolerance)
    if _same_topology(simple, geom):
        return simple
    if not fallback:
        return geom
    simple = shapely.simplify(geom, tolerance, preserve_topology=False)
    if not _same_topology(simple, geom):
        simple = shapely.simplify(geom, tolerance, preserve_topology=True)
        if not simple.is_valid:  # GEOS 3.11 (shapely 2.0) may leave a hole outside even so
            return geom
    return simple


def _simplify_rings(geom, tolerance: float):
    """Douglas-Peucker on each ring of a polygon or multipolygon (vectorised shapely), without
    any repair; holes that collapse are dropped, and a collapsed shell gives an empty
    polygon."""
    parts = shapely.get_parts(geom)
    out = []
    for part in parts:
        rings = np.array([part.exterior, *part.interiors], dtype=object)
        simple = shapely.simplify(rings, tolerance, preserve_topology=False)
        kept = shapely.get_num_coordinates(simple) >= 4
        if not kept[0]:
            return shapely.Polygon()
        out.append(shapely.Polygon(simple[0], simple[1:][kept[1:]]))
    return out[0] if geom.geom_type == "Polygon" else shapely.MultiPolygon(out)


def _same_topology(simple, geom) -> bool:
    """Whether a simplified outline can stand for ``geom``: valid, of the same type, with the
    same parts and holes."""
    return (
        not simple.is_empty
        and simple.geom_type == geom.geom_type
        and _rings(simple) == _rings(geom)
        and bool(simple.is_valid)
    )


def _rings(geom) -> tuple[int, int]:
    """(parts, holes) of a polygon or multipolygon."""
    parts = shapely.get_parts(geom)
    return len(parts), int(shapely.get_num_interior_rings(parts).sum())


def _union(pieces: list[Piece]) -> Piece:
    if len(pieces) == 1:
        return pieces[0]
    geom = shapely.union_all([p.geom for p in pieces])
    if geom.geom_type == "MultiPolygon":  # cannot happen with edge contacts; be safe
        geom = max(geom.geoms, key=lambda g: g.area)
    return Piece(geom, sum(p.pixels for p in pieces), sum(p.prob_sum for p in pieces))


_SCENE = SceneConfig.model_fields


@dataclass(frozen=True)
class OutlineOptions:
    """How building pieces become map polygons (tolerances in metres)."""

    # the defaults are the scene config's (one place): rscrisis.config.SceneConfig
    min_area: float = _SCENE["min_area"].default
    simplify: float = _SCENE["simplify"].default
    regularize: bool = _SCENE["regularize"].default
    max_area: float = _SCENE["max_area"].default


class BuildingShaper:
    """Turns a pixel-space :class:`Piece` into a building record in map coordinates.

    Area filter, simplification and regularisation happen per building as it is emitted, so a
    staircase outline of hundreds of vertices is never kept. They run in a frame where one unit
    is one pixel width along both axes (square pixels: the pixel grid itself, so nothing is
    rounded), which is metric up to scale even when the CRS is geographic.
    """

    def __init__(self, transform: Affine, gsd_m: tuple[float, float], options: OutlineOptions):
        gx, gy = float(gsd_m[0]), float(gsd_m[1])
        self.options = options
        self.px_area = gx * gy
        self.gx = gx
        self.aspect = gy / gx
        to_map = transform @ Affine.scale(1.0, 1.0 / self.aspect)
        self._to_map = [to_map.a, to_map.b, to_map.d, to_map.e, to_map.c, to_map.f]

    @property
    def max_pixels(self) -> float:
        """``max_area`` in pixels: the size budget of :class:`PolygonCollector`."""
        return self.options.max_area / self.px_area

    def too_small(self, pixels: np.ndarray) -> np.ndarray:
        """Which pixel counts are too small to be a building (or a courtyard): the one
        ``min_area`` test, used by :meth:`__call__`, the collector and the hole filling."""
        return pixels * self.px_area < self.options.min_area

    def fill_small_holes(self, geom):
        """``geom`` (pixel coordinates) without the holes smaller than ``min_area``: what is
        too small to be a building is too small to be a courtyard too. On the speckled map of
        an undertrained model a region holds thousands of one-pixel holes, and simplifying it
        with them took 34 s of a 4 Mpx scene's 44 (0.6 s to fill them, 0.8 s to simplify
        what is left); on a trained model's map such holes are misclassified roof pixels."""
        if geom.geom_type == "Polygon":
            parts = [geom]
        elif geom.geom_type == "MultiPolygon":
            parts = list(geom.geoms)
        else:
            return geom
        if not any(len(p.interiors) for p in parts):
            return geom
        filled = []
        for part in parts:
            rings = list(part.interiors)
            if rings:
                areas = shapely.area(shapely.polygons(rings))  # pixel units: pixel counts
                rings = [r for r, small in zip(rings, self.too_small(areas), strict=True)
                         if not small]  # fmt: skip
            filled.append(shapely.Polygon(part.exterior, rings))
        return filled[0] if geom.geom_type == "Polygon" else shapely.MultiPolygon(filled)

    def shape_many(self, pieces: list[Piece]) -> list[dict]:
        """:meth:`__call__` for many pieces at once (a strip's buildings), in their order,
        without the dropped ones: the same records, value for value (tested).

        The common case, a polygon whose rings all survive Douglas-Peucker as a valid outline,
        runs as whole-array shapely calls; every other piece (holes to fill, a ring that
        collapses, an invalid result, a multipolygon, squaring, non-square pixels) goes
        through :meth:`__call__`. On a trained model's 24 Mpx map (990 buildings) shaping
        took 0.29 CPU-s one piece at a time, most of it Python around each GEOS call."""
        opts = self.options
        pieces = [p for p, small in zip(pieces, self.too_small(
            np.array([p.pixels for p in pieces], np.int64)), strict=True) if not small]  # fmt: skip
        if not pieces:
            return []
        if opts.regularize or opts.simplify <= 0 or self.aspect != 1.0:
            return [r for r in map(self, pieces) if r is not None]
        geoms = np.array([p.geom for p in pieces], dtype=object)
        fast = (shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON) & (
            shapely.get_num_interior_rings(geoms) == 0
        )  # holes may be filled first: those go one by one, as few as they are
        out: list[object] = [None] * len(pieces)
        idx = np.flatnonzero(fast)
        if idx.size:
            shells = shapely.simplify(
                shapely.get_exterior_ring(geoms[idx]), opts.simplify / self.gx,
                preserve_topology=False,
            )  # fmt: skip
            kept = shapely.get_num_coordinates(shells) >= 4
            simple = np.full(idx.size, None, dtype=object)
            simple[kept] = shapely.polygons(shells[kept])
            good = kept.copy()
            good[kept] = shapely.is_valid(simple[kept])
            mapped = shapely.transform(simple[good], self._map_coords)
            for i, geom in zip(idx[good], mapped, strict=True):
                out[i] = geom
        records = []
        for piece, geom in zip(pieces, out, strict=True):
            if geom is None:  # the general path
                record = self(piece)
                if record is not None:
                    records.append(record)
                continue
            records.append(self._record(piece, geom))
        return records

    def _map_coords(self, coords: np.ndarray) -> np.ndarray:
        """Pixel-frame coordinates (n, 2) to map coordinates: shapely.affinity's arithmetic,
        term for term, so both paths give the same floats."""
        a, b, d, e, xoff, yoff = self._to_map
        x, y = coords.T
        return np.stack([a * x + b * y + xoff, d * x + e * y + yoff]).T

    def _record(self, piece: Piece, geom) -> dict:
        """The record of ``piece`` with its outline ``geom`` in map coordinates."""
        return {
            "area_m2": round(piece.pixels * self.px_area, 2),
            "mean_prob": round(piece.prob_sum / max(piece.pixels, 1), 4),
            "pixels": piece.pixels,
            "oversize": piece.oversize,
            "geometry": geom,
        }

    def __call__(self, piece: Piece) -> dict | None:
        opts = self.options
        if self.too_small(np.asarray(piece.pixels)):
            return None
        geom = self.fill_small_holes(piece.geom)
        if self.aspect != 1.0:
            geom = shapely.affinity.scale(geom, 1.0, self.aspect, origin=(0, 0))
        if opts.regularize:
            geom = regularize(geom, max(opts.simplify, 0.5 * self.gx) / self.gx)
        elif opts.simplify > 0:
            geom = simplify(geom, opts.simplify / self.gx, fallback=not piece.oversize)
        if geom.is_empty:
            return None
        return self._record(piece, shapely.affinity.affine_transform(geom, self._to_map))


def regularize(poly: Polygon, tolerance: float, max_area_change: float = 0.25) -> Polygon:
    """Orthogonalise a building outline: every edge parallel or perpendicular to its main axis.

    The main axis is the length-weighted mean edge direction modulo 90° (buildings have right
    angles). After a Douglas-Peucker pass (``tolerance``), the outline is rotated onto that
    axis, each edge is classed horizontal or vertical, runs of the same class merge into one
    line at their length-weighted mean position, and corners are the crossings of consecutive
    lines. Holes are dropped. Falls back to the simplified outline when the result is invalid
    or changes the area by more than ``max_area_change``. Input must be in a metric frame.
    """
    simple = simplify(poly, tolerance)
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


BUILDING_COLUMNS = {
    "building_id": "int64",
    "area_m2": "float64",
    "mean_prob": "float64",
    "pixels": "int64",
    "oversize": "bool",
}


def records_frame(records: list[dict], crs):
    """GeoDataFrame of building records with stable column types, even when empty."""
    import geopandas as gpd
    import pandas as pd

    columns = {k: pd.Series([r[k] for r in records], dtype=t) for k, t in BUILDING_COLUMNS.items()}
    return gpd.GeoDataFrame(
        columns, geometry=gpd.GeoSeries([r["geometry"] for r in records], crs=crs), crs=crs
    )


class BuildingLayer:
    """Streams building records into ``buildings.gpkg`` (and GeoJSON) in chunks.

    Memory stays bounded by the chunk, whatever the number of buildings. Files are written
    under their partial names; :meth:`commit` renames them into place, :meth:`discard` deletes
    them. The GeoJSON is written as text, feature by feature: GDAL's GeoJSON driver would
    reload the whole file for every appended chunk. It is RFC 7946, what JOSM and web tools
    read: EPSG:4326 longitude/latitude with 7 decimals (1 cm), exterior rings counter-clockwise,
    no ``crs`` member. The GeoPackage keeps the scene's CRS.
    """

    def __init__(self, gpkg: Path, crs, geojson: Path | None = None, chunk: int = 2048):
        from rscrisis.io.outputs import partial_path

        self.gpkg, self.geojson, self.crs, self.chunk = gpkg, geojson, crs, chunk
        self.tmp_gpkg = partial_path(gpkg)
        self.tmp_geojson = partial_path(geojson) if geojson else None
        for tmp in (self.tmp_gpkg, self.tmp_geojson):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        self.count = 0
        self._buffer: list[dict] = []
        self._json = None
        self._to_wgs84 = None
        if self.tmp_geojson is not None:
            from pyproj import CRS, Transformer

            source = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
            self._to_wgs84 = Transformer.from_crs(source, "EPSG:4326", always_xy=True)
            self._json = open(self.tmp_geojson, "w")  # noqa: SIM115 (closed in commit/discard)
            self._json.write(
                '{\n"type": "FeatureCollection",\n"name": "buildings",\n"features": [\n'
            )
        self._first_feature = True

    def add(self, record: dict | None) -> None:
        if record is None:
            return
        self.count += 1
        self._buffer.append({"building_id": self.count, **record})
        if len(self._buffer) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        import pyogrio

        if not self._buffer and self.tmp_gpkg.exists():
            return
        frame = records_frame(self._buffer, self.crs)
        pyogrio.write_dataframe(
            frame,
            self.tmp_gpkg,
            layer="buildings",
            driver="GPKG",
            append=self.tmp_gpkg.exists(),
        )
        if self._json is not None:
            for record in self._buffer:
                self._json.write(
                    _geojson_feature(record, self._to_wgs84, first=self._first_feature)
                )
                self._first_feature = False
        self._buffer = []

    def commit(self) -> int:
        """Write what is buffered and move the files into place; returns the building count."""
        import os

        from rscrisis.io.styles import add_style, outlines

        self._flush()
        add_style(self.tmp_gpkg, "buildings", outlines(), "outlines", "buildings as red outlines")
        os.replace(self.tmp_gpkg, self.gpkg)
        if self._json is not None:
            self._json.write("\n]\n}\n")
            self._json.close()
            assert self.tmp_geojson is not None and self.geojson is not None
            os.replace(self.tmp_geojson, self.geojson)
        return self.count

    def discard(self) -> None:
        if self._json is not None and not self._json.closed:
            self._json.close()
        for tmp in (self.tmp_gpkg, self.tmp_geojson):
            if tmp is not None:
                tmp.unlink(missing_ok=True)


def rfc7946_geometry(geom, to_wgs84) -> dict:
    """``geom`` as an RFC 7946 GeoJSON geometry: to EPSG:4326 lon/lat through the pyproj
    ``to_wgs84`` transformer, 7 decimals, exterior rings counter-clockwise."""
    from shapely.geometry import mapping
    from shapely.geometry.polygon import orient

    ll = shapely.transform(
        geom, lambda xy: np.round(np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])), 7)
    )
    parts = [orient(p, 1.0) for p in shapely.get_parts(ll) if p.geom_type == "Polygon"]
    if ll.geom_type == "Polygon" and parts:
        ll = parts[0]
    elif ll.geom_type == "MultiPolygon":
        ll = shapely.MultiPolygon(parts)
    return mapping(ll)


def _geojson_feature(record: dict, to_wgs84, first: bool) -> str:
    import json

    props = {k: record[k] for k in BUILDING_COLUMNS}
    geometry = rfc7946_geometry(record["geometry"], to_wgs84)
    return (
        ("" if first else ",\n")
        + '{ "type": "Feature", "properties": '
        + json.dumps(props)
        + ', "geometry": '
        + json.dumps(geometry)
        + " }"
    )


def mask_buildings(
    mask: np.ndarray,
    prob: np.ndarray,
    transform: Affine,
    crs,
    gsd_m,
    *,
    min_area: float = 2.0,
    simplify: float = 0.3,
    regularize_outlines: bool = False,
):
    """Buildings of one small raster (a tile) as a GeoDataFrame."""
    shaper = BuildingShaper(
        transform, gsd_m, OutlineOptions(min_area, simplify, regularize_outlines)
    )
    records: list[dict] = []

    def keep(piece: Piece) -> None:
        record = shaper(piece)
        if record is not None:
            records.append({"building_id": len(records) + 1, **record})

    collector = PolygonCollector(mask.shape[0], keep)
    collector.add_strip(0, mask, prob)
    collector.finish()
    return records_frame(records, crs)
