"""Train on the Banepa data on CPU and measure quality, calibration and speed.

Run on demand (not a test); needs ../shared/data/banepa:

    .venv/bin/python benchmarks/bench_train.py --minutes 25
    .venv/bin/python benchmarks/bench_train.py --compare-encoders --minutes 5

Split (spatial, no leakage): the scene's southern quarter is the test area, tiled without
overlap; training tiles (tiled with overlap for more samples) lie north of it with a gap of one
tile, and train's own validation split is spatially blocked inside them. Labels are the OSM
footprints in both areas (so test scores are against OSM, noise included).

Prints a table (test pixel IoU and object F1, plain and with 8-view TTA, predicted-IoU
Spearman rho and MAE, training images/s, inference tiles/s) and saves it as CSV and JSON
under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BANEPA = HERE.parent.parent / "shared" / "data" / "banepa"


def split_tiles(work: Path, resolution: float, size: int, overlap: int, test_fraction: float):
    from rscrisis.config import TileConfig
    from rscrisis.geo.tiling import tile
    from rscrisis.io.tileset import read_index, write_subset

    scene = BANEPA / "train" / "scene.tif"
    labels = BANEPA / "train" / "buildings_osm.geojson"
    tile(
        [scene],
        work / "all-overlap",
        labels=[labels],
        overwrite=True,
        config=TileConfig(size=size, overlap=overlap, resolution=resolution),
    )
    tile(
        [scene],
        work / "all",
        labels=[labels],
        overwrite=True,
        config=TileConfig(size=size, resolution=resolution),
    )
    full = read_index(work / "all")
    ymin, ymax = full.total_bounds[1], full.total_bounds[3]
    cut = ymin + test_fraction * (ymax - ymin)
    b = full.geometry.bounds
    tile_h = float((b.maxy - b.miny).median())
    test_ids = full.tile_id[b.maxy <= cut + 1e-12]
    over = read_index(work / "all-overlap")
    bo = over.geometry.bounds
    train_ids = over.tile_id[bo.miny >= cut + tile_h]
    write_subset(work / "all", work / "test", test_ids, overwrite=True)
    write_subset(work / "all-overlap", work / "train", train_ids, overwrite=True)
    return len(train_ids), len(test_ids)


def run(work: Path, encoder: str, minutes: float, args) -> dict:
    from rscrisis.config import PredictConfig, TrainConfig
    from rscrisis.ml.training import train
    from rscrisis.predict.evaluate import evaluate
    from rscrisis.predict.tiles import predict_tiles

    model = work / f"model-{encoder}.safetensors"
    t0 = time.perf_counter()
    result = train(
        [work / "train"],
        model,
        overwrite=True,
        config=TrainConfig(
            encoder=encoder,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            patience=args.patience,
            max_minutes=minutes,
            seed=args.seed,
            val_fraction=0.15,
            block_tiles=2,
        ),
    )
    train_s = time.perf_counter() - t0
    ev = evaluate(model, [work / "test"], config=PredictConfig(batch_size=8, tta=False))
    ev_tta = evaluate(model, [work / "test"], config=PredictConfig(batch_size=8, tta=True))
    pred = predict_tiles(model, [work / "test"], work / f"pred-{encoder}", overwrite=True)
    return {
        "encoder": encoder,
        "train_minutes": round(train_s / 60, 2),
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "test_pixel_iou": round(ev.pixel["iou"], 4),
        "test_f1": round(ev.pixel["f1"], 4),
        "test_object_f1": round(ev.objects["f1"], 4),
        "test_pixel_iou_tta": round(ev_tta.pixel["iou"], 4),
        "test_object_f1_tta": round(ev_tta.objects["f1"], 4),
        "pred_iou_spearman_tta": round(ev_tta.pred_iou_calibration["spearman"], 4),
        "pred_iou_spearman": round(ev.pred_iou_calibration["spearman"], 4),
        "pred_iou_mae": round(ev.pred_iou_calibration["mae"], 4),
        "soft_iou_spearman": round(ev.soft_iou_calibration["spearman"], 4),
        "train_images_per_s": result.images_per_s,
        "inference_tiles_per_s": pred.tiles_per_s,
        "iou_per_train_minute": round(ev.pixel["iou"] / max(train_s / 60, 1e-9), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=25.0, help="training budget per model")
    parser.add_argument("--resolution", type=float, default=0.25, help="tiling resolution (m)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument(
        "--compare-encoders",
        action="store_true",
        help="train every registered encoder with the same budget",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if not (BANEPA / "train" / "scene.tif").exists():
        raise SystemExit(f"{BANEPA} is not available")
    from rscrisis.ml.model import ENCODERS

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    n_train, n_test = split_tiles(
        work, args.resolution, args.size, args.overlap, args.test_fraction
    )
    print(
        f"tiles: {n_train} train (overlap {args.overlap}), {n_test} test, "
        f"{args.resolution} m, {args.size} px",
        file=sys.stderr,
    )
    encoders = list(ENCODERS) if args.compare_encoders else [args.encoder]
    rows = []
    for enc in encoders:
        row = run(work, enc, args.minutes, args)
        row.update(
            {
                "train_tiles": n_train,
                "test_tiles": n_test,
                "resolution_m": args.resolution,
                "cpu_threads": os.cpu_count(),
            }
        )
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r[k]) for k in keys))
    args.results.mkdir(parents=True, exist_ok=True)
    name = "bench_train_encoders" if args.compare_encoders else "bench_train"
    with open(args.results / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    (args.results / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
