"""CPython's own Pool tests, run against both ``multiprocessing`` and ``zpool``.

This module re-states, in pytest form, the checks of the classes ``_TestPool``,
``_TestPoolWorkerErrors`` and ``_TestPoolWorkerLifetime`` of CPython 3.13's
``Lib/test/_test_multiprocessing.py``. Every test body runs twice, through the
``backend`` fixture: once on ``multiprocessing`` (spawn context) and once on
``zpool``. Passing both is what "drop-in replacement" means here.

Left out, with the reason:

* the ``threads`` and ``manager`` flavours of these classes, and every branch
  that only applies to them (``RemoteError`` from a manager in
  ``test_make_pool``, the ``threading.Event`` in ``test_async_timeout``, the
  short sleep for thread pools in ``test_terminate``, the manager list in
  ``test_map_async_callbacks``): zpool has neither a thread nor a manager pool.

Changed, with the reason:

* ``test_make_pool``: counts workers with ``backend.worker_pids(p)`` instead of
  ``len(p._pool)`` (a stdlib internal).
* ``test_resource_warning``: does not force ``pool._state`` back to RUN after
  ``terminate()``; drops the last reference to a running ``Pool(1)`` instead,
  and also checks its processes are cleaned up (the autouse fixture of
  ``tests/conftest.py``).
* ``test_unpickleable_result``: the task returns a generator object, not a
  lambda, since zpool serializes lambdas by value (dill); neither pickle nor
  dill can serialize a generator.
* ``test_pool_worker_lifetime``: instead of ``p._repopulate_pool()`` and
  ``w.is_alive()``, polls ``backend.worker_pids`` (bounded) until the pool has
  its three workers again.
* ``test_worker_finalization_via_atexit_handler_of_multiprocessing``: runs the
  script with ``subprocess.run`` (with a timeout) once per back-end, instead of
  ``test.support.script_helper``.
* ``test_async_error_callback``, ``test_unpickleable_result`` and the
  ``_TestPoolWorkerLifetime`` tests build ``multiprocessing.Pool`` directly in
  CPython; here they use ``backend.Pool``.
* Timing checks (``test_async``, ``test_async_timeout``,
  ``test_map_no_failfast``) keep their meaning with wide tolerances for a
  loaded 2-core machine; ``test_async`` times from submission, not from
  ``get()``, so its lower bound cannot be undercut by scheduling delays.
  ``test_release_task_refs`` polls (bounded) instead of one fixed sleep.
  Waits on results are bounded where the API allows it (``get(T)``,
  ``wait(T)``, ``next(timeout=T)``).

Added: ``test_pool_initializer``, a process-only form of CPython's
``TestInitializers.test_pool_initializer`` (which needs a manager), because
``initializer``/``initargs`` are part of the signature under test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import itertools
import multiprocessing
import multiprocessing.pool
import os
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import pytest

import zpool
from tests._wait import wait_until

T = 60.0  # seconds: bound for every wait on a result
REPO_ROOT = str(Path(__file__).resolve().parents[2])

# -- task functions (module level, so both back-ends' workers can import them) ----------


def sqr(x, wait=0.0):
    time.sleep(wait)
    return x * x


def mul(x, y):
    return x * y


def identity(x):
    return x


def sleep_started(directory_seconds):
    """Leave a file named after this worker's pid in `directory`, then sleep `seconds`."""
    directory, seconds = directory_seconds
    Path(directory, str(os.getpid())).touch()
    time.sleep(seconds)


def raise_large_valuerror(wait):
    time.sleep(wait)
    raise ValueError("x" * 1024**2)


def raising():
    raise KeyError("key")


def unpickleable_result():
    # A generator object: refused by pickle and by dill alike.
    return (i for i in range(3))


def raise_runtime_error_123():
    raise RuntimeError(123)  # some comment


def raise_runtime_error_foo():
    raise RuntimeError("foo")


class CountedObject:
    """Counts its live instances in the current process."""

    n_instances = 0

    def __new__(cls):
        cls.n_instances += 1
        return object.__new__(cls)

    def __del__(self):
        type(self).n_instances -= 1


