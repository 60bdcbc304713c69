"""Core benchmarks: zpool.Pool versus multiprocessing.Pool and the installed peers, in one run.

The same workloads run on every back-end in the same process, alternating
back-ends figure by figure (and flipping the order every other figure) so
that host drift hits all sides alike.  Every figure gets a pool of its own.
All timings use ``time.perf_counter``.

Back-ends: zpool; ``multiprocessing.Pool`` with the platform default start
method (plus 'spawn' for the start-up figure); and the peers that are
installed (``pip install zpool[bench]``; adapters in ``_peers.py``): mpire,
loky, Ray, dask and ipyparallel.  ``--peers auto|none|mpire,ray,...``
chooses the peers, ``--only KEY[,KEY]`` runs just those back-ends.  A peer
that fails to import or start gets the error in its cells; the run goes on.

Figures (``processes=2`` unless ``--processes N``):

1. start to first result -- wall time from creating the pool until the
   first ``apply(noop, (1,))`` returns; a fresh pool per repetition, median
   reported.  Pool teardown is not timed.
2. blocking ``apply`` round trip -- median and p90 of ``apply(noop, (i,))``
   after a warm-up, in microseconds.
3. ``apply_async`` throughput -- submit 10,000 ``apply_async(square, (i,))``,
   then ``get`` them all; tasks per second.  For zpool also the controller's
   CPU time (user + system, psutil) per task.
4. ``map`` throughput -- ``map(square, range(200_000))`` with the back-end's
   default chunking; items per second.  The result is checked.
5. ``imap`` throughput -- ``list(imap(square, range(50_000)))`` with default
   arguments (the stdlib's chunksize is 1); items per second.
6. 64 tasks of uneven length -- ``apply_async(sleep_for, (d,))`` per task,
   then ``get`` them all; the 64 durations d are pseudo-random with a fixed
   seed, 2 to 92 ms, skewed (most are short, a few long; 0.65 s in all).
   Reported: wall / ideal, where ideal = max(sum(d) / processes, max(d)),
   the makespan of a perfect schedule with zero overhead (lower is better,
   1.00 is perfect); the median of 5 runs (1 with ``--quick``), and the
   worst of them.
7. 200 CPU-bound 5 ms tasks -- ``apply_async(spin, (k,))`` per task, k
   calibrated once in this process before the figures run so that
   ``spin(k)`` takes about 5 ms on one core; its time t is measured again
   in this process just before each timed repetition (median of 7 runs:
   the host's speed drifts).  Reported: wall / ideal, ideal = 200 * t /
   processes; the median of 5 runs and the worst, as for figure 6.  For
   zpool also the controller's CPU share: the controller's CPU seconds
   divided by those of the controller and engines together, over the
   figure.
8. 200 MB array round trip -- ``apply(identity, (arr,))`` on a float64 array
   of 200e6 bytes; seconds, and GB/s = array size (1e9 bytes) / round-trip
   time.  The returned array is spot-checked.  zpool and multiprocessing
   only.
9. small maps, repeated -- ``map(square, range(16))`` called 1,000 times
   (300 with ``--quick``) after a warm-up, each timed; median and p90 per
   call in milliseconds.  The loop optimizers and samplers run.
10. real clients (``pip install zpool[bench]``: scipy, emcee; ``_clients.py``),
    warm: scipy ``differential_evolution`` on a cheap 5-D objective with
    ``workers=pool.map`` (popsize 6, 30 generations: 31 maps of 30 items),
    and emcee with ``pool=pool``, 32 walkers x 300 steps (300 maps of 16
    items); wall seconds.  The objectives travel by value, as functions
    of a user's script do.  zpool and multiprocessing only.
11. first call on a fresh pool after the caller imported scipy.optimize --
    ``map(uses_scipy, range(2 * processes))``, which needs scipy.optimize;
    a fresh pool per repetition.  Two timings: from creating the pool to
    that call's result ("at once"), and the call alone when it comes 1 s
    after the pool was created (as a script creates a pool, then loads its
    data).  zpool and multiprocessing only; this figure runs last, since
    it leaves scipy imported in this process.

Time budget: zpool and multiprocessing always run the nominal sizes above.
A peer runs each of figures 2-5 at most ``budget`` seconds per repetition
(2.5 s with ``--quick``, 6 s otherwise): a warm-up in doubling steps
measures its rate first, and the workload is cut to what fits, never above
the nominal size; the start-up figure stops repeating once the budget is
spent.  Such cells are marked ``*`` and a footnote gives the sizes run.
Rates per second stay comparable, though small maps amortize per-call costs
less.  Figures 6 and 7 are short and never cut (wall / ideal depends on the
size).

Reading the ratio column: it compares zpool with the *best* value of the
row among multiprocessing (fork or spawn) and mpire when mpire runs (the
issue's targets are "the faster of multiprocessing.Pool and mpire"), and is
oriented so that **ratio > 1 means zpool is better** (faster, higher
throughput or closer to ideal), e.g. 2.00x = twice as good.  Other peers are
shown for reference only.

Durations measured on a busy 2-core Linux VM (Python 3.11): ``--quick``
takes 12-20 s with zpool and multiprocessing only, about 2.75 min with all
five peers (each peer starts afresh for every figure: ipyparallel about 7 s,
Ray 3-4 s); the full run takes 30 s alone, 6.5 min with all peers.  Errors
of zpool or multiprocessing set exit status 1; a peer's do not.

numpy, zpool and the peers are imported lazily: spawn children re-import
this script, and top-level imports would inflate the spawn startup figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):  # _workloads for every back-end, zpool from the checkout
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _clients  # noqa: E402
from _peers import PEERS  # noqa: E402  (stdlib only at import time)
from _workloads import identity, noop, sleep_for, spin, square  # noqa: E402

PROBE_S = 0.3  # a budgeted warm-up step this long gives the rate to size the workload by
UNEVEN_SEED = 1


@dataclass(frozen=True)
class Settings:
    processes: int
    quick: bool
    startup_reps: int
    latency_calls: int
    latency_warmup: int
    reps: int  # repetitions of figures 3-5 and 8
    balance_reps: int  # repetitions of figures 6 and 7 (balance: the median of 5, and the worst)
    budget_s: float  # per repetition, for the peers (see the module docstring)
    smoke: bool = False
    async_tasks: int = 10_000
    async_warmup: int = 1000
    map_items: int = 200_000
    imap_items: int = 50_000
    seq_warmup: int = 1000  # map / imap warm-up items
    uneven_tasks: int = 64
    uneven_min_s: float = 0.002
    uneven_max_s: float = 0.100
    cpu_tasks: int = 200
    cpu_task_s: float = 0.005
    array_bytes: int = 200_000_000
    small_map_calls: int = 1000
    small_map_items: int = 16
    de_generations: int = 30
    emcee_steps: int = 300
    first_call_idle_s: float = 1.0
    get_timeout: float = 300.0
    # Calibrated in this process before the figures run (calibrate()).
    cpu_iterations: int = 0
    cpu_single_s: float = 0.0


def make_settings(args: argparse.Namespace) -> Settings:
    q = args.quick  # quick mode: fewer repetitions, same workload sizes
    s = Settings(
        args.processes,
        q,
        startup_reps=3 if q else 7,
        latency_calls=300 if q else 3000,
        latency_warmup=50 if q else 300,
        reps=1 if q else 3,
        balance_reps=1 if q else 5,
        budget_s=2.5 if q else 6.0,
        small_map_calls=300 if q else 1000,
    )
    if args.smoke:  # the test suite's check that every figure runs: tiny sizes, meaningless numbers
        s = replace(
            s,
            smoke=True,
            startup_reps=1,
            latency_calls=20,
            latency_warmup=5,
            reps=1,
            balance_reps=1,
            budget_s=1.0,
            async_tasks=200,
            async_warmup=20,
            map_items=2000,
            imap_items=500,
            seq_warmup=100,
            uneven_tasks=16,
            uneven_max_s=0.02,
            cpu_tasks=20,
            cpu_task_s=0.002,
            array_bytes=8_000_000,
            small_map_calls=20,
            de_generations=2,
            emcee_steps=5,
            first_call_idle_s=0.1,
        )
    return s


def calibrate(s: Settings) -> Settings:
    """Find the `spin` iterations that take `s.cpu_task_s` here, and time them."""
    n = 1000
    while (t := timed(spin, n)) < 0.05:
        n *= 2
    iterations = max(1, round(n * s.cpu_task_s / t))
    single = statistics.median(timed(spin, iterations) for _ in range(11))
    return replace(s, cpu_iterations=iterations, cpu_single_s=single)


def timed(func: Callable, arg) -> float:
    t0 = time.perf_counter()
    func(arg)
    return time.perf_counter() - t0


def uneven_durations(s: Settings) -> list[float]:
    """`s.uneven_tasks` sleep times from uneven_min_s to about uneven_max_s, most short (fixed seed)."""
    rng = random.Random(UNEVEN_SEED)
    ratio = s.uneven_max_s / s.uneven_min_s
    return [s.uneven_min_s * ratio ** (rng.random() ** 3) for _ in range(s.uneven_tasks)]


# --------------------------------------------------------------- back-ends


@dataclass(frozen=True)
class Backend:
    key: str
    label: str
    factory: Callable[[int], object]
    reference: bool = False  # a baseline of the ratio column
    peer: bool = False  # time-budgeted; its errors do not fail the run


def zpool_pool(processes: int):
    import zpool  # lazy: --only mp must work without zpool

    return zpool.Pool(processes)


BACKEND_KEYS = ("zpool", "mp", "mp_spawn", *PEERS)


def select_backends(keys: list[str]) -> list[Backend]:
    """The back-ends named in `keys` ("mp" brings "mp_spawn" for the start-up figure), in column order."""
    default = multiprocessing.get_start_method()
    wanted = set(keys)
    if "mp" in wanted and default != "spawn":
        wanted.add("mp_spawn")
    backends = []
    if "zpool" in wanted:
        backends.append(Backend("zpool", "zpool", zpool_pool))
    if "mp" in wanted:
        mp = multiprocessing.get_context(default).Pool
        backends.append(Backend("mp", f"multiprocessing ({default})", mp, reference=True))
    if "mp_spawn" in wanted and default != "spawn":
        spawn = multiprocessing.get_context("spawn").Pool
        backends.append(Backend("mp_spawn", "multiprocessing (spawn)", spawn, reference=True))
    for peer in PEERS.values():
        if peer.key in wanted:
            backends.append(Backend(peer.key, peer.label(), peer.factory, reference=peer.key == "mpire", peer=True))
    return backends


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


class ControllerMeter:
    """CPU seconds (user + system) used so far by a zpool pool's controller, and by its engines."""

    def __init__(self, pool) -> None:
        import psutil

        pool.wait_for_engines()
        # The controller starts the engines: it is their parent (bench_dag.controller_cpu).
        self.engines = [psutil.Process(pid) for pid in pool.queue_status()["engine_pids"].values()]
        self.controller = self.engines[0].parent()

    @classmethod
    def of(cls, pool) -> ControllerMeter | None:
        """A meter for a zpool pool; None for any other back-end."""
        zpool = sys.modules.get("zpool")
        return cls(pool) if zpool is not None and isinstance(pool, zpool.Pool) else None

    def read(self) -> tuple[float, float]:
        return cpu_seconds(self.controller), sum(cpu_seconds(p) for p in self.engines)


