#!/usr/bin/env bash
# The README quickstart: run the rscrisis loop on the shipped synthetic sample data.
# Today the loop is its first stage (tiling); later stages append their commands here.
# Outputs go to runs/quickstart/ (rerunnable: --overwrite replaces the previous run).
set -euo pipefail
cd "$(dirname "$0")/.."
RS=${RSCRISIS:-.venv/bin/rscrisis}
OUT=runs/quickstart

# 1. Tile the pretraining area with its noisy OSM-like labels, and the new area (no labels).
"$RS" tile sample_data/area_a/area_a.tif --labels sample_data/area_a/buildings_osm.gpkg \
    --out "$OUT/tiles-a" --size 256 --overwrite
"$RS" tile sample_data/area_b/area_b.tif --out "$OUT/tiles-b" --size 256 --overlap 32 \
    --min-valid 0.2 --overwrite --json > "$OUT/tiles-b.json"

echo "quickstart done: tile sets in $OUT/tiles-a and $OUT/tiles-b (open index.gpkg in QGIS)" >&2
