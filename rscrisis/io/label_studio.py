"""Label Studio, both ways: a batch's import file and labelling config, and its exports read back.

Label Studio draws polygons on a plain image (``image.png``) in percent of the image's width and
height, with no map coordinates and no holes. So:

* **Export** (``rank --label-studio``): one task per tile, the model's buildings as a
  prediction whose ``score`` is the task's rank score (each polygon carries the model's mean
  probability). A building with a courtyard becomes a ``building`` polygon plus a ``courtyard``
  polygon per hole; the shipped labelling config (``labelstudio.xml``) offers both labels.
  Image URLs are ``{prefix}tasks/<task>/image.png`` with ``{batch}`` in the prefix replaced by
  the batch folder's name (``rank --label-studio-prefix``). The default prefix serves the
  batch's *parent* folder as Label Studio's local-files document root, so several batches
  side by side never collide.
* **Import** (``finetune --labels export.json``): the JSON and JSON-MIN exports. Tasks are
  matched by the ``task`` field this export put into each task's data (or, failing that, the
  image URL). Of several annotations on a task, the latest one not cancelled wins and a warning
  names the task. Points in percent become pixels of the task's ``image.tif`` (the PNG is the
  same grid) and then map coordinates through its transform; each ``courtyard`` is cut out of
  the building that holds it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rscrisis.errors import LabelError

log = logging.getLogger(__name__)

BUILDING, COURTYARD = "building", "courtyard"
LABEL_CONFIG = """<View>
  <Header value="Outline every building in the tile. Draw a courtyard (a hole in a building)
    as a courtyard polygon inside it. Delete outlines that are not buildings."/>
  <Image name="image" value="$image" zoom="true" zoomControl="true" rotateControl="false"/>
  <PolygonLabels name="label" toName="image" strokeWidth="2" pointSize="small" opacity="0.35">
    <Label value="building" background="#ff7f00"/>
    <Label value="courtyard" background="#1f78b4"/>
  </PolygonLabels>
</View>
"""

_TASK_IN_URL = re.compile(r"tasks/([^/?&]+)/image\.png")


def _percent(points_px, width: int, height: int) -> list[list[float]]:
    return [
        [min(max(100 * x / width, 0.0), 100.0), min(max(100 * y / height, 0.0), 100.0)]
        for x, y in points_px
    ]


def task_results(task: str, polygons_px, probs, width: int, height: int) -> list[dict]:
    """Label Studio results for polygons in pixel coordinates (holes as courtyards)."""
    results: list[dict] = []

    def add(ring, label: str, score: float | None) -> None:
        item = {
            "id": f"{task}-{len(results)}",
            "type": "polygonlabels",
            "from_name": "label",
            "to_name": "image",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {
                "points": _percent(list(ring.coords)[:-1], width, height),
                "closed": True,
                "polygonlabels": [label],
            },
        }
        if score is not None:
            item["score"] = round(float(score), 4)
        results.append(item)

    for polygon, prob in zip(polygons_px, probs, strict=True):
        add(polygon.exterior, BUILDING, prob)
        for hole in polygon.interiors:
            add(hole, COURTYARD, None)
    return results


def image_url(prefix: str, batch: Path, task: str) -> str:
    return prefix.replace("{batch}", batch.name) + f"tasks/{task}/image.png"


# --- reading an export back ----------------------------------------------------------------


@dataclass
class Annotation:
    """One task's corrections: building and courtyard rings in percent of the image."""

    task: str
    buildings: list[list[list[float]]]
    courtyards: list[list[list[float]]]
    size: tuple[int, int] | None  # (width, height) the export recorded


