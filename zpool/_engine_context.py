"""The engine's per-process context: its ``__main__``, the globals shipped into it, who it is.

An engine runs every task with one namespace, a fresh ``__main__`` module,
as a :mod:`multiprocessing` worker runs tasks in its own ``__main__``. This
module owns what goes with it, in one :class:`EngineContext`:

* ``namespace``: the engine's ``__main__`` globals, which tasks, the
  initializer and the direct interface (:mod:`zpool._namespace`) share;
* ``shipped``: name -> the value last copied into the namespace from the
  caller's ``__main__`` (see :meth:`EngineContext.adopt`);
* ``kept``: functions and classes sent by value that were rebuilt here once
  and are reused while the caller sends the very same pickle
  (:meth:`EngineContext.adopt_kept`);
* ``engine_id`` and ``label``: who runs the tasks, for the header of every
  traceback sent back (:func:`describe_exception`).

::

    engine/worker.py ──set_main_namespace() at start-up, registered(id)──▶ EngineContext
    serialize._loads_dill ──adopt(what dill rebuilt)──────────────────────▶     (current())
    serialize._loads_kept ──adopt_kept(pickle, rebuild)───────────────────▶
    _namespace (push, pull, execute...) ──namespace, forget_shipped()─────▶
    _partition.ItemFailure, the worker's error replies ──describe_exception()─▶ label

The context is the one process-wide slot of zpool: pickle calls
``serialize._loads_dill`` with nothing but the bytes, so that function finds
the context through :func:`current`. The worker installs it once, before it
takes a task, and only the main thread uses it after that (the heartbeat
thread never loads a payload). Outside an engine (the user's process, the
controller) there is none, and nothing is adopted. Standard library only,
so that :mod:`zpool.serialize`, :mod:`zpool._partition` and
:mod:`zpool._namespace` may all read it.
"""

from __future__ import annotations

import builtins
import collections
import os
import traceback
import types
from typing import Any, Callable, Iterable, overload

__all__ = [
    "MAX_TRACEBACK_CHARS",
    "EngineContext",
    "current",
    "describe_exception",
    "forget_shipped",
    "label",
    "main_namespace",
    "set_main_namespace",
]

# Longest traceback text carried back, in characters (the start and end are kept).
MAX_TRACEBACK_CHARS = 20_000

# Rebuilt by-value pickles an engine keeps (see EngineContext.adopt_kept): at most this many, and bytes of pickles.
KEPT_MAX = 256
KEPT_MAX_BYTES = 32 << 20

_ABSENT = object()


