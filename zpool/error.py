"""Exceptions raised by zpool.

Every class also derives from what the standard library raises in the same
situation, so ``except`` clauses written for :mod:`multiprocessing` keep
working after ``from zpool import Pool``::

    ZPoolError(Exception)
    ├─ PoolClosedError(ValueError)            multiprocessing: ValueError("Pool not running")
    ├─ TimeoutError(multiprocessing.TimeoutError, builtins.TimeoutError)
    ├─ BrokenPoolError(BrokenProcessPool)     controller gone (BrokenProcessPool: a BrokenExecutor)
    ├─ EngineError(BrokenProcessPool)         an engine died holding the task
    ├─ CompositeError                         a call on several engines failed on some
    ├─ SerializationError(pickle.PicklingError)   also the original error's type, e.g. TypeError
    │  └─ ResultEncodingError(multiprocessing.pool.MaybeEncodingError)
    ├─ AuthenticationError(multiprocessing.AuthenticationError)
    ├─ ProtocolError                          a malformed message (never reaches users' calls)
    ├─ RemoteError                            the task failed; its exception could not be rebuilt
    ├─ TaskAborted                            aborted before it ran
    ├─ UnknownTaskError(LookupError)          get_result: no such task, or its result is not kept
    └─ UnmetDependency
       └─ ImpossibleDependency
          ├─ DependencyTimeout
          └─ InvalidDependency

``RemoteTraceback`` is :class:`multiprocessing.pool.RemoteTraceback` itself.

All of them survive pickle and dill: every piece of state goes through
``Exception.__init__`` so that ``cls(*exc.args)`` rebuilds the exception.
This module imports only the standard library.
"""

from __future__ import annotations

import builtins
import concurrent.futures.process
import multiprocessing
import multiprocessing.pool
import pickle
from typing import Any

