"""Predicted IoU that holds in a new area: a light calibrator refitted on every corrected tile.

Why: the IoU head is trained on the pretraining area. In a new area it can lose its ranking,
and it always does on *blank* tiles (no pixel above the threshold): a blank prediction is
perfect on a truly empty tile (true IoU 1 by convention, rscrisis.ml.metrics) and worthless on a
tile whose buildings the model missed (true IoU 0), yet the head and ``soft_iou`` score both
near 0. ``1 - pred_iou`` then sends annotators to empty fields first, and the more tiles the
model gets right as empty, the more negative the head's rank correlation becomes.

Which of the two a blank tile is cannot be read off the model's own probabilities: on the
fAIr towns the Banepa model left 24 tiles blank, 19 of them full of tin roofs it missed, with
the same peak probabilities (0.2 to 0.45) as the 5 empty ones (README, "Does predicted IoU
transfer?"). A first version that trusted a low peak as "empty" lowered the head's rank
correlation there from 0.68 to 0.53. What can tell them apart is the agreement of the 8
flips/rotations (``tta_agreement``, ``predict`` computes it by default): on a blank tile it is
the share of the views that also see nothing, 1 on the empty fields and lower where some view
finds the roofs the merged map missed. It is also the better estimate on tiles with a
prediction: across domains, after the first round of the default chain, Spearman rho on the
unlabelled pool is 0.59 for the agreement against 0.50 for the calibrated head (10 seeds,
higher in 9; README, run 6). So the calibrator starts from an *estimate*: the agreement where
the prediction set has it, the IoU head where not, and learns the rest from labels:

* **blank tiles**: the expected IoU is the probability that the blank tile is truly empty,
  ``(n_empty + k x e) / (n_blank + k)`` over the corrected tiles that were blank, where ``e``
  is the tile's estimate and ``k`` = :data:`BLANK_PRIOR_WEIGHT` pseudo-samples of it. Without
  blank samples this is the estimate itself: near 0 from the head (a blank is wrong), the
  share of blank views from the agreement. After a round in a town of empty fields it rises;
  after one of missed roofs it falls. ``p_buildings = 1 -`` that.
* **tiles with a prediction**: the estimate, mapped linearly (``a + b x e``, one map for the
  head and one for the agreement, each shrunk towards the identity by
  :data:`IOU_PRIOR_WEIGHT` pseudo-samples, clipped to [0, 1]). The map is monotone, so it
  corrects the estimate's level in the new area without reordering it.

Every corrected tile gives one sample: the statistics of the model that made the batch on that
tile, and the true IoU of its prediction against the correction. ``finetune`` measures them on
the new labels *before* training (out of sample), adds them to those of earlier rounds, refits
and stores the calibrator in the new model's metadata; ``predict`` applies it
(``calibrated_iou``, ``p_buildings`` in scores.gpkg) and ``rank`` uses it.

Plain numpy (a count and a 2-parameter ridge fit): scikit-learn is not a dependency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

#: statistics a sample needs, each a per-tile column of a prediction set (rscrisis.predict.tiles)
FEATURES = ("pred_iou", "max_prob", "mean_prob", "building_fraction")
#: the estimate preferred where a prediction set has it (predicted with the 8 views)
AGREEMENT = "tta_agreement"
#: what a sample holds (AGREEMENT only where the prediction had the 8 views)
SAMPLE_KEYS = ("tile_id", *FEATURES, AGREEMENT, "true_iou", "has_buildings")
#: pseudo-samples of the prior (the tile's own estimate) for blank tiles
BLANK_PRIOR_WEIGHT = 2.0
#: pseudo-samples of the prior (identity map) in the IoU fit of tiles with a prediction
IOU_PRIOR_WEIGHT = 4.0
#: samples kept in a model's metadata (oldest dropped first)
MAX_SAMPLES = 2000


@dataclass
class IoUCalibrator:
    """The fitted maps (see module docstring); the defaults are the prior (the estimate)."""

    threshold: float = 0.5
    blank_samples: int = 0
    blank_empty: int = 0
    iou_map: tuple[float, float] = (0.0, 1.0)  # a + b x pred_iou, tiles with a prediction
    agreement_map: tuple[float, float] = (0.0, 1.0)  # a + b x tta_agreement, the same tiles
    samples: int = 0
    agreement_samples: int = 0  # samples with an agreement (predicted with the 8 views)
    fitted_on: dict = field(default_factory=dict)

    @property
    def p_empty_blank(self) -> float:
        """The labels' share of the blank-tile estimate: P(empty | blank) for an estimate of 0."""
        return self.blank_empty / (self.blank_samples + BLANK_PRIOR_WEIGHT)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["iou_map"] = list(self.iou_map)
        d["agreement_map"] = list(self.agreement_map)
        d["p_empty_blank"] = round(self.p_empty_blank, 6)
        return d

    @classmethod
    def from_dict(cls, d: dict | None, threshold: float = 0.5) -> IoUCalibrator:
        if not d:
            return cls(threshold=threshold)
        a, b = d.get("iou_map", (0.0, 1.0))
        c, e = d.get("agreement_map", (0.0, 1.0))
        return cls(
            threshold=float(d.get("threshold", threshold)),
            blank_samples=int(d.get("blank_samples", 0)),
            blank_empty=int(d.get("blank_empty", 0)),
            iou_map=(float(a), float(b)),
            agreement_map=(float(c), float(e)),
            samples=int(d.get("samples", 0)),
            agreement_samples=int(d.get("agreement_samples", 0)),
            fitted_on=dict(d.get("fitted_on", {})),
        )

    def iou_given_prediction(self, estimate: np.ndarray, agreement: bool = False) -> np.ndarray:
        a, b = self.agreement_map if agreement else self.iou_map
        return np.clip(a + b * np.asarray(estimate, np.float64), 0.0, 1.0)

    def apply(self, stats: dict) -> dict[str, np.ndarray]:
        """``{"p_buildings", "calibrated_iou"}`` per tile from columns named as FEATURES (and
        AGREEMENT, used instead of the head where every tile has one)."""
        blank = np.asarray(stats["building_fraction"], np.float64) <= 0
        agreement = stats.get(AGREEMENT)
        use = agreement is not None and bool(np.isfinite(np.asarray(agreement, float)).all())
        estimate = np.clip(np.asarray(agreement if use else stats["pred_iou"], np.float64), 0, 1)
        k = BLANK_PRIOR_WEIGHT
        # a blank tile: IoU 1 if it is truly empty (else 0): the estimate, updated by labels
        empty = (self.blank_empty + k * estimate) / (self.blank_samples + k)
        iou = np.where(blank, empty, self.iou_given_prediction(estimate, agreement=use))
        return {"p_buildings": np.where(blank, 1.0 - empty, 1.0), "calibrated_iou": iou}


