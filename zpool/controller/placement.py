"""Where tasks go and how many an engine holds: the placement rules, recall's choice, the in-flight limit.

Pure functions and one small class, no sockets and no queues; the
scheduler (:mod:`zpool.controller.scheduler`) applies them.

* :func:`choose_engine`: one rule per scheme (DESIGN §5), among the
  engines below the limit.
* :class:`Pacing`: the per-engine in-flight limit (``hwm``), fixed, or
  adapted to the recent mean task run time.
* :func:`eligible`: the engines a restricted task may run on (``targets``,
  ``follow``, engines where its functional dependency was unmet).
* :func:`choose_recalls`: which queued tasks to ask back from busy engines
  while others are idle (the scheme being load-aware: :data:`LOAD_AWARE`).
"""

from __future__ import annotations

import random
from typing import Callable, Collection, Mapping, Sequence

from zpool._settings import SCHEMES
from zpool.controller.tasks import EngineSlot, Task

__all__ = [
    "ADAPTIVE_BUDGET_S",
    "ADAPTIVE_MAX",
    "LOAD_AWARE",
    "RECALL_TIMEOUT_S",
    "Pacing",
    "choose_engine",
    "choose_recalls",
    "eligible",
    "no_engine_text",
]

# With adaptive hwm, queue about this much work (seconds) per engine beyond the
# running task: enough to hide the scheduler round trip (~0.3 ms on loopback).
ADAPTIVE_BUDGET_S = 0.002
ADAPTIVE_MAX = 512
# Schemes that place by load: under these, queued tasks are recalled for idle engines.
LOAD_AWARE = ("leastload", "weighted")
# A recall request unanswered this long no longer keeps others from being sent.
RECALL_TIMEOUT_S = 1.0
# Weight of the newest task in the run-time moving average.
EWMA_ALPHA = 0.2


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


def choose_recalls(slots: Collection[EngineSlot], clock: Callable[[], float]) -> dict[EngineSlot, list[str]]:
    """Which tasks to ask back from which busy engines, while others are idle: ``{slot: task ids}``.

    Only when nothing is left to place (an idle engine would have taken
    it; call after placing) and no earlier request is unanswered (one
    unanswered for :data:`RECALL_TIMEOUT_S` no longer counts). From each
    busy engine, for as many busy engines as are idle, the most loaded
    first: the last placed of the tasks that may run anywhere, up to half
    of what it holds beyond the task it runs (at least one).
    """
    idle = sum(1 for e in slots if not e.outstanding and e.budget != 0)
    if not idle:
        return {}
    now = clock()
    for e in slots:
        if e.recalling and now - e.recall_since > RECALL_TIMEOUT_S:
            # No answer (an engine in C code that holds the GIL cannot give one): stop waiting
            # for it. A late answer still counts (see Scheduler.recalled).
            e.recalling.clear()
    if any(e.recalling for e in slots):
        return {}
    asks: dict[EngineSlot, list[str]] = {}
    for slot in sorted((e for e in slots if len(e.outstanding) >= 2), key=lambda e: -len(e.outstanding)):
        if idle == 0:
            break
        held = list(slot.outstanding.values())[1:]  # the first placed is the one running (or next)
        movable = [t.task_id for t in held if not t.direct and not t.abort_asked and not t.restricted()]
        if not movable:
            continue
        asks[slot] = movable[-max(1, len(held) // 2) :]
        idle -= 1
    return asks


class Pacing:
    """The per-engine in-flight limit: `hwm` if given, else adapted to the mean task run time.

    ``None`` adapts: each engine may hold ``max(2, 1 + ADAPTIVE_BUDGET_S / t)``
    tasks (at most :data:`ADAPTIVE_MAX`), ``t`` being the moving average of
    the run times reported (:meth:`ran`); 2 before any was.
    """

    __slots__ = ("hwm", "mean_run_s")

    def __init__(self, hwm: int | None) -> None:
        self.hwm = hwm
        self.mean_run_s: float | None = None

    def ran(self, run_s: float) -> None:
        """A task ran for `run_s` seconds on an engine."""
        mean = self.mean_run_s
        self.mean_run_s = run_s if mean is None else mean + EWMA_ALPHA * (run_s - mean)

    def limit(self) -> int:
        """Current per-engine in-flight limit (0 means none)."""
        if self.hwm is not None:
            return self.hwm
        if self.mean_run_s is None:
            return 2
        return min(ADAPTIVE_MAX, max(2, 1 + int(ADAPTIVE_BUDGET_S / max(self.mean_run_s, 1e-7))))


def eligible(task: Task, ready: Mapping[int, EngineSlot]) -> list[EngineSlot] | None:
    """The engines of `ready` (by id) that `task` may run on; None if any engine may."""
    if not task.restricted():
        return None
    if task.targets is not None:
        allowed = [ready[t] for t in sorted(task.targets) if t in ready]
    else:
        allowed = list(ready.values())
    if task.follow is not None:
        allowed = [e for e in allowed if e.engine_id in task.follow.engines]
    if task.unmet_on:
        allowed = [e for e in allowed if e.engine_id not in task.unmet_on]
    return allowed


def no_engine_text(task: Task, live: list[int]) -> str:
    """Why no engine of those up (`live` ids) can run `task`: its restrictions leave none."""
    parts = []
    if task.targets is not None:
        parts.append(f"targets {sorted(task.targets)}")
    if task.follow is not None:
        parts.append(f"follow (the tasks ran on engines {sorted(task.follow.engines)})")
    if task.unmet_on:
        parts.append(f"its functional dependency unmet on engines {sorted(task.unmet_on)}")
    return f"no engine can run task {task.task_id}: {' and '.join(parts)} leave none of the engines {live}"
