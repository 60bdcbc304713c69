"""The direct interface (DESIGN §7): the engines' namespaces, views of engines, and the decorators.

::

    pool.engines          EngineView of every engine up now      ─┐ each method runs on every engine
    pool.engines[0]       one engine (a single value back)         │ of the view, in engine order,
    pool.engines[1:3]     a slice, taken when the view is made     ┘ one direct task per engine

A view's calls are *direct* tasks: the scheduler sends each to its engine
at once and in order, whatever the load balancing (see
:mod:`zpool.controller.scheduler`). The namespace operations run
:mod:`zpool._namespace`'s functions there. ``pool.push``, ``pool.scatter``
and the other namespace methods act on every engine up at the time of the
call; ``pool.apply``/``pool.map`` keep their standard-library meaning, and
``pool.remote``/``pool.parallel`` are load-balanced.

Nothing here touches a socket: tasks go through the pool's connection, as
``apply_async`` does.
"""

from __future__ import annotations

import ast
import builtins
import collections.abc
import functools
import importlib.util
import keyword
import linecache
import operator
import os
import sys
import threading
import tokenize
import types
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from zpool import _namespace
from zpool._partition import default_chunksize, even_bounds, join_parts, run_chunk, split_evenly
from zpool.asyncresult import DirectResult
from zpool.error import EngineError, SerializationError, serialization_error
from zpool.protocol import MsgType
from zpool.serialize import callable_name, dumps, dumps_call, explain_iterable, short_repr

# ast.parse from two threads at once can fail with "SystemError: AST constructor recursion
# depth mismatch" on Python 3.11 (CPython gh-106905): sync_imports blocks parse one at a time.
_AST_LOCK = threading.Lock()

__all__ = ["EngineView", "ParallelFunction", "RemoteFunction"]


def _check_name(name: Any, what: str = "name") -> str:
    if not isinstance(name, str):
        raise TypeError(f"a {what} in the engines' namespace must be a str, not {type(name).__name__}")
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{name!r} is not a valid Python identifier, so it cannot be a {what} in the namespace")
    if name.startswith("__") and name.endswith("__"):
        raise ValueError(f"{name!r} is one of the namespace module's own names; choose a name without the __s")
    return name


def _is_sequence(value: Any) -> bool:
    """What ``scatter`` and ``@parallel`` split: lists, tuples, ranges, numpy arrays (of 1+ dimensions)."""
    if isinstance(value, (list, tuple, range)):
        return True
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray) and value.ndim >= 1


def _none(values: list[Any]) -> None:
    return None


def _check_flag(name: str, value: Any, none_ok: bool = False) -> None:
    if not (isinstance(value, bool) or (none_ok and value is None)):
        allowed = "True, False or None" if none_ok else "True or False"
        raise TypeError(f"{name} must be {allowed}, not {value!r}")


