"""The IoU calibrator: blank tiles learnt from labels, never reordering the head without them."""

import numpy as np
import pytest

from rscrisis.ml.calibration import IoUCalibrator, fit, merge_samples, rank_correlations


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
    tiles whose buildings were missed (true IoU 0), and tiles where the head ranks well but
    reads too high."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_empty):
        out.append(_sample(f"e{i}", 0.02, rng.uniform(0.1, 0.3), 1e-3, 0.0, 1.0, False))
    for i in range(n_missed):
        out.append(_sample(f"m{i}", 0.01, rng.uniform(0.1, 0.3), 1e-3, 0.0, 0.0, True))
    for i in range(n_found):
        true = rng.uniform(0.3, 0.9)
        pred = np.clip(true + 0.1 + rng.normal(0, 0.08), 0.05, 0.95)
        out.append(_sample(f"f{i}", pred, 0.99, 0.2, 0.15, true, True))
    return out


def _stats(samples):
    return {k: np.array([s[k] for s in samples]) for k in samples[0] if k != "tile_id"}


def _rho(samples, pred):
    true = np.array([s["true_iou"] for s in samples])
    has = np.array([s["has_buildings"] for s in samples])
    return rank_correlations(pred, true, has)


def test_blank_empties_learnt_from_labels_stop_ranking_as_misses():
    cal = fit(_town())
    assert (cal.blank_samples, cal.blank_empty) == (14, 9)
    assert cal.p_empty_blank == pytest.approx(9 / 16)
    unseen = _town(seed=1)  # other tiles of the same town
    head = np.array([s["pred_iou"] for s in unseen])
    out = cal.apply(_stats(unseen))
    raw, fixed = _rho(unseen, head), _rho(unseen, out["calibrated_iou"])
    assert raw["all"] < 0.2  # blank empties (IoU 1) scored like misses (IoU 0)
    assert fixed["all"] > 0.5
    # the price: the 5 missed tiles now share the empty ones' score
    assert fixed["with_buildings"] < raw["with_buildings"]
    found = np.array([s["tile_id"].startswith("f") for s in unseen])
    # where the model predicted, the map is monotone: the head's order is kept exactly
    assert _rho([u for u, f in zip(unseen, found, strict=True) if f], out["calibrated_iou"][found])[
        "all"
    ] == pytest.approx(
        _rho([u for u, f in zip(unseen, found, strict=True) if f], head[found])["all"]
    )
    empty = np.array([s["tile_id"].startswith("e") for s in unseen])
    assert out["calibrated_iou"][empty].min() > 0.5  # not sent to annotators first
    # P(empty | blank): 9 of 14 labelled blanks were empty, plus 2 pseudo-samples of the head
    assert out["p_buildings"][empty] == pytest.approx(1 - (9 + 2 * 0.02) / 16)
    # the head's level is corrected where it predicted: it read 0.1 too high
    assert np.mean(out["calibrated_iou"][found] - head[found]) < -0.03


def test_where_blanks_are_misses_the_calibrator_keeps_the_head_order():
    """The fAIr towns: 19 of 24 blank tiles hold buildings the model missed. A low peak
    probability does not mean empty, so blank tiles stay near the head's verdict."""
    samples = _town(n_empty=5, n_missed=19)
    head = np.array([s["pred_iou"] for s in samples])
    cal = fit(samples)
    out = cal.apply(_stats(samples))
    assert cal.p_empty_blank == pytest.approx(5 / 26)
    assert _rho(samples, out["calibrated_iou"])["with_buildings"] >= (
        _rho(samples, head)["with_buildings"] - 1e-9
    )


def test_without_samples_the_calibrator_is_the_head():
    cal = IoUCalibrator()
    stats = {
        "pred_iou": np.array([0.7, 0.02, 0.1]),
        "max_prob": np.array([0.95, 0.05, 0.45]),
        "mean_prob": np.array([0.2, 1e-4, 1e-3]),
        "building_fraction": np.array([0.1, 0.0, 0.0]),
    }
    out = cal.apply(stats)
    assert out["calibrated_iou"] == pytest.approx(stats["pred_iou"])
    # on a blank tile the expected IoU is the chance that it is empty
    assert out["p_buildings"] == pytest.approx([1.0, 0.98, 0.9])


