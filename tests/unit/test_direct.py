"""The direct interface without a cluster: partitioning, the scheduler's direct path,
the engine-side namespace functions, sync_imports' bookkeeping and DirectResult."""

from __future__ import annotations

import math
import os.path
import sys
import traceback
import types

import numpy as np
import pytest

from zpool import _engine_context, _namespace
from zpool._partition import join_parts, split_evenly
from zpool.asyncresult import DirectResult, JoinedResult
from zpool.controller.scheduler import DEPARTED_MAX, Scheduler, Task
from zpool.error import CompositeError
from zpool.view import _SyncImports

# -- split_evenly / join_parts -------------------------------------------------------------


def lengths(parts) -> list[int]:
    return [len(p) for p in parts]


@pytest.mark.parametrize(
    "n, parts, expected",
    [
        (10, 3, [4, 3, 3]),
        (9, 3, [3, 3, 3]),
        (11, 4, [3, 3, 3, 2]),
        (2, 5, [1, 1, 0, 0, 0]),
        (0, 3, [0, 0, 0]),
        (1, 1, [1]),
        (7, 1, [7]),
    ],
)
def test_split_lengths_differ_by_at_most_one_longer_first(n, parts, expected):
    pieces = split_evenly(list(range(n)), parts)
    assert lengths(pieces) == expected
    assert join_parts(pieces) == list(range(n))


@pytest.mark.parametrize("seq", [[3, "a", None, 4.5, (1, 2)], (1, 2, 3, 4, 5), range(3, 20, 2), range(0)])
@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_split_of_lists_tuples_ranges_gives_lists_and_joins_back(seq, parts):
    pieces = split_evenly(seq, parts)
    assert len(pieces) == parts
    assert all(type(p) is list for p in pieces)
    assert join_parts(pieces) == list(seq)


def test_split_pieces_are_contiguous_in_order():
    assert split_evenly(list("abcdefg"), 3) == [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    assert split_evenly(range(5), 2) == [[0, 1, 2], [3, 4]]


def test_join_of_tuple_parts_and_flattened_elements():
    # A tuple part contributes its elements; any other value (scatter(flatten=True)) counts as one.
    assert join_parts([(1, 2), [3], 4, "ab"]) == [1, 2, 3, 4, "ab"]
    assert join_parts([]) == []


ARRAYS = {
    "float64": np.linspace(0.0, 1.0, 11),
    "int8": np.arange(-5, 6, dtype=np.int8),
    "complex": np.arange(7) * (1 + 2j),
    "bool": np.array([True, False, True, True, False]),
    "structured": np.array(
        [(1, 2.5, b"a"), (2, 3.5, b"b"), (3, 4.5, b"c"), (4, 5.5, b"d"), (5, 6.5, b"e")],
        dtype=[("i", "<i4"), ("f", "<f8"), ("s", "S1")],
    ),
    "2-D": np.arange(35, dtype=np.float32).reshape(7, 5),
    "3-D": np.arange(60, dtype=np.uint16).reshape(5, 3, 4),
    "strided": np.arange(40)[::3],
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 9])
def test_split_arrays_into_views_and_join_back(name, parts):
    arr = ARRAYS[name]
    pieces = split_evenly(arr, parts)
    assert len(pieces) == parts
    size, extra = divmod(len(arr), parts)
    assert lengths(pieces) == [size + (1 if i < extra else 0) for i in range(parts)]
    for piece in pieces:
        assert isinstance(piece, np.ndarray)
        assert piece.dtype == arr.dtype
        assert piece.shape[1:] == arr.shape[1:]
        if len(piece):
            assert np.shares_memory(piece, arr), "a piece must be a view of the original, not a copy"
            assert piece.base is not None
    joined = join_parts(pieces)
    assert isinstance(joined, np.ndarray)
    assert joined.dtype == arr.dtype
    assert joined.shape == arr.shape
    assert np.array_equal(joined, arr)


