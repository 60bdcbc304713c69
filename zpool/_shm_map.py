"""Mapping a shared-memory segment read-only without keeping its file descriptor (Linux, ctypes).

:func:`zpool._shm.open_segment` maps each received segment with
:func:`map_readonly`: an anonymous mmap object reserves the addresses, and
libc's ``mmap(2)`` maps the file over them with ``MAP_FIXED``, so the
mapping holds no descriptor and a process may keep more received arrays
than it may open files. This module owns that trick and what it needs:
libc's ``mmap``/``munmap`` and CPython's buffer calls through ctypes
(:func:`native`, loaded on first use), the reservations a failed mapping
leaves behind (:data:`ABANDONED`), and the check that a receiver's shared
``flock`` lives as long as its mapping (:func:`lock_follows_mapping`), on
which a :class:`zpool._shm.Writer`'s reuse of segments relies.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
from typing import Any, Callable, NamedTuple

try:
    import fcntl
except ImportError:  # not POSIX: zpool._shm uses none of this
    fcntl = None  # type: ignore[assignment]

__all__ = ["ABANDONED", "MAP_FIXED", "Native", "lock_follows_mapping", "map_readonly", "native"]

# mmap(2)'s MAP_FIXED, which Python's mmap module does not export: 0x10 on Linux (but on alpha and
# parisc, where the address the kernel returns tells, and open_segment fails rather than misplace it).
MAP_FIXED = getattr(mmap, "MAP_FIXED", 0x10)


class Native(NamedTuple):
    map: Any  # libc's mmap(2) and munmap(2)
    unmap: Any
    address: Callable[[object], int]  # where an object's buffer starts
    get_errno: Callable[[], int]
    failed: int  # MAP_FAILED as ctypes returns it


@functools.cache
def native() -> Native:
    """libc's ``mmap`` and ``munmap``, and CPython's buffer calls, through ctypes (loaded on first use)."""
    import ctypes

    class PyBuffer(ctypes.Structure):  # CPython's Py_buffer
        _fields_ = [
            ("buf", ctypes.c_void_p),
            ("obj", ctypes.c_void_p),
            ("len", ctypes.c_ssize_t),
            ("itemsize", ctypes.c_ssize_t),
            ("readonly", ctypes.c_int),
            ("ndim", ctypes.c_int),
            ("format", ctypes.c_char_p),
            ("shape", ctypes.c_void_p),
            ("strides", ctypes.c_void_p),
            ("suboffsets", ctypes.c_void_p),
            ("internal", ctypes.c_void_p),
        ]

    libc = ctypes.CDLL(None, use_errno=True)
    map_ = libc.mmap
    map_.restype = ctypes.c_void_p
    map_.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    unmap = libc.munmap
    unmap.restype = ctypes.c_int
    unmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    get_buffer = ctypes.pythonapi.PyObject_GetBuffer
    get_buffer.restype = ctypes.c_int
    get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int)
    release_buffer = ctypes.pythonapi.PyBuffer_Release
    release_buffer.restype = None
    release_buffer.argtypes = (ctypes.POINTER(PyBuffer),)

    def address(obj: object) -> int:
        view = PyBuffer()
        get_buffer(obj, ctypes.byref(view), 0)  # PyBUF_SIMPLE; raises if it fails (pythonapi)
        try:
            return int(view.buf or 0)
        finally:
            release_buffer(ctypes.byref(view))

    return Native(map_, unmap, address, ctypes.get_errno, int(ctypes.c_void_p(-1).value or 0))


# Reservations whose file mapping failed: maybe unmapped already, so never unmapped again (see map_readonly).
ABANDONED: list[mmap.mmap] = []


def map_readonly(fd: int, size: int) -> mmap.mmap:
    """Map `size` bytes of `fd` read-only and shared: an mmap object that keeps no descriptor open.

    ``mmap.mmap(fd, ...)`` keeps a duplicate of `fd` for as long as it
    lives (until Python 3.13's ``trackfd=False``): a received array held a
    descriptor, and a thousand of them reached the usual limit of open
    files (issue 16). Instead, an anonymous mmap object (no descriptor)
    reserves the addresses and the file is mapped over it with
    ``MAP_FIXED``, which replaces the reserved pages in one step: nothing
    else can land there, and the object unmaps the file when it goes, like
    any mmap object (never while a view on it exists).
    """
    reserved = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    calls = native()
    start = calls.address(reserved)
    got = calls.map(start, size, mmap.PROT_READ, mmap.MAP_SHARED | MAP_FIXED, fd, 0)
    if got == start:
        return reserved
    if got is not None and got != calls.failed:  # MAP_FIXED is not this platform's value: mapped elsewhere
        calls.unmap(got, size)
        reserved.close()
        raise OSError(errno.ENOTSUP, "mmap(MAP_FIXED) does not work here")
    code = calls.get_errno()
    # A failed MAP_FIXED may have unmapped the reservation already, and another thread may map
    # something there since: unmapping it again could take that away. So it stays as it is.
    ABANDONED.append(reserved)
    raise OSError(code, os.strerror(code))


def lock_follows_mapping(fd: int, path: str) -> bool:
    """Whether a shared lock lasts as long as a mapping made by :func:`map_readonly` once its descriptor is closed.

    `fd` is a descriptor, open for writing, of a new file at `path` (the
    caller removes it). Checked as a receiver and a writer would: the
    receiver's lock must block the writer's exclusive lock while mapped,
    and free it once unmapped.
    """
    other = -1
    try:
        other = os.open(path, os.O_RDONLY)  # another open file, as a receiver's
        os.ftruncate(fd, mmap.PAGESIZE)
        fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)
        mapping = map_readonly(other, mmap.PAGESIZE)
        os.close(other)
        other = -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True
        mapping.close()
        if held:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and gone with the mapping (raises if not)
        return held
    except OSError:
        return False
    finally:
        if other >= 0:
            os.close(other)