class EngineContext:
    """What an engine process holds across tasks: its namespace, what the caller shipped, its identity.

    Parameters
    ----------
    namespace : dict
        The globals of the engine's ``__main__``.
    """

    __slots__ = ("engine_id", "kept", "kept_bytes", "label", "namespace", "shipped")

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        self.shipped: dict[str, Any] = {}
        # pickle -> (what it rebuilt, adopted; the globals it ships, see _ship), least recently used first.
        self.kept: collections.OrderedDict[bytes, tuple[Any, list[list[Any]]]] = collections.OrderedDict()
        self.kept_bytes = 0
        self.engine_id: int | None = None
        self.label = f"pid {os.getpid()}"

    def registered(self, engine_id: int) -> None:
        """Record the id the controller gave this engine (tracebacks name it from now on)."""
        self.engine_id = engine_id
        self.label = f"engine {engine_id} (pid {os.getpid()})"

    def adopt(self, obj: Any) -> Any:
        """`obj` as code from the caller's ``__main__`` should run here: with the namespace as its globals.

        A function sent by value arrives with a private copy of the globals it
        uses. Rebound to the engine's namespace instead (with the functions it
        reaches: through globals, closures, defaults, ``__wrapped__``, and the
        methods of ``__main__`` classes), it sees what an initializer or an
        earlier task stored there with ``global``, as in a worker of
        :mod:`multiprocessing`.

        The globals it brought are copied into the namespace, replacing what the
        caller sent before (so a loop variable, a changed constant or a redefined
        function always has the caller's current value), except where code on
        the engine has bound the name to something else since (an initializer's
        ``global x; x = ...``): that stays. Anything else is returned as it is.
        """
        return _adopt(obj, self, {}, []) if _from_main(obj) else obj

    def adopt_kept(self, data: bytes, rebuild: Callable[[bytes], Any]) -> Any:
        """What ``adopt(rebuild(data))`` gives, rebuilt once per distinct `data` and reused after.

        For the pickle of a function or class whose captured globals,
        closure and defaults the caller found unchanging (it sends the same
        bytes again only while they are unchanged): rebuilding it (dill,
        tens of microseconds) on every task of a loop is wasted. The one kept
        is returned again, and the globals it ships are copied into the
        namespace again by :meth:`adopt`'s rule (the caller's value wins
        unless code here rebound the name), as a fresh rebuild would. The
        last :data:`KEPT_MAX` pickles (:data:`KEPT_MAX_BYTES` in all) are kept.
        """
        hit = self.kept.get(data)
        if hit is not None:
            self.kept.move_to_end(data)
            kept, kept_ships = hit
            for entry in list(kept_ships):
                _ship(self, entry, {}, kept_ships)
            return kept
        ships: list[list[Any]] = []
        obj = rebuild(data)
        if _from_main(obj):
            obj = _adopt(obj, self, {}, ships)
        self.kept[data] = (obj, ships)
        self.kept_bytes += len(data)
        while len(self.kept) > KEPT_MAX or self.kept_bytes > KEPT_MAX_BYTES:
            old, _ = self.kept.popitem(last=False)
            self.kept_bytes -= len(old)
        return obj

    def forget_shipped(self, names: Iterable[str] | None = None) -> None:
        """Forget that `names` (default: all) came from the caller: what it sends next is taken afresh."""
        if names is None:
            self.shipped.clear()
            return
        for name in names:
            self.shipped.pop(name, None)


# The context of this process if it is an engine, else None (see the module's docstring).
_current: EngineContext | None = None


@overload
def set_main_namespace(namespace: dict[str, Any]) -> EngineContext: ...
@overload
def set_main_namespace(namespace: None) -> None: ...
def set_main_namespace(namespace: dict[str, Any] | None) -> EngineContext | None:
    """Make this process an engine whose ``__main__`` is `namespace`: install a fresh context and return it.

    The worker calls it once at start-up; None leaves the engine role (tests).
    """
    global _current
    _current = EngineContext(namespace) if namespace is not None else None
    return _current


def current() -> EngineContext | None:
    """This process's :class:`EngineContext`; None outside an engine."""
    return _current


def main_namespace() -> dict[str, Any] | None:
    """The engine's namespace; None outside an engine."""
    return _current.namespace if _current is not None else None


def forget_shipped(names: Iterable[str] | None = None) -> None:
    """:meth:`EngineContext.forget_shipped` of this process's context (nothing outside an engine)."""
    if _current is not None:
        _current.forget_shipped(names)


def label() -> str:
    """Who runs tasks here, for messages: ``engine 3 (pid 4711)`` once registered, else ``pid 4711``."""
    return _current.label if _current is not None else f"pid {os.getpid()}"


def describe_exception(exc: BaseException, tb: Any, context: str = "") -> dict[str, Any]:
    """The error report sent for a failed task: type, message, formatted traceback, where."""
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    if len(text) > MAX_TRACEBACK_CHARS:
        half = MAX_TRACEBACK_CHARS // 2
        text = text[:half] + "\n... (traceback shortened) ...\n" + text[-half:]
    try:
        evalue = str(exc)
    except BaseException:
        evalue = f"<unprintable {type(exc).__name__}>"
    engine = _current
    return {
        "ename": type(exc).__name__,
        "emodule": type(exc).__module__,
        "evalue": evalue[:10_000],
        "traceback": f"Traceback from {label()}{context}:\n{text}",
        "engine_id": engine.engine_id if engine is not None else None,
    }


