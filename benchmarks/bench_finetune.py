"""Which few-tile fine-tuning recipe? The measurement behind finetune's defaults. On Banepa.

Run on demand (not a test); needs ../shared/data/banepa. About 25 minutes on 2 CPU cores:

    .venv/bin/python benchmarks/bench_finetune.py --workdir /tmp/bench

The split and the pretrained model are those of bench_active_learning.py (share --workdir to
reuse them): a model pretrained on the noisier OSM labels of the northern Banepa area, and
the oracle area south of it, cut into a pool and a test band. For N random pool tiles (the same
tiles for every recipe, per seed) each recipe fine-tunes the pretrained model with
``rscrisis.loop.finetune.finetune_tilesets`` (what ``finetune`` and ``simulate`` run) and is
evaluated on the test band. Two lopsided batches check "do no harm": N tiles that hold no
building at all, with and without replay.

Prints test IoU per recipe and budget (mean over seeds, each seed) and saves
results/bench_finetune.{csv,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEFAULT = {}
RECIPES = {
    "default": DEFAULT,
    "60 steps": {"steps": 60},
    "300 steps": {"steps": 300},
    "no EMA": {"ema": 0.0},
    "no replay": {"replay_ratio": 0.0},
    "lr x1.0": {"lr_scale": 1.0},
    "train BN": {"freeze_norm": False},
}


def main() -> None:
    from banepa_split import BANEPA, make_split, pretrained_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--budgets", default="4,16")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--empty", type=int, default=4, help="tiles of the all-empty batch")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if not (BANEPA / "train" / "scene.tif").exists():
        raise SystemExit(f"{BANEPA} is not available")

    import numpy as np

    from rscrisis.config import FinetuneConfig, PredictConfig, SimulateConfig
    from rscrisis.io.tileset import read_index, write_subset
    from rscrisis.loop.finetune import finetune_tilesets
    from rscrisis.loop.simulate import split_pool_test
    from rscrisis.predict.evaluate import evaluate

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    split = make_split(work, 0.25, 128)
    model = pretrained_model(work, split)
    sim = work / "finetune-bench"
    pool, test = split_pool_test(
        split.oracle, sim, SimulateConfig(split="band", test_fraction=0.3, seed_batch=1, rounds=1)
    )
    index = read_index(pool)
    ids = np.array(sorted(index.tile_id))
    empty_ids = sorted(index.tile_id[index.building_fraction <= 0])

    def score(path: Path) -> float:
        ev = evaluate(path, [test], config=PredictConfig(threads=args.threads, batch_size=16))
        return round(ev.pixel["iou"], 4)

    rows = [{"recipe": "pretrained", "tiles": 0, "seed": 0, "test_iou": score(model)}]
    print(f"pretrained: test IoU {rows[0]['test_iou']:.3f}", file=sys.stderr)
    cases = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rng = np.random.default_rng(seed)
        for n in (int(b) for b in args.budgets.split(",")):
            chosen = sorted(rng.choice(ids, n, replace=False).tolist())
            for name in args.recipes.split(","):
                cases.append((name, n, seed, chosen, RECIPES[name]))
        if len(empty_ids) >= args.empty:
            chosen = sorted(rng.choice(empty_ids, args.empty, replace=False).tolist())
            cases.append(("all-empty batch", args.empty, seed, chosen, DEFAULT))
            cases.append(("all-empty, no replay", args.empty, seed, chosen, {"replay_ratio": 0}))
    t0 = time.perf_counter()
    for name, n, seed, chosen, update in cases:
        case = sim / f"{name.replace(' ', '_')}-{n}-{seed}"
        labelled = write_subset(pool, case / "labelled", chosen, overwrite=True)
        config = FinetuneConfig(val_fraction=0.0, seed=seed, threads=args.threads, **update)
        t = time.perf_counter()
        finetune_tilesets(
            model, [labelled], case / "model.safetensors", config=config, overwrite=True
        )
        row = {
            "recipe": name,
            "tiles": n,
            "seed": seed,
            "test_iou": score(case / "model.safetensors"),
            "seconds": round(time.perf_counter() - t, 1),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    import pandas as pd

    frame = pd.DataFrame(rows)
    table = frame.groupby(["recipe", "tiles"]).test_iou.agg(["mean", "std", "count"]).round(4)
    print(table.to_string())
    args.results.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.results / "bench_finetune.csv", index=False)
    (args.results / "bench_finetune.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "pool_tiles": len(ids),
                "empty_pool_tiles": len(empty_ids),
                "minutes": round((time.perf_counter() - t0) / 60, 1),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
