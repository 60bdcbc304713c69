"""What a standalone cluster's task database costs, and how fast it answers.

Starts two standalone clusters of its own (in a temporary ``$ZPOOL_HOME``),
one with the task database (the default) and one with ``--no-db``, and
measures on each, in alternating rounds, the same workloads: 10,000
``apply_async`` calls, blocking ``apply`` round trips (the direct path), and
a chunked ``map``; with ``multiprocessing.Pool`` on the same work in the same
run for the ratios. The controller's CPU per task is read from its process
(``psutil``). Then, on the recording cluster: fetching 10,000 results by id
(``get_result``), a query of 10,000 records (``db_query``), and the file's
size per record.

Run: ``python benchmarks/bench_taskdb.py [--engines 2] [--tasks 10000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def noop(x):
    return x


def apply_async_rate(pool, n: int) -> float:
    """Tasks per second of `n` apply_async calls, waited for together."""
    t0 = time.perf_counter()
    results = [pool.apply_async(noop, (i,)) for i in range(n)]
    for r in results:
        r.get(120)
    return n / (time.perf_counter() - t0)


def apply_p50_us(pool, n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        pool.apply(noop, (i,))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def map_rate(pool, n: int) -> float:
    t0 = time.perf_counter()
    pool.map(noop, range(n), chunksize=max(1, n // 400))
    return n / (time.perf_counter() - t0)


def measure(pool, args, controller: psutil.Process | None) -> dict[str, float]:
    cpu0 = controller.cpu_times() if controller else None
    out = {
        "apply_async/s": apply_async_rate(pool, args.tasks),
        "apply p50 us": apply_p50_us(pool, args.tasks // 10),
        "map items/s": map_rate(pool, 40 * args.tasks),
    }
    if controller is not None and cpu0 is not None:
        cpu1 = controller.cpu_times()
        tasks = args.tasks + args.tasks // 10 + 400
        out["controller us/task"] = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / tasks * 1e6
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zpool-db-") as home:
        os.environ["ZPOOL_HOME"] = home
        from zpool import Pool
        from zpool.standalone import start_cluster, stop_cluster

        start_cluster("recording", args.engines)
        start_cluster("plain", args.engines, db=None)
        try:
            return run(Pool, args, home)
        finally:
            stop_cluster("recording")
            stop_cluster("plain")


def run(Pool, args, home: str) -> int:
    from zpool.standalone import cluster_status, state_of

    pools = {"db": Pool(cluster="recording"), "no db": Pool(cluster="plain")}
    controllers = {
        "db": psutil.Process(state_of("recording").controller_pid),
        "no db": psutil.Process(state_of("plain").controller_pid),
    }
    mp = multiprocessing.get_context("fork").Pool(args.engines)
    rows: dict[str, list[dict[str, float]]] = {"db": [], "no db": [], "mp": []}
    try:
        for pool in pools.values():
            pool.map(noop, range(100), chunksize=1)  # warm
        mp.map(noop, range(100), chunksize=1)
        for _ in range(args.rounds):
            for name, pool in pools.items():
                rows[name].append(measure(pool, args, controllers[name]))
            rows["mp"].append(measure(mp, args, None))
        print(f"{args.engines} engines, {args.tasks} tasks, median of {args.rounds} alternating rounds")
        keys = ["apply_async/s", "apply p50 us", "map items/s", "controller us/task"]
        print(f"{'':22}" + "".join(f"{k:>20}" for k in keys))
        med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in rows.items()}
        for name, m in med.items():
            print(f"{name:22}" + "".join(f"{m[k]:>20,.1f}" if k in m else f"{'-':>20}" for k in keys))
        db, plain, ref = med["db"], med["no db"], med["mp"]
        print(
            f"db / no db: apply_async {db['apply_async/s'] / plain['apply_async/s']:.2f}x the rate,"
            f" apply {db['apply p50 us'] / plain['apply p50 us']:.2f}x the time,"
            f" map {db['map items/s'] / plain['map items/s']:.2f}x the rate,"
            f" controller CPU per task +{db['controller us/task'] - plain['controller us/task']:.1f} us"
        )
        print(
            f"db / mp: apply_async {db['apply_async/s'] / ref['apply_async/s']:.2f}x the rate,"
            f" apply {db['apply p50 us'] / ref['apply p50 us']:.2f}x the time,"
            f" map {db['map items/s'] / ref['map items/s']:.2f}x the rate"
        )
        recording = pools["db"]
        submitted = [recording.apply_async(noop, (i,)) for i in range(args.tasks)]
        for r in submitted:
            r.get(120)
        ids = [r.msg_ids[0] for r in submitted]
        t0 = time.perf_counter()
        fetched = recording.get_result(ids).get(120)
        fetch_s = time.perf_counter() - t0
        assert fetched == list(range(args.tasks))
        t0 = time.perf_counter()
        records = recording.db_query(ids=ids)
        query_s = time.perf_counter() - t0
        assert len(records) == args.tasks
        path = os.path.join(home, "clusters", "recording", "tasks.db")
        size = sum(os.path.getsize(path + ext) for ext in ("", "-wal") if os.path.exists(path + ext))
        n_records = cluster_status("recording")["db"]["records"]
        print(
            f"get_result of {args.tasks} recorded tasks: {fetch_s * 1000:.0f} ms ({args.tasks / fetch_s:,.0f}/s);"
            f" db_query of {args.tasks} records: {query_s * 1000:.0f} ms"
        )
        print(f"tasks.db (+ WAL): {size / 2**20:.1f} MiB for {n_records:,} records, {size / n_records:.0f} bytes each")
    finally:
        for pool in pools.values():
            pool.terminate()
        mp.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
