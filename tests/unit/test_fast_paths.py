"""The hot-path shortcuts keep their contracts: the lean AsyncResult, the plain-pickle fast path, recv_ready.

* ``AsyncResult`` skips ``Future.__init__`` and uses a lighter condition
  (``zpool._future.LeanCondition``): it must still be a ``concurrent.futures.Future``
  everywhere one is accepted (``wait``, ``as_completed``, ``asyncio``).
* ``serialize.dumps``/``dumps_call`` pickle plain objects with ``pickle.dumps``:
  the bytes must be those of the full ``_Pickler`` path, and anything else
  must still take the full path (dill, out-of-band buffers).
* ``protocol.recv_ready`` asks ZMQ_EVENTS before receiving.

No processes: results are settled by hand, as the client's I/O thread would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import pickle
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
import zmq

from tests import _tasks
from tests._wait import wait_until
from zpool import serialize
from zpool._future import LeanCondition
from zpool.asyncresult import AsyncResult
from zpool.protocol import recv_ready
from zpool.serialize import OOB_THRESHOLD, dumps, dumps_call, loads, loads_call

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T = 30  # bound on every wait that should end (loaded 2-core machines)
SHORT = 0.05  # a wait that is meant to time out


def _by_value(data: bytes) -> bool:
    """Whether a pickle carries a function or class by value (rebuilt by dill on the other side)."""
    return b"_loads_dill" in data or b"_loads_kept" in data


def pending(label: str = "f") -> AsyncResult:
    return AsyncResult([f"id-{label}"], label)


def settle(ar: AsyncResult, value) -> None:
    t = time.time()
    ar._task_done(0, True, value, (0, "ok", t, t, t))


def settle_later(ar: AsyncResult, value, delay: float = 0.2) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), settle(ar, value)), daemon=True)
    thread.start()
    return thread


def no_waiters_left(ar: AsyncResult) -> None:
    """Neither the Future's waiter list (wait, as_completed) nor the condition's keeps a stale entry."""
    assert ar._waiters == []
    assert not ar._condition._waiters


# -- the lean AsyncResult is a Future ------------------------------------------------------------


def test_async_result_has_every_field_a_future_has():
    ar = pending()
    assert isinstance(ar, concurrent.futures.Future)
    assert set(vars(concurrent.futures.Future())) <= set(vars(ar))
    assert not ar.done() and not ar.running() and not ar.cancelled()
    assert "pending" in repr(ar)


@pytest.mark.timeout(60)
def test_result_and_exception_time_out_with_the_futures_error():
    ar = pending()
    with pytest.raises(concurrent.futures.TimeoutError):
        ar.result(SHORT)
    with pytest.raises(concurrent.futures.TimeoutError):
        ar.exception(SHORT)
    with pytest.raises(concurrent.futures.TimeoutError):
        ar.result(0)
    assert ar.wait(SHORT) is False
    no_waiters_left(ar)
    settle(ar, 7)
    assert ar.result(T) == 7 and ar.exception(T) is None and ar.get(T) == 7


@pytest.mark.timeout(60)
def test_exception_is_returned_and_raised():
    ar = pending()
    error = ValueError("boom")
    threading.Timer(0.1, ar._fail, (error,)).start()
    assert ar.exception(T) is error
    with pytest.raises(ValueError, match="boom"):
        ar.result(T)
    assert ar.successful() is False


@pytest.mark.timeout(60)
def test_wait_first_completed_returns_the_settled_one():
    ars = [pending(str(i)) for i in range(3)]
    settle_later(ars[1], "one")
    done, not_done = concurrent.futures.wait(ars, timeout=T, return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {ars[1]} and not_done == {ars[0], ars[2]}
    for ar in ars:
        assert ar._waiters == []  # wait() took its waiter off every future


@pytest.mark.timeout(60)
def test_wait_all_completed_times_out_then_completes():
    ars = [pending(str(i)) for i in range(3)]
    settle(ars[0], 0)
    done, not_done = concurrent.futures.wait(ars, timeout=SHORT, return_when=concurrent.futures.ALL_COMPLETED)
    assert done == {ars[0]} and not_done == {ars[1], ars[2]}
    for ar in ars:
        no_waiters_left(ar)
    settle_later(ars[1], 1, 0.1)
    settle_later(ars[2], 2, 0.2)
    done, not_done = concurrent.futures.wait(ars, timeout=T)
    assert done == set(ars) and not not_done
    assert [ar.result() for ar in ars] == [0, 1, 2]


@pytest.mark.timeout(60)
def test_wait_first_exception_while_waiting():
    bad, slow = pending("bad"), pending("slow")
    fail_later = threading.Timer(0.1, bad._fail, (RuntimeError("x"),))
    fail_later.daemon = True
    fail_later.start()
    done, not_done = concurrent.futures.wait([bad, slow], timeout=T, return_when=concurrent.futures.FIRST_EXCEPTION)
    assert done == {bad} and not_done == {slow}
    no_waiters_left(slow)


# concurrent.futures.wait(FIRST_EXCEPTION) calls f.cancelled() and f.exception() on the futures already
# done while it holds their conditions (_AcquireFutures): a condition that is not re-entrant deadlocks
# (it did, until 45ca92a). In a child process, so that a deadlock cannot leave stuck threads in this one.
FIRST_EXCEPTION_SCRIPT = """
import concurrent.futures, time
from zpool._future import LeanCondition
from zpool.asyncresult import AsyncResult

