"""Segmentation metrics: pixel scores, per-tile IoU, object F1, predicted-IoU calibration.

Conventions (also documented in the README):

* Masks use 1 building, 0 background, 255 ignore. Ignore pixels count nowhere: not in
  intersections, unions, true/false positives, nor in the predicted-IoU target.
* **Per-tile IoU** of a prediction is ``|pred AND truth| / |pred OR truth|`` over valid pixels.
  When
  both are empty (no building, none predicted) the prediction is perfect and the IoU is **1.0**;
  when a tile has no valid pixel its IoU is undefined (NaN) and it is left out of averages and of
  the IoU-head loss.
* **Pixel scores** (IoU, F1, precision, recall) pool the confusion counts of all tiles, so large
  buildings weigh by area, as in most building benchmarks.
* **Object F1** (SpaceNet style): connected components of the predicted and true masks become
  polygons; a prediction is a true positive when its IoU with a not-yet-matched true polygon is
  at least 0.5 (greedy matching, highest IoU first).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rscrisis.io.tileset import MASK_IGNORE

#: the IoU of an empty prediction of an empty truth: right, so 1 (the one definition; the torch
#: side is :func:`rscrisis.ml.model.iou_or_empty`)
EMPTY_IOU = 1.0


@dataclass
class Confusion:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __iadd__(self, other: Confusion) -> Confusion:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn
        return self

    def scores(self) -> dict[str, float]:
        return pixel_scores(self.tp, self.fp, self.fn)


def confusion(pred: np.ndarray, truth: np.ndarray) -> Confusion:
    """Confusion counts of a boolean prediction against a 0/1/255 mask, ignoring 255."""
    valid = truth != MASK_IGNORE
    t = (truth == 1) & valid
    p = pred.astype(bool) & valid
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    tn = int(np.count_nonzero(valid)) - tp - fp - fn
    return Confusion(tp, fp, fn, tn)


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num / den) if den > 0 else empty


def pixel_scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    """IoU, F1, precision, recall; an empty prediction of an empty truth scores 1."""
    return {
        "iou": _ratio(tp, tp + fp + fn, EMPTY_IOU),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "precision": _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0),
        "recall": _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0),
    }


def tile_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Per-tile IoU with the conventions above (1.0 when both empty, NaN when all ignored)."""
    valid = truth != MASK_IGNORE
    if not valid.any():
        return float("nan")
    c = confusion(pred, truth)
    return _ratio(c.tp, c.tp + c.fp + c.fn, EMPTY_IOU)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``, ties averaged) of the finite
    pairs; NaN with fewer than 3 pairs or no spread on either side."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b)[0])


def calibration(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """How well predicted per-tile IoU tracks the true one: Spearman rho and MAE."""
    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    keep = np.isfinite(predicted) & np.isfinite(actual)
    mae = float(np.abs(predicted[keep] - actual[keep]).mean()) if keep.any() else float("nan")
    return {"spearman": spearman(predicted, actual), "mae": mae, "tiles": int(keep.sum())}


def mask_to_polygons(mask: np.ndarray, transform=None, min_area_px: int = 16) -> list:
    """Polygons of the connected components of a boolean mask (pixel or map coordinates)."""
    from affine import Affine
    from rasterio.features import shapes
    from shapely.geometry import shape

    transform = transform or Affine.identity()
    mask = mask.astype(np.uint8)
    px_area = abs(transform.a * transform.e - transform.b * transform.d)
    polys = []
    for geom, value in shapes(mask, mask=mask.astype(bool), transform=transform, connectivity=4):
        if value != 1:
            continue
        poly = shape(geom)
        if poly.area >= min_area_px * px_area:
            polys.append(poly)
    return polys


@dataclass
class ObjectCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __iadd__(self, other: ObjectCounts) -> ObjectCounts:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    def scores(self) -> dict[str, float]:
        rates = pixel_scores(self.tp, self.fp, self.fn)
        return {**asdict(self), **{k: rates[k] for k in ("precision", "recall", "f1")}}


def match_objects(predicted: list, truth: list, iou_threshold: float = 0.5) -> ObjectCounts:
    """Greedy one-to-one matching of polygons by IoU, highest first (SpaceNet style)."""
    import shapely

    if not predicted or not truth:
        return ObjectCounts(0, len(predicted), len(truth))
    tree = shapely.STRtree(truth)
    pairs = []
    for i, p in enumerate(predicted):
        for j in tree.query(p, predicate="intersects"):
            t = truth[j]
            inter = p.intersection(t).area
            union = p.area + t.area - inter
            iou = inter / union if union > 0 else 0.0
            if iou >= iou_threshold:
                pairs.append((iou, i, int(j)))
    pairs.sort(reverse=True)
    used_p, used_t = set(), set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    tp = len(used_p)
    return ObjectCounts(tp, len(predicted) - tp, len(truth) - tp)


def object_counts(
    pred: np.ndarray, truth: np.ndarray, min_area_px: int = 16, iou_threshold: float = 0.5
) -> ObjectCounts:
    """Object matching of a predicted boolean mask against a 0/1/255 mask (ignore excluded)."""
    valid = truth != MASK_IGNORE
    return match_objects(
        mask_to_polygons(pred.astype(bool) & valid, min_area_px=min_area_px),
        mask_to_polygons(truth == 1, min_area_px=min_area_px),
        iou_threshold,
    )
