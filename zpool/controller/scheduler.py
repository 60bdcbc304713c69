"""The task scheduler: which engine runs which task, and when.

The scheduler is pure bookkeeping, with no sockets: the hub feeds it tasks
(:meth:`Scheduler.submit`), asks it for work to send (:meth:`Scheduler.assign`,
which returns one batch per engine), and tells it about replies
(:meth:`Scheduler.finish`) and engines coming and going. Payload frames are
carried along untouched; only the fields needed for routing are read.

Placement is a pure function of per-engine load and recency,
:func:`choose_engine`, one rule per scheme (DESIGN §5):

==============  ==========================================================
``leastload``   fewest outstanding tasks; ties go to the least recently used
``lru``         least recently used, regardless of load
``plainrandom`` uniformly random
``twobin``      two at random, the least recently used of the two
``weighted``    two at random with probability inversely proportional to
                load, the less loaded of the two
==============  ==========================================================

High-water mark (``hwm``): the most tasks outstanding on one engine. ``1``
balances best (no task waits behind another while an engine is idle) but
pays a full round trip per task; ``0`` means no limit. ``None`` (the
default) adapts: each engine may hold ``1 + ADAPTIVE_BUDGET_S / t`` tasks,
where ``t`` is the recent mean task run time, so tiny tasks travel many per
message while long tasks go one at a time and stay balanced.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from zpool.protocol import SCHEMES

__all__ = ["SCHEMES", "EngineSlot", "Scheduler", "Task", "choose_engine"]


# With adaptive hwm, queue about this much work (seconds) per engine beyond the
# running task: enough to hide the scheduler round trip (~0.3 ms on loopback).
ADAPTIVE_BUDGET_S = 0.002
ADAPTIVE_MAX = 512
# Weight of the newest task in the run-time moving average.
EWMA_ALPHA = 0.2


class Task:
    """One task waiting in, or passing through, the scheduler."""

    __slots__ = ("client", "engine", "frames", "source", "task_id")

    def __init__(self, task_id: str, client: bytes, frames: list[Any]) -> None:
        self.task_id = task_id
        self.client = client
        self.frames = frames
        # The client message it came in, while forwarding that whole is possible.
        self.source: Any = None
        self.engine: EngineSlot | None = None


@dataclass(eq=False)
class EngineSlot:
    """The scheduler's view of one engine."""

    engine_id: int
    ident: bytes
    outstanding: dict[str, Task] = field(default_factory=dict)
    last_used: int = -1
    completed: int = 0
    failed: int = 0
    # Tasks it may still be given before it retires (maxtasksperchild); None: no end.
    budget: int | None = None

    @property
    def load(self) -> int:
        return len(self.outstanding)


def choose_engine(scheme: str, candidates: Sequence[EngineSlot], rng: random.Random) -> EngineSlot:
    """Pick one of `candidates` (non-empty) by the rule of `scheme`."""
    if len(candidates) == 1:
        return candidates[0]
    if scheme == "leastload":
        return min(candidates, key=lambda e: (len(e.outstanding), e.last_used))
    if scheme == "lru":
        return min(candidates, key=lambda e: e.last_used)
    if scheme == "plainrandom":
        return rng.choice(candidates)
    if scheme == "twobin":
        a, b = rng.sample(candidates, 2)
        return a if a.last_used <= b.last_used else b
    if scheme == "weighted":
        weights = [1.0 / (1 + len(e.outstanding)) for e in candidates]
        a = rng.choices(candidates, weights)[0]
        rest = [(e, w) for e, w in zip(candidates, weights) if e is not a]
        b = rng.choices([e for e, _ in rest], [w for _, w in rest])[0]
        return a if len(a.outstanding) <= len(b.outstanding) else b
    raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


