"""The :class:`Pool` facade: :class:`multiprocessing.pool.Pool`'s API on a zpool cluster.

``Pool()`` starts a hidden local cluster (:mod:`zpool.cluster`), connects a
client to it (:mod:`zpool.client.connection`), and turns stdlib-shaped
calls into tasks: arguments are serialized in the calling thread, so a bad
argument raises right there, naming itself; the I/O thread batches what
was submitted and settles each :class:`~zpool.asyncresult.AsyncResult`
as replies arrive.
"""

from __future__ import annotations

import collections.abc
import concurrent.futures
import enum
import os
import queue
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Iterable, Mapping, TypeVar

from zpool._partition import default_chunksize, run_chunk, split
from zpool.asyncresult import AsyncResult, MapResult
from zpool.client.connection import Connection
from zpool.client.results import ResultTable
from zpool.cluster import ClusterSettings, LocalCluster
from zpool.error import BrokenPoolError, PoolClosedError, SerializationError, TaskAborted, TimeoutError, ZPoolError
from zpool.protocol import SCHEMES, MsgType
from zpool.serialize import callable_name, dumps, dumps_call

__all__ = ["Pool"]

T = TypeVar("T")

STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 5.0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class PoolState(enum.Enum):
    RUN = "running"
    CLOSE = "closed"
    TERMINATE = "terminated"