t = time.time()
ok, bad, slow = AsyncResult(["a"], "f"), AsyncResult(["b"], "f"), AsyncResult(["c"], "f")
ok._task_done(0, True, 1, (0, "ok", t, t, t))
done, not_done = concurrent.futures.wait([ok, slow], timeout=0.2, return_when=concurrent.futures.FIRST_EXCEPTION)
assert done == {ok} and not_done == {slow}, (done, not_done)
bad._fail(RuntimeError("x"))
done, not_done = concurrent.futures.wait([ok, bad, slow], timeout=5, return_when=concurrent.futures.FIRST_EXCEPTION)
assert done == {ok, bad} and not_done == {slow}, (done, not_done)
print("returned")
"""


@pytest.mark.timeout(90)
def test_wait_first_exception_with_futures_already_done():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", FIRST_EXCEPTION_SCRIPT], env=env, capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        pytest.fail("concurrent.futures.wait(return_when=FIRST_EXCEPTION) hung on an AsyncResult already done")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "returned"


@pytest.mark.timeout(60)
def test_as_completed_yields_in_completion_order():
    ars = [pending(str(i)) for i in range(3)]

    def settle_in_turn():
        for index, value in ((2, "c"), (0, "a"), (1, "b")):
            time.sleep(0.05)
            settle(ars[index], value)

    threading.Thread(target=settle_in_turn, daemon=True).start()
    assert [ar.result() for ar in concurrent.futures.as_completed(ars, timeout=T)] == ["c", "a", "b"]
    for ar in ars:
        assert ar._waiters == []


@pytest.mark.timeout(60)
def test_as_completed_times_out_and_leaves_no_waiter():
    done, stuck = pending("done"), pending("stuck")
    settle(done, 1)
    seen = []
    with pytest.raises(concurrent.futures.TimeoutError):
        for ar in concurrent.futures.as_completed([done, stuck], timeout=0.2):
            seen.append(ar)
    assert seen == [done]
    no_waiters_left(stuck)


@pytest.mark.timeout(60)
def test_done_callbacks_run_on_settle_and_at_once_when_done():
    ar = pending()
    called = []
    ar.add_done_callback(lambda fut: called.append(("before", fut.result())))
    settle(ar, 5)
    assert called == [("before", 5)]
    ar.add_done_callback(lambda fut: called.append(("after", fut.result())))
    assert called == [("before", 5), ("after", 5)]


@pytest.mark.timeout(60)
def test_cancel_of_a_pending_result_wakes_waiters_and_ignores_a_late_reply():
    ar = pending()
    outcome = []

    def waiter():
        try:
            ar.result(T)
        except concurrent.futures.CancelledError:
            outcome.append("cancelled")

    thread = threading.Thread(target=waiter)
    thread.start()
    called = []
    ar.add_done_callback(called.append)
    wait_until(lambda: ar._condition._waiters, T, "the waiter inside its wait")
    assert ar.cancel() is True
    thread.join(T)
    assert outcome == ["cancelled"]
    assert called == [ar]
    assert ar.cancelled() and ar.done() and ar.ready()
    assert ar.wait(0) is True
    with pytest.raises(concurrent.futures.CancelledError):
        ar.get(T)
    settle(ar, "late")  # the reply arrives after all: accounted, not raised
    assert ar.cancelled() and ar.progress == 1
    no_waiters_left(ar)


def test_cancel_of_a_finished_result_is_refused():
    ar = pending()
    settle(ar, 1)
    assert ar.cancel() is False
    assert ar.result() == 1


@pytest.mark.timeout(60)
def test_many_threads_waiting_on_one_result_are_all_woken():
    ar = pending()
    n = 24
    got = []
    lock = threading.Lock()
    ready = threading.Barrier(n + 1)

    def waiter(i):
        ready.wait(T)
        value = ar.get(T) if i % 3 == 0 else ar.result(T) if i % 3 == 1 else (ar.wait(T), ar.result(0))[1]
        with lock:
            got.append(value)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    ready.wait(T)
    wait_until(lambda: len(ar._condition._waiters or ()) >= n, T, f"all {n} threads inside their wait")
    assert len(ar._condition._waiters) == n
    settle(ar, "all")
    for thread in threads:
        thread.join(T)
    assert got == ["all"] * n
    no_waiters_left(ar)


@pytest.mark.timeout(60)
def test_timed_out_waits_leave_no_stale_waiter_and_a_later_one_is_woken():
    ar = pending()
    for _ in range(20):
        assert ar.wait(0.001) is False
    with pytest.raises(concurrent.futures.TimeoutError):
        ar.result(0)
    no_waiters_left(ar)
    settle_later(ar, "late")
    assert ar.get(T) == "late"
    no_waiters_left(ar)


@pytest.mark.timeout(60)
def test_wrap_future_and_await():
    later, ready, failing = pending("later"), pending("ready"), pending("failing")
    settle(ready, "now")

    async def main():
        threading.Timer(0.1, settle, (later, "then")).start()
        threading.Timer(0.1, failing._fail, (KeyError("k"),)).start()
        wrapped = await asyncio.wait_for(asyncio.wrap_future(later), T)
        awaited = await asyncio.wait_for(ready, T)
        with pytest.raises(KeyError):
            await asyncio.wait_for(failing, T)
        return wrapped, awaited

    assert asyncio.run(main()) == ("then", "now")


@pytest.mark.timeout(60)
def test_cancelling_the_awaiting_task_cancels_the_pending_result():
    ar = pending()

    async def main():
        task = asyncio.ensure_future(asyncio.wrap_future(ar))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert ar.cancelled()


@pytest.mark.timeout(60)
def test_a_result_of_several_tasks_wakes_waiters_once_all_arrived():
    ar = AsyncResult(["id-a", "id-b"], "f")
    t = time.time()
    ar._task_done(1, True, "b", (1, "ok", t, t, t))
    assert concurrent.futures.wait([ar], timeout=SHORT).done == set()
    assert ar.progress == 1
    threading.Timer(0.1, ar._task_done, (0, True, "a", (0, "ok", t, t, t))).start()
    assert ar.get(T) == ["a", "b"]
    no_waiters_left(ar)


# -- the condition itself -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_condition_notify_wakes_the_oldest_waiters_first():
    cond = LeanCondition()
    woken = []

    def waiter(i):
        with cond:
            if cond.wait(T):
                woken.append(i)

    threads = []
    for i in range(4):
        thread = threading.Thread(target=waiter, args=(i,))
        thread.start()
        threads.append(thread)
        wait_until(lambda i=i: len(cond._waiters or ()) > i, T, f"waiter {i} inside its wait")
    with cond:
        cond.notify(2)
    threads[0].join(T)
    threads[1].join(T)
    assert sorted(woken) == [0, 1]
    assert len(cond._waiters) == 2
    with cond:
        cond.notify_all()
    for thread in threads:
        thread.join(T)
    assert sorted(woken) == [0, 1, 2, 3]
    assert cond._waiters == []


def acquirable_elsewhere(cond) -> bool:
    """Whether another thread can take `cond` at once (it then lets it go)."""
    got = []

    def take():
        if cond.acquire(False):
            got.append(True)
            cond.release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(T)
    return bool(got)


def test_condition_timeouts_return_false_and_remove_the_waiter():
    cond = LeanCondition()
    with cond:
        assert cond.wait(0) is False
        assert cond.wait(-1) is False
        assert cond.wait(0.01) is False
        assert cond._waiters == []
        cond.notify()  # nobody waits: nothing happens
        cond.notify_all()
        assert not acquirable_elsewhere(cond)  # held again after each wait
    assert acquirable_elsewhere(cond)


@pytest.mark.timeout(60)
def test_condition_wait_lets_go_of_a_lock_held_twice_and_takes_it_back():
    cond = LeanCondition()

    def notify():
        with cond:  # only possible while the waiter waits: it holds the condition twice otherwise
            cond.notify_all()

    with cond:
        with cond:
            notifier = threading.Timer(0.1, notify)
            notifier.daemon = True
            notifier.start()
            assert cond.wait(T) is True
            assert not acquirable_elsewhere(cond)
        assert not acquirable_elsewhere(cond)  # still held once
    assert acquirable_elsewhere(cond)
    notifier.join(T)


# -- serialize: the plain-pickle fast path -----------------------------------------------------------


@pytest.fixture
def full_path(monkeypatch):
    """Serialize with the fast path switched off: what the full _Pickler path produces."""

    def run(fn, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(serialize, "_is_plain", lambda obj: False)
            return fn(*args, **kwargs)

    return run


@pytest.fixture
def pickler_uses(monkeypatch):
    """Count how many times the full path's _Pickler is made."""
    made = []
    base = serialize._Pickler

    class Counting(base):
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(serialize, "_Pickler", Counting)
    return made


