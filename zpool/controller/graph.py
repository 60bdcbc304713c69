"""The scheduler's task graph: what waits for which tasks, and until when.

Pure bookkeeping, no sockets, no placement (DESIGN §5). A task with graph
dependencies (flags ``after`` and ``follow``, each a set of task ids with
``all``, ``success`` and ``failure``) that are not met yet *waits*: it is
indexed by the ids it waits for (:attr:`Graph.dependents`), so that
finishing a task touches only its own dependents, and each dependency
keeps counts (:class:`DepState`), so that accounting for one finished id
costs O(1). Once a dependency is settled the task is *met* (the scheduler
queues it) or *impossible* (it fails with
:class:`~zpool.error.ImpossibleDependency`, and its own dependents are
settled in turn: the scheduler's cascade). A task whose ``timeout`` passes
before its dependencies are met fails with
:class:`~zpool.error.DependencyTimeout` (:meth:`Graph.expired`).
"""

from __future__ import annotations

import enum
import heapq
import itertools
from typing import TYPE_CHECKING, Container, Iterator

from zpool._wire import decode_outcome

if TYPE_CHECKING:
    from zpool._wire import DependencySpec
    from zpool.controller.records import Records
    from zpool.controller.tasks import Task

__all__ = ["DepState", "DepStatus", "Graph"]

_NONE: list[Task] = []  # (returned for no dependents: never appended to)


class DepStatus(str, enum.Enum):
    """Where a dependency stands."""

    MET = "met"
    WAIT = "wait"
    IMPOSSIBLE = "impossible"


class DepState:
    """One graph dependency of a waiting task, with counts so that each finished id costs O(1).

    `follows`: where the tasks ran matters (a ``follow`` dependency), so the
    engines of the met ones are collected in :attr:`engines`.
    """

    __slots__ = ("all", "engines", "failure", "follows", "known", "met", "pending", "success", "total", "unmet")

    def __init__(self, spec: DependencySpec, follows: bool = False) -> None:
        self.all = bool(spec.get("all", True))
        self.success = bool(spec.get("success", True))
        self.failure = bool(spec.get("failure", False))
        self.follows = follows
        self.pending: set[str] = set(spec["ids"])
        # How the client saw some of them end (outcome codes): used for those
        # finished longer ago than the scheduler remembers.
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
        """Account for `task_id`, finished as `code` (an outcome code, zpool._wire.encode_outcome)."""
        self.pending.discard(task_id)
        ok = code >= 0  # (the code of a success is its engine id)
        if (ok and self.success) or (not ok and self.failure):
            self.met += 1
            if self.follows:
                engine_id = decode_outcome(code)[1]
                if engine_id is not None:
                    self.engines.add(engine_id)
        else:
            self.unmet += 1

    def state(self) -> DepStatus:
        if self.all:
            if self.unmet:
                return DepStatus.IMPOSSIBLE
            return DepStatus.WAIT if self.pending else DepStatus.MET
        if self.met:
            return DepStatus.MET
        return DepStatus.WAIT if self.pending else DepStatus.IMPOSSIBLE