class _NamespaceMethods:
    """The namespace methods shared by :class:`EngineView` and :class:`~zpool.Pool`.

    Each runs on every engine of ``self._view()`` and waits for them unless
    ``block=False`` (then it returns a :class:`~zpool.asyncresult.DirectResult`).
    """

    #: Default of every ``block`` argument (``False``: methods return results at once).
    block: bool = True

    def _view(self) -> EngineView:
        raise NotImplementedError

    def _blocking(self, block: bool | None) -> bool:
        if block is None:
            return bool(self.block)
        if not isinstance(block, bool):
            raise TypeError(f"block must be True, False or None, not {block!r}")
        return block

    def push(self, namespace: Mapping[str, Any], block: bool | None = None) -> Any:
        """Bind names in the engines' namespaces: ``push({"a": 1, "b": arr})``.

        Parameters
        ----------
        namespace : mapping
            Names (identifiers) to values. Functions from ``__main__`` run
            on the engines with the namespace as their globals.
        block : bool, optional
            Wait for every engine (default :attr:`block`); ``False``
            returns a :class:`DirectResult` at once.

        Raises
        ------
        TypeError, ValueError
            If `namespace` is not a mapping of identifiers.
        SerializationError
            If a value cannot be sent, naming it.
        """
        if not isinstance(namespace, collections.abc.Mapping):
            raise TypeError(f"push() takes a mapping of names to values, not {type(namespace).__name__}")
        values = {_check_name(name): value for name, value in namespace.items()}
        _check_sendable(values, "push")
        result = self._view()._run(_namespace.push, (values,), "push", self._blocking(block), _none)
        self._rebound(values)
        return result

    def pull(self, names: str | Sequence[str], block: bool | None = None) -> Any:
        """The values of names in the engines' namespaces.

        Parameters
        ----------
        names : str or list of str
            One name, or several (each engine then gives a list).

        Returns
        -------
        list or value
            One entry per engine, in engine order; the value itself for a
            view of one engine.

        Raises
        ------
        NameError
            (On a view of one engine; else inside a :class:`CompositeError`)
            if a name is not defined there.
        """
        wanted = _check_names(names)
        return self._view()._run(_namespace.pull, (wanted,), "pull", self._blocking(block))

    def get(self, names: str | Sequence[str], default: Any = None, block: bool | None = None) -> Any:
        """Like :meth:`pull`, but `default` where a name is not defined (as ``dict.get``)."""
        wanted = _check_names(names)
        return self._view()._run(_namespace.get, (wanted, default), "get", self._blocking(block))

    def update(self, namespace: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **names: Any) -> None:
        """Bind names in the engines' namespaces and wait, as ``dict.update`` takes them (see :meth:`push`)."""
        self.push({**dict(namespace), **names}, block=True)

    def __getitem__(self, name: Any) -> Any:
        """``pool["a"]``: :meth:`pull` of one name."""
        if not isinstance(name, str):
            raise TypeError(
                f"names in the engines' namespace are str, not {type(name).__name__};"
                " to pick engines, index pool.engines (pool.engines[0], pool.engines[1:3])"
            )
        return self.pull(name, block=True)

    def __setitem__(self, name: str, value: Any) -> None:
        """``view["a"] = x``: :meth:`push` of one name."""
        self.push({name: value}, block=True)

    def clear(self, block: bool | None = None) -> Any:
        """Empty the engines' namespaces (what ``push``, ``execute`` and tasks stored there)."""
        result = self._view()._run(_namespace.clear, (), "clear", self._blocking(block), _none)
        self._rebound(None)
        return result

    def execute(self, code: str, block: bool | None = None) -> Any:
        """Run Python statements in the engines' namespaces: ``execute("c = a + b")``.

        The code is compiled here first, so a syntax error raises here.

        Raises
        ------
        SyntaxError
            If `code` does not compile.
        CompositeError
            If it raised on some engines (a view of one engine raises the
            error itself); each error's traceback shows the failing line.
        """
        if not isinstance(code, str):
            raise TypeError(f"execute() takes a string of Python code, not {type(code).__name__}")
        compile(code, "<execute>", "exec")
        return self._view()._run(_namespace.execute, (code,), "execute", self._blocking(block), _none)

    def run(self, filename: str | os.PathLike[str], block: bool | None = None) -> Any:
        """Run a Python file in the engines' namespaces.

        The file is read here (engines may be on other machines) and its
        code runs as :meth:`execute` would run it, its path in tracebacks.

        Raises
        ------
        OSError
            If the file cannot be read here.
        SyntaxError
            If it does not compile.
        """
        path = os.fspath(filename)
        with tokenize.open(path) as f:  # as Python reads source: coding cookie, BOM
            code = f.read()
        compile(code, path, "exec")
        return self._view()._run(_namespace.execute, (code, path), "run", self._blocking(block), _none)

    def scatter(self, name: str, seq: Any, flatten: bool = False, block: bool | None = None) -> Any:
        """Split `seq` over the engines, in engine order, binding each part to `name` there.

        Parts are contiguous and as even as possible (lengths differ by at
        most one, longer parts first). A list, tuple or range becomes lists;
        a numpy array is cut along its first axis into views, sent without
        copying. ``scatter`` then :meth:`gather` gives back `seq` (as a list,
        or an array).

        Parameters
        ----------
        flatten : bool
            A part of one element is sent as that element, not as a
            one-element list (:meth:`gather` takes such an element as one).

        Raises
        ------
        TypeError
            If `seq` is not a list, tuple, range or numpy array.
        ValueError
            If the view has no engines.
        """
        _check_name(name)
        if not _is_sequence(seq):
            raise TypeError(
                f"scatter() splits a list, tuple, range or numpy array (of 1+ dimensions), not"
                f" {type(seq).__name__}; convert it first, e.g. list(...)"
            )
        view = self._view()
        if not view.ids:
            raise ValueError("scatter() on a view with no engines would lose the data")
        if flatten and getattr(seq, "ndim", 1) > 1:
            raise ValueError(
                "flatten=True would send single rows of a multi-dimensional array, which gather() could not"
                " tell from blocks of rows; scatter it without flatten and take part[0] on the engines"
            )
        parts = split_evenly(seq, len(view.ids))
        if flatten:
            parts = [p[0] if len(p) == 1 else p for p in parts]
        for i, part in enumerate(parts):
            _check_sendable({name: part}, f"scatter (part {i} of {name!r})")
        calls = [(_namespace.scatter_part, (name, part)) for part in parts]
        result = view._run_each(calls, f"scatter({name!r})", self._blocking(block), _none)
        self._scattered(name, view)
        return result

    def gather(self, name: str, block: bool | None = None) -> Any:
        """Join the engines' values of `name`, in engine order, into one list (one array for arrays).

        Arrays (all of 1+ dimensions) are concatenated along their first
        axis; otherwise lists and tuples contribute their elements and any
        other value counts as one element.
        """
        _check_name(name)
        view = self._gather_view(name)
        return view._run(_namespace.pull, (name,), f"gather({name!r})", self._blocking(block), join_parts)

    def _scattered(self, name: str, view: EngineView) -> None:
        """`name` was scattered over `view` (the pool remembers where, for gather)."""

    def _rebound(self, names: Iterable[str] | None) -> None:
        """`names` (None: all) were pushed or cleared: no longer what a scatter left."""

    def _gather_view(self, name: str) -> EngineView:
        """The engines `gather(name)` collects from."""
        return self._view()

    def sync_imports(self, quiet: bool = True) -> _SyncImports:
        """Context manager: imports in the block happen here and on the engines.

        ``import numpy``, ``import numpy as np``, ``from math import pi as
        PI``, ``import os.path`` all bind the same names in the engines'
        namespaces as here, so functions sent from ``__main__`` find them.

        Parameters
        ----------
        quiet : bool
            If False, print which modules are imported on which engines.

        Examples
        --------
        >>> with pool.sync_imports():
        ...     import numpy as np
        """
        return _SyncImports(self, quiet)