def as_bytes(frames) -> list[bytes]:
    return [bytes(f) for f in frames]


PLAIN_OBJECTS = [
    0,
    -1,
    2**100,
    1.5,
    math.nan,
    complex(1, -2),
    True,
    None,
    "",
    "text",
    "ünïcode ✓",
    "x" * (OOB_THRESHOLD + 10),  # a long str is still plain (no buffer to take out of band)
    b"",
    b"small bytes",
    b"b" * (OOB_THRESHOLD - 1),
    _tasks.square,
    len,
    os.getpid,
    math.sqrt,
    (),
    [],
    (1, 2.5, "s", None, True, complex(1, 1)),
    [1, 2, 3],
    list(range(serialize._PLAIN_SCAN_MAX)),
    tuple("abc" * 10),
]


@pytest.mark.parametrize("obj", PLAIN_OBJECTS, ids=lambda obj: type(obj).__name__)
def test_plain_objects_take_the_fast_path_with_the_same_bytes(obj, full_path, pickler_uses):
    assert serialize._is_plain(obj)
    fast = dumps(obj)
    assert pickler_uses == []  # no _Pickler: the fast path served it
    assert len(fast) == 1
    assert as_bytes(fast) == as_bytes(full_path(dumps, obj))
    back = loads(fast)
    if isinstance(obj, float) and math.isnan(obj):
        assert math.isnan(back)
    else:
        assert back == obj and type(back) is type(obj)


