"""Large buffers through shared memory, between processes of one host (DESIGN §4).

A buffer of :data:`THRESHOLD` bytes or more is written once into a file of
its own in a RAM-backed directory (``/dev/shm``), a *segment*; the message
carries only the segment's name and size (so that is what gets signed).
The receiver maps the file read-only: the arrays it rebuilds are views on
the mapping, never copied. A mapping outlives the file's name, so a
segment is unlinked as soon as nobody needs to open it again, and its
memory returns to the system when the last view on it is gone.

Who unlinks (each segment has one owner):

* a task's arguments: the controller, once the task is finished for good
  (an engine that runs it only maps them, and a retry maps them again);
  the same segment may serve several tasks (``push`` to every engine): the
  manifest says how many (``users``), and the controller counts them down,
  however late the others arrive;
* a result: the client, as soon as it has mapped it;
* whatever is left when a cluster ends (a process killed between writing
  and sending): every segment of a cluster starts with the cluster's
  prefix, and the client, the controller and orphaned engines remove them
  all at the end (:func:`remove_all`).

A payload that uses segments starts with a *manifest* frame::

    [b"ZPSHM1" + JSON {"segments": {"<buffer index>": ["<name>", <size>]}, "users": n}, pickle, buffer...]

with an empty frame in place of each buffer that went through shared
memory. Pickle streams never start with those bytes, so payloads without
segments are unchanged. Nothing here unpickles anything: the controller
reads manifests to count and unlink segments.
"""

from __future__ import annotations

import errno
import itertools
import json
import mmap
import os
import re
import threading
from typing import Any, Sequence

__all__ = [
    "MANIFEST",
    "THRESHOLD",
    "Writer",
    "available",
    "manifest_names",
    "open_segment",
    "remove_all",
    "unlink",
]

# Where segments live: RAM-backed, private files (mode 0600).
DIRECTORY = "/dev/shm"
# Buffers from this size on go through shared memory (see docs/arrays.md for the measurement).
THRESHOLD = 1 << 20
MANIFEST = b"ZPSHM1"
# zpool-<cluster id>-<c|e><pid>-<n>: nothing else is ever opened or unlinked.
_NAME = re.compile(r"zpool-[0-9a-f]{8,32}-[ce][0-9]{1,10}-[0-9]{1,20}")
_PREFIX = re.compile(r"zpool-[0-9a-f]{8,32}")
_WRITE_CHUNK = 1 << 26


def available() -> bool:
    """Whether this host has a shared-memory directory zpool can use."""
    return os.path.isdir(DIRECTORY) and os.access(DIRECTORY, os.W_OK | os.X_OK)


def _check(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"not a zpool shared-memory segment name: {name!r}")
    return name


