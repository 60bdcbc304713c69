"""benchmarks/bench_core.py runs every figure and prints every row (tiny sizes, zpool + multiprocessing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "bench_core.py")

ROWS = [
    "1. start -> first result, median (ms)",
    "2. apply round trip, median (us)",
    "   apply round trip, p90 (us)",
    "3. 200 apply_async (tasks/s)",
    "   controller CPU per task (us, zpool)",
    "4. map 2,000 items (items/s)",
    "5. imap 500 items (items/s)",
    "6. 16 uneven tasks 2-20 ms (wall/ideal)",
    "7. 20 CPU-bound 2 ms tasks (wall/ideal)",
    "   controller CPU share (zpool)",
    "8. 8 MB array round trip (s)",
    "   8 MB array round trip (GB/s)",
]


def run_bench(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=100, cwd=REPO
    )


@pytest.mark.timeout(120)
def test_smoke_run_prints_every_row(tmp_path):
    out = tmp_path / "bench.json"
    done = run_bench("--smoke", "--peers", "none", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("figure "))
    for column in ("zpool", "multiprocessing (", "multiprocessing (spawn)", "ratio (>1: zpool better)"):
        assert column in header
    for label in ROWS:
        assert any(line.startswith(label + " ") for line in lines), f"row {label!r} missing:\n{done.stdout}"
    assert "ratio = zpool vs the best of multiprocessing" in done.stdout
    assert "ERROR" not in done.stdout
    payload = json.loads(out.read_text())
    assert payload["peers"] == []
    assert payload["settings"]["cpu_iterations"] > 0
    zp = payload["results"]["zpool"]
    assert 0 <= zp["cpu"]["metrics"]["controller_cpu_share"] <= 1
    assert zp["apply_async"]["metrics"]["controller_us_per_task"] >= 0
    assert set(payload["ratios"]) >= {"uneven.wall_over_ideal", "cpu.wall_over_ideal", "startup.median_ms"}


@pytest.mark.timeout(60)
def test_unknown_backend_is_refused():
    done = run_bench("--only", "zpool,nope")
    assert done.returncode == 2
    assert "unknown back-end nope" in done.stderr


@pytest.mark.timeout(180)
def test_scale_benchmark_measures_a_small_cluster(tmp_path):
    """benchmarks/bench_scale.py at 8 engines on Unix sockets: every figure measured, its cluster gone after."""
    out = tmp_path / "scale.json"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = os.path.join(REPO, "benchmarks", "bench_scale.py")
    argv = ["--max", "8", "--transports", "ipc", "--tasks", "200", "--rounds", "1", "--idle-s", "0.5"]
    done = subprocess.run(
        [sys.executable, script, *argv, "--no-restart", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=150,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "projected ceiling of one controller" in done.stdout
    (ipc,) = json.loads(out.read_text())
    (grown,) = ipc["grow"]
    assert grown["n"] == 8 and grown["ctrl_rss_mib"] > 0 and grown["idle_per_s"] > 0
    (tasks,) = ipc["tasks"]
    assert tasks["apply_per_s"] > 0 and tasks["apply_us"] > 0 and tasks["map_per_s"] > 0
