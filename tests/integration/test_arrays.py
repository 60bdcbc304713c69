"""Arrays and other buffers through real pools, over both transports of large buffers.

Every test that takes ``any_pool`` runs twice: on the module's ``pool`` (shared
memory on: buffers of 1 MiB or more go through segments in /dev/shm) and on a
pool made with ``shared_memory=False`` (every buffer of 64 KiB or more is a
zero-copy ZeroMQ frame). Transports are checked by address, not assumed:
``_tasks.received_via`` says whether an array's data lies inside a received
zmq.Frame ("frame"), inside a mapped segment ("shm"), or in memory of its own
(None: the data was copied into the pickle and rebuilt from it).

What is copied (numpy's pickling decides, zpool only routes the buffers):

* C- and Fortran-contiguous arrays (a.T of a C array is Fortran-contiguous)
  of 64 KiB or more: not copied on the way; they arrive in the same memory
  order (same strides), read-only, as views on the frame or mapping. (The
  shared-memory path copies once, into the segment, by design.)
* Arrays that are neither (a[::2], a column of a C array): numpy's
  ``__reduce_ex__`` gathers them into a C-ordered bytes object inside the
  pickle (one copy), so they arrive C-contiguous and writable; they still
  round-trip exactly.
* Buffers under 64 KiB, object arrays (their elements are pickled), 0-d
  arrays: in the pickle, arriving as writable arrays of their own.
* ``bytes``/``bytearray`` own their memory: rebuilding one costs a copy; a
  ``memoryview`` comes back as a read-only ``memoryview``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import glob
import os
import re
import signal
import time

import numpy as np
import pytest

import zpool
from tests import _tasks
from tests._wait import wait_empty
from zpool import _shm, serialize

T = 60

# Sizes of the data of the arrays sent: one per transport class.
SIZES = {
    "small": 16 << 10,  # < 64 KiB: copied into the pickle
    "mid": 256 << 10,  # 64 KiB .. 1 MiB: a zero-copy frame
    "large": (3 << 20) // 2,  # >= 1 MiB: a shared-memory segment (or a frame without shared memory)
}

NUMERIC = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
]


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def frame_pool():
    """A 2-engine pool without shared memory: large buffers travel as frames."""
    p = zpool.Pool(2, shared_memory=False, heartbeat_interval=0.2, heartbeat_misses=25)
    p.wait_for_engines(timeout=T)
    yield p
    p.terminate()
    p.join()


@pytest.fixture(scope="module", params=["shm", "frames"])
def any_pool(request):
    return request.getfixturevalue("pool" if request.param == "shm" else "frame_pool")


def uses_shm(pool) -> bool:
    return pool._cluster.info.shm_prefix is not None


def expected_via(nbytes: int, shm: bool) -> str | None:
    """How a contiguous buffer of `nbytes` bytes should arrive."""
    if nbytes < serialize.OOB_THRESHOLD:
        return None
    if shm and nbytes >= _shm.THRESHOLD:
        return "shm"
    return "frame"


def segments(pool) -> list[str]:
    """The pool's segments that a message names (not those its writers keep for reuse, ``-k<n>``)."""
    prefix = pool._cluster.info.shm_prefix
    found = sorted(glob.glob(f"/dev/shm/{prefix}-*")) if prefix else []
    return [path for path in found if "-k" not in os.path.basename(path)]


def wait_no_segments(pool, timeout: float = 10.0) -> None:
    wait_empty(lambda: segments(pool), timeout, "no segment left")


