"""zpool.launchers and the launchers' options: specs, ranks, and the errors bad options get (no cluster started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import zpool
from zpool import cli
from zpool._transport import launcher_rank
from zpool.controller.remote import SlurmEngines
from zpool.launchers import MPI, SSH, Launcher, Slurm, from_spec, parse_hosts


def test_parse_hosts_counts_engines_per_host():
    assert parse_hosts("a:4, b:2,c") == [("a", 4), ("b", 2), ("c", 1)]
    for bad in ("a:0", "a:x", ":3", "a,,b"):
        with pytest.raises(ValueError, match="HOST or HOST:N"):
            parse_hosts(bad)


@pytest.mark.parametrize(
    "launcher",
    [
        SSH("n1:4,n2:2", ssh="ssh -F cfg", python="/opt/py"),
        MPI(8, mpiexec="mpiexec --hostfile h --mca plm_rsh_args '-p 2222'"),
        Slurm(64, partition="short", time="1:00:00", account="acct", extra="--mem=2G --nodes=2", pending_timeout=30),
    ],
)
def test_a_launcher_travels_as_json_and_comes_back_the_same(launcher):
    spec = json.loads(json.dumps(launcher.to_spec()))
    back = from_spec(spec)
    assert back == launcher and type(back) is type(launcher)
    assert back.engines == launcher.engines
    assert type(launcher).__name__ in repr(launcher)


def test_launcher_fields_are_checked():
    assert SSH([("a", 2), ("b", 3)]).engines == 5
    assert MPI(3, mpiexec="mpiexec -x A").mpiexec == ["mpiexec", "-x", "A"]
    assert Slurm(2, extra="--begin=now+1hour --mem=1G").extra == ["--begin=now+1hour", "--mem=1G"]
    for make in (lambda: MPI(0), lambda: MPI(True), lambda: Slurm("4"), lambda: SSH([("a", 0)])):
        with pytest.raises(ValueError, match="at least 1"):
            make()
    with pytest.raises(ValueError, match="empty"):
        MPI(2, mpiexec="")
    with pytest.raises(ValueError, match="pending_timeout"):
        Slurm(2, pending_timeout=0)
    with pytest.raises(ValueError, match="unknown launcher 'pbs'"):
        from_spec({"kind": "pbs", "n": 2})


def test_the_rank_comes_from_the_first_launcher_variable_set():
    assert launcher_rank({}) is None
    assert launcher_rank({"SLURM_PROCID": "5"}) == 5
    assert launcher_rank({"PMIX_RANK": "2", "SLURM_PROCID": "5"}) == 2  # (srun --mpi=pmix sets both)
    assert launcher_rank({"OMPI_COMM_WORLD_RANK": "1", "PMIX_RANK": "1"}) == 1
    assert launcher_rank({"PMI_RANK": "x", "SLURM_PROCID": "3"}) == 3  # (not a number: the next one)


def test_pool_refuses_launcher_options_that_do_not_go_together():
    mpi = MPI(2)
    with pytest.raises(ValueError, match="needs ip="):
        zpool.Pool(launcher=mpi)
    with pytest.raises(ValueError, match="launcher starts 2 engine"):
        zpool.Pool(5, launcher=mpi, ip="127.0.0.1")
    with pytest.raises(TypeError, match="zpool.launchers launcher"):
        zpool.Pool(launcher="mpi", ip="127.0.0.1")
    with pytest.raises(ValueError, match="go with launcher="):
        zpool.Pool(1, ip="10.0.0.1")
    with pytest.raises(ValueError, match="an attached cluster has its own"):
        zpool.Pool(launcher=mpi, ip="127.0.0.1", cluster="x")
    with pytest.raises(ValueError, match="--location"):
        zpool.Pool(launcher=mpi, ip="0.0.0.0")


def _cli_error(*argv: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["cluster", "start", *argv])
    assert exc.value.code == 2  # (argparse's usage error, before anything starts)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--launcher", "mpi", "-n", "2"], "--launcher mpi needs --ip"),
        (["--launcher", "slurm", "-n", "2"], "--launcher slurm needs --ip"),
        (["--launcher", "ssh", "--ip", "10.0.0.1"], "--launcher ssh needs --hosts"),
        (["--hosts", "a:2"], "--hosts goes with --launcher ssh"),
        (["--launcher", "ssh", "--ip", "10.0.0.1", "--hosts", "a:x"], "HOST or HOST:N"),
        (["--launcher", "slurm", "--ip", "10.0.0.1", "-n", "0"], "at least 1"),
        (["--launcher", "slurm", "--ip", "10.0.0.1", "--pending-timeout", "-1"], "pending_timeout"),
    ],
)
def test_the_cli_refuses_bad_launcher_options(argv, message, capsys):
    _cli_error(*argv)
    assert message in capsys.readouterr().err


class _Done:
    def __init__(self, out: str = "", err: str = "", code: int = 0) -> None:
        self.stdout, self.stderr, self.returncode = out, err, code


def _slurm(tmp_path, answers):
    """A SlurmEngines whose commands get `answers` (a function of argv), recording what it ran."""
    runner = SlurmEngines(Slurm(2, pending_timeout=5), str(tmp_path / "c.json"), "abc", str(tmp_path))
    ran = []

    def run(argv):
        ran.append(argv)
        return answers(argv)

    runner._run = run  # type: ignore[method-assign]
    return runner, ran


def test_slurm_states_are_followed_and_failures_said(tmp_path):
    states = iter(["PENDING|Priority|", "RUNNING|None|n[1-2]", ""])

    def answers(argv):
        tool = os.path.basename(argv[0])
        if tool == "sbatch":
            return _Done("4242;cluster\n")
        if tool == "squeue":
            return _Done(next(states))
        if tool == "scontrol":
            return _Done("JobId=4242 JobState=TIMEOUT Reason=TimeLimit NodeList=n[1-2]")
        return _Done()

    runner, ran = _slurm(tmp_path, answers)
    runner.start()
    assert runner.job == "4242"
    sbatch = ran[0]
    assert "--ntasks=2" in sbatch and "--job-name=zpool-abc" in sbatch and sbatch[-1].endswith("slurm-job.sh")
    with open(sbatch[-1]) as f:
        assert "srun" in f.read()
    runner.poll()
    assert runner.describe() == "slurm: job 4242 PENDING (Priority), 2 task(s)"
    runner.poll()
    assert runner.describe() == "slurm: job 4242 RUNNING on n[1-2], 2 task(s)" and runner.failure is None
    runner.poll()  # gone from the queue: scontrol tells how it ended
    assert runner.failure is not None and runner.failure.startswith("Slurm job 4242 ended: TIMEOUT (TimeLimit)")


def test_slurm_refused_and_held_jobs_are_failures(tmp_path):
    refused, _ = _slurm(tmp_path, lambda argv: _Done(err="sbatch: error: Invalid account", code=1))
    refused.start()
    assert refused.failure == "Slurm refused the job (sbatch exited 1): sbatch: error: Invalid account"

    def held(argv):
        tool = os.path.basename(argv[0])
        return _Done("7\n") if tool == "sbatch" else _Done("PENDING|launch failed requeued held|")

    runner, ran = _slurm(tmp_path, held)
    runner.start()
    runner.poll()
    assert runner.failure is not None and "Slurm holds job 7" in runner.failure
    assert ["scancel", "7"] in ran


def test_launcher_is_plain_data_for_subclasses():
    class Custom(Launcher):
        kind = "custom"

        def __init__(self) -> None:
            self.python = sys.executable

    assert Custom().to_spec() == {"kind": "custom", "python": sys.executable}


def test_zpool_cluster_start_help_lists_the_launchers():
    done = subprocess.run(
        [sys.executable, "-m", "zpool", "cluster", "start", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for option in ("--launcher {local,ssh,mpi,slurm}", "--mpiexec", "--partition", "--pending-timeout"):
        assert option in done.stdout


def test_slurm_not_answering_is_not_the_job_ending(tmp_path):
    answers = iter(
        [
            _Done(err="slurm_load_jobs error: Unable to contact slurm controller", code=1),  # squeue
            _Done("RUNNING|None|n1"),
            _Done(err="slurm_load_jobs error: Invalid job id specified", code=1),  # squeue: it left the queue
            _Done(err="slurm_load_jobs error: Invalid job id specified", code=1),  # scontrol: forgotten too
        ]
    )

    def answer(argv):
        return _Done("9\n") if os.path.basename(argv[0]) == "sbatch" else next(answers)

    runner, _ = _slurm(tmp_path, answer)
    runner.start()
    runner.poll()  # Slurm's controller did not answer: the state is unknown, not ended
    assert runner.failure is None and runner.state == "SUBMITTED"
    runner.poll()
    assert runner.state == "RUNNING" and runner.failure is None
    runner.poll()
    assert runner.failure is not None and runner.failure.startswith("Slurm job 9 ended: gone from the queue")