def test_split_empty_array():
    arr = np.empty((0, 3), dtype=np.int16)
    pieces = split_evenly(arr, 4)
    assert [p.shape for p in pieces] == [(0, 3)] * 4
    joined = join_parts(pieces)
    assert isinstance(joined, np.ndarray)
    assert joined.shape == (0, 3) and joined.dtype == np.int16


def test_join_mixing_arrays_and_numpy_scalars_gives_an_array():
    # What gather sees after scatter(flatten=True) of a 1-D array: pieces and lone numpy scalars.
    arr = np.arange(3.0)
    joined = join_parts([arr[:2], arr[2]])
    assert isinstance(joined, np.ndarray) and joined.dtype == arr.dtype
    np.testing.assert_array_equal(joined, arr)
    only_scalars = join_parts([arr[0], arr[1], arr[2]])
    assert isinstance(only_scalars, np.ndarray)
    np.testing.assert_array_equal(only_scalars, arr)
    # Zero-dimensional arrays count as one element each, too.
    np.testing.assert_array_equal(join_parts([np.array(1), np.array(2)]), np.array([1, 2]))
    # Anything else mixed in: a list.
    assert join_parts([arr[:2], "x"]) == [0.0, 1.0, "x"]


# -- the scheduler's direct path ----------------------------------------------------------


def make_scheduler(n_engines: int, **kwargs) -> Scheduler:
    s = Scheduler(**kwargs)
    for i in range(n_engines):
        s.add_engine(i, b"engine-%d" % i)
    return s


def direct(task_id: str, engine_id: int, **extra) -> Task:
    return Task(task_id, b"client", [b"payload"], {"targets": [engine_id], "direct": True, **extra})


def plain(n: int, prefix: str = "t") -> list[Task]:
    return [Task(f"{prefix}{i}", b"client", [b"payload"]) for i in range(n)]


def ids(batches) -> dict[int, list[str]]:
    return {e.engine_id: [t.task_id for t in batch] for e, batch in batches.items()}


def failures(s: Scheduler) -> list[tuple[str, str, str, int | None]]:
    return [(t.task_id, ename, evalue, engine_id) for t, ename, evalue, engine_id in s.take_failures()]


def test_direct_flag_is_read_from_the_flags():
    assert direct("d", 0).direct is True
    assert Task("t", b"client", [], {"targets": [0]}).direct is False
    assert Task("t", b"client", []).direct is False


def test_direct_tasks_go_to_their_engine_beyond_hwm_in_arrival_order():
    s = make_scheduler(2, hwm=1)
    s.submit(plain(4))
    assert ids(s.assign()) == {0: ["t0"], 1: ["t1"]}  # both engines full
    s.submit([direct("d0", 1), direct("d1", 1), direct("d2", 0), direct("d3", 1)])
    assert ids(s.assign()) == {1: ["d0", "d1", "d3"], 0: ["d2"]}
    engine0, engine1 = s.by_id[0], s.by_id[1]
    assert engine1.load == 4 and engine0.load == 2  # over the hwm of 1
    assert s.assign() == {}  # the plain tasks still wait for room
    assert len(s.queue) == 2
    for task_id in ("d0", "d1", "d3"):
        assert engine1.outstanding[task_id].engine is engine1


def test_direct_tasks_are_not_load_balanced():
    # Engine 1 is idle and engine 0 busy: direct tasks for 0 still go to 0.
    s = make_scheduler(2, hwm=0)
    s.submit(plain(5))
    s.assign()
    s.submit([direct(f"d{i}", 0) for i in range(5)])
    assert ids(s.assign()) == {0: [f"d{i}" for i in range(5)]}


