"""The controller's event loop: sockets, message handlers, routing.

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

The engines' lifecycle (registry, heartbeats, local processes and the
parent, each engine's departure and the tasks it leaves behind) is kept by
:class:`~zpool.controller.engines.EngineKeeper`, which calls back through
the hub's :class:`~zpool.controller.engines.HubLink` methods (``running``,
``stop``, ``drain_engines``, ``signal``, ``fail_tasks``, ``send_failures``).
Shared-memory segments are counted in :mod:`zpool.controller.segments`.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import time
from typing import Any, Callable, Mapping, cast

import zmq

from zpool import _shm
from zpool._settings import ControllerSettings
from zpool._stream import SCHEME as DIRECT_SCHEME
from zpool._transport import CurveKeys, host_id, is_tcp, server_socket, tcp_address
from zpool._wire import ErrorName, QueueStatus, Roster, error_reply
from zpool.controller.curve import CurveGuard
from zpool.controller.engines import EngineKeeper
from zpool.controller.flags import Flags, parse_flags
from zpool.controller.launcher import LocalEngines
from zpool.controller.registry import EngineRegistry
from zpool.controller.remote import RemoteEngines
from zpool.controller.scheduler import EngineSlot, Scheduler, Task
from zpool.controller.segments import SegmentLedger
from zpool.controller.taskdb import MAX_RESULT_BYTES, Query, TaskDB, client_of
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

__all__ = ["Hub"]

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
# Clients whose finished tasks are counted (zpool status): the newest so many.
CLIENTS_COUNTED = 10_000


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


class Hub:
    """Sockets and router of one cluster (its engines are kept by :attr:`keeper`)."""

    def __init__(
        self,
        info: ConnectionInfo,
        settings: ControllerSettings,
        engines: LocalEngines | None = None,
        *,
        parent_pid: int | None = None,
        engine_setup: tuple[bytes, ...] = (),
        connection_file: str | None = None,
        db: TaskDB | None = None,
        server_curve: CurveKeys | None = None,
        bind_ip: str | None = None,
        remote: RemoteEngines | None = None,
    ) -> None:
        self.info = info
        # Where TCP endpoints are bound, when not at the address the connection file names (--ip).
        self.bind_ip = bind_ip
        # The task database of a standalone cluster (zpool.controller.taskdb); None: no record kept.
        self.db = db
        # Tasks whose reply other clients asked for while they ran (Pool.get_result): task id -> routes.
        self._watchers: dict[str, list[bytes]] = {}
        # Tasks finished since this controller started, per client (zpool status): [completed, failed].
        self.finished_by_client: dict[str, list[int]] = {}
        self.started = time.time()
        # This machine, as far as shared memory goes (zpool._transport.host_id): engines elsewhere get no segments.
        self.host_id = host_id()
        self.settings = settings
        # A serialized call every engine runs before its first task (the initializer).
        self.engine_setup = engine_setup
        self.session = Session(info.key)
        registry = EngineRegistry()  # shared with the scheduler
        self.scheduler = Scheduler(settings, registry=registry)
        # Shared-memory segments of task arguments, unlinked when their last task is done for good.
        self.segments = SegmentLedger(info.shm_prefix)
        self.scheduler.on_finished = self.segments.release
        self.keeper = EngineKeeper(
            self,
            registry,
            self.scheduler,
            settings,
            self.session,
            engines,
            remote=remote,
            parent_pid=parent_pid,
            setup=bool(engine_setup),
            connection_file=connection_file,
            shm_prefix=info.shm_prefix,
        )
        self.dropped = 0
        # Clients that asked where engines take pushed tasks (their own sockets): told when that changes.
        self.pushers: set[bytes] = set()
        self._state = HubState.RUNNING
        self._shutdown_requests: list[Message] = []
        # What the engines it started print, read from their pipes (None: they write to our terminal).
        self.output = engines.output if engines is not None else None
        if self.output is not None:
            self.output.owner = self._owner
            self.output.send = self._send_stream

        self.ctx = zmq.Context()
        # CURVE on TCP (zpool._transport): the server's keys, a ZAP handler admitting the cluster's
        # member key only, and monitors that log failed handshakes (a wrong key shows nowhere else).
        self.server_curve = server_curve
        self.guard: CurveGuard | None = None
        if server_curve is not None:
            if info.curve is None:
                raise ValueError("the controller has CURVE keys but the connection file names no member key")
            self.guard = CurveGuard(self.ctx, info.curve.public)
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
                MsgType.ROSTER_REQUEST.value: self._on_roster_request,
                MsgType.RESULT_REQUEST.value: self._on_result_request,
                MsgType.DB_REQUEST.value: self._on_db_request,
            },
            self.engine_sock: {
                MsgType.REGISTER_REQUEST.value: self._on_register_request,
                MsgType.APPLY_REPLY.value: self._on_apply_reply,
                MsgType.APPLY_REQUEST.value: self._on_pushed_request,
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
        server_socket(sock, address, self.server_curve)
        if self.bind_ip and is_tcp(address):
            address = tcp_address(self.bind_ip, address.rsplit(":", 1)[1])
        if self.guard is not None:
            self.guard.watch(sock, address)
        sock.bind(address)
        return sock

    # -- loop -------------------------------------------------------------

    def run(self) -> None:
        """Serve until shut down or until the parent process disappears."""
        poller = zmq.Poller()
        for sock in self._handlers:
            poller.register(sock, zmq.POLLIN)
        db_fd = -1
        if self.db is not None:
            db_fd = self.db.wake_fd
            poller.register(db_fd, zmq.POLLIN)
        guard = self.guard
        if guard is not None:
            for monitor in guard.monitors:
                poller.register(monitor, zmq.POLLIN)
        output = self.output
        polled: set[int] = set()  # the engines' output pipes watched
        interval = self.settings.heartbeat_interval
        next_beat = time.monotonic() + interval
        next_watch = 0.0
        try:
            while self.running:
                now = time.monotonic()
                wake = min(next_beat, next_watch)
                deadline = self.scheduler.next_deadline()
                if deadline is not None:
                    wake = min(wake, deadline)
                timeout_ms = math.ceil(max(0.0, wake - now) * 1000)
                if output is not None and output.changed:
                    polled = _watch_pipes(poller, polled, output.fds())
                for sock, _ in poller.poll(timeout_ms):
                    if sock == db_fd:
                        self._db_answered()
                    elif guard is not None and sock in guard.monitors:
                        guard.read(sock)
                    elif type(sock) is int:
                        output.read(sock)  # type: ignore[union-attr]
                    else:
                        self._drain(sock)
                if output is not None:
                    output.flush()
                if deadline is not None:
                    self.scheduler.expire()
                # Whatever the scheduler failed meanwhile (a cascade after a reply, an
                # engine's death, a timeout) is answered before anything new is placed.
                self.send_failures()
                self._dispatch()
                now = time.monotonic()
                if now >= next_watch:
                    next_watch = now + WATCH_INTERVAL_S
                    self.keeper.watch()
                if now >= next_beat:
                    next_beat = now + interval
                    self.keeper.beat()
        finally:
            self._close()

    # -- what the engine keeper asks (HubLink) -----------------------------

    @property
    def running(self) -> bool:
        """Whether the loop still serves (not stopping or stopped)."""
        return self._state is HubState.RUNNING

    def stop(self) -> None:
        """Leave the loop after this pass (then :meth:`_close` ends the engines and the sockets)."""
        self._state = HubState.STOPPING

    def drain_engines(self) -> None:
        """Handle what the engine socket holds now."""
        self._drain(self.engine_sock)

    def signal(self, ident: bytes, frames: list[Any]) -> bool:
        """Send `frames` to engine `ident`'s heartbeat thread (which answers even mid-task); False if gone."""
        try:
            send_frames(self.heartbeat_sock, [ident, *frames])
        except zmq.ZMQError:
            return False
        return True

    def engine_output(self, pid: int | None, ended: bool) -> str:
        """Send what engine `pid` printed so far (all of it if it `ended`); its last lines on stderr."""
        if self.output is None:
            return ""
        if ended:
            tail = self.output.closed(pid)
        else:
            self.output.read_pid(pid)
            tail = ""
        self.output.flush()
        return tail

    def _owner(self, task_id: str) -> bytes | None:
        task = self.scheduler.live.get(task_id)
        return task.client if task is not None else None

    def _send_stream(self, route: bytes, content: dict[str, Any]) -> bool:
        frames = self.session.build(MsgType.STREAM, content=encode(content))
        try:
            send_frames(self.client_sock, [route, *frames])
        except zmq.ZMQError:  # the client left
            return False
        return True

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
        if not self.scheduler.engines and self.keeper.gave_up:
            self.fail_tasks(tasks, ErrorName.BROKEN_POOL, f"no engine can start: {self.keeper.gave_up}")
            for task in tasks:
                self.segments.release(task)
            return
        source = _Source(frames[len(msg.idents) :], len(tasks), time.monotonic())
        for task in tasks:
            task.source = source
        if self.db is not None:
            self._record_submitted(tasks)
        self.scheduler.submit(tasks)
        self.send_failures()

    def _on_abort_request(self, msg: Message, frames: list[Any]) -> None:
        ids = msg.content.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ProtocolError("abort_request without a list of task ids")
        self.send_failures()  # earlier failures are not this abort's
        aborted, placed = self.scheduler.abort(ids)
        self.send_failures()
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
        content = {"purged": forgotten, "not_finished": live}
        if self.db is None:
            self._reply(msg, MsgType.PURGE_REPLY, content)
        else:  # the records too (answered by _db_answered)
            self.db.ask((MsgType.PURGE_REPLY, msg, content), "purge", ids)

    def _on_client_ping(self, msg: Message, frames: list[Any]) -> None:
        """A client waiting for work checks that this controller still answers."""
        self._reply(msg, MsgType.HEARTBEAT_REPLY, {})

    def _on_interrupt_request(self, msg: Message, frames: list[Any]) -> None:
        wanted = msg.content.get("engines")
        if not isinstance(wanted, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in wanted):
            raise ProtocolError("interrupt_request without a list of engine ids")
        sent, unknown = [], []
        for engine_id in wanted:
            record = self.keeper.registry.of_id(engine_id)
            if record is None:
                unknown.append(engine_id)
            elif self._interrupt(record.ident, None):
                sent.append(engine_id)
        self._reply(msg, MsgType.INTERRUPT_REPLY, {"engines": sent, "unknown": unknown})

    def _interrupt(self, ident: bytes, task_ids: list[str] | None) -> bool:
        """Ask an engine's heartbeat thread to interrupt its running task (one of `task_ids`, if given)."""
        content = {} if task_ids is None else {"ids": task_ids}
        # False if it is gone: its death is noticed elsewhere.
        return self.signal(ident, self.session.build(MsgType.INTERRUPT_REQUEST, content))

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
        client = _ident(msg)
        if self.db is not None:
            # Calls the scheduler no longer keeps come from the task database (answered by _db_answered).
            recorded = [(o, n) for o, n in zip(old, new) if self.scheduler.records.call(o) is None]
            if recorded:
                self.db.ask(("resubmit", client, recorded), "calls", [o for o, _ in recorded])
                from_db = {n for _, n in recorded}
                old, new = [o for o, n in zip(old, new) if n not in from_db], [n for n in new if n not in from_db]
        fresh = self.scheduler.resubmit(old, new, client, accept=self._record_submitted if self.db else None)
        self._reply(msg, MsgType.RESUBMIT_REPLY, {"resubmitted": fresh})

    # -- the task database (standalone clusters) -------------------------------

    def _record_submitted(self, tasks: list[Task]) -> None:
        """Record new tasks in the task database (their calls too, unless they refer to shared memory)."""
        now = time.time()
        encoded: dict[int, str] = {}  # a run of tasks shares one Flags
        rows = []
        for task in tasks:
            flags = task.flags
            text = None
            if flags is not None:
                text = encoded.get(id(flags))
                if text is None:
                    text = encoded[id(flags)] = json.dumps(flags.to_wire())
            frames = task.frames
            rows.append((task.task_id, now, text, None if frames and _shm.is_manifest(frames[0]) else frames))
        self.db.submitted(rows)  # type: ignore[union-attr]

    def _send_watched(self, batch: Batch, watched: list[int]) -> None:
        """Send the replies at `watched` of `batch` to the clients that asked for them (get_result) too."""
        statuses, engine_ids, starts, completions = (batch.columns[name] for name in REPLY_COLUMNS)
        per_route: dict[bytes, BatchWriter] = {}
        for i in watched:
            task_id = batch.ids[i]
            for route in self._watchers.pop(task_id, ()):
                out = per_route.get(route)
                if out is None:
                    out = per_route[route] = BatchWriter(REPLY_COLUMNS)
                out.add(task_id, batch.payload(i), statuses[i], engine_ids[i], starts[i], completions[i])
        for route, out in per_route.items():
            self._send_reply(route, out)

    def _on_result_request(self, msg: Message, frames: list[Any]) -> None:
        """A client asks for tasks' replies by id (its own or another client's): sent as they are known."""
        ids = msg.content.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ProtocolError("result_request without a list of task ids")
        route = _ident(msg)
        if self.db is None:
            self._answer_unknown(
                route,
                ids,
                "this cluster keeps no task database: a Pool's own cluster gives each result only to the pool"
                " that submitted it. Start a standalone cluster (zpool cluster start) to fetch results by id",
            )
            self._reply(msg, MsgType.RESULT_REPLY, {"running": 0, "recorded": 0})
            return
        live = self.scheduler.live
        running = [i for i in ids if i in live]
        for task_id in running:
            self._watchers.setdefault(task_id, []).append(route)
        recorded = [i for i in ids if i not in live]
        if recorded:  # asked after the writes queued before: a task finished by now is recorded
            self.db.ask(("fetch", route, recorded), "fetch", recorded)
        self._reply(msg, MsgType.RESULT_REPLY, {"running": len(running), "recorded": len(recorded)})

    def _answer_unknown(self, route: bytes, ids: list[str], why: str) -> None:
        now = time.time()
        out = BatchWriter(REPLY_COLUMNS)
        for task_id in ids:
            error = encode(error_reply(ErrorName.UNKNOWN_TASK, why))
            out.add(task_id, [error], TaskStatus.ERROR.value, None, now, now)
        self._send_reply(route, out)

    def _on_db_request(self, msg: Message, frames: list[Any]) -> None:
        """A question for the task database: ``query`` (records) or ``stats`` (counts)."""
        op = msg.content.get("op")
        if self.db is None:
            self._reply(
                msg,
                MsgType.DB_REPLY,
                {"error": "this cluster keeps no task database (start a standalone cluster: zpool cluster start)"},
            )
            return
        if op == "query":
            try:
                question: Any = Query(msg.content.get("query"))
            except ValueError as exc:
                self._reply(msg, MsgType.DB_REPLY, {"error": str(exc)})
                return
        elif op == "stats":
            question = None
        else:
            raise ProtocolError(f"db_request with an unknown op {op!r}")
        self.db.ask((MsgType.DB_REPLY, msg, {}), op, question)

    def _db_answered(self) -> None:
        """Send on what the task database answered."""
        for token, answer in self.db.answers():  # type: ignore[union-attr]
            kind = token[0]
            if kind == "fetch":
                self._send_fetched(token[1], token[2], answer)
            elif kind == "resubmit":
                self._resubmit_recorded(token[1], token[2], answer)
            else:
                msg_type, msg, content = token
                if isinstance(answer, Exception):
                    content = {"error": f"the task database failed: {type(answer).__name__}: {answer}"}
                elif msg_type is MsgType.PURGE_REPLY:
                    content = {**content, "purged": max(content["purged"], answer)}
                elif msg_type is MsgType.QUEUE_REPLY:
                    content = {**content, "db": answer}
                elif isinstance(answer, list):  # query: records of tasks still live say where they are
                    live = self.scheduler.live
                    for record in answer:
                        task = live.get(record["id"]) if record["status"] == "pending" else None
                        if task is not None and task.engine is not None:
                            record["engine"] = task.engine.engine_id
                    content = {"records": answer}
                else:
                    content = {"stats": answer}
                self._reply(msg, msg_type, content)

    def _send_fetched(self, route: bytes, ids: list[str], found: Any) -> None:
        """Send a client the recorded replies it asked for (get_result); an error for those there are not."""
        failed = ""
        if isinstance(found, Exception):
            failed = f"the task database failed: {type(found).__name__}: {found}"
            logger.error("%s", failed)
            found = {}
        now = time.time()
        out = BatchWriter(REPLY_COLUMNS)
        for task_id in ids:
            record = found.get(task_id)
            engine = None
            if record is None:
                why = failed or (
                    f"there is no task {task_id} in this cluster's task database: never submitted, or purged"
                )
            else:
                status, engine, started, completed, frames, size = record
                if frames is not None and status not in ("pending", "lost"):
                    out.add(task_id, frames, status, engine, started, completed)
                    continue
                if status == "lost":
                    why = f"task {task_id}'s controller stopped before the task finished: its result is lost"
                elif status == "pending":  # (not live here: its end was not recorded)
                    why = f"task {task_id} has no recorded result"
                else:
                    why = (
                        f"the result of task {task_id} was {size} bytes, more than the task database keeps"
                        f" ({MAX_RESULT_BYTES >> 20} MiB)"
                    )
            error = encode(error_reply(ErrorName.UNKNOWN_TASK, why, engine_id=engine))
            out.add(task_id, [error], TaskStatus.ERROR.value, engine, now, now)
        if out:
            self._send_reply(route, out)

    def _resubmit_recorded(self, client: bytes, pairs: list[tuple[str, str]], found: Any) -> None:
        """Run again the recorded calls of finished tasks, under their new ids (or fail them, saying why)."""
        if isinstance(found, Exception):
            logger.error("the task database failed: %s: %s", type(found).__name__, found)
            found = {}
        fresh: list[Task] = []
        failed: list[tuple[Task, ErrorName, str, int | None]] = []
        for old, new in pairs:
            record = found.get(old)
            why = None
            if record is None:
                why = f"there is no task {old} in this cluster's task database: never submitted, or purged"
            else:
                status, call, flags, size = record
                if status in ("pending", "lost") and old in self.scheduler.live:
                    why = f"task {old} has not finished yet; resubmit runs finished tasks again"
                elif call is None:
                    why = (
                        f"the call of task {old} ({size} bytes) is not kept: its arguments went through shared"
                        " memory, or it was larger than the task database keeps; submit it anew"
                    )
            if why is not None:
                failed.append((Task(new, client, []), ErrorName.INVALID_DEPENDENCY, why, None))
                continue
            parsed = Flags.check(json.loads(flags)) if flags else None
            fresh.append(Task(new, client, call, parsed))
        if failed:
            self._answer_errors(failed)
        if fresh:
            self._record_submitted(fresh)
            self.scheduler.submit(fresh)
            self.send_failures()

    def send_failures(self) -> None:
        """Answer the tasks the scheduler failed (impossible dependencies, timeouts, aborts)."""
        failures = self.scheduler.take_failures()
        if failures:
            self._answer_errors(failures)

    def _on_connect_request(self, msg: Message, frames: list[Any]) -> None:
        if self.output is not None:
            self.output.connected(_ident(msg))  # the engines' own output goes there too
        self._reply(msg, MsgType.CONNECT_REPLY, self._describe())

    def _on_queue_request(self, msg: Message, frames: list[Any]) -> None:
        if msg.content.get("brief"):
            # Which engines are up (what views are made of): no queue is counted.
            self._reply(msg, MsgType.QUEUE_REPLY, self._engines_up())
            return
        status: dict[str, Any] = dict(self._describe())
        if msg.content.get("detail"):  # zpool status
            status.update(self._detail())
            if self.db is not None:  # the task database's counts too (answered by _db_answered)
                self.db.ask((MsgType.QUEUE_REPLY, msg, status), "stats", None)
                return
        self._reply(msg, MsgType.QUEUE_REPLY, status)

    def _count_client(self, task_id: str) -> list[int]:
        """The counters of a client not counted yet (the newest :data:`CLIENTS_COUNTED` are kept)."""
        counted = self.finished_by_client
        if len(counted) >= CLIENTS_COUNTED:
            del counted[next(iter(counted))]
        counts = counted[client_of(task_id)] = [0, 0]
        return counts

    def _detail(self) -> dict[str, Any]:
        """What ``zpool status`` shows beyond the queues: each engine, and each client's tasks."""
        engines = [
            {
                "id": r.engine_id,
                "pid": r.pid,
                "host": r.hostname,
                "host_id": r.host_id,
                "rank": r.rank,
                "registered": r.registered,
                "ready": r.ready,
                "direct": bool(r.direct),
            }
            for r in sorted(self.keeper.registry, key=lambda r: r.engine_id)
        ]
        clients: dict[str, dict[str, int]] = {}
        # An engine runs its tasks in the order given: the first it holds runs (as its queue status says).
        running = {next(iter(slot.outstanding)) for slot in self.scheduler.engines.values() if slot.outstanding}
        for task_id in self.scheduler.live:
            counts = clients.get(client_of(task_id))
            if counts is None:
                counts = clients[client_of(task_id)] = {"queued": 0, "running": 0, "completed": 0, "failed": 0}
            counts["running" if task_id in running else "queued"] += 1
        for client, (completed, failed) in self.finished_by_client.items():
            counts = clients.setdefault(client, {"queued": 0, "running": 0, "completed": 0, "failed": 0})
            counts["completed"], counts["failed"] = completed, failed
        remote = self.keeper.remote
        return {
            "engine_detail": engines,
            "clients": clients,
            "controller_started": self.started,
            "time": time.time(),
            "launcher": remote.describe() if remote is not None else None,
        }

    def _engines_up(self) -> dict[str, Any]:
        registry = self.keeper.registry
        return {
            "engines": sorted(self.scheduler.by_id),
            # Where each runs: host name and launcher rank (MPI, Slurm; None elsewhere), for views and metadata.
            "where": {str(r.engine_id): [r.hostname, r.rank] for r in registry if r.ready},
            "starting": self.keeper.starting(),
            "broken": self.keeper.gave_up,
        }

    def _refuse_engine(self, msg: Message, pid: Any, hostname: str) -> None:
        """An engine that does not share this machine's ``/dev/shm`` asked to join a cluster that uses it: refused."""
        why = (
            f"engine pid {pid} on {hostname or 'an unnamed host'} does not share the controller's /dev/shm (another"
            " host identity: another machine, container or mount namespace); this cluster passes data through"
            " shared memory and Unix sockets, so it takes engines of its own machine only. Start the cluster on"
            " TCP (zpool cluster start --ip ADDRESS) for engines elsewhere"
        )
        logger.error("refused an engine: %s", why)
        reply = self.session.build(MsgType.REGISTER_REPLY, parent=encode(msg.header), content=encode({"refused": why}))
        self._send(self.engine_sock, _ident(msg), reply)

    def _on_shutdown_request(self, msg: Message, frames: list[Any]) -> None:
        logger.info("shutdown requested by a client")
        self._shutdown_requests.append(msg)
        self.stop()

    def _describe(self) -> QueueStatus:
        up = self._engines_up()
        return {
            **self.scheduler.status(),
            "engine_pids": {str(r.engine_id): r.pid for r in self.keeper.registry},
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
        pid, direct = content.get("pid"), content.get("direct")
        engine_host = str(content.get("host_id", ""))[:64]
        if self.info.shm_prefix and engine_host and engine_host != self.host_id:
            self._refuse_engine(msg, pid, str(content.get("hostname", "")))
            return
        known = self.keeper.registry.get(ident) is not None  # (an engine asking again, after a silence)
        record = self.keeper.register(
            ident,
            pid if isinstance(pid, int) else None,
            str(content.get("hostname", "")),
            direct if isinstance(direct, str) and direct.startswith(DIRECT_SCHEME) else None,
        )
        record.host_id = engine_host
        rank = content.get("rank")
        record.rank = rank if isinstance(rank, int) and not isinstance(rank, bool) else None
        if self.output is not None:
            self.output.registered(record.pid, record.engine_id)
        setup = self.engine_setup
        reply = self.session.build(
            MsgType.REGISTER_REPLY,
            parent=encode(msg.header),
            content=encode(
                {
                    "engine_id": record.engine_id,
                    "heartbeat_interval": self.settings.heartbeat_interval,
                    "heartbeat_misses": self.settings.heartbeat_misses,
                    "setup": bool(setup),
                    # Results stay in the reply (not shared memory) where the task database keeps them.
                    "inline_results": self.db is not None,
                    "known": known,
                }
            ),
            buffers=setup,
        )
        self._send(self.engine_sock, ident, reply)

    def _on_engine_ready(self, msg: Message, frames: list[Any]) -> None:
        """An engine ran its setup (the pool's initializer): it takes tasks now, or it failed."""
        content = msg.content
        error = str(content.get("error", "the initializer failed"))
        self.keeper.setup_done(_ident(msg), bool(content.get("ok")), error)

    # -- the direct path --------------------------------------------------

    def _on_roster_request(self, msg: Message, frames: list[Any]) -> None:
        """A client's own socket asks where to push tasks: told now, and whenever that changes."""
        route = _ident(msg)
        self.pushers.add(route)
        self._send_roster(route, {"engines": self._roster()})

    def _roster(self) -> dict[str, str]:
        return {str(r.engine_id): r.direct for r in self.keeper.registry if r.ready and r.direct}

    def _send_roster(self, route: bytes, content: Roster) -> None:
        if not self._send(self.client_sock, route, self.session.build(MsgType.ROSTER_NOTICE, content=encode(content))):
            self.pushers.discard(route)  # gone

    def roster_changed(
        self,
        gone: int | None = None,
        known: dict[bytes, list[str]] | None = None,
        started: str | None = None,
        why: str | None = None,
    ) -> None:
        """Tell the clients that push tasks which engines take them now; for engine `gone`, which of theirs it held.

        `started`: the last task it started ("": none; None: not known), so that a client can tell
        the tasks it pushed there that never started (and send them again) from the one that did.
        `why`: what became of it, for the client's error about tasks that did start there.
        """
        engines = self._roster()
        for route in list(self.pushers):
            content: Roster = {"engines": engines}
            if gone is not None:
                content["gone"] = {str(gone): (known or {}).get(route, [])}
                if started is not None:
                    content["started"] = {str(gone): started}
                if why:
                    content["why"] = {str(gone): why}
            self._send_roster(route, content)

    def _on_pushed_request(self, msg: Message, frames: list[Any]) -> None:
        """An engine passes on tasks a client pushed to it, before running them: they are placed there."""
        slot = self.scheduler.engines.get(_ident(msg))
        if slot is None or not msg.header.get("pushed"):
            raise ProtocolError("pushed tasks from an engine that is not ready, or not marked pushed")
        batch = Batch(msg.header, msg.buffers)
        tasks = [Task(task_id, route, batch.payload(i)) for i, task_id, route in _with_routes(msg.header, batch.ids)]
        if self.db is not None:
            self._record_submitted(tasks)
        self.scheduler.adopt(slot, tasks)
        live = self.scheduler.live
        aborted = [t.task_id for t in tasks if t.abort_asked and live.get(t.task_id) is t]
        if aborted:  # aborted before the controller knew them: the engine answers them so, unrun
            self._send(self.engine_sock, slot.ident, self.session.build(MsgType.ABORT_REQUEST, {"ids": aborted}))
        self.send_failures()

    def _on_apply_reply(self, msg: Message, frames: list[Any]) -> None:
        ident = _ident(msg)
        slot = self.scheduler.engines.get(ident)
        if msg.header.get("printed"):
            # Some of the tasks answered wrote output, which is in its pipe (END before the reply): it goes first.
            self._read_output(ident)
        batch = Batch(msg.header, msg.buffers, REPLY_COLUMNS)
        # Replies to pushed tasks went to their client already: recorded here, not forwarded, and their
        # results' segments are the client's.
        pushed = bool(msg.header.get("pushed"))
        if slot is None:
            if not pushed:
                self.segments.discard(batch, range(len(batch.ids)))
            raise ProtocolError("apply_reply from an engine that is not registered (or was declared dead)")
        ids = batch.ids
        statuses, engine_ids, starts, completions = (batch.columns[name] for name in REPLY_COLUMNS)
        per_client: dict[bytes, list[int]] = {}
        finish = self.scheduler.finish
        # What the task database records, and what clients other than the owner asked for (get_result).
        records: list[tuple[str, str, int | None, float, float, list[Any]]] | None = [] if self.db else None
        watchers = self._watchers
        watched: list[int] = []
        finished_by_client = self.finished_by_client
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
                if not pushed:
                    self.segments.discard(batch, (i,))
                continue
            if task.final:
                counts = finished_by_client.get(task_id.partition("-")[0])
                if counts is None:
                    counts = self._count_client(task_id)
                counts[status != "ok"] += 1
                if records is not None:
                    records.append((task_id, status, engine_ids[i], starts[i], completions[i], batch.payload(i)))
                if watchers and task_id in watchers:
                    watched.append(i)
            if pushed:
                continue  # answered by its engine
            if not task.final:
                self.segments.discard(batch, (i,))
                continue  # retried, or its functional dependency was unmet there: it runs again
            per_client.setdefault(task.client, []).append(i)
        if slot.budget == 0 and not slot.outstanding:
            self.keeper.retire(slot)
        if records:
            self.db.finished(records)  # type: ignore[union-attr]
        if watched:
            self._send_watched(batch, watched)
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

    def _read_output(self, ident: bytes) -> None:
        if self.output is not None:
            record = self.keeper.registry.get(ident)
            if record is not None:
                self.engine_output(record.pid, ended=False)

    def _send_reply(self, client: bytes, batch: BatchWriter) -> bool:
        frames = self.session.build(MsgType.APPLY_REPLY, batch.fields(), buffers=batch.buffers())
        return self._send(self.client_sock, client, frames)

    def fail_tasks(self, tasks: list[Task], ename: ErrorName, evalue: str, engine_id: int | None = None) -> None:
        """Answer `tasks` with the same error reply each."""
        self._answer_errors([(task, ename, evalue, engine_id) for task in tasks])

    def _answer_errors(self, failures: list[tuple[Task, ErrorName, str, int | None]]) -> None:
        """Answer each ``(task, ename, evalue, engine_id)`` with an error reply: one message per client."""
        now = time.time()
        per_client: dict[bytes, BatchWriter] = {}
        records: list[tuple[str, str, int | None, float, float, list[Any]]] = []
        watchers = self._watchers
        for task, ename, evalue, engine_id in failures:
            out = per_client.get(task.client)
            if out is None:
                out = per_client[task.client] = BatchWriter(REPLY_COLUMNS)
            error = encode(error_reply(ename, evalue, engine_id=engine_id))
            out.add(task.task_id, [error], TaskStatus.ERROR.value, engine_id, now, now)
            (self.finished_by_client.get(client_of(task.task_id)) or self._count_client(task.task_id))[1] += 1
            if self.db is not None:
                records.append((task.task_id, TaskStatus.ERROR.value, engine_id, now, now, [error]))
            if watchers and task.task_id in watchers:
                for route in watchers.pop(task.task_id):
                    watcher = per_client.get(route)
                    if watcher is None:
                        watcher = per_client[route] = BatchWriter(REPLY_COLUMNS)
                    watcher.add(task.task_id, [error], TaskStatus.ERROR.value, engine_id, now, now)
        if records:
            self.db.finished(records)  # type: ignore[union-attr]
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
                self.keeper.unreachable(slot.ident)
        for slot, task_ids in self.scheduler.recalls().items():
            self._recall(slot, task_ids)

    def _recall(self, slot: EngineSlot, task_ids: list[str]) -> None:
        """Ask an engine to give back tasks it has not started (its heartbeat thread answers, even mid-task)."""
        self.scheduler.ask_back(slot, task_ids)
        recall = self.session.build(MsgType.RECALL_REQUEST, content=encode({"ids": task_ids}))
        if not self.signal(slot.ident, recall):
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
            self.send_failures()  # aborted meanwhile

    def _on_heartbeat_reply(self, msg: Message, frames: list[Any]) -> None:
        beat = msg.header.get("beat")
        if isinstance(beat, int):
            self.keeper.monitor.pong(_ident(msg), beat)

    # -- shutdown ---------------------------------------------------------

    def _close(self) -> None:
        self.keeper.close()
        if self.db is not None:
            self.db.close()
        if self.output is not None:
            self.output.close()  # what the engines wrote last, to whoever still listens
        for msg in self._shutdown_requests:
            self._reply(msg, MsgType.SHUTDOWN_REPLY, {"status": "ok"})
        self._state = HubState.STOPPED
        self.client_sock.close(linger=500)
        self.engine_sock.close(linger=0)
        self.heartbeat_sock.close(linger=1000)
        if self.guard is not None:
            self.guard.close()
        self.ctx.term()
        if self.info.shm_prefix:
            _shm.remove_all(self.info.shm_prefix)


def _watch_pipes(poller: zmq.Poller, polled: set[int], fds: list[int]) -> set[int]:
    """Make `poller` watch exactly the pipes `fds` (it watched `polled`); the set it watches now."""
    now = set(fds)
    for fd in polled - now:
        poller.unregister(fd)
    for fd in now - polled:
        poller.register(fd, zmq.POLLIN)
    return now


def _with_routes(header: dict[str, Any], ids: list[str]) -> list[tuple[int, str, bytes]]:
    """Each pushed task's index, id and client route: one request's ``route``, or a merged one's ``routes``.

    An engine merges the requests it passes on (``zpool.engine.pushed``):
    ``routes`` lists runs of ``[route (hex), number of tasks]``, in order.
    """
    try:
        runs = header.get("routes")
        if runs is None:
            runs = [[header.get("route"), len(ids)]]
        if not isinstance(runs, list):
            raise ValueError
        out: list[tuple[int, str, bytes]] = []
        for run in runs:
            hexed, count = run
            route = bytes.fromhex(hexed)
            if not route or type(count) is not int or count < 1:
                raise ValueError
            out += [(i, ids[i], route) for i in range(len(out), len(out) + count)]
    except (ValueError, TypeError, IndexError):
        raise ProtocolError("pushed tasks without their clients' routes") from None
    if len(out) != len(ids):
        raise ProtocolError(f"pushed tasks' routes cover {len(out)} of {len(ids)} tasks")
    return out


def _ident(msg: Message) -> bytes:
    if not msg.idents:
        raise ProtocolError("message without a routing identity")
    frame = msg.idents[0]
    return frame if isinstance(frame, bytes) else frame.bytes
