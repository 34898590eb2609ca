"""Would another fine-tuning recipe have kept an annotation run's curve rising? Replays the
budgets of a finished ``bench_active_learning.py`` (``rscrisis simulate``) run with other
recipes: the same starting model, the same revealed tiles, the same seeds, the same test tiles.

Run on demand (not a test) on a simulation folder. On one thread a fine-tuning takes about
1.5 minutes, and each scored model (every recipe, every interpolation) a test-set evaluation:

    .venv/bin/python benchmarks/bench_round_recipes.py /tmp/al/simulation-fair --budgets 4,8,20 \
        --recipes default,lr0.1 --interpolate 0.25,0.5,0.75 --threads 1

For each seed and budget it rebuilds the labelled set of the run's random chain: the seed batch,
then each round's picks. Runs that recorded them (``batches`` in state.json) give them
directly; older runs only kept the last round, and random's picks are reproduced (they do not
read the model's predictions, only the pool's tiles and the seed; checked against the last
round the run kept). Each recipe fine-tunes the starting model with the simulation's own
settings and the recipe's changes, as ``simulate`` does, and is scored on the test tiles.
``--interpolate`` adds, for each fitted model, the weight-space ensembles with the starting
model (WiSE-FT, ``finetune --interpolate``): exactly what a run with that setting keeps.
Recipes ``folds2``/``folds3`` choose the interpolation by cross-fitting the labelled tiles
(``finetune --interpolate-folds``); their rows record the choice. ``--soup`` adds the
average of the recipes' weights. ``--choose-on-next`` scores the start and each interpolation
on the batch the run revealed next, which none of them saw (what the corrections of the next
round tell for free), and reports the test IoU of the one it picks.

Prints test IoU per recipe and budget (mean over seeds, the change from the previous budget,
seeds below the start) and saves results/bench_round_recipes_<simulation>.{csv,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: recipe name -> FinetuneConfig changes; "seed+10" refits with another fine-tuning seed (how
#: much of a budget's result is the optimisation's luck rather than the tiles)
RECIPES: dict[str, dict] = {
    "default": {},
    "seed+10": {"seed_offset": 10},
    "lr0.1": {"lr_scale": 0.1},
    "steps50": {"steps": 50},
    "steps300": {"steps": 300},
    "no EMA": {"ema": 0.0},
    # finetune --interpolate-folds: the interpolation chosen by cross-fitting the labelled tiles
    "folds2": {"interpolate_folds": 2},
    "folds3": {"interpolate_folds": 3},
    # finetune --replay-targets model: the pretraining tiles replayed with the start's own map
    "replay-model": {"replay_targets": "model"},
}


def _pretraining_loss() -> dict:
    """``pretrain``'s noise-robust loss options (rscrisis.config.PretrainConfig)."""
    from rscrisis.config import PretrainConfig

    keys = ("loss", "label_smoothing", "confidence_weighting", "edge_ignore")
    return {k: PretrainConfig.model_fields[k].default for k in keys}


RECIPES["robust-loss"] = _pretraining_loss()  # pretraining's loss for the fine-tuning too


def random_batches(sim: Path, state: dict, config, seed: int) -> list[list[str]]:
    """The tiles the run's random chain of ``seed`` revealed, batch by batch."""
    from rscrisis.loop.simulate import choose_batch

    chain = state["chains"].get(f"{seed}/random", {})
    if chain.get("batches"):
        return chain["batches"]
    seed_chain = state["chains"][f"{seed}/seed-batch"]
    batches = [seed_chain["ids"]]
    pred = Path(seed_chain["pred"])  # random reads only the pool's tiles, not the scores
    for r in range(1, config.rounds + 1):
        taken = set().union(*batches)
        batches.append(
            sorted(choose_batch(pred, taken, "random", config.batch, config, seed * 100 + r))
        )
    if chain and chain["round"] == config.rounds and sorted(set().union(*batches)) != chain["ids"]:
        raise SystemExit(f"{sim}: random's picks of seed {seed} cannot be reproduced")
    return batches


def interpolated(start_state: dict, fitted: Path, alpha: float, out: Path) -> Path:
    """``fitted`` taken ``alpha`` of the way from the starting weights ``start_state`` (what
    finetune --interpolate keeps)."""
    from rscrisis.ml.model import load_model, save_model
    from rscrisis.ml.training import toward_start

    model, meta = load_model(fitted)
    model.load_state_dict(toward_start(start_state, model.state_dict(), alpha))
    save_model(model, meta, out)
    return out