def is_export(path: Path) -> bool:
    """Whether ``path`` looks like a Label Studio JSON/JSON-MIN export (a JSON list)."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return head.startswith(b"[")


def _task_name(item: dict) -> str | None:
    data = item["data"] if isinstance(item.get("data"), dict) else item
    name = data.get("task")
    if isinstance(name, str):
        return name
    match = _TASK_IN_URL.search(str(data.get("image", "")))
    return match.group(1) if match else None


def _regions(results, path: Path, task: str) -> Annotation:
    buildings, courtyards, size, other = [], [], None, 0
    for r in results or []:
        if not isinstance(r, dict):
            raise LabelError(f"task {task}: a result is not an object", path=path)
        value = r.get("value", r)  # JSON-MIN puts the value fields at the top
        labels = value.get("polygonlabels")
        points = value.get("points")
        if labels is None or points is None:
            other += 1
            continue
        try:
            ring = [[float(x), float(y)] for x, y in points]
        except (TypeError, ValueError):
            raise LabelError(
                f"task {task}: polygon points are not [x, y] pairs", path=path
            ) from None
        if not all(np.isfinite(v) for xy in ring for v in xy) or len(ring) < 3:
            raise LabelError(
                f"task {task}: a polygon has fewer than 3 points or non-finite ones",
                path=path,
                hint="delete or redraw it in Label Studio and export again",
            )
        if r.get("original_width") and r.get("original_height"):
            size = (int(r["original_width"]), int(r["original_height"]))
        if COURTYARD in labels:
            courtyards.append(ring)
        elif BUILDING in labels:
            buildings.append(ring)
        else:
            other += 1
    if other:
        log.warning("task %s: ignored %d region(s) that are not building polygons", task, other)
    return Annotation(task, buildings, courtyards, size)


def read_export(path: Path) -> dict[str, Annotation]:
    """Corrections per task name from a Label Studio JSON or JSON-MIN export."""
    import json

    from rscrisis.io.inputs import MAX_TEXT_BYTES

    hint = "export the project again from Label Studio (Export > JSON or JSON-MIN)"
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise LabelError("is too large for a Label Studio export", path=path, hint=hint)
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise LabelError(f"is not a readable JSON export ({exc})", path=path, hint=hint) from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise LabelError("is not a Label Studio export (a list of tasks)", path=path, hint=hint)
    chosen: dict[str, tuple[str, list]] = {}
    several: set[str] = set()
    for item in items:
        task = _task_name(item)
        if task is None:
            raise LabelError(
                f"has a task without a rscrisis task name (id {item.get('id')})",
                path=path,
                hint="import the batch's labelstudio.json into Label Studio, not the images alone",
            )
        if "annotations" in item:  # the full JSON export
            candidates = [
                (str(a.get("updated_at") or a.get("created_at") or ""), a.get("result") or [])
                for a in item.get("annotations") or []
                if isinstance(a, dict) and not a.get("was_cancelled")
            ]
        else:  # JSON-MIN: one row per annotation
            candidates = [
                (
                    str(item.get("updated_at") or item.get("created_at") or ""),
                    item.get("label") or [],
                )
            ]
        for stamp, result in candidates:
            if task in chosen:
                several.add(task)
                if stamp < chosen[task][0]:
                    continue
            chosen[task] = (stamp, result)
    for task in sorted(several):
        log.warning("task %s has several annotations in %s: the latest is used", task, path.name)
    return {task: _regions(result, path, task) for task, (_, result) in chosen.items()}


def to_polygons(annotation: Annotation, transform, width: int, height: int) -> list:
    """An annotation's buildings in map coordinates of a tile (transform, size in px), each
    courtyard cut out of the buildings it lies in."""
    import shapely
    from shapely.geometry import Polygon

    w, h = annotation.size or (width, height)
    if (w, h) != (width, height):
        log.warning(
            "task %s was annotated on a %dx%d image, the tile is %dx%d; scaling",
            annotation.task,
            w,
            h,
            width,
            height,
        )

    def ring(points):
        px = np.asarray(points, np.float64) / 100.0 * [width, height]
        xs, ys = transform @ (px[:, 0], px[:, 1])
        return Polygon(np.column_stack([xs, ys]))

    buildings = [shapely.make_valid(ring(p)) for p in annotation.buildings]
    if annotation.courtyards:
        holes = shapely.union_all([shapely.make_valid(ring(p)) for p in annotation.courtyards])
        buildings = [b.difference(holes) for b in buildings]
    return [b for b in buildings if not b.is_empty]
