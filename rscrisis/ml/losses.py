"""Segmentation losses, plain and robust to noisy labels (OSM footprints).

OSM outlines are shifted by a metre or two, some buildings are missing and a few polygons are
not buildings. A network fits such noise late in training (after the clean signal), so the
robust options act on what the model already believes:

* ``edge_ignore``: pixels within N px of a label outline are ignored; that is where shifted
  outlines are wrong, whatever the building.
* ``label_smoothing`` ε: targets 1 - ε/2 and ε/2 instead of 1 and 0, so no pixel can push the
  model to infinite confidence.
* ``loss="sce"``: symmetric cross-entropy (Wang et al. 2019), BCE + reverse CE. The reverse
  term, -Σ p log q with log 0 clamped to -4, equals 4 |p - y| on hard labels: an MAE, bounded,
  so a wrong label cannot dominate the gradient.
* ``loss="bootstrap"``: soft bootstrapping (Reed et al. 2015): the target is
  0.8 y + 0.2 p, p the model's own (detached) probability.
* ``confidence_weighting`` c: a pixel where the model confidently disagrees with its label
  (|p - y| > 0.5) gets weight 1 - r c (|p - y| - 0.5) / 0.5, r ramping 0 -> 1 between 10 % and
  40 % of training: early on the model has no opinion worth trusting.

A soft Dice term is added in every mode (buildings are a minority class).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rscrisis.config import FittingConfig

LOSSES = ("bce-dice", "sce", "bootstrap")
RCE_LOG_ZERO = -4.0
BOOTSTRAP_BETA = 0.8
RAMP = (0.1, 0.4)


_TRAIN = FittingConfig.model_fields


@dataclass(frozen=True)
class LossOptions:
    # plain training's defaults, from the one place they live: rscrisis.config.FittingConfig
    loss: str = _TRAIN["loss"].default
    label_smoothing: float = _TRAIN["label_smoothing"].default
    confidence_weighting: float = _TRAIN["confidence_weighting"].default
    edge_ignore: int = _TRAIN["edge_ignore"].default

    @classmethod
    def of(cls, config: FittingConfig) -> LossOptions:
        """The loss options a training or fine-tuning config asks for."""
        return cls(
            config.loss, config.label_smoothing, config.confidence_weighting, config.edge_ignore
        )

    @property
    def robust(self) -> bool:
        return self != LossOptions()


def edge_band(target: torch.Tensor, valid: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels within ``radius`` px of a label outline (B, H, W) bool."""
    t = (target * valid).unsqueeze(1)
    k = 2 * radius + 1
    dilated = F.max_pool2d(t, k, stride=1, padding=radius)
    eroded = -F.max_pool2d(-t, k, stride=1, padding=radius)
    return (dilated != eroded).squeeze(1)


def ramp(progress: float) -> float:
    lo, hi = RAMP
    return min(1.0, max(0.0, (progress - lo) / (hi - lo)))


def segmentation_loss(
    logits: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor,
    options: LossOptions = LossOptions(),
    progress: float = 0.0,
) -> torch.Tensor:
    """Loss over valid pixels (mask: 1/0/255, valid: bool); ``progress`` in [0, 1] of training."""
    logits = logits.squeeze(1).float()
    target = (mask == 1).float()
    w = valid.float()
    if options.edge_ignore > 0:
        w = w * (~edge_band(target, w, options.edge_ignore)).float()
    prob = torch.sigmoid(logits)
    if options.confidence_weighting > 0:
        r = ramp(progress) * options.confidence_weighting
        if r > 0:
            disagree = ((prob.detach() - target).abs() - 0.5).clamp_min(0) / 0.5
            w = w * (1 - r * disagree)
    eps = options.label_smoothing
    soft = target * (1 - eps) + eps / 2
    if options.loss == "bootstrap":
        soft = BOOTSTRAP_BETA * soft + (1 - BOOTSTRAP_BETA) * prob.detach()
    n = w.sum().clamp_min(1.0)
    ce = (F.binary_cross_entropy_with_logits(logits, soft, reduction="none") * w).sum() / n
    if options.loss == "sce":
        q = soft.clamp_min(torch.exp(torch.tensor(RCE_LOG_ZERO)))
        q0 = (1 - soft).clamp_min(torch.exp(torch.tensor(RCE_LOG_ZERO)))
        rce = -(prob * torch.log(q) + (1 - prob) * torch.log(q0))
        ce = ce + (rce * w).sum() / n
    elif options.loss not in LOSSES:
        raise ValueError(f"unknown loss {options.loss!r}")
    pw = prob * w
    positives = (target * w).sum()
    if positives <= 0:
        # Dice is degenerate on a batch without a building pixel: its only minimum is "no
        # building anywhere", pursued with a force that does not shrink as the probabilities
        # do. Such a batch (fields, water) is left to the pixel-wise term, which is bounded.
        return ce
    inter = (pw * target).sum()
    dice = 1 - (2 * inter + 1.0) / (pw.sum() + positives + 1.0)
    return ce + dice