def sample(dtype, nbytes: int, seed: int = 0) -> np.ndarray:
    """Random data of `dtype` filling `nbytes` bytes, with the awkward values of the type."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    n = max(1, nbytes // dtype.itemsize)
    if dtype.kind == "b":
        return rng.integers(0, 2, n).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        arr[:2] = [info.min, info.max]
        return arr
    if dtype.kind == "f":
        arr = (rng.standard_normal(n) * 1e3).astype(dtype)
        arr[:4] = [np.nan, np.inf, -np.inf, -0.0]
        return arr
    assert dtype.kind == "c"
    arr = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dtype)
    arr[:2] = [complex(np.nan, -0.0), complex(-np.inf, 1.0)]
    return arr


def datetime_sample(dtype, nbytes: int) -> np.ndarray:
    n = nbytes // 8
    arr = (np.arange(n, dtype=np.int64) * 7_919 - n * 3_000).astype(dtype)
    arr[1] = np.array(["NaT"], dtype=arr.dtype)[0]  # NaT in the array's own unit (a bare one is deprecated)
    return arr


def assert_same_array(got, want) -> None:
    """`got` is exactly `want`: type, dtype (with byte order), shape, values, and bits."""
    assert type(got) is np.ndarray, type(got)
    assert got.dtype == want.dtype and got.dtype.str == want.dtype.str, (got.dtype, want.dtype)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    if want.dtype != object:
        assert got.tobytes() == want.tobytes()  # bit for bit: NaN payloads, -0.0, NaT


def assert_read_only(arr) -> None:
    assert arr.flags.writeable is False
    with pytest.raises(ValueError, match="read-only"):
        arr[...] = 0


def roundtrip(pool, obj):
    return pool.apply_async(_tasks.identity, (obj,)).get(T)


def test_the_two_transports(pool, frame_pool):
    assert re.fullmatch(r"zpool-[0-9a-f]{12}", pool._cluster.info.shm_prefix)
    assert frame_pool._cluster.info.shm_prefix is None
    assert _shm.THRESHOLD == 1 << 20 and serialize.OOB_THRESHOLD == 64 << 10
    with pytest.raises(TypeError, match="shared_memory"):
        zpool.Pool(1, shared_memory="yes")


# -- every numeric dtype, at every size --------------------------------------------------


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("dtype", NUMERIC)
def test_numeric_dtype_round_trips_exactly(any_pool, dtype, size):
    arr = sample(dtype, SIZES[size])
    want = arr.copy()
    via = expected_via(arr.nbytes, uses_shm(any_pool))

    got = any_pool.apply(_tasks.identity, (arr,))
    assert_same_array(got, want)
    assert got.flags.c_contiguous
    assert _tasks.received_via(got) == via
    if via is None:
        assert got.flags.writeable  # rebuilt from the pickle: an array of its own
    else:
        assert_read_only(got)

    # On the engine: the argument arrived the same way, read-only when out of band.
    report = any_pool.apply_async(_tasks.array_report, (arr,)).get(T)
    assert report["via"] == via
    assert report["writeable"] is (via is None)
    assert report["write_raises"] is (via is not None)
    assert report["dtype"] == arr.dtype.str and report["shape"] == arr.shape
    assert_same_array(report["array"], want)
    np.testing.assert_array_equal(arr, want)  # the caller's array was not touched


def test_size_thresholds_are_inclusive(any_pool):
    shm = uses_shm(any_pool)
    for nbytes in (
        serialize.OOB_THRESHOLD - 1,
        serialize.OOB_THRESHOLD,
        _shm.THRESHOLD - 1,
        _shm.THRESHOLD,
    ):
        arr = sample("uint8", nbytes, seed=nbytes)
        got = roundtrip(any_pool, arr)
        assert_same_array(got, arr)
        assert _tasks.received_via(got) == expected_via(nbytes, shm), nbytes


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("dtype", ["datetime64[ns]", "datetime64[D]", "timedelta64[ms]"])
def test_datetime_and_timedelta_round_trip_exactly(any_pool, dtype, size):
    arr = datetime_sample(dtype, SIZES[size])
    got = any_pool.apply(_tasks.identity, (arr,))
    assert_same_array(got, arr)
    assert np.isnat(got[1]) and not np.isnat(got[0])


WHEN = np.dtype([("when", "<M8[s]"), ("value", "<f8")])


def _with_datetime(kind, nbytes):
    if kind == "struct with a datetime64 field":
        arr = np.zeros(nbytes // WHEN.itemsize, dtype=WHEN)
        arr["when"] = np.arange(len(arr)).astype("M8[s]")
        arr["value"] = np.arange(len(arr)) * 0.5
        return arr
    return datetime_sample(kind, nbytes)


def test_datetime_and_timedelta_arrays_travel_out_of_band(any_pool):
    """docs/serialization.md: any C-contiguous array that is not of object dtype goes out of band.

    numpy itself pickles arrays holding datetime64/timedelta64 in band (its
    protocol-5 ``__reduce_ex__`` leaves them out), so unless zpool routes their
    data itself they are copied into the pickle both ways, and arrive writable.
    """
    shm = uses_shm(any_pool)
    wrong = []
    for kind in ("datetime64[ns]", "timedelta64[ms]", "struct with a datetime64 field"):
        for size in ("mid", "large"):
            arr = _with_datetime(kind, SIZES[size])
            report = any_pool.apply_async(_tasks.array_report, (arr,)).get(T)
            got = report["array"]
            assert_same_array(got, arr)  # the values are right in any case
            want = expected_via(arr.nbytes, shm)
            observed = (report["via"], report["write_raises"], _tasks.received_via(got), got.flags.writeable)
            if observed != (want, True, want, False):
                wrong.append(
                    f"{kind} ({arr.nbytes} bytes): engine got it via {report['via']}, result via"
                    f" {_tasks.received_via(got)}, writable {got.flags.writeable}; expected via {want}, read-only"
                )
    assert not wrong, "\n".join(wrong)


# -- memory layouts -------------------------------------------------------------------------


def _c_2d(nbytes, dtype="float64", cols=64):
    arr = sample(dtype, nbytes)
    return arr[: arr.size - arr.size % cols].reshape(-1, cols)


LAYOUTS = {
    # name: (make(nbytes), copied into the pickle on the way?)
    "C 2-D": (lambda n: _c_2d(n), False),
    "C 3-D int16": (lambda n: sample("int16", n)[: n // 2 - (n // 2) % 32].reshape(-1, 4, 8), False),
    "Fortran 2-D": (lambda n: np.asfortranarray(_c_2d(n, cols=48)), False),
    "Fortran 3-D complex64": (
        lambda n: np.asfortranarray(sample("complex64", n)[: n // 8 - (n // 8) % 24].reshape(-1, 4, 6)),
        False,
    ),
    # The transpose of a C array is Fortran-contiguous: sent as it is, in Fortran order.
    "a.T of C 2-D": (lambda n: _c_2d(n, cols=32).T, False),
    # Neither C- nor Fortran-contiguous: numpy's pickling gathers them (one copy).
    "a[::2]": (lambda n: sample("float64", 2 * n)[::2], True),
    "column of C 2-D": (lambda n: _c_2d(2 * n, dtype="int32", cols=2)[:, 1], True),
    "a[:, ::2, 1:]": (lambda n: sample("float32", 3 * n).reshape(-1, 6, 4)[:, ::2, 1:], True),
    "reversed": (lambda n: sample("int64", n)[::-1], True),
}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_memory_layouts_round_trip(any_pool, layout, size):
    make, copied = LAYOUTS[layout]
    arr = make(SIZES[size])
    assert arr.flags.c_contiguous or arr.flags.f_contiguous or copied
    assert copied is not (arr.flags.c_contiguous or arr.flags.f_contiguous)
    shm = uses_shm(any_pool)

    report = any_pool.apply_async(_tasks.array_report, (arr,)).get(T)
    got = report["array"]
    assert_same_array(got, arr)
    if copied:
        # Gathered into the pickle: a C-ordered, writable array of its own on the engine ...
        assert report["via"] is None and report["writeable"] and not report["write_raises"]
        assert report["c_contiguous"]
        # ... which is contiguous, so it comes back out of band if large enough.
        assert got.flags.c_contiguous
        assert _tasks.received_via(got) == expected_via(got.nbytes, shm)
    else:
        # Not copied on the way: same memory order and strides, both ways.
        via = expected_via(arr.nbytes, shm)
        assert report["via"] == via and report["write_raises"] is (via is not None)
        assert (report["c_contiguous"], report["f_contiguous"]) == (arr.flags.c_contiguous, arr.flags.f_contiguous)
        assert got.strides == arr.strides
        assert (got.flags.c_contiguous, got.flags.f_contiguous) == (arr.flags.c_contiguous, arr.flags.f_contiguous)
        assert _tasks.received_via(got) == via


@pytest.mark.parametrize("dtype", [">f8", ">i4", "<u2", ">c16"])
def test_byte_order_is_kept(any_pool, dtype):
    arr = np.arange(SIZES["large"] // np.dtype(dtype).itemsize).astype(dtype)
    got = roundtrip(any_pool, arr)
    assert_same_array(got, arr)  # same dtype.str: the byte order travels with the data
    assert _tasks.received_via(got) == expected_via(arr.nbytes, uses_shm(any_pool))


def test_received_arrays_can_be_sent_on(any_pool):
    """A result (a read-only view on a frame or mapping) passed to the next task, and back again."""
    arr = sample("float64", 2 * SIZES["large"]).reshape(-1, 4)
    first = roundtrip(any_pool, arr)
    second = roundtrip(any_pool, first)
    third = roundtrip(any_pool, second[::2])  # a strided view of a received array: gathered on the way
    assert_same_array(second, arr)
    assert_same_array(third, arr[::2])
    assert not first.flags.writeable and not second.flags.writeable
    assert _tasks.received_via(second) == expected_via(arr.nbytes, uses_shm(any_pool))


def test_empty_arrays(any_pool):
    for arr in (np.array([], dtype=np.float64), np.empty((0, 3), dtype=np.int32), np.empty((4, 0), order="F")):
        got = roundtrip(any_pool, arr)
        assert_same_array(got, arr)


# -- 0-d, structured and object arrays ------------------------------------------------------

POINT = np.dtype([("x", "<f8"), ("y", "<f4"), ("tag", "S3"), ("flag", "?")])


@pytest.mark.parametrize(
    "arr",
    [
        np.array(3.25),
        np.array(-7, dtype=np.int8),
        np.array(2**64 - 1, dtype=np.uint64),
        np.array(1 - 2j, dtype=np.complex64),
        np.array(True),
        np.array(np.nan, dtype=np.float16),
        np.array("2024-02-29T12:00", dtype="datetime64[m]"),
        np.array((1.5, 2.5, b"abc", True), dtype=POINT),
        np.array({"a": [1, 2]}, dtype=object),
    ],
    ids=lambda a: str(a.dtype),
)
def test_zero_d_arrays(any_pool, arr):
    got = roundtrip(any_pool, arr)
    assert type(got) is np.ndarray and got.shape == () and got.ndim == 0
    assert got.dtype == arr.dtype
    if arr.dtype == object:
        assert got.item() == arr.item()
    else:
        assert_same_array(got, arr)


STRUCTURED = {
    "packed": np.dtype([("id", "<i4"), ("pos", "<f8", (3,)), ("name", "S6"), ("ok", "?")]),
    "aligned": np.dtype([("a", "u1"), ("b", "<f8"), ("c", "<i2")], align=True),
    "nested": np.dtype([("p", POINT), ("u", "<U4"), ("z", "<c8"), ("m", "<i8", (2, 2))]),
    "big-endian": np.dtype([("i", ">i8"), ("f", ">f4")]),
}


def _fill(field, i):
    """Distinct values in every element of `field` (a field of a structured array, perhaps nested)."""
    dtype = field.dtype
    if dtype.names:
        for name in dtype.names:
            _fill(field[name], i)
        return
    vals = i.reshape((-1,) + (1,) * (field.ndim - 1))  # subarray fields have extra axes
    if dtype.kind == "b":
        field[...] = vals % 3 == 0
    elif dtype.kind in "iu":
        field[...] = (vals * 40_503) % np.iinfo(dtype).max + (np.iinfo(dtype).min // 2)
    elif dtype.kind == "f":
        field[...] = vals * 0.5 - 3
    elif dtype.kind == "c":
        field[...] = vals * (1 - 1j)
    elif dtype.kind == "M":
        field[...] = vals.astype(dtype)
    else:  # "S", "U"
        field[...] = (vals % 997).astype(dtype)


def structured_sample(dtype, nbytes):
    n = max(1, nbytes // dtype.itemsize)
    arr = np.zeros(n, dtype=dtype)  # zeroed: padding bytes compare too
    _fill(arr, np.arange(n))
    return arr


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("kind", list(STRUCTURED))
def test_structured_dtypes(any_pool, kind, size):
    dtype = STRUCTURED[kind]
    arr = structured_sample(dtype, SIZES[size])
    report = any_pool.apply_async(_tasks.array_report, (arr,)).get(T)
    got = report["array"]
    assert got.dtype == dtype and got.dtype.itemsize == dtype.itemsize and got.dtype.descr == dtype.descr
    assert_same_array(got, arr)
    for name in dtype.names:
        np.testing.assert_array_equal(got[name], arr[name])
    via = expected_via(arr.nbytes, uses_shm(any_pool))
    assert report["via"] == via and _tasks.received_via(got) == via
    if via is not None:
        assert report["write_raises"]
        assert_read_only(got)


@pytest.mark.parametrize("n", [10, 200_000], ids=["small", "large"])
def test_object_arrays_are_pickled_in_band(any_pool, n):
    arr = np.empty(n, dtype=object)
    for i in range(n):
        arr[i] = [i, f"s{i}", None, (i, [i]), {"k": i}, 1.5 * i, b"b"][i % 7]
    got = roundtrip(any_pool, arr)
    assert type(got) is np.ndarray and got.dtype == object and got.shape == arr.shape
    assert got.tolist() == arr.tolist()
    assert _tasks.received_via(got) is None and got.flags.writeable  # rebuilt element by element


def test_object_array_holding_large_arrays(any_pool):
    """The elements of an object array are pickled one by one: large ones still go out of band."""
    arr = np.empty(3, dtype=object)
    arr[0], arr[1], arr[2] = sample("float64", SIZES["large"]), sample("int32", SIZES["mid"]), "text"
    got = roundtrip(any_pool, arr)
    assert got.dtype == object and got[2] == "text"
    assert_same_array(got[0], arr[0])
    assert_same_array(got[1], arr[1])
    shm = uses_shm(any_pool)
    assert _tasks.received_via(got[0]) == expected_via(arr[0].nbytes, shm)
    assert _tasks.received_via(got[1]) == "frame"


# -- bytes, bytearray, memoryview -----------------------------------------------------------


@pytest.mark.parametrize("size", list(SIZES))
def test_bytes_and_bytearray(any_pool, size):
    data = np.random.default_rng(5).integers(0, 256, SIZES[size], dtype=np.uint8).tobytes()
    got = roundtrip(any_pool, data)
    assert type(got) is bytes and got == data
    got = roundtrip(any_pool, bytearray(data))
    assert type(got) is bytearray and got == data
    got.append(1)  # a bytearray of its own, writable
    # Nested in a container they travel in the pickle: same values all the same.
    got = roundtrip(any_pool, [data, bytearray(data[:100]), {"k": data}])
    assert got == [data, bytearray(data[:100]), {"k": data}]
    assert type(got[1]) is bytearray
    # As a keyword argument, and as a result made on the engine.
    assert any_pool.apply_async(_tasks.add, (b"",), {"b": data}).get(T) == data


@pytest.mark.parametrize("size", list(SIZES))
def test_memoryview_comes_back_read_only(any_pool, size):
    nbytes = SIZES[size]
    raw = bytearray(np.random.default_rng(6).integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    got = roundtrip(any_pool, memoryview(raw))
    assert type(got) is memoryview and got.readonly
    assert got.format == "B" and got.shape == (nbytes,) and got.tobytes() == raw
    with pytest.raises(TypeError):
        got[0] = 1
    via = expected_via(nbytes, uses_shm(any_pool))
    assert _tasks.received_via(np.frombuffer(got, dtype=np.uint8)) == via

    # Element format and shape are kept; a Fortran-ordered or strided view is gathered (in C order).
    typed = np.arange(nbytes // 4, dtype=np.float32).reshape(-1, 16) * 0.25
    for view in (memoryview(typed), memoryview(np.asfortranarray(typed)), memoryview(typed[::2])):
        got = roundtrip(any_pool, view)
        assert type(got) is memoryview and got.readonly
        assert (got.format, got.shape) == (view.format, view.shape)
        assert got.tolist() == view.tolist()
        assert got.tobytes() == view.tobytes()


# -- objects holding arrays -----------------------------------------------------------------


def test_dict_of_arrays(any_pool):
    shm = uses_shm(any_pool)
    arrays = {
        "large": sample("float64", SIZES["large"]),
        "mid": np.asfortranarray(_c_2d(SIZES["mid"], dtype="int16", cols=8)),
        "small": sample("complex64", SIZES["small"]),
        "large-uint8": sample("uint8", 2 * SIZES["large"]),
    }
    got = roundtrip(any_pool, arrays)
    assert type(got) is dict and list(got) == list(arrays)
    for key, arr in arrays.items():
        assert_same_array(got[key], arr)
        assert _tasks.received_via(got[key]) == expected_via(arr.nbytes, shm), key
        assert got[key].strides == arr.strides
    reports = any_pool.apply_async(_tasks.reports_of, (arrays,)).get(T)
    for key, arr in arrays.items():
        via = expected_via(arr.nbytes, shm)
        assert reports[key]["via"] == via and reports[key]["write_raises"] is (via is not None), key


def test_dataclass_holding_arrays(any_pool):
    bundle = _tasks.ArrayBundle(
        label="run-7",
        values=sample("float32", SIZES["large"]),
        weights=sample("float64", SIZES["mid"]).reshape(-1, 8),
        extra={"mask": sample("bool", SIZES["small"]), "n": 3},
    )
    got = roundtrip(any_pool, bundle)
    assert type(got) is _tasks.ArrayBundle
    assert [f.name for f in dataclasses.fields(got)] == ["label", "values", "weights", "extra"]
    assert got.label == "run-7" and got.extra["n"] == 3
    assert_same_array(got.values, bundle.values)
    assert_same_array(got.weights, bundle.weights)
    assert_same_array(got.extra["mask"], bundle.extra["mask"])
    shm = uses_shm(any_pool)
    assert _tasks.received_via(got.values) == ("shm" if shm else "frame")
    assert _tasks.received_via(got.weights) == "frame"
    assert_read_only(got.values)


def test_pandas_like_object(any_pool):
    n = SIZES["large"] // 8
    rng = np.random.default_rng(9)
    frame = _tasks.MiniFrame(
        {
            "price": rng.standard_normal(n),  # 1.5 MiB
            "qty": rng.integers(0, 1000, n, dtype=np.int32),  # 768 KiB
            "flag": rng.integers(0, 2, n).astype(bool),  # 192 KiB
            "small": np.arange(100, dtype=np.uint16),
            "label": np.array([f"L{i % 13}" for i in range(n)], dtype=object),
            "when": np.arange(n).astype("datetime64[s]"),
        },
        index=np.arange(n, dtype=np.int64) * 3,
    )
    got = roundtrip(any_pool, frame)
    assert type(got) is _tasks.MiniFrame
    assert got == frame and len(got) == n
    assert got != _tasks.MiniFrame({**frame.columns, "qty": frame.columns["qty"] + 1}, frame.index)
    shm = uses_shm(any_pool)
    assert _tasks.received_via(got.columns["price"]) == ("shm" if shm else "frame")
    assert _tasks.received_via(got.columns["qty"]) == "frame"
    assert _tasks.received_via(got.index) == expected_via(frame.index.nbytes, shm)
    assert got.columns["label"].dtype == object and got.columns["label"].flags.writeable


# -- results made on the engine, map chunks ---------------------------------------------------


@pytest.mark.parametrize("size", list(SIZES))
def test_results_made_on_the_engine_are_read_only_views(any_pool, size):
    got = any_pool.apply_async(_tasks.make_array, (SIZES[size], 2.5)).get(T)
    assert got.dtype == np.float64 and got.size == SIZES[size] // 8 and (got == 2.5).all()
    via = expected_via(got.nbytes, uses_shm(any_pool))
    assert _tasks.received_via(got) == via
    if via is None:
        assert got.flags.writeable
    else:
        assert_read_only(got)
        # The idiom from the docs gives a writable copy.
        copy = got.copy() if not got.flags.writeable else got
        copy[0] = -1
        assert copy[0] == -1 and got[0] == 2.5


def test_map_chunks_carry_arrays_out_of_band(any_pool):
    shm = uses_shm(any_pool)
    arrays = [sample("float64", SIZES["large"], seed=i) for i in range(4)] + [sample("int8", SIZES["mid"])]
    got = any_pool.map_async(_tasks.identity, arrays, chunksize=2).get(T)
    assert len(got) == len(arrays)
    for g, a in zip(got, arrays):
        assert_same_array(g, a)
        assert _tasks.received_via(g) == expected_via(a.nbytes, shm)
    got = list(any_pool.imap(_tasks.identity, arrays[:3]))
    for g, a in zip(got, arrays):
        assert_same_array(g, a)
        assert _tasks.received_via(g) == expected_via(a.nbytes, shm)


# -- track=True ---------------------------------------------------------------------------


@contextlib.contextmanager
def controller_paused(pool):
    """SIGSTOP the controller: nothing the client sends is read, so large frames stay with ZeroMQ."""
    pid = pool._cluster.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_track_wait_on_send_then_modify_safely(any_pool):
    arr = sample("float64", 8 << 20)
    want = arr.copy()
    ar = any_pool.apply_async(_tasks.identity, (arr,), track=True)
    assert isinstance(ar.sent, bool)
    assert ar.wait_on_send(T) is True
    assert ar.sent is True
    arr[:] = -1.0  # ZeroMQ let go of it: the task must still see the old data
    assert_same_array(ar.get(T), want)
    assert ar.sent is True and ar.wait_on_send(0) is True


def test_untracked_results_report_sent(any_pool):
    arr = sample("float64", 4 << 20)
    ar = any_pool.apply_async(_tasks.identity, (arr,))
    assert ar.sent is True and ar.wait_on_send(0) is True
    assert_same_array(ar.get(T), arr)
    assert ar.sent is True


def test_tracked_send_is_not_done_while_nobody_reads_it(frame_pool):
    """Frames: ZeroMQ holds the caller's buffer until the (paused) controller has read it all."""
    arr = sample("float64", 16 << 20)
    want = arr.copy()
    with controller_paused(frame_pool):
        ar = frame_pool.apply_async(_tasks.identity, (arr,), track=True)
        assert ar.wait_on_send(0.5) is False
        assert ar.sent is False
        # An untracked call made meanwhile reports True at once (nothing is tracked).
        untracked = frame_pool.apply_async(_tasks.identity, (arr[:10].copy(),))
        assert untracked.sent is True
    assert ar.wait_on_send(T) is True and ar.sent is True
    arr[:] = 0.0
    assert_same_array(ar.get(T), want)
    assert_same_array(untracked.get(T), want[:10])


