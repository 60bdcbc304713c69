"""Functions that run remotely when called: ``@pool.remote()``, ``@pool.parallel()`` and a view's.

:class:`RemoteFunction` and :class:`ParallelFunction` keep the wrapped
function's name, docstring and signature, and run their calls through a
:class:`Runner`: :class:`LoadBalanced` for a pool's (load-balanced tasks
with the pool's scheduling flags), ``zpool.view._OnEngines`` for a view's
(one direct task per engine of the view).
"""

from __future__ import annotations

import functools
import itertools
import sys
from typing import Any, Callable, Iterable, Protocol

from zpool._partition import default_chunksize, join_parts
from zpool.asyncresult import JoinedResult
from zpool.client.submitter import Submitter
from zpool.serialize import callable_name

__all__ = ["LoadBalanced", "ParallelFunction", "RemoteFunction", "Runner", "check_flag", "is_sequence"]


def check_flag(name: str, value: Any, none_ok: bool = False) -> None:
    if not (isinstance(value, bool) or (none_ok and value is None)):
        allowed = "True, False or None" if none_ok else "True or False"
        raise TypeError(f"{name} must be {allowed}, not {value!r}")


def is_sequence(value: Any) -> bool:
    """What ``scatter`` and ``@parallel`` split: lists, tuples, ranges, numpy arrays (of 1+ dimensions)."""
    if isinstance(value, (list, tuple, range)):
        return True
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray) and value.ndim >= 1


def _flatten(chunks: list[list[Any]]) -> list[Any]:
    return list(itertools.chain.from_iterable(chunks))


class Runner(Protocol):
    """How a :class:`RemoteFunction` or :class:`ParallelFunction` runs its calls.

    A pool's decorators run load-balanced tasks (``zpool.pool._LoadBalanced``);
    a view's run on its engines (:class:`_OnEngines`).
    """

    @property
    def block(self) -> bool: ...

    def run_call(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], block: bool) -> Any:
        """``func(*args, **kwargs)``: its result, or an AsyncResult when not `block`."""

    def split_bounds(self, n: int, chunksize: int | None) -> list[tuple[int, int]]:
        """Where to cut `n` (> 0) items into chunks: ``(start, stop)`` each; [] if it cannot."""

    def run_split(
        self,
        func: Callable[..., Any],
        calls: list[tuple[Any, ...]],
        kwargs: dict[str, Any],
        label: str,
        ordered: bool,
        block: bool,
    ) -> Any:
        """``func(*args, **kwargs)`` for each ``args`` of `calls`, in parallel; the results joined."""

    def run_map(
        self,
        func: Callable[..., Any],
        seqs: tuple[Iterable[Any], ...],
        chunksize: int | None,
        ordered: bool,
        block: bool,
    ) -> Any:
        """`func` on each element of `seqs` (zipped), in parallel: the results as a list."""


