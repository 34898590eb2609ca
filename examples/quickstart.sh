#!/usr/bin/env bash
# The README quickstart: run the rscrisis loop on the shipped synthetic sample data.
# Stages available so far: tile -> train -> predict -> evaluate. Later stages (rank, finetune)
# append their commands here. Outputs go to runs/quickstart/ (rerunnable: --overwrite).
set -euo pipefail
cd "$(dirname "$0")/.."
RS=${RSCRISIS:-.venv/bin/rscrisis}
OUT=runs/quickstart
mkdir -p "$OUT"

# 1. Tile the pretraining area with its noisy OSM-like labels; tile the new area twice: without
#    labels (what a field team has) and with its true footprints (to measure how we do).
"$RS" tile sample_data/area_a/area_a.tif --labels sample_data/area_a/buildings_osm.gpkg \
    --out "$OUT/tiles-a" --size 128 --overwrite
"$RS" tile sample_data/area_b/area_b.tif --out "$OUT/tiles-b" --size 128 \
    --min-valid 0.2 --overwrite
"$RS" tile sample_data/area_b/area_b.tif --labels sample_data/area_b/buildings.gpkg \
    --out "$OUT/tiles-b-truth" --size 128 --min-valid 0.2 --overwrite

# 2. Train on the noisy labels (a short run: real runs use more epochs).
"$RS" train "$OUT/tiles-a" --out "$OUT/models/a.safetensors" --epochs 8 --overwrite

# 3. Predict the new area: probabilities, predicted IoU and uncertainty per tile.
"$RS" predict "$OUT/models/a.safetensors" "$OUT/tiles-b" --out "$OUT/pred-b" --overwrite

# 4. How good is it there, and does the IoU head know? (metrics as JSON on stdout)
"$RS" evaluate "$OUT/models/a.safetensors" "$OUT/tiles-b-truth" --out "$OUT/eval-b" \
    --overwrite --json > "$OUT/eval-b.json"

echo "quickstart done: see $OUT (open the index.gpkg and scores.gpkg files in QGIS)" >&2
