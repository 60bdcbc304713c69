"""Serialization: functions by reference or by value, out-of-band buffers, error texts."""

from __future__ import annotations

import os
import pickle
import threading

import numpy as np
import pytest
import zmq

from tests import _tasks
from zpool import _engine_context
from zpool.error import SerializationError
from zpool.serialize import OOB_THRESHOLD, dumps, dumps_call, loads, loads_call


def _by_value(data: bytes) -> bool:
    """Whether a pickle carries a function or class by value (rebuilt by dill on the other side)."""
    return b"_loads_dill" in data or b"_loads_kept" in data


def address(buf) -> int:
    """Address of the first byte of a buffer (bytes, memoryview, Frame...)."""
    return np.frombuffer(buf, np.uint8).ctypes.data


def round_trip(obj):
    return loads(dumps(obj))


def module_level_function(x):
    return x - 1


class Outer:
    class Inner:
        pass


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("no pickling for me")

    def __repr__(self):
        return "Unpicklable()"


# -- functions and classes ---------------------------------------------------


def test_lambda_travels_by_value():
    frames = dumps(lambda x: x + 1)
    assert _by_value(bytes(frames[0]))
    assert loads(frames)(2) == 3


def test_closure_keeps_its_cells():
    def make_adder(n):
        def add(x):
            return x + n

        return add

    add5 = round_trip(make_adder(5))
    assert add5(10) == 15
    assert add5.__closure__[0].cell_contents == 5


def test_function_from_main_travels_by_value():
    namespace = {"__name__": "__main__"}
    exec("FACTOR = 3\ndef triple(x):\n    return FACTOR * x\n", namespace)
    triple = namespace["triple"]
    assert triple.__module__ == "__main__"

    frames = dumps(triple)
    assert _by_value(bytes(frames[0]))
    rebuilt = loads(frames)
    assert rebuilt is not triple
    assert rebuilt(7) == 21


def test_local_class_and_instance():
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def norm2(self):
            return self.x**2 + self.y**2

    cls = round_trip(Point)
    assert cls.__name__ == "Point"
    assert cls(3, 4).norm2() == 25

    p = round_trip(Point(1, 2))
    assert type(p).__name__ == "Point"
    assert (p.x, p.y, p.norm2()) == (1, 2, 5)


@pytest.mark.parametrize(
    "obj, qualname",
    [
        (_tasks.square, b"square"),
        (module_level_function, b"module_level_function"),
        (Outer.Inner, b"Outer.Inner"),
        (np.add, b"add"),  # a ufunc: not a Python function, pickled by numpy itself
    ],
)
def test_module_level_objects_travel_by_reference(obj, qualname):
    frames = dumps(obj)
    data = bytes(frames[0])
    assert len(frames) == 1
    assert len(data) < 120, data
    assert qualname in data
    assert not _by_value(data)
    assert loads(frames) is obj


def test_function_shadowed_by_another_object_goes_by_value():
    def square(x):
        return x * x

    square.__module__ = _tasks.__name__
    square.__qualname__ = "square"  # names _tasks.square, but is not that object
    frames = dumps(square)
    assert _by_value(bytes(frames[0]))
    assert loads(frames)(4) == 16


# -- numpy arrays ------------------------------------------------------------


def test_large_array_goes_out_of_band_without_copy():
    a = np.arange(100_000, dtype=np.float64)
    frames = dumps(a)
    assert len(frames) == 2
    assert address(frames[1]) == a.ctypes.data
    assert len(bytes(frames[0])) < 1000

    b = loads(frames)
    np.testing.assert_array_equal(b, a)
    assert b.ctypes.data == a.ctypes.data  # a view on the frame, not a copy


def test_received_array_is_read_only_view_on_frame():
    a = np.arange(50_000, dtype=np.int64)
    frames = [zmq.Frame(bytes(f)) for f in dumps(a)]
    b = loads(frames)
    np.testing.assert_array_equal(b, a)
    assert not b.flags.writeable
    assert b.ctypes.data == address(frames[1].buffer)
    with pytest.raises(ValueError, match="read-only"):
        b[0] = 1


