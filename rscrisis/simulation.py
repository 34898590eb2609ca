"""``rscrisis simulate``: replay the annotation loop with an oracle to compare formulas.

On a fully labelled tile set:

1. split the tiles spatially into a *pool* (what people could annotate) and a *test* area
   (blocks of tiles, with a one-tile buffer, the same split for every run);
2. per seed, reveal a random *seed batch* of the pool (identical for every formula) and
   fine-tune the starting model on it: round 0 of every formula;
3. per formula, R rounds of: predict the unlabelled pool with the current model, rank it with
   the formula (and diversity, and rank's spatial rule), reveal the oracle labels of the top K,
   fine-tune the *starting* model on every tile revealed so far, evaluate on the test area.

Fine-tuning from the starting model each round (not from the previous round's model) keeps
rounds comparable: the curve measures the labels, not an accumulating optimisation path.

Outputs in OUT: ``curves.csv`` (seed, formula, round, labelled tiles, test IoU, F1, object F1),
``summary.csv`` (per formula: area under the IoU-vs-labelled-tiles curve, normalised to a mean
IoU over the budget, mean and spread over seeds, wins against random, IoU gain over random at
each budget), ``curves.png`` and ``simulate.json``. A killed run resumes where it stopped:
finished rounds are in ``state.json`` with each chain's labelled tiles and latest model.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rscrisis import __version__
from rscrisis.config import PredictConfig, SimulateConfig
from rscrisis.errors import InputError
from rscrisis.outputs import guard_output_dir, write_csv_atomic, write_json_atomic
from rscrisis.progress import Progress, no_progress

log = logging.getLogger(__name__)

CURVES = "curves.csv"
SUMMARY = "summary.csv"
PLOT = "curves.png"
MANIFEST = "simulate.json"
STATE = "state.json"
PRODUCTS = (CURVES, SUMMARY, PLOT, MANIFEST, STATE, "data", "work")
SEED_FORMULA = "seed-batch"


@dataclass
class SimulateResult:
    out: str
    pool_tiles: int
    test_tiles: int
    runs: int
    seconds: float
    summary: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


class _State:
    """Progress of every chain (seed, formula), saved after each round."""

    def __init__(self, path: Path, fingerprint: dict):
        self.path = path
        self.data = {"fingerprint": fingerprint, "rows": [], "chains": {}}
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("fingerprint") != fingerprint:
                raise InputError(
                    "holds a simulation with other settings or inputs",
                    path=path.parent,
                    hint="rerun with the same options to resume, or --overwrite to start over",
                )
            self.data = saved

    @property
    def rows(self) -> list[dict]:
        return self.data["rows"]

    def chain(self, seed: int, formula: str) -> dict | None:
        return self.data["chains"].get(f"{seed}/{formula}")

    def save_round(self, seed: int, formula: str, chain: dict, row: dict) -> None:
        self.data["chains"][f"{seed}/{formula}"] = chain
        self.rows.append(row)
        write_json_atomic(self.path, self.data)


def split_pool_test(tileset: Path, out: Path, config: SimulateConfig) -> tuple[Path, Path]:
    """Spatially blocked pool/test split of a labelled tile set (hard-linked subsets)."""
    from rscrisis.data import load_tiles, spatial_split
    from rscrisis.tileset import write_subset

    frame = load_tiles([tileset], need_masks=True).frame
    if config.split == "band":
        pool, test = band_split(frame, config.test_fraction)
    else:
        pool, test, _ = spatial_split(
            frame, config.test_fraction, config.block_tiles, config.split_seed
        )
    if len(pool) < config.seed_batch + config.rounds * config.batch:
        raise InputError(
            f"the pool has {len(pool)} tiles, fewer than the budget "
            f"({config.seed_batch} + {config.rounds} x {config.batch})",
            path=tileset,
            hint="lower --rounds, --batch or --seed-batch, or tile a larger area",
        )
    pool_dir, test_dir = out / "data" / "pool", out / "data" / "test"
    if not (pool_dir / "index.gpkg").exists():
        write_subset(tileset, pool_dir, frame.tile_id.iloc[pool], overwrite=True)
    if not (test_dir / "index.gpkg").exists():
        write_subset(tileset, test_dir, frame.tile_id.iloc[test], overwrite=True)
    return pool_dir, test_dir


def band_split(frame, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) indices: test is the southernmost ``test_fraction`` of the tiles, the pool
    starts one tile height north of it (tiles straddling the gap are dropped)."""
    b = frame.geometry.bounds
    tile_h = float((b.maxy - b.miny).median())
    order = np.argsort(b.maxy.to_numpy(), kind="stable")
    k = max(1, round(test_fraction * len(frame)))
    cut = float(b.maxy.to_numpy()[order[k - 1]])
    test = np.flatnonzero(b.maxy.to_numpy() <= cut + 1e-9 * tile_h)
    pool = np.flatnonzero(b.miny.to_numpy() >= cut + tile_h - 1e-9 * tile_h)
    return pool, test


