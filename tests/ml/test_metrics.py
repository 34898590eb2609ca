import math

import numpy as np
import pytest
from shapely.geometry import box

from rscrisis.ml.metrics import (
    calibration,
    confusion,
    mask_to_polygons,
    match_objects,
    object_counts,
    pixel_scores,
    spearman,
    tile_iou,
)


def test_confusion_ignores_255():
    truth = np.array([[1, 1, 0, 255], [0, 0, 1, 255]], np.uint8)
    pred = np.array([[1, 0, 1, 1], [0, 0, 1, 1]], bool)
    c = confusion(pred, truth)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 2)
    s = pixel_scores(c.tp, c.fp, c.fn)
    assert s["iou"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(4 / 6)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)


def test_tile_iou_conventions():
    empty = np.zeros((4, 4), np.uint8)
    assert tile_iou(np.zeros((4, 4), bool), empty) == 1.0  # nothing there, nothing predicted
    assert tile_iou(np.ones((4, 4), bool), empty) == 0.0
    assert math.isnan(tile_iou(np.ones((4, 4), bool), np.full((4, 4), 255, np.uint8)))
    truth = np.zeros((4, 4), np.uint8)
    truth[:2] = 1
    truth[3] = 255
    pred = np.zeros((4, 4), bool)
    pred[1:] = True  # row 3 is ignored
    assert tile_iou(pred, truth) == pytest.approx(1 / 3)


def test_rank_and_spearman():
    assert spearman([10, 20, 20, 5], [2, 3, 3, 1]) == pytest.approx(1.0)  # ties averaged
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2], [1, 2]))
    cal = calibration(np.array([0.5, 0.7, np.nan]), np.array([0.6, 0.5, 0.2]))
    assert cal["mae"] == pytest.approx(0.15) and cal["tiles"] == 2


def test_object_matching_by_hand():
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)]
    pred = [
        box(1, 0, 11, 10),  # IoU 9/11 with truth 0: match
        box(20, 0, 24, 10),  # IoU 0.4 with truth 1: no match
        box(60, 0, 70, 10),  # nothing there
        box(0, 0, 10, 9),  # also overlaps truth 0 (IoU 0.9) - wins the greedy match
    ]
    counts = match_objects(pred, truth)
    assert (counts.tp, counts.fp, counts.fn) == (1, 3, 2)
    s = counts.scores()
    assert s["f1"] == pytest.approx(2 / (2 + 3 + 2))


def test_polygons_from_masks_and_object_counts():
    truth = np.zeros((20, 20), np.uint8)
    truth[2:8, 2:8] = 1
    truth[12:18, 12:18] = 1
    pred = np.zeros((20, 20), bool)
    pred[2:8, 3:8] = True  # IoU 30/36 with the first
    pred[0:2, 15:20] = True  # 10 px: under min area
    polys = mask_to_polygons(truth == 1, min_area_px=16)
    assert len(polys) == 2 and polys[0].area == 36
    c = object_counts(pred, truth, min_area_px=16)
    assert (c.tp, c.fp, c.fn) == (1, 0, 1)
    truth[12:18, 12:18] = 255  # ignored buildings do not count as misses
    truth[truth == 255] = 255
    c = object_counts(pred, truth, min_area_px=16)
    assert (c.tp, c.fp, c.fn) == (1, 0, 0)
