"""Module-level task functions for the tests (importable by the engines)."""

from __future__ import annotations

import dataclasses
import os
import threading
import time


class CustomError(Exception):
    """An exception type that can be rebuilt in the caller."""


class UnpicklableError(Exception):
    """An exception that cannot cross processes (it holds a lock)."""

    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def identity(x):
    return x


def getpid(_=None):
    return os.getpid()


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def sleep_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def raise_value_error(msg):
    raise ValueError(msg)


def raise_custom(msg):
    raise CustomError(msg)


def raise_unpicklable(msg):
    raise UnpicklableError(msg)


def return_lock():
    return threading.Lock()


def exit_now(code=3):
    os._exit(code)


def frame_address_proof(arr):
    """Report how `arr` arrived: a read-only view on the received frame, or on a shared-memory mapping."""

    return arr, received_via(arr), arr.flags.writeable


def in_received_frame(arr) -> bool:
    """True if `arr`'s data lies inside the memory of a zmq.Frame (no copy was made)."""
    return received_via(arr) == "frame"


def received_via(arr) -> str | None:
    """How `arr`'s data arrived: "frame" if it lies inside a received frame (a zmq.Frame, or the direct
    path's zpool._stream.Frame), "shm" if inside a mapped segment, else None (a copy)."""
    import mmap

    import numpy as np
    import zmq

    from zpool._stream import Frame

    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    owner = getattr(base, "obj", None)
    if isinstance(owner, (zmq.Frame, Frame)):
        kind, size = "frame", len(owner)
    elif isinstance(owner, mmap.mmap):
        kind, size = "shm", len(owner)
    else:
        return None
    region = np.frombuffer(owner, dtype=np.uint8).ctypes.data
    start = arr.ctypes.data
    return kind if region <= start and start + arr.nbytes <= region + size else None


def _explode():
    raise SystemExit("raised while unpickling")


class ExplodesWhenUnpickled:
    """Pickles fine; unpickling it raises SystemExit (a BaseException)."""

    def __reduce__(self):
        return (_explode, ())


def return_exploding():
    return ExplodesWhenUnpickled()


