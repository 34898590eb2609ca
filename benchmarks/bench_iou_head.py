"""Does predicted IoU transfer to a new area, and does the calibrator make it hold?

Run on demand (not a test). Uses sample_data/ always, and ../shared/data/banepa and
../shared/data/fair when present. About 15 minutes on 2 CPU cores:

    .venv/bin/python benchmarks/bench_iou_head.py --workdir /tmp/al

Directions (a model trained on the source, scored on labelled target tiles):

* synthetic A -> B: pretrained on area A's noisy labels, on area B's true footprints;
* Banepa -> fair: the Banepa pretrained model of bench_active_learning.py (share --workdir),
  on the fAIr towns (Kampala, Catanduanes, Nairobi);
* fair -> Banepa ("and back"): pretrained on Kampala, Catanduanes and Nairobi for the same
  minutes, on the Banepa oracle area.

For each, Spearman rho against the true per-tile IoU, on all tiles and on tiles holding
buildings, of: the IoU head (``pred_iou``), the training-free ``soft_iou``, the calibrator's
prior (no labels: blank tiles scored by their peak probability), and the calibrator fitted on
K labelled target tiles (random, repeated over seeds), scored on the other tiles.
Prints the table and saves results/bench_iou_head.{csv,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


def _sample_data_model(work: Path) -> tuple[Path, Path]:
    from rscrisis.config import PretrainConfig, TileConfig
    from rscrisis.geo.tiling import tile
    from rscrisis.ml.training import train

    sd = REPO / "sample_data"
    cfg = TileConfig(size=128, min_valid=0.2)
    a, b = work / "sd-tiles-a", work / "sd-tiles-b"
    if not (a / "index.gpkg").exists():
        tile(
            [sd / "area_a" / "area_a.tif"],
            a,
            labels=[sd / "area_a" / "buildings_osm.gpkg"],
            config=TileConfig(size=128),
            overwrite=True,
        )
    if not (b / "index.gpkg").exists():
        tile(
            [sd / "area_b" / "area_b.tif"],
            b,
            labels=[sd / "area_b" / "buildings.gpkg"],
            config=cfg,
            overwrite=True,
        )
    model = work / "sd-a.safetensors"
    if not model.exists():
        train([a], model, config=PretrainConfig(epochs=8), overwrite=True)
    return model, b


def _fair_model(work: Path, minutes: float) -> Path:
    from banepa_split import pretrain_robust
    from bench_active_learning import fair_scenes

    from rscrisis.config import TileConfig
    from rscrisis.geo.tiling import tile

    tiles = work / "fair-all"
    if not (tiles / "index.gpkg").exists():
        scenes, labels = fair_scenes(work, ("kampala", "catanduanes", "nairobi"))
        tile(
            scenes,
            tiles,
            labels=labels,
            config=TileConfig(size=128, resolution=0.25, min_valid=0.5),
            overwrite=True,
        )
    return pretrain_robust(tiles, work / "fair-pretrained.safetensors", minutes)


def score_direction(name: str, model: Path, target: Path, k: int, seeds: int) -> list[dict]:
    from rscrisis.config import PredictConfig
    from rscrisis.ml.calibration import FEATURES, IoUCalibrator, fit, rank_correlations
    from rscrisis.ml.model import read_meta
    from rscrisis.predict.evaluate import evaluate

    # one view, as the README's table was measured
    ev = evaluate(model, [target], config=PredictConfig(batch_size=16, tta=False))
    rows = [r for r in ev.per_tile if np.isfinite(r["true_iou"])]
    true = np.array([r["true_iou"] for r in rows])
    has = np.array([r["has_buildings"] for r in rows])
    stats = {k_: np.array([r[k_] for r in rows]) for k_ in FEATURES}
    threshold = read_meta(model).threshold
    blank = stats["building_fraction"] <= 0
    out = []

    def add(estimate: str, pred: np.ndarray, idx: np.ndarray, seed=None) -> None:
        rho = rank_correlations(pred[idx], true[idx], has[idx])
        out.append(
            {
                "direction": name,
                "estimate": estimate,
                "seed": seed,
                "tiles": len(idx),
                "with_buildings": int(has[idx].sum()),
                "blank": int(blank[idx].sum()),
                "rho_all": rho["all"],
                "rho_buildings": rho["with_buildings"],
            }
        )

    every = np.arange(len(rows))
    add("IoU head (pred_iou)", stats["pred_iou"], every)
    add("soft_iou", np.array([r["soft_iou"] for r in rows]), every)
    prior = IoUCalibrator(threshold=threshold).apply(stats)["calibrated_iou"]
    add("calibrator prior (0 labels)", prior, every)
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        labelled = rng.choice(len(rows), size=min(k, len(rows) - 3), replace=False)
        rest = np.setdiff1d(every, labelled)
        samples = [
            {
                **{f: rows[i][f] for f in FEATURES},
                "true_iou": rows[i]["true_iou"],
                "has_buildings": rows[i]["has_buildings"],
            }
            for i in labelled
        ]
        cal = fit(samples, threshold).apply(stats)["calibrated_iou"]
        add(f"calibrated on {k} tiles", cal, rest, seed)
        add("IoU head, same tiles", stats["pred_iou"], rest, seed)
    return out


def main() -> None:
    from banepa_split import BANEPA, make_split, pretrained_model
    from bench_active_learning import FAIR, fair_tileset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--k", type=int, default=8, help="labelled tiles of the fitted calibrator")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pretrain-minutes", type=float, default=7.0)
    parser.add_argument(
        "--no-back", action="store_true", help="skip fair -> Banepa (it pretrains a model)"
    )
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    import pandas as pd

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    model, target = _sample_data_model(work)
    rows += score_direction("synthetic A -> B", model, target, args.k, args.seeds)
    if (BANEPA / "train" / "scene.tif").exists():
        split = make_split(work, 0.25, 128)
        banepa_model = pretrained_model(work, split, args.pretrain_minutes)
        if FAIR.exists():
            fair = fair_tileset(work, 0.25, 128)
            rows += score_direction("Banepa -> fair", banepa_model, fair, args.k, args.seeds)
            if not args.no_back:
                back = _fair_model(work, args.pretrain_minutes)
                rows += score_direction("fair -> Banepa", back, split.oracle, args.k, args.seeds)
    frame = pd.DataFrame(rows)
    table = (
        frame.groupby(["direction", "estimate"], sort=False)
        .agg(
            tiles=("tiles", "first"),
            blank=("blank", "first"),
            rho_all=("rho_all", "mean"),
            rho_buildings=("rho_buildings", "mean"),
        )
        .round(3)
    )
    print(table.to_string())
    args.results.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.results / "bench_iou_head.csv", index=False)
    (args.results / "bench_iou_head.json").write_text(
        json.dumps({"rows": rows, "k": args.k, "seeds": args.seeds}, indent=2, default=str) + "\n"
    )


if __name__ == "__main__":
    main()
