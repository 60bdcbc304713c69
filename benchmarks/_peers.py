"""Adapters for the libraries bench_core.py compares zpool with (the peers).

Each peer is wrapped in a small object with the part of the
``multiprocessing.Pool`` API that the figures call::

    apply(func, args)        -> the result (blocks)
    apply_async(func, args)  -> a handle with .get(timeout)
    map(func, iterable)      -> a list, with the peer's default chunking
    imap(func, iterable)     -> an iterator over the results in order, default chunking
    terminate(), join()      -> stop every process the adapter started

Constructing an adapter starts the peer (its workers and, for Ray, dask and
ipyparallel, its scheduler as well), so that the start-up figure times the
whole start, as it does for zpool's hidden controller.

===========  ===================================================================
peer         what the adapter calls
===========  ===================================================================
mpire        ``WorkerPool(n_jobs, keep_alive=True)``: apply, apply_async, map, imap
             (without keep_alive every map would start and stop the workers)
loky         ``get_reusable_executor(max_workers, kill_workers=True)``: submit, map
             (map's lazy iterator for imap); terminate shuts it down with its
             workers, so the next adapter gets a fresh executor
ray          ``ray.init(address="local", num_cpus)`` then
             ``ray.util.multiprocessing.Pool``; ``ray.shutdown()`` in join
dask         ``Client(LocalCluster(n_workers, threads_per_worker=1, processes=True,
             dashboard_address=None))``: submit(...).result(), map + gather
ipyparallel  ``Cluster(n).start_and_connect_sync()`` and a load-balanced view:
             apply_sync, apply_async, map_sync, imap; the cluster stops in join
===========  ===================================================================

The peers are imported in the constructors, never at module level: the
spawn children of bench_core.py import this module. Their workers import
the task functions from ``_workloads`` by name, found through the
``PYTHONPATH`` that bench_core.py exports before any pool starts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator


class FutureHandle:
    """A ``concurrent.futures``-style future seen as an ``AsyncResult``: ``.get(timeout)``."""

    __slots__ = ("_future",)

    def __init__(self, future) -> None:
        self._future = future

    def get(self, timeout: float | None = None):
        return self._future.result(timeout)


def _results_in_order(futures: list) -> Iterator:
    """Yield each future's result in submission order (imap over already submitted futures)."""
    for future in futures:
        yield future.result()


class MpirePool:
    """mpire's ``WorkerPool``; its workers start with the first task."""

    def __init__(self, processes: int) -> None:
        from mpire import WorkerPool

        self._pool = WorkerPool(n_jobs=processes, keep_alive=True)

    def apply(self, func: Callable, args: tuple = ()):
        return self._pool.apply(func, tuple(args))

    def apply_async(self, func: Callable, args: tuple = ()):
        return self._pool.apply_async(func, tuple(args))

    def map(self, func: Callable, iterable: Iterable) -> list:
        return self._pool.map(func, iterable)

    def imap(self, func: Callable, iterable: Iterable) -> Iterator:
        return self._pool.imap(func, iterable)

    def terminate(self) -> None:
        self._pool.terminate()

    def join(self) -> None:
        self._pool.join()


class LokyPool:
    """loky's reusable executor, shut down (workers killed) by ``terminate``."""

    def __init__(self, processes: int) -> None:
        from loky import get_reusable_executor

        self._executor = get_reusable_executor(max_workers=processes, kill_workers=True)

    def apply(self, func: Callable, args: tuple = ()):
        return self._executor.submit(func, *args).result()

    def apply_async(self, func: Callable, args: tuple = ()) -> FutureHandle:
        return FutureHandle(self._executor.submit(func, *args))

    def map(self, func: Callable, iterable: Iterable) -> list:
        return list(self._executor.map(func, iterable))

    def imap(self, func: Callable, iterable: Iterable) -> Iterator:
        return self._executor.map(func, iterable)

    def terminate(self) -> None:
        self._executor.shutdown(wait=True, kill_workers=True)

    def join(self) -> None:
        pass  # terminate already waited for the workers