def _from_main(obj: Any) -> bool:
    return getattr(obj, "__module__", None) == "__main__" and (type(obj) is types.FunctionType or isinstance(obj, type))


def _adopt(obj: Any, context: EngineContext, seen: dict[int, Any], ships: list[list[Any]]) -> Any:
    """`obj`, a function or class dill rebuilt from the caller's ``__main__``, rebound to the context's namespace.

    The globals it brought are shipped into the namespace (see :func:`_ship`)
    and appended to `ships`.
    """
    done = seen.get(id(obj))
    if done is not None:
        return done
    namespace = context.namespace
    if isinstance(obj, type):
        seen[id(obj)] = obj
        _adopt_methods(obj, context, seen, ships)
        return obj
    func: types.FunctionType = obj
    if func.__globals__ is namespace:
        return func
    adopted = types.FunctionType(func.__code__, namespace, func.__name__, None, func.__closure__)
    seen[id(func)] = adopted
    defaults = func.__defaults__
    adopted.__defaults__ = tuple(_adopted(d, context, seen, ships) for d in defaults) if defaults else defaults
    kwdefaults = func.__kwdefaults__
    if kwdefaults:
        adopted.__kwdefaults__ = {k: _adopted(v, context, seen, ships) for k, v in kwdefaults.items()}
    for attr in ("__qualname__", "__module__", "__doc__", "__annotations__", "__type_params__"):
        if hasattr(func, attr):
            setattr(adopted, attr, getattr(func, attr))
    adopted.__dict__.update({k: _adopted(v, context, seen, ships) for k, v in func.__dict__.items()})
    for cell in func.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _from_main(contents):
            cell.cell_contents = _adopt(contents, context, seen, ships)
    for name, value in list(func.__globals__.items()):
        if name.startswith("__") or getattr(builtins, name, _ABSENT) is value:
            continue  # dunders, and builtins dill listed among the globals
        entry = [name, value, False]
        ships.append(entry)
        _ship(context, entry, seen, ships)
    return adopted


def _ship(context: EngineContext, entry: list[Any], seen: dict[int, Any], ships: list[list[Any]]) -> None:
    """Bind a global the caller sent, ``[name, value, adopted yet]``, unless code here bound the name since.

    The value is adopted (if it is a function or class of ``__main__``) the
    first time it is bound, and `entry` updated.
    """
    name, value, adopted = entry
    namespace, shipped = context.namespace, context.shipped
    bound = namespace.get(name, _ABSENT)
    if bound is _ABSENT or bound is shipped.get(name, _ABSENT):
        if not adopted:
            entry[1] = value = _adopted(value, context, seen, ships)
            entry[2] = True
        namespace[name] = shipped[name] = value


def _adopted(value: Any, context: EngineContext, seen: dict[int, Any], ships: list[list[Any]]) -> Any:
    return _adopt(value, context, seen, ships) if _from_main(value) else value


def _adopt_methods(cls: type, context: EngineContext, seen: dict[int, Any], ships: list[list[Any]]) -> None:
    for name, attr in list(vars(cls).items()):
        if type(attr) is types.FunctionType:
            new: Any = _adopted(attr, context, seen, ships)
        elif isinstance(attr, (staticmethod, classmethod)) and _from_main(attr.__func__):
            new = type(attr)(_adopt(attr.__func__, context, seen, ships))
        elif isinstance(attr, property):
            fget, fset, fdel = (_adopted(f, context, seen, ships) for f in (attr.fget, attr.fset, attr.fdel))
            new = property(fget, fset, fdel, attr.__doc__)
        else:
            continue
        if new is not attr:
            try:
                setattr(cls, name, new)
            except (AttributeError, TypeError):
                pass
