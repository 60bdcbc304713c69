"""Stuck tasks and Ctrl-C: interrupt(), abort(interrupt=True), KeyboardInterrupt in blocking calls, terminate().

Ctrl-C is a real SIGINT sent to this process from a timer thread, while
the main thread waits in a blocking call, as a terminal would send it.
A task that is not interrupted sleeps for a minute: a follow-up call that
answers within the test's bound proves the engines were freed.
"""

from __future__ import annotations

import functools
import os
import signal
import time

import psutil
import pytest

import zpool
from tests import _tasks
from tests._wait import ctrl_c_after, engine_gone, wait_entered, wait_in_task
from zpool.error import EngineError, TaskAborted

T = 60
LONG = 60.0  # seconds a task runs unless interrupted


def spin_forever():
    while True:
        pass


def catch_interrupt(seconds):
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        return "caught"
    return "slept"


def engine_pids(pool) -> dict[str, int]:
    return dict(pool.queue_status()["engine_pids"])


@pytest.mark.timeout(120)
def test_interrupt_stops_a_spinning_and_a_sleeping_task(fresh_pool, tmp_path):
    pool = fresh_pool(2)
    pids = engine_pids(pool)
    spinning = pool.engines[0].apply_async(_tasks.entered, str(tmp_path), spin_forever)
    sleeping = pool.engines[1].apply_async(_tasks.entered, str(tmp_path), time.sleep, LONG)
    wait_entered(str(tmp_path), 2)
    pool.engines.interrupt()
    for ar, engine_id in ((spinning, 0), (sleeping, 1)):
        with pytest.raises(TaskAborted, match=f"interrupted while running on engine {engine_id}"):
            ar.get(T)
        assert ar.metadata["status"] == "aborted"
    # The same engines go on serving.
    assert engine_pids(pool) == pids
    assert pool.engines.apply(_tasks.getpid) == [pids["0"], pids["1"]]
    assert pool.map(_tasks.square, range(10)) == [x * x for x in range(10)]


@pytest.mark.timeout(120)
def test_interrupt_reaches_only_the_engines_of_the_view(fresh_pool, tmp_path):
    pool = fresh_pool(2)
    stuck = pool.engines[0].apply_async(_tasks.entered, str(tmp_path), time.sleep, LONG)
    busy = pool.engines[1].apply_async(_tasks.entered, str(tmp_path), _tasks.sleep_then, 1.5, "done")
    wait_entered(str(tmp_path), 2)
    pool.engines[0].interrupt()
    with pytest.raises(TaskAborted):
        stuck.get(T)
    assert busy.get(T) == "done"  # engine 1 was left alone


@pytest.mark.timeout(120)
def test_a_task_may_catch_the_interrupt(fresh_pool, tmp_path):
    pool = fresh_pool(1)
    ar = pool.engines[0].apply_async(_tasks.entered, str(tmp_path), catch_interrupt, LONG)
    wait_entered(str(tmp_path), 1)
    pool.engines[0].interrupt()
    assert ar.get(T) == "caught"


@pytest.mark.timeout(120)
def test_an_engine_between_tasks_ignores_interrupts_and_sigint(fresh_pool):
    pool = fresh_pool(2)
    pids = engine_pids(pool)
    pool.engines.interrupt()
    for pid in pids.values():
        os.kill(pid, signal.SIGINT)  # as a stray Ctrl-C to its process would
    time.sleep(0.5)  # no event to wait for: the engines are given time to die, and must not
    assert all(psutil.pid_exists(pid) for pid in pids.values())
    assert engine_pids(pool) == pids
    assert pool.engines.apply(_tasks.square, 7) == [49, 49]


@pytest.mark.timeout(120)
def test_sigint_to_an_engine_interrupts_its_task(fresh_pool, tmp_path):
    pool = fresh_pool(1)
    pid = engine_pids(pool)["0"]
    ar = pool.apply_async(_tasks.entered, (str(tmp_path), time.sleep, LONG))
    wait_entered(str(tmp_path), 1)
    os.kill(pid, signal.SIGINT)
    with pytest.raises(zpool.RemoteError, match="KeyboardInterrupt"):
        ar.get(T)
    assert pool.apply(_tasks.getpid) == pid


@pytest.mark.timeout(120)
def test_interrupt_of_an_engine_no_longer_up(fresh_pool):
    pool = fresh_pool(2)
    view = pool.engines[1]
    pid = engine_pids(pool)["1"]
    os.kill(pid, signal.SIGKILL)
    engine_gone(pool, 1)
    with pytest.raises(EngineError, match="engine 1 is no longer up"):
        view.interrupt()


