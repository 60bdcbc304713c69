"""Suspending the whole program (SIGSTOP/SIGCONT of every process) for longer than the heartbeat tolerance.

Slurm's ``scontrol suspend``, gang scheduling, ``docker pause``, the cgroup
freezer and a closed laptop lid stop every process of a program at once,
and the clocks go on meanwhile. On resume nobody may take the stop for a
peer's silence: engines stay, queued tasks (with their shared-memory
arguments) run, and every result arrives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from tests._wait import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T = 90
# Engines give up on a silent controller after 2 x 0.2 s x 5 = 2 s; the controller on an engine after 1 s.
STOPPED_S = 5.0

DRIVER = textwrap.dedent("""
    import sys
    import numpy as np
    import zpool
    from tests import _tasks

    with zpool.Pool(2, heartbeat_interval=0.2, heartbeat_misses=5) as pool:
        pool.wait_for_engines(timeout=60)
        before = pool.queue_status()["engine_pids"]
        # Both engines busy, and tasks queued behind them whose 2 MiB arguments wait in shared memory.
        busy = [pool.apply_async(_tasks.sleep_then, (1.5, i)) for i in range(2)]
        arrays = [np.full(1 << 18, float(i)) for i in range(8)]
        queued = [pool.apply_async(_tasks.digest, (a,)) for a in arrays]
        print("READY", flush=True)
        assert sys.stdin.readline().strip() == "RESUMED"
        assert [ar.get(60) for ar in busy] == [0, 1]
        assert [ar.get(60) for ar in queued] == [_tasks.digest(a) for a in arrays]
        assert pool.map(_tasks.square, range(10)) == [x * x for x in range(10)]
        after = pool.queue_status()["engine_pids"]
        assert after == before, (before, after)
    print("OK", flush=True)
""")


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@pytest.mark.timeout(T + 30)
def test_the_whole_program_stopped_longer_than_the_tolerance_resumes_intact(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(tmp_path),
    )
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read() if proc.poll() is not None else ""
        tree = _tree(proc.pid)
        assert len(tree) == 4  # the program, its controller and two engines
        for p in tree:
            p.send_signal(signal.SIGSTOP)
        time.sleep(STOPPED_S)
        for p in tree:
            p.send_signal(signal.SIGCONT)
        out, err = proc.communicate("RESUMED\n", timeout=T)
        assert proc.returncode == 0 and out.strip() == "OK", f"stdout:\n{out}\nstderr:\n{err}"
    finally:
        if proc.poll() is None:
            for p in _tree(proc.pid):
                p.send_signal(signal.SIGCONT)
            proc.kill()
            proc.communicate()


@pytest.mark.timeout(T + 30)
def test_engines_leaving_a_stuck_controller_remove_only_their_own_segments(fresh_pool):
    """Only the controller stopped: engines give up on it and leave, but the client's arguments stay.

    Tasks queued in the controller hold their arguments in shared memory,
    which the client wrote and the controller owns: once it resumes, the
    replacement engines run them.
    """
    import numpy as np

    from tests import _tasks

    pool = fresh_pool(2, heartbeat_interval=0.2, heartbeat_misses=5)
    engines = [psutil.Process(pid) for pid in pool.queue_status()["engine_pids"].values()]
    busy = [pool.apply_async(_tasks.sleep_then, (1.0, i), retries=3) for i in range(2)]
    arrays = [np.full(1 << 18, float(i)) for i in range(12)]
    queued = [pool.apply_async(_tasks.digest, (a,), retries=3) for a in arrays]
    controller = psutil.Process(pool._cluster.proc.pid)
    controller.send_signal(signal.SIGSTOP)
    try:
        # The engines leave after 2 x 0.2 s x 5 = 2 s of silence (zombies until their parent resumes).
        wait_until(
            lambda: all(p.status() == psutil.STATUS_ZOMBIE for p in engines if p.is_running()),
            20,
            "the engines left the stuck controller",
        )
    finally:
        controller.send_signal(signal.SIGCONT)
    assert [ar.get(60) for ar in busy] == [0, 1]
    assert [ar.get(60) for ar in queued] == [_tasks.digest(a) for a in arrays]
