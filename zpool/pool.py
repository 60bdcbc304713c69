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
import contextlib
import enum
import functools
import itertools
import math
import multiprocessing.context
import os
import queue
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from zpool import _shm
from zpool._partition import ItemFailure, default_chunksize, join_parts, run_chunk, run_each, split
from zpool.asyncresult import AsyncResult, DirectResult, IMapIterator, JoinedResult, MapResult, _IMapChunk, _IMapState
from zpool.client.connection import Connection, SendTracker
from zpool.client.results import ResultTable, rebuild_failure
from zpool.cluster import ClusterSettings, EngineProcess, LocalCluster
from zpool.dependency import task_flags, task_ids
from zpool.error import (
    BrokenPoolError,
    EngineError,
    PoolClosedError,
    SerializationError,
    TaskAborted,
    TimeoutError,
    ZPoolError,
    serialization_error,
)
from zpool.protocol import SCHEMES, MsgType
from zpool.serialize import callable_name, dumps, dumps_call, explain_iterable
from zpool.view import EngineView, ParallelFunction, RemoteFunction, _check_flag, _NamespaceMethods

__all__ = ["Pool"]

T = TypeVar("T")

STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 5.0
# A controller silent this long at least, while work is outstanding, is taken for stuck.
MIN_SILENCE_S = 5.0
# Ctrl-C during a blocking call: how long the abort of its tasks may take before the KeyboardInterrupt goes on.
INTERRUPT_ABORT_S = 2.0
# Chunks an imap submits ahead of its consumer, at least (see Pool.imap's buffersize).
IMAP_MIN_READ_AHEAD = 32
# ... and, with a fixed chunksize, at least this many items.
IMAP_MIN_ITEMS_AHEAD = 1024


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same(value: T) -> T:
    return value


def _release_unsent(items: list[tuple[str, list[Any]]]) -> None:
    """Unlink the shared-memory segments of payloads that never left this process."""
    for _, frames in items:
        _shm.release(frames)


def _flatten(chunks: list[list[Any]]) -> list[Any]:
    return list(itertools.chain.from_iterable(chunks))


# This process's id, kept current across forks: checked on every call, and
# os.getpid() is a system call.
_pid = [os.getpid()]


def _forked() -> None:
    _pid[0] = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def _usable_cpus() -> int:
    """CPUs this process may use, as the standard library's Pool counts them (3.13+: os.process_cpu_count)."""
    counter = getattr(os, "process_cpu_count", None)  # honours -X cpu_count and PYTHON_CPU_COUNT
    if counter is not None:
        return int(counter() or 1)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class PoolState(enum.Enum):
    RUN = "running"
    CLOSE = "closed"
    TERMINATE = "terminated"


class _Callbacks:
    """Runs ``callback``/``error_callback`` (and done-callbacks) in one thread of the caller's process.

    :meth:`stop` lets the thread run what is queued, including what those
    callbacks queue in turn, then end; anything queued after that runs in
    the calling thread.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._done = False  # the thread has drained its queue and ended

    def attach(
        self,
        ar: AsyncResult[Any],
        callback: Callable[[Any], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
    ) -> None:
        """Have `ar` run `callback` or `error_callback` here before it becomes ready, as the stdlib does."""
        if callback is None and error_callback is None:
            return
        ar._user_callbacks = (callback, error_callback)
        ar._has_callback = True

    def is_current(self) -> bool:
        """Whether the calling thread is the callback thread."""
        return threading.current_thread() is self._thread

    def call(self, func: Callable[[Any], Any], value: Any) -> None:
        """Run ``func(value)`` in the callback thread (in this thread once the pool has stopped)."""
        with self._lock:
            if not self._done:
                if self._thread is None and not self._stopping:
                    self._thread = threading.Thread(target=self._run, name="zpool-callbacks", daemon=True)
                    self._thread.start()
                if self._thread is not None:
                    self._queue.put((func, value))
                    return
        _run_callback(func, value)

    def _run(self) -> None:
        stopping = False
        while True:
            if not stopping:
                item = self._queue.get()
            else:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    with self._lock:  # call() queues under this lock: nothing can slip in unseen
                        if self._queue.empty():
                            self._done = True
                            return
                    continue
            if item is None:
                stopping = True
                continue
            _run_callback(*item)

    def stop(self, timeout: float | None) -> None:
        """Let the thread finish what is queued and end; wait up to `timeout` s (None: as long as it takes)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            if thread is None:
                self._done = True
                return
            self._queue.put(None)
        if threading.current_thread() is not thread:
            thread.join(timeout)


def _run_callback(func: Callable[[Any], Any], value: Any) -> None:
    try:
        func(value)
    except BaseException:  # as multiprocessing does, report and go on serving callbacks
        import traceback

        traceback.print_exc()


