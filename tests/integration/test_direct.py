"""The direct interface against real engines (DESIGN §7): views of engines, the engines'
namespaces (push/pull/scatter/gather/execute/run/sync_imports), apply on a view, and the
@parallel and @remote decorators.

Functions that must read the engines' namespace are made "as in __main__" by exec'ing their
source in a dict whose ``__name__`` is ``"__main__"``: such functions run on the engines with
the namespace as their globals.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import textwrap
import time

import numpy as np
import pytest

import zpool
from tests import _tasks
from tests._wait import engine_gone, wait_until
from zpool.asyncresult import DirectResult, JoinedResult

T = 60


def as_main(source: str, **globals_) -> dict:
    """Run `source` as if in the caller's ``__main__``; return its namespace."""
    namespace = {"__name__": "__main__", **globals_}
    exec(textwrap.dedent(source), namespace)
    return namespace


def engine_pids(pool) -> dict[int, int]:
    return {int(k): v for k, v in pool.queue_status()["engine_pids"].items()}


def remote_text(exc: BaseException) -> str:
    """The remote traceback text carried as the exception's cause."""
    cause = exc.__cause__
    return str(getattr(cause, "tb", cause))


# -- views and engine ids -------------------------------------------------------------------


def test_engine_ids_and_views(pool):
    ids = pool.wait_for_engines(timeout=T)
    view = pool.engines
    assert view.ids == ids == sorted(engine_pids(pool))
    assert view.targets == ids
    assert len(view) == len(ids) == 2
    assert isinstance(view, zpool.EngineView)
    assert pool.engines[0].ids == [ids[0]]
    assert pool.engines[-1].ids == [ids[-1]]
    assert pool.engines[1:3].ids == ids[1:3]
    assert pool.engines[::2].ids == ids[::2]
    assert pool.engines[::-1].ids == ids[::-1]
    assert len(pool.engines[0]) == 1
    assert [v.ids for v in view] == [[i] for i in ids]
    assert repr(pool.engines[0]) == f"<EngineView engine {ids[0]}>"
    assert repr(view) == f"<EngineView engines {ids}>"
    # A slice of a slice indexes the slice.
    assert pool.engines[1:][0].ids == [ids[1]]


def test_bad_indexes(pool):
    with pytest.raises(IndexError, match="engine index 99 is out of range"):
        pool.engines[99]
    with pytest.raises(IndexError):
        pool.engines[-3]
    with pytest.raises(TypeError):
        pool[0]
    with pytest.raises(TypeError):
        pool.engines[1.0]
    with pytest.raises(TypeError):
        pool.engines[True]


def test_pids_per_engine_in_engine_order(pool):
    pids = engine_pids(pool)
    assert pool.engines.apply(os.getpid) == [pids[i] for i in pool.engines.ids]
    assert pool.engines[0].apply(os.getpid) == pids[pool.engines.ids[0]]
    assert pool.engines[-1].apply(os.getpid) == pids[pool.engines.ids[-1]]
    assert pool.engines[1:].apply(os.getpid) == [pids[pool.engines.ids[1]]]
    assert os.getpid() not in pids.values()


# -- the namespace as a dict --------------------------------------------------------------


def test_push_pull_get_on_the_whole_pool(pool):
    pool.clear()
    assert pool.push({"a": 1, "b": "two"}) is None
    assert pool.pull("a") == [1, 1]
    assert pool.pull(["a", "b"]) == [[1, "two"], [1, "two"]]
    assert pool.engines.pull("b") == ["two", "two"]
    assert pool.get("a") == [1, 1]
    assert pool.get("missing") == [None, None]
    assert pool.get(["b", "missing"], default=0) == [["two", 0], ["two", 0]]
    assert pool["a"] == [1, 1]
    pool["c"] = {"k": [1, 2]}
    assert pool["c"] == [{"k": [1, 2]}] * 2
    assert pool.update({"a": 10}) is None
    assert pool.engines["a"] == [10, 10]


def test_namespace_of_one_engine(pool):
    pool.clear()
    first, second = pool.engines[0], pool.engines[1]
    first["a"] = 5
    assert first["a"] == 5  # a single value, not a list
    assert first.pull(["a"]) == [5]
    assert second.get("a", "absent") == "absent"
    assert pool.get("a") == [5, None]
    assert first.update({"b": 6}) is None
    assert first.pull(["a", "b"]) == [5, 6]
    assert first.push({"c": 7}) is None
    assert first.get("c") == 7
    first.clear()
    assert first.get(["a", "b", "c"], "x") == ["x", "x", "x"]


def test_namespace_of_a_slice(pool):
    pool.clear()
    last = pool.engines[1:]
    assert last.push({"s": 3}) is None
    assert last.pull("s") == [3]  # a list, one per engine of the slice
    last["t"] = 4
    assert last["t"] == [4]
    assert pool.get("s") == [None, 3]
    reverse = pool.engines[::-1]
    reverse.push({"u": 1})
    assert reverse.pull("u") == [1, 1]


def test_pull_of_a_missing_name(pool):
    pool.clear()
    pool.engines[1].push({"only_here": 1})
    with pytest.raises(NameError, match="only_here") as info:
        pool.engines[0].pull("only_here")
    assert f"engine {pool.engines.ids[0]}" in str(info.value)
    with pytest.raises(zpool.CompositeError) as composite:
        pool.pull("only_here")
    err = composite.value
    first = pool.engines.ids[0]
    assert list(err.errors) == [first]
    assert isinstance(err.errors[first], NameError)
    assert err.results[1] == 1
    assert f"engine {first}: NameError" in str(err)
    assert "pull() failed on 1 of 2 engines" in str(err)


def test_clear_empties_every_namespace(pool):
    pool.push({"a": 1, "b": 2})
    pool.execute("c = a + b")
    assert pool.clear() is None
    assert pool.get(["a", "b", "c"], "gone") == [["gone"] * 3] * 2
    pool.execute("name = __name__\nimport math\nroot = math.sqrt(9)")  # builtins and __name__ survive
    assert pool.pull(["name", "root"]) == [["__main__", 3.0]] * 2


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda p: p.push({"1a": 1}), ValueError),
        (lambda p: p.push({"class": 1}), ValueError),
        (lambda p: p.push({1: 2}), TypeError),
        (lambda p: p.push([("a", 1)]), TypeError),
        (lambda p: p.pull(5), TypeError),
        (lambda p: p.pull(["ok", "not ok"]), ValueError),
        (lambda p: p.scatter("a b", [1]), ValueError),
        (lambda p: p.execute(b"x = 1"), TypeError),
    ],
)
def test_bad_names_and_arguments_raise_here(pool, call, exc):
    with pytest.raises(exc):
        call(pool)
    with pytest.raises(exc):
        call(pool.engines[0])


