"""Array bandwidth: zpool (shared memory and sockets) versus multiprocessing.Pool and memcpy, in one run.

For float64 arrays of 8 MB, 200 MB and 1 GB (1 GB = 1e9 bytes; ``--sizes``
to choose), every path below is measured in the same process, one after
the other, the order flipped from one size to the next:

* ``zpool, shared memory`` -- ``zpool.Pool(2)``: arrays of 1 MiB or more go
  through segments in ``/dev/shm``;
* ``zpool, sockets`` -- ``zpool.Pool(2, shared_memory=False)``: out-of-band
  ZeroMQ frames;
* ``multiprocessing (<start method>)`` -- ``multiprocessing.Pool(2)``, with
  the platform's default start method;
* ``memcpy limit, warm`` -- ``numpy.copyto`` of the array, in this process,
  into a preallocated destination whose pages are already touched;
* ``memcpy, cold`` -- ``numpy.empty_like`` then ``numpy.copyto``: a fresh
  destination each time, so the copy includes its page faults;
* ``memcpy, cold after idle`` (unless ``--idle 0``; off with ``--quick``) --
  the same, but each repetition first sleeps ``--idle`` seconds per GB
  (at least 2 s). A virtual machine that reports free memory to its
  hypervisor (a balloon driver's free page reporting) loses memory left
  free for a few seconds (about 10 s for 1 GB); touching it again costs
  far more than a page fault on memory freed a moment ago, which is what
  back-to-back repetitions get.

Two figures per path (``processes=2``), the median of ``--reps``
repetitions after an untimed warm-up (two calls per worker: a zpool
process writes its first buffer of a size into fresh pages, at a quarter
of the memcpy rate or less, and maps its segment the first time it
reuses it; from then on it rewrites the same pages, see
``docs/arrays.md``):

1. one-way -- ``pool.apply(operator.itemgetter(0), (arr,))``: the array goes
   to a worker, only its first element comes back. GB/s = bytes / time.
2. round trip -- ``pool.apply(identity, (arr,))``: the array goes to a worker
   and comes back. GB/s = 2 * bytes / time. For memcpy: two copies, out and
   back, so one copy's rate.

Results are checked (outside the timing) and freed between calls
(``del`` + ``gc.collect()``). A received zpool array is a read-only view on
the received data: a shared-memory segment is mapped, not read, so neither
figure includes the receiver's first read of it (see ``docs/arrays.md``).

Reading the ratio columns: ``x mp`` is the path's GB/s divided by
multiprocessing's, so **> 1 means faster than multiprocessing.Pool**;
``x warm`` / ``x cold`` / ``x idle`` divide by the memcpy rows (0.50 = half
the rate of one in-process copy).

``--sweep`` measures something else instead: the one-way time of small
arrays (64 KiB to 16 MiB) through shared memory and through the sockets,
alternating between the two pools call by call, to show where shared
memory starts to pay. zpool sends buffers through shared memory only from
``zpool._shm.THRESHOLD`` (1 MiB) on; for the sweep this script lowers it,
in its own process only, to 64 KiB so that every size takes that path.

Run::

    python benchmarks/bench_arrays.py            # 8 MB, 200 MB, 1 GB: about 7 minutes, 5 GB of RAM at its peak
    python benchmarks/bench_arrays.py --quick    # 8 MB and 200 MB, fewer repetitions: under a minute
    python benchmarks/bench_arrays.py --sweep    # the shared-memory threshold sweep
    python benchmarks/bench_arrays.py --sizes 8MB,64MiB --reps 5 --json out.json

numpy and zpool are imported lazily: spawn children re-import this script.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import operator
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):  # _workloads for every back-end, zpool from the checkout
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _workloads import identity  # noqa: E402

# The one-way task: returns arr[0]. Picklable by reference for every back-end.
FIRST_ELEMENT = operator.itemgetter(0)

DEFAULT_SIZES = "8MB,200MB,1GB"
QUICK_SIZES = "8MB,200MB"
SWEEP_SIZES = "64KiB,256KiB,512KiB,1MiB,2MiB,4MiB,16MiB"
# The sweep forces shared memory from this size on (zpool's own threshold is 1 MiB).
SWEEP_SHM_THRESHOLD = 64 * 1024
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


@dataclass(frozen=True)
class Settings:
    processes: int
    quick: bool
    sizes: tuple[int, ...]  # bytes
    reps: dict[int, int] = field(default_factory=dict)  # size -> timed repetitions
    idle_s_per_gb: float = 10.0  # 0: no "cold after idle" row
    idle_reps: int = 3
    get_timeout: float = 600.0


def parse_size(text: str) -> int:
    """``"8MB"`` -> 8_000_000, ``"1MiB"`` -> 1_048_576 (multiple of 8: float64 elements)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 8MB, 200MB, 1GB, 64KiB, 1MiB")
    n = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if n < 8:
        raise argparse.ArgumentTypeError(f"size {text!r} is smaller than one float64")
    return n - n % 8