def cpu_seconds(proc) -> float:
    times = proc.cpu_times()
    return times.user + times.system


# ----------------------------------------------------------------- figures
#
# Each figure returns (metrics, samples, note): note says how much of the
# nominal workload ran when the time budget cut it, else None.  `budget` is
# seconds per repetition, or None (zpool, multiprocessing: nominal sizes).


def fig_startup(factory, s: Settings, budget: float | None):
    samples = []
    started = time.perf_counter()
    while len(samples) < s.startup_reps:
        if samples and budget is not None and time.perf_counter() - started > budget:
            break
        t0 = time.perf_counter()
        with open_pool(factory, s.processes) as pool:
            result = pool.apply(noop, (1,))
            samples.append(time.perf_counter() - t0)
        check(result == 1, f"apply returned {result!r}")
    return {"median_ms": statistics.median(samples) * 1e3}, samples, cut(len(samples), s.startup_reps, "starts")


def fig_latency(pool, s: Settings, budget: float | None):
    warm = []
    for i in range(s.latency_warmup):
        t0 = time.perf_counter()
        pool.apply(noop, (i,))
        warm.append(time.perf_counter() - t0)
    calls = fit(s.latency_calls, statistics.median(warm), budget, least=20)
    samples = []
    for i in range(calls):
        t0 = time.perf_counter()
        pool.apply(noop, (i,))
        samples.append(time.perf_counter() - t0)
    p90 = statistics.quantiles(samples, n=10)[-1]
    metrics = {"median_us": statistics.median(samples) * 1e6, "p90_us": p90 * 1e6}
    return metrics, samples, cut(calls, s.latency_calls, "calls")