def test_block_false_returns_direct_results(pool):
    pool.clear()
    ar = pool.push({"a": [1]}, block=False)
    assert isinstance(ar, DirectResult)
    assert ar.get(timeout=T) is None
    pulled = pool.engines[0].pull("a", block=False)
    assert isinstance(pulled, DirectResult)
    assert pulled.get(timeout=T) == [1]
    assert pool.pull("a", block=False).get(timeout=T) == [[1], [1]]
    view = pool.engines
    view.block = False
    assert isinstance(view.pull("a"), DirectResult)
    assert view.get("a").get(timeout=T) == [[1], [1]]
    assert pool.engines.block is True  # a new view has the default


def test_functions_travel_both_ways_through_the_namespace(pool):
    pool.clear()
    pool.execute("base = 10\ndef on_engine(x):\n    return x + base\n")
    pulled = pool.engines[0].pull("on_engine")
    assert callable(pulled)
    assert pulled(1) == 11
    ns = as_main("def doubled_base():\n    return base * 2\n")
    pool.push({"from_caller": ns["doubled_base"]})
    pool.engines[1].push({"base": 50})
    pool.execute("r = from_caller()")  # runs with the engine's namespace as its globals
    assert pool.pull("r") == [20, 100]


def test_pool_apply_and_map_keep_their_stdlib_meaning(pool):
    pids = set(engine_pids(pool).values())
    assert pool.apply(os.getpid) in pids  # one value, from one engine
    assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
    assert isinstance(pool.engines.apply(os.getpid), list)  # the view's form: one per engine


def test_direct_result_metadata_and_async_errors(pool):
    ar = pool.engines.apply_async(os.getpid)
    assert ar.get(timeout=T) == [engine_pids(pool)[i] for i in pool.engines.ids]
    assert [md.engine_id for md in ar.metadata] == pool.engines.ids
    failing = pool.execute("1 / 0", block=False)
    assert isinstance(failing, DirectResult)
    assert failing.wait(timeout=T)
    assert not failing.successful()
    with pytest.raises(zpool.CompositeError):
        failing.get(timeout=T)


# -- scatter and gather ---------------------------------------------------------------------


SEQUENCES = {
    "list": list(range(11)),
    "list of objects": [{"k": i} for i in range(5)] + [None, "s", (1, 2)],
    "tuple": tuple("abcdefg"),
    "range": range(3, 30, 4),
    "one": [42],
    "empty list": [],
    "empty range": range(0),
}

ARRAYS = {
    "float64": np.linspace(-1.0, 1.0, 101),
    "int8": np.arange(-50, 50, dtype=np.int8),
    "uint64": np.arange(7, dtype=np.uint64) * (2**40),
    "complex128": np.arange(9) * (1 - 2j),
    "bool": np.arange(13) % 3 == 0,
    "structured": np.array(
        [(i, i / 2, f"n{i}".encode()) for i in range(9)], dtype=[("i", "<i4"), ("f", "<f8"), ("s", "S3")]
    ),
    "2-D": np.arange(7 * 5, dtype=np.float32).reshape(7, 5),
    "3-D": np.arange(5 * 3 * 2, dtype=np.int16).reshape(5, 3, 2),
    "fortran 2-D": np.asfortranarray(np.arange(20.0).reshape(5, 4)),
    "strided": np.arange(60)[::7],
    "large float64": np.random.default_rng(0).random(30_001),
    "one element": np.array([2.5]),
    "empty": np.array([], dtype=np.float64),
    "empty 2-D": np.empty((0, 3), dtype=np.int32),
}


def expected_lengths(n: int, parts: int) -> list[int]:
    size, extra = divmod(n, parts)
    return [size + (1 if i < extra else 0) for i in range(parts)]


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_scatter_then_gather_sequences(pool, name):
    seq = SEQUENCES[name]
    assert pool.scatter("part", seq) is None
    parts = pool.pull("part")
    assert all(type(p) is list for p in parts)
    assert [len(p) for p in parts] == expected_lengths(len(seq), 2)
    assert [x for part in parts for x in part] == list(seq)  # contiguous, in engine order
    gathered = pool.gather("part")
    assert type(gathered) is list
    assert gathered == list(seq)


@pytest.mark.parametrize("name", list(ARRAYS))
def test_scatter_then_gather_arrays(pool, name):
    arr = ARRAYS[name]
    pool.scatter("part", arr)
    parts = pool.pull("part")
    assert [len(p) for p in parts] == expected_lengths(len(arr), 2)
    for part in parts:
        assert isinstance(part, np.ndarray)
        assert part.dtype == arr.dtype and part.shape[1:] == arr.shape[1:]
    gathered = pool.gather("part")
    assert isinstance(gathered, np.ndarray)
    assert gathered.dtype == arr.dtype
    assert gathered.shape == arr.shape
    assert np.array_equal(gathered, arr)


def test_scatter_then_gather_on_one_engine_and_a_slice(pool):
    data = list(range(7))
    one = pool.engines[1]
    one.scatter("x", data)
    assert one.pull("x") == data
    assert one.gather("x") == data
    arr = np.arange(12.0).reshape(4, 3)
    pool.engines[::-1].scatter("y", arr)
    first, second = pool.pull("y")
    assert np.array_equal(second, arr[:2]) and np.array_equal(first, arr[2:])  # engine order of the view
    assert np.array_equal(pool.engines[::-1].gather("y"), arr)
    assert np.array_equal(pool.gather("y"), np.concatenate([arr[2:], arr[:2]]))


def test_scatter_flatten(pool):
    pool.scatter("f", [1, 2, 3], flatten=True)
    assert pool.pull("f") == [[1, 2], 3]  # a part of one element is that element
    assert pool.gather("f") == [1, 2, 3]
    pool.scatter("f", ("a", "b"), flatten=True)
    assert pool.pull("f") == ["a", "b"]
    assert pool.gather("f") == ["a", "b"]
    pool.scatter("f", [7], flatten=True)
    assert pool.pull("f") == [7, []]
    assert pool.gather("f") == [7]
    pool.scatter("f", [1, 2, 3, 4], flatten=False)
    assert pool.pull("f") == [[1, 2], [3, 4]]


