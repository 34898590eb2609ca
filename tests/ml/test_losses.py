import pytest
import torch

from rscrisis.ml.losses import LossOptions, edge_band, ramp, segmentation_loss


def _case():
    logits = torch.zeros(1, 1, 2, 2)
    mask = torch.tensor([[[1, 0], [255, 255]]], dtype=torch.uint8)
    return logits, mask, mask != 255


@pytest.mark.parametrize(
    "options",
    [
        LossOptions(),
        LossOptions("sce", 0.1, 0.8, 0),
        LossOptions("bootstrap", 0.1, 0.0, 0),
    ],
)
def test_loss_ignores_invalid_pixels(options):
    logits, mask, valid = _case()
    a = segmentation_loss(logits, mask, valid, options, progress=0.5)
    logits2 = logits.clone()
    logits2[0, 0, 1, :] = 50.0  # only ignored pixels change
    assert segmentation_loss(logits2, mask, valid, options, 0.5) == pytest.approx(float(a))


def test_default_is_bce_plus_dice_by_hand():
    logits = torch.tensor([[[[2.0, -1.0]]]])
    mask = torch.tensor([[[1, 0]]], dtype=torch.uint8)
    p = torch.sigmoid(logits).flatten()
    bce = -(torch.log(p[0]) + torch.log(1 - p[1])) / 2
    dice = 1 - (2 * p[0] + 1) / (p.sum() + 1 + 1)
    got = segmentation_loss(logits, mask, mask != 255)
    assert float(got) == pytest.approx(float(bce + dice), rel=1e-6)


def test_sce_reverse_term_is_bounded_where_bce_explodes():
    """A confidently 'wrong' pixel (label noise): BCE grows without bound, SCE's reverse
    term stays at most 4 per pixel."""
    mask = torch.tensor([[[1]]], dtype=torch.uint8)
    valid = mask != 255
    plain = [float(segmentation_loss(torch.full((1, 1, 1, 1), -v), mask, valid)) for v in (5, 50)]
    assert plain[1] > 5 * plain[0]
    sce_opts = LossOptions("sce")
    rce = [
        float(segmentation_loss(torch.full((1, 1, 1, 1), -v), mask, valid, sce_opts)) - p
        for v, p in zip((5, 50), plain, strict=True)
    ]
    assert all(0 < r <= 4.0 + 1e-6 for r in rce)


def test_confidence_weighting_ramps_in_and_down_weights_disagreement():
    assert ramp(0.0) == 0 and ramp(0.25) == pytest.approx(0.5) and ramp(0.9) == 1
    logits = torch.tensor([[[[-6.0, 6.0]]]])  # confident background on a 'building' label
    mask = torch.tensor([[[1, 1]]], dtype=torch.uint8)
    opts = LossOptions(confidence_weighting=0.9)
    early = segmentation_loss(logits, mask, mask != 255, opts, progress=0.0)
    late = segmentation_loss(logits, mask, mask != 255, opts, progress=1.0)
    assert float(late) < float(early)


def test_edge_band_marks_both_sides_of_an_outline():
    t = torch.zeros(1, 8, 8)
    t[0, 2:6, 2:6] = 1
    band = edge_band(t, torch.ones_like(t), 1)[0]
    assert band[2, 2] and band[1, 3] and band[3, 1]  # on the outline, outside, inside
    assert not band[3, 3] and not band[4, 4] and not band[0, 0]  # deep inside, far outside
    assert not band[0, 7] and not band[7, 0]


def test_a_batch_without_buildings_gets_no_dice_pull_to_nothing():
    """Dice on an all-empty target is minimised only by predicting nothing anywhere, with a
    pull that does not fade; such a batch keeps just the bounded pixel-wise term."""
    logits = torch.tensor([[[[2.0, -1.0]]]], requires_grad=True)
    empty = torch.zeros(1, 1, 2, dtype=torch.uint8)
    p = torch.sigmoid(logits.detach()).flatten()
    bce = -(torch.log(1 - p[0]) + torch.log(1 - p[1])) / 2
    got = segmentation_loss(logits, empty, empty != 255)
    assert float(got.detach()) == pytest.approx(float(bce), rel=1e-6)