def test_direct_tasks_ignore_and_keep_the_budget():
    s = Scheduler(hwm=1)
    spent = s.add_engine(0, b"engine-0", budget=0)
    fresh = s.add_engine(1, b"engine-1", budget=2)
    s.submit([direct("a", 0), direct("b", 1), direct("c", 1), direct("d", 1)])
    assert ids(s.assign()) == {0: ["a"], 1: ["b", "c", "d"]}
    assert spent.budget == 0
    assert fresh.budget == 2  # maxtasksperchild counts only load-balanced tasks
    # The budget still applies to ordinary tasks (and was not used up by the direct ones).
    for task_id in ("a",):
        s.finish(spent, task_id, ok=True, run_s=0.1)
    for task_id in ("b", "c", "d"):
        s.finish(fresh, task_id, ok=True, run_s=0.1)
    s.submit(plain(3))
    assert ids(s.assign()) == {1: ["t0"]}
    s.finish(fresh, "t0", ok=True, run_s=0.1)
    assert ids(s.assign()) == {1: ["t1"]}
    assert fresh.budget == 0
    s.finish(fresh, "t1", ok=True, run_s=0.1)
    assert s.assign() == {}
    assert [t.task_id for t in s.queue] == ["t2"]


def test_direct_tasks_do_not_count_as_use_or_run_time():
    s = make_scheduler(2, hwm=None)
    engine0 = s.by_id[0]
    s.submit([direct("d0", 0)])
    s.assign()
    assert engine0.last_used == -1
    s.finish(engine0, "d0", ok=True, run_s=1e-6)
    assert s.limit() == 2  # the adaptive hwm learns from load-balanced tasks only (2 until it has)
    assert engine0.completed == 1
    assert s.done["d0"] == 0


def test_direct_task_failure_is_recorded_once_and_never_retried():
    s = make_scheduler(1, hwm=0)
    engine0 = s.by_id[0]
    s.submit([direct("d0", 0)])
    s.assign()
    task = s.finish(engine0, "d0", ok=False, run_s=0.1)
    assert task.final is True
    assert s.done["d0"] == -2
    assert s.assign() == {}
    assert failures(s) == []


def test_direct_task_for_unknown_engine_fails_at_once():
    s = make_scheduler(2)
    s.submit([direct("d0", 7)])
    [(task_id, ename, evalue, engine_id)] = failures(s)
    assert (task_id, ename, engine_id) == ("d0", "EngineError", 7)
    assert "there is no engine 7" in evalue
    assert "engines up now: 0, 1" in evalue
    assert "pool.engines" in evalue
    assert "d0" not in s.live
    assert s.assign() == {}


def test_direct_task_for_departed_engine_says_how_it_left():
    s = make_scheduler(3)
    s.remove_engine(b"engine-1", "died from SIGKILL(-9)")
    s.submit([direct("d0", 1)])
    [(task_id, ename, evalue, engine_id)] = failures(s)
    assert (task_id, ename, engine_id) == ("d0", "EngineError", 1)
    assert evalue.startswith("engine 1 died from SIGKILL(-9): task d0 for it cannot run")
    assert "engines up now: 0, 2" in evalue
    # The other engines still take theirs.
    s.submit([direct("d1", 2)])
    assert ids(s.assign()) == {2: ["d1"]}
    assert failures(s) == []


def test_direct_task_for_engine_lost_while_starting():
    s = make_scheduler(1)
    s.engine_registered(4)
    s.submit([direct("early", 4)])
    [(_, ename, evalue, _)] = failures(s)
    assert ename == "EngineError"
    assert "engine 4 is still starting" in evalue
    s.engine_lost(4, "failed in its initializer")
    s.submit([direct("late", 4)])
    [(_, ename, evalue, _)] = failures(s)
    assert ename == "EngineError"
    assert "engine 4 failed in its initializer" in evalue


