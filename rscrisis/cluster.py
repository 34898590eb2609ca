"""Where independent tasks run: in this process, or on a Dask distributed cluster.

One service for the commands that fan out over scenes (``predict`` of many scenes, ``tile`` of
many scenes): ``executor(None)`` runs tasks here, one after the other; ``executor("local:N")``
starts a Dask ``LocalCluster`` of N worker processes; ``executor("tcp://host:port")`` connects
to a running Dask scheduler. Dask does the scheduling, the retries of a task whose worker died
and the dashboard; nothing here schedules. Tasks are module-level functions, so workers import
them by name and need rscrisis installed.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from rscrisis.errors import InputError

log = logging.getLogger(__name__)

#: Dask retries of a task whose worker died or that raised an unexpected error
RETRIES = 2


class Executor:
    """Runs tasks and yields (task, result) as they finish: here, in order."""

    label = "in-process"
    dashboard: str | None = None

    def torch_threads(self, asked: int | None) -> int | None:
        """Torch threads per task: what was asked, else (on a cluster) each worker's share of
        the cores, so N workers do not oversubscribe them; None here (torch's default)."""
        return asked

    def run(self, fn: Callable, jobs: list[tuple[Any, tuple]], catch: bool = False) -> Iterator:
        """``fn(*args)`` for each (task, args); with ``catch`` an exception becomes a failed
        record (``status``, ``reason``) instead of ending the run (only on a cluster, where a
        task that keeps failing must not stop the others)."""
        for task, args in jobs:
            yield task, fn(*args)

    def workers(self) -> int:
        return 1

    def close(self) -> None:
        pass


class DaskExecutor(Executor):
    """Tasks on a Dask distributed cluster: a LocalCluster of N processes, or a running one."""

    def __init__(self, scheduler: str):
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - dask is a dependency
            raise InputError(
                "--scheduler needs dask.distributed", hint="pip install 'dask[distributed]'"
            ) from exc
        self.label = scheduler
        self.cluster = None
        if scheduler == "local" or scheduler.startswith("local:"):
            _, _, n = scheduler.partition(":")
            try:
                workers = int(n) if n else max(1, (os.cpu_count() or 2) // 2)
            except ValueError:
                workers = 0
            if workers < 1:
                raise InputError(
                    f"invalid --scheduler {scheduler!r}",
                    hint="use local, local:N (N >= 1 workers) or tcp://host:port",
                )
            self.cluster = local_cluster(workers)
            self.client = Client(self.cluster)
        elif scheduler.startswith(("tcp://", "tls://", "inproc://")):
            try:
                self.client = Client(scheduler, timeout=30)
            except OSError as exc:
                raise InputError(
                    f"cannot reach the Dask scheduler at {scheduler} ({exc})",
                    hint="start one with dask scheduler, then dask worker on each machine",
                ) from exc
        else:
            raise InputError(
                f"invalid --scheduler {scheduler!r}", hint="use local, local:N or tcp://host:port"
            )
        self.dashboard = self.client.dashboard_link
        log.info("Dask dashboard: %s", self.dashboard)

    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def torch_threads(self, asked: int | None) -> int | None:
        return asked if asked is not None else cores_per_worker(self.workers())

    def run(self, fn: Callable, jobs: list[tuple[Any, tuple]], catch: bool = False) -> Iterator:
        from distributed import as_completed

        futures = {}
        for n, (task, args) in enumerate(jobs):
            key = f"rscrisis-{fn.__name__}-{n}-{os.getpid()}-{id(jobs)}"
            futures[self.client.submit(fn, *args, key=key, retries=RETRIES, pure=False)] = task
        try:
            for future in as_completed(futures):
                task = futures[future]
                try:
                    result = future.result()
                except Exception as exc:
                    if not catch:
                        raise
                    result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                              "seconds": math.nan, "worker": ""}  # fmt: skip
                yield task, result
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def worker_environment(workers: int) -> dict[str, str]:
    """The environment of a local worker process. Dask's nanny sets ``OMP_NUM_THREADS=1`` and
    ``MALLOC_TRIM_THRESHOLD_=65536`` by default: the first fights torch's own thread count,
    the second returns every freed window buffer to the kernel (measured: scene tasks 1.6x
    slower). Here each worker gets its share of the cores, and torch's OpenMP threads yield
    while they wait, as in the in-process path."""
    return {**thread_environment(cores_per_worker(workers)), "OMP_WAIT_POLICY": "PASSIVE"}


def thread_environment(threads: int) -> dict[str, str]:
    """The OpenMP and MKL thread counts of a worker process, set before torch is imported."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def cores_per_worker(workers: int) -> int:
    """This machine's cores shared by ``workers`` processes (at least one each)."""
    return max(1, (os.cpu_count() or 1) // workers)


def local_cluster(workers: int):
    """A Dask LocalCluster of ``workers`` single-threaded worker processes (see
    :func:`worker_environment`)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment(workers)}):
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )


def executor(scheduler: str | None) -> Executor:
    """Where to run: here (``None``) or on Dask (``local[:N]``, ``tcp://host:port``)."""
    return Executor() if not scheduler else DaskExecutor(scheduler)