def test_tracked_send_through_shared_memory_is_done_at_once(pool):
    """Shared memory: the data was copied into a segment by apply_async; nothing of the caller's is held."""
    arr = sample("float64", 16 << 20)
    want = arr.copy()
    with controller_paused(pool):
        ar = pool.apply_async(_tasks.identity, (arr,), track=True)
        assert segments(pool)  # the argument's segment, waiting for the controller
        assert ar.wait_on_send(10) is True and ar.sent is True
        arr[:] = 0.0
    assert_same_array(ar.get(T), want)


def test_temp_flags_track_for_map_async(frame_pool):
    arrays = [sample("float64", 4 << 20, seed=i) for i in range(3)]
    wants = [a.copy() for a in arrays]
    with controller_paused(frame_pool):
        with frame_pool.temp_flags(track=True):
            assert frame_pool.flags.get("track") is True
            tracked = frame_pool.map_async(_tasks.identity, arrays, chunksize=1)
        assert "track" not in frame_pool.flags
        untracked = frame_pool.map_async(_tasks.identity, [a[:5].copy() for a in arrays], chunksize=1)
        assert untracked.sent is True
        assert tracked.wait_on_send(0.5) is False and tracked.sent is False
    assert tracked.wait_on_send(T) is True and tracked.sent is True
    for a in arrays:
        a[:] = np.nan
    for g, w in zip(tracked.get(T), wants):
        assert_same_array(g, w)
    for g, w in zip(untracked.get(T), wants):
        assert_same_array(g, w[:5])


