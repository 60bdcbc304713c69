"""What tasks print: kept per task (ar.stdout, ar.stderr, display_outputs), forwarded with a prefix, or inherited.

See docs/output.md. Output is line-buffered per engine and comes the
controller's way, so these tests read it after the call that made it
returned (a call returns once its tasks' output has come) or wait for it.
"""

from __future__ import annotations

import re
import time

import pytest

import zpool
from tests import _printing
from tests._wait import wait_until

T = 60


class Captured:
    """Everything pytest's capsys saw so far (readouterr() only returns what is new)."""

    def __init__(self, capsys):
        self.capsys = capsys
        self.out = ""
        self.err = ""

    def read(self):
        got = self.capsys.readouterr()
        self.out += got.out
        self.err += got.err
        return self


def test_each_task_keeps_what_it_printed(fresh_pool):
    pool = fresh_pool(2, output="capture")
    ar = pool.apply_async(_printing.say, ("a",))
    assert ar.get(T) == "a"
    assert ar.stdout == "out a\n"
    assert ar.stderr == "err a\n"
    quiet = pool.apply_async(abs, (-1,))
    assert quiet.get(T) == 1 and quiet.stdout == "" and quiet.stderr == ""
    # A map's tasks are its chunks: one entry per chunk, here one per item, in order.
    ar = pool.map_async(_printing.say, range(6), chunksize=1)
    assert ar.get(T) == list(range(6))
    assert ar.stdout == [f"out {i}\n" for i in range(6)]
    assert ar.stderr == [f"err {i}\n" for i in range(6)]
    ar = pool.map_async(_printing.say, range(6), chunksize=3)
    ar.wait(T)
    assert ar.stdout == ["out 0\nout 1\nout 2\n", "out 3\nout 4\nout 5\n"]


def test_blocking_calls_return_with_their_output(fresh_pool, capsys):
    # Blocking calls take the direct path (straight to an engine): the reply is there before the output,
    # which comes the controller's way, and the call waits for it.
    pool = fresh_pool(2)
    seen = Captured(capsys)
    for i in range(40):
        assert pool.apply(_printing.say, (i,)) == i
        seen.read()
        assert re.search(rf"^\[engine \d+\] out {i}$", seen.out, re.M), seen.out[-300:]
        assert re.search(rf"^\[engine \d+\] err {i}$", seen.err, re.M), seen.err[-300:]
    assert pool.map(_printing.say, range(10)) == list(range(10))
    seen.read()
    for i in range(10):
        assert re.search(rf"^\[engine \d+\] out {i}$", seen.out, re.M)


def test_forwarded_output_keeps_each_engines_order(fresh_pool, capsys):
    pool = fresh_pool(2)
    ar = pool.starmap_async(_printing.lines, [(t, 200) for t in range(8)], chunksize=1)
    assert ar.get(T) == list(range(8))
    out = Captured(capsys).read().out
    engines = {md["engine_id"] for md in ar.metadata}
    by_engine: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.fullmatch(r"\[engine (\d+)\] (t\d+ \d+)", line)
        assert m, f"a line without its engine's prefix: {line!r}"
        by_engine.setdefault(m.group(1), []).append(m.group(2))
    assert {int(e) for e in by_engine} == engines
    for engine, got in by_engine.items():
        # An engine runs one task at a time: its tasks' lines come whole and in order, task after task.
        tasks = [md for md in ar.metadata if md["engine_id"] == int(engine)]
        order = sorted(range(8), key=lambda t: ar.metadata[t]["started"])
        expected = [f"t{t} {j}" for t in order if ar.metadata[t]["engine_id"] == int(engine) for j in range(200)]
        assert len(tasks) * 200 == len(got)
        assert got == expected
    # Each task also kept its own.
    assert ar.stdout[3] == "".join(f"t3 {j}\n" for j in range(200))


def test_output_reaches_the_caller_while_the_task_runs(fresh_pool, capsys):
    pool = fresh_pool(1)
    ar = pool.apply_async(_printing.print_then_sleep, ("early bird", 3.0))
    seen = Captured(capsys)
    wait_until(lambda: "early bird" in seen.read().out, timeout=10)
    assert not ar.ready()
    assert re.search(r"^\[engine \d+\] early bird$", seen.out, re.M)
    assert ar.get(T) == "early bird"


def test_a_line_left_open_is_ended_with_its_task(fresh_pool, capsys):
    pool = fresh_pool(1)
    assert pool.map(_printing.no_newline, range(3), chunksize=1) == [0, 1, 2]
    out = Captured(capsys).read().out
    assert [line.split("] ", 1)[1] for line in out.splitlines()] == ["partial 0", "partial 1", "partial 2"]


