"""Blend overlapping window predictions into finished scene rows, in memory bounded by width.

Windows arrive in row-major order. The stitcher keeps weighted sums for one band of rows as
tall as a window; when the first window of the next window row arrives, every row above its
offset can no longer change, so those rows are emitted and the band slides down. Memory is
``2 x window x scene width`` floats whatever the scene height, and the :class:`Rechunker` turns
the emitted rows into block-aligned strips so compressed GeoTIFF blocks are written once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rscrisis.geo.windows import WindowPlan, WindowSpec

RowsSink = Callable[[int, np.ndarray, np.ndarray], None]  # (first row, prob, valid)


class StripStitcher:
    """Weighted average of overlapping windows, emitting rows as soon as they are final."""

    def __init__(self, plan: WindowPlan, emit: RowsSink):
        self.plan = plan
        self.emit = emit
        width = max(plan.width, plan.size)
        self._sum = np.zeros((plan.size, width), np.float32)
        self._weight = np.zeros((plan.size, width), np.float32)
        self._valid = np.zeros((plan.size, width), bool)
        self._base = 0  # scene row of buffer row 0
        self._done = False
        self._weights: dict[tuple[int, int], np.ndarray] = {}

    def add(self, spec: WindowSpec, prob: np.ndarray, valid: np.ndarray) -> None:
        """Blend one window's (size, size) probabilities; ``valid`` marks real pixels."""
        if spec.row_off > self._base:
            self._flush_to(spec.row_off)
        r = spec.row_off - self._base
        s = self.plan.size
        cols = slice(spec.col_off, spec.col_off + s)
        nr, nc = len(self.plan.row_offsets), len(self.plan.col_offsets)
        key = (
            min(spec.row, 1) + (spec.row == nr - 1) * 2,
            min(spec.col, 1) + (spec.col == nc - 1) * 2,
        )
        w = self._weights.get(key)
        if w is None:  # only 9 distinct weight patterns: interior, edges, corners
            w = self._weights[key] = self.plan.weights(spec)
        self._sum[r : r + s, cols] += w * prob
        self._weight[r : r + s, cols] += w
        self._valid[r : r + s, cols] |= valid

    def skip(self, spec: WindowSpec) -> None:
        """A window with no valid pixel: nothing to blend, but its row may end the band."""
        if spec.row_off > self._base:
            self._flush_to(spec.row_off)

    def finish(self) -> None:
        """Emit the rows still held (the last window row)."""
        if not self._done:
            self._flush_to(self.plan.height)
            self._done = True

    def _flush_to(self, row: int) -> None:
        n = min(row, self.plan.height) - self._base
        if n <= 0:
            return
        w = self.plan.width
        weight = self._weight[:n, :w]
        valid = self._valid[:n, :w] & (weight > 0)
        prob = np.divide(self._sum[:n, :w], weight, out=np.zeros_like(weight), where=weight > 0)
        self.emit(self._base, prob, valid)
        keep = len(self._sum) - n  # rows still open slide to the top of the band
        for buf in (self._sum, self._weight, self._valid):
            buf[:keep] = buf[n:]  # numpy buffers overlapping copies
            buf[keep:] = 0
        self._base += n


class Rechunker:
    """Regroup emitted rows into strips of ``rows`` (the output block height) before writing."""

    def __init__(self, rows: int, sink: RowsSink):
        self.rows = rows
        self.sink = sink
        self._prob: list[np.ndarray] = []
        self._valid: list[np.ndarray] = []
        self._start = 0
        self._held = 0

    def __call__(self, first_row: int, prob: np.ndarray, valid: np.ndarray) -> None:
        if not self._held:
            self._start = first_row
        self._prob.append(prob)
        self._valid.append(valid)
        self._held += len(prob)
        if self._held >= self.rows:
            self._drain(full_only=True)

    def flush(self) -> None:
        self._drain(full_only=False)

    def _drain(self, full_only: bool) -> None:
        if not self._held:
            return
        prob = np.concatenate(self._prob)
        valid = np.concatenate(self._valid)
        n_out = (len(prob) // self.rows) * self.rows if full_only else len(prob)
        if n_out:
            self.sink(self._start, prob[:n_out], valid[:n_out])
        self._prob, self._valid = [prob[n_out:]], [valid[n_out:]]
        self._start += n_out
        self._held = len(prob) - n_out
        if not self._held:
            self._prob, self._valid = [], []