class _Callbacks:
    """Runs ``callback``/``error_callback`` in one thread of the caller's process."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def attach(
        self,
        ar: AsyncResult[Any],
        callback: Callable[[Any], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
    ) -> None:
        """Run `callback` or `error_callback` here once `ar` completes."""
        if callback is None and error_callback is None:
            return
        self._ensure_thread()

        def done(fut: Any) -> None:
            exc = fut.exception()
            if exc is None:
                if callback is not None:
                    self._queue.put((callback, fut.result()))
            elif error_callback is not None:
                self._queue.put((error_callback, exc))

        # Future's own method: `done` only queues, so it may run on the I/O thread.
        concurrent.futures.Future.add_done_callback(ar, done)

    def call(self, func: Callable[[Any], Any], value: Any) -> None:
        """Run ``func(value)`` in the callback thread."""
        self._ensure_thread()
        self._queue.put((func, value))

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zpool-callbacks", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            func, value = item
            try:
                func(value)
            except BaseException:  # as multiprocessing does, report and go on serving callbacks
                import traceback

                traceback.print_exc()

    def stop(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                if threading.current_thread() is not self._thread:
                    self._thread.join(SHUTDOWN_TIMEOUT_S)
                self._thread = None


def _shutdown(conn: Connection, cluster: LocalCluster, callbacks: _Callbacks, graceful: bool, owner: int) -> None:
    """Stop the cluster and the client; called at most once per pool (weakref.finalize)."""
    if os.getpid() != owner:
        return  # a forked child inherited the pool object: the cluster is its parent's
    reason = "the pool was terminated before this task finished"
    conn.results.close(lambda: TaskAborted(reason))
    try:
        if not conn.broken:
            conn.request(MsgType.SHUTDOWN_REQUEST, timeout=SHUTDOWN_TIMEOUT_S if graceful else 2.0)
    except ZPoolError:
        pass
    finally:
        conn.close()
        cluster.stop(timeout=SHUTDOWN_TIMEOUT_S)
        callbacks.stop()


class Pool:
    """A pool of engine processes, used exactly like :class:`multiprocessing.pool.Pool`.

    Parameters
    ----------
    processes : int, optional
        Number of engines to start; defaults to ``os.cpu_count()``.
    scheme : str, keyword-only
        Load-balancing scheme: ``"leastload"`` (default), ``"lru"``,
        ``"plainrandom"``, ``"twobin"`` or ``"weighted"``.
    hwm : int or None, keyword-only
        Most tasks outstanding on one engine: ``1`` balances best, ``0`` means
        no limit, ``None`` (default) adapts to measured task durations.
    heartbeat_interval : float, keyword-only
        Seconds between heartbeats to the engines.
    heartbeat_misses : int, keyword-only
        Heartbeats an engine may miss before it is declared dead.

    Raises
    ------
    ValueError
        If `processes` is less than 1, or `scheme` or `hwm` is invalid.
    BrokenPoolError
        If the hidden cluster fails to start.

    Examples
    --------
    >>> from zpool import Pool
    >>> with Pool(2) as pool:
    ...     pool.map(abs, [-1, -2, 3])
    [1, 2, 3]
    """

    def __init__(
        self,
        processes: int | None = None,
        *,
        scheme: str = "leastload",
        hwm: int | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_misses: int = 10,
    ) -> None:
        self._state = PoolState.TERMINATE  # until fully started, for __del__
        if processes is None:
            processes = os.cpu_count() or 1
        if not _is_int(processes):
            raise TypeError(f"processes must be an int, not {type(processes).__name__}")
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
        if hwm is not None and (not _is_int(hwm) or hwm < 0):
            raise ValueError(f"hwm must be None (adaptive), 0 (no limit) or a positive int, not {hwm!r}")
        if not isinstance(heartbeat_interval, (int, float)) or isinstance(heartbeat_interval, bool):
            raise TypeError(f"heartbeat_interval must be a number of seconds, not {type(heartbeat_interval).__name__}")
        if not 0 < heartbeat_interval < float("inf"):  # also refuses NaN
            raise ValueError(f"heartbeat_interval must be a positive number of seconds, not {heartbeat_interval!r}")
        if not _is_int(heartbeat_misses) or heartbeat_misses < 1:
            raise ValueError(f"heartbeat_misses must be a positive int, not {heartbeat_misses!r}")
        self._owner_pid = os.getpid()
        self._processes = processes
        self._cluster = LocalCluster(ClusterSettings(processes, scheme, hwm, heartbeat_interval, heartbeat_misses))
        info = self._cluster.start()
        self._results = ResultTable()
        self._callbacks = _Callbacks()
        conn: Connection | None = None
        try:
            conn = Connection(info, self._results, watch=self._cluster.failure)
            conn.request(MsgType.CONNECT_REQUEST, timeout=STARTUP_TIMEOUT_S)
        except BaseException as exc:  # Ctrl-C included: leave nothing running
            if conn is not None:
                conn.close()
            self._cluster.stop(timeout=1.0)
            if isinstance(exc, ZPoolError) and not isinstance(exc, BrokenPoolError):
                raise BrokenPoolError(f"the hidden cluster did not start: {exc}") from exc
            raise
        self._conn = conn
        self._finalizer = weakref.finalize(
            self, _shutdown, self._conn, self._cluster, self._callbacks, False, os.getpid()
        )
        self._state = PoolState.RUN

    # -- the standard library's API ------------------------------------------------

    def apply(self, func: Callable[..., T], args: Iterable[Any] = (), kwds: Mapping[str, Any] = {}) -> T:
        """Call ``func(*args, **kwds)`` on an engine and return its result (blocks).

        Same contract as :meth:`multiprocessing.pool.Pool.apply`.
        """
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        callback: Callable[[T], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> AsyncResult[T]:
        """Submit ``func(*args, **kwds)``; return an :class:`AsyncResult` at once.

        Same contract as :meth:`multiprocessing.pool.Pool.apply_async`.

        Parameters
        ----------
        func : callable
            Module-level functions travel by reference; lambdas, closures and
            functions defined in ``__main__`` travel by value (dill).
        args : iterable
            Positional arguments.
        kwds : mapping
            Keyword arguments.
        callback, error_callback : callable, optional
            Called once, in a result-handling thread of this process, with
            the result or the exception.

        Raises
        ------
        PoolClosedError
            If the pool was closed or terminated.
        SerializationError
            If `func` or an argument cannot be serialized; names it.
        """
        self._check_running()
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        if not isinstance(kwds, collections.abc.Mapping):
            raise TypeError(f"kwds must be a mapping (a dict of keyword arguments), not {type(kwds).__name__}")
        frames = dumps_call(func, tuple(args), dict(kwds))
        task_id = self._conn.session.new_id()
        ar: AsyncResult[T] = AsyncResult([task_id], callable_name(func))
        ar._owner, ar._runner = self, self._callbacks
        self._callbacks.attach(ar, callback, error_callback)
        self._submit(ar, [(task_id, frames)])
        return ar

    def map(self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None = None) -> list[T]:
        """Apply `func` to each item of `iterable` on the engines; return a list.

        Same contract as :meth:`multiprocessing.pool.Pool.map`: blocks until
        every item is done and raises the first failure.
        """
        return self.map_async(func, iterable, chunksize).get()

    def map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> MapResult[T]:
        """Like :meth:`map`, but return a :class:`MapResult` at once.

        Parameters
        ----------
        chunksize : int, optional
            Items per task. The default, as in the standard library, makes
            about four chunks per engine, so many tiny items cost few messages.
        """
        self._check_running()
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        # Sliceable sequences are chunked in place; anything else (generators, sets,
        # dicts: their keys, as the standard library does) is materialised first.
        items_in = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        if chunksize is None:
            chunksize = default_chunksize(len(items_in), self._processes)
        elif not _is_int(chunksize):
            raise TypeError(f"chunksize must be an int, not {type(chunksize).__name__}")
        elif chunksize < 1 and len(items_in):  # an empty map ignores chunksize, as the stdlib does
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        items: list[tuple[str, list[Any]]] = []
        new_id = self._conn.session.new_id
        for chunk in split(items_in, chunksize) if len(items_in) else []:
            items.append((new_id(), self._dump_chunk(func, chunk)))
        ar: MapResult[T] = MapResult([task_id for task_id, _ in items], callable_name(func))
        ar._owner, ar._runner = self, self._callbacks
        self._callbacks.attach(ar, callback, error_callback)
        if items:
            self._submit(ar, items)
        return ar

    def close(self) -> None:
        """Accept no more work; running and queued tasks still finish."""
        if self._state is PoolState.RUN:
            self._state = PoolState.CLOSE

    def terminate(self) -> None:
        """Stop the engines and controller now; unfinished tasks fail with TaskAborted."""
        self._state = PoolState.TERMINATE
        self._finalizer()

    def join(self) -> None:
        """Wait for all submitted work, then for the cluster to exit.

        Raises
        ------
        ValueError
            If called before :meth:`close` or :meth:`terminate`.
        """
        if self._state is PoolState.RUN:
            raise ValueError("Pool is still running")
        if self._state is PoolState.CLOSE:
            self._results.wait_empty()
            self._finalizer.detach()
            _shutdown(self._conn, self._cluster, self._callbacks, True, os.getpid())
        else:
            self._finalizer()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn: Any = warnings.warn, RUN: PoolState = PoolState.RUN) -> None:
        # Names bound as defaults: at interpreter exit module globals may already be None.
        if getattr(self, "_state", None) is RUN:
            _warn(f"unclosed running zpool.Pool {self!r}", ResourceWarning, source=self)

    def __repr__(self) -> str:
        state = getattr(self, "_state", PoolState.TERMINATE).value
        return f"<zpool.Pool state={state} processes={getattr(self, '_processes', '?')}>"

    # -- extras ----------------------------------------------------------------------

    def queue_status(self, timeout: float | None = 10.0) -> dict[str, Any]:
        """Ask the controller for per-engine queue lengths and counters.

        Returns
        -------
        dict
            ``{"engines": {"0": {"queue": 1, "completed": 5, "failed": 0}, ...},
            "unassigned": 0, "engine_pids": {...}, "dropped_messages": 0, ...}``
        """
        return self._conn.request(MsgType.QUEUE_REQUEST, timeout=timeout)

    def wait_for_engines(self, n: int | None = None, timeout: float = 60.0) -> list[int]:
        """Block until `n` engines (default: `processes`) are registered; return their ids.

        Raises
        ------
        zpool.TimeoutError
            If they are not all there within `timeout` seconds.
        """
        n = self._processes if n is None else n
        deadline = time.monotonic() + timeout
        while True:
            engines = self.queue_status(timeout=max(0.1, deadline - time.monotonic()))["engines"]
            if len(engines) >= n:
                return sorted(int(e) for e in engines)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"only {len(engines)} of {n} engines registered within {timeout} s")
            time.sleep(0.02)

    # -- internals ---------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state is not PoolState.RUN:
            raise PoolClosedError("Pool not running")
        if os.getpid() != self._owner_pid:
            raise PoolClosedError(
                f"this Pool belongs to process {self._owner_pid}; a forked child cannot use it"
                " (its I/O thread did not survive the fork): create a new Pool in the child"
            )
        if self._conn.broken:
            raise BrokenPoolError(self._conn.broken)

    def _submit(self, ar: AsyncResult[Any], items: list[tuple[str, list[Any]]]) -> None:
        self._results.add(ar)
        try:
            self._conn.submit(items)
        except BaseException as exc:
            error = exc
            self._results.fail(ar.msg_ids, lambda: error)
            raise

    @staticmethod
    def _dump_chunk(func: Callable[..., Any], chunk: Any) -> list[Any]:
        try:
            return dumps_call(run_chunk, (func, chunk))
        except SerializationError:
            pass
        name = callable_name(func)
        try:
            dumps(func)
        except SerializationError as exc:
            raise SerializationError(f"cannot serialize the function {name} given to map(): {exc}") from exc
        for item in chunk:
            try:
                dumps(item)
            except SerializationError as exc:
                raise SerializationError(
                    f"cannot serialize an item of the iterable given to map({name}): {exc}"
                ) from exc
        raise SerializationError(f"cannot serialize a chunk of the iterable given to map({name})")
