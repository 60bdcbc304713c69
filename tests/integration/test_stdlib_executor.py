"""CPython's ProcessPoolExecutor tests, run against both ``concurrent.futures`` and ``zpool``.

This module re-states, in pytest form, the checks of CPython's
``Lib/test/test_concurrent_futures/`` that concern the process executor:
``executor.py`` (``ExecutorTest``), ``test_process_pool.py``,
``test_shutdown.py`` (``ExecutorShutdownTest``, ``ProcessPoolShutdownTest``),
``test_init.py``, ``test_wait.py`` and ``test_as_completed.py``. Every test
runs twice, through the ``backend`` fixture: on
:class:`concurrent.futures.ProcessPoolExecutor` (spawn context) and on
:class:`zpool.ProcessPoolExecutor`. Passing both is what "drop-in" means here.

Left out, with the reason:

* tests of the standard library's internals (``_processes``,
  ``_call_queue``, ``_executor_manager_thread``, ``_max_workers``, idle
  worker reuse, saturation, the Windows limit of 61 workers, the
  ``sysconf`` permission error, ``terminate_workers``/``kill_workers``):
  zpool has none of these; the shutdown tests check instead that the
  processes are gone (the autouse fixture of ``tests/conftest.py``);
* the fork and forkserver flavours: zpool ignores ``mp_context``;
* ``test_deadlock.py``'s crashes inside the standard library's own pickling
  threads: zpool serializes in the calling thread and raises there.

Changed, with the reason:

* ``test_killed_child`` and ``test_traceback_when_child_process_terminates_abruptly``:
  a worker's death fails its task with ``BrokenProcessPool`` on both; the
  standard library's pool is broken for good after it, zpool's replaces
  the engine and goes on (``zpool.EngineError`` is a ``BrokenProcessPool``);
  each back-end's expectation is checked.
* ``test_traceback``: the remote traceback is the exception's ``__cause__``
  on both, with the failing line in its ``tb``; its class is
  ``concurrent.futures.process._RemoteTraceback`` for one and
  ``multiprocessing.pool.RemoteTraceback`` for the other.
* ``test_failing_initializer``: polls (bounded) until ``submit`` raises,
  as CPython polls its executor's private ``_broken``.
* ``test_shutdown_gh_132969``: zpool only (the standard library here, 3.11,
  predates the fix).
* ``test_cancel_futures``: zpool cancels every call that has not started
  (the standard library has already handed a few to its workers), so the
  test first waits for one call to finish, then checks what CPython checks.
* ``test_map_timeout``: 1 s instead of 5 s, and sleeps of 3 s instead of 6.
* ``test_interpreter_shutdown`` and ``test_submit_after_interpreter_shutdown``:
  the scripts run with ``subprocess.run`` (with a timeout).
* Waits are bounded everywhere (``result(T)``).
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

import zpool

T = 60.0
REPO_ROOT = str(Path(__file__).resolve().parents[2])
BrokenProcessPool = concurrent.futures.process.BrokenProcessPool


# -- task functions (module level: both back-ends' workers import them) --------------------------


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


class MyObject:
    def my_method(self):
        pass


def make_dummy_object(_):
    return MyObject()


def raise_runtime_error():
    raise RuntimeError(123)  # the failing line


def sleep_and_return(seconds, value=None):
    time.sleep(seconds)
    return value


def mark_then_sleep(path, seconds):
    with open(path, "w"):
        pass
    time.sleep(seconds)
    return "ran"


def fail_after(seconds):
    time.sleep(seconds)
    raise ValueError("failed on purpose")


INITIALIZER_STATUS = "uninitialized"


def init(x):
    global INITIALIZER_STATUS
    INITIALIZER_STATUS = x


def get_init_status():
    return INITIALIZER_STATUS


def init_fail():
    time.sleep(0.1)
    raise ValueError("error in initializer")


# -- back-ends -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _tracker(mp_resource_tracker):
    """Spawned workers need multiprocessing's resource tracker: started before any test's process count."""


@pytest.fixture(params=["concurrent.futures", "zpool"])
def backend(request):
    """A factory of executors of one back-end; every executor made is shut down at the end."""
    made: list[Any] = []
    if request.param == "concurrent.futures":
        context = multiprocessing.get_context("spawn")

        def make(*args: Any, **kwargs: Any) -> Any:
            made.append(concurrent.futures.ProcessPoolExecutor(*args, mp_context=context, **kwargs))
            return made[-1]

    else:

        def make(*args: Any, **kwargs: Any) -> Any:
            made.append(zpool.ProcessPoolExecutor(*args, **kwargs))
            return made[-1]

    make.name = request.param  # type: ignore[attr-defined]
    yield make
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def executor(backend):
    return backend(2)


def is_zpool(backend) -> bool:
    return backend.name == "zpool"


# -- ExecutorTest (executor.py) -----------------------------------------------------------------------


def test_submit(executor):
    assert executor.submit(pow, 2, 8).result(T) == 256


def test_submit_keyword(executor):
    assert executor.submit(mul, 2, y=8).result(T) == 16
    assert executor.submit(capture, 1, self=2, fn=3).result(T) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)
    with pytest.raises(TypeError):
        executor.submit(arg=1)


def test_map(executor):
    expected = list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10))) == expected
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == expected


def test_map_exception(executor):
    results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(executor):
    got = []
    with pytest.raises(concurrent.futures.TimeoutError):
        for value in executor.map(time.sleep, [0, 0, 3], timeout=1):
            got.append(value)
    assert got == [None, None]


def test_shutdown_race_issue12456(executor):
    executor.map(str, [2] * 3)
    executor.shutdown()


def test_no_stale_references(executor):
    obj = MyObject()
    collected = threading.Event()
    ref = weakref.ref(obj, lambda _: collected.set())
    executor.submit(obj.my_method)  # the future is dropped at once
    del obj
    assert collected.wait(T), "the executor kept a reference to the submitted call's arguments"
    assert ref() is None


def test_max_workers_negative(backend):
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            backend(max_workers=number)


def test_free_reference(executor):
    for obj in executor.map(make_dummy_object, range(10)):
        ref = weakref.ref(obj)
        del obj
        assert ref() is None


# -- ProcessPoolExecutorTest (test_process_pool.py) --------------------------------------------------


def test_killed_child(backend):
    executor = backend(2)
    executor.submit(mul, 1, 1).result(T)  # the workers are up
    future = executor.submit(os._exit, 1)  # the worker running it dies
    with pytest.raises(BrokenProcessPool):
        future.result(T)
    if is_zpool(backend):
        assert executor.submit(pow, 2, 8).result(T) == 256  # the others carry on, the engine is replaced
    else:
        with pytest.raises(BrokenProcessPool):
            executor.submit(pow, 2, 8)


def test_map_chunksize(executor):
    expected = list(map(pow, range(40), range(40)))
    for chunksize in (6, 50, 40):
        assert list(executor.map(pow, range(40), range(40), chunksize=chunksize)) == expected
    with pytest.raises(ValueError):
        list(executor.map(pow, range(40), range(40), chunksize=-1))


def test_traceback(executor):
    future = executor.submit(raise_runtime_error)
    with pytest.raises(Exception) as info:
        future.result(T)
    exc = info.value
    assert type(exc) is RuntimeError and exc.args == (123,)
    assert "raise RuntimeError(123)  # the failing line" in exc.__cause__.tb


def test_traceback_when_child_process_terminates_abruptly(backend):
    executor = backend(1)
    future = executor.submit(os._exit, 99)
    with pytest.raises(BrokenProcessPool) as info:
        future.result(T)
    if is_zpool(backend):
        assert "exit code 99" in str(info.value)
    elif sys.version_info >= (3, 14):
        assert "exit code 99" in info.value.__cause__.tb  # (CPython names it since 3.14)


def test_max_tasks_per_child(backend):
    executor = backend(1, max_tasks_per_child=3)
    first = executor.submit(os.getpid).result(T)
    assert executor.submit(os.getpid).result(T) == first
    assert executor.submit(os.getpid).result(T) == first
    assert executor.submit(os.getpid).result(T) != first  # a new worker after three tasks


def test_max_tasks_per_child_is_checked(backend):
    with pytest.raises(ValueError):
        backend(1, max_tasks_per_child=0)
    if sys.version_info >= (3, 11) or is_zpool(backend):
        with pytest.raises(TypeError):
            backend(1, max_tasks_per_child=1.5)


def test_initializer_must_be_callable(backend):
    with pytest.raises(TypeError, match="initializer must be a callable"):
        backend(1, initializer=42)


# -- ExecutorShutdownTest, ProcessPoolShutdownTest (test_shutdown.py) ----------------------------------


def test_run_after_shutdown(executor):
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(pow, 2, 5)


def test_hang_issue12364(executor):
    futures = [executor.submit(time.sleep, 0.01) for _ in range(50)]
    executor.shutdown()
    for future in futures:
        future.result(T)


def test_cancel_futures(executor):
    futures = [executor.submit(time.sleep, 0.1) for _ in range(50)]
    futures[0].result(T)  # (see the module's docstring)
    executor.shutdown(cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    assert len(cancelled) > 20
    others = [f for f in futures if not f.cancelled()]
    assert others
    for future in others:
        assert future.done()
        assert future.exception() is None


def test_hang_gh94440(backend):
    # shutdown(wait=True) right after a call was submitted and cancelled returns.
    executor = backend(1)
    executor.submit(int).result(T)
    executor.submit(int).cancel()
    done = threading.Event()
    threading.Thread(target=lambda: (executor.shutdown(wait=True), done.set()), daemon=True).start()
    assert done.wait(T), "shutdown hung"


def test_context_manager_shutdown(backend):
    with backend(2) as executor:
        assert list(executor.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        executor.submit(abs, 1)


def test_del_shutdown(backend):
    executor = backend(2)
    results = executor.map(abs, range(-5, 5))
    del executor  # (the fixture still holds it, and shuts it down at the end)
    assert list(results) == [abs(v) for v in range(-5, 5)]


def test_shutdown_no_wait(backend):
    executor = backend(2)
    results = executor.map(abs, range(-5, 5))
    executor.shutdown(wait=False)
    assert list(results) == [abs(v) for v in range(-5, 5)]


def test_shutdown_no_wait_with_a_failed_call():
    # gh-132969: after a call failed, shutdown(wait=False) neither raises nor hangs. zpool only: the
    # standard library of Pythons before the fix (3.11 here) has the bug.
    executor = zpool.ProcessPoolExecutor(2, max_tasks_per_child=1)
    try:
        good, bad = executor.submit(sleep_and_return, 0.1, 1), executor.submit(fail_after, 0.2)
        assert good.result(T) == 1
        with pytest.raises(ValueError, match="failed on purpose"):
            bad.result(T)
        executor.shutdown(wait=False)
    finally:
        executor.shutdown(wait=True)


SCRIPT_TEMPLATE = """\
import sys
sys.path.insert(0, {root!r})
from tests.integration.test_stdlib_executor import sleep_and_return
{make}
if __name__ == "__main__":
    {body}
