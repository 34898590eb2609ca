"""Option definitions shared by every command (typer ``Annotated`` aliases).

Defaults are read from the pydantic configs in :mod:`rscrisis.config`, so the CLI and the library
cannot disagree about them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rscrisis.config import _Config


def default(config: type[_Config], name: str) -> Any:
    """The default of ``config.name`` (one place for defaults)."""
    return config.model_fields[name].default


def with_config_defaults(command, config: type[_Config], doc: str):
    """The same command with its option defaults taken from another config class.

    ``pretrain`` is ``train`` with noise-robust defaults: one implementation, two signatures
    (typer reads the defaults from ``__signature__``).
    """
    import functools
    import inspect

    sig = inspect.signature(command, eval_str=True)
    params = [
        p.replace(default=default(config, p.name))
        if p.name in config.model_fields and p.default is not inspect.Parameter.empty
        else p
        for p in sig.parameters.values()
    ]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        return command(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)
    wrapper.__doc__ = doc
    return wrapper


def describe(config: type[_Config], name: str) -> str:
    """The help text of ``config.name``."""
    return config.model_fields[name].description or ""


Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace existing outputs (never done silently).")
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Finish an interrupted run: keep complete outputs, redo the "
        "rest. Settings must match the first run.",
    ),
]
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print a JSON summary on stdout (logs stay on stderr).")
]
OutDir = Annotated[
    Path, typer.Option("--out", "-o", help="Output folder.", file_okay=False, resolve_path=False)
]
Verbose = Annotated[
    int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (runs are deterministic).")]


def parse_int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    """Parse '1,2,3' into (1, 2, 3); a usage error (exit 2) otherwise."""
    if text is None or text.strip() == "":
        return None
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError as exc:
        raise typer.BadParameter(
            f"expected comma-separated integers, got {text!r}", param_hint=option
        ) from exc
    return values


def choice_enum(name: str, literal: Any) -> type:
    """A str Enum of a ``Literal``'s values, so typer shows and checks the choices."""
    import enum
    from typing import get_args

    return enum.Enum(name, {v: v for v in get_args(literal)}, type=str)


TileSets = Annotated[
    list[Path],
    typer.Argument(help="Tile set folders (made by rscrisis tile).", exists=False),
]
ModelPath = Annotated[Path, typer.Argument(help="Model file (.safetensors).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Threads = Annotated[
    int | None, typer.Option("--threads", help="CPU threads for torch (default: all cores).")
]
Tta = Annotated[
    bool,
    typer.Option(
        "--tta",
        help="Test-time augmentation: average the 8 flips/90° rotations (8x the compute, "
        "usually a few IoU points better); their disagreement is reported as uncertainty.",
    ),
]