def _finetune_on(
    start: Path, pool: Path, ids: list[str], work: Path, config: SimulateConfig, seed: int
) -> Path:
    """Fine-tune the starting model on the revealed tiles ``ids`` of the pool."""
    from rscrisis.finetune import finetune_train_config
    from rscrisis.model import read_meta
    from rscrisis.tileset import write_subset
    from rscrisis.training import train

    labelled = write_subset(pool, work / "labelled", ids, overwrite=True)
    model = work / "model.safetensors"
    cfg = finetune_train_config(read_meta(start), config.finetune.model_copy(update={"seed": seed}))
    train([labelled], model, config=cfg, init=start, overwrite=True)
    return model


def _evaluate(model: Path, test: Path, config: SimulateConfig) -> dict:
    from rscrisis.evaluation import evaluate

    ev = evaluate(
        model, [test], config=PredictConfig(threads=config.finetune.threads, batch_size=16)
    )
    return {
        "test_iou": round(ev.pixel["iou"], 5),
        "test_f1": round(ev.pixel["f1"], 5),
        "object_f1": round(ev.objects["f1"], 5),
        "pred_iou_spearman": round(ev.pred_iou_calibration["spearman"], 4),
    }


def _choose(
    model: Path,
    pool: Path,
    exclude: set[str],
    formula: str,
    k: int,
    work: Path,
    config: SimulateConfig,
    seed: int,
) -> list[str]:
    """Predict the unlabelled pool and pick K tiles with ``formula`` (as rank does)."""
    from rscrisis.annotation import read_prediction_set
    from rscrisis.inference import predict_tiles
    from rscrisis.ranking import Spacing, priority, select

    name, _, diversity = formula.partition("+")
    pred_dir = work / "pred"
    predict_tiles(
        model,
        [pool],
        pred_dir,
        overwrite=True,
        config=PredictConfig(
            threads=config.finetune.threads,
            batch_size=16,
            mc_samples=config.mc_samples,
            seed=seed,
        ),
    )
    pred = read_prediction_set(pred_dir)
    scores = pred.scores
    keep = ~scores.tile_id.isin(list(exclude)).to_numpy()
    cand = scores[keep].reset_index(drop=True)
    score, _ = priority(name, cand, seed=seed * 1000 + len(exclude))
    spacing = Spacing.from_frame(cand, 0.0) if config.spatial else None
    chosen = select(
        score,
        cand.tile_id.to_numpy().astype(str),
        k,
        diversity=diversity or "none",
        embeddings=np.asarray(pred.embeddings)[keep],
        spacing=spacing,
        seed=seed,
    )
    if len(chosen) < k:  # the spatial rule ran out of room: fill by score, as people would
        rest = [i for i in np.argsort(-score, kind="stable") if i not in chosen]
        chosen += rest[: k - len(chosen)]
    return [str(cand.tile_id.iloc[i]) for i in chosen]