__all__ = [
    "AuthenticationError",
    "BrokenPoolError",
    "CompositeError",
    "DependencyTimeout",
    "EngineError",
    "ImpossibleDependency",
    "InvalidDependency",
    "PoolClosedError",
    "ProtocolError",
    "RemoteError",
    "RemoteTraceback",
    "ResultEncodingError",
    "SerializationError",
    "TaskAborted",
    "TimeoutError",
    "UnknownTaskError",
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


class BrokenPoolError(ZPoolError, concurrent.futures.process.BrokenProcessPool):
    """The controller is gone, so the pool cannot run anything any more.

    Also a :class:`concurrent.futures.process.BrokenProcessPool` (so a
    :class:`concurrent.futures.BrokenExecutor`), as
    :class:`concurrent.futures.ProcessPoolExecutor` raises.
    """


class EngineError(ZPoolError, concurrent.futures.process.BrokenProcessPool):
    """The engine running a task died or left before answering.

    Also a :class:`concurrent.futures.process.BrokenProcessPool`, which
    :class:`concurrent.futures.ProcessPoolExecutor` raises for a worker that
    ended abruptly; unlike there, the pool goes on with its other engines.
    """


class SerializationError(ZPoolError, pickle.PicklingError):
    """An object could not be serialized to cross to another process.

    Raised through :func:`serialization_error`, the instance is also of the
    type pickle itself raised (``TypeError: cannot pickle '_thread.lock'
    object``, or whatever a ``__reduce__`` raised), so ``except`` clauses
    written for :mod:`multiprocessing` keep catching it.
    """


class ResultEncodingError(SerializationError, multiprocessing.pool.MaybeEncodingError):  # type: ignore[name-defined,misc]
    """A task's result could not be serialized to come back to the caller.

    Also a :class:`multiprocessing.pool.MaybeEncodingError`; as there,
    :attr:`exc` and :attr:`value` are the ``repr`` of the serialization
    error and of the result.
    """

    def __init__(self, exc: Any, value: Any, hint: str = "") -> None:
        self.exc = exc if isinstance(exc, str) else repr(exc)
        self.value = value if isinstance(value, str) else repr(value)
        self.hint = hint
        Exception.__init__(self, self.exc, self.value, hint)

    def __str__(self) -> str:
        return f"Error sending result: {self.value}. Reason: {self.exc}{self.hint}"


# One subclass per foreign error type, made on demand (see serialization_error).
_MIXED: dict[type, type] = {}


def _as_plain_serialization_error(message: str) -> SerializationError:
    return SerializationError(message)


# Never mixed in: they change control flow (a StopIteration would end a for loop).
_NOT_MIXED = (StopIteration, StopAsyncIteration)


def serialization_error(message: str, cause: BaseException | None) -> SerializationError:
    """A :class:`SerializationError` saying `message` that is also an instance of ``type(cause)``.

    Only built-in exception types are combined (``TypeError``, ``RuntimeError``,
    ``AttributeError``, ...); for anything else, or when the two types cannot
    be combined, a plain :class:`SerializationError`. Crossing to another
    process, the combined type travels as a plain :class:`SerializationError`.
    """
    kind = type(cause)
    if (
        cause is None
        or not isinstance(cause, Exception)
        or kind.__module__ != "builtins"
        or isinstance(cause, _NOT_MIXED)
        or issubclass(SerializationError, kind)
    ):
        return SerializationError(message)
    try:
        mixed = _MIXED.get(kind)
        if mixed is None:
            mixed = type(
                f"SerializationError[{kind.__name__}]",
                (SerializationError, kind),
                {
                    "__module__": __name__,
                    "__reduce__": lambda self: (_as_plain_serialization_error, (self.message,)),
                    "__str__": lambda self: self.message,
                },
            )
            _MIXED[kind] = mixed
        exc: SerializationError = mixed(message)
        exc.message = message  # type: ignore[attr-defined]
    except Exception:  # incompatible layouts, or a constructor that wants other arguments
        return SerializationError(message)
    return exc


class AuthenticationError(ZPoolError, multiprocessing.AuthenticationError):
    """A message carried a wrong or replayed signature."""


class ProtocolError(ZPoolError):
    """A message does not follow zpool's wire format."""


class TaskAborted(ZPoolError):
    """The task was aborted before it ran."""


class UnknownTaskError(ZPoolError, LookupError):
    """``Pool.get_result`` asked for a task the cluster has no result of: never seen, purged, or not kept."""


class UnmetDependency(ZPoolError):
    """Raised by a task to say this engine cannot run it; it is tried elsewhere."""


class ImpossibleDependency(UnmetDependency):
    """The task's dependencies can never be met."""


class DependencyTimeout(ImpossibleDependency):
    """The task's dependencies were not met within its ``timeout``."""


class InvalidDependency(ImpossibleDependency):
    """The task depends on an unknown task id or on itself."""


# The standard library's class itself, so code that checks for it keeps working.
RemoteTraceback = multiprocessing.pool.RemoteTraceback  # type: ignore[attr-defined]


class RemoteError(ZPoolError):
    """A task raised an exception that could not be rebuilt in the caller.

    Also what a task's ``SystemExit``, ``KeyboardInterrupt`` or
    ``GeneratorExit`` becomes: raised in the caller, those would end its
    program, or pass for its own Ctrl-C.

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
        if self.ename in _NOT_RERAISED:
            return f"{self.ename}: {self.evalue} (raised{where}; not raised here: it would end your program)"
        return f"{self.ename}: {self.evalue} (raised{where}; its type could not be rebuilt here)"


_NOT_RERAISED = ("SystemExit", "KeyboardInterrupt", "GeneratorExit")


class CompositeError(ZPoolError):
    """A call on several engines of a view failed on at least one of them.

    Parameters
    ----------
    message : str
        Says which engines failed, and how.
    errors : dict
        ``{engine_id: exception}`` for each engine that failed, each with
        its remote traceback as ``__cause__``.
    results : list
        One entry per engine of the view, in engine order: its result, or
        its exception where it failed.

    Notes
    -----
    Raised once every engine has answered; ``__cause__`` is the first
    engine's exception, so the traceback printed shows where it failed.
    """

    def __init__(self, message: str, errors: dict[int, BaseException] | None = None, results: Any = None) -> None:
        super().__init__(message, errors, results)
        self.message = message
        self.errors: dict[int, BaseException] = dict(errors or {})
        self.results: list[Any] = list(results or [])

    def __str__(self) -> str:
        return self.message


def rejected_call_text(reason: Any) -> str:
    """What to tell the caller whose call the controller refused, for `reason` (its words)."""
    if "replayed message" in str(reason):  # (protocol.Session.unpack's words)
        return (
            f"the controller refused the message carrying this call as a replay ({reason}): it had received"
            " a message with the same signature already, or this process's later messages long before this one."
            " zpool sends each message once, so something else duplicated or held back the pool's traffic (a"
            " misbehaving peer or proxy holding the cluster's key). The call did not run; call it again, and if"
            " nothing but zpool talks to the controller, please report this as a bug"
        )
    if "bad signature" in str(reason):  # (protocol.Session.unpack's words)
        return (
            f"the controller rejected the message carrying this call ({reason}). Its signature"
            " no longer matched its contents, which usually means an argument's memory (a numpy array, a"
            " bytearray) was modified after the call returned and before the data was sent; pass a copy,"
            " or modify arguments only once the result has arrived"
        )
    return (
        f"the controller rejected the message carrying this call as malformed ({reason}); the call did not"
        " run. The controller and this process may run different versions of zpool (a cluster started by"
        " another installation); otherwise this is a bug in zpool: please report it"
    )