@pytest.mark.timeout(120)
def test_abort_with_interrupt_stops_running_and_queued_tasks(fresh_pool, tmp_path):
    pool = fresh_pool(2)
    ar = pool.map_async(functools.partial(_tasks.entered, str(tmp_path), time.sleep), [LONG] * 6, chunksize=1)
    wait_entered(str(tmp_path), 2)
    reply = pool.abort(ar, interrupt=True)
    assert reply["aborted"] + reply["sent_to_engines"] == 6
    with pytest.raises(TaskAborted):
        ar.get(T)
    # The two running were interrupted: both engines answer at once, with nothing left running or queued.
    assert pool.map(_tasks.square, range(4), chunksize=1) == [0, 1, 4, 9]
    status = pool.queue_status()
    assert sum(e["running"] + e["queued"] for e in status["engines"].values()) == 0
    # The two interrupted failed on their engines; those queued behind them came back and failed at once
    # (or, had their engine not given them back, failed there before starting).
    assert 2 <= sum(e["failed"] for e in status["engines"].values()) <= reply["sent_to_engines"]


@pytest.mark.timeout(120)
def test_abort_without_interrupt_lets_running_tasks_finish(fresh_pool, tmp_path):
    pool = fresh_pool(1)
    running = pool.apply_async(_tasks.entered, (str(tmp_path), _tasks.sleep_then, 1.0, "finished"))
    queued = pool.apply_async(_tasks.sleep_then, (1.0, "never"))
    wait_entered(str(tmp_path), 1)
    pool.abort([running, queued])
    assert running.get(T) == "finished"
    with pytest.raises(TaskAborted):
        queued.get(T)


def test_abort_checks_its_interrupt_flag(pool):
    with pytest.raises(TypeError, match="interrupt"):
        pool.abort([], interrupt="yes")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda pool: pool.map(time.sleep, [LONG] * 4, chunksize=1), id="map"),
        pytest.param(lambda pool: pool.starmap(_tasks.sleep_then, [(LONG, i) for i in range(4)]), id="starmap"),
        pytest.param(lambda pool: pool.apply(time.sleep, (LONG,)), id="apply"),
        pytest.param(lambda pool: pool.engines.apply(time.sleep, LONG), id="engines.apply"),
        pytest.param(lambda pool: pool.engines[0].execute(f"import time; time.sleep({LONG})"), id="execute"),
    ],
)
def test_ctrl_c_in_a_blocking_call_aborts_its_tasks(fresh_pool, call):
    pool = fresh_pool(2)
    pids = engine_pids(pool)
    ctrl_c_after(1.0)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        call(pool)
    assert time.monotonic() - started < 10  # promptly: not after the tasks' minute
    # The pool is usable and its engines are free again: the tasks were interrupted, not left to run.
    assert pool.map(_tasks.square, range(8), chunksize=1) == [x * x for x in range(8)]
    assert pool.engines.apply(_tasks.getpid) == [pids["0"], pids["1"]]
    status = pool.queue_status()
    assert sum(e["running"] + e["queued"] for e in status["engines"].values()) == 0


@pytest.mark.timeout(120)
def test_ctrl_c_in_get_of_an_async_result_leaves_its_tasks_alone(fresh_pool):
    pool = fresh_pool(1)
    ar = pool.apply_async(_tasks.sleep_then, (2.0, "kept"))
    ctrl_c_after(0.5)
    with pytest.raises(KeyboardInterrupt):
        ar.get()
    assert ar.get(T) == "kept"  # the caller may still want it: pool.abort(ar, interrupt=True) is there for that


@pytest.mark.timeout(120)
def test_ctrl_c_leaving_a_with_block_terminates_the_pool():
    before = set(psutil.Process().children(recursive=True))
    started = time.monotonic()
    ctrl_c_after(1.5)
    with pytest.raises(KeyboardInterrupt):
        with zpool.Pool(2, heartbeat_interval=0.2) as pool:
            pool.wait_for_engines(timeout=T)
            pool.map(spin_forever_arg, range(4))
    assert time.monotonic() - started < 30
    _, alive = psutil.wait_procs(list(set(psutil.Process().children(recursive=True)) - before), timeout=10)
    assert not alive


def spin_forever_arg(_):
    spin_forever()


@pytest.mark.timeout(120)
def test_terminate_ends_a_task_that_never_returns(fresh_pool, tmp_path):
    pool = fresh_pool(2)
    tree = [psutil.Process(pid) for pid in engine_pids(pool).values()]
    ar = pool.map_async(functools.partial(_tasks.entered, str(tmp_path), spin_forever_arg), range(2), chunksize=1)
    wait_entered(str(tmp_path), 2)
    started = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - started < 20
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive
    with pytest.raises(TaskAborted):
        ar.get(T)


class SlowToLoad:
    """An argument whose unpickling, in the engine, takes LONG seconds."""

    def __reduce__(self):
        return (_tasks.sleep_then, (LONG, None))


@pytest.mark.timeout(120)
def test_abort_with_interrupt_reaches_a_task_still_loading_its_arguments(fresh_pool):
    pool = fresh_pool(1)
    ar = pool.apply_async(_tasks.identity, (SlowToLoad(),))
    wait_in_task(pool, 1)
    pool.abort(ar, interrupt=True)
    with pytest.raises(TaskAborted, match="interrupted .* before it ran"):
        ar.get(T)
    assert pool.apply(_tasks.square, (6,)) == 36  # the engine is free at once
