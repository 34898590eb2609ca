"""What does each adaptation to a new area's unlabelled imagery buy before any label?

Run on demand (not a test). Settings (a model trained on the source, adapted to the target's
pool tiles without their labels, scored on the target's held-out test tiles):

* ``synthetic``: sample_data area A (pretrained on its noisy labels) -> area B;
* ``fair``: the Banepa pretrained model of bench_active_learning.py -> Kampala, Catanduanes
  and Nairobi (needs ../shared/data; share --workdir with bench_active_learning.py).

The pool/test split is simulate's (the same as bench_active_learning.py), and so is the
starting model (its fixed-epoch pretraining, shared through --workdir), so the zero-label
figures here are the 0-label points of its curves. Per variant and seed: test pixel IoU, per
town (the tiles' pixels pooled), object F1, Spearman rho of the 0-label IoU estimates (the 8
views' agreement, the head) against the true per-tile IoU, and the seconds the adaptation
took. ``simsiam (replay only)`` is the control for SimSiam: the same steps with the
self-supervised loss weighted 0, i.e. only the supervised replay of the pretraining tiles.
``adabn (per town)`` adapts to each town's pool tiles on its own and scores each town's test
tiles with its own model, as a mapper adapts to one area at a time; ``--adabn-weights``
adds AdaBN blended with the source statistics. Prints the table and saves
results/bench_adapt.{csv,json}:

    .venv/bin/python benchmarks/bench_adapt.py --workdir /tmp/al --threads 2
    .venv/bin/python benchmarks/bench_adapt.py --workdir /tmp/al --settings fair \
        --variants "none,adabn,adabn (per town)" --adabn-weights 0.25,0.5,0.75
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
#: adapted to each town's pool tiles on its own and scored on that town's test tiles, as a
#: mapper adapts to one disaster area at a time (the fAIr pool mixes three towns)
PER_TOWN: dict[str, tuple[str, ...]] = {"adabn (per town)": ("adabn",)}
VARIANTS.update(PER_TOWN)


def town_of(tile_id: str) -> str:
    """The town of a fAIr tile (``nairobi_cluster1_r0004_c0006``), the area of a synthetic one."""
    return tile_id.split("_", 1)[0]


def town_subsets(pool: Path, test: Path, out: Path) -> dict[str, tuple[Path, Path]]:
    """Per town, its pool and test tiles as tile sets of their own (hard links)."""
    from rscrisis.io.tileset import read_index, write_subset

    subsets: dict[str, tuple[Path, Path]] = {}
    pool_ids, test_ids = read_index(pool).tile_id, read_index(test).tile_id
    for town in sorted({town_of(t) for t in pool_ids}):
        parts = []
        for kind, root, ids in (("pool", pool, pool_ids), ("test", test, test_ids)):
            sub = out / f"{kind}-{town}"
            if not (sub / "index.gpkg").exists():
                write_subset(root, sub, [t for t in ids if town_of(t) == town], overwrite=True)
            parts.append(sub)
        subsets[town] = (parts[0], parts[1])
    return subsets


def scores(tiles: list[dict]) -> dict:
    """From ``evaluate``'s per-tile rows: pixel IoU over the test tiles and per town (their
    pixels pooled) and object F1, with rscrisis.ml.metrics' conventions, and how well the 0-label
    IoU estimates (the views' agreement, the head) rank the tiles' true IoU."""
    from scipy.stats import spearmanr

    from rscrisis.ml.metrics import ObjectCounts, pixel_scores

    def iou(rows: list[dict]) -> float:
        counts = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
        return round(pixel_scores(*counts)["iou"], 4)

    objects = ObjectCounts(*(sum(r[f"objects_{k}"] for r in tiles) for k in ("tp", "fp", "fn")))
    out = {"test_iou": iou(tiles), "object_f1": round(objects.scores()["f1"], 4)}
    for town in sorted({town_of(r["tile_id"]) for r in tiles}):
        out[f"iou_{town}"] = iou([r for r in tiles if town_of(r["tile_id"]) == town])
    true = [r["true_iou"] for r in tiles]
    for key in ("tta_agreement", "pred_iou"):
        est = [r.get(key, np.nan) for r in tiles]
        if np.isfinite(est).all() and len(set(est)) > 1:
            out[f"rho_{key}"] = round(float(spearmanr(est, true).statistic), 3)
    return out


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

        # the fixed-epoch start of bench_active_learning.py (the same file in a shared --workdir)
        model = pretrained_model(work, make_split(work, 0.25, 128))
        target = fair_tileset(work, 0.25, 128)
    config = SimulateConfig(
        test_fraction=0.3, split="blocks", block_tiles=2, seed_batch=1, rounds=1, batch=1
    )
    pool, test = split_pool_test(target, work / f"adapt-{name}", config)
    return model, pool, test


#: other ways to fine-tune the adapted model (``--first-batch-arms``): the replayed Banepa
#: tiles normalised with their own statistics, and batch norm learning during fine-tuning
FIRST_BATCH_ARMS: dict[str, dict] = {
    "adabn, --replay-norm source": {"replay_norm": "source"},
    "adabn, --train-norm": {"freeze_norm": False},
}


def first_batch(
    setting: str,
    work: Path,
    pool: Path,
    test: Path,
    starts: dict[str, tuple[Path, dict]],
    seeds: list[int],
    tiles: int,
    threads,
) -> list[dict]:
    """The annotation curve's first point from each start: per seed, ``tiles`` random pool
    tiles (the same ones for every start) fine-tuned with ``finetune``'s defaults (and the
    start's own changes to them) and scored on the test tiles, as a simulation's seed batch is
    (its own draw of the tiles differs)."""
    from rscrisis.config import FinetuneConfig, PredictConfig
    from rscrisis.io.tileset import read_index, write_subset
    from rscrisis.loop.finetune import finetune_tilesets
    from rscrisis.predict.evaluate import evaluate

    ids = sorted(read_index(pool).tile_id)
    rows = []
    for seed in seeds:
        chosen = sorted(np.random.default_rng(seed).choice(ids, tiles, replace=False).tolist())
        for k, (name, (start, changes)) in enumerate(starts.items()):
            run = work / f"first-batch-{setting}" / f"start{k}-{seed}"
            labelled = write_subset(pool, run / "labelled", chosen, overwrite=True)
            t0 = time.perf_counter()
            config = FinetuneConfig(val_fraction=0.0, threads=threads, seed=seed, **changes)
            finetune_tilesets(start, [labelled], run / "model.safetensors", config=config,
                              overwrite=True)  # fmt: skip
            seconds = time.perf_counter() - t0
            predict = PredictConfig(threads=threads, batch_size=16)
            ev = evaluate(run / "model.safetensors", [test], config=predict)
            row = {"setting": setting, "start": name, "seed": seed, "tiles": len(chosen),
                   **scores(ev.per_tile), "finetune_s": round(seconds, 1),
                   "tile_ids": " ".join(chosen)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    import rscrisis.ml.adaptation as adaptation
    from rscrisis.config import AdaptConfig, PredictConfig
    from rscrisis.predict.evaluate import evaluate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="synthetic,fair")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="default: adapt's")
    parser.add_argument(
        "--adabn-weights",
        default="",
        help="also AdaBN blended with the source statistics at these weights (0.5,0.75): "
        "variants 'adabn (weight W)'",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument(
        "--first-batch",
        type=int,
        default=0,
        help="also fine-tune N random pool tiles from the unadapted start and from AdaBN "
        "(seed 0) for each of --first-batch-seeds: the curve's first point with and without "
        "adapting (results/bench_adapt_first_batch_SETTING.csv)",
    )
    parser.add_argument("--first-batch-seeds", default="0,1,2,3,4")
    parser.add_argument(
        "--first-batch-arms",
        action="store_true",
        help="with --first-batch, also the adapted start fine-tuned with --replay-norm source "
        "and with --train-norm",
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    weights = {f"adabn (weight {w})": float(w) for w in args.adabn_weights.split(",") if w}
    VARIANTS.update(dict.fromkeys(weights, ("adabn",)))
    variants = args.variants.split(",") + [w for w in weights if w not in args.variants]
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
        for variant in variants:
            methods = VARIANTS[variant]
            for seed in seeds if methods else [0]:
                if (setting, variant, seed) in done:
                    continue
                adaptation.SSL_WEIGHT = 0.0 if "replay only" in variant else 1.0
                extra: dict = {"steps": args.steps} if args.steps else {}
                if variant in weights:
                    extra["adabn_weight"] = weights[variant]
                config = (
                    AdaptConfig(methods=methods, seed=seed, threads=args.threads, **extra)
                    if methods
                    else None
                )
                predict = PredictConfig(threads=args.threads, batch_size=16)
                # (pool, test, adapted model) per area adapted to: the whole pool, or each town
                areas = (
                    town_subsets(pool, test, args.workdir / f"adapt-{setting}")
                    if variant in PER_TOWN
                    else {"all": (pool, test)}
                )
                seconds, tiles = 0.0, []
                for area, (area_pool, area_test) in areas.items():
                    t0 = time.perf_counter()
                    path = model
                    if config is not None:
                        name = f"{variant.replace(' ', '_')}-{area}-{seed}.safetensors"
                        path = args.workdir / f"adapt-{setting}" / name
                        adaptation.adapt(model, [area_pool], path, config=config, overwrite=True)
                    seconds += time.perf_counter() - t0
                    ev = evaluate(path, [area_test], config=predict)
                    tiles += ev.per_tile
                row = {
                    "setting": setting,
                    "variant": variant,
                    "seed": seed,
                    **scores(tiles),
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
                # per town, and the ranking of the 0-label IoU estimates (means over seeds)
                **{
                    col: round(g[col].mean(), 4 if col.startswith("iou_") else 3)
                    for col in frame.columns
                    if col.startswith(("iou_", "rho_")) and g[col].notna().any()
                },
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
    if args.first_batch:
        for setting in args.settings.split(","):
            start, pool, test = setting_data(setting, args.workdir)
            adapted = args.workdir / f"adapt-{setting}" / "adabn-all-0.safetensors"
            if not adapted.exists():
                sys.exit(f"{adapted} is missing: run the adabn variant with seed 0 first")
            starts = {"none": (start, {}), "adabn": (adapted, {})}
            if args.first_batch_arms:
                starts.update({name: (adapted, c) for name, c in FIRST_BATCH_ARMS.items()})
            pairs = first_batch(
                setting,
                args.workdir,
                pool,
                test,
                starts,
                [int(s) for s in args.first_batch_seeds.split(",")],
                args.first_batch,
                args.threads,
            )
            pd.DataFrame(pairs).to_csv(
                args.results / f"bench_adapt_first_batch_{setting}.csv", index=False
            )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
