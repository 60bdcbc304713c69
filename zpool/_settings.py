"""The controller's settings, each default written once.

:class:`ControllerSettings` is the one record of what a controller is told
to do: the placement scheme, the in-flight limit, heartbeats, how long
finished tasks are remembered, when engines retire. ``Pool(...)`` builds one
from its arguments and :meth:`~ControllerSettings.validate` checks it before
anything starts; ``zpool.cluster`` passes it to the controller's command line
(:meth:`~ControllerSettings.to_argv`); ``python -m zpool.controller`` reads it
back (:meth:`~ControllerSettings.add_arguments`,
:meth:`~ControllerSettings.from_args`) and hands it whole to the hub and the
scheduler. Engines read their heartbeat defaults from it too, until the
controller's register_reply tells them the cluster's own.

A bottom-layer module (stdlib only), so that every role may import it: the
user's process, the controller and the engines. A named tuple rather than a
dataclass, as :class:`zpool.protocol.ConnectionInfo`: ``dataclasses`` costs
the controller and every engine 7 ms to import.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

if TYPE_CHECKING:
    import argparse

__all__ = ["SCHEMES", "ControllerSettings", "is_int"]

# Load-balancing schemes the scheduler knows (rules in zpool.controller.scheduler).
SCHEMES = ("leastload", "lru", "plainrandom", "twobin", "weighted")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ControllerSettings(NamedTuple):
    """What a controller is told to do; the defaults are ``Pool``'s.

    Attributes
    ----------
    scheme : str
        One of :data:`SCHEMES` (see ``zpool.controller.scheduler``).
    hwm : int or None
        Most tasks outstanding per engine; ``0`` no limit, ``None`` adaptive.
    heartbeat_interval : float
        Seconds between the controller's heartbeats.
    heartbeat_misses : int
        Beats an engine may leave unanswered before it is declared dead.
    record_window, record_age : int, float
        Finished tasks remembered (dependencies on them, resubmit): the
        newest `record_window`, of the last `record_age` seconds.
    max_tasks_per_engine : int or None
        Retire an engine after this many tasks and start a fresh one
        (``Pool(maxtasksperchild=...)``); None: never.
    """

    scheme: str = "leastload"
    hwm: int | None = None
    heartbeat_interval: float = 1.0
    heartbeat_misses: int = 10
    record_window: int = 100_000
    record_age: float = 3600.0
    max_tasks_per_engine: int | None = None

    def validate(self) -> ControllerSettings:
        """Check every field; return the settings with their numbers as the controller holds them.

        Raises
        ------
        ValueError, TypeError
            Naming the ``Pool`` argument at fault, as ``Pool(...)`` raises them.
        """
        tasks = self.max_tasks_per_engine
        if tasks is not None and (not is_int(tasks) or tasks <= 0):
            raise ValueError(f"maxtasksperchild must be a positive int or None, not {tasks!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)}")
        hwm = self.hwm
        if hwm is not None and (not is_int(hwm) or hwm < 0):
            raise ValueError(f"hwm must be None (adaptive), 0 (no limit) or a positive int, not {hwm!r}")
        interval = self.heartbeat_interval
        if not isinstance(interval, (int, float)) or isinstance(interval, bool):
            raise TypeError(f"heartbeat_interval must be a number of seconds, not {type(interval).__name__}")
        if not 0 < interval < math.inf:  # also refuses NaN
            raise ValueError(f"heartbeat_interval must be a positive number of seconds, not {interval!r}")
        if not is_int(self.heartbeat_misses) or self.heartbeat_misses < 1:
            raise ValueError(f"heartbeat_misses must be a positive int, not {self.heartbeat_misses!r}")
        if not is_int(self.record_window) or self.record_window < 1:
            raise ValueError(f"record_window must be a positive int, not {self.record_window!r}")
        age = self.record_age
        if isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 < age < math.inf:
            raise ValueError(f"record_age must be a positive number of seconds, not {age!r}")
        return self._replace(heartbeat_interval=float(interval), record_age=float(age))

    def to_argv(self) -> list[str]:
        """The settings as ``python -m zpool.controller`` options (read back by :meth:`from_args`)."""
        argv = [
            "--scheme",
            self.scheme,
            "--heartbeat-interval",
            repr(float(self.heartbeat_interval)),
            "--heartbeat-misses",
            str(self.heartbeat_misses),
            "--record-window",
            str(self.record_window),
            "--record-age",
            repr(float(self.record_age)),
        ]
        if self.hwm is not None:
            argv += ["--hwm", str(self.hwm)]
        if self.max_tasks_per_engine is not None:
            argv += ["--max-tasks-per-engine", str(self.max_tasks_per_engine)]
        return argv

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add one option per field to `parser`, with the defaults above."""
        d = ControllerSettings._field_defaults
        parser.add_argument("--scheme", choices=SCHEMES, default=d["scheme"])
        parser.add_argument("--hwm", type=int, default=d["hwm"], help="tasks per engine; 0 unlimited; omit: adaptive")
        parser.add_argument("--heartbeat-interval", type=float, default=d["heartbeat_interval"])
        parser.add_argument("--heartbeat-misses", type=int, default=d["heartbeat_misses"])
        parser.add_argument(
            "--record-window", type=int, default=d["record_window"], help="finished tasks remembered, newest first"
        )
        parser.add_argument(
            "--record-age", type=float, default=d["record_age"], help="seconds a finished task is remembered"
        )
        parser.add_argument(
            "--max-tasks-per-engine", type=int, default=d["max_tasks_per_engine"], help="retire an engine after N tasks"
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ControllerSettings:
        """The settings parsed by a parser :meth:`add_arguments` set up (not validated)."""
        return cls(*(getattr(args, name) for name in cls._fields))

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> ControllerSettings:
        """Parse and validate options written by :meth:`to_argv` (others are an error)."""
        import argparse

        parser = argparse.ArgumentParser(prog="ControllerSettings", add_help=False)
        cls.add_arguments(parser)
        return cls.from_args(parser.parse_args(list(argv))).validate()