def parse_sizes(text: str) -> tuple[int, ...]:
    return tuple(parse_size(part) for part in text.split(",") if part.strip())


def human(n: int) -> str:
    """8 MB, 1 GB, 64 KiB, 1 MiB: the unit that divides `n` exactly, decimal first."""
    units = (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
    for unit, scale in units:
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n / 10**6:g} MB" if n >= 10**6 else f"{n} B"


def seconds(t: float) -> str:
    return f"{t:.2f} s" if t >= 1 else f"{t * 1e3:.3g} ms"


def default_reps(size: int, quick: bool) -> int:
    if size <= 64 * 10**6:
        return 5 if quick else 20
    if size <= 500 * 10**6:
        return 3 if quick else 7
    return 2 if quick else 5


# --------------------------------------------------------------- the paths


@dataclass(frozen=True)
class Path:
    key: str
    label: str
    factory: Callable[[int], Any] | None  # a pool factory; None: an in-process copy


def zpool_shared(processes: int) -> Any:
    import zpool  # lazy, see module docstring

    return zpool.Pool(processes)


def zpool_sockets(processes: int) -> Any:
    import zpool

    return zpool.Pool(processes, shared_memory=False)


def make_paths(idle: bool) -> list[Path]:
    start = multiprocessing.get_start_method()
    paths = [
        Path("zpool_shm", "zpool, shared memory", zpool_shared),
        Path("zpool_sock", "zpool, sockets", zpool_sockets),
        Path("mp", f"multiprocessing ({start})", multiprocessing.get_context(start).Pool),
        Path("copy_warm", "memcpy limit, warm", None),
        Path("copy_cold", "memcpy, cold", None),
    ]
    if idle:
        paths.append(Path("copy_idle", "memcpy, cold after idle", None))
    return paths


def idle_seconds(size: int, s: Settings) -> float:
    return max(2.0, s.idle_s_per_gb * size / 1e9)


# ----------------------------------------------------------------- figures


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def timed_call(pool: Any, func: Callable[[Any], Any], arr: Any, timeout: float) -> tuple[float, Any]:
    """Seconds for ``func(arr)`` on a worker of `pool`, and its result."""
    t0 = time.perf_counter()
    out = pool.apply_async(func, (arr,)).get(timeout)
    return time.perf_counter() - t0, out


def measure_pool(pool: Any, arr: Any, reps: int, s: Settings) -> dict[str, list[float]]:
    """One-way then round-trip samples (seconds) of `arr` through `pool`."""
    import numpy as np

    samples: dict[str, list[float]] = {"one_way": [], "round_trip": []}
    warmup = 2 * s.processes  # two untimed calls per worker (see the module docstring)
    for i in range(warmup + reps):
        secs, out = timed_call(pool, FIRST_ELEMENT, arr, s.get_timeout)
        check(out == arr[0], f"one-way returned {out!r}, expected {arr[0]!r}")
        if i >= warmup:
            samples["one_way"].append(secs)
        del out
        gc.collect()
    for i in range(warmup + reps):
        secs, out = timed_call(pool, identity, arr, s.get_timeout)
        check(
            isinstance(out, np.ndarray)
            and out.shape == arr.shape
            and out.dtype == arr.dtype
            and out[-1] == arr[-1]
            and np.array_equal(out[::9973], arr[::9973]),
            "round trip returned a different array",
        )
        if i >= warmup:
            samples["round_trip"].append(secs)
        del out
        gc.collect()
    return samples


def measure_copy(key: str, arr: Any, reps: int, s: Settings) -> dict[str, list[float]]:
    """One copy (one-way) and two copies, out and back (round trip), in this process."""
    import numpy as np

    samples: dict[str, list[float]] = {"one_way": [], "round_trip": []}
    if key == "copy_warm":
        there, back = np.empty_like(arr), np.empty_like(arr)
        np.copyto(there, arr)  # touch every page of both destinations before timing
        np.copyto(back, arr)

        def one_way() -> None:
            np.copyto(there, arr)

        def round_trip() -> None:
            np.copyto(there, arr)
            np.copyto(back, there)

        warmup = 1
    else:

        def one_way() -> None:
            there = np.empty_like(arr)
            np.copyto(there, arr)

        def round_trip() -> None:
            there = np.empty_like(arr)
            np.copyto(there, arr)
            back = np.empty_like(there)
            np.copyto(back, there)

        warmup = 1 if key == "copy_cold" else 0
    pause = idle_seconds(arr.nbytes, s) if key == "copy_idle" else 0.0
    if pause:
        reps = s.idle_reps
    for figure, fn in (("one_way", one_way), ("round_trip", round_trip)):
        for i in range(warmup + reps):
            gc.collect()
            if pause:
                time.sleep(pause)
            secs, _ = timed(fn)
            if i >= warmup:
                samples[figure].append(secs)
    return samples


