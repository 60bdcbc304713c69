"""Tasks a client pushes straight to this engine (the direct path), and their replies.

::

    client ──DEALER──▶ "direct" ROUTER ──▶ main thread: verify, forward the request to the controller
                                           (the same signed frames), queue the tasks
    client ◀─────────── "direct" ROUTER ◀── replies, per client; the same reply to the controller

A blocking call without scheduling flags skips the controller's two hops:
the client sends it to an engine's own socket, and the engine answers it
there. The controller stays the source of truth: the engine passes each
pushed request on to it (the client's signed frames, untouched), then the
replies (one batch for all clients), on the engine's controller socket, so
the controller sees the request before any reply and records both
(records, ``queue_status``, recall, abort, interrupt, the engine's death)
without forwarding anything.

These *notices* are held up to :data:`NOTICE_HOLD_S` while tasks are short,
so that a loop of small calls wakes the controller once for dozens of tasks
rather than twice per task (each wake-up costs the controller 100 µs or more
of a core the caller and the engines need). They go out sooner when
anything else goes to the controller from this engine (its own tasks'
replies: one of them may answer a pushed task), and while a task runs longer
than the reply hold, sent by the heartbeat thread, as held replies are; so
the controller knows every pushed task that runs for more than a few
milliseconds while it runs. See ``docs/performance.md`` ("the direct path").

Owned by the engine's main thread, which reads the socket between tasks
(as it reads the controller's); replies are sent by whoever flushes the
engine's held replies, the main thread or the heartbeat thread, under the
engine's lock, as for the controller's socket.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import zmq

from zpool.protocol import REPLY_COLUMNS, Batch, BatchWriter, Message, MsgType, Session, recv_ready, send_frames

__all__ = ["NOTICE_HOLD_S", "NOTICE_MAX", "PushedTasks"]

logger = logging.getLogger(__name__)

# Notices for the controller (pushed requests, and replies to them) wait at most this long, in seconds,
NOTICE_HOLD_S = 0.01
# ... or until this many requests are held.
NOTICE_MAX = 256


class PushedTasks:
    """The engine's "direct" socket, which tasks pushed there came from which client, and their held replies.

    Parameters
    ----------
    ctx : zmq.Context
        The engine's context.
    address : str
        Where to bind (``ipc://`` in the cluster's private directory).
    session : Session
        The engine's session (verifies requests, signs replies).
    """

    def __init__(self, ctx: zmq.Context[Any], address: str, session: Session) -> None:
        self.session = session
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.bind(address)
        self.address = address
        self.routes: dict[str, bytes] = {}  # task id -> the client it came from, until answered
        self.outboxes: dict[bytes, BatchWriter] = {}  # client -> replies held for it
        self.wrote: dict[bytes, list[str]] = {}  # client -> its tasks in those that wrote output
        # Notices: pushed requests not passed on to the controller yet, and replies sent to clients
        # but not yet to the controller; since when the oldest has waited.
        self.requests: list[list[Any]] = []
        self.told = BatchWriter(REPLY_COLUMNS)
        self.since = 0.0

    def drain(self, queue: Callable[[Message], None]) -> int:
        """Take in what clients pushed: queue their tasks, and hold each request for the controller.

        Returns how many requests were taken in. Main thread, under the engine's lock.
        """
        taken = 0
        while True:
            frames = recv_ready(self.sock)
            if frames is None:
                return taken
            route = frames[0] if isinstance(frames[0], bytes) else frames[0].bytes
            try:
                msg = self.session.unpack(frames)
                if msg.msg_type != MsgType.APPLY_REQUEST.value:
                    raise ValueError(f"unexpected message type {msg.msg_type!r} on the direct socket")
                ids = Batch(msg.header, msg.buffers).ids
                if not msg.header.get("pushed") or not all(isinstance(i, str) for i in ids):
                    raise ValueError("a pushed request must say so and name its tasks")
            except Exception as exc:
                logger.error("dropped a message of %d frames: %s: %s", len(frames), type(exc).__name__, exc)
                continue
            if not self.noting:
                self.since = time.monotonic()
            self.requests.append(frames[1:])
            taken += 1
            for task_id in ids:
                self.routes[task_id] = route
            queue(msg)

    def add(self, task_id: str, frames: list[Any], wrote: bool, *columns: Any) -> bool:
        """Hold the reply of `task_id` for its client if it was pushed here; False if it came from the controller.

        `wrote`: the task wrote output, which reaches the client the
        controller's way; the reply says so, and the client waits for it.
        """
        route = self.routes.pop(task_id, None)
        if route is None:
            return False
        outbox = self.outboxes.get(route)
        if outbox is None:
            outbox = self.outboxes[route] = BatchWriter(REPLY_COLUMNS)
        outbox.add(task_id, frames, *columns)
        if wrote:
            self.wrote.setdefault(route, []).append(task_id)
        if not self.noting:
            self.since = time.monotonic()
        self.told.add(task_id, frames, *columns)
        return True

    def forget(self, task_ids: Any) -> None:
        """Tasks given back to the controller (recall): their replies go the controller's way if they come back."""
        for task_id in task_ids:
            self.routes.pop(task_id, None)

    @property
    def noting(self) -> bool:
        """Whether notices wait for the controller."""
        return bool(self.requests) or bool(self.told)

    def notice_wait_s(self) -> float:
        """How long the notices held may still wait, in seconds (0: send them now)."""
        if len(self.requests) >= NOTICE_MAX:
            return 0.0
        return max(0.0, self.since + NOTICE_HOLD_S - time.monotonic())

    def send_replies(self) -> None:
        """Send each client its held replies (the caller holds the engine's lock)."""
        outboxes, self.outboxes = self.outboxes, {}
        wrote, self.wrote = self.wrote, {}
        for route, batch in outboxes.items():
            fields = batch.fields()
            fields["pushed"] = True
            if route in wrote:
                fields["wrote"] = wrote[route]
            msg = self.session.build(MsgType.APPLY_REPLY, fields, buffers=batch.buffers())
            try:
                send_frames(self.sock, [route, *msg], zmq.DONTWAIT)
            except zmq.ZMQError as exc:  # the client is gone: nobody waits for it
                logger.debug("reply for a client that left dropped: %s", exc)

    def send_notices(self, to_controller: Callable[[list[Any]], None]) -> None:
        """Pass the held requests on to the controller, then the replies sent for them, as one batch.

        The caller holds the engine's lock.
        """
        requests, self.requests = self.requests, []
        told, self.told = self.told, BatchWriter(REPLY_COLUMNS)
        for msg in requests:  # (first: the controller knows a task before its reply)
            to_controller(msg)
        if told:
            fields = told.fields()
            fields["pushed"] = True
            to_controller(self.session.build(MsgType.APPLY_REPLY, fields, buffers=told.buffers()))

    def close(self) -> None:
        self.sock.close(linger=0)
