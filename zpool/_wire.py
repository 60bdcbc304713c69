"""What zpool's messages say: the schema of their JSON parts, in one place.

``zpool.protocol`` frames, signs and batches messages; this module names
what travels inside them, for every role:

* :class:`TaskFlags` and :class:`DependencySpec`: a task's scheduling flags
  (``apply_request``'s ``flags`` header field), as ``zpool.dependency``
  writes them and the controller checks them (``zpool.controller.flags``).
* The *outcome code*: how a finished task ended, in one int
  (:func:`encode_outcome`, :func:`decode_outcome`). The controller's
  scheduler remembers finished tasks by it, and a client sends the codes
  of tasks it saw end along with a dependency on them (``known``), for
  those the controller may have forgotten.
* :class:`ErrorReply`: the payload of a failed task's reply, built by
  :func:`error_reply` (by the engine for an exception a task raised, by the
  controller for a task it failed itself), read by
  ``zpool.client.results``. :class:`ErrorName` lists the names the
  controller fails tasks with: classes of ``zpool.error``.
* :class:`QueueStatus`: the ``queue_reply`` (``Pool.queue_status()``).

A bottom-layer module (stdlib only, beside ``zpool.error``), so that
``zpool.dependency``, ``zpool._partition`` and the client may use it as
well as the controller: the import-linter layers forbid those importing
``zpool.protocol``.
"""

from __future__ import annotations

import enum
import os
from typing import TypedDict

__all__ = [
    "FAILED_UNPLACED",
    "RUN_SLOT_BYTES",
    "DependencySpec",
    "EngineQueue",
    "ErrorName",
    "ErrorReply",
    "QueueStatus",
    "Roster",
    "SchedulerStatus",
    "TaskFlags",
    "decode_outcome",
    "encode_outcome",
    "encode_run_slot",
    "error_reply",
    "read_run_slot",
    "run_slot_path",
]

# The outcome code of a task that failed before any engine ran it (see encode_outcome).
FAILED_UNPLACED = -1


def encode_outcome(ok: bool, engine_id: int | None) -> int:
    """How a finished task ended, as one int: the engine id it succeeded on (>= 0), else a failure code.

    A failure on engine ``e`` is ``-2 - e``; a failure before any engine
    ran it (``engine_id`` None) is :data:`FAILED_UNPLACED` (-1). A success
    always names its engine.

    Raises
    ------
    ValueError
        If `ok` is true and `engine_id` is None.
    """
    if ok:
        if engine_id is None:
            raise ValueError("a task that succeeded ran on an engine: engine_id is required")
        return engine_id
    return FAILED_UNPLACED if engine_id is None else -2 - engine_id


def decode_outcome(code: int) -> tuple[bool, int | None]:
    """The inverse of :func:`encode_outcome`: ``(ok, engine_id or None)``."""
    if code >= 0:
        return True, code
    if code == FAILED_UNPLACED:
        return False, None
    return False, -2 - code


class _DependencyIds(TypedDict):
    ids: list[str]


class DependencySpec(_DependencyIds, total=False):
    """A graph dependency (``after``, ``follow``) on the wire: ``zpool.dependency.Dependency.as_dict()``.

    ``all``: every task must end as wanted (else any one); ``success`` and
    ``failure``: which endings are wanted; ``known``: outcome codes (see
    :func:`encode_outcome`) of those the client saw end.
    """

    all: bool
    success: bool
    failure: bool
    known: dict[str, int]


class TaskFlags(TypedDict, total=False):
    """A task's scheduling flags on the wire (every one optional; DESIGN §5)."""

    after: DependencySpec
    follow: DependencySpec
    timeout: float  # seconds for the dependencies to be met
    retries: int
    targets: list[int]  # engine ids
    direct: bool  # with exactly one target: run there at once, in order (views)


class ErrorName(str, enum.Enum):
    """Names of the errors the controller fails tasks with (each a class of ``zpool.error``)."""

    BROKEN_POOL = "BrokenPoolError"
    DEPENDENCY_TIMEOUT = "DependencyTimeout"
    ENGINE_ERROR = "EngineError"
    IMPOSSIBLE_DEPENDENCY = "ImpossibleDependency"
    INVALID_DEPENDENCY = "InvalidDependency"
    TASK_ABORTED = "TaskAborted"
    UNKNOWN_TASK = "UnknownTaskError"


