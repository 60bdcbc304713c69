"""The Pool facade on a real hidden cluster: apply, map, results, errors, lifecycle."""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import gc
import multiprocessing
import threading
import tracemalloc

import numpy as np
import pytest

import zpool
from tests import _tasks
from tests._wait import wait_until
from zpool.error import RemoteTraceback

T = 60  # seconds: bound for every wait in these tests


def test_apply_runs_remotely(pool):
    assert pool.apply(_tasks.square, (7,)) == 49
    assert pool.apply(_tasks.add, (1,), {"b": 2}) == 3
    import os

    assert pool.apply(_tasks.getpid) != os.getpid()


def test_apply_async_many(pool):
    results = [pool.apply_async(_tasks.square, (i,)) for i in range(2000)]
    assert [r.get(T) for r in results] == [i * i for i in range(2000)]


def test_lambda_and_closure(pool):
    offset = 10

    def closure(x):
        return x + offset

    assert pool.apply(lambda x: x * 3, (5,)) == 15
    assert pool.apply(closure, (1,)) == 11
    assert pool.map(lambda x: -x, range(5)) == [0, -1, -2, -3, -4]


def test_map_matches_builtin(pool):
    data = list(range(1000))
    assert pool.map(_tasks.square, data) == [x * x for x in data]
    assert pool.map(_tasks.square, data, chunksize=7) == [x * x for x in data]
    assert pool.map(_tasks.square, iter(data)) == [x * x for x in data]
    assert pool.map(_tasks.square, []) == []


def test_map_async_chunks_are_tasks(pool):
    ar = pool.map_async(_tasks.square, range(100), chunksize=10)
    assert ar.get(T) == [x * x for x in range(100)]
    assert len(ar.msg_ids) == 10
    assert len(ar.metadata) == 10
    assert {md.status for md in ar.metadata} == {"ok"}


def test_map_chunks_by_the_measured_cost_of_its_items(fresh_pool):
    pool = fresh_pool(2)
    first = pool.map_async(_tasks.square, range(64))
    assert first.get(T) == [x * x for x in range(64)]
    assert len(first.msg_ids) == 8  # unknown cost: the standard library's four chunks per engine
    cheap = pool.map_async(_tasks.square, range(64))
    assert cheap.get(T) == [x * x for x in range(64)]
    assert len(cheap.msg_ids) <= 2  # cheap items, measured: one chunk in all, or one per engine
    medium = [0.0005] * 8
    assert pool.map(_tasks.sleep_echo, medium) == medium
    measured = pool.map_async(_tasks.sleep_echo, medium)
    assert measured.get(T) == medium
    assert 2 <= len(measured.msg_ids) < 8  # about 4 ms of work: chunks of about 2 ms, at least one per engine
    slow = [0.004] * 16
    assert pool.map(_tasks.sleep_echo, slow) == slow  # 4 ms items: measured next time
    again = pool.map_async(_tasks.sleep_echo, slow)
    assert again.get(T) == slow
    assert len(again.msg_ids) == 8  # 64 ms of work: four chunks per engine again, for balance
    assert len(pool.map_async(_tasks.square, range(64), chunksize=4).msg_ids) == 16  # a chunksize given is kept


def test_with_maxtasksperchild_maps_keep_the_standard_chunks(fresh_pool):
    pool = fresh_pool(2, maxtasksperchild=100)
    for _ in range(2):
        ar = pool.map_async(_tasks.square, range(64))
        assert ar.get(T) == [x * x for x in range(64)]
        assert len(ar.msg_ids) == 8  # chunks count as tasks there, as in the standard library


def test_map_rejects_bad_chunksize(pool):
    with pytest.raises(ValueError, match="Chunksize"):
        pool.map(_tasks.square, range(3), chunksize=0)


def test_get_timeout_raises_both_timeout_errors(pool):
    ar = pool.apply_async(_tasks.sleep_then, (1.0, "late"))
    with pytest.raises(multiprocessing.TimeoutError):
        ar.get(0.01)
    with pytest.raises(builtins.TimeoutError):
        ar.get(0.01)
    with pytest.raises(zpool.TimeoutError, match="not ready after 0.01 s"):
        ar.get(0.01)
    assert not ar.ready()
    with pytest.raises(ValueError, match="not ready"):
        ar.successful()
    assert ar.get(T) == "late"
    assert ar.ready() and ar.successful()


