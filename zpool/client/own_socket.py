"""A blocking call's own sockets, and what was sent on them; only the holder of ``OwnSocket.lock`` touches them.

That is a caller thread in a blocking call
(:meth:`zpool.client.connection.Connection.call_now`: it sends the call
with :meth:`OwnSocket.send` and reads and settles the answers with
:meth:`OwnSocket.read`), or ``zpool-io``, the I/O thread, which reads the
answers a caller stopped waiting for (Ctrl-C) a few times a second when no
caller holds the lock (:meth:`OwnSocket.read_leftovers`), and closes the
sockets at the end. No other thread uses them.

::

    caller thread (holding the lock) ──▶ own DEALER ──▶ controller ──▶ engines   (four hops)
                                     └─▶ Pusher: connection per engine ──▶ engine   (two hops: the direct path)
    caller thread ◀── replies, read and settled in this thread, on either socket

A blocking ``apply`` or ``map`` whose tasks have no scheduling flags is
sent by the calling thread itself, which then reads and settles the replies,
sparing the two hand-offs to and from the I/O thread. Pushed straight to
the engines (:mod:`zpool.client.pusher`), it also spares the controller's
two hops.

Sending a message, and reading and settling a reply, never stop half-way
(a message cut short corrupts the socket; a reply read and not settled
leaves its result pending forever): in the main thread, a Ctrl-C arriving
then is held until the step is over (:class:`~zpool.client.ctrlc.HoldCtrlC`).

The socket to the controller is made on first use with ``ZMQ_IMMEDIATE``,
so nothing is queued for a connection that is not up: libzmq connects in
the background and retries quietly when it cannot (no file descriptor
left: EMFILE), and a message queued for it would wait forever. Its
identity is the client's *route*: the controller sends there what it has
to say about pushed tasks. What was sent on it is remembered
(:attr:`OwnSocket.sent`: signature -> task ids and shared-memory segments)
until answered, or for the last :data:`OWN_SENT_MEMORY` calls whose caller
stopped waiting, so that a ``reject_notice`` fails the right tasks and
frees their segments.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import threading
from typing import Any, Callable

import zmq

from zpool import _shm
from zpool._stream import FramedSocket, FramingError
from zpool._transport import CurveKeys
from zpool.client.ctrlc import HoldCtrlC
from zpool.client.pusher import Pusher, immediate_dealer
from zpool.client.results import ResultTable
from zpool.error import (
    AuthenticationError,
    BrokenPoolError,
    EngineError,
    ProtocolError,
    ZPoolError,
    rejected_call_text,
)
from zpool.protocol import BatchWriter, Message, MsgType, Session, recv_ready, send_frames

__all__ = ["OWN_POLL_MS", "OwnSocket"]

logger = logging.getLogger(__name__)

# A caller waiting on its own socket (call_now) looks this often whether the connection ended, in ms.
OWN_POLL_MS = 50
# How long the first blocking call waits for that socket to connect before using the I/O thread's, in ms.
OWN_CONNECT_WAIT_MS = 200
# Calls on it whose caller stopped waiting, remembered so that a reject notice can fail them.
OWN_SENT_MEMORY = 1024

_NO_HOLD = contextlib.nullcontext()
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


class OwnSocket:
    """The caller's own socket to the controller, its pushes to engines, and what was sent on them.

    Parameters
    ----------
    ctx : zmq.Context
        The connection's context.
    session : Session
        The connection's session.
    address : str
        The controller's client endpoint.
    results : ResultTable
        Where replies are settled.
    """

    def __init__(
        self,
        ctx: zmq.Context[Any],
        session: Session,
        address: str,
        results: ResultTable,
        curve: CurveKeys | None = None,
    ) -> None:
        self.ctx = ctx
        self.curve = curve
        self.session = session
        self.address = address
        self.results = results
        self.lock = threading.Lock()
        self.sock: zmq.Socket[Any] | None = None
        self.up = False  # it was seen connected (see socket())
        self.route = b"c" + os.urandom(15)
        self.pusher = Pusher(ctx, session, self.route)
        # Messages sent on it whose answer was not read by their caller: signature -> (ids, segments).
        self.sent: collections.OrderedDict[bytes, tuple[list[str], list[str]]] = collections.OrderedDict()
        self._poller: zmq.Poller | None = None
        self._polled: tuple[int, int] = (0, -1)  # the sockets the poller watches (see poll)
        self._conns: dict[int, FramedSocket] = {}  # the engines' connections it watches, by file descriptor

    def socket(self) -> zmq.Socket[Any] | None:
        """The socket to the controller if it is connected now; None: use the I/O thread's (holder of :attr:`lock`).

        The first use waits up to :data:`OWN_CONNECT_WAIT_MS` for the
        connection; later ones only look, until it was seen up (a send that
        finds it down again says so: :attr:`up`).
        """
        sock = self.sock
        if sock is not None and self.up:
            return sock
        wait_ms = 0
        if sock is None:
            sock = immediate_dealer(self.ctx, self.route, self.address, self.curve)
            if sock is None:
                return None  # EMFILE: the I/O thread's socket is connected already
            self.sock = sock
            wait_ms = OWN_CONNECT_WAIT_MS
        self.up = bool(sock.poll(wait_ms, zmq.POLLOUT))
        return sock if self.up else None

    def send(
        self,
        items: list[tuple[str, list[Any]]],
        hold: HoldCtrlC,
        pushing: bool,
        submit: Callable[[list[tuple[str, list[Any]]]], None],
    ) -> bytes | None:
        """Send a blocking call's `items` (holder of :attr:`lock`); None if nothing went out (use the I/O thread).

        With `pushing`, and tasks that use no shared memory, they are pushed
        straight to the engines (:mod:`zpool.client.pusher`); the rest go to
        the controller, or, if some were pushed and the controller's socket
        turns out to be down, to `submit` (the I/O thread's queue). Sent
        whole under `hold`. Returns the signature of the message sent to the
        controller (``b""`` if none), to forget in :attr:`sent` once
        answered. If it raises before anything went out, the tasks are
        failed and their shared-memory segments released.
        """
        segments: list[str] = []
        signature = b""
        sent = False
        try:
            with hold:
                sock = self.socket()
                if sock is None:
                    return None  # not connected (yet): the I/O thread's socket takes them
                for _, frames in items:
                    segments += _shm.manifest_names(frames)
                left = items
                if pushing and not segments:
                    if self.pusher.roster:
                        left = self.pusher.push(items)
                    else:
                        self._ask_roster(sock)  # this call goes the controller's way; the next ones are pushed
                if left is not items:
                    sent = True  # (some at least were pushed)
                if left:
                    batch = BatchWriter()
                    for task_id, frames in left:
                        batch.add(task_id, frames)
                    fields = batch.fields()
                    if segments:
                        fields["shm"] = True
                    msg = self.session.build(MsgType.APPLY_REQUEST, fields, buffers=batch.buffers())
                    signature = msg[1]
                    self.sent[signature] = ([task_id for task_id, _ in left], segments)
                    try:
                        # Not waiting: with ZMQ_IMMEDIATE a send blocks while the connection is down.
                        send_frames(sock, msg, zmq.DONTWAIT)
                    except zmq.Again:
                        self.sent.pop(signature, None)
                        self.up = False
                        if not sent:
                            return None  # the connection dropped: nothing went out
                        submit(left)  # the others were pushed: these go through the I/O thread
                sent = True
        except BaseException as exc:
            if sent:
                raise  # a Ctrl-C held during the send: the tasks are the controller's (the caller aborts them)
            # Not sent: the tasks end here, and their segments.
            self.sent.pop(signature, None)
            error = exc if isinstance(exc, (ZPoolError, KeyboardInterrupt)) else BrokenPoolError(repr(exc))
            self.results.fail([task_id for task_id, _ in items], lambda: error)
            for _, frames in items:
                _shm.release(frames)
            raise
        return signature

    def _ask_roster(self, sock: zmq.Socket[Any]) -> None:
        """Ask the controller, once, where engines take pushed tasks (the answer comes on this socket)."""
        if not self.pusher.asked:
            self.pusher.asked = True
            try:
                send_frames(sock, self.session.build(MsgType.ROSTER_REQUEST), zmq.DONTWAIT)
            except zmq.Again:
                self.pusher.asked = False

    def sockets(self) -> list[Any]:
        """Every socket a reply to a call of this thread may come on: the controller's, and the engines'."""
        own: list[Any] = [self.sock] if self.sock is not None else []
        return own + list(self.pusher.socks.values())

    def poll(self, timeout_ms: int) -> list[Any]:
        """The sockets of :meth:`sockets` ready to read (or to take a request), waiting up to `timeout_ms`."""
        key = (id(self.sock), self.pusher.version)
        if self._poller is None or self._polled != key:
            self._poller = zmq.Poller()
            if self.sock is not None:
                self._poller.register(self.sock, zmq.POLLIN)
            self._conns = {}
            for conn, events in self.pusher.poll_items():
                self._poller.register(conn.fileno(), events)
                self._conns[conn.fileno()] = conn
            self._polled = key
        conns = self._conns
        return [conns[sock] if type(sock) is int else sock for sock, _ in self._poller.poll(timeout_ms)]

    def read(self, sock: Any, hold: HoldCtrlC | None = None) -> None:
        """Settle what arrived on `sock`, one of :meth:`sockets` (holder of :attr:`lock`)."""
        if isinstance(sock, FramedSocket):
            self._read_pushed(sock, hold)
            return
        while (
            not sock.closed and int(sock.get(_EVENTS)) & _POLLIN
        ):  # (closed: a roster notice just read)  # (looked at first: a Ctrl-C is held only while there is work)
            with hold or _NO_HOLD:  # each message read and settled whole
                frames = recv_ready(sock)
                if frames is None:
                    return
                try:
                    msg = self.session.unpack(frames)
                    kind = msg.msg_type
                    if kind == MsgType.APPLY_REPLY.value:
                        self.results.handle_reply(msg)
                        if self.pusher.where:
                            self.pusher.answered(msg.header.get("ids") or ())
                    elif kind == MsgType.STREAM.value:
                        self.results.handle_stream(msg)
                    elif kind == MsgType.REJECT_NOTICE.value:
                        self._on_rejected(msg)
                    elif kind == MsgType.ROSTER_NOTICE.value:
                        self._on_roster(msg)
                    else:
                        raise ProtocolError(f"unexpected {kind} on the callers' own socket")
                except ZPoolError as exc:
                    logger.error("dropped a message of %d frames: %s: %s", len(frames), type(exc).__name__, exc)

    def _read_pushed(self, conn: FramedSocket, hold: HoldCtrlC | None) -> None:
        """Settle the replies an engine sent on its connection, and send on what waits for it to take."""
        pusher = self.pusher
        with hold or _NO_HOLD:  # what is read is settled whole
            if conn.sending:
                conn.flush()
                if not conn.sending:
                    pusher.version += 1  # (polled for POLLOUT no more)
            try:
                messages = conn.receive()
            except FramingError as exc:
                logger.error("closed the connection to an engine: %s", exc)
                messages = []
            for frames in messages:
                try:
                    msg = self.session.unpack(frames)
                    if msg.msg_type != MsgType.APPLY_REPLY.value:
                        raise ProtocolError(f"unexpected {msg.msg_type} from an engine's direct socket")
                    self.results.handle_reply(msg)
                    if pusher.where:
                        pusher.answered(msg.header.get("ids") or ())
                except ZPoolError as exc:
                    logger.error("dropped a message of %d frames: %s: %s", len(frames), type(exc).__name__, exc)
            if conn.closed:  # its engine left: the roster notice says what became of its tasks
                pusher.drop(conn)

    def _on_rejected(self, msg: Message) -> None:
        try:
            signature = bytes.fromhex(str(msg.content.get("signature", "")))
        except ValueError:
            return
        sent = self.sent.pop(signature, None)
        if sent is None:
            return
        ids, segments = sent
        for name in segments:  # the controller never accepted them
            _shm.unlink(name)
        text = rejected_call_text(msg.content.get("reason"))
        self.results.fail(ids, lambda: AuthenticationError(text))

    def _on_roster(self, msg: Message) -> None:
        lost, again = self.pusher.on_roster(msg.content)
        for ids, engine_id, why in lost:
            self.results.fail(ids, functools.partial(_lost, engine_id, ids, why))
        if again:  # pushed to an engine that died before it passed them on, never started: the controller's way
            batch = BatchWriter()
            for task_id, frames in again:
                batch.add(task_id, frames)
            ids = [task_id for task_id, _ in again]
            out = self.session.build(MsgType.APPLY_REQUEST, batch.fields(), buffers=batch.buffers())
            try:
                if self.sock is None:
                    raise zmq.Again
                send_frames(self.sock, out, zmq.DONTWAIT)
                self.sent[out[1]] = (ids, [])
            except zmq.ZMQError:  # the connection to the controller is down too: the pool is breaking
                self.results.fail(ids, functools.partial(_unsent, ids))

    def read_leftovers(self) -> None:
        """Answers to calls whose caller stopped waiting (I/O thread, when no caller uses the sockets)."""
        if self.sock is None or not self.lock.acquire(blocking=False):
            return
        try:
            for sock in self.sockets():
                self.read(sock)
            while len(self.sent) > OWN_SENT_MEMORY:
                self.sent.popitem(last=False)
        finally:
            self.lock.release()

    def close(self) -> None:
        """Close the sockets (once no caller holds :attr:`lock`)."""
        with self.lock:
            if self.sock is not None:
                self.sock.close(linger=0)
                self.sock = None
            self.pusher.close()


def _lost(engine_id: int, ids: list[str], why: str) -> EngineError:
    hint = " SIGKILL usually means the machine ran out of memory." if "SIGKILL" in why else ""
    return EngineError(
        f"engine {engine_id} {why} while running task(s) {', '.join(ids[:5])} pushed to it, before it told the"
        f" controller of them (its death is in the cluster's log); other engines carry on.{hint}"
    )


def _unsent(ids: list[str]) -> EngineError:
    return EngineError(
        f"the engine task(s) {', '.join(ids[:5])} were pushed to died before starting them, and the controller"
        " could not be reached to run them elsewhere"
    )
