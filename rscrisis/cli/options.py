"""The options every command shares that are not settings (typer ``Annotated`` aliases):
inputs, ``--out``, ``--overwrite``/``--resume``, ``--json`` and verbosity. Settings are
generated from the pydantic configs by :mod:`rscrisis.cli.configured`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
TileSets = Annotated[
    list[Path],
    typer.Argument(help="Tile set folders (made by rscrisis tile).", exists=False),
]
ModelPath = Annotated[Path, typer.Argument(help="Model file (.safetensors).")]
