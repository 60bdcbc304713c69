"""Recall on real pools: a task queued behind a long one moves to an idle engine, and aborts, retries and
maxtasksperchild still hold when it does.

The scheduler's side of recall, without sockets, is in tests/unit/test_scheduler.py.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests import _tasks
from tests._wait import engine_holding, wait_running
from zpool.error import TaskAborted


@pytest.mark.timeout(60)
def test_task_queued_behind_a_long_one_moves_to_the_idle_engine(fresh_pool):
    pool = fresh_pool(2)
    began = time.monotonic()
    long = pool.apply_async(_tasks.sleep_pid, (4.0,))
    filler = pool.apply_async(_tasks.sleep_pid, (0.3,))
    queued = pool.apply_async(_tasks.sleep_pid, (0.1,))  # placed behind `long` (least recently used of two)
    pid = queued.get(timeout=30)
    took = time.monotonic() - began
    assert pid == filler.get(timeout=30) and pid != long.get(timeout=30)
    assert took < 3.5, f"the queued task waited {took:.1f} s, behind the long task"


@pytest.mark.timeout(60)
def test_abort_of_a_queued_task_fails_it_at_once(fresh_pool):
    pool = fresh_pool(1)
    long = pool.apply_async(_tasks.sleep_then, (3.0, "long"))
    queued = pool.apply_async(_tasks.getpid)
    engine_holding(pool, 2)  # both on the one engine,
    wait_running(pool, 1)  # `long` running
    began = time.monotonic()
    pool.abort(queued)
    with pytest.raises(TaskAborted):
        queued.get(timeout=30)
    assert time.monotonic() - began < 2.0
    assert long.get(timeout=30) == "long"


@pytest.mark.timeout(120)
def test_maxtasksperchild_holds_with_recall(fresh_pool):
    pool = fresh_pool(2, maxtasksperchild=2)
    seconds = [0.6, 0.02, 0.02, 0.02, 0.4, 0.02, 0.02, 0.02]
    pids = pool.map(_tasks.sleep_pid, seconds, chunksize=1)
    assert len(pids) == len(seconds)
    counts = {pid: pids.count(pid) for pid in set(pids)}
    assert max(counts.values()) <= 2, counts


@pytest.mark.timeout(120)
def test_many_tiny_tasks_behind_uneven_ones_all_answered_once(fresh_pool):
    pool = fresh_pool(2)
    for _ in range(3):
        slow = [pool.apply_async(_tasks.sleep_then, (0.3, i)) for i in range(2)]
        results = pool.map_async(_tasks.square, range(5000), chunksize=1)
        assert results.get(timeout=60) == [i * i for i in range(5000)]
        assert [r.get(timeout=30) for r in slow] == [0, 1]
    assert pool.queue_status()["unassigned"] == 0


@pytest.mark.timeout(120)
def test_aborted_queued_task_does_not_run_after_its_engine_dies(fresh_pool):
    pool = fresh_pool(2, heartbeat_misses=200)
    # sum(range(n)) holds the interpreter lock in C for seconds: the engine's heartbeat thread cannot answer
    # a recall meanwhile (nor would a real engine stuck in C code, or one killed an instant later).
    hog = pool.apply_async(sum, (range(400_000_000),))
    filler = pool.apply_async(_tasks.sleep_then, (0.5, "filler"))
    victim = pool.apply_async(_tasks.getpid, retries=1)  # queued behind the hog
    _, pid = engine_holding(pool, 2)
    assert filler.get(timeout=30) == "filler"
    pool.abort(victim)  # returns once the controller has recorded the abort (and told the engine)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TaskAborted):
        ran_on = victim.get(timeout=30)
        pytest.fail(f"the aborted task ran (on pid {ran_on})")
    with pytest.raises(Exception):
        hog.get(timeout=30)
