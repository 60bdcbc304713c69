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
import logging
import multiprocessing.context
import os
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Iterable, Mapping, TypeVar

from zpool import _imap, _progress, _shm, _timeline
from zpool._decorators import _DecoratorMethods
from zpool._imap import IMapIterator
from zpool._output import OUTPUT_LIMIT, OUTPUT_MODES
from zpool._preload import resolve as resolve_preload
from zpool._scheduling import _SchedulingMethods
from zpool._settings import ControllerSettings, is_int
from zpool.asyncresult import AsyncResult, MapResult
from zpool.client.connection import Connection
from zpool.client.output import Forwarder
from zpool.client.results import ResultTable, rebuild_failure
from zpool.client.submitter import STARTUP_TIMEOUT_S, PoolState, Submitter
from zpool.cluster import ClusterSettings, EngineProcess, LocalCluster, check_tcp
from zpool.error import BrokenPoolError, EngineError, PoolClosedError, TaskAborted, TimeoutError, ZPoolError
from zpool.launchers import Launcher
from zpool.protocol import MsgType
from zpool.serialize import callable_name, dumps_call
from zpool.standalone import AttachedCluster, connection_path
from zpool.view import EngineView, _NamespaceMethods

__all__ = ["Pool"]

T = TypeVar("T")

SHUTDOWN_TIMEOUT_S = 5.0
# A controller silent this long at least, while work is outstanding, is taken for stuck.
MIN_SILENCE_S = 5.0


def _usable_cpus() -> int:
    """CPUs this process may use, as the standard library's Pool counts them (3.13+: os.process_cpu_count)."""
    counter = getattr(os, "process_cpu_count", None)  # honours -X cpu_count and PYTHON_CPU_COUNT
    if counter is not None:
        return int(counter() or 1)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check_launcher(launcher: Any, processes: Any, ip: Any, location: Any, insecure: Any, attached: Any) -> Any:
    """Refuse a launcher and its options that do not go together; the pool's number of processes."""
    if launcher is None:
        if ip is not None or location is not None or insecure:
            raise ValueError(
                "ip, location and insecure go with launcher= (engines on other machines); the hidden cluster"
                " otherwise listens on private Unix sockets only"
            )
        return processes
    if not isinstance(launcher, Launcher):
        raise TypeError(f"launcher must be a zpool.launchers launcher (SSH, MPI, Slurm), not {type(launcher).__name__}")
    if attached is not None:
        raise ValueError("launcher= starts engines for a hidden cluster; an attached cluster has its own")
    if not isinstance(ip, str) or not ip:
        raise ValueError(f"launcher={launcher!r} needs ip=: the address of this machine the engines connect to")
    if not isinstance(insecure, bool):
        raise TypeError(f"insecure must be True or False, not {insecure!r}")
    check_tcp(ip, None, location)
    if processes is not None and processes != launcher.engines:
        raise ValueError(
            f"processes={processes!r}, but the launcher starts {launcher.engines} engine(s): the pool's processes"
            " are the launcher's engines (leave processes out)"
        )
    return launcher.engines