def test_set_flags_track_for_map_async(frame_pool):
    arrays = [sample("int64", 4 << 20, seed=i) for i in range(2)]
    wants = [a.copy() for a in arrays]
    frame_pool.set_flags(track=True)
    try:
        assert frame_pool.flags.get("track") is True
        with controller_paused(frame_pool):
            tracked = frame_pool.map_async(_tasks.identity, arrays, chunksize=1)
            # A call's own flag wins over the pool's default.
            untracked = frame_pool.apply_async(_tasks.identity, (arrays[0],), track=False)
            assert untracked.sent is True
            assert tracked.wait_on_send(0.5) is False and tracked.sent is False
        assert tracked.wait_on_send(T) is True and tracked.sent is True
    finally:
        frame_pool.set_flags(track=None)
    assert "track" not in frame_pool.flags
    assert_same_array(untracked.get(T), wants[0])
    for a in arrays:
        a[:] = 0
    for g, w in zip(tracked.get(T), wants):
        assert_same_array(g, w)


def test_track_with_temp_flags_and_set_flags_on_shared_memory(pool):
    arrays = [sample("float64", 2 << 20, seed=i) for i in range(3)]
    with pool.temp_flags(track=True):
        ar = pool.map_async(_tasks.identity, arrays, chunksize=1)
    assert ar.wait_on_send(T) is True and ar.sent is True
    pool.set_flags(track=True)
    try:
        ar2 = pool.map_async(_tasks.identity, arrays, chunksize=2)
    finally:
        pool.set_flags(track=None)
    assert ar2.wait_on_send(T) is True and ar2.sent is True
    for got in (ar.get(T), ar2.get(T)):
        for g, a in zip(got, arrays):
            assert_same_array(g, a)
            assert _tasks.received_via(g) == "shm"


