"""Blocking ``Pool.apply``: sent and answered in the calling thread, its fallbacks, and what may stop it.

``Pool.apply`` without scheduling flags, when nothing else of the connection
is queued or outstanding, sends its task on a socket of the calling thread
and reads the reply itself. These tests check that the shortcut is taken,
that it falls back to the I/O thread when it must, and that whatever ends
the wait (Ctrl-C, the controller's or an engine's death, ``terminate()``)
ends it promptly and leaves nothing pending.

Ctrl-C is a real SIGINT sent to this process (as in tests/failure/test_interrupt.py).
Some tests deliver it at a chosen instant of the call (mid-send, while a reply
is decoded) by wrapping one function: a Ctrl-C from the terminal can land there
too, only less often.
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
import zmq

import zpool
import zpool.client.own_socket as own_socket_module
from tests import _tasks
from tests._wait import ctrl_c_after, wait_empty, wait_in_task, wait_until
from zpool.client.connection import Connection
from zpool.error import BrokenPoolError, EngineError, PoolClosedError, SerializationError, TaskAborted


@pytest.fixture(autouse=True)
def controller_path(monkeypatch):
    """These tests are about the own socket to the controller: no call is pushed to the engines here.

    tests/integration/test_pushed.py covers the direct path, which blocking calls take by default.
    """
    monkeypatch.setattr(Connection, "pushing", property(lambda self: False, lambda self, value: None), raising=False)


T = 60  # bound on waits that should end
PROMPT = 10.0  # "promptly", on a loaded 2-core machine
LONG = 60.0  # seconds a task runs unless stopped


# -- helpers ----------------------------------------------------------------------------------------


class CallNowSpy:
    """Records every Connection.call_now: [AsyncResult, whether it took the own socket (None if it raised)]."""

    def __init__(self, pool, monkeypatch) -> None:
        self.calls: list[list] = []
        real = pool._conn.call_now

        def call_now(items, done):
            entry = [done.__self__, None]
            self.calls.append(entry)
            entry[1] = real(items, done)
            return entry[1]

        monkeypatch.setattr(pool._conn, "call_now", call_now)

    @property
    def last(self):
        return self.calls[-1]


def own_call_running(pool) -> None:
    """Wait until a call sent on the own socket is running on an engine."""
    wait_until(lambda: len(pool._conn._own.sent) > 0, T, "a call went out on the own socket")
    wait_in_task(pool, 1, T)


def running_engine(pool) -> str | None:
    for engine_id, state in pool.queue_status()["engines"].items():
        if state["running"]:
            return engine_id
    return None


def in_thread(fn, *args):
    """Run fn(*args) in a daemon thread; return (thread, outcome list: [("ok", value)] or [("error", exc)])."""
    outcome: list = []

    def run():
        try:
            outcome.append(("ok", fn(*args)))
        except BaseException as exc:
            outcome.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def finishes(fn, *args, timeout: float = PROMPT):
    """fn(*args) in another thread: its value, failing the test if it does not return within `timeout`."""
    thread, outcome = in_thread(fn, *args)
    thread.join(timeout)
    assert outcome, f"{getattr(fn, '__name__', fn)} did not return within {timeout} s"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def busy(pool) -> dict[str, int]:
    """Tasks each engine runs or queues, and those not placed yet: empty when the engines are idle."""
    status = pool.queue_status()
    found = {engine_id: e["running"] + e["queued"] for engine_id, e in status["engines"].items()}
    found = {engine_id: n for engine_id, n in found.items() if n}
    if status["unassigned"]:
        found["unassigned"] = status["unassigned"]
    return found


def assert_recovered(pool, spy=None) -> None:
    """After an interrupted call: nothing pending, engines free, the own socket serves, close and join finish."""
    wait_empty(lambda: len(pool._results), PROMPT, "no result pending")
    wait_empty(lambda: busy(pool), PROMPT, "the engines idle")
    assert finishes(pool.apply, _tasks.square, (5,)) == 25
    if spy is not None:
        assert spy.last[1] is True  # the own socket still serves
    assert finishes(pool.map, _tasks.square, range(6)) == [x * x for x in range(6)]
    pool.close()
    finishes(pool.join, timeout=T)


def controller_of(pool) -> psutil.Process:
    pid = pool._cluster.proc.pid
    found = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid == pid and "zpool.controller" in " ".join(p.cmdline())
    ]
    assert len(found) == 1
    return found[0]


def _interrupt_caller(pid: int, seconds: float) -> str:
    """Rebuilds an InterruptsCaller: in process `pid`, Ctrl-C arrives while this runs."""
    if os.getpid() == pid:
        os.kill(pid, signal.SIGINT)
        time.sleep(seconds)
    return "rebuilt"


class InterruptsCaller:
    """A result whose unpickling in the caller (pid) takes a while, during which Ctrl-C arrives."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self):
        return _interrupt_caller, (self.pid, 2.0)