def _ridge_to_identity(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) minimising sum (y - a - b x)^2 + k (a^2 + (b - 1)^2), b >= 0 (never reversed)."""
    k = IOU_PRIOR_WEIGHT
    a_mat = np.array([[len(x) + k, x.sum()], [x.sum(), (x * x).sum() + k]])
    rhs = np.array([y.sum(), (x * y).sum() + k])
    a, b = np.linalg.solve(a_mat, rhs)
    return float(a), float(max(b, 0.0))


def fit(samples: list[dict], threshold: float = 0.5) -> IoUCalibrator:
    """Fit from samples: dicts with FEATURES, ``true_iou`` and ``has_buildings`` (truth)."""
    rows = [
        s
        for s in samples
        if all(np.isfinite(float(s.get(k, np.nan))) for k in (*FEATURES, "true_iou"))
    ]
    cal = IoUCalibrator(threshold=threshold, samples=len(rows))
    if not rows:
        return cal
    col = {k: np.array([float(r[k]) for r in rows]) for k in (*FEATURES, "true_iou")}
    has = np.array([bool(r["has_buildings"]) for r in rows])
    blank = col["building_fraction"] <= 0
    cal.blank_samples = int(blank.sum())
    cal.blank_empty = int((blank & ~has).sum())
    if (~blank).any():
        cal.iou_map = _ridge_to_identity(col["pred_iou"][~blank], col["true_iou"][~blank])
    agreement = np.array([float(r.get(AGREEMENT, np.nan)) for r in rows])
    with_agreement = ~blank & np.isfinite(agreement)
    cal.agreement_samples = int(np.isfinite(agreement).sum())
    if with_agreement.any():
        x = agreement[with_agreement]
        cal.agreement_map = _ridge_to_identity(x, col["true_iou"][with_agreement])
    return cal


def merge_samples(earlier: list[dict], new: list[dict]) -> list[dict]:
    """Earlier samples plus new ones; a tile measured again keeps its newest sample."""
    ids = {s.get("tile_id") for s in new}
    kept = [s for s in earlier if s.get("tile_id") not in ids]
    return (kept + list(new))[-MAX_SAMPLES:]


def rank_correlations(pred: np.ndarray, true: np.ndarray, has: np.ndarray) -> dict[str, float]:
    """Spearman rho of ``pred`` against ``true`` on all tiles and on tiles holding buildings."""
    from rscrisis.ml.metrics import calibration

    has = np.asarray(has, bool)
    return {
        "all": calibration(np.asarray(pred), np.asarray(true))["spearman"],
        "with_buildings": calibration(np.asarray(pred)[has], np.asarray(true)[has])["spearman"]
        if has.sum() >= 3
        else float("nan"),
    }
