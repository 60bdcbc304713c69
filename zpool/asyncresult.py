"""Results of submitted work: :class:`AsyncResult` and :class:`MapResult`.

An :class:`AsyncResult` is at once a :class:`multiprocessing.pool.AsyncResult`
(``get``, ``wait``, ``ready``, ``successful``), a
:class:`concurrent.futures.Future` and an awaitable. It covers one or more
tasks (a ``map`` is one task per chunk); each task has its id in
:attr:`AsyncResult.msg_ids` and its own :class:`Metadata`.

Task outcomes arrive on the client's I/O thread, which calls
:meth:`AsyncResult._task_done`; nothing here touches a socket.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import itertools
import sys
import threading
import time
from typing import Any, Callable, Generator, Generic, Protocol, TypeVar, cast

from zpool._future import FINISHED, LEAN_FUTURE, NOT_DONE, PENDING, LeanCondition
from zpool.error import CompositeError, TaskAborted, TimeoutError, ZPoolError

__all__ = ["AsyncResult", "CallbackRunner", "DirectResult", "JoinedResult", "MapResult", "Metadata", "cancel_all"]

# How long cancel() waits for tasks taken back from an engine's queue to be answered as aborted; one
# still unanswered then is running, and goes on (seconds).
CANCEL_WAIT_S = 0.25
# ... and for tasks the scheduler failed at once (their answers are on their way already).
CANCEL_ABORTED_WAIT_S = 5.0

T = TypeVar("T")


class Metadata(dict):  # type: ignore[type-arg]
    """Per-task facts: ``engine_id``, ``status``, ``submitted``, ``started``,
    ``completed``, ``received``, and where it ran: ``engine_host`` (the
    engine's host name) and ``engine_rank`` (its rank under an MPI or Slurm
    launcher, else None); readable as keys or attributes
    (``md["engine_id"]`` or ``md.engine_id``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _stamp(seconds: float | None) -> datetime.datetime | None:
    return None if seconds is None else datetime.datetime.fromtimestamp(seconds)


class CallbackRunner(Protocol):
    """Where a result's callbacks run (:class:`zpool.client.callbacks.CallbackThread`)."""

    def call(self, func: Callable[[Any], Any], value: Any) -> None: ...

    def is_current(self) -> bool: ...


class AsyncResult(concurrent.futures.Future, Generic[T]):  # type: ignore[type-arg]
    """The pending result of :meth:`Pool.apply_async` and friends.

    Parameters
    ----------
    msg_ids : list of str
        One id per task this result is made of.
    label : str
        What was called, for messages (e.g. ``"square"``).

    Notes
    -----
    ``wait`` returns ``True`` when the result is ready and ``False`` on
    timeout (the standard library returns ``None``). ``get`` raises
    :class:`zpool.TimeoutError`, which is also a
    :class:`multiprocessing.TimeoutError` and a builtin ``TimeoutError``.
    """

    def __init__(
        self,
        msg_ids: list[str],
        label: str = "",
        *,
        owner: Any = None,
        runner: CallbackRunner | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        tracker: Any = None,
    ) -> None:
        if LEAN_FUTURE:
            # Future.__init__'s fields, with a lighter condition (zpool._future.LeanCondition): a burst
            # of apply_async calls creates tens of thousands of these.
            self._condition = cast(threading.Condition, LeanCondition())  # duck-typed: what Future calls
            self._state = PENDING
            self._result = None
            self._exception = None
            self._waiters = []
            self._done_callbacks: list[Callable[[concurrent.futures.Future[Any]], object]] = []
        else:  # a Python whose Future has other fields: its own __init__, then our condition
            super().__init__()
            self._condition = cast(threading.Condition, LeanCondition())
        # A tuple of strings is not tracked by the garbage collector; see msg_ids.
        self._ids = tuple(msg_ids)
        self.label = label
        self.submitted = time.time()
        # Per-task values and metadata; kept in plain attributes for one task
        # (the common case) to allocate as little as possible per call.
        self._values: list[Any] | None = [None] * len(msg_ids) if len(msg_ids) != 1 else None
        # Raw (engine_id, status, started, completed, received) tuples until read.
        self._metadata: Any = [None] * len(msg_ids) if len(msg_ids) != 1 else None
        self._single = len(msg_ids) == 1
        # The pool (or view) that made it, kept alive while this result is pending (as the
        # stdlib does), and where callbacks run (never on the client's I/O thread).
        self._owner = owner
        # Where an engine ran (host, rank), for the metadata: the pool's submitter knows (kept after _owner).
        self._where_from: Any = getattr(owner, "_submitter", None)
        self._runner = runner
        # multiprocessing's callback and error_callback: they run (in the
        # runner's thread) before the result becomes ready, as in the stdlib.
        self._user_callbacks: tuple[Callable[[Any], Any] | None, Callable[[BaseException], Any] | None] | None = None
        self._has_callback = False
        if callback is not None or error_callback is not None:
            self._user_callbacks = (callback, error_callback)
            self._has_callback = True
        self._pending = len(msg_ids)
        # The outcome is known (it may still wait for a callback to become ready).
        self._decided = False
        self._decide_lock = threading.Lock() if len(msg_ids) > 1 else None
        self._cancelling = False  # cancel() asked the controller to abort it (see cancel_all)
        self._finished_at: float | None = None
        # What the tasks printed, kept when the pool collects output: {task index: ([stdout], [stderr])}.
        self._output: dict[int, tuple[list[str], list[str]]] | None = None
        # track=True: when ZeroMQ has let go of the arguments' memory (client.connection.SendTracker).
        self._tracker = tracker
        if not msg_ids:
            self._finish(self._combine([]))

    # -- multiprocessing.pool.AsyncResult ---------------------------------------

    def get(self, timeout: float | None = None) -> T:
        """Return the result when it arrives; re-raise the task's exception.

        Raises
        ------
        zpool.TimeoutError
            If `timeout` seconds pass first (the work goes on).
        """
        if self._state == FINISHED:  # the common case, without the condition's lock (set before the state)
            if self._exception is not None:
                raise self._exception
            return cast(T, self._result)
        if not self.wait(timeout):
            raise TimeoutError(
                f"{self._what()} not ready after {timeout} s; the task keeps running, call get() again to wait more"
            )
        return self.result()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the result is ready or `timeout` seconds pass; return whether it is ready.

        Raises
        ------
        RuntimeError
            If called from a ``callback`` for a result that has a callback
            of its own still to run: that callback runs in this very thread,
            so the wait could never end.
        """
        try:
            self.exception(timeout)
        except concurrent.futures.TimeoutError:
            return False
        except concurrent.futures.CancelledError:
            pass
        return True

    def result(self, timeout: float | None = None) -> T:
        """:meth:`concurrent.futures.Future.result`, refusing a wait that could never end (see :meth:`wait`)."""
        self._refuse_wait_in_own_thread()
        return cast(T, super().result(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """:meth:`concurrent.futures.Future.exception`, refusing a wait that could never end (see :meth:`wait`)."""
        self._refuse_wait_in_own_thread()
        return super().exception(timeout)

    def _refuse_wait_in_own_thread(self) -> None:
        if self._has_callback and not self.done() and self._runner is not None and self._runner.is_current():
            raise RuntimeError(
                f"waiting in a callback for {self._what()}, whose own callback must first run in this same"
                " thread, would never end; wait for it outside the callback, or chain work in its callback"
            )

    def ready(self) -> bool:
        """Whether the call has completed."""
        return self.done()

    def cancel(self) -> bool:
        """Cancel the call if it has not started: True if it never runs, as :meth:`concurrent.futures.Future.cancel`.

        The pool aborts its tasks that have not started (waiting in the
        scheduler, or queued on an engine: taken back); those become
        *cancelled* (``cancelled()`` is True, ``result()`` raises
        :class:`concurrent.futures.CancelledError`). A task already running
        is not stopped (see :meth:`Pool.abort` with ``interrupt=True`` for
        that): then, or if the call is done, this returns False and the
        call ends as it ends. Of a ``map``, the chunks not started are
        cancelled and the result with them.
        """
        if self.done():
            return self.cancelled()
        if getattr(self._owner, "abort", None) is None:
            return self._cancelled_here()  # not made by a pool (nothing to abort)
        cancel_all([self])
        return self.cancelled()

    def _cancelled_here(self) -> bool:
        """Mark it cancelled, and tell ``concurrent.futures.wait`` and ``as_completed`` waiting on it."""
        if not concurrent.futures.Future.cancel(self):
            return False
        self.set_running_or_notify_cancel()  # (no executor does it for us: CANCELLED_AND_NOTIFIED, waiters told)
        return True

    def successful(self) -> bool:
        """Whether the call completed without raising.

        Raises
        ------
        ValueError
            If the result is not ready yet (as the standard library does).
        """
        if not self.done():
            raise ValueError(f"{self._what()} not ready")
        return not self.cancelled() and self.exception() is None

    # -- extras -------------------------------------------------------------------

    @property
    def metadata(self) -> Metadata | list[Metadata | None] | None:
        """Per-task :class:`Metadata`: a dict for one task, a list for several."""
        md = self._metadata
        if isinstance(md, list):
            return [self._build_metadata(raw) for raw in md]
        return self._build_metadata(md)

    def outcomes(self) -> dict[str, tuple[bool, int | None]]:
        """How each finished task ended: ``{task id: (succeeded, engine id or None)}``.

        Tasks still pending are left out. A dependency on this result
        (``after=``, ``follow=``) sends these along, so it works however
        long ago the tasks ended (the controller remembers finished tasks
        only for a while: ``record_window``).
        """
        if self._pending == len(self._ids):
            return {}  # none has ended yet (the common case: a graph submitted ahead of its running)
        raws = self._metadata if isinstance(self._metadata, list) else [self._metadata]
        ended: dict[str, tuple[bool, int | None]] = {}
        for task_id, raw in zip(self._ids, raws):
            if raw is None:
                continue
            if isinstance(raw, Metadata):
                engine_id, status = raw["engine_id"], raw["status"]
            else:
                engine_id, status = raw[0], raw[1]
            ended[task_id] = (status == "ok", engine_id if isinstance(engine_id, int) else None)
        return ended

    def _build_metadata(self, raw: Any) -> Metadata | None:
        # Built on first access: most callers never look, and replies arrive in bulk.
        if raw is None or isinstance(raw, Metadata):
            return raw
        engine_id, status, started, completed, received = raw
        source = self._where_from
        where = source.engine_where(engine_id) if source is not None and isinstance(engine_id, int) else None
        return Metadata(
            engine_id=engine_id,
            engine_host=where[0] if where else None,
            engine_rank=where[1] if where else None,
            status=status,
            submitted=_stamp(self.submitted),
            started=_stamp(started),
            completed=_stamp(completed),
            received=_stamp(received),
        )

    @property
    def stdout(self) -> str | list[str]:
        """What the task wrote to its stdout: a str for one task, a list (one per task) for several.

        A ``map``'s tasks are its chunks (``chunksize=1``: one per item).
        Kept when the pool collects output (``Pool(output="forward")``, the
        default, or ``"capture"``): what the task's code writes through
        :data:`sys.stdout` (``print``), complete once the task is done;
        ``""`` under ``output="inherit"``. See ``docs/output.md``.
        """
        return self._texts(0)

    @property
    def stderr(self) -> str | list[str]:
        """What the task wrote to its stderr (warnings, tracebacks it printed, log records): as :attr:`stdout`."""
        return self._texts(1)

    def display_outputs(self, groupby: str = "type") -> None:
        """Print what the tasks wrote, each piece headed by its stream and engine (``[stdout:1]``).

        Parameters
        ----------
        groupby : {"type", "engine", "order"}
            ``"type"``: all stdout, then all stderr; ``"engine"``: engine by
            engine, each task's stdout then stderr; ``"order"``: task by
            task. Stdout goes to :data:`sys.stdout`, stderr to :data:`sys.stderr`.
        """
        if groupby not in ("type", "engine", "order"):
            raise ValueError(f"groupby must be 'type', 'engine' or 'order', not {groupby!r}")
        raws = self._metadata if isinstance(self._metadata, list) else [self._metadata]
        engines = [_engine_of(raw) for raw in raws]
        outs, errs = self._texts(0), self._texts(1)
        if self._single:
            outs, errs = [cast(str, outs)], [cast(str, errs)]
        order = list(range(len(self._ids)))
        if groupby == "engine":
            order.sort(key=lambda i: (engines[i] is None, engines[i] or 0))
        if groupby == "type":
            pieces = [(0, i) for i in order] + [(1, i) for i in order]
        else:
            pieces = [(which, i) for i in order for which in (0, 1)]
        for which, i in pieces:
            text = (outs, errs)[which][i]
            if not text:
                continue
            stream = sys.stdout if which == 0 else sys.stderr
            label = "?" if engines[i] is None else engines[i]
            head = f"[{'stdout' if which == 0 else 'stderr'}:{label}]"
            stream.write(f"{head}\n{text}" if "\n" in text.rstrip("\n") else f"{head} {text}")
            if not text.endswith("\n"):
                stream.write("\n")

    def _texts(self, which: int) -> str | list[str]:
        out = self._output
        if self._single:
            return "".join(out[0][which]) if out and 0 in out else ""
        return ["".join(out[i][which]) if out and i in out else "" for i in range(len(self._ids))]

    @property
    def sent(self) -> bool:
        """Whether the call's arguments were sent and ZeroMQ let go of their memory.

        Only calls made with ``track=True`` are tracked: for them, it is
        safe to modify an argument (a numpy array, a bytearray) once
        ``sent`` is True. Untracked calls report True.
        """
        return self._tracker is None or self._tracker.done

    def wait_on_send(self, timeout: float | None = None) -> bool:
        """Wait until :attr:`sent` (``track=True`` calls); return False if `timeout` seconds passed first."""
        return self._tracker is None or self._tracker.wait(timeout)

    @property
    def msg_ids(self) -> list[str]:
        """The ids of this result's tasks (one per ``map`` chunk)."""
        return list(self._ids)

    @property
    def progress(self) -> int:
        """How many of this result's tasks have finished."""
        return len(self._ids) - self._pending

    def wait_interactive(self, interval: float = 0.1, timeout: float | None = None) -> bool:
        """Wait as :meth:`wait` does, drawing a progress bar (count, rate, time left) until the result is ready.

        The bar counts tasks, or a ``map``'s items, and moves as they finish
        (looked at every `interval` seconds). It is tqdm's (``tqdm.auto``: a
        widget in a notebook), an extra: ``pip install "zpool[progress]"``.
        Returns whether the result is ready (False once `timeout` passed).

        Raises
        ------
        ImportError
            If tqdm is not installed.
        """
        from zpool import _progress

        return _progress.follow(self._counted(), self._what(), interval, timeout)

    def timeline(self, path: str | None = None, ax: Any = None, title: str | None = None) -> Any:
        """Draw this result's tasks as a per-engine Gantt chart, from their metadata; save it to `path` if given.

        One row per engine, one bar per task from its start to its end on
        the engine (failed tasks edged in red): balance and idle time at a
        glance. `ax`: a matplotlib Axes to draw on. Returns the Axes. Needs
        matplotlib, an extra: ``pip install "zpool[timeline]"``. See
        :meth:`Pool.timeline` for several results in one chart.

        Raises
        ------
        ImportError
            If matplotlib is not installed.
        ValueError
            If none of its tasks has run on an engine yet.
        """
        from zpool import _timeline

        return _timeline.draw([self], path, ax, title)

    def _counted(self) -> Any:
        """What a progress bar of this result counts (a :class:`zpool._progress.Counted`)."""
        from zpool._progress import Counted

        return Counted(lambda: self.progress, len(self._ids), "task", self.wait)

    @property
    def elapsed(self) -> float:
        """Seconds from submission until completion (or until now)."""
        end = self._finished_at if self._finished_at is not None else time.time()
        return end - self.submitted

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[Any]], object]) -> None:
        """Call ``fn(self)`` when the result is ready, as :class:`concurrent.futures.Future` does.

        Notes
        -----
        `fn` runs in the pool's result-handling thread (or at once, in this
        thread, if the result is already there), never in the thread that
        receives results, so it may itself submit work and wait for it.
        """
        runner = self._runner
        if runner is None or self.done():
            super().add_done_callback(fn)
        else:
            super().add_done_callback(lambda fut: runner.call(fn, fut))

    def __await__(self) -> Generator[Any, None, T]:
        import asyncio  # only for awaiting: it costs 30 ms to import

        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        state = "pending" if not self.done() else ("error" if self.exception() else "finished")
        return f"<{type(self).__name__} {self._what()}: {state}>"

    # -- called by the client's I/O thread -----------------------------------------

    def _account(self, index: int, md: tuple[Any, ...]) -> None:
        """Keep task `index`'s metadata and count it as finished."""
        if self._single:
            self._metadata = md
        else:
            self._metadata[index] = md
        self._pending -= 1

    def _add_output(self, index: int, kind: str, text: str) -> None:
        """Keep what task `index` wrote to its stdout (`kind` "out") or stderr ("err")."""
        out = self._output
        if out is None:
            out = self._output = {}
        entry = out.get(index)
        if entry is None:
            entry = out[index] = ([], [])
        entry[0 if kind == "out" else 1].append(text)

    def _task_done(self, index: int, ok: bool, value: Any, md: tuple[Any, ...]) -> None:
        """Record one task's outcome; `md` is ``(engine_id, status, started, completed, received)``."""
        self._account(index, md)
        if self._decided or self._state not in NOT_DONE:  # (done(), without its lock: _set checks again)
            return  # an earlier task failed it (or it was cancelled): just account
        values = self._values
        if not ok:
            self._values = None
            self._finished_at = time.time()
            if self._cancelling and isinstance(value, TaskAborted):
                if self._claim():  # aborted by cancel() before it started: cancelled, not failed
                    self._cancelled_here()
                return
            self._set(exception=value)
        elif values is None:
            self._finish(value)
        else:
            values[index] = value
            if self._pending == 0:
                self._values = None
                self._finish(self._combine(values))

    def _fail(self, exc: BaseException) -> None:
        if not self._decided and not self.done():
            self._finished_at = time.time()
            self._values = None
            self._set(exception=exc)

    def _finish(self, value: Any) -> None:
        self._finished_at = time.time()
        self._set(result=value)

    def _claim(self) -> bool:
        """Decide the outcome now, unless it already is: True for the one caller that decides.

        A result of several tasks may be decided by the I/O thread (a reply)
        and by another at once (terminate, a failed submission): a lock
        makes one of them win. A single task is settled once anyway (its
        entry leaves the result table once).
        """
        lock = self._decide_lock
        if lock is None:
            if self._decided:
                return False
            self._decided = True
            return True
        with lock:
            if self._decided:
                return False
            self._decided = True
            return True

    def _set(self, result: Any = None, exception: BaseException | None = None) -> None:
        if not self._claim():
            return
        callbacks, runner = self._user_callbacks, self._runner
        if callbacks is not None and runner is not None:
            self._user_callbacks = None
            runner.call(self._settle_after_callback, (callbacks, result, exception))
            return
        self._settle(result, exception)

    def _settle_after_callback(self, job: tuple[Any, Any, BaseException | None]) -> None:
        """Run the user's callback, then make the result ready (runner's thread)."""
        (callback, error_callback), result, exception = job
        try:
            if exception is None:
                if callback is not None:
                    callback(result)
            elif error_callback is not None:
                error_callback(exception)
        finally:
            self._settle(result, exception)

    def _settle(self, result: Any, exception: BaseException | None) -> None:
        try:
            if exception is not None:
                self.set_exception(exception)
            else:
                self.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled or failed meanwhile
        self._owner = None

    def _combine(self, values: list[Any]) -> Any:
        return values

    def _what(self) -> str:
        return f"{self.label}()" if self.label else "result"

    def _renewed(self, msg_ids: list[str], **kwargs: Any) -> AsyncResult[T]:
        """A result of the same kind for the same calls under new task ids (:meth:`Pool.resubmit`)."""
        return type(self)(msg_ids, self.label, **kwargs)


