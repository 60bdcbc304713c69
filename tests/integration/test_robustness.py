"""Awkward but legal uses: threads, callbacks, forks, and what tasks leave behind."""

from __future__ import annotations

import concurrent.futures
import gc
import os
import threading
import warnings

import psutil
import pytest

import zpool
from tests import _tasks
from tests._wait import wait_until

T = 60


def test_processes_started_by_tasks_end_with_the_pool():
    pool = zpool.Pool(1)
    try:
        pid = pool.apply(_tasks.start_grandchild)
        assert psutil.pid_exists(pid)
        child = psutil.Process(pid)
    finally:
        pool.terminate()
        pool.join()
    child.wait(10)  # raises psutil.TimeoutExpired if it survived


def test_done_callback_may_submit_and_wait(pool):
    seen = []
    done = threading.Event()

    def follow_up(fut):
        seen.append(pool.apply(_tasks.square, (fut.result(),)))
        done.set()

    pool.apply_async(_tasks.square, (3,)).add_done_callback(follow_up)
    assert done.wait(T)
    assert seen == [81]
    assert pool.apply(_tasks.square, (2,)) == 4  # results still flow


def test_pending_result_keeps_its_pool_alive():
    with pytest.warns(ResourceWarning):
        ar = zpool.Pool(1).apply_async(_tasks.sleep_then, (0.2, "kept"))
        gc.collect()
        assert ar.get(T) == "kept"  # the stdlib's ApplyResult does the same
        gc.collect()


def test_terminate_while_other_threads_submit_settles_everything(fresh_pool):
    pool = fresh_pool(2)
    results: list = []
    refused = []
    stop = threading.Event()

    def submitter():
        while not stop.is_set():
            try:
                results.append(pool.apply_async(_tasks.square, (2,)))
            except ValueError:  # PoolClosedError: the pool went away under us
                refused.append(1)
                return

    threads = [threading.Thread(target=submitter) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: len(results) >= 10, T, "the submitters submitting")
    pool.terminate()
    stop.set()
    for t in threads:
        t.join(T)
    assert refused, "no submitter saw the pool close"
    for ar in results:
        assert ar.wait(T), "a result submitted around terminate() never settled"
        if not ar.successful():
            assert isinstance(ar.exception(), (zpool.TaskAborted, zpool.PoolClosedError))


def test_callback_raising_system_exit_does_not_stop_later_callbacks(pool, capfd):
    got = threading.Event()

    def bad(_):
        raise SystemExit("callback bug")

    pool.apply_async(_tasks.square, (1,), callback=bad).get(T)
    pool.apply_async(_tasks.square, (2,), callback=lambda v: got.set()).get(T)
    assert got.wait(T)
    assert "callback bug" in capfd.readouterr().err


def test_result_whose_pickling_raises_base_exception(pool):
    pids = set(pool.queue_status()["engine_pids"].values())
    with pytest.raises(zpool.SerializationError, match="raised while pickling"):
        pool.apply(_tasks.return_unpicklable_loudly)
    assert pool.apply(_tasks.square, (5,)) == 25
    assert set(pool.queue_status()["engine_pids"].values()) == pids  # no engine died


def test_forked_child_gets_a_clear_error(pool):
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns about forking a threaded process: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report what using the parent's pool does, then leave at once
        try:
            pool.apply_async(_tasks.square, (1,))
            message = b"no error"
        except zpool.PoolClosedError as exc:
            message = str(exc).encode()
        except BaseException as exc:
            message = repr(exc).encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    message = os.read(read, 4096).decode()
    os.close(read)
    assert "a forked child cannot use it" in message
    assert pool.apply(_tasks.square, (3,)) == 9


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"hwm": True}, ValueError, "hwm"),
        ({"heartbeat_interval": float("nan")}, ValueError, "heartbeat_interval"),
        ({"heartbeat_interval": "1"}, TypeError, "heartbeat_interval"),
        ({"heartbeat_misses": 2.5}, ValueError, "heartbeat_misses"),
        ({"heartbeat_misses": True}, ValueError, "heartbeat_misses"),
        ({"processes": 2.0}, TypeError, "processes"),
    ],
)
def test_constructor_arguments_validated_in_the_caller(kwargs, error, text):
    with pytest.raises(error, match=text):
        zpool.Pool(**kwargs)


def test_call_arguments_validated_like_the_stdlib(pool):
    with pytest.raises(TypeError, match="chunksize must be an int"):
        pool.map(_tasks.square, [1], chunksize=True)
    assert pool.map(_tasks.square, [], chunksize=0) == []
    with pytest.raises(TypeError, match="kwds must be a mapping"):
        pool.apply_async(_tasks.add, (1,), [("b", 2)])


def test_many_threads_share_one_pool(pool):
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(pool.map, _tasks.square, range(i, i + 50)) for i in range(40)]
        for i, f in enumerate(futures):
            assert f.result(T) == [x * x for x in range(i, i + 50)]
