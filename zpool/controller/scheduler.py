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
default) adapts: each engine may hold ``max(2, 1 + ADAPTIVE_BUDGET_S / t)``
tasks, where ``t`` is the recent mean task run time, so tiny tasks travel
many per message while long ones go one after another with the next always
waiting on the engine; recall (below) keeps either balanced.

Dependencies (DESIGN §5). A task may carry flags: ``after`` and ``follow``
(graph dependencies on other tasks, each a set of ids with ``all``,
``success`` and ``failure``), ``timeout`` (for those to be met), ``retries``
and ``targets``. A task whose dependencies are not met waits, indexed by the
ids it waits for, so finishing a task touches only its own dependents; each
dependency keeps counts, so that check costs O(1). A task that can never
run fails at once, with :class:`~zpool.error.ImpossibleDependency` or a
subclass, and its dependents in turn (the cascade). Every finished task is
remembered (by id: whether it succeeded, and where it ran) for dependencies
still to come. Failures the scheduler decides are collected for the hub to
send (:meth:`Scheduler.take_failures`).

Ready tasks that may run anywhere wait in one queue, the fast path (a
retry there prefers engines it has not failed on). Tasks restricted to some
engines (``targets``, ``follow``, engines where a functional dependency was
unmet) are queued on each engine that may run them, the first to take one
winning (the other entries go stale, so nothing is ever searched or
rescanned); tasks whose engines are not up yet are parked until engines
change. Aborted tasks are dropped from queues when reached.

