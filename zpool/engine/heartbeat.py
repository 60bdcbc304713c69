"""The engine's second thread: answers the controller's beats, and acts when the main thread cannot.

::

    controller ──"heartbeat" socket──▶ Heartbeat thread ──▶ heartbeat_reply
                 interrupt_request ──▶ Engine.request_interrupt: SIGINT to this process
                 recall_request    ──▶ Engine.give_back: queued tasks taken back, recall_reply
                 shutdown_request  ──▶ exit
    main thread ──wake() (a task starts, replies held)──▶ at the hold's end: Engine.flush under the lock
    notices of pushed tasks held, unwoken ──▶ when due, if a task still runs: Engine.flush under the lock
    parent gone, or no beat for 2 * interval * misses ──▶ remove this engine's segments, exit
    (an engine that may reconnect: register again, every REGISTER_AGAIN_S, until it is back or time is up)

It owns its own socket, so a long task never looks like a dead engine. What
it may read and write of the :class:`~zpool.engine.worker.Engine` it serves,
and under which lock, is the table in :mod:`zpool.engine.worker`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import zmq

from zpool import _shm
from zpool._settings import ControllerSettings
from zpool._transport import member_socket
from zpool.error import ProtocolError
from zpool.protocol import MsgType, Session, encode, recv_frames, send_frames

_DEFAULTS = ControllerSettings()

if TYPE_CHECKING:
    from zpool.engine.worker import Engine

__all__ = ["Heartbeat"]

logger = logging.getLogger(__name__)

# An engine that may reconnect asks to register again this often while its controller is silent, in seconds.
REGISTER_AGAIN_S = 5.0


class Heartbeat:
    """The engine's second thread: answers beats, obeys shutdown, ends the process when orphaned.

    Composition, not a ``threading.Thread`` subclass: Thread's private
    attributes change between Python versions (3.13 added ``_handle``).
    """

    def __init__(self, engine: Engine, reply_hold_s: float, reconnect_ivl_ms: int) -> None:
        self.engine = engine
        self.reply_hold_s = reply_hold_s
        self.reconnect_ivl_ms = reconnect_ivl_ms
        self.session = Session(engine.info.key)
        self.interval = _DEFAULTS.heartbeat_interval  # until the controller says (configure)
        self.misses = _DEFAULTS.heartbeat_misses
        self.configured = False
        self.last_beat = time.monotonic()
        # Since when the controller is silent, for an engine that waits for it to come back (None: it is not).
        self.lost_since: float | None = None
        self._asked_again = 0.0
        self._woken = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)

    def start(self) -> None:
        threading.Thread(target=self.run, name="zpool-heartbeat", daemon=True).start()

    def _stall_limit(self) -> float:
        """A pause of this thread's loop longer than this (it polls every 0.1 s at most) is a stall of its own."""
        return max(1.0, self.interval * self.misses / 2)

    def wake(self) -> None:
        """Ask the thread to look at the held replies soon (main thread, entering a task)."""
        if not self._woken:
            self._woken = True
            os.write(self._wake_w, b"x")

    def configure(self, interval: float, misses: int) -> None:
        self.interval, self.misses = interval, misses
        self.last_beat = time.monotonic()
        if self.lost_since is not None:
            logger.warning("the controller is back after %.1f s", self.last_beat - self.lost_since)
            self.lost_since = None
        self.configured = True

    def run(self) -> None:
        sock = self.engine.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.engine.ident)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, self.reconnect_ivl_ms)
        member_socket(sock, self.engine.info.heartbeat, self.engine.info.curve)
        sock.connect(self.engine.info.heartbeat)
        parent = self.engine.parent
        engine = self.engine
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        looked = time.monotonic()
        while True:
            # Once woken, look again when the hold ends, whatever the main thread is doing now: a
            # wake-up left standing would swallow the next (wake() writes to the pipe only when not
            # woken), and replies held behind a slow task would wait for the next beat.
            left_s = self.reply_hold_s - (time.monotonic() - engine.outbox_since)
            timeout_ms = math.ceil(max(0.0, left_s) * 1000) if self._woken else 100
            pushed = engine.pushed
            if pushed is not None and pushed.noting:  # notices of pushed tasks held: look when they are due
                timeout_ms = min(timeout_ms, math.ceil(max(pushed.notice_wait_s(), 0.001) * 1000))
            for ready, _ in poller.poll(timeout_ms):
                if ready is sock:
                    self._on_message(sock, recv_frames(sock))
                else:
                    try:
                        os.read(self._wake_r, 64)
                    except BlockingIOError:
                        pass
            now = time.monotonic()
            if now - looked > self._stall_limit():
                # This thread did not run for a while (the whole program was suspended: SIGSTOP,
                # a Slurm suspend, a frozen container, a closed laptop lid): the controller's
                # silence is counted from now, not across a stop that halted it too.
                logger.info(
                    "heartbeat: this thread was stopped for %.1f s; the controller's silence counts afresh",
                    now - looked,
                )
                self.last_beat = max(self.last_beat, now)
            looked = now
            if self._woken and time.monotonic() - engine.outbox_since >= self.reply_hold_s:
                self._send_held_replies()
            elif pushed is not None and engine.in_task and pushed.noting and pushed.notice_wait_s() == 0:
                self._send_held_replies()  # a pushed task runs past its notices' hold: the controller is told now
            if parent is not None and not parent.alive():
                self._orphaned(cluster_gone=True)
                _exit("its parent process ended", self.engine)
            # The controller stops beating when it dies: leave after twice the tolerance.
            if self.configured and time.monotonic() - self.last_beat > 2 * self.interval * self.misses:
                if parent is None and engine.reconnect_s > 0:
                    self._wait_for_controller()
                else:
                    self._orphaned(cluster_gone=parent is not None and not parent.alive())
                    _exit("the controller stopped sending heartbeats", self.engine)

    def _wait_for_controller(self) -> None:
        """The controller is silent: register again now and then, and exit if it is not back in time."""
        engine = self.engine
        now = time.monotonic()
        if self.lost_since is None:
            self.lost_since = now
            logger.warning(
                "the controller stopped sending heartbeats; waiting up to %.0f s for it to return", engine.reconnect_s
            )
        elif now - self.lost_since > engine.reconnect_s:
            self._orphaned(cluster_gone=False)
            _exit(f"the controller did not come back within {engine.reconnect_s:.0f} s", engine)
        if now - self._asked_again >= REGISTER_AGAIN_S:
            self._asked_again = now
            if engine.lock.acquire(blocking=False):  # free: a task runs
                try:
                    engine.register_again()
                finally:
                    engine.lock.release()
            else:  # the main thread waits for work, holding the lock: it sends it when its wait ends (<= 1 s)
                engine.register_due = True

    def _orphaned(self, cluster_gone: bool) -> None:
        """Leaving without the controller's word: remove the shared-memory segments nobody else will.

        Its own always (the names it maps under, and those it keeps for
        reuse). The whole cluster's only once its controller, their owner,
        is dead (a hidden cluster's controller is this engine's parent):
        one that is merely silent (stuck, or stopped) may be holding
        queued tasks whose arguments those segments are.
        """
        prefix = self.engine.info.shm_prefix
        if not prefix:
            return
        if cluster_gone:
            _shm.remove_all(prefix)
        else:
            _shm.remove_kept(prefix, "e", os.getpid())

    def _send_held_replies(self) -> None:
        engine = self.engine
        self._woken = False
        # Never wait for the lock: if the main thread holds it, it is between
        # tasks and sends the replies itself; this thread must stay free to beat.
        if not engine.lock.acquire(blocking=False):
            return
        try:
            if engine.in_task and engine.holding():
                engine.flush(notices=True)
        finally:
            engine.lock.release()

    def _on_message(self, sock: zmq.Socket[Any], frames: list[Any]) -> None:
        try:
            msg = self.session.unpack(frames)
        except Exception as exc:
            logger.error("heartbeat: dropped a message: %s: %s", type(exc).__name__, exc)
            return
        try:
            if msg.msg_type == MsgType.HEARTBEAT_REQUEST.value:
                self.last_beat = time.monotonic()
                send_frames(sock, self.session.build(MsgType.HEARTBEAT_REPLY, {"beat": msg.header.get("beat")}))
            elif msg.msg_type == MsgType.INTERRUPT_REQUEST.value:
                ids = msg.content.get("ids")
                if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
                    raise ProtocolError("interrupt_request with ids that are not a list of task ids")
                self.engine.request_interrupt(None if ids is None else set(ids))
            elif msg.msg_type == MsgType.RECALL_REQUEST.value:
                ids = msg.content.get("ids")
                if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
                    raise ProtocolError("recall_request without a list of task ids")
                given = self.engine.give_back(set(ids))
                reply = encode({"ids": ids, "recalled": given})
                send_frames(sock, self.session.build(MsgType.RECALL_REPLY, content=reply))
            elif msg.msg_type == MsgType.SHUTDOWN_REQUEST.value:
                _exit("the controller asked it to shut down", self.engine, level=logging.INFO)
            else:
                logger.error("heartbeat: dropped a message of unexpected type %r", msg.msg_type)
        except Exception as exc:  # this thread must live: it keeps the engine alive
            logger.error("heartbeat: dropped a message (%s): %s: %s", msg.msg_type, type(exc).__name__, exc)


# How long an exiting engine waits for MPI_Finalize (see _finalize_mpi), in seconds.
MPI_FINALIZE_S = 2.0


def _exit(why: str, engine: Engine, level: int = logging.WARNING) -> None:
    logger.log(level, "engine exiting: %s", why)
    if engine.pushed is not None:  # no client connects to it any more
        engine.pushed.unlink()
    shared = engine.shared
    if shared is not None:
        shared.close(timeout=1.0)  # its spare segments: nobody else would remove them before the cluster ends
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    _finalize_mpi()
    os._exit(0)


def _finalize_mpi() -> None:
    """Finalize MPI if a task initialized it (mpi4py), so that ``mpiexec`` sees a clean exit, not an abort.

    Bounded: if finalizing does not return within 2 s (a collective left
    half done), the engine exits all the same.
    """
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None:
        return
    try:
        if not mpi.Is_initialized() or mpi.Is_finalized():
            return
        watchdog = threading.Timer(MPI_FINALIZE_S, os._exit, (0,))
        watchdog.daemon = True
        watchdog.start()
        mpi.Finalize()
    except Exception as exc:  # (exiting anyway)
        logger.warning("engine exiting: MPI_Finalize failed: %s", exc)