def fig_apply_async(pool, s: Settings, budget: float | None):
    meter = ControllerMeter.of(pool)
    rate = warm_up(lambda n: run_tasks(pool, square, range(n), s.get_timeout), s.async_warmup, s.async_tasks, budget)
    n = fit(s.async_tasks, 1 / rate if rate else 0.0, budget)
    before = meter.read() if meter else None
    rates = []
    for _ in range(s.reps):
        t0 = time.perf_counter()
        out = run_tasks(pool, square, range(n), s.get_timeout)
        rates.append(n / (time.perf_counter() - t0))
        check(out == [i * i for i in range(n)], "wrong apply_async results")
    metrics = {"tasks_per_s": statistics.median(rates)}
    if meter:
        metrics["controller_us_per_task"] = (meter.read()[0] - before[0]) / (n * s.reps) * 1e6
    return metrics, rates, cut(n, s.async_tasks, "tasks")


def run_tasks(pool, func: Callable, args, timeout: float) -> list:
    """One ``apply_async(func, (a,))`` per item of `args`, then get them all."""
    handles = [pool.apply_async(func, (a,)) for a in args]
    return [h.get(timeout) for h in handles]


def fig_map(pool, s: Settings, budget: float | None):
    rate = warm_up(lambda n: pool.map(square, range(n)), s.seq_warmup, s.map_items, budget)
    n = fit(s.map_items, 1 / rate if rate else 0.0, budget)
    rates = []
    for _ in range(s.reps):
        t0 = time.perf_counter()
        out = pool.map(square, range(n))
        rates.append(n / (time.perf_counter() - t0))
        check(out == [i * i for i in range(n)], "wrong map results")
    return {"items_per_s": statistics.median(rates)}, rates, cut(n, s.map_items, "items")


