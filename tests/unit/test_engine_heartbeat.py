"""The engine's heartbeat thread sends the replies held behind a slow task (zpool.engine.heartbeat).

A stand-in engine, no processes: the thread runs as in an engine, with a
socket nobody answers, and leaves when its stand-in parent "dies".
"""

from __future__ import annotations

import os
import select
import threading
import time
import types

import pytest
import zmq

from zpool.engine import heartbeat
from zpool.protocol import new_key

HOLD_S = 0.002  # the engine's REPLY_HOLD_S


class Sockets:
    """A context that keeps the sockets it made, to close them where the thread leaves."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.ctx = ctx
        self.made: list[zmq.Socket] = []

    def socket(self, kind: int) -> zmq.Socket:
        self.made.append(self.ctx.socket(kind))
        return self.made[-1]


class StandInEngine:
    """What the heartbeat thread reads of an Engine, and a flush that records itself."""

    def __init__(self, ctx: Sockets) -> None:
        self.info = types.SimpleNamespace(
            key=new_key(), heartbeat="inproc://zpool-test-heartbeat", shm_prefix=None, curve=None
        )
        self.ctx = ctx
        self.ident = b"engine-test"
        self.parent = self
        self.running = True
        self.shared = None
        self.lock = threading.Lock()
        self.in_task = False
        self.held = 0  # replies held
        self.pushed = None  # no direct socket (its notices are looked at unwoken)
        self.outbox_since = 0.0
        self.flushed = threading.Event()

    def alive(self) -> bool:  # (as the parent watch)
        return self.running

    def holding(self) -> bool:
        return bool(self.held)

    def flush(self, notices: bool = False) -> None:
        assert notices  # what is held behind a slow task includes the controller's notices of pushed tasks
        self.held = 0
        self.flushed.set()


class Left(Exception):
    """Raised where the engine would end its process."""


@pytest.fixture
def beats(monkeypatch):
    def leave(why, shared, level=0):
        for sock in engine.ctx.made:
            sock.close(linger=0)
        raise Left(why)

    def run():
        with pytest.raises(Left, match="its parent process ended"):
            thread_of.run()

    monkeypatch.setattr(heartbeat, "_exit", leave)
    ctx = zmq.Context()
    engine = StandInEngine(Sockets(ctx))
    thread_of = heartbeat.Heartbeat(engine, HOLD_S, 10)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield engine, thread_of
    finally:
        engine.running = False
        thread.join(5)
        assert not thread.is_alive()
        for sock in engine.ctx.made:  # (already closed, unless the thread died of an error: term() would hang)
            sock.close(linger=0)
        ctx.term()
        os.close(thread_of._wake_r)
        os.close(thread_of._wake_w)


def wait_read(fd: int, timeout: float = 5.0) -> None:
    """Until the thread has read the wake-up pipe."""
    deadline = time.monotonic() + timeout
    while select.select([fd], [], [], 0)[0]:
        assert time.monotonic() < deadline, "the heartbeat thread never read its wake-up pipe"
        time.sleep(0.001)


def test_replies_held_behind_a_slow_task_go_out_when_the_hold_ends(beats):
    engine, thread_of = beats
    delays = []
    for _ in range(3):
        # Woken for a task that ended before the thread looked: nothing held any more.
        engine.held, engine.outbox_since, engine.in_task = 0, time.monotonic(), False
        engine.flushed.clear()
        thread_of.wake()
        wait_read(thread_of._wake_r)
        time.sleep(0.01)
        # The next task is slow and replies are held (the worker wakes the thread once in_task is set).
        engine.held, engine.outbox_since = 1, time.monotonic()
        engine.in_task = True
        began = time.monotonic()
        thread_of.wake()
        assert engine.flushed.wait(5)
        delays.append(time.monotonic() - began)
        engine.in_task = False
    # Within the hold (2 ms) and some scheduling; a swallowed wake-up waited for the 100 ms poll.
    assert min(delays) < 0.05, delays


class HeldNotices:
    """What the heartbeat thread reads of an engine's PushedTasks: notices held since `since`."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.since = time.monotonic()
        self.noting = True

    def notice_wait_s(self) -> float:
        return max(0.0, self.since + self.hold_s - time.monotonic())


def test_notices_of_pushed_tasks_go_out_when_due_while_a_task_runs_without_a_wake_up(beats):
    """The main thread does not wake the thread for notices alone (one wake-up per quick pushed call)."""
    engine, _ = beats
    hold_s = 0.05
    engine.holding = lambda: engine.pushed is not None and engine.pushed.noting
    engine.in_task = True  # a pushed task runs past its notices' hold
    began = time.monotonic()
    engine.pushed = HeldNotices(hold_s)
    assert engine.flushed.wait(5)
    waited = time.monotonic() - began
    # Not before they were due; well before the thread's 100 ms idle poll would have looked.
    assert hold_s - 0.002 <= waited < 0.5
    # A task that ends first: nothing is sent for it by this thread (the main thread sends when due).
    engine.flushed.clear()
    engine.in_task = False
    engine.pushed = HeldNotices(0.01)
    time.sleep(0.2)
    assert not engine.flushed.is_set()
    engine.pushed.noting = False
