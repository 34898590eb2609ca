"""``rscrisis simulate``: replay the annotation loop with an oracle to compare formulas.

On a fully labelled tile set:

1. split the tiles spatially into a *pool* (what people could annotate) and a *test* area
   (blocks of tiles, or a southern band, with a one-tile buffer; the same for every run);
2. the starting model itself is the curve's first point, at 0 labelled tiles; its prediction
   of the pool is the first ranking;
3. per seed, reveal a random *seed batch* of the pool (identical for every formula) and
   fine-tune the starting model on it: round 0 of every formula;
4. per formula, R rounds of: rank the still-unlabelled pool from the current model's
   prediction (the formula, its diversity and rank's spatial rule), reveal the oracle labels of
   the top K, fine-tune the *starting* model on every tile revealed so far, evaluate on the
   test area, predict the still-unlabelled pool (which scores the IoU head there: Spearman
   rho of ``pred_iou`` and ``calibrated_iou`` against the oracle's IoU, on all tiles and on
   tiles with buildings);
5. the *ceiling*: the starting model fine-tuned on every pool tile, the same way.

With ``adapt`` (``--adapt METHOD``), the starting model is first adapted to the pool's imagery
(:mod:`rscrisis.ml.adaptation`, labels unused) and the adapted model takes its place everywhere;
run twice, with and without, from the same seeds to compare.

Fine-tuning is ``rscrisis.loop.finetune.finetune_tilesets``, exactly what ``finetune`` runs (step
budget, replay, class balance, IoU calibrator refitted on the revealed tiles, with the
statistics of the model that chose them). Fine-tuning from the starting model each round (not
from the previous round's model) keeps rounds comparable: the curve measures the labels, not
an accumulating optimisation path.

Outputs in OUT: ``curves.csv`` (one row per seed, formula and round: labelled tiles, test IoU,
F1, object F1, pool rank correlations), ``summary.csv`` (per formula: area under the curve,
share of the start -> ceiling gap closed at each budget, paired gain over random per budget
with a 95 % interval, AUC wins over random with a sign test, labels needed to reach random's
final IoU), ``report.json`` (all of that with the frame: start, ceiling), ``curves.png`` and
``simulate.json``. A killed run resumes where it stopped: finished rounds are in
``state.json`` with each chain's labelled tiles, latest model and pool prediction.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rscrisis import __version__
from rscrisis.config import PredictConfig, SimulateConfig
from rscrisis.errors import InputError
from rscrisis.io.inputs import read_json
from rscrisis.io.outputs import claim_output_dir, write_csv_atomic, write_json_atomic
from rscrisis.progress import Progress, no_progress

log = logging.getLogger(__name__)

CURVES = "curves.csv"
SUMMARY = "summary.csv"
PLOT = "curves.png"
MANIFEST = "simulate.json"
STATE = "state.json"
REPORT = "report.json"
PRODUCTS = (CURVES, SUMMARY, REPORT, PLOT, MANIFEST, STATE, "data", "work")
SEED_FORMULA = "seed-batch"
START = "start"
CEILING = "ceiling"
#: a mean curve "rises" when no budget falls more than this below the previous one
RISE_TOLERANCE = 0.01


@dataclass
class SimulateResult:
    out: str
    pool_tiles: int
    test_tiles: int
    runs: int
    seconds: float
    summary: list[dict]
    start: dict | None = None
    ceiling: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class _State:
    """Progress of every chain (seed, formula), saved after each round."""

    def __init__(self, path: Path, fingerprint: dict):
        self.path = path
        self.data: dict[str, Any] = {"fingerprint": fingerprint, "rows": [], "chains": {}}
        if path.exists():
            saved = read_json(path, hint="rerun with --overwrite to start over")
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

    def of_chain(self, seed: int, formula: str) -> dict:
        """One chain's rows and state: what a worker's shard starts from."""
        return {
            "fingerprint": self.data["fingerprint"],
            "seed": seed,
            "formula": formula,
            "rows": [r for r in self.rows if (r["seed"], r["formula"]) == (seed, formula)],
            "chains": {k: v for k, v in self.data["chains"].items() if k == f"{seed}/{formula}"},
        }

    def absorb(self, shard: Path) -> None:
        """Take a worker's shard (one chain's rows and state, saved after each of its rounds)
        into this state, and remove it: a killed parallel run resumes from its shards."""
        saved = _read_shard(shard, self.data["fingerprint"])
        key = (int(saved["seed"]), str(saved["formula"]))
        rows = [r for r in self.rows if (r["seed"], r["formula"]) != key]
        self.data["rows"] = rows + list(saved["rows"])
        self.data["chains"] = {
            **{k: v for k, v in self.data["chains"].items() if k != f"{key[0]}/{key[1]}"},
            **saved["chains"],
        }
        write_json_atomic(self.path, self.data)
        shard.unlink()

    @classmethod
    def shard(cls, path: Path, start: dict) -> _State:
        """A worker's state for one chain, at ``path``: resumed when it exists, else begun
        from the main state's entries for that chain (``start``, from :meth:`of_chain`)."""
        state = cls.__new__(cls)
        state.path = path
        state.data = _read_shard(path, start["fingerprint"]) if path.exists() else start
        return state