def fig_imap(pool, s: Settings, budget: float | None):
    rate = warm_up(lambda n: list(pool.imap(square, range(n))), s.seq_warmup, s.imap_items, budget)
    n = fit(s.imap_items, 1 / rate if rate else 0.0, budget)
    rates = []
    for _ in range(s.reps):
        t0 = time.perf_counter()
        out = list(pool.imap(square, range(n)))
        rates.append(n / (time.perf_counter() - t0))
        check(out == [i * i for i in range(n)], "wrong imap results")
    return {"items_per_s": statistics.median(rates)}, rates, cut(n, s.imap_items, "items")


def fig_small_maps(pool, s: Settings, budget: float | None):
    items = range(s.small_map_items)
    expected = [i * i for i in items]
    warm = []
    for _ in range(max(5, s.small_map_calls // 10)):
        t0 = time.perf_counter()
        pool.map(square, items)
        warm.append(time.perf_counter() - t0)
    calls = fit(s.small_map_calls, statistics.median(warm), budget, least=20)
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        out = pool.map(square, items)
        samples.append(time.perf_counter() - t0)
        check(out == expected, "wrong map results")
    p90 = statistics.quantiles(samples, n=10)[-1]
    metrics = {"median_ms": statistics.median(samples) * 1e3, "p90_ms": p90 * 1e3}
    return metrics, samples, cut(calls, s.small_map_calls, "calls")


def objective(x):
    """A cheap 5-D objective (Rosenbrock and a ripple), defined in __main__ as a user's would be."""
    import numpy as np

    x = np.asarray(x)
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2) + 0.1 * math.sin(x[0]))


