"""Safe outputs: atomic file writes and the overwrite / resume guard of every command.

DESIGN.md asks that a killed run never leaves a half-written file that looks complete and that a
rerun refuses or resumes cleanly. Every product is written under a hidden ``.NAME.partial.EXT``
name in the same folder and renamed into place (``os.replace`` is atomic on one filesystem), so a
file with its final name is always whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rscrisis.errors import InputError, OutputExistsError

PARTIAL_TAG = ".partial"


def partial_path(final: Path) -> Path:
    """The temporary name ``final`` is written under (same folder, same suffix for drivers)."""
    return final.with_name(f".{final.stem}{PARTIAL_TAG}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``final`` only if the block succeeds."""
    tmp = partial_path(final)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(final: Path, payload: Any) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_csv_atomic(final: Path, rows: list[dict]) -> None:
    """Write dict rows as CSV; the header is the union of their keys, in first-seen order."""
    import csv

    keys = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(final) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def remove_partials(folder: Path) -> int:
    """Delete leftovers of a killed run (``.*.partial.*``) below ``folder``; returns the count."""
    n = 0
    for p in folder.rglob(f".*{PARTIAL_TAG}*"):
        if p.is_file():
            p.unlink()
            n += 1
    return n


def guard_output_dir(out: Path, products: Iterable[str], *, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber existing products unless asked; with ``overwrite``, remove them.

    Only the named products are ever deleted, never other files a user keeps in ``out``.
    """
    if overwrite and resume:
        raise InputError("--overwrite and --resume exclude each other", hint="choose one")
    if out.exists() and not out.is_dir():
        raise OutputExistsError("exists and is not a folder", path=out, hint="choose another --out")
    existing = [out / p for p in products if (out / p).exists()]
    if not existing:
        return
    if overwrite:
        for p in existing:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        return
    if resume:
        return
    raise OutputExistsError(
        f"already holds output ({existing[0].name})",
        path=out,
        hint="pass --overwrite to replace it, --resume to finish an interrupted run, "
        "or choose another --out",
    )