class RayPool:
    """``ray.util.multiprocessing.Pool`` on a local Ray instance of its own."""

    def __init__(self, processes: int) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats prompt or upload
        import ray
        from ray.util.multiprocessing import Pool

        # address="local": a new instance (honest start-up), never one found running on the machine.
        ray.init(
            address="local",
            num_cpus=processes,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        self._ray = ray
        try:
            self._pool = Pool(processes)
        except BaseException:
            ray.shutdown()
            raise

    def apply(self, func: Callable, args: tuple = ()):
        return self._pool.apply(func, tuple(args))

    def apply_async(self, func: Callable, args: tuple = ()):
        return self._pool.apply_async(func, tuple(args))

    def map(self, func: Callable, iterable: Iterable) -> list:
        return self._pool.map(func, iterable)

    def imap(self, func: Callable, iterable: Iterable) -> Iterator:
        return self._pool.imap(func, iterable)

    def terminate(self) -> None:
        self._pool.terminate()

    def join(self) -> None:
        try:
            self._pool.join()
        finally:
            self._ray.shutdown()


class DaskPool:
    """A dask.distributed ``Client`` on a ``LocalCluster`` of single-threaded worker processes."""

    def __init__(self, processes: int) -> None:
        from distributed import Client, LocalCluster

        self._cluster = LocalCluster(
            n_workers=processes,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        try:
            self._client = Client(self._cluster)
        except BaseException:
            self._cluster.close()
            raise

    # pure=False everywhere: dask would otherwise compute equal calls once and share the result.
    def apply(self, func: Callable, args: tuple = ()):
        return self._client.submit(func, *args, pure=False).result()

    def apply_async(self, func: Callable, args: tuple = ()) -> FutureHandle:
        return FutureHandle(self._client.submit(func, *args, pure=False))

    def map(self, func: Callable, iterable: Iterable) -> list:
        return self._client.gather(self._client.map(func, iterable, pure=False))

    def imap(self, func: Callable, iterable: Iterable) -> Iterator:
        return _results_in_order(self._client.map(func, iterable, pure=False))

    def terminate(self) -> None:
        self._client.close()

    def join(self) -> None:
        self._cluster.close()


class IPyParallelPool:
    """An ipyparallel cluster of its own, used through a load-balanced view."""

    def __init__(self, processes: int) -> None:
        import ipyparallel as ipp

        self._cluster = ipp.Cluster(n=processes, log_level=logging.ERROR)
        try:
            self._client = self._cluster.start_and_connect_sync()
        except BaseException:
            self._cluster.stop_cluster_sync()
            raise
        self._view = self._client.load_balanced_view()

    def apply(self, func: Callable, args: tuple = ()):
        return self._view.apply_sync(func, *args)

    def apply_async(self, func: Callable, args: tuple = ()):
        return self._view.apply_async(func, *args)

    def map(self, func: Callable, iterable: Iterable) -> list:
        return self._view.map_sync(func, iterable)

    def imap(self, func: Callable, iterable: Iterable) -> Iterator:
        return self._view.imap(func, iterable)

    def terminate(self) -> None:
        self._client.close()

    def join(self) -> None:
        self._cluster.stop_cluster_sync()


@dataclass(frozen=True)
class Peer:
    key: str
    module: str  # import name: the peer counts as installed when Python can find it
    dist: str  # distribution name, for the version in the column label
    factory: Callable[[int], object]

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def label(self) -> str:
        try:
            return f"{self.key} {importlib.metadata.version(self.dist)}"
        except importlib.metadata.PackageNotFoundError:
            return f"{self.key} (not installed)"


PEERS = {
    p.key: p
    for p in (
        Peer("mpire", "mpire", "mpire", MpirePool),
        Peer("loky", "loky", "loky", LokyPool),
        Peer("ray", "ray", "ray", RayPool),
        Peer("dask", "distributed", "distributed", DaskPool),
        Peer("ipyparallel", "ipyparallel", "ipyparallel", IPyParallelPool),
    )
}
