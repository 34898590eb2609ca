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


def clean_polygons(frame: gpd.GeoDataFrame, stats: LabelStats) -> gpd.GeoDataFrame:
    """Drop empties and non-polygons, repair invalid polygons; updates ``stats`` in place."""
    geoms = frame.geometry.values
    keep = np.zeros(len(frame), dtype=bool)
    out = np.empty(len(frame), dtype=object)
    for i, geom in enumerate(geoms):
        if geom is None or geom.is_empty:
            stats.skipped_empty += 1
            continue
        if geom.geom_type not in POLYGONAL and geom.geom_type != "GeometryCollection":
            stats.skipped_non_polygon += 1
            continue
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
            stats.repaired += 1
        part = _polygonal_part(geom)
        if part is None or part.is_empty:
            stats.skipped_non_polygon += 1
            continue
        keep[i] = True
        out[i] = part
    cleaned = frame.loc[keep].copy()
    cleaned = cleaned.set_geometry(
        gpd.GeoSeries(list(out[keep]), index=cleaned.index, crs=frame.crs)
    )
    stats.polygons += len(cleaned)
    return cleaned


def read_vector(path: Path) -> gpd.GeoDataFrame:
    """Read the first layer of a vector file with a one-line error on failure."""
    import pyogrio

    if not path.exists():
        raise LabelError("no such label file", path=path, hint="check --labels")
    try:
        layers = pyogrio.list_layers(path)
        if len(layers) > 1:
            log.warning("%s has %d layers; reading the first, %r", path, len(layers), layers[0][0])
        frame = gpd.read_file(path, engine="pyogrio", layer=layers[0][0] if len(layers) else None)
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
