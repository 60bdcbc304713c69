"""How the hidden cluster's processes are started: what they import, and where their sockets live.

* They import from exactly the caller's ``sys.path``: a module planted in
  the working directory (``/tmp``, a shared folder) that the caller does
  not import from never runs in the controller or the engines.
* ``''`` on the caller's path means the directory the program started in,
  as with the standard library's spawn, even after ``os.chdir()``.
* A temporary directory too long for a Unix socket's path does not stop
  ``Pool()``; when no short directory can be found, ``Pool()`` says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

import zpool
from zpool import cluster

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T = 120


def _env(**extra: str) -> dict[str, str]:
    # (No empty entry: in PYTHONPATH that would mean the working directory.)
    paths = [REPO, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    env.update(extra)
    return env


def _run(argv: list[str], cwd: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, env=_env(**env), timeout=T, cwd=cwd)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


PLANTED = """
import os
with open(os.path.join({marker!r}, "{name}-%d" % os.getpid()), "w") as f:
    f.write("planted module imported")
raise ImportError("planted {name} imported")
"""


@pytest.mark.timeout(T + 30)
def test_modules_planted_in_the_working_directory_never_run(tmp_path):
    """`python script.py` run from a directory holding zpool/, zmq.py and numpy/: only the real ones load."""
    planted, scripts, marker = tmp_path / "shared", tmp_path / "scripts", tmp_path / "marker"
    for d in (planted, scripts, marker):
        d.mkdir()
    (planted / "zmq.py").write_text(PLANTED.format(marker=str(marker), name="zmq"))
    for package in ("zpool", "numpy", "dill"):
        (planted / package).mkdir()
        (planted / package / "__init__.py").write_text(PLANTED.format(marker=str(marker), name=package))
    script = scripts / "job.py"
    script.write_text(
        textwrap.dedent("""
            import numpy as np
            import zpool

            def total(n):
                return float(np.arange(n).sum())

            if __name__ == "__main__":
                with zpool.Pool(2) as pool:
                    assert pool.map(total, [3, 4, 5]) == [3.0, 6.0, 10.0]
                print("OK")
        """)
    )
    done = _run([sys.executable, str(script)], cwd=str(planted))
    assert done.stdout.strip() == "OK"
    assert not os.listdir(marker), f"planted modules ran in: {os.listdir(marker)}"


@pytest.mark.timeout(T + 30)
def test_the_working_directory_is_searched_when_the_caller_searches_it(tmp_path):
    """`python -c` (or a notebook) puts '' first on the path: its modules are found by the engines too."""
    (tmp_path / "helper_mod.py").write_text("def triple(x):\n    return 3 * x\n")
    code = "import zpool, helper_mod\nwith zpool.Pool(2) as pool:\n    print(pool.map(helper_mod.triple, [1, 2]))\n"
    done = _run([sys.executable, "-c", code], cwd=str(tmp_path))
    assert done.stdout.strip() == "[3, 6]"


@pytest.mark.timeout(T + 30)
def test_empty_path_entry_means_the_start_directory_after_chdir(tmp_path):
    """As the stdlib's spawn (multiprocessing.process.ORIGINAL_DIR): '' is where the program started."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    (start / "chdir_mod.py").write_text("def square(x):\n    return x * x\n")
    code = textwrap.dedent(f"""
        import os, zpool, chdir_mod
        os.chdir({str(elsewhere)!r})
        with zpool.Pool(2) as pool:
            print(pool.map(chdir_mod.square, [2, 3]), pool.apply(os.getcwd))
    """)
    done = _run([sys.executable, "-c", code], cwd=str(start))
    assert done.stdout.strip() == f"[4, 9] {elsewhere}"  # engines run in the caller's current directory


@pytest.mark.timeout(T + 30)
def test_a_temporary_directory_too_long_for_socket_paths_still_works(tmp_path):
    long_dir = tmp_path / ("d" * 60) / ("e" * 60)
    long_dir.mkdir(parents=True)
    assert len(str(long_dir)) > cluster.MAX_SOCKET_PATH
    code = textwrap.dedent("""
        import glob, os, tempfile, zpool
        with zpool.Pool(2) as pool:
            print(pool.map(abs, [-1, -2]))
            workdir = pool._cluster.workdir
            print(not workdir.startswith(tempfile.gettempdir()), len(workdir) < 100)
        print(os.path.exists(workdir))
    """)
    done = _run([sys.executable, "-c", code], cwd=str(tmp_path), TMPDIR=str(long_dir))
    assert done.stdout.split("\n")[:3] == ["[1, 2]", "True True", "False"], done.stdout
    assert "Traceback" not in done.stderr and "File name too long" not in done.stderr, done.stderr


def test_no_directory_short_enough_is_a_broken_pool_error_that_says_why(tmp_path, monkeypatch):
    long_dir = tmp_path / ("f" * 120)
    long_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_dir))
    monkeypatch.setattr(cluster, "SHORT_DIRS", (str(long_dir / "g"),))
    with pytest.raises(zpool.BrokenPoolError, match="TMPDIR") as info:
        zpool.Pool(1)
    assert str(cluster.MAX_SOCKET_PATH) in str(info.value)
    assert not os.listdir(long_dir)  # nothing was left behind
