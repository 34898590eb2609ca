"""The model file format, without torch: what a ``.safetensors`` model's header holds.

A model is one safetensors file; its ``rscrisis`` metadata entry (JSON) is everything needed to
use the weights correctly (architecture, encoder, bands and normalisation, tile size,
threshold, training lineage). This module reads and validates that header, so ``rscrisis info``
and every command's early checks need neither torch nor the weights; rscrisis.ml.model builds,
saves and loads the network itself. Loading never unpickles: a model from a stranger runs no
code, and a header that parses but is wrong is refused by one schema, naming the field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel as _Base
from pydantic import ConfigDict as _ConfigDict
from pydantic import Field as _Field
from pydantic import StrictInt as _Int
from pydantic import model_validator as _after

from rscrisis import __version__
from rscrisis.errors import InputError, OutputExistsError

FORMAT = "rscrisis.model/1"
ARCHITECTURE = "unet+iou-head"

#: Encoders offered by ``--encoder``. All build without downloading weights
#: (``encoder_weights=None``). ``benchmarks/bench_train.py --compare-encoders`` measures test IoU
#: per minute of CPU training for each; resnet18 won (README: "Why resnet18 is the default").
ENCODERS: dict[str, str] = {
    "resnet18": "ResNet-18: fast on CPU, strong default",
    "resnet34": "ResNet-34: deeper, slower",
    "mobilenet_v2": "MobileNetV2: fastest inference, less accurate",
    "efficientnet-b0": "EfficientNet-B0: small, learns slowest from scratch",
    "tu-regnety_004": "RegNetY-400MF (timm): small, efficient",
}
DEFAULT_ENCODER = "resnet18"


@dataclass
class ModelMeta:
    """Everything needed to use a model file correctly, stored in its safetensors header."""

    encoder: str
    in_channels: int
    mean: list[float]
    std: list[float]
    tile_size: int
    threshold: float = 0.5
    dropout: float = 0.1
    bands: list[int] | None = None
    colorinterp: list[str] | None = None
    dtype: str = "uint8"
    gsd_m: float | None = None
    architecture: str = ARCHITECTURE
    format: str = FORMAT
    rscrisis_version: str = __version__
    history: list[dict] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, text: str, path: Path) -> ModelMeta:
        """Parse and validate the header against :class:`_MetaSchema`: metadata that parses
        but is wrong (a list, ``in_channels: "three"``, a zero std, a NaN threshold, a batch
        record without its labels) is refused here, with the field named, before any command
        acts on it."""
        from pydantic import ValidationError

        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputError(
                f"has corrupt rscrisis metadata (not JSON: {exc})",
                path=path,
                hint="the file was damaged; use another copy",
            ) from exc
        if not isinstance(raw, dict):
            raise InputError(
                f"has invalid rscrisis metadata: a JSON {type(raw).__name__}, not an object",
                path=path,
                hint="the file was edited or damaged; use the file rscrisis wrote, or another copy",
            )
        try:
            checked = _MetaSchema.model_validate(raw)
        except ValidationError as exc:
            from rscrisis.config import first_problem

            where, message = first_problem(exc, "metadata")
            raise InputError(
                f"has invalid rscrisis metadata: {where}: {message}",
                path=path,
                hint="the file was edited or damaged; use the file rscrisis wrote, or another copy",
            ) from None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in checked.model_dump().items() if k in known})


_FINITE = _ConfigDict(allow_inf_nan=False, extra="allow")
_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


class _BatchRecord(_Base):
    model_config = _FINITE
    batch: str
    labels: str
    tile_ids: list[str] = []


class _Calibrator(_Base):
    model_config = _FINITE
    threshold: float = _Field(0.5, gt=0, lt=1)
    blank_samples: _Int = _Field(0, ge=0)
    blank_empty: _Int = _Field(0, ge=0)
    iou_map: tuple[float, float] = (0.0, 1.0)
    samples: _Int = _Field(0, ge=0)
    fitted_on: dict = {}


class _TrainingConfig(_Base):
    model_config = _FINITE
    lr: float = _Field(1e-3, gt=0)


class _Training(_Base):
    """The parts of ``training`` that commands act on; the rest is lineage, kept as is."""

    model_config = _FINITE
    tilesets: list[str] = []
    pretraining_tilesets: list[str] = []
    labelled_tiles: list[str] = []
    batches: list[_BatchRecord] = []
    iou_calibrator: _Calibrator | None = None
    calibration_samples: list[dict] = []
    config: _TrainingConfig = _TrainingConfig()
    adaptation: list[dict] = []
    finetune: dict = {}


class _MetaSchema(_Base):
    """What a model header must hold to be used safely (one schema, checked on every load)."""

    model_config = _ConfigDict(allow_inf_nan=False, extra="ignore")
    encoder: str
    in_channels: _Int = _Field(ge=1, le=64)
    mean: list[float]
    std: list[float]
    tile_size: _Int = _Field(ge=32, le=8192, multiple_of=32)
    threshold: float = _Field(0.5, gt=0, lt=1)
    dropout: float = _Field(0.1, ge=0, lt=1)
    bands: list[_Int] | None = None
    colorinterp: list[str] | None = None
    dtype: str = "uint8"
    gsd_m: float | None = _Field(None, gt=0)
    architecture: str = ARCHITECTURE
    format: str = FORMAT
    rscrisis_version: str = __version__
    history: list[dict] = []
    training: _Training = _Training()

    @_after(mode="after")
    def _consistent(self) -> _MetaSchema:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r} (known: {', '.join(ENCODERS)})")
        if self.architecture != ARCHITECTURE:
            raise ValueError(f"architecture {self.architecture!r} is not {ARCHITECTURE!r}")
        n = self.in_channels
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(
                f"mean and std need {n} values (in_channels), not {len(self.mean)} and "
                f"{len(self.std)}"
            )
        if min(self.std) <= 0:
            raise ValueError("std values must be > 0")
        if self.bands is not None and (len(self.bands) != n or min(self.bands) < 1):
            raise ValueError(f"bands needs {n} band numbers >= 1")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(_DTYPES)}")
        return self

    def model_dump(self, **kw):  # training keeps every lineage key it had
        out = super().model_dump(**kw)
        out["training"] = self.training.model_dump(exclude_unset=True)
        return out


def check_model_out(out: str | Path, overwrite: bool) -> Path:
    """The model file a command will write: it must end in .safetensors and may exist only
    with ``overwrite``; checked before any work starts."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise InputError("the model file name must end in .safetensors", path=out)
    if out.exists() and not overwrite:
        raise OutputExistsError(
            "exists", path=out, hint="pass --overwrite to replace it or choose another --out"
        )
    return out