def test_capture_prints_nothing_here(fresh_pool, capfd):
    pool = fresh_pool(1, output="capture")
    ar = pool.apply_async(_printing.say, ("hush",))
    ar.get(T)
    time.sleep(0.3)
    got = capfd.readouterr()
    assert "hush" not in got.out and "hush" not in got.err
    assert ar.stdout == "out hush\n"


def test_inherit_writes_to_the_callers_terminal_and_keeps_nothing(fresh_pool, capfd):
    pool = fresh_pool(1, output="inherit")
    ar = pool.apply_async(_printing.say, ("plain",))
    ar.get(T)
    seen = {"out": "", "err": ""}

    def arrived():
        got = capfd.readouterr()
        seen["out"] += got.out
        seen["err"] += got.err
        return "out plain" in seen["out"] and "err plain" in seen["err"]

    wait_until(arrived, timeout=10)
    assert "[engine" not in seen["out"]
    assert ar.stdout == "" and ar.stderr == ""


def test_log_records_at_the_pools_level_are_the_tasks_stderr(fresh_pool):
    pool = fresh_pool(1, output="capture")
    ar = pool.apply_async(_printing.log_at_levels, (1,))
    ar.get(T)
    assert "warning 1" in ar.stderr and "info 1" not in ar.stderr
    verbose = fresh_pool(1, output="capture", log_level="INFO")
    ar = verbose.apply_async(_printing.log_at_levels, (2,))
    ar.get(T)
    assert "info 2" in ar.stderr and "warning 2" in ar.stderr


def test_output_beyond_the_limit_is_dropped_saying_so(fresh_pool):
    pool = fresh_pool(1, output="capture", output_limit=1000)
    ar = pool.apply_async(_printing.shout, (50_000,))
    assert ar.get(T) == 50_000
    assert len(ar.stdout) == 1000
    assert "wrote more than 1000 bytes" in ar.stderr
    # The next task has a limit of its own.
    ar = pool.apply_async(_printing.shout, (10,))
    ar.get(T)
    assert ar.stdout == "x" * 10 + "\n"


def test_output_of_a_task_that_kills_its_engine_is_not_lost(fresh_pool, capsys):
    pool = fresh_pool(2)
    ar = pool.apply_async(_printing.print_then_die, ("last words",))
    with pytest.raises(zpool.EngineError) as info:
        ar.get(T)
    assert ar.stdout == "last words\n"
    assert ar.stderr == "last words on stderr\n"
    assert "last words on stderr" in str(info.value)  # the engine's last lines on stderr, quoted
    # Blocking (pushed straight to the engine) as well.
    with pytest.raises(zpool.EngineError):
        pool.apply(_printing.print_then_die, ("again",))
    seen = Captured(capsys).read()
    assert re.search(r"^\[engine \d+\] again$", seen.out, re.M)
    assert pool.apply(abs, (-3,)) == 3


def test_what_code_writes_below_python_is_the_engines(fresh_pool, capsys):
    pool = fresh_pool(1)
    ar = pool.apply_async(_printing.below_python, ("from C",))
    ar.get(T)
    seen = Captured(capsys)
    wait_until(lambda: "from C" in seen.read().out, timeout=10)
    assert re.search(r"^\[engine \d+\] from C$", seen.out, re.M)
    assert ar.stdout == ""  # written to the descriptor, not through sys.stdout: no task's


def test_display_outputs(fresh_pool, capsys):
    pool = fresh_pool(2, output="capture")
    ar = pool.map_async(_printing.say, range(4), chunksize=1)
    ar.get(T)
    capsys.readouterr()
    ar.display_outputs()
    got = capsys.readouterr()
    assert re.findall(r"^\[stdout:\d+\] out (\d)$", got.out, re.M) == ["0", "1", "2", "3"]
    assert re.findall(r"^\[stderr:\d+\] err (\d)$", got.err, re.M) == ["0", "1", "2", "3"]
    ar.display_outputs("order")
    ar.display_outputs("engine")
    with pytest.raises(ValueError, match="groupby"):
        ar.display_outputs("size")


def test_bad_output_arguments_are_refused():
    with pytest.raises(ValueError, match="output must be one of"):
        zpool.Pool(1, output="print")
    with pytest.raises(ValueError, match="output_limit"):
        zpool.Pool(1, output_limit=-1)
