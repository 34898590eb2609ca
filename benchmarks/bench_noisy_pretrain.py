"""Does noisy-label pretraining beat training from scratch on a few clean tiles? (claim B)

Run on demand (not a test); needs ../shared/data/banepa. About 40 minutes on 2 CPU cores:

    .venv/bin/python benchmarks/bench_noisy_pretrain.py

Same spatial split as bench_active_learning.py (banepa_split.py): two models are pretrained on
the noisier OSM labels of the pretraining area, one with ``rscrisis pretrain``'s robust
defaults (symmetric CE, label smoothing, confidence weighting, edge ignore band) and one with
the plain BCE + Dice loss. The oracle area is split into pool and test exactly as
``rscrisis simulate`` does. Then, for N in 5, 10, 20 clean pool tiles (random, per seed) and 3
seeds, each variant is trained for the same number of optimisation steps and evaluated on the
test area:

* ``scratch``: random initialisation;
* ``robust/all``, ``robust/encoder``, ``robust/encoder+decoder``: fine-tuned from the robust
  pretrained model, transferring everything, the encoder only, or the encoder and the deepest
  decoder blocks (``rscrisis finetune --transfer``), first encoder stage frozen;
* ``plain/all``: fine-tuned from the plainly pretrained model.

Prints test IoU per variant and N (mean over seeds, and per seed) and whether pretrained beats
scratch in every seed at 5 and 10 tiles; saves results/bench_noisy_pretrain.{csv,json}.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

VARIANTS = ("scratch", "robust/all", "robust/encoder", "robust/encoder+decoder", "plain/all")


def pretrain_models(split, work: Path, minutes: float) -> dict[str, Path]:
    from rscrisis.config import PretrainConfig, TrainConfig
    from rscrisis.ml.training import train

    models = {}
    common = {
        "epochs": 200,
        "patience": 1000,
        "lr": 2e-3,
        "max_minutes": minutes,
        "val_fraction": 0.15,
        "block_tiles": 2,
    }
    for name, cfg in (("robust", PretrainConfig(**common)), ("plain", TrainConfig(**common))):
        path = work / f"pretrained-{name}.safetensors"
        if not path.exists():
            t0 = time.perf_counter()
            train([split.pretrain], path, config=cfg, overwrite=True)
            print(
                f"pretrained {name} in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr
            )
        models[name] = path
    return models


def run_variant(
    variant, models, subset: Path, test: Path, n: int, seed: int, steps: int, batch: int, work: Path
) -> dict:
    from rscrisis.config import FinetuneConfig, PredictConfig, TrainConfig
    from rscrisis.ml.model import read_meta
    from rscrisis.ml.training import train, training_lr
    from rscrisis.predict.evaluate import evaluate

    epochs = max(1, math.ceil(steps / max(1, math.ceil(n / batch))))
    out = work / f"{variant.replace('/', '_')}-n{n}-s{seed}.safetensors"
    t0 = time.perf_counter()
    if variant == "scratch":
        cfg = TrainConfig(
            epochs=epochs, batch_size=batch, lr=1e-3, val_fraction=0.0, patience=10_000, seed=seed
        )
        train([subset], out, config=cfg, overwrite=True)
    else:
        source, transfer = variant.split("/")
        init = models[source]
        # fine-tuning from a pretrained model: its learning rate scaled as finetune scales it
        lr = training_lr(read_meta(init)) * FinetuneConfig().lr_scale
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch,
            lr=lr,
            val_fraction=0.0,
            patience=10_000,
            seed=seed,
            transfer=transfer,
        )
        train([subset], out, config=cfg, init=init, overwrite=True)
    seconds = time.perf_counter() - t0
    ev = evaluate(out, [test], config=PredictConfig(batch_size=16))
    out.unlink()
    return {
        "variant": variant,
        "tiles": n,
        "seed": seed,
        "epochs": epochs,
        "test_iou": round(ev.pixel["iou"], 4),
        "object_f1": round(ev.objects["f1"], 4),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    from banepa_split import BANEPA, make_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--pretrain-minutes", type=float, default=7.0)
    parser.add_argument("--tiles", default="5,10,20")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=60, help="optimisation steps per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if not (BANEPA / "train" / "scene.tif").exists():
        raise SystemExit(f"{BANEPA} is not available")

    from rscrisis.config import SimulateConfig
    from rscrisis.io.tileset import read_index, write_subset
    from rscrisis.loop.simulate import split_pool_test

    t0 = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_np_"))
    work.mkdir(parents=True, exist_ok=True)
    split = make_split(work, args.resolution, args.size)
    models = pretrain_models(split, work, args.pretrain_minutes)
    sim_cfg = SimulateConfig(test_fraction=0.3, split="band", seed_batch=1, rounds=1, batch=1)
    pool, test = split_pool_test(split.oracle, work / "oracle-split", sim_cfg)
    pool_ids = sorted(read_index(pool).tile_id)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rng = np.random.default_rng(seed)
        order = rng.permutation(pool_ids).tolist()
        for n in (int(t) for t in args.tiles.split(",")):
            subset = write_subset(pool, work / f"clean-n{n}-s{seed}", order[:n], overwrite=True)
            for variant in args.variants.split(","):
                row = run_variant(
                    variant, models, subset, test, n, seed, args.steps, args.batch_size, work
                )
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    # table: mean IoU per variant x N, and the claim
    tiles = sorted({r["tiles"] for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    print("variant | " + " | ".join(f"IoU @{n} (per seed)" for n in tiles))
    table = []
    for v in variants:
        cells, rec = [], {"variant": v}
        for n in tiles:
            vals = [r["test_iou"] for r in rows if r["variant"] == v and r["tiles"] == n]
            cells.append(f"{np.mean(vals):.3f} ({', '.join(f'{x:.3f}' for x in vals)})")
            rec[f"iou_{n}"] = round(float(np.mean(vals)), 4)
        print(f"{v} | " + " | ".join(cells))
        table.append(rec)
    claims = {}
    for v in variants:
        if v == "scratch":
            continue
        wins = {}
        for n in tiles:
            pairs = [
                (r["test_iou"], s["test_iou"])
                for r in rows
                if r["variant"] == v and r["tiles"] == n
                for s in rows
                if s["variant"] == "scratch" and s["tiles"] == n and s["seed"] == r["seed"]
            ]
            wins[n] = f"{sum(a > b for a, b in pairs)}/{len(pairs)}"
        claims[v] = wins
        print(f"{v} beats scratch (seeds): " + ", ".join(f"@{n}: {w}" for n, w in wins.items()))
    minutes = (time.perf_counter() - t0) / 60
    print(f"total {minutes:.1f} min", file=sys.stderr)
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / "bench_noisy_pretrain.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.results / "bench_noisy_pretrain.json").write_text(
        json.dumps(
            {
                "runs": rows,
                "table": table,
                "beats_scratch": claims,
                "minutes_total": round(minutes, 1),
                "pool_tiles": len(pool_ids),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
