"""A standalone cluster's task database, its controller started again, elastic engines, ``zpool status``.

Each test has a ``$ZPOOL_HOME`` of its own (:func:`tests._clusters.home`),
which checks that the processes of its clusters are gone at the end;
engines joined by hand are adopted into that check.
"""

from __future__ import annotations

import json
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
from tests._clusters import T, cluster_processes, home, start, zpool_cli
from tests._wait import wait_until
from zpool.error import UnknownTaskError, ZPoolError
from zpool.standalone import state_of

__all__ = ["home"]  # (the fixture)

# Heartbeats quick enough for an engine to notice a lost controller within a second or two.
QUICK_BEATS = ("--heartbeat-interval", "0.2", "--heartbeat-misses", "5")


def _engine_by_hand(home, name: str, log) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "zpool", "engine", "--name", name, "--reconnect-timeout", "60"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    home.adopt(proc.pid)
    return proc


def test_results_are_fetched_by_id_after_their_pools_detached(home, tmp_path):
    """Two processes use the cluster at once and leave; a third fetches their results and queries their records."""
    start(home, "lab", 2)
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            import zpool
            from tests import _tasks

            with zpool.Pool(cluster="lab") as pool:
                k = int(sys.argv[1])
                squares = pool.map_async(_tasks.square, range(k, k + 50), chunksize=5)
                failing = pool.apply_async(_tasks.raise_value_error, (f"bad {k}",))
                squares.get(60)
                try:
                    failing.get(60)
                except ValueError:
                    pass
                print(json.dumps({"client": pool.client_id, "map": squares.msg_ids, "error": failing.msg_ids[0]}))
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    runs = {
        k: subprocess.Popen([sys.executable, str(script), str(k)], stdout=subprocess.PIPE, text=True, env=env)
        for k in (0, 1000)
    }
    told = {}
    for k, run in runs.items():
        out, _ = run.communicate(timeout=T)
        assert run.returncode == 0
        told[k] = json.loads(out.strip().splitlines()[-1])
    assert told[0]["client"] != told[1000]["client"]
    with zpool.Pool(cluster="lab") as pool:
        for k, ids in told.items():
            chunks = pool.get_result(ids["map"]).get(T)  # the map's chunks, each a list
            assert [x for chunk in chunks for x in chunk] == [x * x for x in range(k, k + 50)]
            with pytest.raises(ValueError, match=f"bad {k}"):
                pool.get_result(ids["error"]).get(T)
            records = pool.db_query(client=ids["client"])
            assert [r["id"] for r in records] == [*ids["map"], ids["error"]]
            assert {r["status"] for r in records[:-1]} == {"ok"} and records[-1]["status"] == "error"
            assert all(r["result_kept"] and r["call_kept"] and r["engine"] in (0, 1) for r in records)
            assert all(r["submitted"] <= r["started"] <= r["completed"] for r in records)
        errors = pool.db_query(status="error")
        assert sorted(r["id"] for r in errors) == sorted(t["error"] for t in told.values())
        # A finished task of another client runs again here.
        again = pool.resubmit(told[0]["map"][:2]).get(T)
        assert again == [[0, 1, 4, 9, 16], [25, 36, 49, 64, 81]]
        # Purged: the records and their results are gone.
        assert pool.purge_results(told[1000]["map"])["purged"] == 10
        assert pool.db_query(ids=told[1000]["map"]) == []
        with pytest.raises(UnknownTaskError, match="never submitted, or purged"):
            pool.get_result(told[1000]["map"][0]).get(T)
        with pytest.raises(UnknownTaskError, match="never submitted"):
            pool.get_result("nobody-1").get(T)
        with pytest.raises(ValueError, match="status"):
            pool.db_query(status="finished")
        with pytest.raises(ValueError, match="unknown query criteria|limit"):
            pool.db_query(limit=0)


