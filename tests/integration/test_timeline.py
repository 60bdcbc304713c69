"""Timelines: AsyncResult.timeline() and Pool.timeline() draw per-engine Gantt charts (zpool._timeline)."""

from __future__ import annotations

import sys

import pytest

import zpool
from tests import _tasks
from zpool import _timeline

T = 60
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_a_map_result_timeline_writes_a_png(pool, tmp_path):
    ar = pool.map_async(_tasks.sleep_echo, [0.01] * 12, chunksize=1)
    ar.get(T)
    path = tmp_path / "timeline.png"
    ax = ar.timeline(str(path))
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert ax.get_title().startswith("12 tasks on ")
    labels = [label.get_text() for label in ax.get_yticklabels()]
    assert labels and all(label.startswith("engine ") for label in labels)


def test_pool_timeline_draws_several_results_on_a_given_axes(pool, tmp_path):
    from matplotlib.figure import Figure

    quick = pool.map_async(_tasks.square, range(20), chunksize=5)
    failing = pool.apply_async(_tasks.raise_value_error, ("x",))
    quick.get(T)
    failing.wait(T)
    ax = Figure().add_subplot()
    assert zpool.Pool.timeline([quick, failing], ax=ax, title="mine") is ax
    assert ax.get_title() == "mine"
    runs = _timeline.spans([quick, failing])
    assert len(runs) == 5
    assert [r.failed for r in runs if r.result == 1] == [True]  # the failed task is marked (edged in red)
    assert all(r.stopped >= r.started for r in runs)
    ax.figure.savefig(str(tmp_path / "both.svg"))
    assert (tmp_path / "both.svg").read_text().lstrip().startswith("<?xml")


def test_a_timeline_of_nothing_run_says_so(pool):
    with pytest.raises(ValueError, match="no task of these results has run on an engine yet"):
        pool.map_async(_tasks.square, []).timeline()


def test_without_matplotlib_a_timeline_says_how_to_get_it(pool, monkeypatch):
    ar = pool.apply_async(_tasks.square, (2,))
    ar.get(T)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'zpool\[timeline\]'"):
        ar.timeline()
