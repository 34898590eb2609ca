"""Everything that prints: rich consoles, logging set-up, progress bars, JSON on stdout.

Rich is confined to this package (docs/design.md); the library logs through ``logging`` and reports
progress through a plain callback, which :func:`progress_bar` provides.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
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
    handler: logging.Handler
    if stderr.is_terminal:
        handler = RichHandler(console=stderr, show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # a log file or a pipe: one timestamped line per record, never wrapped
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
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


def print_table(header: list[str], rows: list[list[str]], title: str | None = None) -> None:
    """A result table on stdout, plain text in aligned columns (results are data: they go to
    stdout and ``-q`` keeps them; nothing wraps, so a pipe or a log reads it whole)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [title] if title else []
    out += [line(header), line("-" * w for w in widths), *(line(r) for r in rows)]
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


def print_fields(data: dict[str, Any], indent: int = 0) -> None:
    """Nested fields on stdout as ``key: value`` lines, sub-objects indented (``rscrisis info``)."""
    pad = "  " * indent
    for key, value in data.items():
        if isinstance(value, dict) and value:
            sys.stdout.write(f"{pad}{key}:\n")
            print_fields(value, indent + 1)
        elif isinstance(value, list) and value and all(not isinstance(v, dict) for v in value):
            sys.stdout.write(f"{pad}{key}: {', '.join(str(v) for v in value)}\n")
        elif isinstance(value, (list, dict)):
            sys.stdout.write(f"{pad}{key}: {json.dumps(value, default=str)}\n")
        else:
            sys.stdout.write(f"{pad}{key}: {value}\n")
    sys.stdout.flush()


def say(message: str, verbosity: int) -> None:
    """A human summary line on stderr, silenced by -q."""
    if verbosity >= 0:
        stderr.print(message, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator:
    """Yield a ``progress(done, total, description)`` callback drawing a rich bar on stderr."""
    if not enabled:
        yield lambda done, total, desc="": None
        return
    if not stderr.is_terminal:
        yield LogProgress(description)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}"),
        console=stderr,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=None, eta="")
        rate = _Rate()

        def update(done: int, total: int, desc: str = "") -> None:
            # rich's own remaining-time column needs many quick updates; simulate's rounds
            # take minutes, so the ETA comes from this run's work so far (as in a log)
            remaining = rate.remaining(done, total, time.monotonic())
            bar.update(
                task,
                completed=done,
                total=total,
                description=f"{description} {desc}".strip(),
                eta="" if remaining is None else f"ETA {_duration(remaining)}",
            )

        yield update


#: seconds between two progress lines in a log (RSCRISIS_PROGRESS_SECONDS overrides)
LOG_PROGRESS_SECONDS = 30.0


class _Rate:
    """Work per second since the first report of this run, so a resumed run's estimate is not
    flattered by what an earlier run did, and set-up is not counted as work."""

    def __init__(self) -> None:
        self.first: tuple[int, float] | None = None

    def per_second(self, done: int, now: float) -> float | None:
        if self.first is None:
            self.first = (done, now)
        made, spent = done - self.first[0], now - self.first[1]
        return made / spent if made > 0 and spent > 0 else None

    def remaining(self, done: int, total: int, now: float) -> float | None:
        """Seconds left, or None before any rate is known or once the work is done."""
        rate = self.per_second(done, now)
        if rate is None or not total or done >= total:
            return None
        return (total - done) / rate


class LogProgress:
    """Progress for a log file or a pipe, where a bar cannot draw: one plain, timestamped line
    at the start, then at most one every ``seconds`` (and at each 10 %), and at the end, with
    done/total, the rate and an ETA. The rate counts only work done in this run, so a resumed
    run's ETA is not flattered by what an earlier run did."""

    def __init__(self, description: str, seconds: float | None = None, stream=None):
        import os

        if seconds is None:
            seconds = float(os.environ.get("RSCRISIS_PROGRESS_SECONDS", LOG_PROGRESS_SECONDS))
        self.description = description
        self.seconds = seconds
        self.stream = stream
        self.clock = time.monotonic
        self.t0 = self.clock()
        self.rate = _Rate()
        self.last_time = -math.inf
        self.last_decile = -1

    def __call__(self, done: int, total: int, description: str = "") -> None:
        now = self.clock()
        rate = self.rate.per_second(done, now)
        decile = int(10 * done / total) if total else -1
        final = bool(total) and done >= total
        if not (final or now - self.last_time >= self.seconds or decile > self.last_decile):
            return
        self.last_time, self.last_decile = now, decile
        elapsed = now - self.t0
        parts = [f"{done}/{total}" if total else str(done)]
        if total:
            parts[0] += f" ({100 * done / total:.0f} %)"
        if rate is not None:
            parts.append(f"{rate:.3g}/s" if rate >= 1 else f"{1 / rate:.3g} s each")
            remaining = self.rate.remaining(done, total, now)
            if remaining is not None:
                parts.append(f"ETA {_duration(remaining)}")
        parts.append(f"elapsed {_duration(elapsed)}")
        line = f"{_timestamp()} {self.description}: {', '.join(parts)}"
        if description:
            line += f" - {description}"
        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()


def _timestamp() -> str:
    import datetime

    return datetime.datetime.now().isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


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
