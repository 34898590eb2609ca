"""The model: a U-Net (segmentation-models-pytorch) with a predicted-IoU head, and its file format.

Why a predicted-IoU head: ranking tiles for annotation needs to know where the model is probably
wrong. Like Segment Anything's IoU head, a small MLP regresses, per tile, the IoU of the model's
own thresholded prediction against the truth. It sees pooled encoder-bottleneck features (what
the tile looks like), pooled decoder features (what the model made of it) and a few statistics
of the probability map (mean probability, mean entropy, the training-free expected IoU, the
predicted building fraction). Its output is a correction, in logit space, to the training-free
expected IoU: an untrained head returns that baseline, and training can only learn where the
model's confidence is misleading (e.g. confidently wrong on an unfamiliar roof type). It is
trained jointly with the segmentation loss against the actual per-tile IoU of the detached
prediction (see :mod:`rscrisis.ml.metrics` for the conventions).

Model files are ``.safetensors``: tensors plus a JSON metadata string under the ``rscrisis`` key
of the safetensors header (architecture, encoder, bands, normalisation, tile size, threshold,
version, training history). Loading parses JSON and raw tensors only; nothing is unpickled, so a
model file from a stranger cannot run code.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from rscrisis.errors import InputError
from rscrisis.io.model_file import (  # noqa: F401  (the model API, importable from here)
    ARCHITECTURE,
    DEFAULT_ENCODER,
    ENCODERS,
    FORMAT,
    ModelMeta,
    _MetaSchema,
    check_model_out,
    read_meta,
)
from rscrisis.io.outputs import atomic_path

log = logging.getLogger(__name__)

N_PROB_STATS = 4
#: separator of a batch-norm layer's path in the ``source_norm.*`` tensor names ("." nests)
SOURCE_SEP = "__"


def iou_or_empty(inter: torch.Tensor, union: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``inter / union``, and :data:`rscrisis.ml.metrics.EMPTY_IOU` where the union is empty
    (nothing predicted, nothing there). ``eps`` guards the division: 1 for pixel counts."""
    from rscrisis.ml.metrics import EMPTY_IOU

    return torch.where(union > 0, inter / union.clamp_min(eps), torch.full_like(union, EMPTY_IOU))


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy in bits of probabilities ``p`` (clamped away from 0 and 1): the one
    definition, used by the per-tile statistics and by BALD."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def prob_stats(prob: torch.Tensor, valid: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """Per-tile statistics of a probability map (B, 1, H, W) over valid pixels -> (B, 4).

    Columns: mean probability, mean binary entropy (bits), expected IoU of the thresholded
    mask under the model's own probabilities, predicted building fraction.
    """
    p = prob.clamp(1e-6, 1 - 1e-6).flatten(1)
    w = torch.ones_like(p) if valid is None else valid.flatten(1).to(p.dtype)
    n = w.sum(1).clamp_min(1.0)
    ent = binary_entropy(p)
    pred = (p > threshold).to(p.dtype) * w
    inter = (pred * p).sum(1)
    union = pred.sum(1) + ((1 - pred) * p * w).sum(1)
    soft_iou = iou_or_empty(inter, union, eps=1e-6)
    return torch.stack([(p * w).sum(1) / n, (ent * w).sum(1) / n, soft_iou, pred.sum(1) / n], dim=1)


class BuildingSegmenter(nn.Module):
    """U-Net + predicted-IoU head. ``forward`` returns (logits, predicted IoU, embedding)."""

    def __init__(
        self, encoder: str, in_channels: int, threshold: float = 0.5, dropout: float = 0.1
    ):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.unet = smp.Unet(encoder, encoder_weights=None, in_channels=in_channels, classes=1)
        self.threshold = threshold
        self.mc_dropout = nn.Dropout2d(dropout)
        c_enc = self.unet.encoder.out_channels[-1]
        c_dec = self.unet.segmentation_head[0].in_channels
        self.iou_head = nn.Sequential(
            nn.Linear(c_enc + c_dec + N_PROB_STATS, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, 1),
        )
        # the head learns a correction to the training-free expected IoU (residual in logit
        # space); a zero last layer makes an untrained head return exactly that baseline
        last = self.iou_head[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.embedding_dim = c_enc

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None):
        logits, iou, embedding, _, _ = self.scored(x, valid)
        return logits, iou, embedding

    def scored(self, x: torch.Tensor, valid: torch.Tensor | None = None):
        """:meth:`forward`'s (logits, predicted IoU, embedding), and what the IoU head reads
        on the way: the probabilities (B, 1, H, W, fp32) and their :func:`prob_stats` (B, 4).

        Prediction takes the statistics from here instead of computing them again from the
        logits (on a 24 Mpx scene that took 0.5 to 0.8 s of the main thread, the model idle)."""
        features = self.unet.encoder(x)
        decoded = self.mc_dropout(self.unet.decoder(features))
        logits = self.unet.segmentation_head(decoded)
        embedding = features[-1].mean(dim=(2, 3))
        if valid is None:
            pooled_dec = decoded.mean(dim=(2, 3))
        else:
            v = valid.to(decoded.dtype)
            pooled_dec = (decoded * v).sum(dim=(2, 3)) / v.sum(dim=(2, 3)).clamp_min(1.0)
        prob = torch.sigmoid(logits.detach().float())
        stats = prob_stats(prob, valid, self.threshold)
        head_in = torch.cat([embedding, pooled_dec, stats.to(embedding.dtype)], dim=1)
        base = torch.logit(stats[:, 2].clamp(1e-3, 1 - 1e-3)).to(embedding.dtype)
        iou = torch.sigmoid(base + self.iou_head(head_in).squeeze(1))
        return logits, iou, embedding, prob, stats

    # -- the source domain's batch-norm statistics (kept by rscrisis.ml.adaptation.adabn) --

    def norm_layers(self) -> dict[str, nn.modules.batchnorm._BatchNorm]:
        """The batch-norm layers that keep running statistics, by module path."""
        return {
            name: m
            for name, m in self.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.running_mean is not None
            and m.running_var is not None
        }

    @staticmethod
    def _source_keys(layer: str) -> tuple[str, str]:
        """The names of a layer's source mean and variance in :attr:`source_norm`."""
        key = layer.replace(".", SOURCE_SEP)
        return f"{key}{SOURCE_SEP}mean", f"{key}{SOURCE_SEP}var"

    @property
    def has_source_norm(self) -> bool:
        return isinstance(getattr(self, "source_norm", None), nn.Module)

    def keep_source_norm(self) -> None:
        """Remember every batch-norm layer's current statistics as the *source* ones, once: a
        model adapted twice keeps those of the data it was trained on. They travel in the
        model file as ``source_norm.*`` tensors, and :meth:`source_statistics` puts them back
        while the pretraining tiles are replayed."""
        if self.has_source_norm:
            return
        holder = nn.Module()
        for name, m in self.norm_layers().items():
            mean, var = self._source_keys(name)
            holder.register_buffer(mean, m.running_mean.detach().clone())  # type: ignore[union-attr]
            holder.register_buffer(var, m.running_var.detach().clone())  # type: ignore[union-attr]
        self.source_norm = holder

    @contextmanager
    def source_statistics(self) -> Iterator[None]:
        """Batch-norm layers normalise with the source statistics inside the block (the
        tensors are swapped, not copied into, so autograd keeps what it saved)."""
        layers = self.norm_layers()
        if not self.has_source_norm:
            yield
            return
        held = {n: (m.running_mean, m.running_var) for n, m in layers.items()}
        try:
            for name, m in layers.items():
                mean, var = self._source_keys(name)
                m.running_mean = getattr(self.source_norm, mean)
                m.running_var = getattr(self.source_norm, var)
            yield
        finally:
            for name, m in layers.items():
                m.running_mean, m.running_var = held[name]

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):  # type: ignore[override]
        """As torch's, with the optional ``source_norm.*`` tensors made to match ``state_dict``
        first (a model file from before ``adapt`` kept them has none)."""
        wanted = [k for k in state_dict if k.startswith("source_norm.")]
        if wanted and not self.has_source_norm:
            holder = nn.Module()
            for k in wanted:
                holder.register_buffer(k.split(".", 1)[1], torch.empty_like(state_dict[k]))
            self.source_norm = holder.to(next(self.parameters()).device)
        elif not wanted and self.has_source_norm:
            del self.source_norm
        return super().load_state_dict(state_dict, strict=strict, **kwargs)

    def encoder_stages(self) -> list[nn.Module]:
        """Top-level encoder children in order, for freezing the first N stages."""
        return [m for m in self.unet.encoder.children() if any(True for _ in m.parameters())]

    def enable_mc_dropout(self) -> None:
        """Eval mode everywhere except dropout layers (Monte-Carlo dropout sampling)."""
        self.eval()
        for m in self.modules():
            if isinstance(m, (nn.Dropout, nn.Dropout2d)):
                m.train()