def _shutdown(
    conn: Connection,
    cluster: LocalCluster,
    callbacks: _Callbacks,
    shared: _shm.Writer | None,
    graceful: bool,
    owner: int,
) -> None:
    """Stop the cluster and the client; called at most once per pool (weakref.finalize)."""
    if os.getpid() != owner:
        return  # a forked child inherited the pool object: the cluster is its parent's
    if conn.on_io_thread():
        # The last reference went away as a result settled on the I/O thread, which
        # cannot wait for its own replies: shut down from a thread of its own.
        threading.Thread(
            target=_shutdown, args=(conn, cluster, callbacks, shared, graceful, owner), name="zpool-shutdown"
        ).start()
        return
    reason = "the pool was terminated before this task finished"
    conn.results.close(lambda: TaskAborted(reason))
    try:
        if not conn.broken:
            conn.request(MsgType.SHUTDOWN_REQUEST, timeout=SHUTDOWN_TIMEOUT_S if graceful else 2.0)
    except ZPoolError:
        pass
    finally:
        conn.close()
        if shared is not None:
            shared.close()  # its kept segments, before the cluster removes what is left
        # A broken connection: the controller is dead or stuck, and will not leave on its own.
        cluster.stop(timeout=1.0 if conn.broken else SHUTDOWN_TIMEOUT_S)
        # join() waits for every callback, as the standard library's does; terminate() not for long.
        callbacks.stop(None if graceful else SHUTDOWN_TIMEOUT_S)