@pytest.mark.parametrize(
    ("func", "args", "kwargs"),
    [
        (_tasks.square, (3,), None),
        (_tasks.add, (1,), {"b": 2.5}),
        (max, (1, 2, 3), {}),
        (_tasks.identity, ("same", "same"), {"k": "same"}),  # shared objects: pickle's memo the same
        (os.getpid, (), None),
        (_tasks.identity, (b"x" * 100, [1, 2], (None,)), {"c": complex(0, 1)}),
        (_tasks.identity, [1, 2], None),  # a list of arguments
    ],
    ids=["square", "kwargs", "builtin", "memo", "no-args", "mixed", "args-list"],
)
def test_plain_calls_take_the_fast_path_with_the_same_bytes(func, args, kwargs, full_path, pickler_uses):
    fast = dumps_call(func, args, kwargs)
    assert pickler_uses == []
    assert len(fast) == 1
    assert as_bytes(fast) == as_bytes(full_path(dumps_call, func, args, kwargs))
    assert loads_call(fast) == (func, tuple(args), dict(kwargs or {}))


def test_fast_path_bounds_of_lists_and_bytes():
    assert serialize._is_plain(list(range(serialize._PLAIN_SCAN_MAX)))
    assert not serialize._is_plain(list(range(serialize._PLAIN_SCAN_MAX + 1)))
    assert not serialize._is_plain(tuple(range(serialize._PLAIN_SCAN_MAX + 1)))
    assert serialize._is_plain(b"b" * (OOB_THRESHOLD - 1))
    assert not serialize._is_plain(b"b" * OOB_THRESHOLD)
    assert not serialize._is_plain([1, (2,)])
    assert not serialize._is_plain([1, b"x"])
    assert not serialize._is_plain([1, [2]])
    assert not serialize._is_plain((_tasks.square,))
    assert not serialize._is_plain(bytearray(b"x"))
    assert not serialize._is_plain({"a": 1})