def build_model(meta: ModelMeta) -> BuildingSegmenter:
    if meta.encoder not in ENCODERS:
        raise InputError(
            f"unknown encoder {meta.encoder!r}", hint=f"choose one of: {', '.join(ENCODERS)}"
        )
    return BuildingSegmenter(meta.encoder, meta.in_channels, meta.threshold, meta.dropout)


def save_model(model: BuildingSegmenter, meta: ModelMeta, path: str | Path) -> None:
    """Write weights + metadata atomically as one .safetensors file."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"rscrisis": meta.to_json()})


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[BuildingSegmenter, ModelMeta]:
    """Load a model file without unpickling anything; clear errors for bad files."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise InputError(
            f"tensors cannot be read ({str(exc).splitlines()[0]})",
            path=path,
            hint="the file may be truncated; use another copy",
        ) from exc
    try:
        model = _model_with_state(meta, state)
    except RuntimeError as exc:
        raise InputError(
            "tensors do not match the architecture in its metadata",
            path=path,
            hint="the file was modified or written by another tool",
        ) from exc
    return model.to(device), meta


def _model_with_state(meta: ModelMeta, state: dict[str, torch.Tensor]) -> BuildingSegmenter:
    """The model of ``meta`` holding copies of the tensors of ``state``, built on PyTorch's
    meta device and then given uninitialised memory, so that no weight is first drawn at
    random and then overwritten: building the resnet18 U-Net takes 0.03 s instead of 0.16 s
    (loading it, 0.08 s in all), in every command that loads a model. Copies, not the
    tensors themselves: safetensors maps the file, and a model holding the mapping would see
    the file change under it. Raises RuntimeError where the tensors do not match the
    architecture."""
    with torch.device("meta"):
        model = build_model(meta)
    names = {n for n, _ in itertools.chain(model.named_parameters(), model.named_buffers())}
    if names != set(model.state_dict()):  # a buffer the file does not hold: build it for real
        model = build_model(meta)
    else:
        model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    return model


