"""Two pools on one standalone cluster: how long one pool's small calls wait while the other floods it.

Starts a standalone cluster of its own (in a temporary ``$ZPOOL_HOME``),
attaches a *bulk* pool that submits a long ``map_async`` of short tasks
(one task per item), and a *small* pool that meanwhile makes single calls:
``apply_async(...).get()`` (through the scheduler's queue, where the bulk
tasks wait) and blocking ``apply`` (pushed straight to an engine). Prints
the small pool's round trips on the idle cluster and while the bulk map
runs, and the bulk map's rate with and without the small pool's calls.

The scheduler shares the engines between the clients in turn
(``zpool.controller.tasks.ReadyQueue``): a single task of the small pool is
placed next, not behind the bulk pool's backlog.

Run: ``python benchmarks/bench_fairness.py [--engines 2] [--bulk 20000]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def spin(seconds: float) -> None:
    """Busy for `seconds` (a task that uses its engine's CPU)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def noop(x):
    return x


def timed_calls(call, n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--bulk", type=int, default=20_000, help="tasks in the bulk pool's map")
    parser.add_argument("--task-ms", type=float, default=1.0, help="each bulk task's CPU time")
    parser.add_argument("--calls", type=int, default=30, help="the small pool's calls per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zpool-fair-") as home:
        os.environ["ZPOOL_HOME"] = home
        from zpool import Pool
        from zpool.standalone import start_cluster, stop_cluster

        start_cluster("fairness", args.engines)
        try:
            return run(Pool, args)
        finally:
            stop_cluster("fairness")


def run(Pool, args) -> int:
    small = Pool(cluster="fairness")
    bulk = Pool(cluster="fairness")
    try:
        for pool in (small, bulk):
            pool.map(noop, range(4 * args.engines), chunksize=1)  # warm: connections, function caches
        idle_async = timed_calls(lambda i: small.apply_async(noop, (i,)).get(60), args.calls)
        idle_apply = timed_calls(lambda i: small.apply(noop, (i,)), args.calls)
        seconds = args.task_ms / 1000

        t0 = time.perf_counter()
        bulk.map(spin, [seconds] * (args.bulk // 4), chunksize=1)
        alone_rate = (args.bulk // 4) / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        flood = bulk.map_async(spin, [seconds] * args.bulk, chunksize=1)
        time.sleep(0.2)  # the backlog is queued
        busy_async = timed_calls(lambda i: small.apply_async(noop, (i,)).get(60), args.calls)
        busy_apply = timed_calls(lambda i: small.apply(noop, (i,)), args.calls)
        still_running = not flood.ready()
        flood.get(600)
        shared_rate = args.bulk / (time.perf_counter() - t0)
    finally:
        small.terminate()
        bulk.terminate()
    ms = lambda v: statistics.median(v) * 1000  # noqa: E731
    p90 = lambda v: statistics.quantiles(v, n=10)[-1] * 1000  # noqa: E731
    print(f"bench_fairness: {args.engines} engines, bulk map of {args.bulk:,} tasks of {args.task_ms:g} ms CPU each")
    print(f"{'the small pool, per call':44s} | {'idle cluster':>14s} | {'during the bulk map':>20s} | ratio")
    print("-" * 44 + "-+-" + "-" * 14 + "-+-" + "-" * 20 + "-+------")
    worst = lambda v: max(v) * 1000  # noqa: E731
    for label, idle, busy in (
        ("apply_async(...).get(), median (ms)", idle_async, busy_async),
        ("apply_async(...).get(), p90 (ms)", idle_async, busy_async),
        ("apply_async(...).get(), worst (ms)", idle_async, busy_async),
        ("apply (pushed to an engine), median (ms)", idle_apply, busy_apply),
        ("apply (pushed to an engine), p90 (ms)", idle_apply, busy_apply),
    ):
        f = p90 if "p90" in label else worst if "worst" in label else ms
        print(f"{label:44s} | {f(idle):14.2f} | {f(busy):20.2f} | {f(busy) / f(idle):5.1f}x")
    print(f"bulk map rate alone {alone_rate:,.0f} tasks/s, with the small pool's calls {shared_rate:,.0f} tasks/s")
    print(f"the bulk map was still running when the small pool's calls were done: {still_running}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
