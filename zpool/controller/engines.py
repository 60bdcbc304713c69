"""The controller's engines from registration to departure: readiness, heartbeats, processes, death.

::

    register_request ──▶ register ──(no initializer, or engine_ready ok)──▶ Scheduler.add_engine
    beats unanswered (beat) ───┐
    process ended (watch) ─────┼──▶ _engine_gone ──▶ forget ──▶ the tasks it held fail, or run again
    a send failed (unreachable)┘
    ran its share (retire), initializer raised (setup_done) ──▶ forget ──▶ told to exit

:class:`EngineKeeper` owns what the controller knows of its engines: the
:class:`~zpool.controller.registry.EngineRegistry` (which the scheduler
shares), the :class:`~zpool.controller.heartbeat.HeartMonitor`, the
:class:`~zpool.controller.launcher.LocalEngines` that runs and reaps local
engine processes (replacing those that end), the watch on the parent
process, and each local engine's run slot: which task it was running when
it died (:mod:`zpool._wire`). An engine leaves only through
:meth:`EngineKeeper.forget` (registry, heartbeat monitor, scheduler, then
the engine and its launcher).

The keeper has no sockets and answers no client: it goes through the hub
(:class:`HubLink`) to read the replies a dead engine sent before it died,
to signal engines on the heartbeat socket, to fail the tasks an engine
held, and to learn whether the hub still serves, or to stop it.
"""

from __future__ import annotations

import enum
import logging
import os
from typing import Any, Protocol

from zpool import _shm
from zpool._process import ParentWatch
from zpool._settings import ControllerSettings
from zpool._wire import ErrorName, read_run_slot, run_slot_path
from zpool.controller.heartbeat import HeartMonitor
from zpool.controller.launcher import LocalEngines
from zpool.controller.registry import EngineRecord, EngineRegistry
from zpool.controller.remote import RemoteEngines
from zpool.controller.scheduler import EngineSlot, Scheduler, Task
from zpool.error import ProtocolError
from zpool.protocol import MsgType, Session

__all__ = ["Departure", "EngineKeeper", "HubLink"]

logger = logging.getLogger(__name__)

# How long a killed engine is given to die before its run slot is read (see EngineKeeper._last_started).
RUN_SLOT_WAIT_S = 1.0
# How long an engine that could not be reached is given to finish dying (see EngineKeeper.unreachable).
UNREACHABLE_WAIT_S = 0.2


class Departure(enum.Enum):
    """Why an engine leaves (see :meth:`EngineKeeper.forget`)."""

    GONE = "gone"  # died, or stopped answering: the tasks it held fail (or retry)
    RETIRED = "retired"  # ran its share of tasks (maxtasksperchild): told to exit, replaced
    SETUP_FAILED = "setup failed"  # its initializer raised: told to exit


class HubLink(Protocol):
    """What the keeper asks of the hub, which owns the sockets and answers the clients."""

    @property
    def running(self) -> bool:
        """Whether the hub still serves (an engine that ends is replaced only then)."""

    def stop(self) -> None:
        """Leave the loop after this pass (the parent process is gone)."""

    def drain_engines(self) -> None:
        """Handle the messages the engine socket holds now."""

    def signal(self, ident: bytes, frames: list[Any]) -> bool:
        """Send `frames` to engine `ident`'s heartbeat thread; False if it cannot be reached."""

    def fail_tasks(self, tasks: list[Task], ename: ErrorName, evalue: str, engine_id: int | None = None) -> None:
        """Answer `tasks` with the same error reply each."""

    def send_failures(self) -> None:
        """Answer the tasks the scheduler failed."""

    def engine_output(self, pid: int | None, ended: bool) -> str:
        """Send what engine `pid` printed so far (all of it if it `ended`); its last lines on stderr."""

    def roster_changed(
        self,
        gone: int | None = None,
        known: dict[bytes, list[str]] | None = None,
        started: str | None = None,
        why: str | None = None,
    ) -> None:
        """Engines that clients may push to changed: engine `gone` left, holding `known` pushed tasks per client.

        `started` is the last task it started, from its run slot ("": none; None: not known).
        """


