"""Everything that prints: rich consoles, logging set-up, progress bars, JSON on stdout.

Rich is confined to this package (docs/design.md); the library logs through ``logging`` and reports
progress through a plain callback, which :func:`progress_bar` provides.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

stderr = Console(stderr=True)


def configure_logging(verbosity: int) -> None:
    """-q: errors only; default: warnings; -v: info; -vv: debug (also GDAL's own messages)."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(
        max(-1, min(verbosity, 2)), logging.DEBUG
    )
    root = logging.getLogger("rscrisis")
    root.handlers.clear()
    handler = RichHandler(console=stderr, show_time=False, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    rio = logging.getLogger("rasterio")
    rio.handlers = [handler]
    rio.setLevel(logging.DEBUG if verbosity >= 2 else logging.ERROR)
    rio.propagate = False


def print_json(payload: Any) -> None:
    """Write a JSON document to stdout (data goes to stdout, everything else to stderr)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def say(message: str, verbosity: int) -> None:
    """A human summary line on stderr, silenced by -q."""
    if verbosity >= 0:
        stderr.print(message, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator:
    """Yield a ``progress(done, total, description)`` callback drawing a rich bar on stderr."""
    if not enabled or not stderr.is_terminal:
        yield lambda done, total, desc="": None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int, desc: str = "") -> None:
            bar.update(
                task, completed=done, total=total, description=f"{description} {desc}".strip()
            )

        yield update


def verbosity(ctx, verbose: int, quiet: bool) -> int:
    """Combine global and per-command -v/-q (a per-command flag wins), and apply it."""
    level = (ctx.obj or {}).get("verbosity", 0)
    if quiet:
        level = -1
    elif verbose:
        level = max(level, 0) + verbose
    if ctx.obj is None:
        ctx.obj = {}
    ctx.obj["verbosity"] = level
    configure_logging(level)
    return level
