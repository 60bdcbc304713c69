"""An engine: receive task batches, run them, send results back.

::

    controller ──"engine" socket──▶ main thread: verify → deserialize → call → serialize ─┐
               ◀────────────────── replies, coalesced while more work waits ◀─────────────┘
    controller ──"heartbeat" socket──▶ heartbeat thread: answer beats, obey shutdown,
                                       exit when the parent or the controller is gone

The main thread owns the engine socket and runs user code; the heartbeat
thread owns its own socket, so a long task never looks like a dead engine.

Replies are held back while more tasks are waiting and the held replies are
young, then sent as one message: tiny tasks travel many per message both
ways, while a task that took a while is answered at once.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from typing import Any

import zmq

from zpool._process import ParentWatch
from zpool.error import ProtocolError, SerializationError, ZPoolError
from zpool.protocol import ConnectionInfo, Message, MsgType, Session, TaskStatus, decode_batch, encode, encode_batch
from zpool.serialize import callable_name, dumps, loads, loads_call

# The controller may bind after we connect (they start together): retry soon.
RECONNECT_IVL_MS = 10

__all__ = ["Engine"]

logger = logging.getLogger(__name__)

# Replies wait at most this long for company while more tasks are queued.
REPLY_HOLD_S = 0.002
REPLY_BATCH_MAX = 512
REGISTER_TIMEOUT_S = 60.0
# Longest traceback text sent back, in characters (the start and end are kept).
MAX_TRACEBACK_CHARS = 20_000


class Engine:
    """One engine process.

    Parameters
    ----------
    info : ConnectionInfo
        Where the controller listens, and the cluster key.
    parent_pid : int or None
        Exit when this process ends (the controller that launched us).
    """

    def __init__(self, info: ConnectionInfo, parent_pid: int | None = None) -> None:
        self.info = info
        self.session = Session(info.key)
        self.ident = b"engine-" + uuid.uuid4().hex.encode()
        self.engine_id: int | None = None
        self.namespace: dict[str, Any] = {"__name__": "__zpool_engine__"}
        self.parent = ParentWatch(parent_pid) if parent_pid else None
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.ident)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        self.sock.connect(info.engine)
        self.pending: collections.deque[tuple[str, list[Any]]] = collections.deque()
        self.outbox: list[tuple[list[Any], list[Any]]] = []
        self._outbox_since = 0.0
        self._beats = _HeartbeatThread(self)

    # -- lifecycle ----------------------------------------------------------

    def run(self) -> None:
        self._beats.start()
        self._register()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while True:
            if not self.pending:
                self._flush()
                if poller.poll(1000):
                    self._drain()
                continue
            self._run_one()
            if not self.pending:
                self._drain()
            if (
                not self.pending
                or len(self.outbox) >= REPLY_BATCH_MAX
                or time.monotonic() - self._outbox_since > REPLY_HOLD_S
            ):
                self._flush()

    def _register(self) -> None:
        content = encode({"pid": os.getpid(), "hostname": socket.gethostname()})
        request = self.session.build(MsgType.REGISTER_REQUEST, content=content)
        self.sock.send_multipart(request)
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.sock.poll(100):
                continue
            frames = self.sock.recv_multipart(copy=False)
            try:
                msg = self.session.unpack(frames)
            except ZPoolError as exc:
                logger.error("dropped a message while registering: %s", exc)
                continue
            if msg.msg_type == MsgType.REGISTER_REPLY.value:
                content_in = msg.content
                self.engine_id = int(content_in["engine_id"])
                self._beats.configure(float(content_in["heartbeat_interval"]), int(content_in["heartbeat_misses"]))
                logger.info("registered as engine %d", self.engine_id)
                return
            if msg.msg_type == MsgType.APPLY_REQUEST.value:
                self._queue(msg)
        raise SystemExit(f"zpool engine: no answer from the controller at {self.info.engine} "
                         f"within {REGISTER_TIMEOUT_S:.0f} s")

    # -- receiving ------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg = self.session.unpack(frames)
                if msg.msg_type != MsgType.APPLY_REQUEST.value:
                    raise ProtocolError(f"unexpected message type {msg.msg_type!r}")
                self._queue(msg)
            except Exception as exc:
                logger.error("dropped a message of %d frames: %s: %s", len(frames), type(exc).__name__, exc)

    def _queue(self, msg: Message) -> None:
        self.pending.extend((entry[0], frames) for entry, frames in decode_batch(msg.header, msg.buffers))

    # -- running --------------------------------------------------------------

    def _run_one(self) -> None:
        task_id, frames = self.pending.popleft()
        started = time.time()
        func: Any = None
        try:
            func, args, kwargs = loads_call(frames)
        except BaseException as exc:
            self._answer_error(task_id, exc, started, "could not deserialize the task: ")
            return
        del frames
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._answer_error(task_id, exc, started, "", skip_frames=1)
            return
        finally:
            del args, kwargs
        try:
            payload = dumps(result)
        except SerializationError as exc:
            self._answer_error(
                task_id, exc, started, f"the result of {callable_name(func)}() cannot be sent back: ", skip_frames=None
            )
            return
        completed = time.time()
        self._push([task_id, TaskStatus.OK.value, self.engine_id, started, completed], payload)

    def _answer_error(
        self, task_id: str, exc: BaseException, started: float, prefix: str, skip_frames: int | None = 0
    ) -> None:
        completed = time.time()
        tb = exc.__traceback__
        if skip_frames:
            for _ in range(skip_frames):
                tb = tb.tb_next if tb is not None else None
        lines = traceback.format_exception(type(exc), exc, tb)
        text = "".join(lines)
        if len(text) > MAX_TRACEBACK_CHARS:
            half = MAX_TRACEBACK_CHARS // 2
            text = text[:half] + "\n... (traceback shortened) ...\n" + text[-half:]
        header = f"Traceback from engine {self.engine_id} (pid {os.getpid()}), task {task_id}:\n"
        evalue = prefix + _safe_str(exc)
        error = {
            "ename": type(exc).__name__,
            "emodule": type(exc).__module__,
            "evalue": evalue[:10_000],
            "traceback": header + text,
            "engine_id": self.engine_id,
        }
        frames: list[Any] = [encode(error)]
        exc_frames = _portable_exception(exc) if not prefix else None
        if exc_frames is not None:
            frames += exc_frames
        self._push([task_id, TaskStatus.ERROR.value, self.engine_id, started, completed], frames)

    def _push(self, entry: list[Any], frames: list[Any]) -> None:
        if not self.outbox:
            self._outbox_since = time.monotonic()
        self.outbox.append((entry, frames))

    def _flush(self) -> None:
        if not self.outbox:
            return
        fields, buffers = encode_batch(self.outbox)
        self.outbox = []
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        self.sock.send_multipart(self.session.build(MsgType.APPLY_REPLY, fields, buffers=buffers), copy=False)


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _portable_exception(exc: BaseException) -> list[Any] | None:
    """Serialize `exc` if it survives the round trip as the same type, else None."""
    try:
        frames = dumps(exc)
        back = loads([bytes(memoryview(f)) for f in frames])
    except Exception:
        return None
    return frames if type(back) is type(exc) else None


class _HeartbeatThread(threading.Thread):
    """Answers beats, obeys shutdown, and ends the process when it is orphaned."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(name="zpool-heartbeat", daemon=True)
        self.engine = engine
        self.session = Session(engine.info.key)
        self.interval = 1.0
        self.misses = 10
        self.configured = False
        self.last_beat = time.monotonic()

    def configure(self, interval: float, misses: int) -> None:
        self.interval, self.misses = interval, misses
        self.last_beat = time.monotonic()
        self.configured = True

    def run(self) -> None:
        sock = self.engine.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.engine.ident)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.connect(self.engine.info.heartbeat)
        parent = self.engine.parent
        while True:
            if sock.poll(100):
                self._handle(sock, sock.recv_multipart(copy=False))
            if parent is not None and not parent.alive():
                _exit("its parent process ended")
            # The controller stops beating when it dies: leave after twice the tolerance.
            if self.configured and time.monotonic() - self.last_beat > 2 * self.interval * self.misses:
                _exit("the controller stopped sending heartbeats")

    def _handle(self, sock: zmq.Socket[Any], frames: list[Any]) -> None:
        try:
            msg = self.session.unpack(frames)
        except Exception as exc:
            logger.error("heartbeat: dropped a message: %s: %s", type(exc).__name__, exc)
            return
        if msg.msg_type == MsgType.HEARTBEAT_REQUEST.value:
            self.last_beat = time.monotonic()
            sock.send_multipart(self.session.build(MsgType.HEARTBEAT_REPLY, {"beat": msg.header.get("beat")}))
        elif msg.msg_type == MsgType.SHUTDOWN_REQUEST.value:
            _exit("the controller asked it to shut down", level=logging.INFO)
        else:
            logger.error("heartbeat: dropped a message of unexpected type %r", msg.msg_type)


def _exit(why: str, level: int = logging.WARNING) -> None:
    logger.log(level, "engine exiting: %s", why)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)