class EngineKeeper:
    """Registry, heartbeat monitor, launcher and parent watch of one controller.

    Parameters
    ----------
    hub : HubLink
        The sockets and the replies to clients.
    registry : EngineRegistry
        The engines' records, shared with `scheduler`.
    scheduler : Scheduler
        Places tasks on the engines that are ready; told of each arrival and departure.
    settings : ControllerSettings
        Heartbeat tolerance (``heartbeat_misses``) and ``max_tasks_per_engine``.
    session : Session
        Signs what the keeper sends the engines (beats, shutdown requests).
    launcher : LocalEngines or None
        The engine processes this controller started itself (None: engines come on their own).
    parent_pid : int or None
        The hub stops when this process ends (None: no such watch).
    setup : bool
        Whether engines run a setup (the pool's initializer) before taking tasks.
    connection_file : str or None
        Beside it, each local engine's run slot (None: run slots are not read).
    shm_prefix : str or None
        Names of the cluster's shared-memory segments (None: none are used).
    """

    def __init__(
        self,
        hub: HubLink,
        registry: EngineRegistry,
        scheduler: Scheduler,
        settings: ControllerSettings,
        session: Session,
        launcher: LocalEngines | None = None,
        *,
        remote: RemoteEngines | None = None,
        parent_pid: int | None = None,
        setup: bool = False,
        connection_file: str | None = None,
        shm_prefix: str | None = None,
    ) -> None:
        self.hub = hub
        self.registry = registry
        self.scheduler = scheduler
        self.settings = settings
        self.session = session
        self.launcher = launcher
        # Engines started elsewhere (ssh, MPI, Slurm), watched by a thread of their own.
        self.remote = remote
        self.registered_ever = 0  # engines that registered with this controller, for the remote ones awaited
        self.monitor = HeartMonitor(settings.heartbeat_misses)
        self.parent = ParentWatch(parent_pid) if parent_pid else None
        self.setup = setup
        self.connection_file = connection_file
        self.shm_prefix = shm_prefix
        self._reading_engines = False  # (see _engine_gone)
        # Engines launched but not registered yet will get the next ids: tasks may wait for them.
        scheduler.set_more_coming(self.starting() > 0)

    @property
    def gave_up(self) -> str | None:
        """Why no engine can start (a launcher gave up, and no engine serves), or None."""
        if self.launcher is not None and self.launcher.gave_up:
            return self.launcher.gave_up
        remote = self.remote
        if remote is not None and remote.failure and not self.scheduler.engines and not self.registry.starting:
            return remote.failure
        return None

    def starting(self) -> int:
        """Engines launched or registered that take no tasks yet (starting, or running the initializer)."""
        return len(self.registry.starting) + (self.launcher.starting() if self.launcher else 0) + self.remote_awaited()

    def remote_awaited(self) -> int:
        """Engines a remote launcher started that have not registered yet (none once it failed)."""
        remote = self.remote
        if remote is None or remote.failure is not None:
            return 0
        return max(0, remote.launcher.engines - self.registered_ever)

    # -- arrivals ---------------------------------------------------------

    def register(self, ident: bytes, pid: int | None, hostname: str, direct: str | None = None) -> EngineRecord:
        """Engine `ident` registers (again: its record stays); it takes tasks at once if it has no setup to run.

        `direct` is where clients may push tasks to it (None: they may not).
        """
        record = self.registry.get(ident)
        if record is None:
            record = self.registry.register(ident, pid, hostname)
            self.registered_ever += 1
            record.direct = direct
            self.monitor.add(ident)
            logger.info("engine %d registered (pid %s)", record.engine_id, record.pid)
            if not self.setup:
                self._engine_ready(record)
        return record

    def setup_done(self, ident: bytes, ok: bool, error: str) -> None:
        """Engine `ident` ran its setup (the pool's initializer): it takes tasks now, or it failed with `error`."""
        record = self.registry.get(ident)
        if record is None or record.ready:
            raise ProtocolError("engine_ready from an engine that is not registered, or twice")
        if ok:
            self._engine_ready(record)
            return
        logger.error("engine %d (pid %s): %s", record.engine_id, record.pid, error)
        if self.launcher is not None and record.pid is not None:
            self.launcher.setup_failed(record.pid, error)
        # Forgotten now, so that its exit is not mourned as a death.
        self.forget(record.ident, "failed in its initializer", Departure.SETUP_FAILED)

    def _engine_ready(self, record: EngineRecord) -> None:
        record.ready = True
        record.slot = self.scheduler.add_engine(record.engine_id, record.ident, self.settings.max_tasks_per_engine)
        if record.pid is not None and self.launcher is not None:
            self.launcher.mark_registered(record.pid)
        if record.direct:
            self.hub.roster_changed()

    # -- departures -------------------------------------------------------

    def retire(self, slot: EngineSlot) -> None:
        """Stop an engine that ran its share of tasks (``maxtasksperchild``), and start a fresh one."""
        tasks = self.settings.max_tasks_per_engine
        logger.info("engine %d ran %d tasks: retiring it", slot.engine_id, tasks)
        self.forget(slot.ident, f"was retired after {tasks} tasks (maxtasksperchild)", Departure.RETIRED)

    def forget(
        self, ident: bytes, how: str, departure: Departure = Departure.GONE, started: str | None = None
    ) -> list[Task]:
        """The one way an engine leaves: registry, heartbeat monitor, scheduler, then the engine and launcher.

        `how` says what became of it ("died from SIGKILL"), for the tasks
        that named it. Returns the tasks it held that now fail (recorded as
        failed by the scheduler; the caller answers them); those with
        retries left run again elsewhere. An engine not registered (or
        forgotten already) is ignored.
        """
        record = self.registry.pop(ident)
        if record is None:
            return []
        self.monitor.remove(ident)
        known: dict[bytes, list[str]] = {}  # tasks clients pushed to it, per client
        if record.slot is not None:
            for task in record.slot.outstanding.values():
                if task.pushed:
                    known.setdefault(task.client, []).append(task.task_id)
        if record.ready:
            stranded = self.scheduler.remove_engine(ident, how, started if departure is Departure.GONE else None)
        else:  # it never took tasks: what waited for it alone may fail now
            self.scheduler.engine_lost(record.engine_id, how)
            stranded = []
        if record.direct and record.ready:
            gone_started = started if departure is Departure.GONE else None
            self.hub.roster_changed(record.engine_id, known, gone_started, f"(pid {record.pid}) {how}")
        if departure is not Departure.GONE:
            self.hub.signal(ident, self.session.build(MsgType.SHUTDOWN_REQUEST))  # (else it leaves when beats stop)
        if departure is Departure.RETIRED and self.launcher is not None and record.pid is not None:
            self.launcher.retire(record.pid)  # its exit is expected
            if self.hub.running:
                self.launcher.start(1)
        return stranded

    def _last_started(self, pid: int | None) -> str | None:
        """The task engine `pid` last started, read from its run slot ("": none); None if unknown.

        Read once it is dead, or killed: the slot is removed after.
        """
        if self.connection_file is None or pid is None or self.launcher is None:
            return None  # not one of ours
        if pid in self.launcher.procs and not self.launcher.wait_exit(pid, RUN_SLOT_WAIT_S):
            return None  # still running (killed, not dead yet): nothing it says is final
        path = run_slot_path(self.connection_file, pid)
        started = read_run_slot(path)
        try:
            os.unlink(path)
        except OSError:
            pass
        return started

    def unreachable(self, ident: bytes) -> None:
        """A send to an engine failed: its socket is gone, usually because its process just died.

        The process closes its sockets an instant before it can be reaped:
        wait for that instant, so that its tasks fail saying how it ended
        (``SIGKILL``, an exit code), not merely that it could not be reached.
        """
        record = self.registry.get(ident)
        if record is not None and record.pid is not None and self.launcher is not None:
            self.launcher.wait_exit(record.pid, UNREACHABLE_WAIT_S)
            self.watch()
        self._engine_gone(ident, "could not be reached")

    def beat(self) -> None:
        """Declare dead (and kill) the engines that missed too many beats; send the next beat."""
        beat, dead = self.monitor.tick()
        for ident in dead:
            record = self.registry.get(ident)
            if record is not None and record.pid is not None and self.launcher is not None:
                self.launcher.kill(record.pid)
            self._engine_gone(ident, f"stopped answering heartbeats ({self.monitor.max_misses} missed)")
        ping = self.session.build(MsgType.HEARTBEAT_REQUEST, {"beat": beat})
        for record in self.registry:
            self.hub.signal(record.ident, ping)  # (not connected yet, or gone: the miss count decides)

    def watch(self) -> None:
        """Stop the hub if the parent is gone; else start engines due, and mourn and replace those that ended."""
        if self.parent is not None and not self.parent.alive():
            logger.warning("parent process %d is gone; shutting down", self.parent.parent_pid)
            self.hub.stop()
            return
        if self.launcher is None:
            if self.remote is not None:
                self.scheduler.set_more_coming(self.remote_awaited() > 0)
            self._fail_stranded()
            return
        self.launcher.tick()
        self.scheduler.set_more_coming(self.launcher.starting() > 0)
        for pid, how, registered, retired in self.launcher.reap():
            # What it wrote reaches its clients before its tasks fail (and the errors quote its stderr).
            tail = self.hub.engine_output(pid, ended=True)
            if self.shm_prefix:
                # The segments it kept for reuse: nobody else would remove them before the cluster ends.
                _shm.remove_kept(self.shm_prefix, "e", pid)
            if retired:
                continue  # its replacement started when it was retired
            record = self.registry.of_pid(pid)
            if record is not None:
                self._engine_gone(
                    record.ident, f"died from {how}" if how.startswith("SIG") else f"exited with {how}", tail
                )
            elif not registered:
                logger.error("engine process %d ended (%s) before it was ready%s", pid, how, _quoted(tail))
            if self.hub.running:
                self.launcher.start(1)
        self._fail_stranded()

    def _fail_stranded(self) -> None:
        """Fail the queued tasks no engine will ever run (a launcher gave up, and none is up)."""
        why = self.gave_up
        if why and not self.scheduler.engines and self.scheduler.queued():
            stranded = self.scheduler.drop_where(lambda task: True)
            self.hub.fail_tasks(stranded, ErrorName.BROKEN_POOL, f"no engine can start: {why}")
            self.hub.send_failures()

    def _engine_gone(self, ident: bytes, how: str, tail: str | None = None) -> None:
        """Engine `ident` died or cannot be reached: forget it, and fail the tasks it held.

        `tail`: its last lines on stderr, if its output pipes were read to
        the end already (else what they hold now is read here).
        """
        if ident not in self.registry:
            return
        if not self._reading_engines:
            # Replies it sent before it died, already here, count: read them first.
            self._reading_engines = True
            try:
                self.hub.drain_engines()
            finally:
                self._reading_engines = False
        record = self.registry.get(ident)
        if record is None:
            return
        if tail is None:
            tail = self.hub.engine_output(record.pid, ended=False)
        # Which task it was running (its run slot): those queued behind it are placed again.
        started = self._last_started(record.pid)
        stranded = self.forget(ident, how, started=started)
        self.hub.send_failures()
        logger.warning(
            "engine %d (pid %s) %s; failing %d task(s) it held", record.engine_id, record.pid, how, len(stranded)
        )
        hint = " SIGKILL usually means the machine ran out of memory." if "SIGKILL" in how else ""
        for task in stranded:
            if started and task.task_id != started:
                # It ran before the task the engine died in; its reply waited to travel with others.
                text = (
                    f"task {task.task_id} ran on engine {record.engine_id} (pid {record.pid}), but the engine {how}"
                    " before its reply was sent (replies of short tasks travel together), so its result is lost;"
                    f" other engines carry on.{hint}"
                )
            else:
                text = (
                    f"engine {record.engine_id} (pid {record.pid}) {how} while holding task {task.task_id};"
                    f" other engines carry on.{hint}"
                )
                if not started or task.task_id == started:
                    text += _quoted(tail)
            self.hub.fail_tasks([task], ErrorName.ENGINE_ERROR, text, record.engine_id)

    def close(self) -> None:
        """Tell every engine to exit, and end the processes this controller started."""
        bye = self.session.build(MsgType.SHUTDOWN_REQUEST)
        for record in self.registry:
            self.hub.signal(record.ident, bye)
        if self.launcher is not None:
            self.launcher.stop(timeout=2.0)


def _quoted(tail: str) -> str:
    """An engine's last lines on stderr, to end a message with ("" if none)."""
    lines = tail.rstrip("\n")
    if not lines.strip():
        return ""
    return "\nIts last lines on stderr:\n" + "\n".join("    " + line for line in lines.splitlines())
