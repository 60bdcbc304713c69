"""zpool-specific parts of multiprocessing parity: initializer, maxtasksperchild, starmap,
lazy imap with bounded read-ahead, callbacks and exceptions as the stdlib has them.

The ported CPython suite (``test_stdlib_pool.py``) runs the stdlib's own checks
against both back-ends; this module covers what it does not: the cases where
zpool goes further than the stdlib (an endless ``imap`` input, a dead engine
mid-``imap``, an initializer that fails) and the pieces of the contract the
stdlib suite never exercises.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
import time
import tracemalloc

import pytest

import zpool
from tests import _tasks
from tests._wait import wait_running, wait_stable, wait_until
from zpool._imap import IMAP_CHUNK_MAX

T = 60


# -- Pool(...) signature ----------------------------------------------------------


def test_full_positional_signature(fresh_pool):
    pool = fresh_pool(1, initializer=None, initargs=(), maxtasksperchild=None, context=None)
    assert pool.apply(_tasks.square, (3,)) == 9
    with zpool.Pool(1, None, (), None, multiprocessing.get_context("spawn")) as p:
        assert p.map(_tasks.square, [1, 2]) == [1, 4]


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"initializer": 5}, TypeError, "initializer must be a callable"),
        ({"maxtasksperchild": 0}, ValueError, "maxtasksperchild must be a positive int or None"),
        ({"maxtasksperchild": True}, ValueError, "maxtasksperchild"),
        ({"context": "spawn"}, TypeError, r"multiprocessing context \(multiprocessing.get_context\(\)\)"),
    ],
)
def test_bad_arguments_raise_before_anything_starts(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        zpool.Pool(1, **kwargs)


def test_unserializable_initargs_raise_in_the_caller():
    with pytest.raises(zpool.SerializationError, match=r"initargs\[0\] of init_global\(\)") as info:
        zpool.Pool(1, initializer=_tasks.init_global, initargs=(threading.Lock(),))
    assert isinstance(info.value, TypeError)  # what pickle itself raised, as multiprocessing would


def test_default_processes_is_the_usable_cpu_count():
    with zpool.Pool() as pool:
        expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        assert len(pool.wait_for_engines(timeout=T)) == expected


# -- initializer ---------------------------------------------------------------------


def test_initializer_runs_in_every_engine_before_tasks(fresh_pool):
    pool = fresh_pool(2, initializer=_tasks.init_global, initargs=("ready",))
    seen = pool.map(_tasks.read_initialized, range(40), chunksize=1)
    assert {value for value, _ in seen} == {"ready"}
    pids = set(pool.queue_status()["engine_pids"].values())
    assert {pid for _, pid in seen} <= pids


def test_initializer_runs_in_replacement_engines(fresh_pool):
    pool = fresh_pool(1, initializer=_tasks.init_global, initargs=("again",))
    value, pid = pool.apply(_tasks.read_initialized)
    assert value == "again"
    os.kill(pid, signal.SIGKILL)

    def answer():
        try:
            return pool.apply_async(_tasks.read_initialized).get(T)
        except zpool.EngineError:  # the task met the dying engine
            return None

    value2, pid2 = wait_until(answer, T, "an engine answered after the kill")
    assert value2 == "again" and pid2 != pid


def test_failing_initializer_breaks_the_pool_with_its_traceback(fresh_pool):
    pool = zpool.Pool(1, initializer=_tasks.init_fails, initargs=("no config file",))
    try:
        with pytest.raises(zpool.BrokenPoolError, match="initializer raised RuntimeError: no config file") as info:
            pool.apply_async(_tasks.square, (2,)).get(T)
        assert "_tasks.py" in str(info.value) and "init_fails" in str(info.value)
        with pytest.raises(zpool.BrokenPoolError):
            pool.map(_tasks.square, range(5))
    finally:
        pool.terminate()
        pool.join()


# -- maxtasksperchild -----------------------------------------------------------------


@pytest.mark.timeout(T)
@pytest.mark.parametrize("processes", [1, 2, 3])
def test_join_after_close_returns_once_every_engine_ran_the_initializer(tmp_path, processes):
    """As the stdlib's join, whose workers have all started: initializers with side effects all ran."""
    pool = zpool.Pool(processes, initializer=_tasks.write_pid_file, initargs=(str(tmp_path),))
    pool.close()
    pool.join()
    assert len(os.listdir(tmp_path)) == processes


