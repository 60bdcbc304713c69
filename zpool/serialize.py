"""Turning calls and results into frames, and back.

Everything goes through pickle protocol 5 with a pickler that

* sends importable module-level functions and classes by reference (cheap),
  and functions or classes that cannot be found by name on the other side —
  lambdas, closures, anything defined in ``__main__`` — by value with dill;
* moves large buffers out of band: numpy arrays (through their own
  protocol-5 support), ``memoryview``, and ``bytes``/``bytearray`` passed as top-level
  arguments or returned as results become frames of their own, referencing the
  original memory, so ZeroMQ sends them with ``copy=False``.

On the receiving side the out-of-band frames are handed to pickle as
read-only buffers: arrays come back as read-only views on the received
frames, with no copy. ``bytes`` and ``bytearray`` own their memory in
Python, so rebuilding them costs one copy.

A serialized object is a list of frames: ``[pickle, buffer_0, buffer_1, ...]``.

This module is about pickling only. It keeps the sender's caches (a
function's by-value pickle while nothing it captures changes; which objects
pickle by reference). On an engine, what dill rebuilds from the caller's
``__main__`` is handed to :mod:`zpool._engine_context`, which owns the
engine's namespace and rebinds that code to it.
"""

from __future__ import annotations

import errno
import io
import pickle
import sys
import threading
import types
import weakref
from typing import Any, Callable, Iterable, Mapping, Sequence

from zpool import _engine_context, _shm
from zpool.error import SerializationError, serialization_error

__all__ = [
    "OOB_THRESHOLD",
    "Pickled",
    "dumps",
    "dumps_call",
    "loads",
    "loads_call",
    "pickled_once",
    "short_repr",
]

# Below this many bytes a buffer is copied into the pickle: a separate frame
# costs more than copying it (ZeroMQ's own zero-copy threshold is 64 KiB).
OOB_THRESHOLD = 64 * 1024


def _loads_dill(data: bytes) -> Any:
    obj = _rebuild(data)
    engine = _engine_context.current()
    if engine is not None:  # on an engine: code from the caller's __main__ runs in the engine's
        return engine.adopt(obj)
    return _returned_home(obj)


def _loads_kept(data: bytes) -> Any:
    """:func:`_loads_dill` for a pickle the caller keeps (see :func:`_dumps_by_value`): engines rebuild it once."""
    engine = _engine_context.current()
    if engine is None:
        return _loads_dill(data)
    return engine.adopt_kept(data, _rebuild)


def _rebuild(data: bytes) -> Any:
    import dill  # imported on demand: engines that never see a lambda skip it

    return dill.loads(data)


def _returned_home(obj: Any) -> Any:
    """`obj` itself, or if it is a class of this ``__main__`` that went to an engine by value, the original."""
    if isinstance(obj, type) and obj.__module__ == "__main__":
        # A class of the caller's __main__ that went to an engine by value and
        # came back (as a result's class, or a raised exception's): use the
        # original, so isinstance() and except clauses work as with the stdlib.
        home: Any = sys.modules.get("__main__")
        for part in obj.__qualname__.split("."):
            home = getattr(home, part, None)
        if isinstance(home, type) and home.__qualname__ == obj.__qualname__:
            return home
    return obj


# dill's recurse=True finds a function's globals by disassembling it with
# sys.stdout swapped for a buffer; two threads doing that at once can leave
# the buffer in place for good. One at a time, then.
_DILL_LOCK = threading.Lock()


def _dumps_dill(obj: Any) -> bytes:
    import dill

    with _DILL_LOCK:
        data: bytes = dill.dumps(obj, protocol=5, recurse=True)
    return data