def _read_shard(path: Path, fingerprint: dict) -> dict:
    """A worker's shard of the state, refused unless it is of this simulation."""
    saved = read_json(path, hint="rerun with --overwrite to start over")
    if saved.get("fingerprint") != fingerprint or "formula" not in saved:
        raise InputError(
            "is a worker's state from a simulation with other settings or inputs",
            path=path,
            hint="rerun with --overwrite to start over",
        )
    return saved


def split_pool_test(tileset: Path, out: Path, config: SimulateConfig) -> tuple[Path, Path]:
    """Spatially blocked pool/test split of a labelled tile set (hard-linked subsets)."""
    from rscrisis.io.tileset import write_subset
    from rscrisis.ml.data import load_tiles, spatial_split

    frame = load_tiles([tileset], need_masks=True).frame
    if config.split == "band":
        pool, test = band_split(frame, config.test_fraction)
    else:
        pool, test, _ = spatial_split(
            frame,
            config.test_fraction,
            config.block_tiles,
            config.split_seed,
            hint="lower --test-fraction or --block-tiles, or use --split band",
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
    start: Path,
    pool: Path,
    ids: list[str],
    samples: list[dict],
    work: Path,
    config: SimulateConfig,
    seed: int,
    out: Path,
) -> Path:
    """Fine-tune the starting model on the revealed tiles ``ids`` of the pool, as finetune
    does, with the calibration samples of the model that chose them (``out``: the
    simulation's folder)."""
    from rscrisis.io.tileset import write_subset
    from rscrisis.loop.finetune import finetune_tilesets

    labelled = write_subset(pool, work / "labelled", ids, overwrite=True)
    model = work / "model.safetensors"
    finetune_tilesets(
        start,
        [labelled],
        model,
        config=config.finetune.model_copy(update={"seed": seed}),
        samples=samples,
        overwrite=True,
        replay_targets_cache=replay_targets_cache(out),
    )
    return model


def replay_targets_cache(out: Path) -> Path:
    """Where every fine-tuning of a simulation keeps the starting model's maps of the replayed
    pretraining tile sets (``--replay-targets model``): its rounds share the starting model."""
    return out / "work" / "replay-targets"


def _adapted(start: Path, pool: Path, work: Path, config: SimulateConfig) -> Path:
    """The starting model adapted to the pool's imagery (labels unused), made once: a resumed
    run reuses it (the fingerprint guarantees the same settings)."""
    from rscrisis.ml.adaptation import adapt

    model = work / "model.safetensors"
    assert config.adapt is not None
    if not model.exists():
        adapt(
            start,
            [pool],
            model,
            config=config.adapt.model_copy(update={"threads": config.finetune.threads}),
            overwrite=True,
        )
    return model


def _evaluate(model: Path, test: Path, config: SimulateConfig) -> dict:
    from rscrisis.predict.evaluate import evaluate

    ev = evaluate(
        model, [test], config=PredictConfig(threads=config.finetune.threads, batch_size=16)
    )
    return {
        "test_iou": round(ev.pixel["iou"], 5),
        "test_f1": round(ev.pixel["f1"], 5),
        "object_f1": round(ev.objects["f1"], 5),
        "test_pred_iou_spearman": _r(ev.pred_iou_calibration["spearman"]),
    }


def _r(v: float, digits: int = 4):
    return round(float(v), digits) if v is not None and math.isfinite(v) else None


def _predict_pool(model: Path, pool: Path, out: Path, config: SimulateConfig, seed: int) -> Path:
    """Predict every pool tile and add the oracle's view (:func:`write_oracle`)."""
    from rscrisis.predict.tiles import predict_tiles

    predict_tiles(
        model,
        [pool],
        out,
        overwrite=True,
        config=PredictConfig(
            threads=config.finetune.threads,
            batch_size=16,
            mc_samples=config.mc_samples,
            seed=seed,
        ),
    )
    return write_oracle(model, pool, out)


