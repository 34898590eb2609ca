"""Two small threads around the model: a reader ahead of it and a writer behind it.

Why threads and not DataLoader workers: the reader is GDAL (which releases the GIL) and numpy,
the writer is numpy, deflate and GDAL; threads share the dataset handles' process and need no
pickling, and on a 2-core laptop extra processes only fight torch for the cores. Queues are
bounded, so memory is a few batches whatever the scene size. An exception in either thread is
re-raised in the caller, and a failure in the caller stops both threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_DONE = object()
#: nice value of the helper threads (Linux): they yield the cores to the model's threads
HELPER_NICE = 19


def lower_thread_priority(nice: int = HELPER_NICE) -> None:
    """Make the calling thread yield the cores to the model's compute threads.

    On Linux every thread has its own nice value. The model keeps all cores busy and waits at
    barriers between its parallel regions, so a helper preempting one compute thread stalls all
    of them: measured on 2 cores (24 Mpx scene, bf16), 3.9 CPU-s of helper work slowed the
    model by about 5 s, and the pipeline reached 0.82 of the bare forward throughput; at nice
    19, 0.93. Helpers then run in the gaps, and whenever the model waits for them (bounded
    queues), so they are never starved. Elsewhere than Linux a no-op.
    """
    import os
    import sys

    if not sys.platform.startswith("linux") or not nice:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), nice))
    except OSError:  # not permitted in some sandboxes: keep the default priority
        pass


class Prefetcher:
    """Iterate ``source`` in a background thread, at most ``depth`` items ahead."""

    def __init__(self, source: Iterable[Any], depth: int = 2, name: str = "rscrisis-reader"):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterable[Any]) -> None:
        lower_thread_priority()
        try:
            for item in source:
                if not self._put(item):
                    return
        except BaseException as exc:  # re-raised in the consumer
            self._error = exc
        self._put(_DONE)

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    if self._error is not None:
                        raise self._error
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class BackgroundConsumer:
    """Feed items to ``handle`` in a background thread; :meth:`close` waits and re-raises."""

    def __init__(
        self, handle: Callable[[Any], None], depth: int = 2, name: str = "rscrisis-writer"
    ):
        self._handle = handle
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lower_thread_priority()
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is None:
                try:
                    self._handle(item)
                except BaseException as exc:
                    self._error = exc

    def put(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every item is handled; raise the first error of the handler."""
        self._queue.put(_DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error
