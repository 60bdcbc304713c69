"""A cheaper :class:`concurrent.futures.Future` set-up, for the tens of thousands of results a burst makes.

:class:`~zpool.asyncresult.AsyncResult` is a ``concurrent.futures.Future``.
``Future.__init__`` builds a ``threading.Condition``, which costs four
times as much as this module's :class:`LeanCondition`; where ``Future``'s
fields are the ones known here (:data:`LEAN_FUTURE`: CPython 3.9 to 3.13),
``AsyncResult`` sets them itself with a lean condition. This depends on
CPython's ``Future`` internals and on ``RLock._release_save``: it is
checked by ``tests/unit/test_fast_paths.py`` on every Python the suite
runs on, and falls back to ``Future.__init__`` where the fields differ.
"""

from __future__ import annotations

import concurrent.futures
from _thread import RLock as _RLock
from _thread import allocate_lock as _allocate_lock
from typing import Any

__all__ = ["FINISHED", "LEAN_FUTURE", "NOT_DONE", "PENDING", "LeanCondition"]


class LeanCondition:
    """The part of :class:`threading.Condition` a :class:`concurrent.futures.Future` uses, made cheap.

    Re-entrant, as Future's own condition is: ``concurrent.futures.wait``
    (FIRST_EXCEPTION) calls ``cancelled()`` and ``exception()`` on futures
    whose conditions it holds. The list of waiters is made by the first
    :meth:`wait`. ``threading.Condition()`` costs four times as much to
    create, in Python code run for each of tens of thousands of results.
    """

    __slots__ = ("_lock", "_waiters")

    def __init__(self) -> None:
        self._lock: Any = _RLock()  # (_release_save and _acquire_restore: the C RLock has them)
        self._waiters: list[Any] | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return bool(self._lock.acquire())

    def __exit__(self, *exc_info: Any) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock (however often it is held) until notified or `timeout` seconds pass."""
        waiter = _allocate_lock()
        waiter.acquire()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []
        waiters.append(waiter)
        saved = self._lock._release_save()
        got = False
        try:
            if timeout is None:
                got = waiter.acquire()
            elif timeout > 0:
                got = waiter.acquire(True, timeout)
            else:
                got = waiter.acquire(False)
            return got
        finally:
            self._lock._acquire_restore(saved)
            if not got:
                try:
                    waiters.remove(waiter)
                except ValueError:
                    pass  # notified just as the wait ended

    def notify(self, n: int = 1) -> None:
        waiters = self._waiters
        if waiters:
            for waiter in waiters[:n]:
                waiter.release()
            del waiters[:n]

    def notify_all(self) -> None:
        waiters = self._waiters
        if waiters:
            for waiter in waiters:
                waiter.release()
            waiters.clear()


def _future_fields() -> frozenset[str]:
    return frozenset(vars(concurrent.futures.Future()))


# Whether Future.__init__ sets exactly the fields AsyncResult sets itself (true from 3.9 to 3.13).
LEAN_FUTURE = _future_fields() == {"_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks"}
# Future's states (concurrent.futures._base's names).
PENDING = concurrent.futures._base.PENDING
FINISHED = concurrent.futures._base.FINISHED
NOT_DONE = (concurrent.futures._base.PENDING, concurrent.futures._base.RUNNING)