def _closure():
    offset = 10

    def add_offset(x):
        return x + offset

    return add_offset


def _main_function():
    """A function whose module is __main__ (as if defined in the user's script)."""
    source = "def from_main(x):\n    return x * 3\n"
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<script>", "exec"), namespace)
    func = namespace["from_main"]
    assert func.__module__ == "__main__"
    return func


class IntSubclass(int):
    pass


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: lambda x: x + 1, id="lambda"),
        pytest.param(_closure, id="closure"),
        pytest.param(_main_function, id="main-function"),
    ],
)
def test_functions_not_findable_by_name_go_through_dill(make, pickler_uses):
    func = make()
    assert not serialize._is_plain(func)
    frames = dumps(func)
    assert pickler_uses
    assert _by_value(bytes(frames[0]))
    assert loads(frames)(2) == func(2)
    call = dumps_call(func, (5,))
    assert _by_value(bytes(call[0]))
    rebuilt, args, kwargs = loads_call(call)
    assert rebuilt(*args, **kwargs) == func(5)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: b"B" * OOB_THRESHOLD, id="bytes"),
        pytest.param(lambda: bytearray(b"A" * OOB_THRESHOLD), id="bytearray"),
        pytest.param(lambda: np.arange(OOB_THRESHOLD // 8 + 1, dtype=np.float64), id="ndarray"),
        pytest.param(lambda: memoryview(b"M" * OOB_THRESHOLD), id="memoryview"),
    ],
)
def test_large_buffers_still_travel_out_of_band(make, pickler_uses):
    obj = make()
    assert not serialize._is_plain(obj)
    frames = dumps(obj)
    assert pickler_uses
    assert len(frames) == 2 and memoryview(frames[1]).nbytes == memoryview(obj).nbytes
    back = loads(frames)
    assert bytes(memoryview(back)) == bytes(memoryview(obj))
    call = dumps_call(_tasks.identity, (obj,))
    assert len(call) == 2  # the argument left the pickle too
    assert bytes(memoryview(loads_call(call)[1][0])) == bytes(memoryview(obj))


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(np.arange(4), id="small-ndarray"),
        pytest.param(memoryview(b"small"), id="small-memoryview"),
        pytest.param(list(range(serialize._PLAIN_SCAN_MAX + 1)), id="long-list"),
        pytest.param([1, ("nested",)], id="list-with-tuple"),
        pytest.param(IntSubclass(3), id="int-subclass"),
        pytest.param({"k": 1}, id="dict"),
        pytest.param(_tasks.CustomError("x"), id="exception"),
    ],
)
def test_other_objects_take_the_full_path_and_round_trip(obj, pickler_uses):
    frames = dumps(obj)
    assert pickler_uses
    back = loads(frames)
    if isinstance(obj, np.ndarray):
        assert np.array_equal(back, obj)
    elif isinstance(obj, memoryview):
        assert bytes(back) == bytes(obj) and isinstance(back, memoryview)
    elif isinstance(obj, Exception):
        assert type(back) is type(obj) and back.args == obj.args
    else:
        assert back == obj and type(back) is type(obj)


def test_a_call_with_one_non_plain_argument_takes_the_full_path(pickler_uses):
    frames = dumps_call(_tasks.identity, (1, memoryview(b"view")), {"k": 2})
    assert pickler_uses
    func, args, kwargs = loads_call(frames)
    assert func is _tasks.identity and args[0] == 1 and bytes(args[1]) == b"view" and kwargs == {"k": 2}
    pickler_uses.clear()
    dumps_call(_tasks.identity, (1,), {"k": lambda: 0})
    assert pickler_uses


def test_a_builtin_bound_to_an_instance_is_not_taken_for_a_module_function(pickler_uses):
    method = "abc".upper
    assert type(method) is types.BuiltinFunctionType
    assert not serialize._is_plain(method)
    assert loads(dumps(method))() == "ABC"
    assert pickler_uses


