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

import collections.abc
import functools
import keyword
import operator
import os
import tokenize
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from zpool import _namespace
from zpool._decorators import ParallelFunction, RemoteFunction, check_flag, is_sequence
from zpool._partition import even_bounds, join_parts, run_chunk, split_evenly
from zpool._sync_imports import SyncImports
from zpool.asyncresult import DirectResult
from zpool.client.submitter import Submitter
from zpool.error import EngineError, SerializationError, serialization_error
from zpool.protocol import MsgType
from zpool.serialize import callable_name, dumps, explain_iterable, short_repr

__all__ = ["EngineView", "ParallelFunction", "RemoteFunction"]


def _check_name(name: Any, what: str = "name") -> str:
    if not isinstance(name, str):
        raise TypeError(f"a {what} in the engines' namespace must be a str, not {type(name).__name__}")
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{name!r} is not a valid Python identifier, so it cannot be a {what} in the namespace")
    if name.startswith("__") and name.endswith("__"):
        raise ValueError(f"{name!r} is one of the namespace module's own names; choose a name without the __s")
    return name


def _none(values: list[Any]) -> None:
    return None


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
        if not is_sequence(seq):
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

    def __init__(self, submitter: Submitter, owner: Any, ids: Sequence[int], single: bool = False) -> None:
        self._submitter = submitter
        self._owner = owner  # the pool: kept alive while the view (or a result of it) lives
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

    def _where(self, index: int) -> tuple[str, int | None]:
        return self._submitter.engine_where(self._ids[index]) or ("", None)

    @property
    def hosts(self) -> Any:
        """The host name of each engine of the view (of the engine, for a view of one)."""
        names = [self._where(i)[0] for i in range(len(self._ids))]
        return names[0] if self._single else names

    @property
    def ranks(self) -> Any:
        """Each engine's rank among those its launcher started (MPI, Slurm; None elsewhere); one for a view of one.

        The rank comes from the launcher's environment
        (``OMPI_COMM_WORLD_RANK``, ``PMIX_RANK``, ``PMI_RANK`` or
        ``SLURM_PROCID``): the engine of rank r is the one mpi4py's
        ``MPI.COMM_WORLD.rank`` calls r.
        """
        ranks = [self._where(i)[1] for i in range(len(self._ids))]
        return ranks[0] if self._single else ranks

    rank = ranks

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
            return EngineView(self._submitter, self._owner, self._ids[key])
        if not isinstance(key, bool) and hasattr(key, "__index__"):  # int, numpy integers
            key = operator.index(key)
            try:
                engine_id = self._ids[key]
            except IndexError:
                size = len(self._ids)
                raise IndexError(
                    f"engine index {key} is out of range: this view has {size} engine(s), ids {list(self._ids)}"
                ) from None
            return EngineView(self._submitter, self._owner, (engine_id,), single=True)
        raise TypeError(f"engines are indexed by int or slice (names by str), not {type(key).__name__}")

    def __repr__(self) -> str:
        if self._single:
            where = self._submitter.engine_where(self._ids[0], ask=False)
            if where is None or where[1] is None:
                return f"<EngineView engine {self._ids[0]}>"
            host, rank = where  # (an engine an MPI or Slurm launcher started)
            return f"<EngineView engine {self._ids[0]}, rank {rank} on {host}>"
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
        self._submitter.check_connected()
        reply = self._submitter.request(MsgType.INTERRUPT_REQUEST, {"engines": list(self._ids)})
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

        check_flag("block", block, none_ok=True)

        def decorate(f: Callable[..., Any]) -> RemoteFunction:
            return RemoteFunction(_OnEngines(self), f, block)

        return decorate if func is None else decorate(func)

    def parallel(
        self, func: Callable[..., Any] | None = None, *, block: bool | None = None, ordered: bool = True
    ) -> Any:
        """Decorator: a call splits its sequence arguments over the view, one part per engine.

        See :class:`ParallelFunction`; ``.map`` runs element-wise as
        :meth:`map` does.
        """

        check_flag("block", block, none_ok=True)
        check_flag("ordered", ordered)

        def decorate(f: Callable[..., Any]) -> ParallelFunction:
            return ParallelFunction(_OnEngines(self), f, block, ordered, None)

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
        self._submitter.check_running()
        self._require_engines(label)
        frames = self._submitter.dump_call(func, args, kwargs, users=len(self._ids))
        return self._submit([frames] * len(self._ids), label, block, combine)

    def _run_each(
        self,
        calls: list[tuple[Callable[..., Any], tuple[Any, ...]]],
        label: str,
        block: bool,
        combine: Callable[[list[Any]], Any] | None = None,
    ) -> Any:
        """One call per engine of the view, in order."""
        self._submitter.check_running()
        self._require_engines(label)
        payloads = [self._submitter.dump_call(func, args) for func, args in calls]
        return self._submit(payloads, label, block, combine)

    def _submit(
        self,
        payloads: list[list[Any]],
        label: str,
        block: bool,
        combine: Callable[[list[Any]], Any] | None,
        ordered: bool = True,
    ) -> Any:
        sub = self._submitter
        self._require_engines(label)
        ids = [sub.new_id() for _ in payloads]
        # Views take no flags of their own: the pool's track applies.
        tracker = sub.tracker(len(ids), bool(sub.flags.get("track")))
        ar: DirectResult[Any] = sub.result(
            DirectResult,
            ids,
            label,
            self._owner,
            tracker=tracker,
            engine_ids=list(self._ids),
            single=self._single,
            combine=combine,
            ordered=ordered,
        )
        sub.submit(ar, list(zip(ids, payloads)), tracker=tracker, each_flags=self._flags)
        return sub.get_blocking(ar) if block else ar