def write_oracle(model: Path, pool: Path, out: Path) -> Path:
    """The oracle's view of ``model``'s prediction set ``out`` of ``pool``: ``true_iou`` of each
    tile's prediction and ``has_buildings``, in ``oracle.csv`` beside the prediction set."""
    from rscrisis.io.tileset import TileSetLayout
    from rscrisis.loop.export import read_prediction_set
    from rscrisis.ml.data import read_tile
    from rscrisis.ml.metrics import tile_iou
    from rscrisis.ml.model import read_meta
    from rscrisis.predict.tiles import read_prob

    threshold = read_meta(model).threshold
    layout = TileSetLayout(pool)
    rows = []
    for tid, prob_rel in zip(
        *(read_prediction_set(out).scores[c] for c in ("tile_id", "prob")), strict=True
    ):
        prob, _ = read_prob(out / prob_rel)
        _, _, mask = read_tile(str(layout.image_path(tid)), str(layout.mask_path(tid)))
        assert mask is not None  # read with a mask path
        rows.append(
            {
                "tile_id": tid,
                "true_iou": tile_iou(prob > threshold, mask),
                "has_buildings": bool((mask == 1).any()),
            }
        )
    write_csv_atomic(out / "oracle.csv", rows)
    return out


def _pool_view(pred_dir: Path):
    """(prediction set, its scores joined with the oracle's columns)."""
    import pandas as pd

    from rscrisis.loop.export import read_prediction_set

    pred = read_prediction_set(pred_dir)
    oracle = pd.read_csv(pred_dir / "oracle.csv", dtype={"tile_id": str})
    scores = pred.scores.merge(oracle, on="tile_id", how="left")
    return pred, scores


def _pool_correlations(pred_dir: Path, exclude: set[str]) -> dict:
    """Spearman rho of the IoU estimates against the oracle on the still-unlabelled pool."""
    from rscrisis.ml.calibration import rank_correlations

    _, scores = _pool_view(pred_dir)
    part = scores[~scores.tile_id.isin(list(exclude))]
    true = part.true_iou.to_numpy(float)
    has = part.has_buildings.to_numpy(bool)
    out = {"pool_tiles": len(part), "pool_empty_tiles": int((~has).sum())}
    for col in ("pred_iou", "calibrated_iou", "soft_iou", "tta_agreement"):
        if col in part:
            rho = rank_correlations(part[col].to_numpy(float), true, has)
            out[f"pool_rho_{col}"] = _r(rho["all"])
            out[f"pool_rho_{col}_buildings"] = _r(rho["with_buildings"])
    return out


def oracle_samples(pred_dir: Path, ids: list[str]) -> list[dict]:
    """Calibration samples of ``ids``: the predicting model's statistics and the oracle IoU."""
    from rscrisis.ml.calibration import SAMPLE_KEYS

    _, scores = _pool_view(pred_dir)
    part = scores[scores.tile_id.isin(ids)]
    keys = tuple(k for k in SAMPLE_KEYS if k in part)
    return [
        {k: (bool(r[k]) if k == "has_buildings" else r[k]) for k in keys}
        for r in part.to_dict("records")
    ]


def choose_batch(
    pred_dir: Path,
    exclude: set[str],
    formula: str,
    k: int,
    config: SimulateConfig,
    seed: int,
) -> list[str]:
    """Pick K still-unlabelled pool tiles from a pool prediction with ``formula``, as rank
    does."""
    from rscrisis.loop.export import read_prediction_set
    from rscrisis.loop.ranking import Spacing, priority, select

    name, _, diversity = formula.partition("+")
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
    from scipy.integrate import trapezoid

    return float(trapezoid(y, x) / (x[-1] - x[0]))


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): mean with a two-sided 95 % Student-t interval (NaN bounds with
    fewer than 2 values)."""
    from scipy import stats

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign-test p-value of ``wins`` against ``losses`` (ties dropped)."""
    from scipy import stats

    n = wins + losses
    return float(stats.binomtest(wins, n, 0.5, alternative="greater").pvalue) if n else math.nan


def labels_to_reach(budgets: np.ndarray, curve: np.ndarray, target: float) -> float | None:
    """The smallest number of labelled tiles at which ``curve`` (linear between budgets)
    reaches ``target``; None if it never does."""
    for i, (n, y) in enumerate(zip(budgets, curve, strict=True)):
        if y >= target:
            if i == 0:
                return float(n)
            n0, y0 = budgets[i - 1], curve[i - 1]
            return float(n0 + (n - n0) * (target - y0) / (y - y0)) if y != y0 else float(n)
    return None