def test_wait_returns_readiness(pool):
    ar = pool.apply_async(_tasks.sleep_then, (0.5, 1))
    assert ar.wait(0.01) is False
    assert ar.wait(T) is True


def test_asyncresult_is_future_and_awaitable(pool):
    ar = pool.apply_async(_tasks.square, (4,))
    assert isinstance(ar, concurrent.futures.Future)
    assert ar.result(T) == 16

    async def main():
        return await pool.apply_async(_tasks.square, (5,))

    assert asyncio.run(main()) == 25


def test_async_for_over_imap_keeps_the_event_loop_running(pool):
    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        # Slow items: the loop must go on ticking while the async for waits for them.
        got = [x async for x in pool.imap(_tasks.sleep_then, [0.2] * 3, chunksize=1)]
        in_order = [x async for x in pool.imap(_tasks.square, range(50))]
        unordered = sorted([x async for x in pool.imap_unordered(_tasks.square, range(50))])
        stop.set()
        await ticking
        return got, in_order, unordered, ticks

    got, in_order, unordered, ticks = asyncio.run(asyncio.wait_for(main(), T))
    assert got == [None, None, None]
    assert in_order == unordered == [x * x for x in range(50)]
    assert ticks >= 10  # about 0.3 s of waiting at least, at 10 ms a tick


def test_async_for_over_imap_raises_at_the_failed_item_and_goes_on(pool):
    async def main():
        seen = []
        iterator = pool.imap(_tasks.raise_value_error_if, [1, 0, 1], chunksize=1).__aiter__()
        seen.append(await iterator.__anext__())
        with pytest.raises(ValueError):
            await iterator.__anext__()
        seen.append(await iterator.__anext__())
        with pytest.raises(StopAsyncIteration):
            await iterator.__anext__()
        return seen

    assert asyncio.run(asyncio.wait_for(main(), T)) == [1, 1]


def test_a_cancelled_async_for_loses_no_result(pool):
    async def main():
        iterator = pool.imap(_tasks.sleep_echo, [0.5, 0.5], chunksize=1)
        waiting = asyncio.ensure_future(iterator.__anext__())
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return [x async for x in iterator]

    assert asyncio.run(asyncio.wait_for(main(), T)) == [0.5, 0.5]


def test_metadata(pool):
    ar = pool.apply_async(_tasks.square, (3,))
    ar.get(T)
    md = ar.metadata
    assert md["engine_id"] == md.engine_id
    assert md.engine_id in (0, 1) or isinstance(md.engine_id, int)
    assert md.status == "ok"
    assert md.submitted <= md.received
    assert md.started <= md.completed
    assert ar.msg_ids and isinstance(ar.msg_ids[0], str)
    assert ar.progress == 1 and ar.elapsed >= 0


def test_callbacks_run_in_caller_process(pool):
    got = []
    errors = []
    done = threading.Event()
    main = threading.get_ident()

    def on_result(value):
        got.append((value, threading.get_ident() != main))
        done.set()

    pool.apply_async(_tasks.square, (6,), callback=on_result)
    assert done.wait(T)
    assert got == [(36, True)]
    done.clear()
    pool.apply_async(_tasks.raise_value_error, ("bad",), error_callback=lambda e: (errors.append(e), done.set()))
    assert done.wait(T)
    assert isinstance(errors[0], ValueError)
    done.clear()
    pool.map_async(_tasks.square, range(4), callback=lambda v: (got.append(v), done.set()))
    assert done.wait(T)
    assert got[-1] == [0, 1, 4, 9]


def test_remote_exception_same_type_with_traceback(pool):
    with pytest.raises(ValueError, match="^boom$") as info:
        pool.apply(_tasks.raise_value_error, ("boom",))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "_tasks.py" in str(cause) and "line" in str(cause)
    assert "raise_value_error" in str(cause)
    assert "Traceback from engine" in str(cause)
    with pytest.raises(_tasks.CustomError, match="custom"):
        pool.apply(_tasks.raise_custom, ("custom",))


