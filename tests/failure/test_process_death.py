"""Processes dying: engines, the controller, and the user process itself.

Nothing hangs and nothing outlives its Pool: a dead engine fails only the
task it held (and is replaced), a dead controller breaks waiting calls
within a bounded time, and a dead user process takes its cluster along.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import zpool
from tests import _tasks
from tests._wait import engine_holding, engine_started

T = 60
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_engine_killed_mid_task_fails_that_task_and_is_replaced(fresh_pool):
    pool = fresh_pool(2)
    ar = pool.apply_async(_tasks.sleep_then, (30,))
    engine_id, pid = engine_started(pool, ar.msg_ids[0])
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(zpool.EngineError, match=rf"engine {engine_id} \(pid {pid}\) died from SIGKILL\(-9\)") as info:
        ar.get(T)
    assert "ran out of memory" in str(info.value)
    ids = pool.wait_for_engines(2, timeout=T)
    assert engine_id not in ids and len(ids) == 2
    assert pool.map(_tasks.square, range(20)) == [x * x for x in range(20)]


def test_stalled_engine_is_declared_dead_by_missed_heartbeats(fresh_pool):
    """SIGSTOP: the process lives, its heartbeat thread cannot answer; after the tolerance it is dead."""
    pool = fresh_pool(2, heartbeat_interval=0.1, heartbeat_misses=10)  # 1 s of silence
    ar = pool.apply_async(_tasks.sleep_then, (30,))
    engine_id, pid = engine_started(pool, ar.msg_ids[0])
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        with pytest.raises(zpool.EngineError, match=rf"engine {engine_id} .*missed.*task {ar.msg_ids[0]}") as info:
            ar.get(T)
        assert time.monotonic() - started < 15
        assert "stopped answering heartbeats" in str(info.value)
    finally:
        with contextlib.suppress(ProcessLookupError):  # declared dead, it was killed: nothing to resume
            os.kill(pid, signal.SIGCONT)
    try:
        psutil.Process(pid).wait(T)  # a local engine declared dead is killed
    except psutil.NoSuchProcess:
        pass
    ids = pool.wait_for_engines(2, timeout=T)
    assert engine_id not in ids
    assert pool.map(_tasks.square, range(10)) == [x * x for x in range(10)]


def test_task_that_exits_the_engine(fresh_pool):
    pool = fresh_pool(1)
    with pytest.raises(zpool.EngineError, match="exited with exit code 3"):
        pool.apply_async(_tasks.exit_now, (3,)).get(T)
    pool.wait_for_engines(1, timeout=T)
    assert pool.apply(_tasks.square, (5,)) == 25


def test_controller_killed_breaks_waiting_calls(fresh_pool):
    pool = fresh_pool(2)
    ar = pool.apply_async(_tasks.sleep_then, (30,))
    engine_holding(pool)
    started = time.monotonic()
    os.kill(pool._cluster.proc.pid, signal.SIGKILL)
    with pytest.raises(zpool.BrokenPoolError, match="controller process .* ended with SIGKILL"):
        ar.get(T)
    assert time.monotonic() - started < 5
    with pytest.raises(zpool.BrokenPoolError):
        pool.apply_async(_tasks.square, (1,))
    with pytest.raises(zpool.BrokenPoolError):
        pool.queue_status()
    # The orphaned engines notice their parent is gone; the leak check verifies they exit.


@pytest.mark.parametrize(
    "wait",
    [
        pytest.param(lambda pool, ar, it: (ar.wait(T), ar.get(0)), id="wait"),
        pytest.param(lambda pool, ar, it: list(it), id="imap"),
        pytest.param(lambda pool, ar, it: pool.map(_tasks.sleep_then, [30, 30]), id="map"),
        # join() returns once every task is answered (each with the error), as the pool's end.
        pytest.param(lambda pool, ar, it: (pool.close(), pool.join(), ar.get(0)), id="close-join"),
    ],
)
def test_controller_killed_breaks_every_kind_of_wait(fresh_pool, wait):
    pool = fresh_pool(2)
    ar = pool.apply_async(_tasks.sleep_then, (30,))
    it = pool.imap(_tasks.sleep_then, [30, 30])
    engine_holding(pool)
    threading.Timer(0.5, os.kill, (pool._cluster.proc.pid, signal.SIGKILL)).start()
    started = time.monotonic()
    with pytest.raises(zpool.BrokenPoolError, match="controller process .* ended with SIGKILL"):
        wait(pool, ar, it)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "wait",
    [
        pytest.param(lambda pool, ar, it: ar.get(T), id="get"),
        pytest.param(lambda pool, ar, it: (ar.wait(T), ar.get(0)), id="wait"),
        pytest.param(lambda pool, ar, it: list(it), id="imap"),
        pytest.param(lambda pool, ar, it: pool.apply(_tasks.square, (2,)), id="apply"),
    ],
)
def test_a_stuck_controller_breaks_waiting_calls(fresh_pool, wait):
    """Alive but silent (SIGSTOP): waiting calls raise within twice the heartbeat tolerance, not never."""
    pool = fresh_pool(2, heartbeat_interval=0.2, heartbeat_misses=5)  # silent 2 s: stuck
    ar = pool.apply_async(_tasks.sleep_then, (30,))
    it = pool.imap(_tasks.sleep_then, [30, 30])
    engine_holding(pool)
    controller = pool._cluster.proc.pid
    os.kill(controller, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(zpool.BrokenPoolError, match="controller has not answered for .* stuck"):
            wait(pool, ar, it)
        assert time.monotonic() - started < 15
        with pytest.raises(zpool.BrokenPoolError):
            pool.apply_async(_tasks.square, (1,))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(controller, signal.SIGCONT)


def test_long_tasks_keep_a_silent_but_healthy_controller_alive(fresh_pool):
    """Tasks that run far longer than the silence bound: the pings keep hearing the controller."""
    pool = fresh_pool(1, heartbeat_interval=0.1, heartbeat_misses=5)  # 1 s of silence would break
    assert pool.apply(_tasks.sleep_then, (4, "slept")) == "slept"
    assert pool.queue_status()["broken"] is None


def _run_script(body: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", body], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, **kwargs
    )


PRINT_TREE = textwrap.dedent("""
    import sys, time, zpool
    from tests import _tasks
    pool = zpool.Pool(2)
    pool.wait_for_engines(timeout=60)
    assert pool.apply(_tasks.square, (3,)) == 9
    print(pool._cluster.workdir, *pool._cluster.pids(), flush=True)