def test_small_array_stays_in_band():
    a = np.arange(10, dtype=np.int32)
    frames = dumps(a)
    assert len(frames) == 1
    np.testing.assert_array_equal(loads(frames), a)


def test_threshold_boundary():
    assert len(dumps(np.zeros(OOB_THRESHOLD - 1, np.uint8))) == 1
    assert len(dumps(np.zeros(OOB_THRESHOLD, np.uint8))) == 2


@pytest.mark.parametrize("dtype", ["float32", "complex128", ">i4", "bool", "u2"])
def test_array_dtype_and_shape_preserved(dtype):
    a = (np.arange(300 * 400) % 7).astype(dtype).reshape(300, 400)
    b = round_trip(a)
    assert b.dtype == np.dtype(dtype)
    assert b.shape == (300, 400)
    assert b.flags.c_contiguous
    np.testing.assert_array_equal(b, a)


def test_fortran_order_preserved():
    a = np.asfortranarray(np.arange(300 * 400, dtype=np.int32).reshape(300, 400))
    frames = dumps(a)
    assert len(frames) == 2
    b = loads(frames)
    assert b.flags.f_contiguous and not b.flags.c_contiguous
    assert b.shape == (300, 400)
    np.testing.assert_array_equal(b, a)


def test_non_contiguous_array_round_trips():
    a = np.arange(200_000, dtype=np.float64)[::3]
    b = round_trip(a)
    np.testing.assert_array_equal(b, a)


def test_arrays_nested_in_containers():
    big = np.ones((256, 256))
    obj = {"x": [big, np.arange(3)], "y": (big * 2,)}
    frames = dumps(obj)
    assert len(frames) == 3
    back = loads(frames)
    np.testing.assert_array_equal(back["x"][0], big)
    np.testing.assert_array_equal(back["x"][1], np.arange(3))
    np.testing.assert_array_equal(back["y"][0], big * 2)


# -- bytes, bytearray, memoryview --------------------------------------------


