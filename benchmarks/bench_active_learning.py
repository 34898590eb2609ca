"""Does prioritised annotation beat random sampling at equal budget? (claim A) On Banepa.

Run on demand (not a test); needs ../shared/data/banepa. About 45 minutes on 2 CPU cores:

    .venv/bin/python benchmarks/bench_active_learning.py

1. Split (banepa_split.py): the northern 45 % of the mosaic is the pretraining area, labelled
   only with OSM footprints made noisier (rscrisis noise defaults: 15 % dropped, shifted,
   eroded/dilated, simplified, false blobs); south of a one-tile gap, the oracle area.
2. ``rscrisis pretrain`` on the pretraining area (noise-robust defaults, --max-minutes).
3. ``rscrisis simulate`` on the oracle area: a pool and, south of a one-tile gap, a test band
   (``--split band``); seed batch of 4 random tiles, 4 rounds of 4 tiles, formulas random,
   entropy, iou, entropy-iou, entropy-iou+coreset, 3 seeds, 10 fine-tuning epochs per round
   from the pretrained model.

Fits the hour by choosing 128 px tiles at 0.25 m (32 m square), the resnet18 default, and short
fine-tuning. Prints the summary (area under the IoU-vs-labelled-tiles curve per formula, its
spread over seeds, wins against random, gain in IoU points at each budget) and saves
results/bench_active_learning.{csv,json} and results/bench_active_learning.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    from banepa_split import BANEPA, make_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--pretrain-minutes", type=float, default=7.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed-batch", type=int, default=4)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--formulas", default="random,entropy,iou,entropy-iou,entropy-iou+coreset")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="continue a killed run in --workdir")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if not (BANEPA / "train" / "scene.tif").exists():
        raise SystemExit(f"{BANEPA} is not available")

    from rscrisis.config import FinetuneConfig, PretrainConfig, SimulateConfig
    from rscrisis.simulation import simulate
    from rscrisis.training import train

    t0 = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_al_"))
    work.mkdir(parents=True, exist_ok=True)
    split = make_split(work, args.resolution, args.size)
    print(
        f"split: {split.pretrain_tiles} pretraining tiles (noisy OSM), "
        f"{split.oracle_tiles} oracle tiles",
        file=sys.stderr,
    )
    # the same model as bench_noisy_pretrain.py's "robust" one: share --workdir to reuse it
    model = work / "pretrained-robust.safetensors"
    if not model.exists():
        train(
            [split.pretrain],
            model,
            config=PretrainConfig(
                epochs=200,
                patience=1000,
                lr=2e-3,
                max_minutes=args.pretrain_minutes,
                val_fraction=0.15,
                block_tiles=2,
            ),
            overwrite=True,
        )
    t_pre = time.perf_counter() - t0
    config = SimulateConfig(
        formulas=tuple(args.formulas.split(",")),
        rounds=args.rounds,
        batch=args.batch,
        seed_batch=args.seed_batch,
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        test_fraction=0.3,
        split="band",
        finetune=FinetuneConfig(
            epochs=args.epochs, batch_size=8, val_fraction=0.0, patience=10_000
        ),
    )
    sim = work / "simulation"
    result = simulate(model, split.oracle, sim, config=config, resume=args.resume)
    minutes = (time.perf_counter() - t0) / 60
    keys = sorted({k for r in result.summary for k in r}, key=lambda k: (k != "formula", k))
    print(" | ".join(keys))
    for r in result.summary:
        print(" | ".join(str(r.get(k, "")) for k in keys))
    print(
        f"pool {result.pool_tiles} tiles, test {result.test_tiles} tiles; pretraining "
        f"{t_pre / 60:.1f} min, total {minutes:.1f} min",
        file=sys.stderr,
    )
    args.results.mkdir(parents=True, exist_ok=True)
    shutil.copy(sim / "summary.csv", args.results / "bench_active_learning.csv")
    shutil.copy(sim / "curves.csv", args.results / "bench_active_learning_curves.csv")
    shutil.copy(sim / "curves.png", args.results / "bench_active_learning.png")
    (args.results / "bench_active_learning.json").write_text(
        json.dumps(
            {
                "summary": result.summary,
                "pool_tiles": result.pool_tiles,
                "test_tiles": result.test_tiles,
                "pretrain_tiles": split.pretrain_tiles,
                "minutes_total": round(minutes, 1),
                "minutes_pretraining": round(t_pre / 60, 1),
                "config": config.model_dump(mode="json"),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