class MapResult(AsyncResult[list[T]]):
    """The pending result of :meth:`Pool.map_async`: one task per chunk."""

    def __init__(
        self,
        msg_ids: list[str],
        label: str = "",
        *,
        chunksize: int = 0,
        items: int | None = None,
        on_timed: Callable[[float], None] | None = None,
        **kwargs: Any,
    ) -> None:
        # The chunk size the map was cut with, as multiprocessing's MapResult has it.
        self._chunksize = chunksize
        self._items = items  # how many items the map has, when known (progress bars count them)
        # Told the engine time per item once every chunk succeeded (the pool sizes later maps' chunks by it).
        self._on_timed = on_timed
        super().__init__(msg_ids, label, **kwargs)

    def _finish(self, value: Any) -> None:
        on_timed, items, size = self._on_timed, self._items, self._chunksize
        if on_timed is not None and items and size > 0:
            # The median chunk's engine time per item: an engine's first chunk may have paid for imports.
            raws = self._metadata if isinstance(self._metadata, list) else [self._metadata]
            last = items - size * (len(raws) - 1)
            per_item = sorted(
                max(0.0, raw[3] - raw[2]) / (size if i < len(raws) - 1 else last)
                for i, raw in enumerate(raws)  # (engine_id, status, started, completed, received) each
                if isinstance(raw, tuple) and raw[2] is not None and raw[3] is not None
            )
            if per_item:
                on_timed(per_item[len(per_item) // 2])
        super()._finish(value)

    @property
    def items_done(self) -> int:
        """How many of the map's items are done (its finished chunks' items)."""
        total, size, n = self._items, self._chunksize, len(self._ids)
        if total is None or size <= 0:
            return self.progress
        if n == 1:
            return total if self._pending == 0 else 0
        last = total - size * (n - 1)
        md = self._metadata
        done = sum(size for raw in md[:-1] if raw is not None)
        return done + (last if md[-1] is not None else 0)

    def _counted(self) -> Any:
        from zpool._progress import Counted

        if self._items is None or self._chunksize <= 0:
            return super()._counted()
        return Counted(lambda: self.items_done, self._items, "item", self.wait)

    @property
    def _number_left(self) -> int:
        """Chunks not finished yet: multiprocessing's private counter, which progress recipes read."""
        return self._pending

    def _combine(self, values: list[Any]) -> Any:
        return list(itertools.chain.from_iterable(values))

    def _what(self) -> str:
        return f"map({self.label})" if self.label else "map result"


class _Collecting(AsyncResult[T]):
    """A result of several tasks whose values are collected, then combined by :meth:`_combine`.

    Unlike the base class, even one task goes through :meth:`_combine`, and
    :attr:`_order` records the order in which tasks finished.
    """

    def __init__(self, msg_ids: list[str], label: str = "", **kwargs: Any) -> None:
        self._outcomes: list[Any] | None = [None] * len(msg_ids)
        self._order: list[int] = []
        super().__init__(msg_ids, label, **kwargs)

    def _task_done(self, index: int, ok: bool, value: Any, md: tuple[Any, ...]) -> None:
        self._account(index, md)
        outcomes = self._outcomes
        if self._decided or self.done() or outcomes is None:
            return
        outcomes[index] = (ok, value)
        self._order.append(index)
        if not ok and self._fail_fast():
            self._outcomes = None
            self._fail(value)
            return
        if self._pending:
            return
        self._outcomes = None
        try:
            combined = self._collect(outcomes)
        except BaseException as exc:  # settles the result either way
            self._fail(exc)
            return
        self._finish(combined)

    def _fail_fast(self) -> bool:
        return True

    def _collect(self, outcomes: list[tuple[bool, Any]]) -> Any:
        return self._combine([value for _, value in outcomes])


class JoinedResult(_Collecting[T]):
    """The pending result of a call split into chunks (``@pool.parallel``): the chunks' results joined.

    Parameters
    ----------
    msg_ids : list of str
        One task per chunk, in input order.
    label : str
        What was called.
    join : callable
        Turns the list of chunk results into the value :meth:`get` returns.
    ordered : bool
        Join the chunk results in input order (True) or in the order they finished.
    """

    def __init__(
        self, msg_ids: list[str], label: str, join: Callable[[list[Any]], Any], ordered: bool = True, **kwargs: Any
    ) -> None:
        self._join = join
        self._ordered = ordered
        super().__init__(msg_ids, label, **kwargs)

    def _combine(self, values: list[Any]) -> Any:
        if not self._ordered:
            values = [values[i] for i in self._order]
        return self._join(values)

    def _renewed(self, msg_ids: list[str], **kwargs: Any) -> JoinedResult[T]:
        return JoinedResult(msg_ids, self.label, self._join, self._ordered, **kwargs)


class DirectResult(_Collecting[T]):
    """The pending result of a call on the engines of a view: one task per engine, in engine order.

    :meth:`get` returns one value per engine (a list), or the value itself
    for a view of one engine. It waits for every engine: when some failed,
    it raises :class:`~zpool.error.CompositeError` naming each (a view of one
    engine raises that engine's exception itself).

    Attributes
    ----------
    engine_ids : list of int
        The engines, in the order of the results.
    """

    def __init__(
        self,
        msg_ids: list[str],
        label: str,
        engine_ids: list[int],
        single: bool = False,
        combine: Callable[[list[Any]], Any] | None = None,
        ordered: bool = True,
        **kwargs: Any,
    ) -> None:
        self.engine_ids = list(engine_ids)
        self._one_engine = single
        self._combine_values = combine
        self._ordered = ordered
        super().__init__(msg_ids, label, **kwargs)

    def _fail_fast(self) -> bool:
        return False  # every engine's outcome is reported together

    @property
    def metadata(self) -> Metadata | list[Metadata | None] | None:
        """Per-engine :class:`Metadata`: a list in engine order (a dict for a view of one engine)."""
        md = super().metadata
        if self._one_engine or isinstance(md, list):
            return md
        return [md]

    def _what(self) -> str:
        label = self.label or "direct call"
        return label if label.endswith(")") else f"{label}()"

    def _renewed(self, msg_ids: list[str], **kwargs: Any) -> DirectResult[T]:
        return DirectResult(
            msg_ids, self.label, self.engine_ids, self._one_engine, self._combine_values, self._ordered, **kwargs
        )

    def _collect(self, outcomes: list[tuple[bool, Any]]) -> Any:
        failed = [(self.engine_ids[i], value) for i, (ok, value) in enumerate(outcomes) if not ok]
        if not failed:
            return self._combine([value for _, value in outcomes])
        if self._one_engine:
            engine_id, exc = failed[0]
            if hasattr(exc, "add_note"):
                exc.add_note(f"(raised on engine {engine_id}, by {self._what()})")
            raise exc
        lines = [f"{self._what()} failed on {len(failed)} of {len(outcomes)} engines:"]
        for engine_id, exc in failed:
            lines.append(f"  engine {engine_id}: {type(exc).__name__}: {_first_line(exc)}")
        error = CompositeError("\n".join(lines), dict(failed), [value for _, value in outcomes])
        raise error from failed[0][1]

    def _combine(self, values: list[Any]) -> Any:
        if not self._ordered:  # as the engines finished
            values = [values[i] for i in self._order]
        if self._combine_values is not None:
            return self._combine_values(values)
        if self._one_engine:
            return values[0] if values else None
        return values


def _engine_of(raw: Any) -> int | None:
    """The engine id in a task's metadata (raw tuple or :class:`Metadata`), if it ran."""
    if raw is None:
        return None
    engine_id = raw["engine_id"] if isinstance(raw, Metadata) else raw[0]
    return engine_id if isinstance(engine_id, int) else None


def _first_line(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:
        return "<unprintable>"
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= 200 else line[:197] + "..."


def cancel_all(results: list[AsyncResult[Any]]) -> None:
    """Cancel `results` that have not started, with one abort request per pool (see :meth:`AsyncResult.cancel`).

    Waits until the tasks taken back are answered (briefly: a task still
    unanswered after :data:`CANCEL_WAIT_S` is running, and goes on).
    """
    by_owner: dict[int, tuple[Any, list[AsyncResult[Any]]]] = {}
    for result in results:
        if not result.done() and getattr(result._owner, "abort", None) is not None:
            by_owner.setdefault(id(result._owner), (result._owner, []))[1].append(result)
    for owner, pending in by_owner.values():
        for result in pending:
            result._cancelling = True
        try:
            report = owner.abort(pending)
        except ZPoolError:  # the pool is closed or broken: its tasks end with that
            report = None
        if report is not None:
            wait_s = CANCEL_WAIT_S if report.get("sent_to_engines") else CANCEL_ABORTED_WAIT_S
            deadline = time.monotonic() + wait_s
            for result in pending:
                result.wait(max(0.0, deadline - time.monotonic()))
        for result in pending:
            if not result.done():
                result._cancelling = False  # running: it ends as it ends
