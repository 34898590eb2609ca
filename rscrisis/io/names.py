"""Tile ids and task names: the one rule for names that become parts of file paths.

Tile ids and task names are read back from files anyone can edit (``index.gpkg``,
``scores.gpkg``, ``status.csv``, ``batch.json``) and become file names (``images/<id>.tif``,
``tasks/<task>/``). A name that held a path separator or ``..`` would steer a write outside the
output folder, so every reader checks every name against one character set before use: ASCII
letters, digits, ``.``, ``_`` and ``-``, starting with a letter, digit or ``_``, no ``..``, at
most :data:`MAX_LENGTH` characters. Scene file names outside that set are mapped into it when
tile ids are made (:func:`safe_name`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from rscrisis.errors import InputError

MAX_LENGTH = 200
_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def is_safe(name: object) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= MAX_LENGTH
        and _SAFE.fullmatch(name) is not None
        and ".." not in name
    )


def safe_name(text: str) -> str:
    """``text`` mapped into the safe set: runs of other characters become ``_``."""
    name = _UNSAFE_CHARS.sub("_", text).replace("..", "_")
    if not name or not _SAFE.fullmatch(name[0]):
        name = "_" + name
    return name[:MAX_LENGTH]


def check_names(names: Iterable[object], what: str, source: str | Path) -> None:
    """Refuse ``source`` when any of ``names`` is not a safe name (module docstring)."""
    for name in names:
        if not is_safe(name):
            raise InputError(
                f"has an unsafe {what} {str(name)[:80]!r}",
                path=source,
                hint=f"a {what} may hold only ASCII letters, digits, '.', '_' and '-' (no path "
                "separators, no '..'); the file was edited or damaged: restore it from the "
                "original",
            )


def child(root: Path, name: str, suffix: str = "") -> Path:
    """``root / (name + suffix)``, refused unless ``name`` is safe: every path made from a tile
    id or task name is built here, so none can leave ``root`` even if a reader forgot to check."""
    if not is_safe(name):
        check_names([name], "name", root)
    return Path(root) / f"{name}{suffix}"