def test_scatter_flatten_of_arrays(pool):
    arr = np.arange(2.0)
    pool.scatter("f", arr, flatten=True)
    assert pool.pull("f") == [0.0, 1.0]  # one numpy scalar per engine
    gathered = pool.gather("f")
    assert isinstance(gathered, np.ndarray) and gathered.dtype == arr.dtype
    np.testing.assert_array_equal(gathered, arr)
    with pytest.raises(ValueError, match="flatten"):
        pool.scatter("f", np.zeros((2, 3)), flatten=True)


def test_scatter_rejects_what_it_cannot_split(pool):
    for bad in ("abc", b"abc", (i for i in range(3)), np.float64(1.0), np.array(3), {1, 2}, 5):
        with pytest.raises(TypeError, match="scatter"):
            pool.scatter("x", bad)


def test_scatter_and_gather_block_false(pool):
    ar = pool.scatter("z", list(range(5)), block=False)
    assert isinstance(ar, DirectResult)
    assert ar.get(timeout=T) is None
    gathered = pool.gather("z", block=False)
    assert isinstance(gathered, DirectResult)
    assert gathered.get(timeout=T) == list(range(5))


# -- numpy arrays travel without copies ---------------------------------------------------


def test_pulled_large_array_is_a_read_only_view_of_the_received_frame(pool):
    arr = np.arange(20_000, dtype=np.float64)  # 160 kB, above the 64 KiB out-of-band threshold
    pool.engines[0].push({"big": arr})
    pulled = pool.engines[0].pull("big")
    assert isinstance(pulled, np.ndarray)
    assert np.array_equal(pulled, arr)
    assert pulled.flags.writeable is False
    assert not pulled.flags.owndata
    assert _tasks.in_received_frame(pulled)  # its bytes are the zmq frame's: no copy here


def test_pushed_large_array_arrives_without_a_copy_on_the_engine(pool):
    arr = np.arange(30_000, dtype=np.int32).reshape(300, 100)
    pool.push({"big": arr})
    check = as_main(
        """
        def received():
            from tests._tasks import in_received_frame
            return in_received_frame(big), big.flags.writeable, big.flags.owndata, int(big.sum())
        """
    )["received"]
    assert pool.engines.apply(check) == [(True, False, False, int(arr.sum()))] * 2


def test_scattered_array_pieces_arrive_without_copies(pool):
    arr = np.random.default_rng(1).random((40_000, 2))  # each half is 320 kB
    pool.scatter("piece", arr)
    check = as_main(
        """
        def received():
            from tests._tasks import in_received_frame
            return in_received_frame(piece), piece.shape
        """
    )["received"]
    assert pool.engines.apply(check) == [(True, (20_000, 2)), (True, (20_000, 2))]
    gathered = pool.gather("piece")
    assert isinstance(gathered, np.ndarray)
    assert np.array_equal(gathered, arr)


# -- execute and run ------------------------------------------------------------------------


def test_execute_on_every_engine(pool):
    pool.clear()
    pool.scatter("k", [10, 20])
    assert pool.execute("doubled = k[0] * 2") is None
    assert pool.pull("doubled") == [20, 40]
    assert pool.engines[1].execute("doubled += 1") is None
    assert pool.pull("doubled") == [20, 41]
    ar = pool.execute("tripled = doubled * 3", block=False)
    assert isinstance(ar, DirectResult)
    assert ar.get(timeout=T) is None
    assert pool.pull("tripled") == [60, 123]


def test_execute_errors_name_each_failing_engine(pool):
    ids = pool.engines.ids
    with pytest.raises(zpool.CompositeError) as info:
        pool.execute("x = 1\nx / 0\n")
    err = info.value
    assert sorted(err.errors) == ids
    for engine_id in ids:
        assert isinstance(err.errors[engine_id], ZeroDivisionError)
        assert f"engine {engine_id}: ZeroDivisionError: division by zero" in str(err)
    assert "execute() failed on 2 of 2 engines" in str(err)
    assert "x / 0" in remote_text(err.__cause__)  # the failing line, in the remote traceback
    assert isinstance(err.__cause__, ZeroDivisionError)


def test_execute_error_on_some_engines(pool):
    pool.scatter("k", [0, 1], flatten=True)
    with pytest.raises(zpool.CompositeError) as info:
        pool.execute("r = 1 / k")
    err = info.value
    first, second = pool.engines.ids
    assert list(err.errors) == [first]
    assert err.results[1] is None  # engine `second` succeeded
    assert f"engine {first}" in str(err) and f"engine {second}" not in str(err)
    assert pool.engines[1].pull("r") == 1.0


def test_execute_error_on_one_engine_is_that_error(pool):
    engine_id = pool.engines.ids[1]
    with pytest.raises(NameError, match="undefined_name_xyz") as info:
        pool.engines[1].execute("y = 1\nundefined_name_xyz + 1\n")
    assert not isinstance(info.value, zpool.CompositeError)
    text = remote_text(info.value)
    assert "undefined_name_xyz + 1" in text
    assert f"engine {engine_id}" in text
    assert pool.engines[1].pull("y") == 1  # the lines before it ran


def test_execute_syntax_error_raises_here_before_anything_is_sent(pool):
    before = {k: v["completed"] + v["failed"] for k, v in pool.queue_status()["engines"].items()}
    with pytest.raises(SyntaxError):
        pool.execute("marker_line = 1\ndef broken(:\n")
    with pytest.raises(SyntaxError):
        pool.engines[0].execute("if True\n    pass")
    after = {k: v["completed"] + v["failed"] for k, v in pool.queue_status()["engines"].items()}
    assert after == before


def test_run_a_file(pool, tmp_path):
    pool.clear()
    script = tmp_path / "engine_script.py"
    script.write_text("import math\nroot = math.sqrt(16) + offset\n", encoding="utf-8")
    pool.push({"offset": 1})
    assert pool.run(script) is None
    assert pool.pull("root") == [5.0, 5.0]
    pool.engines[0].push({"offset": 10})
    assert pool.engines[0].run(str(script)) is None
    assert pool.pull("root") == [14.0, 5.0]


