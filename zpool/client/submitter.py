"""The one seam between the facades (``Pool``, engine views, decorators, ``imap``) and the connection.

A :class:`Submitter` owns what every way of submitting work shares: the
pool's lifecycle state, the connection, the table of pending results, the
shared-memory writer for large arguments, the callback thread, task ids,
the scheduling flags (``set_flags``, ``temp_flags``) and the blocking wait.
The facades decide *what* to run and *where*; they build results with
:meth:`Submitter.result` and hand tasks to :meth:`Submitter.submit`, and
never reach into the connection.

Threads of the caller's process, and what each may touch::

    caller threads ──submit()/request()──▶ Connection queue ──▶ zpool-io ──▶ controller
          │  (blocking apply: Connection.call_now sends and reads on the caller's own sockets,
          │   client/own_socket.py's OwnSocket, under OwnSocket.lock; zpool-io reads leftovers)
          │                                   zpool-io ◀── replies ── controller
          │                                     │ settles AsyncResults (ResultTable)
          │                                     ▼
          │                            zpool-callbacks: callback / error_callback /
          │                            done-callbacks (CallbackThread), one at a time
          ├─ zpool-imap-feeder (one per imap): reads the input, submits chunks (zpool._imap)
          ├─ zpool-shutdown: a pool collected on the I/O thread shuts down from here
          └─ zpool-shm-keeper: frees unused kept shared-memory segments (zpool._shm)

* Callers touch the queue, the result table and the flags through the
  methods here; the scheduling flags of ``temp_flags`` are per thread.
* Only ``zpool-io`` touches the main socket and settles results
  (``AsyncResult._task_done``/``_fail``); a caller in ``call_now`` settles
  the replies to its own call, under ``OwnSocket.lock``
  (:mod:`zpool.client.own_socket`), which ``zpool-io`` takes to read the
  answers a caller stopped waiting for.
* User code (callbacks) runs only in ``zpool-callbacks``, never in
  ``zpool-io``: it may submit work and wait for it.
"""

from __future__ import annotations

import collections.abc
import contextlib
import enum
import functools
import os
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from zpool import _progress, _shm
from zpool._partition import default_chunksize, measured_chunksize, run_chunk, run_each, split
from zpool._settings import is_int
from zpool.asyncresult import AsyncResult, MapResult
from zpool.client.callbacks import CallbackThread
from zpool.client.connection import Connection, SendTracker
from zpool.client.results import ResultTable
from zpool.dependency import task_flags
from zpool.error import BrokenPoolError, PoolClosedError, SerializationError, TimeoutError, ZPoolError
from zpool.protocol import MsgType
from zpool.serialize import callable_name, dumps_call, explain_iterable, pickled_once

__all__ = ["PoolState", "Submitter"]

T = TypeVar("T")
R = TypeVar("R", bound=AsyncResult[Any])

STARTUP_TIMEOUT_S = 60.0
# Ctrl-C during a blocking call: how long the abort of its tasks may take before the KeyboardInterrupt goes on.
INTERRUPT_ABORT_S = 2.0

Items = list[tuple[str, list[Any]]]

# This process's id, kept current across forks: checked on every call, and
# os.getpid() is a system call.
_pid = [os.getpid()]


def _forked() -> None:
    _pid[0] = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def release_unsent(items: Items) -> None:
    """Unlink the shared-memory segments of payloads that never left this process."""
    for _, frames in items:
        _shm.release(frames)


class PoolState(enum.Enum):
    RUN = "running"
    CLOSE = "closed"
    TERMINATE = "terminated"


