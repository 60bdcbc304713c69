"""No shared-memory segment outlives its cluster, however the cluster ends.

Each test makes a pool of its own, gets large buffers into segments (32 MB
arguments held by running tasks, 32 MB results), ends things in one way or
another, and checks /dev/shm for the cluster's prefix (and, through the
autouse leak checks of conftest, for processes).
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

import zpool
from tests import _tasks
from tests._wait import engine_holding, engine_started, wait_empty, wait_until

T = 60
BIG = 32 << 20  # bytes
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def prefix_of(pool) -> str:
    prefix = pool._cluster.info.shm_prefix
    assert prefix, "this pool has no shared memory"
    return prefix


def segments(prefix: str, kept: bool = False) -> list[str]:
    """The segments a message names; with `kept`, also those writers keep for reuse (``-k<n>``, zpool._shm.Writer)."""
    found = sorted(glob.glob(f"/dev/shm/{prefix}-*"))
    return found if kept else [path for path in found if "-k" not in os.path.basename(path)]


def wait_no_segments(prefix: str, timeout: float, when: str, kept: bool = False) -> None:
    """Wait until no message names a segment; with `kept` (the pool ended), until no segment at all is left."""
    wait_empty(lambda: segments(prefix, kept), timeout, f"no segment left after {when}")


def big_array(fill: float = 1.0) -> np.ndarray:
    return np.full(BIG // 8, fill)


def started_sleeping(pool, seconds: float = 60.0) -> tuple[zpool.AsyncResult, int, str]:
    """Submit a task holding a 32 MB argument that sleeps; wait until an engine runs it."""
    prefix = prefix_of(pool)
    ar = pool.apply_async(_tasks.sleep_then, (seconds, big_array()))
    (segment,) = segments(prefix)  # written by apply_async itself
    assert os.path.getsize(segment) == BIG
    _, pid = engine_holding(pool)
    return ar, pid, segment


def test_pool_ends_normally_with_results_unread(fresh_pool):
    pool = fresh_pool(2)
    prefix = prefix_of(pool)
    ars = [pool.apply_async(_tasks.make_array, (BIG, float(i))) for i in range(4)]
    args = [pool.apply_async(_tasks.sleep_then, (0.01, big_array())) for _ in range(2)]
    wait_until(lambda: all(ar.ready() for ar in ars + args), T, "every task finished")
    # Nobody called get(): the client unlinked the result segments as it received them, and the
    # controller those of the arguments as the tasks finished.
    wait_no_segments(prefix, 10, "every task finished")
    pool.close()
    pool.join()
    assert segments(prefix, kept=True) == []
    # The results are still there, in mappings that outlive the segments' names and the pool.
    for i, ar in enumerate(ars):
        value = ar.get(0)
        assert value.nbytes == BIG and value[0] == value[-1] == float(i)
        assert _tasks.received_via(value) == "shm"


def test_pool_terminated_with_results_in_flight(fresh_pool):
    pool = fresh_pool(2)
    prefix = prefix_of(pool)
    for _ in range(6):
        pool.apply_async(_tasks.make_array, (BIG,))
        pool.apply_async(_tasks.identity, (big_array(),))
    pool.terminate()
    pool.join()
    wait_no_segments(prefix, 5, "terminate()", kept=True)


def test_context_manager_exit_while_a_task_holds_a_big_argument(fresh_pool):
    pool = fresh_pool(2)
    prefix = prefix_of(pool)
    with pool:
        started_sleeping(pool)
        queued = [pool.apply_async(_tasks.identity, (big_array(),)) for _ in range(3)]
        assert len(segments(prefix)) >= 1
    pool.join()
    wait_no_segments(prefix, 5, "leaving the with block", kept=True)
    assert all(ar.ready() for ar in queued)


def test_terminate_while_a_task_holds_a_big_argument(fresh_pool):
    pool = fresh_pool(2)
    prefix = prefix_of(pool)
    ar, _, _ = started_sleeping(pool)
    # More tasks with big arguments, waiting behind it (the other engine takes one).
    waiting = [pool.apply_async(_tasks.sleep_then, (60, big_array(2.0))) for _ in range(3)]
    assert len(segments(prefix)) == 4
    tree = [psutil.Process(pid) for pid in pool._cluster.pids()]
    started = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - started < 30
    wait_no_segments(prefix, 5, "terminate()", kept=True)
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive
    with pytest.raises(zpool.TaskAborted, match="terminated"):
        ar.get(T)
    assert all(a.ready() for a in waiting)


def test_tasks_that_never_run_release_their_arguments(fresh_pool):
    """Aborted, impossible or timed-out tasks are finished for good: their argument segments go at once."""
    pool = fresh_pool(1)
    prefix = prefix_of(pool)
    failing = pool.apply_async(_tasks.raise_value_error, ("no",))
    with pytest.raises(ValueError):
        failing.get(T)
    blocker = pool.apply_async(_tasks.sleep_then, (60,))
    engine_holding(pool)  # the only engine is busy from now on
    aborted = pool.apply_async(_tasks.identity, (big_array(),))
    assert len(segments(prefix)) == 1
    impossible = pool.apply_async(_tasks.identity, (big_array(),), after=[failing])
    timed_out = pool.apply_async(_tasks.identity, (big_array(),), after=[blocker], timeout=0.5)
    # Failed by the scheduler, or (queued on the busy engine behind the blocker) given back by it and failed.
    assert sum(pool.abort(aborted).values()) == 1
    with pytest.raises(zpool.TaskAborted):
        aborted.get(T)
    with pytest.raises(zpool.ImpossibleDependency):
        impossible.get(T)
    with pytest.raises(zpool.DependencyTimeout):
        timed_out.get(T)
    wait_no_segments(prefix, 10, "the three tasks failed")
    assert not blocker.ready()  # (released by the controller, not by the pool's end)


def test_finished_task_with_shared_arguments_is_not_kept_for_resubmit(fresh_pool):
    """Its segment is gone once it finished: resubmit refuses it, saying so, and frees nothing twice."""
    pool = fresh_pool(1)
    prefix = prefix_of(pool)
    ar = pool.apply_async(_tasks.identity, (big_array(5.0),))
    assert ar.get(T)[0] == 5.0
    wait_no_segments(prefix, 10, "the task finished")
    again = pool.resubmit(ar)
    with pytest.raises(zpool.InvalidDependency, match="shared memory"):
        again.get(T)
    assert pool.apply_async(_tasks.identity, (big_array(6.0),)).get(T)[-1] == 6.0


def test_engine_killed_while_running_a_task_with_a_big_argument(fresh_pool):
    pool = fresh_pool(2)
    prefix = prefix_of(pool)
    ar, pid, segment = started_sleeping(pool)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(zpool.EngineError, match="SIGKILL"):
        ar.get(T)
    # The task is finished for good: the controller unlinks its argument, with the pool running.
    wait_no_segments(prefix, 10, "the engine holding the task was killed")
    assert not os.path.exists(segment)
    # The pool carries on, with big arguments and results.
    pool.wait_for_engines(2, timeout=T)
    got = pool.apply_async(_tasks.identity, (big_array(3.0),)).get(T)
    assert got.nbytes == BIG and (got == 3.0).all() and _tasks.received_via(got) == "shm"
    wait_no_segments(prefix, 10, "a round trip")
    pool.terminate()
    pool.join()
    assert segments(prefix, kept=True) == []


def test_engine_killed_with_retries_keeps_the_argument_for_the_retry(fresh_pool):
    pool = fresh_pool(2)
    prefix = prefix_of(pool)
    arr = big_array(4.0)
    ar = pool.apply_async(_tasks.sleep_then, (60, arr), retries=1)
    _, pid = engine_started(pool, ar.msg_ids[0])  # (started: killed before, it would run elsewhere, no retry used)
    os.kill(pid, signal.SIGKILL)
    # The retry runs elsewhere, mapping the same segment: it must still be there.
    _, pid2 = wait_until(
        lambda: (e := engine_started(pool, ar.msg_ids[0]))[1] != pid and e, T, "the retry starts on another engine"
    )
    assert len(segments(prefix)) == 1
    os.kill(pid2, signal.SIGKILL)
    with pytest.raises(zpool.EngineError):
        ar.get(T)
    wait_no_segments(prefix, 10, "the last try failed")


def test_engine_killed_before_returning_a_big_result(fresh_pool):
    pool = fresh_pool(2)
    prefix = prefix_of(pool)
    ar = pool.apply_async(_tasks.sleep_then_make_array, (60, BIG))
    _, pid = engine_started(pool, ar.msg_ids[0])
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(zpool.EngineError, match="SIGKILL"):
        ar.get(T)
    pool.wait_for_engines(2, timeout=T)
    assert segments(prefix) == []
    got = pool.apply_async(_tasks.sleep_then_make_array, (0, BIG)).get(T)
    assert got.nbytes == BIG and _tasks.received_via(got) == "shm"
    wait_no_segments(prefix, 10, "the result was received")


def test_a_killed_engine_kept_segments_are_removed_while_the_pool_runs(fresh_pool):
    """What an engine kept for reuse would otherwise hold /dev/shm space until the pool ends."""
    pool = fresh_pool(1)
    prefix = prefix_of(pool)
    pid = pool.apply(_tasks.getpid)
    got = pool.apply(_tasks.make_array, (BIG, 2.0))
    assert _tasks.received_via(got) == "shm"
    kept = [p for p in segments(prefix, kept=True) if f"-e{pid}-k" in p]
    assert len(kept) == 1
    os.kill(pid, signal.SIGKILL)
    pool.wait_for_engines(1, timeout=T)
    wait_until(lambda: not any(f"-e{pid}-k" in p for p in segments(prefix, kept=True)), 10, "its kept segment went")
    assert (got == 2.0).all()  # the result already received keeps its pages
    assert (pool.apply(_tasks.make_array, (BIG, 3.0)) == 3.0).all()


def test_engine_killed_between_writing_a_result_segment_and_sending_it(fresh_pool):
    """A segment only the dead engine knew of: removed when the pool ends."""
    pool = fresh_pool(2)
    prefix = prefix_of(pool)
    ar = pool.apply_async(_tasks.write_segment_then_sleep, (prefix, BIG, 60))
    _, pid = engine_holding(pool)
    (orphan,) = wait_until(lambda: segments(prefix), T, "the engine wrote its segment")
    assert f"-e{pid}-" in orphan
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(zpool.EngineError):
        ar.get(T)
    pool.terminate()
    pool.join()
    wait_no_segments(prefix, 5, "terminate()", kept=True)


def test_engines_killed_while_streaming_big_results(fresh_pool):
    """Kill both engines at once while results of 8 MB stream back; nothing is left once the pool ends."""
    pool = fresh_pool(2)
    prefix = prefix_of(pool)
    ars = [pool.apply_async(_tasks.make_array, (8 << 20, float(i))) for i in range(40)]
    wait_until(lambda: any(ar.ready() for ar in ars), T, "a first result")
    pids = list(pool.queue_status()["engine_pids"].values())
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for i, ar in enumerate(ars):
        try:
            value = ar.get(T)
        except zpool.EngineError:
            continue
        assert value[0] == float(i) and value.nbytes == 8 << 20
    pool.terminate()
    pool.join()
    wait_no_segments(prefix, 5, "terminate()", kept=True)


def test_controller_killed_while_a_task_holds_a_big_argument(fresh_pool):
    pool = fresh_pool(2)
    prefix = prefix_of(pool)
    ar, _, _ = started_sleeping(pool)
    pool.apply_async(_tasks.identity, (big_array(),))  # and one more, perhaps still queued
    tree = [psutil.Process(pid) for pid in pool._cluster.pids()]
    assert len(tree) == 3
    os.kill(pool._cluster.proc.pid, signal.SIGKILL)
    with pytest.raises(zpool.BrokenPoolError):
        ar.get(T)
    pool.terminate()
    pool.join()
    wait_no_segments(prefix, 5, "terminate() after the controller was killed", kept=True)
    _, alive = psutil.wait_procs(tree, timeout=15)
    assert not alive


def test_orphaned_engines_remove_the_segments(fresh_pool):
    """With the controller killed and the pool not even terminated, the engines clean up as they leave."""
    pool = fresh_pool(2)
    prefix = prefix_of(pool)
    started_sleeping(pool)
    engines = [psutil.Process(pid) for pid in pool.queue_status()["engine_pids"].values()]
    os.kill(pool._cluster.proc.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(engines, timeout=15)
    assert not alive
    wait_no_segments(prefix, 5, "the engines left", kept=True)


USER_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import zpool
    from tests import _tasks

    pool = zpool.Pool(2)
    pool.wait_for_engines(timeout=60)
    ar = pool.apply_async(_tasks.sleep_then, (120, np.ones({n})))
    while not any(q["queue"] for q in pool.queue_status()["engines"].values()):
        time.sleep(0.01)
    status = pool.queue_status()
    print(pool._cluster.info.shm_prefix, pool._cluster.proc.pid, *status["engine_pids"].values(), flush=True)
    time.sleep(120)
""")


