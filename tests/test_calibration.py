"""The IoU calibrator: blank predictions told apart, fits that stay finite on a few tiles."""

import numpy as np
import pytest

from rscrisis.calibration import IoUCalibrator, fit, merge_samples, rank_correlations


def _sample(tile, pred_iou, max_prob, mean_prob, frac, true_iou, has):
    return {
        "tile_id": tile,
        "pred_iou": pred_iou,
        "max_prob": max_prob,
        "mean_prob": mean_prob,
        "building_fraction": frac,
        "true_iou": true_iou,
        "has_buildings": has,
    }


def _town(n_empty=9, n_missed=5, n_found=20, seed=0):
    """A new town as the issue saw it: blank predictions on empty tiles (true IoU 1) and on
    tiles whose buildings were missed (true IoU 0, but a higher peak probability), and tiles
    where the head ranks well."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_empty):
        out.append(_sample(f"e{i}", 0.02, rng.uniform(0.01, 0.1), 1e-4, 0.0, 1.0, False))
    for i in range(n_missed):
        out.append(_sample(f"m{i}", 0.02, rng.uniform(0.25, 0.45), 5e-3, 0.0, 0.0, True))
    for i in range(n_found):
        true = rng.uniform(0.3, 0.9)
        pred = np.clip(true + rng.normal(0, 0.08), 0.05, 0.95)
        out.append(_sample(f"f{i}", pred, 0.99, 0.2, 0.15, true, True))
    return out


def test_the_head_alone_anti_ranks_blank_tiles_and_the_calibrator_does_not():
    samples = _town()
    true = np.array([s["true_iou"] for s in samples])
    has = np.array([s["has_buildings"] for s in samples])
    head = np.array([s["pred_iou"] for s in samples])
    cal = fit(samples)
    stats = {k: np.array([s[k] for s in samples]) for k in samples[0] if k != "tile_id"}
    calibrated = cal.apply(stats)["calibrated_iou"]
    raw = rank_correlations(head, true, has)
    fixed = rank_correlations(calibrated, true, has)
    assert raw["all"] < 0.5  # blank empties (IoU 1) scored like misses (IoU 0)
    assert fixed["all"] > 0.8
    assert fixed["with_buildings"] >= raw["with_buildings"] - 0.05
    # empty fields are not sent to annotators first: their expected IoU is high
    empty = np.array([s["tile_id"].startswith("e") for s in samples])
    missed = np.array([s["tile_id"].startswith("m") for s in samples])
    assert calibrated[empty].min() > 0.8 and calibrated[missed].max() < 0.5


def test_new_tiles_are_scored_by_a_calibrator_fitted_on_others():
    cal = fit(_town(seed=0))
    unseen = _town(seed=1)
    stats = {k: np.array([s[k] for s in unseen]) for k in unseen[0] if k != "tile_id"}
    out = cal.apply(stats)
    true = np.array([s["true_iou"] for s in unseen])
    assert rank_correlations(out["calibrated_iou"], true, true > -1)["all"] > 0.8
    assert ((out["p_buildings"] >= 0) & (out["p_buildings"] <= 1)).all()


def test_prior_without_samples_keeps_the_head_on_non_blank_tiles():
    cal = IoUCalibrator()
    stats = {
        "pred_iou": np.array([0.7, 0.1, 0.1]),
        "max_prob": np.array([0.95, 0.05, 0.45]),
        "mean_prob": np.array([0.2, 1e-4, 1e-3]),
        "building_fraction": np.array([0.1, 0.0, 0.0]),
    }
    out = cal.apply(stats)
    assert out["calibrated_iou"][0] == pytest.approx(0.7)  # non-blank: the head itself
    assert out["calibrated_iou"][1] == pytest.approx(0.9)  # blank, peak 0.05: probably empty
    assert out["calibrated_iou"][2] == pytest.approx(0.1)  # blank, peak 0.45: probably a miss


def test_fits_stay_finite_on_separable_or_one_class_samples():
    two = [
        _sample("a", 0.1, 0.02, 1e-4, 0.0, 1.0, False),
        _sample("b", 0.1, 0.9, 0.1, 0.1, 0.5, True),
    ]
    cal = fit(two)
    assert cal.occupancy is None  # too few samples: the prior
    sep = two * 3
    cal = fit([{**s, "tile_id": f"{s['tile_id']}{i}"} for i, s in enumerate(sep)])
    assert cal.occupancy is not None and np.isfinite(cal.occupancy).all()
    one_class = [_sample(f"t{i}", 0.5, 0.9, 0.1, 0.1, 0.6, True) for i in range(6)]
    cal = fit(one_class)
    assert cal.occupancy is None and np.isfinite(cal.iou_map).all()
    # round trip through model metadata
    back = IoUCalibrator.from_dict(cal.to_dict())
    assert back.iou_map == pytest.approx(cal.iou_map) and back.samples == 6


def test_merge_keeps_the_newest_sample_of_a_tile():
    old = [_sample("a", 0.1, 0.5, 0.1, 0.1, 0.2, True), _sample("b", 0.1, 0.5, 0.1, 0.1, 0.3, True)]
    new = [_sample("a", 0.9, 0.5, 0.1, 0.1, 0.8, True)]
    merged = merge_samples(old, new)
    assert [(s["tile_id"], s["true_iou"]) for s in merged] == [("b", 0.3), ("a", 0.8)]
