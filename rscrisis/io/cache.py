"""rscrisis' user cache: what costs time to make and can always be made again.

Today that is the ONNX graph of a model (:func:`rscrisis.ml.engine.onnx_runner`): exporting
it takes 1.4 s in a fresh process on a 2-core AVX2 CPU, most of it PyTorch's exporter importing
and re-parsing through the ``onnx`` package, and a shell loop that maps one scene per
``rscrisis predict`` pays it every time. Reading it back takes 0.05 s.

Where: ``$RSCRISIS_CACHE_DIR``, else ``$XDG_CACHE_HOME/rscrisis``, else ``~/.cache/rscrisis``
(the XDG base-directory convention, as pip and PyTorch Hub follow). ``RSCRISIS_CACHE_DIR=off``
(or empty) turns it off.

Safety, since the folder outlives every run:
- An entry is named by a hex digest the caller computes from what the entry was made from,
  checked here, so nothing read from a file chooses a path, and the folder holds nothing else
  of ours.
- Entries are written under a unique temporary name and renamed into place, so concurrent
  processes (a cluster's workers) never read a half-written entry.
- Reading refuses an entry larger than the caller's bound, and the caller checks what it
  reads (the graph is run against the model before it is used).
- Each kind keeps at most ``keep`` entries, the least recently used removed first.
- A cache that cannot be read or written (a read-only home, a full disk) is skipped with a
  debug message: the cache never makes a run fail.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "RSCRISIS_CACHE_DIR"
_OFF = {"", "off", "none", "0"}
_KEY = re.compile(r"[0-9a-f]{64}")
_KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")


def cache_dir() -> Path | None:
    """The cache folder (not created here), or None when the cache is off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "rscrisis"


def _entry(kind: str, key: str, suffix: str) -> Path | None:
    names = _KIND.fullmatch(kind) and _KEY.fullmatch(key) and re.fullmatch(r"\.[a-z]+", suffix)
    if not names:
        raise ValueError(f"not a cache entry name: {kind!r}, {key!r}, {suffix!r}")
    root = cache_dir()
    return None if root is None else root / kind / f"{key}{suffix}"


def read_cached(kind: str, key: str, suffix: str, max_bytes: int) -> bytes | None:
    """The entry's bytes (and it becomes the most recently used), or None when it is absent,
    larger than ``max_bytes``, unreadable, or the cache is off."""
    path = _entry(kind, key, suffix)
    if path is None:
        return None
    try:
        if not path.is_file() or path.is_symlink():
            return None
        size = path.stat().st_size
        if size > max_bytes:
            log.warning("cache entry %s is %d bytes, over %d: ignored", path, size, max_bytes)
            return None
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            return None
        os.utime(path)
        return data
    except OSError as e:
        log.debug("cache entry %s not read (%s)", path, e)
        return None


def write_cached(kind: str, key: str, suffix: str, data: bytes, keep: int) -> Path | None:
    """Store ``data`` as the entry (atomically), then keep the ``keep`` most recently used
    entries of ``kind``. Returns the entry's path, or None when nothing was written."""
    path = _entry(kind, key, suffix)
    if path is None:
        return None
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{key}.", suffix=".partial", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        log.debug("cache entry %s not written (%s)", path, e)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        return None
    _trim(path.parent, suffix, keep)
    return path


def _trim(folder: Path, suffix: str, keep: int) -> None:
    """Remove all but the ``keep`` most recently used entries (ours only: digest names)."""
    try:
        entries = [
            p for p in folder.iterdir()
            if p.suffix == suffix and _KEY.fullmatch(p.stem) and p.is_file()
        ]  # fmt: skip
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[keep:]:
            old.unlink(missing_ok=True)
    except OSError as e:  # another process trimming at the same time
        log.debug("cache folder %s not trimmed (%s)", folder, e)
