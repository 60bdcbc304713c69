"""What the scheduler remembers of tasks it is no longer running.

Pure bookkeeping, no sockets. Three bounded memories:

* **Finished tasks** (:attr:`Records.done`): how each ended, as an outcome
  code (:func:`zpool._wire.encode_outcome`), for dependencies on it still
  to come. The newest ``record_window`` of the last ``record_age`` seconds
  (``Pool(record_window=..., record_age=...)``); ``Pool.purge`` forgets
  some or all of them sooner. A client depending on a task finished longer
  ago sends its outcome along (``known``).
* **Kept calls** (:attr:`Records.kept`), for ``resubmit``: the payload and
  flags of finished tasks, up to :data:`KEEP_TASK_BYTES` each (copied out
  of their message), :data:`KEEP_BYTES` and :data:`KEEP_COUNT` in all, the
  oldest dropped first. A call whose arguments went through shared memory
  is not kept: its segments are freed when it finishes.
* **Aborts ahead of their task**: a client may send a task and its abort on
  two connections (a blocking call's own socket, the I/O thread's), and the
  abort may arrive first; its id is remembered (the newest
  :data:`ABORTED_AHEAD_MAX`, for :data:`ABORTED_AHEAD_S`) and the task
  fails as it arrives.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Callable, Iterable

from zpool import _shm

if TYPE_CHECKING:
    from zpool.controller.flags import Flags

__all__ = ["ABORTED_AHEAD_MAX", "ABORTED_AHEAD_S", "KEEP_BYTES", "KEEP_COUNT", "KEEP_TASK_BYTES", "Records"]

# Finished tasks' calls kept for resubmit: payloads up to KEEP_TASK_BYTES each
# (copied out of their message), KEEP_BYTES in all, the oldest dropped first.
KEEP_TASK_BYTES = 64 << 10
KEEP_BYTES = 64 << 20
# ... and at most this many calls (each costs about 250 bytes more than its payload).
KEEP_COUNT = 10_000
# Aborts of task ids not seen yet, remembered for tasks that arrive after them: the newest so many, so long.
ABORTED_AHEAD_MAX = 10_000
ABORTED_AHEAD_S = 60.0


def _nbytes(frame: Any) -> int:
    return frame.nbytes if type(frame) is memoryview else memoryview(frame).nbytes


class Records:
    """Finished tasks' outcomes, kept calls, and aborts that came before their task.

    Parameters
    ----------
    record_window, record_age : int, float
        Finished tasks remembered: the newest `record_window` of the last
        `record_age` seconds.
    clock : callable
        Monotonic seconds (the scheduler's).
    """

    def __init__(self, record_window: int, record_age: float, clock: Callable[[], float]) -> None:
        self.record_window = record_window
        self.record_age = record_age
        self.done: dict[str, int] = {}  # task id -> outcome code
        self._order: collections.deque[tuple[float, str]] = collections.deque()  # (when, id), oldest first
        # task id -> (payload, flags, payload size), oldest first.
        self.kept: collections.OrderedDict[str, tuple[list[bytes], Flags | None, int]] = collections.OrderedDict()
        self.kept_bytes = 0
        # Ids aborted before their task arrived: id -> when.
        self.aborted_ahead: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._clock = clock

    # -- finished tasks ------------------------------------------------------

    def add(self, task_id: str, code: int, now: float) -> None:
        """Remember that `task_id` ended as `code` at `now`."""
        self.done[task_id] = code
        self._order.append((now, task_id))

    def forget_old(self, now: float) -> None:
        """Forget finished tasks beyond the record window (by count and age), and their kept calls."""
        order, done = self._order, self.done
        horizon = now - self.record_age
        while order and (len(order) > self.record_window or order[0][0] < horizon):
            _, task_id = order.popleft()
            done.pop(task_id, None)
            self._drop_kept(task_id)

    def purge(self, task_ids: Iterable[str] | None, live: Callable[[str], bool]) -> tuple[int, list[str]]:
        """Forget finished tasks (every one with None): their outcome and kept call.

        Returns how many were forgotten, and the given ids that are not
        finished yet (those for which `live` is true are left alone).
        """
        if task_ids is None:
            forgotten = len(self.done)
            self.done.clear()
            self._order.clear()
            self.kept.clear()
            self.kept_bytes = 0
            return forgotten, []
        forgotten, running = 0, []
        for task_id in task_ids:
            if live(task_id):
                running.append(task_id)
            elif self.done.pop(task_id, None) is not None:
                forgotten += 1
                self._drop_kept(task_id)
        if forgotten:
            self._order = collections.deque(entry for entry in self._order if entry[1] in self.done)
        return forgotten, running

    # -- kept calls ----------------------------------------------------------

    def keep(self, task_id: str, frames: list[Any], flags: Flags | None) -> None:
        """Keep a finished task's call for resubmit, if it is small enough and can run again."""
        if _shm.is_manifest(frames[0]):
            return  # its segments are freed now: such a call cannot run again
        size = 0
        for frame in frames:
            size += len(frame) if type(frame) is bytes else _nbytes(frame)
        if size > KEEP_TASK_BYTES:
            return
        # Copied: a view would keep its whole message (a batch of many tasks) alive.
        self.kept[task_id] = ([f if type(f) is bytes else bytes(f) for f in frames], flags, size)
        self.kept_bytes += size
        kept = self.kept
        while self.kept_bytes > KEEP_BYTES or len(kept) > KEEP_COUNT:
            self.kept_bytes -= kept.popitem(last=False)[1][2]

    def _drop_kept(self, task_id: str) -> None:
        kept = self.kept.pop(task_id, None)
        if kept is not None:
            self.kept_bytes -= kept[2]

    def call(self, task_id: str) -> tuple[list[bytes], Flags | None] | None:
        """The kept call of finished task `task_id` (payload, flags), or None."""
        kept = self.kept.get(task_id)
        return None if kept is None else (kept[0], kept[1])

    def why_not_kept(self, task_id: str, live: bool) -> str:
        """Why `task_id` cannot be resubmitted (it has no kept call); `live`: it has not finished."""
        if live:
            return f"task {task_id} has not finished yet; resubmit runs finished tasks again"
        if task_id in self.done:
            return (
                f"the call of task {task_id} is no longer kept (the controller keeps calls of up to"
                f" {KEEP_TASK_BYTES >> 10} KiB, the newest {KEEP_COUNT} and {KEEP_BYTES >> 20} MiB, and none"
                " whose arguments went through shared memory); submit it anew"
            )
        return (
            f"there is no task {task_id}: never submitted, or finished before the newest"
            f" {self.record_window} tasks of the last {self.record_age:g} s (record_window, record_age)"
        )

    # -- aborts ahead of their task ------------------------------------------

    def abort_ahead(self, task_id: str) -> None:
        """Remember an abort of `task_id`, not seen yet (bounded: see the module docstring)."""
        ahead = self.aborted_ahead
        now = self._clock()
        ahead[task_id] = now
        ahead.move_to_end(task_id)
        while ahead and (len(ahead) > ABORTED_AHEAD_MAX or next(iter(ahead.values())) < now - ABORTED_AHEAD_S):
            ahead.popitem(last=False)

    def was_aborted(self, task_id: str) -> bool:
        """Whether `task_id`, arriving now, was aborted ahead (forgotten once asked)."""
        return bool(self.aborted_ahead) and self.aborted_ahead.pop(task_id, None) is not None