def summarise(rows: list[dict], formulas: tuple[str, ...]) -> list[dict]:
    """Per formula: AUC over seeds, share of the start -> ceiling gap closed per budget, the
    paired gain over random per budget (mean and 95 % interval over seeds), AUC wins over
    random with a sign test, and the labels needed to reach random's last mean IoU."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    start = (
        frame[frame.formula == START].test_iou.mean() if (frame.formula == START).any() else None
    )
    ceiling = (
        frame[frame.formula == CEILING].test_iou.mean()
        if (frame.formula == CEILING).any()
        else None
    )
    curves = frame[frame.formula.isin(formulas)]
    seeds = sorted(curves.seed.unique())
    auc = {}
    for f in formulas:
        for s in seeds:
            part = curves[(curves.formula == f) & (curves.seed == s)]
            if len(part):
                auc[(f, s)] = area_under_curve(part.labelled.to_numpy(), part.test_iou.to_numpy())
    rand_curve = curves[curves.formula == "random"].groupby("labelled").test_iou.mean()
    out = []
    for f in formulas:
        values = [auc[(f, s)] for s in seeds if (f, s) in auc]
        if not values:
            continue
        mine = curves[curves.formula == f]
        mean_curve = mine.groupby("labelled").test_iou.mean()
        row = {
            "formula": f,
            "seeds": len(values),
            "auc_mean": round(float(np.mean(values)), 5),
            "auc_std": round(float(np.std(values)), 5),
            **{f"auc_seed{s}": round(auc[(f, s)], 5) for s in seeds if (f, s) in auc},
        }
        diffs = np.diff(mean_curve.to_numpy())
        row["rises"] = bool((diffs >= -RISE_TOLERANCE).all())
        for n, v in mean_curve.items():
            row[f"iou_at_{n}"] = round(float(v), 4)
            if start is not None and ceiling is not None and ceiling > start:
                row[f"gap_closed_at_{n}"] = round(float((v - start) / (ceiling - start)), 3)
        if "random" in formulas and f != "random":
            wins = sum(auc[(f, s)] > auc[("random", s)] for s in seeds if ("random", s) in auc)
            losses = sum(auc[(f, s)] < auc[("random", s)] for s in seeds if ("random", s) in auc)
            row["beats_random_seeds"] = f"{wins}/{len(values)}"
            row["sign_test_p"] = _r(sign_test(wins, losses), 4)
            rand = curves[curves.formula == "random"]
            for n in sorted(mine.labelled.unique()):
                a = mine[mine.labelled == n].set_index("seed").test_iou
                b = rand[rand.labelled == n].set_index("seed").test_iou
                paired = (a - b).dropna().to_numpy()
                if len(paired):
                    m, lo, hi = mean_interval(paired * 100)  # IoU points
                    row[f"gain_at_{n}"] = round(m, 2)
                    row[f"gain_at_{n}_ci"] = f"[{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) else ""
            if len(rand_curve):
                target = float(rand_curve.iloc[-1])
                reach = labels_to_reach(mean_curve.index.to_numpy(), mean_curve.to_numpy(), target)
                row["labels_to_random_final"] = None if reach is None else round(reach, 1)
                row["random_final_labels"] = int(rand_curve.index[-1])
        out.append(row)
    return out


def frame_report(rows: list[dict], formulas: tuple[str, ...]) -> dict:
    """The frame of the curves: the start (0 labels), the ceiling (every pool tile), and per
    formula the IoU head's rank correlation on the unlabelled pool after each round."""
    import pandas as pd

    frame = pd.DataFrame(rows)

    def stat(part) -> dict:
        m, lo, hi = mean_interval(part.test_iou.to_numpy())
        return {"test_iou": _r(m), "ci95": [_r(lo), _r(hi)], "seeds": int(part.seed.nunique())}

    report: dict = {}
    for name in (START, CEILING):
        part = frame[frame.formula == name]
        if len(part):
            report[name] = {**stat(part), "labelled": int(part.labelled.iloc[0])}
    rho_cols = [c for c in frame.columns if c.startswith("pool_rho_")]
    report["pool_rank_correlation"] = {
        f: {
            int(n): {c: _r(g[c].mean()) for c in rho_cols if g[c].notna().any()}
            for n, g in frame[frame.formula.isin([f, SEED_FORMULA, START])].groupby("labelled")
        }
        for f in formulas
    }
    return report