def test_run_error_shows_the_file_and_line(pool, tmp_path):
    script = tmp_path / "failing_script.py"
    script.write_text("a = 1\nb = a + not_defined_anywhere\n", encoding="utf-8")
    with pytest.raises(NameError) as info:
        pool.engines[0].run(script)
    text = remote_text(info.value)
    assert f'File "{script}", line 2' in text
    assert "b = a + not_defined_anywhere" in text


def test_run_missing_or_broken_file_raises_here(pool, tmp_path):
    with pytest.raises(FileNotFoundError):
        pool.run(tmp_path / "no_such_file.py")
    with pytest.raises(FileNotFoundError):
        pool.engines[0].run(str(tmp_path / "no_such_file.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("def (:\n", encoding="utf-8")
    with pytest.raises(SyntaxError) as info:
        pool.run(broken)
    assert info.value.filename == str(broken)


# -- apply on a view ------------------------------------------------------------------------


def test_apply_reads_pushed_globals(pool):
    pool.clear()
    pool.push({"a": 1})
    ns = as_main("read_a = lambda: a\ndef add_a(x, y=0):\n    return a + x + y\n")
    assert pool.engines.apply(ns["read_a"]) == pool.engines.pull("a") == [1, 1]
    assert pool.engines[0].apply(ns["read_a"]) == pool.engines[0].pull("a") == 1
    pool.engines[1].push({"a": 100})
    assert pool.engines.apply(ns["read_a"]) == pool.pull("a") == [1, 100]
    assert pool.engines.apply(ns["add_a"], 2, y=3) == [6, 105]
    assert pool.engines[1:].apply(ns["add_a"], 0) == [100]


def test_apply_pushed_value_wins_over_the_callers_global(pool):
    pool.clear()
    ns = as_main("a = 'caller'\nread_a = lambda: a\n")
    pool.push({"a": "pushed"})
    assert pool.engines.apply(ns["read_a"]) == ["pushed", "pushed"]
    assert pool.pull("a") == ["pushed", "pushed"]


def test_apply_block_false(pool):
    pool.clear()
    pool.push({"a": [1, 2]})
    read_a = as_main("read_a = lambda: a")["read_a"]
    ar = pool.engines.apply_async(read_a)
    assert isinstance(ar, DirectResult)
    assert ar.get(timeout=T) == pool.engines.pull("a")
    assert ar.engine_ids == pool.engines.ids
    view = pool.engines[0]
    view.block = False
    single = view.apply(read_a)
    assert isinstance(single, DirectResult)
    assert single.get(timeout=T) == [1, 2]
    assert view.apply_sync(read_a) == [1, 2]


def test_apply_error_on_some_engines(pool):
    pool.scatter("k", [0, 1], flatten=True)
    ns = as_main("def inverse():\n    return 1 / k\n")
    with pytest.raises(zpool.CompositeError) as info:
        pool.engines.apply(ns["inverse"])
    first, _ = pool.engines.ids
    assert list(info.value.errors) == [first]
    assert isinstance(info.value.errors[first], ZeroDivisionError)
    assert info.value.results[1] == 1.0
    with pytest.raises(ZeroDivisionError):
        pool.engines[0].apply(ns["inverse"])


def test_apply_needs_a_callable(pool):
    with pytest.raises(TypeError):
        pool.engines.apply(5)


# -- sync_imports -----------------------------------------------------------------------------

CHECK_IMPORTS = "synced = (json.dumps([1]), osp.join('a', 'b'), PI)"
EXPECTED_IMPORTS = ("[1]", os.path.join("a", "b"), 3.141592653589793)


def test_sync_imports_from_a_main_function(pool):
    pool.clear()
    ns = as_main(
        """
        def import_them(pool):
            with pool.sync_imports():
                import json
                import os.path as osp
                from math import pi as PI
            return json.dumps([2]), osp.basename("x/y"), PI

        def use_them():
            return json.dumps([1]), osp.join("a", "b"), PI
        """
    )
    assert ns["import_them"](pool) == ("[2]", "y", 3.141592653589793)
    # The engines' own namespaces have the names (execute sends no globals along).
    pool.execute(CHECK_IMPORTS)
    assert pool.pull("synced") == [EXPECTED_IMPORTS] * 2
    assert pool.engines.apply(ns["use_them"]) == [EXPECTED_IMPORTS] * 2


def test_sync_imports_from_a_test_function(pool):
    pool.clear()
    with pool.sync_imports():
        import json
        import os.path as osp
        from math import pi as PI
    assert (json.dumps([1]), osp.join("a", "b"), PI) == EXPECTED_IMPORTS
    pool.execute(CHECK_IMPORTS)
    assert pool.pull("synced") == [EXPECTED_IMPORTS] * 2


def test_sync_imports_on_one_engine(pool):
    pool.clear()
    with pool.engines[1].sync_imports():
        import colorsys
    assert colorsys.rgb_to_hsv(1, 0, 0) == (0.0, 1.0, 1.0)
    pool.engines[1].execute("hsv = colorsys.rgb_to_hsv(1, 0, 0)")
    assert pool.engines[1].pull("hsv") == (0.0, 1.0, 1.0)
    with pytest.raises(NameError, match="colorsys"):
        pool.engines[0].execute("colorsys")


def test_sync_imports_again_after_clear(pool):
    # The same block run twice (say a notebook cell), the namespaces cleared in between.
    for _ in range(2):
        pool.clear()
        with pool.sync_imports():
            import json
            import os.path as osp
            from math import pi as PI  # noqa: F401
        pool.execute(CHECK_IMPORTS)
        assert pool.pull("synced") == [EXPECTED_IMPORTS] * 2
    assert json and osp


def test_sync_imports_of_a_missing_module_fails_here(pool):
    import builtins

    original = builtins.__import__
    pool.clear()
    with pytest.raises(ModuleNotFoundError), pool.sync_imports():
        import json  # noqa: F401

        import no_such_module_for_zpool_tests  # noqa: F401
    assert builtins.__import__ is original
    assert pool.get("json") == [None, None]  # nothing was sent


# -- @parallel --------------------------------------------------------------------------------


def squares(xs):
    """Square every element."""
    return [x * x for x in xs]


def test_parallel_of_a_whole_list_function(pool):
    par = pool.parallel()(squares)
    assert isinstance(par, zpool.ParallelFunction)
    data = list(range(37))
    assert par(data) == squares(data)
    assert par(tuple(data)) == squares(data)
    assert par(range(37)) == squares(range(37))
    assert par([5]) == [25]


def test_parallel_without_parentheses_and_chunksize(pool):
    @pool.parallel
    def lengths(xs):
        return [len(xs)]

    assert sum(lengths(list(range(40)))) == 40

    @pool.parallel(chunksize=3)
    def chunk_lengths(xs):
        return [len(xs)]

    assert chunk_lengths(list(range(10))) == [3, 3, 3, 1]


def test_parallel_with_two_sequences_and_a_broadcast_argument(pool):
    @pool.parallel()
    def weighted(xs, ys, factor, offset=0):
        return [(x + y) * factor + offset for x, y in zip(xs, ys)]

    xs, ys = list(range(20)), list(range(100, 120))
    serial = weighted.func(xs, ys, 3, offset=1)
    assert weighted(xs, ys, 3, offset=1) == serial
    assert weighted(np.array(xs), ys, 3, offset=1) == serial

    @pool.parallel(chunksize=2)
    def join_with(words, sep):
        return [sep.join(words)]

    # A string is not split: it goes whole to every chunk.
    assert join_with(list("abcdef"), "+") == ["a+b", "c+d", "e+f"]


def test_parallel_with_numpy_arrays(pool):
    @pool.parallel()
    def scaled(a, b):
        return a * 2 + b

    a = np.arange(1000, dtype=np.float64)
    b = np.arange(1000, dtype=np.float64)[::-1].copy()
    result = scaled(a, b)
    assert isinstance(result, np.ndarray)
    assert np.array_equal(result, a * 2 + b)
    m = np.arange(60).reshape(20, 3)
    row_sums = pool.parallel()(functools.partial(np.sum, axis=1))  # 2-D: split by rows
    assert np.array_equal(row_sums(m), m.sum(axis=1))


def test_parallel_unordered_and_non_blocking(pool):
    @pool.parallel(ordered=False, chunksize=2)
    def tagged(xs):
        return [x * 10 for x in xs]

    data = list(range(21))
    assert sorted(tagged(data)) == [x * 10 for x in data]

    @pool.parallel(block=False)
    def doubled(xs):
        return [2 * x for x in xs]

    ar = doubled(data)
    assert isinstance(ar, JoinedResult)
    assert ar.get(timeout=T) == [2 * x for x in data]


def test_parallel_map_is_element_wise(pool):
    @pool.parallel()
    def add(x, y=0):
        return x + y

    assert add.map(range(10)) == list(range(10))
    assert add.map([1, 2, 3], [10, 20, 30]) == [11, 22, 33]
    # zip truncation, as the builtin map
    assert add.map(range(3), range(100)) == list(map(add.func, range(3), range(100)))
    assert add.map([]) == []

    @pool.parallel(block=False, ordered=False)
    def neg(x):
        return -x

    assert sorted(neg.map(range(8)).get(timeout=T)) == sorted(-x for x in range(8))


def test_parallel_argument_errors(pool):
    par = pool.parallel()(squares)

    @pool.parallel()
    def pairs(xs, ys):
        return list(zip(xs, ys))

    with pytest.raises(ValueError, match="different lengths"):
        pairs([1, 2, 3], [1, 2])
    with pytest.raises(TypeError, match="at least one"):
        par(5)
    with pytest.raises(TypeError):
        par("not split")
    with pytest.raises(TypeError):
        par.map()
    with pytest.raises(TypeError):
        pool.parallel()(5)
    with pytest.raises(ValueError):
        pool.parallel(chunksize=0)(squares)


def test_parallel_of_an_empty_sequence(pool):
    par = pool.parallel()(squares)
    assert par([]) == squares([]) == []
    assert par(range(0)) == []


def test_parallel_on_a_view(pool):
    view_par = pool.engines.parallel(squares)
    data = list(range(9))
    assert view_par(data) == squares(data)
    assert view_par([]) == []
    assert pool.engines.parallel(abs).map(range(-4, 0)) == [4, 3, 2, 1]

    @pool.engines.parallel()
    def where(xs):
        return [(os.getpid(), len(xs))]

    pids = engine_pids(pool)
    # One chunk per engine, in engine order.
    assert where(list(range(5))) == [(pids[i], n) for i, n in zip(pool.engines.ids, [3, 2])]
    assert pool.engines[1].parallel(squares)(data) == squares(data)

    @pool.engines.parallel(block=False)
    def tripled(xs):
        return [3 * x for x in xs]

    ar = tripled(data)
    assert isinstance(ar, DirectResult)
    assert ar.get(timeout=T) == [3 * x for x in data]
    with pytest.raises(ValueError, match="different lengths"):
        pool.engines.parallel(lambda a, b: a)([1], [1, 2])
    with pytest.raises(TypeError):
        view_par(3)


def test_view_map(pool):
    assert pool.engines.map(abs, [-1, -2, -3, 4]) == [1, 2, 3, 4]
    assert pool.engines.map(pow, [2, 3, 4], [2, 2]) == list(map(pow, [2, 3, 4], [2, 2]))
    assert pool.engines[0].map(abs, range(-3, 0)) == [3, 2, 1]
    assert pool.engines.map(abs, []) == []
    ar = pool.engines.map(abs, [-5], block=False)
    assert isinstance(ar, DirectResult)
    assert ar.get(timeout=T) == [5]
    with pytest.raises(TypeError):
        pool.engines.map(abs)
    where = pool.engines.map(_tasks.getpid, range(4))
    pids = engine_pids(pool)
    assert where == [pids[i] for i in pool.engines.ids for _ in range(2)]


# -- @remote --------------------------------------------------------------------------------


def test_remote_runs_on_an_engine(pool):
    pids = set(engine_pids(pool).values())

    @pool.remote()
    def where(x):
        return os.getpid(), x

    pid, x = where(3)
    assert pid in pids and x == 3

    @pool.remote
    def plain(x, y=1):
        return x * y

    assert isinstance(plain, zpool.RemoteFunction)
    assert plain(3, y=4) == 12

    @pool.remote(block=False)
    def later():
        return os.getpid()

    ar = later()
    assert isinstance(ar, zpool.AsyncResult)
    assert ar.get(timeout=T) in pids


def test_remote_on_views(pool):
    pids = engine_pids(pool)

    @pool.engines.remote()
    def where():
        return os.getpid()

    result = where()
    assert result == [pids[i] for i in pool.engines.ids]
    assert len(set(result)) == 2

    @pool.engines[1].remote
    def there():
        return os.getpid()

    assert there() == pids[pool.engines.ids[1]]

    @pool.engines.remote(block=False)
    def later():
        return 1

    ar = later()
    assert isinstance(ar, DirectResult)
    assert ar.get(timeout=T) == [1, 1]


def test_remote_errors(pool):
    @pool.remote()
    def fails():
        raise _tasks.CustomError("remote failure")

    with pytest.raises(_tasks.CustomError, match="remote failure"):
        fails()

    @pool.engines.remote()
    def fails_everywhere():
        raise _tasks.CustomError("everywhere")

    with pytest.raises(zpool.CompositeError) as info:
        fails_everywhere()
    assert sorted(info.value.errors) == pool.engines.ids
    assert all(isinstance(e, _tasks.CustomError) for e in info.value.errors.values())


# -- decorators with closures, and functools.wraps ---------------------------------------------


def test_decorators_with_closures(pool):
    def make(factor):
        offset = factor + 1

        def helper(x):
            return x * factor

        @pool.parallel()
        def scale(xs):
            return [helper(x) + offset for x in xs]

        @pool.remote()
        def one(x):
            return helper(x) + offset

        @pool.engines.remote()
        def everywhere(x):
            return helper(x) + offset

        @pool.engines.parallel()
        def per_engine(xs):
            return [helper(x) for x in xs]

        return scale, one, everywhere, per_engine

    for factor in (3, 5):
        scale, one, everywhere, per_engine = make(factor)
        assert scale(list(range(10))) == [x * factor + factor + 1 for x in range(10)]
        assert scale.map([[1], [2]]) == [[factor + factor + 1], [2 * factor + factor + 1]]
        assert one(2) == 2 * factor + factor + 1
        assert everywhere(1) == [2 * factor + 1] * 2
        assert per_engine(list(range(5))) == [x * factor for x in range(5)]


def test_decorators_with_a_closure_from_main(pool):
    pool.clear()
    ns = as_main(
        """
        def make(pool, k):
            @pool.parallel()
            def shifted(xs):
                return [x + k + base for x in xs]

            @pool.engines.remote()
            def read():
                return k, base

            return shifted, read
        """
    )
    pool.push({"base": 100})
    shifted, read = ns["make"](pool, 7)
    assert shifted([1, 2, 3]) == [108, 109, 110]
    assert read() == [(7, 100), (7, 100)]


def annotated(xs: list, factor: int = 2, *, label: str = "x") -> list:
    """Scale a list.

    A longer docstring.
    """
    return [x * factor for x in xs]


@pytest.mark.parametrize(
    "decorate",
    [
        lambda p: p.parallel()(annotated),
        lambda p: p.parallel(annotated),
        lambda p: p.remote()(annotated),
        lambda p: p.remote(annotated),
        lambda p: p.engines.remote()(annotated),
        lambda p: p.engines.parallel()(annotated),
        lambda p: p.engines[0].remote(annotated),
    ],
)
def test_decorators_keep_name_doc_and_signature(pool, decorate):
    wrapped = decorate(pool)
    assert wrapped.__name__ == "annotated"
    assert wrapped.__qualname__ == "annotated"
    assert wrapped.__doc__ == annotated.__doc__
    assert wrapped.__module__ == annotated.__module__
    assert wrapped.__wrapped__ is annotated
    assert wrapped.func is annotated
    assert inspect.signature(wrapped) == inspect.signature(annotated)
    assert wrapped.__annotations__ == annotated.__annotations__
    assert "annotated" in repr(wrapped)


def test_decorating_a_non_callable_fails(pool):
    for decorate in (pool.remote(), pool.parallel(), pool.engines.remote(), pool.engines.parallel()):
        with pytest.raises(TypeError):
            decorate(42)


def test_decorated_functions_cannot_be_sent(pool):
    par = pool.parallel()(squares)
    rem = pool.remote()(squares)
    import pickle

    for obj in (par, rem):
        with pytest.raises(TypeError, match="send its .func"):
            pickle.dumps(obj)


def test_functools_partial_works_with_remote(pool):
    rem = pool.remote()(functools.partial(pow, 2))
    assert rem(10) == 1024


# -- views on three engines: slices, and a dead engine ----------------------------------------


def test_slices_of_three_engines(fresh_pool):
    pool = fresh_pool(3)
    ids = pool.engines.ids
    pids = engine_pids(pool)
    assert len(pool.engines) == 3
    middle = pool.engines[1:3]
    every_other = pool.engines[::2]
    last = pool.engines[-1]
    assert (middle.ids, every_other.ids, last.ids) == (ids[1:3], ids[::2], [ids[2]])
    assert middle.apply(os.getpid) == [pids[i] for i in ids[1:3]]
    assert every_other.apply(os.getpid) == [pids[ids[0]], pids[ids[2]]]
    assert last.apply(os.getpid) == pids[ids[2]]

    middle.push({"m": 1})
    every_other["e"] = 2
    last.update({"l": 3})
    assert pool.get(["m", "e", "l"]) == [[None, 2, None], [1, None, None], [1, 2, 3]]
    assert middle.pull("m") == [1, 1]
    assert every_other["e"] == [2, 2]
    assert last["l"] == 3

    every_other.scatter("part", list(range(5)))
    assert pool.get("part") == [[0, 1, 2], None, [3, 4]]
    assert every_other.gather("part") == list(range(5))
    middle.scatter("arr", np.arange(3.0))
    assert np.array_equal(middle.gather("arr"), np.arange(3.0))

    middle.execute("m_plus = m + 1")
    assert pool.get("m_plus") == [None, 2, 2]
    with pytest.raises(zpool.CompositeError) as info:
        every_other.execute("e / 0")
    assert sorted(info.value.errors) == ids[::2]

    middle.clear()
    assert pool.get("m") == [None, None, None]
    assert pool.get("e") == [2, None, None]  # only the slice was cleared (engine 2 is in both)

    pool.scatter("all", list(range(7)))
    assert pool.pull("all") == [[0, 1, 2], [3, 4], [5, 6]]
    pool.scatter("few", [1, 2])  # fewer items than engines
    assert pool.pull("few") == [[1], [2], []]
    assert pool.gather("few") == [1, 2]
    assert middle.parallel(squares)(list(range(5))) == squares(range(5))
    assert middle.map(abs, [-1, -2, -3]) == [1, 2, 3]


def test_killed_engine(fresh_pool):
    pool = fresh_pool(3)
    old = pool.engines
    ids = old.ids
    pids = old.apply(os.getpid)
    victim_id, victim_pid = ids[1], pids[1]
    busy = old[1].apply_async(time.sleep, 60)  # held by the engine when it dies
    wait_until(lambda: pool.queue_status()["engines"][str(victim_id)]["queue"] >= 1, T, "the task sent to its engine")
    os.kill(victim_pid, signal.SIGKILL)

    with pytest.raises(zpool.EngineError, match="SIGKILL"):
        busy.get(timeout=T)
    engine_gone(pool, victim_id)

    # An old view keeps its engines: the dead one fails at once, the others answer.
    with pytest.raises(zpool.CompositeError) as info:
        old.apply(os.getpid)
    err = info.value
    assert list(err.errors) == [victim_id]
    dead = err.errors[victim_id]
    assert isinstance(dead, zpool.EngineError)
    assert f"engine {victim_id} died from SIGKILL" in str(dead)
    assert f"engine {victim_id}: EngineError" in str(err)
    assert err.results[0] == pids[0] and err.results[2] == pids[2]
    with pytest.raises(zpool.EngineError, match=f"engine {victim_id}"):
        old[1].pull("anything")
    with pytest.raises(zpool.CompositeError):
        old.push({"a": 1})
    assert old.ids == ids

    # A fresh view has the replacement, not the dead engine; the pool keeps its size.
    assert len(pool.wait_for_engines(3, timeout=T)) == 3
    fresh = pool.engines
    assert victim_id not in fresh.ids
    assert len(fresh) == 3
    replacement = (set(fresh.ids) - set(ids)).pop()
    assert fresh[-1].ids == [replacement]  # views index positions, not engine ids
    new_pids = fresh.apply(os.getpid)
    assert len(set(new_pids)) == 3 and victim_pid not in new_pids
    assert old[0].apply(os.getpid) == pids[0]  # the survivors still answer on the old view
    fresh.push({"a": 2})
    assert fresh.pull("a") == [2, 2, 2]


def test_closed_pool(fresh_pool):
    pool = fresh_pool(1)
    view = pool.engines
    pool.push({"a": 1})
    pool.close()
    with pytest.raises(zpool.PoolClosedError):
        pool.push({"a": 1})
    with pytest.raises(zpool.PoolClosedError):
        pool.engines
    with pytest.raises(zpool.PoolClosedError):
        view.push({"a": 1})
    with pytest.raises(zpool.PoolClosedError):
        view.apply(os.getpid)
    with pytest.raises(zpool.PoolClosedError):
        pool.scatter("x", [1])
    pool.join()


# -- the engine namespace as a real __main__ ---------------------------------------------------


def test_main_functions_use_numpy_array_methods(pool):
    # numpy's array methods import on behalf of their caller: the engine's __main__ needs
    # __builtins__ like any real module (a fresh namespace had none: KeyError).
    ns = as_main(
        """
        def mean_of(a):
            return a.mean()
        def sum_rows(a):
            return (a * a).sum(axis=1)
        """
    )
    pool.clear()
    assert pool.map(ns["mean_of"], [np.ones(3), np.arange(4.0)]) == [1.0, 1.5]
    np.testing.assert_array_equal(pool.apply(ns["sum_rows"], (np.ones((2, 2)),)), [2.0, 2.0])


def test_builtins_a_function_uses_do_not_land_in_the_namespace(pool):
    ns = as_main("def count(xs):\n    return len(xs) + abs(-1)\n")
    pool.clear()
    assert pool.engines.apply(ns["count"], [1, 2]) == [3, 3]
    assert pool.get(["len", "abs"], "absent") == [["absent", "absent"]] * len(pool.engines)


def test_pushed_and_executed_names_are_not_overwritten_by_shipped_globals(pool):
    # A function from __main__ brings the caller's globals; names the engines' code or push
    # bound since stay, even when bound to the very object the caller shipped before.
    ns = as_main(
        """
        FLAG, LIMIT = True, 1000
        def read():
            return FLAG, LIMIT
        """
    )
    pool.clear()
    view = pool.engines[0]
    assert view.apply(ns["read"]) == (True, 1000)
    view.push({"FLAG": True})  # the very object shipped for FLAG
    view.execute("LIMIT = 1000")
    ns["FLAG"], ns["LIMIT"] = False, 2000
    assert view.apply(ns["read"]) == (True, 1000)
    view.clear()  # forgets every binding: the caller's current values come again
    assert view.apply(ns["read"]) == (False, 2000)


# -- review fixes ------------------------------------------------------------------------------


def test_gather_refuses_when_an_engine_holding_a_part_died(fresh_pool):
    pool = fresh_pool(3)
    pool.scatter("x", list(range(9)))
    pids = pool.engines.apply(os.getpid)
    victim = pool.engines.ids[1]
    os.kill(pids[1], signal.SIGKILL)
    engine_gone(pool, victim)
    # Whether or not its replacement is up yet, part of x is gone: an error, never a short list.
    with pytest.raises(zpool.EngineError, match=rf"engine\(s\) \[{victim}\].*scatter 'x' again"):
        pool.gather("x")
    pool.wait_for_engines(3, timeout=T)
    pool.scatter("x", list(range(9)))
    assert pool.gather("x") == list(range(9))
    pool.push({"x": [1]})  # no longer a scattered sequence: one value per engine up
    assert pool.gather("x") == [1, 1, 1]


def test_gather_keeps_the_masks_of_masked_arrays(pool):
    m = np.ma.array([1.0, 2.0, 3.0, 4.0, 5.0], mask=[0, 1, 0, 1, 0])
    pool.scatter("m", m)
    back = pool.gather("m")
    assert isinstance(back, np.ma.MaskedArray)
    np.testing.assert_array_equal(back.mask, m.mask)
    assert back.sum() == m.sum() == 9.0


def test_a_failed_or_conditional_execute_does_not_pin_a_shipped_value(pool):
    ns = as_main("threshold = 0.5\ndef read():\n    return threshold\n")
    pool.clear()
    view = pool.engines
    assert view.apply(ns["read"]) == [0.5] * len(view)
    with pytest.raises(zpool.CompositeError):
        view.execute("threshold = undefined_name")
    view.execute("if False:\n    threshold = 1")
    view.execute("def later():\n    global threshold\n    threshold = 2")
    ns["threshold"] = 0.9
    assert view.apply(ns["read"]) == [0.9] * len(view)  # still the caller's, shipped afresh
    view.execute("later()")  # now the engines bind it: theirs from here on
    ns["threshold"] = 0.1
    assert view.apply(ns["read"]) == [2] * len(view)


def test_view_parallel_never_makes_empty_chunks(pool):
    view = pool.engines  # two engines
    assert view.parallel()(lambda xs: [max(xs)])([7]) == [7]
    assert view.parallel()(lambda xs: [max(xs)])([3, 5]) == [3, 5]


def test_parallel_of_an_empty_input_calls_the_function_once(pool):
    def shape_of_rows(a):
        return np.zeros((len(a), 3))

    empty = np.zeros((0, 3))
    for parallel in (pool.parallel(), pool.engines.parallel()):
        out = parallel(shape_of_rows)(empty)
        assert isinstance(out, np.ndarray) and out.shape == (0, 3)
        assert parallel(lambda xs: [len(xs)])([]) == [0]


def test_scatter_of_a_range_is_listed_on_the_engines(pool):
    pool.scatter("r", range(0, 20, 3))
    assert pool.pull("r") == [[0, 3, 6, 9], [12, 15, 18]]
    assert pool.gather("r") == list(range(0, 20, 3))


def test_nested_sync_imports_blocks_sync_their_own_imports(pool, tmp_path):
    # From a file, as a script's block is: its import statements are read from the source.
    source = tmp_path / "nested_blocks.py"
    source.write_text(
        textwrap.dedent(
            """
            def run(pool):
                with pool.sync_imports():
                    import json
                    with pool.engines[0].sync_imports():
                        import decimal
            """
        )
    )
    ns = {"__name__": "__main__"}
    exec(compile(source.read_text(), str(source), "exec"), ns)
    pool.clear()
    ns["run"](pool)
    pool.execute("found = [name for name in ('json', 'decimal') if name in globals()]")
    assert pool.pull("found") == [["json", "decimal"], ["json"]]


def test_run_reads_files_as_python_does(pool, tmp_path):
    bom = tmp_path / "bom.py"
    bom.write_bytes(b"\xef\xbb\xbfbom_ok = 1\n")
    latin = tmp_path / "latin.py"
    latin.write_bytes("# -*- coding: latin-1 -*-\nword = 'caf\xe9'\n".encode("latin-1"))
    pool.run(bom)
    pool.run(str(latin))
    assert pool.pull("bom_ok") == [1] * len(pool.engines)
    assert pool.pull("word") == ["caf\xe9"] * len(pool.engines)


def test_only_lists_tuples_ranges_and_arrays_are_split(pool):
    import collections

    with pytest.raises(TypeError, match="list, tuple, range or numpy array"):
        pool.scatter("d", collections.deque([1, 2, 3]))
    with pytest.raises(TypeError, match="at least one list"):
        pool.parallel()(len)(collections.deque([1, 2]))


def test_errors_name_what_cannot_be_sent(pool):
    import threading

    lock = threading.Lock()
    with pytest.raises(zpool.SerializationError, match=r"cannot send 'bad' to the engines \(push\)"):
        pool.push({"good": 1, "bad": lock})
    with pytest.raises(zpool.SerializationError, match=r"part 1 of 'x'"):
        pool.scatter("x", [1, lock])
    with pytest.raises(zpool.SerializationError, match=r"an item of the iterable given to map\(len\)"):
        pool.engines.map(len, [[1], lock])


def test_dunder_names_are_refused(pool):
    for name in ("__builtins__", "__name__", "__x__"):
        with pytest.raises(ValueError, match="module's own names"):
            pool.push({name: 1})


def test_view_decorators_follow_the_views_block_at_each_call(pool):
    view = pool.engines
    pids = view.remote()(os.getpid)
    assert isinstance(pids(), list)
    view.block = False
    ar = pids()
    assert isinstance(ar, DirectResult)
    assert ar.get(timeout=T) == view.apply_sync(os.getpid)
    with pytest.raises(TypeError, match="ordered"):
        view.parallel(ordered="no")
    with pytest.raises(TypeError, match="block"):
        view.remote(block="no")


def test_numpy_integers_index_views(pool):
    assert pool.engines[np.int64(0)].ids == pool.engines[0].ids
    assert pool.engines[np.argmin([5, 1])].ids == [pool.engines.ids[1]]


def test_metadata_is_per_engine_on_views_of_several_engines(pool):
    ar = pool.engines[0:1].apply_async(os.getpid)
    ar.get(timeout=T)
    assert isinstance(ar.metadata, list) and len(ar.metadata) == 1
    assert ar.metadata[0]["engine_id"] == pool.engines.ids[0]
    one = pool.engines[0].apply_async(os.getpid)
    one.get(timeout=T)
    assert one.metadata["engine_id"] == pool.engines.ids[0]


def test_system_exit_in_a_task_is_reported_not_raised(pool):
    with pytest.raises(zpool.RemoteError, match="SystemExit: 3.*not raised here") as info:
        pool.engines[0].execute("raise SystemExit(3)")
    assert info.value.ename == "SystemExit"
    ns = as_main("def interrupt():\n    raise KeyboardInterrupt('remote')\n")
    with pytest.raises(zpool.RemoteError, match="KeyboardInterrupt"):
        pool.apply(ns["interrupt"])


def test_apply_passes_every_keyword_to_the_function(pool):
    def takes(func, block=None):
        return (func, block)

    assert pool.engines[0].apply(takes, func=1, block=2) == (1, 2)
    pool.update({"u1": 1}, u2=2)
    pool.update(u3=3)
    assert pool.engines[0].pull(["u1", "u2", "u3"]) == [1, 2, 3]


def test_unmet_functional_dependency_on_a_view_gives_its_reason(pool):
    @zpool.require("no_such_module_zpool_test")
    def needs():
        return 1

    with pytest.raises(zpool.UnmetDependency, match="no_such_module_zpool_test"):
        pool.engines[0].apply(needs)