@pytest.mark.parametrize("bad", ["yes", 1, 0, 1.0])
def test_track_must_be_a_bool(pool, bad):
    arr = np.arange(10)
    with pytest.raises(TypeError, match="track"):
        pool.apply_async(_tasks.identity, (arr,), track=bad)
    with pytest.raises(TypeError, match="track"):
        pool.map_async(_tasks.identity, [arr], track=bad)
    with pytest.raises(TypeError, match="track"):
        pool.set_flags(track=bad)
    with pytest.raises(TypeError, match="track"):
        with pool.temp_flags(track=bad):
            pass
    assert "track" not in pool.flags
    assert pool.apply_async(_tasks.identity, (arr,)).sent is True  # nothing stuck


def test_send_tracker_follows_zeromq():
    """SendTracker is done only when every batch went out and ZeroMQ released every tracked frame."""
    import zmq

    from zpool.client.connection import SendTracker

    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://track-test")
        b.connect("inproc://track-test")
        tracker = SendTracker(2)
        assert tracker.done is False and tracker.wait(0.05) is False
        msg_tracker = a.send(np.ones(1 << 16).data, copy=False, track=True)
        tracker._sent(1, [msg_tracker])
        assert tracker.done is False  # one task not handed over yet
        tracker._sent(1, [])
        assert tracker.wait(0.05) is False  # the frame is still queued in ZeroMQ
        frame = b.recv(copy=False)
        assert tracker.done is False  # the receiver still holds the message
        del frame
        assert tracker.wait(10) is True and tracker.done is True
        abandoned = SendTracker(3)
        abandoned.abandon()
        assert abandoned.done is True and abandoned.wait(0) is True
        assert SendTracker(0).done is True
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()


