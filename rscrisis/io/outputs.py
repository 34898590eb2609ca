"""Safe outputs: atomic file writes and the overwrite / resume guard of every command.

docs/design.md asks that a killed run never leaves a half-written file that looks complete and
that a rerun refuses or resumes cleanly. Every product is written under a hidden
``.NAME.partial.EXT`` name in the same folder and renamed into place (``os.replace`` is atomic
on one filesystem), so a file with its final name is always whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rscrisis.errors import InputError, OutputExistsError, OutputLockedError

log = logging.getLogger(__name__)

PARTIAL_TAG = ".partial"
#: the lock file of an output folder (a dot file: never a product, never deleted by --overwrite)
LOCK_NAME = ".rscrisis.lock"


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


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (no extra disk), or a copy where links are impossible
    (another filesystem, FAT-formatted USB sticks). Only for files rscrisis itself reads later:
    files people edit (batch chips) are always copied."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def remove_partials(folder: Path) -> int:
    """Delete leftovers of a killed run (``.*.partial.*``) below ``folder``; returns the count."""
    n = 0
    for p in folder.rglob(f".*{PARTIAL_TAG}*"):
        if p.is_file():
            p.unlink()
            n += 1
    return n


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _check_out_dir(out: Path, overwrite: bool, resume: bool) -> None:
    if overwrite and resume:
        raise InputError("--overwrite and --resume exclude each other", hint="choose one")
    if out.exists() and not out.is_dir():
        raise OutputExistsError("exists and is not a folder", path=out, hint="choose another --out")


def guard_output_dir(
    out: Path,
    products: Iterable[str],
    *,
    overwrite: bool,
    resume: bool,
    resumable: bool = False,
) -> None:
    """Refuse to clobber existing products unless asked; with ``overwrite``, remove them.

    Only the named products are ever deleted, never other files a user keeps in ``out``.
    ``resumable``: the command has ``--resume`` (the refusal suggests it only then).
    """
    _check_out_dir(out, overwrite, resume)
    existing = [out / p for p in products if (out / p).exists()]
    if not existing:
        return
    if overwrite:
        _remove(existing)
        return
    if resume:
        return
    raise OutputExistsError(
        f"already holds output ({existing[0].name})",
        path=out,
        hint="pass --overwrite to replace it, "
        + ("--resume to finish an interrupted run, " if resumable else "")
        + "or choose another --out",
    )


class _FolderLock:
    """An exclusive advisory lock on an output folder: ``flock`` on ``LOCK_NAME`` inside it.

    Why flock and not a bare pid file: the kernel drops the lock when its process dies (killed,
    power cut), so a stale lock never blocks a rerun; the pid, host and start time written into
    the file only serve the message a second writer sees. The file is removed on release while
    still locked, and a process that locks a file checks that it is still the one at the path
    (the usual guard against locking an unlinked inode). Where ``fcntl`` is missing (Windows)
    the lock is skipped with a debug message: users must then not share an output folder.
    """

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            log.debug("no fcntl: output folder %s is not locked", self.path.parent)
            return
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 400).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise OutputLockedError(
                    f"is being written by another rscrisis run ({holder})",
                    path=self.path.parent,
                    hint="wait for it to finish, or choose another --out",
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed it between our open and our lock: try again
        else:  # pragma: no cover - a pathological race
            raise OutputLockedError("cannot be locked", path=self.path.parent)
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)  # closing drops the flock
            self._fd = None


@contextlib.contextmanager
def claim_output_dir(
    out: Path,
    products: Iterable[str],
    *,
    overwrite: bool = False,
    resume: bool = False,
    resumable: bool = False,
) -> Iterator[Path]:
    """Own the output folder ``out`` for the duration of a command.

    In order: refuse bad combinations and a non-folder ``out``; create ``out``; take its
    exclusive lock (a second writer exits 2 with :class:`OutputLockedError`, before anything
    is deleted); then refuse or (``overwrite``) remove existing products, as
    :func:`guard_output_dir`. If the block fails on bad input (an :class:`InputError` found
    mid-run, e.g. a truncated scene), the products of this run are removed again, and ``out``
    too when this run created it, so bad input leaves nothing behind. With ``resume``, and on
    any other failure (disk full, Ctrl-C), complete outputs are kept for ``--resume``.
    """
    products = list(products)
    out = Path(out)
    _check_out_dir(out, overwrite, resume)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot be created ({exc.strerror})", path=out, hint="choose a writable --out"
        ) from exc
    lock = _FolderLock(out)
    try:
        lock.acquire()
        guard_output_dir(out, products, overwrite=overwrite, resume=resume, resumable=resumable)
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    try:
        yield out
    except InputError:
        if not resume:
            _remove(out / p for p in products)
            remove_partials(out)
        lock.release()
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        lock.release()
