"""Large buffers through shared memory, between processes of one host (DESIGN §4).

A buffer of :data:`THRESHOLD` bytes or more is written once into a file of
its own in a RAM-backed directory (``/dev/shm``), a *segment*; the message
carries only the segment's name and size (so that is what gets signed).
The receiver maps the file read-only: the arrays it rebuilds are views on
the mapping, never copied. A mapping outlives the file's name, so a
segment is unlinked as soon as nobody needs to open it again, and its
memory returns to the system when the last view on it is gone. A mapping
holds no file descriptor (:func:`open_segment`, by way of
:mod:`zpool._shm_map`): a process may hold more received arrays than it
may open files.

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
import time
import weakref
from typing import Any, Callable, Sequence

from zpool import _shm_map

try:
    import fcntl
except ImportError:  # not POSIX: no shared memory (available() is False) and no reuse
    fcntl = None  # type: ignore[assignment]

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
_MANIFEST_FIRST = MANIFEST[:1]
# zpool-<cluster id>-<c|e><pid>-<n>: nothing else is ever opened or unlinked.
_NAME = re.compile(r"zpool-[0-9a-f]{8,32}-[ce][0-9]{1,10}-[0-9]{1,20}")
# A segment a writer keeps for reuse (Writer) has a name of its own, which no message carries.
_KEPT_NAME = re.compile(r"zpool-[0-9a-f]{8,32}-[ce][0-9]{1,10}-k[0-9]{1,20}")
_PREFIX = re.compile(r"zpool-[0-9a-f]{8,32}")
_WRITE_CHUNK = 1 << 26
# Segments a Writer keeps for reuse: at most this many, and bytes; freed after this long unused.
KEEP_COUNT = 16
KEEP_BYTES = 2 << 30
KEEP_IDLE = 10.0
CLOSE_TIMEOUT = 5.0
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def available() -> bool:
    """Whether this host has a shared-memory directory zpool can use."""
    return os.path.isdir(DIRECTORY) and os.access(DIRECTORY, os.W_OK | os.X_OK)


def _check(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"not a zpool shared-memory segment name: {name!r}")
    return name


class Writer:
    """Writes buffers into segments named ``<prefix>-<role><pid>-<n>``.

    Writing into a fresh segment costs far more than a copy: the kernel
    allocates and clears every page as the data arrives (a quarter of the
    memcpy rate, or less). So the writer keeps the segments it wrote, under
    a name of their own, and hands each message a second name (a hard link)
    for the same file. Once that name is gone (its owner unlinked it) and
    no receiver maps the file any more, the next buffer of about its size
    is copied into the pages already there, at the memcpy rate.

    How the writer knows nobody maps it: a receiver takes a shared
    ``flock`` on the file before it maps it (:func:`open_segment`). The lock
    belongs to the open file, not to the descriptor: the kernel drops it
    with the open file's last reference, and a mapping is one. So the
    receiver closes its descriptor once mapped (a received array holds
    none), and the lock lasts exactly as long as its mappings, in forked
    children too, and not past the receiver's death. The writer checks
    that no message names the segment any more, then rewrites it only after
    taking an exclusive lock without waiting:

    * a receiver that locked first keeps the segment for itself (the
      exclusive lock fails until its last mapping is gone);
    * a receiver that locks after the writer fails to lock (it does not
      wait), and would fail anyway: it opened a name that was gone before
      the writer looked (the link count was 1), which it checks under
      its lock;
    * only the writer links names to a segment, and only while it fills it,
      so the count cannot grow between the check and the lock.

    That the lock follows the mapping is how Linux works, and each writer
    checks it once (:func:`_lock_follows_mapping`); where it does not, the
    writer keeps nothing and every buffer gets a new segment.

    Only buffers of :data:`THRESHOLD` bytes or more are kept (smaller ones
    get a segment of their own). Kept segments are bounded (:data:`KEEP_COUNT` of them, a quarter of the
    free space and :data:`KEEP_BYTES` at most) and freed when unused for
    :data:`KEEP_IDLE` seconds, or by :meth:`close`.

    Parameters
    ----------
    prefix : str
        ``zpool-<cluster id>``: the cluster's segments all start with it.
    role : str
        ``"c"`` for a client, ``"e"`` for an engine.
    keep : bool
        Keep segments for reuse (default True); False: one new segment per buffer.
    """

    def __init__(self, prefix: str, role: str, keep: bool = True) -> None:
        if not _PREFIX.fullmatch(prefix) or role not in ("c", "e"):
            raise ValueError(f"bad shared-memory prefix {prefix!r} or role {role!r}")
        self.prefix = prefix
        self.role = role
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._kept = _Kept(self) if keep and fcntl is not None else None

    def write(self, buffer: Any) -> str:
        """Copy `buffer` into a segment; return the name that the message carries.

        Raises
        ------
        OSError
            ``ENOSPC`` at once if the directory has no room for it (checked
            first: filling it up to fail would cost as much as the copy).
        """
        view = memoryview(buffer).cast("B")
        kept = self._kept
        if kept is not None and view.nbytes >= THRESHOLD and os.getpid() == self._pid:
            name = kept.write(view)
            if name is not None:
                return name
        name, fd = self._write_new(view, os.O_WRONLY)
        os.close(fd)
        return name

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Free the kept segments and stop their thread (waits up to `timeout` s for it); idempotent."""
        if self._kept is not None and os.getpid() == self._pid:
            self._kept.close(timeout)

    def _create(self, mode: int, kept: bool = False) -> tuple[str, int]:
        """A new, empty segment: its name (a kept segment's own with `kept`) and a descriptor open with `mode`."""
        while True:
            name = self._next_name(kept)
            try:
                fd = os.open(os.path.join(DIRECTORY, name), mode | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # left by an earlier process with this pid
                continue
            return name, fd

    def _next_name(self, kept: bool = False) -> str:
        with self._lock:
            n = next(self._counter)
        return f"{self.prefix}-{self.role}{os.getpid()}-{'k' if kept else ''}{n}"

    def _write_new(self, view: memoryview, mode: int, kept: bool = False) -> tuple[str, int]:
        """A new segment holding `view`: its name (see `_create`) and a descriptor open with `mode`."""
        room = free_space()
        if room is not None and room < view.nbytes:
            raise OSError(errno.ENOSPC, f"{DIRECTORY} has {room} bytes free, fewer than {view.nbytes}")
        name, fd = self._create(mode, kept)
        try:
            # write() into the RAM-backed file: the kernel allocates its pages as it copies,
            # much cheaper than faulting in a fresh mapping page by page.
            done, size = 0, view.nbytes
            while done < size:
                done += os.write(fd, view[done : done + _WRITE_CHUNK])
        except BaseException:
            os.close(fd)
            _unlink_path(name)  # a kept segment's name is not a message's: unlink() would refuse it
            raise
        return name, fd


def free_space() -> int | None:
    """Bytes free in :data:`DIRECTORY`, or None if it cannot be asked."""
    try:
        stat = os.statvfs(DIRECTORY)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


class _Segment:
    """A segment a :class:`Writer` keeps: its own name, an open descriptor, and (once reused) a mapping.

    While ``filling``, one thread owns it (copying into it, or writing it
    for the first time: then ``fd`` is -1 and the size only reserved).
    """

    __slots__ = ("fd", "filling", "mapping", "name", "size", "used")

    def __init__(self, size: int) -> None:
        self.name = ""
        self.fd = -1
        self.size = size
        self.mapping: mmap.mmap | None = None
        self.used = time.monotonic()
        self.filling = True

    def free(self) -> None:
        """Forget it: receivers that map it keep their pages until they unmap."""
        self.drop()
        if self.name:
            _unlink_path(self.name)

    def drop(self) -> None:
        """Let go of its descriptor and mapping, touching no file (also: after fork(), in the child)."""
        if self.mapping is not None:
            self.mapping.close()
            self.mapping = None
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


def _unlink_path(name: str) -> None:
    try:
        os.unlink(os.path.join(DIRECTORY, name))
    except FileNotFoundError:
        pass


class _Kept:
    """The segments one :class:`Writer` keeps for reuse, and the thread that frees the unused ones."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._cond = threading.Condition()
        self._segments: list[_Segment] = []
        self._closed = False
        self._safe: bool | None = None  # whether receivers' locks follow their mappings; None: not checked yet
        self._thread: threading.Thread | None = None
        _ALL_KEPT.add(self)

    def write(self, view: memoryview) -> str | None:
        """Copy `view` into a kept segment (reused or new) and link a message name to it; None: not kept."""
        size = view.nbytes
        seg = self._reusable(size)
        if seg is None:
            return self._keep_new(view)

        def rewrite() -> None:
            if seg.mapping is None:
                # MAP_POPULATE: the pages are there already; map them all in one call.
                seg.mapping = mmap.mmap(seg.fd, seg.size, flags=mmap.MAP_SHARED | _POPULATE)
            with memoryview(seg.mapping) as target:
                target[:size] = view  # one memcpy, into pages already there
            fcntl.flock(seg.fd, fcntl.LOCK_UN)

        return self._fill(seg, rewrite)

    def _reusable(self, size: int) -> _Segment | None:
        """The best-fitting kept segment nobody uses, locked and marked as filling; None if there is none."""
        with self._cond:
            if self._closed:
                return None
            fits = sorted(
                (seg for seg in self._segments if not seg.filling and size <= seg.size <= size + size // 4),
                key=lambda seg: seg.size,
            )
            for seg in fits:
                # Unnamed first, locked second (see Writer): the lock, tried only once no message
                # names the segment, never makes a receiver of a name still there fail.
                if not self._unnamed(seg):
                    continue
                try:
                    fcntl.flock(seg.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a receiver maps it
                seg.filling = True
                return seg
        return None

    def _unnamed(self, seg: _Segment) -> bool:
        """Whether no message names `seg` any more (lock held); forgets it if its own name was removed."""
        try:
            links = os.fstat(seg.fd).st_nlink
            own = os.stat(os.path.join(DIRECTORY, seg.name)).st_ino == os.fstat(seg.fd).st_ino
        except OSError:
            links, own = 0, False
        if not own:  # removed under it (remove_all): its last link may be a message's
            self._segments.remove(seg)
            seg.name = ""  # not ours to unlink any more
            seg.free()
            return False
        return links == 1

    def _keep_new(self, view: memoryview) -> str | None:
        """Write `view` into a new segment and keep it, if the bounds allow; None: they do not."""
        size = view.nbytes
        with self._cond:
            if self._safe is None:
                self._safe = _lock_follows_mapping(self._writer)
            if self._closed or not self._safe:
                return None
            room = free_space()
            limit = min(KEEP_BYTES, room // 4) if room is not None else 0

            def full() -> bool:
                return len(self._segments) >= KEEP_COUNT or sum(seg.size for seg in self._segments) + size > limit

            # Room for it: forget the least recently used segments nobody is filling.
            while self._segments and full():
                idle = [seg for seg in self._segments if not seg.filling]
                if not idle:
                    break
                oldest = min(idle, key=lambda seg: seg.used)
                self._segments.remove(oldest)
                oldest.free()
            if full():
                return None
            seg = _Segment(size)  # its room reserved, under the lock, before writing
            self._segments.append(seg)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="zpool-shm-keeper", daemon=True)
                self._thread.start()

        def write() -> None:
            seg.name, seg.fd = self._writer._write_new(view, os.O_RDWR, kept=True)

        return self._fill(seg, write)

    def _fill(self, seg: _Segment, fill: Callable[[], None]) -> str:
        """Run `fill` (this thread owns `seg`), link a message name to `seg`, and keep it; on failure, forget it."""
        name = ""
        try:
            fill()
            name = self._link(seg)
        except BaseException:
            self._forget(seg)
            if name:
                _unlink_path(name)
            raise
        self._done(seg)
        return name

    def _link(self, seg: _Segment) -> str:
        """A new message name for `seg`'s file."""
        while True:
            name = self._writer._next_name()
            try:
                os.link(os.path.join(DIRECTORY, seg.name), os.path.join(DIRECTORY, name))
            except FileExistsError:  # left by an earlier process with this pid
                continue
            return name

    def _done(self, seg: _Segment) -> None:
        """The filling thread is done with `seg`: keep it, unless the writer was closed meanwhile."""
        with self._cond:
            seg.filling = False
            seg.used = time.monotonic()
            if not self._closed:
                return
            if seg in self._segments:
                self._segments.remove(seg)
        seg.free()  # the message keeps its own name and the pages

    def _forget(self, seg: _Segment) -> None:
        with self._cond:
            if seg in self._segments:
                self._segments.remove(seg)
        seg.free()

    def close(self, timeout: float) -> None:
        """Free every segment, except those a thread is filling: that thread frees them when done."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            idle = [seg for seg in self._segments if not seg.filling]
            self._segments = [seg for seg in self._segments if seg.filling]
        for seg in idle:
            seg.free()

    def forked(self) -> None:
        """In a forked child: the parent's segments are not the child's; drop its descriptors and mappings."""
        self._cond = threading.Condition()  # another thread may have held it at the fork
        segments, self._segments = self._segments, []
        self._closed = True
        self._thread = None
        for seg in segments:
            seg.drop()

    def _run(self) -> None:
        """Free the segments unused for KEEP_IDLE seconds; end when none is left (the next kept one starts another)."""
        with self._cond:
            while not self._closed and self._segments:
                now = time.monotonic()
                for seg in list(self._segments):
                    if not seg.filling and now - seg.used > KEEP_IDLE:
                        self._segments.remove(seg)
                        seg.free()
                if self._segments:
                    self._cond.wait(KEEP_IDLE / 4)
            self._thread = None


_ALL_KEPT: weakref.WeakSet[_Kept] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for kept in list(_ALL_KEPT):
        kept.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _lock_follows_mapping(writer: Writer) -> bool:
    """Whether a shared lock lasts as long as a mapping made by :func:`open_segment` once its descriptor is closed.

    Checked once per writer on a file of its own, removed at once
    (:func:`zpool._shm_map.lock_follows_mapping`).
    """
    try:
        name, fd = writer._create(os.O_RDWR, kept=True)
    except OSError:
        return False
    try:
        return _shm_map.lock_follows_mapping(fd, os.path.join(DIRECTORY, name))
    finally:
        os.close(fd)
        _unlink_path(name)


def open_segment(name: str, size: int) -> memoryview:
    """Map segment `name` read-only; return a read-only view of its `size` bytes.

    The view (and whatever is built on it) keeps the mapping; no file
    descriptor stays open.

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
    path = os.path.join(DIRECTORY, name)
    fd = os.open(path, os.O_RDONLY)
    try:
        stat = os.fstat(fd)
        if fcntl is not None:
            # Held as long as the mapping lives, past the close below (the lock belongs to the open
            # file, which the mapping keeps): its writer does not reuse the segment until then (see Writer).
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FileNotFoundError(errno.ENOENT, "segment already reused by its writer", name) from None
            try:
                same = os.stat(path).st_ino == stat.st_ino
            except FileNotFoundError:
                same = False
            if not same:
                raise FileNotFoundError(errno.ENOENT, "segment already released by its owner", name)
        if stat.st_size < size:
            raise ValueError(f"shared-memory segment {name} is smaller than {size} bytes")
        mapping = _shm_map.map_readonly(fd, size)
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
    return _remove_where(lambda name: name.startswith(prefix + "-"))


def remove_kept(prefix: str, role: str, pid: int) -> int:
    """Remove the segments a process (of `role`, pid `pid`) kept for reuse, once it is dead; return how many.

    Only its own names go: a message name it linked may still be on its way.
    """
    if not _PREFIX.fullmatch(prefix) or role not in ("c", "e") or not isinstance(pid, int):
        raise ValueError(f"bad shared-memory prefix {prefix!r}, role {role!r} or pid {pid!r}")
    start = f"{prefix}-{role}{pid}-k"
    return _remove_where(lambda name: name.startswith(start))


def _remove_where(wanted: Callable[[str], bool]) -> int:
    """Remove the segments (message names or kept ones) whose name is `wanted`; return how many."""
    try:
        names = os.listdir(DIRECTORY)
    except OSError:
        return 0
    removed = 0
    for name in names:
        if (_NAME.fullmatch(name) or _KEPT_NAME.fullmatch(name)) and wanted(name):
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
    kind = type(frame)
    if kind is bytes:
        return bool(frame[:1] == _MANIFEST_FIRST)
    if kind is memoryview and frame.format == "B" and frame.ndim == 1:  # inline payloads: slices of the pack
        return bool(frame.nbytes > 0 and frame[0] == MANIFEST[0])
    return bytes(memoryview(frame)[:1]) == _MANIFEST_FIRST


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
