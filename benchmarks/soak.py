"""Soak test: a million tiny tasks through one pool while engines are killed at random (not run in CI).

Checks, at the end, that every task was answered exactly once (its
result, or an error saying why) and that memory stayed flat: the
controller's, the engines' and this process's resident set sizes are
sampled as the tasks go through, and printed as a curve.

* Tasks are ``apply_async`` calls of a tiny function, at most
  ``--outstanding`` of them in flight at a time, each with ``retries``
  (so a task on an engine that is killed runs again elsewhere).
* Every ``--kill-every`` seconds one engine, picked at random, gets
  SIGKILL; the pool starts a replacement.
* Memory is "flat" when, from the first sample after ``--settle`` of the
  tasks (the controller's record window filling up, allocator pools
  warming) to the end, the controller's RSS grows by less than
  ``--flat-mb`` MB, and so does this process's. Engines are replaced as
  they are killed, so their curve is the largest engine RSS in each
  sample.

Run::

    python benchmarks/soak.py                        # 1,000,000 tasks, 2 engines, a kill every 5 s
    python benchmarks/soak.py --tasks 200000 --kill-every 2
    python benchmarks/soak.py --json soak.json

Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from typing import Any

import psutil


def tiny(i: int) -> int:
    return 2 * i + 1


def rss_mb(pid: int) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / 1e6
    except psutil.Error:
        return None


class Tally:
    """What came back for each task: counts per task index, and the outcomes."""

    def __init__(self, n: int) -> None:
        self.answers = bytearray(n)  # how many times task i was answered (capped at 255)
        self.wrong = 0
        self.errors: dict[str, int] = {}
        self.done = 0
        self.lock = threading.Lock()
        self.slots = threading.Semaphore(0)

    def ok(self, i: int, value: int) -> None:
        with self.lock:
            if self.answers[i] < 255:
                self.answers[i] += 1
            if value != tiny(i):
                self.wrong += 1
            self.done += 1
        self.slots.release()

    def failed(self, i: int, exc: BaseException) -> None:
        with self.lock:
            if self.answers[i] < 255:
                self.answers[i] += 1
            name = type(exc).__name__
            self.errors[name] = self.errors.get(name, 0) + 1
            self.done += 1
        self.slots.release()


def killer(pool: Any, every: float, stop: threading.Event, kills: list[int], rng: random.Random) -> None:
    while not stop.wait(every):
        pids = list(pool.queue_status()["engine_pids"].values())
        if not pids:
            continue
        pid = rng.choice(pids)
        try:
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)
        except ProcessLookupError:
            pass


def sample(pool: Any, tally: Tally, started: float) -> dict[str, Any]:
    controller = pool._cluster.proc.pid
    engines = [rss_mb(pid) for pid in pool.queue_status()["engine_pids"].values()]
    return {
        "seconds": round(time.monotonic() - started, 2),
        "answered": tally.done,
        "controller_mb": rss_mb(controller),
        "engine_mb": max((e for e in engines if e is not None), default=None),
        "client_mb": rss_mb(os.getpid()),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--outstanding", type=int, default=20_000, help="most tasks in flight at once")
    p.add_argument("--kill-every", type=float, default=5.0, help="seconds between engine kills; 0: none")
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--samples", type=int, default=20, help="memory samples over the run")
    p.add_argument("--settle", type=float, default=0.2, help="fraction of the tasks before memory must stay flat")
    p.add_argument("--flat-mb", type=float, default=20.0, help="most growth (MB) after settling that counts as flat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import zpool

    rng = random.Random(args.seed)
    tally = Tally(args.tasks)
    for _ in range(args.outstanding):
        tally.slots.release()
    curve: list[dict[str, Any]] = []
    kills: list[int] = []
    stop = threading.Event()
    every = max(1, args.tasks // args.samples)
    print(
        f"soak: {args.tasks} tasks, {args.processes} engines, at most {args.outstanding} in flight,"
        f" retries={args.retries}, an engine killed every {args.kill_every:g} s",
        flush=True,
    )
    with zpool.Pool(args.processes) as pool:
        pool.wait_for_engines(timeout=60)
        started = time.monotonic()
        curve.append(sample(pool, tally, started))
        thread = None
        if args.kill_every > 0:
            thread = threading.Thread(target=killer, args=(pool, args.kill_every, stop, kills, rng), daemon=True)
            thread.start()
        next_sample = every
        for i in range(args.tasks):
            tally.slots.acquire()
            pool.apply_async(
                tiny,
                (i,),
                callback=lambda value, i=i: tally.ok(i, value),
                error_callback=lambda exc, i=i: tally.failed(i, exc),
                retries=args.retries,
            )
            if i + 1 >= next_sample:
                next_sample += every
                curve.append(sample(pool, tally, started))
                point = curve[-1]
                print(
                    f"  {point['seconds']:7.1f} s  submitted {i + 1:>9}  answered {point['answered']:>9}"
                    f"  controller {point['controller_mb']:7.1f} MB  engine {point['engine_mb'] or 0:6.1f} MB"
                    f"  client {point['client_mb']:7.1f} MB  kills {len(kills)}",
                    flush=True,
                )
        deadline = time.monotonic() + 300
        while tally.done < args.tasks and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        elapsed = time.monotonic() - started
        curve.append(sample(pool, tally, started))
    missing = sum(1 for c in tally.answers if c == 0)
    twice = sum(1 for c in tally.answers if c > 1)
    settled = [p for p in curve if p["answered"] >= args.settle * args.tasks] or curve[-1:]

    def growth(key: str) -> float:
        values = [p[key] for p in settled if p[key] is not None]
        return (max(values) - values[0]) if values else 0.0

    controller_growth, client_growth = growth("controller_mb"), growth("client_mb")
    checks = {
        "every task answered": missing == 0,
        "none answered twice": twice == 0,
        "every result right": tally.wrong == 0,
        "controller memory flat": controller_growth < args.flat_mb,
        "client memory flat": client_growth < args.flat_mb,
    }
    print(f"\n{args.tasks} tasks in {elapsed:.1f} s ({args.tasks / elapsed:,.0f} tasks/s), {len(kills)} engines killed")
    print(f"answered: {tally.done}, missing {missing}, twice {twice}, wrong results {tally.wrong}")
    print(f"errors after retries: {tally.errors or 'none'}")
    print(
        f"growth after {args.settle:.0%} of the tasks: controller {controller_growth:+.1f} MB,"
        f" client {client_growth:+.1f} MB (flat: under {args.flat_mb:g} MB)"
    )
    for name, passed in checks.items():
        print(f"  {'ok  ' if passed else 'FAIL'} {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "elapsed_s": elapsed,
                    "kills": len(kills),
                    "errors": tally.errors,
                    "missing": missing,
                    "twice": twice,
                    "curve": curve,
                    "checks": checks,
                },
                f,
                indent=1,
            )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