class Scheduler:
    """Ready queue, per-engine in-flight limits and placement.

    Parameters
    ----------
    scheme : str
        One of :data:`SCHEMES`.
    hwm : int or None
        Most tasks outstanding per engine; ``0`` no limit, ``None`` adaptive.
    seed : int or None
        Seed for the random schemes (tests pass one).
    """

    def __init__(self, scheme: str = "leastload", hwm: int | None = None, seed: int | None = None) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
        self.scheme = scheme
        self.hwm = hwm
        self.engines: dict[bytes, EngineSlot] = {}
        self.queue: collections.deque[Task] = collections.deque()
        self._rng = random.Random(seed)
        self._uses = 0
        self._mean_run_s: float | None = None

    # -- engines ---------------------------------------------------------

    def add_engine(self, engine_id: int, ident: bytes, budget: int | None = None) -> EngineSlot:
        """Start placing tasks on an engine; it takes at most `budget` tasks in all (None: no limit)."""
        slot = EngineSlot(engine_id, ident, budget=budget)
        self.engines[ident] = slot
        return slot

    def remove_engine(self, ident: bytes) -> list[Task]:
        """Forget an engine; return the tasks it held (now stranded)."""
        slot = self.engines.pop(ident, None)
        if slot is None:
            return []
        stranded = list(slot.outstanding.values())
        slot.outstanding.clear()
        return stranded

    def limit(self) -> int:
        """Current per-engine in-flight limit (0 means none)."""
        if self.hwm is not None:
            return self.hwm
        if self._mean_run_s is None:
            return 1
        return min(ADAPTIVE_MAX, 1 + int(ADAPTIVE_BUDGET_S / max(self._mean_run_s, 1e-7)))

    # -- tasks -----------------------------------------------------------

    def submit(self, tasks: Iterable[Task]) -> None:
        self.queue.extend(tasks)

    def assign(self) -> dict[EngineSlot, list[Task]]:
        """Place as many queued tasks as limits allow; return them per engine."""
        batches: dict[EngineSlot, list[Task]] = {}
        if not self.queue or not self.engines:
            return batches
        limit = self.limit()
        engines = [e for e in self.engines.values() if e.budget != 0]
        queue = self.queue
        choose = choose_engine
        while queue and engines:
            candidates = engines if not limit else [e for e in engines if len(e.outstanding) < limit]
            if not candidates:
                break
            slot = choose(self.scheme, candidates, self._rng)
            task = queue.popleft()
            task.engine = slot
            slot.outstanding[task.task_id] = task
            if slot.budget is not None:
                slot.budget -= 1
                if slot.budget == 0:
                    engines.remove(slot)
            slot.last_used = self._uses
            self._uses += 1
            batch = batches.get(slot)
            if batch is None:
                batches[slot] = [task]
            else:
                batch.append(task)
        return batches

    def finish(self, slot: EngineSlot, task_id: str, ok: bool, run_s: float) -> Task | None:
        """Record a reply; return the task, or None if `slot` did not hold it."""
        task = slot.outstanding.pop(task_id, None)
        if task is None:
            return None
        if ok:
            slot.completed += 1
        else:
            slot.failed += 1
        if run_s >= 0:
            mean = self._mean_run_s
            self._mean_run_s = run_s if mean is None else mean + EWMA_ALPHA * (run_s - mean)
        return task

    def drop_where(self, predicate: Callable[[Task], bool]) -> list[Task]:
        """Remove and return queued (not yet placed) tasks matching `predicate`."""
        kept: collections.deque[Task] = collections.deque()
        dropped: list[Task] = []
        for task in self.queue:
            (dropped if predicate(task) else kept).append(task)
        self.queue = kept
        return dropped

    def status(self) -> dict[str, Any]:
        return {
            "engines": {
                str(e.engine_id): {"queue": e.load, "completed": e.completed, "failed": e.failed}
                for e in sorted(self.engines.values(), key=lambda e: e.engine_id)
            },
            "unassigned": len(self.queue),
            "limit": self.limit(),
        }