def test_maxtasksperchild_replaces_engines_and_loses_nothing(fresh_pool):
    pool = fresh_pool(2, maxtasksperchild=3)
    first = set(pool.queue_status()["engine_pids"].values())
    results = [pool.apply_async(_tasks.getpid) for _ in range(30)]
    pids = [r.get(T) for r in results]
    counts = {pid: pids.count(pid) for pid in set(pids)}
    assert max(counts.values()) <= 3
    assert len(counts) >= 10
    assert set(pids) - first
    # map chunks count as tasks too, and the initializer-free pool keeps its size.
    assert pool.map(_tasks.square, range(100), chunksize=5) == [x * x for x in range(100)]
    assert len(pool.wait_for_engines(2, timeout=T)) == 2


def test_maxtasksperchild_with_initializer(fresh_pool):
    pool = fresh_pool(1, maxtasksperchild=2, initializer=_tasks.init_global, initargs=("fresh",))
    seen = [pool.apply_async(_tasks.read_initialized).get(T) for _ in range(6)]
    assert {value for value, _ in seen} == {"fresh"}
    assert len({pid for _, pid in seen}) == 3


# -- starmap and callbacks ---------------------------------------------------------------


def test_starmap_and_starmap_async(pool):
    pairs = list(zip(range(50), range(50, 0, -1)))
    expected = list(itertools.starmap(_tasks.mul, pairs))
    assert pool.starmap(_tasks.mul, pairs) == expected
    assert pool.starmap(_tasks.mul, iter(pairs), chunksize=7) == expected
    got = []
    ar = pool.starmap_async(_tasks.mul, pairs, callback=got.append)
    assert ar.get(T) == expected
    assert got == [expected]  # ran once, with the whole list, before get() returned
    assert pool.starmap(_tasks.mul, []) == []


def test_callback_has_run_when_the_result_is_ready(pool):
    for _ in range(20):
        box = []
        ar = pool.apply_async(_tasks.square, (4,), callback=box.append)
        ar.wait(T)
        assert box == [16]
        errors = []
        ar = pool.apply_async(_tasks.raise_value_error, ("x",), error_callback=errors.append)
        with pytest.raises(ValueError):
            ar.get(T)
        assert len(errors) == 1 and isinstance(errors[0], ValueError)


def test_callbacks_run_once_in_one_thread_of_this_process(pool):
    threads = []
    ars = [
        pool.apply_async(_tasks.square, (i,), callback=lambda _: threads.append(threading.current_thread()))
        for i in range(50)
    ]
    for ar in ars:
        ar.wait(T)
    assert len(threads) == 50 and len(set(threads)) == 1
    assert threads[0] is not threading.current_thread()


def test_non_callable_callback_is_refused(pool):
    with pytest.raises(TypeError, match="callback must be callable"):
        pool.apply_async(_tasks.square, (1,), callback=5)
    with pytest.raises(TypeError, match="error_callback must be callable"):
        pool.map_async(_tasks.square, [1], error_callback="log")


# -- exceptions -----------------------------------------------------------------------------


def test_unpicklable_result_is_maybe_encoding_error_and_keeps_the_engine(fresh_pool):
    pool = fresh_pool(1)
    pid = pool.apply(_tasks.getpid)
    for _ in range(5):
        errors = []
        ar = pool.apply_async(_tasks.return_generator, error_callback=errors.append)
        with pytest.raises(multiprocessing.pool.MaybeEncodingError) as info:
            ar.get(T)
        exc = info.value
        assert isinstance(exc, zpool.ResultEncodingError) and errors == [exc]
        assert "generator" in exc.exc and "generator object" in exc.value
        assert "return_generator() cannot be sent back" in str(exc)
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):  # one bad item fails its map
        pool.map(_tasks.generator_if_zero, [1, 0, 2])
    assert pool.apply(_tasks.getpid) == pid


def test_unpicklable_argument_raises_the_type_pickle_raised(pool):
    with pytest.raises(TypeError, match="cannot pickle") as info:
        pool.apply(_tasks.identity, (threading.Lock(),))
    assert isinstance(info.value, zpool.SerializationError)
    with pytest.raises(TypeError, match="an item of the iterable given to map"):
        pool.map(_tasks.identity, [1, threading.Lock()])


def test_remote_traceback_is_the_stdlib_class(pool):
    with pytest.raises(ValueError, match="^boom$") as info:
        pool.apply(_tasks.raise_value_error, ("boom",))
    cause = info.value.__cause__
    assert type(cause) is multiprocessing.pool.RemoteTraceback
    assert "raise_value_error" in cause.tb and str(cause) == cause.tb


# -- imap ----------------------------------------------------------------------------------------


