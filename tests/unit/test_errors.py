"""Exception classes: hierarchy, pickling, and rebuilding remote exceptions."""

from __future__ import annotations

import builtins
import concurrent.futures
import multiprocessing
import multiprocessing.pool
import pickle

import dill
import pytest

import zpool
from tests import _tasks
from zpool import error
from zpool.client.results import rebuild_exception
from zpool.error import RemoteError, RemoteTraceback
from zpool.serialize import dumps

TRACEBACK = 'Traceback (most recent call last):\n  File "<task>", line 1, in f\nValueError: bad x\n'


def example(name: str) -> BaseException:
    cls = getattr(error, name)
    if cls is RemoteError:
        return RemoteError("MyError", "it broke", "the traceback", 3)
    if cls is error.ResultEncodingError:
        return cls("TypeError: cannot pickle 'generator' object", "<generator object g>", " (a hint)")
    return cls(f"{name} happened")


def test_all_is_complete():
    classes = {
        name
        for name, value in vars(error).items()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == error.__name__
    }
    # RemoteTraceback is the standard library's own class, re-exported.
    assert classes | {"RemoteTraceback"} == set(error.__all__)
    assert error.RemoteTraceback is multiprocessing.pool.RemoteTraceback


def test_result_encoding_error_is_the_stdlib_maybe_encoding_error():
    exc = example("ResultEncodingError")
    assert isinstance(exc, multiprocessing.pool.MaybeEncodingError)
    assert isinstance(exc, error.SerializationError)
    assert exc.exc == "TypeError: cannot pickle 'generator' object"
    assert exc.value == "<generator object g>"
    assert str(exc) == (
        "Error sending result: <generator object g>. Reason: TypeError: cannot pickle 'generator' object (a hint)"
    )
    from_objects = error.ResultEncodingError(TypeError("no"), [1])
    assert (from_objects.exc, from_objects.value) == ("TypeError('no')", "[1]")


@pytest.mark.parametrize(
    "cause",
    [
        TypeError("cannot pickle '_thread.lock' object"),
        RuntimeError("nope"),
        pickle.PicklingError("x"),
        OSError(2, "x"),
    ],
    ids=["TypeError", "RuntimeError", "PicklingError", "OSError"],
)
def test_serialization_error_is_also_the_original_type(cause):
    exc = error.serialization_error("cannot serialize argument 0 of f()", cause)
    assert isinstance(exc, error.SerializationError)
    assert isinstance(exc, type(cause))
    assert str(exc) == "cannot serialize argument 0 of f()"
    back = pickle.loads(pickle.dumps(exc))  # crosses processes as a plain SerializationError
    assert type(back) is error.SerializationError
    assert str(back) == "cannot serialize argument 0 of f()"


def test_serialization_error_without_a_combinable_cause():
    class Picky(Exception):
        def __init__(self, a, b):
            super().__init__(a, b)

    class Loud(Exception):
        def __init_subclass__(cls, **kwargs):
            raise RuntimeError("no subclasses")

    # Only built-in types are mixed in, and never one that changes control flow.
    causes = (None, KeyboardInterrupt(), Picky(1, 2), Loud("x"), StopIteration(), StopAsyncIteration())
    for cause in causes:
        exc = error.serialization_error("message", cause)
        assert type(exc) is error.SerializationError
        assert str(exc) == "message"


def test_serialization_error_keeps_its_message_whatever_the_args():
    exc = error.serialization_error("cannot serialize x", KeyError("k"))
    assert isinstance(exc, KeyError)
    assert str(exc) == "cannot serialize x"


@pytest.mark.parametrize("name", error.__all__)
@pytest.mark.parametrize("module", [pickle, dill], ids=["pickle", "dill"])
def test_exceptions_survive_pickling(name, module):
    exc = example(name)
    back = module.loads(module.dumps(exc))
    assert type(back) is type(exc)
    assert back.args == exc.args
    assert str(back) == str(exc)
    assert vars(back) == vars(exc)


@pytest.mark.parametrize("name", sorted(set(error.__all__) - {"RemoteTraceback"}))
def test_every_class_is_a_zpool_error_and_exported(name):
    cls = getattr(error, name)
    assert issubclass(cls, error.ZPoolError)
    assert getattr(zpool, name) is cls


def test_timeout_error_is_both_timeouts():
    assert issubclass(zpool.TimeoutError, multiprocessing.TimeoutError)
    assert issubclass(zpool.TimeoutError, builtins.TimeoutError)
    assert zpool.TimeoutError is not builtins.TimeoutError
    with pytest.raises(multiprocessing.TimeoutError):
        raise zpool.TimeoutError("waited 1s")
    with pytest.raises(builtins.TimeoutError):
        raise zpool.TimeoutError("waited 1s")


