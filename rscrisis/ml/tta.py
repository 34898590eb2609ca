"""Test-time augmentation over the eight flips and 90° rotations (the dihedral group D4).

Nadir imagery has no "up", so every view is equally valid input. Averaging the probabilities
of the 8 views removes the orientation bias a model keeps from finite training data (typically
+1 to +5 IoU points), and how much the views disagree is an uncertainty signal that costs no
extra model: a building the model sees only under some orientations is one it does not trust.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IDENTITY: tuple[int, ...] = (0,)
D4: tuple[int, ...] = tuple(range(8))


def apply_view(t: torch.Tensor, view: int) -> torch.Tensor:
    """View ``view`` (0-7) of an (..., H, W) tensor: optional mirror, then k x 90° rotation."""
    if view >= 4:
        t = t.flip(-1)
    return torch.rot90(t, view % 4, (-2, -1)) if view % 4 else t


def invert_view(t: torch.Tensor, view: int) -> torch.Tensor:
    """Undo :func:`apply_view`, mapping a prediction back onto the original pixel grid."""
    if view % 4:
        t = torch.rot90(t, -(view % 4), (-2, -1))
    return t.flip(-1) if view >= 4 else t


@dataclass
class ViewsOutput:
    prob: torch.Tensor  # (B, H, W) mean building probability over the views
    iou: torch.Tensor  # (B,) mean predicted IoU over the views
    embedding: torch.Tensor  # (B, D) mean pooled bottleneck features over the views
    spread: torch.Tensor | None  # (B, H, W) standard deviation of the views' probabilities
    agreement: torch.Tensor | None  # (B,) mean IoU of each view's mask with the mean's mask
    #: (B, 4) rscrisis.ml.model.prob_stats of ``prob`` over the valid pixels, as the model
    #: computed them for its IoU head: one view of a model with ``scored`` (None otherwise)
    stats: torch.Tensor | None = None


@torch.no_grad()
def forward_views(
    model,
    x: torch.Tensor,
    valid: torch.Tensor,
    amp: torch.dtype | None,
    views: Sequence[int] = IDENTITY,
) -> ViewsOutput:
    """Run ``model`` on each view of ``x`` (B, C, H, W) and merge the results.

    ``valid`` (B, H, W) bool marks pixels that are real data; masks and agreement only count
    those. With one view this is a plain forward pass (``spread`` and ``agreement`` are None).
    """
    if len(views) > 1 and x.shape[-1] != x.shape[-2] and any(v % 2 for v in views):
        raise ValueError(f"90° rotations need square inputs, got {tuple(x.shape[-2:])}")
    device = x.device
    v1 = valid.unsqueeze(1)
    if tuple(views) == IDENTITY and hasattr(model, "scored"):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            _, iou, emb, prob, stats = model.scored(x, v1)
        return ViewsOutput(prob.float().squeeze(1), iou.float(), emb.float(), None, None, stats)
    probs, ious, embs = [], [], []
    for view in views:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits, iou, emb = model(apply_view(x, view), apply_view(v1, view))
        probs.append(invert_view(torch.sigmoid(logits.float()), view).squeeze(1))
        ious.append(iou.float())
        embs.append(emb.float())
    if len(views) == 1:
        return ViewsOutput(probs[0], ious[0], embs[0], None, None)
    stack = torch.stack(probs)  # (V, B, H, W)
    prob = stack.mean(0)
    consensus = (prob > model.threshold) & valid
    masks = (stack > model.threshold) & valid
    inter = (masks & consensus).flatten(2).sum(2).float()
    union = (masks | consensus).flatten(2).sum(2).float()
    pair = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return ViewsOutput(
        prob=prob,
        iou=torch.stack(ious).mean(0),
        embedding=torch.stack(embs).mean(0),
        spread=stack.std(0),
        agreement=pair.mean(0).to(device),
    )
