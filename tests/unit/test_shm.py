"""Shared-memory segments (zpool._shm) and the serializer's use of them, in this process.

Every segment a test makes has a prefix of its own (``prefixes`` fixture),
and everything under it is removed when the test ends, whatever happens.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import glob
import json
import logging
import mmap
import os
import pickle
import re
import resource
import stat
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import numpy as np
import pytest
import zmq

from tests import _tasks
from zpool import _shm, _shm_map, serialize
from zpool.error import SerializationError
from zpool.serialize import dumps, dumps_call, loads, loads_call

BIG = _shm.THRESHOLD  # bytes: the smallest buffer that goes through a segment


@pytest.fixture
def prefixes():
    """Factory of fresh cluster prefixes; every file under them is removed at the end."""
    made = []

    def new() -> str:
        prefix = f"zpool-{os.urandom(6).hex()}"
        made.append(prefix)
        return prefix

    yield new
    for prefix in made:
        for path in glob.glob(os.path.join(_shm.DIRECTORY, prefix + "*")):
            os.unlink(path)


@pytest.fixture
def prefix(prefixes):
    return prefixes()


def seg_path(name: str) -> str:
    return os.path.join(_shm.DIRECTORY, name)


def under(prefix: str, kept: bool = False) -> list[str]:
    """Names of the segments a message names; with `kept`, also those a writer keeps for reuse (``-k<n>``)."""
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(_shm.DIRECTORY, prefix + "-*")))
    return names if kept else [name for name in names if not name.rsplit("-", 1)[1].startswith("k")]


def data(nbytes: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()


class FailingOs:
    """Stands in for the os module inside zpool._shm: write() fails with ENOSPC after `ok` calls."""

    def __init__(self, ok: int) -> None:
        self.ok = ok

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, buf):
        if self.ok <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.ok -= 1
        return os.write(fd, buf)


class FullWriter(_shm.Writer):
    """A Writer on a full /dev/shm: every write after the first `ok` raises ENOSPC."""

    def __init__(self, prefix: str, ok: int = 0) -> None:
        super().__init__(prefix, "c")
        self.ok = ok
        self.attempts = 0

    def write(self, buffer) -> str:
        self.attempts += 1
        if self.attempts > self.ok:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(buffer)


class BrokenWriter(_shm.Writer):
    """A Writer whose second write raises something other than OSError."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix, "c")
        self.attempts = 0

    def write(self, buffer) -> str:
        self.attempts += 1
        if self.attempts > 1:
            raise RuntimeError("writer broke")
        return super().write(buffer)


# -- Writer ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "zpool-",
        "zpool-xyz",
        "zpool-0123456",  # 7 hex digits: too short
        "zpool-" + "a" * 33,  # too long
        "zpool-0123456789AB",  # upper case
        "other-0123456789ab",
        "../zpool-0123456789ab",
        "zpool-0123456789ab/..",
        "zpool-0123456789ab-c1",
        "zpool-0123456789ab\n",
    ],
)
def test_writer_rejects_bad_prefixes(bad):
    with pytest.raises(ValueError, match="prefix"):
        _shm.Writer(bad, "c")


@pytest.mark.parametrize("role", ["", "x", "ce", "C", "client", None])
def test_writer_rejects_bad_roles(prefix, role):
    with pytest.raises(ValueError):
        _shm.Writer(prefix, role)


@pytest.mark.parametrize("role", ["c", "e"])
def test_writer_makes_private_segments_with_numbered_names(prefix, role):
    writer = _shm.Writer(prefix, role)
    payload = data(3000)
    first, second = writer.write(payload), writer.write(b"xyz")
    pid = os.getpid()
    assert first == f"{prefix}-{role}{pid}-0" and second == f"{prefix}-{role}{pid}-1"
    assert under(prefix) == sorted([first, second])
    st = os.stat(seg_path(first))
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == len(payload)
    with open(seg_path(first), "rb") as f:
        assert f.read() == payload
    with open(seg_path(second), "rb") as f:
        assert f.read() == b"xyz"


def test_writer_takes_any_contiguous_buffer(prefix):
    writer = _shm.Writer(prefix, "c")
    arr = np.arange(5000, dtype=np.float64).reshape(50, 100)
    for buf in (bytes(data(100)), bytearray(data(200)), arr, memoryview(arr), np.asfortranarray(arr).T):
        name = writer.write(buf)
        expected = memoryview(buf).cast("B").tobytes() if not isinstance(buf, np.ndarray) else buf.tobytes("A")
        with open(seg_path(name), "rb") as f:
            assert f.read() == expected
    empty = writer.write(b"")
    assert os.stat(seg_path(empty)).st_size == 0
    assert _shm.open_segment(empty, 0).tobytes() == b""


def test_writer_skips_names_left_by_an_earlier_process(prefix):
    stale = f"{prefix}-c{os.getpid()}-0"
    with open(seg_path(stale), "wb") as f:
        f.write(b"left by a dead process with this pid")
    name = _shm.Writer(prefix, "c").write(b"new")
    assert name == f"{prefix}-c{os.getpid()}-1"
    with open(seg_path(stale), "rb") as f:
        assert f.read() == b"left by a dead process with this pid"  # not overwritten


def test_writer_failing_midway_leaves_no_segment(prefix, monkeypatch):
    monkeypatch.setattr(_shm, "_WRITE_CHUNK", 1024)
    monkeypatch.setattr(_shm, "os", FailingOs(ok=2))  # two chunks in, /dev/shm is full
    writer = _shm.Writer(prefix, "c")
    with pytest.raises(OSError) as info:
        writer.write(data(10_000))
    assert info.value.errno == errno.ENOSPC
    assert under(prefix) == []