def area_under_curve(labelled: np.ndarray, iou: np.ndarray) -> float:
    """Trapezoid area under IoU vs labelled tiles, divided by the labelled range: the mean
    IoU over the annotation budget (comparable across budgets)."""
    order = np.argsort(labelled)
    x, y = labelled[order].astype(float), iou[order].astype(float)
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def summarise(rows: list[dict], formulas: tuple[str, ...]) -> list[dict]:
    """Per formula: AUC mean/std over seeds, wins against random, gain over random per budget."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    seeds = sorted(frame.seed.unique())
    auc = {}
    for f in formulas:
        for s in seeds:
            part = frame[(frame.formula == f) & (frame.seed == s)]
            if len(part):
                auc[(f, s)] = area_under_curve(part.labelled.to_numpy(), part.test_iou.to_numpy())
    out = []
    for f in formulas:
        values = [auc[(f, s)] for s in seeds if (f, s) in auc]
        if not values:
            continue
        row = {
            "formula": f,
            "seeds": len(values),
            "auc_mean": round(float(np.mean(values)), 5),
            "auc_std": round(float(np.std(values)), 5),
            **{f"auc_seed{s}": round(auc[(f, s)], 5) for s in seeds if (f, s) in auc},
        }
        if "random" in formulas and f != "random":
            wins = [auc[(f, s)] > auc[("random", s)] for s in seeds if ("random", s) in auc]
            row["beats_random_seeds"] = f"{sum(wins)}/{len(wins)}"
            mine = frame[frame.formula == f].groupby("labelled").test_iou.mean()
            rand = frame[frame.formula == "random"].groupby("labelled").test_iou.mean()
            for n in mine.index:
                if n in rand.index:
                    row[f"gain_at_{n}"] = round(float(mine[n] - rand[n]) * 100, 2)  # IoU points
        out.append(row)
    return out


def plot(rows: list[dict], formulas: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for f in formulas:
        part = frame[frame.formula == f]
        if part.empty:
            continue
        g = part.groupby("labelled").test_iou
        mean, std = g.mean(), g.std().fillna(0)
        ax.plot(mean.index, mean.values, marker="o", label=f, lw=2 if f == "random" else 1.5)
        ax.fill_between(mean.index, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("labelled tiles")
    ax.set_ylabel("test IoU")
    ax.set_title(f"Annotation strategies ({frame.seed.nunique()} seeds, mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from rscrisis.outputs import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def simulate(
    model_path: str | Path,
    tileset: str | Path,
    out: str | Path,
    *,
    config: SimulateConfig | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: Progress = no_progress,
) -> SimulateResult:
    """Run (or resume) a simulation; see the module docstring."""
    import torch

    from rscrisis.model import read_meta

    config = config or SimulateConfig()
    start, tileset, out = Path(model_path), Path(tileset), Path(out)
    read_meta(start)  # a clear error for a bad model before anything is written
    fingerprint = {
        "model": str(start.resolve()),
        "tileset": str(tileset.resolve()),
        "config": config.model_dump(mode="json"),
        "rscrisis_version": __version__,
    }
    guard_output_dir(out, PRODUCTS, overwrite=overwrite, resume=resume)
    if resume and not (out / STATE).exists():
        raise InputError(
            "nothing to resume here (no state.json)",
            path=out,
            hint="start a new simulation (without --resume)",
        )
    out.mkdir(parents=True, exist_ok=True)
    state = _State(out / STATE, fingerprint)
    if config.finetune.threads:
        torch.set_num_threads(config.finetune.threads)
    t0 = time.perf_counter()
    pool, test = split_pool_test(tileset, out, config)
    pool_ids = sorted(read_index_ids(pool))
    total = len(config.seeds) * (1 + len(config.formulas) * config.rounds)
    done = len(state.rows)
    write_json_atomic(
        out / MANIFEST,
        {
            "kind": "rscrisis.simulation",
            **fingerprint,
            "pool": str(pool),
            "test": str(test),
            "pool_tiles": len(pool_ids),
            "test_tiles": len(read_index_ids(test)),
        },
    )
    for seed in config.seeds:
        work = out / "work" / f"seed{seed}"
        seed_chain = state.chain(seed, SEED_FORMULA)
        if seed_chain is None:
            rng = np.random.default_rng(seed)
            ids = sorted(rng.choice(pool_ids, config.seed_batch, replace=False).tolist())
            model = _finetune_on(start, pool, ids, work / SEED_FORMULA, config, seed)
            row = {
                "seed": seed,
                "formula": SEED_FORMULA,
                "round": 0,
                "labelled": len(ids),
                **_evaluate(model, test, config),
            }
            seed_chain = {"ids": ids, "model": str(model), "round": 0}
            state.save_round(seed, SEED_FORMULA, seed_chain, row)
            done += 1
            progress(done, total, f"seed {seed}: seed batch IoU {row['test_iou']:.3f}")
        for formula in config.formulas:
            chain = state.chain(seed, formula) or {
                "ids": list(seed_chain["ids"]),
                "model": seed_chain["model"],
                "round": 0,
            }
            chain_dir = work / formula.replace("+", "_")
            while chain["round"] < config.rounds:
                r = chain["round"] + 1
                picked = _choose(
                    Path(chain["model"]),
                    pool,
                    set(chain["ids"]),
                    formula,
                    config.batch,
                    chain_dir,
                    config,
                    seed * 100 + r,
                )
                ids = sorted(set(chain["ids"]) | set(picked))
                round_dir = chain_dir / f"round{r}"
                model = _finetune_on(start, pool, ids, round_dir, config, seed)
                row = {
                    "seed": seed,
                    "formula": formula,
                    "round": r,
                    "labelled": len(ids),
                    **_evaluate(model, test, config),
                }
                previous = Path(chain["model"]).parent
                chain = {"ids": ids, "model": str(model), "round": r}
                state.save_round(seed, formula, chain, row)
                if previous.parent == chain_dir:  # keep only each chain's latest model
                    shutil.rmtree(previous, ignore_errors=True)
                done += 1
                progress(done, total, f"seed {seed} {formula} round {r}: IoU {row['test_iou']:.3f}")
    rows = _with_seed_rounds(state.rows, config)
    write_csv_atomic(out / CURVES, rows)
    summary = summarise(rows, config.formulas)
    write_csv_atomic(out / SUMMARY, summary)
    plot(rows, config.formulas, out / PLOT)
    return SimulateResult(
        out=str(out),
        pool_tiles=len(pool_ids),
        test_tiles=len(read_index_ids(test)),
        runs=len(state.rows),
        seconds=round(time.perf_counter() - t0, 2),
        summary=summary,
    )


def _with_seed_rounds(rows: list[dict], config: SimulateConfig) -> list[dict]:
    """Curves per formula start at the shared seed-batch point (round 0)."""
    out = []
    seed_rows = {r["seed"]: r for r in rows if r["formula"] == SEED_FORMULA}
    for f in config.formulas:
        for s in config.seeds:
            if s in seed_rows:
                out.append({**seed_rows[s], "formula": f})
            out.extend(r for r in rows if r["formula"] == f and r["seed"] == s)
    return out


def read_index_ids(root: Path) -> list[str]:
    from rscrisis.tileset import read_index

    return list(read_index(root).tile_id)
