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