class Pool(_NamespaceMethods):
    """A pool of engine processes, used exactly like :class:`multiprocessing.pool.Pool`.

    Beyond the standard library's API, the engines' namespaces are a dict
    (``push``, ``pull``, ``pool["a"]``, ``scatter``, ``gather``,
    ``execute``, ``run``, ``clear``, ``sync_imports``: on every engine),
    :attr:`engines` gives views of some engines, and :meth:`remote` and
    :meth:`parallel` decorate functions (see ``docs/direct.md``).

    Parameters
    ----------
    processes : int, optional
        Number of engines to start; defaults to the number of CPUs this
        process may use.
    initializer : callable, optional
        Called as ``initializer(*initargs)`` in every engine before its first
        task, replacement engines included, with the engine's namespace as
        its globals when it comes from ``__main__``, so globals it sets with
        ``global`` are what the tasks see.
    initargs : iterable
        Arguments for `initializer`.
    maxtasksperchild : int, optional
        Retire an engine after this many tasks (a ``map`` chunk counts as
        one) and start a fresh one; no task is lost. ``None``: engines live
        as long as the pool.
    context : multiprocessing context, optional
        Accepted for compatibility and otherwise ignored: engines are always
        fresh interpreters, whatever the start method.
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
    shared_memory : bool, keyword-only
        Send buffers of 1 MiB or more (numpy array data, bytes) through
        shared memory (``/dev/shm``) rather than through the sockets: one
        copy instead of several, and none on the receiving side (default,
        where the host has ``/dev/shm``). See ``docs/arrays.md``.
    record_window, record_age : int, float, keyword-only
        How many finished tasks the controller remembers (default the newest
        100,000), and for how long (default 3600 s): for dependencies on
        them given by task id, and :meth:`resubmit`. A dependency on an
        :class:`AsyncResult` works however old it is (the client sends its
        outcome along). Bounds the controller's memory. See
        ``docs/faults.md``.

    Raises
    ------
    ValueError
        If `processes` is less than 1, `maxtasksperchild` is not a positive
        int, or `scheme` or `hwm` is invalid.
    TypeError
        If `initializer` is not callable.
    SerializationError
        If `initializer` or `initargs` cannot be serialized.
    BrokenPoolError
        If the hidden cluster fails to start. An initializer that raises in
        every engine breaks the pool too: tasks then fail with
        :class:`BrokenPoolError` quoting the initializer's traceback.

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
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        scheme: str = "leastload",
        hwm: int | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_misses: int = 10,
        shared_memory: bool = True,
        record_window: int = 100_000,
        record_age: float = 3600.0,
    ) -> None:
        self._state = PoolState.TERMINATE  # until fully started, for __del__
        if processes is None:
            processes = _usable_cpus()
        if not _is_int(processes):
            raise TypeError(f"processes must be an int, not {type(processes).__name__}")
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable, not {type(initializer).__name__}")
        if maxtasksperchild is not None and (not _is_int(maxtasksperchild) or maxtasksperchild <= 0):
            raise ValueError(f"maxtasksperchild must be a positive int or None, not {maxtasksperchild!r}")
        if context is not None and not isinstance(context, multiprocessing.context.BaseContext):
            raise TypeError(
                f"context must be a multiprocessing context (multiprocessing.get_context()) or None,"
                f" not {type(context).__name__}"
            )
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
        if not isinstance(shared_memory, bool):
            raise TypeError(f"shared_memory must be True or False, not {shared_memory!r}")
        if not _is_int(record_window) or record_window < 1:
            raise ValueError(f"record_window must be a positive int, not {record_window!r}")
        if isinstance(record_age, bool) or not isinstance(record_age, (int, float)) or not 0 < record_age < math.inf:
            raise ValueError(f"record_age must be a positive number of seconds, not {record_age!r}")
        setup: tuple[bytes, ...] = ()
        if initializer is not None:
            frames = dumps_call(
                initializer, tuple(initargs), {}, describe_arg=lambda i, name: f"initargs[{i}] of {name}()"
            )
            setup = tuple(bytes(memoryview(f)) for f in frames)
        self._owner_pid = os.getpid()
        self._processes = processes
        self._initializer = initializer
        self._maxtasksperchild = maxtasksperchild
        self._cluster = LocalCluster(
            ClusterSettings(
                processes,
                scheme,
                hwm,
                heartbeat_interval,
                heartbeat_misses,
                max_tasks_per_engine=maxtasksperchild,
                engine_setup=setup,
                shared_memory=shared_memory,
                record_window=record_window,
                record_age=float(record_age),
            )
        )
        info = self._cluster.start()
        # Writes large arguments into shared-memory segments (zpool._shm); None: they go as frames.
        self._shm = _shm.Writer(info.shm_prefix, "c") if info.shm_prefix else None
        self._results = ResultTable(info.shm_prefix)
        self._callbacks = _Callbacks()
        # Scheduling flags: defaults for every call (set_flags), and per thread for a block (temp_flags).
        self._default_flags: dict[str, Any] = {}
        self._temp_flags = threading.local()
        self._temp_active = 0  # temp_flags blocks open, in any thread
        self._temp_lock = threading.Lock()
        # Live imap feeders: join() lets them read ahead without bound.
        self._feeders: weakref.WeakSet[_IMapState] = weakref.WeakSet()
        self._all_engines_seen = False  # `engines` waits for the first full complement
        # name -> the engines pool.scatter(name, ...) split it over, in order (for gather).
        self._scatters: dict[str, tuple[int, ...]] = {}
        conn: Connection | None = None
        try:
            # A controller silent for twice the engines' tolerance (5 s at least), while work is
            # outstanding, is stuck: a busy one still answers within that, after what was sent before.
            silence = max(2 * heartbeat_interval * heartbeat_misses, MIN_SILENCE_S)
            conn = Connection(info, self._results, watch=self._cluster.failure, silence=silence)
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
            self, _shutdown, self._conn, self._cluster, self._callbacks, self._shm, False, os.getpid()
        )
        self._state = PoolState.RUN

    # -- the standard library's API ------------------------------------------------

    def apply(self, func: Callable[..., T], args: Iterable[Any] = (), kwds: Mapping[str, Any] = {}, **flags: Any) -> T:
        """Call ``func(*args, **kwds)`` on an engine and return its result (blocks).

        Same contract as :meth:`multiprocessing.pool.Pool.apply`; `flags` as
        for :meth:`apply_async`.
        """
        ar, items, wire_flags, track = self._prepare_call(func, args, kwds, None, None, flags)
        if wire_flags is None and not track:
            # Nothing to order it after: it may go out and come back through this thread (Connection.call_now).
            try:
                self._results.add(ar)
            except BaseException:
                _release_unsent(items)
                raise
            return self._get_blocking(ar, items)
        self._submit(ar, items, wire_flags, track)
        return self._get_blocking(ar)

    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        callback: Callable[[T], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        **flags: Any,
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
        **flags
            Scheduling flags for this call (see :meth:`set_flags`): ``after``,
            ``follow``, ``timeout``, ``retries``, ``targets``; and ``track``.

        Raises
        ------
        PoolClosedError
            If the pool was closed or terminated.
        SerializationError
            If `func` or an argument cannot be serialized; names it.
        TypeError, ValueError
            If a flag is unknown or has a wrong value.
        """
        ar, items, wire_flags, track = self._prepare_call(func, args, kwds, callback, error_callback, flags)
        self._submit(ar, items, wire_flags, track)
        return ar

    def _prepare_call(
        self,
        func: Callable[..., T],
        args: Iterable[Any],
        kwds: Mapping[str, Any],
        callback: Callable[[T], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
        flags: Mapping[str, Any],
    ) -> tuple[AsyncResult[T], list[tuple[str, list[Any]]], dict[str, Any] | None, bool]:
        """Check and serialize one call: its result, its task, its wire flags and whether it is tracked."""
        self._check_running()
        self._check_func(func, callback, error_callback)
        wire_flags, track = self._task_flags(flags)
        if type(kwds) is not dict and not isinstance(kwds, collections.abc.Mapping):
            raise TypeError(f"kwds must be a mapping (a dict of keyword arguments), not {type(kwds).__name__}")
        frames = dumps_call(func, args if type(args) is tuple else tuple(args), dict(kwds), shared=self._shm)
        task_id = self._conn.session.new_id()
        ar: AsyncResult[T] = AsyncResult([task_id], callable_name(func))
        ar._owner, ar._runner = self, self._callbacks
        self._callbacks.attach(ar, callback, error_callback)
        return ar, [(task_id, frames)], wire_flags, track

    def map(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None = None, **flags: Any
    ) -> list[T]:
        """Apply `func` to each item of `iterable` on the engines; return a list.

        Same contract as :meth:`multiprocessing.pool.Pool.map`: blocks until
        every item is done and raises the first failure. `flags` apply to
        every chunk (see :meth:`set_flags`).
        """
        return self._get_blocking(self._map_async(func, iterable, chunksize, None, None, False, flags))

    def map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        **flags: Any,
    ) -> MapResult[T]:
        """Like :meth:`map`, but return a :class:`MapResult` at once.

        Parameters
        ----------
        chunksize : int, optional
            Items per task. The default, as in the standard library, makes
            about four chunks per engine, so many tiny items cost few messages.
        callback, error_callback : callable, optional
            Called once, with the whole list of results or with the first
            exception, in a result-handling thread of this process, before
            the result becomes ready.
        **flags
            Scheduling flags for every chunk (see :meth:`set_flags`): ``after``,
            ``follow``, ``timeout``, ``retries``, ``targets``.
        """
        return self._map_async(func, iterable, chunksize, callback, error_callback, False, flags)

    def starmap(
        self, func: Callable[..., T], iterable: Iterable[Iterable[Any]], chunksize: int | None = None, **flags: Any
    ) -> list[T]:
        """Like :meth:`map`, but call ``func(*item)`` for each item of `iterable`.

        Same contract as :meth:`multiprocessing.pool.Pool.starmap`.
        """
        return self._get_blocking(self._map_async(func, iterable, chunksize, None, None, True, flags))

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        **flags: Any,
    ) -> MapResult[T]:
        """Like :meth:`starmap`, but return a :class:`MapResult` at once."""
        return self._map_async(func, iterable, chunksize, callback, error_callback, True, flags)

    def imap(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        buffersize: int | None = None,
        **flags: Any,
    ) -> IMapIterator[T]:
        """Like :meth:`map`, but lazily: return an iterator over the results, in input order.

        Results are yielded as they arrive. Unlike the standard library, the
        input is not drained up front: at most `buffersize` chunks are
        submitted ahead of the consumer, so ``imap(f, endless_generator())``
        runs in constant memory. Every item has its own outcome: an item
        whose call raises raises that exception at its place, and the
        iteration may go on past it. An exception raised by the input itself
        surfaces where the input stopped, then the iteration ends.

        Parameters
        ----------
        chunksize : int, optional
            Items per task. By default chunks are sized from measured task
            times: the first chunk holds one item (so the first result comes
            at once), later ones about 5 ms of work each, so tiny items do
            not pay one message each. With an explicit `chunksize`, an input
            that raises mid-chunk loses that chunk's items, as with the
            standard library; adaptive chunks keep them.
        buffersize : int, optional, keyword-only
            Most chunks submitted and not yet consumed; default
            ``max(32, 4 * processes)``, and with an explicit `chunksize` enough
            chunks for 1024 items. :meth:`join` lifts the limit.
        **flags
            Scheduling flags for every chunk (see :meth:`set_flags`): ``after``,
            ``follow``, ``timeout``, ``retries``, ``targets``.

        Returns
        -------
        IMapIterator
            Its ``next(timeout)`` raises :class:`zpool.TimeoutError` (a
            ``multiprocessing.TimeoutError``) if nothing arrives in time.
        """
        return self._imap(func, iterable, chunksize, buffersize, True, flags)

    def imap_unordered(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        buffersize: int | None = None,
        **flags: Any,
    ) -> IMapIterator[T]:
        """Like :meth:`imap`, but yield results in the order they finish."""
        return self._imap(func, iterable, chunksize, buffersize, False, flags)

    def close(self) -> None:
        """Accept no more work; running and queued tasks still finish."""
        if self._state is PoolState.RUN:
            self._state = PoolState.CLOSE

    def terminate(self) -> None:
        """Stop the engines and controller now; unfinished tasks fail with TaskAborted."""
        self._state = PoolState.TERMINATE
        for state in list(self._feeders):
            state.stop()
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
            # imap inputs are read to the end first, as the standard library's join does.
            feeders = list(self._feeders)
            for state in feeders:
                state.unbound()
            for state in feeders:
                state.wait_finished()
            self._results.wait_empty()
            if self._initializer:
                self._wait_engines_started()
            self._finalizer.detach()
            _shutdown(self._conn, self._cluster, self._callbacks, self._shm, True, os.getpid())
        else:
            self._finalizer()

    def _wait_engines_started(self) -> None:
        """Until every engine has run the initializer (as the standard library's join: its workers all start).

        Gives up when no more engines can start (the initializer keeps
        failing: tasks said so) or after :data:`STARTUP_TIMEOUT_S`.
        """
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._conn.broken and time.monotonic() < deadline:
            try:
                status = self._conn.request(MsgType.QUEUE_REQUEST, {"brief": True}, timeout=SHUTDOWN_TIMEOUT_S)
            except ZPoolError:
                return
            if len(status["engines"]) >= self._processes or status.get("broken"):
                return
            time.sleep(0.01)

    @property
    def _pool(self) -> list[EngineProcess]:
        """The local engine processes: ``pid``, ``name``, ``is_alive()`` each (a compatibility shim).

        What code written for ``multiprocessing.Pool`` reads from its
        private worker list: ``len(pool._pool)`` (parmap's progress bar),
        the workers' pids (monitoring). Empty once the pool is stopped.
        See ``docs/migrating.md``.
        """
        return self._cluster.engine_processes()

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
        # Robust at interpreter exit, when module globals (PoolState) may already be None.
        state = getattr(getattr(self, "_state", None), "value", "terminated")
        return f"<zpool.Pool state={state} processes={getattr(self, '_processes', '?')}>"

    # -- scheduling flags and dependencies (DESIGN §5) -------------------------------

    def set_flags(self, **flags: Any) -> None:
        """Set scheduling flags for every later call of this pool (a flag given ``None`` is cleared).

        Parameters
        ----------
        after : Dependency, AsyncResult, task id or list of them
            Run only after these tasks finished (as the Dependency's
            ``all``/``success``/``failure`` say; a plain list: all succeeded).
        follow : same
            Run only on an engine where these tasks ran.
        timeout : float
            Fail with :class:`DependencyTimeout` if `after`/`follow` are not
            met within this many seconds of submission (0 or None: never).
        retries : int
            Run a failed task again, up to this many times, on another engine
            when there is one (an engine dying counts as a failure).
        targets : int or list of int
            Run only on these engines (ids as in :meth:`queue_status`).
        track : bool
            Track the sends of the arguments' memory: :attr:`AsyncResult.sent`
            and :meth:`AsyncResult.wait_on_send` tell when ZeroMQ is done with
            it, so that it may be modified (``imap`` is not tracked).

        Raises
        ------
        TypeError, ValueError
            If a flag is unknown or has a wrong value.
        """
        merged = {**self._default_flags, **flags}
        task_flags(merged)  # check now, not at the next call
        self._default_flags = {name: value for name, value in merged.items() if value is not None}

    @contextlib.contextmanager
    def temp_flags(self, **flags: Any) -> Iterator[None]:
        """Context manager: these scheduling flags for calls made in this thread within the block.

        Same flags as :meth:`set_flags`; flags given to a call win over both.

        Examples
        --------
        >>> with pool.temp_flags(after=[setup], retries=2):
        ...     results = [pool.apply_async(step, (i,)) for i in range(4)]
        """
        task_flags(flags)
        stack = getattr(self._temp_flags, "stack", None)
        if stack is None:
            stack = self._temp_flags.stack = []
        stack.append(flags)
        with self._temp_lock:
            self._temp_active += 1
        try:
            yield
        finally:
            with self._temp_lock:
                self._temp_active -= 1
            stack.pop()

    @property
    def flags(self) -> dict[str, Any]:
        """The scheduling flags a call made now in this thread would get (before its own)."""
        merged = dict(self._default_flags)
        for layer in getattr(self._temp_flags, "stack", None) or ():
            merged.update(layer)
        return {name: value for name, value in merged.items() if value is not None}

    def _task_flags(self, call_flags: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """The wire form of the flags a call gets, and whether its sends are tracked (``track``)."""
        if not call_flags and not self._default_flags and not self._temp_active:
            return None, False  # the common case, kept cheap (no thread is in a temp_flags block)
        merged = self.flags
        merged.update(call_flags)
        return task_flags(merged), bool(merged.get("track"))

    def abort(self, what: Any, interrupt: bool = False) -> dict[str, Any]:
        """Abort tasks that have not started, and with `interrupt` those running: they fail with :class:`TaskAborted`.

        Parameters
        ----------
        what : AsyncResult, task id, or a list of them
            Tasks still waiting in the scheduler fail at once; tasks already
            queued on an engine are taken back from it and fail (or fail
            there before they start). Finished tasks are not affected.
        interrupt : bool
            Also interrupt those running: their engine raises
            ``KeyboardInterrupt`` in the task's code (as Ctrl-C would), and
            they fail with :class:`TaskAborted` (default False: they run to
            their end). See :meth:`EngineView.interrupt`.

        Returns
        -------
        dict
            ``{"aborted": n, "sent_to_engines": m}``: tasks failed by the
            scheduler, and tasks an engine was told to skip (or interrupt).
        """
        _check_flag("interrupt", interrupt)
        ids = task_ids(what)
        self._check_connected()
        return self._conn.request(MsgType.ABORT_REQUEST, {"ids": ids, "interrupt": interrupt})

    def _get_blocking(self, ar: AsyncResult[T], unsent: list[tuple[str, list[Any]]] | None = None) -> T:
        """``ar.get()`` for a blocking call: on Ctrl-C, abort the call's tasks (interrupting those running).

        With `unsent`, ar's tasks (registered, not sent yet) go out now: through
        this thread when the connection allows (:meth:`Connection.call_now`),
        else through the I/O thread.
        """
        try:
            if unsent is not None and not self._conn.call_now(unsent, ar.done):
                try:
                    self._conn.submit(unsent)
                except BaseException as exc:
                    error = exc
                    self._results.fail(ar.msg_ids, lambda: error)
                    _release_unsent(unsent)
                    raise
            return ar.get()
        except KeyboardInterrupt:
            if self._state is PoolState.RUN and not self._conn.broken and not ar.ready():
                try:
                    self._conn.request(
                        MsgType.ABORT_REQUEST, {"ids": list(ar.msg_ids), "interrupt": True}, timeout=INTERRUPT_ABORT_S
                    )
                except ZPoolError:
                    pass  # the pool is going away: its tasks with it
            raise

    def purge_results(self, what: Any = "all") -> dict[str, Any]:
        """Make the controller forget finished tasks now, rather than when they leave its window.

        The controller does not store results (they come straight to this
        process, where the :class:`AsyncResult` holds them); it remembers
        how finished tasks ended, for dependencies named by task id and for
        :meth:`resubmit`, for the newest ``record_window`` tasks of the last
        ``record_age`` seconds. This forgets them at once.

        Parameters
        ----------
        what : "all", AsyncResult, task id, or a list of them
            The finished tasks to forget (default: every one). Tasks not
            finished yet are left alone.

        Returns
        -------
        dict
            ``{"purged": n, "not_finished": [ids]}``.
        """
        ids = None if isinstance(what, str) and what == "all" else task_ids(what)
        self._check_connected()
        return self._conn.request(MsgType.PURGE_REQUEST, {"ids": ids})

    def resubmit(self, what: Any) -> AsyncResult[Any]:
        """Run finished tasks again; return a new result for the new run.

        Parameters
        ----------
        what : AsyncResult, task id, or a list of them
            Finished tasks. A ``MapResult`` gives a ``MapResult`` (the whole
            map again); the flags each task had apply again.

        Returns
        -------
        AsyncResult
            Of the same kind as `what` when it is one.

        Notes
        -----
        The controller keeps the calls of finished tasks of up to 64 KiB
        each, the newest 10,000 within 64 MiB in all. A task that is not finished, or
        whose call is no longer kept, fails in the new result with
        :class:`InvalidDependency`, saying which.
        """
        self._check_running()
        ids = task_ids(what)  # in order, repeats kept: the new result lines up with `what`
        new_id = self._conn.session.new_id
        new_ids = [new_id() for _ in ids]
        ar: AsyncResult[Any] = what._renewed(new_ids) if isinstance(what, AsyncResult) else AsyncResult(new_ids)
        ar._owner, ar._runner = self, self._callbacks
        if not new_ids:
            return ar
        self._results.add(ar)
        try:
            self._conn.request(MsgType.RESUBMIT_REQUEST, {"ids": ids, "new_ids": new_ids})
        except BaseException as exc:
            self._results.fail(new_ids, functools.partial(_same, exc))
            raise
        return ar

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
            status = self.queue_status(timeout=max(0.1, deadline - time.monotonic()))
            engines = status["engines"]
            if len(engines) >= n:
                return sorted(int(e) for e in engines)
            if status.get("broken") and not engines:
                raise BrokenPoolError(f"no engine can start: {status['broken']}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"only {len(engines)} of {n} engines registered within {timeout} s")
            time.sleep(0.02)

    # -- the direct interface (DESIGN §7; zpool.view) ---------------------------------

    @property
    def engines(self) -> EngineView:
        """A view of every engine up now, in engine order; index it for fewer.

        ``pool.engines[0]``, ``pool.engines[1:3]``, ``pool.engines[::2]``,
        ``pool.engines[-1]``: the engines are chosen when the view is made.
        The first use waits until the pool's engines have started.

        Raises
        ------
        PoolClosedError
            If the pool is closed or terminated.
        BrokenPoolError
            If no engine can start.
        zpool.TimeoutError
            If no engine is up within a minute.
        """
        return EngineView(self, self._engine_ids())

    def _view(self) -> EngineView:
        return self.engines

    def _scattered(self, name: str, view: EngineView) -> None:
        self._scatters[name] = tuple(view.ids)

    def _rebound(self, names: Iterable[str] | None) -> None:
        if names is None:
            self._scatters.clear()
        else:
            for name in names:
                self._scatters.pop(name, None)

    def _gather_view(self, name: str) -> EngineView:
        """The engines `name` was scattered over, if it was; refuses to gather it with a part lost."""
        ids = self._scatters.get(name)
        if ids is None:
            return self.engines
        up = self._engine_ids()
        lost = [engine_id for engine_id in ids if engine_id not in up]
        if lost:
            raise EngineError(
                f"gather({name!r}): engine(s) {lost}, which held part of {name!r}, are gone"
                f" ({name!r} was scattered over engines {list(ids)}; up now: {up}), so that part is lost;"
                f" scatter {name!r} again"
            )
        return EngineView(self, ids)

    def _engine_ids(self) -> list[int]:
        """Ids of the engines up now; at first, waits for all of them while more are starting."""
        self._check_running()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            left = max(0.1, deadline - time.monotonic())
            status = self._conn.request(MsgType.QUEUE_REQUEST, {"brief": True}, timeout=left)
            ids = [int(e) for e in status["engines"]]
            if len(ids) >= self._processes:
                self._all_engines_seen = True
                return ids
            starting = int(status.get("starting") or 0)
            if ids and (self._all_engines_seen or not starting):
                return ids
            if not ids and status.get("broken"):
                raise BrokenPoolError(f"no engine can start: {status['broken']}")
            if time.monotonic() >= deadline:
                if ids:
                    return ids
                raise TimeoutError(f"no engine came up within {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.01)

    def remote(self, func: Callable[..., Any] | None = None, *, block: bool = True) -> Any:
        """Decorator: calling the function runs it on an engine, load-balanced (as :meth:`apply`).

        Use as ``@pool.remote()`` or ``@pool.remote``. The call takes the
        pool's scheduling flags (:meth:`set_flags`, :meth:`temp_flags`). For
        a call on every engine of a view, use ``@pool.engines.remote()``.

        Parameters
        ----------
        block : bool
            Return the result (default), or an :class:`AsyncResult` at once.

        Returns
        -------
        RemoteFunction
            Keeps the function's name, docstring and signature; the
            function itself is its ``func`` attribute.
        """
        _check_flag("block", block)

        def decorate(f: Callable[..., Any]) -> RemoteFunction:
            return RemoteFunction(self, f, block)

        return decorate if func is None else decorate(func)

    def parallel(
        self,
        func: Callable[..., Any] | None = None,
        *,
        block: bool = True,
        ordered: bool = True,
        chunksize: int | None = None,
    ) -> Any:
        """Decorator: a call splits its sequence arguments into chunks run in parallel; ``.map`` goes element-wise.

        ``f(seq)`` calls the function on chunks of `seq` (load-balanced
        tasks) and joins their results, so a function written for a whole
        list runs on pieces of it; ``f.map(seq)`` calls it on each element,
        like the builtin ``map``. See :class:`~zpool.view.ParallelFunction`.

        Parameters
        ----------
        block : bool
            Return the result (default), or an :class:`AsyncResult` at once.
        ordered : bool
            Results in input order (default), or chunk by chunk as they finish.
        chunksize : int, optional
            Items per chunk; by default about four chunks per engine.

        Examples
        --------
        >>> @pool.parallel()
        ... def squares(xs):
        ...     return [x * x for x in xs]
        >>> squares(range(6))
        [0, 1, 4, 9, 16, 25]
        >>> @pool.parallel()
        ... def double(x):
        ...     return 2 * x
        >>> double.map(range(3))
        [0, 2, 4]
        """
        _check_flag("block", block)
        _check_flag("ordered", ordered)

        def decorate(f: Callable[..., Any]) -> ParallelFunction:
            return ParallelFunction(self, f, block, ordered, chunksize)

        return decorate if func is None else decorate(func)

    def _submit_direct(
        self, ar: DirectResult[Any], items: list[tuple[str, list[Any]]], flags: list[dict[str, Any]]
    ) -> None:
        """Send one direct task per engine (`flags` name each task's engine)."""
        ar._owner, ar._runner = self, self._callbacks
        # Views take no flags of their own: the pool's track applies.
        self._submit(ar, items, track=bool(self.flags.get("track")), each_flags=flags)

    def _submit_joined(
        self,
        func: Callable[..., Any],
        calls: list[tuple[Any, ...]],
        kwargs: dict[str, Any],
        label: str,
        ordered: bool,
        block: bool,
    ) -> Any:
        """Run ``func(*args, **kwargs)`` for each ``args`` of `calls` (load-balanced); join the results."""
        self._check_running()
        wire_flags, track = self._task_flags({})
        new_id = self._conn.session.new_id
        items = [(new_id(), dumps_call(func, args, kwargs, shared=self._shm)) for args in calls]
        ar: JoinedResult[Any] = JoinedResult([task_id for task_id, _ in items], label, join_parts, ordered)
        ar._owner, ar._runner = self, self._callbacks
        if items:
            self._submit(ar, items, wire_flags, track)
        return self._get_blocking(ar) if block else ar

    def _parallel_map(
        self,
        func: Callable[..., Any],
        seqs: tuple[Iterable[Any], ...],
        chunksize: int | None,
        ordered: bool,
        block: bool,
    ) -> Any:
        star = len(seqs) > 1
        items: Iterable[Any] = zip(*seqs) if star else seqs[0]

        def unordered(ids: list[str], label: str) -> JoinedResult[Any]:
            return JoinedResult(ids, label, _flatten, ordered=False)

        ar = self._map_async(func, items, chunksize, None, None, star, {}, None if ordered else unordered)
        return self._get_blocking(ar) if block else ar

    # -- internals ---------------------------------------------------------------------

    def _check_running(self) -> None:
        """Refuse new work unless the pool is running (see :meth:`_check_connected`)."""
        if self._state is not PoolState.RUN:
            raise PoolClosedError("Pool not running")
        self._check_connected()

    def _check_connected(self) -> None:
        """Refuse requests to the controller (abort, say) once terminated, after a fork, or when broken."""
        if self._state is PoolState.TERMINATE:
            raise PoolClosedError("Pool not running")
        if _pid[0] != self._owner_pid:
            raise PoolClosedError(
                f"this Pool belongs to process {self._owner_pid}; a forked child cannot use it"
                " (its I/O thread did not survive the fork): create a new Pool in the child"
            )
        if self._conn.broken:
            raise BrokenPoolError(self._conn.broken)

    def _check_func(self, func: Any, callback: Any = None, error_callback: Any = None) -> None:
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        for name, value in (("callback", callback), ("error_callback", error_callback)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, not {type(value).__name__}")

    def _map_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None,
        callback: Callable[[list[T]], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
        star: bool,
        flags: Mapping[str, Any],
        make_result: Callable[[list[str], str], Any] | None = None,
    ) -> MapResult[T]:
        self._check_running()
        self._check_func(func, callback, error_callback)
        wire_flags, track = self._task_flags(flags)
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
            items.append((new_id(), self._dump_chunk(func, chunk, star)))
        del items_in
        ids = [task_id for task_id, _ in items]
        ar: MapResult[T] = (make_result or MapResult)(ids, callable_name(func))
        ar._owner, ar._runner = self, self._callbacks
        ar._chunksize = chunksize
        self._callbacks.attach(ar, callback, error_callback)
        if items:
            self._submit(ar, items, wire_flags, track)
        return ar

    def _imap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None,
        buffersize: int | None,
        ordered: bool,
        flags: Mapping[str, Any],
    ) -> IMapIterator[T]:
        self._check_running()
        self._check_func(func)
        # (imap's arguments are read lazily by its feeder: their sends are not tracked)
        wire_flags, _ = self._task_flags(flags)
        refresh: Callable[[], dict[str, Any] | None] | None = None
        if wire_flags and ("after" in wire_flags or "follow" in wire_flags):
            # Chunks sent later say how the AsyncResults they depend on have ended by then
            # (the controller may have forgotten them: record_window).
            merged = self.flags
            merged.update(flags)
            refresh = functools.partial(task_flags, merged)
        if chunksize is not None:
            if not _is_int(chunksize):
                raise TypeError(f"chunksize must be an int or None, not {type(chunksize).__name__}")
            if chunksize < 1:
                raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        if buffersize is None:
            # Enough chunks for the engines never to wait on a round trip; small fixed
            # chunks get more of them (at least IMAP_MIN_ITEMS_AHEAD items in all).
            buffersize = max(IMAP_MIN_READ_AHEAD, 4 * self._processes)
            if chunksize is not None:
                buffersize = max(buffersize, IMAP_MIN_ITEMS_AHEAD // chunksize)
        elif not _is_int(buffersize) or buffersize < 1:
            raise ValueError(f"buffersize must be a positive int or None, not {buffersize!r}")
        strict = bool(wire_flags and wire_flags.get("retries"))
        if chunksize is None and (self._maxtasksperchild is not None or strict):
            # A chunk is one task: maxtasksperchild then counts items, as the stdlib's imap
            # does, and a failed item is retried alone (with retries, a failure fails its chunk).
            chunksize = 1
        items = iter(iterable)  # not iterable: TypeError here, in the caller
        state = _IMapState(ordered, buffersize, rebuild_failure)
        self._feeders.add(state)
        feeder = threading.Thread(
            target=self._feed,
            args=(state, func, items, chunksize, wire_flags, strict, refresh),
            name="zpool-imap-feeder",
            daemon=True,
        )
        feeder.start()
        return IMapIterator(state, owner=self)

    def _feed(
        self,
        state: _IMapState,
        func: Callable[..., Any],
        items: Iterable[Any],
        chunksize: int | None,
        flags: dict[str, Any] | None,
        strict: bool = False,
        refresh: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        """Read the input of an ``imap`` chunk by chunk as the consumer makes room, and submit (feeder thread).

        With `chunksize` None, chunks are sized from measured task times. With
        `refresh`, each chunk's flags are made anew (see ``_imap``).
        """
        number = 0
        size = chunksize or 1
        try:
            while state.reserve():
                if chunksize is None:
                    size = state.next_size(size)
                chunk: list[Any] = []
                failure: BaseException | None = None
                try:
                    chunk.extend(itertools.islice(items, size))
                except BaseException as exc:  # the input failed: it is raised at this place, as the stdlib does
                    failure = exc
                    if chunksize is not None:
                        chunk = []  # the stdlib drops a fixed-size chunk whole; adaptive ones keep what was read
                if chunk:
                    if refresh is not None:
                        flags = refresh()
                    submitted = self._feed_chunk(state, func, chunk, number, flags, strict)
                    number += 1
                    if not submitted:
                        break
                    if failure is None:
                        continue
                    if not state.reserve():  # the failure takes a place of its own
                        break
                elif failure is None:
                    state.release()  # the input is exhausted
                    break
                state.chunk_done(number, False, failure)
                number += 1
                break
        finally:
            state.end(number)

    def _feed_chunk(
        self,
        state: _IMapState,
        func: Callable[..., Any],
        chunk: list[Any],
        number: int,
        flags: dict[str, Any] | None,
        strict: bool = False,
    ) -> bool:
        """Submit one imap chunk as number `number`; False if the pool can take no more."""
        task_id = self._conn.session.new_id()
        holes: list[tuple[int, BaseException]] = []
        try:
            try:
                frames = self._dump_chunk(func, chunk, False, what="imap", each=True, strict=strict)
            except SerializationError:
                dumps(func)  # the function itself: the whole chunk fails with it
                # Some items: each raises at its own place, the others still run.
                holes, chunk = self._unsendable_items(func, chunk)
                if not chunk:
                    state.chunk_done(number, True, [ItemFailure({}, exc) for _, exc in holes])
                    return True
                frames = self._dump_chunk(func, chunk, False, what="imap", each=True, strict=strict)
            del chunk
            holder = _IMapChunk(state, number, task_id, holes)
            self._results.add(holder)
        except BaseException as exc:  # unserializable: raise it at this chunk's place, and go on
            state.chunk_done(number, False, exc)
            return not isinstance(exc, PoolClosedError)
        try:
            self._conn.submit([(task_id, frames)], flags)
        except BaseException as exc:
            self._results.fail([task_id], functools.partial(_same, exc))
            _release_unsent([(task_id, frames)])
            return False
        return True

    def _submit(
        self,
        ar: AsyncResult[Any],
        items: list[tuple[str, list[Any]]],
        flags: dict[str, Any] | None = None,
        track: bool = False,
        each_flags: list[dict[str, Any]] | None = None,
    ) -> None:
        """Register `ar` and send its `items` with `flags` (or, with `each_flags`, each item with its own)."""
        tracker = None
        if track:
            tracker = ar._tracker = SendTracker(len(items), self._conn.dead)
        try:
            self._results.add(ar)
            if each_flags is None:
                self._conn.submit(items, flags, tracker)
            else:
                # All at once or none: the controller expects every user of a shared segment.
                self._conn.submit_each([([item], f) for item, f in zip(items, each_flags)], tracker)
        except BaseException as exc:
            error = exc
            self._results.fail(ar.msg_ids, lambda: error)
            _release_unsent(items)
            if tracker is not None:
                tracker._abandon()
            raise

    @staticmethod
    def _unsendable_items(
        func: Callable[..., Any], chunk: list[Any]
    ) -> tuple[list[tuple[int, BaseException]], list[Any]]:
        """Split `chunk` into the items that cannot be serialized (with their errors, by place) and the others."""
        holes: list[tuple[int, BaseException]] = []
        good: list[Any] = []
        for i, item in enumerate(chunk):
            try:
                dumps(item)
            except SerializationError as exc:
                cause = exc.__cause__ or exc
                message = f"cannot serialize an item of the iterable given to imap({callable_name(func)}): {exc}"
                holes.append((i, serialization_error(message, cause)))
            else:
                good.append(item)
        return holes, good

    def _dump_chunk(
        self,
        func: Callable[..., Any],
        chunk: Any,
        star: bool,
        what: str = "map",
        each: bool = False,
        strict: bool = False,
    ) -> list[Any]:
        shared = self._shm
        try:
            if each:
                return dumps_call(run_each, (func, chunk, True) if strict else (func, chunk), shared=shared)
            return dumps_call(run_chunk, (func, chunk, True) if star else (func, chunk), shared=shared)
        except SerializationError:
            pass
        raise explain_iterable(func, chunk, what)