class SayWhenError(ValueError):
    pass


def exception_throwing_generator(total, when):
    """Yield 0, 1, ... up to `total`, but raise SayWhenError in place of item `when` (-1: at once)."""
    if when == -1:
        raise SayWhenError("Somebody said when")
    for i in range(total):
        if i == when:
            raise SayWhenError("Somebody said when")
        yield i


_initialized_with = None


def remember(value):
    global _initialized_with
    _initialized_with = value


def initialized_value(_=None):
    return _initialized_with


# -- back-ends -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    Pool: Callable[..., Any]
    worker_pids: Callable[[Any], list[int]]
    wait_for_workers: Callable[[Any, int], None]


def _mp_worker_pids(pool: Any) -> list[int]:
    # Stdlib internals are touched only here and in the `backend` fixture (the adapter).
    return [w.pid for w in pool._pool]


def _mp_wait_for_workers(pool: Any, n: int) -> None:
    pass  # multiprocessing.Pool() returns with its workers started


def _zpool_worker_pids(pool: Any) -> list[int]:
    return sorted(pool.queue_status()["engine_pids"].values())


def _zpool_wait_for_workers(pool: Any, n: int) -> None:
    pool.wait_for_engines(n, timeout=T)


@pytest.fixture(scope="module", params=["multiprocessing", "zpool"])
def backend(request):
    if request.param == "multiprocessing":
        # Spawn: `filterwarnings = error`, and fork from a multi-threaded process warns (3.12+).
        # Spawned pools need multiprocessing's resource tracker (see tests/conftest.py).
        request.getfixturevalue("mp_resource_tracker")
        yield Backend(
            "multiprocessing", multiprocessing.get_context("spawn").Pool, _mp_worker_pids, _mp_wait_for_workers
        )
    else:
        yield Backend("zpool", zpool.Pool, _zpool_worker_pids, _zpool_wait_for_workers)


@pytest.fixture(scope="module")
def shared_pool(backend):
    """Four workers shared by the tests of one back-end (as `_TestPool.setUpClass`)."""
    pool = backend.Pool(4)
    try:
        backend.wait_for_workers(pool, 4)
        yield pool
    finally:
        pool.terminate()
        pool.join()


def check_pool_refused(backend: Backend, expected: type[BaseException], *args: Any, **kwargs: Any) -> None:
    """``backend.Pool(*args, **kwargs)`` must raise `expected`; a pool made anyway is stopped."""
    made = None
    try:
        with pytest.raises(expected):
            made = backend.Pool(*args, **kwargs)
    finally:
        if made is not None:
            made.terminate()
            made.join()


# -- _TestPool ---------------------------------------------------------------------------


def test_apply(shared_pool):
    assert shared_pool.apply(sqr, (5,)) == sqr(5)
    assert shared_pool.apply(sqr, (), {"x": 3}) == sqr(x=3)


def test_map(shared_pool):
    assert shared_pool.map(sqr, list(range(10))) == [sqr(i) for i in range(10)]
    assert shared_pool.map(sqr, list(range(100)), chunksize=20) == [sqr(i) for i in range(100)]


def test_starmap(shared_pool):
    pairs = list(zip(range(10), reversed(range(10))))
    assert shared_pool.starmap(mul, pairs) == list(itertools.starmap(mul, pairs))
    pairs = list(zip(range(100), reversed(range(100))))
    assert shared_pool.starmap(mul, pairs, chunksize=20) == list(itertools.starmap(mul, pairs))


def test_starmap_async(shared_pool):
    pairs = list(zip(range(100), reversed(range(100))))
    assert shared_pool.starmap_async(mul, pairs).get(T) == list(itertools.starmap(mul, pairs))


def test_map_async(shared_pool):
    assert shared_pool.map_async(sqr, list(range(10))).get(T) == [sqr(i) for i in range(10)]


def test_map_async_callbacks(shared_pool):
    seen: list[Any] = []
    shared_pool.map_async(int, ["1"], callback=seen.append, error_callback=seen.append).wait(T)
    assert len(seen) == 1
    assert seen[0] == [1]
    shared_pool.map_async(int, ["a"], callback=seen.append, error_callback=seen.append).wait(T)
    assert len(seen) == 2
    assert isinstance(seen[1], ValueError)


