"""What the scheduler moves around: tasks (:class:`Task`) and engines (:class:`EngineSlot`).

Plain slotted records, shared by the scheduler (queues, placement), the
graph (what a waiting task waits for) and the hub (routing replies). A
task's state is where it is: in ``Scheduler.live`` until it finishes; on
an engine (``engine`` set, in that slot's ``outstanding``) once placed;
otherwise ready (queued, pinned to the engines that may run it, or parked)
or waiting in the graph. ``gen`` tells a queue entry of its current
readiness from stale ones.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable

from zpool._wire import TaskFlags
from zpool.controller.flags import Flags
from zpool.controller.graph import DepState

__all__ = ["EngineSlot", "Task"]


class Task:
    """One task waiting in, or passing through, the scheduler."""

    __slots__ = (
        "abort_asked",
        "after",
        "client",
        "deadline",
        "direct",
        "engine",
        "failed_on",
        "final",
        "flags",
        "follow",
        "frames",
        "gen",
        "retries",
        "segments",
        "source",
        "targets",
        "task_id",
        "unmet_on",
    )

    def __init__(self, task_id: str, client: bytes, frames: list[Any], flags: Flags | TaskFlags | None = None) -> None:
        self.task_id = task_id
        self.client = client
        self.frames = frames
        if flags is not None and not isinstance(flags, Flags):
            flags = Flags.trusted(flags)  # trusted as given: the hub checks what clients send (flags.parse_flags)
        self.flags: Flags | None = flags  # kept for resubmit
        # The client message it came in, while forwarding that whole is possible.
        self.source: Any = None
        # Shared-memory segments its payload refers to (set by the hub; freed when it is done for good).
        self.segments: list[str] | None = None
        self.engine: EngineSlot | None = None
        # False once a reply from an engine led to running it again (retry, unmet dependency).
        self.final = True
        # Bumped each time it becomes ready: queue entries of an older readiness are stale.
        self.gen = 0
        self.after: DepState | None = None
        self.follow: DepState | None = None
        self.deadline: float | None = None
        self.retries = 0
        self.targets: frozenset[int] | None = None
        self.unmet_on: set[int] | None = None  # engines where its functional dependency was unmet: never again
        self.failed_on: set[int] | None = None  # engines it failed on (retries prefer others)
        self.direct = False  # for its one target, in order, at once (see the module docstring)
        self.abort_asked = False  # placed when aborted: if its engine gives it back (recall), it fails
        if flags is not None:
            self.direct = flags.direct
            if flags.after is not None:
                self.after = DepState(flags.after)
            if flags.follow is not None:
                self.follow = DepState(flags.follow, follows=True)
            self.deadline = flags.timeout  # relative until submitted
            self.retries = flags.retries
            self.targets = flags.targets

    def waits(self) -> bool:
        return self.after is not None or self.follow is not None

    def restricted(self) -> bool:
        """Whether only some engines may run it (retries merely prefer others: not a restriction)."""
        return self.targets is not None or self.follow is not None or bool(self.unmet_on)

    def dep_ids(self) -> Iterable[str]:
        for dep in (self.after, self.follow):
            if dep is not None:
                yield from dep.pending


class EngineSlot:
    """The scheduler's view of one engine (compared by identity)."""

    __slots__ = (
        "budget",
        "completed",
        "direct",
        "engine_id",
        "failed",
        "ident",
        "last_used",
        "outstanding",
        "pinned",
        "recall_since",
        "recalling",
    )

    def __init__(self, engine_id: int, ident: bytes, last_used: int = -1, budget: int | None = None) -> None:
        self.engine_id = engine_id
        self.ident = ident
        self.outstanding: dict[str, Task] = {}
        self.last_used = last_used
        self.completed = 0
        self.failed = 0
        # Tasks it may still be given before it retires (maxtasksperchild); None: no end.
        self.budget = budget
        # Ready tasks restricted to some engines, this one among them, as (gen, task):
        # a task sits in the queue of every engine it may run on, and the first to
        # take it wins; the other entries go stale (see Task.gen).
        self.pinned: collections.deque[tuple[int, Task]] = collections.deque()
        # Direct tasks for this engine, in arrival order (sent whatever the limits).
        self.direct: collections.deque[Task] = collections.deque()
        # Ids of tasks it holds that were asked back (see Scheduler.recalls), until it answers.
        self.recalling: set[str] = set()
        self.recall_since = 0.0  # when the last request went out (monotonic)

    def __repr__(self) -> str:
        return f"EngineSlot({self.engine_id}, load={len(self.outstanding)})"

    @property
    def load(self) -> int:
        return len(self.outstanding)
