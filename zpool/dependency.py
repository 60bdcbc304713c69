"""Dependencies between tasks, and between tasks and engines (DESIGN §5).

*Graph* dependencies say when and where a task may run, in terms of other
tasks: :class:`Dependency` (a set of task ids with the switches ``all``,
``success`` and ``failure``), given as the ``after`` (time) and ``follow``
(place) flags of a call, together with ``timeout``, ``retries`` and
``targets``. :func:`task_flags` checks and encodes them for the wire; the
controller's scheduler enforces them.

*Functional* dependencies are decided on the engine, by the task itself: a
task that raises :class:`~zpool.error.UnmetDependency` is sent to another
engine, never twice to the same one. :func:`require`, :func:`depend` and
:func:`dependent` build such tasks.
"""

from __future__ import annotations

import functools
import importlib
import math
import types
import weakref
from typing import Any, Callable, Iterable, Mapping

from zpool._wire import encode_outcome
from zpool.error import UnmetDependency

__all__ = ["FLAG_NAMES", "Dependency", "depend", "dependent", "require", "task_flags", "task_ids"]

FLAG_NAMES = ("after", "follow", "timeout", "retries", "targets", "track")


class Dependency(set):  # type: ignore[type-arg]
    """A set of task ids a task depends on, and what counts as met.

    Parameters
    ----------
    dependencies : iterable
        Task ids (str) and :class:`~zpool.AsyncResult` objects (each
        contributes all of its tasks' ids), or another Dependency.
    all : bool
        ``True`` (default): every one must be met; ``False``: any one.
    success : bool
        A task that succeeded counts as met (default ``True``).
    failure : bool
        A task that failed counts as met (default ``False``). With
        ``success=False`` this makes clean-up tasks that run only on failure.

    Raises
    ------
    ValueError
        If both `success` and `failure` are false (it could never be met).
    TypeError
        If an element is neither a task id nor an AsyncResult.
    """

    def __init__(
        self,
        dependencies: Iterable[Any] = (),
        all: bool = True,  # noqa: A002  (DESIGN's name for the switch)
        success: bool = True,
        failure: bool = False,
    ) -> None:
        if not success and not failure:
            raise ValueError("a Dependency with success=False and failure=False could never be met")
        super().__init__(task_ids(dependencies))
        # How the tasks of the AsyncResults among them ended (it goes along with the ids: the
        # controller may have forgotten them): noted now, or when they end (weakly held both ways).
        self._known: dict[str, int] = dict(dependencies._known) if isinstance(dependencies, Dependency) else {}
        self._sources: list[weakref.ref[Any]] = []
        for result in _results_in(dependencies):
            self._sources.append(weakref.ref(result))
            self._known.update(_outcome_codes(result))
            if not result.done():
                result.add_done_callback(functools.partial(_note_outcomes, weakref.ref(self)))
        self.all = bool(all)
        self.success = bool(success)
        self.failure = bool(failure)

    def as_dict(self) -> dict[str, Any]:
        """The wire form: ``{"ids": [...], "all": ..., "success": ..., "failure": ...[, "known": {id: code}]}``.

        ``known``: how the tasks of the AsyncResults it was made from ended,
        for those finished already (the controller may have forgotten them).
        """
        out: dict[str, Any] = {"ids": sorted(self), "all": self.all, "success": self.success, "failure": self.failure}
        known = {k: v for k, v in dict(self._known).items() if k in self}
        for ref in self._sources:
            result = ref()
            if result is not None:
                known.update((k, v) for k, v in _outcome_codes(result).items() if k in self)
        if known:
            out["known"] = known
        return out

    def __repr__(self) -> str:
        return f"Dependency({sorted(self)!r}, all={self.all}, success={self.success}, failure={self.failure})"

    def __reduce__(self) -> Any:
        return Dependency, (list(self), self.all, self.success, self.failure)