class _SyncImports(SyncImports):
    """A ``sync_imports`` block whose imports run on the engines of ``target._view()`` (a pool or a view)."""

    def __init__(self, target: _NamespaceMethods, quiet: bool) -> None:
        super().__init__(functools.partial(_import_on_engines, target), quiet)


def _import_on_engines(
    target: _NamespaceMethods, modules: list[str], bindings: list[tuple[str, str, str | None]], quiet: bool
) -> None:
    """Import `modules` on the engines and bind names as `bindings` say (a sync_imports block's end)."""
    view = target._view()
    if not quiet:
        print(f"importing {', '.join(modules)} on engine(s) {view.ids}")
    view._run(_namespace.sync_imports, (modules, bindings), "sync_imports", True, _none)


class _OnEngines:
    """How ``@view.remote()`` and ``@view.parallel()`` functions run: on the engines of the view (a :class:`Runner`)."""

    def __init__(self, view: EngineView) -> None:
        self.view = view

    @property
    def block(self) -> bool:
        return bool(self.view.block)

    def run_call(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], block: bool) -> Any:
        return self.view._apply(func, args, kwargs, block)

    def split_bounds(self, n: int, chunksize: int | None) -> list[tuple[int, int]]:
        pieces = len(self.view.ids)
        # Never an empty chunk: with fewer items than engines, the first engines take one each.
        return even_bounds(n, min(n, pieces)) if pieces else []

    def run_split(
        self,
        func: Callable[..., Any],
        calls: list[tuple[Any, ...]],
        kwargs: dict[str, Any],
        label: str,
        ordered: bool,
        block: bool,
    ) -> Any:
        view = self.view
        view._submitter.check_running()
        if len(calls) != len(view.ids):
            view = view[: len(calls)]
        payloads = [view._submitter.dump_call(func, chunk_args, kwargs) for chunk_args in calls]
        return view._submit(payloads, label, block, join_parts, ordered=ordered)

    def run_map(
        self,
        func: Callable[..., Any],
        seqs: tuple[Iterable[Any], ...],
        chunksize: int | None,
        ordered: bool,
        block: bool,
    ) -> Any:
        return self.view.map(func, *seqs, block=block)
