"""Every script in examples/ runs to completion (with small inputs)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )


def test_monte_carlo_pi():
    done = run_example("monte_carlo_pi.py", "--samples", "400000", "--chunks", "8")
    assert done.returncode == 0, done.stderr
    estimate = float(done.stdout.split("pi ~= ")[1].split()[0])
    assert abs(estimate - 3.14159) < 0.02
    assert "tasks per engine" in done.stdout
    assert done.stderr == ""


def test_lambdas_and_errors():
    done = run_example("lambdas_and_errors.py")
    assert done.returncode == 0, done.stderr
    assert "ZeroDivisionError" in done.stdout
    assert "Traceback from engine" in done.stdout


def test_migrating_from_multiprocessing():
    done = run_example("migrating_from_multiprocessing.py")
    assert done.returncode == 0, done.stderr
    assert "identical results: True" in done.stdout.splitlines()
    assert done.stderr == ""


def test_dag_dependencies():
    done = run_example("dag_dependencies.py", "--nodes", "24", "--edges", "60")
    assert done.returncode == 0, done.stderr
    assert "24 tasks, 60 dependencies" in done.stdout
    assert "every task started after its predecessors completed (60 edges checked)" in done.stdout
    assert done.stderr == ""


def test_scatter_gather():
    done = run_example("scatter_gather.py", "--size", "301", "--lines", "2000", "--iterations", "5", "--processes", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "rows per engine: [151, 150]" in lines
    assert "matrix-vector product matches serial result: True" in lines
    assert "power iteration matches serial result: True" in lines
    assert "word counts match serial result: True" in lines
    assert done.stderr == ""


def test_parallel_decorator():
    done = run_example("parallel_decorator.py", "--limit", "20000", "--rows", "1000", "--processes", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "decorated: primes_in(numbers): The primes among `numbers`, in order." in lines
    assert "2,262 primes below 20,000; the last: 19997" in lines
    for check in (
        "primes match serial result",
        "row norms match serial result",
        "sum of partial sums matches serial result",
        "collatz map matches serial result",
        "gcd map matches serial result",
        "unordered holds the same items",
        "remote factors multiply back",
        "one answer per engine",
    ):
        assert f"{check}: True" in lines
    assert "row norms: ndarray of shape (1000,)" in lines
    assert "partial sums: 20 (one per chunk of 1000)" in lines
    assert "remote with block=False: AsyncResult, value 1001" in lines
    assert done.stderr == ""


def test_executor_drop_in():
    done = run_example("executor_drop_in.py", "--limit", "30000", "--chunks", "6", "--workers", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("map: 3245 primes below 30000 (")
    assert lines[1:] == [
        "as_completed: 6 parts, 3245 primes",
        "asyncio run_in_executor: 3245 primes",
        "the same as counted here: True",
    ]
    assert done.stderr == ""


def test_progress_and_timeline(tmp_path):
    out = tmp_path / "timeline.png"
    done = run_example("progress_and_timeline.py", "--tasks", "24", "--scale", "0.3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("24 tasks, ") and lines[0].endswith(" s of work on 2 engines:")
    assert lines[1].startswith("wall ") and "wall/ideal" in lines[1]
    assert lines[2].startswith(f"timeline saved to {out}: 24 tasks on 2 engines in ")
    assert out.read_bytes().startswith(b"\x89PNG")
    assert "24/24" in done.stderr  # the progress bar reached its end


def test_worker_output():
    done = run_example("worker_output.py", "--points", "6", "--steps", "3")
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    forwarded = out[1 : out.index("-- final x, and the exact exp(-rate t):")]
    assert len(forwarded) == 18 and all(line.startswith("[engine ") for line in forwarded)
    assert "2 of 6 rates warned: 2.50, 3.00" in out
    assert out[-1] == "the last line of the first task: 'rate 0.50: step 3/3, x = 0.4219'"
    warned = done.stderr.splitlines()
    assert len(warned) == 2 and all(line.startswith("[engine ") and "went negative" in line for line in warned)


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(REPO, "examples")) if f.endswith(".py")))
def test_every_example_is_covered(name):
    covered = {
        "monte_carlo_pi.py",
        "lambdas_and_errors.py",
        "migrating_from_multiprocessing.py",
        "dag_dependencies.py",
        "scatter_gather.py",
        "parallel_decorator.py",
        "executor_drop_in.py",
        "progress_and_timeline.py",
        "worker_output.py",
        "standalone_cluster.py",
        "mpi_engines.py",
    }
    assert name in covered, f"add a test that runs examples/{name}"


def test_standalone_cluster():
    done = run_example("standalone_cluster.py", "--walks", "16")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    client = next(line.split()[-1] for line in lines if line.startswith("submitted 16 walks as client"))
    assert any(line.startswith("detached, leaving") for line in lines)
    failed = [line for line in lines if line.startswith("task ") and "failed" in line]
    assert len(failed) == 1 and failed[0].endswith("failed: ValueError: seed 13 is unlucky")
    failed_id = failed[0].split()[1]
    assert failed_id.startswith(f"{client}-")
    assert any(line.startswith("fetched 15 results by id") for line in lines)
    assert f"records of failed tasks: ['{failed_id}']" in lines
    walks = eval(next(line for line in lines if line.startswith("walks per engine:")).split(":", 1)[1])
    assert sum(walks.values()) == 15 and set(walks) <= {0, 1}
    row = next(line.split() for line in lines if line.startswith(f"{client} "))  # zpool status: its client row
    assert row[1:] == ["0", "0", "15", "1", "16"]
    assert lines[-1] == "cluster 'default' stopped: its folder is removed"
    assert done.stderr == ""


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec (Debian's openmpi-bin; .ci/run installs it)")
@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="no mpi4py (the test extra installs it)")
def test_mpi_engines():
    done = run_example("mpi_engines.py", "--engines", "3", "--points", "300000")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "3 engines, MPI ranks" in lines[0]
    assert "primes below 50,000: 5133" in lines
    assert "104,729 is prime: True" in done.stdout
    assert "allreduce over ranks [0, 1, 2]: every rank has pi ~= 3.14159" in done.stdout
    assert "all ranks agree: True" in done.stdout
    assert done.stderr == ""  # (mpiexec saw every rank finalize: no "exiting improperly")