# A function or class sent by value is pickled again only when what dill would
# capture may have changed. dill's by-value pickle (code, globals it reads,
# closure, defaults; a class's bases and methods) costs 100-600 µs; checking that
# nothing it captured changed costs a few µs. Functions are kept by their code
# object, so a function made anew with the same code and the same captured
# values (a lambda written in a loop, a closure made again) finds the pickle of
# the one before; classes by themselves.
# code object or class -> [(what it captured, see _captured; its pickle)], newest first.
_BY_VALUE: weakref.WeakKeyDictionary[Any, list[tuple[list[Any], bytes]]] = weakref.WeakKeyDictionary()
_BY_VALUE_LOCK = threading.Lock()
_BY_VALUE_MAX_BYTES = 1 << 20  # larger pickles (a big global inside) are not kept
_BY_VALUE_VARIANTS = 4  # pickles kept per code object (closures over different values)
# code object -> the global names it (or code nested in it) may read.
_CODE_NAMES: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()
_ABSENT = object()  # a name the code reads that is not bound (yet)
_IMMUTABLE = frozenset({int, float, complex, str, bytes, bool, type(None), range, type(Ellipsis)})
_CAPTURE_MAX = 256  # objects in one fingerprint; more, and the function is pickled every time


def _dumps_by_value(obj: Any) -> tuple[bytes, bool]:
    """dill's by-value pickle of a function or class, reused while everything it captures is unchanged.

    Also returned: whether the pickle is such a kept one (everything it
    captured was fingerprinted, so the same bytes mean the same thing), so
    that an engine may keep what it rebuilds from it (:func:`_loads_kept`).
    """
    seen = _captured(obj)
    if seen is None:  # it reads something mutable (a list, a dict, an object): pickle it now, as it is
        return _dumps_dill(obj), False
    key = obj.__code__ if type(obj) is types.FunctionType else obj
    with _BY_VALUE_LOCK:
        try:
            variants = _BY_VALUE.get(key)
        except TypeError:  # a class whose metaclass makes it unhashable
            return _dumps_dill(obj), False
        for kept, data in variants or ():
            if _same(kept, seen):
                return data, True
    data = _dumps_dill(obj)
    if len(data) > _BY_VALUE_MAX_BYTES:
        return data, False
    with _BY_VALUE_LOCK:
        variants = _BY_VALUE.setdefault(key, [])
        variants.insert(0, (seen, data))
        del variants[_BY_VALUE_VARIANTS:]
    return data, True


def _importable(module: types.ModuleType) -> bool:
    """Whether dill sends `module` by reference: found again by its name, and not ``__main__``."""
    name = getattr(module, "__name__", None)
    return name != "__main__" and isinstance(name, str) and sys.modules.get(name) is module


def _same(kept: list[Any], seen: list[Any]) -> bool:
    if len(kept) != len(seen):
        return False
    for a, b in zip(kept, seen):
        if a is not b and not (type(a) is weakref.ref and type(b) is weakref.ref and a() is b() is not None):
            return False
    return True


def _code_names(code: types.CodeType) -> tuple[str, ...]:
    names = _CODE_NAMES.get(code)
    if names is None:
        found: set[str] = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found.update(_code_names(const))
        names = _CODE_NAMES[code] = tuple(sorted(found))
    return names


def _captured(obj: Any) -> list[Any] | None:
    """What dill's by-value pickle of function or class `obj` depends on, or None if some of it may change in place.

    Immutable values, modules and objects pickled by reference count as
    themselves; tuples by their items; other functions and classes sent by
    value (weakly referenced) with what they capture in turn, as dill's
    ``recurse=True`` takes them along. Every name the code may read counts,
    bound or not (:data:`_ABSENT`): a global defined later changes the
    pickle. A class counts by its metaclass, bases and every entry of its
    ``__dict__`` (methods as functions, ``property``, ``staticmethod`` and
    ``classmethod`` by what they wrap). Mutable objects (lists, dicts,
    instances) may change without a trace: what reads them is pickled every
    time. Nothing kept refers to `obj` itself, which must stay collectable.
    """
    out: list[Any] = []
    if type(obj) is types.FunctionType:
        done = _capture(obj, out, {id(obj)})
    else:
        done = _capture_class(obj, out, {id(obj)})
    return out if done and len(out) <= _CAPTURE_MAX else None