def task_ids(dependencies: Any) -> list[str]:
    """Task ids, in order, from a task id, an AsyncResult, or a list, tuple or set of them."""
    if dependencies is None:
        return []
    if isinstance(dependencies, str) or hasattr(dependencies, "msg_ids"):
        dependencies = [dependencies]
    elif not isinstance(dependencies, (list, tuple, set, frozenset)):
        # Not any iterable: iterating an imap iterator, say, would consume its results.
        raise TypeError(
            f"dependencies must be task ids, AsyncResults, or a list, tuple or set of them,"
            f" not {type(dependencies).__name__} (an imap's results cannot be depended on: use map_async)"
        )
    ids: list[str] = []
    for dep in dependencies:
        if isinstance(dep, str):
            ids.append(dep)
        elif (own := getattr(dep, "_ids", None)) is not None and type(own) is tuple:  # an AsyncResult's, no copy
            ids.extend(own)
        elif hasattr(dep, "msg_ids"):
            ids.extend(dep.msg_ids)
        else:
            raise TypeError(f"a dependency must be a task id (str) or an AsyncResult, not {type(dep).__name__}")
    return ids


def _outcome_codes(result: Any) -> dict[str, int]:
    """How `result`'s finished tasks ended (:meth:`AsyncResult.outcomes`), coded for the controller."""
    return {
        task_id: encode_outcome(ok, engine_id)
        for task_id, (ok, engine_id) in result.outcomes().items()
        if engine_id is not None or not ok  # (a success names its engine)
    }


def _note_outcomes(dependency: weakref.ref[Dependency], result: Any) -> None:
    """A done-callback: note in the Dependency (if it still exists) how `result`'s tasks ended."""
    dep = dependency()
    if dep is not None:
        dep._known.update(_outcome_codes(result))


def _results_in(dependencies: Any) -> list[Any]:
    """The AsyncResults in `dependencies` (as :func:`task_ids` takes them)."""
    if isinstance(dependencies, Dependency):
        return [r for r in (ref() for ref in dependencies._sources) if r is not None]
    if hasattr(dependencies, "outcomes") and hasattr(dependencies, "msg_ids"):
        return [dependencies]
    if isinstance(dependencies, (list, tuple, set, frozenset)):
        return [d for d in dependencies if hasattr(d, "outcomes") and hasattr(d, "msg_ids")]
    return []


def _wire_dependency(value: Any) -> dict[str, Any] | None:
    """The wire form of a flag's dependency (as :meth:`Dependency.as_dict`); None if it names no task.

    A Dependency the caller made says so itself; anything else (a task id, an
    AsyncResult, a list of them: the common case, a graph's edges) is encoded
    directly, without the Dependency a call would throw away at once.
    """
    if value is None:
        return None
    if isinstance(value, Dependency):
        return value.as_dict() if value else None
    ids = task_ids(value)
    if not ids:
        return None
    out: dict[str, Any] = {"ids": sorted(set(ids)), "all": True, "success": True, "failure": False}
    known: dict[str, int] = {}
    for result in _results_in(value):
        known.update(_outcome_codes(result))
    if known:
        out["known"] = known
    return out


def as_dependency(value: Any) -> Dependency | None:
    """`value` (None, a Dependency, an AsyncResult, a task id or an iterable of them) as a Dependency."""
    if value is None:
        return None
    if isinstance(value, Dependency):
        return value
    return Dependency(value)


