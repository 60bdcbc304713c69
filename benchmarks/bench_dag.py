"""Scheduling throughput: independent tiny tasks, and a task graph with dependencies.

Figures (``processes=2`` unless ``--processes N``), tasks per second from the
first submission to the last result:

1. 10,000 independent ``apply_async(noop)``, on zpool and on
   ``multiprocessing.Pool`` (ratio > 1: zpool faster);
2. a random DAG of 10,000 tiny tasks with about 40,000 edges (each task
   depends on up to 4 earlier ones, chosen at random), submitted in
   topological order with ``after=``; zpool only (``multiprocessing.Pool``
   has no dependencies). The schedule is checked: every task started after
   its predecessors completed;
3. the same DAG's controller cost: CPU seconds the controller process spent,
   per task;
4. the controller's memory per outstanding task: its resident set size
   before and after 50,000 tiny tasks are submitted that cannot run yet,
   divided by their number. Twice: tasks that wait for a dependency (on a
   long task), and ready tasks queued in the scheduler (``hwm=1``, both
   engines busy with a long task).

Run::

    python benchmarks/bench_dag.py
    python benchmarks/bench_dag.py --tasks 20000 --edges 4
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _workloads import noop, sleep_for  # noqa: E402


def independent(pool, n: int, timeout: float = 300.0) -> float:
    start = time.perf_counter()
    handles = [pool.apply_async(noop, (i,)) for i in range(n)]
    for h in handles:
        h.get(timeout)
    return n / (time.perf_counter() - start)


def random_parents(n: int, edges_per_task: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    parents: list[list[int]] = [[]]
    for i in range(1, n):
        k = min(i, edges_per_task)
        parents.append(sorted(rng.sample(range(max(0, i - 200), i), min(k, i - max(0, i - 200)))))
    return parents


def dag(pool, parents: list[list[int]], timeout: float = 300.0) -> tuple[float, int]:
    start = time.perf_counter()
    results = []
    for deps in parents:
        results.append(pool.apply_async(noop, (0,), after=[results[p] for p in deps] if deps else None))
    for r in results:
        r.get(timeout)
    rate = len(parents) / (time.perf_counter() - start)
    checked = 0
    for child, deps in enumerate(parents):
        started = results[child].metadata.started
        for p in deps:
            if started < results[p].metadata.completed:
                raise AssertionError(f"task {child} started before its predecessor {p} completed")
            checked += 1
    return rate, checked


def controller_cpu(pool) -> float:
    import psutil

    pids = set(pool.queue_status()["engine_pids"].values())
    parent = psutil.Process(next(iter(pids))).parent()
    times = parent.cpu_times()
    return times.user + times.system


def controller_process(pool):
    import psutil

    pids = set(pool.queue_status()["engine_pids"].values())
    return psutil.Process(next(iter(pids))).parent()


def memory_per_task(pool, n: int, waiting: bool, timeout: float = 120.0) -> float:
    """Bytes of controller RSS per task of `n` outstanding ones (see figure 4)."""
    controller = controller_process(pool)
    blockers = [pool.apply_async(sleep_for, (timeout,)) for _ in range(1 if waiting else 2)]
    deadline = time.monotonic() + timeout
    while sum(e["running"] for e in pool.queue_status()["engines"].values()) < len(blockers):
        if time.monotonic() > deadline:
            raise RuntimeError("the blocking tasks never started")
        time.sleep(0.01)
    before = controller.memory_info().rss
    flags = {"after": blockers} if waiting else {}
    pending = [pool.apply_async(noop, (i,), **flags) for i in range(n)]
    key = "waiting" if waiting else "unassigned"
    while pool.queue_status()[key] < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the controller never held the {n:,} tasks")
        time.sleep(0.05)
    per_task = (controller.memory_info().rss - before) / n
    pool.abort(blockers + pending, interrupt=True)
    for ar in blockers + pending:
        ar.wait(timeout)
    return per_task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--edges", type=int, default=4, help="dependencies per task (at most)")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)

    import multiprocessing

    import zpool

    print(f"bench_dag: processes={args.processes}, {args.tasks:,} tasks, Python {sys.version.split()[0]}")
    with multiprocessing.Pool(args.processes) as mp_pool:
        independent(mp_pool, 1000)
        mp_rate = statistics.median(independent(mp_pool, args.tasks) for _ in range(args.reps))
    parents = random_parents(args.tasks, args.edges, seed=1)
    n_edges = sum(len(d) for d in parents)
    with zpool.Pool(args.processes) as pool:
        pool.wait_for_engines()
        independent(pool, 1000)
        zp_rate = statistics.median(independent(pool, args.tasks) for _ in range(args.reps))
        dag_rates = []
        cpu_per_task = []
        for _ in range(args.reps):
            before = controller_cpu(pool)
            rate, checked = dag(pool, parents)
            cpu_per_task.append((controller_cpu(pool) - before) / args.tasks)
            dag_rates.append(rate)
    print(
        f"1. {args.tasks:,} independent apply_async: zpool {zp_rate:,.0f} tasks/s,"
        f" multiprocessing {mp_rate:,.0f} tasks/s, ratio {zp_rate / mp_rate:.2f}x"
    )
    print(
        f"2. DAG of {args.tasks:,} tasks, {n_edges:,} edges: {statistics.median(dag_rates):,.0f} tasks/s"
        f" (schedule checked: {checked:,} edges)"
    )
    print(f"3. controller CPU per DAG task: {statistics.median(cpu_per_task) * 1e6:.0f} us")
    n = 50_000
    with zpool.Pool(args.processes) as pool:
        pool.wait_for_engines()
        waiting = memory_per_task(pool, n, waiting=True)
    with zpool.Pool(args.processes, hwm=1) as pool:
        pool.wait_for_engines()
        queued = memory_per_task(pool, n, waiting=False)
    print(
        f"4. controller memory per outstanding task ({n:,} tasks): {waiting:,.0f} bytes waiting for a dependency,"
        f" {queued:,.0f} bytes queued ready"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