def _check_sendable(values: Mapping[str, Any], what: str) -> None:
    """Raise SerializationError naming the first value of `values` that cannot be sent."""
    for name, value in values.items():
        try:
            dumps(value)
        except SerializationError as exc:
            cause = exc.__cause__ or exc
            raise serialization_error(
                f"cannot send {name!r} to the engines ({what}): {short_repr(value)} ({type(cause).__name__}: {cause})",
                cause,
            ) from cause


def _check_names(names: Any) -> str | list[str]:
    if isinstance(names, str):
        return _check_name(names)
    if isinstance(names, (list, tuple)):
        return [_check_name(n) for n in names]
    raise TypeError(f"names must be a str or a list of str, not {type(names).__name__}")


class EngineView(_NamespaceMethods):
    """Some engines of a pool, fixed when the view is made.

    Made by indexing :attr:`Pool.engines <zpool.Pool.engines>`. Every
    method runs on all engines of the view, in engine order, and returns one
    result per engine, or a single value for a view of one engine
    (``pool.engines[0]``). ``block=False`` (per call, or :attr:`block` for
    the view) returns a :class:`~zpool.asyncresult.DirectResult` at once.

    A view keeps its engines: if one dies, calls on the view fail for it at
    once with :class:`~zpool.error.EngineError` (inside a
    :class:`~zpool.error.CompositeError`), and a replacement engine is not
    part of it; take a new view from ``pool.engines``.
    """

    def __init__(self, pool: Any, ids: Sequence[int], single: bool = False) -> None:
        self._pool = pool
        self._ids = tuple(ids)
        self._single = single
        self._flags = [{"targets": [engine_id], "direct": True} for engine_id in self._ids]

    def _view(self) -> EngineView:
        return self

    @property
    def ids(self) -> list[int]:
        """The engine ids of this view, in order."""
        return list(self._ids)

    targets = ids

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[EngineView]:
        """One single-engine view per engine."""
        for i in range(len(self._ids)):
            yield self[i]

    def __getitem__(self, key: Any) -> Any:
        """``view[i]``, ``view[a:b:c]``: a view of those engines; ``view["a"]``: :meth:`pull`."""
        if isinstance(key, str):
            return self.pull(key, block=True)
        if isinstance(key, slice):
            return EngineView(self._pool, self._ids[key])
        if not isinstance(key, bool) and hasattr(key, "__index__"):  # int, numpy integers
            key = operator.index(key)
            try:
                engine_id = self._ids[key]
            except IndexError:
                size = len(self._ids)
                raise IndexError(
                    f"engine index {key} is out of range: this view has {size} engine(s), ids {list(self._ids)}"
                ) from None
            return EngineView(self._pool, (engine_id,), single=True)
        raise TypeError(f"engines are indexed by int or slice (names by str), not {type(key).__name__}")

    def __repr__(self) -> str:
        if self._single:
            return f"<EngineView engine {self._ids[0]}>"
        return f"<EngineView engines {list(self._ids)}>"

    # -- calls ---------------------------------------------------------------

    def apply(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``func(*args, **kwargs)`` on every engine of the view; wait unless :attr:`block` is False.

        A function from ``__main__`` runs with the engine's namespace as its
        globals, so ``apply(lambda: a)`` after ``push({"a": 1})`` gives what
        ``pull("a")`` gives.

        Returns
        -------
        list or value
            One result per engine (the result itself for one engine); a
            :class:`DirectResult` if :attr:`block` is False.
        """
        return self._apply(func, args, kwargs, self.block)

    def apply_sync(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Like :meth:`apply`, always waiting."""
        return self._apply(func, args, kwargs, True)

    def apply_async(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> DirectResult[Any]:
        """Like :meth:`apply`, returning a :class:`DirectResult` at once."""
        result: DirectResult[Any] = self._apply(func, args, kwargs, False)
        return result

    def interrupt(self) -> None:
        """Interrupt the task each engine of the view is running, as Ctrl-C would.

        The engine raises ``KeyboardInterrupt`` in the task's code, even in
        a blocking call such as ``time.sleep``; the task fails with
        :class:`~zpool.error.TaskAborted`, and the engine goes on with its
        next task. An engine between tasks ignores it. Code that holds the
        interpreter lock in C for long (a single huge numpy operation) is
        interrupted when that returns. Queued tasks are not touched (see
        :meth:`Pool.abort`); :meth:`Pool.terminate` ends even a task that
        never returns.

        Raises
        ------
        EngineError
            If an engine of the view is no longer up.
        """
        pool = self._pool
        pool._check_connected()
        reply = pool._conn.request(MsgType.INTERRUPT_REQUEST, {"engines": list(self._ids)})
        unknown = reply.get("unknown") or []
        if unknown:
            gone = ", ".join(str(i) for i in unknown)
            raise EngineError(f"interrupt(): engine {gone} is no longer up (the others were interrupted)")

    def _apply(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], block: bool) -> Any:
        if not callable(func):
            raise TypeError(f"apply() needs a callable, not {type(func).__name__}")
        return self._run(func, args, callable_name(func), block, kwargs=kwargs)

    def map(self, func: Callable[..., Any], /, *iterables: Iterable[Any], block: bool | None = None) -> Any:
        """``func`` over the items of `iterables` (zipped, as the builtin ``map``), split over the view.

        Each engine gets one contiguous part of the items (as :meth:`scatter`
        cuts them) and the results come back in input order, as one list.
        """
        if not callable(func):
            raise TypeError(f"map() needs a callable, not {type(func).__name__}")
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        if not self._ids:
            raise ValueError("map() on a view with no engines")
        if len(iterables) == 1:
            items: list[Any] = list(iterables[0])
            star = False
        else:
            items = list(zip(*iterables))
            star = True
        name = callable_name(func)
        parts = split_evenly(items, len(self._ids))
        try:
            calls = [(run_chunk, (func, part, star) if star else (func, part)) for part in parts]
            return self._run_each(calls, f"map({name})", self._blocking(block), join_parts)
        except SerializationError:
            raise explain_iterable(func, items, "map")  # noqa: B904 (its cause is pickle's error)

    def remote(self, func: Callable[..., Any] | None = None, *, block: bool | None = None) -> Any:
        """Decorator: calling the function runs it on every engine of the view (see :class:`RemoteFunction`)."""

        _check_flag("block", block, none_ok=True)

        def decorate(f: Callable[..., Any]) -> RemoteFunction:
            return RemoteFunction(self, f, block)

        return decorate if func is None else decorate(func)

    def parallel(
        self, func: Callable[..., Any] | None = None, *, block: bool | None = None, ordered: bool = True
    ) -> Any:
        """Decorator: a call splits its sequence arguments over the view, one part per engine.

        See :class:`ParallelFunction`; ``.map`` runs element-wise as
        :meth:`map` does.
        """

        _check_flag("block", block, none_ok=True)
        _check_flag("ordered", ordered)

        def decorate(f: Callable[..., Any]) -> ParallelFunction:
            return ParallelFunction(self, f, block, ordered, None)

        return decorate if func is None else decorate(func)

    # -- submission ------------------------------------------------------------

    def _require_engines(self, label: str) -> None:
        if not self._ids:
            raise ValueError(f"{label}: this view has no engines; make one from pool.engines")

    def _run(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        label: str,
        block: bool,
        combine: Callable[[list[Any]], Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """The same call on every engine of the view (serialized once)."""
        self._pool._check_running()
        self._require_engines(label)
        frames = dumps_call(func, args, kwargs or {}, shared=self._pool._shm, users=len(self._ids))
        return self._submit([frames] * len(self._ids), label, block, combine)

    def _run_each(
        self,
        calls: list[tuple[Callable[..., Any], tuple[Any, ...]]],
        label: str,
        block: bool,
        combine: Callable[[list[Any]], Any] | None = None,
    ) -> Any:
        """One call per engine of the view, in order."""
        self._pool._check_running()
        self._require_engines(label)
        payloads = [dumps_call(func, args, shared=self._pool._shm) for func, args in calls]
        return self._submit(payloads, label, block, combine)

    def _submit(
        self,
        payloads: list[list[Any]],
        label: str,
        block: bool,
        combine: Callable[[list[Any]], Any] | None,
        ordered: bool = True,
    ) -> Any:
        pool = self._pool
        self._require_engines(label)
        new_id = pool._conn.session.new_id
        ids = [new_id() for _ in payloads]
        ar: DirectResult[Any] = DirectResult(ids, label, list(self._ids), self._single, combine, ordered)
        pool._submit_direct(ar, list(zip(ids, payloads)), self._flags)
        return pool._get_blocking(ar) if block else ar


class RemoteFunction:
    """A function that runs remotely when called (made by ``@pool.remote()`` or ``@view.remote()``).

    On a pool, a call is one load-balanced task (as :meth:`Pool.apply`),
    with the pool's scheduling flags; on a view, it runs on every engine of
    the view. It keeps the wrapped function's name, docstring and signature.

    Attributes
    ----------
    block : bool or None
        Wait for the result, or return an :class:`AsyncResult` at once;
        None (views only): as the view's ``block`` says at each call.
    """

    def __init__(self, runner: Any, func: Callable[..., Any], block: bool | None = True) -> None:
        if not callable(func):
            raise TypeError(f"remote() decorates a callable, not {type(func).__name__}")
        self._runner = runner
        self.func = func
        self.block = block
        functools.update_wrapper(self, func)

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        runner = self._runner
        block = runner.block if self.block is None else self.block
        if isinstance(runner, EngineView):
            return runner._apply(self.func, args, kwargs, block)
        ar = runner.apply_async(self.func, args, kwargs)
        return runner._get_blocking(ar) if block else ar

    def __repr__(self) -> str:
        return f"<RemoteFunction {callable_name(self.func)}>"

    def __reduce__(self) -> Any:
        raise TypeError("a RemoteFunction belongs to its pool and cannot be pickled; send its .func instead")


class ParallelFunction:
    """A function whose calls run in parallel on pieces of their input (``@pool.parallel()``).

    Calling it with one or more sequences (lists, tuples, ranges, numpy
    arrays) cuts them into chunks at the same places, calls the function on
    each chunk in parallel, and joins the chunk results: lists are
    concatenated, arrays concatenated along their first axis, and any other
    result counts as one element. So a function written for a whole list
    runs on pieces of it. Other positional arguments (and keyword
    arguments) go whole to every chunk. ``.map(*seqs)`` instead calls the
    function on each element, as the builtin ``map``.

    On a pool, chunks are load-balanced tasks (`chunksize` items each, by
    default about four chunks per engine); on a view, each engine of the
    view takes one chunk. It keeps the wrapped function's name, docstring
    and signature.

    Attributes
    ----------
    block : bool or None
        Wait for the result, or return an :class:`AsyncResult` at once;
        None (views only): as the view's ``block`` says at each call.
    ordered : bool
        Join chunk results in input order (default) or as they finish.
    chunksize : int or None
        Items per chunk (pools only).
    """

    def __init__(
        self,
        runner: Any,
        func: Callable[..., Any],
        block: bool | None = True,
        ordered: bool = True,
        chunksize: int | None = None,
    ) -> None:
        if not callable(func):
            raise TypeError(f"parallel() decorates a callable, not {type(func).__name__}")
        if chunksize is not None and (not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1):
            raise ValueError(f"chunksize must be a positive int or None, not {chunksize!r}")
        self._runner = runner
        self.func = func
        self.block = block
        self.ordered = ordered
        self.chunksize = chunksize
        functools.update_wrapper(self, func)

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        split_at = [i for i, arg in enumerate(args) if _is_sequence(arg)]
        name = callable_name(self.func)
        if not split_at:
            raise TypeError(
                f"{name}() was decorated with parallel(): pass at least one list, tuple, range or numpy array to"
                " split (call .func directly to run it once)"
            )
        lengths = {len(args[i]) for i in split_at}
        if len(lengths) > 1:
            raise ValueError(
                f"the sequences given to parallel {name}() have different lengths {sorted(lengths)}; every"
                " positional sequence is split at the same places, so pass arguments meant whole by keyword"
            )
        (n,) = lengths
        runner = self._runner
        block = runner.block if self.block is None else self.block
        if n == 0:
            bounds = [(0, 0)]  # one call on the empty input: the result the function gives for it
        elif isinstance(runner, EngineView):
            pieces = len(runner.ids)
            if not pieces:
                raise ValueError(f"parallel {name}() on a view with no engines")
            # Never an empty chunk: with fewer items than engines, the first engines take one each.
            bounds = even_bounds(n, min(n, pieces))
        else:
            chunksize = self.chunksize or max(1, default_chunksize(n, runner._processes))
            bounds = [(i, min(i + chunksize, n)) for i in range(0, n, chunksize)]
        calls = []
        for start, stop in bounds:
            chunk_args = tuple(arg[start:stop] if i in split_at else arg for i, arg in enumerate(args))
            calls.append(chunk_args)
        if isinstance(runner, EngineView):
            runner._pool._check_running()
            view = runner if len(calls) == len(runner.ids) else runner[: len(calls)]
            payloads = [dumps_call(self.func, chunk_args, kwargs, shared=runner._pool._shm) for chunk_args in calls]
            return view._submit(payloads, name, block, join_parts, ordered=self.ordered)
        return runner._submit_joined(self.func, calls, kwargs, name, self.ordered, block)

    def map(self, *seqs: Iterable[Any]) -> Any:
        """Call the function on each element of `seqs` (zipped), in parallel; the results as a list."""
        runner = self._runner
        if not seqs:
            raise TypeError("map() needs at least one sequence")
        block = runner.block if self.block is None else self.block
        if isinstance(runner, EngineView):
            return runner.map(self.func, *seqs, block=block)
        return runner._parallel_map(self.func, seqs, self.chunksize, self.ordered, block)

    def __repr__(self) -> str:
        return f"<ParallelFunction {callable_name(self.func)}>"

    def __reduce__(self) -> Any:
        raise TypeError("a ParallelFunction belongs to its pool and cannot be pickled; send its .func instead")


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


class _SyncImports:
    """``with view.sync_imports(): import numpy as np``: the block's imports, repeated on the engines.

    While the block runs, ``builtins.__import__`` records the imports made
    from the calling frame. At the end, the block's import statements are
    read from its source (scripts, modules, notebook cells) and those that
    ran are repeated on every engine, binding the same names. Where the
    source cannot be read (the plain ``python`` REPL), the names of the
    calling frame bound to what was imported (modules, or attributes named
    in a from-list) are bound the same way.
    """

    def __init__(self, target: _NamespaceMethods, quiet: bool) -> None:
        self._target = target
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
        view = self._target._view()
        if not self._quiet:
            print(f"importing {', '.join(modules)} on engine(s) {view.ids}")
        view._run(_namespace.sync_imports, (modules, bindings), "sync_imports", True, _none)

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