def make_interrupting(pid: int) -> InterruptsCaller:
    return InterruptsCaller(pid)


# -- the own-socket path ------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_apply_takes_the_own_socket_and_returns_values_and_metadata(fresh_pool, monkeypatch):
    pool = fresh_pool(2)
    assert pool._conn._own.sock is None
    spy = CallNowSpy(pool, monkeypatch)
    assert pool.apply(_tasks.square, (7,)) == 49
    assert pool._conn._own.sock is not None
    ar, took = spy.last
    assert took is True
    assert ar.ready() and ar.successful() and ar.get(0) == 49
    md = ar.metadata
    assert md["status"] == "ok" and md.engine_id in (0, 1)
    assert all(isinstance(md[k], datetime.datetime) for k in ("submitted", "started", "completed", "received"))
    assert md["submitted"] <= md["started"] <= md["completed"] <= md["received"]
    assert pool.apply(_tasks.add, (1,), {"b": 2}) == 3
    assert pool.apply(_tasks.identity, ([1, "a", None, 2.5],)) == [1, "a", None, 2.5]
    assert pool.apply(_tasks.identity, ({"nested": (1, [2])},)) == {"nested": (1, [2])}
    assert pool.apply(lambda x: x * 3, (5,)) == 15  # by value, through dill
    big = b"x" * 300_000  # out-of-band frames on the own socket
    assert pool.apply(_tasks.identity, (big,)) == big
    arr = np.arange(300_000, dtype=np.float64)  # 2.4 MB: through shared memory
    np.testing.assert_array_equal(pool.apply(_tasks.identity, (arr,)), arr)
    np.testing.assert_array_equal(pool.apply(_tasks.make_array, (3 << 20, 2.0)), np.full((3 << 20) // 8, 2.0))
    assert [took for _, took in spy.calls] == [True] * 8
    assert len(pool._results) == 0 and not pool._conn._own.sent


@pytest.mark.timeout(120)
def test_apply_reraises_remote_exceptions_with_their_type(pool, monkeypatch):
    spy = CallNowSpy(pool, monkeypatch)
    with pytest.raises(_tasks.CustomError, match="boom") as info:
        pool.apply(_tasks.raise_custom, ("boom",))
    assert isinstance(info.value.__cause__, zpool.RemoteTraceback)
    assert "raise_custom" in str(info.value.__cause__)
    with pytest.raises(ValueError, match="bad value"):
        pool.apply(_tasks.raise_value_error, ("bad value",))
    with pytest.raises(zpool.RemoteError, match="UnpicklableError"):
        pool.apply(_tasks.raise_unpicklable, ("held a lock",))
    with pytest.raises(ZeroDivisionError):
        pool.apply(divmod, (1, 0))
    ar, took = spy.last
    assert took is True and ar.metadata["status"] == "error"
    assert [took for _, took in spy.calls] == [True] * 4
    assert pool.apply(_tasks.square, (3,)) == 9  # and carries on
    assert len(pool._results) == 0


@pytest.mark.timeout(120)
def test_apply_falls_back_while_other_work_is_outstanding(pool, monkeypatch):
    spy = CallNowSpy(pool, monkeypatch)
    slow = pool.apply_async(_tasks.sleep_then, (1.0, "slow"))
    assert pool.apply(_tasks.square, (3,)) == 9
    assert spy.last[1] is False  # through the I/O thread
    it = pool.imap(_tasks.sleep_echo, [0.3] * 4, chunksize=1)
    assert pool.apply(_tasks.add, (2, 3)) == 5
    assert spy.last[1] is False
    assert slow.get(T) == "slow"
    assert list(it) == [0.3] * 4
    wait_empty(lambda: len(pool._results), PROMPT, "no result pending")
    assert pool.apply(_tasks.square, (4,)) == 16
    assert spy.last[1] is True  # nothing outstanding any more


@pytest.mark.timeout(120)
def test_apply_falls_back_while_another_thread_is_in_its_own_call(pool, monkeypatch):
    spy = CallNowSpy(pool, monkeypatch)
    thread, outcome = in_thread(pool.apply, _tasks.sleep_then, (1.5, "first"))
    wait_until(lambda: len(pool._conn._own.sent) > 0, T, "a call went out on the own socket")
    assert pool.apply(_tasks.square, (6,)) == 36
    thread.join(T)
    assert outcome == [("ok", "first")]
    took = {ar.label: took for ar, took in spy.calls}
    assert took == {"sleep_then": True, "square": False}


@pytest.mark.timeout(120)
def test_apply_with_flags_goes_through_the_io_thread(pool, monkeypatch, tmp_path):
    spy = CallNowSpy(pool, monkeypatch)
    assert pool.apply(_tasks.square, (4,), retries=1) == 16
    marker = str(tmp_path / "first-try")
    assert pool.apply(_tasks.fail_first_time, (marker,), retries=2)[0] == "second try"
    before = pool.apply_async(_tasks.square, (2,))
    assert before.get(T) == 4
    assert pool.apply(_tasks.add, (1, 2), after=[before]) == 3
    with pool.temp_flags(retries=1):
        assert pool.apply(_tasks.square, (5,)) == 25
    data = bytearray(b"t" * 200_000)
    assert pool.apply(_tasks.identity, (data,), track=True) == data
    assert spy.calls == []  # none of them took the shortcut
    with pytest.raises(TypeError):
        pool.apply(_tasks.square, (1,), no_such_flag=1)
    assert pool.apply(_tasks.square, (6,)) == 36
    assert spy.last[1] is True


@pytest.mark.timeout(180)
def test_many_threads_calling_apply_at_once_all_get_their_results(pool, monkeypatch):
    spy = CallNowSpy(pool, monkeypatch)
    n_threads, n_calls = 8, 25
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def caller(i):
        try:
            start.wait(T)
            got = []
            for j in range(n_calls):
                if j % 10 == 9:
                    got.append(pool.apply_async(_tasks.add, (i, j)).get(T))  # mixed with queued work
                elif j % 10 == 5:
                    got.append(pool.starmap(_tasks.add, [(i, j)])[0])
                else:
                    got.append(pool.apply(_tasks.add, (i,), {"b": j}))
            results[i] = got
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    assert not any(thread.is_alive() for thread in threads), "a caller hung"
    assert errors == []
    assert results == {i: [i + j for j in range(n_calls)] for i in range(n_threads)}
    assert all(took is not None for _, took in spy.calls)
    assert any(took for _, took in spy.calls)
    wait_empty(lambda: len(pool._results), PROMPT, "no result pending")
    assert not pool._conn._own.sent


# -- what ends an own-socket call --------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_ctrl_c_while_waiting_on_the_own_socket(fresh_pool, monkeypatch):
    pool = fresh_pool(2)
    assert pool.apply(_tasks.square, (2,)) == 4
    spy = CallNowSpy(pool, monkeypatch)
    ctrl_c_after(1.0)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pool.apply(time.sleep, (LONG,))
    assert time.monotonic() - started < PROMPT
    ar, took = spy.last
    assert took is None  # interrupted inside call_now
    # The task was aborted (interrupted on its engine); the I/O thread read the answer the caller left.
    wait_until(ar.done, PROMPT, "the result settled")
    assert isinstance(ar.exception(0), TaskAborted)
    assert_recovered(pool, spy)


@pytest.mark.timeout(120)
def test_ctrl_c_while_the_reply_is_decoded_raises_keyboard_interrupt(fresh_pool, monkeypatch):
    pool = fresh_pool(1)
    assert pool.apply(_tasks.square, (2,)) == 4
    spy = CallNowSpy(pool, monkeypatch)
    try:
        pool.apply(make_interrupting, (os.getpid(),))
    except KeyboardInterrupt:
        pass
    except SerializationError as exc:
        pytest.fail(f"Ctrl-C was swallowed: the apply raised {type(exc).__name__}: {exc}")
    else:
        pytest.fail("Ctrl-C was swallowed: the apply returned")
    assert spy.last[1] is None
    assert_recovered(pool, spy)


@pytest.mark.timeout(120)
def test_ctrl_c_while_the_reply_is_decoded_through_the_io_thread(fresh_pool):
    # The same call with a flag (through the I/O thread): the KeyboardInterrupt reaches the caller.
    pool = fresh_pool(1)
    with pytest.raises(KeyboardInterrupt):
        pool.apply(make_interrupting, (os.getpid(),), retries=1)
    assert_recovered(pool)


@pytest.mark.timeout(120)
def test_ctrl_c_between_receiving_and_settling_a_reply_leaves_nothing_pending(fresh_pool, monkeypatch):
    pool = fresh_pool(1)
    assert pool.apply(_tasks.square, (2,)) == 4
    spy = CallNowSpy(pool, monkeypatch)
    session = pool._conn.session
    real_unpack = session.unpack
    main = threading.main_thread()
    fired = []

    def unpack(frames):
        if threading.current_thread() is main and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives as the caller decodes the reply
        return real_unpack(frames)

    monkeypatch.setattr(session, "unpack", unpack)
    with pytest.raises(KeyboardInterrupt):
        pool.apply(_tasks.square, (3,))
    assert fired and spy.last[1] is None
    assert_recovered(pool, spy)


@pytest.mark.timeout(120)
def test_ctrl_c_in_the_middle_of_the_own_send_leaves_the_socket_usable(fresh_pool, monkeypatch):
    pool = fresh_pool(1)
    assert pool.apply(_tasks.square, (2,)) == 4
    conn = pool._conn
    real_send = own_socket_module.send_frames
    fired = []

    def send_frames(sock, frames, flags=0, track=False):
        if sock is conn._own.sock and not fired:
            fired.append(True)
            for frame in frames[:3]:  # the first frames are out when Ctrl-C arrives
                sock.send(frame, flags | zmq.SNDMORE)
            os.kill(os.getpid(), signal.SIGINT)
        return real_send(sock, frames, flags, track)

    monkeypatch.setattr(own_socket_module, "send_frames", send_frames)
    with pytest.raises(KeyboardInterrupt):
        pool.apply(_tasks.square, (3,))
    assert fired
    monkeypatch.setattr(own_socket_module, "send_frames", real_send)
    assert_recovered(pool)


@pytest.mark.timeout(120)
def test_ctrl_c_just_after_the_own_send_aborts_the_task(fresh_pool, monkeypatch):
    pool = fresh_pool(1)
    assert pool.apply(_tasks.square, (2,)) == 4
    conn = pool._conn
    real_send = own_socket_module.send_frames
    fired = []

    def send_frames(sock, frames, flags=0, track=False):
        trackers = real_send(sock, frames, flags, track)
        if sock is conn._own.sock and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # lands as send_frames returns
        return trackers

    monkeypatch.setattr(own_socket_module, "send_frames", send_frames)
    with pytest.raises(KeyboardInterrupt):
        pool.apply(time.sleep, (LONG,))
    assert fired
    monkeypatch.setattr(own_socket_module, "send_frames", real_send)
    # The engine must be freed (the task aborted), not left to sleep for a minute.
    wait_empty(lambda: busy(pool), PROMPT, "the task stopped running")
    assert_recovered(pool)


@pytest.mark.timeout(120)
def test_ctrl_c_aborts_the_task_even_when_the_controller_reads_the_abort_first(fresh_pool):
    # A busy controller (stopped here for a moment) that accepts the caller's new own socket
    # late: the abort, sent on the connection it already has, reaches it before the task.
    pool = fresh_pool(1)
    assert pool._conn._own.sock is None
    controller = controller_of(pool)
    controller.suspend()
    try:
        ctrl_c_after(0.5)
        with pytest.raises(KeyboardInterrupt):
            pool.apply(time.sleep, (LONG,))
    finally:
        controller.resume()
    wait_empty(lambda: len(pool._results), PROMPT, "the task aborted (not running for its full minute)")
    assert_recovered(pool)


@pytest.mark.timeout(120)
def test_controller_killed_during_an_own_socket_apply_raises_broken_pool(fresh_pool, monkeypatch):
    pool = fresh_pool(1)
    assert pool.apply(_tasks.square, (2,)) == 4
    spy = CallNowSpy(pool, monkeypatch)
    controller = controller_of(pool)
    killed_at = []

    def kill_controller():
        own_call_running(pool)
        killed_at.append(time.monotonic())
        controller.kill()

    killer, _ = in_thread(kill_controller)
    with pytest.raises(BrokenPoolError):
        pool.apply(_tasks.sleep_then, (LONG, "never"))
    assert killed_at and time.monotonic() - killed_at[0] < PROMPT
    killer.join(T)
    assert spy.last[1] is True  # the caller noticed, on its own socket
    with pytest.raises(BrokenPoolError):
        pool.apply(_tasks.square, (3,))
    assert len(pool._results) == 0


@pytest.mark.timeout(120)
def test_terminate_from_another_thread_during_an_own_socket_apply(fresh_pool, monkeypatch):
    pool = fresh_pool(1)
    assert pool.apply(_tasks.square, (2,)) == 4
    spy = CallNowSpy(pool, monkeypatch)
    terminated_at = []

    def terminate():
        own_call_running(pool)
        terminated_at.append(time.monotonic())
        pool.terminate()

    stopper, outcome = in_thread(terminate)
    with pytest.raises((TaskAborted, PoolClosedError)):
        pool.apply(_tasks.sleep_then, (LONG, "never"))
    assert terminated_at and time.monotonic() - terminated_at[0] < PROMPT
    stopper.join(T)
    assert outcome == [("ok", None)]
    assert spy.last[1] is True
    finishes(pool.join, timeout=T)
    with pytest.raises(ValueError):
        pool.apply(_tasks.square, (3,))
    assert len(pool._results) == 0


@pytest.mark.timeout(120)
def test_engine_killed_during_an_own_socket_apply_raises_engine_error(fresh_pool, monkeypatch):
    pool = fresh_pool(2)
    assert pool.apply(_tasks.square, (2,)) == 4
    spy = CallNowSpy(pool, monkeypatch)
    victim = []

    def kill_engine():
        own_call_running(pool)
        engine_id = running_engine(pool)
        pid = pool.queue_status()["engine_pids"][engine_id]
        victim.append((int(engine_id), pid))
        os.kill(pid, signal.SIGKILL)

    killer, _ = in_thread(kill_engine)
    with pytest.raises(EngineError, match="SIGKILL") as info:
        pool.apply(_tasks.sleep_pid, (LONG,))
    killer.join(T)
    engine_id, pid = victim[0]
    assert f"engine {engine_id} (pid {pid})" in str(info.value)
    assert spy.last[1] is True
    # The other engine and the replacement carry on.
    assert pool.apply(_tasks.square, (5,)) == 25
    assert sorted(pool.map(_tasks.square, range(8), chunksize=1)) == [x * x for x in range(8)]
    assert len(pool._results) == 0


# -- EngineKeeper.unreachable ---------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_task_sent_to_a_just_killed_engine_runs_on_its_replacement(fresh_pool):
    # With the controller stopped, the engine answers its task and is SIGKILLed; resumed, the
    # controller reads the answer and sends the next task to the dead engine (EngineKeeper.unreachable), or
    # notices the death first. Either way the next task never started there (the engine's run slot
    # names the last task it started): it runs on the replacement engine instead of failing.
    # Repeated, since which comes first varies: the log shows when the send failed.
    pool = fresh_pool(1, hwm=1)
    controller = controller_of(pool)
    dead: set[int] = set()

    def live_engine():
        return next((pid for pid in pool.queue_status()["engine_pids"].values() if pid not in dead), None)

    for _ in range(6):
        wait_until(live_engine, T, "an engine not killed yet")
        engine = psutil.Process(live_engine())
        dead.add(engine.pid)
        first = pool.apply_async(_tasks.sleep_then, (0.3, "first"))
        second = pool.apply_async(_tasks.getpid)  # waits in the controller (hwm=1)
        wait_until(lambda: running_engine(pool), T, "a task running")
        controller.suspend()
        try:
            time.sleep(1.0)  # the engine answers `first` meanwhile (nothing to poll: the controller is stopped)
            engine.kill()
            wait_until(lambda proc=engine: proc.status() == psutil.STATUS_ZOMBIE, T, "the killed engine a zombie")
        finally:
            controller.resume()
        try:
            assert first.get(T) == "first"
        except EngineError as exc:  # killed before its answer left the engine
            assert "SIGKILL" in str(exc) and f"pid {engine.pid}" in str(exc), str(exc)
        assert second.get(T) != engine.pid  # it never started there: it ran on the replacement
        with open(pool._cluster.log_path, errors="replace") as f:
            if "could not send to" in f.read():
                break  # the send to the dead engine failed (EngineKeeper.unreachable): the case this is about
    assert pool.apply(_tasks.square, (4,)) == 16
