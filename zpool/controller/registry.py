"""The controller's engine registry: one record per engine, found by identity, pid or id.

An engine registers on the ``engine`` socket with its pid and host; the
engine keeper (:mod:`zpool.controller.engines`) gives it the next engine
id and an :class:`EngineRecord` here, and it counts as *starting* until
its setup (the pool's initializer) is done.
Then the scheduler adds its :class:`~zpool.controller.tasks.EngineSlot`
(load, queues), which the record holds, and places tasks on it; the
scheduler shares this registry (``Scheduler.engines`` and ``by_id`` are its
:attr:`~EngineRegistry.slots` and :attr:`~EngineRegistry.slots_by_id`). An
engine that leaves is remembered for a while (:attr:`~EngineRegistry.departed`),
to say what became of it to a task that names it.

Other parts keep per-engine *state* of their own, keyed by what they are
handed: the heartbeat monitor its missed beats (by identity), the launcher
its processes (by pid). An engine leaves only through
``EngineKeeper.forget``, which updates the registry, the monitor, the
scheduler and the launcher, in that order.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from zpool.controller.tasks import EngineSlot

__all__ = ["DEPARTED_MAX", "EngineRecord", "EngineRegistry"]

# How many departed engines are remembered, to say why a direct task cannot reach one.
DEPARTED_MAX = 1024


class EngineRecord:
    """One registered engine."""

    __slots__ = ("direct", "engine_id", "host_id", "hostname", "ident", "pid", "rank", "ready", "registered", "slot")

    def __init__(self, engine_id: int, ident: bytes, pid: int | None, hostname: str) -> None:
        self.engine_id = engine_id
        self.ident = ident  # its ZeroMQ routing identity
        self.pid = pid
        self.hostname = hostname
        # Which machine's memory it shares (zpool._transport.host_id): host names may repeat across containers.
        self.host_id = ""
        self.rank: int | None = None  # its rank under MPI or Slurm (zpool._transport.launcher_rank)
        self.registered = time.time()  # (wall clock: shown as an uptime, and to other hosts)
        self.ready = False  # taking tasks: registered, and its setup (initializer) done
        self.slot: EngineSlot | None = None  # the scheduler's view of it, once ready
        self.direct: str | None = None  # where clients may push tasks to it (zpool.engine.pushed)

    def __repr__(self) -> str:
        return f"EngineRecord({self.engine_id}, pid={self.pid}, ready={self.ready})"


class EngineRegistry:
    """The engines registered with this controller and not gone (engine ids are never reused)."""

    def __init__(self) -> None:
        self._by_ident: dict[bytes, EngineRecord] = {}
        self._by_pid: dict[int, EngineRecord] = {}
        self._by_id: dict[int, EngineRecord] = {}
        # The engines taking tasks (the scheduler places on these), by identity and by id.
        self.slots: dict[bytes, EngineSlot] = {}
        self.slots_by_id: dict[int, EngineSlot] = {}
        self.starting: set[int] = set()  # registered, not ready yet (running the initializer)
        # engine id -> how it left, the newest DEPARTED_MAX.
        self.departed: collections.OrderedDict[int, str] = collections.OrderedDict()
        self.next_id = 0  # engine ids below this were given out already

    def __len__(self) -> int:
        return len(self._by_ident)

    def __iter__(self) -> Iterator[EngineRecord]:
        return iter(list(self._by_ident.values()))

    def __contains__(self, ident: object) -> bool:
        return ident in self._by_ident

    def register(self, ident: bytes, pid: int | None, hostname: str) -> EngineRecord:
        """Record a new engine under the next engine id."""
        record = EngineRecord(self.next_id, ident, pid, hostname)
        self.registered(record.engine_id)
        self._by_ident[ident] = record
        self._by_id[record.engine_id] = record
        if pid is not None:
            self._by_pid[pid] = record
        return record

    def get(self, ident: bytes) -> EngineRecord | None:
        return self._by_ident.get(ident)

    def of_pid(self, pid: int) -> EngineRecord | None:
        return self._by_pid.get(pid)

    def of_id(self, engine_id: int) -> EngineRecord | None:
        return self._by_id.get(engine_id)

    def pop(self, ident: bytes) -> EngineRecord | None:
        """Take an engine out of the registry (``EngineKeeper.forget`` does the rest); None if it is not there."""
        record = self._by_ident.pop(ident, None)
        if record is None:
            return None
        self._by_id.pop(record.engine_id, None)
        if record.pid is not None and self._by_pid.get(record.pid) is record:
            del self._by_pid[record.pid]
        return record

    # -- what the scheduler keeps here ---------------------------------------

    def registered(self, engine_id: int) -> None:
        """Engine `engine_id` got its id and is getting ready (tasks may wait for it)."""
        self.starting.add(engine_id)
        self.next_id = max(self.next_id, engine_id + 1)

    def add_slot(self, slot: EngineSlot) -> None:
        """The engine of `slot` is ready: it takes tasks."""
        self.slots[slot.ident] = slot
        self.slots_by_id[slot.engine_id] = slot
        self.starting.discard(slot.engine_id)
        self.next_id = max(self.next_id, slot.engine_id + 1)

    def pop_slot(self, ident: bytes) -> EngineSlot | None:
        """Stop placing tasks on engine `ident`; its slot, or None if it took none."""
        slot = self.slots.pop(ident, None)
        if slot is not None:
            self.slots_by_id.pop(slot.engine_id, None)
        return slot

    def depart(self, engine_id: int, how: str) -> None:
        """Remember what became of engine `engine_id` ("died from SIGKILL")."""
        self.starting.discard(engine_id)
        self.departed[engine_id] = how
        while len(self.departed) > DEPARTED_MAX:
            self.departed.popitem(last=False)

    def why_gone(self, engine_id: int) -> str:
        """What became of engine `engine_id`, which takes no tasks now."""
        how = self.departed.get(engine_id)
        if how is not None:
            return f"engine {engine_id} {how}"
        if engine_id in self.starting:
            return f"engine {engine_id} is still starting"
        if engine_id >= self.next_id:
            return f"there is no engine {engine_id} (yet)"
        return f"engine {engine_id} is gone"
