"""Tasks a client pushes straight to this engine (the direct path), and their replies.

::

    client ──connection──▶ "direct" Unix socket ──▶ main thread: verify, forward the request to the
                                                    controller (the same signed frames), queue the tasks
    client ◀──connection── replies, per client ◀── the same replies to the controller, later

A blocking call without scheduling flags skips the controller's two hops:
the client sends it to an engine's own socket, and the engine answers it
there. That socket is a plain Unix stream socket (:mod:`zpool._stream`),
polled by the engine's main thread with its ZeroMQ socket: a pushed call
wakes the thread that runs it and no ZeroMQ I/O thread on either side.
The controller stays the source of truth: the engine passes each pushed
request on to it (the client's signed frames, untouched), then the
replies (one batch for all clients), on the engine's controller socket, so
the controller sees the request before any reply and records both
(records, ``queue_status``, recall, abort, interrupt, the engine's death)
without forwarding anything.

These *notices* are held up to :data:`NOTICE_HOLD_S` while tasks are short,
so that a loop of small calls wakes the controller once for dozens of tasks
rather than twice per task (each wake-up costs the controller 100 µs or more
of a core the caller and the engines need). They go out sooner when
anything else goes to the controller from this engine (its own tasks'
replies: one of them may answer a pushed task), and, when due while a task
still runs, sent by the heartbeat thread, which looks at them when they are
due (unwoken: waking it at each quick call cost more than the call); so the
controller knows every pushed task that runs for more than
:data:`NOTICE_HOLD_S` while it runs. See ``docs/performance.md`` ("the direct path").

Owned by the engine's main thread, which reads the connections between
tasks (as it reads the controller's socket); replies are sent by whoever
flushes the engine's held replies, the main thread or the heartbeat thread,
under the engine's lock, as for the controller's socket. Sending never
waits for a client: what its socket does not take at once is sent as it
takes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from typing import Any, Callable

import zmq

from zpool._stream import FramedSocket, FramingError, listen, unix_path
from zpool.protocol import REPLY_COLUMNS, Batch, BatchWriter, Message, MsgType, Session

__all__ = ["NOTICE_HOLD_S", "NOTICE_MAX", "PushedTasks"]

logger = logging.getLogger(__name__)

# Notices for the controller (pushed requests, and replies to them) wait at most this long, in seconds,
NOTICE_HOLD_S = 0.01
# ... or until this many requests are held.
NOTICE_MAX = 256

_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


class PushedTasks:
    """The engine's "direct" socket, its clients' connections, which pushed task came from which, and replies.

    Parameters
    ----------
    address : str
        Where to listen: ``unix://`` and a path in the cluster's private
        directory (:mod:`zpool._stream`).
    session : Session
        The engine's session (verifies requests, signs replies).
    """

    def __init__(self, address: str, session: Session) -> None:
        self.session = session
        self.address = address
        path = unix_path(address)
        with contextlib.suppress(FileNotFoundError):  # an engine of the same pid that died here
            os.unlink(path)
        self.listener = listen(path)
        self.path = path
        # Which of its sockets are ready, asked without waiting (drain); the engine's poller waits.
        self._ready = select.poll()
        self._ready.register(self.listener.fileno(), _READABLE)
        self.by_fd: dict[int, FramedSocket] = {}
        self.conns: dict[FramedSocket, bytes] = {}  # each client's connection -> its route (b"" until it sent)
        self.version = 0  # bumped whenever what to poll changes: a connection came or went, or stalled
        self.stalled: set[FramedSocket] = set()  # connections with a reply the client has not taken yet
        self.routes: dict[str, FramedSocket] = {}  # task id -> the connection it came on, until answered
        self.outboxes: dict[FramedSocket, BatchWriter] = {}  # replies held, per connection
        self.wrote: dict[FramedSocket, list[str]] = {}  # per connection, its tasks in those that wrote output
        # Notices: pushed requests not passed on to the controller yet, and replies sent to clients
        # but not yet to the controller; since when the oldest has waited.
        self.requests: list[tuple[list[Any], Batch, bytes]] = []  # (its frames, its batch, its client's route)
        self.told = BatchWriter(REPLY_COLUMNS)
        self.since = 0.0

    def poll_items(self) -> list[tuple[Any, int]]:
        """What the engine's poller watches for pushed tasks: (file descriptor, events) pairs; see :attr:`version`."""
        items: list[tuple[Any, int]] = [(self.listener.fileno(), zmq.POLLIN)]
        for conn in self.conns:
            items.append((conn.fileno(), zmq.POLLIN | (zmq.POLLOUT if conn in self.stalled else 0)))
        return items

    def drain(self, queue: Callable[[Message, Batch], None]) -> int:
        """Take in what clients pushed: queue their tasks, and hold each request for the controller.

        Also accepts new connections and sends on what stalled replies the
        clients take now. Returns how many requests were taken in. Main
        thread (or the heartbeat thread, in ``give_back``), under the
        engine's lock.
        """
        ready = self._ready.poll(0)  # (one system call, where reading each socket raises when it is empty)
        if not ready:
            return 0
        taken = 0
        for fd, events in ready:
            conn = self.by_fd.get(fd)
            if conn is None:
                if fd == self.listener.fileno():
                    self._accept()
                continue
            if events & select.POLLOUT and conn in self.stalled:
                self._unstall()
            if not events & _READABLE:
                continue
            try:
                messages = conn.receive()
            except FramingError as exc:
                logger.error("closed a client's connection to the direct socket: %s", exc)
                messages = []
            for frames in messages:
                taken += self._take(conn, frames, queue)
            if conn.closed:
                self._drop(conn)
        return taken

    def _take(self, conn: FramedSocket, frames: list[Any], queue: Callable[[Message, Batch], None]) -> int:
        try:
            msg = self.session.unpack(frames)
            if msg.msg_type != MsgType.APPLY_REQUEST.value:
                raise ValueError(f"unexpected message type {msg.msg_type!r} on the direct socket")
            batch = Batch(msg.header, msg.buffers)
            ids = batch.ids
            if not msg.header.get("pushed") or not all(isinstance(i, str) for i in ids):
                raise ValueError("a pushed request must say so and name its tasks")
            route = bytes.fromhex(str(msg.header.get("route", "")))
            if not route:
                raise ValueError("a pushed request must name its client's route")
        except Exception as exc:
            logger.error("dropped a message of %d frames: %s: %s", len(frames), type(exc).__name__, exc)
            return 0
        self.conns[conn] = route
        if not self.noting:
            self.since = time.monotonic()
        self.requests.append((frames, batch, route))
        for task_id in ids:
            self.routes[task_id] = conn
        queue(msg, batch)
        return 1

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE: the client's tasks go the controller's way
                logger.warning("could not accept a connection on the direct socket: %s", exc)
                return
            conn = FramedSocket(sock)
            self.conns[conn] = b""
            self.by_fd[conn.fileno()] = conn
            self._ready.register(conn.fileno(), _READABLE)
            self.version += 1

    def _drop(self, conn: FramedSocket) -> None:
        """A client's connection closed: its replies still to come are dropped (the controller has them)."""
        for fd, known in list(self.by_fd.items()):
            if known is conn:
                del self.by_fd[fd]
                self._ready.unregister(fd)
        conn.close()
        self.conns.pop(conn, None)
        self.outboxes.pop(conn, None)
        self.wrote.pop(conn, None)
        self.stalled.discard(conn)
        self.version += 1

    def _stall(self, conn: FramedSocket) -> None:
        self.stalled.add(conn)
        self._ready.modify(conn.fileno(), _READABLE | select.POLLOUT)
        self.version += 1

    def _unstall(self) -> None:
        for conn in list(self.stalled):
            if not conn.flush():
                self._drop(conn)
            elif not conn.sending:
                self.stalled.discard(conn)
                self._ready.modify(conn.fileno(), _READABLE)
                self.version += 1

    def route_of(self, task_id: str) -> bytes:
        """The route of the client that pushed `task_id` here; b"" if it came from the controller."""
        conn = self.routes.get(task_id)
        return b"" if conn is None else self.conns.get(conn, b"")

    def add(self, task_id: str, frames: list[Any], wrote: bool, *columns: Any) -> bool:
        """Hold the reply of `task_id` for its client if it was pushed here; False if it came from the controller.

        `wrote`: the task wrote output, which reaches the client the
        controller's way; the reply says so, and the client waits for it.
        """
        conn = self.routes.pop(task_id, None)
        if conn is None:
            return False
        self.told.add(task_id, frames, *columns)  # (the controller records it even if the client left)
        if conn in self.conns:
            outbox = self.outboxes.get(conn)
            if outbox is None:
                outbox = self.outboxes[conn] = BatchWriter(REPLY_COLUMNS)
            outbox.add(task_id, frames, *columns)
            if wrote:
                self.wrote.setdefault(conn, []).append(task_id)
        if len(self.told) == 1 and not self.requests:
            self.since = time.monotonic()
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
        """Send each client its held replies (the caller holds the engine's lock).

        Never waits: what a client's socket does not take now is sent as it
        takes it (the main thread polls for that, the heartbeat thread
        flushes it with the held replies); a client that left is dropped.
        """
        outboxes, self.outboxes = self.outboxes, {}
        wrote, self.wrote = self.wrote, {}
        for conn, batch in outboxes.items():
            fields = batch.fields()
            fields["pushed"] = True
            if conn in wrote:
                fields["wrote"] = wrote[conn]
            msg = self.session.build(MsgType.APPLY_REPLY, fields, buffers=batch.buffers())
            if not conn.send(msg):  # the client is gone: nobody waits for it
                logger.debug("replies for a client that left dropped")
                self._drop(conn)
            elif conn.sending and conn not in self.stalled:
                self._stall(conn)
        if self.stalled:
            self._unstall()

    def send_notices(self, to_controller: Callable[[list[Any]], None]) -> None:
        """Pass the held requests on to the controller, then the replies sent for them, as one batch.

        The caller holds the engine's lock.
        """
        requests, self.requests = self.requests, []
        told, self.told = self.told, BatchWriter(REPLY_COLUMNS)
        # First the requests: the controller knows a task before its reply.
        if len(requests) == 1:
            to_controller(requests[0][0])  # as the client signed it
        elif requests:
            to_controller(self._merged(requests))
        if told:
            fields = told.fields()
            fields["pushed"] = True
            to_controller(self.session.build(MsgType.APPLY_REPLY, fields, buffers=told.buffers()))

    def unlink(self) -> None:
        """Remove the socket's path (any thread): clients cannot connect any more."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _merged(self, requests: list[tuple[list[Any], Batch, bytes]]) -> list[Any]:
        """Several pushed requests as one message for the controller, which then reads and verifies one.

        Their tasks in order, with ``routes``: runs of ``[client route (hex),
        number of tasks]``. Signed by this engine (which verified each
        request), with the cluster's key as every message.
        """
        merged = BatchWriter()
        routes: list[list[Any]] = []
        for _, batch, route in requests:
            for i, task_id in enumerate(batch.ids):
                merged.add(task_id, batch.payload(i))
            hexed = route.hex()
            if routes and routes[-1][0] == hexed:
                routes[-1][1] += len(batch.ids)
            else:
                routes.append([hexed, len(batch.ids)])
        fields = merged.fields()
        fields["pushed"] = True
        fields["routes"] = routes
        return self.session.build(MsgType.APPLY_REQUEST, fields, buffers=merged.buffers())

    def close(self) -> None:
        for conn in list(self.conns):
            conn.close()
        self.conns.clear()
        self.listener.close()
        self.unlink()