"""

MAKERS = {
    "concurrent.futures": (
        "import multiprocessing\nfrom concurrent.futures import ProcessPoolExecutor\n"
        "def make(n):\n    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context('spawn'))"
    ),
    "zpool": "from zpool import ProcessPoolExecutor\ndef make(n):\n    return ProcessPoolExecutor(n)",
}


def run_script(backend, body: str) -> subprocess.CompletedProcess:
    body = textwrap.indent(textwrap.dedent(body), "    ").lstrip()
    script = SCRIPT_TEMPLATE.format(root=REPO_ROOT, make=MAKERS[backend.name], body=body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=T)


def test_interpreter_shutdown(backend):
    # At the interpreter's end, work submitted and never waited for still runs.
    done = run_script(
        backend,
        """
        t = make(2)
        f = t.submit(sleep_and_return, 0.5, "apple")
        f.add_done_callback(lambda f: print(f.result(), flush=True))
        """,
    )
    assert done.stderr == ""
    assert done.stdout.strip() == "apple"


def test_submit_after_interpreter_shutdown(backend):
    done = run_script(
        backend,
        """
        import atexit
        t = make(2)
        t.submit(id, 42).result()
        @atexit.register
        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError as exc:
                print("runtime-error:", exc)
        """,
    )
    assert "runtime-error: cannot schedule new futures" in done.stdout, done.stderr


# -- test_init.py ----------------------------------------------------------------------------------------


def test_initializer(backend):
    executor = backend(2, initializer=init, initargs=("initialized",))
    futures = [executor.submit(get_init_status) for _ in range(2)]
    assert [f.result(T) for f in futures] == ["initialized", "initialized"]


def test_failing_initializer_breaks_the_executor(backend):
    executor = backend(2, initializer=init_fail)
    try:
        future = executor.submit(get_init_status)
    except concurrent.futures.BrokenExecutor:
        pass  # broken already
    else:
        with pytest.raises(concurrent.futures.BrokenExecutor):
            future.result(T)
    # At some point the executor is broken, and from then on submit() fails.
    deadline = time.monotonic() + T
    while True:
        try:
            executor.submit(get_init_status)
        except concurrent.futures.BrokenExecutor:
            break
        assert time.monotonic() < deadline, "the executor never broke"
        time.sleep(0.05)
    with pytest.raises(concurrent.futures.BrokenExecutor):
        executor.submit(get_init_status)


# -- test_wait.py, test_as_completed.py ---------------------------------------------------------------------


def test_wait_first_completed(executor):
    slow = executor.submit(sleep_and_return, 1.5, "slow")
    quick = executor.submit(mul, 21, 2)
    done, not_done = concurrent.futures.wait([slow, quick], timeout=T, return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {quick} and not_done == {slow}


def test_wait_first_exception(executor):
    failing = executor.submit(fail_after, 0.1)
    slow = executor.submit(sleep_and_return, 1.5)
    done, not_done = concurrent.futures.wait([failing, slow], timeout=T, return_when=concurrent.futures.FIRST_EXCEPTION)
    assert done == {failing} and not_done == {slow}


def test_wait_all_completed(executor):
    futures = [executor.submit(mul, i, 2) for i in range(4)]
    done, not_done = concurrent.futures.wait(futures, timeout=T, return_when=concurrent.futures.ALL_COMPLETED)
    assert done == set(futures) and not not_done


def test_wait_timeout(executor):
    quick = executor.submit(mul, 2, 3)
    quick.result(T)
    slow = executor.submit(sleep_and_return, 3)
    done, not_done = concurrent.futures.wait([quick, slow], timeout=0.5)
    assert done == {quick} and not_done == {slow}


def test_wait_sees_a_cancelled_future(executor):
    # Five blockers on two workers: the standard library hands up to three calls to its workers ahead (its
    # call queue), so the call after them is still cancellable there too.
    blockers = [executor.submit(sleep_and_return, 0.5) for _ in range(5)]
    queued = executor.submit(mul, 1, 2)
    assert queued.cancel() is True
    done, not_done = concurrent.futures.wait([queued], timeout=T)
    assert done == {queued} and not not_done
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(T)
    assert [b.result(T) for b in blockers] == [None] * 5


def test_cancel_of_a_running_call_is_refused(executor, tmp_path):
    marker = tmp_path / "started"
    running = executor.submit(mark_then_sleep, str(marker), 1.0)
    deadline = time.monotonic() + T
    while not marker.exists():
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.01)
    assert running.cancel() is False
    assert not running.cancelled()
    assert running.result(T) == "ran"


def test_as_completed(executor):
    futures = {executor.submit(sleep_and_return, d, d) for d in (0.3, 0.0, 0.1)}
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=T)) == [0.0, 0.1, 0.3]


def test_as_completed_timeout(executor):
    # The quick one has finished before the slow one is sent: on a loaded machine a fresh
    # ProcessPoolExecutor took longer than the 0.5 s budget just to start its workers.
    quick = executor.submit(mul, 2, 2)
    assert quick.result(timeout=T) == 4
    slow = executor.submit(sleep_and_return, 3)
    seen = []
    with pytest.raises(concurrent.futures.TimeoutError):
        for future in concurrent.futures.as_completed([slow, quick], timeout=0.5):
            seen.append(future)
    assert seen == [quick]