def test_map_raises_first_failure(pool):
    with pytest.raises(ZeroDivisionError):
        pool.map(lambda x: 1 / x, [1, 2, 0, 4])


def test_unrebuildable_exception_becomes_remote_error(pool):
    with pytest.raises(zpool.RemoteError) as info:
        pool.apply(_tasks.raise_unpicklable, ("held a lock",))
    err = info.value
    assert err.ename == "UnpicklableError"
    assert err.evalue == "held a lock"
    assert "raise_unpicklable" in err.traceback
    assert "UnpicklableError: held a lock" in str(err)


def test_unserializable_argument_fails_at_submit(pool):
    lock = threading.Lock()
    with pytest.raises(zpool.SerializationError, match=r"argument 1 of add\(\).*lock") as info:
        pool.apply_async(_tasks.add, (1, lock))
    assert isinstance(info.value, __import__("pickle").PicklingError)
    with pytest.raises(zpool.SerializationError, match="keyword argument 'b'"):
        pool.apply_async(_tasks.add, (1,), {"b": lock})
    with pytest.raises(zpool.SerializationError, match="item of the iterable given to map"):
        pool.map(_tasks.identity, [1, lock])
    assert pool.apply(_tasks.square, (2,)) == 4


def test_unserializable_result_reports_and_engine_survives(pool):
    pids = set(pool.queue_status()["engine_pids"].values())
    with pytest.raises(zpool.SerializationError, match="cannot be sent back"):
        pool.apply(_tasks.return_lock)
    assert pool.apply(_tasks.square, (3,)) == 9
    assert set(pool.queue_status()["engine_pids"].values()) == pids


@pytest.mark.parametrize("size, via", [(1 << 15, "frame"), (1 << 16, "frame"), (1 << 19, "shm"), (4_000_000, "shm")])
def test_numpy_argument_and_result_zero_copy_read_only(pool, size, via):
    # 256 and 512 KiB as frames; 4 MiB and 32 MB through shared memory (from 1 MiB on)
    big = np.arange(size, dtype=np.float64)
    tracemalloc.start()
    try:
        out, engine_saw, engine_writeable = pool.apply(_tasks.frame_address_proof, (big,))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # On the engine: the argument is a read-only view on the received frame or mapped segment.
    assert engine_saw == via
    assert engine_writeable is False
    # Here: the result is a read-only view on the reply frame or segment...
    assert _tasks.received_via(out) == via
    assert not out.flags.writeable
    with pytest.raises(ValueError):
        out[0] = 1.0
    np.testing.assert_array_equal(out, big)
    # ...and neither sending nor receiving made a Python-side copy of the 32 MB
    # (numpy and pickle allocations are traced; ZeroMQ's own buffers are not).
    assert peak < (64 << 10) + big.nbytes // 8, f"peak traced allocation {peak} bytes suggests a copy"


def test_bytes_memoryview_bytearray_round_trip(pool):
    payload = bytes(range(256)) * 1024
    assert pool.apply(_tasks.identity, (payload,)) == payload
    assert pool.apply(_tasks.identity, (bytearray(payload),)) == bytearray(payload)
    view = pool.apply(_tasks.identity, (memoryview(payload),))
    assert isinstance(view, memoryview) and view.readonly and view.tobytes() == payload


def test_non_callable_rejected(pool):
    with pytest.raises(TypeError, match="callable"):
        pool.apply_async(42)


@pytest.mark.parametrize("bad", [0, -1])
def test_processes_validated(bad):
    with pytest.raises(ValueError, match="at least 1"):
        zpool.Pool(bad)


def test_scheme_and_hwm_validated():
    with pytest.raises(ValueError, match="unknown scheme 'fastest'.*leastload"):
        zpool.Pool(1, scheme="fastest")
    with pytest.raises(ValueError, match="hwm"):
        zpool.Pool(1, hwm=-2)


def test_close_join_finishes_work(fresh_pool):
    p = fresh_pool(2)
    results = [p.apply_async(_tasks.sleep_then, (0.05, i)) for i in range(6)]
    with pytest.raises(ValueError, match="still running"):
        p.join()
    p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply_async(_tasks.square, (1,))
    p.join()
    assert [r.get(0) for r in results] == list(range(6))