def test_map_unpicklable(shared_pool):
    # bpo-19425: an argument that fails to pickle must raise, not hang.
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        shared_pool.map(sqr, [Unpicklable()] * 10)


def test_map_chunksize(shared_pool):
    # An empty list with an explicit chunksize must complete, not stall.
    try:
        result = shared_pool.map_async(sqr, [], chunksize=1).get(timeout=10)
    except multiprocessing.TimeoutError:
        pytest.fail("map_async with a chunksize stalled on an empty list")
    assert result == []


class SpecialIterable:
    """Claims one item, but raises as soon as it is iterated."""

    def __iter__(self):
        return self

    def __next__(self):
        raise SayWhenError

    def __len__(self):
        return 1


def test_map_handle_iterable_exception(shared_pool):
    # The iterable raises before its first item; twice, to show the pool recovers.
    for _ in range(2):
        with pytest.raises(SayWhenError):
            shared_pool.map(sqr, exception_throwing_generator(1, -1), 1)
    with pytest.raises(SayWhenError):
        shared_pool.map(sqr, exception_throwing_generator(10, 3), 1)
    for _ in range(2):
        with pytest.raises(SayWhenError):
            shared_pool.map(sqr, SpecialIterable(), 1)


def test_async(shared_pool):
    delay = 0.5
    start = time.monotonic()
    res = shared_pool.apply_async(sqr, (7, delay))
    assert res.get(T) == 49
    elapsed = time.monotonic() - start
    assert delay * 0.9 <= elapsed < delay + 20, elapsed


def test_async_timeout(backend):
    timeout = 0.5
    p = backend.Pool(3)
    try:
        res = p.apply_async(sqr, (6, timeout + 30))
        start = time.monotonic()
        with pytest.raises(multiprocessing.TimeoutError):
            res.get(timeout=timeout)
        elapsed = time.monotonic() - start
        assert timeout * 0.9 <= elapsed < timeout + 10, elapsed
    finally:
        p.terminate()
        p.join()


def test_imap(shared_pool):
    assert list(shared_pool.imap(sqr, list(range(10)))) == [sqr(i) for i in range(10)]

    # With the default chunksize of 1, the iterator also has next(timeout).
    it = shared_pool.imap(sqr, list(range(10)))
    for i in range(10):
        assert it.next(timeout=T) == i * i
    with pytest.raises(StopIteration):
        it.next(timeout=T)

    it = shared_pool.imap(sqr, list(range(1000)), chunksize=100)
    for i in range(1000):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)


def test_imap_handle_iterable_exception(shared_pool):
    # The iterable raises before its first item; twice, to show the pool recovers.
    for _ in range(2):
        it = shared_pool.imap(sqr, exception_throwing_generator(1, -1), 1)
        with pytest.raises(SayWhenError):
            next(it)

    it = shared_pool.imap(sqr, exception_throwing_generator(10, 3), 1)
    for i in range(3):
        assert next(it) == i * i
    with pytest.raises(SayWhenError):
        next(it)

    # The error replaces the results of the whole chunk it broke: with items 0..6
    # produced before the failure, chunks of 2 yield 0..5, chunks of 4 yield 0..3.
    for chunksize, good in ((2, 6), (4, 4)):
        it = shared_pool.imap(sqr, exception_throwing_generator(20, 7), chunksize)
        for i in range(good):
            assert next(it) == i * i
        with pytest.raises(SayWhenError):
            next(it)


def test_imap_unordered(shared_pool):
    assert sorted(shared_pool.imap_unordered(sqr, list(range(10)))) == [sqr(i) for i in range(10)]
    it = shared_pool.imap_unordered(sqr, list(range(1000)), chunksize=100)
    assert sorted(it) == [sqr(i) for i in range(1000)]