class Graph:
    """The waiting tasks, indexed by what they wait for, and their deadlines."""

    def __init__(self) -> None:
        self.waiting: dict[str, Task] = {}  # dependencies not met yet
        self.dependents: dict[str, dict[str, Task]] = {}  # task id -> the waiting tasks that depend on it
        self.deadlines: list[tuple[float, int, Task]] = []  # a heap; entries of tasks no longer waiting linger
        self._seq = itertools.count()

    @staticmethod
    def account(task: Task, records: Records, live: Container[str]) -> str | None:
        """Account in a new task's dependencies for the tasks finished already; say why it is invalid, if it is.

        An outcome comes from `records`, else (for a task not `live`) from
        what the client sent along (``known``). A dependency on the task
        itself, or on a task neither live nor known, makes it invalid.
        """
        for dep in (task.after, task.follow):
            if dep is None:
                continue
            for dep_id in list(dep.pending):
                if dep_id == task.task_id:
                    return f"task {dep_id} depends on itself"
                code = records.done.get(dep_id)
                if code is None and dep_id not in live and dep.known is not None:
                    code = dep.known.get(dep_id)
                if code is not None:
                    dep.resolve(dep_id, code)
                elif dep_id not in live:
                    return (
                        f"task {task.task_id} depends on unknown task {dep_id}: never submitted, or finished"
                        f" before the newest {records.record_window} tasks of the last {records.record_age:g} s,"
                        " which is all the controller remembers (depend on its AsyncResult, whose outcome the"
                        " client sends along, or raise Pool(record_window=..., record_age=...))"
                    )
        return None

    def add(self, task: Task) -> None:
        """`task` waits: index it by the ids it waits for (and its deadline, absolute by now)."""
        self.waiting[task.task_id] = task
        for dep_id in set(task.dep_ids()):
            self.dependents.setdefault(dep_id, {})[task.task_id] = task
        if task.deadline is not None:
            heapq.heappush(self.deadlines, (task.deadline, next(self._seq), task))

    def remove(self, task: Task) -> bool:
        """`task` waits no more (met, failed, timed out); whether it was waiting."""
        if self.waiting.get(task.task_id) is not task:
            return False
        del self.waiting[task.task_id]
        self._unindex(task)
        return True

    def _unindex(self, task: Task) -> None:
        for dep_id in set(task.dep_ids()):
            waiting = self.dependents.get(dep_id)
            if waiting is not None:
                waiting.pop(task.task_id, None)
                if not waiting:
                    del self.dependents[dep_id]

    def settle(self, task_id: str, code: int) -> list[Task]:
        r"""Account for `task_id`, finished as `code`, in what waits for it; return those now decided.

        A decided task (its dependencies met, or impossible: see
        :meth:`status`) is still in :attr:`waiting`: the caller queues or
        fails it, then :meth:`remove`\s it.
        """
        waiting = self.dependents.pop(task_id, None) if self.dependents else None
        if not waiting:
            return _NONE
        decided = []
        still = self.waiting
        wait, impossible = DepStatus.WAIT, DepStatus.IMPOSSIBLE
        for dependent in waiting.values():
            if dependent.task_id not in still:
                continue  # failed or timed out meanwhile
            after, follow = dependent.after, dependent.follow
            a = f = DepStatus.MET
            if after is not None:
                if task_id in after.pending:
                    after.resolve(task_id, code)
                a = after.state()
            if follow is not None:
                if task_id in follow.pending:
                    follow.resolve(task_id, code)
                f = follow.state()
            # (status() without the call: decided unless something waits and nothing is impossible)
            if a is impossible or f is impossible or (a is not wait and f is not wait):
                decided.append(dependent)
        return decided

    @staticmethod
    def status(task: Task) -> DepStatus:
        """Whether `task`'s dependencies are met, still pending, or can never be (:meth:`why_impossible`)."""
        after, follow = task.after, task.follow
        a = after.state() if after is not None else DepStatus.MET
        f = follow.state() if follow is not None else DepStatus.MET
        if a is DepStatus.IMPOSSIBLE or f is DepStatus.IMPOSSIBLE:
            return DepStatus.IMPOSSIBLE
        if a is DepStatus.WAIT or f is DepStatus.WAIT:
            return DepStatus.WAIT
        if follow is not None and follow.all and len(follow.engines) > 1:
            return DepStatus.IMPOSSIBLE  # it cannot follow them all
        return DepStatus.MET

    @staticmethod
    def why_impossible(task: Task) -> str:
        """Why `task` can never run (its :meth:`status` is impossible)."""
        for name, dep in (("after", task.after), ("follow", task.follow)):
            if dep is not None and dep.state() is DepStatus.IMPOSSIBLE:
                if dep.success and not dep.failure:
                    wanted = "succeeded"
                else:
                    wanted = "failed" if not dep.success else "finished"
                scope = "all of" if dep.all else "any of"
                return (
                    f"task {task.task_id} can never run: its {name} dependency needs {scope} {dep.total} task(s)"
                    f" to have {wanted}, and {dep.unmet} did not"
                )
        follow = task.follow
        if follow is not None and len(follow.engines) > 1:
            return f"task {task.task_id} must follow tasks that ran on different engines ({sorted(follow.engines)})"
        return f"task {task.task_id} can never run"

    def expired(self, now: float) -> Iterator[Task]:
        """The waiting tasks whose deadline has passed by `now` (taken off the heap as they are yielded)."""
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, task = heapq.heappop(deadlines)
            if task.task_id in self.waiting:
                yield task

    def next_deadline(self) -> float | None:
        """The earliest deadline of a task still waiting (monotonic seconds)."""
        deadlines = self.deadlines
        while deadlines and deadlines[0][2].task_id not in self.waiting:
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None

    def compact(self) -> None:
        """Drop the deadlines of tasks no longer waiting, once they outnumber the others (never let them pile up)."""
        if len(self.deadlines) > 2 * len(self.waiting) + 1024:
            self.deadlines = [entry for entry in self.deadlines if entry[2].task_id in self.waiting]
            heapq.heapify(self.deadlines)