def _capture(func: types.FunctionType, out: list[Any], visiting: set[int]) -> bool:
    if func.__dict__ or func.__kwdefaults__ or func.__annotations__:
        return False
    code = func.__code__
    # (The code only weakly: it is the cache's key, which its entries must not keep alive.)
    out += (weakref.ref(code), func.__name__, func.__qualname__, func.__module__, len(func.__defaults__ or ()))
    values: list[Any] = [func.__doc__, *(func.__defaults__ or ())]
    for cell in func.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            values.append(_ABSENT)
    namespace = func.__globals__
    values += [namespace.get(name, _ABSENT) for name in _code_names(code)]
    return all(len(out) <= _CAPTURE_MAX and _stable(value, out, visiting) for value in values)


def _capture_class(cls: type, out: list[Any], visiting: set[int]) -> bool:
    meta = type(cls)
    if meta is not type and not _findable_by_name(meta):
        return False
    out += (meta, cls.__name__, cls.__qualname__, cls.__module__, len(cls.__bases__))
    if not all(_stable(base, out, visiting) for base in cls.__bases__):
        return False
    for name, value in list(vars(cls).items()):
        if len(out) > _CAPTURE_MAX:
            return False
        out.append(name)
        kind = type(value)
        if kind is staticmethod or kind is classmethod:
            out.append(kind)
            value = value.__func__
        elif kind is property:
            out.append(kind)
            value = (value.fget, value.fset, value.fdel, value.__doc__)
        elif kind is types.GetSetDescriptorType or kind is types.MemberDescriptorType:
            out.append(value)  # __dict__, __weakref__, a slot: made with the class
            continue
        elif name == "__slotnames__" and kind is list:
            value = tuple(value)  # copyreg's note of the slots, made when an instance is first pickled
        if not _stable(value, out, visiting):
            return False
    return True


def _stable(value: Any, out: list[Any], visiting: set[int]) -> bool:
    kind = type(value)
    if kind in _IMMUTABLE or value is _ABSENT:
        out.append(value)
        return True
    if kind is tuple or kind is frozenset:
        out.append(len(value))
        return all(_stable(item, out, visiting) for item in value)
    if kind is types.BuiltinFunctionType:  # a module's (by reference), not a bound method of some object
        out.append(value)
        home = value.__self__
        return home is None or (type(home) is types.ModuleType and _importable(home))
    if kind is types.ModuleType:
        out.append(value)
        return _importable(value)
    if kind is types.FunctionType:
        if _findable_by_name(value):  # by reference
            out.append(value)
            return True
        out.append(weakref.ref(value))
        if id(value) in visiting:  # (recursion)
            return True
        visiting.add(id(value))
        return _capture(value, out, visiting)
    if isinstance(value, type):
        if _findable_by_name(value):
            out.append(value)
            return True
        out.append(weakref.ref(value))  # sent by value too
        if id(value) in visiting:
            return True
        visiting.add(id(value))
        return _capture_class(value, out, visiting)
    return False


_NDARRAY: Any = None


def _ndarray_type() -> Any:
    """numpy.ndarray once numpy is loaded (it never is on account of zpool alone), else None."""
    global _NDARRAY
    if _NDARRAY is None:
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            _NDARRAY = numpy.ndarray
    return _NDARRAY


def _rebuild_memoryview(buf: Any, fmt: str = "B", shape: tuple[int, ...] | None = None) -> Any:
    view: Any = memoryview(buf).toreadonly()
    if fmt == "B" and shape is None:
        return view
    try:
        flat = view.cast("B")
        return flat.cast(fmt, shape) if shape is not None else flat.cast(fmt)
    except (TypeError, ValueError):  # a format cast() does not support: bytes it is
        return view


# Functions and classes known to pickle by reference. Only module-level objects
# land here, and those live as long as their module anyway; bounded all the same.
_FINDABLE: dict[Any, bool] = {}
_FINDABLE_MAX = 4096


def _findable_by_name(obj: Any) -> bool:
    """True if pickle-by-reference will find `obj` again in another process."""
    try:
        if obj in _FINDABLE:
            return True
    except TypeError:  # a class whose metaclass makes it unhashable
        return _check_findable(obj)
    if _check_findable(obj):
        if len(_FINDABLE) >= _FINDABLE_MAX:
            _FINDABLE.clear()
        _FINDABLE[obj] = True
        return True
    return False


