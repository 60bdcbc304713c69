"""Core benchmarks: zpool.Pool versus multiprocessing.Pool, in one run.

The same workloads run on every back-end in the same process, alternating
back-ends figure by figure (and flipping which one goes first) so that host
drift hits both sides alike.  All timings use ``time.perf_counter``.

Figures (``processes=2`` unless ``--processes N``):

1. start to first result -- wall time from calling ``Pool(n)`` until the
   first ``apply(noop, (1,))`` returns; a fresh pool per repetition, median
   reported.  multiprocessing is measured with the platform default start
   method and with 'spawn'.  Pool teardown is not timed.
2. blocking ``apply`` round trip -- median and p90 of ``apply(noop, (i,))``
   after a warm-up, in microseconds.
3. ``apply_async`` throughput -- submit 10,000 ``apply_async(square, (i,))``,
   then ``get`` them all; tasks per second.
4. ``map`` throughput -- ``map(square, range(200_000))`` with default
   chunking; items per second.  The result is checked.
5. ``imap`` throughput -- ``list(imap(square, range(50_000)))`` with
   default arguments (the stdlib's chunksize of 1); items per second.
6. 200 MB array round trip -- ``apply(identity, (arr,))`` on a float64 array
   of 200e6 bytes; seconds, and GB/s = array size (1e9 bytes) / round-trip
   time.  The returned array is spot-checked.

Reading the ratio column: it compares zpool with the *faster*
multiprocessing value of the row (fork or spawn for startup) and is oriented
so that **ratio > 1 means zpool is better** (faster or higher throughput),
e.g. 2.00x = twice as good, 0.50x = half as good.

numpy and zpool are imported lazily: spawn children re-import this script,
and a top-level numpy import would inflate the spawn startup figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):  # _workloads for every back-end, zpool from the checkout
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _workloads import identity, noop, square  # noqa: E402


@dataclass(frozen=True)
class Settings:
    processes: int
    quick: bool
    startup_reps: int
    latency_calls: int
    latency_warmup: int
    reps: int  # repetitions of the throughput figures (3-5)
    async_tasks: int = 10_000
    map_items: int = 200_000
    imap_items: int = 50_000
    array_bytes: int = 200_000_000
    get_timeout: float = 300.0


def make_settings(args: argparse.Namespace) -> Settings:
    q = args.quick  # quick mode: fewer repetitions, same workload sizes
    return Settings(
        args.processes,
        q,
        startup_reps=3 if q else 7,
        latency_calls=300 if q else 3000,
        latency_warmup=50 if q else 300,
        reps=1 if q else 3,
    )


# --------------------------------------------------------------- back-ends


@dataclass(frozen=True)
class Backend:
    key: str
    label: str
    factory: Callable[[int], object]


def zpool_pool(processes: int):
    import zpool  # lazy: --only mp must work without zpool

    return zpool.Pool(processes)


def select_backends(only: str | None) -> tuple[list[Backend], Backend | None]:
    default = multiprocessing.get_start_method()
    backends = []
    if only in (None, "zpool"):
        backends.append(Backend("zpool", "zpool", zpool_pool))
    if only in (None, "mp"):
        backends.append(Backend("mp", f"multiprocessing ({default})", multiprocessing.get_context(default).Pool))
    spawn = None
    if only in (None, "mp") and default != "spawn":
        spawn = Backend("mp_spawn", "multiprocessing (spawn)", multiprocessing.get_context("spawn").Pool)
    return backends, spawn


@contextmanager
def open_pool(factory: Callable[[int], object], processes: int):
    pool = factory(processes)
    try:
        yield pool
    finally:
        try:
            pool.terminate()
        finally:
            pool.join()


# ----------------------------------------------------------------- figures


def fig_startup(factory, s: Settings):
    samples = []
    for _ in range(s.startup_reps):
        t0 = time.perf_counter()
        with open_pool(factory, s.processes) as pool:
            result = pool.apply(noop, (1,))
            samples.append(time.perf_counter() - t0)
        check(result == 1, f"apply returned {result!r}")
    return {"median_ms": statistics.median(samples) * 1e3}, samples


def fig_latency(pool, s: Settings):
    for i in range(s.latency_warmup):
        pool.apply(noop, (i,))
    samples = []
    for i in range(s.latency_calls):
        t0 = time.perf_counter()
        pool.apply(noop, (i,))
        samples.append(time.perf_counter() - t0)
    p90 = statistics.quantiles(samples, n=10)[-1]
    return {"median_us": statistics.median(samples) * 1e6, "p90_us": p90 * 1e6}, samples


def fig_apply_async(pool, s: Settings):
    run_async(pool, 1000, s.get_timeout)  # warm-up
    rates = []
    for _ in range(s.reps):
        t0 = time.perf_counter()
        out = run_async(pool, s.async_tasks, s.get_timeout)
        rates.append(s.async_tasks / (time.perf_counter() - t0))
        check(out == [i * i for i in range(s.async_tasks)], "wrong apply_async results")
    return {"tasks_per_s": statistics.median(rates)}, rates


def run_async(pool, n: int, timeout: float) -> list:
    handles = [pool.apply_async(square, (i,)) for i in range(n)]
    return [h.get(timeout) for h in handles]


def fig_map(pool, s: Settings):
    pool.map(square, range(1000))  # warm-up
    rates = []
    for _ in range(s.reps):
        t0 = time.perf_counter()
        out = pool.map(square, range(s.map_items))
        rates.append(s.map_items / (time.perf_counter() - t0))
        check(out == [i * i for i in range(s.map_items)], "wrong map results")
    return {"items_per_s": statistics.median(rates)}, rates


def fig_imap(pool, s: Settings):
    list(pool.imap(square, range(1000)))  # warm-up
    rates = []
    for _ in range(s.reps):
        t0 = time.perf_counter()
        out = list(pool.imap(square, range(s.imap_items)))
        rates.append(s.imap_items / (time.perf_counter() - t0))
        check(out == [i * i for i in range(s.imap_items)], "wrong imap results")
    return {"items_per_s": statistics.median(rates)}, rates


def fig_array(pool, s: Settings):
    import numpy as np  # lazy, see module docstring

    arr = np.arange(s.array_bytes // 8, dtype=np.float64)
    pool.apply(identity, (arr,))  # untimed full-size warm-up (first-touch page faults)
    gc.collect()
    times = []
    for _ in range(s.reps):
        t0 = time.perf_counter()
        out = pool.apply(identity, (arr,))
        times.append(time.perf_counter() - t0)
        check(
            isinstance(out, np.ndarray)
            and out.shape == arr.shape
            and out.dtype == arr.dtype
            and out[-1] == arr[-1]
            and np.array_equal(out[::9973], arr[::9973]),
            "array mismatch",
        )
        del out
        gc.collect()
    secs = statistics.median(times)
    return {"seconds": secs, "gb_per_s": arr.nbytes / 1e9 / secs}, times


def check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


@dataclass(frozen=True)
class Figure:
    key: str
    fn: Callable
    uses_pool: bool = True  # False: fn receives the pool factory itself


@dataclass(frozen=True)
class Row:
    figure: str
    metric: str
    label: str
    fmt: str
    higher_is_better: bool


def make_rows(s: Settings) -> list[Row]:
    mb = s.array_bytes / 1e6
    return [
        Row("startup", "median_ms", "1. start -> first result, median (ms)", ",.1f", False),
        Row("latency", "median_us", "2. apply round trip, median (us)", ",.1f", False),
        Row("latency", "p90_us", "   apply round trip, p90 (us)", ",.1f", False),
        Row("apply_async", "tasks_per_s", f"3. {s.async_tasks:,} apply_async (tasks/s)", ",.0f", True),
        Row("map", "items_per_s", f"4. map {s.map_items:,} items (items/s)", ",.0f", True),
        Row("imap", "items_per_s", f"5. imap {s.imap_items:,} items (items/s)", ",.0f", True),
        Row("array", "seconds", f"6. {mb:,.0f} MB array round trip (s)", ".3f", False),
        Row("array", "gb_per_s", f"   {mb:,.0f} MB array round trip (GB/s)", ".2f", True),
    ]


# ------------------------------------------------------------------ driver


def run_one(fig: Figure, backend: Backend, s: Settings) -> dict:
    print(f"  {fig.key:<12} {backend.label} ...", end="", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        if fig.uses_pool:
            with open_pool(backend.factory, s.processes) as pool:
                metrics, samples = fig.fn(pool, s)
        else:
            metrics, samples = fig.fn(backend.factory, s)
        outcome = {"metrics": metrics, "samples": samples}
    except Exception as exc:  # report in the table cell, keep going
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        gc.collect()
    status = "error" if "error" in outcome else "ok"
    print(f" {status} ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
    return outcome


def run_all(figures: list[Figure], backends: list[Backend], spawn: Backend | None, s: Settings) -> dict:
    results: dict[str, dict] = {b.key: {} for b in backends + ([spawn] if spawn else [])}
    for index, fig in enumerate(figures):
        order = backends + ([spawn] if spawn and not fig.uses_pool else [])
        if index % 2:
            order = order[::-1]
        for backend in order:
            results[backend.key][fig.key] = run_one(fig, backend, s)
    return results


def cell(results: dict, key: str, row: Row) -> tuple[str, float | None]:
    outcome = results.get(key, {}).get(row.figure)
    if outcome is None:
        return "-", None
    if "error" in outcome:
        return "ERROR: " + outcome["error"][:40], None
    value = outcome["metrics"][row.metric]
    return format(value, row.fmt), value


def ratio(zp: float | None, mp_values: list[float], higher_is_better: bool) -> float | None:
    if zp is None or not mp_values or zp <= 0:
        return None
    best = max(mp_values) if higher_is_better else min(mp_values)
    return zp / best if higher_is_better else best / zp


def build_table(results: dict, columns: list[Backend], rows: list[Row]):
    header = ["figure"] + [b.label for b in columns] + ["ratio (>1: zpool better)"]
    table, ratios = [header], {}
    for row in rows:
        cells = [cell(results, b.key, row) for b in columns]
        mp_values = [v for b, (_, v) in zip(columns, cells) if b.key != "zpool" and v is not None]
        r = ratio(cells[0][1] if columns[0].key == "zpool" else None, mp_values, row.higher_is_better)
        ratios[f"{row.figure}.{row.metric}"] = r
        table.append([row.label] + [text for text, _ in cells] + ["-" if r is None else f"{r:.2f}x"])
    return table, ratios


def print_table(table: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for n, line in enumerate(table):
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def write_json(path: str, s: Settings, columns: list[Backend], results: dict, ratios: dict) -> None:
    payload = {
        "settings": asdict(s),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "default_start_method": multiprocessing.get_start_method(),
        "labels": {b.key: b.label for b in columns},
        "results": results,
        "ratios": ratios,
    }
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=2)
    print(f"raw numbers written to {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2, help="pool size (default 2)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (< 1 min)")
    p.add_argument("--only", choices=["zpool", "mp"], help="run a single back-end")
    p.add_argument("--skip-array", action="store_true", help="skip the 200 MB figure")
    p.add_argument("--json", metavar="PATH", help="write raw numbers to PATH")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = make_settings(args)
    backends, spawn = select_backends(args.only)
    figures = [
        Figure("startup", fig_startup, uses_pool=False),
        Figure("latency", fig_latency),
        Figure("apply_async", fig_apply_async),
        Figure("map", fig_map),
        Figure("imap", fig_imap),
    ]
    if not args.skip_array:
        figures.append(Figure("array", fig_array))
    rows = [r for r in make_rows(s) if r.figure in {f.key for f in figures}]
    columns = backends + ([spawn] if spawn else [])

    print(
        f"bench_core: processes={s.processes}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
        + ("  [QUICK MODE: fewer repetitions]" if s.quick else ""),
        flush=True,
    )
    results = run_all(figures, backends, spawn, s)
    table, ratios = build_table(results, columns, rows)
    print("\nratio = zpool vs the faster multiprocessing value; >1 means zpool is better.\n")
    print_table(table)
    errors = [(b.label, f, o["error"]) for b in columns for f, o in results[b.key].items() if "error" in o]
    for label, fig, message in errors:
        print(f"error: {fig} / {label}: {message}")
    if args.json:
        write_json(args.json, s, columns, results, ratios)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