def _counting(counter):
    for i in itertools.count():
        counter[0] = i + 1
        yield i


def test_imap_reads_an_endless_input_lazily_in_bounded_memory(pool):
    consumed = [0]
    it = pool.imap(_tasks.square, _counting(consumed), chunksize=4, buffersize=8)
    tracemalloc.start()
    try:
        for n, value in enumerate(it):
            assert value == n * n
            # Never more than the read-ahead window beyond what was taken.
            assert consumed[0] <= n + 1 + (8 + 1) * 4
            if n == 2000:
                baseline = tracemalloc.get_traced_memory()[0]
            if n == 20_000:
                grown = tracemalloc.get_traced_memory()[0] - baseline
                break
    finally:
        tracemalloc.stop()
    assert grown < 1_000_000, f"the parent's traced memory grew by {grown} bytes over 18,000 results"
    del it


def test_imap_default_read_ahead_is_bounded(pool):
    consumed = [0]
    it = pool.imap_unordered(_tasks.square, _counting(consumed))
    assert next(it) is not None
    # The feeder waits for the consumer: what it has read stops growing.
    reached = wait_stable(lambda: consumed[0], 0.5, T, "the feeder stops reading ahead")
    assert reached <= max(32, 4 * 2) * IMAP_CHUNK_MAX


def test_adaptive_imap_in_bounded_memory(pool):
    # Adaptive chunks grow to IMAP_CHUNK_MAX items, so the read-ahead bound is in
    # chunks of that size; what must hold is that memory stops growing with it.
    consumed = [0]
    window = max(32, 4 * 2)
    tracemalloc.start()
    try:
        for n, value in enumerate(pool.imap(_tasks.square, _counting(consumed))):
            assert value == n * n
            assert consumed[0] <= n + 1 + (window + 1) * IMAP_CHUNK_MAX  # + the chunk being yielded from
            if n == 400_000:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A full window of results is ~5 MB; draining the input would need far more.
    assert peak < 24_000_000, f"the parent's traced memory peaked at {peak} bytes"


def test_adaptive_imap_raises_each_failure_at_its_own_place(pool):
    items = list(range(3000))
    it = pool.imap(_tasks.raise_value_error_if, [x % 1000 for x in items])
    got, failures = [], []
    for position in range(len(items)):
        try:
            got.append(next(it))
        except ValueError:
            failures.append(position)
    assert failures == [0, 1000, 2000]
    assert got == [x % 1000 for x in items if x % 1000]
    with pytest.raises(StopIteration):
        next(it)


def test_adaptive_imap_keeps_items_read_before_the_input_failed(pool):
    def failing():
        yield from range(1000)
        raise KeyError("input broke")

    it = pool.imap(_tasks.square, failing())
    assert [next(it) for _ in range(1000)] == [x * x for x in range(1000)]
    with pytest.raises(KeyError, match="input broke"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_imap_item_failure_carries_the_remote_traceback(pool):
    it = pool.imap(_tasks.raise_value_error_if, [1, 0], chunksize=2)
    assert next(it) == 1
    with pytest.raises(ValueError, match="^zero$") as info:
        next(it)
    cause = info.value.__cause__
    assert type(cause) is multiprocessing.pool.RemoteTraceback
    assert "raise_value_error_if" in cause.tb and "Traceback from engine" in cause.tb


def test_imap_item_failure_that_cannot_travel_arrives_by_name(pool):
    it = pool.imap(_tasks.raise_unpicklable, ["held a lock"], chunksize=1)
    with pytest.raises(zpool.RemoteError, match="UnpicklableError: held a lock") as info:
        next(it)
    assert "raise_unpicklable" in info.value.traceback


def test_abandoned_imap_stops_reading_its_input(pool):
    consumed = [0]
    it = pool.imap(_tasks.square, _counting(consumed))
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    del it
    wait_stable(lambda: consumed[0], 0.5, T, "the abandoned imap stops reading its input")
    assert pool.apply(_tasks.square, (3,)) == 9


def test_imap_next_timeout(pool):
    it = pool.imap(_tasks.sleep_then, [2.0, 0.0])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.05)
    with pytest.raises(TimeoutError):  # the builtin one too
        it.next(timeout=0.05)
    assert it.next(timeout=T) is None
    assert list(it) == [None]


def test_imap_results_arrive_before_the_input_ends(pool):
    release = threading.Event()

    def slow_input():
        yield 1
        yield 2
        release.wait(T)
        yield 3

    it = pool.imap(_tasks.square, slow_input())
    assert it.next(timeout=T) == 1 and it.next(timeout=T) == 4
    release.set()
    assert list(it) == [9]


