"""Standalone clusters: the ``zpool`` command, and Pools that attach to a running cluster.

Each test has a ``$ZPOOL_HOME`` of its own (:func:`tests._clusters.home`),
which checks that the processes of its clusters are gone at the end. The
task database, restarts and ``zpool status`` are tested in
``test_task_db.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import zpool
from tests import _tasks
from tests._clusters import T, cluster_processes, home, start, zpool_cli
from tests._wait import wait_until
from zpool.error import BrokenPoolError, TaskAborted
from zpool.standalone import state_of

__all__ = ["home"]  # (the fixture)


def test_every_verb_has_help():
    verbs = (["cluster"], ["cluster", "start"], ["cluster", "stop"], ["cluster", "list"], ["controller"], ["engine"])
    for verb in verbs:
        done = zpool_cli(*verb, "--help")
        assert "usage: zpool" in done.stdout
    assert "--daemon" in zpool_cli("cluster", "start", "--help").stdout
    assert "--connection-file" in zpool_cli("engine", "--help").stdout
    bad = zpool_cli("cluster", "start", "-n", "-1", check=False)
    assert bad.returncode == 2 and "at least 0" in bad.stderr


def test_the_zpool_command_is_installed():
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("zpool") == "zpool.cli:main"


def test_pools_of_two_processes_share_a_cluster_that_outlives_them(home, tmp_path):
    controller = start(home, "lab", 2)
    engines = {p.pid for p in cluster_processes(controller)} - {controller}
    assert len(engines) == 2
    listed = zpool_cli("cluster", "list").stdout
    assert "lab" in listed and "running" in listed
    script = tmp_path / "attach.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, os
            import zpool

            def square(x):
                return x * x

            def pid(_):
                return os.getpid()

            if __name__ == "__main__":
                with zpool.Pool(cluster="lab") as pool:
                    assert pool.map(square, range(200)) == [x * x for x in range(200)]
                    print(json.dumps(sorted(set(pool.map(pid, range(8), chunksize=1)))))
            """
        )
    )
    runs = [
        subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for run in runs:
        out, err = run.communicate(timeout=T)
        assert run.returncode == 0, err
        used = set(json.loads(out.strip().splitlines()[-1]))
        assert used <= engines  # the cluster's own engines served both
    # They detached: the cluster runs on, with the same engines.
    state = state_of("lab", query=True)
    assert state.running and state.controller_pid == controller and state.engines == 2
    with zpool.Pool(cluster="lab") as pool:
        assert pool.apply(_tasks.square, (7,)) == 49
        assert {p.pid for p in pool._pool} == engines
        assert pool._processes == 2  # its size: the engines up when it attached
    with zpool.Pool(2, connection=state.connection_file) as pool:
        assert pool._processes == 2
        assert pool.map(_tasks.square, range(10)) == [x * x for x in range(10)]
    assert state_of("lab").running
    with open(state.connection_file) as f:
        runtime = os.path.dirname(json.load(f)["client"][len("ipc://") :])
    assert os.path.isdir(runtime)
    stopped = zpool_cli("cluster", "stop", "--name", "lab").stdout
    assert "stopped" in stopped
    _, alive = psutil.wait_procs(cluster_processes(controller), timeout=10)
    assert not alive
    assert not psutil.pid_exists(controller) or psutil.Process(controller).status() == psutil.STATUS_ZOMBIE
    assert not any(psutil.pid_exists(pid) for pid in engines)
    assert not os.path.exists(state.folder) and not os.path.exists(runtime)
    assert "no clusters" in zpool_cli("cluster", "list").stdout


def test_terminate_ends_only_the_pools_own_tasks(home):
    start(home, "shared", 2)
    mine = zpool.Pool(cluster="shared")
    other = zpool.Pool(cluster="shared")
    try:
        ar = mine.map_async(_tasks.sleep_then, [30, 30], chunksize=1)
        wait_until(lambda: sum(e["queue"] for e in mine.queue_status()["engines"].values()) == 2, T, "both run")
        began = time.monotonic()
        mine.terminate()
        with pytest.raises(TaskAborted):
            ar.get(T)
        # Both engines were freed at once (interrupted), and serve the other pool.
        assert other.map(_tasks.square, range(4), chunksize=1) == [0, 1, 4, 9]
        assert time.monotonic() - began < 20
        assert state_of("shared").running
    finally:
        mine.terminate()
        other.terminate()


def test_shutdown_cluster_stops_it_and_breaks_the_other_pools(home):
    controller = start(home, "brief", 1)
    first = zpool.Pool(cluster="brief")
    second = zpool.Pool(cluster="brief")
    try:
        assert second.apply(_tasks.square, (3,)) == 9
        first.shutdown_cluster()
        assert not psutil.pid_exists(controller) or psutil.Process(controller).status() == psutil.STATUS_ZOMBIE
        assert not os.path.exists(state_of("brief").connection_file)  # the controller removed it as it left
        with pytest.raises(BrokenPoolError):
            second.apply(_tasks.square, (3,))
    finally:
        first.terminate()
        second.terminate()


def test_a_stale_cluster_is_reported_and_cleaned(home):
    controller = start(home, "crashed", 1)
    engines = cluster_processes(controller)[1:]
    os.kill(controller, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(controller)], timeout=10)
    _, alive = psutil.wait_procs(engines, timeout=T)  # engines leave when their controller is gone
    assert not alive
    assert "stale" in zpool_cli("cluster", "list").stdout
    with pytest.raises(BrokenPoolError, match=r"stale.*zpool cluster stop --name crashed"):
        zpool.Pool(cluster="crashed")
    joined = zpool_cli("engine", "--name", "crashed", check=False)
    assert joined.returncode == 1 and "stale" in joined.stderr
    assert "was not running" in zpool_cli("cluster", "stop", "--name", "crashed").stdout
    assert not os.path.exists(os.path.join(home.path, "clusters", "crashed"))