def _check_findable(obj: Any) -> bool:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return False
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is obj


def _rebuild_array(raw: Any, dtype: Any, shape: tuple[int, ...], fortran: bool) -> Any:
    """An array of `dtype` and `shape` over the bytes of `raw` (a uint8 array), without copying."""
    flat = raw.view(dtype)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def _has_datetime(dtype: Any) -> bool:
    if dtype.kind in "mM":
        return True
    if dtype.fields:
        return any(_has_datetime(field[0]) for field in dtype.fields.values())
    return bool(dtype.subdtype) and _has_datetime(dtype.subdtype[0])


def _reduce_datetime_array(arr: Any) -> Any:
    """numpy pickles datetime64/timedelta64 arrays in band (a copy each way): send their bytes out of band."""
    if arr.flags.c_contiguous:
        raw, fortran = arr.reshape(-1).view("u1"), False
    elif arr.flags.f_contiguous:
        raw, fortran = arr.T.reshape(-1).view("u1"), True
    else:
        return NotImplemented  # numpy gathers it into the pickle anyway
    return _rebuild_array, (raw, arr.dtype, arr.shape, fortran)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is _ndarray_type() and obj.dtype.hasobject is False and obj.nbytes >= OOB_THRESHOLD:
            if _has_datetime(obj.dtype):
                return _reduce_datetime_array(obj)
            return NotImplemented
        if kind is types.FunctionType or isinstance(obj, type):
            if _findable_by_name(obj):
                return NotImplemented
            data, kept = _dumps_by_value(obj)
            return (_loads_kept if kept else _loads_dill), (data,)
        if kind is memoryview:
            # Keep the element format and shape; a non-contiguous view is
            # gathered into C order first (one copy), as tobytes() does.
            layout = (obj.format, tuple(obj.shape or ()))
            if obj.c_contiguous and obj.nbytes >= OOB_THRESHOLD:
                return _rebuild_memoryview, (pickle.PickleBuffer(obj), *layout)
            return _rebuild_memoryview, (obj.tobytes(), *layout)
        return NotImplemented


class _ByValue:
    """Stands in for a function sent by value in a payload otherwise plain: plain ``pickle.dumps`` takes it.

    It reduces as :meth:`_Pickler.reducer_override` reduces the function, so
    the payload's bytes are the same, without a :class:`_Pickler` and its
    Python call per object.
    """

    __slots__ = ("func",)

    def __init__(self, func: types.FunctionType) -> None:
        self.func = func

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        try:
            data, kept = _dumps_by_value(self.func)
        except (KeyboardInterrupt, SerializationError):
            raise
        except BaseException as exc:  # (as dumps says why, for the full path)
            why = str(exc) if isinstance(exc, Exception) and str(exc) else f"{type(exc).__name__}: {exc}"
            raise serialization_error(f"cannot serialize {short_repr(self.func)}: {why}", exc) from exc
        return (_loads_kept if kept else _loads_dill), (data,)