def log_prob(x, icov):
    """emcee's quick-start log-probability, defined in __main__ as a user's would be."""
    return -0.5 * float(x @ icov @ x)


def fig_clients(pool, s: Settings, budget: float | None):
    missing = _clients.missing()
    if missing:
        print(f" [{', '.join(missing)} not installed: pip install zpool[bench]]", end="", file=sys.stderr)
        return {}, [], None
    _clients.differential_evolution(objective, pool.map, maxiter=2)  # warm: the loop, not the imports, is timed
    _clients.emcee_run(log_prob, pool, steps=2)
    de, mc = [], []
    for _ in range(s.reps):
        t0 = time.perf_counter()
        best = _clients.differential_evolution(objective, pool.map, maxiter=s.de_generations)
        de.append(time.perf_counter() - t0)
        check(math.isfinite(best), f"differential_evolution found {best!r}")
        t0 = time.perf_counter()
        mean = _clients.emcee_run(log_prob, pool, steps=s.emcee_steps)
        mc.append(time.perf_counter() - t0)
        check(math.isfinite(mean), f"emcee's chain mean is {mean!r}")
    return {"de_s": statistics.median(de), "emcee_s": statistics.median(mc)}, de + mc, None


def fig_first_scipy(factory, s: Settings, budget: float | None):
    if "scipy" in _clients.missing():
        print(" [scipy not installed: pip install zpool[bench]]", end="", file=sys.stderr)
        return {}, [], None
    import scipy.optimize  # noqa: F401  (the caller's import: a forked worker inherits it)

    items = range(2 * s.processes)
    expected = [_clients.uses_scipy(x) for x in items]
    at_once, idle = [], []
    for _ in range(s.startup_reps):
        t0 = time.perf_counter()
        with open_pool(factory, s.processes) as pool:
            out = pool.map(_clients.uses_scipy, items)
            at_once.append(time.perf_counter() - t0)
        check(out == expected, "wrong results")
        with open_pool(factory, s.processes) as pool:
            time.sleep(s.first_call_idle_s)
            t0 = time.perf_counter()
            out = pool.map(_clients.uses_scipy, items)
            idle.append(time.perf_counter() - t0)
        check(out == expected, "wrong results")
    metrics = {"at_once_ms": statistics.median(at_once) * 1e3, "idle_ms": statistics.median(idle) * 1e3}
    return metrics, at_once + idle, None