def task_flags(flags: Mapping[str, Any]) -> dict[str, Any] | None:
    """Check scheduling flags and encode them for the wire; None when there are none.

    Raises
    ------
    TypeError, ValueError
        Naming the flag that is wrong.
    """
    unknown = set(flags) - set(FLAG_NAMES)
    if unknown:
        raise TypeError(f"unknown scheduling flag(s) {', '.join(sorted(unknown))}; known: {', '.join(FLAG_NAMES)}")
    track = flags.get("track")
    if track is not None and not isinstance(track, bool):
        raise TypeError(f"track must be True or False, not {track!r}")
    # (track is the caller's business: it never goes on the wire)
    out: dict[str, Any] = {}
    for name in ("after", "follow"):
        wire = _wire_dependency(flags.get(name))
        if wire is not None:
            out[name] = wire
    timeout = flags.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds >= 0 (0 or None: never), not {timeout!r}")
        if timeout > 0:
            out["timeout"] = float(timeout)
    retries = flags.get("retries")
    if retries is not None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        if retries:
            out["retries"] = retries
    targets = flags.get("targets")
    if targets is not None:
        if isinstance(targets, int) and not isinstance(targets, bool):
            targets = [targets]
        try:
            engine_ids = sorted({int(t) for t in targets if not isinstance(t, bool) and int(t) == t})
        except (TypeError, ValueError):
            raise TypeError(f"targets must be an engine id (int) or a list of them, not {targets!r}") from None
        if len(engine_ids) != len(set(targets)):
            raise TypeError(f"targets must be engine ids (ints), not {targets!r}")
        if not engine_ids:
            raise ValueError("targets is empty: no engine could run the task")
        out["targets"] = engine_ids
    return out or None


# -- functional dependencies ---------------------------------------------------------


class _Requiring:
    """`func`, run only where every name in `names` imports (else UnmetDependency)."""

    def __init__(self, func: Callable[..., Any], names: tuple[str, ...]) -> None:
        self.func = func
        self.names = names
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for name in self.names:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise UnmetDependency(f"{name!r} does not import here: {exc}") from exc
        func = self.func
        namespace = getattr(func, "__globals__", None)
        if isinstance(namespace, dict):
            # As `import a.b` would: the top-level package's name is bound.
            for name in self.names:
                top = name.split(".")[0]
                namespace.setdefault(top, importlib.import_module(top))
        return func(*args, **kwargs)

    def __reduce__(self) -> Any:
        return _Requiring, (self.func, self.names)


class _Depending:
    """`func`, run only where ``condition(*args, **kwargs)`` is not False (else UnmetDependency)."""

    def __init__(
        self, func: Callable[..., Any], condition: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.func = func
        self.condition = condition
        self.args = args
        self.kwargs = kwargs
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.condition(*self.args, **self.kwargs) is False:
            name = getattr(self.condition, "__name__", "the condition")
            raise UnmetDependency(f"{name}() returned False on this engine")
        return self.func(*args, **kwargs)

    def __reduce__(self) -> Any:
        return _Depending, (self.func, self.condition, self.args, self.kwargs)


def require(*requirements: str | types.ModuleType) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: run the function only on engines where `requirements` import.

    Each requirement is a module name or a module. On an engine where one
    does not import, the task raises :class:`~zpool.error.UnmetDependency`
    and the scheduler tries another engine; where they do, they are imported
    into the function's globals before it runs.

    Examples
    --------
    >>> @require("numpy")
    ... def norm(v):
    ...     return numpy.linalg.norm(v)
    """
    names: list[str] = []
    for req in requirements:
        if isinstance(req, types.ModuleType):
            names.append(req.__name__)
        elif isinstance(req, str) and req:
            names.append(req)
        else:
            raise TypeError(f"require() takes module names or modules, not {type(req).__name__}")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return _Requiring(func, tuple(names))

    return decorate


def depend(
    condition: Callable[..., Any], *args: Any, **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: on the engine, call ``condition(*args, **kwargs)`` first; ``False`` means try another engine."""
    if not callable(condition):
        raise TypeError(f"depend() needs a callable condition, not {type(condition).__name__}")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return _Depending(func, condition, args, kwargs)

    return decorate


def dependent(func: Callable[..., Any], condition: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
    """`func` wrapped as by ``@depend(condition, *args, **kwargs)``, without decorating it."""
    return depend(condition, *args, **kwargs)(func)
