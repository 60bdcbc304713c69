"""Standalone clusters in the tests: a private ``$ZPOOL_HOME`` per test, the ``zpool`` command, leak checks.

Clusters started with the command run in sessions of their own (not the
test's descendants), so :func:`home` tracks their processes itself and
checks, at the end, that they are gone (and stops whatever a failing test
left). Engines a test starts by hand (``zpool engine``) it registers with
:meth:`Home.adopt`, to be checked the same way.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Iterator

import psutil
import pytest

from zpool.standalone import list_clusters, state_of, stop_cluster

__all__ = ["CLI_TIMEOUT", "Home", "T", "cluster_processes", "home", "start", "zpool_cli"]

T = 60
CLI_TIMEOUT = 120


class Home:
    """The test's ``$ZPOOL_HOME``, and the processes of its clusters seen so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: dict[int, psutil.Process] = {}

    def track(self) -> None:
        """Remember the processes of every running cluster (checked at the end)."""
        for state in list_clusters(query=False):
            for proc in cluster_processes(state.controller_pid):
                self.seen.setdefault(proc.pid, proc)

    def adopt(self, pid: int) -> None:
        """Remember a process the test started for a cluster (an engine joined by hand)."""
        self.seen.setdefault(pid, psutil.Process(pid))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Iterator[Home]:
    """A private $ZPOOL_HOME; at the end, every cluster of it stopped, and nothing of theirs left running."""
    path = tmp_path / "zpool-home"
    monkeypatch.setenv("ZPOOL_HOME", str(path))
    tracker = Home(str(path))
    yield tracker
    tracker.track()
    for state in list_clusters(query=False):
        if state.running or state.stale:
            stop_cluster(state.name, timeout=5.0)
    _, alive = psutil.wait_procs(list(tracker.seen.values()), timeout=10)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for proc in alive:
        proc.kill()
    assert not alive, f"processes of the test's clusters outlived it: {[p.pid for p in alive]}"


def cluster_processes(pid: int | None) -> list[psutil.Process]:
    """A controller and its descendants (the engines it started)."""
    if not pid:
        return []
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def zpool_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m zpool ARGS`` (the ``zpool`` command) with this test's environment."""
    done = subprocess.run(
        [sys.executable, "-m", "zpool", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"zpool {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def start(home: Home, name: str, n: int = 2, *options: str) -> int:
    """Start cluster `name` in the background (with `options` of ``zpool cluster start``); the controller's pid."""
    out = zpool_cli("cluster", "start", "-n", str(n), "--name", name, "--daemon", *options).stdout
    assert f"cluster {name!r}" in out and f"Pool(cluster={name!r})" in out
    home.track()
    state = state_of(name, query=True)
    assert state.running and state.engines == n
    return state.controller_pid
