import numpy as np
import pytest

from rscrisis.geo.stitching import Rechunker, StripStitcher
from rscrisis.geo.windows import WindowPlan


def _stitch(truth: np.ndarray, valid: np.ndarray, size: int, overlap: int, block: int):
    """Feed windows cut from ``truth`` (padded as the reader pads) and collect the strips."""
    h, w = truth.shape
    plan = WindowPlan.build(w, h, size, overlap)
    out = np.full((h, w), -1.0, np.float32)
    out_valid = np.zeros((h, w), bool)
    strips = []

    def sink(first, prob, v):
        strips.append((first, len(prob)))
        out[first : first + len(prob)] = prob
        out_valid[first : first + len(prob)] = v

    rechunk = Rechunker(block, sink)
    stitcher = StripStitcher(plan, rechunk)
    pad_t = np.zeros((max(h, size), max(w, size)), np.float32)
    pad_v = np.zeros_like(pad_t, bool)
    pad_t[:h, :w], pad_v[:h, :w] = truth, valid
    for spec in plan.windows():
        sl = np.s_[spec.row_off : spec.row_off + size, spec.col_off : spec.col_off + size]
        if pad_v[sl].any():
            stitcher.add(spec, pad_t[sl], pad_v[sl])
        else:
            stitcher.skip(spec)
    stitcher.finish()
    rechunk.flush()
    return out, out_valid, strips


@pytest.mark.parametrize(("h", "w"), [(300, 420), (64, 64), (50, 90), (517, 129)])
def test_identity_windows_stitch_back_to_the_input_exactly(h, w):
    rng = np.random.default_rng(0)
    truth = rng.random((h, w)).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[: h // 5, : w // 3] = False  # a nodata corner
    out, out_valid, strips = _stitch(truth, valid, size=64, overlap=16, block=128)
    np.testing.assert_array_equal(out_valid, valid)
    np.testing.assert_allclose(out[valid], truth[valid], atol=1e-6)
    # strips are block-aligned and cover every row once, in order
    assert [s[0] for s in strips] == list(range(0, h, 128))
    assert sum(n for _, n in strips) == h


def test_constant_windows_give_a_constant_map_without_seams():
    truth = np.full((257, 300), 0.37, np.float32)
    out, _, _ = _stitch(truth, np.ones_like(truth, bool), size=64, overlap=24, block=64)
    np.testing.assert_allclose(out, 0.37, atol=1e-6)


def test_blending_weights_the_window_centre():
    """Two windows disagreeing in their overlap: the result ramps smoothly from one to the
    other (no step), and each side keeps its own value outside the overlap."""
    plan = WindowPlan.build(112, 64, 64, 16)  # two columns: offsets 0 and 48
    got = {}
    stitcher = StripStitcher(plan, lambda first, p, v: got.update(p=p))
    specs = plan.windows()
    ones = np.ones((64, 64), bool)
    stitcher.add(specs[0], np.zeros((64, 64), np.float32), ones)
    stitcher.add(specs[1], np.ones((64, 64), np.float32), ones)
    stitcher.finish()
    row = got["p"][10]
    assert (row[:48] == 0).all() and (row[64:] == 1).all()
    ramp = row[48:64]
    assert (np.diff(ramp) > 0).all() and 0 < ramp[0] < 0.05 and 0.95 < ramp[-1] < 1