def test_imap_unordered_handle_iterable_exception(shared_pool):
    for _ in range(2):
        it = shared_pool.imap_unordered(sqr, exception_throwing_generator(1, -1), 1)
        with pytest.raises(SayWhenError):
            next(it)

    # Unordered: the error may come after any number of good values, but it must come.
    for total, when, chunksize in ((10, 3, 1), (20, 7, 2)):
        it = shared_pool.imap_unordered(sqr, exception_throwing_generator(total, when), chunksize)
        expected = [sqr(i) for i in range(total)]
        with pytest.raises(SayWhenError):
            for _ in range(total):
                value = next(it)
                assert value in expected
                expected.remove(value)


def test_make_pool(backend):
    check_pool_refused(backend, ValueError, -1)
    check_pool_refused(backend, ValueError, 0)

    p = backend.Pool(3)
    try:
        backend.wait_for_workers(p, 3)
        assert len(backend.worker_pids(p)) == 3
    finally:
        p.close()
        p.join()


def test_terminate(backend, tmp_path):
    # Tasks that would run "forever": terminate() must not wait for them.
    p = backend.Pool(3)
    try:
        _pending = p.map_async(sleep_started, [(str(tmp_path), 300)] * 10_000, chunksize=1)
        wait_until(lambda: any(tmp_path.iterdir()), T, "a task started")
    finally:
        p.terminate()
        p.join()


def test_empty_iterable(backend):
    # bpo-12157
    p = backend.Pool(1)
    try:
        assert p.map(sqr, []) == []
        assert list(p.imap(sqr, [])) == []
        assert list(p.imap_unordered(sqr, [])) == []
        assert p.map_async(sqr, []).get(T) == []
    finally:
        p.close()
        p.join()


def test_context(backend):
    items = list(range(10))
    with backend.Pool(2) as p:
        assert p.map_async(sqr, items).get(T) == [sqr(i) for i in items]
    p.join()
    with pytest.raises(ValueError):
        p.map_async(sqr, items)


def test_traceback(backend):
    # The worker's traceback travels with the exception, as its __cause__.
    with backend.Pool(1) as p:
        with pytest.raises(Exception) as info:
            p.apply(raise_runtime_error_123)
    p.join()
    exc = info.value
    assert type(exc) is RuntimeError
    assert exc.args == (123,)
    cause = exc.__cause__
    assert type(cause) is multiprocessing.pool.RemoteTraceback
    source_line = "raise RuntimeError(123)  # some comment"
    assert source_line in cause.tb

    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        try:
            raise exc
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
    assert source_line in printed.getvalue()

    # An exception raised by the iterable, in this process, is not made remote.
    with backend.Pool(1) as p:
        with pytest.raises(Exception) as info:
            p.map(sqr, exception_throwing_generator(1, -1), 1)
        assert type(info.value) is SayWhenError
        assert info.value.__cause__ is None
    p.join()


def test_wrapped_exception(backend):
    # bpo-20980
    with backend.Pool(1) as p:
        with pytest.raises(RuntimeError):
            p.apply(raise_runtime_error_foo)
    p.join()


def test_map_no_failfast(backend):
    # bpo-23992: after a failed map(), close() and join() must still finish,
    # and join() must wait for the tasks that were still running.
    start = time.monotonic()
    with pytest.raises(ValueError):
        with backend.Pool(2) as p:
            try:
                p.map(raise_large_valuerror, [0, 1])
            finally:
                time.sleep(0.5)
                p.close()
                p.join()
    assert time.monotonic() - start > 0.9


def test_release_task_refs(shared_pool):
    # bpo-29861: neither the arguments nor the returned copies may be kept alive.
    objs = [CountedObject() for _ in range(10)]
    refs = [weakref.ref(o) for o in objs]
    shared_pool.map(identity, objs)
    del objs

    def released():
        gc.collect()
        return all(r() is None for r in refs) and CountedObject.n_instances == 0

    wait_until(released, 10, "the arguments and their copies released")
    assert {r() for r in refs} == {None}
    assert CountedObject.n_instances == 0


def test_enter(backend):
    pool = backend.Pool(1)
    try:
        with pool:
            pass  # leaving the block terminates the pool
        # bpo-35477: entering a pool that no longer runs fails
        with pytest.raises(ValueError):
            with pool:
                pass
    finally:
        pool.terminate()
        pool.join()


