"""The client's half of the direct path: blocking calls pushed straight to the engines.

::

    caller thread ──push()──▶ connection per engine ──▶ engine's "direct" socket ──▶ runs the tasks
    caller thread ◀──────────── replies ◀────────────── (and tells the controller, before and after)

A blocking ``apply`` or a small ``map`` without scheduling flags costs two
hops this way instead of four ZeroMQ hops through the controller, on plain
Unix stream sockets (:mod:`zpool._stream`): the call wakes the engine's
main thread, and its reply the caller, and no I/O thread on either side. The engine
forwards each pushed request to the controller before running it and its
replies after, so the controller still knows every task (records,
``queue_status``, abort, interrupt, recall, the engine's death); tasks it
places again (recalled for an idle engine, queued behind a task its engine
died in) come back the controller's way, on the caller's own socket.

Which engines: the controller's *roster* (``roster_notice``: every ready
engine's direct address), asked for once on the caller's own socket and sent
again whenever an engine is ready or leaves. When an engine leaves, the
roster names the tasks pushed there that the controller knew of (it answers
or re-places those), and the last task the engine started (its run slot):
of the others, which never reached the controller, those that never started
are sent again the controller's way, and the one that did fails here.

Which engine a one-task call goes to: the one the previous such call went
to, while it is in the roster. Blocking calls are pushed only when nothing
else of the client is outstanding, so it is idle as far as this client
knows, and it is warm: its code and data still in the CPU's caches, its
function cache holding the task's function. (Taking turns instead cost a
loop of blocking ``apply`` on two engines 15-25% of its round trip on two
cores.) Each client starts its turns at a random engine, so that the clients
of one cluster do not all settle on the same one. Calls of several tasks
(a small ``map``) are spread evenly, starting where the turns are.

Owned by whoever holds the connection's own-socket lock (a caller in a
blocking call, or the I/O thread reading leftovers): one thread at a time.
"""

from __future__ import annotations

import itertools
import logging
import random
from typing import Any, Iterable

import zmq

from zpool._stream import FramedSocket
from zpool._transport import CurveKeys, member_socket
from zpool.protocol import BatchWriter, MsgType, Session

__all__ = ["Pusher", "immediate_dealer"]

logger = logging.getLogger(__name__)

# Reconnect quickly: the controller binds when it starts.
RECONNECT_IVL_MS = 10


