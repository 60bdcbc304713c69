"""The task scheduler: which engine runs which task, and when.

The scheduler is pure bookkeeping, with no sockets: the hub feeds it tasks
(:meth:`Scheduler.submit`), asks it for work to send (:meth:`Scheduler.assign`,
which returns one batch per engine), and tells it about replies
(:meth:`Scheduler.finish`) and engines coming and going. Payload frames are
carried along untouched; only the fields needed for routing are read.

Placement is a pure function of per-engine load and recency,
:func:`~zpool.controller.placement.choose_engine`, one rule per scheme
(DESIGN §5):

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
tasks, where ``t`` is the recent mean task run time
(:class:`~zpool.controller.placement.Pacing`), so tiny tasks travel
many per message while long ones go one after another with the next always
waiting on the engine; recall (below) keeps either balanced.

Dependencies (DESIGN §5). A task may carry flags, checked once by the hub
(:mod:`zpool.controller.flags`): ``after`` and ``follow`` (graph
dependencies on other tasks), ``timeout``, ``retries`` and ``targets``.
Tasks whose dependencies are not met wait in the graph
(:mod:`zpool.controller.graph`: indexed by what they wait for, O(1) per
finished id); a task that can never run fails at once, and its dependents
in turn (the cascade). Finished tasks are remembered, with the calls kept
for ``resubmit``, in :mod:`zpool.controller.records`. Failures the
scheduler decides are collected for the hub to send
(:meth:`Scheduler.take_failures`).

Ready tasks that may run anywhere wait in one queue, the fast path (a
retry there prefers engines it has not failed on), shared fairly between
the clients of the cluster: each client's tasks in their order, the
clients taking turns (:class:`~zpool.controller.tasks.ReadyQueue`), so that
one client's long map does not starve another's ``apply``. Tasks restricted to some
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
of the engine's queue: :func:`~zpool.controller.placement.choose_recalls`) and the hub asks their engine for them back;
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
import logging
import random
import time
from typing import Any, Callable, Iterable, Sequence

from zpool._settings import SCHEMES, ControllerSettings
from zpool._wire import FAILED_UNPLACED, ErrorName, SchedulerStatus, encode_outcome
from zpool.controller.graph import DepStatus, Graph
from zpool.controller.placement import LOAD_AWARE, Pacing, choose_engine, choose_recalls, eligible, no_engine_text
from zpool.controller.records import Records
from zpool.controller.registry import DEPARTED_MAX, EngineRegistry
from zpool.controller.tasks import EngineSlot, ReadyQueue, Task

__all__ = ["DEPARTED_MAX", "FAILED_UNPLACED", "SCHEMES", "EngineSlot", "Scheduler", "Task"]

# Placement, recall, retries and the scheduler's own failures (DEBUG and INFO): "zpool.scheduler".
logger = logging.getLogger("zpool.scheduler")

# A failure the scheduler decided: (task, error name, message, engine id or None).
Failure = tuple[Task, ErrorName, str, "int | None"]

# From this many engines, leastload places through a heap (Scheduler._fill_least_loaded), not a scan per task.
HEAP_MIN_ENGINES = 16


class Scheduler:
    """Ready queues, per-engine in-flight limits, placement, recall and direct tasks.

    Dependencies wait in :attr:`graph` (:class:`~zpool.controller.graph.Graph`);
    finished tasks are remembered in :attr:`records`
    (:class:`~zpool.controller.records.Records`).

    Parameters
    ----------
    settings : ControllerSettings or str, optional
        What the controller was told (``scheme``, ``hwm``,
        ``record_window``, ``record_age``); the defaults if None. A str is
        the scheme (``Scheduler("lru")``).
    registry : EngineRegistry, optional
        The hub's engines, which the scheduler shares; its own if None.
    seed : int or None
        Seed for the random schemes (tests pass one).
    clock : callable
        Monotonic seconds (tests pass a fake one).
    **overrides
        Fields of :class:`~zpool._settings.ControllerSettings` to change
        (``Scheduler(hwm=0, record_window=10)``).
    """

    def __init__(
        self,
        settings: ControllerSettings | str | None = None,
        *,
        registry: EngineRegistry | None = None,
        seed: int | None = None,
        clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> None:
        if isinstance(settings, str):
            overrides["scheme"] = settings
            settings = None
        settings = settings if settings is not None else ControllerSettings()
        if overrides:
            settings = settings._replace(**overrides)
        self.settings = settings = settings.validate()
        self.scheme = settings.scheme
        self.hwm = settings.hwm
        self.pacing = Pacing(settings.hwm)
        self._clock = clock or time.monotonic
        # The engines: shared with the hub (which registers them), or the scheduler's own.
        self.registry = registry = registry if registry is not None else EngineRegistry()
        self.engines = registry.slots  # ready engines, by identity
        self.by_id = registry.slots_by_id
        self.starting = registry.starting  # registered, not ready yet (running the initializer)
        self.departed = registry.departed  # engine id -> how it left
        self.queue = ReadyQueue()  # ready tasks that may run anywhere: shared fairly between clients
        self.parked: list[Task] = []  # ready, but no engine able to run them is up yet
        self.live: dict[str, Task] = {}  # every task submitted and not finished
        self.records = Records(settings.record_window, settings.record_age, self._clock)
        self.done = self.records.done  # finished tasks: id -> outcome code (zpool._wire.encode_outcome)
        self.kept = self.records.kept
        self.graph = Graph()
        self.waiting = self.graph.waiting  # dependencies not met yet
        self.dependents = self.graph.dependents  # task id -> the waiting tasks that depend on it
        self.more_coming = False  # engines were launched that have not registered yet (set by the hub)
        self._failures: list[Failure] = []
        self._settle: collections.deque[tuple[Task, int]] = collections.deque()
        self._settling = False
        self._rng = random.Random(seed)
        self._uses = 0
        # Called with each task that is done for good, before its payload is let go
        # (the hub frees the shared-memory segments it refers to).
        self.on_finished: Callable[[Task], None] | None = None

    # -- engines ---------------------------------------------------------

    def add_engine(self, engine_id: int, ident: bytes, budget: int | None = None) -> EngineSlot:
        """Start placing tasks on an engine; it takes at most `budget` tasks in all (None: no limit)."""
        slot = EngineSlot(engine_id, ident, budget=budget)
        self.registry.add_slot(slot)
        self._unpark()
        return slot

    def engine_registered(self, engine_id: int) -> None:
        """An engine got its id and is getting ready (its initializer runs): tasks may wait for it."""
        self.registry.registered(engine_id)

    def engine_lost(self, engine_id: int, how: str = "failed to start") -> None:
        """An engine that never became ready is gone: what waited for it alone fails."""
        self.registry.depart(engine_id, how)
        self._unpark()

    def _why_gone(self, engine_id: int, task: Task) -> str:
        live = ", ".join(str(i) for i in sorted(self.by_id)) or "none"
        return (
            f"{self.registry.why_gone(engine_id)}: task {task.task_id} for it cannot run (engines up now: {live});"
            " make a new view of the engines that are up (pool.engines)"
        )

    def set_more_coming(self, more: bool) -> None:
        """Whether launched engines have yet to register (startup, replacements)."""
        if more != self.more_coming:
            self.more_coming = more
            if not more:
                self._unpark()

    def remove_engine(self, ident: bytes, how: str = "left", started: str | None = None) -> list[Task]:
        """Forget an engine; return the tasks it held that now fail (those with retries left run again).

        The returned tasks are recorded as failed; the caller answers them.
        `how` says what became of the engine ("died from SIGKILL"), for
        direct tasks that name it later. `started` is the id of the last
        task it started, when known ("": none): an engine runs its tasks in
        the order they were placed, so those placed after that one never
        started, and are placed again instead of failing with it.
        """
        slot = self.registry.pop_slot(ident)
        if slot is None:
            return []
        self.registry.depart(slot.engine_id, how)
        stranded: list[Task] = []
        aborted: list[Task] = []
        held, never_started = slot.split_at(started)
        for task in never_started:  # as if never placed
            task.engine = None
            if task.abort_asked:
                aborted.append(task)
            else:
                self._make_ready(task)
        for task in held:
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
            self._record(task, encode_outcome(False, slot.engine_id))
        for task in aborted:
            self._fail(
                task, ErrorName.TASK_ABORTED, f"task {task.task_id} was aborted; its engine {slot.engine_id} {how}"
            )
        # Direct tasks not sent yet: never sent now.
        while slot.direct:
            task = slot.direct.popleft()
            if self.live.get(task.task_id) is task and task.engine is None:
                self._fail(task, ErrorName.ENGINE_ERROR, self._why_gone(slot.engine_id, task), slot.engine_id)
        # What it alone could run may have nowhere left to go.
        for gen, task in slot.pinned:
            if self._entry_valid(gen, task):
                self._make_ready(task)
        slot.pinned.clear()
        self._unpark()
        return stranded

    def limit(self) -> int:
        """Current per-engine in-flight limit (0 means none): :class:`~zpool.controller.placement.Pacing`."""
        return self.pacing.limit()

    # -- tasks -----------------------------------------------------------

    def submit(self, tasks: Iterable[Task]) -> None:
        """Accept new tasks: ready ones are queued, others wait or fail (see :meth:`take_failures`)."""
        now = None
        for task in tasks:
            task_id = task.task_id
            if task_id in self.live or task_id in self.done:
                self._fail(task, ErrorName.INVALID_DEPENDENCY, f"task id {task_id} is already in use", record=False)
                if self.on_finished is not None:
                    self.on_finished(task)
                continue
            if self.records.aborted_ahead and self.records.was_aborted(task_id):
                self.live[task_id] = task
                self._fail(task, ErrorName.TASK_ABORTED, f"task {task_id} was aborted before it ran")
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

    def adopt(self, slot: EngineSlot, tasks: Iterable[Task]) -> None:
        """Tasks a client pushed to `slot`'s engine (the direct path): they are placed there already.

        The engine told the controller before running any of them. Each
        counts as placed by the controller would be (load, budget, recall,
        abort); a task id already in use, or aborted before it came, fails
        (the hub asks the engine to give back what fails here).
        """
        for task in tasks:
            task_id = task.task_id
            task.pushed = True
            if task_id in self.live or task_id in self.done:
                self._fail(task, ErrorName.INVALID_DEPENDENCY, f"task id {task_id} is already in use", record=False)
                continue
            self.live[task_id] = task
            slot.take(task, self._uses)
            self._uses += 1
            if self.records.aborted_ahead and self.records.was_aborted(task_id):
                task.abort_asked = True  # the hub asks its engine for it back; given back, it fails as aborted

    def _submit_direct(self, task: Task) -> None:
        targets = task.targets or frozenset()
        if len(targets) != 1 or task.waits() or task.deadline is not None or task.retries:
            self._fail(
                task, ErrorName.INVALID_DEPENDENCY, f"direct task {task.task_id} needs one target and no other flags"
            )
            return
        (engine_id,) = targets
        slot = self.by_id.get(engine_id)
        if slot is None:
            self._fail(task, ErrorName.ENGINE_ERROR, self._why_gone(engine_id, task), engine_id)
            return
        slot.direct.append(task)

    def _admit(self, task: Task) -> None:
        """`task` has dependencies, a deadline or a restriction: queue it, fail it, or let it wait."""
        invalid = self.graph.account(task, self.records, self.live)
        if invalid is not None:
            self._fail(task, ErrorName.INVALID_DEPENDENCY, invalid)
        elif not self._evaluate(task):
            self.graph.add(task)  # it waits

    def _evaluate(self, task: Task) -> bool:
        """Queue or fail `task` if its dependencies are settled; False if it must wait."""
        status = self.graph.status(task)
        if status is DepStatus.WAIT:
            return False
        if status is DepStatus.IMPOSSIBLE:
            self._fail(task, ErrorName.IMPOSSIBLE_DEPENDENCY, self.graph.why_impossible(task))
            return True
        self._make_ready(task)
        return True

    def _may_appear(self, task: Task) -> bool:
        """Whether an engine able to run `task` may still become ready."""
        if task.follow is not None:
            return False  # it must run where its tasks ran: engines that exist already
        if task.targets is not None:
            next_id = self.registry.next_id
            return any(t in self.starting or (t >= next_id and self.more_coming) for t in task.targets)
        return bool(self.starting) or self.more_coming  # tried everywhere so far, but more engines come

    def _make_ready(self, task: Task) -> None:
        """Queue `task` where it can be placed, or fail it if no engine can ever run it."""
        task.gen += 1
        task.pushed = False  # placed by the controller from now on: its reply goes the controller's way
        candidates = eligible(task, self.by_id)
        if candidates is None:
            self.queue.append(task)
            return
        if not candidates:
            if self._may_appear(task):
                self.parked.append(task)
                return
            self._fail(task, ErrorName.IMPOSSIBLE_DEPENDENCY, no_engine_text(task, sorted(self.by_id)))
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
        if self.scheme == "leastload" and len(engines) >= HEAP_MIN_ENGINES:
            self._fill_least_loaded(engines, limit, batches)
            return batches
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

    def _fill_least_loaded(self, engines: list[EngineSlot], limit: int, batches: dict[EngineSlot, list[Task]]) -> None:
        """The queue's tasks to the least loaded engines, as :func:`choose_engine` would, in O(log engines) each.

        The engines with room wait in a heap keyed as leastload chooses:
        (tasks held, last use), then their order in `engines` (as ``min``
        takes the first of equals). Only the engine given a task changes,
        so it alone goes back in, with its new key, while it has room and
        budget. A retry, which avoids the engines it failed on, is chosen
        among the heap's entries directly (rare).
        """
        queue, live = self.queue, self.live
        heap = [
            (len(e.outstanding), e.last_used, i, e)
            for i, e in enumerate(engines)
            if not limit or len(e.outstanding) < limit
        ]
        heapq.heapify(heap)
        while queue and heap:
            task = queue.popleft()
            if live.get(task.task_id) is not task or task.engine is not None:
                continue  # aborted or failed while queued
            if task.failed_on:
                others = [entry for entry in heap if entry[3].engine_id not in task.failed_on]
                entry = min(others or heap)
                heap.remove(entry)
                heapq.heapify(heap)
            else:
                entry = heapq.heappop(heap)
            slot = entry[3]
            self._place(task, slot, batches)
            if slot.budget != 0 and (not limit or len(slot.outstanding) < limit):
                heapq.heappush(heap, (len(slot.outstanding), slot.last_used, entry[2], slot))

    def _place(self, task: Task, slot: EngineSlot, batches: dict[EngineSlot, list[Task]], counts: bool = True) -> None:
        """Give `task` to `slot`; unless `counts` is False (direct tasks), it uses the engine's budget."""
        if counts:
            slot.take(task, self._uses)
            self._uses += 1
        else:
            slot.take(task, None)
        batch = batches.get(slot)
        if batch is None:
            batches[slot] = [task]
        else:
            batch.append(task)

    def recalls(self) -> dict[EngineSlot, list[str]]:
        """Tasks to ask back from busy engines while others are idle (call after :meth:`assign`).

        Under the load-aware schemes only; which tasks: :func:`choose_recalls`.
        The engine gives back those it has not started (:meth:`recalled`).
        """
        if self.scheme not in LOAD_AWARE:
            return {}
        asks = choose_recalls(self.engines.values(), self._clock)
        for slot, ids in asks.items():
            logger.debug("asking engine %d back for %d task(s) it has not started", slot.engine_id, len(ids))
            self.ask_back(slot, ids)
        return asks

    def ask_back(self, slot: EngineSlot, task_ids: Iterable[str]) -> None:
        """Note that `slot`'s engine is being asked to give back `task_ids` (see :meth:`recalled`)."""
        slot.ask_back(task_ids, self._clock())

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
        back: list[Task] = []
        for task in slot.give_back(given, asked):
            if task.abort_asked:
                self._fail(task, ErrorName.TASK_ABORTED, f"task {task.task_id} was aborted before it ran")
                continue
            task.gen += 1
            task.pushed = False  # the controller places it now
            back.append(task)
        self.queue.extendleft(reversed(back))
        if back:
            logger.debug("engine %d gave back %d task(s): placed again", slot.engine_id, len(back))
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
            self.pacing.ran(run_s)
        if task.abort_asked and (unmet or (not ok and task.retries > 0 and not aborted)):
            # It would run again elsewhere, but it was aborted meanwhile: it ends here.
            task.final = False  # (its engine's reply is not its answer)
            self._fail(task, ErrorName.TASK_ABORTED, f"task {task_id} was aborted before it could run again")
            return task
        if unmet:
            task.final = False
            task.unmet_on = (task.unmet_on or set()) | {slot.engine_id}
            self._make_ready(task)  # fails it with ImpossibleDependency if no engine is left
            return task
        if not ok and task.retries > 0 and not aborted:
            task.retries -= 1
            logger.info(
                "task %s failed on engine %d; placed again (%d retries left)", task_id, slot.engine_id, task.retries
            )
            task.final = False
            task.failed_on = (task.failed_on or set()) | {slot.engine_id}
            self._make_ready(task)
            return task
        task.final = True
        if ok:
            slot.completed += 1
        else:
            slot.failed += 1
        self._record(task, encode_outcome(ok, slot.engine_id))
        return task

    def _record(self, task: Task, code: int) -> None:
        """Remember how `task` ended (an outcome code), and settle what waited for it (a cascade, without recursion)."""
        self._settle.append((task, code))
        if self._settling:
            return
        self._settling = True
        now = self._clock()
        records, graph = self.records, self.graph
        try:
            while self._settle:
                finished, code = self._settle.popleft()
                task_id = finished.task_id
                self.live.pop(task_id, None)
                records.add(task_id, code, now)
                if finished.frames:
                    if self.on_finished is not None:
                        self.on_finished(finished)
                    records.keep(task_id, finished.frames, finished.flags)
                finished.frames = []
                finished.source = None
                for dependent in graph.settle(task_id, code):
                    self._evaluate(dependent)
                    graph.remove(dependent)
            records.forget_old(now)
            if graph.deadlines:
                graph.compact()
        finally:
            self._settling = False

    def purge(self, task_ids: Iterable[str] | None) -> tuple[int, list[str]]:
        """Forget finished tasks (every one with None): their outcome and kept call.

        Returns how many were forgotten, and the given ids that are not
        finished yet (those are left alone).
        """
        return self.records.purge(task_ids, self.live.__contains__)

    def resubmit(
        self,
        old_ids: Sequence[str],
        new_ids: Sequence[str],
        client: bytes,
        accept: Callable[[list[Task]], None] | None = None,
    ) -> int:
        """Run finished tasks again under new ids; return how many run (the others are failed, saying why).

        `accept` sees the new tasks before they are submitted (the task database records them).
        """
        refused: list[Task] = []
        fresh: list[Task] = []
        for old, new in zip(old_ids, new_ids):
            call = self.records.call(old)
            if call is None:
                task = Task(new, client, [])
                why = self.records.why_not_kept(old, old in self.live)
                self._failures.append((task, ErrorName.INVALID_DEPENDENCY, why, None))
                refused.append(task)
                continue
            frames, flags = call
            fresh.append(Task(new, client, list(frames), flags))
        if accept is not None and fresh:
            accept(fresh)
        self.submit(fresh)
        return len(fresh)

    def _fail(
        self, task: Task, ename: ErrorName, evalue: str, engine_id: int | None = None, record: bool = True
    ) -> None:
        """Fail `task` for a reason of the scheduler's own; its dependents are settled in turn."""
        logger.debug("task %s fails: %s: %s", task.task_id, ename.value, evalue)
        self.graph.remove(task)
        self._failures.append((task, ename, evalue, engine_id))
        if record:
            self._record(task, encode_outcome(False, engine_id))

    def fail_live(self, task: Task, engine_id: int | None = None) -> None:
        """Record that `task` failed for a reason outside the scheduler (the hub answers it)."""
        self.graph.remove(task)
        self._record(task, encode_outcome(False, engine_id))

    def take_failures(self) -> list[Failure]:
        """Tasks the scheduler failed since the last call: ``(task, ename, evalue, engine_id)`` each."""
        failures, self._failures = self._failures, []
        return failures

    def expire(self) -> None:
        """Fail the tasks whose dependencies were not met within their ``timeout``."""
        for task in self.graph.expired(self._clock()):
            self._fail(task, ErrorName.DEPENDENCY_TIMEOUT, f"task {task.task_id}'s dependencies were not met in time")

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do (monotonic seconds)."""
        return self.graph.next_deadline()

    def abort(self, task_ids: Iterable[str]) -> tuple[int, dict[EngineSlot, list[str]]]:
        """Fail the given tasks not yet placed with TaskAborted; return their count, and the placed ones per engine.

        Queue entries of aborted tasks are dropped when reached (no queue is searched).
        An id not seen yet is remembered for a task arriving after its abort (see
        :mod:`zpool.controller.records`).
        """
        placed: dict[EngineSlot, list[str]] = {}
        aborted = 0
        for task_id in set(task_ids):
            task = self.live.get(task_id)
            if task is None:
                if task_id not in self.done:
                    self.records.abort_ahead(task_id)
                continue
            if task.engine is not None:
                task.abort_asked = True
                placed.setdefault(task.engine, []).append(task_id)
                continue
            self._fail(task, ErrorName.TASK_ABORTED, f"task {task_id} was aborted before it ran")
            aborted += 1
        return aborted, placed

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

    def status(self) -> SchedulerStatus:
        """The scheduler's part of a queue_reply (the hub adds the rest)."""
        return {
            "engines": {
                str(e.engine_id): e.status(sum(1 for gen, t in e.pinned if self._entry_valid(gen, t)))
                for e in sorted(self.engines.values(), key=lambda e: e.engine_id)
            },
            "unassigned": self.queued(),
            "waiting": len(self.waiting),
            "limit": self.limit(),
        }