""")


def _read_tree(proc: subprocess.Popen) -> tuple[str, list[psutil.Process]]:
    line = proc.stdout.readline().split()
    assert line, proc.stderr.read()
    workdir, pids = line[0], [int(p) for p in line[1:]]
    assert len(pids) == 3  # controller and two engines
    return workdir, [psutil.Process(pid) for pid in pids]


def test_sigkill_of_user_process_leaves_no_survivors():
    proc = _run_script(PRINT_TREE + "time.sleep(120)\n", cwd=REPO)
    try:
        workdir, tree = _read_tree(proc)
        proc.kill()
        proc.wait(T)
        _, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, [p.pid for p in alive]
        assert not os.path.exists(workdir)
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize(
    "ending",
    [
        "",  # interpreter exit with the pool still running
        "raise RuntimeError('user bug')\n",  # uncaught exception at top level
        "pool.terminate()\n",
        "pool.close(); pool.join()\n",
        "del pool\n",
    ],
    ids=["exit", "exception", "terminate", "close-join", "del"],
)
def test_every_way_out_cleans_up(ending):
    proc = _run_script(PRINT_TREE + ending, cwd=REPO)
    try:
        workdir, tree = _read_tree(proc)
        proc.wait(T)
        _, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, [p.pid for p in alive]
        assert not os.path.exists(workdir)
        err = proc.stderr.read()
        assert "Exception ignored" not in err, err
        if "raise" in ending:
            assert "user bug" in err
            assert proc.returncode == 1
        else:
            assert proc.returncode == 0, err
    finally:
        proc.kill()
        proc.communicate()