def test_a_running_tasks_result_reaches_another_pool(home):
    start(home, "watch", 2)
    with zpool.Pool(cluster="watch") as owner, zpool.Pool(cluster="watch") as other:
        ar = owner.apply_async(_tasks.sleep_then, (1.0, "done"))
        wait_until(lambda: owner.db_query(ids=ar)[0]["engine"] is not None, T, "it runs")
        fetched = other.get_result(ar)
        assert not fetched.ready()
        assert fetched.get(T) == "done" and ar.get(T) == "done"
        with pytest.raises(ValueError, match="this pool's own"):
            pending = owner.apply_async(_tasks.sleep_then, (0.5, 1))
            owner.get_result(pending)
        pending.get(T)
        # Arrays come back whole, from the database (results are kept inline, never in shared memory).
        arr = owner.apply(np.arange, (1 << 20,))
        stored = owner.db_query(status="ok")[-1]
        assert stored["result_bytes"] > 8 << 20
        assert np.array_equal(other.get_result(stored["id"]).get(T), arr)


def test_a_pools_own_cluster_keeps_no_results_and_says_so():
    with zpool.Pool(1) as pool:
        ar = pool.apply_async(_tasks.square, (3,))
        assert ar.get(T) == 9
        with pytest.raises(UnknownTaskError, match="zpool cluster start"):
            pool.get_result(ar).get(T)
        with pytest.raises(ZPoolError, match="no task database"):
            pool.db_query()
        with pytest.raises(ValueError, match="close\\(\\) and join\\(\\) wait"):
            pool.detach()
        assert pool.apply(_tasks.square, (4,)) == 16  # (unchanged)


def test_a_detached_pools_tasks_run_on_and_are_fetched_later(home):
    start(home, "later", 2)
    pool = zpool.Pool(cluster="later")
    ars = [pool.apply_async(_tasks.sleep_then, (0.5, i)) for i in range(6)]
    left = pool.detach()
    assert set(left) <= {ar.msg_ids[0] for ar in ars} and left
    with pytest.raises(zpool.PoolClosedError, match=r"detached.*Pool\(cluster='later'\)\.get_result"):
        ars[-1].get(T)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(_tasks.square, (1,))
    with zpool.Pool(cluster="later") as other:
        assert other.get_result([ar.msg_ids[0] for ar in ars]).get(T) == list(range(6))  # none was aborted
    start(home, "unrecorded", 1, "--no-db")
    with zpool.Pool(cluster="unrecorded") as pool:
        ar = pool.apply_async(_tasks.sleep_then, (0.2, "kept"))
        with pytest.raises(ZPoolError, match="cannot detach.*no task database"):
            pool.detach()
        assert ar.get(T) == "kept"  # nothing changed


def test_the_controller_starts_again_engines_join_it_and_records_survive(home, tmp_path):
    controller = start(home, "phoenix", 0, *QUICK_BEATS)
    log = open(tmp_path / "engines.log", "wb")
    engines = [_engine_by_hand(home, "phoenix", log) for _ in range(2)]
    try:
        with zpool.Pool(cluster="phoenix", processes=2) as pool:
            squares = pool.map_async(_tasks.square, range(20), chunksize=2)
            assert squares.get(T) == [x * x for x in range(20)]
            pids_before = set(pool.queue_status()["engine_pids"].values())
            cut_short = pool.apply_async(_tasks.sleep_then, (30,))
            wait_until(lambda: pool.db_query(ids=cut_short)[0]["engine"] is not None, T, "it runs")
            os.kill(controller, signal.SIGKILL)
            with pytest.raises(zpool.BrokenPoolError):
                cut_short.get(T)
        assert pids_before == {e.pid for e in engines}
        assert "stale" in zpool_cli("cluster", "list").stdout
        # Started again: same addresses and key; the engines register again, with their state.
        start(home, "phoenix", 0, *QUICK_BEATS)
        with zpool.Pool(cluster="phoenix", processes=2) as pool:
            assert set(pool.queue_status()["engine_pids"].values()) == pids_before
            assert pool.get_result(squares).get(T) == [x * x for x in range(20)]
            lost = pool.db_query(status="lost")
            assert [r["id"] for r in lost] == cut_short.msg_ids
            with pytest.raises(UnknownTaskError, match="controller stopped before the task finished"):
                pool.get_result(cut_short).get(T)
            assert pool.resubmit(squares).get(T) == [x * x for x in range(20)]
            assert pool.map(_tasks.getpid, range(8), chunksize=1) and True
        assert all(e.poll() is None for e in engines)
        zpool_cli("cluster", "stop", "--name", "phoenix")
        for engine in engines:  # told to shut down by their controller
            assert engine.wait(T) == 0
    finally:
        for engine in engines:
            if engine.poll() is None:
                engine.kill()
                engine.wait()
        log.close()


