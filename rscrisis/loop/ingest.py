"""Read corrected labels back from annotation batches and turn them into a tile set.

Everything is checked before anything is written, so a malformed correction changes nothing:

* the batch is complete (batch.json, status.csv, the task folders of ``done`` tasks);
* for each ``done`` task, exactly one pre-annotation file was edited (decided by geometry
  content, see :mod:`rscrisis.io.batch`), or none (the pre-annotation was right as it was);
  with ``labels_file`` (one merged vector file, e.g. from JOSM) its polygons are used instead;
* the file is readable, has a CRS, holds only polygons, and they are valid (``repair`` fixes
  them with ``make_valid`` instead of refusing);
* a file with polygons of which none falls inside the task's tile is refused: that is what a
  wrong CRS looks like (an empty file is fine: the tile has no building).

The corrected tiles are then written to ``BATCH/labels/``, a tile set (hard-linked image, mask
rasterised like ``rscrisis tile`` does: pixel centres inside, 255 where the image is nodata).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rscrisis.errors import InputError, LabelError
from rscrisis.io.batch import EDIT_FILES, IMAGE, BatchLayout, geometry_fingerprint
from rscrisis.io.outputs import link_or_copy
from rscrisis.io.raster import one_band_profile, read_raster
from rscrisis.io.tileset import (
    INDEX_LAYER,
    MASK_BUILDING,
    MASK_IGNORE,
    MASKS,
    TileSetLayout,
    footprint,
    read_manifest,
)

log = logging.getLogger(__name__)
POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass
class IngestReport:
    batch: str
    labels: str
    taken: list[str] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    buildings: int = 0
    repaired: int = 0
    sources: dict[str, str] = field(default_factory=dict)
    #: done tasks whose corrections hold no building where the pre-annotation had some
    emptied: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Planned:
    task: str
    tile_id: str
    image: Path
    tileset: Path
    geoms: list
    source: str


def _read_polygons(path: Path, layer: str | None = None):
    from rscrisis.io.vector import read_vector

    if not path.exists():
        raise LabelError(
            "is missing",
            path=path,
            hint="restore the task folder from the export (or mark the task skipped)",
        )
    return read_vector(path, layer)


#: files a task folder may hold besides the pre-annotations (anything else is reported)
_TASK_FILES = {IMAGE, "image.png", *EDIT_FILES}
_VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".osm", ".shp", ".kml", ".gml", ".fgb")


def _choose_source(task_dir: Path, fingerprints: dict) -> Path:
    """The pre-annotation file the annotator edited (by content, across the GeoPackage, the
    GeoJSON and the OSM XML), or the GeoPackage when none was. A file of a kind rscrisis did
    not export (an ``.osm`` in a batch from before .osm pre-annotations) counts as edited."""
    present = [n for n in EDIT_FILES if (task_dir / n).exists()]
    if not present:
        raise LabelError(
            f"has none of {', '.join(EDIT_FILES)}",
            path=task_dir,
            hint="restore the corrected file, or mark the task skipped in status.csv",
        )
    extra = sorted(
        p.name
        for p in task_dir.iterdir()
        if p.name not in _TASK_FILES and p.suffix.lower() in _VECTOR_SUFFIXES
    )
    if extra:
        log.warning(
            "%s: ignored %s (corrections are read from %s only)",
            task_dir.name,
            ", ".join(extra),
            ", ".join(EDIT_FILES),
        )
    edited = []
    for name in present:
        frame = _read_polygons(task_dir / name)
        if geometry_fingerprint(frame) != fingerprints.get(name):
            edited.append(name)
    if len(edited) > 1:
        raise LabelError(
            f"{' and '.join(edited)} were all edited, so it is unclear which is right",
            path=task_dir,
            hint="keep the corrections in one file and delete the others",
        )
    return task_dir / (edited[0] if edited else present[0])


def _validate(frame, path: Path, tile_crs, area, repair: bool) -> tuple[list, int]:
    """Polygons of ``frame`` in the tile CRS, checked (see module docstring)."""
    import shapely

    geoms = [g for g in frame.geometry.values if g is not None and not g.is_empty]
    other = [g for g in geoms if g.geom_type not in POLYGONAL]
    if other:
        closed = [g for g in other if g.geom_type == "LineString" and g.is_closed]
        hint = "buildings must be closed polygons; close or delete those features"
        if closed:  # what JOSM writes for a building drawn without a tag
            hint = (
                f"{len(closed)} of them are closed lines, which JOSM writes for a building "
                "without tags: tag each building=yes in JOSM and save again"
            )
        raise LabelError(
            f"holds {len(other)} non-polygon feature(s) (first: {other[0].geom_type})",
            path=path,
            hint=hint,
        )
    invalid = [i for i, g in enumerate(geoms) if not g.is_valid]
    repaired = 0
    if invalid:
        if not repair:
            reason = shapely.is_valid_reason(geoms[invalid[0]])
            raise LabelError(
                f"holds {len(invalid)} invalid polygon(s) (first: {reason})",
                path=path,
                hint="fix them (QGIS: Vector > Geometry Tools > Fix Geometries) or pass --repair",
            )
        for i in invalid:
            geoms[i] = shapely.make_valid(geoms[i])
        repaired = len(invalid)
    if not geoms:
        return [], repaired
    import geopandas as gpd

    series = gpd.GeoSeries(geoms, crs=frame.crs).to_crs(tile_crs)
    inside = [g for g in series.values if g.intersects(area)]
    if not inside:
        raise LabelError(
            f"none of its {len(geoms)} polygon(s) lies inside the task's tile",
            path=path,
            hint="the file's CRS is probably wrong: check it against the tile's "
            f"({tile_crs.to_string()})",
        )
    return inside, repaired


def plan_batch(
    root: Path, labels_file: Path | None, repair: bool, labels_layer: str | None = None
) -> tuple[list[_Planned], IngestReport]:
    """Validate one batch's corrections; nothing is written."""

    layout = BatchLayout(root)
    manifest = layout.read_manifest()
    tasks = {t["task"]: t for t in manifest.get("tasks", [])}
    report = IngestReport(batch=str(root), labels=str(layout.labels))
    from rscrisis.io import label_studio as label_studio

    studio = None
    if labels_file is not None and label_studio.is_export(labels_file):
        studio = label_studio.read_export(labels_file)
        merged = None
    else:
        merged = _read_polygons(labels_file, labels_layer) if labels_file else None
    merged_used = 0  # tasks the merged file had polygons for
    planned = []
    for task in layout.read_status():
        if task.status != "done":
            report.refused.append({"task": task.task, "reason": f"status {task.status}"})
            continue
        meta = tasks.get(task.task)
        if meta is None:
            raise InputError(
                f"lists task {task.task!r}, which batch.json does not know",
                path=layout.status,
                hint="do not rename tasks; restore status.csv from the export",
            )
        task_dir = layout.task_dir(task.task)
        image = task_dir / IMAGE
        if not image.exists():
            raise InputError(
                "is missing", path=image, hint="restore the task folder from the export"
            )
        with read_raster(image) as ds:
            crs, area = ds.crs, footprint(ds.transform, ds.width, ds.height)
            transform, size = ds.transform, (ds.width, ds.height)
        source: Path
        if studio is not None:
            assert labels_file is not None  # a Label Studio export is a --labels file
            source = labels_file
            annotation = studio.get(task.task)
            if annotation is None:
                raise LabelError(
                    f"has no annotation of task {task.task!r}, which status.csv marks done",
                    path=labels_file,
                    hint="annotate it in Label Studio and export again, or set it back to todo",
                )
            import geopandas as gpd

            polygons = label_studio.to_polygons(annotation, transform, *size)
            frame = gpd.GeoDataFrame(geometry=polygons, crs=crs)
            geoms, repaired = (
                _validate(frame, labels_file, crs, area, repair) if polygons else ([], 0)
            )
        elif merged is not None:
            assert labels_file is not None  # the merged layer was read from --labels
            source = labels_file
            frame = merged[merged.intersects(_to_crs(area, crs, merged.crs))]
            if len(frame) == 0:
                geoms, repaired = [], 0
            else:
                merged_used += 1
                geoms, repaired = _validate(frame, labels_file, crs, area, repair)
        else:
            source = _choose_source(task_dir, meta.get("fingerprints", {}))
            geoms, repaired = _validate(_read_polygons(source), source, crs, area, repair)
        report.taken.append(task.task)
        report.buildings += len(geoms)
        report.repaired += repaired
        report.sources[task.task] = Path(source).name
        if not geoms and meta.get("pre_annotation_buildings", 0) > 0:
            report.emptied.append(task.task)
        planned.append(
            _Planned(task.task, task.tile_id, image, Path(meta["tileset"]), geoms, str(source))
        )
    if merged is not None and len(merged) and planned and not merged_used:
        raise LabelError(
            f"none of its {len(merged)} polygon(s) lies in any of the batch's {len(planned)} "
            "done task(s)",
            path=labels_file,
            hint="its CRS is probably wrong, or it belongs to another batch: check it in QGIS "
            "against the batch's tasks.geojson",
        )
    if report.emptied:
        log.warning(
            "%d done task(s) read as empty although the model pre-annotated buildings there "
            "(%s): they train as 'no building here'",
            len(report.emptied),
            ", ".join(report.emptied[:5]),
        )
    return planned, report