def test_direct_task_for_long_forgotten_engine_still_fails():
    s = make_scheduler(1)
    for i in range(1, DEPARTED_MAX + 3):
        s.add_engine(i, b"e%d" % i)
        s.remove_engine(b"e%d" % i, f"exited with {i}")
    assert len(s.departed) == DEPARTED_MAX
    s.submit([direct("old", 1), direct("recent", DEPARTED_MAX + 2)])
    got = {task_id: (ename, evalue) for task_id, ename, evalue, _ in failures(s)}
    assert got["old"][0] == "EngineError"
    assert "engine 1 is gone" in got["old"][1]
    assert got["recent"][0] == "EngineError"
    assert f"engine {DEPARTED_MAX + 2} exited with {DEPARTED_MAX + 2}" in got["recent"][1]


def test_queued_direct_tasks_fail_when_their_engine_is_removed():
    s = make_scheduler(2, hwm=0)
    s.submit([direct("sent", 1)])
    s.assign()
    s.submit([direct("q0", 1), direct("q1", 1), direct("other", 0)])  # not assigned yet
    stranded = s.remove_engine(b"engine-1", "died from SIGTERM(-15)")
    # What the engine held is for the hub to answer; what it never got fails here.
    assert [t.task_id for t in stranded] == ["sent"]
    got = failures(s)
    assert [(task_id, ename, engine_id) for task_id, ename, _, engine_id in got] == [
        ("q0", "EngineError", 1),
        ("q1", "EngineError", 1),
    ]
    for _, _, evalue, _ in got:
        assert "engine 1 died from SIGTERM(-15)" in evalue
    assert s.done["q0"] == s.done["q1"] == -3
    assert ids(s.assign()) == {0: ["other"]}


def test_stranded_direct_task_is_not_retried_elsewhere():
    s = make_scheduler(2, hwm=0)
    s.submit([direct("d", 0)])
    s.assign()
    assert [t.task_id for t in s.remove_engine(b"engine-0", "died")] == ["d"]
    assert s.assign() == {}
    assert s.done["d"] == -2


def test_aborted_direct_task_is_skipped():
    s = make_scheduler(1)
    s.submit([direct("d0", 0), direct("d1", 0)])
    assert s.abort(["d0"]) == (1, {})
    [(task_id, ename, _, _)] = failures(s)
    assert (task_id, ename) == ("d0", "TaskAborted")
    assert ids(s.assign()) == {0: ["d1"]}


@pytest.mark.parametrize(
    "flags",
    [
        {"targets": [0, 1], "direct": True},
        {"targets": [], "direct": True},
        {"direct": True},
        {"targets": [0], "direct": True, "after": {"ids": ["t0"]}},
        {"targets": [0], "direct": True, "follow": {"ids": ["t0"]}},
        {"targets": [0], "direct": True, "retries": 2},
        {"targets": [0], "direct": True, "timeout": 5},
    ],
)
def test_direct_flag_with_other_flags_is_invalid(flags):
    s = make_scheduler(2, hwm=0)
    s.submit(plain(1))
    s.assign()
    s.finish(s.by_id[0], "t0", ok=True, run_s=0.1)
    s.submit([Task("bad", b"client", [b"payload"], flags)])
    [(task_id, ename, evalue, _)] = failures(s)
    assert (task_id, ename) == ("bad", "InvalidDependency")
    assert "needs one target and no other flags" in evalue
    assert "bad" not in s.live and "bad" not in s.waiting
    assert s.assign() == {}


def test_direct_task_id_reuse_is_invalid():
    s = make_scheduler(1)
    s.submit([direct("d", 0)])
    s.submit([direct("d", 0)])
    [(task_id, ename, evalue, _)] = failures(s)
    assert (task_id, ename) == ("d", "InvalidDependency")
    assert "already in use" in evalue
    assert ids(s.assign()) == {0: ["d"]}


def test_direct_tasks_are_not_counted_as_queued_work():
    s = make_scheduler(1, hwm=1)
    s.submit([direct("d", 0)])
    assert not s.queue and s.waiting == {} and s.queued() == 0
    assert ids(s.assign()) == {0: ["d"]}


# -- engine-side namespace functions ------------------------------------------------------


