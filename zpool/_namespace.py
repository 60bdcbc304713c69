"""What runs on an engine for the direct interface: its namespace as a dict (DESIGN §7).

The client sends these functions by reference, as the tasks of
:class:`~zpool.view.EngineView`'s methods; they act on the engine's
namespace, the ``__main__`` that code sent from the caller's ``__main__``
runs in (:class:`zpool._engine_context.EngineContext`). Errors are raised as
plain Python errors (``NameError`` for a name that is not there), and the
traceback the caller sees says which engine raised them.
"""

from __future__ import annotations

import collections
import dis
import hashlib
import importlib
import linecache
import types
from typing import Any, Sequence

from zpool import _engine_context

__all__ = ["clear", "execute", "get", "pull", "push", "scatter_part", "sync_imports"]

# Sources of executed code kept for tracebacks (linecache), the newest LINECACHE_MAX.
LINECACHE_MAX = 256
_SOURCES: collections.OrderedDict[str, None] = collections.OrderedDict()

_ABSENT = object()
# Names a namespace keeps through clear(): the module's own (__name__, __builtins__, ...).
_KEPT = ("__name__", "__doc__", "__package__", "__loader__", "__spec__", "__builtins__")


def namespace() -> dict[str, Any]:
    """The engine's namespace.

    Raises
    ------
    RuntimeError
        Outside an engine.
    """
    return _context().namespace


def _context() -> _engine_context.EngineContext:
    context = _engine_context.current()
    if context is None:
        raise RuntimeError("the direct interface's functions run on engines only")
    return context


def push(values: dict[str, Any]) -> None:
    """Bind each name of `values` in the namespace."""
    context = _context()
    context.namespace.update(values)
    context.forget_shipped(values)  # bound here now: what the caller ships later leaves them be


def scatter_part(name: str, part: Any) -> None:
    """Bind this engine's part of a scattered sequence (a range part becomes a list here)."""
    push({name: list(part) if isinstance(part, range) else part})


def pull(names: str | Sequence[str]) -> Any:
    """The value of a name, or a list of values for a list of names.

    Raises
    ------
    NameError
        Naming the first name that is not defined here.
    """
    ns = namespace()
    if isinstance(names, str):
        return _lookup(ns, names)
    return [_lookup(ns, name) for name in names]


def get(names: str | Sequence[str], default: Any = None) -> Any:
    """Like :func:`pull`, with `default` for names that are not defined."""
    ns = namespace()
    if isinstance(names, str):
        return ns.get(names, default)
    return [ns.get(name, default) for name in names]


def _lookup(ns: dict[str, Any], name: str) -> Any:
    try:
        return ns[name]
    except KeyError:
        raise NameError(f"name {name!r} is not defined in the namespace of {_engine_context.label()}") from None


def clear() -> None:
    """Empty the namespace (the module's own dunder names stay)."""
    context = _context()
    ns = context.namespace
    for name in [n for n in ns if n not in _KEPT]:
        del ns[name]
    context.forget_shipped()


def execute(code: str, filename: str | None = None) -> None:
    """Run `code` (a string of statements) in the namespace.

    Its source is registered with :mod:`linecache`, so a traceback shows the
    failing lines.
    """
    if filename is None:
        digest = hashlib.sha1(code.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        filename = f"<zpool execute {digest}>"
    compiled = compile(code, filename, "exec")
    _remember_source(filename, code)
    context = _context()
    ns = context.namespace
    # Names the code rebinds (or deletes) are the engine's from now on: what the caller ships later
    # leaves them be. Judged by identity, so code that failed, or did not reach an assignment, or
    # merely declares `global x`, changes nothing.
    stored = _stored_names(compiled)
    before = {name: id(ns.get(name, _ABSENT)) for name in stored}
    try:
        exec(compiled, ns)
    finally:
        context.forget_shipped([name for name in stored if id(ns.get(name, _ABSENT)) != before[name]])


def _remember_source(filename: str, code: str) -> None:
    """Register `code` with linecache under `filename`, so tracebacks show its lines (bounded)."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    _SOURCES[filename] = None
    _SOURCES.move_to_end(filename)
    while len(_SOURCES) > LINECACHE_MAX:
        old, _ = _SOURCES.popitem(last=False)
        linecache.cache.pop(old, None)


def _stored_names(code: types.CodeType, top: bool = True) -> set[str]:
    """Global names `code` may bind or delete: at its top level, and with ``global`` in what it defines."""
    ops = ("STORE_NAME", "DELETE_NAME", "STORE_GLOBAL", "DELETE_GLOBAL") if top else ("STORE_GLOBAL", "DELETE_GLOBAL")
    names = {instr.argval for instr in dis.get_instructions(code) if instr.opname in ops}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _stored_names(const, top=False)
    return names


def sync_imports(modules: Sequence[str], bindings: Sequence[tuple[str, str, str | None]]) -> None:
    """Import `modules` (dotted names), then bind each ``(name, module, attribute)`` in the namespace.

    ``attribute`` None binds the module itself (``import numpy as np`` is
    ``("np", "numpy", None)``); otherwise that attribute of it
    (``from math import pi`` is ``("pi", "math", "pi")``).
    """
    for module in modules:
        importlib.import_module(module)
    context = _context()
    ns = context.namespace
    for name, module, attr in bindings:
        mod = importlib.import_module(module)
        if attr is None:
            ns[name] = mod
        elif hasattr(mod, attr):
            ns[name] = getattr(mod, attr)
        else:  # `from package import submodule`, as the import statement does it
            ns[name] = importlib.import_module(f"{module}.{attr}")
    context.forget_shipped([name for name, _, _ in bindings])
