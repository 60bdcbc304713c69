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
from zpool.client.output import Forwarder, parse_parts
from zpool.error import PoolClosedError, RemoteError, RemoteTraceback, SerializationError
from zpool.protocol import REPLY_COLUMNS, Batch, Message, TaskStatus
from zpool.serialize import loads

__all__ = ["ResultTable", "rebuild_exception", "rebuild_failure"]

logger = logging.getLogger(__name__)

# How long a result that came straight from its engine waits for the task's output (which comes the
# controller's way, a moment later), in seconds; then it is given without the rest.
OUTPUT_WAIT_S = 5.0


class _Outcome(Protocol):
    @property
    def msg_ids(self) -> list[str]: ...

    def _task_done(self, index: int, ok: bool, value: Any, md: tuple[Any, ...]) -> None: ...

    def _add_output(self, index: int, kind: str, text: str) -> None: ...

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

    def __init__(self, shm_prefix: str | None = None, forward: Forwarder | None = None) -> None:
        # Result segments of this cluster are ours to unlink (zpool._shm); no other's.
        self._shm_prefix = shm_prefix
        # Writes what the engines print here as it comes (output="forward"); None: it is only kept per task.
        self.forward = forward
        # Replies that came straight from an engine (the direct path) before their tasks' output, which
        # comes the controller's way: settled when it has come (its END), or after OUTPUT_WAIT_S.
        # task id -> (deadline, slot, frames, status, metadata)
        self._deferred: dict[str, tuple[float, Any, Any, str, tuple[Any, ...]]] = {}
        # Tasks whose output has all come (END) while their reply has not.
        self._ended: set[str] = set()
        # The outcome itself for single-task results (most of them), else
        # (outcome, index): one object fewer per call for the garbage collector.
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()  # taken directly on the hot path (Condition's own __enter__ is Python)
        self._empty = threading.Condition(self._lock)
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks) + len(self._deferred)

    def waiting(self, task_ids: Iterable[str]) -> list[str]:
        """Which of `task_ids` this table waits for."""
        with self._lock:
            return [i for i in task_ids if i in self._tasks or i in self._deferred]

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

    def close(self, exc_for: Callable[[], BaseException]) -> list[str]:
        """Fail every pending task with ``exc_for()`` and accept no more; return their ids."""
        with self._lock:
            self._closed = True
            pending = [*self._tasks, *self._deferred]
        self.fail(pending, exc_for)
        return pending

    def handle_reply(self, msg: Message) -> None:
        """Settle every task an ``apply_reply`` carries (I/O thread)."""
        batch = Batch(msg.header, msg.buffers, REPLY_COLUMNS)
        statuses, engine_ids, starts, completions = (batch.columns[name] for name in REPLY_COLUMNS)
        received = time.time()
        pop = self._tasks.pop
        # Tasks pushed to an engine that printed: their output comes the controller's way.
        wrote = msg.header.get("wrote")
        ended = self._ended
        for i, task_id in enumerate(batch.ids):
            status = statuses[i]
            slot = pop(task_id, None)
            frames = batch.payload(i)
            if slot is None:  # already failed locally (terminate, controller loss)
                if self._shm_prefix:
                    _shm.release(frames, self._shm_prefix)
                continue
            metadata = (engine_ids[i], status, starts[i], completions[i], received)
            if ended or wrote:
                with self._lock:
                    if task_id in ended:
                        ended.discard(task_id)
                    elif wrote and task_id in wrote:
                        self._deferred[task_id] = (time.monotonic() + OUTPUT_WAIT_S, slot, frames, status, metadata)
                        continue
            self._settle(task_id, slot, frames, status, metadata)
        self._notify_if_empty()

    def _settle(self, task_id: str, slot: Any, frames: Any, status: str, metadata: tuple[Any, ...]) -> None:
        outcome, index = (slot, 0) if type(slot) is not tuple else slot
        ok = status == _OK
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

    def handle_stream(self, msg: Message) -> None:
        """Take what engines printed (a STREAM message): forward it, keep each task's, settle replies waiting for it."""
        parts = parse_parts(msg.content)
        if self.forward is not None:
            self.forward.write(parts)
        settle = []
        for _, task_id, kind, text in parts:
            if not task_id:
                continue  # the engine's own
            if kind == "end":
                with self._lock:
                    entry = self._deferred.pop(task_id, None)
                    if entry is None and task_id in self._tasks:
                        self._ended.add(task_id)  # its reply, when it comes, need not wait
                if entry is not None:
                    settle.append((task_id, *entry[1:]))
                continue
            slot = self._tasks.get(task_id)
            if slot is None:
                entry = self._deferred.get(task_id)
                if entry is None:
                    continue  # failed already here (terminate, abort): nobody will read it
                slot = entry[1]
            outcome, index = _unpack_slot(slot)
            outcome._add_output(index, kind, text)
        for args in settle:
            self._settle(*args)
        if settle:
            self._notify_if_empty()

    def expire_deferred(self) -> None:
        """Settle the replies that waited for their output longer than :data:`OUTPUT_WAIT_S` (I/O thread)."""
        if not self._deferred:
            return
        now = time.monotonic()
        late = [task_id for task_id, entry in list(self._deferred.items()) if entry[0] <= now]
        for task_id in self._settle_deferred(late):
            logger.warning(
                "the output of task %s did not all arrive within %.0f s of its result; the result is given without it",
                task_id,
                OUTPUT_WAIT_S,
            )
        if late:
            self._notify_if_empty()

    def _settle_deferred(self, task_ids: Iterable[str]) -> list[str]:
        """Settle now, with what output has come, the replies among `task_ids` that wait for theirs; their ids."""
        with self._lock:
            entries = [(task_id, self._deferred.pop(task_id)) for task_id in task_ids if task_id in self._deferred]
        for task_id, entry in entries:
            self._settle(task_id, *entry[1:])
        return [task_id for task_id, _ in entries]

    def fail(self, task_ids: Iterable[str], exc_for: Callable[[], BaseException]) -> None:
        """Fail the given tasks locally (they will never be answered); those answered already get their answers."""
        task_ids = list(task_ids)
        if self._deferred:
            self._settle_deferred(task_ids)
        for task_id in task_ids:
            self._ended.discard(task_id)
            slot = self._tasks.pop(task_id, None)
            if slot is not None:
                _unpack_slot(slot)[0]._fail(exc_for())
        self._notify_if_empty()

    def fail_all(self, exc_for: Callable[[], BaseException]) -> None:
        self.fail([*self._tasks, *self._deferred], exc_for)

    def wait_empty(self, timeout: float | None = None) -> bool:
        """Wait until no task is outstanding; return whether that happened."""
        with self._empty:
            return self._empty.wait_for(lambda: not self._tasks and not self._deferred, timeout)

    def _notify_if_empty(self) -> None:
        if not self._tasks and not self._deferred:
            with self._empty:
                self._empty.notify_all()
