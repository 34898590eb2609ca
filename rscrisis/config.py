"""Resolved configurations: every default of every command lives here, once.

The CLI reads its option defaults from these models, the library validates with them, and each
command writes the resolved model as JSON next to its outputs so a run can be reproduced. This
module must stay light (pydantic only): it is imported on the ``rscrisis --help`` path.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Compression = Literal["deflate", "lzw", "zstd", "jpeg", "none"]
ResamplingName = Literal["nearest", "bilinear", "cubic", "average", "lanczos"]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TileConfig(_Config):
    """How ``rscrisis tile`` cuts scenes into a tile set."""

    size: int = Field(256, ge=16, le=8192, description="tile width and height in pixels")
    overlap: int = Field(0, ge=0, description="pixels shared by neighbouring tiles")
    min_valid: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="skip tiles whose valid (not nodata, not padding) pixel fraction is below "
        "this; tiles with no valid pixel are always skipped",
    )
    bands: tuple[int, ...] | None = Field(
        None, description="1-based source bands to keep, in output order (default: all but alpha)"
    )
    resolution: float | None = Field(
        None, gt=0, description="resample to this ground resolution in metres (default: native)"
    )
    resampling: ResamplingName = Field("bilinear", description="resampling for --resolution")
    compress: Compression = Field("deflate", description="GeoTIFF compression of image tiles")
    all_touched: bool = Field(
        False, description="burn every pixel a polygon touches (default: pixel centres inside)"
    )
    workers: int = Field(2, ge=1, le=64, description="threads that encode and write tiles")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> TileConfig:
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self

    @property
    def stride(self) -> int:
        return self.size - self.overlap


class SyntheticConfig(_Config):
    """How ``rscrisis sample-data`` generates the synthetic scenes shipped in sample_data/."""

    seed: int = Field(
        7, description="random seed; the same seed gives the same imagery and footprints"
    )
    size_a: int = Field(1536, ge=256, description="side in pixels of scene A (pretraining area)")
    size_b: int = Field(1024, ge=256, description="side in pixels of scene B (new crisis area)")
    gsd: float = Field(0.3, gt=0, description="ground sampling distance in metres")
    epsg: int = Field(32645, description="projected CRS of the scenes (UTM 45N: Nepal)")
    jpeg_quality: int = Field(88, ge=10, le=100, description="JPEG quality of the scene GeoTIFFs")


def resolve(config: type[_Config], **values) -> _Config:
    """Build ``config`` from CLI values; a validation failure becomes a one-line InputError."""
    from pydantic import ValidationError

    from rscrisis.errors import InputError

    try:
        return config(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "options"
        option = f"--{field.replace('_', '-')}" if first["loc"] else "options"
        message = first["msg"].removeprefix("Value error, ")
        raise InputError(f"invalid {option}: {message}") from exc


DeviceName = Literal["auto", "cpu", "cuda"]
PrecisionName = Literal["auto", "fp32", "bf16"]


class TrainConfig(_Config):
    """How ``rscrisis train`` (and later pretrain / finetune) fits a model to tile sets."""

    encoder: str = Field("resnet18", description="encoder of the U-Net (see rscrisis models)")
    epochs: int = Field(30, ge=1, description="maximum number of epochs")
    batch_size: int = Field(8, ge=1, description="tiles per optimisation step")
    lr: float = Field(
        1e-3, gt=0, description="peak learning rate of AdamW (warm-up, then cosine decay)"
    )
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    val_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="fraction of tiles held out, in spatial blocks"
    )
    block_tiles: int = Field(3, ge=1, description="side of the spatial validation blocks, in tiles")
    iou_loss_weight: float = Field(
        0.5, ge=0.0, description="weight of the predicted-IoU regression loss"
    )
    threshold: float = Field(0.5, gt=0, lt=1, description="probability threshold for masks")
    patience: int = Field(
        8, ge=1, description="stop after this many epochs without validation improvement"
    )
    seed: int = Field(0, description="random seed (runs are deterministic on CPU)")
    device: DeviceName = Field("auto", description="auto picks cuda when available")
    precision: PrecisionName = Field(
        "auto", description="auto: bf16 autocast on CUDA when supported, fp32 on CPU"
    )
    augment: bool = Field(True, description="flips, 90° rotations, brightness/contrast, scale")
    freeze_encoder: bool = Field(False, description="train only decoder and heads")
    freeze_stages: int = Field(0, ge=0, description="freeze the first N encoder stages (0: none)")
    max_tiles: int | None = Field(
        None, ge=1, description="use at most this many training tiles (random, seeded)"
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all)")
    max_minutes: float | None = Field(
        None, gt=0, description="stop after the epoch that crosses this wall-clock budget"
    )


class PredictConfig(_Config):
    """How ``rscrisis predict`` runs a model over a tile set."""

    batch_size: int = Field(8, ge=1, description="tiles per forward pass")
    mc_samples: int = Field(
        0, ge=0, description="MC-dropout samples for BALD and sample agreement (0: off)"
    )
    device: DeviceName = Field("auto", description="auto picks cuda when available")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all)")
    seed: int = Field(0, description="random seed for MC dropout")
