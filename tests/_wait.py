"""Waiting on a condition in the tests: one polling loop, and the conditions the suite waits on.

A test that needs something to have happened in another process (an engine
holds a task, an engine is gone, the controller dropped a message) polls for
it with :func:`wait_until` instead of sleeping for a guessed time: it goes on
as soon as the condition holds and, when it never does, fails saying what it
waited for and what it saw last (loky's ``_check_subprocesses_number`` and
pyzmq's test helpers do the same).

The pool conditions read :meth:`zpool.Pool.queue_status`, the controller's view:
an engine's ``queue`` counts the tasks it holds, ``running`` those it was told
to start.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable, TypeVar

import pytest

__all__ = [
    "ENTER_TASK_S",
    "POLL_S",
    "T",
    "ctrl_c_after",
    "engine_gone",
    "engine_holding",
    "engine_started",
    "running",
    "wait_empty",
    "wait_entered",
    "wait_in_task",
    "wait_running",
    "wait_stable",
    "wait_until",
]

V = TypeVar("V")

# Generous default bound for a condition that normally holds within milliseconds (2-core CI machines).
T = 60.0
POLL_S = 0.02


def wait_until(predicate: Callable[[], V], timeout: float = T, what: str = "the condition", poll: float = POLL_S) -> V:
    """Call `predicate` every `poll` seconds until it returns a truthy value, and return that value.

    Fails the test, naming `what` and the last value seen, if `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what} (last seen: {value!r})")
        time.sleep(poll)


def wait_empty(collect: Callable[[], Any], timeout: float = T, what: str = "nothing left") -> None:
    """Wait until `collect` returns an empty collection; fail showing what it still held after `timeout` seconds."""
    left: list[Any] = []

    def empty() -> bool:
        left[:] = [collect()]
        return not left[0]

    deadline = time.monotonic() + timeout
    while not empty():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what} (still there: {left[0]!r})")
        time.sleep(POLL_S)


def wait_stable(read: Callable[[], V], quiet: float, timeout: float = T, what: str = "the value settles") -> V:
    """Wait until `read()` returns the same value for `quiet` seconds on end; return that value.

    For what must stop by itself (a feeder thread that reads ahead, then waits
    for the consumer): if the value still changes after `timeout` seconds, the
    test fails, showing the last value.
    """
    deadline = time.monotonic() + timeout
    value = read()
    since = time.monotonic()
    while True:
        time.sleep(POLL_S)
        now_value, now = read(), time.monotonic()
        if now_value != value:
            value, since = now_value, now
        elif now - since >= quiet:
            return value
        if now > deadline:
            pytest.fail(f"not within {timeout} s: {what} (still changing, last seen: {value!r})")


def running(pool) -> int:
    """How many tasks the engines were told to start (the controller's count, all engines)."""
    return sum(e["running"] for e in pool.queue_status()["engines"].values())


def wait_running(pool, n: int, timeout: float = T) -> int:
    """Wait until at least `n` tasks have been handed to the engines to run; return how many."""
    return wait_until(lambda: (count := running(pool)) >= n and count, timeout, f"{n} task(s) running on the engines")


# How long an engine takes, at most on a loaded machine, from being handed a task to running its code.
ENTER_TASK_S = 0.2


def wait_in_task(pool, n: int, timeout: float = T) -> None:
    """Wait until `n` tasks run on the engines, and then until they are inside the task's own code.

    The controller counts a task running once it is handed to its engine, and
    nothing reports when the engine has entered the task's code: the last
    step is a short sleep (an interrupt before it aborts the task "before it ran").
    """
    wait_running(pool, n, timeout)
    time.sleep(ENTER_TASK_S)


def wait_entered(marker_dir: str, n: int, timeout: float = T) -> None:
    """Wait until `n` tasks wrapped in ``tests._tasks.entered(marker_dir, ...)`` are inside their code."""
    wait_until(lambda: len(os.listdir(marker_dir)) >= n, timeout, f"{n} task(s) inside their code")


def engine_holding(pool, n: int = 1, timeout: float = T) -> tuple[int, int]:
    """Wait until an engine holds at least `n` tasks; return its ``(engine_id, pid)``."""

    def find() -> tuple[int, int] | None:
        status: dict[str, Any] = pool.queue_status()
        for engine_id, load in status["engines"].items():
            if load["queue"] >= n:
                return int(engine_id), status["engine_pids"][engine_id]
        return None

    return wait_until(find, timeout, f"an engine holding {n} task(s)")


def engine_started(pool, task_id: str, timeout: float = T) -> tuple[int, int]:
    """Wait until an engine has started task `task_id`; return its ``(engine_id, pid)``.

    Read from the engines' run slots (``zpool._wire``), which an engine
    writes as it starts a task: the controller's count of tasks an engine
    holds includes one it was handed and has not started yet (killed then,
    the task runs elsewhere instead of failing).
    """
    import zpool._wire as wire

    connection_file = os.path.join(pool._cluster.workdir, "cluster.json")

    def find() -> tuple[int, int] | None:
        for engine_id, pid in pool.queue_status()["engine_pids"].items():
            if pid is not None and wire.read_run_slot(wire.run_slot_path(connection_file, pid)) == task_id:
                return int(engine_id), pid
        return None

    return wait_until(find, timeout, f"an engine running task {task_id}")


def engine_gone(pool, engine_id: int, timeout: float = T) -> None:
    """Wait until engine `engine_id` is no longer registered with the controller."""
    wait_until(
        lambda: str(engine_id) not in pool.queue_status()["engines"],
        timeout,
        f"engine {engine_id} unregistered (it was killed)",
    )


def ctrl_c_after(seconds: float) -> threading.Thread:
    """Send SIGINT to this process after `seconds`, from another thread (the main thread gets the KeyboardInterrupt)."""

    def kick():
        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=kick, daemon=True)
    thread.start()
    return thread