def test_terminate_fails_pending_and_stops(fresh_pool):
    p = fresh_pool(1)
    pids = p._cluster.pids()
    ar = p.apply_async(_tasks.sleep_then, (30, None))
    p.terminate()
    with pytest.raises(zpool.TaskAborted, match="terminated"):
        ar.get(T)
    with pytest.raises(zpool.PoolClosedError):
        p.apply(_tasks.square, (1,))
    import psutil

    _, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=10)
    assert not alive


def test_context_manager_terminates():
    with zpool.Pool(1) as p:
        assert p.apply(_tasks.square, (3,)) == 9
    with pytest.raises(ValueError):
        p.apply(_tasks.square, (1,))


def test_exception_inside_with_block_still_cleans_up():
    with pytest.raises(KeyError):
        with zpool.Pool(1) as p:
            p.apply(_tasks.square, (1,))
            raise KeyError("user bug")


def test_garbage_collected_running_pool_warns_and_stops():
    p = zpool.Pool(1)
    p.apply(_tasks.square, (2,))
    with pytest.warns(ResourceWarning, match="unclosed running zpool.Pool"):
        del p
        gc.collect()


def test_pool_cannot_be_pickled(pool):
    import pickle

    with pytest.raises(NotImplementedError, match="cannot be passed between processes"):
        pickle.dumps(pool)


def test_map_over_any_iterable(pool):
    assert pool.map(str, {1: "a", 2: "b"}) == ["1", "2"]
    assert sorted(pool.map(_tasks.square, {3, 4})) == [9, 16]
    assert pool.map(_tasks.square, (x for x in range(5))) == [0, 1, 4, 9, 16]
    assert pool.map(len, "ab") == [1, 1]


def test_fast_reply_not_held_behind_slow_task(fresh_pool):
    p = fresh_pool(1)
    for _ in range(50):  # tiny tasks: the engine learns to hold replies for company
        p.apply(_tasks.square, (1,))
    fast = p.apply_async(_tasks.square, (2,))
    slow = p.apply_async(_tasks.sleep_then, (3.0, "slow"))
    assert fast.get(T) == 4
    # The fast task's reply is sent while the slow one runs, not after it.
    assert not slow.ready()
    assert (fast.metadata.received - fast.metadata.completed).total_seconds() < 1.0
    assert slow.get(T) == "slow"


def test_map_metadata_stays_a_list_after_failure(pool):
    ar = pool.map_async(_tasks.raise_value_error, ["a", "b", "c"], chunksize=1)
    with pytest.raises(ValueError):
        ar.get(T)
    wait_until(lambda: ar.progress >= 3, T, "every chunk's reply accounted for")
    assert ar.progress == 3  # every chunk's reply was still accounted for
    assert isinstance(ar.metadata, list) and len(ar.metadata) == 3
    assert [md.status for md in ar.metadata] == ["error"] * 3


def test_works_with_concurrent_futures_helpers(pool):
    results = [pool.apply_async(_tasks.sleep_then, (0.05 * (i % 3), i)) for i in range(9)]
    done, not_done = concurrent.futures.wait(results, timeout=T)
    assert not not_done and len(done) == 9
    finished = [f.result() for f in concurrent.futures.as_completed(results, timeout=T)]
    assert sorted(finished) == list(range(9))
    first = pool.apply_async(_tasks.sleep_then, (0.01, "first"))
    slow = pool.apply_async(_tasks.sleep_then, (2.0, "slow"))
    done, _ = concurrent.futures.wait([first, slow], timeout=T, return_when=concurrent.futures.FIRST_COMPLETED)
    assert first in done
    called = threading.Event()
    slow.add_done_callback(lambda f: called.set())
    assert slow.get(T) == "slow"
    assert called.wait(T)


def test_result_that_cannot_be_unpickled_here_fails_only_its_call(pool):
    with pytest.raises(zpool.SerializationError, match="could not be deserialized here: SystemExit") as info:
        pool.apply(_tasks.return_exploding)
    assert isinstance(info.value.__cause__, SystemExit)
    assert pool.apply(_tasks.square, (6,)) == 36  # the I/O thread lives on