def test_resource_warning(backend):
    pool = backend.Pool(1)
    with pytest.warns(ResourceWarning, match="unclosed running"):
        del pool  # the last reference
        gc.collect()


# -- _TestPoolWorkerErrors ---------------------------------------------------------------


def test_async_error_callback(backend):
    p = backend.Pool(2)
    try:
        errors: list[BaseException] = []
        res = p.apply_async(raising, error_callback=errors.append)
        with pytest.raises(KeyError):
            res.get(T)
        # The error callback has run by the time get() returns.
        assert len(errors) == 1
        assert isinstance(errors[0], KeyError)
    finally:
        p.close()
        p.join()


def test_unpickleable_result(backend):
    # A result that cannot be sent back must not cost the pool its workers.
    p = backend.Pool(2)
    try:
        for _ in range(20):
            errors: list[BaseException] = []
            res = p.apply_async(unpickleable_result, error_callback=errors.append)
            with pytest.raises(multiprocessing.pool.MaybeEncodingError):
                res.get(T)
            assert len(errors) == 1
            wrapped = errors[0]
            assert isinstance(wrapped, multiprocessing.pool.MaybeEncodingError)
            assert wrapped.exc is not None
            assert wrapped.value is not None
    finally:
        p.close()
        p.join()


# -- _TestPoolWorkerLifetime -------------------------------------------------------------


def test_pool_worker_lifetime(backend):
    p = backend.Pool(3, maxtasksperchild=10)
    try:
        backend.wait_for_workers(p, 3)
        first_pids = backend.worker_pids(p)
        assert len(first_pids) == 3
        assert None not in first_pids

        # 100 tasks, at most 10 per worker: every worker gets replaced at least once.
        results = [p.apply_async(sqr, (i,)) for i in range(100)]
        for i, res in enumerate(results):
            assert res.get(T) == sqr(i)

        # Wait (bounded) until the pool is back to three workers.
        def three_workers():
            pids = backend.worker_pids(p)
            return pids if len(pids) == 3 else None

        last_pids = wait_until(three_workers, 30, "3 workers again")
        assert len(last_pids) == 3, last_pids
        # bpo-7805: all pids are assigned.
        assert None not in last_pids
        assert sorted(first_pids) != sorted(last_pids)
    finally:
        p.close()
        p.join()


def test_pool_worker_lifetime_early_close(backend):
    # bpo-10332: closing a pool whose workers have short lifetimes, before its
    # tasks are done, must not make join() hang.
    p = backend.Pool(3, maxtasksperchild=1)
    try:
        results = [p.apply_async(sqr, (i, 0.3)) for i in range(6)]
    finally:
        p.close()
        p.join()
    for i, res in enumerate(results):
        assert res.get(T) == sqr(i)


def test_pool_maxtasksperchild_invalid(backend):
    if backend.name == "multiprocessing" and sys.version_info < (3, 10):
        pytest.skip("multiprocessing validates maxtasksperchild from Python 3.10 on")
    for value in [0, -1, 0.5, "12"]:
        check_pool_refused(backend, ValueError, 3, maxtasksperchild=value)


ATEXIT_SCRIPT = """\
from {module} import Pool

holder = None


class Holder:
    def __init__(self):
        self.pool = Pool(processes=1)


def main():
    global holder
    holder = Holder()
    holder.pool.map(float, tuple(range(10)))


if __name__ == "__main__":
    main()
"""


def test_worker_finalization_via_atexit_handler_of_multiprocessing(backend):
    # bpo-38744, bpo-39360: a pool still referenced by a global at interpreter
    # exit, never closed, must not make the interpreter hang or fail on exit.
    code = ATEXIT_SCRIPT.format(module=backend.name)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, textwrap.indent(proc.stderr, "  ")


# -- additions ---------------------------------------------------------------------------


def test_pool_initializer(backend):
    check_pool_refused(backend, TypeError, initializer=1)
    p = backend.Pool(1, remember, ("ready",))
    try:
        assert p.apply(initialized_value) == "ready"
    finally:
        p.close()
        p.join()
