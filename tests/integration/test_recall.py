"""Adversarial review of recall (tasks queued on a busy engine taken back for an idle one).

Pure-scheduler cases drive :class:`zpool.controller.scheduler.Scheduler` directly, playing the engine's
part; the others run real pools. Two bugs it found are fixed: a stale recall reply naming a retried task, and an
aborted queued task retried after its engine died.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests import _tasks
from zpool.controller.scheduler import Scheduler, Task
from zpool.error import TaskAborted

# -- pure scheduler ---------------------------------------------------------------------------------------------------


def _task(task_id: str, **flags) -> Task:
    return Task(task_id, b"client", [b"payload"], flags or None)


def _two_engines(**kwargs) -> tuple[Scheduler, object, object]:
    s = Scheduler("leastload", hwm=2, **kwargs)
    return s, s.add_engine(0, b"e0"), s.add_engine(1, b"e1")


@pytest.mark.timeout(10)
def test_recall_gives_back_queued_task_to_idle_engine_scheduler():
    s, e0, e1 = _two_engines()
    s.submit([_task("A"), _task("F"), _task("X")])
    placed = s.assign()
    assert [t.task_id for t in placed[e0]] == ["A", "X"] and [t.task_id for t in placed[e1]] == ["F"]
    s.finish(e1, "F", True, 0.5)
    assert s.assign() == {}
    assert s.recalls() == {e0: ["X"]}
    assert s.recalls() == {}  # one request at a time
    assert s.recalled(e0, ["X"], ["X"]) == 1
    assert not e0.recalling and "X" not in e0.outstanding
    assert {slot: [t.task_id for t in ts] for slot, ts in s.assign().items()} == {e1: ["X"]}


@pytest.mark.timeout(10)
def test_recall_restores_maxtasksperchild_budget_scheduler():
    s = Scheduler("leastload", hwm=2)
    e0, e1 = s.add_engine(0, b"e0", budget=2), s.add_engine(1, b"e1", budget=2)
    s.submit([_task("A"), _task("F"), _task("X")])
    s.assign()
    assert e0.budget == 0
    s.finish(e1, "F", True, 0.5)
    s.assign()
    assert s.recalls() == {e0: ["X"]}
    s.recalled(e0, ["X"], ["X"])
    assert e0.budget == 1 and e1.budget == 1
    s.assign()
    assert "X" in e1.outstanding and e1.budget == 0


@pytest.mark.timeout(10)
def test_stale_recall_reply_for_a_retried_task_loses_it_scheduler():
    s, e0, e1 = _two_engines()
    s.submit([_task("A"), _task("F"), _task("X", retries=1)])
    s.assign()  # A, X -> e0; F -> e1
    s.finish(e1, "F", True, 0.5)
    s.assign()
    assert s.recalls() == {e0: ["X"]}  # the hub sends recall_request(ids=[X]) to e0's heartbeat socket
    # Before e0's heartbeat thread reads it: e1 gets new work, and on e0 A runs and X runs and fails.
    s.submit([_task("G1"), _task("G2")])
    s.assign()  # both to e1 (e0 is full)
    s.finish(e0, "A", True, 0.5)
    retried = s.finish(e0, "X", False, 0.5)
    assert retried is not None and not retried.final
    placed = s.assign()
    assert [t.task_id for t in placed[e0]] == ["X"]  # the retry goes to e0: e1 has no room
    # Now e0's heartbeat thread handles the old request: the retry of X is queued there, not started: it gives it
    # back (Engine.give_back takes every queued task whose id was asked for) and answers so.
    s.recalled(e0, ["X"], ["X"])
    # The engine no longer holds X: the scheduler must not either, or nobody ever runs or answers it.
    assert "X" not in e0.outstanding
    assert "X" in {t.task_id for t in s._ready_tasks()}


@pytest.mark.timeout(10)
def test_recall_reply_with_unasked_or_foreign_ids_is_ignored_scheduler():
    s, e0, e1 = _two_engines()
    s.submit([_task("A"), _task("F"), _task("X"), _task("Y")])
    s.assign()  # A, X -> e0; F, Y -> e1
    # Ids given back but not asked for, and ids the engine does not hold (another's, or unknown), change nothing.
    assert s.recalled(e0, ["X", "Y", "nope"], ["Y", "nope"]) == 0
    assert set(e0.outstanding) == {"A", "X"} and set(e1.outstanding) == {"F", "Y"}


@pytest.mark.timeout(10)
def test_recall_reply_after_the_request_timed_out_still_counts_scheduler():
    s, e0, e1 = _two_engines(clock=lambda: now[0])
    now = [0.0]
    s.submit([_task("A"), _task("F"), _task("X")])
    s.assign()  # A, X -> e0; F -> e1
    s.finish(e1, "F", True, 0.5)
    s.assign()
    assert s.recalls() == {e0: ["X"]}
    assert s.recalls() == {}  # still awaiting the answer
    now[0] += 5.0  # no answer (an engine in C code holding the GIL): the request no longer blocks others
    assert s.recalls() == {e0: ["X"]}  # asked again
    # The late answer: X was dropped by the engine, so it is ready again, not lost.
    assert s.recalled(e0, ["X"], ["X"]) == 1
    assert "X" not in e0.outstanding and "X" in {t.task_id for t in s._ready_tasks()}


@pytest.mark.timeout(10)
def test_no_recall_under_load_blind_schemes_scheduler():
    for scheme in ("lru", "plainrandom", "twobin"):
        s = Scheduler(scheme, hwm=2, seed=1)
        e0, e1 = s.add_engine(0, b"e0"), s.add_engine(1, b"e1")
        s.submit([_task("A"), _task("B"), _task("C"), _task("D")])
        s.assign()
        for slot in (e0, e1):
            if len(slot.outstanding) < 2:
                for task_id in list(slot.outstanding):
                    s.finish(slot, task_id, True, 0.5)
        assert s.recalls() == {}


# -- real pools -------------------------------------------------------------------------------------------------------


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
    time.sleep(0.5)  # both on the one engine, `long` running
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


def _engine_holding(pool, load: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = pool.queue_status()
        for engine_id, info in status["engines"].items():
            if info["queue"] == load:
                return status["engine_pids"][engine_id]
        time.sleep(0.05)
    raise AssertionError(f"no engine holds {load} tasks: {pool.queue_status()}")


@pytest.mark.timeout(120)
def test_aborted_queued_task_does_not_run_after_its_engine_dies(fresh_pool):
    pool = fresh_pool(2, heartbeat_misses=200)
    # sum(range(n)) holds the interpreter lock in C for seconds: the engine's heartbeat thread cannot answer
    # a recall meanwhile (nor would a real engine stuck in C code, or one killed an instant later).
    hog = pool.apply_async(sum, (range(400_000_000),))
    filler = pool.apply_async(_tasks.sleep_then, (0.5, "filler"))
    victim = pool.apply_async(_tasks.getpid, retries=1)  # queued behind the hog
    pid = _engine_holding(pool, 2)
    assert filler.get(timeout=30) == "filler"
    pool.abort(victim)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TaskAborted):
        ran_on = victim.get(timeout=30)
        pytest.fail(f"the aborted task ran (on pid {ran_on})")
    with pytest.raises(Exception):
        hog.get(timeout=30)