Recall. Engines hold tasks queued behind the one they run (the
in-flight limit, at least two when adaptive), so that none waits a round
trip for its next task. When the ready queue is empty and an engine goes
idle while another still holds tasks it has not started,
:meth:`Scheduler.recalls` picks some of those (the last placed, up to half
of the engine's queue) and the hub asks their engine for them back;
:meth:`Scheduler.recalled` makes the ones it gave back ready again, ahead
of anything else, and the idle engine takes them. Only tasks that may run
anywhere are recalled, and only under the load-aware schemes (``leastload``,
the default, and ``weighted``; the others place by recency or chance on
purpose). So work queued on engines never stays behind a long task while
another engine has nothing to do, and the in-flight limit costs no balance.
(:meth:`abort` uses the same request to take queued tasks back at once.)

Direct tasks (flag ``direct``, with one target: the engines' namespaces,
DESIGN §7's views) bypass all of that. They go to their engine in the
order they came, at once, whatever its load or ``hwm`` and without using
its ``maxtasksperchild`` budget; they never wait for dependencies or retry.
A direct task for an engine that is not up fails at once with
``EngineError``, saying what became of the engine.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random
import time
from typing import Any, Callable, Iterable, Sequence

from zpool import _shm
from zpool.protocol import SCHEMES

__all__ = ["SCHEMES", "EngineSlot", "Scheduler", "Task", "choose_engine"]


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

# Finished tasks' calls kept for resubmit: payloads up to KEEP_TASK_BYTES each
# (copied out of their message), KEEP_BYTES in all, the oldest dropped first.
KEEP_TASK_BYTES = 64 << 10
KEEP_BYTES = 64 << 20
# ... and at most this many calls (each costs about 250 bytes more than its payload).
KEEP_COUNT = 10_000

# How a finished task is remembered (one small int per task id): the engine id
# it succeeded on (>= 0); FAILED_UNPLACED if it failed before running; or
# -2 - engine_id if it failed on that engine.
FAILED_UNPLACED = -1
# How many departed engines are remembered, to say why a direct task cannot reach one.
DEPARTED_MAX = 1024
# Aborts of task ids not seen yet, remembered for tasks that arrive after them: the newest so many, so long.
ABORTED_AHEAD_MAX = 10_000
ABORTED_AHEAD_S = 60.0
# Finished tasks remembered (for dependencies on them and resubmit): the newest so many, of the last so long.
RECORD_WINDOW = 100_000
RECORD_AGE_S = 3600.0


def _nbytes(frame: Any) -> int:
    return frame.nbytes if type(frame) is memoryview else memoryview(frame).nbytes


class _DepState:
    """One graph dependency of a waiting task, with counts so that each finished id costs O(1)."""

    __slots__ = ("all", "engines", "failure", "known", "met", "pending", "success", "total", "unmet")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.all = bool(spec.get("all", True))
        self.success = bool(spec.get("success", True))
        self.failure = bool(spec.get("failure", False))
        self.pending: set[str] = set(spec["ids"])
        # How the client saw some of them end (codes as in `Scheduler.done`): used for
        # those finished longer ago than the scheduler remembers.
        known = spec.get("known")
        self.known: dict[str, int] | None = (
            {k: v for k, v in known.items() if isinstance(k, str) and type(v) is int}
            if isinstance(known, dict)
            else None
        )
        self.total = len(self.pending)
        self.met = 0
        self.unmet = 0
        self.engines: set[int] = set()  # where the met ones ran (for follow)

    def resolve(self, task_id: str, code: int) -> None:
        """Account for `task_id`, finished as `code` (see FAILED_UNPLACED)."""
        self.pending.discard(task_id)
        ok = code >= 0
        if (ok and self.success) or (not ok and self.failure):
            self.met += 1
            if code >= 0:
                self.engines.add(code)
            elif code <= -2:
                self.engines.add(-2 - code)
        else:
            self.unmet += 1

    def state(self) -> str:
        """``"met"``, ``"wait"`` or ``"impossible"``."""
        if self.all:
            if self.unmet:
                return "impossible"
            return "wait" if self.pending else "met"
        if self.met:
            return "met"
        return "wait" if self.pending else "impossible"


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

    def __init__(self, task_id: str, client: bytes, frames: list[Any], flags: dict[str, Any] | None = None) -> None:
        self.task_id = task_id
        self.client = client
        self.frames = frames
        self.flags = flags  # as received, kept for resubmit
        # The client message it came in, while forwarding that whole is possible.
        self.source: Any = None
        # Shared-memory segments its payload refers to (set by the hub; freed when it is done for good).
        self.segments: list[str] | None = None
        self.engine: EngineSlot | None = None
        # False once a reply from an engine led to running it again (retry, unmet dependency).
        self.final = True
        # Bumped each time it becomes ready: queue entries of an older readiness are stale.
        self.gen = 0
        self.after: _DepState | None = None
        self.follow: _DepState | None = None
        self.deadline: float | None = None
        self.retries = 0
        self.targets: frozenset[int] | None = None
        self.unmet_on: set[int] | None = None  # engines where its functional dependency was unmet: never again
        self.failed_on: set[int] | None = None  # engines it failed on (retries prefer others)
        self.direct = False  # for its one target, in order, at once (see the module docstring)
        self.abort_asked = False  # placed when aborted: if its engine gives it back (recall), it fails
        if flags:
            self.direct = bool(flags.get("direct"))
            if flags.get("after"):
                self.after = _DepState(flags["after"])
            if flags.get("follow"):
                self.follow = _DepState(flags["follow"])
            timeout = flags.get("timeout")
            if timeout:
                self.deadline = float(timeout)  # relative until submitted
            self.retries = int(flags.get("retries") or 0)
            if flags.get("targets"):
                self.targets = frozenset(int(t) for t in flags["targets"])

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
    """Ready queues, dependencies, per-engine in-flight limits and placement.

    Parameters
    ----------
    scheme : str
        One of :data:`SCHEMES`.
    hwm : int or None
        Most tasks outstanding per engine; ``0`` no limit, ``None`` adaptive.
    seed : int or None
        Seed for the random schemes (tests pass one).
    clock : callable
        Monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        scheme: str = "leastload",
        hwm: int | None = None,
        seed: int | None = None,
        clock: Callable[[], float] | None = None,
        record_window: int = RECORD_WINDOW,
        record_age: float = RECORD_AGE_S,
    ) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
        self.scheme = scheme
        self.hwm = hwm
        self.engines: dict[bytes, EngineSlot] = {}
        self.by_id: dict[int, EngineSlot] = {}
        self.queue: collections.deque[Task] = collections.deque()
        self.parked: list[Task] = []  # ready, but no engine able to run them is up yet
        self.live: dict[str, Task] = {}  # every task submitted and not finished
        # Finished tasks, the newest `record_window` of the last `record_age` seconds: see FAILED_UNPLACED.
        self.done: dict[str, int] = {}
        self.record_window = record_window
        self.record_age = record_age
        self._done_order: collections.deque[tuple[float, str]] = collections.deque()  # (when, id), oldest first
        # Ids aborted before their task arrived (see abort): id -> when.
        self._aborted_ahead: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.waiting: dict[str, Task] = {}  # dependencies not met yet
        self.dependents: dict[str, dict[str, Task]] = {}  # task id -> the waiting tasks that depend on it
        self.starting: set[int] = set()  # engines registered, not ready yet (running the initializer)
        self.more_coming = False  # engines were launched that have not registered yet (set by the hub)
        self._deadlines: list[tuple[float, int, Task]] = []
        self._seq = itertools.count()
        self._failures: list[tuple[Task, str, str, int | None]] = []
        self._settle: collections.deque[tuple[Task, int]] = collections.deque()
        self._settling = False
        self._next_id = 0  # engine ids below this were given out already
        # task id -> (payload, flags) of finished tasks, for resubmit (bounded, oldest first out).
        # task id -> (payload, flags, payload size)
        self.kept: collections.OrderedDict[str, tuple[list[bytes], dict[str, Any] | None, int]] = (
            collections.OrderedDict()
        )
        self._kept_bytes = 0
        self._clock = clock or time.monotonic
        self._rng = random.Random(seed)
        self._uses = 0
        self._mean_run_s: float | None = None
        # engine id -> how it left (for direct tasks that name it); the newest DEPARTED_MAX.
        self.departed: collections.OrderedDict[int, str] = collections.OrderedDict()
        # Called with each task that is done for good, before its payload is let go
        # (the hub frees the shared-memory segments it refers to).
        self.on_finished: Callable[[Task], None] | None = None

    # -- engines ---------------------------------------------------------

    def add_engine(self, engine_id: int, ident: bytes, budget: int | None = None) -> EngineSlot:
        """Start placing tasks on an engine; it takes at most `budget` tasks in all (None: no limit)."""
        slot = EngineSlot(engine_id, ident, budget=budget)
        self.engines[ident] = slot
        self.by_id[engine_id] = slot
        self.starting.discard(engine_id)
        self._next_id = max(self._next_id, engine_id + 1)
        self._unpark()
        return slot

    def engine_registered(self, engine_id: int) -> None:
        """An engine got its id and is getting ready (its initializer runs): tasks may wait for it."""
        self.starting.add(engine_id)
        self._next_id = max(self._next_id, engine_id + 1)

    def engine_lost(self, engine_id: int, how: str = "failed to start") -> None:
        """An engine that never became ready is gone: what waited for it alone fails."""
        self.starting.discard(engine_id)
        self._departed(engine_id, how)
        self._unpark()

    def _departed(self, engine_id: int, how: str) -> None:
        self.departed[engine_id] = how
        while len(self.departed) > DEPARTED_MAX:
            self.departed.popitem(last=False)

    def _why_gone(self, engine_id: int, task: Task) -> str:
        how = self.departed.get(engine_id)
        if how is not None:
            state = f"engine {engine_id} {how}"
        elif engine_id in self.starting:
            state = f"engine {engine_id} is still starting"
        elif engine_id >= self._next_id:
            state = f"there is no engine {engine_id} (yet)"
        else:
            state = f"engine {engine_id} is gone"
        live = ", ".join(str(i) for i in sorted(self.by_id)) or "none"
        return (
            f"{state}: task {task.task_id} for it cannot run (engines up now: {live});"
            " make a new view of the engines that are up (pool.engines)"
        )

    def set_more_coming(self, more: bool) -> None:
        """Whether launched engines have yet to register (startup, replacements)."""
        if more != self.more_coming:
            self.more_coming = more
            if not more:
                self._unpark()

    def remove_engine(self, ident: bytes, how: str = "left") -> list[Task]:
        """Forget an engine; return the tasks it held that now fail (those with retries left run again).

        The returned tasks are recorded as failed; the caller answers them.
        `how` says what became of the engine ("died from SIGKILL"), for
        direct tasks that name it later.
        """
        slot = self.engines.pop(ident, None)
        if slot is None:
            return []
        self.by_id.pop(slot.engine_id, None)
        self._departed(slot.engine_id, how)
        stranded: list[Task] = []
        aborted: list[Task] = []
        for task in list(slot.outstanding.values()):
            task.engine = None
            if task.abort_asked:
                aborted.append(task)  # never run again: it fails as aborted (below)
            elif task.retries > 0:
                task.retries -= 1
                task.failed_on = (task.failed_on or set()) | {slot.engine_id}
                self._make_ready(task)
            else:
                stranded.append(task)
        slot.outstanding.clear()
        for task in stranded:  # the hub answers them (EngineError); what depends on them settles now
            self._record(task, -2 - slot.engine_id)
        for task in aborted:
            self._fail(task, "TaskAborted", f"task {task.task_id} was aborted; its engine {slot.engine_id} {how}")
        # Direct tasks not sent yet: never sent now.
        while slot.direct:
            task = slot.direct.popleft()
            if self.live.get(task.task_id) is task and task.engine is None:
                self._fail(task, "EngineError", self._why_gone(slot.engine_id, task), slot.engine_id)
        # What it alone could run may have nowhere left to go.
        for gen, task in slot.pinned:
            if self._entry_valid(gen, task):
                self._make_ready(task)
        slot.pinned.clear()
        self._unpark()
        return stranded

    def limit(self) -> int:
        """Current per-engine in-flight limit (0 means none)."""
        if self.hwm is not None:
            return self.hwm
        if self._mean_run_s is None:
            return 2
        return min(ADAPTIVE_MAX, max(2, 1 + int(ADAPTIVE_BUDGET_S / max(self._mean_run_s, 1e-7))))

    # -- tasks -----------------------------------------------------------

    def submit(self, tasks: Iterable[Task]) -> None:
        """Accept new tasks: ready ones are queued, others wait or fail (see :meth:`take_failures`)."""
        now = None
        for task in tasks:
            task_id = task.task_id
            if task_id in self.live or task_id in self.done:
                self._fail(task, "InvalidDependency", f"task id {task_id} is already in use", record=False)
                if self.on_finished is not None:
                    self.on_finished(task)
                continue
            if self._aborted_ahead and self._aborted_ahead.pop(task_id, None) is not None:
                self.live[task_id] = task
                self._fail(task, "TaskAborted", f"task {task_id} was aborted before it ran")
                continue
            self.live[task_id] = task
            if task.direct:
                self._submit_direct(task)
                continue
            if not task.waits() and not task.restricted() and task.deadline is None:
                self.queue.append(task)  # the fast path
                continue
            if task.deadline is not None:
                now = self._clock() if now is None else now
                task.deadline += now
            self._admit(task)

    def _submit_direct(self, task: Task) -> None:
        targets = task.targets or frozenset()
        if len(targets) != 1 or task.waits() or task.deadline is not None or task.retries:
            self._fail(task, "InvalidDependency", f"direct task {task.task_id} needs one target and no other flags")
            return
        (engine_id,) = targets
        slot = self.by_id.get(engine_id)
        if slot is None:
            self._fail(task, "EngineError", self._why_gone(engine_id, task), engine_id)
            return
        slot.direct.append(task)

    def _admit(self, task: Task) -> None:
        deps = [d for d in (task.after, task.follow) if d is not None]
        for dep in deps:
            for dep_id in list(dep.pending):
                if dep_id == task.task_id:
                    self._fail(task, "InvalidDependency", f"task {dep_id} depends on itself")
                    return
                code = self.done.get(dep_id)
                if code is None and dep_id not in self.live and dep.known is not None:
                    code = dep.known.get(dep_id)
                if code is not None:
                    dep.resolve(dep_id, code)
                elif dep_id not in self.live:
                    self._fail(
                        task,
                        "InvalidDependency",
                        f"task {task.task_id} depends on unknown task {dep_id}: never submitted, or finished"
                        f" before the newest {self.record_window} tasks of the last {self.record_age:g} s, which"
                        " is all the controller remembers (depend on its AsyncResult, whose outcome the client"
                        " sends along, or raise Pool(record_window=..., record_age=...))",
                    )
                    return
        if self._evaluate(task):
            return
        # It waits: index it by what it waits for.
        self.waiting[task.task_id] = task
        for dep_id in set(task.dep_ids()):
            self.dependents.setdefault(dep_id, {})[task.task_id] = task
        if task.deadline is not None:
            heapq.heappush(self._deadlines, (task.deadline, next(self._seq), task))

    def _evaluate(self, task: Task) -> bool:
        """Queue or fail `task` if its dependencies are settled; False if it must wait."""
        states = [d.state() for d in (task.after, task.follow) if d is not None]
        if "impossible" in states:
            self._fail(task, "ImpossibleDependency", self._why_impossible(task))
            return True
        if "wait" in states:
            return False
        follow = task.follow
        if follow is not None and follow.all and len(follow.engines) > 1:
            self._fail(
                task,
                "ImpossibleDependency",
                f"task {task.task_id} must follow tasks that ran on different engines ({sorted(follow.engines)})",
            )
            return True
        self._make_ready(task)
        return True

    def _why_impossible(self, task: Task) -> str:
        for name, dep in (("after", task.after), ("follow", task.follow)):
            if dep is not None and dep.state() == "impossible":
                if dep.success and not dep.failure:
                    wanted = "succeeded"
                else:
                    wanted = "failed" if not dep.success else "finished"
                scope = "all of" if dep.all else "any of"
                return (
                    f"task {task.task_id} can never run: its {name} dependency needs {scope} {dep.total} task(s)"
                    f" to have {wanted}, and {dep.unmet} did not"
                )
        return f"task {task.task_id} can never run"

    def _candidates(self, task: Task) -> list[EngineSlot] | None:
        """Engines `task` may run on, among those ready; None if any engine may."""
        if not task.restricted():
            return None
        allowed: list[EngineSlot] = list(self.engines.values())
        if task.targets is not None:
            allowed = [self.by_id[t] for t in sorted(task.targets) if t in self.by_id]
        if task.follow is not None:
            allowed = [e for e in allowed if e.engine_id in task.follow.engines]
        if task.unmet_on:
            allowed = [e for e in allowed if e.engine_id not in task.unmet_on]
        return allowed

    def _may_appear(self, task: Task) -> bool:
        """Whether an engine able to run `task` may still become ready."""
        if task.follow is not None:
            return False  # it must run where its tasks ran: engines that exist already
        if task.targets is not None:
            return any(t in self.starting or (t >= self._next_id and self.more_coming) for t in task.targets)
        return bool(self.starting) or self.more_coming  # tried everywhere so far, but more engines come

    def _make_ready(self, task: Task) -> None:
        """Queue `task` where it can be placed, or fail it if no engine can ever run it."""
        task.gen += 1
        candidates = self._candidates(task)
        if candidates is None:
            self.queue.append(task)
            return
        if not candidates:
            if self._may_appear(task):
                self.parked.append(task)
                return
            self._fail(task, "ImpossibleDependency", self._why_no_engine(task))
            return
        entry = (task.gen, task)
        for slot in candidates:
            slot.pinned.append(entry)

    def _entry_valid(self, gen: int, task: Task) -> bool:
        return gen == task.gen and task.engine is None and self.live.get(task.task_id) is task

    def _unpark(self) -> None:
        """Engines changed: place what waited for them, fail what nothing can run any more."""
        parked, self.parked = self.parked, []
        for task in parked:
            if self.live.get(task.task_id) is task:
                self._make_ready(task)

    def _why_no_engine(self, task: Task) -> str:
        parts = []
        if task.targets is not None:
            parts.append(f"targets {sorted(task.targets)}")
        if task.follow is not None:
            parts.append(f"follow (the tasks ran on engines {sorted(task.follow.engines)})")
        if task.unmet_on:
            parts.append(f"its functional dependency unmet on engines {sorted(task.unmet_on)}")
        live = sorted(self.by_id)
        return f"no engine can run task {task.task_id}: {' and '.join(parts)} leave none of the engines {live}"

    def assign(self) -> dict[EngineSlot, list[Task]]:
        """Place as many ready tasks as limits allow; return them per engine."""
        batches: dict[EngineSlot, list[Task]] = {}
        if not self.engines:
            return batches
        live = self.live
        for slot in self.engines.values():
            direct = slot.direct
            while direct:
                task = direct.popleft()
                if live.get(task.task_id) is task and task.engine is None:
                    self._place(task, slot, batches, counts=False)
        limit = self.limit()
        engines = [e for e in self.engines.values() if e.budget != 0]
        if not engines:
            return batches
        # Tasks only some engines may run first: each engine takes from its own queue.
        for slot in engines:
            pinned = slot.pinned
            while pinned and (not limit or len(slot.outstanding) < limit) and slot.budget != 0:
                gen, task = pinned.popleft()
                if self._entry_valid(gen, task):
                    self._place(task, slot, batches)
        queue = self.queue
        if not queue:
            return batches
        engines = [e for e in engines if e.budget != 0]
        choose = choose_engine
        while queue and engines:
            candidates = engines if not limit else [e for e in engines if len(e.outstanding) < limit]
            if not candidates:
                break
            task = queue.popleft()
            if live.get(task.task_id) is not task or task.engine is not None:
                continue  # aborted or failed while queued
            if task.failed_on:
                # A retry: another engine than those it failed on, when one has room.
                others = [e for e in candidates if e.engine_id not in task.failed_on]
                slot = choose(self.scheme, others or candidates, self._rng)
            else:
                slot = choose(self.scheme, candidates, self._rng)
            self._place(task, slot, batches)
            if slot.budget == 0:
                engines.remove(slot)
        return batches

    def _place(self, task: Task, slot: EngineSlot, batches: dict[EngineSlot, list[Task]], counts: bool = True) -> None:
        """Give `task` to `slot`; unless `counts` is False (direct tasks), it uses the engine's budget."""
        task.engine = slot
        slot.outstanding[task.task_id] = task
        if counts:
            slot.last_used = self._uses
            self._uses += 1
            if slot.budget is not None:
                slot.budget -= 1
        batch = batches.get(slot)
        if batch is None:
            batches[slot] = [task]
        else:
            batch.append(task)

    def recalls(self) -> dict[EngineSlot, list[str]]:
        """Tasks to ask back from busy engines while others are idle (call after :meth:`assign`).

        Only when nothing is left to place (an idle engine would have taken
        it) and no earlier request is unanswered. From each busy engine, for
        as many busy engines as are idle, the most loaded first: the last
        placed of the tasks that may run anywhere, up to half of what it
        holds beyond the task it runs (at least one). The engine gives back
        those it has not started (:meth:`recalled`).
        """
        if self.scheme not in LOAD_AWARE:
            return {}
        slots = self.engines.values()
        idle = sum(1 for e in slots if not e.outstanding and e.budget != 0)
        if not idle:
            return {}
        now = self._clock()
        for e in slots:
            if e.recalling and now - e.recall_since > RECALL_TIMEOUT_S:
                # No answer (an engine in C code that holds the GIL cannot give one): stop waiting
                # for it. A late answer still counts (see recalled).
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
            ids = movable[-max(1, len(held) // 2) :]
            self.ask_back(slot, ids)
            asks[slot] = ids
            idle -= 1
        return asks

    def ask_back(self, slot: EngineSlot, task_ids: Iterable[str]) -> None:
        """Note that `slot`'s engine is being asked to give back `task_ids` (see :meth:`recalled`)."""
        slot.recalling.update(task_ids)
        slot.recall_since = self._clock()

    def recalled(self, slot: EngineSlot, given: Iterable[str], asked: Iterable[str]) -> int:
        """`slot`'s engine answered a request for `asked`, giving back `given` (not started there).

        They are ready again, first in line (ahead of tasks submitted
        since); those aborted meanwhile (see :meth:`abort`, which asks for
        them back too) fail now, since their engine will never answer them.
        Every task of `given` the engine still held counts, whether it is
        still awaited in ``slot.recalling`` or not: a late answer may name a
        task that ran, failed and was placed there again meanwhile (a retry),
        or one whose request timed out — the engine has dropped it all the
        same. Ids the engine holds but was not asked for, or does not hold,
        are ignored.
        Returns how many are ready again.
        """
        asked_ids = set(asked)
        slot.recalling -= asked_ids
        mine = asked_ids.intersection(given)  # an engine gives back only what it was asked for
        back: list[Task] = []
        for task_id, task in [(i, t) for i, t in slot.outstanding.items() if i in mine]:  # in placement order
            del slot.outstanding[task_id]
            task.engine = None
            if slot.budget is not None and not task.direct:
                slot.budget += 1
            if task.abort_asked:
                self._fail(task, "TaskAborted", f"task {task_id} was aborted before it ran")
                continue
            task.gen += 1
            back.append(task)
        self.queue.extendleft(reversed(back))
        return len(back)

    def finish(
        self, slot: EngineSlot, task_id: str, ok: bool, run_s: float, unmet: bool = False, aborted: bool = False
    ) -> Task | None:
        """Record a reply; return the task, or None if `slot` did not hold it.

        A task that failed with retries left, or whose functional dependency
        was not met on that engine (`unmet`), is placed again and comes back
        with ``final`` False: its reply must not reach the client.
        """
        task = slot.outstanding.pop(task_id, None)
        if task is None:
            return None
        task.engine = None
        if slot.recalling:
            slot.recalling.discard(task_id)  # asked back too late: it ran
        if task.direct:
            unmet = False  # it raised UnmetDependency on the one engine it was for: that is its answer
        if run_s >= 0 and not unmet and not task.direct:
            mean = self._mean_run_s
            self._mean_run_s = run_s if mean is None else mean + EWMA_ALPHA * (run_s - mean)
        if task.abort_asked and (unmet or (not ok and task.retries > 0 and not aborted)):
            # It would run again elsewhere, but it was aborted meanwhile: it ends here.
            task.final = False  # (its engine's reply is not its answer)
            self._fail(task, "TaskAborted", f"task {task_id} was aborted before it could run again")
            return task
        if unmet:
            task.final = False
            task.unmet_on = (task.unmet_on or set()) | {slot.engine_id}
            self._make_ready(task)  # fails it with ImpossibleDependency if no engine is left
            return task
        if not ok and task.retries > 0 and not aborted:
            task.retries -= 1
            task.final = False
            task.failed_on = (task.failed_on or set()) | {slot.engine_id}
            self._make_ready(task)
            return task
        task.final = True
        if ok:
            slot.completed += 1
        else:
            slot.failed += 1
        self._record(task, slot.engine_id if ok else -2 - slot.engine_id)
        return task

    def _record(self, task: Task, code: int) -> None:
        """Remember how `task` ended, and settle what waited for it (a cascade, without recursion)."""
        self._settle.append((task, code))
        if self._settling:
            return
        self._settling = True
        now = self._clock()
        try:
            while self._settle:
                finished, code = self._settle.popleft()
                task_id = finished.task_id
                self.live.pop(task_id, None)
                self.done[task_id] = code
                self._done_order.append((now, task_id))
                if finished.frames:
                    if self.on_finished is not None:
                        self.on_finished(finished)
                    self._keep(finished)
                finished.frames = []
                finished.source = None
                waiting = self.dependents.pop(task_id, None) if self.dependents else None
                for dependent in waiting.values() if waiting else ():
                    if dependent.task_id not in self.waiting:
                        continue  # already failed or timed out
                    for dep in (dependent.after, dependent.follow):
                        if dep is not None and task_id in dep.pending:
                            dep.resolve(task_id, code)
                    if self._evaluate(dependent):
                        self.waiting.pop(dependent.task_id, None)
                        self._unindex(dependent)
            self._forget_old(now)
        finally:
            self._settling = False

    def purge(self, task_ids: Iterable[str] | None) -> tuple[int, list[str]]:
        """Forget finished tasks (every one with None): their outcome and kept call.

        Returns how many were forgotten, and the given ids that are not
        finished yet (those are left alone).
        """
        if task_ids is None:
            forgotten = len(self.done)
            self.done.clear()
            self._done_order.clear()
            self.kept.clear()
            self._kept_bytes = 0
            return forgotten, []
        forgotten, live = 0, []
        for task_id in task_ids:
            if task_id in self.live:
                live.append(task_id)
            elif self.done.pop(task_id, None) is not None:
                forgotten += 1
                kept = self.kept.pop(task_id, None)
                if kept is not None:
                    self._kept_bytes -= kept[2]
        if forgotten:
            self._done_order = collections.deque(entry for entry in self._done_order if entry[1] in self.done)
        return forgotten, live

    def _forget_old(self, now: float) -> None:
        """Forget finished tasks beyond the record window (by count and age), and their kept calls."""
        order, done = self._done_order, self.done
        horizon = now - self.record_age
        while order and (len(order) > self.record_window or order[0][0] < horizon):
            _, task_id = order.popleft()
            done.pop(task_id, None)
            kept = self.kept.pop(task_id, None)
            if kept is not None:
                self._kept_bytes -= kept[2]
        deadlines = self._deadlines
        if len(deadlines) > 2 * len(self.waiting) + 1024:
            # Entries of tasks no longer waiting go when they reach the top; never let them pile up.
            self._deadlines = [entry for entry in deadlines if entry[2].task_id in self.waiting]
            heapq.heapify(self._deadlines)

    def _keep(self, task: Task) -> None:
        frames = task.frames
        if _shm.is_manifest(frames[0]):
            return  # its segments are freed now: such a call cannot run again
        size = 0
        for frame in frames:
            size += len(frame) if type(frame) is bytes else _nbytes(frame)
        if size > KEEP_TASK_BYTES:
            return
        # Copied: a view would keep its whole message (a batch of many tasks) alive.
        self.kept[task.task_id] = ([f if type(f) is bytes else bytes(f) for f in frames], task.flags, size)
        self._kept_bytes += size
        kept = self.kept
        while self._kept_bytes > KEEP_BYTES or len(kept) > KEEP_COUNT:
            self._kept_bytes -= kept.popitem(last=False)[1][2]

    def resubmit(self, old_ids: Sequence[str], new_ids: Sequence[str], client: bytes) -> list[Task]:
        """Run finished tasks again under new ids; return the new tasks that cannot be (they are failed)."""
        refused: list[Task] = []
        fresh: list[Task] = []
        for old, new in zip(old_ids, new_ids):
            kept = self.kept.get(old)
            if kept is None:
                task = Task(new, client, [])
                if old in self.live:
                    why = f"task {old} has not finished yet; resubmit runs finished tasks again"
                elif old in self.done:
                    why = (
                        f"the call of task {old} is no longer kept (the controller keeps calls of up to"
                        f" {KEEP_TASK_BYTES >> 10} KiB, the newest {KEEP_COUNT} and {KEEP_BYTES >> 20} MiB, and none"
                        " whose arguments went through shared memory); submit it anew"
                    )
                else:
                    why = (
                        f"there is no task {old}: never submitted, or finished before the newest"
                        f" {self.record_window} tasks of the last {self.record_age:g} s (record_window, record_age)"
                    )
                self._failures.append((task, "InvalidDependency", why, None))
                refused.append(task)
                continue
            frames, flags, _ = kept
            fresh.append(Task(new, client, list(frames), flags))
        self.submit(fresh)
        return refused

    def _fail(self, task: Task, ename: str, evalue: str, engine_id: int | None = None, record: bool = True) -> None:
        """Fail `task` for a reason of the scheduler's own; its dependents are settled in turn."""
        if self.waiting.get(task.task_id) is task:
            del self.waiting[task.task_id]
            self._unindex(task)
        self._failures.append((task, ename, evalue, engine_id))
        if record:
            self._record(task, FAILED_UNPLACED if engine_id is None else -2 - engine_id)

    def fail_live(self, task: Task, engine_id: int | None = None) -> None:
        """Record that `task` failed for a reason outside the scheduler (the hub answers it)."""
        if self.waiting.pop(task.task_id, None) is not None:
            self._unindex(task)
        self._record(task, FAILED_UNPLACED if engine_id is None else -2 - engine_id)

    def _unindex(self, task: Task) -> None:
        """`task` waits no more: take it out of the lists of what its dependencies would settle."""
        for dep_id in set(task.dep_ids()):
            waiting = self.dependents.get(dep_id)
            if waiting is not None:
                waiting.pop(task.task_id, None)
                if not waiting:
                    del self.dependents[dep_id]

    def take_failures(self) -> list[tuple[Task, str, str, int | None]]:
        """Tasks the scheduler failed since the last call: ``(task, ename, evalue, engine_id)`` each."""
        failures, self._failures = self._failures, []
        return failures

    def expire(self) -> None:
        """Fail the tasks whose dependencies were not met within their ``timeout``."""
        now = self._clock()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, task = heapq.heappop(deadlines)
            if task.task_id in self.waiting:
                self._fail(task, "DependencyTimeout", f"task {task.task_id}'s dependencies were not met in time")

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do (monotonic seconds)."""
        while self._deadlines and self._deadlines[0][2].task_id not in self.waiting:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def abort(self, task_ids: Iterable[str]) -> tuple[int, dict[EngineSlot, list[str]]]:
        """Fail the given tasks not yet placed with TaskAborted; return their count, and the placed ones per engine.

        Queue entries of aborted tasks are dropped when reached (no queue is searched).
        An id not seen yet is remembered for a while (:data:`ABORTED_AHEAD_MAX`,
        :data:`ABORTED_AHEAD_S`): a client may send a task and its abort on two
        connections (a blocking call's own socket, the I/O thread's), and the
        abort may arrive first; the task then fails as it arrives.
        """
        placed: dict[EngineSlot, list[str]] = {}
        aborted = 0
        for task_id in set(task_ids):
            task = self.live.get(task_id)
            if task is None:
                if task_id not in self.done:
                    self._abort_ahead(task_id)
                continue
            if task.engine is not None:
                task.abort_asked = True
                placed.setdefault(task.engine, []).append(task_id)
                continue
            self._fail(task, "TaskAborted", f"task {task_id} was aborted before it ran")
            aborted += 1
        return aborted, placed

    def _abort_ahead(self, task_id: str) -> None:
        ahead = self._aborted_ahead
        now = self._clock()
        ahead[task_id] = now
        ahead.move_to_end(task_id)
        while ahead and (len(ahead) > ABORTED_AHEAD_MAX or next(iter(ahead.values())) < now - ABORTED_AHEAD_S):
            ahead.popitem(last=False)

    def drop_where(self, predicate: Callable[[Task], bool]) -> list[Task]:
        """Fail the ready (not yet placed) tasks matching `predicate`; return them."""
        ready = [t for t in self._ready_tasks() if predicate(t)]
        for task in ready:
            self.fail_live(task)
        return ready

    def _ready_tasks(self) -> list[Task]:
        seen: dict[str, Task] = {}
        candidates = itertools.chain(
            self.queue, self.parked, (t for e in self.engines.values() for g, t in e.pinned if g == t.gen)
        )
        for task in candidates:
            if task.engine is None and self.live.get(task.task_id) is task:
                seen[task.task_id] = task
        return list(seen.values())

    def queued(self) -> int:
        """Ready tasks not yet placed on an engine."""
        return len(self._ready_tasks())

    def status(self) -> dict[str, Any]:
        return {
            "engines": {
                str(e.engine_id): {
                    "queue": e.load,  # tasks it holds: running (one at most) and queued there
                    "running": min(e.load, 1),
                    "queued": max(e.load - 1, 0),
                    "completed": e.completed,
                    "failed": e.failed,
                    "pinned": sum(1 for gen, t in e.pinned if self._entry_valid(gen, t)),
                }
                for e in sorted(self.engines.values(), key=lambda e: e.engine_id)
            },
            "unassigned": self.queued(),
            "waiting": len(self.waiting),
            "limit": self.limit(),
        }