def soup(fits: list[Path], out: Path) -> Path:
    """The uniform average of fine-tunings of one starting model (Wortsman et al., ICML 2022)."""
    import torch

    from rscrisis.ml.model import load_model, save_model

    models = [load_model(f) for f in fits]
    model, meta = models[0]
    states = [m.state_dict() for m, _ in models]
    model.load_state_dict(
        {
            k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
            for k, v in states[0].items()
        }
    )
    save_model(model, meta, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("simulation", type=Path, help="a simulate output folder (state.json)")
    parser.add_argument("--budgets", default="4,8,20", help="labelled tiles (seed batch + rounds)")
    parser.add_argument("--seeds", default=None, help="default: the run's")
    parser.add_argument("--recipes", default="default,seed+10")
    parser.add_argument("--interpolate", default="0.25,0.5,0.75", help="'' for none")
    parser.add_argument(
        "--soup",
        action="store_true",
        help="also score the average of the recipes' weights (a model soup; e.g. default and "
        "seed+10: two fits of the same tiles for twice the cost)",
    )
    parser.add_argument(
        "--choose-on-next",
        action="store_true",
        help="also score the start and every interpolation on the batch the run revealed "
        "next (tiles none of them saw), and report the choice that batch would make",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="default: SIMULATION/recipes")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()

    import pandas as pd

    from rscrisis.config import PredictConfig, SimulateConfig
    from rscrisis.io.tileset import write_subset
    from rscrisis.loop.finetune import finetune_tilesets
    from rscrisis.loop.simulate import oracle_samples
    from rscrisis.predict.evaluate import evaluate

    sim = args.simulation
    state = json.loads((sim / "state.json").read_text())
    config = SimulateConfig.model_validate(state["fingerprint"]["config"])
    start = Path(state["fingerprint"]["model"])
    start_pred = Path(state["chains"]["-1/start"]["pred"])
    pool, test = sim / "data" / "pool", sim / "data" / "test"
    work = args.workdir or sim / "recipes"
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(config.seeds)
    alphas = [float(a) for a in args.interpolate.split(",") if a]
    budgets = [int(b) for b in args.budgets.split(",")]
    for b in budgets:
        if (
            b - config.seed_batch
        ) % config.batch or b > config.seed_batch + config.rounds * config.batch:
            raise SystemExit(f"budget {b} is not one of the run's (seed batch, then rounds)")

    def score(model: Path, tiles: Path = test) -> float:
        ev = evaluate(model, [tiles], config=PredictConfig(threads=args.threads, batch_size=16))
        return round(ev.pixel["iou"], 4)

    from rscrisis.ml.model import load_model

    start_state = load_model(start)[0].state_dict()  # read once; every interpolation uses it
    start_iou = score(start)
    print(f"start: test IoU {start_iou:.4f}", file=sys.stderr)
    rows, t0 = [], time.perf_counter()
    for seed in seeds:
        batches = random_batches(sim, state, config, seed)
        for n in budgets:
            ids = sorted(set().union(*batches[: 1 + (n - config.seed_batch) // config.batch]))
            case = work / f"seed{seed}-n{n}"
            labelled = write_subset(pool, case / "labelled", ids, overwrite=True)
            k = 1 + (n - config.seed_batch) // config.batch
            upcoming = None  # the batch the run revealed next, unseen by every model here
            if args.choose_on_next and k < len(batches):
                upcoming = write_subset(pool, case / "next", batches[k], overwrite=True)
                start_on_next = score(start, upcoming)
            for name in args.recipes.split(","):
                update = dict(RECIPES[name])
                ft = config.finetune.model_copy(
                    update={"seed": seed + update.pop("seed_offset", 0), **update}
                )
                model = case / f"{name.replace(' ', '_')}.safetensors"
                t = time.perf_counter()
                if not model.exists():
                    samples = oracle_samples(start_pred, ids)
                    finetune_tilesets(
                        start,
                        [labelled],
                        model,
                        config=ft,
                        samples=samples,
                        replay_targets_cache=work / "replay-targets",
                    )
                seconds = round(time.perf_counter() - t, 1)
                check = json.loads(model.with_suffix(".finetune.json").read_text())["result"]
                kept = check["check"].get("interpolate", 1.0)  # what cross-fitting chose
                on_next = {0.0: start_on_next} if upcoming is not None else {}
                on_test = {0.0: start_iou}
                for alpha in [1.0, *alphas]:
                    scored = (
                        model
                        if alpha == 1
                        else interpolated(
                            start_state,
                            model,
                            alpha,
                            case / f"{model.stem}-wise{alpha}.safetensors",
                        )
                    )
                    row = {
                        "recipe": name,
                        "interpolate": alpha,
                        "seed": seed,
                        "labelled": n,
                        "test_iou": score(scored),
                        "start_iou": start_iou,
                        "fit_seconds": seconds,
                    }
                    if "cross_fit" in check["check"]:
                        row["chosen"] = kept
                    if upcoming is not None:
                        row["next_batch_iou"] = on_next[alpha] = score(scored, upcoming)
                    on_test[alpha] = row["test_iou"]
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                if on_next:  # the interpolation (0: the start) the next batch would choose
                    best = max(on_next, key=lambda a: (on_next[a], a))
                    row = {
                        "recipe": f"{name}, chosen on the next batch",
                        "interpolate": None,  # one row per seed, whichever it chose
                        "chosen": best,
                        "seed": seed,
                        "labelled": n,
                        "test_iou": on_test[best],
                        "start_iou": start_iou,
                        "next_batch_iou": on_next[best],
                    }
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
            if args.soup:
                fits = [
                    case / f"{r.replace(' ', '_')}.safetensors" for r in args.recipes.split(",")
                ]
                row = {
                    "recipe": "soup of " + "+".join(args.recipes.split(",")),
                    "interpolate": 1.0,
                    "seed": seed,
                    "labelled": n,
                    "test_iou": score(soup(fits, case / "soup.safetensors")),
                    "start_iou": start_iou,
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    frame = pd.DataFrame(rows)
    table = (
        frame.groupby(["recipe", "interpolate", "labelled"], dropna=False)
        .agg(
            test_iou=("test_iou", "mean"),
            std=("test_iou", "std"),
            min=("test_iou", "min"),
            below_start=("test_iou", lambda v: int((v < start_iou).sum())),
            seeds=("seed", "nunique"),
        )
        .round(4)
        .reset_index()
    )
    print(f"start {start_iou:.4f}; test IoU by recipe, interpolation and labelled tiles:")
    print(table.to_string(index=False))
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"bench_round_recipes_{sim.name}"
    frame.to_csv(args.results / f"{stem}.csv", index=False)
    (args.results / f"{stem}.json").write_text(
        json.dumps(
            {
                "simulation": str(sim),
                "start_iou": start_iou,
                "table": table.to_dict("records"),
                "minutes": round((time.perf_counter() - t0) / 60, 1),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