def test_writer_chunks_large_buffers(prefix, monkeypatch):
    monkeypatch.setattr(_shm, "_WRITE_CHUNK", 4096)
    payload = data(4096 * 5 + 17)
    name = _shm.Writer(prefix, "e").write(payload)
    with open(seg_path(name), "rb") as f:
        assert f.read() == payload


# -- segments kept for reuse --------------------------------------------------------------------


def inode(name: str) -> int:
    return os.stat(seg_path(name)).st_ino


def test_small_buffers_are_never_kept(prefix):
    writer = _shm.Writer(prefix, "c")
    name = writer.write(data(BIG - 1))
    assert under(prefix, kept=True) == [name]
    writer.close()


def test_a_segment_is_reused_once_its_name_is_gone_and_nobody_maps_it(prefix):
    writer = _shm.Writer(prefix, "c")
    first = writer.write(data(BIG, seed=1))
    (own,) = [n for n in under(prefix, kept=True) if n not in under(prefix)]
    assert re.fullmatch(rf"{prefix}-c{os.getpid()}-k\d+", own)
    assert inode(own) == inode(first) and os.stat(seg_path(own)).st_nlink == 2
    assert stat.S_IMODE(os.stat(seg_path(own)).st_mode) == 0o600

    second = writer.write(data(BIG, seed=2))  # `first` is still named by its message: a new segment
    assert inode(second) != inode(first) and len(under(prefix, kept=True)) == 4

    reused = inode(first)
    _shm.unlink(first)  # its owner is done with it
    third = writer.write(data(BIG, seed=3))
    assert inode(third) == reused and third not in (first, second)
    with open(seg_path(third), "rb") as f:
        assert f.read() == data(BIG, seed=3)
    writer.close()
    assert under(prefix, kept=True) == sorted([second, third])  # the messages keep their names


def test_a_mapped_segment_is_never_rewritten(prefix):
    writer = _shm.Writer(prefix, "c")
    payload = data(BIG, seed=1)
    name = writer.write(payload)
    view = _shm.open_segment(name, BIG)  # a receiver holds it ...
    _shm.unlink(name)  # ... and its owner unlinked its name
    other = writer.write(data(BIG, seed=2))
    assert view.tobytes() == payload  # not overwritten
    assert len(under(prefix, kept=True)) == 3  # two kept segments, one still named
    _shm.unlink(other)
    del view  # the receiver lets go: its lock goes with the mapping
    again = writer.write(data(BIG, seed=3))
    assert inode(again) in {inode(n) for n in under(prefix, kept=True) if n != again}  # one of the two kept
    writer.close()


def test_a_receiver_that_locks_after_a_reuse_fails_rather_than_read_new_data(prefix, monkeypatch):
    writer = _shm.Writer(prefix, "c")
    old = writer.write(data(BIG, seed=1))
    real = _shm.fcntl
    reused = []

    class Racing:
        """fcntl as seen by _shm: between the receiver's open and its lock, the owner unlinks and the writer reuses."""

        def __getattr__(self, attr):
            return getattr(real, attr)

        def flock(self, fd, op):
            if op & real.LOCK_SH and not reused:
                _shm.unlink(old)
                reused.append(writer.write(data(BIG, seed=2)))
            return real.flock(fd, op)

    monkeypatch.setattr(_shm, "fcntl", Racing())
    with pytest.raises(FileNotFoundError, match="released"):
        _shm.open_segment(old, BIG)
    assert os.stat(seg_path(reused[0])).st_nlink == 2  # the writer did reuse it, under a new name
    writer.close()


