"""Exceptions raised by zpool.

Every class also derives from what the standard library raises in the same
situation, so ``except`` clauses written for :mod:`multiprocessing` keep
working after ``from zpool import Pool``::

    ZPoolError(Exception)
    ├─ PoolClosedError(ValueError)            multiprocessing: ValueError("Pool not running")
    ├─ TimeoutError(multiprocessing.TimeoutError, builtins.TimeoutError)
    ├─ BrokenPoolError(concurrent.futures.BrokenExecutor)   controller gone
    ├─ EngineError                            an engine died holding the task
    ├─ SerializationError(pickle.PicklingError)
    ├─ AuthenticationError(multiprocessing.AuthenticationError)
    ├─ ProtocolError                          a malformed message (never reaches users' calls)
    ├─ RemoteError                            the task failed; its exception could not be rebuilt
    ├─ TaskAborted                            aborted before it ran
    └─ UnmetDependency
       └─ ImpossibleDependency
          ├─ DependencyTimeout
          └─ InvalidDependency

All of them survive pickle and dill: every piece of state goes through
``Exception.__init__`` so that ``cls(*exc.args)`` rebuilds the exception.
This module imports only the standard library.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import multiprocessing
import pickle

__all__ = [
    "AuthenticationError",
    "BrokenPoolError",
    "DependencyTimeout",
    "EngineError",
    "ImpossibleDependency",
    "InvalidDependency",
    "PoolClosedError",
    "ProtocolError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "TaskAborted",
    "TimeoutError",
    "UnmetDependency",
    "ZPoolError",
]


class ZPoolError(Exception):
    """Base class of every exception zpool raises itself."""


class PoolClosedError(ZPoolError, ValueError):
    """The pool was closed or terminated and accepts no more work."""


class TimeoutError(ZPoolError, multiprocessing.TimeoutError, builtins.TimeoutError):  # noqa: A001
    """A wait ran out of time; the work it waited for goes on.

    Caught by ``except multiprocessing.TimeoutError`` and by the builtin
    ``except TimeoutError`` alike.
    """


class BrokenPoolError(ZPoolError, concurrent.futures.BrokenExecutor):
    """The controller is gone, so the pool cannot run anything any more."""


class EngineError(ZPoolError):
    """The engine running a task died or left before answering."""


class SerializationError(ZPoolError, pickle.PicklingError):
    """An object could not be serialized to cross to another process."""


class AuthenticationError(ZPoolError, multiprocessing.AuthenticationError):
    """A message carried a wrong or replayed signature."""


class ProtocolError(ZPoolError):
    """A message does not follow zpool's wire format."""


class TaskAborted(ZPoolError):
    """The task was aborted before it ran."""


class UnmetDependency(ZPoolError):
    """Raised by a task to say this engine cannot run it; it is tried elsewhere."""


class ImpossibleDependency(UnmetDependency):
    """The task's dependencies can never be met."""


class DependencyTimeout(ImpossibleDependency):
    """The task's dependencies were not met within its ``timeout``."""


class InvalidDependency(ImpossibleDependency):
    """The task depends on an unknown task id or on itself."""


class RemoteTraceback(Exception):
    """The formatted traceback of a remote failure, attached as ``__cause__``."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class RemoteError(ZPoolError):
    """A task raised an exception that could not be rebuilt in the caller.

    Parameters
    ----------
    ename : str
        The remote exception's type name, e.g. ``"MyError"``.
    evalue : str
        ``str()`` of the remote exception.
    traceback : str
        The formatted remote traceback.
    engine_id : int or None
        The engine the task ran on.
    """

    def __init__(self, ename: str, evalue: str, traceback: str = "", engine_id: int | None = None) -> None:
        super().__init__(ename, evalue, traceback, engine_id)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_id = engine_id

    def __str__(self) -> str:
        where = "" if self.engine_id is None else f" on engine {self.engine_id}"
        return f"{self.ename}: {self.evalue} (raised{where}; its type could not be rebuilt here)"