def test_large_bytes_out_of_band():
    data = bytes(range(256)) * (OOB_THRESHOLD // 256 + 1)
    frames = dumps(data)
    assert len(frames) == 2
    assert address(frames[1]) == address(data)
    back = loads(frames)
    assert type(back) is bytes
    assert back == data


def test_large_bytearray_out_of_band():
    data = bytearray(b"\x07" * OOB_THRESHOLD)
    frames = dumps(data)
    assert len(frames) == 2, f"bytearray copied into a pickle of {len(frames[0])} bytes"
    assert address(frames[1]) == address(data)
    back = loads(frames)
    assert type(back) is bytearray
    assert back == data
    back[0] = 0  # a bytearray owns its (copied) memory: writable
    assert data[0] == 7


def test_large_memoryview_out_of_band():
    source = bytearray(range(256)) * 512
    view = memoryview(source)
    frames = dumps(view)
    assert len(frames) == 2
    assert address(frames[1]) == address(source)
    back = loads(frames)
    assert type(back) is memoryview
    assert back.readonly
    assert back.tobytes() == bytes(source)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_small_buffers_in_band(kind):
    obj = kind(b"abc" * 10)
    frames = dumps(obj)
    assert len(frames) == 1
    back = loads(frames)
    assert type(back) is kind
    assert bytes(back) == b"abc" * 10


def test_bytes_inside_a_container_stay_in_band():
    # Only top-level bytes are lifted out (bytes are immutable, so pickle copies them).
    data = b"z" * (2 * OOB_THRESHOLD)
    frames = dumps([data])
    assert len(frames) == 1
    assert loads(frames) == [data]


# -- calls -------------------------------------------------------------------


def test_dumps_call_round_trip():
    big = b"q" * OOB_THRESHOLD
    frames = dumps_call(_tasks.add, (big,), {"b": b"!"})
    assert len(frames) == 2
    assert address(frames[1]) == address(big)
    func, args, kwargs = loads_call(frames)
    assert func is _tasks.add
    assert args == (big,)
    assert kwargs == {"b": b"!"}
    assert func(*args, **kwargs) == big + b"!"


def test_dumps_call_names_the_positional_argument():
    lock = threading.Lock()
    with pytest.raises(SerializationError) as info:
        dumps_call(_tasks.add, (1, lock))
    text = str(info.value)
    assert text.startswith("cannot serialize argument 1 of add(): <unlocked _thread.lock object")
    assert "(TypeError: cannot pickle '_thread.lock' object)." in text
    assert text.endswith(
        " Locks, sockets, open files, threads and generators cannot cross processes;"
        " create the object inside the task instead."
    )
    assert isinstance(info.value, pickle.PicklingError)
    assert isinstance(info.value.__cause__, TypeError)


def test_dumps_call_names_the_keyword_argument():
    with pytest.raises(SerializationError) as info:
        dumps_call(_tasks.add, (1,), {"b": Unpicklable()})
    assert str(info.value) == (
        "cannot serialize keyword argument 'b' of add(): Unpicklable() "
        "(RuntimeError: no pickling for me). "
        "Make it picklable (see the pickle docs), or create it inside the task."
    )
    assert isinstance(info.value, pickle.PicklingError)


def test_dumps_call_custom_argument_description():
    expected = r"^cannot serialize item 2 of the iterable given to square: Unpicklable\(\)"
    with pytest.raises(SerializationError, match=expected):
        dumps_call(
            _tasks.square,
            (1, 2, Unpicklable()),
            describe_arg=lambda i, name: f"item {i} of the iterable given to {name}",
        )


def test_dumps_error_is_a_pickling_error():
    with pytest.raises(pickle.PicklingError, match=r"^cannot serialize \[1, Unpicklable\(\)\]: no pickling for me$"):
        dumps([1, Unpicklable()])


# -- functions of the caller's __main__, rebound to an engine's namespace ----------------


def _main_code(source: str) -> dict:
    """Run `source` as if in a caller's ``__main__``; return its namespace."""
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<caller>", "exec", dont_inherit=True), namespace)
    return namespace


@pytest.fixture
def engine_namespace():
    namespace = {"__name__": "__main__"}
    _engine_context.set_main_namespace(namespace)
    yield namespace
    _engine_context.set_main_namespace(None)


def test_the_engine_context_names_the_engine_in_error_reports(engine_namespace):
    context = _engine_context.current()
    assert context is not None and context.namespace is engine_namespace
    before = _engine_context.describe_exception(ValueError("x"), None)
    assert before["traceback"].startswith(f"Traceback from pid {os.getpid()}:") and before["engine_id"] is None
    context.registered(7)
    report = _engine_context.describe_exception(ValueError("bad"), None, ", task t1")
    assert report["engine_id"] == 7 and report["ename"] == "ValueError" and report["evalue"] == "bad"
    assert report["traceback"].startswith(f"Traceback from engine 7 (pid {os.getpid()}), task t1:\n")


def test_outside_an_engine_nothing_is_adopted_and_reports_name_the_pid():
    assert _engine_context.current() is None and _engine_context.main_namespace() is None
    assert _engine_context.describe_exception(ValueError("x"), None)["engine_id"] is None
    assert _engine_context.label() == f"pid {os.getpid()}"


def _ship(obj):
    frames = dumps(obj)  # in the caller (no engine namespace yet at dumps time)
    return frames


def test_initializer_globals_are_seen_by_tasks(engine_namespace):
    caller = _main_code(
        "model = None\n"
        "def init(name):\n    global model\n    model = name\n"
        "def task():\n    return model\n"
        "class Predictor:\n    def __call__(self):\n        return model\n"
        "def deco(f):\n    def wrapper():\n        return ('wrapped', f())\n    return wrapper\n"
        "@deco\ndef decorated():\n    return model\n"
    )
    init, task, predictor, decorated = (
        loads(_ship(caller[name] if name != "Predictor" else caller[name]()))
        for name in ("init", "task", "Predictor", "decorated")
    )
    init("resnet")
    assert engine_namespace["model"] == "resnet"
    assert task() == "resnet"
    assert predictor() == "resnet"  # a method of a __main__ class
    assert decorated() == ("wrapped", "resnet")  # reached through a closure
    # A later task brings the caller's model = None again: the engine's own value stays.
    assert loads(_ship(caller["task"]))() == "resnet"


def test_caller_globals_always_current(engine_namespace):
    caller = _main_code(
        "k = 0\nf = lambda x: x * k\ndef helper(x):\n    return x + 1\ndef g(x):\n    return helper(x)\n"
    )
    assert loads(_ship(caller["f"]))(5) == 0
    caller["k"] = 3
    assert loads(_ship(caller["f"]))(5) == 15  # a loop variable, a changed constant
    assert loads(_ship(caller["g"]))(1) == 2
    exec("def helper(x):\n    return x + 100\n", caller)
    assert loads(_ship(caller["g"]))(1) == 101  # a redefined function
    exec("k = 'now a string'\n", caller)
    assert loads(_ship(caller["f"]))(2) == "now a stringnow a string"


def test_an_engine_rebuilds_a_kept_pickle_once_and_ships_its_globals_each_time(engine_namespace):
    caller = _main_code("G = 1\ndef f():\n    return G\ndef h():\n    return G\n")
    f_frames = _ship(caller["f"])
    assert b"_loads_kept" in bytes(f_frames[0])  # everything f captures is fingerprinted
    first = loads(f_frames)
    assert loads(_ship(caller["f"])) is first and first() == 1  # the same bytes: not rebuilt
    caller["G"] = 2
    assert loads(_ship(caller["h"]))() == 2  # h ships G = 2 into the namespace
    caller["G"] = 1
    again = loads(_ship(caller["f"]))  # f's first pickle again: kept, and its G = 1 shipped again
    assert again is first and again() == 1 and engine_namespace["G"] == 1
    exec("G = 'ours'", engine_namespace)
    _engine_context.forget_shipped(["G"])  # as execute() does for names it binds
    assert loads(_ship(caller["f"]))() == "ours"


def test_a_pickle_capturing_something_mutable_is_rebuilt_every_time(engine_namespace):
    caller = _main_code("STATE = []\ndef f():\n    return len(STATE)\n")
    frames = _ship(caller["f"])
    assert b"_loads_dill" in bytes(frames[0]) and b"_loads_kept" not in bytes(frames[0])
    assert loads(frames) is not loads(_ship(caller["f"]))


def test_an_engine_keeps_a_bounded_number_of_rebuilt_pickles(engine_namespace, monkeypatch):
    monkeypatch.setattr(_engine_context, "KEPT_MAX", 3)
    caller = _main_code("".join(f"def f{i}():\n    return {i}\n" for i in range(5)))
    for i in range(5):
        assert loads(_ship(caller[f"f{i}"]))() == i
    context = _engine_context.current()
    assert context is not None and len(context.kept) == 3
    assert context.kept_bytes == sum(len(data) for data in context.kept)


def test_adopted_function_keeps_its_attributes(engine_namespace):
    caller = _main_code(
        "SCALE = 2\n"
        "def work(x: int, factor: float = 2.0, *, extra: int = 1) -> float:\n"
        "    'Doc.'\n"
        "    return x * factor * SCALE + extra\n"
        "work.tag = 'mine'\n"
    )
    work = loads(_ship(caller["work"]))
    assert work(3) == 13.0
    assert work.__globals__ is engine_namespace
    assert (work.__doc__, work.__qualname__, work.__module__, work.tag) == ("Doc.", "work", "__main__", "mine")
    assert work.__annotations__ == {"x": int, "factor": float, "extra": int, "return": float}
    assert work.__kwdefaults__ == {"extra": 1}


def test_functions_are_not_adopted_in_the_caller():
    caller = _main_code("X = 1\ndef f():\n    return X\n")
    f = loads(_ship(caller["f"]))
    assert f() == 1 and f.__globals__ is not caller