def read_meta(path: str | Path) -> ModelMeta:
    """Read only the metadata of a model file (cheap: no tensors are loaded)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(
            "no such model file", path=path, hint="train one with rscrisis train, or check the path"
        )
    try:
        with safe_open(str(path), framework="numpy") as f:  # the header only: no torch
            header = f.metadata() or {}
    except Exception as exc:
        raise InputError(
            f"is not a readable .safetensors model ({str(exc).splitlines()[0]})",
            path=path,
            hint="the file may be truncated or not a model; use the file rscrisis train wrote",
        ) from exc
    if "rscrisis" not in header:
        raise InputError(
            "is a .safetensors file without rscrisis metadata",
            path=path,
            hint="rscrisis needs models written by rscrisis train",
        )
    meta = ModelMeta.from_json(header["rscrisis"], path)
    if meta.format != FORMAT:
        raise InputError(
            f"has model format {meta.format!r}, this rscrisis reads {FORMAT!r}",
            path=path,
            hint="upgrade rscrisis",
        )
    return meta


def model_summary(meta: ModelMeta) -> dict:
    """What ``rscrisis info`` prints (history shortened to its best and last epochs)."""
    d = asdict(meta)
    hist = d.pop("history")
    samples = d["training"].pop("calibration_samples", None)
    if samples is not None:  # one row per corrected tile: a count is what a reader needs
        d["training"]["calibration_samples"] = len(samples)
    d["epochs_trained"] = len(hist)
    d["last_epoch"] = hist[-1] if hist else None
    return d
