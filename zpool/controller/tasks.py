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
from typing import Any, Iterable, Iterator

from zpool._wire import EngineQueue, TaskFlags
from zpool.controller.flags import Flags
from zpool.controller.graph import DepState

__all__ = ["EngineSlot", "ReadyQueue", "Task"]


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
        "pushed",
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
        # Its client pushed it to its engine (the direct path): the engine answers the client, and the
        # controller only records the reply. Cleared if the controller places it again (recall, a death).
        self.pushed = False
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

    def take(self, task: Task, use: int | None) -> None:
        """Hold `task`; unless it is direct (`use` None), it uses the budget, `use` being its turn in line."""
        task.engine = self
        self.outstanding[task.task_id] = task
        if use is not None:
            self.last_used = use
            if self.budget is not None:
                self.budget -= 1

    def ask_back(self, task_ids: Iterable[str], now: float) -> None:
        """The engine is being asked to give back `task_ids` (monotonic time `now`)."""
        self.recalling.update(task_ids)
        self.recall_since = now

    def give_back(self, given: Iterable[str], asked: Iterable[str]) -> list[Task]:
        """The engine answered a request for `asked`, giving back `given`: the tasks it no longer holds.

        In placement order; each leaves the engine and gets its budget back.
        Only ids both asked for and held count (an engine gives back only
        what it was asked for).
        """
        asked_ids = set(asked)
        self.recalling -= asked_ids
        mine = asked_ids.intersection(given)
        back = [t for i, t in self.outstanding.items() if i in mine]
        for task in back:
            del self.outstanding[task.task_id]
            task.engine = None
            if self.budget is not None and not task.direct:
                self.budget += 1
        return back

    def split_at(self, started: str | None) -> tuple[list[Task], list[Task]]:
        """What it holds, in placement order, as (run or maybe run, never started).

        `started` is the last task it started ("": none; None: not known,
        so every task may have run). It runs tasks in the order placed.
        """
        held = list(self.outstanding.values())
        if started is None:
            return held, []
        ran = [task.task_id for task in held].index(started) + 1 if started in self.outstanding else 0
        return held[:ran], held[ran:]

    def status(self, pinned: int) -> EngineQueue:
        """Its part of the scheduler's status, `pinned` being how many of its pinned entries are valid."""
        load = len(self.outstanding)
        return {
            "queue": load,  # tasks it holds: running (one at most) and queued there
            "running": min(load, 1),
            "queued": max(load - 1, 0),
            "completed": self.completed,
            "failed": self.failed,
            "pinned": pinned,
        }


class ReadyQueue:
    """The ready tasks that may run anywhere, shared fairly between the clients that sent them.

    Each client's tasks wait in their order; :meth:`popleft` takes from
    the clients in turn (round robin). A client that had no task waiting
    takes the next turn when one comes, so a pool's single ``apply_async``
    is placed next, however many tasks other pools have queued (a
    100,000-task map does not starve it), and a client that keeps one task
    at a time queued gets its fair share, not a place at the back. With one
    client it is a plain FIFO. :meth:`extendleft` puts tasks first in line
    (tasks an engine gave back), their clients' turns first.
    """

    __slots__ = ("_by_client", "_turns")

    def __init__(self) -> None:
        self._by_client: dict[bytes, collections.deque[Task]] = {}
        self._turns: collections.deque[bytes] = collections.deque()  # clients with tasks, next first

    def __len__(self) -> int:
        return sum(len(q) for q in self._by_client.values())

    def __bool__(self) -> bool:
        return bool(self._turns)

    def __iter__(self) -> Iterator[Task]:
        for client in self._turns:
            yield from self._by_client[client]

    def append(self, task: Task) -> None:
        """Queue `task` last among its client's."""
        queue = self._by_client.get(task.client)
        if queue is None:
            queue = self._by_client[task.client] = collections.deque()
            self._turns.appendleft(task.client)  # (its turn next: see the class's docstring)
        queue.append(task)

    def extendleft(self, tasks: Iterable[Task]) -> None:
        """Put `tasks` first in line, each before the one put before it (as ``deque.extendleft``)."""
        for task in tasks:
            client = task.client
            queue = self._by_client.get(client)
            if queue is None:
                queue = self._by_client[client] = collections.deque()
            else:
                self._turns.remove(client)
            self._turns.appendleft(client)
            queue.appendleft(task)

    def popleft(self) -> Task:
        """The next task: the first of the client whose turn it is (IndexError if none)."""
        turns = self._turns
        client = turns[0]
        queue = self._by_client[client]
        task = queue.popleft()
        if queue:
            turns.rotate(-1)
        else:
            del self._by_client[client]
            turns.popleft()
        return task