# -- the direct interface: push, pull, scatter, gather -------------------------------------


def test_push_shares_one_segment_with_every_engine(pool):
    arr = sample("float64", 4 << 20)
    want = _tasks.digest(arr)
    pool.push({"big": arr})
    try:
        wait_no_segments(pool)  # both push tasks done: the controller unlinked the segment ...
        reports = pool.engines.apply(_tasks.inspect_pushed, "big")
        assert len(reports) == 2 and len({r["pid"] for r in reports}) == 2
        for r in reports:  # ... and both engines still read it through their mappings
            assert r["via"] == "shm" and r["write_raises"] and r["digest"] == want and r["shape"] == arr.shape
    finally:
        pool.clear()


def test_push_segment_lives_until_the_last_engine_has_it(pool):
    """The controller counts the tasks using a segment: one engine finishing does not unlink it."""
    arr = sample("int32", 2 << 20)
    want = _tasks.digest(arr)
    sleeper = pool.engines[1].apply_async(_tasks.sleep_then, 2.0, "slept")
    try:
        pushed = pool.push({"shared": arr}, block=False)
        first = pool.engines[0].apply(_tasks.inspect_pushed, "shared")
        assert first["via"] == "shm" and first["digest"] == want
        assert not sleeper.ready(), "the sleeping task ended too early for this test"
        assert len(segments(pool)) == 1  # engine 1 has yet to map it
        pushed.get(T)
        second = pool.engines[1].apply(_tasks.inspect_pushed, "shared")
        assert second["via"] == "shm" and second["digest"] == want
        assert sleeper.get(T) == "slept"
        wait_no_segments(pool)
    finally:
        pool.clear()