def test_user_process_killed(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", USER_SCRIPT.format(n=BIG // 8)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
        text=True,
    )
    try:
        line = proc.stdout.readline().split()
        assert line, proc.stderr.read()
        prefix, pids = line[0], [int(p) for p in line[1:]]
        assert len(pids) == 3  # controller and two engines
        tree = [psutil.Process(pid) for pid in pids]
        assert [os.path.getsize(s) for s in segments(prefix)] == [BIG]
        proc.kill()
        proc.wait(T)
        started = time.monotonic()
        _, alive = psutil.wait_procs(tree, timeout=15)
        assert not alive, [p.pid for p in alive]
        wait_no_segments(prefix, max(1.0, 15 - (time.monotonic() - started)), "the user process was killed", kept=True)
    finally:
        proc.kill()
        proc.communicate()


def test_wait_on_send_returns_once_the_controller_is_gone(fresh_pool):
    """Tracked sends queued for a controller that died will never go out: waiting ends."""
    pool = fresh_pool(1, shared_memory=False)
    arr = np.zeros(100_000)  # 800 KB: a tracked frame
    controller = pool._cluster.proc.pid
    os.kill(controller, signal.SIGSTOP)
    try:
        results = [pool.apply_async(_tasks.identity, (arr,), track=True) for _ in range(50)]
    finally:
        os.kill(controller, signal.SIGKILL)
    with pytest.raises(zpool.BrokenPoolError):
        results[-1].get(timeout=30)
    assert all(ar.wait_on_send(timeout=10) for ar in results)
    assert all(ar.sent for ar in results)
