"""What does each adaptation to a new area's unlabelled imagery buy before any label?

Run on demand (not a test). Settings (a model trained on the source, adapted to the target's
pool tiles without their labels, scored on the target's held-out test tiles):

* ``synthetic``: sample_data area A (pretrained on its noisy labels) -> area B;
* ``fair``: the Banepa pretrained model of bench_active_learning.py -> Kampala, Catanduanes
  and Nairobi (needs ../shared/data; share --workdir with bench_active_learning.py).

The pool/test split is simulate's (the same as bench_active_learning.py), so the zero-label
figures here are the 0-label points of its curves. Per variant and seed: test pixel IoU,
object F1 and the seconds the adaptation took. ``simsiam (replay only)`` is the control for
SimSiam: the same steps with the self-supervised loss weighted 0, i.e. only the supervised
replay of the pretraining tiles. Prints the table and saves results/bench_adapt.{csv,json}:

    .venv/bin/python benchmarks/bench_adapt.py --workdir /tmp/al --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

VARIANTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "adabn": ("adabn",),
    "selftrain": ("selftrain",),
    "simsiam": ("simsiam",),
    "simsiam (replay only)": ("simsiam",),
    "adabn+selftrain": ("adabn", "selftrain"),
    "simsiam+adabn": ("simsiam", "adabn"),
    "simsiam+adabn+selftrain": ("simsiam", "adabn", "selftrain"),
}


def setting_data(name: str, work: Path) -> tuple[Path, Path, Path]:
    """(model, pool, test) of a setting."""
    from rscrisis.config import SimulateConfig
    from rscrisis.loop.simulate import split_pool_test

    if name == "synthetic":
        from bench_iou_head import _sample_data_model

        model, target = _sample_data_model(work)
    else:
        from banepa_split import make_split, pretrained_model
        from bench_active_learning import fair_tileset

        model = pretrained_model(work, make_split(work, 0.25, 128), 7.0)
        target = fair_tileset(work, 0.25, 128)
    config = SimulateConfig(
        test_fraction=0.3, split="blocks", block_tiles=2, seed_batch=1, rounds=1, batch=1
    )
    pool, test = split_pool_test(target, work / f"adapt-{name}", config)
    return model, pool, test


def main() -> None:
    import rscrisis.ml.adaptation as adaptation
    from rscrisis.config import AdaptConfig, PredictConfig
    from rscrisis.predict.evaluate import evaluate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="synthetic,fair")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="default: adapt's")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    # every run is appended to a log in the workdir: a later call with other variants or seeds
    # adds to it (and skips what is there), and the table covers them all
    log_path = args.workdir / "bench_adapt_runs.jsonl"
    rows = (
        [json.loads(line) for line in log_path.read_text().splitlines()]
        if log_path.exists()
        else []
    )
    done = {(r["setting"], r["variant"], r["seed"]) for r in rows}
    for setting in args.settings.split(","):
        model, pool, test = setting_data(setting, args.workdir)
        for variant in args.variants.split(","):
            methods = VARIANTS[variant]
            for seed in seeds if methods else [0]:
                if (setting, variant, seed) in done:
                    continue
                t0 = time.perf_counter()
                path = model
                if methods:
                    adaptation.SSL_WEIGHT = 0.0 if "replay only" in variant else 1.0
                    extra = {"steps": args.steps} if args.steps else {}
                    name = f"{variant.replace(' ', '_')}-{seed}.safetensors"
                    path = args.workdir / f"adapt-{setting}" / name
                    config = AdaptConfig(methods=methods, seed=seed, threads=args.threads, **extra)
                    adaptation.adapt(model, [pool], path, config=config, overwrite=True)
                seconds = time.perf_counter() - t0
                predict = PredictConfig(threads=args.threads, batch_size=16)
                ev = evaluate(path, [test], config=predict)
                row = {
                    "setting": setting,
                    "variant": variant,
                    "seed": seed,
                    "test_iou": round(ev.pixel["iou"], 4),
                    "object_f1": round(ev.objects["f1"], 4),
                    "seconds": round(seconds, 1),
                    "threads": args.threads,
                }
                rows.append(row)
                with log_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    adaptation.SSL_WEIGHT = 1.0

    import pandas as pd

    frame = pd.DataFrame(rows)
    table = []
    for (setting, variant), g in frame.groupby(["setting", "variant"], sort=False):
        base = frame[(frame.setting == setting) & (frame.variant == "none")].test_iou.mean()
        table.append(
            {
                "setting": setting,
                "variant": variant,
                "seeds": len(g),
                "test_iou": round(g.test_iou.mean(), 4),
                "sd": round(g.test_iou.std(ddof=1), 4) if len(g) > 1 else 0.0,
                "gain_points": round(100 * (g.test_iou.mean() - base), 1),
                "min_gain_points": round(100 * (g.test_iou.min() - base), 1),
                "object_f1": round(g.object_f1.mean(), 4),
                "seconds": round(g.seconds.mean(), 1),
            }
        )
    out = pd.DataFrame(table)
    print(out.to_string(index=False))
    args.results.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.results / "bench_adapt.csv", index=False)
    (args.results / "bench_adapt.json").write_text(
        json.dumps({"runs": rows, "table": table}, indent=1)
    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
