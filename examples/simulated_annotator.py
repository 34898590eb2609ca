"""A stand-in for the people who correct an annotation batch (for demos and CI).

    python examples/simulated_annotator.py BATCH TRUTH.gpkg [--skip N]
    python examples/simulated_annotator.py BATCH TRUTH.gpkg --label-studio EXPORT.json

For every task still "todo", it replaces the model's outlines in tasks/<task>/buildings.gpkg
with the true footprints inside the tile (as a careful annotator would draw them in QGIS) and
marks the task "done" in status.csv; the last N tasks are marked "skipped" instead, as when an
image cannot be annotated. Only files a person would touch are changed.

With ``--label-studio``, the corrections are drawn in Label Studio instead (the batch was made
with ``rank --label-studio``): nothing in the task folders changes, and EXPORT.json is what
Label Studio's JSON export would hold: the imported tasks, each with an annotation whose
polygons are in percent of the image, courtyards (holes) as ``courtyard`` polygons, and, for
the first task, an older annotation that a later one replaced.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import geopandas as gpd
import rasterio
from shapely.geometry import box


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("batch", type=Path)
    parser.add_argument("truth", type=Path, help="true building footprints (any CRS)")
    parser.add_argument("--skip", type=int, default=0, help="mark the last N tasks skipped")
    parser.add_argument("--label-studio", type=Path, help="write a Label Studio JSON export here")
    args = parser.parse_args()
    imported = None
    if args.label_studio:
        imported = {
            t["data"]["task"]: t for t in json.loads((args.batch / "labelstudio.json").read_text())
        }
    exported = []
    truth = gpd.read_file(args.truth, engine="pyogrio")
    with open(args.batch / "status.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    todo = [r for r in rows if r["status"] == "todo"]
    for n, row in enumerate(todo):
        if n >= len(todo) - args.skip:
            row.update(status="skipped", annotator="simulated", note="cannot annotate")
            continue
        task_dir = args.batch / "tasks" / row["task"]
        with rasterio.open(task_dir / "image.tif") as ds:
            tile = box(*ds.bounds)
            crs, transform, size = ds.crs, ds.transform, (ds.width, ds.height)
        local = truth.to_crs(crs)
        inside = local[local.intersects(tile)].copy()
        inside["geometry"] = inside.geometry.intersection(tile)
        inside = inside[inside.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
        out = gpd.GeoDataFrame(
            {"building": ["yes"] * len(inside)}, geometry=list(inside.geometry), crs=crs
        )
        if imported is None:
            out.to_file(task_dir / "buildings.gpkg", layer="buildings", engine="pyogrio")
        else:
            exported.append(_studio_task(imported[row["task"]], out, transform, size, n))
        row.update(status="done", annotator="simulated", note=f"{len(out)} buildings")
    with open(args.batch / "status.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if imported is not None:
        args.label_studio.write_text(json.dumps(exported, indent=1))
    done = sum(r["status"] == "done" for r in rows)
    print(f"{args.batch}: {done} task(s) annotated, {args.skip} skipped")


def _studio_task(task: dict, buildings, transform, size, n: int) -> dict:
    """One task of a Label Studio JSON export: the imported task with annotations."""
    width, height = size
    inverse = ~transform
    result = []

    def region(ring, label):
        points = [inverse * xy for xy in list(ring.coords)[:-1]]
        result.append(
            {
                "id": f"r{len(result)}",
                "type": "polygonlabels",
                "from_name": "label",
                "to_name": "image",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "origin": "manual",
                "value": {
                    "points": [[100 * x / width, 100 * y / height] for x, y in points],
                    "closed": True,
                    "polygonlabels": [label],
                },
            }
        )

    for polygon in buildings.geometry.explode(index_parts=False):
        region(polygon.exterior, "building")
        for hole in polygon.interiors:
            region(hole, "courtyard")
    annotations = [
        {
            "id": 100 + n,
            "completed_by": 1,
            "result": result,
            "was_cancelled": False,
            "ground_truth": False,
            "created_at": "2026-12-01T10:05:00.000000Z",
            "updated_at": "2026-12-01T10:05:00.000000Z",
            "lead_time": 61.5,
            "task": task["id"],
        }
    ]
    if n == 0:  # a first attempt, replaced later: the latest annotation must win
        annotations.insert(
            0,
            {**annotations[0], "id": 99, "result": [], "created_at": "2026-12-01T09:00:00Z",
             "updated_at": "2026-12-01T09:00:00Z"},
        )  # fmt: skip
    return {**task, "annotations": annotations, "total_annotations": len(annotations)}


if __name__ == "__main__":
    main()
