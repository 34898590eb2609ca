"""Sliding-window layout and blending weights for whole-scene inference.

Why blend: a U-Net sees less context near a window's edge, so predictions there are worse and
differ from the neighbouring window's; pasting windows side by side leaves visible seams and
buildings cut along straight lines. Overlapping windows are instead averaged with weights that
fall smoothly to zero over the overlap (a raised-cosine / Hann ramp), so every pixel is decided
mostly by the window that sees it best.

The ramp ``sin²(π/2 · (i + ½) / overlap)`` and its mirror sum to exactly 1 across an overlap
of ``overlap`` pixels, so blending is a partition of unity: a model that returns a constant
returns that constant everywhere, seams included. Window sides lying on the scene border are
not tapered (nothing on the other side to blend with).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def window_offsets(length: int, size: int, stride: int) -> list[int]:
    """Offsets covering ``length`` with windows of ``size`` every ``stride`` pixels.

    The last window is moved back to end exactly at the scene edge (instead of running past it
    into padding), so no compute is spent on padding and edge windows see full context. A scene
    shorter than one window gets a single window at 0 (padded by the reader).
    """
    if length <= size:
        return [0]
    offsets = list(range(0, length - size, stride))
    offsets.append(length - size)
    return offsets


def taper(size: int, overlap: int, start: bool, end: bool) -> np.ndarray:
    """1-D blending weights of one window: ramps of ``overlap`` pixels at tapered sides."""
    w = np.ones(size, np.float32)
    ramp_len = min(overlap, size // 2)
    if ramp_len <= 0:
        return w
    i = np.arange(ramp_len, dtype=np.float64)
    ramp = (np.sin(np.pi / 2 * (i + 0.5) / ramp_len) ** 2).astype(np.float32)
    if start:
        w[:ramp_len] = ramp
    if end:
        w[size - ramp_len :] = ramp[::-1]
    return w


def core_bounds(offsets: Sequence[int], size: int, length: int) -> list[tuple[int, int]]:
    """Per window, the pixel range it 'owns': split at the middle of each overlap.

    The cores tile the axis without gaps or overlap, which is what the per-window quality
    layer draws (one cell per window, no stacked polygons in QGIS).
    """
    cuts = [0]
    for prev, nxt in itertools.pairwise(offsets):
        cuts.append((nxt + min(prev + size, length)) // 2)
    cuts.append(length)
    return list(itertools.pairwise(cuts))


@dataclass(frozen=True)
class WindowSpec:
    """One inference window: grid position, pixel offsets, its core and blending weights."""

    row: int
    col: int
    row_off: int
    col_off: int
    core_rows: tuple[int, int]
    core_cols: tuple[int, int]
    first_in_row: bool


@dataclass(frozen=True)
class WindowPlan:
    """All windows of a scene, row-major, with the weights to blend them."""

    width: int
    height: int
    size: int
    overlap: int
    row_offsets: tuple[int, ...]
    col_offsets: tuple[int, ...]

    @classmethod
    def build(cls, width: int, height: int, size: int, overlap: int) -> WindowPlan:
        if not 0 <= overlap < size:
            raise ValueError(f"overlap ({overlap}) must be in [0, {size})")
        stride = size - overlap
        return cls(
            width,
            height,
            size,
            overlap,
            tuple(window_offsets(height, size, stride)),
            tuple(window_offsets(width, size, stride)),
        )

    def __len__(self) -> int:
        return len(self.row_offsets) * len(self.col_offsets)

    def row_windows(self, i: int) -> list[WindowSpec]:
        """The windows of window row ``i``: a scene is planned one row at a time, so memory
        does not grow with its height."""
        row_cores = core_bounds(self.row_offsets, self.size, self.height)
        col_cores = core_bounds(self.col_offsets, self.size, self.width)
        r = self.row_offsets[i]
        return [
            WindowSpec(i, j, r, c, row_cores[i], col_cores[j], j == 0)
            for j, c in enumerate(self.col_offsets)
        ]

    def windows(self) -> list[WindowSpec]:
        return [w for i in range(len(self.row_offsets)) for w in self.row_windows(i)]

    def weights(self, spec: WindowSpec) -> np.ndarray:
        """(size, size) blending weights of ``spec`` (outer product of the two tapers)."""
        nr, nc = len(self.row_offsets), len(self.col_offsets)
        wr = taper(self.size, self.overlap, spec.row > 0, spec.row < nr - 1)
        wc = taper(self.size, self.overlap, spec.col > 0, spec.col < nc - 1)
        return np.outer(wr, wc)