def test_imap_task_error_raises_at_its_place_and_iteration_goes_on(pool):
    it = pool.imap(_tasks.raise_value_error_if, [1, 0, 3])
    assert next(it) == 1
    with pytest.raises(ValueError, match="zero"):
        next(it)
    assert next(it) == 3
    with pytest.raises(StopIteration):
        next(it)


def test_imap_unserializable_item_raises_at_its_place(pool):
    it = pool.imap(_tasks.identity, [1, threading.Lock(), 3])
    assert next(it) == 1
    with pytest.raises(TypeError, match="cannot pickle"):
        next(it)
    assert next(it) == 3


def test_imap_unordered_yields_in_completion_order(pool):
    it = pool.imap_unordered(_tasks.sleep_echo, [1.0, 0.0], chunksize=1)
    assert list(it) == [0.0, 1.0]
    out = list(pool.imap_unordered(_tasks.square, range(200), chunksize=3))
    assert sorted(out) == [x * x for x in range(200)]


@pytest.mark.parametrize("chunksize", [0, -1])
def test_imap_bad_chunksize(pool, chunksize):
    with pytest.raises(ValueError, match="Chunksize must be 1\\+"):
        pool.imap(_tasks.square, [1], chunksize)


def test_imap_not_iterable_raises_in_the_caller(pool):
    with pytest.raises(TypeError):
        pool.imap(_tasks.square, 5)


def test_join_finishes_imap_inputs_beyond_the_read_ahead(fresh_pool):
    pool = fresh_pool(2)
    it = pool.imap(_tasks.square, range(500), buffersize=2)
    pool.close()
    pool.join()
    assert list(it) == [x * x for x in range(500)]


def test_imap_after_close_is_refused_but_running_ones_finish(fresh_pool):
    pool = fresh_pool(2)
    it = pool.imap(_tasks.square, range(100), buffersize=2)
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.imap(_tasks.square, range(3))
    assert list(it) == [x * x for x in range(100)]


def test_terminate_during_imap_raises_instead_of_hanging(fresh_pool):
    pool = fresh_pool(2)
    it = pool.imap(_tasks.sleep_then, itertools.repeat(30))
    wait_running(pool, 1)
    pool.terminate()
    with pytest.raises(zpool.TaskAborted):
        it.next(timeout=T)


def test_engine_killed_during_imap_raises_instead_of_hanging(fresh_pool):
    pool = fresh_pool(2)
    it = pool.imap(_tasks.sleep_pid, itertools.repeat(0.05), chunksize=1)
    pids = set()
    for _ in range(10):
        pids.add(it.next(timeout=T))
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(zpool.EngineError, match="SIGKILL"):
        for _ in range(10_000):
            it.next(timeout=T)
    # The pool carries on; so may the iteration.
    assert it.next(timeout=T) > 0


def test_waiting_in_a_callback_for_a_result_with_a_callback_raises_instead_of_hanging(pool):
    outcome = []

    def callback(_):
        inner = pool.apply_async(_tasks.square, (2,), callback=lambda _: None)
        for wait in (inner.get, inner.wait, inner.result, inner.exception):
            try:
                wait(T)
            except RuntimeError as exc:
                outcome.append(exc)
        plain = pool.apply_async(_tasks.square, (3,))  # no callback of its own: fine to wait for
        outcome.append(plain.get(T))

    pool.apply_async(_tasks.square, (1,), callback=callback).get(T)
    assert len(outcome) == 5
    assert all(isinstance(exc, RuntimeError) and "would never end" in str(exc) for exc in outcome[:4])
    assert outcome[4] == 9


def test_manager_proxies_work_in_tasks(pool, mp_resource_tracker):
    # The standard way to share a queue with pool workers: engines adopt this
    # process's multiprocessing authkey, so proxies can connect back.
    with multiprocessing.get_context("spawn").Manager() as manager:
        queue = manager.Queue()
        assert pool.map(_tasks.put_square, [(queue, i) for i in range(5)]) == [None] * 5
        assert sorted(queue.get(timeout=T) for _ in range(5)) == [0, 1, 4, 9, 16]


