"""The client's table of outstanding tasks, and turning replies into outcomes.

``task_id → (AsyncResult, index)``. Entries are added by the submitting
thread before the task is sent and removed by the I/O thread when the
reply arrives, so a finished call leaves no reference to its arguments or
results behind. Remote exceptions are rebuilt as their own type where
possible, with the remote traceback attached as ``__cause__``
(:class:`~zpool.error.RemoteTraceback`); otherwise as
:class:`~zpool.error.RemoteError`.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
import time
from typing import Any, Callable, Iterable, Protocol, Sequence

from zpool import _shm
from zpool import error as _errors
from zpool._partition import ItemFailure
from zpool.error import PoolClosedError, RemoteError, RemoteTraceback, SerializationError
from zpool.protocol import REPLY_COLUMNS, Batch, Message, TaskStatus
from zpool.serialize import loads

__all__ = ["ResultTable", "rebuild_exception", "rebuild_failure"]

logger = logging.getLogger(__name__)


class _Outcome(Protocol):
    @property
    def msg_ids(self) -> list[str]: ...

    def _task_done(self, index: int, ok: bool, value: Any, md: tuple[Any, ...]) -> None: ...

    def _fail(self, exc: BaseException) -> None: ...


def rebuild_failure(failure: ItemFailure) -> BaseException:
    """The exception to raise in the caller for one failed item of an ``imap`` chunk."""
    return rebuild_exception(failure.error, (), failure.exc)


def rebuild_exception(
    error: dict[str, Any], exc_frames: Sequence[Any], exc: BaseException | None = None
) -> BaseException:
    """Turn an error reply into the exception to raise in the caller.

    `exc_frames` is the serialized exception, or `exc` the exception itself,
    when it could travel; otherwise it is rebuilt by name where possible.
    """
    text = str(error.get("traceback") or "")
    ename = str(error.get("ename", "Exception"))
    evalue = str(error.get("evalue", ""))
    engine_id = error.get("engine_id")
    if not isinstance(exc, BaseException):
        exc = None
    if exc is None and exc_frames:
        try:
            exc = loads(exc_frames)
        except Exception:
            exc = None
        if not isinstance(exc, BaseException):
            exc = None
    if exc is None:
        module = error.get("emodule")
        cls: Any = None
        if module == "builtins":
            cls = getattr(builtins, ename, None)
        elif module in (None, "zpool.error") and ename in _errors.__all__:
            cls = getattr(_errors, ename)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            try:
                exc = cls(evalue)
            except Exception:
                exc = None
    if exc is not None and not isinstance(exc, Exception):
        # SystemExit, KeyboardInterrupt, GeneratorExit from a task: raised here, they would end
        # the caller's program or pass for its own Ctrl-C. They are reported, not re-raised.
        exc = None
    if exc is None:
        exc = RemoteError(ename, evalue, text, engine_id if isinstance(engine_id, int) else None)
    if text:
        exc.__cause__ = RemoteTraceback(text)
    return exc


_OK = TaskStatus.OK.value


def _unpack_slot(slot: Any) -> tuple[Any, int]:
    """A table entry as ``(outcome, index)``; single-task outcomes are stored bare."""
    return slot if type(slot) is tuple else (slot, 0)


class ResultTable:
    """Outstanding tasks of one client, by task id."""

    def __init__(self, shm_prefix: str | None = None) -> None:
        # Result segments of this cluster are ours to unlink (zpool._shm); no other's.
        self._shm_prefix = shm_prefix
        # The outcome itself for single-task results (most of them), else
        # (outcome, index): one object fewer per call for the garbage collector.
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()  # taken directly on the hot path (Condition's own __enter__ is Python)
        self._empty = threading.Condition(self._lock)
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, outcome: _Outcome) -> None:
        """Start tracking `outcome`'s tasks.

        Raises
        ------
        PoolClosedError
            If :meth:`close` was called (checked atomically with it, so no
            task can slip in after the pending ones were failed).
        """
        ids = getattr(outcome, "_ids", None) or outcome.msg_ids  # (an AsyncResult's, without a copy)
        with self._lock:
            if self._closed:
                raise PoolClosedError("Pool not running")
            if len(ids) == 1:
                self._tasks[ids[0]] = outcome
            else:
                for index, task_id in enumerate(ids):
                    self._tasks[task_id] = (outcome, index)

    def close(self, exc_for: Callable[[], BaseException]) -> None:
        """Fail every pending task with ``exc_for()`` and accept no more."""
        with self._lock:
            self._closed = True
        self.fail_all(exc_for)

    def handle_reply(self, msg: Message) -> None:
        """Settle every task an ``apply_reply`` carries (I/O thread)."""
        batch = Batch(msg.header, msg.buffers, REPLY_COLUMNS)
        statuses, engine_ids, starts, completions = (batch.columns[name] for name in REPLY_COLUMNS)
        received = time.time()
        pop = self._tasks.pop
        ok_status = _OK
        for i, task_id in enumerate(batch.ids):
            status = statuses[i]
            slot = pop(task_id, None)
            frames = batch.payload(i)
            if slot is None:  # already failed locally (terminate, controller loss)
                if self._shm_prefix:
                    _shm.release(frames, self._shm_prefix)
                continue
            outcome, index = (slot, 0) if type(slot) is not tuple else slot
            metadata = (engine_ids[i], status, starts[i], completions[i], received)
            ok = status == ok_status
            try:
                if ok:
                    value: Any = loads(frames, release=self._shm_prefix or False)  # ours to unlink
                else:
                    value = rebuild_exception(json.loads(bytes(frames[0])), frames[1:])
            except BaseException as exc:  # e.g. SystemExit from a hostile __reduce__: not the I/O thread's end
                ok = False
                value = SerializationError(
                    f"the result of task {task_id} could not be deserialized here: {type(exc).__name__}: {exc}"
                )
                value.__cause__ = exc
            outcome._task_done(index, ok, value, metadata)
        self._notify_if_empty()

    def fail(self, task_ids: Iterable[str], exc_for: Callable[[], BaseException]) -> None:
        """Fail the given tasks locally (they will never be answered)."""
        for task_id in task_ids:
            slot = self._tasks.pop(task_id, None)
            if slot is not None:
                _unpack_slot(slot)[0]._fail(exc_for())
        self._notify_if_empty()

    def fail_all(self, exc_for: Callable[[], BaseException]) -> None:
        self.fail(list(self._tasks), exc_for)

    def wait_empty(self, timeout: float | None = None) -> bool:
        """Wait until no task is outstanding; return whether that happened."""
        with self._empty:
            return self._empty.wait_for(lambda: not self._tasks, timeout)

    def _notify_if_empty(self) -> None:
        if not self._tasks:
            with self._empty:
                self._empty.notify_all()