class LoadBalanced:
    """How ``@pool.remote()`` and ``@pool.parallel()`` functions run: as load-balanced tasks (a :class:`Runner`)."""

    def __init__(self, submitter: Submitter, pool: Any) -> None:
        self.submitter = submitter
        self.pool = pool  # the owner of the results (kept alive while they are pending)

    @property
    def block(self) -> bool:
        return bool(self.pool.block)

    def run_call(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], block: bool) -> Any:
        """One task, with the pool's scheduling flags (as :meth:`Pool.apply_async`)."""
        sub = self.submitter
        ar, items, wire_flags, tracker = sub.prepare_call(self.pool, func, args, kwargs, None, None, {})
        sub.submit(ar, items, wire_flags, tracker)
        return sub.get_blocking(ar) if block else ar

    def split_bounds(self, n: int, chunksize: int | None) -> list[tuple[int, int]]:
        """Where to cut `n` items: chunks of `chunksize` (default: about four per engine)."""
        size = chunksize or max(1, default_chunksize(n, self.submitter.processes))
        return [(i, min(i + size, n)) for i in range(0, n, size)]

    def run_split(
        self,
        func: Callable[..., Any],
        calls: list[tuple[Any, ...]],
        kwargs: dict[str, Any],
        label: str,
        ordered: bool,
        block: bool,
    ) -> Any:
        """Run ``func(*args, **kwargs)`` for each ``args`` of `calls` (load-balanced); join the results."""
        sub = self.submitter
        sub.check_running()
        wire_flags, track = sub.wire_flags({})
        items = [(sub.new_id(), sub.dump_call(func, args, kwargs)) for args in calls]
        ids = [task_id for task_id, _ in items]
        tracker = sub.tracker(len(ids), track)
        ar: JoinedResult[Any] = sub.result(
            JoinedResult, ids, label, self.pool, tracker=tracker, join=join_parts, ordered=ordered
        )
        if items:
            sub.submit(ar, items, wire_flags, tracker)
        return sub.get_blocking(ar) if block else ar

    def run_map(
        self,
        func: Callable[..., Any],
        seqs: tuple[Iterable[Any], ...],
        chunksize: int | None,
        ordered: bool,
        block: bool,
    ) -> Any:
        """`func` on each element of `seqs` (zipped), in chunks, as :meth:`Pool.map` (ordered or not)."""
        star = len(seqs) > 1
        items: Iterable[Any] = zip(*seqs) if star else seqs[0]

        def unordered(ids: list[str], label: str, **kwargs: Any) -> JoinedResult[Any]:
            return JoinedResult(ids, label, _flatten, ordered=False, **kwargs)

        sub = self.submitter
        ar = sub.map_async(self.pool, func, items, chunksize, None, None, star, {}, None if ordered else unordered)
        return sub.get_blocking(ar) if block else ar


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

    def __init__(self, runner: Runner, func: Callable[..., Any], block: bool | None = True) -> None:
        if not callable(func):
            raise TypeError(f"remote() decorates a callable, not {type(func).__name__}")
        self._runner = runner
        self.func = func
        self.block = block
        functools.update_wrapper(self, func)

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        runner = self._runner
        block = runner.block if self.block is None else self.block
        return runner.run_call(self.func, args, kwargs, block)

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
        runner: Runner,
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
        split_at = [i for i, arg in enumerate(args) if is_sequence(arg)]
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
        # One call on the empty input: the result the function gives for it.
        bounds = runner.split_bounds(n, self.chunksize) if n else [(0, 0)]
        if not bounds:
            raise ValueError(f"parallel {name}() on a view with no engines")
        calls = []
        for start, stop in bounds:
            chunk_args = tuple(arg[start:stop] if i in split_at else arg for i, arg in enumerate(args))
            calls.append(chunk_args)
        return runner.run_split(self.func, calls, kwargs, name, self.ordered, block)

    def map(self, *seqs: Iterable[Any]) -> Any:
        """Call the function on each element of `seqs` (zipped), in parallel; the results as a list."""
        runner = self._runner
        if not seqs:
            raise TypeError("map() needs at least one sequence")
        block = runner.block if self.block is None else self.block
        return runner.run_map(self.func, seqs, self.chunksize, self.ordered, block)

    def __repr__(self) -> str:
        return f"<ParallelFunction {callable_name(self.func)}>"

    def __reduce__(self) -> Any:
        raise TypeError("a ParallelFunction belongs to its pool and cannot be pickled; send its .func instead")


class _DecoratorMethods:
    """``Pool.remote`` and ``Pool.parallel`` (mixed into :class:`~zpool.Pool`; needs ``_submitter``)."""

    _submitter: Submitter

    def remote(self, func: Callable[..., Any] | None = None, *, block: bool = True) -> Any:
        """Decorator: calling the function runs it on an engine, load-balanced (as :meth:`apply`).

        Use as ``@pool.remote()`` or ``@pool.remote``. The call takes the
        pool's scheduling flags (:meth:`set_flags`, :meth:`temp_flags`). For
        a call on every engine of a view, use ``@pool.engines.remote()``.

        Parameters
        ----------
        block : bool
            Return the result (default), or an :class:`AsyncResult` at once.

        Returns
        -------
        RemoteFunction
            Keeps the function's name, docstring and signature; the
            function itself is its ``func`` attribute.
        """
        check_flag("block", block)

        def decorate(f: Callable[..., Any]) -> RemoteFunction:
            return RemoteFunction(LoadBalanced(self._submitter, self), f, block)

        return decorate if func is None else decorate(func)

    def parallel(
        self,
        func: Callable[..., Any] | None = None,
        *,
        block: bool = True,
        ordered: bool = True,
        chunksize: int | None = None,
    ) -> Any:
        """Decorator: a call splits its sequence arguments into chunks run in parallel; ``.map`` goes element-wise.

        ``f(seq)`` calls the function on chunks of `seq` (load-balanced
        tasks) and joins their results, so a function written for a whole
        list runs on pieces of it; ``f.map(seq)`` calls it on each element,
        like the builtin ``map``. See :class:`~zpool._decorators.ParallelFunction`.

        Parameters
        ----------
        block : bool
            Return the result (default), or an :class:`AsyncResult` at once.
        ordered : bool
            Results in input order (default), or chunk by chunk as they finish.
        chunksize : int, optional
            Items per chunk; by default about four chunks per engine.

        Examples
        --------
        >>> @pool.parallel()
        ... def squares(xs):
        ...     return [x * x for x in xs]
        >>> squares(range(6))
        [0, 1, 4, 9, 16, 25]
        >>> @pool.parallel()
        ... def double(x):
        ...     return 2 * x
        >>> double.map(range(3))
        [0, 2, 4]
        """
        check_flag("block", block)
        check_flag("ordered", ordered)

        def decorate(f: Callable[..., Any]) -> ParallelFunction:
            return ParallelFunction(LoadBalanced(self._submitter, self), f, block, ordered, chunksize)

        return decorate if func is None else decorate(func)