class _LargeBytes:
    """Stands in for a large ``bytes``/``bytearray`` so that its data leaves the pickle.

    The pickler handles these types itself, in band, without consulting
    ``reducer_override``; wrapping them is the only way out.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return type(self.data), (pickle.PickleBuffer(self.data),)


def _lift(obj: Any) -> Any:
    kind = type(obj)
    if (kind is bytes or kind is bytearray) and len(obj) >= OOB_THRESHOLD:
        return _LargeBytes(obj)
    return obj


# Objects that pickle the same with or without _Pickler's reducer_override (which
# costs a Python call per object): plain pickle.dumps serves them, several times faster.
_SCALARS = frozenset({int, float, str, bool, type(None), complex})
_PLAIN_SCAN_MAX = 32  # longer lists and tuples are not scanned (the scan would cost more than it saves)


def _is_plain(obj: Any) -> bool:
    """Whether `obj` is a scalar, a range, a small bytes, an importable function, a :class:`Pickled`, or a short
    list or tuple of scalars."""
    kind = type(obj)
    if kind in _SCALARS or kind is range or kind is Pickled:
        return True
    if kind is bytes:
        return len(obj) < OOB_THRESHOLD
    if kind is types.FunctionType or kind is types.BuiltinFunctionType:
        return _findable_by_name(obj)
    if kind is tuple or kind is list:
        return len(obj) <= _PLAIN_SCAN_MAX and all(type(item) in _SCALARS for item in obj)
    return False


class Pickled:
    """A function (or any object) serialized once, standing for it in many payloads: a map's chunks.

    Its pickle is made by :func:`pickled_once`; each payload carries those
    bytes, and unpickling a payload rebuilds the object from them (an engine
    rebuilds a kept by-value pickle only once: :func:`_loads_kept`).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return pickle.loads, (self.data,)


def pickled_once(obj: Any) -> Any:
    """`obj` itself if it pickles cheaply as it is, else a :class:`Pickled` made now (to put in many payloads).

    Also `obj` itself when its pickle has out-of-band buffers (a large array
    among a function's globals): each payload then carries them as frames.

    Raises
    ------
    SerializationError
        If `obj` cannot be serialized.
    """
    if _is_plain(obj):
        return obj
    frames = dumps(obj)
    if len(frames) != 1:
        return obj
    return Pickled(bytes(frames[0]))