def test_a_close_fit_is_reused_and_a_loose_one_is_not(prefix):
    writer = _shm.Writer(prefix, "c")
    size = 4 * BIG
    first = writer.write(data(size))
    reused = inode(first)
    _shm.unlink(first)
    loose = writer.write(data(size // 2))  # would waste half of it: a segment of its own
    assert inode(loose) != reused
    _shm.unlink(loose)
    close = writer.write(data(size - size // 5))
    assert inode(close) == reused and os.path.getsize(seg_path(close)) == size
    assert _shm.open_segment(close, size - size // 5).tobytes() == data(size - size // 5)
    writer.close()


def test_kept_segments_are_bounded(prefix, monkeypatch):
    monkeypatch.setattr(_shm, "KEEP_COUNT", 2)
    writer = _shm.Writer(prefix, "c")
    names = [writer.write(data(BIG, seed=i)) for i in range(3)]
    assert len(under(prefix, kept=True)) == 3 + 2  # the third was not kept
    for name in names:
        _shm.unlink(name)
    # Room again: the least recently used idle one is forgotten for a new size.
    other = writer.write(data(2 * BIG))
    assert len(under(prefix, kept=True)) - len(under(prefix)) == 2 and other in under(prefix)
    writer.close()
    assert under(prefix, kept=True) == [other]

    monkeypatch.setattr(_shm, "KEEP_BYTES", BIG)
    small = _shm.Writer(prefix, "e")
    name = small.write(data(2 * BIG))  # over the byte bound: not kept
    assert under(prefix, kept=True) == sorted([other, name])
    small.close()


def test_unused_kept_segments_are_freed(prefix, monkeypatch):
    monkeypatch.setattr(_shm, "KEEP_IDLE", 0.2)
    writer = _shm.Writer(prefix, "c")
    _shm.unlink(writer.write(data(BIG)))
    assert len(under(prefix, kept=True)) == 1
    deadline = time.monotonic() + 10
    while under(prefix, kept=True) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert under(prefix, kept=True) == []
    name = writer.write(data(BIG))  # and it starts keeping again
    assert len(under(prefix, kept=True)) == 2
    writer.close()
    assert under(prefix, kept=True) == [name]


def test_a_kept_segment_removed_under_the_writer_is_replaced(prefix):
    writer = _shm.Writer(prefix, "c")
    _shm.unlink(writer.write(data(BIG, seed=1)))
    assert _shm.remove_all(prefix) == 1  # its cluster ended under it
    name = writer.write(data(BIG, seed=2))
    with open(seg_path(name), "rb") as f:
        assert f.read() == data(BIG, seed=2)
    assert len(under(prefix, kept=True)) == 2
    writer.close()


def test_a_forked_child_writes_segments_of_its_own(prefix):
    writer = _shm.Writer(prefix, "c")
    _shm.unlink(writer.write(data(BIG, seed=1)))
    (own,) = under(prefix, kept=True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            name = writer.write(data(BIG, seed=2))
            ok = inode(name) != inode(own) and f"-c{os.getpid()}-" in name and writer._kept._segments == []
            writer.close()  # the parent's segments are not the child's to free
            os._exit(0 if ok and os.path.exists(seg_path(own)) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    writer.close()


def test_a_new_kept_segment_failing_midway_raises_oserror_and_leaves_nothing(prefix, monkeypatch):
    monkeypatch.setattr(_shm, "_WRITE_CHUNK", BIG // 4)
    monkeypatch.setattr(_shm, "os", FailingOs(ok=2))  # /dev/shm fills up under the write
    writer = _shm.Writer(prefix, "c")
    with pytest.raises(OSError) as info:
        writer.write(data(BIG))
    assert info.value.errno == errno.ENOSPC
    assert under(prefix, kept=True) == []
    monkeypatch.undo()
    assert writer._kept._segments == []  # its reservation is gone too
    name = writer.write(data(BIG))
    assert len(under(prefix, kept=True)) == 2 and name in under(prefix)
    writer.close()


def test_the_bounds_hold_for_concurrent_writers(prefix, monkeypatch):
    monkeypatch.setattr(_shm, "KEEP_COUNT", 3)
    writer = _shm.Writer(prefix, "c")
    barrier = threading.Barrier(8)
    names, errors = [], []

    def send(seed):
        try:
            barrier.wait()
            names.append(writer.write(data(2 * BIG, seed=seed)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(names)) == 8
    for name in names:
        assert os.path.getsize(seg_path(name)) == 2 * BIG
    assert len(under(prefix, kept=True)) - len(under(prefix)) <= 3
    writer.close()


def test_close_leaves_a_segment_being_filled_to_its_thread(prefix):
    writer = _shm.Writer(prefix, "c")
    _shm.unlink(writer.write(data(BIG, seed=1)))
    kept = writer._kept
    seg = kept._reusable(BIG)  # a thread starts filling it ...
    assert seg is not None and seg.filling
    writer.close()  # ... while the pool ends
    assert os.path.exists(seg_path(seg.name)) and seg.fd >= 0  # not freed under that thread
    kept._done(seg)  # the thread finishes: now it goes
    assert seg.fd == -1 and under(prefix, kept=True) == []


def test_a_message_name_left_alone_is_never_rewritten(prefix):
    """The writer's own name removed under it (its cluster ending) while a message still names the file."""
    writer = _shm.Writer(prefix, "c")
    payload = data(BIG, seed=1)
    name = writer.write(payload)
    (own,) = [n for n in under(prefix, kept=True) if n != name]
    os.unlink(seg_path(own))  # now the message's name is the file's only link
    other = writer.write(data(BIG, seed=2))
    assert inode(other) != inode(name)
    with open(seg_path(name), "rb") as f:
        assert f.read() == payload
    writer.close()


def test_remove_kept_removes_only_one_process_kept_segments(prefixes):
    mine = prefixes()
    writer = _shm.Writer(mine, "e")
    message = writer.write(data(BIG))
    (own,) = [n for n in under(mine, kept=True) if n != message]
    other = f"{mine}-e{os.getpid() + 1}-k0"
    with open(seg_path(other), "wb") as f:
        f.write(b"another engine's")
    assert _shm.remove_kept(mine, "e", os.getpid()) == 1
    assert under(mine, kept=True) == sorted([message, other])  # the message's name stays
    assert not os.path.exists(seg_path(own))
    for bad in (("zpool-x", "e", 1), (mine, "x", 1), (mine, "e", "1")):
        with pytest.raises(ValueError):
            _shm.remove_kept(*bad)
    writer.close()


# -- open_segment / unlink ----------------------------------------------------------------------


def test_open_segment_maps_read_only(prefix):
    payload = data(100_000)
    name = _shm.Writer(prefix, "c").write(payload)
    view = _shm.open_segment(name, len(payload))
    assert type(view) is memoryview and view.readonly and view.nbytes == len(payload)
    assert view.tobytes() == payload
    with pytest.raises(TypeError):
        view[0] = 1
    arr = np.frombuffer(view, dtype=np.uint8)
    assert _tasks.received_via(arr) == "shm"  # a view on the mapping, not a copy
    assert not arr.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        arr[0] = 1
    assert _shm.open_segment(name, 10).tobytes() == payload[:10]  # a prefix of it is fine


def test_open_segment_checks_the_size(prefix):
    name = _shm.Writer(prefix, "c").write(b"0123456789")
    with pytest.raises(ValueError, match="smaller"):
        _shm.open_segment(name, 11)
    for bad in (-1, 1.5, "10", None):
        with pytest.raises(ValueError, match="size"):
            _shm.open_segment(name, bad)


def test_open_after_unlink_raises_but_mappings_stay_valid(prefix):
    payload = data(BIG + 5)
    name = _shm.Writer(prefix, "c").write(payload)
    view = _shm.open_segment(name, len(payload))
    arr = np.frombuffer(view, dtype=np.uint8)
    _shm.unlink(name)
    assert not os.path.exists(seg_path(name))
    with pytest.raises(OSError) as info:
        _shm.open_segment(name, len(payload))
    assert info.value.errno == errno.ENOENT
    # The mapping outlives the name.
    assert view.tobytes() == payload
    assert arr.tobytes() == payload and int(arr.sum()) == sum(payload)
    _shm.unlink(name)  # gone already: no error


def test_unlink_of_a_name_never_created_is_quiet(prefix):
    _shm.unlink(f"{prefix}-c1-0")
    assert under(prefix) == []


# -- a mapping holds no descriptor (issue 16) -------------------------------------------------------

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self")


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def mappings_of(ino: int) -> int:
    """How many mappings of the segment with inode `ino` this process has."""
    with open("/proc/self/maps") as f:
        rows = [line.split() for line in f]
    return sum(1 for row in rows if len(row) >= 6 and row[5].startswith(_shm.DIRECTORY + "/") and int(row[4]) == ino)


@needs_proc
def test_open_segments_hold_no_descriptor(prefix):
    writer = _shm.Writer(prefix, "c", keep=False)
    sizes = [BIG if i % 50 == 0 else 4096 + i for i in range(200)]
    names = [writer.write(data(size, seed=i)) for i, size in enumerate(sizes)]
    before = open_descriptors()
    views = [_shm.open_segment(name, size) for name, size in zip(names, sizes)]
    assert open_descriptors() == before
    for name in names:
        _shm.unlink(name)
    assert under(prefix) == []
    for i, view in enumerate(views):  # readable without their names
        assert view.readonly and view.tobytes() == data(sizes[i], seed=i), i
    assert open_descriptors() == before


@needs_proc
def test_an_array_keeps_its_mapping_alone_and_unmaps_it_when_freed(prefix):
    writer = _shm.Writer(prefix, "c", keep=False)
    expected = np.arange(BIG // 8, dtype=np.float64)
    frames = dumps(expected, shared=writer)
    (name,) = _shm.manifest_names(frames)
    ino = inode(name)
    got = loads(frames, release=True)  # the segment's name is gone: only the mapping is left
    assert under(prefix) == [] and _tasks.received_via(got) == "shm"
    part = got[10:20]
    base = got
    while isinstance(base, np.ndarray):
        base = base.base
    mapping = weakref.ref(base.obj)  # ndarrays -> memoryview -> mmap object
    del base
    del frames, got
    gc.collect()
    assert mapping() is not None and mappings_of(ino) == 1  # the slice alone keeps it
    np.testing.assert_array_equal(part, expected[10:20])
    del part
    assert mapping() is None and mappings_of(ino) == 0  # unmapped with the last view


def test_a_mapping_is_read_only_through_its_mmap_object_too(prefix):
    name = _shm.Writer(prefix, "c").write(data(BIG))
    view = _shm.open_segment(name, BIG)
    assert isinstance(view.obj, mmap.mmap) and len(view.obj) == BIG
    with pytest.raises(TypeError, match="readonly"):
        view.obj[0] = 1  # a TypeError, not a crash on the read-only pages


RECEIVER = textwrap.dedent("""
    import os, sys
    from zpool import _shm

    name, size, fork = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "forked"
    ino = os.stat(os.path.join(_shm.DIRECTORY, name)).st_ino
    view = _shm.open_segment(name, size)
    expected = view.tobytes()
    if fork:  # the receiver lets go of its mapping; a child it forked holds the copy it inherited
        r, w = os.pipe()
        pid = os.fork()
        if pid:
            del view
            os.write(w, b"x")
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status))
        os.read(r, 1)
    mine = [fd for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")]
    held = sum(1 for fd in mine if os.stat(f"/proc/self/fd/{fd}").st_ino == ino)
    print("ready", held, flush=True)
    sys.stdin.readline()
    print("same" if view.tobytes() == expected else "changed", flush=True)
    sys.stdin.readline()
    os._exit(0)
""")


@needs_proc
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["mapped", "forked"])
def test_a_segment_a_receiver_maps_is_not_reused_though_it_holds_no_descriptor(prefix, how):
    """Another process maps it (or a child it forked after mapping, once it let go): no reuse until it is gone."""
    writer = _shm.Writer(prefix, "c")
    payload = data(BIG, seed=1)
    name = writer.write(payload)
    ino = inode(name)
    (own,) = [n for n in under(prefix, kept=True) if n != name]
    command = [sys.executable, "-c", RECEIVER, name, str(BIG), how]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as receiver:
        try:
            assert receiver.stdout.readline() == "ready 0\n"  # it maps the segment and holds no descriptor of it
            _shm.unlink(name)  # its owner is done with it
            other = writer.write(data(BIG, seed=2))
            assert inode(other) != ino  # not reused: a new segment
            fd = os.open(seg_path(own), os.O_RDONLY)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the writer tries
            finally:
                os.close(fd)
            receiver.stdin.write("check\n")
            receiver.stdin.flush()
            assert receiver.stdout.readline() == "same\n"
            receiver.stdin.write("bye\n")
            receiver.stdin.flush()
            assert receiver.wait(30) == 0
        finally:
            if receiver.poll() is None:
                receiver.kill()
    again = writer.write(data(BIG, seed=3))  # `other` is still named: only the first one is free
    assert inode(again) == ino
    with open(seg_path(again), "rb") as f:
        assert f.read() == data(BIG, seed=3)
    writer.close()


def test_writers_check_that_the_lock_follows_the_mapping(prefix):
    writer = _shm.Writer(prefix, "c")
    assert _shm._lock_follows_mapping(writer) is True  # Linux
    assert under(prefix, kept=True) == []  # the file it checked with is gone


def test_the_check_fails_where_closing_the_descriptor_frees_the_lock(prefix, monkeypatch):
    monkeypatch.setattr(_shm_map, "map_readonly", lambda fd, size: mmap.mmap(-1, size))  # a mapping of nothing
    assert _shm._lock_follows_mapping(_shm.Writer(prefix, "c")) is False
    assert under(prefix, kept=True) == []


def test_where_the_lock_does_not_follow_the_mapping_no_segment_is_kept(prefix, monkeypatch):
    monkeypatch.setattr(_shm, "_lock_follows_mapping", lambda writer: False)
    writer = _shm.Writer(prefix, "c")
    first = writer.write(data(BIG, seed=1))
    assert under(prefix, kept=True) == [first]  # no name of its own: not kept
    _shm.unlink(first)
    second = writer.write(data(BIG, seed=2))
    assert under(prefix, kept=True) == [second]
    writer.close()


def test_a_failed_mapping_leaves_its_reservation_mapped_forever(prefix, monkeypatch):
    """A failed MAP_FIXED may have unmapped the reserved addresses: they are never unmapped again."""
    name = _shm.Writer(prefix, "c", keep=False).write(data(BIG))
    native = _shm_map.native()

    def failing(addr, size, prot, flags, fd, offset):
        ctypes.set_errno(errno.ENOMEM)
        return native.failed

    monkeypatch.setattr(_shm_map, "native", lambda: native._replace(map=failing))
    abandoned = len(_shm_map.ABANDONED)
    with pytest.raises(OSError) as info:
        _shm.open_segment(name, BIG)
    assert info.value.errno == errno.ENOMEM
    assert len(_shm_map.ABANDONED) == abandoned + 1
    _shm_map.ABANDONED.pop().close()  # (this fake left it mapped: safe to unmap here)


@needs_proc
def test_a_mapping_placed_elsewhere_is_undone(prefix, monkeypatch):
    """Where MAP_FIXED has another value, the kernel maps the file elsewhere: undone, and an error."""
    name = _shm.Writer(prefix, "c", keep=False).write(data(BIG))
    native = _shm_map.native()

    def elsewhere(addr, size, prot, flags, fd, offset):
        return native.map(None, size, prot, flags & ~_shm_map.MAP_FIXED, fd, offset)

    monkeypatch.setattr(_shm_map, "native", lambda: native._replace(map=elsewhere))
    abandoned = len(_shm_map.ABANDONED)
    with pytest.raises(OSError) as info:
        _shm.open_segment(name, BIG)
    assert info.value.errno == errno.ENOTSUP
    assert mappings_of(inode(name)) == 0 and len(_shm_map.ABANDONED) == abandoned


# (Nothing here names a real file outside the test's own directory: were the check broken,
# unlink would remove it.)
BAD_NAMES = [
    "",
    "../etc/passwd",
    "../../../../../../etc/passwd",
    "zpool-0123456789ab",  # a prefix, not a segment
    "zpool-0123456789ab-x1-0",  # unknown role
    "zpool-0123456789ab-c-0",
    "zpool-0123456789ab-c1-",
    "zpool-0123456789AB-c1-0",
    "zpool-0123456789ab-c1-0\n",
    "zpool-0123456789ab-c1-0 ",
    "zpool-0123456789ab-c1-0/x",
    "zpool-0123456789ab-c1-0/../../../etc/passwd",
    "other-0123456789ab-c1-0",
    "psm_0123456789ab",
    b"zpool-0123456789ab-c1-0",
    None,
    5,
]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_names_are_validated(bad, monkeypatch, tmp_path):
    monkeypatch.setattr(_shm, "DIRECTORY", str(tmp_path / "a" / "b" / "c" / "d" / "e" / "f" / "g"))
    with pytest.raises(ValueError, match="segment name"):
        _shm.open_segment(bad, 10)
    with pytest.raises(ValueError, match="segment name"):
        _shm.unlink(bad)


def test_absolute_paths_are_not_opened():
    with pytest.raises(ValueError, match="segment name"):
        _shm.open_segment("/etc/passwd", 1)  # (read-only: harmless were the check broken)


def test_unlink_cannot_reach_outside_the_directory(tmp_path):
    canary = tmp_path / "canary"
    canary.write_bytes(b"alive")
    relative = os.path.relpath(canary, _shm.DIRECTORY)
    assert relative.startswith("..")
    for name in (relative, str(canary), f"zpool-0123456789ab-c1-0/../{relative}"):
        with pytest.raises(ValueError):
            _shm.unlink(name)
        with pytest.raises(ValueError):
            _shm.open_segment(name, 1)
    assert canary.read_bytes() == b"alive"


# -- remove_all -----------------------------------------------------------------------------------


def test_remove_all_removes_only_its_prefix(prefixes):
    mine = prefixes()
    longer = prefixes()
    longer = mine + longer[len("zpool-") : len("zpool-") + 2]  # mine is a string prefix of this one
    other = prefixes()
    c, e = _shm.Writer(mine, "c"), _shm.Writer(mine, "e")
    doomed = [c.write(b"a"), c.write(b"b"), e.write(b"c")]
    kept = [_shm.Writer(longer, "c").write(b"d"), _shm.Writer(other, "e").write(b"e")]
    # Files under the prefix that are not segment names are not zpool's: left alone.
    strays = [f"{mine}-notes", f"{mine}-c1-0.bak", mine]
    for stray in strays:
        with open(seg_path(stray), "wb") as f:
            f.write(b"not a segment")
    try:
        assert _shm.remove_all(mine) == 3
        for name in doomed:
            assert not os.path.exists(seg_path(name))
        for name in kept + strays:
            assert os.path.exists(seg_path(name)), name
        assert _shm.remove_all(mine) == 0
    finally:
        for name in strays + kept:
            os.unlink(seg_path(name))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "zpool-",
        "zpool-xyz",
        "zpool",
        "../",
        "..",
        "zpool-*",
        "zpool-0123456789ab-c1",
        "/dev/shm/zpool-0123456789ab",
    ],
)
def test_remove_all_rejects_bad_prefixes(bad):
    with pytest.raises(ValueError, match="prefix"):
        _shm.remove_all(bad)


def test_without_the_directory(prefix, monkeypatch, tmp_path):
    assert _shm.available()
    monkeypatch.setattr(_shm, "DIRECTORY", str(tmp_path / "missing"))
    assert not _shm.available()
    assert _shm.remove_all(prefix) == 0
    monkeypatch.setattr(_shm, "DIRECTORY", str(tmp_path))
    assert _shm.available()
    name = _shm.Writer(prefix, "c").write(b"elsewhere")
    assert os.path.exists(tmp_path / name)
    assert _shm.open_segment(name, 9).tobytes() == b"elsewhere"
    assert _shm.remove_all(prefix) == 1 and not os.path.exists(tmp_path / name)


# -- manifests --------------------------------------------------------------------------------------


def test_manifest_round_trip(prefix):
    segments = {0: (f"{prefix}-c12-0", 5), 3: (f"{prefix}-e7-41", BIG)}
    frame = _shm.make_manifest(segments)
    assert frame.startswith(_shm.MANIFEST)
    assert json.loads(frame[len(_shm.MANIFEST) :]) == {
        "segments": {"0": [segments[0][0], 5], "3": [segments[3][0], BIG]}
    }
    for form in (frame, bytearray(frame), memoryview(frame), zmq.Frame(frame)):
        assert _shm.read_manifest(form) == segments
    assert _shm.manifest_names([frame, b"pickle", b""]) == [segments[0][0], segments[3][0]]
    assert _shm.manifest_names([zmq.Frame(frame)]) == [segments[0][0], segments[3][0]]
    assert _shm.read_manifest(_shm.make_manifest({})) == {}


def test_not_a_manifest():
    pickled = pickle.dumps([1, 2], protocol=5)
    for frame in (pickled, b"", b"ZPSHM", b"ZPSHM2{}", memoryview(pickled)):
        assert _shm.read_manifest(frame) is None
    assert _shm.manifest_names([]) == []
    assert _shm.manifest_names([pickled, b"x"]) == []


GOOD = "zpool-0123456789ab-c1-0"
MALFORMED = [
    b"ZPSHM1",
    b"ZPSHM1{",
    b"ZPSHM1\xff\xfe",
    b"ZPSHM1[]",
    b"ZPSHM1null",
    b'ZPSHM1{"segments": []}',
    b'ZPSHM1{"other": {}}',
    b'ZPSHM1{"segments": {"0": ["' + GOOD.encode() + b'"]}}',
    b'ZPSHM1{"segments": {"0": ["' + GOOD.encode() + b'", "10"]}}',
    b'ZPSHM1{"segments": {"0": ["' + GOOD.encode() + b'", 1.5]}}',
    b'ZPSHM1{"segments": {"0": ["' + GOOD.encode() + b'", 10, 1]}}',
    b'ZPSHM1{"segments": {"x": ["' + GOOD.encode() + b'", 10]}}',
    b'ZPSHM1{"segments": {"0": ["../etc/passwd", 10]}}',
    b'ZPSHM1{"segments": {"0": ["other-0123456789ab-c1-0", 10]}}',
    b'ZPSHM1{"segments": {"0": [5, 10]}}',
]


@pytest.mark.parametrize("frame", MALFORMED, ids=lambda f: f.decode("latin-1"))
def test_malformed_manifests(frame):
    with pytest.raises(ValueError):
        _shm.read_manifest(frame)
    assert _shm.manifest_names([frame, b"pickle"]) == []  # the controller just skips them
    with pytest.raises(SerializationError, match="manifest"):
        loads([frame, pickle.dumps(None, protocol=5), b""])
    with pytest.raises(SerializationError, match="manifest"):
        loads([frame, pickle.dumps(None, protocol=5), b""], release=True)


# -- the serializer with a Writer --------------------------------------------------------------


def test_dumps_uses_segments_only_from_the_threshold(prefix):
    writer = _shm.Writer(prefix, "c")
    small = np.arange(100)
    mid = np.frombuffer(data(BIG - 1), dtype=np.uint8)
    for obj in (small, mid, {"a": small, "b": mid}, b"x" * (BIG - 1)):
        frames = dumps(obj, shared=writer)
        assert _shm.read_manifest(frames[0]) is None
        assert [bytes(f) for f in frames] == [bytes(f) for f in dumps(obj)]
    assert under(prefix) == []

    big = np.frombuffer(data(BIG, seed=1), dtype=np.uint8)
    frames = dumps(big, shared=writer)
    manifest = _shm.read_manifest(frames[0])
    assert list(manifest) == [0]
    name, size = manifest[0]
    assert size == BIG and re.fullmatch(rf"{prefix}-c{os.getpid()}-\d+", name)
    assert len(frames) == 3 and bytes(frames[2]) == b""  # its place in the frames is empty
    assert under(prefix) == [name]
    with open(seg_path(name), "rb") as f:
        assert f.read() == big.tobytes()
    got = loads(frames, release=True)
    np.testing.assert_array_equal(got, big)
    assert under(prefix) == []


def test_mixed_payload_and_release(prefix):
    writer = _shm.Writer(prefix, "c")
    obj = {
        "big": np.frombuffer(data(2 * BIG, seed=2), dtype=np.float64).reshape(-1, 4),
        "mid": np.arange(20_000, dtype=np.int64),  # 160 KB: a frame
        "small": np.arange(10, dtype=np.int8),  # in the pickle
        "fortran": np.asfortranarray(np.arange(BIG // 4, dtype=np.float32).reshape(-1, 8)),
        "text": "hello",
    }
    frames = dumps(obj, shared=writer)
    manifest = _shm.read_manifest(frames[0])
    buffers = frames[2:]
    assert len(buffers) == 3 and len(manifest) == 2
    assert sorted(size for _, size in manifest.values()) == sorted([obj["big"].nbytes, obj["fortran"].nbytes])
    for index in manifest:
        assert bytes(buffers[index]) == b""
    (frame_index,) = set(range(3)) - set(manifest)
    assert bytes(buffers[frame_index]) == obj["mid"].tobytes()
    names = [name for name, _ in manifest.values()]
    assert _shm.manifest_names(frames) == names and under(prefix) == sorted(names)

    # release=False: the segments stay (their owner unlinks them); loads can map them again.
    kept = loads(frames)
    again = loads([zmq.Frame(f) for f in frames])
    assert under(prefix) == sorted(names)
    for got in (kept, again):
        for key in ("big", "mid", "small", "fortran"):
            assert got[key].dtype == obj[key].dtype and got[key].strides == obj[key].strides
            np.testing.assert_array_equal(got[key], obj[key])
        assert got["text"] == "hello"
        assert _tasks.received_via(got["big"]) == "shm" and _tasks.received_via(got["fortran"]) == "shm"
        assert not got["big"].flags.writeable

    # release=True: unlinked once mapped; the arrays stay readable.
    released = loads(frames, release=True)
    assert under(prefix) == []
    np.testing.assert_array_equal(released["big"], obj["big"])
    np.testing.assert_array_equal(kept["fortran"], obj["fortran"])
    assert _tasks.received_via(released["big"]) == "shm"
    with pytest.raises(SerializationError, match="cannot map"):
        loads(frames)


def test_bytes_and_memoryview_through_segments(prefix):
    writer = _shm.Writer(prefix, "c")
    raw = data(BIG + 3, seed=4)
    typed = memoryview(np.arange(BIG // 8, dtype=np.float64).reshape(-1, 16))
    frames = dumps_call(_tasks.identity, (raw, bytearray(raw), typed), shared=writer)
    assert len(_shm.read_manifest(frames[0])) == 3
    func, args, kwargs = loads_call(frames)  # the controller owns call segments: nothing unlinked
    assert func is _tasks.identity and kwargs == {}
    assert len(under(prefix)) == 3
    assert type(args[0]) is bytes and args[0] == raw
    assert type(args[1]) is bytearray and args[1] == raw
    assert type(args[2]) is memoryview and args[2].readonly
    assert (args[2].format, args[2].shape) == ("d", typed.shape) and args[2].tobytes() == typed.tobytes()
    for name in _shm.manifest_names(frames):
        _shm.unlink(name)
    assert under(prefix) == []
    assert args[2].tobytes() == typed.tobytes()  # still mapped


def test_full_shared_memory_falls_back_to_frames(prefix, monkeypatch, caplog):
    monkeypatch.setattr(serialize, "_WARNED", [])
    obj = {"a": np.frombuffer(data(BIG, seed=5), dtype=np.uint8), "b": np.arange(BIG // 4, dtype=np.int32)}
    writer = FullWriter(prefix)
    with caplog.at_level(logging.WARNING, logger="zpool"):
        frames = dumps(obj, shared=writer)
    assert writer.attempts == 2
    assert _shm.read_manifest(frames[0]) is None and bytes(frames[0][:1]) == b"\x80"  # a plain payload
    assert [bytes(f) for f in frames[1:]] == [obj["a"].tobytes(), obj["b"].tobytes()]
    assert under(prefix) == []
    got = loads(frames, release=True)
    for key in obj:
        np.testing.assert_array_equal(got[key], obj[key])
        assert got[key].dtype == obj[key].dtype
    warnings = [r for r in caplog.records if r.name == "zpool" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "shared memory" in warnings[0].getMessage()
    # Warned once per process, not per buffer or per call.
    dumps(obj, shared=FullWriter(prefix))
    assert len([r for r in caplog.records if r.name == "zpool"]) == 1


def test_partly_full_shared_memory(prefix, monkeypatch):
    monkeypatch.setattr(serialize, "_WARNED", [True])  # (warned already)
    first, second = np.frombuffer(data(BIG, seed=6), dtype=np.uint8), np.frombuffer(data(BIG, seed=7), np.uint8)
    frames = dumps([first, second], shared=FullWriter(prefix, ok=1))
    manifest = _shm.read_manifest(frames[0])
    assert list(manifest) == [0] and len(under(prefix)) == 1
    assert bytes(frames[2]) == b"" and bytes(frames[3]) == second.tobytes()
    got = loads(frames, release=True)
    assert under(prefix) == []
    np.testing.assert_array_equal(got[0], first)
    np.testing.assert_array_equal(got[1], second)
    assert _tasks.received_via(got[0]) == "shm" and _tasks.received_via(got[1]) is None


def test_writer_error_other_than_oserror_unlinks_what_was_written(prefix):
    obj = [np.zeros(BIG, dtype=np.uint8), np.ones(BIG, dtype=np.uint8)]
    writer = BrokenWriter(prefix)
    with pytest.raises(RuntimeError, match="writer broke"):
        dumps(obj, shared=writer)
    assert writer.attempts == 2
    assert under(prefix) == []


def _two_segment_payload(prefix):
    writer = _shm.Writer(prefix, "c")
    obj = [np.full(BIG, 1, dtype=np.uint8), np.full(BIG, 2, dtype=np.uint8)]
    frames = dumps(obj, shared=writer)
    names = _shm.manifest_names(frames)
    assert len(names) == 2
    return frames, names


def test_missing_segment_raises_serialization_error_and_release_still_unlinks(prefix):
    frames, names = _two_segment_payload(prefix)
    _shm.unlink(names[1])
    with pytest.raises(SerializationError, match=f"cannot map shared-memory segment {names[1]}"):
        loads(frames)
    assert under(prefix) == [names[0]]  # without release: left to its owner
    with pytest.raises(SerializationError, match="cannot map"):
        loads(frames, release=True)
    assert under(prefix) == []  # with release: unlinked even though loading failed


def test_segment_smaller_than_its_manifest_says(prefix):
    name = _shm.Writer(prefix, "c").write(b"short")
    frames = [_shm.make_manifest({0: (name, 100)}), pickle.dumps(None, protocol=5), b""]
    with pytest.raises(SerializationError, match="smaller"):
        loads(frames)


@pytest.mark.parametrize("index", [1, 5, -1])
def test_manifest_naming_a_buffer_that_is_not_there(prefix, index):
    name = _shm.Writer(prefix, "c").write(b"0123456789")
    frames = [_shm.make_manifest({index: (name, 10)}), pickle.dumps(None, protocol=5), b""]
    with pytest.raises(SerializationError, match="not there"):
        loads(frames, release=True)
    assert under(prefix) == []  # released all the same


def test_full_shared_memory_fallback_copies_so_the_callers_array_is_free_at_once(prefix, monkeypatch):
    monkeypatch.setattr(serialize, "_WARNED", [True])  # (warned already)
    arr = np.arange(BIG // 8, dtype=np.float64)
    frames = dumps(arr, shared=FullWriter(prefix))
    arr[:] = -1.0  # as a caller may, once the call returned
    got = loads(frames)
    np.testing.assert_array_equal(got, np.arange(BIG // 8, dtype=np.float64))


@pytest.mark.parametrize(
    "code, hint",
    [
        (errno.EMFILE, r"; this process has as many files open as it may \(RLIMIT_NOFILE: \d+\)\. .*`ulimit -n 4096`"),
        (errno.ENFILE, r"; the system has too many files open\. .*fs\.file-max"),
        (errno.ENOENT, r"; it was removed \(its pool ended\), or this process runs on another host than its sender$"),
        (errno.ENOMEM, r"; out of memory, or of mappings: .*vm\.max_map_count"),
        (errno.EACCES, None),
    ],
)
def test_the_error_for_a_segment_that_cannot_be_mapped_says_why(prefix, monkeypatch, code, hint):
    frames, names = _two_segment_payload(prefix)

    def refuse(name, size):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(_shm, "open_segment", refuse)
    with pytest.raises(SerializationError) as info:
        loads(frames, release=True)
    text = str(info.value)
    assert text.startswith(f"cannot map shared-memory segment {names[0]} ({BIG} bytes): [Errno {code}] ")
    if hint is None:
        assert text.endswith(os.strerror(code))  # the OS error says it all
    else:
        assert re.search(hint, text), text
    assert under(prefix) == []  # released all the same


@needs_proc
def test_out_of_descriptors_the_error_says_how_to_raise_the_limit(prefix):
    frames, names = _two_segment_payload(prefix)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.open(os.devnull, os.O_RDONLY)  # the number the next open would get
    os.close(lowest)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
    try:
        with pytest.raises(SerializationError) as info:
            loads(frames)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert f"[Errno {errno.EMFILE}]" in str(info.value)
    assert f"(RLIMIT_NOFILE: {lowest})" in str(info.value) and "ulimit -n" in str(info.value)
    for name in names:
        _shm.unlink(name)