def test_plain_pickle_is_protocol_5():
    assert pickle.loads(dumps(1)[0]) == 1
    assert dumps(1)[0][:2] == b"\x80\x05"
    assert dumps_call(_tasks.square, (1,))[0][:2] == b"\x80\x05"


# -- protocol.recv_ready ----------------------------------------------------------------------------


@pytest.fixture
def socket_pair():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for sock in (a, b):
        sock.setsockopt(zmq.LINGER, 0)
    port = a.bind_to_random_port("tcp://127.0.0.1")
    b.connect(f"tcp://127.0.0.1:{port}")
    yield a, b
    a.close(linger=0)
    b.close(linger=0)
    ctx.term()


@pytest.mark.timeout(60)
def test_recv_ready_returns_none_when_nothing_waits(socket_pair):
    _, b = socket_pair
    assert recv_ready(b) is None
    assert b.poll(100) == 0
    assert recv_ready(b) is None


@pytest.mark.timeout(60)
def test_recv_ready_returns_the_waiting_messages_in_order(socket_pair):
    a, b = socket_pair
    big = b"z" * (zmq.COPY_THRESHOLD * 2)
    a.send_multipart([b"one", b"", big])
    a.send(b"two")
    assert b.poll(T * 1000) == zmq.POLLIN
    first = recv_ready(b)
    assert first is not None and [bytes(f) for f in first] == [b"one", b"", big]
    assert all(isinstance(f, zmq.Frame) for f in first)
    deadline = time.monotonic() + T
    second = recv_ready(b)
    while second is None and time.monotonic() < deadline:
        b.poll(100)
        second = recv_ready(b)
    assert second is not None and [bytes(f) for f in second] == [b"two"]
    assert recv_ready(b) is None


@pytest.mark.timeout(60)
def test_recv_ready_on_a_router_keeps_the_routing_identity():
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        dealer.setsockopt(zmq.IDENTITY, b"me")
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        assert recv_ready(router) is None
        dealer.send_multipart([b"hello", b"world"])
        assert router.poll(T * 1000) == zmq.POLLIN
        frames = recv_ready(router)
        assert frames is not None and [bytes(f) for f in frames] == [b"me", b"hello", b"world"]
        assert recv_ready(router) is None
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()


def test_an_engine_gives_nothing_back_before_it_serves(monkeypatch, tmp_path):
    # While registering, the engine's main thread reads its socket without the lock: the
    # heartbeat thread must not read it then (it would take the registration reply).
    import sys as _sys

    from zpool.engine import worker
    from zpool.protocol import ConnectionInfo, new_key

    monkeypatch.setitem(_sys.modules, "__main__", _sys.modules["__main__"])  # the engine installs its own
    monkeypatch.setattr(worker, "set_main_namespace", lambda namespace: None)
    base = f"ipc://{tmp_path}"
    engine = worker.Engine(ConnectionInfo(f"{base}/c", f"{base}/e", f"{base}/h", new_key()))
    try:
        engine.pending.append(("t1", [b"payload"]))
        engine.pending.append(("t2", [b"payload"]))
        assert engine.give_back({"t2"}) == []
        assert [task_id for task_id, _ in engine.pending] == ["t1", "t2"]
        engine.serving = True
        assert engine.give_back({"t2", "unknown"}) == ["t2"]
        assert [task_id for task_id, _ in engine.pending] == ["t1"]
    finally:
        engine.sock.close(0)
        engine.ctx.term()
        os.close(engine._beats._wake_r)
        os.close(engine._beats._wake_w)


def test_measured_chunksize_keeps_between_one_and_four_chunks_per_engine():
    from zpool._partition import default_chunksize, measured_chunksize

    assert measured_chunksize(16, 2, 1e-6) == 16  # 16 us of work in all: one chunk
    assert measured_chunksize(16, 2, 1e-4) == 8  # 1.6 ms: one chunk per engine
    assert measured_chunksize(16, 2, 0.01) == default_chunksize(16, 2) == 2  # costly: the standard rule
    assert measured_chunksize(1000, 2, 1e-5) == 200  # 10 ms of work: five chunks of 2 ms
    assert measured_chunksize(1, 4, 1.0) == 1
    assert measured_chunksize(3, 8, 0.001) == 1  # never more chunks than items
