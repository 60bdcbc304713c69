"""Progress bars: map(..., progress=True) and friends, AsyncResult.wait_interactive() (zpool._progress)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from tests import _tasks

T = 60
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from tests import _tasks
from zpool import Pool
if __name__ == "__main__":
    with Pool(2, preload=False) as pool:
        result = pool.map(_tasks.sleep_echo, [0.03] * 100, chunksize=5, progress=True)
    assert result == [0.03] * 100
    print("done", flush=True)
"""


def _run_in_a_terminal(script: str) -> str:
    """Run `script` with its output on a pseudo-terminal, as a user's would be; return everything it wrote."""
    leader, follower = pty.openpty()
    # A terminal of 24 lines of 100 columns (a new pseudo-terminal has no size, and a bar would get no width).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    out = b""
    deadline = time.monotonic() + T
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the other end closed: the script is done
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(T) == 0, out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return out.decode(errors="replace")


def test_a_blocking_map_draws_a_bar_that_moves_then_reaches_the_end_in_a_terminal():
    out = _run_in_a_terminal(SCRIPT.format(root=REPO_ROOT))
    counts = [int(n) for n in re.findall(r"\b(\d+)/100 \[", out)]
    assert counts and counts[-1] == 100, out
    assert any(0 < n < 100 for n in counts), f"no intermediate update: {counts}"
    assert "item/s" in out  # the rate, in items
    assert "done" in out


def test_map_async_and_starmap_async_bars_reach_the_end(pool, capsys):
    ar = pool.map_async(_tasks.square, range(40), chunksize=4, progress=True)
    assert ar.get(T) == [x * x for x in range(40)]
    star = pool.starmap_async(_tasks.add, [(i, i) for i in range(30)], progress=True)
    assert star.get(T) == [2 * i for i in range(30)]
    err = ""
    deadline = time.monotonic() + T
    while not ("40/40" in err and "30/30" in err):  # (the bars are drawn by threads of their own)
        assert time.monotonic() < deadline, f"the bars never reached their ends: {err!r}"
        time.sleep(0.05)
        err += capsys.readouterr().err
    assert "item/s" in err


def test_blocking_map_and_starmap_return_their_results_with_a_bar(pool, capsys):
    assert pool.map(_tasks.square, range(20), progress=True) == [x * x for x in range(20)]
    assert pool.starmap(_tasks.add, [(1, 2)] * 7, progress=True) == [3] * 7
    err = capsys.readouterr().err
    assert "20/20" in err and "7/7" in err


def test_imap_bars_count_the_results_taken(pool, capsys):
    assert list(pool.imap(_tasks.square, range(25), progress=True)) == [x * x for x in range(25)]
    assert sorted(pool.imap_unordered(_tasks.square, range(15), progress=True)) == sorted(x * x for x in range(15))
    err = capsys.readouterr().err
    assert "25/25" in err and "15/15" in err
    unsized = list(pool.imap(_tasks.square, (x for x in range(9)), progress=True))  # no len(): a count, no total
    assert unsized == [x * x for x in range(9)]
    assert re.search(r"\b9item", capsys.readouterr().err.replace(" ", ""))


def test_wait_interactive_counts_tasks_and_honours_its_timeout(pool, capsys):
    ar = pool.apply_async(_tasks.sleep_then, (0.2, "x"))
    assert ar.wait_interactive() is True and ar.get(T) == "x"
    slow = pool.apply_async(_tasks.sleep_then, (2.0,))
    assert slow.wait_interactive(timeout=0.2) is False
    assert slow.get(T) is None
    assert "1/1" in capsys.readouterr().err


def test_without_tqdm_a_bar_is_refused_before_anything_runs(pool, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    before = pool.queue_status()
    for call in (
        lambda: pool.map(_tasks.square, range(5), progress=True),
        lambda: pool.map_async(_tasks.square, range(5), progress=True),
        lambda: pool.imap(_tasks.square, range(5), progress=True),
        lambda: pool.apply_async(_tasks.square, (1,)).wait_interactive(),
    ):
        with pytest.raises(ImportError, match=r"pip install 'zpool\[progress\]'"):
            call()
    after = pool.queue_status()
    done = lambda status: sum(e["completed"] for e in status["engines"].values())  # noqa: E731
    assert done(after) - done(before) <= 1  # only the apply_async ran