def test_push_segment_survives_a_slow_submitting_thread(fresh_pool, monkeypatch):
    """push sends one task per engine, each in its own submission, all naming one segment.

    If the submitting thread is descheduled between two of them (GIL contention,
    a busy host), the first engine can finish before the controller has even
    seen the second task: the controller's count of the segment's users then
    drops to zero and it unlinks the segment, and the second engine cannot
    map it. Here the pause is made deterministic.
    """
    pool = fresh_pool(2)
    submit = pool._conn.submit

    def slow_submit(*args, **kwargs):
        submit(*args, **kwargs)
        time.sleep(0.3)  # the caller's thread loses the CPU between two engines' tasks

    monkeypatch.setattr(pool._conn, "submit", slow_submit)
    arr = sample("float64", 2 << 20)
    pool.push({"big": arr})
    monkeypatch.undo()
    reports = pool.engines.apply(_tasks.inspect_pushed, "big")
    assert [r["digest"] for r in reports] == [_tasks.digest(arr)] * 2
    assert all(r["via"] == "shm" for r in reports)


def kept_inodes(pool) -> set[int]:
    """Inodes of the segments the pool's writers keep for reuse (zpool._shm.Writer)."""
    prefix = pool._cluster.info.shm_prefix
    found = set()
    for path in glob.glob(f"/dev/shm/{prefix}-*"):
        if "-k" in os.path.basename(path):
            try:
                found.add(os.stat(path).st_ino)
            except FileNotFoundError:
                pass
    return found