class Submitter:
    """Submission for one pool: lifecycle, ids, serialization, flags, results and the blocking wait.

    Parameters
    ----------
    conn : Connection
        The connection to the controller.
    results : ResultTable
        Where pending results wait for their replies (the connection's too).
    shared : zpool._shm.Writer or None
        Writes large arguments into shared memory; None: they go as frames.
    processes : int
        The pool's number of engines (chunk sizes, waits for engines).
    """

    def __init__(self, conn: Connection, results: ResultTable, shared: _shm.Writer | None, processes: int) -> None:
        self.conn = conn
        self.results = results
        self.shared = shared
        self.processes = processes
        self.callbacks = CallbackThread()
        self.state = PoolState.RUN
        self.owner_pid = os.getpid()
        self.new_id: Callable[[], str] = conn.session.new_id
        # Scheduling flags: defaults for every call (set_flags), and per thread for a block (temp_flags).
        self._default_flags: dict[str, Any] = {}
        self._temp_flags = threading.local()
        self._temp_active = 0  # temp_flags blocks open, in any thread
        self._temp_lock = threading.Lock()
        # Live imap feeders (zpool._imap.IMapState): join() lets them read ahead without bound.
        self.feeders: weakref.WeakSet[Any] = weakref.WeakSet()
        self._all_engines_seen = False  # engine_ids waits for the first full complement
        # Where each engine runs, as the controller said: id -> (host name, launcher rank or None).
        self.where: dict[int, tuple[str, int | None]] = {}
        # Whether maps without a chunksize are cut by their items' measured cost (not with maxtasksperchild,
        # where chunks count as tasks, as in the standard library): engine seconds per item, per function.
        self.measured_chunks = True
        self._item_s: collections.OrderedDict[Any, float] = collections.OrderedDict()

    # -- lifecycle ---------------------------------------------------------------------

    def check_running(self) -> None:
        """Refuse new work unless the pool is running (see :meth:`check_connected`)."""
        if self.state is not PoolState.RUN:
            raise PoolClosedError("Pool not running")
        self.check_connected()

    def check_connected(self) -> None:
        """Refuse requests to the controller (abort, say) once terminated, after a fork, or when broken."""
        if self.state is PoolState.TERMINATE:
            raise PoolClosedError("Pool not running")
        if _pid[0] != self.owner_pid:
            raise PoolClosedError(
                f"this Pool belongs to process {self.owner_pid}; a forked child cannot use it"
                " (its I/O thread did not survive the fork): create a new Pool in the child"
            )
        if self.conn.broken:
            raise BrokenPoolError(self.conn.broken)

    # -- serialization -----------------------------------------------------------------

    def dump_call(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None = None, users: int = 1
    ) -> list[Any]:
        """The payload frames of ``func(*args, **kwargs)``, for `users` tasks (a push to every engine)."""
        return dumps_call(func, args, kwargs or {}, shared=self.shared, users=users)

    def dump_chunk(
        self,
        func: Callable[..., Any],
        chunk: Any,
        star: bool,
        what: str = "map",
        each: bool = False,
        strict: bool = False,
        once: Any = None,
    ) -> list[Any]:
        """The payload of one chunk of a map (`each`: every item with its own outcome, as imap runs them).

        `once`: what :meth:`pickled_once` made of `func`, to send in its place.

        Raises
        ------
        SerializationError
            Naming the first item (or the function) that cannot be serialized.
        """
        shared = self.shared
        sent = func if once is None else once
        try:
            if each:
                return dumps_call(run_each, (sent, chunk, True) if strict else (sent, chunk), shared=shared)
            return dumps_call(run_chunk, (sent, chunk, True) if star else (sent, chunk), shared=shared)
        except SerializationError:
            pass
        raise explain_iterable(func, chunk, what)

    def pickled_once(self, func: Callable[..., Any]) -> Any:
        """`func` serialized once for all the chunks of a map (see :func:`zpool.serialize.pickled_once`).

        Raises
        ------
        SerializationError
            If `func` cannot be serialized, naming it.
        """
        try:
            return pickled_once(func)
        except SerializationError:
            pass
        raise explain_iterable(func, (), "map")

    # -- scheduling flags ----------------------------------------------------------------

    def set_flags(self, flags: Mapping[str, Any]) -> None:
        """Merge `flags` into the defaults of every later call (``None`` clears one); checked now."""
        merged = {**self._default_flags, **flags}
        task_flags(merged)  # check now, not at the next call
        self._default_flags = {name: value for name, value in merged.items() if value is not None}

    @contextlib.contextmanager
    def temp_flags(self, flags: dict[str, Any]) -> Iterator[None]:
        """`flags` for calls made in this thread within the block."""
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

    def wire_flags(self, call_flags: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """The wire form of the flags a call gets, and whether its sends are tracked (``track``)."""
        if not call_flags and not self._default_flags and not self._temp_active:
            return None, False  # the common case, kept cheap (no thread is in a temp_flags block)
        merged = self.flags
        merged.update(call_flags)
        return task_flags(merged), bool(merged.get("track"))

    # -- results and submission ------------------------------------------------------------

    def result(
        self,
        kind: Callable[..., R],
        ids: list[str],
        label: str,
        owner: Any,
        *,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        tracker: SendTracker | None = None,
        **extra: Any,
    ) -> R:
        """A new result of class `kind` for tasks `ids`, kept alive with `owner` while pending.

        Its callbacks run in this pool's callback thread; with a `tracker`
        (:meth:`tracker`), its sends are tracked (:attr:`AsyncResult.sent`).
        """
        return kind(
            ids,
            label,
            owner=owner,
            runner=self.callbacks,
            callback=callback,
            error_callback=error_callback,
            tracker=tracker,
            **extra,
        )

    def tracker(self, n_tasks: int, track: bool = True) -> SendTracker | None:
        """A tracker for the sends of `n_tasks` tasks' arguments (``track=True``); None if not `track`."""
        return SendTracker(n_tasks, self.conn.dead) if track else None

    def submit(
        self,
        ar: AsyncResult[Any],
        items: Items,
        flags: dict[str, Any] | None = None,
        tracker: SendTracker | None = None,
        each_flags: list[dict[str, Any]] | None = None,
    ) -> None:
        """Register `ar` and send its `items` with `flags` (or, with `each_flags`, each item with its own).

        `tracker` is the one `ar` was made with, if any.
        """
        try:
            self.results.add(ar)
            if each_flags is None:
                self.conn.submit(items, flags, tracker)
            else:
                # All at once or none: the controller expects every user of a shared segment.
                self.conn.submit_each([([item], f) for item, f in zip(items, each_flags)], tracker)
        except BaseException as exc:
            self.fail(ar.msg_ids, exc)
            release_unsent(items)
            if tracker is not None:
                tracker.abandon()
            raise

    def fail(self, ids: list[str], exc: BaseException) -> None:
        """Fail the pending tasks `ids` with `exc`."""
        self.results.fail(ids, lambda: exc)

    def get_blocking(self, ar: AsyncResult[T], unsent: Items | None = None, progress: bool = False) -> T:
        """``ar.get()`` for a blocking call: on Ctrl-C, abort the call's tasks (interrupting those running).

        With `unsent`, ar's tasks (registered, not sent yet) go out now: through
        this thread when the connection allows (:meth:`Connection.call_now`),
        else through the I/O thread. With `progress`, a bar is drawn while
        waiting (:meth:`AsyncResult.wait_interactive`).
        """
        try:
            if unsent is not None and not self.conn.call_now(unsent, ar.done):
                try:
                    self.conn.submit(unsent)
                except BaseException as exc:
                    self.fail(ar.msg_ids, exc)
                    release_unsent(unsent)
                    raise
            if progress:
                ar.wait_interactive()
            return ar.get()
        except KeyboardInterrupt:
            if self.state is PoolState.RUN and not self.conn.broken and not ar.ready():
                try:
                    self.conn.request(
                        MsgType.ABORT_REQUEST, {"ids": list(ar.msg_ids), "interrupt": True}, timeout=INTERRUPT_ABORT_S
                    )
                except ZPoolError:
                    pass  # the pool is going away: its tasks with it
            raise

    def apply_now(self, ar: AsyncResult[T], items: Items) -> T:
        """Run `ar`'s flag-less `items` and wait: the short path of a blocking ``apply``."""
        try:
            self.results.add(ar)
        except BaseException:
            release_unsent(items)
            raise
        return self.get_blocking(ar, items)

    # -- calls and maps ---------------------------------------------------------------------

    def prepare_call(
        self,
        owner: Any,
        func: Callable[..., T],
        args: Iterable[Any],
        kwds: Mapping[str, Any],
        callback: Callable[[T], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
        flags: Mapping[str, Any],
    ) -> tuple[AsyncResult[T], list[tuple[str, list[Any]]], dict[str, Any] | None, SendTracker | None]:
        """Check and serialize one call for `owner`: its result, its task, its wire flags and its send tracker."""
        sub = self
        sub.check_running()
        check_func(func, callback, error_callback)
        wire_flags, track = sub.wire_flags(flags)
        check_kwds(kwds)
        frames = sub.dump_call(func, args if type(args) is tuple else tuple(args), dict(kwds))
        task_id = sub.new_id()
        tracker = sub.tracker(1, track)
        label = callable_name(func)
        ar: AsyncResult[T] = sub.result(
            AsyncResult, [task_id], label, owner, callback=callback, error_callback=error_callback, tracker=tracker
        )
        return ar, [(task_id, frames)], wire_flags, tracker

    def map_async(
        self,
        owner: Any,
        func: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None,
        callback: Callable[[list[T]], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
        star: bool,
        flags: Mapping[str, Any],
        make_result: Callable[..., Any] | None = None,
        progress: bool = False,
    ) -> MapResult[T]:
        """Check, chunk and submit a ``map`` for `owner` (`make_result`: another kind of result than MapResult).

        With `progress`, a bar follows the result from a thread of its own (tqdm checked first).
        """
        if progress:
            _progress.require_tqdm()
        ar, items, wire_flags, tracker = self.prepare_map(
            owner, func, iterable, chunksize, callback, error_callback, star, flags, make_result
        )
        if items:
            self.submit(ar, items, wire_flags, tracker)
        if progress:
            _progress.follow_in_background(ar)
        return ar

    def map_now(
        self,
        owner: Any,
        func: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None,
        star: bool,
        flags: Mapping[str, Any],
        progress: bool = False,
    ) -> list[T]:
        """A blocking ``map``: without scheduling flags, sent and awaited by this thread (:meth:`apply_now`).

        With `progress`, it goes through the I/O thread and this thread draws a bar while it waits.
        """
        if progress:
            _progress.require_tqdm()
        ar, items, wire_flags, tracker = self.prepare_map(owner, func, iterable, chunksize, None, None, star, flags)
        if items and wire_flags is None and tracker is None and not progress:
            return self.apply_now(ar, items)
        if items:
            self.submit(ar, items, wire_flags, tracker)
        return self.get_blocking(ar, progress=progress)

    def prepare_map(
        self,
        owner: Any,
        func: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None,
        callback: Callable[[list[T]], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
        star: bool,
        flags: Mapping[str, Any],
        make_result: Callable[..., Any] | None = None,
    ) -> tuple[MapResult[T], Items, dict[str, Any] | None, SendTracker | None]:
        """Check and chunk a ``map``: its result, its tasks (not sent), their wire flags and send tracker."""
        sub = self
        sub.check_running()
        check_func(func, callback, error_callback)
        wire_flags, track = sub.wire_flags(flags)
        # Sliceable sequences are chunked in place; anything else (generators, sets,
        # dicts: their keys, as the standard library does) is materialised first.
        items_in = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        timing_key = _timing_key(func)
        if chunksize is None:
            item_s = self._item_s.get(timing_key) if self.measured_chunks and len(items_in) else None
            if item_s is None:
                chunksize = default_chunksize(len(items_in), self.processes)
            else:
                chunksize = measured_chunksize(len(items_in), self.processes, item_s)
        elif not is_int(chunksize):
            raise TypeError(f"chunksize must be an int, not {type(chunksize).__name__}")
        elif chunksize < 1 and len(items_in):  # an empty map ignores chunksize, as the stdlib does
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        items: list[tuple[str, list[Any]]] = []
        new_id = sub.new_id
        chunks = split(items_in, chunksize) if len(items_in) else []
        once = sub.pickled_once(func) if len(chunks) > 1 else None
        for chunk in chunks:
            items.append((new_id(), sub.dump_chunk(func, chunk, star, once=once)))
        n_items = len(items_in)
        del items_in, chunks
        ids = [task_id for task_id, _ in items]
        tracker = sub.tracker(len(ids), track)
        kind: Callable[..., Any] = MapResult if make_result is None else make_result
        extra: dict[str, Any] = {}
        if make_result is None:
            extra = {"chunksize": chunksize, "items": n_items, "on_timed": functools.partial(self._timed, timing_key)}
        ar: MapResult[T] = sub.result(
            kind,
            ids,
            callable_name(func),
            owner,
            callback=callback,
            error_callback=error_callback,
            tracker=tracker,
            **extra,
        )
        return ar, items, wire_flags, tracker

    def _timed(self, key: Any, item_s: float) -> None:
        """A map of the function `key` stands for ran at `item_s` engine seconds per item (any thread)."""
        known = self._item_s.get(key)
        self._item_s[key] = item_s if known is None else known + 0.5 * (item_s - known)
        self._item_s.move_to_end(key)
        while len(self._item_s) > TIMED_FUNCTIONS_MAX:
            self._item_s.popitem(last=False)

    # -- requests to the controller -------------------------------------------------------

    def request(
        self, msg_type: MsgType, content: dict[str, Any] | None = None, timeout: float | None = 30.0
    ) -> dict[str, Any]:
        """A request to the controller and its reply (see :meth:`Connection.request`)."""
        return self.conn.request(msg_type, content, timeout=timeout)

    def _note_where(self, status: Mapping[str, Any]) -> None:
        for key, (host, rank) in (status.get("where") or {}).items():
            self.where[int(key)] = (host, rank)

    def engine_where(self, engine_id: int, ask: bool = True) -> tuple[str, int | None] | None:
        """Engine `engine_id`'s (host name, launcher rank); asks the controller if it is not known yet (`ask`)."""
        found = self.where.get(engine_id)
        if found is None and ask and not self.conn.broken:
            try:
                self._note_where(self.request(MsgType.QUEUE_REQUEST, {"brief": True}, timeout=5.0))
            except ZPoolError:
                return None
            found = self.where.get(engine_id)
        return found

    def engine_ids(self, wait_for: int | None = None, timeout: float = STARTUP_TIMEOUT_S) -> list[int]:
        """Ids of the engines taking tasks.

        With `wait_for`, wait until that many are up (:class:`zpool.TimeoutError`
        after `timeout` s). Without, return those up now, except at first:
        while the pool's engines are still starting, wait for all of them
        (up to `timeout` s, then return those up, if any).

        Raises
        ------
        BrokenPoolError
            If no engine can start.
        zpool.TimeoutError
            If not enough engines came up in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.1, deadline - time.monotonic())
            status = self.request(MsgType.QUEUE_REQUEST, {"brief": True}, timeout=left)
            self._note_where(status)
            ids = sorted(int(e) for e in status["engines"])
            if len(ids) >= (wait_for or self.processes):
                if wait_for is None:
                    self._all_engines_seen = True
                return ids
            if not ids and status.get("broken"):
                raise BrokenPoolError(f"no engine can start: {status['broken']}")
            starting = int(status.get("starting") or 0)
            if wait_for is None and ids and (self._all_engines_seen or not starting):
                return ids
            if time.monotonic() >= deadline:
                if wait_for is None:
                    if ids:
                        return ids
                    raise TimeoutError(f"no engine came up within {timeout:.0f} s")
                wanted = wait_for
                raise TimeoutError(f"only {len(ids)} of {wanted} engines registered within {timeout} s")
            time.sleep(0.01)


def check_func(func: Any, callback: Any = None, error_callback: Any = None) -> None:
    if not callable(func):
        raise TypeError(f"func must be callable, not {type(func).__name__}")
    for name, value in (("callback", callback), ("error_callback", error_callback)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable or None, not {type(value).__name__}")


def check_kwds(kwds: Any) -> None:
    if type(kwds) is not dict and not isinstance(kwds, collections.abc.Mapping):
        raise TypeError(f"kwds must be a mapping (a dict of keyword arguments), not {type(kwds).__name__}")


# Functions whose maps' item cost is remembered (see Submitter._timed), the most recent.
TIMED_FUNCTIONS_MAX = 256


def _timing_key(func: Any) -> Any:
    """What a function's measured item cost is kept under: its code (a lambda made anew is the same), or itself."""
    code = getattr(func, "__code__", None)
    if code is not None:
        return code
    try:
        hash(func)
    except TypeError:
        return id(type(func))
    return func
