"""The mpi and slurm launchers against real daemons on fake hosts (``tests._hosts``): start, use, stop, failures.

Slurm: munged and slurmctld on h1, a slurmd on each of h2 and h3 (Debian's
slurm-wlm), the cluster's controller on h1 submitting the job there. MPI:
Open MPI's ``mpiexec`` on h1 starting ranks on h2 and h3 through an sshd on
each. Each test skips, saying why, where the fake hosts or the daemons
cannot be had (``.ci/run`` installs the packages where it may).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
import time

import psutil
import pytest

import zpool
from tests import _tasks
from tests._hosts import HostCluster, alive, no_mpi, no_slurm, no_sshd, unavailable
from zpool.launchers import MPI

WHY_NOT = unavailable()
pytestmark = pytest.mark.timeout(300)
needs_hosts = pytest.mark.skipif(WHY_NOT is not None, reason=f"no fake hosts: {WHY_NOT}")
needs_mpi = pytest.mark.skipif(
    no_mpi() is not None or importlib.util.find_spec("mpi4py") is None,
    reason=f"{no_mpi() or 'no mpi4py (the test extra installs it)'}",
)

# Where each engine runs, and what the pool says of them (ranks, hosts, metadata).
WHERE = textwrap.dedent(
    """
    import json, sys, zpool

    def where(_):
        import os, socket, time
        time.sleep(0.02)  # (long enough for every engine to get some)
        return socket.gethostname(), os.getpid()

    with zpool.Pool(connection=sys.argv[1], processes=int(sys.argv[2])) as pool:
        seen = sorted(set(map(tuple, pool.map(where, range(60), chunksize=1))))
        view = pool.engines
        one = pool.apply_async(where, (0,))
        one.get(60)
        md = one.metadata
        print(json.dumps({
            "seen": seen, "ids": view.ids, "ranks": view.ranks, "hosts": view.hosts,
            "first": repr(view[0]), "md": [md.engine_id, md.engine_host, md.engine_rank],
        }))
    """
)

# The engines as MPI ranks: a collective among all of them, through mpi4py.
ALLREDUCE = textwrap.dedent(
    """
    import json, sys, zpool

    def allreduce():
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        return comm.rank, comm.size, comm.allreduce(comm.rank + 1)

    with zpool.Pool(connection=sys.argv[1], processes=int(sys.argv[2]) if len(sys.argv) > 2 else 3) as pool:
        view = pool.engines
        print(json.dumps({"ranks": view.ranks, "each": view.apply(allreduce)}))
    """
)

# Tasks running while the job is cancelled under them, then a task after.
KILLED = textwrap.dedent(
    """
    import json, subprocess, sys, time, zpool

    with zpool.Pool(connection=sys.argv[1], processes=2) as pool:
        running = [pool.apply_async(time.sleep, (60,)) for _ in range(2)]
        time.sleep(1.0)
        subprocess.run(["scancel", sys.argv[2]], check=True)
        outcomes = []
        for r in running:
            try:
                r.get(60)
                outcomes.append("finished")
            except zpool.EngineError:
                outcomes.append("EngineError")
        time.sleep(2.0)  # (the launcher looks at the job every second)
        try:
            pool.apply(abs, (-1,))
            after = "ran"
        except zpool.BrokenPoolError as exc:
            after = str(exc)
        print(json.dumps({"outcomes": outcomes, "after": after}))
    """
)


@pytest.fixture
def slurm(hosts, tmp_path):
    """Slurm on the fake hosts, and cluster "net" of the zpool command on h1 as its client."""
    if no_slurm():
        pytest.skip(f"no Slurm: {no_slurm()}")
    env = hosts.start_slurm("h1", ["h2", "h3"])
    return HostCluster(hosts, str(tmp_path / "home"), env=env)


def _job_of(cluster: HostCluster) -> str:
    found = re.search(r"slurm: job (\d+)", cluster.status())
    assert found, cluster.status()
    return found.group(1)


def _squeue(cluster: HostCluster) -> str:
    return cluster.hosts.run("h1", ["squeue", "-h", "-o", "%i %T"], env=cluster.env).stdout.strip()


@needs_hosts
def test_slurm_starts_uses_and_cancels_a_job_of_engines(slurm, tmp_path):
    started = slurm.start(
        "--launcher",
        "slurm",
        "-n",
        "3",
        "--time",
        "10",
        "--extra=--nodes=2",
        "--pending-timeout",
        "60",
        "--remote-python",
        sys.executable,
    )
    assert started.returncode == 0, started.stderr
    assert "3 engine(s)" in started.stdout  # it returned once the job's engines took tasks
    status = slurm.status()
    assert re.search(r"launcher: slurm: job \d+ RUNNING on h\[2-3\], 3 task\(s\)", status), status
    assert "RANK" in status
    out = slurm.script(str(tmp_path / "where.py"), WHERE, "3")
    assert sorted({host for host, _ in out["seen"]}) == ["h2", "h3"]
    assert sorted(out["ranks"]) == [0, 1, 2]  # each engine is a task of the job: SLURM_PROCID
    assert sorted(out["hosts"]) == ["h2", "h2", "h3"]
    engine_id, host, rank = out["md"]
    index = out["ids"].index(engine_id)
    assert (host, rank) == (out["hosts"][index], out["ranks"][index])
    assert out["first"] == f"<EngineView engine {out['ids'][0]}, rank {out['ranks'][0]} on {out['hosts'][0]}>"
    pids = [pid for _, pid in out["seen"]]
    stopped = slurm.stop()
    assert stopped.returncode == 0, stopped.stderr
    assert _squeue(slurm) == ""  # scancel: the job is gone
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "the job's engines outlived the cluster"
        time.sleep(0.2)


@needs_hosts
def test_slurm_refusing_the_job_fails_the_start_saying_why(slurm):
    began = time.monotonic()
    started = slurm.start("--launcher", "slurm", "-n", "2", "--partition", "nosuch", "--remote-python", "python3")
    assert started.returncode != 0
    assert "Slurm refused the job" in started.stderr and "invalid partition" in started.stderr.lower(), started.stderr
    assert time.monotonic() - began < 60  # at once, not after the start's time-out
    assert _squeue(slurm) == ""


@needs_hosts
def test_a_job_pending_too_long_is_cancelled_and_reported(slurm):
    began = time.monotonic()
    started = slurm.start("--launcher", "slurm", "-n", "2", "--extra=--begin=now+1hour", "--pending-timeout", "3")
    assert started.returncode != 0
    assert "still pending after" in started.stderr and "BeginTime" in started.stderr, started.stderr
    assert "it was cancelled" in started.stderr
    assert time.monotonic() - began < 60
    assert _squeue(slurm) == ""


@needs_hosts
def test_a_job_killed_by_slurm_fails_its_tasks_and_is_reported(slurm, tmp_path):
    started = slurm.start(
        "--launcher",
        "slurm",
        "-n",
        "2",
        "--remote-python",
        sys.executable,
        "--heartbeat-interval",
        "0.5",
        "--heartbeat-misses",
        "4",
    )
    assert started.returncode == 0, started.stderr
    job = _job_of(slurm)
    out = slurm.script(str(tmp_path / "killed.py"), KILLED, job)
    assert out["outcomes"] == ["EngineError", "EngineError"]
    assert f"Slurm job {job} ended: CANCELLED" in out["after"]
    status = slurm.status()
    assert f"no engine can start: Slurm job {job} ended: CANCELLED" in status, status
    assert slurm.stop().returncode == 0


@needs_hosts
@needs_mpi
@pytest.mark.skipif(no_sshd() is not None, reason=f"no sshd: {no_sshd()}")
def test_mpi_starts_ranks_on_two_hosts_that_use_mpi4py_among_them(hosts, tmp_path):
    ssh = hosts.start_sshd(["h2", "h3"])
    cluster = HostCluster(hosts, str(tmp_path / "home"))
    h2, h3 = hosts.address("h2"), hosts.address("h3")
    mpiexec = (
        f"mpiexec --allow-run-as-root --oversubscribe --host {h2}:2,{h3}:1 --mca plm_rsh_args '{' '.join(ssh[1:])}'"
    )
    started = cluster.start("--launcher", "mpi", "-n", "3", "--mpiexec", mpiexec, "--remote-python", sys.executable)
    assert started.returncode == 0, started.stderr
    assert "3 engine(s)" in started.stdout
    assert re.search(r"launcher: mpi: mpiexec pid \d+, 3 rank\(s\), running", cluster.status())
    out = cluster.script(str(tmp_path / "where.py"), WHERE, "3")
    assert sorted(out["ranks"]) == [0, 1, 2]  # OMPI_COMM_WORLD_RANK
    assert sorted(out["hosts"]) == ["h2", "h2", "h3"]
    pids = [pid for _, pid in out["seen"]]
    mpi = cluster.script(str(tmp_path / "allreduce.py"), ALLREDUCE)
    for rank, (comm_rank, size, total) in zip(mpi["ranks"], mpi["each"]):
        assert (comm_rank, size, total) == (rank, 3, 6)  # the engine's rank is its MPI rank; a real collective ran
    stopped = cluster.stop()
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "MPI engines outlived the cluster"
        time.sleep(0.2)


@needs_hosts
def test_mpiexec_that_cannot_start_fails_the_start_saying_why(hosts, tmp_path):
    if no_mpi():
        pytest.skip(no_mpi())
    cluster = HostCluster(hosts, str(tmp_path / "home"))
    # Ranks on a host that does not exist: mpiexec gives up, and the start says so instead of waiting.
    mpiexec = (
        "mpiexec --allow-run-as-root --host 10.211.0.9:2 --mca plm_rsh_args '-o ConnectTimeout=2 -o BatchMode=yes'"
    )
    began = time.monotonic()
    started = cluster.start("--launcher", "mpi", "-n", "2", "--mpiexec", mpiexec)
    assert started.returncode != 0
    assert "mpiexec" in started.stderr and "exited with status" in started.stderr, started.stderr
    assert time.monotonic() - began < 90


# (mpi4py is only looked for here: importing mpi4py.MPI in the test process would make it an MPI singleton.)
@needs_mpi
def test_a_pool_runs_its_engines_as_mpi_ranks_and_ends_them():
    mpiexec = "mpiexec --allow-run-as-root --oversubscribe"
    with zpool.Pool(launcher=MPI(3, mpiexec=mpiexec, python=sys.executable), ip="127.0.0.1") as pool:
        assert pool._processes == 3
        assert pool.map(abs, range(-20, 0)) == list(range(20, 0, -1))
        view = pool.engines
        assert sorted(view.ranks) == [0, 1, 2]
        for rank, (comm_rank, size, total) in zip(view.ranks, view.apply(_tasks.mpi_allreduce)):
            assert (comm_rank, size, total) == (rank, 3, 6)
        result = pool.apply_async(abs, (-1,))
        result.get(30)
        assert result.metadata.engine_rank == view.ranks[view.ids.index(result.metadata.engine_id)]
        started = psutil.Process().children(recursive=True)  # the controller, mpiexec and the engines
        assert sum(p.name() == "mpiexec" for p in started) == 1
        assert sum("zpool.engine" in " ".join(p.cmdline()) and p.name() != "mpiexec" for p in started) == 3
    _, alive_ = psutil.wait_procs(started, timeout=30)
    assert not alive_  # the pool ended its controller, its engines and mpiexec


@needs_hosts
@pytest.mark.skipif(no_sshd() is not None, reason=f"no sshd: {no_sshd()}")
def test_a_pool_runs_its_engines_on_other_hosts_through_ssh(hosts, tmp_path):
    ssh = hosts.start_sshd(["h2", "h3"])
    cluster = HostCluster(hosts, str(tmp_path / "home"))
    h1, h2, h3 = (hosts.address(h) for h in ("h1", "h2", "h3"))
    script = textwrap.dedent(
        f"""
        import json, sys, zpool
        from zpool.launchers import SSH

        def where(_):
            import os, socket, time
            time.sleep(0.05)
            return socket.gethostname(), os.getpid()

        launcher = SSH("{h2}:2,{h3}:1", ssh={ssh!r}, python=sys.executable)
        with zpool.Pool(launcher=launcher, ip="{h1}") as pool:
            seen = sorted(set(map(tuple, pool.map(where, range(40), chunksize=1))))
            print(json.dumps({{"seen": seen, "hosts": pool.engines.hosts}}))
        """
    )
    out = cluster.script(str(tmp_path / "pool.py"), script)
    assert sorted(out["hosts"]) == ["h2", "h2", "h3"]
    assert sorted({h for h, _ in out["seen"]}) == ["h2", "h3"]
    deadline = time.monotonic() + 30
    while any(alive(pid) for _, pid in out["seen"]):
        assert time.monotonic() < deadline, "the pool's remote engines outlived it"
        time.sleep(0.2)


@needs_hosts
@needs_mpi
def test_slurm_engines_under_srun_pmix_use_mpi4py_among_them(slurm, tmp_path):
    started = slurm.start(
        "--launcher",
        "slurm",
        "-n",
        "2",
        "--extra=--nodes=1",  # (pmix across fake nodes needs a /tmp per node: see ../shared/testbed)
        "--srun=--mpi=pmix",
        "--pending-timeout",
        "60",
        "--remote-python",
        sys.executable,
    )
    assert started.returncode == 0, started.stderr
    mpi = slurm.script(str(tmp_path / "allreduce.py"), ALLREDUCE, "2")
    assert sorted(mpi["ranks"]) == [0, 1]  # PMIX_RANK
    for rank, (comm_rank, size, total) in zip(mpi["ranks"], mpi["each"]):
        assert (comm_rank, size, total) == (rank, 2, 3)
    assert slurm.stop().returncode == 0
    assert _squeue(slurm) == ""