def test_what_cannot_be_attached_says_what_to_do(home, tmp_path):
    with pytest.raises(BrokenPoolError, match="zpool cluster start --name nowhere"):
        zpool.Pool(cluster="nowhere")
    with pytest.raises(BrokenPoolError, match="not running"):
        zpool.Pool(connection=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="initializer, hwm: set by the cluster"):
        zpool.Pool(cluster="any", initializer=print, hwm=2)
    with pytest.raises(ValueError, match="cluster's name"):
        zpool.Pool(cluster="../escape")
    with pytest.raises(TypeError, match="not both"):
        zpool.Pool(cluster="a", connection="b.json")
    stopped = zpool_cli("cluster", "stop", "--name", "nowhere", check=False)
    assert stopped.returncode == 1 and "no cluster 'nowhere'" in stopped.stderr


def test_starting_a_running_cluster_again_is_refused(home):
    start(home, "once", 1)
    again = zpool_cli("cluster", "start", "-n", "1", "--name", "once", "--daemon", check=False)
    assert again.returncode == 1 and "running already" in again.stderr
    assert state_of("once").running


def test_a_controller_and_an_engine_started_by_hand(home):
    env = dict(os.environ)
    controller_cli = subprocess.Popen(
        [sys.executable, "-m", "zpool", "controller", "--name", "hand"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    engine_cli = None
    try:
        # Ready once it says how to attach (its connection file exists a little earlier).
        assert "Pool(cluster='hand')" in controller_cli.stdout.readline()
        assert state_of("hand").running
        home.track()
        engine_cli = subprocess.Popen(
            [sys.executable, "-m", "zpool", "engine", "--name", "hand"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        with zpool.Pool(cluster="hand") as pool:  # it waits for the engine to join
            assert pool.apply(_tasks.getpid) == engine_cli.pid
            assert pool.map(_tasks.square, range(5)) == [0, 1, 4, 9, 16]
        # SIGTERM (as Ctrl-C in a terminal): the controller shuts down, the engine with it.
        controller_cli.send_signal(signal.SIGTERM)
        _, err = controller_cli.communicate(timeout=T)
        assert controller_cli.returncode == 0, err
        assert "stopping cluster 'hand'" in err
        _, err = engine_cli.communicate(timeout=T)
        assert engine_cli.returncode == 0, err
        assert not os.path.exists(os.path.join(home.path, "clusters", "hand"))
    finally:
        for proc in (controller_cli, engine_cli):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()


def test_a_pools_task_is_not_queued_behind_another_pools_backlog(home):
    """The engines are shared between the pools in turn: a single task of one is placed next."""
    start(home, "fair", 2)
    bulk = zpool.Pool(cluster="fair")
    small = zpool.Pool(cluster="fair")
    try:
        backlog = bulk.map_async(_tasks.sleep_then, [0.02] * 400, chunksize=1)  # about 4 s on two engines
        wait_until(lambda: sum(e["queue"] for e in bulk.queue_status()["engines"].values()) >= 2, T, "it runs")
        for _ in range(3):
            # (apply_async: through the scheduler's queue, where the backlog waits; a blocking apply
            # would go straight to an engine)
            assert small.apply_async(_tasks.square, (3,)).get(T) == 9
        assert not backlog.ready()  # served while the other pool's 400 tasks still ran
        assert backlog.get(T) == [None] * 400
    finally:
        bulk.terminate()
        small.terminate()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_an_engine_without_the_controllers_dev_shm_is_refused_saying_why(home, tmp_path):
    """A cluster on Unix sockets passes data through /dev/shm: an engine that sees another one cannot join it.

    The engine runs in a mount namespace of its own with a private folder
    over /dev/shm, as in a container that shares the socket folder but not
    the memory: its host identity differs from the controller's.
    """
    start(home, "shm", 1)
    private = tmp_path / "shm"
    private.mkdir()
    engine = [sys.executable, "-m", "zpool", "engine", "--name", "shm"]
    script = 'mount --bind "$1" /dev/shm && shift && exec "$@"'
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "slave", "sh", "-c", script, "sh", str(private), *engine],
        capture_output=True,
        text=True,
        timeout=T,
    )
    assert done.returncode != 0
    assert (
        "the controller refused this engine" in done.stderr
        and "does not share the controller's /dev/shm" in done.stderr
    )
    assert "zpool cluster start --ip ADDRESS" in done.stderr  # what to do instead
    assert state_of("shm", query=True).engines == 1  # not counted
    log = os.path.join(home.path, "clusters", "shm", "controller.log")
    with open(log) as f:
        assert "refused an engine" in f.read()
    zpool_cli("cluster", "stop", "--name", "shm")