@pytest.fixture
def namespace():
    ns = {"__name__": "__main__", "__doc__": None, "__builtins__": __builtins__}
    _engine_context.set_main_namespace(ns)
    try:
        yield ns
    finally:
        _engine_context.set_main_namespace(None)


def test_namespace_functions_refuse_to_run_outside_an_engine():
    _engine_context.set_main_namespace(None)
    with pytest.raises(RuntimeError, match="run on engines only"):
        _namespace.push({"a": 1})
    with pytest.raises(RuntimeError):
        _namespace.pull("a")


def test_executed_sources_kept_for_tracebacks_are_bounded(namespace):
    import linecache

    names = []
    for i in range(_namespace.LINECACHE_MAX + 50):
        _namespace.execute(f"x = {i}")
        names.append(next(reversed(_namespace._SOURCES)))
    assert namespace["x"] == _namespace.LINECACHE_MAX + 49
    assert len(_namespace._SOURCES) == _namespace.LINECACHE_MAX
    assert names[0] not in linecache.cache  # the oldest were dropped
    assert names[-1] in linecache.cache


def test_sync_imports_blocks_in_two_threads_record_their_own_imports():
    import threading

    from zpool.view import _SyncImports

    views = [_FakeView(), _FakeView()]
    inside = threading.Barrier(2)

    def block(view, which):
        with _SyncImports(view, quiet=True):
            inside.wait(timeout=10)  # both blocks open at once, in one module's globals
            if which == "heapq":
                import heapq  # noqa: F401
            else:
                import bisect  # noqa: F401
            inside.wait(timeout=10)

    threads = [threading.Thread(target=block, args=(v, m)) for v, m in zip(views, ("heapq", "bisect"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [synced(v)[0] for v in views] == [["heapq"], ["bisect"]]


def test_push_and_pull(namespace):
    _namespace.push({"a": 1, "b": [2, 3]})
    assert namespace["a"] == 1
    assert _namespace.pull("a") == 1
    assert _namespace.pull(["b", "a"]) == [[2, 3], 1]
    _namespace.push({"a": "again"})
    assert _namespace.pull("a") == "again"


def test_pull_of_a_missing_name_names_it(namespace):
    _namespace.push({"present": 1})
    with pytest.raises(NameError, match="'missing'") as info:
        _namespace.pull("missing")
    assert "is not defined in the namespace of" in str(info.value)
    with pytest.raises(NameError, match="'nope'"):
        _namespace.pull(["present", "nope", "other"])


def test_get_gives_the_default(namespace):
    _namespace.push({"a": 0})
    assert _namespace.get("a", "dflt") == 0
    assert _namespace.get("zz") is None
    assert _namespace.get("zz", 42) == 42
    assert _namespace.get(["a", "zz"], -1) == [0, -1]


def test_clear_keeps_the_module_names(namespace):
    _namespace.push({"a": 1, "_private": 2})
    _namespace.execute("def f():\n    return 3\nimport json\n")
    assert {"a", "_private", "f", "json"} <= set(namespace)
    _namespace.clear()
    assert set(namespace) == {"__name__", "__doc__", "__builtins__"}
    assert namespace["__name__"] == "__main__"
    assert _namespace.get("a", "gone") == "gone"
    _namespace.execute("x = __name__")  # code still runs, builtins and all
    assert _namespace.pull("x") == "__main__"


def test_execute_runs_in_the_namespace(namespace):
    _namespace.push({"a": 2})
    _namespace.execute("b = a * 21\nimport math\nc = math.floor(2.5)")
    assert _namespace.pull(["b", "c"]) == [42, 2]


def test_execute_error_traceback_shows_the_failing_line(namespace):
    code = "x = 1\ny = x + undefined_thing_123\nz = 3\n"
    with pytest.raises(NameError):
        try:
            _namespace.execute(code)
        except NameError:
            text = traceback.format_exc()
            raise
    assert "y = x + undefined_thing_123" in text
    assert "line 2" in text
    assert _namespace.pull("x") == 1  # ran up to the failing line
    assert _namespace.get("z", "unset") == "unset"


def test_execute_with_a_filename_shows_it_and_its_line(namespace):
    path = "/nonexistent/dir/script_for_run.py"  # run() reads the file on the caller's side
    with pytest.raises(ZeroDivisionError):
        try:
            _namespace.execute("a = 1\nb = a / 0\n", path)
        except ZeroDivisionError:
            text = traceback.format_exc()
            raise
    assert f'File "{path}", line 2' in text
    assert "b = a / 0" in text


def test_execute_of_different_code_keeps_both_sources(namespace):
    for code in ("p = 1\nraise ValueError('first')\n", "q = 2\nraise KeyError('second')\n"):
        try:
            _namespace.execute(code)
        except Exception:
            text = traceback.format_exc()
        else:
            pytest.fail("execute should have raised")
        assert code.splitlines()[1] in text


def test_sync_imports_binds_modules_and_attributes(namespace):
    _namespace.sync_imports(
        ["json", "os.path", "math"],
        [("json", "json", None), ("osp", os.path.__name__, None), ("PI", "math", "pi"), ("os", "os", None)],
    )
    import json

    assert namespace["json"] is json
    assert namespace["osp"] is os.path
    assert namespace["PI"] == math.pi
    assert namespace["os"] is os
    _namespace.execute("r = osp.join('a', 'b'), json.dumps(PI)")
    assert _namespace.pull("r") == (os.path.join("a", "b"), json.dumps(math.pi))


def test_sync_imports_of_a_missing_module_raises(namespace):
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):
        _namespace.sync_imports(["no_such_module_xyz"], [("m", "no_such_module_xyz", None)])
    assert "m" not in namespace


# -- sync_imports: what the block's imports become ----------------------------------------


class _FakeView:
    """Stands for an EngineView: records what sync_imports would run on the engines."""

    ids = [0, 1]

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def _view(self):
        return self

    def _run(self, func, args, label, block, combine=None):
        self.calls.append((func, args, label, block))


def synced(view: _FakeView) -> tuple[list[str], list[tuple[str, str, str | None]]]:
    [(func, (modules, bindings), label, block)] = view.calls
    assert func is _namespace.sync_imports
    assert label == "sync_imports" and block is True
    return modules, bindings


def test_sync_imports_records_the_blocks_imports_and_restores_import():
    import builtins

    original = builtins.__import__
    view = _FakeView()
    with _SyncImports(view, quiet=True):
        assert builtins.__import__ is not original
        import json
        import os.path as osp
        from math import pi as PI
    assert builtins.__import__ is original
    modules, bindings = synced(view)
    assert modules == ["json", "os.path", "math"]
    assert ("json", "json", None) in bindings
    # Read from the block's source: os.path by the name the statement used.
    assert ("osp", "os.path", None) in bindings
    assert ("PI", "math", "pi") in bindings
    assert json and osp and PI  # bound here too


def test_sync_imports_ignores_imports_made_by_other_modules():
    import importlib
    import sys

    sys.modules.pop("netrc", None)  # imported afresh in the block, so its own imports run
    view = _FakeView()
    with _SyncImports(view, quiet=True):
        importlib.import_module("colorsys")  # not an import statement of this frame
        import netrc  # its own imports (os, stat) are made from its globals, not this frame's
    modules, bindings = synced(view)
    assert modules == ["netrc"]
    assert bindings == [("netrc", "netrc", None)]
    assert netrc.netrc


def test_sync_imports_without_imports_runs_nothing():
    view = _FakeView()
    with _SyncImports(view, quiet=True):
        x = 1
    assert view.calls == []
    assert x == 1


def test_sync_imports_error_in_the_block_runs_nothing_and_restores_import():
    import builtins

    original = builtins.__import__
    view = _FakeView()
    with pytest.raises(ZeroDivisionError), _SyncImports(view, quiet=True):
        import json  # noqa: F401

        1 / 0
    assert builtins.__import__ is original
    assert view.calls == []


def test_sync_imports_not_quiet_prints_what_it_imports(capsys):
    view = _FakeView()
    with _SyncImports(view, quiet=False):
        import json  # noqa: F401
    assert "json" in capsys.readouterr().out
    assert len(view.calls) == 1


def resolve(records, names, before=None):
    sync = _SyncImports(_FakeView(), quiet=True)
    sync._records = list(records)
    sync._before = {k: id(v) for k, v in (before or {}).items()}
    return sync._resolve(names)


def test_resolve_import_binds_top_package_and_alias_binds_submodule():
    import xml.etree.ElementTree

    # `import xml.etree.ElementTree` binds `xml`; `... as ET` binds the submodule.
    modules, bindings = resolve(
        [("xml.etree.ElementTree", ())],
        {"xml": xml, "ET": xml.etree.ElementTree, "unrelated": 5},
    )
    assert modules == ["xml.etree.ElementTree"]
    assert sorted(bindings) == [("ET", "xml.etree.ElementTree", None), ("xml", "xml", None)]


def test_resolve_from_import_binds_attributes_and_submodules():
    modules, bindings = resolve(
        [("math", ("pi", "floor")), ("os", ("path",))],
        {"pi": math.pi, "floor": math.floor, "path": os.path, "other": 3},
    )
    assert modules == ["math", "os"]
    assert sorted(bindings) == [("floor", "math", "floor"), ("path", os.path.__name__, None), ("pi", "math", "pi")]


def test_resolve_alias_of_a_from_import():
    _, bindings = resolve([("math", ("pi",))], {"PI": math.pi})
    assert bindings == [("PI", "math", "pi")]


def test_resolve_does_not_bind_names_that_merely_hold_a_shared_constant():
    # Without the block's source, an unchanged name holding the imported object cannot be told
    # from an alias (see the next test); for constants CPython shares between unrelated names
    # (small ints, None, interned str) it proves nothing, so such a name is left alone.
    fake = types.ModuleType("fake_constants_mod")
    fake.ANSWER = 42
    sys.modules["fake_constants_mod"] = fake
    try:
        _, bindings = resolve(
            [("fake_constants_mod", ("ANSWER",))], {"ANSWER": 42, "my_count": 42}, before={"my_count": 42}
        )
    finally:
        del sys.modules["fake_constants_mod"]
    assert bindings == [("ANSWER", "fake_constants_mod", "ANSWER")]


def test_resolve_alias_rebound_to_the_same_attribute_is_still_synced():
    # Running `from math import pi as PI` in the block when PI already held math.pi
    # (a notebook cell run twice, the second time with a new pool): PI is bound here
    # after the block, so the engines must get it too.
    _, bindings = resolve([("math", ("pi",))], {"PI": math.pi}, before={"PI": math.pi})
    assert bindings == [("PI", "math", "pi")]


def test_resolve_star_import():
    _, bindings = resolve([("math", ("*",))], {"sqrt": math.sqrt, "e": math.e, "mine": 1})
    assert sorted(bindings) == [("e", "math", "e"), ("sqrt", "math", "sqrt")]


def test_resolve_unimported_module_is_skipped():
    modules, bindings = resolve([("no_such_module_xyz", ("a",))], {"a": 1})
    assert modules == ["no_such_module_xyz"]
    assert bindings == []


# -- DirectResult and JoinedResult, fed by hand -------------------------------------------

MD = (0, "ok", None, None, None)


def test_direct_result_one_value_per_engine_in_engine_order():
    ar = DirectResult(["a", "b", "c"], "pull", [4, 2, 7])
    ar._task_done(2, True, "seven", MD)
    ar._task_done(0, True, "four", MD)
    assert not ar.ready()
    ar._task_done(1, True, "two", MD)
    assert ar.get(timeout=0) == ["four", "two", "seven"]
    assert ar.engine_ids == [4, 2, 7]


def test_direct_result_of_one_engine_is_the_value():
    ar = DirectResult(["a"], "pull", [3], single=True)
    ar._task_done(0, True, [1, 2], MD)
    assert ar.get(timeout=0) == [1, 2]


def test_direct_result_one_engine_view_of_a_multi_task_label_is_still_a_list():
    ar = DirectResult(["a"], "pull", [3], single=False)
    ar._task_done(0, True, 5, MD)
    assert ar.get(timeout=0) == [5]


def test_direct_result_waits_for_every_engine_then_raises_composite_error():
    ar = DirectResult(["a", "b", "c"], "execute", [0, 1, 2])
    boom = ZeroDivisionError("division by zero")
    missing = NameError("name 'q' is not defined")
    ar._task_done(1, False, boom, MD)
    assert not ar.ready()  # not failing fast: every engine is reported together
    ar._task_done(0, True, None, MD)
    ar._task_done(2, False, missing, MD)
    with pytest.raises(CompositeError) as info:
        ar.get(timeout=0)
    err = info.value
    assert err.errors == {1: boom, 2: missing}
    assert err.results == [None, boom, missing]
    assert "execute() failed on 2 of 3 engines" in str(err)
    assert "engine 1: ZeroDivisionError: division by zero" in str(err)
    assert "engine 2: NameError: name 'q' is not defined" in str(err)
    assert err.__cause__ is boom


def test_direct_result_one_engine_raises_its_own_exception():
    ar = DirectResult(["a"], "pull", [5], single=True)
    exc = NameError("name 'x' is not defined")
    ar._task_done(0, False, exc, MD)
    with pytest.raises(NameError) as info:
        ar.get(timeout=0)
    assert info.value is exc
    if hasattr(exc, "__notes__"):
        assert any("engine 5" in note for note in exc.__notes__)


def test_direct_result_combine_and_unordered():
    ar = DirectResult(["a", "b"], "gather", [0, 1], combine=join_parts)
    ar._task_done(1, True, [3, 4], MD)
    ar._task_done(0, True, [1, 2], MD)
    assert ar.get(timeout=0) == [1, 2, 3, 4]
    un = DirectResult(["a", "b"], "f", [0, 1], combine=join_parts, ordered=False)
    un._task_done(1, True, [3, 4], MD)
    un._task_done(0, True, [1, 2], MD)
    assert un.get(timeout=0) == [3, 4, 1, 2]


def test_direct_result_of_no_engines_is_ready_at_once():
    assert DirectResult([], "push", []).get(timeout=0) == []
    assert DirectResult([], "gather", [], combine=join_parts).get(timeout=0) == []


def test_joined_result_orders():
    ordered = JoinedResult(["a", "b", "c"], "f", join_parts)
    unordered = JoinedResult(["a", "b", "c"], "f", join_parts, ordered=False)
    for ar in (ordered, unordered):
        for index in (2, 0, 1):
            ar._task_done(index, True, [index * 10, index * 10 + 1], MD)
    assert ordered.get(timeout=0) == [0, 1, 10, 11, 20, 21]
    assert unordered.get(timeout=0) == [20, 21, 0, 1, 10, 11]


def test_joined_result_fails_fast():
    ar = JoinedResult(["a", "b"], "f", join_parts)
    exc = ValueError("bad chunk")
    ar._task_done(1, False, exc, MD)
    assert ar.ready()
    with pytest.raises(ValueError, match="bad chunk"):
        ar.get(timeout=0)
    ar._task_done(0, True, [1], MD)  # a late reply changes nothing
    with pytest.raises(ValueError):
        ar.get(timeout=0)


def test_joined_result_of_no_chunks_is_empty():
    assert JoinedResult([], "f", join_parts).get(timeout=0) == []
