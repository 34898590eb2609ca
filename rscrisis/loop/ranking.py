"""Priority formulas and batch selection for ``rscrisis rank``.

A formula turns the per-tile statistics of a prediction set into a priority (higher = annotate
first). Each is defined here once; ``rscrisis rank --help`` and the README print these
definitions. All statistics are over valid pixels (see rscrisis.predict.tiles).

Selection then takes the top K, optionally *diverse*: near-duplicate tiles (same roofs, same
lighting) teach the model the same thing twice, so ``coreset`` (greedy k-center on the stored
embeddings) and ``cluster`` (k-means, best tile per cluster) spread a batch over what the model
sees as different. Whatever the diversity mode, a spatial rule keeps chosen tiles apart on the
ground (``spacing``), so a batch is never K neighbouring tiles of one block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FORMULAS: dict[str, str] = {
    "entropy-iou": "H / max(H) x (1 - calibrated_iou): uncertain AND probably wrong (default)",
    "entropy": "H = mean binary entropy of the probabilities (bits)",
    "margin": "1 - mean |2p - 1|: probabilities close to the threshold",
    "iou": "1 - calibrated_iou: the (calibrated) IoU head expects a poor prediction",
    "soft-iou": "1 - soft_iou: training-free expected error (no IoU head needed)",
    "bald": "mutual information by MC dropout (needs predict --mc-samples)",
    "random": "uniform random, seeded: the baseline every formula must beat",
}
DIVERSITY = ("none", "coreset", "cluster")
REQUIRED = {
    "entropy-iou": ("mean_entropy", "pred_iou"),
    "entropy": ("mean_entropy",),
    "margin": ("mean_margin",),
    "iou": ("pred_iou",),
    "soft-iou": ("soft_iou",),
    "bald": ("bald",),
    "random": (),
}


def priority(formula: str, scores, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(priority per row, its named components) of ``scores`` (a DataFrame of tile stats).

    ``entropy-iou`` multiplies normalised uncertainty by expected error: a tile ranks high only
    if the model is unsure of its pixels *and* its IoU head expects a poor mask. Entropy alone
    favours tiles full of building edges that the model already segments well; 1 - IoU alone
    favours tiles the model gets confidently wrong (shadows, a different roof type), which one
    round rarely fixes. The product keeps the errors the model can learn from. Entropy is
    divided by its maximum over the candidates so the score does not depend on the scene's
    overall contrast.
    """
    n = len(scores)
    if formula == "random":
        rand = np.random.default_rng(seed).random(n)
        return rand, {"random": rand}
    col = {k: scores[k].to_numpy(dtype=np.float64) for k in REQUIRED[formula]}
    if "pred_iou" in col and "calibrated_iou" in scores:
        # the head's value recalibrated on corrected tiles, blank predictions handled
        # (rscrisis.ml.calibration); older prediction sets have only pred_iou
        col["pred_iou"] = scores["calibrated_iou"].to_numpy(dtype=np.float64)
    if formula == "entropy-iou":
        h = col["mean_entropy"]
        h_norm = h / h.max() if n and h.max() > 0 else np.zeros_like(h)
        err = 1.0 - col["pred_iou"]
        return h_norm * err, {"entropy_norm": h_norm, "expected_error": err}
    if formula == "entropy":
        return col["mean_entropy"], {}
    if formula == "margin":
        return 1.0 - col["mean_margin"], {}
    if formula == "iou":
        return 1.0 - col["pred_iou"], {}
    if formula == "soft-iou":
        return 1.0 - col["soft_iou"], {}
    if formula == "bald":
        return col["bald"], {}
    raise ValueError(f"unknown formula {formula!r}")


def order(score: np.ndarray, tile_ids: np.ndarray) -> np.ndarray:
    """Indices by descending score; ties broken by tile id, so ranks are deterministic."""
    return np.lexsort((tile_ids, -np.nan_to_num(score, nan=-np.inf)))


