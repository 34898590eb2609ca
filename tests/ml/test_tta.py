import pytest
import torch

from rscrisis.ml.tta import D4, apply_view, forward_views, invert_view


def test_the_eight_views_are_distinct_and_invertible():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = [apply_view(x, v) for v in D4]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    for v, y in zip(D4, views, strict=True):
        assert torch.equal(invert_view(y, v), x)


class Shifted(torch.nn.Module):
    """A model that is *not* equivariant: its output leans to the left of the image."""

    threshold = 0.5

    def forward(self, x, valid=None):
        ramp = torch.linspace(-2, 2, x.shape[-1]).expand_as(x[:, :1])
        return x[:, :1] + ramp, x.mean((1, 2, 3)).sigmoid(), x.mean((2, 3))


def test_views_average_out_orientation_bias_and_report_disagreement():
    x = torch.zeros(1, 1, 8, 8)
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    one = forward_views(Shifted(), x, valid, None, (0,))
    assert one.agreement is None and one.spread is None
    all8 = forward_views(Shifted(), x, valid, None, D4)
    # the ramp cancels between mirrored views: the merged map is symmetric left-right
    assert torch.allclose(all8.prob, all8.prob.flip(-1), atol=1e-6)
    assert float(all8.agreement) < 1.0 and float(all8.spread.mean()) > 0.1


def test_rotations_need_square_windows():
    x = torch.zeros(1, 1, 8, 16)
    with pytest.raises(ValueError, match="square"):
        forward_views(Shifted(), x, torch.ones(1, 8, 16, dtype=torch.bool), None, D4)


def test_one_view_takes_the_statistics_the_model_computed_for_its_iou_head():
    from rscrisis.ml.model import BuildingSegmenter, prob_stats

    torch.manual_seed(0)
    model = BuildingSegmenter("resnet18", 3).eval()
    x = torch.randn(3, 3, 64, 64)
    valid = torch.rand(3, 64, 64) > 0.3
    valid[2] = False  # a window with nothing valid
    with torch.no_grad():
        one = forward_views(model, x, valid, None, (0,))
        logits, iou, emb = model(x, valid.unsqueeze(1))
    assert one.stats is not None and one.stats.shape == (3, 4)
    # what prediction computed from the logits before: the same values, not recomputed
    assert torch.equal(one.prob, torch.sigmoid(logits).squeeze(1))
    want = prob_stats(one.prob.unsqueeze(1), valid.unsqueeze(1), model.threshold)
    assert torch.allclose(one.stats, want, atol=1e-6)
    assert torch.equal(one.iou, iou) and torch.equal(one.embedding, emb)
    # several views, or a model without ``scored``: the caller computes them from the mean
    assert forward_views(model, x, valid, None, (0, 4)).stats is None
    assert forward_views(Shifted(), x[:, :1], valid, None, (0,)).stats is None