class Pusher:
    """Sockets to the engines' direct sockets, the roster, and which pushed task is on which engine.

    Parameters
    ----------
    ctx : zmq.Context
        The connection's context.
    session : Session
        The connection's session (signs pushed requests).
    route : bytes
        The identity of the caller's own socket: where the controller sends
        what it has to say about pushed tasks (errors, re-placed tasks).
    """

    def __init__(self, ctx: zmq.Context[Any], session: Session, route: bytes) -> None:
        self.ctx = ctx
        self.session = session
        self.route = route
        self.roster: dict[int, str] | None = None  # None: not received yet
        self.asked = False
        self.socks: dict[int, FramedSocket] = {}  # connections to engines' direct sockets
        self.up: set[int] = set()  # engines connected to
        # Pushed task id -> (engine id, its call's frames, to send again if the engine dies first), until answered.
        self.where: dict[str, tuple[int, list[Any]]] = {}
        self.version = 0  # bumped whenever what to poll changes: a connection made or closed, or stalled
        self._turn = itertools.count(random.randrange(1 << 16))
        self._last: int | None = None  # the engine of the last one-task push (see the module's docstring)

    # -- the roster ------------------------------------------------------------

    def on_roster(
        self, content: dict[str, Any]
    ) -> tuple[list[tuple[list[str], int, str]], list[tuple[str, list[Any]]]]:
        """Take a ``roster_notice``; return the pushed tasks the controller never heard of, of departed engines.

        Returned as (those that fail, per engine; those to send again the
        controller's way). ``content["engines"]`` maps engine ids to direct
        addresses; ``content["gone"]``, if present, maps each departed
        engine's id to the ids of the tasks pushed there that the controller
        knew of, and ``content["started"]`` to the last task it started
        (when its run slot could be read): the others never started.
        """
        engines = content.get("engines")
        if not isinstance(engines, dict):
            return [], []
        roster: dict[int, str] = {}
        for key, address in engines.items():
            try:
                roster[int(key)] = str(address)
            except (TypeError, ValueError):
                continue
        for engine_id in [e for e in self.socks if roster.get(e) != (self.roster or {}).get(e)]:
            self.socks.pop(engine_id).close()
            self.up.discard(engine_id)
            self.version += 1
        self.roster = roster
        lost: list[tuple[list[str], int, str]] = []
        again: list[tuple[str, list[Any]]] = []
        started_by: dict[str, Any] = content.get("started") or {}
        if not isinstance(started_by, dict):
            started_by = {}
        why_by: dict[str, Any] = content.get("why") or {}
        if not isinstance(why_by, dict):
            why_by = {}
        gone = content.get("gone")
        if isinstance(gone, dict):
            for key, known in gone.items():
                try:
                    engine_id = int(key)
                except (TypeError, ValueError):
                    continue
                known_ids = set(known) if isinstance(known, list) else set()
                started = started_by.get(key)
                there = [(t, w[1]) for t, w in self.where.items() if w[0] == engine_id]
                for task_id, _ in there:  # the controller answers or re-places those it knew
                    del self.where[task_id]
                ids = []
                for task_id, frames in there:
                    if task_id in known_ids:
                        continue
                    if isinstance(started, str) and task_id != started:
                        again.append((task_id, frames))  # it never started there
                    else:
                        ids.append(task_id)
                if ids:
                    why = why_by.get(key)
                    lost.append((ids, engine_id, why if isinstance(why, str) else "left"))
        return lost, again

    # -- pushing ---------------------------------------------------------------

    def push(self, items: list[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
        """Send `items` to the engines of the roster, spread evenly; return those that could not be sent.

        One task goes where the last one did, while that engine is in the
        roster; several are spread, the engines taking turns across calls.
        What an engine whose socket is not connected (just started, or gone)
        would have taken is returned. Never waits: what an engine's socket
        does not take at once goes as it takes it (:meth:`poll_items`).
        """
        roster = self.roster or {}
        engines = sorted(roster)
        if not engines:
            return items
        if len(items) == 1:
            last = self._last
            engine_id = last if last is not None and last in roster else engines[next(self._turn) % len(engines)]
            if self._send(engine_id, items):
                self._last = engine_id
                return []
            self._last = None
            return items
        start = next(self._turn)
        per: dict[int, list[tuple[str, list[Any]]]] = {}
        for i, item in enumerate(items):
            per.setdefault(engines[(start + i) % len(engines)], []).append(item)
        left: list[tuple[str, list[Any]]] = []
        for engine_id, chunk in per.items():
            if not self._send(engine_id, chunk):
                left += chunk
        return left

    def _send(self, engine_id: int, items: list[tuple[str, list[Any]]]) -> bool:
        conn = self._connection(engine_id)
        if conn is None:
            return False
        batch = BatchWriter()
        for task_id, frames in items:
            batch.add(task_id, frames)
        fields = batch.fields()
        fields["pushed"] = True
        fields["route"] = self.route.hex()
        msg = self.session.build(MsgType.APPLY_REQUEST, fields, buffers=batch.buffers())
        if not conn.send(msg):  # the engine is gone (what it never took: the caller sends it another way)
            self.drop(conn)
            return False
        if conn.sending:  # the rest goes as the engine takes it (the caller polls for that)
            self.version += 1
        for task_id, frames in items:
            self.where[task_id] = (engine_id, frames)
        return True

    def _connection(self, engine_id: int) -> FramedSocket | None:
        conn = self.socks.get(engine_id)
        if conn is not None:
            return conn
        address = (self.roster or {}).get(engine_id)
        if address is None:
            return None
        try:
            conn = FramedSocket.connect(address)
        except (OSError, ValueError) as exc:  # not listening (yet, or any more), or no fd left
            logger.debug("no connection to engine %d at %s: %s", engine_id, address, exc)
            return None
        self.socks[engine_id] = conn
        self.up.add(engine_id)
        self.version += 1
        return conn

    def drop(self, conn: FramedSocket) -> None:
        """A connection closed (its engine left): forget it; the roster says what became of its tasks."""
        conn.close()
        for engine_id, known in list(self.socks.items()):
            if known is conn:
                del self.socks[engine_id]
                self.up.discard(engine_id)
        self.version += 1

    def poll_items(self) -> list[tuple[FramedSocket, int]]:
        """The connections to poll, with POLLOUT for those whose request waits to be taken."""
        return [(c, zmq.POLLIN | (zmq.POLLOUT if c.sending else 0)) for c in self.socks.values()]

    def answered(self, task_ids: Iterable[str]) -> None:
        """Replies came for these tasks: forget where they were pushed."""
        where = self.where
        if where:
            for task_id in task_ids:
                where.pop(task_id, None)

    def close(self) -> None:
        for conn in self.socks.values():
            conn.close()
        self.socks.clear()
        self.version += 1
        self.up.clear()


def immediate_dealer(
    ctx: zmq.Context[Any], identity: bytes, address: str, curve: CurveKeys | None = None
) -> zmq.Socket[Any] | None:
    """A DEALER named `identity`, connecting to `address`, that queues nothing while not connected.

    ``ZMQ_IMMEDIATE``: libzmq connects in the background and retries quietly
    when it cannot (no file descriptor left: EMFILE), and a message queued
    for a connection that never comes would wait forever; a send finds out
    instead (``zmq.Again`` with ``DONTWAIT``). None if no socket can be made.
    """
    try:
        sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    except zmq.ZMQError as exc:  # EMFILE
        logger.debug("no socket for %s: %s", address, exc)
        return None
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    member_socket(sock, address, curve)
    sock.connect(address)
    return sock