def _to_crs(geom, src, dst):
    import geopandas as gpd

    return gpd.GeoSeries([geom], crs=src).to_crs(dst).iloc[0]


def write_labels(root: Path, planned: list[_Planned]) -> Path:
    """Write the planned tasks of one batch as the tile set ``BATCH/labels`` (replacing it)."""
    import geopandas as gpd
    import pandas as pd
    import rasterio
    from rasterio.features import rasterize

    from rscrisis.io.outputs import write_json_atomic
    from rscrisis.io.tileset import read_index

    final = BatchLayout(root).labels
    tmp = final.with_name(f".{final.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    dst = TileSetLayout(tmp)
    dst.images.mkdir(parents=True)
    dst.masks.mkdir(parents=True)
    rows = []
    manifest: dict = {}
    indexes: dict[Path, Any] = {}  # GeoDataFrames
    for p in planned:
        link_or_copy(p.image, dst.image_path(p.tile_id))
        with read_raster(p.image) as ds:
            valid = np.any(ds.read_masks() > 0, axis=0)
            profile = one_band_profile(ds, MASK_IGNORE)
            transform, crs, shape = ds.transform, ds.crs, (ds.height, ds.width)
        burnt = (
            rasterize(
                ((g, MASK_BUILDING) for g in p.geoms),
                out_shape=shape,
                transform=transform,
                fill=0,
                dtype="uint8",
            )
            if p.geoms
            else np.zeros(shape, np.uint8)
        )
        mask = np.where(valid, burnt, MASK_IGNORE).astype(np.uint8)
        with rasterio.open(dst.mask_path(p.tile_id), "w", **profile) as out:
            out.write(mask, 1)
        row = None
        if p.tileset.exists():
            if p.tileset not in indexes:
                indexes[p.tileset] = read_index(p.tileset)
                src_manifest = TileSetLayout(p.tileset).manifest
                if src_manifest.exists() and not manifest:
                    manifest = read_manifest(p.tileset)
            index = indexes[p.tileset]
            match = index[index.tile_id == p.tile_id]
            if len(match):
                row = match.iloc[0].to_dict()
                row["geometry"] = gpd.GeoSeries([row["geometry"]], crs=index.crs).to_crs(crs)[0]
        if row is None:
            row = {"tile_id": p.tile_id, "scene": p.tile_id.rsplit("_r", 1)[0]}
            row["geometry"] = footprint(transform, shape[1], shape[0])
        row.update(
            image=f"images/{p.tile_id}.tif",
            mask=f"{MASKS}/{p.tile_id}.tif",
            building_fraction=float((mask == 1).sum() / max(valid.sum(), 1)),
            nodata_fraction=float(1 - valid.mean()),
            source=p.source,
        )
        row["crs"] = crs.to_string()
        rows.append(row)
    frame = gpd.GeoDataFrame(pd.DataFrame(rows), geometry="geometry", crs=rows[0]["crs"])
    frame.to_file(dst.index, layer=INDEX_LAYER, driver="GPKG", engine="pyogrio")
    manifest.update({"status": "complete", "labels_from_batch": str(root), "tiles": len(rows)})
    write_json_atomic(dst.manifest, manifest)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def ingest(
    batches: Sequence[str | Path],
    *,
    labels_file: str | Path | None = None,
    labels_layer: str | None = None,
    repair: bool = False,
) -> list[IngestReport]:
    """Validate every batch, then write each one's ``labels/`` tile set."""
    plans = []
    for b in batches:
        planned, report = plan_batch(
            Path(b), Path(labels_file) if labels_file else None, repair, labels_layer
        )
        plans.append((Path(b), planned, report))
    if not any(planned for _, planned, _ in plans):
        raise InputError(
            "no task is marked done",
            path=", ".join(str(b) for b in batches),
            hint="set status to done in status.csv for the corrected tasks",
        )
    for root, planned, report in plans:
        if planned:
            write_labels(root, planned)
        else:
            report.labels = ""
            log.warning("%s: no task is done; nothing taken from it", root)
    return [r for _, _, r in plans]
