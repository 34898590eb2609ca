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
