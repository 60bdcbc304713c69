"""The controller's event loop: sockets, engine registry, routing.

::

    clients ──ROUTER "client"──▶ Hub ──▶ Scheduler.assign ──ROUTER "engine"──▶ engines
            ◀──────────────────  Hub ◀── apply_reply ◀─────────────────────────
                                 Hub ──ROUTER "heartbeat"──▶ engines' heartbeat threads

One thread owns every socket. Each pass of the loop drains whatever the
sockets hold without blocking, hands new tasks to the scheduler, sends the
batches it assigns (one message per engine), and on a timer sends
heartbeats, reaps engine processes and checks that its parent lives.

Messages are verified (signature, replay) before anything else; a message
that fails, or whose handler raises, is logged and dropped, and the loop
goes on. Payload frames are never deserialized here: a client message whose
tasks all go to one engine is forwarded whole, signature included, and an
engine reply whose tasks all belong to one client likewise; otherwise the
hub re-batches the untouched payload frames under a header of its own.

Each engine has one record in the :class:`~zpool.controller.registry.EngineRegistry`,
which the scheduler shares; it leaves only through :meth:`Hub.forget`
(registry, heartbeat monitor, scheduler, then the engine and its launcher).
Shared-memory segments are counted in :mod:`zpool.controller.segments`.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import time
from typing import Any, Callable, Mapping, cast

import zmq

from zpool import _shm
from zpool._process import ParentWatch
from zpool._settings import ControllerSettings
from zpool._wire import ErrorName, QueueStatus, error_reply, read_run_slot, run_slot_path
from zpool.controller.flags import parse_flags
from zpool.controller.heartbeat import HeartMonitor
from zpool.controller.launcher import LocalEngines
from zpool.controller.registry import EngineRecord, EngineRegistry
from zpool.controller.scheduler import EngineSlot, Scheduler, Task
from zpool.controller.segments import SegmentLedger
from zpool.error import ProtocolError, ZPoolError
from zpool.protocol import (
    DELIMITER,
    REPLY_COLUMNS,
    Batch,
    BatchWriter,
    ConnectionInfo,
    Message,
    MsgType,
    Session,
    TaskStatus,
    encode,
    recv_ready,
    send_frames,
)

__all__ = ["Hub", "HubSettings"]

logger = logging.getLogger(__name__)

# Messages read from one socket before the loop looks at the others.
DRAIN_BATCH = 256
# How often engine processes and the parent are checked, in seconds.
WATCH_INTERVAL_S = 0.05
# A client's message is forwarded whole (with its sender's signature, session
# and seq) only within this many seconds of its receipt, timed by this
# process's monotonic clock (the sender's date plays no part: clocks step);
# later, its tasks are re-signed under the controller's session. This is what
# keeps forwarded messages within the receivers' two generations of
# signatures (see protocol.ReplayGuard): an engine would have to take in more
# than a whole generation of messages within that second for a genuine one,
# overtaken by later messages of the same client, to be refused. Engine
# replies need no such bound: they are forwarded in the pass that receives
# them, in the order received.
FORWARD_MAX_AGE_S = 1.0
# How long a killed engine is given to die before its run slot is read (see Hub._last_started).
RUN_SLOT_WAIT_S = 1.0
# How long an engine that could not be reached is given to finish dying (see Hub._unreachable).
UNREACHABLE_WAIT_S = 0.2


# The name the hub's settings had before zpool._settings.ControllerSettings held them all.
HubSettings = ControllerSettings


class HubState(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _Source:
    """A client message kept so it can be forwarded whole (until FORWARD_MAX_AGE_S after `received`)."""

    __slots__ = ("count", "frames", "received")

    def __init__(self, frames: list[Any], count: int, received: float) -> None:
        self.frames = frames
        self.count = count
        self.received = received  # time.monotonic() when the controller received it


class Departure(enum.Enum):
    """Why an engine leaves (see :meth:`Hub.forget`)."""

    GONE = "gone"  # died, or stopped answering: the tasks it held fail (or retry)
    RETIRED = "retired"  # ran its share of tasks (maxtasksperchild): told to exit, replaced
    SETUP_FAILED = "setup failed"  # its initializer raised: told to exit


class Hub:
    """Registry, router and heartbeat owner of one cluster."""

    def __init__(
        self,
        info: ConnectionInfo,
        settings: ControllerSettings,
        engines: LocalEngines | None = None,
        *,
        parent_pid: int | None = None,
        engine_setup: tuple[bytes, ...] = (),
        connection_file: str | None = None,
    ) -> None:
        self.info = info
        # Beside it, each local engine's run slot: which task it was running when it died (zpool._wire).
        self.connection_file = connection_file
        self.settings = settings
        # A serialized call every engine runs before its first task (the initializer).
        self.engine_setup = engine_setup
        self.session = Session(info.key)
        self.registry = EngineRegistry()  # shared with the scheduler
        self.scheduler = Scheduler(settings, registry=self.registry)
        # Shared-memory segments of task arguments, unlinked when their last task is done for good.
        self.segments = SegmentLedger(info.shm_prefix)
        self.scheduler.on_finished = self.segments.release
        # Engines launched but not registered yet will get the next ids: tasks may wait for them.
        self.scheduler.set_more_coming(engines is not None and engines.starting() > 0)
        self.monitor = HeartMonitor(settings.heartbeat_misses)
        self.launcher = engines
        self.parent = ParentWatch(parent_pid) if parent_pid else None
        self.dropped = 0
        self._state = HubState.RUNNING
        self._shutdown_requests: list[Message] = []
        self._reading_engines = False  # (see _engine_gone)

        self.ctx = zmq.Context()
        self.client_sock = self._bind(zmq.ROUTER, info.client)
        self.engine_sock = self._bind(zmq.ROUTER, info.engine)
        self.heartbeat_sock = self._bind(zmq.ROUTER, info.heartbeat)
        self._handlers: dict[zmq.Socket[Any], dict[str, Callable[[Message, list[Any]], None]]] = {
            self.client_sock: {
                MsgType.APPLY_REQUEST.value: self._on_apply_request,
                MsgType.CONNECT_REQUEST.value: self._on_connect_request,
                MsgType.QUEUE_REQUEST.value: self._on_queue_request,
                MsgType.SHUTDOWN_REQUEST.value: self._on_shutdown_request,
                MsgType.ABORT_REQUEST.value: self._on_abort_request,
                MsgType.RESUBMIT_REQUEST.value: self._on_resubmit_request,
                MsgType.INTERRUPT_REQUEST.value: self._on_interrupt_request,
                MsgType.HEARTBEAT_REQUEST.value: self._on_client_ping,
                MsgType.PURGE_REQUEST.value: self._on_purge_request,
            },
            self.engine_sock: {
                MsgType.REGISTER_REQUEST.value: self._on_register_request,
                MsgType.APPLY_REPLY.value: self._on_apply_reply,
                MsgType.ENGINE_READY.value: self._on_engine_ready,
            },
            self.heartbeat_sock: {
                MsgType.HEARTBEAT_REPLY.value: self._on_heartbeat_reply,
                MsgType.RECALL_REPLY.value: self._on_recall_reply,
            },
        }

    def _bind(self, kind: int, address: str) -> zmq.Socket[Any]:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(address)
        return sock

    # -- loop -------------------------------------------------------------

    def run(self) -> None:
        """Serve until shut down or until the parent process disappears."""
        poller = zmq.Poller()
        for sock in self._handlers:
            poller.register(sock, zmq.POLLIN)
        interval = self.settings.heartbeat_interval
        next_beat = time.monotonic() + interval
        next_watch = 0.0
        try:
            while self._state is HubState.RUNNING:
                now = time.monotonic()
                wake = min(next_beat, next_watch)
                deadline = self.scheduler.next_deadline()
                if deadline is not None:
                    wake = min(wake, deadline)
                timeout_ms = math.ceil(max(0.0, wake - now) * 1000)
                for sock, _ in poller.poll(timeout_ms):
                    self._drain(sock)
                if deadline is not None:
                    self.scheduler.expire()
                # Whatever the scheduler failed meanwhile (a cascade after a reply, an
                # engine's death, a timeout) is answered before anything new is placed.
                self._send_failures()
                self._dispatch()
                now = time.monotonic()
                if now >= next_watch:
                    next_watch = now + WATCH_INTERVAL_S
                    self._watch_processes()
                if now >= next_beat:
                    next_beat = now + interval
                    self._beat()
        finally:
            self._stop()

    def _drain(self, sock: zmq.Socket[Any]) -> None:
        handlers = self._handlers[sock]
        for _ in range(DRAIN_BATCH):
            frames = recv_ready(sock)
            if frames is None:
                return
            try:
                msg = self.session.unpack(frames)
                handler = handlers.get(msg.msg_type)
                if handler is None:
                    raise ProtocolError(f"unexpected message type {msg.msg_type!r} on this socket")
                handler(msg, frames)
            except Exception as exc:
                self.dropped += 1
                level = logging.WARNING if isinstance(exc, ZPoolError) else logging.ERROR
                logger.log(
                    level,
                    "dropped a message of %d frames: %s: %s",
                    len(frames),
                    type(exc).__name__,
                    exc,
                    exc_info=not isinstance(exc, ZPoolError),
                )
                if sock is self.client_sock:
                    self._notify_rejected(frames, exc)

    def _notify_rejected(self, frames: list[Any], exc: Exception) -> None:
        """Tell a client which of its messages was dropped, so its tasks fail instead of waiting.

        The notice names the message only by the signature frame it carried
        (no content of an unverified message is trusted or echoed).
        """
        raw = [f if isinstance(f, bytes) else f.bytes for f in frames[:64]]
        if DELIMITER not in raw:
            return
        i = raw.index(DELIMITER)
        if i == 0 or i + 1 >= len(raw):
            return
        notice = self.session.build(
            MsgType.REJECT_NOTICE,
            content=encode({"signature": raw[i + 1][:64].hex(), "reason": f"{type(exc).__name__}: {exc}"}),
        )
        self._send(self.client_sock, raw[0], notice)

    def _send(self, sock: zmq.Socket[Any], ident: bytes, frames: list[Any]) -> bool:
        try:
            send_frames(sock, [ident, *frames])
            return True
        except zmq.ZMQError as exc:
            logger.warning("could not send to %r: %s", ident, exc)
            return False

    def _reply(self, msg: Message, msg_type: MsgType, content: Mapping[str, Any]) -> None:
        frames = self.session.build(msg_type, parent=encode(msg.header), content=encode(content))
        self._send(self.client_sock, _ident(msg), frames)

    # -- clients ----------------------------------------------------------

    def _on_apply_request(self, msg: Message, frames: list[Any]) -> None:
        client = _ident(msg)
        batch = Batch(msg.header, msg.buffers)
        flags = parse_flags(msg.header.get("flags"), len(batch.ids))
        tasks = [Task(task_id, client, batch.payload(i), flags.get(i)) for i, task_id in enumerate(batch.ids)]
        if msg.header.get("shm"):  # (the client says when any payload refers to segments)
            self.segments.claim(tasks)
        if self.launcher is not None and self.launcher.gave_up and not self.scheduler.engines:
            self._fail_tasks(tasks, ErrorName.BROKEN_POOL, f"no engine can start: {self.launcher.gave_up}")
            for task in tasks:
                self.segments.release(task)
            return
        source = _Source(frames[len(msg.idents) :], len(tasks), time.monotonic())
        for task in tasks:
            task.source = source
        self.scheduler.submit(tasks)
        self._send_failures()

    def _on_abort_request(self, msg: Message, frames: list[Any]) -> None:
        ids = msg.content.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ProtocolError("abort_request without a list of task ids")
        self._send_failures()  # earlier failures are not this abort's
        aborted, placed = self.scheduler.abort(ids)
        self._send_failures()
        notice = 0
        interrupt = msg.content.get("interrupt") is True
        for slot, task_ids in placed.items():
            notice += len(task_ids)
            self._send(self.engine_sock, slot.ident, self.session.build(MsgType.ABORT_REQUEST, {"ids": task_ids}))
            # Those queued there come back at once and fail (the engine would reach them only
            # after the task it runs); the abort request covers any it cannot give back.
            queued = [i for i in task_ids if i not in slot.recalling]
            if queued:
                self._recall(slot, queued)
            if interrupt:  # the one running, if it is one of them (the engine knows)
                self._interrupt(slot.ident, task_ids)
        self._reply(msg, MsgType.ABORT_REPLY, {"aborted": aborted, "sent_to_engines": notice})

    def _on_purge_request(self, msg: Message, frames: list[Any]) -> None:
        ids = msg.content.get("ids")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise ProtocolError("purge_request with ids that are not a list of task ids")
        forgotten, live = self.scheduler.purge(ids)
        self._reply(msg, MsgType.PURGE_REPLY, {"purged": forgotten, "not_finished": live})

    def _on_client_ping(self, msg: Message, frames: list[Any]) -> None:
        """A client waiting for work checks that this controller still answers."""
        self._reply(msg, MsgType.HEARTBEAT_REPLY, {})

    def _on_interrupt_request(self, msg: Message, frames: list[Any]) -> None:
        wanted = msg.content.get("engines")
        if not isinstance(wanted, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in wanted):
            raise ProtocolError("interrupt_request without a list of engine ids")
        sent, unknown = [], []
        for engine_id in wanted:
            record = self.registry.of_id(engine_id)
            if record is None:
                unknown.append(engine_id)
            elif self._interrupt(record.ident, None):
                sent.append(engine_id)
        self._reply(msg, MsgType.INTERRUPT_REPLY, {"engines": sent, "unknown": unknown})

    def _interrupt(self, ident: bytes, task_ids: list[str] | None) -> bool:
        """Ask an engine's heartbeat thread to interrupt its running task (one of `task_ids`, if given)."""
        content = {} if task_ids is None else {"ids": task_ids}
        try:
            send_frames(self.heartbeat_sock, [ident, *self.session.build(MsgType.INTERRUPT_REQUEST, content)])
        except zmq.ZMQError:
            return False  # gone: its death is noticed elsewhere
        return True

    def _on_resubmit_request(self, msg: Message, frames: list[Any]) -> None:
        content = msg.content
        old, new = content.get("ids"), content.get("new_ids")
        if not (
            isinstance(old, list)
            and isinstance(new, list)
            and len(old) == len(new)
            and all(isinstance(i, str) for i in old + new)
        ):
            raise ProtocolError("resubmit_request needs lists ids and new_ids of the same length")
        refused = self.scheduler.resubmit(old, new, _ident(msg))
        self._reply(msg, MsgType.RESUBMIT_REPLY, {"resubmitted": len(old) - len(refused)})

    def _send_failures(self) -> None:
        """Answer the tasks the scheduler failed (impossible dependencies, timeouts, aborts)."""
        failures = self.scheduler.take_failures()
        if failures:
            self._answer_errors(failures)

    def _on_connect_request(self, msg: Message, frames: list[Any]) -> None:
        self._reply(msg, MsgType.CONNECT_REPLY, self._describe())

    def _on_queue_request(self, msg: Message, frames: list[Any]) -> None:
        if msg.content.get("brief"):
            # Which engines are up (what views are made of): no queue is counted.
            self._reply(msg, MsgType.QUEUE_REPLY, self._engines_up())
            return
        self._reply(msg, MsgType.QUEUE_REPLY, self._describe())

    def _engines_up(self) -> dict[str, Any]:
        return {
            "engines": sorted(self.scheduler.by_id),
            "starting": len(self.registry.starting) + (self.launcher.starting() if self.launcher else 0),
            "broken": self.launcher.gave_up if self.launcher else None,
        }

    def _on_shutdown_request(self, msg: Message, frames: list[Any]) -> None:
        logger.info("shutdown requested by a client")
        self._shutdown_requests.append(msg)
        self._state = HubState.STOPPING

    def _describe(self) -> QueueStatus:
        up = self._engines_up()
        return {
            **self.scheduler.status(),
            "engine_pids": {str(r.engine_id): r.pid for r in self.registry},
            "scheme": self.scheduler.scheme,
            "hwm": self.scheduler.hwm,
            "dropped_messages": self.dropped,
            "broken": up["broken"],
            # Engines launched and not taking tasks yet (starting, or running the initializer).
            "starting": up["starting"],
        }

    # -- engines ----------------------------------------------------------

    def _on_register_request(self, msg: Message, frames: list[Any]) -> None:
        ident = _ident(msg)
        content = msg.content
        pid = content.get("pid")
        record = self.registry.get(ident)
        setup = self.engine_setup
        if record is None:
            record = self.registry.register(
                ident, pid if isinstance(pid, int) else None, str(content.get("hostname", ""))
            )
            self.monitor.add(ident)
            logger.info("engine %d registered (pid %s)", record.engine_id, record.pid)
            if not setup:
                self._engine_ready(record)
        reply = self.session.build(
            MsgType.REGISTER_REPLY,
            parent=encode(msg.header),
            content=encode(
                {
                    "engine_id": record.engine_id,
                    "heartbeat_interval": self.settings.heartbeat_interval,
                    "heartbeat_misses": self.settings.heartbeat_misses,
                    "setup": bool(setup),
                }
            ),
            buffers=setup,
        )
        self._send(self.engine_sock, ident, reply)

    def _on_engine_ready(self, msg: Message, frames: list[Any]) -> None:
        """An engine ran its setup (the pool's initializer): it takes tasks now, or it failed."""
        record = self.registry.get(_ident(msg))
        if record is None or record.ready:
            raise ProtocolError("engine_ready from an engine that is not registered, or twice")
        content = msg.content
        if content.get("ok"):
            self._engine_ready(record)
            return
        error = str(content.get("error", "the initializer failed"))
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

    def _retire(self, slot: EngineSlot) -> None:
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
        if record.ready:
            stranded = self.scheduler.remove_engine(ident, how, started if departure is Departure.GONE else None)
        else:  # it never took tasks: what waited for it alone may fail now
            self.scheduler.engine_lost(record.engine_id, how)
            stranded = []
        if departure is not Departure.GONE:
            try:
                send_frames(self.heartbeat_sock, [ident, *self.session.build(MsgType.SHUTDOWN_REQUEST)])
            except zmq.ZMQError:
                pass  # it also leaves when heartbeats stop
        if departure is Departure.RETIRED and self.launcher is not None and record.pid is not None:
            self.launcher.retire(record.pid)  # its exit is expected
            if self._state is HubState.RUNNING:
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

    def _on_apply_reply(self, msg: Message, frames: list[Any]) -> None:
        ident = _ident(msg)
        slot = self.scheduler.engines.get(ident)
        batch = Batch(msg.header, msg.buffers, REPLY_COLUMNS)
        if slot is None:
            self.segments.discard(batch, range(len(batch.ids)))
            raise ProtocolError("apply_reply from an engine that is not registered (or was declared dead)")
        ids = batch.ids
        statuses, engine_ids, starts, completions = (batch.columns[name] for name in REPLY_COLUMNS)
        per_client: dict[bytes, list[int]] = {}
        finish = self.scheduler.finish
        for i, task_id in enumerate(ids):
            status = statuses[i]
            task = finish(
                slot,
                task_id,
                status == "ok",
                completions[i] - starts[i],
                unmet=status == "unmet",
                aborted=status == "aborted",
            )
            if task is None:
                logger.warning("engine %d answered task %s it did not hold", slot.engine_id, task_id)
                self.segments.discard(batch, (i,))
                continue
            if not task.final:
                self.segments.discard(batch, (i,))
                continue  # retried, or its functional dependency was unmet there: it runs again
            per_client.setdefault(task.client, []).append(i)
        if slot.budget == 0 and not slot.outstanding:
            self._retire(slot)
        if len(per_client) == 1:  # forwarded whole now, as received (see FORWARD_MAX_AGE_S)
            client, answered = next(iter(per_client.items()))
            if len(answered) == len(ids):
                if not self._send(self.client_sock, client, frames[len(msg.idents) :]):
                    self.segments.discard(batch, answered)
                return
        for client, answered in per_client.items():
            out = BatchWriter(REPLY_COLUMNS)
            for i in answered:
                out.add(ids[i], batch.payload(i), statuses[i], engine_ids[i], starts[i], completions[i])
            if not self._send_reply(client, out):
                self.segments.discard(batch, answered)

    def _send_reply(self, client: bytes, batch: BatchWriter) -> bool:
        frames = self.session.build(MsgType.APPLY_REPLY, batch.fields(), buffers=batch.buffers())
        return self._send(self.client_sock, client, frames)

    def _fail_tasks(self, tasks: list[Task], ename: ErrorName, evalue: str, engine_id: int | None = None) -> None:
        """Answer `tasks` with the same error reply each."""
        self._answer_errors([(task, ename, evalue, engine_id) for task in tasks])

    def _answer_errors(self, failures: list[tuple[Task, ErrorName, str, int | None]]) -> None:
        """Answer each ``(task, ename, evalue, engine_id)`` with an error reply: one message per client."""
        now = time.time()
        per_client: dict[bytes, BatchWriter] = {}
        for task, ename, evalue, engine_id in failures:
            out = per_client.get(task.client)
            if out is None:
                out = per_client[task.client] = BatchWriter(REPLY_COLUMNS)
            error = encode(error_reply(ename, evalue, engine_id=engine_id))
            out.add(task.task_id, [error], TaskStatus.ERROR.value, engine_id, now, now)
        for client, out in per_client.items():
            self._send_reply(client, out)

    def _dispatch(self) -> None:
        for slot, tasks in self.scheduler.assign().items():
            source = tasks[0].source
            if (
                source is not None
                and len(tasks) == source.count
                and all(t.source is source for t in tasks)
                and time.monotonic() - source.received < FORWARD_MAX_AGE_S
            ):
                frames = source.frames
            else:
                out = BatchWriter()
                for t in tasks:
                    out.add(t.task_id, t.frames)
                frames = self.session.build(MsgType.APPLY_REQUEST, out.fields(), buffers=out.buffers())
            for t in tasks:
                t.source = None  # frames stay until the reply: a retry may need them
            if not self._send(self.engine_sock, slot.ident, frames):
                self._unreachable(slot.ident)
        for slot, task_ids in self.scheduler.recalls().items():
            self._recall(slot, task_ids)

    def _recall(self, slot: EngineSlot, task_ids: list[str]) -> None:
        """Ask an engine to give back tasks it has not started (its heartbeat thread answers, even mid-task)."""
        self.scheduler.ask_back(slot, task_ids)
        recall = self.session.build(MsgType.RECALL_REQUEST, content=encode({"ids": task_ids}))
        try:
            send_frames(self.heartbeat_sock, [slot.ident, *recall])
        except zmq.ZMQError:
            slot.recalling.difference_update(task_ids)  # gone: its death is noticed elsewhere

    def _on_recall_reply(self, msg: Message, frames: list[Any]) -> None:
        content = msg.content
        given, asked = content.get("recalled"), content.get("ids")
        for value in (given, asked):
            if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
                raise ProtocolError("recall_reply without lists of task ids")
        slot = self.scheduler.engines.get(_ident(msg))
        if slot is not None:
            self.scheduler.recalled(slot, cast("list[str]", given), cast("list[str]", asked))
            self._send_failures()  # aborted meanwhile

    def _unreachable(self, ident: bytes) -> None:
        """A send to an engine failed: its socket is gone, usually because its process just died.

        The process closes its sockets an instant before it can be reaped:
        wait for that instant, so that its tasks fail saying how it ended
        (``SIGKILL``, an exit code), not merely that it could not be reached.
        """
        record = self.registry.get(ident)
        if record is not None and record.pid is not None and self.launcher is not None:
            self.launcher.wait_exit(record.pid, UNREACHABLE_WAIT_S)
            self._watch_processes()
        self._engine_gone(ident, "could not be reached")

    def _on_heartbeat_reply(self, msg: Message, frames: list[Any]) -> None:
        beat = msg.header.get("beat")
        if isinstance(beat, int):
            self.monitor.pong(_ident(msg), beat)

    def _beat(self) -> None:
        beat, dead = self.monitor.tick()
        for ident in dead:
            record = self.registry.get(ident)
            if record is not None and record.pid is not None and self.launcher is not None:
                self.launcher.kill(record.pid)
            self._engine_gone(ident, f"stopped answering heartbeats ({self.monitor.max_misses} missed)")
        ping = self.session.build(MsgType.HEARTBEAT_REQUEST, {"beat": beat})
        for record in self.registry:
            try:
                send_frames(self.heartbeat_sock, [record.ident, *ping])
            except zmq.ZMQError:
                pass  # not connected yet, or gone: the miss count decides

    def _watch_processes(self) -> None:
        if self.parent is not None and not self.parent.alive():
            logger.warning("parent process %d is gone; shutting down", self.parent.parent_pid)
            self._state = HubState.STOPPING
            return
        if self.launcher is None:
            return
        self.launcher.tick()
        self.scheduler.set_more_coming(self.launcher.starting() > 0)
        for pid, how, registered, retired in self.launcher.reap():
            if self.info.shm_prefix:
                # The segments it kept for reuse: nobody else would remove them before the cluster ends.
                _shm.remove_kept(self.info.shm_prefix, "e", pid)
            if retired:
                continue  # its replacement started when it was retired
            record = self.registry.of_pid(pid)
            if record is not None:
                self._engine_gone(record.ident, f"died from {how}" if how.startswith("SIG") else f"exited with {how}")
            elif not registered:
                logger.error("engine process %d ended (%s) before it was ready", pid, how)
            if self._state is HubState.RUNNING:
                self.launcher.start(1)
        if self.launcher.gave_up and not self.scheduler.engines and self.scheduler.queued():
            stranded = self.scheduler.drop_where(lambda task: True)
            self._fail_tasks(stranded, ErrorName.BROKEN_POOL, f"no engine can start: {self.launcher.gave_up}")
            self._send_failures()

    def _engine_gone(self, ident: bytes, how: str) -> None:
        """Engine `ident` died or cannot be reached: forget it, and fail the tasks it held."""
        if ident not in self.registry:
            return
        if not self._reading_engines:
            # Replies it sent before it died, already here, count: read them first.
            self._reading_engines = True
            try:
                self._drain(self.engine_sock)
            finally:
                self._reading_engines = False
        record = self.registry.get(ident)
        if record is None:
            return
        # Which task it was running (its run slot): those queued behind it are placed again.
        started = self._last_started(record.pid)
        stranded = self.forget(ident, how, started=started)
        self._send_failures()
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
            self._fail_tasks([task], ErrorName.ENGINE_ERROR, text, record.engine_id)

    # -- shutdown ---------------------------------------------------------

    def _stop(self) -> None:
        bye = self.session.build(MsgType.SHUTDOWN_REQUEST)
        for record in self.registry:
            try:
                send_frames(self.heartbeat_sock, [record.ident, *bye])
            except zmq.ZMQError:
                pass
        if self.launcher is not None:
            self.launcher.stop(timeout=2.0)
        for msg in self._shutdown_requests:
            self._reply(msg, MsgType.SHUTDOWN_REPLY, {"status": "ok"})
        self._state = HubState.STOPPED
        self.client_sock.close(linger=500)
        self.engine_sock.close(linger=0)
        self.heartbeat_sock.close(linger=1000)
        self.ctx.term()
        if self.info.shm_prefix:
            _shm.remove_all(self.info.shm_prefix)


def _ident(msg: Message) -> bytes:
    if not msg.idents:
        raise ProtocolError("message without a routing identity")
    frame = msg.idents[0]
    return frame if isinstance(frame, bytes) else frame.bytes