def test_the_task_database_is_kept_across_stop_and_start(home):
    start(home, "keep", 1)
    with zpool.Pool(cluster="keep") as pool:
        ar = pool.map_async(_tasks.square, range(6), chunksize=3)
        ar.get(T)
    zpool_cli("cluster", "stop", "--name", "keep", "--keep-db")
    assert sorted(os.listdir(state_of("keep").folder))[0] == "tasks.db"
    assert "stopped" in zpool_cli("cluster", "list").stdout
    start(home, "keep", 1)
    with zpool.Pool(cluster="keep") as pool:
        assert pool.get_result(ar).get(T) == [0, 1, 4, 9, 16, 25]
    zpool_cli("cluster", "stop", "--name", "keep")
    assert not os.path.exists(state_of("keep").folder)


def test_engines_join_and_leave_while_a_map_runs(home, tmp_path):
    start(home, "elastic", 1)
    log = open(tmp_path / "engines.log", "wb")
    joined = []
    try:
        with zpool.Pool(cluster="elastic") as pool, pool.temp_flags(retries=3):
            first = set(pool.queue_status()["engine_pids"].values())
            ar = pool.map_async(_tasks.sleep_pid, [0.05] * 300, chunksize=1)  # 15 s on one engine
            joined = [_engine_by_hand(home, "elastic", log) for _ in range(2)]
            # They take tasks at once, from the map already queued.
            wait_until(
                lambda: {r["engine"] for r in pool.db_query(status="ok")} >= {1, 2}, T, "the new engines take tasks"
            )
            # One leaves mid-map (killed): its task is retried elsewhere, and the map completes.
            joined[0].kill()
            pids = ar.get(T)
        assert len(pids) == 300
        assert first < set(pids) and joined[0].pid in pids and joined[1].pid in pids
        assert not psutil.pid_exists(joined[0].pid) or psutil.Process(joined[0].pid).status() == psutil.STATUS_ZOMBIE
    finally:
        for engine in joined:
            if engine.poll() is None:
                engine.kill()
            engine.wait()
        log.close()


def test_zpool_status_shows_engines_clients_and_the_database(home):
    controller = start(home, "seen", 2)
    engines = {p.pid for p in cluster_processes(controller)} - {controller}
    with zpool.Pool(cluster="seen") as busy, zpool.Pool(cluster="seen") as idle:
        idle.map(_tasks.square, range(3), chunksize=1)
        idle.apply_async(_tasks.raise_value_error, ("x",)).wait(T)
        running = busy.map_async(_tasks.sleep_then, [3, 3, 3], chunksize=1)
        wait_until(lambda: sum(e["running"] for e in busy.queue_status()["engines"].values()) == 2, T, "two run")
        out = zpool_cli("status", "--name", "seen").stdout
        lines = out.splitlines()
        assert lines[0].startswith(f"cluster 'seen': controller pid {controller}") and "2 engine(s)" in lines[0]
        engine_rows = [line.split() for line in lines if line.split() and line.split()[0] in ("0", "1")]
        assert {int(row[1]) for row in engine_rows} == engines
        assert all(row[2] == os.uname().nodename and row[4] == "1" for row in engine_rows)  # each runs one
        by_client = {line.split()[0]: line.split() for line in lines if line[:12] in (busy.client_id, idle.client_id)}
        # CLIENT QUEUED RUNNING COMPLETED FAILED RECORDS
        assert by_client[busy.client_id][1:] == ["1", "2", "0", "0", "3"]
        assert by_client[idle.client_id][1:] == ["0", "0", "3", "1", "4"]
        assert "task database:" in out and "7 records" in out
        running.get(T)
        watched = subprocess.Popen(
            [sys.executable, "-m", "zpool", "status", "--name", "seen", "--watch", "0.2"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)
        watched.send_signal(signal.SIGINT)
        out, _ = watched.communicate(timeout=T)
        assert watched.returncode == 0 and out.count("cluster 'seen'") >= 2
    stopped = zpool_cli("status", "--name", "seen", check=False)
    assert stopped.returncode == 0  # (still running: the pools detached)
    zpool_cli("cluster", "stop", "--name", "seen")
    gone = zpool_cli("status", "--name", "seen", check=False)
    assert gone.returncode == 1 and "not running" in gone.stderr and "zpool cluster start" in gone.stderr