@dataclass
class Spacing:
    """Rejects a candidate whose footprint lies within ``gap`` of an already chosen one."""

    geometries: np.ndarray  # shapely geometries, one per row
    gap: float  # CRS units; 0 = footprints must not touch

    @classmethod
    def from_frame(cls, frame, metres: float) -> Spacing:
        """A rule over a GeoDataFrame's footprints, the gap given on the ground in metres."""
        from rscrisis.io.raster import crs_units_per_metre

        geoms = np.asarray(frame.geometry.values, dtype=object)
        gap = 0.0
        if metres > 0 and len(geoms):
            c = geoms[0].centroid
            gap = metres * max(crs_units_per_metre(frame.crs, c.x, c.y))
        return cls(geoms, gap)

    def __post_init__(self) -> None:
        import shapely

        self._tree = shapely.STRtree(self.geometries)
        self._blocked = np.zeros(len(self.geometries), bool)

    def allowed(self, i: int) -> bool:
        return not self._blocked[i]

    def take(self, i: int) -> None:
        geom = self.geometries[i]
        near = (
            self._tree.query(geom, predicate="dwithin", distance=self.gap)
            if self.gap > 0
            else (self._tree.query(geom, predicate="intersects"))
        )
        self._blocked[near] = True


def _unit(emb: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.maximum(norm, 1e-12)


def select(
    score: np.ndarray,
    tile_ids: np.ndarray,
    k: int,
    *,
    diversity: str = "none",
    embeddings: np.ndarray | None = None,
    spacing: Spacing | None = None,
    pool_factor: int = 5,
    seed: int = 0,
) -> list[int]:
    """Indices of the chosen tiles, in rank order (see module docstring).

    ``coreset`` and ``cluster`` choose among the top ``pool_factor`` x K candidates by score, so
    diversity never trades the priority away entirely.
    """
    ranked = order(score, tile_ids)
    allowed: Callable[[int], bool] = spacing.allowed if spacing else (lambda i: True)
    if diversity == "none" or embeddings is None or k <= 1:
        chosen: list = []
        for i in ranked:
            if len(chosen) == k:
                break
            if allowed(i):
                chosen.append(int(i))
                if spacing:
                    spacing.take(i)
        return chosen
    pool = [int(i) for i in ranked[: max(k * pool_factor, k)]]
    emb = _unit(np.asarray(embeddings, np.float64)[pool])
    if diversity == "coreset":
        picked = _k_center(pool, emb, score, k, allowed, spacing)
    elif diversity == "cluster":
        picked = _cluster(pool, emb, score, k, allowed, spacing, seed)
    else:
        raise ValueError(f"unknown diversity {diversity!r}")
    if len(picked) < k:  # pool exhausted by the spacing rule: fill from the rest by score
        for i in ranked:
            if len(picked) == k:
                break
            if int(i) not in picked and allowed(i):
                picked.append(int(i))
                if spacing:
                    spacing.take(i)
    return sorted(picked, key=lambda i: (-score[i], tile_ids[i]))


def _k_center(pool, emb, score, k, allowed, spacing) -> list[int]:
    """Greedy k-center: start at the best tile, then repeatedly the candidate farthest (in
    embedding space) from everything chosen; score breaks ties."""
    chosen: list[int] = []
    dist = np.full(len(pool), np.inf)
    for _ in range(k):
        best, best_key = -1, None
        for j, i in enumerate(pool):
            if i in chosen or not allowed(i):
                continue
            key = (dist[j], score[i])
            if best_key is None or key > best_key:
                best, best_key = j, key
        if best < 0:
            break
        chosen.append(pool[best])
        if spacing:
            spacing.take(pool[best])
        dist = np.minimum(dist, np.linalg.norm(emb - emb[best], axis=1))
    return chosen


def _cluster(pool, emb, score, k, allowed, spacing, seed) -> list[int]:
    """k-means (k-means++ seeding) over the pool; the best-scoring allowed tile per cluster,
    clusters visited from the one holding the best tile down."""
    labels = kmeans(emb, min(k, len(pool)), seed)
    chosen: list[int] = []
    clusters: dict[int, list[int]] = {}
    for j in np.argsort([-score[i] for i in pool], kind="stable"):
        clusters.setdefault(int(labels[j]), []).append(pool[j])
    for members in clusters.values():  # insertion order: by each cluster's best score
        for i in members:
            if allowed(i):
                chosen.append(i)
                if spacing:
                    spacing.take(i)
                break
        if len(chosen) == k:
            break
    return chosen


def kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 50) -> np.ndarray:
    """Cluster labels of the rows of ``x``: ``scipy.cluster.vq.kmeans2`` with k-means++ seeding,
    seeded so a batch is reproducible."""
    import warnings

    from scipy.cluster.vq import kmeans2

    n = len(x)
    if k >= n:
        return np.arange(n)
    with warnings.catch_warnings():  # an empty cluster is fine here: its tiles go elsewhere
        warnings.simplefilter("ignore")
        _, labels = kmeans2(np.asarray(x, np.float64), k, iter=iterations, minit="++", seed=seed)
    return labels.astype(int)
