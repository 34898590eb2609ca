"""Predicted IoU that holds in a new area: a light calibrator refitted on every corrected tile.

Why: the IoU head is trained on the pretraining area. In a new area it can lose its ranking,
and it always does on *blank* tiles (no pixel above the threshold): a blank prediction is
perfect on a truly empty tile (true IoU 1 by convention, rscrisis.metrics) and worthless on a
tile whose buildings the model missed (true IoU 0), yet the head and ``soft_iou`` score both
near 0. ``1 - pred_iou`` then sends annotators to empty fields first, and the more tiles the
model gets right as empty, the more negative the head's rank correlation becomes.

So the expected IoU is split in two, each estimated separately:

* ``p_buildings``: the probability that the tile holds any building at all, from the model's
  highest probability on the tile and its mean probability (a logistic regression);
* the IoU to expect *given* that the tile holds buildings, from the IoU head (a linear map,
  shrunk towards the identity).

and combined with the IoU conventions: a blank prediction scores ``1 - p_buildings`` (right
when the tile is empty, IoU 0 when it is not); a non-blank one scores
``p_buildings x iou_given_buildings`` (a prediction on an empty tile has IoU 0).

Every corrected tile gives one sample: the statistics of the model that made the batch on that
tile, and the true IoU of its prediction against the correction. ``finetune`` measures them on
the new labels *before* training (out of sample), adds them to those of earlier rounds, refits
and stores the calibrator in the new model's metadata; ``predict`` applies it
(``calibrated_iou``, ``p_buildings`` in scores.gpkg) and ``rank`` uses it. Without samples the
calibrator is a prior: non-blank tiles keep the head's value; blank tiles get
``p_buildings = max_prob / threshold``.

Plain numpy (a 3-parameter logistic regression by Newton's method and a 2-parameter ridge
fit): scikit-learn is not a dependency, and these fits are a few lines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

#: statistics a sample needs, each a per-tile column of a prediction set (rscrisis.inference)
FEATURES = ("pred_iou", "max_prob", "mean_prob", "building_fraction")
#: a fitted occupancy model needs this many samples, with both classes present
MIN_OCCUPANCY_SAMPLES = 4
#: pseudo-samples of the prior (identity map) in the IoU-given-buildings fit
IOU_PRIOR_WEIGHT = 4.0
#: L2 penalty of the occupancy logistic regression (on standardised features)
OCCUPANCY_L2 = 0.5
#: samples kept in a model's metadata (oldest dropped first)
MAX_SAMPLES = 2000


def _occupancy_features(max_prob: np.ndarray, mean_prob: np.ndarray) -> np.ndarray:
    """(n, 3): bias, logit of the highest probability, log10 of the mean probability; scaled
    to unit order so one L2 penalty fits both."""
    mp = np.clip(np.asarray(max_prob, np.float64), 1e-4, 1 - 1e-4)
    mean = np.clip(np.asarray(mean_prob, np.float64), 1e-6, 1.0)
    return np.stack(
        [np.ones_like(mp), np.log(mp / (1 - mp)) / 4.0, (np.log10(mean) + 3.0) / 2.0], axis=1
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 50) -> np.ndarray:
    """Penalised logistic regression (Newton-Raphson): weights of ``x`` (n, d) for ``y`` in
    {0, 1}; the penalty keeps it finite when the classes separate, as they do on few tiles."""
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


@dataclass
class IoUCalibrator:
    """The fitted maps (see module docstring); ``occupancy`` None = the prior is used."""

    threshold: float = 0.5
    occupancy: list[float] | None = None  # logistic weights on _occupancy_features
    iou_map: tuple[float, float] = (0.0, 1.0)  # a + b x pred_iou, given buildings
    samples: int = 0
    occupied_samples: int = 0
    fitted_on: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["iou_map"] = list(self.iou_map)
        return d

    @classmethod
    def from_dict(cls, d: dict | None, threshold: float = 0.5) -> IoUCalibrator:
        if not d:
            return cls(threshold=threshold)
        occ = d.get("occupancy")
        a, b = d.get("iou_map", (0.0, 1.0))
        return cls(
            threshold=float(d.get("threshold", threshold)),
            occupancy=None if occ is None else [float(v) for v in occ][:3],
            iou_map=(float(a), float(b)),
            samples=int(d.get("samples", 0)),
            occupied_samples=int(d.get("occupied_samples", 0)),
            fitted_on=dict(d.get("fitted_on", {})),
        )

    def p_buildings(self, max_prob: np.ndarray, mean_prob: np.ndarray) -> np.ndarray:
        max_prob = np.asarray(max_prob, np.float64)
        if self.occupancy is None:
            prior = np.clip(max_prob / self.threshold, 0.0, 1.0)
            return np.where(max_prob > self.threshold, 1.0, prior)
        return _sigmoid(_occupancy_features(max_prob, mean_prob) @ np.asarray(self.occupancy))

    def iou_given_buildings(self, pred_iou: np.ndarray) -> np.ndarray:
        a, b = self.iou_map
        return np.clip(a + b * np.asarray(pred_iou, np.float64), 0.0, 1.0)

    def apply(self, stats: dict) -> dict[str, np.ndarray]:
        """``{"p_buildings", "calibrated_iou"}`` per tile from columns named as FEATURES."""
        p = self.p_buildings(stats["max_prob"], stats["mean_prob"])
        blank = np.asarray(stats["building_fraction"], np.float64) <= 0
        iou = np.where(blank, 1.0 - p, p * self.iou_given_buildings(stats["pred_iou"]))
        return {"p_buildings": p, "calibrated_iou": iou}


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
    cal.occupied_samples = int(has.sum())
    if len(rows) >= MIN_OCCUPANCY_SAMPLES and 0 < has.sum() < len(has):
        x = _occupancy_features(col["max_prob"], col["mean_prob"])
        cal.occupancy = [float(v) for v in _logistic(x, has.astype(float), OCCUPANCY_L2)]
    # IoU given buildings: only tiles that hold buildings and where something was predicted
    keep = has & (col["building_fraction"] > 0)
    if keep.any():
        x, y = col["pred_iou"][keep], col["true_iou"][keep]
        k = IOU_PRIOR_WEIGHT
        # ridge towards the identity: minimise sum (y - a - b x)^2 + k (a^2 + (b - 1)^2)
        a_mat = np.array([[len(x) + k, x.sum()], [x.sum(), (x * x).sum() + k]])
        rhs = np.array([y.sum(), (x * y).sum() + k])
        a, b = np.linalg.solve(a_mat, rhs)
        cal.iou_map = (float(a), float(b))
    return cal


def merge_samples(earlier: list[dict], new: list[dict]) -> list[dict]:
    """Earlier samples plus new ones; a tile measured again keeps its newest sample."""
    ids = {s.get("tile_id") for s in new}
    kept = [s for s in earlier if s.get("tile_id") not in ids]
    return (kept + list(new))[-MAX_SAMPLES:]


def rank_correlations(pred: np.ndarray, true: np.ndarray, has: np.ndarray) -> dict[str, float]:
    """Spearman rho of ``pred`` against ``true`` on all tiles and on tiles holding buildings."""
    from rscrisis.metrics import calibration

    has = np.asarray(has, bool)
    return {
        "all": calibration(np.asarray(pred), np.asarray(true))["spearman"],
        "with_buildings": calibration(np.asarray(pred)[has], np.asarray(true)[has])["spearman"]
        if has.sum() >= 3
        else float("nan"),
    }