class _ErrorReplyBase(TypedDict):
    ename: str
    evalue: str
    traceback: str
    engine_id: int | None


class ErrorReply(_ErrorReplyBase, total=False):
    """A failed task's reply payload (JSON): the exception's class name, message and traceback text, where.

    ``emodule``: the module of the exception's class, when an engine
    raised it (the client rebuilds builtins and ``zpool.error`` classes by
    name; others become ``RemoteError``). The controller's own errors have
    no ``emodule`` and an empty ``traceback``.
    """

    emodule: str


def error_reply(
    ename: ErrorName | str, evalue: str, traceback: str = "", engine_id: int | None = None, emodule: str | None = None
) -> ErrorReply:
    """Build the reply payload of a failed task (see :class:`ErrorReply`)."""
    name = ename.value if isinstance(ename, ErrorName) else ename
    if emodule is None:
        return {"ename": name, "evalue": evalue, "traceback": traceback, "engine_id": engine_id}
    return {"ename": name, "emodule": emodule, "evalue": evalue, "traceback": traceback, "engine_id": engine_id}


class EngineQueue(TypedDict):
    """One engine's line of :class:`QueueStatus`."""

    queue: int  # tasks it holds: running (one at most) and queued there
    running: int
    queued: int
    completed: int
    failed: int
    pinned: int  # ready tasks only some engines may run, this one among them


class SchedulerStatus(TypedDict):
    """The scheduler's part of :class:`QueueStatus`."""

    engines: dict[str, EngineQueue]  # by engine id (as text: JSON keys)
    unassigned: int  # ready, not placed on an engine yet
    waiting: int  # for dependencies
    limit: int  # the per-engine in-flight limit now (0: none)


class QueueStatus(SchedulerStatus):
    """The ``queue_reply`` (and ``connect_reply``) content: ``Pool.queue_status()``."""

    engine_pids: dict[str, int | None]
    scheme: str
    hwm: int | None
    dropped_messages: int
    broken: str | None  # why no engine can start, once the launcher gave up
    starting: int  # engines launched and not taking tasks yet


class _RosterEngines(TypedDict):
    engines: dict[str, str]  # engine id (as text) -> its direct socket's address, for the engines ready now


class Roster(_RosterEngines, total=False):
    """The ``roster_notice`` content: where a client may push tasks straight to engines (the direct path).

    Sent in answer to a ``roster_request`` on a client's own socket, and
    again to every client that asked whenever an engine is ready or leaves.
    """

    # For an engine that left: engine id (as text) -> the tasks this client pushed there that the controller
    # knew of (it answers those, or places them again); the others never reached it, and fail at the client.
    gone: dict[str, list[str]]
    # For an engine that left, when its run slot was read: the last task it started ("": none).
    started: dict[str, str]
    # For an engine that left: what became of it, as the controller's errors say it ("(pid 12) died from SIGKILL").
    why: dict[str, str]


# -- the engine's run slot -----------------------------------------------------------------
#
# An engine of a hidden cluster writes the id of each task as it starts it
# into a small file of its own beside the connection file (the cluster's
# private directory): ``run-<pid>``, RUN_SLOT_BYTES long, a length byte then
# the id. When the engine dies, the controller reads which task it was
# running: the tasks queued on it behind that one never started, and go to
# another engine instead of failing with it.

RUN_SLOT_BYTES = 256


def run_slot_path(connection_file: str, pid: int) -> str:
    """Where engine `pid` of the cluster whose connection file is `connection_file` keeps its run slot."""
    return os.path.join(os.path.dirname(os.path.abspath(connection_file)), f"run-{pid}")


def encode_run_slot(task_id: str) -> bytes:
    """The bytes an engine writes at the start of its run slot when it starts `task_id` (ids are ASCII)."""
    raw = task_id.encode("ascii", "replace")[: RUN_SLOT_BYTES - 1]
    return bytes((len(raw),)) + raw


def read_run_slot(path: str) -> str | None:
    """The id of the last task the engine started ("": none yet); None if the slot cannot be read."""
    try:
        with open(path, "rb") as f:
            raw = f.read(RUN_SLOT_BYTES)
    except OSError:
        return None
    if len(raw) != RUN_SLOT_BYTES or raw[0] >= RUN_SLOT_BYTES:
        return None
    try:
        return raw[1 : 1 + raw[0]].decode("ascii")
    except UnicodeDecodeError:
        return None