class Writer:
    """Writes buffers into new segments named ``<prefix>-<role><pid>-<n>``.

    Parameters
    ----------
    prefix : str
        ``zpool-<cluster id>``: the cluster's segments all start with it.
    role : str
        ``"c"`` for a client, ``"e"`` for an engine.
    """

    def __init__(self, prefix: str, role: str) -> None:
        if not _PREFIX.fullmatch(prefix) or role not in ("c", "e"):
            raise ValueError(f"bad shared-memory prefix {prefix!r} or role {role!r}")
        self.prefix = prefix
        self.role = role
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def write(self, buffer: Any) -> str:
        """Copy `buffer` into a new segment; return its name.

        Raises
        ------
        OSError
            ``ENOSPC`` at once if the directory has no room for it (checked
            first: filling it up to fail would cost as much as the copy).
        """
        view = memoryview(buffer).cast("B")
        try:
            stat = os.statvfs(DIRECTORY)
            room = stat.f_bavail * stat.f_frsize
        except OSError:
            room = None
        if room is not None and room < view.nbytes:
            raise OSError(errno.ENOSPC, f"{DIRECTORY} has {room} bytes free, fewer than {view.nbytes}")
        while True:
            with self._lock:
                n = next(self._counter)
            name = f"{self.prefix}-{self.role}{os.getpid()}-{n}"
            try:
                fd = os.open(os.path.join(DIRECTORY, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # left by an earlier process with this pid
                continue
            break
        try:
            # write() into the RAM-backed file: the kernel allocates its pages as it copies,
            # much cheaper than faulting in a fresh mapping page by page.
            done, size = 0, view.nbytes
            while done < size:
                done += os.write(fd, view[done : done + _WRITE_CHUNK])
        except BaseException:
            os.close(fd)
            unlink(name)
            raise
        os.close(fd)
        return name


def open_segment(name: str, size: int) -> memoryview:
    """Map segment `name` read-only; return a read-only view of its `size` bytes.

    Raises
    ------
    ValueError
        If `name` is not a segment name or the segment is smaller than `size`.
    OSError
        If the segment cannot be opened (already removed, or on another host).
    """
    _check(name)
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"bad segment size {size!r}")
    if size == 0:
        return memoryview(b"")
    fd = os.open(os.path.join(DIRECTORY, name), os.O_RDONLY)
    try:
        if os.fstat(fd).st_size < size:
            raise ValueError(f"shared-memory segment {name} is smaller than {size} bytes")
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return memoryview(mapping).toreadonly()


def unlink(name: str) -> None:
    """Remove segment `name` (mappings of it stay valid); no error if it is gone already."""
    try:
        os.unlink(os.path.join(DIRECTORY, _check(name)))
    except FileNotFoundError:
        pass


def remove_all(prefix: str) -> int:
    """Remove every segment whose name starts with `prefix` (a cluster's); return how many."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"bad shared-memory prefix {prefix!r}")
    removed = 0
    try:
        names = os.listdir(DIRECTORY)
    except OSError:
        return 0
    for name in names:
        if name.startswith(prefix + "-") and _NAME.fullmatch(name):
            try:
                os.unlink(os.path.join(DIRECTORY, name))
                removed += 1
            except OSError:
                pass
    return removed


def make_manifest(segments: dict[int, tuple[str, int]], users: int = 1) -> bytes:
    """The manifest frame for ``{buffer index: (name, size)}``, used by `users` tasks (a push to every engine)."""
    data: dict[str, Any] = {"segments": {str(i): list(v) for i, v in segments.items()}}
    if users != 1:
        data["users"] = users
    return MANIFEST + json.dumps(data).encode()


def manifest_users(frame: Any) -> int:
    """How many tasks share the segments of manifest `frame` (1 unless the sender said more)."""
    try:
        data = json.loads(bytes(memoryview(frame)[len(MANIFEST) :]))
        users = data.get("users", 1) if isinstance(data, dict) else 1
    except (ValueError, TypeError):
        return 1
    return users if isinstance(users, int) and 1 <= users <= 1 << 20 else 1


def read_manifest(frame: Any) -> dict[int, tuple[str, int]] | None:
    """``{buffer index: (name, size)}`` if `frame` is a manifest, else None.

    Raises
    ------
    ValueError
        If it starts like a manifest but is malformed.
    """
    head = bytes(memoryview(frame)[: len(MANIFEST)])
    if head != MANIFEST:
        return None
    raw = bytes(memoryview(frame)[len(MANIFEST) :])
    data = json.loads(raw)
    segments = data.get("segments") if isinstance(data, dict) else None
    if not isinstance(segments, dict):
        raise ValueError("malformed shared-memory manifest")
    out: dict[int, tuple[str, int]] = {}
    for key, value in segments.items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)):
            raise ValueError("malformed shared-memory manifest entry")
        out[int(key)] = (_check(value[0]), value[1])
    return out


def is_manifest(frame: Any) -> bool:
    """Whether a payload's first frame is a manifest; one byte looked at (a pickle starts with b"\\x80")."""
    first = frame[:1] if type(frame) is bytes else bytes(memoryview(frame)[:1])
    return first == MANIFEST[:1]


def release(frames: Sequence[Any], prefix: str | None = None) -> None:
    """Unlink the segments a payload refers to (its owner drops it unread); with `prefix`, only that cluster's."""
    for name in manifest_names(frames, prefix):
        unlink(name)


def manifest_names(frames: Sequence[Any], prefix: str | None = None) -> list[str]:
    """Names of the segments a payload (``[manifest?, pickle, ...]``) refers to; [] if none or malformed.

    With `prefix` (a cluster's), only that cluster's segments: nobody is
    ever made to unlink another cluster's.
    """
    if not frames or not is_manifest(frames[0]):
        return []
    try:
        segments = read_manifest(frames[0])
    except (ValueError, TypeError):
        return []
    if not segments:
        return []
    names = [name for name, _ in segments.values()]
    if prefix is not None:
        names = [name for name in names if name.startswith(prefix + "-")]
    return names
