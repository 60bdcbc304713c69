"""Each load-balancing scheme places tasks by its rule, on a real 2-engine cluster.

With two engines the rules become deterministic where they choose between
"the two" (twobin, weighted), so those are checked exactly; plainrandom is
checked for using both engines and not following a fixed pattern.
"""

from __future__ import annotations

import time

import pytest

from tests import _tasks

T = 60


def _engine_ids(results):
    return [r.metadata.engine_id for r in results]


def _occupy_one_engine(pool, seconds=3.0):
    """Start a long task and wait until the scheduler has placed it; return (ar, engine_id)."""
    ar = pool.apply_async(_tasks.sleep_then, (seconds,))
    deadline = time.monotonic() + T
    while time.monotonic() < deadline:
        busy = [int(e) for e, q in pool.queue_status()["engines"].items() if q["queue"] == 1]
        if busy:
            return ar, busy[0]
        time.sleep(0.01)
    raise AssertionError("the long task was never placed")


def test_leastload_avoids_the_loaded_engine(fresh_pool):
    pool = fresh_pool(2, scheme="leastload", hwm=0)
    long_ar, busy = _occupy_one_engine(pool)
    results = []
    for i in range(6):
        ar = pool.apply_async(_tasks.square, (i,))
        ar.get(T)
        results.append(ar)
    # One task outstanding on `busy`, none on the other: fewest outstanding wins every time.
    assert busy not in _engine_ids(results)
    long_ar.get(T)


def test_leastload_blocking_calls_alternate_on_ties(fresh_pool):
    pool = fresh_pool(2, scheme="leastload")
    results = []
    for i in range(8):
        ar = pool.apply_async(_tasks.square, (i,))
        ar.get(T)
        results.append(ar)
    ids = _engine_ids(results)
    # Loads tie at zero each time, so the least recently used engine wins: strict alternation.
    assert all(a != b for a, b in zip(ids, ids[1:])), ids


def test_lru_ignores_load(fresh_pool):
    pool = fresh_pool(2, scheme="lru", hwm=0)
    long_ar, busy = _occupy_one_engine(pool)
    burst = [pool.apply_async(_tasks.square, (i,)) for i in range(6)]
    for r in burst:
        r.get(T)
    ids = _engine_ids(burst)
    # Least recently used regardless of load: the busy engine still gets every other task.
    assert ids.count(busy) == 3, ids
    assert all(a != b for a, b in zip(ids, ids[1:])), ids
    long_ar.get(T)


def test_twobin_with_two_engines_is_lru(fresh_pool):
    pool = fresh_pool(2, scheme="twobin", hwm=0)
    long_ar, _ = _occupy_one_engine(pool)
    burst = [pool.apply_async(_tasks.square, (i,)) for i in range(6)]
    for r in burst:
        r.get(T)
    ids = _engine_ids(burst)
    assert all(a != b for a, b in zip(ids, ids[1:])), ids
    long_ar.get(T)


def test_weighted_with_two_engines_takes_the_less_loaded(fresh_pool):
    pool = fresh_pool(2, scheme="weighted", hwm=0)
    long_ar, busy = _occupy_one_engine(pool)
    results = []
    for i in range(6):
        ar = pool.apply_async(_tasks.square, (i,))
        ar.get(T)
        results.append(ar)
    assert busy not in _engine_ids(results)
    long_ar.get(T)


def test_plainrandom_uses_both_engines_without_pattern(fresh_pool):
    pool = fresh_pool(2, scheme="plainrandom")
    results = []
    for i in range(60):
        ar = pool.apply_async(_tasks.square, (i,))
        ar.get(T)
        results.append(ar)
    ids = _engine_ids(results)
    assert len(set(ids)) == 2
    # Strict alternation (what lru/leastload produce here) has chance 2**-59 under random choice.
    assert not all(a != b for a, b in zip(ids, ids[1:]))


@pytest.mark.parametrize("hwm", [1, 2])
def test_hwm_limits_outstanding_per_engine(fresh_pool, hwm):
    pool = fresh_pool(2, hwm=hwm)
    burst = [pool.apply_async(_tasks.sleep_then, (0.3,)) for _ in range(8)]
    deadline = time.monotonic() + T
    seen_max = 0
    while not all(r.ready() for r in burst) and time.monotonic() < deadline:
        status = pool.queue_status()
        seen_max = max([seen_max] + [q["queue"] for q in status["engines"].values()])
        time.sleep(0.02)
    for r in burst:
        r.get(T)
    assert 1 <= seen_max <= hwm
