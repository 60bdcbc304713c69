"""A wall clock stepped backwards changes nothing (issue 16).

NTP or chrony stepping the clock, or a virtual machine resynchronising it,
moves ``time.time()`` back in every process at once. The replay guards used
to compare message dates with a horizon taken from dates: once they had
forgotten a generation of signatures, every message after a backward step
was refused as a replay, calls failed with ``AuthenticationError`` and
engines were killed and could not be replaced.

The test steps ``time.time()`` back an hour, at the same instant, in every
process of a pool (the driver script using it, the controller, the engines),
without touching the machine's clock: a ``sitecustomize`` module, first on
``PYTHONPATH``, wraps ``time.time`` in each interpreter at start-up (however
it is launched) and subtracts an hour once ``time.monotonic()`` (the
system-wide ``CLOCK_MONOTONIC``, the same in every process) passes the
instant the driver chose. It also shrinks the replay guards' generations to
64 signatures, so they rotate many times within a few thousand messages
instead of after 131,000.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T = 60  # the driver's own limit (it takes about 9 s)
GENERATION = 64
STEP_S = 3600.0
STEP_AT_VAR = "ZPOOL_TEST_CLOCK_STEP_AT"

SITECUSTOMIZE = textwrap.dedent(f'''
    """Test hook: time.time() steps back {STEP_S:.0f} s at a shared instant; small replay-guard generations."""

    import os
    import time

    _real_time = time.time
    _monotonic = time.monotonic
    _step_at = float(os.environ.get("{STEP_AT_VAR}", "inf"))


    def _stepped_time():
        return _real_time() - {STEP_S} if _monotonic() >= _step_at else _real_time()


    def arm(step_at):
        """Step this process's clock, and its future children's, once time.monotonic() reaches `step_at`."""
        global _step_at
        _step_at = step_at
        os.environ["{STEP_AT_VAR}"] = repr(step_at)


    time.time = _stepped_time

    import zpool.protocol  # noqa: E402

    _guard_init = zpool.protocol.ReplayGuard.__init__


    def _small_generations(self, *args, **kwargs):
        kwargs.setdefault("generation_size", {GENERATION})
        _guard_init(self, *args, **kwargs)


    zpool.protocol.ReplayGuard.__init__ = _small_generations
''')

DRIVER = textwrap.dedent(f"""
    import faulthandler, os, sys, time

    faulthandler.dump_traceback_later({T - 10}, exit=True)  # a hang shows where, then fails

    import sitecustomize
    import zpool
    from zpool.protocol import ReplayGuard
    from tests._tasks import square

    # The hook is in place (in this process; the pool's inherit PYTHONPATH and the step instant).
    assert ReplayGuard()._generation_size == {GENERATION}, sitecustomize.__file__
    LEAD_S = 4.0  # pool start-up, then blocking calls until the step
    MIN_CALLS = 600  # each engine's guard then rotated several times ({GENERATION} per generation)
    step_at = time.monotonic() + LEAD_S
    sitecustomize.arm(step_at)

    def work(n):
        for i in range(n):
            assert pool.apply(square, (i,)) == i * i
            if i % 50 == 0:
                assert pool.map(square, range(20), chunksize=2) == [x * x for x in range(20)]
                assert pool.apply_async(square, (i,)).get(10) == i * i

    with zpool.Pool(2, heartbeat_interval=0.2) as pool:
        pool.wait_for_engines(2, timeout=30)
        pids = pool.queue_status()["engine_pids"]
        before = 0
        while time.monotonic() < step_at:
            work(10)
            before += 10
        if before < MIN_CALLS:
            sys.exit(f"too slow: only {{before}} calls before the clock step, the guards may not have rotated")
        wall = time.time()
        assert abs(wall + {STEP_S} - sitecustomize._real_time()) < 60, "time.time() was not stepped"
        engine_times = [pool.apply(time.time) for _ in range(4)]  # (time.time: the hook's, in the engines)
        assert all(t < sitecustomize._real_time() - 3000 for t in engine_times), "an engine's clock did not step"
        work(2000)
        time.sleep(0.2 * 12)  # longer than heartbeat_interval * heartbeat_misses: beats were heard
        work(200)
        status = pool.queue_status()
        assert status["engine_pids"] == pids, (pids, status)
        assert status["dropped_messages"] == 0, status
    print("OK", before)
""")


@pytest.mark.timeout(T + 30)
def test_work_goes_on_after_the_clock_steps_back_an_hour_everywhere(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    path = [str(hook), REPO, os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    env.pop(STEP_AT_VAR, None)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=T, cwd=str(tmp_path)
    )
    assert done.returncode == 0 and done.stdout.startswith("OK"), f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