def check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def run_sizes(paths: list[Path], s: Settings) -> dict[str, dict[str, Any]]:
    """``{path key: {str(size): {"one_way": [...], "round_trip": [...]} or {"error": ...}}}``."""
    import numpy as np

    results: dict[str, dict[str, Any]] = {p.key: {} for p in paths}
    pools: dict[str, Any] = {}
    try:
        for path in paths:  # pools start before any large array exists (fork copies nothing)
            if path.factory is not None:
                pools[path.key] = path.factory(s.processes)
        for index, size in enumerate(s.sizes):
            arr = np.arange(size // 8, dtype=np.float64)  # every page touched
            reps = s.reps.get(size) or default_reps(size, s.quick)
            order = paths if index % 2 == 0 else paths[::-1]
            for path in order:
                print(f"  {human(size):>8}  {path.label} ...", end="", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                try:
                    if path.key in pools:
                        outcome: dict[str, Any] = measure_pool(pools[path.key], arr, reps, s)
                    else:
                        outcome = measure_copy(path.key, arr, reps, s)
                except Exception as exc:  # report in the table cell, keep going
                    outcome = {"error": f"{type(exc).__name__}: {exc}"}
                gc.collect()
                results[path.key][str(size)] = outcome
                status = "error" if "error" in outcome else "ok"
                print(f" {status} ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
            del arr
            gc.collect()
    finally:
        for pool in pools.values():
            pool.terminate()
            pool.join()
    return results


# ------------------------------------------------------------------ table


def rate(outcome: dict[str, Any] | None, figure: str, size: int) -> float | None:
    if not outcome or "error" in outcome or not outcome.get(figure):
        return None
    moved = size if figure == "one_way" else 2 * size
    return moved / 1e9 / statistics.median(outcome[figure])


def build_table(results: dict[str, dict[str, Any]], paths: list[Path], s: Settings) -> tuple[list[list[str]], dict]:
    refs = [key for key in ("mp", "copy_warm", "copy_cold", "copy_idle") if key in results]
    short = {"mp": "x mp", "copy_warm": "x warm", "copy_cold": "x cold", "copy_idle": "x idle"}
    header = ["size", "path"]
    for figure in ("one-way", "round trip"):
        header += [f"{figure} GB/s (median time)"] + [short[k] for k in refs]
    table, summary = [header], {}
    for size in s.sizes:
        for path in paths:
            outcome = results[path.key].get(str(size))
            line = [human(size), path.label]
            for figure in ("one_way", "round_trip"):
                value = rate(outcome, figure, size)
                if outcome and "error" in outcome:
                    line.append("ERROR: " + outcome["error"][:30])
                elif value is None:
                    line.append("-")
                else:
                    line.append(f"{value:.2f} ({seconds(statistics.median(outcome[figure]))})")
                for ref in refs:
                    base = rate(results[ref].get(str(size)), figure, size)
                    r = value / base if value is not None and base and ref != path.key else None
                    summary[f"{size}.{path.key}.{figure}.{ref}"] = r
                    line.append("-" if r is None else f"{r:.2f}")
            table.append(line)
    return table, summary


def print_table(table: list[list[str]], left: int = 1) -> None:
    """Print `table` aligned: its first `left` columns to the left, the others to the right."""
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for n, line in enumerate(table):
        print(" | ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if n == 0:
            print("-+-".join("-" * w for w in widths))


# ------------------------------------------------------------------ sweep


def run_sweep(sizes: tuple[int, ...], s: Settings) -> dict[str, dict[str, list[float]]]:
    """One-way samples per size through shared memory and through the sockets, alternating call by call."""
    import numpy as np

    import zpool._shm

    results: dict[str, dict[str, list[float]]] = {"shm": {}, "sock": {}}
    saved = zpool._shm.THRESHOLD
    zpool._shm.THRESHOLD = SWEEP_SHM_THRESHOLD  # read at every send, in this process only
    pools = {"shm": zpool_shared(s.processes), "sock": zpool_sockets(s.processes)}
    try:
        for size in sizes:
            arr = np.arange(size // 8, dtype=np.float64)
            reps = s.reps.get(size) or sweep_reps(size, s.quick)
            print(f"  sweep {human(size):>8} x {reps} ...", end="", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            for key in pools:
                results[key][str(size)] = []
                for _ in range(20):  # warm-up
                    pools[key].apply(FIRST_ELEMENT, (arr,))
            for i in range(reps):
                for key in ("shm", "sock") if i % 2 == 0 else ("sock", "shm"):
                    secs, out = timed_call(pools[key], FIRST_ELEMENT, arr, s.get_timeout)
                    check(out == arr[0], f"one-way returned {out!r}")
                    results[key][str(size)].append(secs)
            print(f" ok ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
    finally:
        zpool._shm.THRESHOLD = saved
        for pool in pools.values():
            pool.terminate()
            pool.join()
    return results


def sweep_reps(size: int, quick: bool) -> int:
    reps = 400 if size <= 2**20 else 200 if size <= 4 * 2**20 else 100
    return reps // 4 if quick else reps


def sweep_table(results: dict[str, dict[str, list[float]]], sizes: tuple[int, ...]) -> list[list[str]]:
    header = ["size", "shared memory ms", "sockets ms", "shared memory GB/s", "sockets GB/s", "sockets / shm time"]
    table = [header]
    for size in sizes:
        shm = statistics.median(results["shm"][str(size)])
        sock = statistics.median(results["sock"][str(size)])
        table.append(
            [
                human(size),
                f"{shm * 1e3:.3f}",
                f"{sock * 1e3:.3f}",
                f"{size / 1e9 / shm:.2f}",
                f"{size / 1e9 / sock:.2f}",
                f"{sock / shm:.2f}",
            ]
        )
    return table


# ------------------------------------------------------------------ driver


def write_json(path: str, payload: dict[str, Any]) -> None:
    payload = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "default_start_method": multiprocessing.get_start_method(),
        **payload,
    }
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=2)
    print(f"raw numbers written to {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2, help="pool size (default 2)")
    p.add_argument("--quick", action="store_true", help="8 MB and 200 MB, fewer repetitions, no idle row (< 1 min)")
    p.add_argument("--sizes", type=parse_sizes, help=f"comma-separated sizes (default {DEFAULT_SIZES})")
    p.add_argument("--reps", type=int, help="timed repetitions per size (default: by size)")
    p.add_argument(
        "--idle",
        type=float,
        metavar="S_PER_GB",
        help="'memcpy, cold after idle': sleep this many seconds per GB (at least 2 s) before each"
        " repetition; 0: leave the row out (default 10, or 0 with --quick)",
    )
    p.add_argument("--sweep", action="store_true", help=f"run the shared-memory sweep ({SWEEP_SIZES}) instead")
    p.add_argument("--json", metavar="PATH", help="write raw numbers to PATH")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sweep:
        sizes = args.sizes or parse_sizes(SWEEP_SIZES)
    else:
        sizes = args.sizes or parse_sizes(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    idle = args.idle if args.idle is not None else (0.0 if args.quick else 10.0)
    s = Settings(
        args.processes,
        args.quick,
        sizes,
        reps={size: args.reps for size in sizes} if args.reps else {},
        idle_s_per_gb=idle,
        idle_reps=args.reps or (1 if args.quick else 3),
    )
    print(
        f"bench_arrays: processes={s.processes}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, float64 arrays"
        + ("  [QUICK MODE: fewer repetitions]" if s.quick else ""),
        flush=True,
    )
    if args.sweep:
        sweep = run_sweep(sizes, s)
        print(
            f"\none-way time (apply of itemgetter(0)), median; shared memory forced from"
            f" {human(SWEEP_SHM_THRESHOLD)} on (zpool's default threshold: 1 MiB).\n"
            "last column > 1: shared memory is faster.\n"
        )
        print_table(sweep_table(sweep, sizes))
        if args.json:
            write_json(args.json, {"settings": asdict(s), "sweep": sweep})
        return 0
    paths = make_paths(idle > 0)
    results = run_sizes(paths, s)
    table, ratios = build_table(results, paths, s)
    print(
        "\none-way: GB/s = bytes / time; round trip: GB/s = 2 * bytes / time (memcpy: two copies).\n"
        "x mp > 1: faster than multiprocessing.Pool; "
        + ("x warm / x cold / x idle" if idle > 0 else "x warm / x cold")
        + ": fraction of the memcpy rate.\n"
    )
    print_table(table, left=2)
    errors = [(p.label, size, o["error"]) for p in paths for size, o in results[p.key].items() if "error" in o]
    for label, size, message in errors:
        print(f"error: {human(int(size))} / {label}: {message}")
    if args.json:
        write_json(args.json, {"settings": asdict(s), "results": results, "ratios": ratios})
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