def warm_up(run: Callable[[int], object], warmup: int, nominal: int, budget: float | None) -> float | None:
    """Run `run(warmup)`; for a budgeted back-end, in doubling steps instead, and return the items/s of the last one.

    The steps start at warmup / 64 and stop after one that took PROBE_S, or
    at max(warmup, nominal / 10) items: the rate at that size is close to
    the rate at full size.
    """
    if budget is None:
        run(warmup)
        return None
    cap = max(warmup, nominal // 10)
    n = max(1, warmup // 64)
    while True:
        t0 = time.perf_counter()
        run(n)
        elapsed = time.perf_counter() - t0
        if elapsed >= PROBE_S or n >= cap:
            return n / max(elapsed, 1e-9)
        n = min(2 * n, cap)


def fit(nominal: int, seconds_each: float, budget: float | None, least: int = 1) -> int:
    """How many of `nominal` fit in `budget` seconds at `seconds_each` (all of them without a budget)."""
    if budget is None or seconds_each <= 0:
        return nominal
    return min(nominal, max(least, int(budget / seconds_each)))


def cut(done: int, nominal: int, unit: str) -> str | None:
    return None if done >= nominal else f"{done:,} of {nominal:,} {unit}"


def fig_uneven(pool, s: Settings, budget: float | None):
    durations = uneven_durations(s)
    ideal = max(sum(durations) / s.processes, max(durations))
    run_tasks(pool, sleep_for, [0.001] * (2 * s.processes), s.get_timeout)  # warm-up
    ratios = []
    for _ in range(s.balance_reps):
        t0 = time.perf_counter()
        out = run_tasks(pool, sleep_for, durations, s.get_timeout)
        ratios.append((time.perf_counter() - t0) / ideal)
        check(out == durations, "wrong sleep_for results")
    return {"wall_over_ideal": statistics.median(ratios), "worst": max(ratios), "ideal_s": ideal}, ratios, None


def fig_cpu(pool, s: Settings, budget: float | None):
    k = s.cpu_iterations
    expected = spin(k)
    meter = ControllerMeter.of(pool)
    run_tasks(pool, spin, [k] * (2 * s.processes), s.get_timeout)  # warm-up
    ratios, shares = [], []
    for _ in range(s.balance_reps):
        # The host's speed drifts: time one task here again, just before, for the ideal.
        ideal = s.cpu_tasks * statistics.median(timed(spin, k) for _ in range(7)) / s.processes
        before = meter.read() if meter else None
        t0 = time.perf_counter()
        out = run_tasks(pool, spin, [k] * s.cpu_tasks, s.get_timeout)
        ratios.append((time.perf_counter() - t0) / ideal)
        check(out == [expected] * s.cpu_tasks, "wrong spin results")
        if meter:
            controller, engines = (after - first for after, first in zip(meter.read(), before))
            shares.append(controller / (controller + engines) if controller + engines > 0 else 0.0)
    metrics = {"wall_over_ideal": statistics.median(ratios), "worst": max(ratios), "ideal_s": ideal}
    if meter:
        metrics["controller_cpu_share"] = statistics.median(shares)
    return metrics, ratios, None


def fig_array(pool, s: Settings, budget: float | None):
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
    return {"seconds": secs, "gb_per_s": arr.nbytes / 1e9 / secs}, times, None


def check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


@dataclass(frozen=True)
class Figure:
    key: str
    fn: Callable
    uses_pool: bool = True  # False: fn receives the pool factory itself
    peers: bool = True  # False: zpool and multiprocessing only


@dataclass(frozen=True)
class Row:
    figure: str
    metric: str
    label: str
    fmt: str
    higher_is_better: bool
    compared: bool = True  # False: a zpool-only value, no ratio


def make_rows(s: Settings) -> list[Row]:
    mb = s.array_bytes / 1e6
    uneven = f"{s.uneven_min_s * 1e3:g}-{s.uneven_max_s * 1e3:g} ms"
    return [
        Row("startup", "median_ms", "1. start -> first result, median (ms)", ",.1f", False),
        Row("latency", "median_us", "2. apply round trip, median (us)", ",.1f", False),
        Row("latency", "p90_us", "   apply round trip, p90 (us)", ",.1f", False),
        Row("apply_async", "tasks_per_s", f"3. {s.async_tasks:,} apply_async (tasks/s)", ",.0f", True),
        Row("apply_async", "controller_us_per_task", "   controller CPU per task (us, zpool)", ",.1f", False, False),
        Row("map", "items_per_s", f"4. map {s.map_items:,} items (items/s)", ",.0f", True),
        Row("imap", "items_per_s", f"5. imap {s.imap_items:,} items (items/s)", ",.0f", True),
        Row("uneven", "wall_over_ideal", f"6. {s.uneven_tasks} uneven tasks {uneven} (wall/ideal)", ".2f", False),
        Row("uneven", "worst", f"   worst of {s.balance_reps} runs (wall/ideal)", ".2f", False),
        Row(
            "cpu",
            "wall_over_ideal",
            f"7. {s.cpu_tasks} CPU-bound {s.cpu_task_s * 1e3:g} ms tasks (wall/ideal)",
            ".2f",
            False,
        ),
        Row("cpu", "worst", f"   worst of {s.balance_reps} runs (wall/ideal)", ".2f", False),
        Row("cpu", "controller_cpu_share", "   controller CPU share (zpool)", ".1%", False, False),
        Row("array", "seconds", f"8. {mb:,.0f} MB array round trip (s)", ".3f", False),
        Row("array", "gb_per_s", f"   {mb:,.0f} MB array round trip (GB/s)", ".2f", True),
        Row("small_maps", "median_ms", f"9. map of {s.small_map_items} items, repeated: per call (ms)", ",.3f", False),
        Row("small_maps", "p90_ms", "   per call, p90 (ms)", ",.3f", False),
        Row("clients", "de_s", "10. scipy differential_evolution(workers=pool.map) (s)", ".3f", False),
        Row("clients", "emcee_s", f"    emcee, 32 walkers x {s.emcee_steps} steps (s)", ".3f", False),
        Row("first_scipy", "at_once_ms", "11. start -> first scipy call (ms)", ",.1f", False),
        Row(
            "first_scipy",
            "idle_ms",
            f"    first scipy call, {s.first_call_idle_s:g} s after start (ms)",
            ",.1f",
            False,
        ),
    ]


# ------------------------------------------------------------------ driver


def runs(backend: Backend, fig: Figure) -> bool:
    if backend.key == "mp_spawn":
        return not fig.uses_pool  # spawn only adds a start-up column
    return fig.peers or not backend.peer


def run_one(fig: Figure, backend: Backend, s: Settings) -> dict:
    print(f"  {fig.key:<12} {backend.label} ...", end="", file=sys.stderr, flush=True)
    budget = s.budget_s if backend.peer else None
    t0 = time.perf_counter()
    try:
        if fig.uses_pool:
            with open_pool(backend.factory, s.processes) as pool:
                metrics, samples, note = fig.fn(pool, s, budget)
        else:
            metrics, samples, note = fig.fn(backend.factory, s, budget)
        outcome = {"metrics": metrics, "samples": samples, "note": note}
    except Exception as exc:  # report in the table cell, keep going
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        gc.collect()
    status = "error" if "error" in outcome else "ok"
    if outcome.get("note"):
        status += f", ran {outcome['note']}"
    print(f" {status} ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
    return outcome


def run_all(figures: list[Figure], backends: list[Backend], s: Settings) -> dict:
    results: dict[str, dict] = {b.key: {} for b in backends}
    for index, fig in enumerate(figures):
        order = [b for b in backends if runs(b, fig)]
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
    value = outcome["metrics"].get(row.metric)
    if value is None:
        return "-", None
    return format(value, row.fmt) + ("*" if outcome.get("note") else ""), value


def ratio(zp: float | None, ref_values: list[float], higher_is_better: bool) -> float | None:
    if zp is None or not ref_values or zp <= 0:
        return None
    best = max(ref_values) if higher_is_better else min(ref_values)
    return zp / best if higher_is_better else best / zp


def build_table(results: dict, columns: list[Backend], rows: list[Row]):
    header = ["figure"] + [b.label for b in columns] + ["ratio (>1: zpool better)"]
    table, ratios = [header], {}
    for row in rows:
        cells = [cell(results, b.key, row) for b in columns]
        refs = [v for b, (_, v) in zip(columns, cells) if b.reference and v is not None]
        zp = next((v for b, (_, v) in zip(columns, cells) if b.key == "zpool"), None)
        r = ratio(zp, refs, row.higher_is_better) if row.compared else None
        ratios[f"{row.figure}.{row.metric}"] = r
        table.append([row.label] + [text for text, _ in cells] + ["-" if r is None else f"{r:.2f}x"])
    return table, ratios


def print_table(table: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for n, line in enumerate(table):
        print(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def legend(columns: list[Backend]) -> str:
    refs = [b.label for b in columns if b.reference]
    if not refs:
        return "ratio: no multiprocessing or mpire column to compare with."
    return f"ratio = zpool vs the best of {', '.join(refs)}; >1 means zpool is better."


def write_json(path: str, s: Settings, columns: list[Backend], results: dict, ratios: dict) -> None:
    payload = {
        "settings": asdict(s),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "default_start_method": multiprocessing.get_start_method(),
        "labels": {b.key: b.label for b in columns},
        "peers": [b.key for b in columns if b.peer],
        "references": [b.key for b in columns if b.reference],
        "results": results,
        "ratios": ratios,
    }
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=2)
    print(f"raw numbers written to {path}")


def key_list(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in BACKEND_KEYS]
    if not keys:
        raise argparse.ArgumentTypeError(f"no back-end named; choose from {', '.join(BACKEND_KEYS)}")
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown back-end {', '.join(unknown)}; choose from {', '.join(BACKEND_KEYS)}"
        )
    return keys


def peer_list(text: str) -> list[str]:
    if text == "auto":
        return [p.key for p in PEERS.values() if p.installed()]
    if text == "none":
        return []
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys or not set(keys) <= set(PEERS):
        raise argparse.ArgumentTypeError(f"expected auto, none or a comma list of {', '.join(PEERS)}; got {text!r}")
    return keys


FIGURE_KEYS = (
    "startup",
    "latency",
    "apply_async",
    "map",
    "imap",
    "small_maps",
    "uneven",
    "cpu",
    "array",
    "clients",
    "first_scipy",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2, help="pool size (default 2)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions, shorter budget for the peers")
    p.add_argument(
        "--peers",
        type=peer_list,
        default="auto",
        metavar="auto|none|LIST",
        help=f"peers to compare with: auto (default: every installed one), none, or some of {','.join(PEERS)}",
    )
    p.add_argument(
        "--only",
        type=key_list,
        metavar="KEY[,KEY]",
        help=f"run only these back-ends (overrides --peers): {', '.join(BACKEND_KEYS)}",
    )
    p.add_argument("--skip-array", action="store_true", help="skip the 200 MB figure")
    p.add_argument(
        "--figures",
        metavar="KEY[,KEY]",
        help=f"run only these figures: {', '.join(FIGURE_KEYS)} (default: all)",
    )
    p.add_argument("--json", metavar="PATH", help="write raw numbers to PATH")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny sizes, for the test suite
    return p.parse_args(argv)


def export_path() -> None:
    """Let workers that a peer starts (Ray, dask, ipyparallel, loky) import _workloads by name."""
    paths = [HERE, REPO, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = calibrate(make_settings(args))
    export_path()
    columns = select_backends(args.only or ["zpool", "mp", *args.peers])
    figures = [
        Figure("startup", fig_startup, uses_pool=False),
        Figure("latency", fig_latency),
        Figure("apply_async", fig_apply_async),
        Figure("map", fig_map),
        Figure("imap", fig_imap),
        Figure("small_maps", fig_small_maps),
        Figure("uneven", fig_uneven),
        Figure("cpu", fig_cpu),
    ]
    if not args.skip_array:
        figures.append(Figure("array", fig_array, peers=False))
    figures.append(Figure("clients", fig_clients, peers=False))
    figures.append(Figure("first_scipy", fig_first_scipy, uses_pool=False, peers=False))  # last: imports scipy
    if args.figures:
        wanted = {key.strip() for key in args.figures.split(",")}
        unknown = wanted - set(FIGURE_KEYS)
        if unknown:
            print(f"unknown figure(s) {', '.join(sorted(unknown))}; choose from {', '.join(FIGURE_KEYS)}")
            return 2
        figures = [f for f in figures if f.key in wanted]
    rows = [r for r in make_rows(s) if r.figure in {f.key for f in figures}]

    print(
        f"bench_core: processes={s.processes}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
        + ("  [QUICK MODE: fewer repetitions]" if s.quick else "")
        + ("  [SMOKE MODE: tiny sizes, numbers meaningless]" if s.smoke else ""),
        flush=True,
    )
    print(f"back-ends: {', '.join(b.label for b in columns)}", flush=True)
    print(f"CPU task: spin({s.cpu_iterations:,}) takes {s.cpu_single_s * 1e3:.2f} ms here", flush=True)
    results = run_all(figures, columns, s)
    table, ratios = build_table(results, columns, rows)
    print(f"\n{legend(columns)}\n")
    print_table(table)
    notes = [(b.label, f, o["note"]) for b in columns for f, o in results[b.key].items() if o.get("note")]
    if notes:
        print(f"\n* cut to fit the time budget ({s.budget_s:g} s per repetition); rates stay comparable:")
        for label, fig, note in notes:
            print(f"  {label}: {fig} {note}")
    errors: dict[tuple[Backend, str], list[str]] = {}  # the same error in several figures: one line
    for b in columns:
        for fig, outcome in results[b.key].items():
            if "error" in outcome:
                errors.setdefault((b, outcome["error"]), []).append(fig)
    for (backend, message), figs in errors.items():
        print(f"error: {', '.join(figs)} / {backend.label}: {message}")
    if args.json:
        write_json(args.json, s, columns, results, ratios)
    return 1 if any(not backend.peer for backend, _ in errors) else 0


if __name__ == "__main__":
    sys.exit(main())
