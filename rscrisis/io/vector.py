"""Vector labels: read building footprints from any OGR format, repair them, reproject them.

OpenStreetMap extracts are messy: self-intersecting rings, building nodes or outlines stored as
points or lines, GeometryCollections from clipping. Everything that is not polygonal is skipped
and counted, invalid polygons are repaired with ``shapely.make_valid`` (keeping only their
polygonal parts), and the result is one GeoDataFrame of (Multi)Polygons.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from rasterio.crs import CRS

from rscrisis.errors import LabelError

log = logging.getLogger(__name__)

POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass
class LabelStats:
    files: list[str] = field(default_factory=list)
    features: int = 0
    polygons: int = 0
    repaired: int = 0
    skipped_non_polygon: int = 0
    skipped_empty: int = 0


@dataclass
class Labels:
    """Building polygons in one CRS, with a cache of their reprojections."""

    frame: gpd.GeoDataFrame
    stats: LabelStats
    _by_crs: dict[str, gpd.GeoDataFrame] = field(default_factory=dict, repr=False)

    def in_crs(self, crs: CRS) -> gpd.GeoDataFrame:
        key = crs.to_wkt()
        if key not in self._by_crs:
            same = self.frame.crs is not None and self.frame.crs.equals(key)
            self._by_crs[key] = self.frame if same else self.frame.to_crs(key)
        return self._by_crs[key]


def _polygonal_part(geom: shapely.Geometry) -> shapely.Geometry | None:
    """The polygonal part of a (repaired) geometry, or None if it has none."""
    kind = geom.geom_type
    if kind in POLYGONAL:
        return geom
    if kind == "GeometryCollection":
        parts = [g for g in shapely.get_parts(geom) if g.geom_type in POLYGONAL]
        if parts:
            return shapely.union_all(parts)
    return None


#: shapely type ids (``shapely.get_type_id``)
_POLYGON, _MULTIPOLYGON, _COLLECTION = 3, 6, 7


def clean_polygons(frame: gpd.GeoDataFrame, stats: LabelStats) -> gpd.GeoDataFrame:
    """Drop empties and non-polygons, repair invalid polygons; updates ``stats`` in place.

    Vectorised with shapely 2 (validity, repair and types over the whole array); only the
    rare geometry collections that repair leaves are reduced to their polygonal part one by
    one."""
    geoms = np.array(frame.geometry.values, dtype=object)  # a copy: the input stays as it was
    missing = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    types = shapely.get_type_id(geoms)
    candidate = ~missing & np.isin(types, [_POLYGON, _MULTIPOLYGON, _COLLECTION])
    invalid = candidate & ~shapely.is_valid(geoms)
    if invalid.any():
        geoms[invalid] = shapely.make_valid(geoms[invalid])
        types = shapely.get_type_id(geoms)
    for i in np.flatnonzero(candidate & ~np.isin(types, [_POLYGON, _MULTIPOLYGON])):
        geoms[i] = _polygonal_part(geoms[i])
    keep = candidate & ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    stats.skipped_empty += int(missing.sum())
    stats.skipped_non_polygon += int((~missing & ~keep).sum())
    stats.repaired += int(invalid.sum())
    cleaned = frame.loc[keep].copy()
    cleaned = cleaned.set_geometry(
        gpd.GeoSeries(list(geoms[keep]), index=cleaned.index, crs=frame.crs)
    )
    stats.polygons += len(cleaned)
    return cleaned


OSM_SUFFIXES = (".osm",)
#: the largest OSM XML file read (a batch of corrections is a few MB)
MAX_OSM_BYTES = 256 * 2**20


def read_osm(path: Path) -> gpd.GeoDataFrame:
    """Buildings of an OSM XML file as JOSM saves it, in EPSG:4326.

    Kept: closed ways tagged ``building=*`` (not ``building=no``) and ``type=multipolygon``
    relations tagged ``building=*`` (rings assembled from their outer and inner member ways,
    so holes are kept); negative ids (objects JOSM has not uploaded) are ordinary ids. A
    closed way with no tag at all that no relation uses is what JOSM saves for a building drawn
    but not tagged: it is refused with a line saying to tag it, rather than guessed. Every other
    object (other tags, open ways, nodes) is not a building and is ignored.

    Why not GDAL's OSM driver: it drops ways without "significant" tags, so an untagged
    building would vanish silently, and it cannot read negative node ids with its default
    indexing. The XML is parsed by the standard library's expat (entity-expansion limits on),
    streamed, with a size cap.
    """
    import xml.etree.ElementTree as ET

    from shapely.ops import linemerge, unary_union

    if not path.exists():
        raise LabelError("no such label file", path=path, hint="check the path")
    if path.stat().st_size > MAX_OSM_BYTES:
        raise LabelError(
            f"is larger than {MAX_OSM_BYTES // 2**20} MB", path=path, hint="split it by batch"
        )
    nodes: dict[str, tuple[float, float]] = {}
    ways: dict[str, tuple[list[str], dict[str, str]]] = {}
    relations: list[tuple[list[tuple[str, str, str]], dict[str, str]]] = []
    try:
        for _, elem in ET.iterparse(path, events=("end",)):
            if elem.tag == "node":
                nodes[elem.get("id")] = (float(elem.get("lon")), float(elem.get("lat")))
            elif elem.tag == "way":
                tags = {t.get("k"): t.get("v") for t in elem.iter("tag")}
                ways[elem.get("id")] = ([nd.get("ref") for nd in elem.iter("nd")], tags)
            elif elem.tag == "relation":
                tags = {t.get("k"): t.get("v") for t in elem.iter("tag")}
                members = [(m.get("type"), m.get("ref"), m.get("role") or "") for m in elem]
                relations.append(([m for m in members if m[0] == "way"], tags))
            if elem.tag in ("node", "way", "relation"):
                elem.clear()
    except (ET.ParseError, TypeError, ValueError) as exc:
        raise LabelError(
            f"is not a readable OSM XML file ({exc})",
            path=path,
            hint="save it again from JOSM (File > Save As, .osm)",
        ) from None

    def line(way_id: str):
        refs = ways[way_id][0]
        missing = [r for r in refs if r not in nodes]
        if missing:
            raise LabelError(
                f"way {way_id} uses node {missing[0]}, which the file does not hold",
                path=path,
                hint="save the whole layer again from JOSM (File > Save As)",
            )
        return shapely.LineString([nodes[r] for r in refs]) if len(refs) >= 2 else None

    def is_building(tags: dict[str, str]) -> bool:
        return tags.get("building", "no") != "no"

    def rings(way_ids: list[str]):
        lines = [g for g in (line(w) for w in way_ids if w in ways) if g is not None]
        return shapely.polygonize(list(shapely.get_parts(linemerge(lines)))) if lines else None

    geoms: list = []
    kinds: list[str | None] = []
    used: set = set()
    for members, tags in relations:
        used.update(ref for _, ref, _ in members)
        if tags.get("type") != "multipolygon" or not is_building(tags):
            continue
        outer = rings([ref for _, ref, role in members if role != "inner"])
        inner = rings([ref for _, ref, role in members if role == "inner"])
        if outer is None or outer.is_empty:
            continue
        shape = unary_union(list(shapely.get_parts(outer)))
        if inner is not None and not inner.is_empty:
            shape = shape.difference(unary_union(list(shapely.get_parts(inner))))
        geoms.append(shape)
        kinds.append(tags.get("building"))
    untagged = []
    for way_id, (refs, tags) in ways.items():
        closed = len(refs) >= 4 and refs[0] == refs[-1]
        if closed and is_building(tags):
            geoms.append(shapely.Polygon(line(way_id).coords))
            kinds.append(tags.get("building"))
        elif closed and not tags and way_id not in used:
            untagged.append(way_id)
    if untagged:
        raise LabelError(
            f"holds {len(untagged)} closed way(s) without tags (first: way {untagged[0]}), which "
            "JOSM saves for a building drawn but not tagged",
            path=path,
            hint="tag them building=yes in JOSM (select, then add the tag in the Tags panel) "
            "and save again; delete those that are not buildings",
        )
    return gpd.GeoDataFrame({"building": kinds}, geometry=geoms, crs="EPSG:4326")


def write_osm(path: Path, polygons, tags: dict[str, str] | None = None) -> None:
    """Write EPSG:4326 polygons as an OSM XML file JOSM opens as its own: closed ways, or
    ``type=multipolygon`` relations for polygons with holes, all with negative ids (new,
    never-uploaded objects), tagged ``building=yes``, in a layer marked ``upload="never"``."""
    from xml.sax.saxutils import quoteattr

    tags = {"building": "yes", **(tags or {})}
    tag_xml = "".join(f"    <tag k={quoteattr(k)} v={quoteattr(v)} />\n" for k, v in tags.items())
    counter = iter(range(-1, -(2**62), -1))
    nodes: list = []
    ways: list = []
    relations: list = []

    def way(ring, with_tags: bool) -> int:
        coords = list(ring.coords)[:-1]
        ids = [next(counter) for _ in coords]
        nodes.extend(
            f"  <node id='{i}' visible='true' lat='{y:.7f}' lon='{x:.7f}' />\n"
            for i, (x, y) in zip(ids, coords, strict=True)
        )
        wid = next(counter)
        refs = "".join(f"    <nd ref='{i}' />\n" for i in [*ids, ids[0]])
        ways.append(
            f"  <way id='{wid}' visible='true'>\n{refs}{tag_xml if with_tags else ''}  </way>\n"
        )
        return wid

    for polygon in polygons:
        for part in shapely.get_parts(polygon):
            if part.is_empty or part.geom_type != "Polygon":
                continue
            if not part.interiors:
                way(part.exterior, True)
                continue
            members = [("outer", way(part.exterior, False))]
            members += [("inner", way(r, False)) for r in part.interiors]
            body = "".join(
                f"    <member type='way' ref='{w}' role='{role}' />\n" for role, w in members
            )
            relations.append(
                f"  <relation id='{next(counter)}' visible='true'>\n{body}"
                f"    <tag k='type' v='multipolygon' />\n{tag_xml}  </relation>\n"
            )
    text = (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        "<osm version='0.6' upload='never' generator='rscrisis'>\n"
        + "".join(nodes + ways + relations)
        + "</osm>\n"
    )
    Path(path).write_text(text, encoding="utf-8")


def _polygon_layer(path: Path, layer: str | None) -> str | None:
    """The layer to read: ``layer`` if given, the only layer, or the only polygon layer."""
    import pyogrio

    layers = pyogrio.list_layers(path)
    names = [str(n) for n, _ in layers]
    if layer is not None:
        if layer not in names:
            raise LabelError(
                f"has no layer {layer!r} (layers: {', '.join(names)})",
                path=path,
                hint="choose one of those with --labels-layer",
            )
        return layer
    if len(layers) <= 1:
        return names[0] if names else None
    polygonal = [str(n) for n, kind in layers if kind is None or "Polygon" in str(kind)]
    if len(polygonal) == 1:
        return polygonal[0]
    raise LabelError(
        f"has {len(layers)} layers ({', '.join(names)}) and "
        + (f"{len(polygonal)} of them hold polygons" if polygonal else "none holds polygons"),
        path=path,
        hint="choose the building layer with --labels-layer",
    )


def read_vector(path: Path, layer: str | None = None) -> gpd.GeoDataFrame:
    """Read a vector file's building layer with a one-line error on failure: OSM XML through
    :func:`read_osm`, other formats through GDAL (the only layer, the only polygon layer of
    several, or ``layer``)."""

    if not path.exists():
        raise LabelError("no such label file", path=path, hint="check --labels")
    if path.suffix.lower() in OSM_SUFFIXES:
        return read_osm(path)
    try:
        chosen = _polygon_layer(path, layer)
        frame = gpd.read_file(path, engine="pyogrio", layer=chosen)
    except LabelError:
        raise
    except Exception as exc:
        raise LabelError(
            f"cannot be read as vector data ({str(exc).splitlines()[0]})",
            path=path,
            hint="give a GeoPackage, GeoJSON or Shapefile (ogrinfo shows what GDAL sees)",
        ) from exc
    if frame.crs is None:
        raise LabelError(
            "has no CRS",
            path=path,
            hint="assign one, e.g. ogr2ogr -a_srs EPSG:4326 fixed.gpkg input.shp",
        )
    return frame


def read_labels(paths: Sequence[Path]) -> Labels:
    """Read, clean and merge building footprints from one or more files (in the first's CRS)."""
    stats = LabelStats()
    frames: list[gpd.GeoDataFrame] = []
    for path in paths:
        frame = read_vector(Path(path))
        stats.files.append(str(path))
        stats.features += len(frame)
        if len(frame) == 0:
            raise LabelError(
                "holds no feature",
                path=path,
                hint="export the building layer again, or drop --labels",
            )
        cleaned = clean_polygons(frame[[frame.geometry.name]], stats)
        if len(cleaned) == 0:
            raise LabelError(
                f"holds no polygon ({len(frame)} feature(s), none polygonal)",
                path=path,
                hint="building footprints must be polygons",
            )
        if frames:
            cleaned = cleaned.to_crs(frames[0].crs)
        frames.append(
            cleaned.rename_geometry("geometry") if cleaned.geometry.name != "geometry" else cleaned
        )
    import pandas as pd

    merged = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)
    if stats.skipped_non_polygon:
        log.warning("skipped %d non-polygon label feature(s)", stats.skipped_non_polygon)
    if stats.repaired:
        log.info("repaired %d invalid label polygon(s)", stats.repaired)
    return Labels(frame=merged, stats=stats)
