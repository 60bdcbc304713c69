"""The direct path: blocking calls pushed straight to the engines (zpool.client.pusher, zpool.engine.pushed).

A blocking ``apply`` or ``map`` without scheduling flags goes from the
calling thread to the engines' own sockets and back, while the engines
tell the controller. These tests check that the path is taken, that the
controller still knows every task, and that whatever ends a call (an
engine's death, Ctrl-C, the controller's death, ``terminate()``, a client
that goes away) ends it as on the controller's path.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time

import pytest
import zmq

import zpool
from tests import _tasks
from tests._wait import ctrl_c_after, engine_started, wait_empty, wait_stable, wait_until
from zpool._stream import FramedSocket
from zpool.error import BrokenPoolError, EngineError, TaskAborted
from zpool.protocol import BatchWriter, MsgType, Session, recv_frames, send_frames
from zpool.serialize import dumps_call

T = 60
PROMPT = 10.0
LONG = 60.0


def pushing_ready(pool) -> None:
    """Until the pool's blocking calls are pushed to every engine (the first asks the controller where to).

    (A map of one-item chunks: one-task calls keep to one engine.)
    """
    pusher = pool._conn._own.pusher
    n = pool._processes
    wait_until(
        lambda: (
            pool.map(_tasks.square, range(n), chunksize=1) == [x * x for x in range(n)]
            and pusher.roster
            and pusher.up == set(pusher.roster)
        ),
        T,
        "sockets to every engine of the roster",
    )


def known(pool) -> int:
    """Tasks the controller holds on engines or saw finish there."""
    return sum(e["queue"] + e["completed"] + e["failed"] for e in pool.queue_status()["engines"].values())


def completed(pool) -> int:
    return sum(e["completed"] + e["failed"] for e in pool.queue_status()["engines"].values())


def test_blocking_calls_are_pushed_and_the_controller_records_them(fresh_pool):
    pool = fresh_pool(2)
    pushing_ready(pool)
    before = wait_stable(lambda: completed(pool), 0.3)
    pids = {pool.apply(_tasks.getpid) for _ in range(10)}
    assert len(pids) == 1  # one after the other, on the engine still warm from the last
    assert len(set(pool.map(_tasks.getpid, range(8), chunksize=1))) == 2  # a map's chunks: spread
    assert pool.map(_tasks.square, range(40)) == [x * x for x in range(40)]
    assert pool.starmap(_tasks.add, [(1, 2), (3, 4)]) == [3, 7]
    with pytest.raises(ValueError, match="pushed"):
        pool.apply(_tasks.raise_value_error, ("pushed",))
    assert not pool._conn._own.sent  # nothing went the controller's way
    assert not pool._conn._own.pusher.where  # every pushed task was answered
    # The controller knows each (10 applies, 8 + 8 map chunks, 2 starmap chunks, the failure).
    wait_until(lambda: completed(pool) - before == 29, T, "the controller recorded the pushed tasks")


def test_a_call_with_flags_or_shared_memory_is_not_pushed(fresh_pool):
    import numpy as np

    pool = fresh_pool(1)
    pushing_ready(pool)
    assert pool.apply(_tasks.square, (3,), retries=1) == 9
    big = np.ones(1 << 18)  # 2 MiB: through shared memory, which the controller owns
    assert pool.apply(_tasks.digest, (big,)) == _tasks.digest(big)
    assert not pool._conn._own.pusher.where


def test_engine_killed_during_a_pushed_call_fails_it_and_the_next_calls_use_the_others(fresh_pool):
    pool = fresh_pool(2)
    pushing_ready(pool)
    victim = []

    def kill_engine():
        task_id = wait_until(lambda: next(iter(pool._conn._own.pusher.where), None), T, "a pushed task")
        engine_id, pid = engine_started(pool, task_id)
        victim.append((engine_id, pid))
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_engine)
    killer.start()
    with pytest.raises(EngineError, match="SIGKILL") as info:
        pool.apply(_tasks.sleep_pid, (LONG,))
    killer.join(T)
    engine_id, pid = victim[0]
    assert f"engine {engine_id} (pid {pid})" in str(info.value)
    # The roster drops it, then takes in its replacement: calls keep being pushed, to engines alive.
    ids = pool.wait_for_engines(2, timeout=T)
    assert engine_id not in ids
    wait_until(lambda: sorted(pool._conn._own.pusher.roster or ()) == sorted(ids), T, "the roster updated")
    assert {pool.apply(_tasks.getpid) for _ in range(10)} <= {p.pid for p in pool._pool}
    assert pid not in {pool.apply(_tasks.getpid) for _ in range(10)}


def test_tasks_queued_behind_a_dying_pushed_task_run_elsewhere(fresh_pool):
    pool = fresh_pool(2)
    pushing_ready(pool)
    first_pid = []

    def kill_first():
        task_id = wait_until(lambda: min(pool._conn._own.pusher.where, default=None), T, "pushed tasks")
        _, pid = engine_started(pool, task_id)
        first_pid.append(pid)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_first)
    killer.start()
    # Four chunks, two per engine: the first on one engine sleeps; the chunk behind it runs elsewhere.
    with pytest.raises(EngineError, match="SIGKILL"):
        pool.map(_tasks.sleep_then, [LONG, 0, 0, 0], chunksize=1)
    killer.join(T)
    assert pool.map(_tasks.square, range(8)) == [x * x for x in range(8)]


def test_ctrl_c_during_a_pushed_call_stops_the_task(fresh_pool):
    pool = fresh_pool(1)
    pushing_ready(pool)
    ctrl_c_after(1.0)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pool.apply(time.sleep, (LONG,))
    assert time.monotonic() - started < PROMPT
    # The engine was interrupted, not left to sleep for a minute.
    wait_empty(lambda: [e for e in pool.queue_status()["engines"].values() if e["queue"]], PROMPT, "the engine freed")
    assert pool.apply(_tasks.square, (5,)) == 25


def test_controller_killed_during_a_pushed_call_raises_broken_pool(fresh_pool):
    pool = fresh_pool(1)
    pushing_ready(pool)
    timer = threading.Timer(1.0, os.kill, (pool._cluster.proc.pid, signal.SIGKILL))
    timer.start()
    started = time.monotonic()
    with pytest.raises(BrokenPoolError):
        pool.apply(_tasks.sleep_then, (LONG, "never"))
    assert time.monotonic() - started < PROMPT + 1
    timer.join()


def test_terminate_from_another_thread_during_a_pushed_call(fresh_pool):
    pool = fresh_pool(1)
    pushing_ready(pool)
    stopper = threading.Timer(1.0, pool.terminate)
    stopper.start()
    with pytest.raises((TaskAborted, zpool.PoolClosedError)):
        pool.apply(_tasks.sleep_then, (LONG, "never"))
    stopper.join()
    pool.join()


def test_a_client_that_goes_away_with_pushed_tasks_leaves_the_engines_serving(fresh_pool):
    """Another client of the same cluster pushes tasks to an engine, then vanishes mid-call."""
    pool = fresh_pool(2)
    pushing_ready(pool)
    info = pool._cluster.info
    before = wait_stable(lambda: known(pool), 0.3)
    ctx = zmq.Context()
    push = None
    try:
        session = Session(info.key)
        route = b"c" + os.urandom(15)
        own = ctx.socket(zmq.DEALER)
        own.setsockopt(zmq.IDENTITY, route)
        own.setsockopt(zmq.LINGER, 0)
        own.connect(info.client)
        send_frames(own, session.build(MsgType.ROSTER_REQUEST))
        assert own.poll(T * 1000)
        roster = session.unpack(recv_frames(own)).content["engines"]
        _, address = sorted(roster.items())[0]
        push = FramedSocket.connect(address)
        batch = BatchWriter()
        batch.add("gone-client-1", list(dumps_call(time.sleep, (2.0,), {})))
        batch.add("gone-client-2", list(dumps_call(time.sleep, (0.5,), {})))
        fields = batch.fields()
        fields.update(pushed=True, route=route.hex())
        assert push.send(session.build(MsgType.APPLY_REQUEST, fields, buffers=batch.buffers()))
        assert not push.sending
        # The controller knows both (the second may be recalled for the idle engine, and run there).
        wait_until(lambda: known(pool) - before == 2, T, "the controller knows the pushed tasks")
    finally:
        if push is not None:
            push.close()
        ctx.destroy(linger=0)  # the client vanishes with its tasks on the engine
    # Its tasks run out; their replies go nowhere; the engines serve this pool all along.
    assert pool.map(_tasks.square, range(10)) == [x * x for x in range(10)]
    # Its 2 tasks, the map's 5 chunks and the 10 below (on each engine).
    assert set(pool.map(_tasks.getpid, range(10), chunksize=1)) == {p.pid for p in pool._pool}
    wait_until(lambda: completed(pool) - before >= 2 + 5 + 10, T, "the vanished client's tasks done")


def test_a_call_pushed_to_an_engine_that_dies_before_reading_it_runs_on_another(fresh_pool):
    pool = fresh_pool(1)
    pushing_ready(pool)
    (engine,) = pool._pool
    os.kill(engine.pid, signal.SIGSTOP)  # it cannot read what is pushed to it now
    outcome = []
    caller = threading.Thread(target=lambda: outcome.append(pool.apply(_tasks.getpid)))
    caller.start()
    wait_until(lambda: pool._conn._own.pusher.where, T, "the call pushed to the stopped engine")
    os.kill(engine.pid, signal.SIGKILL)
    caller.join(T)
    # It never started there (the engine's run slot says so): sent again the controller's way, it ran on the
    # replacement.
    assert outcome and outcome[0] != engine.pid
    assert pool.apply(_tasks.square, (3,)) == 9


def test_unsigned_or_malformed_input_on_a_direct_socket_is_dropped_and_the_engine_serves_on(fresh_pool):
    pool = fresh_pool(1)
    pushing_ready(pool)
    (address,) = pool._conn._own.pusher.roster.values()
    # A well-framed message signed with another key: verified, refused, never run.
    forged = FramedSocket.connect(address)
    batch = BatchWriter()
    batch.add("forged-1", list(dumps_call(os._exit, (9,), {})))
    fields = batch.fields()
    fields.update(pushed=True, route=(b"c" + os.urandom(15)).hex())
    assert forged.send(Session(b"not-the-cluster-key").build(MsgType.APPLY_REQUEST, fields, buffers=batch.buffers()))
    # Frames that make no sense: the engine cuts that connection off.
    garbage = FramedSocket.connect(address)
    garbage.sock.sendall(struct.pack("<I", 0xFFFFFFFF) + os.urandom(64))
    wait_until(lambda: garbage.receive() == [] and garbage.closed, T, "the engine closing the malformed connection")
    forged.close()
    garbage.close()
    # The engine is the same one (the forged task, os._exit, never ran), and serves pushed calls.
    (engine,) = pool._pool
    assert pool.apply(_tasks.getpid) == engine.pid
    assert pool.map(_tasks.square, range(6)) == [x * x for x in range(6)]
    assert pool.apply(_tasks.getpid) == engine.pid
    assert not pool._conn._own.sent  # all pushed