_CACHE: dict[tuple, tuple] = {}


def load_model_cached(path: str | Path, device_name: str) -> tuple:
    """:func:`load_model`, once per process: a Dask worker that runs many tasks with the same
    model loads it once (a changed file, by mtime, or another device loads it again)."""
    from rscrisis.ml.device import resolve_device

    key = (str(Path(path).resolve()), os.stat(path).st_mtime_ns, device_name)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load_model(path, resolve_device(device_name))
    return _CACHE[key]


def check_bands(meta: ModelMeta, band_count: int, source: str | Path) -> None:
    """Refuse imagery whose band count differs from what the model was trained on."""
    if band_count != meta.in_channels:
        raise InputError(
            f"has {band_count} band(s) but the model expects {meta.in_channels}",
            path=source,
            hint="tile the imagery with --bands matching the model (see rscrisis info MODEL)",
        )


def check_tiles(meta: ModelMeta, table, source: str | Path) -> None:
    """Refuse a tile table (rscrisis.ml.data.TileTable) the model cannot run on: another band
    count, or tiles that are not a multiple of 32 px (the U-Net's 5 halvings); warn when their
    ground resolution is far from the model's."""
    check_bands(meta, table.band_count, source)
    if table.tile_size % 32:
        raise InputError(
            f"tiles are {table.tile_size} px; the U-Net needs a multiple of 32",
            path=source,
            hint="re-tile with --size 256 (or 128, 512, ...)",
        )
    if meta.gsd_m and table.gsd_m and not 0.75 < table.gsd_m / meta.gsd_m < 1.33:
        log.warning(
            "tiles are at %.2f m but the model was trained at %.2f m; re-tile with "
            "--resolution %.2f for best results",
            table.gsd_m,
            meta.gsd_m,
            meta.gsd_m,
        )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