def test_round_trips_reuse_segments_and_never_change_what_is_held(pool):
    """Writers rewrite a segment only once nobody maps it: results held stay as they were."""
    size = 3 << 20
    held = []
    for i in range(6):
        got = pool.apply(_tasks.identity, (np.full(size // 8, float(i)),))
        assert _tasks.received_via(got) == "shm"
        held.append(got)
    for i, got in enumerate(held):  # six results held: six segments, none rewritten under them
        assert got.shape == (size // 8,) and (got == float(i)).all()
    del held, got
    gc.collect()
    before = kept_inodes(pool)
    for i in range(20):  # each result dropped before the next call: the same segments serve again
        got = pool.apply(_tasks.identity, (np.full(size // 8, float(i)),))
        assert (got == float(i)).all() and _tasks.received_via(got) == "shm"
        del got
        gc.collect()
    after = kept_inodes(pool)
    assert after and len(after - before) <= 4, "segments were not reused"
    wait_no_segments(pool)


def test_pushed_arrays_keep_their_segment_from_reuse(pool):
    a, b = sample("float64", 2 << 20), sample("int64", 2 << 20)
    try:
        pool.push({"a": a})
        wait_no_segments(pool)  # the message is done with it; both engines map it still
        for _ in range(3):
            pool.push({"b": b})
        for got in pool.pull("a"):
            assert _tasks.digest(got) == _tasks.digest(a)
    finally:
        pool.clear()


def test_push_and_pull_large_arrays(any_pool):
    shm = uses_shm(any_pool)
    arr = sample("float64", 4 << 20)
    any_pool.push({"big": arr})
    try:
        for r in any_pool.engines.apply(_tasks.inspect_pushed, "big"):
            assert r["via"] == ("shm" if shm else "frame") and r["write_raises"]
        one = any_pool.engines[0].pull("big")
        assert_same_array(one, arr)
        assert _tasks.received_via(one) == ("shm" if shm else "frame")
        assert_read_only(one)
        both = any_pool.engines.pull("big")
        assert len(both) == 2
        for got in both:
            assert_same_array(got, arr)
            assert _tasks.received_via(got) == ("shm" if shm else "frame")
    finally:
        any_pool.clear()


def test_scatter_gather_16_mb(any_pool):
    shm = uses_shm(any_pool)
    arr = np.random.default_rng(11).random((1 << 20, 2))  # 16 MiB: 8 MiB per engine
    any_pool.scatter("part", arr)
    try:
        halves = [arr[: len(arr) // 2], arr[len(arr) // 2 :]]
        reports = any_pool.engines.apply(_tasks.inspect_pushed, "part")
        assert [r["digest"] for r in reports] == [_tasks.digest(h) for h in halves]
        assert all(r["via"] == ("shm" if shm else "frame") and r["shape"] == (1 << 19, 2) for r in reports)
        gathered = any_pool.gather("part")
        assert_same_array(gathered, arr)
    finally:
        any_pool.clear()
