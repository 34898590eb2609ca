"""The annotation batch on disk (docs/design.md "batch"): layout, task status, edit detection.

::

    batch-01/
      README.md              instructions for annotators (what to edit, how to mark done)
      batch.json             manifest: prediction set, model, formula, config, the tasks
      ranking.gpkg / .csv    rank, tile_id, score and its components, statistics, footprint
      tasks.geojson          task grid in EPSG:4326 (Tasking Manager / QGIS task layer)
      status.csv             one row per task: status todo | done | skipped, annotator, note
      tasks/<NNN>_<tile_id>/
        image.tif            the tile image, georeferenced
        buildings.gpkg       the model's buildings in the tile CRS: edit in QGIS
        buildings.geojson    the same in EPSG:4326: edit in JOSM
      labelstudio.json       with --label-studio (tasks/*/image.png + polygon predictions)
      labels/                written by finetune: the corrected tasks as a tile set

Which pre-annotation file a person edited is decided by *content*, not timestamps or bytes:
batch.json stores a fingerprint of each file's geometries at export (QGIS may rewrite a
GeoPackage it merely opened), and a file whose geometries differ from it was edited.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from rscrisis.errors import InputError

README = "README.md"
MANIFEST = "batch.json"
RANKING_GPKG = "ranking.gpkg"
RANKING_CSV = "ranking.csv"
TASKS_GEOJSON = "tasks.geojson"
STATUS = "status.csv"
TASKS = "tasks"
LABEL_STUDIO = "labelstudio.json"
LABEL_STUDIO_CONFIG = "labelstudio.xml"
LABELS = "labels"
OVERVIEW = "overview.png"
PRODUCTS = (
    README,
    MANIFEST,
    RANKING_GPKG,
    RANKING_CSV,
    TASKS_GEOJSON,
    STATUS,
    TASKS,
    LABEL_STUDIO,
    LABEL_STUDIO_CONFIG,
    OVERVIEW,
)
IMAGE = "image.tif"
EDIT_GPKG = "buildings.gpkg"
EDIT_GEOJSON = "buildings.geojson"
#: the same pre-annotation as OSM XML for JOSM (upload="never": model output must never be
#: uploaded to OpenStreetMap by mistake)
EDIT_OSM = "buildings.osm"
#: every pre-annotation file of a task; the edited one is found by fingerprint
EDIT_FILES = (EDIT_GPKG, EDIT_GEOJSON, EDIT_OSM)
STATUSES = ("todo", "done", "skipped")
STATUS_FIELDS = ("task", "tile_id", "rank", "status", "annotator", "note")


def task_name(rank: int, tile_id: str) -> str:
    return f"{rank:03d}_{tile_id}"


def geometry_fingerprint(frame) -> str:
    """Hash of a layer's geometries, independent of feature order, precision noise and file
    format (coordinates rounded to 1e-7 of the CRS unit after normalisation)."""
    import shapely

    parts = sorted(
        shapely.to_wkt(shapely.normalize(g), rounding_precision=7)
        for g in frame.geometry.values
        if g is not None and not g.is_empty
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class Task:
    task: str
    tile_id: str
    rank: int
    status: str
    annotator: str = ""
    note: str = ""


@dataclass(frozen=True)
class BatchLayout:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def status(self) -> Path:
        return self.root / STATUS

    @property
    def labels(self) -> Path:
        return self.root / LABELS

    def task_dir(self, task: str) -> Path:
        from rscrisis.io.names import child

        return child(self.root / TASKS, task)

    def read_manifest(self) -> dict:
        if not self.manifest.exists():
            raise InputError(
                f"is not an annotation batch (no {MANIFEST})",
                path=self.root,
                hint="make one with rscrisis rank PRED_SET --out BATCH",
            )
        from rscrisis.io.inputs import BatchManifest, read_json

        return read_json(
            self.manifest,
            hint="restore it from the batch as exported (it is not meant to be edited)",
            schema=BatchManifest,
        )

    def read_status(self) -> list[Task]:
        if not self.status.exists():
            raise InputError(
                "is missing", path=self.status, hint="restore status.csv from the export"
            )
        from rscrisis.io.inputs import read_csv_rows
        from rscrisis.io.names import check_names

        rows = read_csv_rows(
            self.status,
            required=("task", "tile_id", "rank", "status"),
            hint="restore status.csv from the export; only status, annotator and note are "
            "meant to be edited",
        )

        tasks, seen = [], set()
        for n, row in enumerate(rows, start=2):
            status = (row.get("status") or "").strip().lower()
            if status not in STATUSES:
                raise InputError(
                    f"line {n}: status {row.get('status')!r} is not one of {', '.join(STATUSES)}",
                    path=self.status,
                    hint="mark each task todo, done or skipped",
                )
            tile, task = row.get("tile_id") or "", row.get("task") or ""
            check_names([tile], "tile id", self.status)
            check_names([task], "task name", self.status)
            try:
                rank = int(row.get("rank") or "")
            except ValueError:
                raise InputError(
                    f"line {n}: rank {row.get('rank')!r} is not a whole number",
                    path=self.status,
                    hint="do not edit the task, tile_id and rank columns; restore them from "
                    "the export",
                ) from None
            if task != task_name(rank, tile):
                raise InputError(
                    f"line {n}: task {task!r} does not belong to tile {tile!r} at rank {rank}",
                    path=self.status,
                    hint="do not edit the task, tile_id and rank columns; restore them from "
                    "the export",
                )
            if task in seen:
                raise InputError(
                    f"line {n}: task {task!r} is listed twice",
                    path=self.status,
                    hint="keep one row per task",
                )
            seen.add(task)
            tasks.append(
                Task(
                    task=task,
                    tile_id=tile,
                    rank=rank,
                    status=status,
                    annotator=(row.get("annotator") or "").strip(),
                    note=(row.get("note") or "").strip(),
                )
            )
        return tasks


def write_status(path: Path, tasks: list[Task]) -> None:
    from rscrisis.io.outputs import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=STATUS_FIELDS)
        writer.writeheader()
        for t in tasks:
            writer.writerow({k: getattr(t, k) for k in STATUS_FIELDS})


def batch_tile_ids(root: Path) -> set[str]:
    """Tile ids of an earlier batch (to exclude them from a new one)."""
    return {t.tile_id for t in BatchLayout(Path(root)).read_status()}
