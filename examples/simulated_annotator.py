"""A stand-in for the people who correct an annotation batch (for demos and CI).

    python examples/simulated_annotator.py BATCH TRUTH.gpkg [--skip N]

For every task still "todo", it replaces the model's outlines in tasks/<task>/buildings.gpkg
with the true footprints inside the tile (as a careful annotator would draw them in QGIS) and
marks the task "done" in status.csv; the last N tasks are marked "skipped" instead, as when an
image cannot be annotated. Only files a person would touch are changed.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import geopandas as gpd
import rasterio
from shapely.geometry import box


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("batch", type=Path)
    parser.add_argument("truth", type=Path, help="true building footprints (any CRS)")
    parser.add_argument("--skip", type=int, default=0, help="mark the last N tasks skipped")
    args = parser.parse_args()
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
            crs = ds.crs
        local = truth.to_crs(crs)
        inside = local[local.intersects(tile)].copy()
        inside["geometry"] = inside.geometry.intersection(tile)
        inside = inside[inside.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
        out = gpd.GeoDataFrame(
            {"building": ["yes"] * len(inside)}, geometry=list(inside.geometry), crs=crs
        )
        out.to_file(task_dir / "buildings.gpkg", layer="buildings", engine="pyogrio")
        row.update(status="done", annotator="simulated", note=f"{len(out)} buildings")
    with open(args.batch / "status.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    done = sum(r["status"] == "done" for r in rows)
    print(f"{args.batch}: {done} task(s) annotated, {args.skip} skipped")


if __name__ == "__main__":
    main()
