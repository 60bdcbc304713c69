"""A task's scheduling flags, checked once as they arrive.

A client sends flags (:class:`zpool._wire.TaskFlags`) in an
``apply_request``'s header, one entry per run of tasks sharing them
(:func:`parse_flags`). The hub checks each entry once, raising
:class:`~zpool.error.ProtocolError` for anything malformed, and turns it
into a :class:`Flags` record that the tasks of the run share and the
scheduler trusts; the scheduler keeps it with a finished task's call for
``resubmit``.
"""

from __future__ import annotations

from typing import Any

from zpool._wire import DependencySpec, TaskFlags
from zpool.error import ProtocolError

__all__ = ["Flags", "parse_flags"]


class Flags:
    """A task's flags, checked: what the scheduler reads (shared by the tasks of a run; never changed)."""

    __slots__ = ("after", "direct", "follow", "retries", "targets", "timeout")

    def __init__(
        self,
        after: DependencySpec | None = None,
        follow: DependencySpec | None = None,
        timeout: float | None = None,
        retries: int = 0,
        targets: frozenset[int] | None = None,
        direct: bool = False,
    ) -> None:
        # Dependencies as sent (read by graph.DepState, never changed): None for none.
        self.after = after
        self.follow = follow
        self.timeout = timeout  # seconds for the dependencies to be met
        self.retries = retries
        self.targets = targets  # engine ids
        self.direct = direct

    def __repr__(self) -> str:
        return f"Flags({', '.join(f'{name}={getattr(self, name)!r}' for name in self.__slots__)})"

    def to_wire(self) -> TaskFlags:
        """The flags as a client sends them (what :meth:`check` reads back): kept in the task database."""
        out: TaskFlags = {}
        if self.after is not None:
            out["after"] = self.after
        if self.follow is not None:
            out["follow"] = self.follow
        if self.timeout is not None:
            out["timeout"] = self.timeout
        if self.retries:
            out["retries"] = self.retries
        if self.targets is not None:
            out["targets"] = sorted(self.targets)
        if self.direct:
            out["direct"] = True
        return out

    @classmethod
    def trusted(cls, flags: TaskFlags) -> Flags:
        """Convert `flags` as they are, unchecked (tests, and the scheduler's own)."""
        targets = flags.get("targets")
        return cls(
            flags.get("after") or None,
            flags.get("follow") or None,
            float(flags.get("timeout") or 0) or None,
            int(flags.get("retries") or 0),
            frozenset(int(t) for t in targets) if targets else None,
            bool(flags.get("direct")),
        )

    @classmethod
    def check(cls, flags: Any) -> Flags:
        """Check one flags object as received from a client, and convert it.

        Raises
        ------
        ProtocolError
            Saying which flag is malformed.
        """
        if not isinstance(flags, dict):
            raise ProtocolError("flags must be an object")
        get = flags.get
        after, follow, targets = get("after"), get("follow"), get("targets")
        if after is not None:
            _check_dependency("after", after)
        if follow is not None:
            _check_dependency("follow", follow)
        if targets is not None and not (isinstance(targets, list) and all(type(t) is int for t in targets)):
            raise ProtocolError("flag 'targets' is not a list of engine ids")
        direct = get("direct")
        if direct is not None and not (direct is True and targets is not None and len(targets) == 1):
            raise ProtocolError("flag 'direct' must be true, with exactly one target")
        timeout, retries = get("timeout"), get("retries")
        if timeout is not None:
            _check_number("timeout", timeout)
        if retries is not None:
            _check_number("retries", retries)
        return cls(
            after or None,
            follow or None,
            float(timeout) if timeout else None,
            int(retries) if retries else 0,
            frozenset(targets) if targets else None,
            direct is True,
        )


def _check_dependency(name: str, dep: Any) -> None:
    ids = dep.get("ids") if isinstance(dep, dict) else None
    if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise ProtocolError(f"flag {name!r} is not a dependency")


def _check_number(name: str, value: Any) -> None:
    if type(value) not in (int, float) or not 0 <= value < 1e12:
        raise ProtocolError(f"flag {name!r} is not a finite number >= 0")


def parse_flags(raw: Any, n_tasks: int) -> dict[int, Flags]:
    """The ``flags`` header field of an apply_request, checked: ``{task index: flags}``.

    On the wire: a list of ``[first task index, count, flags]``, one per run
    of tasks sharing flags; the tasks of a run share one :class:`Flags` here.
    """
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise ProtocolError("apply_request flags must be a list of [first index, count, flags]")
    out: dict[int, Flags] = {}
    for entry in raw:
        if not (isinstance(entry, list) and len(entry) == 3 and type(entry[0]) is int and type(entry[1]) is int):
            raise ProtocolError(f"bad flags entry {str(entry)[:80]}")
        first, count, flags = entry
        if not (0 <= first and 0 < count and first + count <= n_tasks) or not isinstance(flags, dict):
            raise ProtocolError(f"flags entry for tasks {first}..{first + count} does not fit the batch")
        checked = Flags.check(flags)
        for index in range(first, first + count):
            out[index] = checked
    return out
