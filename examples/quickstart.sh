#!/usr/bin/env bash
# The README quickstart: run the rscrisis loop on the shipped synthetic sample data.
# The whole loop: tile -> pretrain -> adapt -> predict (tiles and whole scene) -> evaluate ->
# rank -> (simulated annotators) -> finetune -> predict -> evaluate -> rank the next batch.
# Outputs go to runs/quickstart/ (rerunnable: --overwrite).
set -euo pipefail
cd "$(dirname "$0")/.."
RS=${RSCRISIS:-.venv/bin/rscrisis}
PY=${PYTHON:-.venv/bin/python}
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

# 2. Pretrain on the noisy labels with the noise-robust defaults (a short run: real runs use
#    more epochs).
"$RS" pretrain "$OUT/tiles-a" --out "$OUT/models/a.safetensors" --epochs 8 --overwrite

# 3. Adapt the model to area B's imagery before anyone labels it (no labels needed: the
#    batch-norm statistics of area B). The rest of the loop uses the adapted model.
"$RS" adapt "$OUT/models/a.safetensors" "$OUT/tiles-b" --out "$OUT/models/a-b.safetensors" \
    --overwrite

# 4. Predict the new area: probabilities, predicted IoU and uncertainty per tile.
"$RS" predict "$OUT/models/a-b.safetensors" "$OUT/tiles-b" --out "$OUT/pred-b" --overwrite

# 5. How good is it there, before and after adapting, and does the IoU head know? (metrics as
#    JSON on stdout)
"$RS" evaluate "$OUT/models/a.safetensors" "$OUT/tiles-b-truth" --out "$OUT/eval-b-pretrained" \
    --overwrite --json > "$OUT/eval-b-pretrained.json"
"$RS" evaluate "$OUT/models/a-b.safetensors" "$OUT/tiles-b-truth" --out "$OUT/eval-b" \
    --overwrite --json > "$OUT/eval-b.json"

# 6. Map the whole new scene: seamless probability/mask COGs, one polygon per building (squared
#    outlines), and a per-window quality layer.
"$RS" predict "$OUT/models/a-b.safetensors" sample_data/area_b/area_b.tif --out "$OUT/map-b" \
    --regularize --geojson --overwrite

# 7. Rank the new area's tiles for annotation and export the top ones as a batch (for QGIS and
#    JOSM, and with --label-studio a Label Studio import and labelling config).
"$RS" rank "$OUT/pred-b" --top 6 --out "$OUT/batch-01" --label-studio \
    --overwrite

# 8. People correct the batch; here a simulated annotator draws the true footprints in Label
#    Studio and the project is exported as JSON (one task is skipped). In QGIS/JOSM the
#    corrections would be saved in tasks/*/ instead, and finetune reads them there.
"$PY" examples/simulated_annotator.py "$OUT/batch-01" sample_data/area_b/buildings.gpkg --skip 1 \
    --label-studio "$OUT/batch-01-label-studio-export.json"

# 9. Fine-tune the adapted model on the corrected batch (replaying area A so it does not forget
#    it), then predict and evaluate again; the next batch leaves out the tiles already labelled.
"$RS" finetune "$OUT/models/a-b.safetensors" "$OUT/batch-01" --out "$OUT/models/ft-01.safetensors" \
    --labels "$OUT/batch-01-label-studio-export.json" --replay "$OUT/tiles-a" --overwrite
"$RS" predict "$OUT/models/ft-01.safetensors" "$OUT/tiles-b" --out "$OUT/pred-b-01" --overwrite
"$RS" evaluate "$OUT/models/ft-01.safetensors" "$OUT/tiles-b-truth" --out "$OUT/eval-b-01" \
    --overwrite --json > "$OUT/eval-b-01.json"
"$RS" rank "$OUT/pred-b-01" --top 6 --out "$OUT/batch-02" --overwrite

# 10. Adapting and the round must each have made the model better on area B (CI runs this
#     script: it fails unless adapting raised the pixel IoU by 0.02 and the round by 0.05).
"$PY" examples/check_round.py "$OUT/eval-b-pretrained.json" "$OUT/eval-b.json" --margin 0.02 \
    --what "adapting to area B"
"$PY" examples/check_round.py "$OUT/eval-b.json" "$OUT/eval-b-01.json" --margin 0.05 \
    --what "the round of corrections"

echo "quickstart done: see $OUT (open the .gpkg files and map-b/*.tif in QGIS)" >&2
