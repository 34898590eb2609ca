"""How long-running library functions report progress without knowing about rich or typer."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Called as ``progress(done, total, description)`` after each unit of work."""

    def __call__(self, done: int, total: int, description: str = "") -> None: ...


def no_progress(done: int, total: int, description: str = "") -> None:
    """The default: report nothing."""
