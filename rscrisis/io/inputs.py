"""Reading rscrisis's own files back, as the hostile input they may be.

Tile sets, prediction sets and batches travel by mail and USB stick, and anyone can edit their
``tileset.json``, ``index.gpkg``, ``scores.gpkg`` or ``status.csv`` on the way. Every reader of
those files goes through here, so a truncated, replaced or hand-edited file is always one
:class:`~rscrisis.errors.InputError` line (exit 2) that names the file, never a traceback, and
no file can make memory unbounded: JSON and CSV files are size-capped before they are parsed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from rscrisis.errors import InputError

#: the largest JSON manifest or CSV table read back (the biggest real ones are a few MB)
MAX_TEXT_BYTES = 64 * 2**20


def _read_text(path: Path, hint: str) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise InputError(
                f"is {size / 2**20:,.0f} MB, far larger than rscrisis writes "
                f"({MAX_TEXT_BYTES // 2**20} MB at most)",
                path=path,
                hint=hint,
            )
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"is not UTF-8 text ({exc.reason})", path=path, hint=hint) from None
    except IsADirectoryError:
        raise InputError("is a folder, not a file", path=path, hint=hint) from None
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", path=path, hint=hint) from None


def read_json(path: Path, *, hint: str, schema: type[BaseModel] | None = None) -> dict[str, Any]:
    """A JSON object from ``path``; anything else (not JSON, a list, too deep) is refused.

    ``schema``, a pydantic model, checks the fields readers act on (unknown keys are kept):
    a wrong type anywhere in them is refused with its place named, before any use."""
    path = Path(path)
    text = _read_text(path, hint)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"is not valid JSON ({exc.msg} at line {exc.lineno})", path=path, hint=hint
        ) from None
    except RecursionError:
        raise InputError("is JSON nested too deeply", path=path, hint=hint) from None
    if not isinstance(value, dict):
        raise InputError(
            f"holds a JSON {type(value).__name__}, not an object", path=path, hint=hint
        )
    if schema is not None:
        from pydantic import ValidationError

        try:
            schema.model_validate(value)
        except ValidationError as exc:
            from rscrisis.config import first_problem

            where, message = first_problem(exc, "the file")
            raise InputError(f"{where}: {message}", path=path, hint=hint) from None
    return value


def read_csv_rows(path: Path, *, required: Sequence[str], hint: str) -> list[dict[str, str]]:
    """Rows of a CSV table with at least the ``required`` columns."""
    path = Path(path)
    text = _read_text(path, hint)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise InputError(f"is not a readable CSV table ({exc})", path=path, hint=hint) from None
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(f"has no {missing[0]!r} column", path=path, hint=hint)
    return rows


def read_layer(path: Path, layer: str | None, *, required: Sequence[str], hint: str):
    """A vector layer as a GeoDataFrame, with at least the ``required`` columns."""
    import geopandas as gpd
    import pyogrio

    path = Path(path)
    if not path.is_file():
        raise InputError("is missing", path=path, hint=hint)
    try:
        frame = gpd.read_file(path, layer=layer, engine="pyogrio")
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        detail = str(exc).splitlines()[0][:160]
        raise InputError(
            f"cannot be read as a GeoPackage layer{f' {layer!r}' if layer else ''} ({detail})",
            path=path,
            hint=hint,
        ) from None
    except (pyogrio.errors.FieldError, pyogrio.errors.GeometryError, ValueError) as exc:
        detail = str(exc).splitlines()[0][:160]
        raise InputError(f"holds unreadable data ({detail})", path=path, hint=hint) from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(f"has no {missing[0]!r} column", path=path, hint=hint)
    return frame


def check_numeric(frame, columns: Sequence[str], path: Path, hint: str) -> None:
    """Refuse a table whose ``columns`` are not numbers (a hand edit typed text into them)."""
    import pandas as pd

    for c in columns:
        if c in frame.columns and not pd.api.types.is_numeric_dtype(frame[c]):
            raise InputError(f"column {c!r} holds non-numeric values", path=path, hint=hint)


# --- what readers act on, per file (other keys are lineage, kept as they are) --------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class _Scene(_Lenient):
    bands: list[StrictInt]
    gsd_m: list[float] | None = None


class TileSetManifest(_Lenient):
    """``tileset.json``"""

    scenes: list[_Scene] = []
    config: dict = {}


class PredictionManifest(_Lenient):
    """``predict.json`` of a prediction set"""

    model: str | None = None
    threshold: float = Field(0.5, gt=0, lt=1)
    tilesets: list[str] = []


class _BatchTask(_Lenient):
    task: str
    tileset: str
    fingerprints: dict[str, str | None] = {}
    pre_annotation_buildings: StrictInt = 0


class BatchManifest(_Lenient):
    """``batch.json``"""

    tasks: list[_BatchTask] = []
    config: dict = {}
