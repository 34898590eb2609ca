"""Priority formulas and batch selection on hand-made prediction statistics."""

import numpy as np
import pandas as pd
import pytest
from shapely.geometry import box

from rscrisis.loop.ranking import FORMULAS, REQUIRED, Spacing, kmeans, order, priority, select

IDS = np.array(["t0", "t1", "t2", "t3"])
STATS = pd.DataFrame(
    {
        "tile_id": IDS,
        "mean_entropy": [0.10, 0.80, 0.40, 0.80],
        "pred_iou": [0.20, 0.90, 0.30, 0.50],
        "mean_margin": [0.90, 0.20, 0.60, 0.30],
        "soft_iou": [0.70, 0.60, 0.10, 0.90],
        "bald": [0.01, 0.02, 0.30, 0.05],
    }
)


def _ranked(formula: str) -> list[str]:
    score, _ = priority(formula, STATS)
    return list(IDS[order(score, IDS)])


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("entropy", ["t1", "t3", "t2", "t0"]),  # tie t1/t3 broken by tile id
        ("margin", ["t1", "t3", "t2", "t0"]),
        ("iou", ["t0", "t2", "t3", "t1"]),
        ("soft-iou", ["t2", "t1", "t0", "t3"]),
        ("bald", ["t2", "t3", "t1", "t0"]),
        # H/max(H) x (1 - pred_iou): t0 .125*.8=.1, t1 1*.1=.1, t2 .5*.7=.35, t3 1*.5=.5
        ("entropy-iou", ["t3", "t2", "t0", "t1"]),
    ],
)
def test_each_formula_orders_a_known_case(formula, expected):
    assert _ranked(formula) == expected


def test_entropy_iou_components_are_reported_and_exact():
    score, parts = priority("entropy-iou", STATS)
    np.testing.assert_allclose(parts["entropy_norm"], [0.125, 1.0, 0.5, 1.0])
    np.testing.assert_allclose(parts["expected_error"], [0.8, 0.1, 0.7, 0.5])
    np.testing.assert_allclose(score, parts["entropy_norm"] * parts["expected_error"])


def test_every_formula_is_documented_and_declares_its_columns():
    assert set(FORMULAS) == set(REQUIRED)
    for formula in FORMULAS:
        assert set(REQUIRED[formula]) <= set(STATS.columns)


def test_random_is_seeded():
    a, _ = priority("random", STATS, seed=1)
    b, _ = priority("random", STATS, seed=1)
    c, _ = priority("random", STATS, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _grid(n: int):
    """n x n adjacent 10 m squares, row-major."""
    return np.array(
        [box(c * 10, -(r + 1) * 10, (c + 1) * 10, -r * 10) for r in range(n) for c in range(n)],
        dtype=object,
    )


def test_spacing_keeps_a_batch_off_one_block():
    geoms = _grid(4)
    ids = np.array([f"t{i:02d}" for i in range(16)])
    score = np.zeros(16)
    score[[0, 1, 4, 5]] = [4, 3, 2, 1]  # the best four form one 2x2 block
    chosen = select(score, ids, 3, spacing=Spacing(geoms, 0.0))
    assert chosen[0] == 0
    for i in chosen:
        for j in chosen:
            if i != j:
                assert not geoms[i].intersects(geoms[j])
    free = select(score, ids, 3)
    assert free == [0, 1, 4]


def test_spacing_gap_in_crs_units():
    geoms = _grid(5)
    ids = np.array([f"t{i:02d}" for i in range(25)])
    score = np.linspace(1, 0, 25)
    chosen = select(score, ids, 10, spacing=Spacing(geoms, 15.0))
    for i in chosen:
        for j in chosen:
            if i != j:
                assert geoms[i].distance(geoms[j]) > 15.0
    assert len(chosen) < 10  # the area is too small for 10 tiles this far apart


def _clustered(seed=0):
    """30 tiles in 3 tight embedding clusters; the top 10 scores all lie in cluster 0."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3) * 10
    emb = np.concatenate([c + rng.normal(0, 0.1, (10, 3)) for c in centres])
    score = np.concatenate(
        [np.linspace(1.0, 0.9, 10), np.linspace(0.5, 0.4, 10), np.linspace(0.3, 0.2, 10)]
    )
    ids = np.array([f"t{i:02d}" for i in range(30)])
    return emb, score, ids


@pytest.mark.parametrize("mode", ["coreset", "cluster"])
def test_diversity_spreads_over_embedding_clusters(mode):
    emb, score, ids = _clustered()
    plain = select(score, ids, 3)
    assert all(i < 10 for i in plain)  # without diversity: three near-duplicates
    chosen = select(score, ids, 3, diversity=mode, embeddings=emb, pool_factor=10)
    assert len(set(chosen)) == 3
    assert sorted(i // 10 for i in chosen) == [0, 1, 2]
    assert chosen[0] == 0  # the best tile is always in
    assert chosen == sorted(chosen, key=lambda i: -score[i])  # rank order


@pytest.mark.parametrize("mode", ["none", "coreset", "cluster"])
def test_selection_never_repeats_and_is_deterministic(mode):
    emb, score, ids = _clustered(1)
    score = np.round(score, 1)  # many ties
    a = select(score, ids, 12, diversity=mode, embeddings=emb, seed=3)
    b = select(score, ids, 12, diversity=mode, embeddings=emb, seed=3)
    assert a == b and len(set(a)) == len(a) == 12


def test_kmeans_finds_separated_clusters():
    emb, _, _ = _clustered()
    labels = kmeans(emb, 3, seed=0)
    assert len(set(labels)) == 3
    assert all(len(set(labels[k * 10 : (k + 1) * 10])) == 1 for k in range(3))


def test_iou_formulas_use_the_calibrated_iou_when_the_prediction_set_has_it():
    """A blank prediction on an empty field (calibrated IoU high) is not annotated first."""
    stats = STATS.assign(calibrated_iou=[0.95, 0.90, 0.30, 0.50])  # t0: a blank empty field
    score, parts = priority("iou", stats)
    assert list(IDS[order(score, IDS)]) == ["t2", "t3", "t1", "t0"]
    score, parts = priority("entropy-iou", stats)
    assert parts["expected_error"] == pytest.approx([0.05, 0.10, 0.70, 0.50])
    assert IDS[order(score, IDS)][0] == "t3"


def test_the_default_passes_over_dense_tiles_the_model_already_gets_right():
    """Why rank's default is entropy-iou (README, annotation benchmark run 5): on Banepa, mean
    entropy was highest on dense blocks full of building edges that the model already
    segmented well, so ``entropy`` tied random. The default asks for an expected poor mask too."""
    from rscrisis.config import RankConfig

    stats = pd.DataFrame(
        {
            "tile_id": ["dense-right", "sparse-wrong", "field"],
            "mean_entropy": [0.80, 0.55, 0.05],
            "pred_iou": [0.85, 0.25, 0.02],
            "calibrated_iou": [0.85, 0.25, 0.60],
        }
    )
    ids = stats.tile_id.to_numpy()
    default, _ = priority(RankConfig().formula, stats)
    entropy, _ = priority("entropy", stats)
    assert list(ids[order(default, ids)]) == ["sparse-wrong", "dense-right", "field"]
    assert ids[order(entropy, ids)][0] == "dense-right"