def start_grandchild(seconds=60):
    """Start a process that outlives this task unless someone cleans up; return its pid."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"]).pid


class ExplodesWhenPickled:
    def __reduce__(self):
        raise SystemExit("raised while pickling")


def return_unpicklable_loudly():
    return ExplodesWhenPickled()


# -- initializer / namespace ---------------------------------------------------

INITIALIZED = None


def init_global(value):
    """An initializer: stores `value` (and this engine's pid) where tasks see it."""
    global INITIALIZED
    INITIALIZED = (value, os.getpid())


def read_initialized(_=None):
    return INITIALIZED


def init_fails(message):
    raise RuntimeError(message)


def mul(a, b):
    return a * b


def return_generator():
    return (i for i in range(3))


def raise_value_error_if(x):
    if x == 0:
        raise ValueError("zero")
    return x


def sleep_echo(seconds):
    time.sleep(seconds)
    return seconds


def generator_if_zero(x):
    return (i for i in range(3)) if x == 0 else x


def put_square(queue_and_x):
    queue, x = queue_and_x
    queue.put(x * x)


class TwoArgError(Exception):
    """Pickles, but cannot be unpickled: its __init__ wants two arguments."""

    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")


def raise_two_arg_error_if_zero(x):
    if x == 0:
        raise TwoArgError(500, "boom")
    return x


# -- dependencies ------------------------------------------------------------------

OPTIONAL_MODULE = "zpool_test_optional"


def fail_first_time(marker):
    """Raise on the first call (any engine), succeed afterwards: for retries."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return "second try", os.getpid()
    os.close(fd)
    raise RuntimeError("first try fails")


def die_first_time(marker):
    """Kill this engine on the first call, succeed afterwards: for retries after engine death."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return os.getpid()
    os.close(fd)
    os._exit(5)


def init_optional_module(marker):
    """An initializer: the first engine to run it lacks OPTIONAL_MODULE, the others have it."""
    import sys
    import types

    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        module = types.ModuleType(OPTIONAL_MODULE)
        module.VALUE = 42
        sys.modules[OPTIONAL_MODULE] = module
        globals()["HAS_OPTIONAL"] = True
        return
    os.close(fd)
    sys.modules[OPTIONAL_MODULE] = None  # import fails here
    globals()["HAS_OPTIONAL"] = False


HAS_OPTIONAL = None


def has_optional():
    return HAS_OPTIONAL


def use_optional(x):
    return zpool_test_optional.VALUE + x, os.getpid()  # noqa: F821  (imported by @require)


def plain_optional(x):
    return HAS_OPTIONAL, x, os.getpid()


# -- arrays and shared memory (test_arrays.py, test_shm_exit_paths.py) ------------------


def _write_raises(arr) -> bool:
    """True if writing into `arr` raises ValueError (read-only); a writable array is rewritten with its own values."""
    try:
        arr[...] = arr.copy()
    except ValueError:
        return True
    return False


def array_report(arr):
    """How an array argument arrived on the engine: transport, writability and layout (and the array itself)."""
    return {
        "array": arr,
        "via": received_via(arr),
        "writeable": bool(arr.flags.writeable),
        "write_raises": _write_raises(arr),
        "dtype": arr.dtype.str if arr.dtype.names is None else arr.dtype.descr,
        "shape": arr.shape,
        "c_contiguous": bool(arr.flags.c_contiguous),
        "f_contiguous": bool(arr.flags.f_contiguous),
    }


def reports_of(arrays):
    """`array_report` (without the array) of every array in a dict of arrays."""
    out = {}
    for key, arr in arrays.items():
        report = array_report(arr)
        del report["array"]
        out[key] = report
    return out


def digest(arr) -> str:
    import hashlib

    return hashlib.sha256(arr.tobytes()).hexdigest()


def inspect_pushed(name):
    """What an engine sees under `name` in its namespace (bound by push or scatter)."""
    from zpool._engine_context import main_namespace

    arr = main_namespace()[name]
    return {
        "via": received_via(arr),
        "write_raises": _write_raises(arr),
        "digest": digest(arr),
        "shape": arr.shape,
        "pid": os.getpid(),
    }


def make_array(nbytes, fill=1.0):
    """A float64 array of `nbytes` bytes made on the engine (a large result)."""
    import numpy as np

    return np.full(nbytes // 8, fill, dtype=np.float64)


def sleep_then_make_array(seconds, nbytes):
    time.sleep(seconds)
    return make_array(nbytes)


def write_segment_then_sleep(prefix, nbytes, seconds):
    """Write a segment as an engine does for a result, then sleep (killed here, it is never sent: orphaned)."""
    from zpool import _shm

    name = _shm.Writer(prefix, "e").write(bytes(nbytes))
    time.sleep(seconds)
    return name


@dataclasses.dataclass(eq=False)
class ArrayBundle:
    """A dataclass holding arrays (compared field by field in the tests)."""

    label: str
    values: object
    weights: object
    extra: dict = dataclasses.field(default_factory=dict)


class MiniFrame:
    """A pandas-like table: named column arrays sharing an index array."""

    def __init__(self, columns, index):
        self.columns = dict(columns)
        self.index = index

    def __len__(self):
        return len(self.index)

    def __eq__(self, other):
        import numpy as np

        if type(other) is not MiniFrame:
            return NotImplemented

        def same(a, b):
            return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)

        return (
            list(self.columns) == list(other.columns)
            and same(self.index, other.index)
            and all(same(self.columns[k], other.columns[k]) for k in self.columns)
        )

    __hash__ = None


def write_pid_file(directory):
    """An initializer with a side effect: a file named after this engine's pid."""
    with open(os.path.join(directory, str(os.getpid())), "w") as f:
        f.write("initialized")


# -- failing at a stage of a task's trip (failure/test_stages.py) -------------------------

# The code sys.exit() and os._exit() end with, so that messages can be told apart.
STAGE_EXIT_CODE = 7
FAILURES = ("raise", "sys_exit", "os_exit", "crash")


class StageError(Exception):
    """Raised on purpose at one stage of a task's trip."""


def fail_as(how):
    """Fail the way `how` says: raise StageError, sys.exit(), os._exit(), or crash (SIGSEGV via ctypes)."""
    import sys

    if how == "raise":
        raise StageError(f"raised on purpose in pid {os.getpid()}")
    if how == "sys_exit":
        sys.exit(STAGE_EXIT_CODE)
    if how == "os_exit":
        os._exit(STAGE_EXIT_CODE)
    if how == "crash":
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
    raise ValueError(f"unknown failure {how!r}; one of {FAILURES}")


class FailsWhenPickled:
    """Fails (`how`) in ``__reduce__``: wherever it is pickled."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        fail_as(self.how)


class FailsWhenUnpickled:
    """Pickles fine; fails (`how`) in ``__setstate__``: wherever it is unpickled."""

    def __init__(self, how):
        self.how = how

    def __getstate__(self):
        return {"how": self.how}

    def __setstate__(self, state):
        fail_as(state["how"])


class FailsWhenRebuilt:
    """Pickles fine; unpickling calls ``fail_as(how)`` to rebuild it (``__reduce__`` reconstruction)."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        return fail_as, (self.how,)


def return_failing_rebuild(how):
    return FailsWhenRebuilt(how)


def fail_running(how):
    fail_as(how)


def return_failing_pickle(how):
    return FailsWhenPickled(how)


def return_failing_unpickle(how):
    return FailsWhenUnpickled(how)


def square_or_fail(item):
    """For map: an int comes back squared; a ``(stage, how)`` pair fails at that stage ("run" or a result stage)."""
    if isinstance(item, int):
        return item * item
    stage, how = item
    if stage == "run":
        fail_as(how)
    if stage == "result_pickle":
        return FailsWhenPickled(how)
    if stage == "result_unpickle":
        return FailsWhenUnpickled(how)
    raise ValueError(f"unknown stage {stage!r}")


def slow_square_or_fail(item):
    """``square_or_fail``, after a millisecond: long enough for an engine to send each reply at once."""
    time.sleep(0.001)
    return square_or_fail(item)


def has_module(name):
    """Whether module `name` is loaded in this (engine) process."""
    import sys

    return name in sys.modules


def entered(marker_dir, func, *args):
    """Leave a file in `marker_dir` saying this task's code has begun, then return ``func(*args)``.

    For tests that interrupt a running task: the controller sees a task run
    once its engine has it, which is before the engine has loaded it and
    entered its code; an interrupt in between aborts it "before it ran".
    ``tests._wait.wait_entered`` waits for these files.
    """
    path = os.path.join(marker_dir, f"{os.getpid()}-{time.monotonic_ns()}")
    with open(path, "w"):
        pass
    return func(*args)


def mpi_allreduce() -> tuple[int, int, int]:
    """On an engine started by the mpi launcher: its MPI rank, the world's size, and a sum over all ranks."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm.rank, comm.size, comm.allreduce(comm.rank + 1)