def test_join_waits_for_every_callback(fresh_pool):
    before = {t for t in threading.enumerate() if t.name == "zpool-callbacks"}
    pool = fresh_pool(2)
    ran = []
    chained = []

    def slow_callback(value):
        time.sleep(0.05)
        ran.append(value)

    ars = [pool.apply_async(_tasks.square, (i,), callback=slow_callback) for i in range(30)]
    for ar in ars:
        ar.add_done_callback(lambda fut: chained.append(fut.result()))
    pool.close()
    pool.join()
    assert sorted(ran) == sorted(chained) == [i * i for i in range(30)]
    assert all(ar.ready() for ar in ars)
    assert {t for t in threading.enumerate() if t.name == "zpool-callbacks"} <= before  # this pool's ended


def test_done_callback_added_after_the_pool_stopped_runs_at_once(fresh_pool):
    pool = fresh_pool(1)
    ar = pool.apply_async(_tasks.square, (3,))
    assert ar.get(T) == 9
    pool.terminate()
    got = []
    ar.add_done_callback(lambda fut: got.append(fut.result()))
    assert got == [9]


def test_imap_chunk_with_an_unserializable_item_loses_no_other_item(pool):
    items = [1, 2, threading.Lock(), 4, 5]
    it = pool.imap(_tasks.identity, items, chunksize=5)
    assert [next(it), next(it)] == [1, 2]
    with pytest.raises(TypeError, match="an item of the iterable given to imap"):
        next(it)
    assert list(it) == [4, 5]
    only_bad = pool.imap(_tasks.identity, [threading.Lock()], chunksize=3)
    with pytest.raises(zpool.SerializationError):
        next(only_bad)
    assert list(only_bad) == []


def test_imap_chunk_with_an_unsendable_result_loses_no_other_item(pool):
    it = pool.imap(_tasks.generator_if_zero, [1, 0, 2], chunksize=3)
    assert next(it) == 1
    with pytest.raises(multiprocessing.pool.MaybeEncodingError, match="generator_if_zero"):
        next(it)
    assert list(it) == [2]


def test_imap_chunk_with_an_exception_that_cannot_be_rebuilt_loses_no_other_item(pool):
    it = pool.imap(_tasks.raise_two_arg_error_if_zero, [1, 0, 2], chunksize=3)
    assert next(it) == 1
    with pytest.raises(zpool.RemoteError, match="TwoArgError"):
        next(it)
    assert list(it) == [2]


def test_imap_counts_items_against_maxtasksperchild(fresh_pool):
    pool = fresh_pool(1, maxtasksperchild=3)
    pids = list(pool.imap(_tasks.getpid, range(12)))
    assert max(pids.count(pid) for pid in set(pids)) <= 3


# -- what libraries read of the stdlib pool's private attributes (docs/migrating.md) -------------


def test_private_worker_list_has_the_engine_processes(fresh_pool):
    """parmap's progress bar reads len(pool._pool); monitoring code reads the workers' pids."""
    pool = fresh_pool(2)
    workers = pool._pool
    assert len(workers) == 2
    assert sorted(w.pid for w in workers) == sorted(pool.queue_status()["engine_pids"].values())
    assert all(w.is_alive() for w in workers)
    victim = workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(
        lambda: not victim.is_alive() and len(pool._pool) >= 2 and victim.pid not in [w.pid for w in pool._pool],
        T,
        "the killed engine replaced in pool._pool",
    )
    pool.terminate()
    pool.join()
    assert pool._pool == [] and not any(w.is_alive() for w in workers)


@pytest.mark.parametrize("n, chunksize", [(100, 7), (100, None), (5, 10), (7, 1), (0, None)])
def test_map_result_counts_chunks_left_as_the_stdlib(pool, n, chunksize):
    """The progress recipes' ``job._number_left * job._chunksize``: chunks not finished, and their size."""
    ar = pool.map_async(_tasks.sleep_then, [0.05] * n, chunksize)
    with multiprocessing.pool.ThreadPool(2) as stdlib:  # as many workers as the pool has engines
        expected = stdlib.map_async(abs, range(n), chunksize)._chunksize
    assert ar._chunksize == expected
    assert len(ar.msg_ids) == (math.ceil(n / expected) if n else 0)
    assert 0 <= ar._number_left <= len(ar.msg_ids)
    ar.wait(T)
    assert ar._number_left == 0 and ar.get() == [None] * n


def test_map_result_chunks_left_go_down_as_chunks_finish(pool):
    ar = pool.map_async(_tasks.sleep_then, [0.3] * 6, chunksize=1)
    assert ar._chunksize == 1
    seen = {ar._number_left}
    while not ar.ready():
        seen.add(ar._number_left)
        time.sleep(0.01)
    seen.add(ar._number_left)
    assert max(seen) == 6 and min(seen) == 0 and len(seen) >= 3, seen