@pytest.mark.parametrize(
    "cls, base",
    [
        (error.PoolClosedError, ValueError),
        (error.BrokenPoolError, concurrent.futures.BrokenExecutor),
        (error.SerializationError, pickle.PicklingError),
        (error.AuthenticationError, multiprocessing.AuthenticationError),
        (error.ImpossibleDependency, error.UnmetDependency),
        (error.DependencyTimeout, error.ImpossibleDependency),
        (error.InvalidDependency, error.ImpossibleDependency),
    ],
)
def test_standard_library_bases(cls, base):
    assert issubclass(cls, base)
    with pytest.raises(base):
        raise cls("boom")


def test_dependency_family():
    assert not issubclass(error.UnmetDependency, error.ImpossibleDependency)
    assert not issubclass(error.DependencyTimeout, error.InvalidDependency)
    assert not issubclass(error.InvalidDependency, error.DependencyTimeout)
    assert error.UnmetDependency.__bases__ == (error.ZPoolError,)


def test_remote_traceback_is_not_a_zpool_error():
    tb = RemoteTraceback(TRACEBACK)
    assert not isinstance(tb, error.ZPoolError)
    assert tb.tb == TRACEBACK
    assert str(tb) == TRACEBACK


def test_remote_error_attributes_and_str():
    exc = RemoteError("MyError", "it broke", "the traceback", 3)
    assert (exc.ename, exc.evalue, exc.traceback, exc.engine_id) == ("MyError", "it broke", "the traceback", 3)
    assert exc.args == ("MyError", "it broke", "the traceback", 3)
    assert str(exc) == "MyError: it broke (raised on engine 3; its type could not be rebuilt here)"

    anywhere = RemoteError("MyError", "it broke")
    assert (anywhere.traceback, anywhere.engine_id) == ("", None)
    assert str(anywhere) == "MyError: it broke (raised; its type could not be rebuilt here)"


# -- rebuild_exception -------------------------------------------------------


def test_rebuild_builtin_exception():
    exc = rebuild_exception(
        {"ename": "ValueError", "emodule": "builtins", "evalue": "bad x", "traceback": TRACEBACK, "engine_id": 1},
        [],
    )
    assert type(exc) is ValueError
    assert exc.args == ("bad x",)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert exc.__cause__.tb == TRACEBACK
    assert str(exc.__cause__) == TRACEBACK


def test_rebuild_zpool_error_by_name():
    # The controller's own failures carry no emodule.
    exc = rebuild_exception({"ename": "EngineError", "evalue": "engine 2 died", "traceback": "", "engine_id": 2}, [])
    assert type(exc) is error.EngineError
    assert str(exc) == "engine 2 died"
    assert exc.__cause__ is None  # no traceback text

    exc = rebuild_exception({"ename": "TaskAborted", "emodule": "zpool.error", "evalue": "aborted"}, [])
    assert type(exc) is error.TaskAborted
    assert exc.args == ("aborted",)


@pytest.mark.parametrize(
    "fields",
    [
        {"ename": "MyError", "emodule": "mymodule"},
        {"ename": "MyError"},
        {"ename": "ValueError", "emodule": "mymodule"},  # someone else's ValueError
        {"ename": "print", "emodule": "builtins"},  # not an exception type
        {"ename": "ZPoolError", "emodule": "other.module"},
    ],
    ids=["unknown", "unknown-no-module", "shadowed-builtin", "builtin-function", "shadowed-zpool"],
)
def test_rebuild_unknown_gives_remote_error(fields):
    exc = rebuild_exception({**fields, "evalue": "oops", "traceback": TRACEBACK, "engine_id": 4}, [])
    assert type(exc) is RemoteError
    assert (exc.ename, exc.evalue, exc.traceback, exc.engine_id) == (fields["ename"], "oops", TRACEBACK, 4)
    assert str(exc) == f"{fields['ename']}: oops (raised on engine 4; its type could not be rebuilt here)"
    assert exc.__cause__.tb == TRACEBACK


def test_rebuild_non_int_engine_id_dropped():
    exc = rebuild_exception({"ename": "MyError", "evalue": "oops", "engine_id": "3"}, [])
    assert type(exc) is RemoteError
    assert exc.engine_id is None


def test_rebuild_from_pickled_exception():
    frames = dumps(_tasks.CustomError("custom"))
    error = {"ename": "CustomError", "emodule": "tests._tasks", "evalue": "custom", "traceback": TRACEBACK}
    exc = rebuild_exception(error, frames)
    assert type(exc) is _tasks.CustomError
    assert exc.args == ("custom",)
    assert exc.__cause__.tb == TRACEBACK


@pytest.mark.parametrize(
    "frames",
    [[b"not a pickle"], dumps(42)],
    ids=["garbage", "not-an-exception"],
)
def test_rebuild_falls_back_to_the_name(frames):
    error = {"ename": "KeyError", "emodule": "builtins", "evalue": "'k'", "traceback": TRACEBACK}
    exc = rebuild_exception(error, frames)
    assert type(exc) is KeyError
    assert exc.args == ("'k'",)