def plot(rows: list[dict], formulas: tuple[str, ...], path: Path) -> None:
    """Mean test IoU per formula with 95 % intervals over seeds, from 0 labelled tiles, with
    the ceiling as a dashed line; ticks at the budgets that exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.DataFrame(rows)
    paired = "random" in formulas and len(formulas) > 1
    fig, axes = plt.subplots(
        1, 2 if paired else 1, figsize=(13 if paired else 7.5, 4.8), dpi=120, squeeze=False
    )
    ax = axes[0, 0]
    colours = plt.get_cmap("tab10")
    markers = "os^DvP*X"
    budgets: set[int] = set()
    for n, f in enumerate(formulas):
        part = frame[frame.formula == f]
        if part.empty:
            continue
        stats = part.groupby("labelled").test_iou.apply(lambda v: mean_interval(v.to_numpy()))
        x = stats.index.to_numpy()
        budgets |= set(int(v) for v in x)
        mean = np.array([s[0] for s in stats])
        lo = np.array([s[1] if math.isfinite(s[1]) else s[0] for s in stats])
        hi = np.array([s[2] if math.isfinite(s[2]) else s[0] for s in stats])
        c = "black" if f == "random" else colours(n % 10)
        marker = markers[n % len(markers)]
        ax.plot(x, mean, marker=marker, ms=4, label=f, color=c, lw=2 if f == "random" else 1.5)
        ax.fill_between(x, lo, hi, alpha=0.12, color=c)
    ceiling = frame[frame.formula == CEILING]
    if len(ceiling):
        ax.axhline(ceiling.test_iou.mean(), ls="--", color="grey", lw=1)
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, max(top, ceiling.test_iou.mean() + 0.04 * (top - bottom)))
        ax.annotate(
            f"ceiling: all {int(ceiling.labelled.iloc[0])} pool tiles",
            (0, ceiling.test_iou.mean()),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
            color="grey",
        )
    if budgets:
        ax.set_xticks(sorted(budgets))
    ax.set_xlabel("labelled tiles (0 = the starting model)")
    ax.set_ylabel("test IoU")
    ax.set_title(f"Annotation strategies ({frame.seed.nunique()} seeds, mean and 95 % interval)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if paired:
        _plot_gains(axes[0, 1], frame, formulas, colours, markers, sorted(budgets))
    fig.tight_layout()
    from rscrisis.io.outputs import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _plot_gains(ax, frame, formulas, colours, markers, budgets: list[int]) -> None:
    """Paired gain over random per budget (IoU points; mean and 95 % interval over seeds):
    the same seed batch and split for both, so the seeds' noise cancels. Formulas are dodged
    sideways so their intervals do not hide each other."""
    rand = frame[frame.formula == "random"]
    others = [f for f in formulas if f != "random"]
    step = min(np.diff(budgets)) if len(budgets) > 1 else 1
    width = 0.6 * step / max(1, len(others))
    for k, f in enumerate(others):
        mine = frame[frame.formula == f]
        xs, means, lows, highs = [], [], [], []
        for n in sorted(mine.labelled.unique()):
            if n == 0:
                continue
            a = mine[mine.labelled == n].set_index("seed").test_iou
            b = rand[rand.labelled == n].set_index("seed").test_iou
            gains = (a - b).dropna().to_numpy() * 100
            if len(gains):
                m, lo, hi = mean_interval(gains)
                xs.append(n + (k - (len(others) - 1) / 2) * width)
                means.append(m)
                lows.append(m - lo if math.isfinite(lo) else 0.0)
                highs.append(hi - m if math.isfinite(hi) else 0.0)
        n_colour = formulas.index(f)
        ax.errorbar(xs, means, yerr=[lows, highs], fmt=markers[n_colour % len(markers)],
                    color=colours(n_colour % 10), capsize=3, ms=4, label=f)  # fmt: skip
    ax.axhline(0, color="black", lw=1)
    if budgets:
        ax.set_xticks([b for b in budgets if b > 0])
    ax.set_xlabel("labelled tiles")
    ax.set_ylabel("test IoU gain over random (points)")
    ax.set_title("Paired gain over random (same seeds; mean and 95 % interval)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


@dataclass
class _ChainJob:
    """What a worker process needs to run one chain: a seed batch, one formula's rounds after
    it, or a ceiling (:meth:`_Replay.run_in_parallel`)."""

    seed: int
    formula: str
    start_model: Path
    start_pred: Path
    pool: Path
    test: Path
    out: Path
    config: SimulateConfig
    threads: int
    shard: Path
    state: dict
    seed_chain: dict | None = None


_messages: Any = None  # the worker's queue of progress messages to the main process


def _worker_init(messages, threads: int) -> None:
    """Before torch is imported in the worker: its queue, and its threads."""
    import os

    from rscrisis.cluster import thread_environment

    global _messages
    _messages = messages
    os.environ.update(thread_environment(threads))


def _run_chain_job(job: _ChainJob) -> None:
    """In a worker process: one chain, from its shard, reporting each step to the main one."""
    import torch

    torch.set_num_threads(job.threads)

    def progress(done: int, total: int, description: str = "") -> None:
        if _messages is not None:
            _messages.put(description)

    state = _State.shard(job.shard, job.state)
    replay = _Replay(job.start_model, job.pool, job.test, job.out, job.config, state, progress)
    replay.start_pred = job.start_pred
    if job.formula == SEED_FORMULA:
        replay.seed_batch(job.seed)
    elif job.formula == CEILING:
        replay.ceiling(job.seed)
    else:
        assert job.seed_chain is not None
        replay.rounds(job.seed, job.formula, job.seed_chain)


class _Replay:
    """One simulation in named steps: :meth:`start` (the starting model, 0 labels),
    :meth:`seed_batch`, :meth:`rounds` of one formula, :meth:`ceiling` (every pool tile) and
    :meth:`finish` (curves, summary, report, plot). Every step records its rows in the state,
    so a killed run resumes where it stopped."""

    def __init__(
        self,
        start: Path,
        pool: Path,
        test: Path,
        out: Path,
        config: SimulateConfig,
        state: _State,
        progress: Progress,
    ):
        self.start_model, self.out, self.config = start, out, config
        self.state, self.progress = state, progress
        self.t0 = time.perf_counter()
        self.pool, self.test = pool, test
        self.pool_ids = sorted(read_index_ids(self.pool))
        self.test_tiles = len(read_index_ids(self.test))
        self.total = 1 + len(config.seeds) * (
            1 + len(config.formulas) * config.rounds + config.ceiling
        )
        self.done = len(state.rows)
        self.work = out / "work"

    def _advance(self, message: str) -> None:
        self.done += 1
        self.progress(self.done, self.total, message)

    def _row(self, seed: int, formula: str, r: int, ids, model: Path, pred: Path | None) -> dict:
        return {
            "seed": seed,
            "formula": formula,
            "round": r,
            "labelled": len(ids),
            **_evaluate(model, self.test, self.config),
            **({} if pred is None else _pool_correlations(pred, set(ids))),
        }

    def adapt(self) -> None:
        if self.config.adapt is not None:
            self.start_model = _adapted(
                self.start_model, self.pool, self.work / "adapted", self.config
            )

    def start(self) -> None:
        """0 labelled tiles: the starting model itself, shared by every seed and formula."""
        state, config = self.state, self.config
        chain = state.chain(-1, START)
        if chain is None or not (Path(chain["pred"]) / "oracle.csv").exists():
            pred = _predict_pool(self.start_model, self.pool, self.work / START / "pred", config, 0)
            row = self._row(-1, START, -1, [], self.start_model, pred)
            chain = {"ids": [], "model": str(self.start_model), "round": -1, "pred": str(pred)}
            if state.chain(-1, START) is None:
                state.save_round(-1, START, chain, row)
                self.done += 1
            else:
                state.data["chains"][f"-1/{START}"] = chain
            self.progress(self.done, self.total, f"starting model: test IoU {row['test_iou']:.3f}")
        self.start_pred = Path(chain["pred"])

    def seed_batch(self, seed: int) -> dict:
        """The random first batch of ``seed``, the same for every formula."""
        chain = self.state.chain(seed, SEED_FORMULA)
        if chain is not None:
            return chain
        config = self.config
        rng = np.random.default_rng(seed)
        ids = sorted(rng.choice(self.pool_ids, config.seed_batch, replace=False).tolist())
        samples = oracle_samples(self.start_pred, ids)
        chain_dir = self.work / f"seed{seed}" / SEED_FORMULA
        model = _finetune_on(
            self.start_model, self.pool, ids, samples, chain_dir, config, seed, self.out
        )
        pred = _predict_pool(model, self.pool, chain_dir / "pred", config, seed)
        row = self._row(seed, SEED_FORMULA, 0, ids, model, pred)
        chain = {"ids": ids, "model": str(model), "round": 0, "pred": str(pred), "samples": samples}
        self.state.save_round(seed, SEED_FORMULA, chain, row)
        self._advance(f"seed {seed}: seed batch IoU {row['test_iou']:.3f}")
        return chain

    def rounds(self, seed: int, formula: str, seed_chain: dict) -> None:
        """``formula``'s rounds after the seed batch: predict the pool, rank, reveal K labels,
        fine-tune from the starting model on every tile revealed so far, evaluate."""
        config = self.config
        chain = self.state.chain(seed, formula) or {**seed_chain, "round": 0}
        chain_dir = self.work / f"seed{seed}" / formula.replace("+", "_")
        while chain["round"] < config.rounds:
            r = chain["round"] + 1
            pred = Path(chain["pred"]) if chain.get("pred") else None
            if pred is None or not (pred / "oracle.csv").exists():  # gone (or never made)
                pred = _predict_pool(
                    Path(chain["model"]), self.pool, chain_dir / "again" / "pred", config, seed
                )
            exclude = set(chain["ids"])
            picked = choose_batch(pred, exclude, formula, config.batch, config, seed * 100 + r)
            ids = sorted(exclude | set(picked))
            samples = list(chain.get("samples", [])) + oracle_samples(pred, picked)
            round_dir = chain_dir / f"round{r}"
            model = _finetune_on(
                self.start_model, self.pool, ids, samples, round_dir, config, seed, self.out
            )
            new_pred = _predict_pool(model, self.pool, round_dir / "pred", config, seed)
            row = self._row(seed, formula, r, ids, model, new_pred)
            previous = Path(chain["model"]).parent
            # the tiles each round revealed, in order (a chain resumed from a state written
            # before they were recorded has none)
            batches = chain.get("batches", [chain["ids"]] if chain["round"] == 0 else None)
            chain = {
                "ids": ids,
                "model": str(model),
                "round": r,
                "pred": str(new_pred),
                "samples": samples,
            }
            if batches is not None:
                chain["batches"] = [*batches, sorted(picked)]
            self.state.save_round(seed, formula, chain, row)
            if previous.parent == chain_dir:  # keep only each chain's latest round
                shutil.rmtree(previous, ignore_errors=True)
            self._advance(f"seed {seed} {formula} round {r}: IoU {row['test_iou']:.3f}")

    def run_seed(self, seed: int) -> None:
        """Everything of one seed: its seed batch, every formula's rounds, its ceiling."""
        seed_chain = self.seed_batch(seed)
        for formula in self.config.formulas:
            self.rounds(seed, formula, seed_chain)
        self.ceiling(seed)

    def run_in_parallel(self, workers: int) -> None:
        """Every seed's chains in ``workers`` processes: the seed batches first, then, as each
        seed's batch is in, its formulas' rounds and its ceiling, each chain a task. A task
        saves its rounds in a shard of the state (``work/shards/``), taken into the main state
        when it ends.

        Processes rather than threads: fine-tuning holds the GIL between torch's kernels, and
        each process has its own torch thread pool (``finetune.threads``, by default the cores
        shared out), so a run gives exactly the figures of a one-worker run with as many
        threads. Processes are spawned (torch's OpenMP pool does not survive fork). Chains, not
        seeds, are the tasks: 5 seeds on 2 workers would leave one seed alone at the end."""
        import multiprocessing as mp
        import queue as queues
        from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

        from rscrisis.cluster import cores_per_worker

        config = self.config
        threads = config.finetune.threads or cores_per_worker(workers)
        shards = self.work / "shards"
        shards.mkdir(parents=True, exist_ok=True)
        ctx = mp.get_context("spawn")
        messages = ctx.Queue()

        def job(seed: int, formula: str) -> _ChainJob:
            return _ChainJob(
                seed=seed,
                formula=formula,
                start_model=self.start_model,
                start_pred=self.start_pred,
                pool=self.pool,
                test=self.test,
                out=self.out,
                config=config,
                threads=threads,
                shard=shards / f"seed{seed}-{formula.replace('+', '_')}.json",
                state=self.state.of_chain(seed, formula),
                seed_chain=self.state.chain(seed, SEED_FORMULA),
            )

        def drain() -> None:
            try:
                while True:
                    self._advance(messages.get(timeout=0.01))
            except queues.Empty:
                pass

        def done(seed: int, formula: str) -> bool:
            chain = self.state.chain(seed, formula)
            if formula in (SEED_FORMULA, CEILING):
                return chain is not None or (formula == CEILING and not config.ceiling)
            return chain is not None and chain["round"] >= config.rounds

        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(messages, threads),
        ) as executor:
            pending: dict[Future, _ChainJob] = {}

            def submit(seed: int, formula: str) -> None:
                if not done(seed, formula):
                    j = job(seed, formula)
                    pending[executor.submit(_run_chain_job, j)] = j

            def after_seed_batch(seed: int) -> None:
                for formula in (*config.formulas, CEILING):
                    submit(seed, formula)

            for seed in config.seeds:
                if done(seed, SEED_FORMULA):
                    after_seed_batch(seed)
                else:
                    submit(seed, SEED_FORMULA)
            try:
                while pending:
                    finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    drain()
                    for future in finished:
                        j = pending.pop(future)
                        future.result()  # a worker's error is raised here
                        self.state.absorb(j.shard)
                        if j.formula == SEED_FORMULA:
                            after_seed_batch(j.seed)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
            finally:
                drain()

    def ceiling(self, seed: int) -> None:
        """Fine-tuning on every pool tile: the ceiling of the labels."""
        if not self.config.ceiling or self.state.chain(seed, CEILING) is not None:
            return
        chain_dir = self.work / f"seed{seed}" / CEILING
        samples = oracle_samples(self.start_pred, self.pool_ids)
        model = _finetune_on(
            self.start_model,
            self.pool,
            self.pool_ids,
            samples,
            chain_dir,
            self.config,
            seed,
            self.out,
        )
        row = self._row(seed, CEILING, -1, self.pool_ids, model, None)
        self.state.save_round(seed, CEILING, {"ids": [], "model": str(model), "round": -1}, row)
        shutil.rmtree(chain_dir, ignore_errors=True)
        self._advance(f"seed {seed}: ceiling IoU {row['test_iou']:.3f}")

    def finish(self) -> SimulateResult:
        """curves.csv, summary.csv, report.json and curves.png from every row so far."""
        config, out = self.config, self.out
        rows = with_shared_rounds(self.state.rows, config)
        write_csv_atomic(out / CURVES, rows)
        summary = summarise(rows, config.formulas)
        write_csv_atomic(out / SUMMARY, summary)
        report = {
            **frame_report(rows, config.formulas),
            "summary": summary,
            "pool_tiles": len(self.pool_ids),
            "test_tiles": self.test_tiles,
            "config": config.model_dump(mode="json"),
        }
        write_json_atomic(out / REPORT, report)
        plot(rows, config.formulas, out / PLOT)
        return SimulateResult(
            out=str(out),
            pool_tiles=len(self.pool_ids),
            test_tiles=self.test_tiles,
            runs=len(self.state.rows),
            seconds=round(time.perf_counter() - self.t0, 2),
            summary=summary,
            start=report.get(START),
            ceiling=report.get(CEILING),
        )


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

    from rscrisis.ml.model import read_meta

    config = config or SimulateConfig()
    start, tileset, out = Path(model_path), Path(tileset), Path(out)
    read_meta(start)  # a clear error for a bad model before anything is written
    fingerprint = {
        "model": str(start.resolve()),
        "tileset": str(tileset.resolve()),
        # the number of worker processes does not change the figures
        "config": config.model_dump(mode="json", exclude={"workers"}),
        "rscrisis_version": __version__,
    }
    with claim_output_dir(out, PRODUCTS, overwrite=overwrite, resume=resume, resumable=True):
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
        for shard in sorted((out / "work" / "shards").glob("*.json")):  # a killed parallel run
            state.absorb(shard)
        pool, test = split_pool_test(tileset, out, config)
        replay = _Replay(start, pool, test, out, config, state, progress)
        write_json_atomic(
            out / MANIFEST,
            {
                "kind": "rscrisis.simulation",
                **fingerprint,
                "pool": str(replay.pool),
                "test": str(replay.test),
                "pool_tiles": len(replay.pool_ids),
                "test_tiles": replay.test_tiles,
            },
        )
        replay.adapt()
        replay.start()
        if config.finetune.replay_targets == "model" and config.finetune.replay_ratio > 0:
            from rscrisis.loop.finetune import distilled_sets, model_targets, replay_sources_of
            from rscrisis.ml.data import present_pretraining_tilesets

            # made once here, before the workers start, rather than raced for by them
            meta = read_meta(replay.start_model)
            model_targets(
                replay.start_model,
                distilled_sets(
                    replay_sources_of(meta, config.finetune, []),
                    present_pretraining_tilesets(meta.training),
                ),
                replay_targets_cache(out),
                config.finetune.threads,
            )
        if config.workers > 1:
            replay.run_in_parallel(config.workers)
        else:
            for seed in config.seeds:
                replay.run_seed(seed)
        return replay.finish()


def with_shared_rounds(rows: list[dict], config: SimulateConfig) -> list[dict]:
    """Curves per formula and seed start at the starting model (0 labelled tiles) and the
    shared seed batch (round 0); the ceiling rows follow."""
    out = []
    start = [r for r in rows if r["formula"] == START]
    seed_rows = {r["seed"]: r for r in rows if r["formula"] == SEED_FORMULA}
    for f in config.formulas:
        for s in config.seeds:
            if start:
                out.append({**start[0], "seed": s, "formula": f})
            if s in seed_rows:
                out.append({**seed_rows[s], "formula": f})
            out.extend(r for r in rows if r["formula"] == f and r["seed"] == s)
    out.extend({**start[0], "seed": s} for s in config.seeds if start)
    out.extend(r for r in rows if r["formula"] == CEILING)
    return out


def read_index_ids(root: Path) -> list[str]:
    from rscrisis.io.tileset import read_index

    return list(read_index(root).tile_id)