def _wait_attached(conn: Connection, cluster: AttachedCluster, want: int) -> int:
    """Wait until `want` engines of an attached cluster are up; return how many are.

    Raises
    ------
    BrokenPoolError
        If they are not within :data:`STARTUP_TIMEOUT_S`, or no engine can start.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        status = conn.request(MsgType.QUEUE_REQUEST, {"brief": True}, timeout=STARTUP_TIMEOUT_S)
        up = len(status["engines"])
        if up >= want:
            return up
        if status.get("broken"):
            raise BrokenPoolError(f"no engine of {cluster.path} can start: {status['broken']}")
        if time.monotonic() > deadline:
            raise BrokenPoolError(
                f"{up} engine(s) of the cluster of {cluster.path} up after {STARTUP_TIMEOUT_S:.0f} s, {want} wanted:"
                " start more (zpool engine), or ask for fewer (Pool(processes=...))"
            )
        time.sleep(0.05)


def _shutdown(submitter: Submitter, cluster: LocalCluster | AttachedCluster, graceful: bool, owner: int) -> None:
    """Stop the cluster (a hidden one) and the client; called at most once per pool (weakref.finalize).

    A pool attached to a running cluster leaves it running: it only takes
    back the tasks of its own still outstanding (terminate, or garbage
    collection), aborting them on their engines.
    """
    if os.getpid() != owner:
        return  # a forked child inherited the pool object: the cluster is its parent's
    conn, callbacks, shared = submitter.conn, submitter.callbacks, submitter.shared
    if conn.on_io_thread():
        # The last reference went away as a result settled on the I/O thread, which
        # cannot wait for its own replies: shut down from a thread of its own.
        threading.Thread(target=_shutdown, args=(submitter, cluster, graceful, owner), name="zpool-shutdown").start()
        return
    reason = "the pool was terminated before this task finished"
    pending = conn.results.close(lambda: TaskAborted(reason))
    try:
        if conn.broken:
            pass
        elif isinstance(cluster, AttachedCluster):
            if pending:  # the cluster's engines serve others: free them of this pool's work
                conn.request(MsgType.ABORT_REQUEST, {"ids": pending, "interrupt": True}, timeout=2.0)
        else:
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


class Pool(_SchedulingMethods, _DecoratorMethods, _NamespaceMethods):
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
        process may use. With `cluster` or `connection`: how many engines
        to wait for (up to a minute; default: one), the pool's size being
        the number of engines up then.
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
    preload : bool or list of str, keyword-only
        Modules the engines import while they have no task, so the first
        task does not pay for them (a forked ``multiprocessing`` worker
        inherits its parent's). ``True`` (default): the installed packages
        (those in ``site-packages``) this process has loaded when the pool
        is created, with their public submodules; a list: those modules;
        ``False``: none. Replacement engines preload too. A module that
        fails to import is reported in the cluster's log and the engine
        serves all the same. See ``docs/performance.md``.
    log_level : str or int, keyword-only
        Level of the hidden cluster's log (the controller's and the
        engines', loggers ``zpool.controller``, ``zpool.scheduler`` and
        ``zpool.engine``): ``"WARNING"`` (default), ``"INFO"``,
        ``"DEBUG"``... The log is a file of the cluster's, removed when the
        pool ends, unless the pool failed or an error was logged: then it
        is kept, and errors name its path. Your own process's zpool
        messages (``zpool.client``) follow your :mod:`logging` set-up.
    output : {"forward", "capture", "inherit"}, keyword-only
        What becomes of what tasks print. ``"forward"`` (default): each
        task's stdout and stderr (``print``, warnings, log records at
        `log_level` or above) is kept per task (:attr:`AsyncResult.stdout`,
        :attr:`AsyncResult.stderr`, :meth:`AsyncResult.display_outputs`)
        and written as it comes to this process's :data:`sys.stdout` and
        :data:`sys.stderr`, each line prefixed with its engine
        (``[engine 1] ...``), so it shows in notebooks and in pytest's
        capture; a call returns once its tasks' output has come.
        ``"capture"``: kept per task only. ``"inherit"``: the engines write
        straight to this process's terminal (its file descriptors), as
        ``multiprocessing``'s workers do, and nothing is kept. See
        ``docs/output.md``.
    output_limit : int, keyword-only
        Bytes of output one task may send (default 1 MiB); the rest is
        dropped, and a line on the task's stderr says so.
    cluster : str, keyword-only
        Attach to the running standalone cluster of this name (started by
        ``zpool cluster start --name NAME``) instead of starting a hidden
        one. ``close()``, ``terminate()`` and ``with`` then end only this
        pool's work, never the cluster (:meth:`shutdown_cluster` does);
        the engines' settings are the cluster's, so `initializer`,
        `maxtasksperchild`, `scheme`, `hwm`, the heartbeat and record
        settings, `preload`, `log_level` and ``output="inherit"`` are
        refused. See ``docs/standalone.md``.
    connection : str or os.PathLike, keyword-only
        As `cluster`, by the path of the cluster's connection file.
    launcher : zpool.launchers.Launcher, keyword-only
        Run the hidden cluster's engines elsewhere instead of here:
        :class:`~zpool.launchers.SSH` (on listed hosts),
        :class:`~zpool.launchers.MPI` (the ranks of one ``mpiexec``) or
        :class:`~zpool.launchers.Slurm` (the tasks of one batch job). The
        pool has as many processes as the launcher starts engines (leave
        `processes` out, or give that number); the controller stays here,
        and ends them as the pool ends. Needs `ip`. See
        ``docs/launchers.md``.
    ip : str, keyword-only
        With `launcher`: this machine's address, where the hidden cluster
        listens on TCP for the engines (``"*"`` for every interface, then
        with `location`). Encrypted and authenticated with CURVE unless it
        is a loopback address or `insecure` is given (``docs/security.md``).
    location : str, keyword-only
        With `launcher`: the address or name the engines reach this machine
        at, if not `ip` (NAT, ``"*"``).
    insecure : bool, keyword-only
        With `launcher`: do not encrypt (trusted networks only; logged as a
        warning).

    Raises
    ------
    ValueError
        If `processes` is less than 1, `maxtasksperchild` is not a positive
        int, or `scheme`, `hwm`, `log_level`, `output` or `output_limit`
        is invalid; or `launcher` comes without `ip`, with `cluster`, or
        with another number of `processes`.
    TypeError
        If `initializer` is not callable, `preload` is not a bool or a
        list of module names, or `launcher` is not a
        :class:`zpool.launchers.Launcher`.
    SerializationError
        If `initializer` or `initargs` cannot be serialized.
    BrokenPoolError
        If the hidden cluster fails to start. An initializer that raises in
        every engine breaks the pool too: tasks then fail with
        :class:`BrokenPoolError` quoting the initializer's traceback. With
        `cluster` or `connection`: if the cluster is not running (no
        connection file, or a stale one), or `processes` engines are not up
        within a minute.

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
        preload: bool | Iterable[str] = True,
        log_level: str | int = "WARNING",
        output: str = "forward",
        output_limit: int = OUTPUT_LIMIT,
        cluster: str | None = None,
        connection: str | os.PathLike[str] | None = None,
        launcher: Launcher | None = None,
        ip: str | None = None,
        location: str | None = None,
        insecure: bool = False,
    ) -> None:
        attached: AttachedCluster | None = None
        processes = _check_launcher(launcher, processes, ip, location, insecure, cluster or connection)
        if cluster is not None or connection is not None:
            if cluster is not None and connection is not None:
                raise TypeError("pass cluster (a name) or connection (a connection file), not both")
            chosen = {
                "initializer": initializer is not None,
                "maxtasksperchild": maxtasksperchild is not None,
                "scheme": scheme != "leastload",
                "hwm": hwm is not None,
                "heartbeat_interval": heartbeat_interval != 1.0,
                "heartbeat_misses": heartbeat_misses != 10,
                "record_window": record_window != 100_000,
                "record_age": record_age != 3600.0,
                "preload": preload is not True,
                "log_level": log_level != "WARNING",
                'output="inherit"': output == "inherit",
            }
            refused = [name for name, given in chosen.items() if given]
            if refused:
                raise ValueError(
                    f"{', '.join(refused)}: set by the cluster when it starts (zpool cluster start --help), not by a"
                    " Pool that attaches to it"
                )
            if cluster is not None:
                attached = AttachedCluster(connection_path(cluster), cluster)
            else:
                if not isinstance(connection, (str, os.PathLike)):
                    raise TypeError(f"connection must be a path, not {type(connection).__name__}")
                attached = AttachedCluster(os.fspath(connection))
        if processes is None:
            processes = 1 if attached is not None else _usable_cpus()
        if not is_int(processes):
            raise TypeError(f"processes must be an int, not {type(processes).__name__}")
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable, not {type(initializer).__name__}")
        if context is not None and not isinstance(context, multiprocessing.context.BaseContext):
            raise TypeError(
                f"context must be a multiprocessing context (multiprocessing.get_context()) or None,"
                f" not {type(context).__name__}"
            )
        if not isinstance(shared_memory, bool):
            raise TypeError(f"shared_memory must be True or False, not {shared_memory!r}")
        if output not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUT_MODES))}, not {output!r}")
        if not is_int(output_limit) or output_limit < 0:
            raise ValueError(f"output_limit must be an int of at least 0 (bytes per task), not {output_limit!r}")
        preloaded = resolve_preload(preload)
        level = _log_level_name(log_level)
        settings = ControllerSettings(
            scheme, hwm, heartbeat_interval, heartbeat_misses, record_window, record_age, maxtasksperchild
        ).validate()
        setup: tuple[bytes, ...] = ()
        if initializer is not None:
            frames = dumps_call(
                initializer, tuple(initargs), {}, describe_arg=lambda i, name: f"initargs[{i}] of {name}()"
            )
            setup = tuple(bytes(memoryview(f)) for f in frames)
        self._processes = processes
        self._initializer = initializer
        self._maxtasksperchild = maxtasksperchild
        self._cluster: LocalCluster | AttachedCluster = attached or LocalCluster(
            ClusterSettings(
                0 if launcher is not None else processes,  # (no local engine: the launcher's instead)
                settings,
                log_level=level,
                engine_setup=setup,
                shared_memory=shared_memory,
                preload=preloaded,
                output=output,
                output_limit=output_limit,
                launcher=launcher,
                ip=ip,
                location=location,
                insecure=insecure,
            )
        )
        info = self._cluster.start()
        # Writes large arguments into shared-memory segments (zpool._shm); None: they go as frames.
        self._shm = _shm.Writer(info.shm_prefix, "c") if info.shm_prefix else None
        self._results = ResultTable(info.shm_prefix, Forwarder() if output == "forward" else None)
        # name -> the engines pool.scatter(name, ...) split it over, in order (for gather).
        self._scatters: dict[str, tuple[int, ...]] = {}
        conn: Connection | None = None
        try:
            # A controller silent for twice the engines' tolerance (5 s at least), while work is
            # outstanding, is stuck: a busy one still answers within that, after what was sent before.
            silence = max(2 * heartbeat_interval * heartbeat_misses, MIN_SILENCE_S)
            conn = Connection(info, self._results, watch=self._cluster.failure, silence=silence)
            conn.request(MsgType.CONNECT_REQUEST, timeout=STARTUP_TIMEOUT_S)
            if attached is not None:
                processes = self._processes = _wait_attached(conn, attached, processes)
        except BaseException as exc:  # Ctrl-C included: leave nothing running
            if conn is not None:
                conn.close()
            self._cluster.stop(timeout=1.0)
            if isinstance(exc, ZPoolError) and not isinstance(exc, BrokenPoolError):
                what = "the hidden cluster did not start" if attached is None else "could not attach to the cluster"
                raise BrokenPoolError(f"{what}: {exc}") from exc
            raise
        self._conn = conn
        self._submitter = Submitter(conn, self._results, self._shm, processes)
        # Blocking calls may push their tasks straight to the engines (the direct path), unless engines
        # retire after a number of tasks: the controller counts those as it places them.
        conn.pushing = maxtasksperchild is None
        # Maps without a chunksize are cut by their items' measured cost, unless chunks count as tasks.
        self._submitter.measured_chunks = maxtasksperchild is None
        self._finalizer = weakref.finalize(self, _shutdown, self._submitter, self._cluster, False, os.getpid())

    # -- the standard library's API ------------------------------------------------

    def apply(self, func: Callable[..., T], args: Iterable[Any] = (), kwds: Mapping[str, Any] = {}, **flags: Any) -> T:
        """Call ``func(*args, **kwds)`` on an engine and return its result (blocks).

        Same contract as :meth:`multiprocessing.pool.Pool.apply`; `flags` as
        for :meth:`apply_async`.
        """
        ar, items, wire_flags, tracker = self._submitter.prepare_call(self, func, args, kwds, None, None, flags)
        if wire_flags is None and tracker is None:
            # Nothing to order it after: it may go out and come back through this thread (Connection.call_now).
            return self._submitter.apply_now(ar, items)
        self._submitter.submit(ar, items, wire_flags, tracker)
        return self._submitter.get_blocking(ar)

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
        ar, items, wire_flags, tracker = self._submitter.prepare_call(
            self, func, args, kwds, callback, error_callback, flags
        )
        self._submitter.submit(ar, items, wire_flags, tracker)
        return ar

    def map(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        progress: bool = False,
        **flags: Any,
    ) -> list[T]:
        """Apply `func` to each item of `iterable` on the engines; return a list.

        Same contract as :meth:`multiprocessing.pool.Pool.map`: blocks until
        every item is done and raises the first failure. `flags` apply to
        every chunk (see :meth:`set_flags`). With `progress`, a progress bar
        counts the items as their chunks finish (tqdm, an extra: ``pip
        install "zpool[progress]"``; see :meth:`AsyncResult.wait_interactive`).
        """
        return self._submitter.map_now(self, func, iterable, chunksize, False, flags, progress)

    def map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        *,
        progress: bool = False,
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
        progress : bool, keyword-only
            Draw a progress bar of the items, from a thread of its own, until
            the result is ready (see :meth:`map`).
        **flags
            Scheduling flags for every chunk (see :meth:`set_flags`): ``after``,
            ``follow``, ``timeout``, ``retries``, ``targets``.
        """
        sub = self._submitter
        return sub.map_async(self, func, iterable, chunksize, callback, error_callback, False, flags, progress=progress)

    def starmap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        progress: bool = False,
        **flags: Any,
    ) -> list[T]:
        """Like :meth:`map`, but call ``func(*item)`` for each item of `iterable`.

        Same contract as :meth:`multiprocessing.pool.Pool.starmap`; `progress` as for :meth:`map`.
        """
        return self._submitter.map_now(self, func, iterable, chunksize, True, flags, progress)

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        *,
        progress: bool = False,
        **flags: Any,
    ) -> MapResult[T]:
        """Like :meth:`starmap`, but return a :class:`MapResult` at once; `progress` as for :meth:`map_async`."""
        sub = self._submitter
        return sub.map_async(self, func, iterable, chunksize, callback, error_callback, True, flags, progress=progress)

    def imap(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        buffersize: int | None = None,
        progress: bool = False,
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
        return self._imap(func, iterable, chunksize, buffersize, True, flags, progress)

    def imap_unordered(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        buffersize: int | None = None,
        progress: bool = False,
        **flags: Any,
    ) -> IMapIterator[T]:
        """Like :meth:`imap`, but yield results in the order they finish."""
        return self._imap(func, iterable, chunksize, buffersize, False, flags, progress)

    def close(self) -> None:
        """Accept no more work; running and queued tasks still finish."""
        sub = self._submitter
        if sub.state is PoolState.RUN:
            sub.state = PoolState.CLOSE

    def terminate(self) -> None:
        """Stop the engines and controller now; unfinished tasks fail with TaskAborted."""
        self._submitter.state = PoolState.TERMINATE
        for state in list(self._submitter.feeders):
            state.stop()
        self._finalizer()

    def detach(self) -> list[str]:
        """Leave a standalone cluster without ending this pool's tasks: they run on, recorded; return their ids.

        For a script that submits work and does not wait for it: a later
        script fetches the results with :meth:`get_result` (any pool of the
        cluster may). ``close()``, ``terminate()`` and ``with`` instead end
        this pool's work. This pool is then stopped; its results not come
        yet fail here with :class:`PoolClosedError`, and ``imap`` input not
        yet sent is dropped.

        Returns
        -------
        list of str
            The ids of the tasks left running or queued.

        Raises
        ------
        ValueError
            If this pool is not attached to a standalone cluster (a Pool's
            own cluster ends with it: ``close()`` and ``join()`` wait for
            its work).
        ZPoolError
            If the cluster keeps no task database (``--no-db``): the results
            would be lost; nothing is changed then.
        """
        cluster = self._cluster
        if not isinstance(cluster, AttachedCluster):
            raise ValueError(
                "detach() is for a pool attached to a standalone cluster (Pool(cluster=...)); a Pool's own cluster"
                " ends with it: close() and join() wait for its work"
            )
        sub = self._submitter
        sub.check_connected()
        reply = sub.request(MsgType.DB_REQUEST, {"op": "stats"})
        if reply.get("error"):
            raise ZPoolError(
                f"cannot detach: {reply['error']}; the results of the tasks left behind would be lost (close() and"
                " join() wait for them)"
            )
        sub.state = PoolState.TERMINATE
        for state in list(sub.feeders):
            state.stop()
        where = f"Pool(cluster={cluster.name!r})" if cluster.name else f"Pool(connection={cluster.path!r})"
        reason = f"the pool detached from its cluster, where this task runs on: get its result with {where}.get_result"
        left = self._conn.results.close(lambda: PoolClosedError(reason))
        self._finalizer()  # (nothing is pending any more: nothing is aborted)
        return left

    def shutdown_cluster(self, timeout: float = 10.0) -> None:
        """Stop the cluster this pool uses (its controller and engines), and this pool with it.

        For a pool attached to a standalone cluster (`cluster` or
        `connection`), the explicit way to stop the cluster; every other
        pool attached to it breaks (their unfinished tasks fail with
        :class:`BrokenPoolError`). For the hidden cluster, the same as
        :meth:`terminate`. Unfinished tasks of this pool fail with
        :class:`TaskAborted`.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the controller to exit.

        Raises
        ------
        zpool.TimeoutError
            If the controller of an attached cluster did not exit within
            `timeout` (``zpool cluster stop`` ends it).
        """
        cluster = self._cluster
        self.terminate()
        if not isinstance(cluster, AttachedCluster) or cluster.info is None:
            return
        from zpool.standalone import ask, wait_gone

        try:
            ask(cluster.info, MsgType.SHUTDOWN_REQUEST, timeout=timeout)
        except ZPoolError:
            pass  # gone already, or stuck: said below
        if not wait_gone(cluster.info.controller_pid, timeout):
            raise TimeoutError(
                f"the controller of {cluster.path} (pid {cluster.info.controller_pid}) did not exit within"
                f" {timeout:g} s; end it with: zpool cluster stop{' --name ' + cluster.name if cluster.name else ''}"
            )

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
            feeders = list(self._submitter.feeders)
            for state in feeders:
                state.unbound()
            for state in feeders:
                state.wait_finished()
            self._results.wait_empty()
            if self._initializer:
                self._wait_engines_started()
            self._finalizer.detach()
            _shutdown(self._submitter, self._cluster, True, os.getpid())
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
                status = self._submitter.request(MsgType.QUEUE_REQUEST, {"brief": True}, timeout=SHUTDOWN_TIMEOUT_S)
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

    @property
    def _state(self) -> PoolState:
        """RUN, CLOSE or TERMINATE (the standard library's Pool has the same field)."""
        sub = self.__dict__.get("_submitter")
        return PoolState.TERMINATE if sub is None else sub.state  # (TERMINATE: not fully started)

    def __enter__(self) -> Pool:
        self._submitter.check_running()
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
        self._submitter.check_running()
        return EngineView(self._submitter, self, self._submitter.engine_ids())

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
        up = self._submitter.engine_ids()
        lost = [engine_id for engine_id in ids if engine_id not in up]
        if lost:
            raise EngineError(
                f"gather({name!r}): engine(s) {lost}, which held part of {name!r}, are gone"
                f" ({name!r} was scattered over engines {list(ids)}; up now: {up}), so that part is lost;"
                f" scatter {name!r} again"
            )
        return EngineView(self._submitter, self, ids)

    # -- internals ---------------------------------------------------------------------

    def _imap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None,
        buffersize: int | None,
        ordered: bool,
        flags: Mapping[str, Any],
        progress: bool = False,
    ) -> IMapIterator[T]:
        if progress:
            _progress.require_tqdm()
        total = len(iterable) if isinstance(iterable, collections.abc.Sized) else None
        one_per_task = self._maxtasksperchild is not None
        iterator: IMapIterator[T] = _imap.start(
            self._submitter, self, func, iterable, chunksize, buffersize, ordered, flags, rebuild_failure, one_per_task
        )
        if progress:
            iterator.show_progress(total, f"{'imap' if ordered else 'imap_unordered'}({callable_name(func)})")
        return iterator

    @staticmethod
    def timeline(
        results: Iterable[AsyncResult[Any]], path: str | None = None, ax: Any = None, title: str | None = None
    ) -> Any:
        """Draw the tasks of `results` as one per-engine Gantt chart (see :meth:`AsyncResult.timeline`).

        Each result's tasks get a colour of their own. Returns the matplotlib
        Axes drawn on; saves the chart to `path` (PNG, SVG, PDF...) if given.

        Raises
        ------
        ImportError
            If matplotlib is not installed (``pip install "zpool[timeline]"``).
        ValueError
            If no task of `results` has run on an engine yet.
        """
        return _timeline.draw(results, path, ax, title)


_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def _log_level_name(level: Any) -> str:
    """`level` (a name, any case, or a :mod:`logging` number) as the name the cluster's processes take."""
    if isinstance(level, str) and level.upper() in _LEVELS:
        return level.upper()
    if type(level) is int and logging.getLevelName(level) in _LEVELS:
        return str(logging.getLevelName(level))
    raise ValueError(f"log_level must be one of {', '.join(_LEVELS)} (or its logging number), not {level!r}")
