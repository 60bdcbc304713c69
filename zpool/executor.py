"""A drop-in for :class:`concurrent.futures.ProcessPoolExecutor` on a zpool cluster.

::

    executor.submit(fn, *args)  ──▶ Pool.apply_async ──▶ an AsyncResult (a concurrent.futures.Future)
    executor.map(fn, *its)      ──▶ one apply_async per chunk ──▶ results in order, lazily
    executor.shutdown()         ──▶ cancel_all (cancel_futures) ──▶ Pool.close, Pool.join

Libraries that take an ``executor=`` (or that create a
``ProcessPoolExecutor`` themselves, given the class) run on zpool's engines
with ``from zpool import ProcessPoolExecutor``. The futures it returns are
zpool :class:`~zpool.AsyncResult` objects: they work with
:func:`concurrent.futures.wait`, :func:`concurrent.futures.as_completed`
and ``await``, and carry zpool's metadata.

Where it differs from the standard library's, on purpose (see
``docs/executor.md``):

* ``mp_context`` is accepted and ignored: engines are always fresh
  interpreters (as with the ``spawn`` start method), never forks.
* A worker that dies fails only the task it was running, with
  :class:`zpool.EngineError` (a ``BrokenProcessPool``); the pool replaces
  the engine and goes on, where the standard library's breaks for good.
  It is broken (``BrokenProcessPool`` from every call) only when the
  cluster is: its controller gone, or engines unable to start (an
  initializer that always fails).
* ``cancel()`` of a future whose task waits on an engine takes it back
  from there, as it takes back one waiting in the scheduler.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Iterator, TypeVar

from zpool._partition import run_chunk
from zpool.asyncresult import AsyncResult, cancel_all
from zpool.error import BrokenPoolError, PoolClosedError
from zpool.error import TimeoutError as ZPoolTimeoutError
from zpool.pool import Pool

__all__ = ["ProcessPoolExecutor"]

T = TypeVar("T")

# Executors not shut down yet: at the interpreter's end, their work is waited for (as the standard library does).
_live: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()
_exiting = False


def _at_exit() -> None:
    global _exiting
    _exiting = True
    for executor in list(_live):
        executor.shutdown(wait=True)


# threading's hook runs as the main thread ends, before atexit's handlers (the pools' own clean-up among them)
# and before other threads are joined: what concurrent.futures uses. atexit where it is missing.
_register_at_exit = getattr(threading, "_register_atexit", None) or atexit.register
_register_at_exit(_at_exit)


class ProcessPoolExecutor(concurrent.futures.Executor):
    """An executor whose workers are the engines of a hidden zpool cluster.

    Parameters
    ----------
    max_workers : int, optional
        How many engines (default: ``os.cpu_count()``).
    mp_context : multiprocessing context, optional
        Accepted for compatibility and ignored: engines are fresh
        interpreters, whatever the start method.
    initializer : callable, optional
        Run in every engine before its first task (and in replacement
        engines), with `initargs`.
    initargs : tuple
        Arguments of `initializer`.
    max_tasks_per_child : int, optional
        Replace an engine after it ran this many tasks.
    **pool_options
        Passed to :class:`zpool.Pool` (``preload``, ``scheme``,
        ``shared_memory``, ...).

    Raises
    ------
    ValueError
        If `max_workers` or `max_tasks_per_child` is below 1.
    TypeError
        If `initializer` is not callable, or `max_tasks_per_child` not an int.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        **pool_options: Any,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if type(max_tasks_per_child) is not int:
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._max_workers = max_workers
        self._mp_context = mp_context  # (ignored: see the class's notes)
        self._pool = Pool(
            max_workers, initializer, tuple(initargs), maxtasksperchild=max_tasks_per_child, **pool_options
        )
        self._lock = threading.RLock()  # (a done callback may run at once, inside submit)
        self._shutdown = False
        self._broken = ""  # why the pool is broken, once a task said so
        self._pending: set[AsyncResult[Any]] = set()  # submitted, not done (for shutdown(cancel_futures=True))
        self._joiner: threading.Thread | None = None
        _live.add(self)

    # -- concurrent.futures.Executor -------------------------------------------------

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> AsyncResult[T]:
        """Run ``fn(*args, **kwargs)`` on an engine; return its future (a zpool :class:`~zpool.AsyncResult`).

        Raises
        ------
        RuntimeError
            After :meth:`shutdown`.
        concurrent.futures.process.BrokenProcessPool
            If the pool is broken (:class:`zpool.BrokenPoolError`).
        """
        with self._lock:
            self._check_open()
            future = self._apply(fn, args, kwargs)
            self._track([future])
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """``map(fn, *iterables)`` on the engines: results in order, as they come.

        The iterables are read at once; each chunk of `chunksize` calls is
        one task. Iterating raises a call's exception at its place, and
        :class:`concurrent.futures.TimeoutError` once `timeout` seconds have
        passed since this call; leaving the loop early cancels the calls
        not started.

        Raises
        ------
        ValueError
            If `chunksize` is below 1.
        RuntimeError
            After :meth:`shutdown`.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        calls = list(zip(*iterables))
        with self._lock:
            self._check_open()
            futures = [
                self._apply(run_chunk, (fn, calls[i : i + chunksize], True), {})
                for i in range(0, len(calls), chunksize)
            ]
            self._track(futures)
        del calls
        return _results_in_order(futures, end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more work; with `cancel_futures`, cancel what has not started; with `wait`, wait for the rest.

        The engines and the controller end once the work submitted is done:
        before this returns with `wait`, in the background without.
        """
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
        _live.discard(self)
        if cancel_futures and pending:
            cancel_all(pending)
        self._pool.close()
        if wait:
            self._pool.join()
        elif self._joiner is None:
            # Not a daemon: the program waits at its end for the work submitted, as with the standard library.
            self._joiner = threading.Thread(target=self._pool.join, name="zpool-executor-shutdown")
            self._joiner.start()

    # -- internals ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._broken:
            raise BrokenPoolError(self._broken)
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _apply(self, fn: Callable[..., T], args: Any, kwargs: Any) -> AsyncResult[T]:
        try:
            return self._pool.apply_async(fn, args, kwargs)
        except BrokenPoolError as exc:
            self._broken = str(exc)
            raise
        except PoolClosedError as exc:  # terminated under us (the interpreter is ending, say)
            raise RuntimeError(f"cannot schedule new futures after shutdown ({exc})") from exc

    def _track(self, futures: list[AsyncResult[Any]]) -> None:
        self._pending.update(futures)
        for future in futures:
            future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)
            if not self._broken and not future.cancelled():
                exc = future.exception()
                if isinstance(exc, BrokenPoolError):
                    self._broken = str(exc)


def _results_in_order(futures: list[AsyncResult[list[T]]], end: float | None) -> Iterator[T]:
    """Yield each chunk's results in order; cancel what is left if the caller stops early (or a call fails)."""
    futures.reverse()  # (popped from the end: the earliest first, no reference kept to a chunk yielded)
    try:
        while futures:
            future = futures[-1]
            try:
                chunk = future.result() if end is None else future.result(max(0.0, end - time.monotonic()))
            except ZPoolTimeoutError:
                raise concurrent.futures.TimeoutError() from None
            futures.pop()
            del future
            chunk.reverse()
            while chunk:
                yield chunk.pop()
    finally:
        if futures:
            cancel_all(futures)