def dumps(obj: Any, shared: _shm.Writer | None = None, users: int = 1) -> list[Any]:
    """Serialize `obj` into ``[pickle, *buffers]``; large buffers are not copied.

    With `shared`, buffers of :data:`zpool._shm.THRESHOLD` bytes or more are
    written into shared-memory segments instead (one copy, made here), and
    the frames are ``[manifest, pickle, *buffers]`` with an empty frame for
    each of those (see :mod:`zpool._shm`); `users` is how many tasks will
    carry these same frames (the controller frees the segments after the last).

    Raises
    ------
    SerializationError
        If `obj` (or something inside it) cannot be serialized.
    """
    if _is_plain(obj):
        return [pickle.dumps(obj, 5)]
    buffers: list[Any] = []

    def keep_out_of_band(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OOB_THRESHOLD:
            return True  # small: copy it into the pickle
        buffers.append(raw)
        return False

    stream = io.BytesIO()
    try:
        _Pickler(stream, protocol=5, buffer_callback=keep_out_of_band).dump(_lift(obj))
    except (KeyboardInterrupt, SerializationError):
        raise
    except BaseException as exc:  # a __reduce__ may raise anything, SystemExit included
        # SystemExit(3) says only "3": name what was raised when its text alone does not.
        why = str(exc) if isinstance(exc, Exception) and str(exc) else f"{type(exc).__name__}: {exc}"
        raise serialization_error(f"cannot serialize {short_repr(obj)}: {why}", exc) from exc
    # A small pickle is cheaper to handle as bytes than as a view on the stream.
    head = stream.getvalue() if stream.tell() < OOB_THRESHOLD else stream.getbuffer()
    if shared is not None and any(buf.nbytes >= _shm.THRESHOLD for buf in buffers):
        return [*_to_shared(buffers, shared, users), head, *buffers]
    return [head, *buffers]


def _to_shared(buffers: list[Any], shared: _shm.Writer, users: int = 1) -> list[bytes]:
    """Move the large `buffers` into segments (in place: empty frames remain); return the manifest frame."""
    segments: dict[int, tuple[str, int]] = {}
    try:
        for i, buf in enumerate(buffers):
            if buf.nbytes >= _shm.THRESHOLD:
                try:
                    name = shared.write(buf)
                except OSError as exc:  # /dev/shm full (64 MB in a default container), say
                    _warn_no_shared_memory(exc, buf.nbytes)
                    # As a frame; copied, so that the caller's array is free at once all the same.
                    buffers[i] = bytes(buf)
                    continue
                segments[i] = (name, buf.nbytes)
                buffers[i] = b""
    except BaseException:
        for name, _ in segments.values():
            _shm.unlink(name)
        raise
    return [_shm.make_manifest(segments, users)] if segments else []


_WARNED: list[bool] = []


def _warn_no_shared_memory(exc: OSError, size: int) -> None:
    if not _WARNED:
        _WARNED.append(True)
        import logging

        logging.getLogger("zpool").warning(
            "could not write %d bytes to shared memory (%s); sending large buffers through the sockets"
            " instead where that fails (slower). Make /dev/shm larger, or pass Pool(shared_memory=False)",
            size,
            exc,
        )


def loads(frames: Sequence[Any], release: bool | str = False) -> Any:
    """Rebuild an object from ``[pickle, *buffers]`` (zmq Frames or bytes).

    Out-of-band buffers become read-only views on the frames, so received
    arrays are read-only and were never copied. Buffers that came through
    shared memory (a manifest frame first) are read-only views on the
    mapped segments; with `release`, the segments are unlinked once mapped
    (the caller owns them: see :mod:`zpool._shm`); a string `release` is a
    cluster's prefix: only segments with that prefix are unlinked.

    Raises
    ------
    SerializationError
        If a shared-memory segment cannot be mapped.
    """
    head = frames[0]
    if len(frames) > 1 and _shm.is_manifest(head):
        return _loads_shared(frames, release)
    if len(frames) == 1:  # everything in band: nothing of the frame reaches the caller
        return pickle.loads(head)
    buffers = [_readonly_view(f) for f in frames[1:]]
    # The pickle itself is never exposed to the caller: copy a small one, it is cheaper.
    head = head.bytes if len(head) < OOB_THRESHOLD and hasattr(head, "bytes") else _readonly_view(head)
    return pickle.loads(head, buffers=buffers)


def _loads_shared(frames: Sequence[Any], release: bool | str) -> Any:
    try:
        segments = _shm.read_manifest(frames[0]) or {}
    except (ValueError, TypeError) as exc:
        raise SerializationError(f"malformed shared-memory manifest: {exc}") from exc
    try:
        buffers: list[Any] = [_readonly_view(f) for f in frames[2:]]
        for index, (name, size) in segments.items():
            if not 0 <= index < len(buffers):
                raise SerializationError(f"shared-memory manifest names buffer {index}, which is not there")
            try:
                buffers[index] = _shm.open_segment(name, size)
            except (OSError, ValueError) as exc:
                raise SerializationError(
                    f"cannot map shared-memory segment {name} ({size} bytes): {exc}{_unmappable_hint(exc)}"
                ) from exc
    finally:
        if release:
            prefix = release + "-" if isinstance(release, str) else ""
            for name, _ in segments.values():
                if name.startswith(prefix):
                    _shm.unlink(name)
    return pickle.loads(_readonly_view(frames[1]), buffers=buffers)


def _unmappable_hint(exc: BaseException) -> str:
    """Why a segment could not be mapped and what to do, by the OS error; "" if the error says it all."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT:
        return "; it was removed (its pool ended), or this process runs on another host than its sender"
    if code == errno.EMFILE:
        try:
            import resource

            limit = f" (RLIMIT_NOFILE: {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})"
        except (ImportError, OSError, ValueError):
            limit = ""
        return (
            f"; this process has as many files open as it may{limit}. Close files it keeps open, or raise"
            " the limit: `ulimit -n 4096` in the shell that starts Python, or"
            " resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard)) before the Pool starts (its engines inherit it)"
        )
    if code == errno.ENFILE:
        return "; the system has too many files open. Close some, or raise the system's limit (sysctl fs.file-max)"
    if code == errno.ENOMEM:
        return (
            "; out of memory, or of mappings: each array received through shared memory is one mapping while it"
            " lives, and Linux allows a process vm.max_map_count of them (65530 by default). Drop or copy"
            " (numpy.array(a)) the arrays you keep, or raise vm.max_map_count"
        )
    return ""


def _readonly_view(frame: Any) -> Any:
    if type(frame) is bytes:
        return frame
    buf = getattr(frame, "buffer", frame)
    return memoryview(buf).toreadonly()


def short_repr(obj: Any, limit: int = 80) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def callable_name(func: Any) -> str:
    """A short human name for `func`, for error messages."""
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or short_repr(func, 40)


def _hint(exc: BaseException, obj: Any) -> str:
    name = type(obj).__name__.lower()
    unmovable = ("lock", "socket", "file", "textiowrapper", "bufferedreader", "generator", "thread")
    if any(word in name for word in unmovable):
        return (
            " Locks, sockets, open files, threads and generators cannot cross processes;"
            " create the object inside the task instead."
        )
    return " Make it picklable (see the pickle docs), or create it inside the task."


def dumps_call(
    func: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    describe_arg: Callable[[int, str], str] | None = None,
    shared: _shm.Writer | None = None,
    users: int = 1,
) -> list[Any]:
    """Serialize a call ``func(*args, **kwargs)``.

    Raises
    ------
    SerializationError
        Naming the function, argument or keyword argument that failed.
    """
    if all(map(_is_plain, args)) and (not kwargs or all(map(_is_plain, kwargs.values()))):
        # The common small call (apply_async(f, (1,))): what the full path would produce, faster.
        if _is_plain(func):
            return [pickle.dumps((func, tuple(args), dict(kwargs or {})), 5)]
        if type(func) is types.FunctionType:  # (a function of __main__, a lambda: sent by value)
            try:
                return [pickle.dumps((_ByValue(func), tuple(args), dict(kwargs or {})), 5)]
            except SerializationError:
                pass  # the full path says what cannot be sent
    args = tuple(_lift(a) for a in args)
    kwargs = {k: _lift(v) for k, v in (kwargs or {}).items()}
    try:
        return dumps((func, args, kwargs), shared, users)
    except SerializationError as exc:
        raise _explain_call(func, args, kwargs, describe_arg) from exc.__cause__


def _explain_call(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    describe_arg: Callable[[int, str], str] | None,
) -> SerializationError:
    name = callable_name(func)
    parts: list[tuple[str, Any]] = [(f"the function {name}", func)]
    for i, arg in enumerate(args):
        what = describe_arg(i, name) if describe_arg else f"argument {i} of {name}()"
        parts.append((what, arg))
    parts += [(f"keyword argument {key!r} of {name}()", value) for key, value in kwargs.items()]
    for what, obj in parts:
        try:
            dumps(obj)
        except SerializationError as exc:
            cause = exc.__cause__ or exc
            obj = obj.data if isinstance(obj, _LargeBytes) else obj
            return serialization_error(
                f"cannot serialize {what}: {short_repr(obj)} ({type(cause).__name__}: {cause})." + _hint(cause, obj),
                cause,
            )
    return SerializationError(f"cannot serialize the call {name}(...)")


def explain_iterable(func: Callable[..., Any], items: Iterable[Any], what: str) -> SerializationError:
    """Why a ``what(func, items)`` call (``map``, ``imap``) cannot be serialized.

    The error names the function, or the first item that cannot be sent,
    with pickle's own error as its ``__cause__``.
    """
    name = callable_name(func)
    try:
        dumps(func)
    except SerializationError as exc:
        cause = exc.__cause__ or exc
        error = serialization_error(f"cannot serialize the function {name} given to {what}(): {exc}", cause)
        error.__cause__ = cause
        return error
    for item in items:
        try:
            dumps(item)
        except SerializationError as exc:
            cause = exc.__cause__ or exc
            message = f"cannot serialize an item of the iterable given to {what}({name}): {exc}"
            error = serialization_error(message, cause)
            error.__cause__ = cause
            return error
    return SerializationError(f"cannot serialize a chunk of the iterable given to {what}({name})")


def loads_call(frames: Sequence[Any]) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """Rebuild ``(func, args, kwargs)`` serialized by :func:`dumps_call` (segments stay: the controller owns them)."""
    func, args, kwargs = loads(frames)
    return func, args, kwargs
