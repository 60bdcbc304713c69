"""``with pool.sync_imports(): import numpy as np``: imports made here, repeated on the engines.

:class:`SyncImports` records the imports a ``with`` block makes by
replacing ``builtins.__import__`` with a recording hook, for every thread,
while any such block is open (several threads, nested blocks: one hook
serves them all, keyed by the block's frame globals and thread); other
threads' imports pass through it unrecorded, at the cost of one dict
look-up each. When the last block closes, the original ``__import__`` is
put back. The block's import statements are then read from its source
(``ast``) to bind the same names on the engines.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import linecache
import sys
import threading
import types
from typing import Any, Callable, Iterator, Mapping

__all__ = ["SyncImports"]

# ast.parse from two threads at once can fail with "SystemError: AST constructor recursion
# depth mismatch" on Python 3.11 (CPython gh-106905): sync_imports blocks parse one at a time.
_AST_LOCK = threading.Lock()

# sync_imports blocks in progress: (id(globals of the block's frame), thread) -> their record lists.
# One hook serves them all (blocks in several threads, nested blocks), installed while any is open.
_RECORDERS: dict[tuple[int, int], list[list[tuple[str, tuple[str, ...]]]]] = {}
_RECORDERS_LOCK = threading.Lock()
_builtin_import: Any = None


def _recording_import(
    name: str,
    globals: Any = None,  # noqa: A002  (the builtin's own parameter names: callers may pass them by keyword)
    locals: Any = None,  # noqa: A002
    fromlist: Any = (),
    level: int = 0,
) -> Any:
    module = _builtin_import(name, globals, locals, fromlist, level)
    recorders = _RECORDERS.get((id(globals), threading.get_ident())) if globals is not None else None
    if recorders:
        try:
            absolute = importlib.util.resolve_name("." * level + name, globals.get("__package__"))
        except (ImportError, ValueError, AttributeError):
            absolute = name
        for records in recorders:
            records.append((absolute, tuple(fromlist or ())))
    return module


class SyncImports:
    """``with view.sync_imports(): import numpy as np``: the block's imports, repeated on the engines.

    While the block runs, ``builtins.__import__`` records the imports made
    from the calling frame. At the end, the block's import statements are
    read from its source (scripts, modules, notebook cells) and those that
    ran are repeated on every engine, binding the same names. Where the
    source cannot be read (the plain ``python`` REPL), the names of the
    calling frame bound to what was imported (modules, or attributes named
    in a from-list) are bound the same way.
    """

    def __init__(
        self, on_engines: Callable[[list[str], list[tuple[str, str, str | None]], bool], None], quiet: bool
    ) -> None:
        self._on_engines = on_engines  # runs the imports on the engines (printing which with quiet False)
        self._quiet = quiet
        self._frame: types.FrameType | None = None
        self._records: list[tuple[str, tuple[str, ...]]] = []
        self._before: dict[str, int] = {}
        self._key = (0, 0)

    def __enter__(self) -> None:
        global _builtin_import
        frame = sys._getframe(1)
        self._frame = frame
        self._before = {name: id(value) for name, value in frame.f_locals.items()}
        self._records = []
        self._key = (id(frame.f_globals), threading.get_ident())
        self._lineno = frame.f_lineno
        with _RECORDERS_LOCK:
            if not _RECORDERS and builtins.__import__ is not _recording_import:
                _builtin_import = builtins.__import__
                builtins.__import__ = _recording_import
            _RECORDERS.setdefault(self._key, []).append(self._records)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        with _RECORDERS_LOCK:
            recorders = _RECORDERS.get(self._key, [])
            for i, records in enumerate(recorders):
                if records is self._records:
                    del recorders[i]
                    break
            if not recorders:
                _RECORDERS.pop(self._key, None)
            if not _RECORDERS and builtins.__import__ is _recording_import:
                builtins.__import__ = _builtin_import
        frame, self._frame = self._frame, None
        if exc_type is not None or frame is None:
            return
        found = self._from_source(frame)
        modules, bindings = found if found is not None else self._resolve(frame.f_locals)
        del frame
        if not modules:
            return
        self._on_engines(modules, bindings, self._quiet)

    def _from_source(self, frame: types.FrameType) -> tuple[list[str], list[tuple[str, str, str | None]]] | None:
        """The block's imports that ran, read from its source; None if the source is not at hand."""
        lines = linecache.getlines(frame.f_code.co_filename, frame.f_globals)
        if not lines:
            return None
        try:
            with _AST_LOCK:
                tree = ast.parse("".join(lines))
        except (SyntaxError, ValueError):
            return None
        line = self._lineno
        blocks = [
            node
            for node in ast.walk(tree)
            if isinstance(node, (ast.With, ast.AsyncWith))
            and node.lineno <= line <= max(item.context_expr.end_lineno or node.lineno for item in node.items)
        ]
        if not blocks:
            return None
        block = max(blocks, key=lambda node: node.lineno)
        ran = {module for module, _ in self._records}
        package = frame.f_globals.get("__package__")
        modules: list[str] = []
        bindings: list[tuple[str, str, str | None]] = []
        for node in _statements(block.body):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name not in ran:
                        continue  # did not run (another branch), or failed
                    modules.append(alias.name)
                    if alias.asname:
                        bindings.append((alias.asname, alias.name, None))
                    else:
                        top = alias.name.split(".")[0]
                        bindings.append((top, top, None))
            elif isinstance(node, ast.ImportFrom):
                try:
                    module = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                except (ImportError, ValueError):
                    continue
                if module not in ran:
                    continue
                modules.append(module)
                for alias in node.names:
                    if alias.name == "*":
                        bindings += _star_bindings(module, frame.f_locals)
                    else:
                        bindings.append((alias.asname or alias.name, module, alias.name))
        return list(dict.fromkeys(modules)), bindings

    def _resolve(self, names: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, str, str | None]]]:
        modules: list[str] = []
        for absolute, _ in self._records:
            if absolute not in modules:
                modules.append(absolute)
        wanted_modules: dict[int, str] = {}
        for absolute in modules:
            parts = absolute.split(".")
            for i in range(1, len(parts) + 1):  # `import a.b.c` binds `a`; `as x` binds a.b.c
                mod = sys.modules.get(".".join(parts[:i]))
                if mod is not None:
                    wanted_modules[id(mod)] = mod.__name__
        attrs: dict[int, tuple[str, str]] = {}
        natural: set[str] = set()
        for absolute, fromlist in self._records:
            mod = sys.modules.get(absolute)
            if mod is None:
                continue
            for attr in fromlist:
                if attr == "*":
                    exported = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
                    for sub in exported:
                        if hasattr(mod, sub):
                            attrs.setdefault(id(getattr(mod, sub)), (absolute, sub))
                            natural.add(sub)
                elif hasattr(mod, attr):
                    value = getattr(mod, attr)
                    if isinstance(value, types.ModuleType):
                        wanted_modules[id(value)] = value.__name__
                    else:
                        attrs.setdefault(id(value), (absolute, attr))
                        natural.add(attr)
        bindings: list[tuple[str, str, str | None]] = []
        for name, value in list(names.items()):
            key = id(value)
            if isinstance(value, types.ModuleType) and key in wanted_modules:
                bindings.append((name, wanted_modules[key], None))
            elif key in attrs and (
                name in natural or self._before.get(name) != key or not isinstance(value, _SHARED_CONSTANTS)
            ):
                # An alias bound before the block to the very same object (a cell run twice) counts
                # too, unless the object is a constant Python shares between unrelated names.
                module, attr = attrs[key]
                bindings.append((name, module, attr))
        return modules, bindings


# Objects CPython shares between unrelated names (None, booleans, small ints, interned strings):
# the same object under another name proves nothing about an import.
_SHARED_CONSTANTS = (type(None), bool, int, str, bytes)


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of a block, nested blocks included (not the bodies of functions and classes,
    nor nested ``sync_imports`` blocks, which sync their own imports)."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or _is_sync_block(node):
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _statements(getattr(node, field, None) or [])
        for handler in getattr(node, "handlers", None) or []:
            yield from _statements(handler.body)


def _is_sync_block(node: ast.stmt) -> bool:
    if not isinstance(node, (ast.With, ast.AsyncWith)):
        return False
    for item in node.items:
        call = item.context_expr
        if isinstance(call, ast.Call):
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "sync_imports":
                return True
    return False


def _star_bindings(module: str, names: Mapping[str, Any]) -> list[tuple[str, str, str | None]]:
    """``from module import *``: the names of the caller's namespace it bound."""
    mod = sys.modules.get(module)
    if mod is None:
        return []
    exported = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
    return [(n, module, n) for n in exported if n in names and hasattr(mod, n) and names[n] is getattr(mod, n)]