def _with_agreement(samples, agreement):
    return [{**s, "tta_agreement": a} for s, a in zip(samples, agreement, strict=True)]


def test_the_views_agreement_tells_an_empty_blank_from_a_miss():
    """On a blank tile the agreement is the share of the 8 views that see nothing: 1 on an
    empty field, lower where some view finds the roofs the merged map missed. The head
    scores both near 0; the agreement ranks them, before any label."""
    town = _town(n_empty=4, n_missed=4, n_found=12, seed=2)
    rng = np.random.default_rng(3)
    agreement = [
        1.0 if s["tile_id"].startswith("e") else
        rng.uniform(0.4, 0.8) if s["tile_id"].startswith("m") else
        float(np.clip(s["true_iou"] + rng.normal(0, 0.05), 0, 1))
        for s in town
    ]  # fmt: skip
    tiles = _with_agreement(town, agreement)
    head = IoUCalibrator().apply(_stats(town))["calibrated_iou"]
    views = IoUCalibrator().apply(_stats(tiles))["calibrated_iou"]
    assert _rho(tiles, views)["all"] > _rho(town, head)["all"] + 0.3
    empty = np.array([s["tile_id"].startswith("e") for s in tiles])
    missed = np.array([s["tile_id"].startswith("m") for s in tiles])
    assert views[empty].min() > views[missed].max()
    # labels still move blank tiles: here every labelled blank was a miss
    misses = [s for s in tiles if s["tile_id"].startswith("m")]
    cal = fit(misses)
    assert (cal.blank_samples, cal.blank_empty, cal.agreement_samples) == (4, 0, 4)
    moved = cal.apply(_stats(tiles))["calibrated_iou"]
    assert moved[empty].max() == pytest.approx(2 / 6) and moved[missed].max() < 0.3


def test_the_agreement_map_is_fitted_on_samples_that_have_one():
    found = _town(n_empty=0, n_missed=0, n_found=12, seed=4)
    # the views agree more than the masks are right: 0.2 too high
    tiles = _with_agreement(found, [min(s["true_iou"] + 0.2, 1.0) for s in found])
    cal = fit(tiles + _town(n_empty=0, n_missed=0, n_found=5, seed=5))  # 5 without
    assert cal.agreement_samples == 12 and cal.samples == 17
    a, b = cal.agreement_map
    assert b > 0 and a < -0.05  # read down
    back = IoUCalibrator.from_dict(cal.to_dict())
    assert back.agreement_map == pytest.approx(cal.agreement_map)
    out = back.apply(_stats(tiles))["calibrated_iou"]
    agreement = np.array([s["tta_agreement"] for s in tiles])
    assert np.mean(out - agreement) < -0.05
    # a prediction set where a tile lacks the agreement falls back to the head everywhere
    stats = _stats(tiles)
    stats["tta_agreement"][0] = np.nan
    assert back.apply(stats)["calibrated_iou"] == pytest.approx(
        back.iou_given_prediction(stats["pred_iou"])
    )


def test_fits_stay_finite_and_monotone_and_round_trip():
    one = [_sample("a", 0.5, 0.9, 0.1, 0.1, 0.6, True)]
    cal = fit(one)
    assert np.isfinite(cal.iou_map).all()
    # a head that anti-ranks the samples is flattened, never reversed
    anti = [
        _sample(f"t{i}", x, 0.9, 0.1, 0.1, 1 - x, True) for i, x in enumerate(np.linspace(0, 1, 9))
    ]
    assert fit(anti).iou_map[1] >= 0
    back = IoUCalibrator.from_dict(fit(_town()).to_dict())
    assert back.p_empty_blank == pytest.approx(9 / 16) and back.samples == 34
    assert fit([]).samples == 0


def test_merge_keeps_the_newest_sample_of_a_tile():
    old = [_sample("a", 0.1, 0.5, 0.1, 0.1, 0.2, True), _sample("b", 0.1, 0.5, 0.1, 0.1, 0.3, True)]
    new = [_sample("a", 0.9, 0.5, 0.1, 0.1, 0.8, True)]
    merged = merge_samples(old, new)
    assert [(s["tile_id"], s["true_iou"]) for s in merged] == [("b", 0.3), ("a", 0.8)]
