"""Shared fixtures: pools, and the check that no test leaves a process behind."""

from __future__ import annotations

import gc
import glob
import os
import shutil
import tempfile
import time

import psutil
import pytest

import zpool

# Generous bound for processes to exit after a pool is stopped (2-core CI machines).
EXIT_GRACE_S = 10.0


def _descendants() -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}


def _describe(procs: list[psutil.Process]) -> str:
    lines = []
    for p in procs:
        try:
            lines.append(f"  pid {p.pid}: {' '.join(p.cmdline())}")
        except psutil.Error:
            lines.append(f"  pid {p.pid}: (gone)")
    return "\n".join(lines)


def assert_no_new_processes(before: set[int], timeout: float = EXIT_GRACE_S) -> None:
    """Fail, listing command lines, if descendants not in `before` outlive `timeout`."""
    new = [p for pid, p in _descendants().items() if pid not in before]
    _, alive = psutil.wait_procs(new, timeout=timeout)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if alive:
        text = _describe(alive)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        pytest.fail(f"{len(alive)} process(es) outlived the test:\n{text}")


def pytest_configure(config):
    # A temporary directory of this run's own, so that the check for leftover
    # cluster directories sees only this run's (not a concurrent run's).
    run_dir = tempfile.mkdtemp(prefix="zp-tests-")
    os.environ["TMPDIR"] = run_dir  # child processes (scripts the tests start)
    tempfile.tempdir = run_dir
    config._zpool_run_dir = run_dir
    _record_prefixes()


def pytest_unconfigure(config):
    run_dir = getattr(config, "_zpool_run_dir", None)
    if run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)


def _cluster_dirs() -> set[str]:
    """The hidden clusters' directories (their logs beside them are kept when a pool failed)."""
    return {path for path in glob.glob(os.path.join(tempfile.gettempdir(), "zpool-*")) if os.path.isdir(path)}


# Shared-memory prefixes of the clusters this test run started (other zpool programs
# running on the machine at the same time have their own).
_OUR_PREFIXES: set[str] = set()
_RUNNING_PREFIXES: set[str] = set()  # clusters started and not stopped yet


def _record_prefixes() -> None:
    from zpool.cluster import LocalCluster

    start, stop = LocalCluster.start, LocalCluster.stop
    if getattr(start, "_records_prefixes", False):
        return

    def recording_start(self):
        info = start(self)
        if info.shm_prefix:
            _OUR_PREFIXES.add(info.shm_prefix)
            _RUNNING_PREFIXES.add(info.shm_prefix)
        return info

    def recording_stop(self, *args, **kwargs):
        info = self.info
        try:
            return stop(self, *args, **kwargs)
        finally:
            if info is not None:
                _RUNNING_PREFIXES.discard(info.shm_prefix)

    recording_start._records_prefixes = True
    LocalCluster.start, LocalCluster.stop = recording_start, recording_stop


def _segments() -> set[str]:
    """Segments of this run's clusters that a message names, and those kept for reuse by clusters that ended.

    A writer keeps segments for reuse (``...-k<n>``, zpool._shm.Writer) while
    its cluster runs: a pool shared by several tests keeps them between tests.
    """
    found = set()
    for path in glob.glob("/dev/shm/zpool-*"):
        prefix, _, number = os.path.basename(path).rsplit("-", 2)
        if prefix in _OUR_PREFIXES and not (number.startswith("k") and prefix in _RUNNING_PREFIXES):
            found.add(path)
    return found


def assert_no_new_segments(before: set[str], timeout: float = 5.0) -> None:
    """Fail if shared-memory segments made since `before` outlive `timeout` (tasks still finishing)."""
    deadline = time.monotonic() + timeout
    while True:
        left = _segments() - before
        if not left:
            return
        if time.monotonic() > deadline:
            for path in left:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            pytest.fail(f"shared-memory segments outlived the test: {sorted(left)}")
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Every test: processes, cluster directories and shared-memory segments it made must be gone when it ends."""
    before = set(_descendants())
    dirs_before = _cluster_dirs()
    segments_before = _segments()
    yield
    assert_no_new_processes(before)
    left = _cluster_dirs() - dirs_before
    if left:
        pytest.fail(f"cluster directories outlived the test: {sorted(left)}")
    assert_no_new_segments(segments_before)


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes_at_exit():
    before = set(_descendants())
    yield
    assert_no_new_processes(before)


@pytest.fixture(scope="session")
def mp_resource_tracker():
    """multiprocessing's resource tracker, for tests that use spawned stdlib pools or managers.

    The tracker is a process that lives until stopped; started here, before
    the requesting test's snapshot of child processes, and stopped at the
    end of the session, the leak checks do not count it.
    """
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    yield
    # Stopping the tracker unlinks the semaphores it still knows of: let the
    # finished pools' semaphores be collected (and unregistered) first.
    gc.collect()
    resource_tracker._resource_tracker._stop()


@pytest.fixture(scope="module")
def pool():
    """A 2-engine pool shared by one test module (tests must leave it usable)."""
    # (No preload: these tests time tasks against engine deaths and interrupts, and an engine
    # importing numpy while idle would start a task later; tests/integration/test_preload.py has its own.)
    p = zpool.Pool(2, heartbeat_interval=0.2, heartbeat_misses=25, preload=False)
    p.wait_for_engines(timeout=60)
    yield p
    p.terminate()
    p.join()


@pytest.fixture
def fresh_pool(request):
    """Factory for pools owned by one test (for tests that break things)."""
    made = []

    def make(processes: int = 2, **kwargs):
        kwargs.setdefault("heartbeat_interval", 0.2)
        kwargs.setdefault("heartbeat_misses", 25)
        kwargs.setdefault("preload", False)  # (as the shared pool above)
        p = zpool.Pool(processes, **kwargs)
        made.append(p)
        p.wait_for_engines(timeout=60)
        return p

    yield make
    for p in made:
        p.terminate()
        p.join()


def pytest_report_header(config):
    return f"zpool {zpool.__version__}, {os.cpu_count()} CPUs"


@pytest.fixture
def hosts(tmp_path):
    """Three fake hosts (:class:`tests._hosts.FakeHosts`), removed again after the test with all that runs on them."""
    from tests._hosts import FakeHosts

    made = FakeHosts(3, str(tmp_path))
    try:
        yield made
    finally:
        made.close()
