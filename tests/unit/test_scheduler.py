"""Placement rules (zpool.controller.placement.choose_engine) and the Scheduler's bookkeeping, without sockets."""

from __future__ import annotations

import collections
import random

import pytest

from zpool.controller.placement import ADAPTIVE_MAX, choose_engine
from zpool.controller.scheduler import FAILED_UNPLACED, SCHEMES, EngineSlot, Scheduler, Task
from zpool.controller.tasks import ReadyQueue

UNKNOWN_SCHEME = r"^unknown scheme 'fastest'; choose one of leastload, lru, plainrandom, twobin, weighted$"


def slot(engine_id: int, load: int = 0, last_used: int = -1) -> EngineSlot:
    s = EngineSlot(engine_id, b"engine-%d" % engine_id, last_used=last_used)
    for k in range(load):
        s.outstanding[f"busy-{engine_id}-{k}"] = Task(f"busy-{engine_id}-{k}", b"client", [])
    return s


def tasks(n: int, prefix: str = "t") -> list[Task]:
    return [Task(f"{prefix}{i}", b"client", [b"payload"]) for i in range(n)]


def pick_counts(scheme: str, candidates: list[EngineSlot], n: int = 10_000, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    counts = collections.Counter(choose_engine(scheme, candidates, rng).engine_id for _ in range(n))
    return [counts[e.engine_id] for e in candidates]


def ids(batches: dict[EngineSlot, list[Task]]) -> dict[int, list[str]]:
    return {e.engine_id: [t.task_id for t in batch] for e, batch in batches.items()}


# -- choose_engine -----------------------------------------------------------


def test_schemes_listed():
    assert SCHEMES == ("leastload", "lru", "plainrandom", "twobin", "weighted")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_single_candidate(scheme):
    only = slot(0, load=5, last_used=99)
    assert choose_engine(scheme, [only], random.Random(0)) is only


def test_leastload_picks_fewest_outstanding():
    engines = [slot(0, load=2, last_used=0), slot(1, load=0, last_used=9), slot(2, load=1, last_used=1)]
    assert choose_engine("leastload", engines, random.Random(0)) is engines[1]


def test_leastload_ties_go_to_least_recently_used():
    engines = [slot(0, load=1, last_used=0), slot(1, load=0, last_used=7), slot(2, load=0, last_used=3)]
    assert choose_engine("leastload", engines, random.Random(0)) is engines[2]


def test_lru_ignores_load():
    engines = [slot(0, load=0, last_used=4), slot(1, load=5, last_used=1), slot(2, load=0, last_used=9)]
    assert choose_engine("lru", engines, random.Random(0)) is engines[1]


def test_plainrandom_is_roughly_uniform():
    engines = [slot(i, load=i, last_used=-i) for i in range(4)]
    counts = pick_counts("plainrandom", engines)
    assert sum(counts) == 10_000
    for c in counts:
        assert 2250 < c < 2750, counts


def test_plainrandom_is_reproducible_with_a_seed():
    engines = [slot(i) for i in range(5)]
    rng_a, rng_b = random.Random(42), random.Random(42)
    a = [choose_engine("plainrandom", engines, rng_a).engine_id for _ in range(200)]
    b = [choose_engine("plainrandom", engines, rng_b).engine_id for _ in range(200)]
    assert a == b
    assert set(a) == {0, 1, 2, 3, 4}


def test_twobin_returns_lru_of_its_two_samples():
    engines = [slot(i, last_used=lu) for i, lu in enumerate([5, 2, 8, 0, 3])]
    rng, mirror = random.Random(3), random.Random(3)
    for _ in range(500):
        a, b = mirror.sample(engines, 2)
        expected = a if a.last_used <= b.last_used else b
        assert choose_engine("twobin", engines, rng) is expected


def test_twobin_avoids_the_most_recently_used():
    # Of three engines, the most recent always loses its pair; the oldest always wins its.
    engines = [slot(0, last_used=0), slot(1, last_used=1), slot(2, last_used=2)]
    oldest, middle, newest = pick_counts("twobin", engines)
    assert newest == 0
    assert 6300 < oldest < 7000  # 2/3
    assert 3000 < middle < 3700  # 1/3


def test_twobin_ignores_load():
    engines = [slot(0, load=9, last_used=0), slot(1, load=0, last_used=1), slot(2, load=0, last_used=2)]
    assert pick_counts("twobin", engines)[0] > 6000


def test_weighted_prefers_less_loaded():
    engines = [slot(0, load=0), slot(1, load=4), slot(2, load=9)]
    idle, busy, busiest = pick_counts("weighted", engines)
    assert busiest == 0  # it always loses against its partner
    assert idle > 9000  # ~97%
    assert busy > 0


def test_weighted_equal_loads_is_roughly_uniform():
    engines = [slot(i, load=2) for i in range(3)]
    for c in pick_counts("weighted", engines, n=9000):
        assert 2700 < c < 3300


def test_unknown_scheme_rejected():
    engines = [slot(0), slot(1)]
    with pytest.raises(ValueError, match=UNKNOWN_SCHEME):
        choose_engine("fastest", engines, random.Random(0))
    with pytest.raises(ValueError, match=UNKNOWN_SCHEME):
        Scheduler("fastest")


# -- Scheduler ---------------------------------------------------------------


def make_scheduler(n_engines: int, **kwargs) -> Scheduler:
    s = Scheduler(**kwargs)
    for i in range(n_engines):
        s.add_engine(i, b"engine-%d" % i)
    return s


def test_hwm_1_places_one_task_per_engine():
    s = make_scheduler(3, hwm=1)
    s.submit(tasks(10))
    batches = s.assign()
    assert ids(batches) == {0: ["t0"], 1: ["t1"], 2: ["t2"]}
    assert len(s.queue) == 7
    assert s.assign() == {}

    engine1 = s.engines[b"engine-1"]
    assert s.finish(engine1, "t1", ok=True, run_s=0.5).task_id == "t1"
    assert ids(s.assign()) == {1: ["t3"]}
    assert len(s.queue) == 6


def test_hwm_0_places_everything():
    s = make_scheduler(2, hwm=0)
    s.submit(tasks(9))
    batches = s.assign()
    assert sum(len(b) for b in batches.values()) == 9
    assert not s.queue
    assert sorted(e.load for e in s.engines.values()) == [4, 5]


def test_hwm_3_caps_each_engine():
    s = make_scheduler(2, hwm=3)
    s.submit(tasks(10))
    s.assign()
    assert [e.load for e in s.engines.values()] == [3, 3]
    assert len(s.queue) == 4


def test_assigned_tasks_know_their_engine():
    s = make_scheduler(2, hwm=0)
    s.submit(tasks(4))
    for engine, batch in s.assign().items():
        for task in batch:
            assert task.engine is engine
            assert engine.outstanding[task.task_id] is task


def test_leastload_spreads_a_burst():
    s = make_scheduler(4, hwm=0, scheme="leastload")
    s.submit(tasks(8))
    assert ids(s.assign()) == {0: ["t0", "t4"], 1: ["t1", "t5"], 2: ["t2", "t6"], 3: ["t3", "t7"]}


def test_leastload_fills_the_idle_engine_first():
    s = make_scheduler(3, hwm=0)
    s.submit(tasks(3, "a"))
    s.assign()
    engine0 = s.engines[b"engine-0"]
    s.finish(engine0, "a0", ok=True, run_s=0.1)
    s.submit(tasks(2, "b"))
    # engine 0 is idle; then all three hold one and engine 1 is the least recently used.
    assert ids(s.assign()) == {0: ["b0"], 1: ["b1"]}


def test_adaptive_hwm_starts_at_two_and_grows_for_tiny_tasks():
    s = make_scheduler(1, hwm=None)
    assert s.limit() == 2  # one running, the next waiting on the engine
    s.submit(tasks(50))
    assert ids(s.assign()) == {0: ["t0", "t1"]}

    engine = s.engines[b"engine-0"]
    s.finish(engine, "t0", ok=True, run_s=1e-4)  # 1 + 0.002 / 1e-4
    assert s.limit() == 21
    assert len(s.assign()[engine]) == 20
    assert len(s.queue) == 28

    s.finish(engine, "t1", ok=True, run_s=1e-9)
    assert 21 < s.limit() <= ADAPTIVE_MAX


def test_adaptive_hwm_capped():
    s = make_scheduler(1, hwm=None)
    engine = s.engines[b"engine-0"]
    s.submit(tasks(1))
    s.assign()
    s.finish(engine, "t0", ok=True, run_s=0.0)
    assert s.limit() == ADAPTIVE_MAX


def test_adaptive_hwm_shrinks_back_for_long_tasks():
    s = make_scheduler(1, hwm=None)
    engine = s.engines[b"engine-0"]
    s.submit(tasks(20))
    s.assign()
    s.finish(engine, "t0", ok=True, run_s=1e-5)
    assert s.limit() > 100
    placed = s.assign()[engine]
    for task in placed[:3]:
        s.finish(engine, task.task_id, ok=True, run_s=2.0)
    assert s.limit() == 2  # never below: the next task waits on the engine, recall keeps the balance
    assert s.assign() == {}  # the engine still holds more than two


def test_negative_run_time_is_ignored():
    s = make_scheduler(1, hwm=None)
    engine = s.engines[b"engine-0"]
    s.submit(tasks(1))
    s.assign()
    assert s.finish(engine, "t0", ok=False, run_s=-1.0).task_id == "t0"
    assert s.limit() == 2  # as before any task ran
    assert engine.failed == 1


def test_finish_unknown_task_returns_none():
    s = make_scheduler(2, hwm=0)
    s.submit(tasks(2))
    s.assign()
    engine0, engine1 = s.engines.values()
    assert s.finish(engine0, "nope", ok=True, run_s=0.1) is None
    assert s.finish(engine0, "t1", ok=True, run_s=0.1) is None  # held by engine 1
    assert (engine0.completed, engine0.failed, engine0.load) == (0, 0, 1)
    assert s.finish(engine1, "t1", ok=True, run_s=0.1).task_id == "t1"
    assert s.finish(engine1, "t1", ok=True, run_s=0.1) is None  # already finished
    assert engine1.completed == 1


def test_remove_engine_returns_stranded_tasks():
    s = make_scheduler(2, hwm=0)
    s.submit(tasks(6))
    s.assign()
    stranded = s.remove_engine(b"engine-1")
    assert sorted(t.task_id for t in stranded) == ["t1", "t3", "t5"]
    assert list(s.engines) == [b"engine-0"]
    assert s.remove_engine(b"engine-1") == []
    assert s.remove_engine(b"never-there") == []

    # They are recorded as failed on engine 1, and their ids stay taken.
    assert {task_id: s.done[task_id] for task_id in ("t1", "t3", "t5")} == {"t1": -3, "t3": -3, "t5": -3}
    s.submit([Task("t1", b"client", [b"again"])])
    assert [(t.task_id, ename) for t, ename, _, _ in s.take_failures()] == [("t1", "InvalidDependency")]


def test_assign_without_engines_keeps_the_queue():
    s = Scheduler(hwm=0)
    s.submit(tasks(3))
    assert s.assign() == {}
    assert len(s.queue) == 3


def test_drop_where():
    s = Scheduler()
    s.submit(tasks(5))
    dropped = s.drop_where(lambda t: t.task_id in {"t1", "t3"})
    assert [t.task_id for t in dropped] == ["t1", "t3"]
    assert sorted(t.task_id for t in s._ready_tasks()) == ["t0", "t2", "t4"]  # dropped ones are failed
    assert {s.done["t1"], s.done["t3"]} == {FAILED_UNPLACED}


def test_status_counts():
    s = make_scheduler(2, hwm=1)
    s.submit(tasks(5))
    s.assign()
    engine0, engine1 = s.engines.values()
    s.finish(engine0, "t0", ok=True, run_s=0.5)
    s.finish(engine1, "t1", ok=False, run_s=0.5)
    s.assign()
    s.finish(engine0, "t2", ok=True, run_s=0.5)
    assert s.status() == {
        "engines": {
            "0": {"queue": 0, "running": 0, "queued": 0, "completed": 2, "failed": 0, "pinned": 0},
            "1": {"queue": 1, "running": 1, "queued": 0, "completed": 0, "failed": 1, "pinned": 0},
        },
        "unassigned": 1,
        "waiting": 0,
        "limit": 1,
    }


# -- recall: queued tasks come back for idle engines --------------------------------


def _two_engines_one_loaded(n_tasks: int = 4) -> tuple[Scheduler, EngineSlot]:
    """Engine 0 (returned) holds `n_tasks` (placed on it directly); engine 1 holds none."""
    s = make_scheduler(2, hwm=0)
    busy = s.by_id[0]
    s.submit(tasks(n_tasks))
    while s.queue:
        s._place(s.queue.popleft(), busy, {})
    return s, busy


def test_recall_asks_the_busy_engine_for_half_of_its_queue_beyond_the_running_task():
    s, busy = _two_engines_one_loaded(5)
    asks = s.recalls()
    assert asks == {busy: ["t3", "t4"]}  # of t1..t4 queued behind t0: the last placed half
    assert busy.recalling == {"t3", "t4"}
    assert s.recalls() == {}  # one request at a time


def test_recall_never_asks_for_the_running_task_nor_while_work_waits():
    s, _ = _two_engines_one_loaded(1)
    assert s.recalls() == {}  # t0 alone: it runs
    s, _ = _two_engines_one_loaded(3)
    s.submit(tasks(1, prefix="new"))
    s.assign()  # the idle engine takes the new task instead
    assert s.recalls() == {}


def test_recall_leaves_restricted_direct_and_aborted_tasks_alone():
    s, busy = _two_engines_one_loaded(2)
    only_here = Task("pinned", b"client", [b"p"], {"targets": [0]})
    s.submit([only_here])
    s.assign()
    assert list(busy.outstanding) == ["t0", "t1", "pinned"]
    s.abort(["t1"])  # placed: marked, the engine is told
    assert s.recalls() == {}


def test_recalled_tasks_go_first_in_line_to_the_idle_engine():
    s, busy = _two_engines_one_loaded(5)
    busy.budget = 3  # (maxtasksperchild)
    s.recalls()
    s.submit(tasks(1, prefix="later"))
    assert s.recalled(busy, ["t4", "t3", "stranger"], ["t3", "t4"]) == 2
    assert busy.recalling == set()
    assert list(busy.outstanding) == ["t0", "t1", "t2"]
    assert busy.budget == 5  # what it gave back it may still be given
    batches = s.assign()
    assert ids(batches)[1][:2] == ["t3", "t4"]  # in their first order, ahead of the newer task


def test_recall_answered_after_the_engine_started_one_keeps_it_there():
    s, busy = _two_engines_one_loaded(3)
    s.recalls()  # asks for t2
    assert s.finish(busy, "t2", ok=True, run_s=0.01) is not None  # it ran before the request arrived
    assert busy.recalling == set()
    assert s.recalled(busy, [], ["t2"]) == 0
    assert s.done["t2"] == 0


def test_a_task_aborted_while_recalled_fails_instead_of_running_elsewhere():
    s, busy = _two_engines_one_loaded(3)
    assert s.recalls() == {busy: ["t2"]}
    aborted, placed = s.abort(["t2"])
    assert (aborted, placed) == (0, {busy: ["t2"]})
    assert s.recalled(busy, ["t2"], ["t2"]) == 0
    failures = s.take_failures()
    assert [(t.task_id, ename) for t, ename, _, _ in failures] == [("t2", "TaskAborted")]
    assert s.assign() == {}


def test_adaptive_limit_keeps_a_task_waiting_behind_long_ones():
    s = make_scheduler(1, hwm=None)
    engine = s.by_id[0]
    s.submit(tasks(5))
    s.assign()
    s.finish(engine, "t0", ok=True, run_s=5.0)
    assert s.limit() == 2
    assert ids(s.assign()) == {0: ["t2"]}


def test_an_abort_that_overtakes_its_task_fails_the_task_as_it_arrives():
    # A blocking call's task and its abort travel on two connections: the abort may come first.
    s = make_scheduler(1)
    assert s.abort(["late"]) == (0, {})
    late, other = Task("late", b"client", [b"p"]), Task("other", b"client", [b"p"])
    s.submit([late, other])
    failures = s.take_failures()
    assert [(t.task_id, ename) for t, ename, _, _ in failures] == [("late", "TaskAborted")]
    assert s.done["late"] == FAILED_UNPLACED
    assert ids(s.assign()) == {0: ["other"]}
    s.submit([Task("late2", b"client", [b"p"])])
    assert s.take_failures() == []  # remembered once, for that id only


def test_aborts_ahead_are_bounded():
    from zpool.controller import records as module

    clock = [0.0]
    s = Scheduler(clock=lambda: clock[0])
    for i in range(module.ABORTED_AHEAD_MAX + 10):
        s.abort([f"x{i}"])
    assert len(s.records.aborted_ahead) == module.ABORTED_AHEAD_MAX
    clock[0] += module.ABORTED_AHEAD_S + 1
    s.abort(["fresh"])
    assert list(s.records.aborted_ahead) == ["fresh"]


# -- recall: the engine's answers, budgets, load-blind schemes --------------------


def _task(task_id: str, **flags) -> Task:
    """A task with scheduling `flags` (retries=...)."""
    return Task(task_id, b"client", [b"payload"], flags or None)


def _two_engines(**kwargs) -> tuple[Scheduler, EngineSlot, EngineSlot]:
    """A leastload scheduler with hwm=2 and its two engines."""
    s = Scheduler("leastload", hwm=2, **kwargs)
    return s, s.add_engine(0, b"e0"), s.add_engine(1, b"e1")


def test_recall_gives_back_queued_task_to_idle_engine():
    s, e0, e1 = _two_engines()
    s.submit([_task("A"), _task("F"), _task("X")])
    placed = s.assign()
    assert [t.task_id for t in placed[e0]] == ["A", "X"] and [t.task_id for t in placed[e1]] == ["F"]
    s.finish(e1, "F", True, 0.5)
    assert s.assign() == {}
    assert s.recalls() == {e0: ["X"]}
    assert s.recalls() == {}  # one request at a time
    assert s.recalled(e0, ["X"], ["X"]) == 1
    assert not e0.recalling and "X" not in e0.outstanding
    assert {slot: [t.task_id for t in ts] for slot, ts in s.assign().items()} == {e1: ["X"]}


def test_recall_restores_maxtasksperchild_budget():
    s = Scheduler("leastload", hwm=2)
    e0, e1 = s.add_engine(0, b"e0", budget=2), s.add_engine(1, b"e1", budget=2)
    s.submit([_task("A"), _task("F"), _task("X")])
    s.assign()
    assert e0.budget == 0
    s.finish(e1, "F", True, 0.5)
    s.assign()
    assert s.recalls() == {e0: ["X"]}
    s.recalled(e0, ["X"], ["X"])
    assert e0.budget == 1 and e1.budget == 1
    s.assign()
    assert "X" in e1.outstanding and e1.budget == 0


def test_a_stale_recall_reply_naming_a_retried_task_puts_it_back_in_the_queue():
    s, e0, e1 = _two_engines()
    s.submit([_task("A"), _task("F"), _task("X", retries=1)])
    s.assign()  # A, X -> e0; F -> e1
    s.finish(e1, "F", True, 0.5)
    s.assign()
    assert s.recalls() == {e0: ["X"]}  # the hub sends recall_request(ids=[X]) to e0's heartbeat socket
    # Before e0's heartbeat thread reads it: e1 gets new work, and on e0 A runs and X runs and fails.
    s.submit([_task("G1"), _task("G2")])
    s.assign()  # both to e1 (e0 is full)
    s.finish(e0, "A", True, 0.5)
    retried = s.finish(e0, "X", False, 0.5)
    assert retried is not None and not retried.final
    placed = s.assign()
    assert [t.task_id for t in placed[e0]] == ["X"]  # the retry goes to e0: e1 has no room
    # Now e0's heartbeat thread handles the old request: the retry of X is queued there, not started: it gives it
    # back (Engine.give_back takes every queued task whose id was asked for) and answers so.
    s.recalled(e0, ["X"], ["X"])
    # The engine no longer holds X: the scheduler must not either, or nobody ever runs or answers it.
    assert "X" not in e0.outstanding
    assert "X" in {t.task_id for t in s._ready_tasks()}


def test_recall_reply_with_unasked_or_foreign_ids_is_ignored():
    s, e0, e1 = _two_engines()
    s.submit([_task("A"), _task("F"), _task("X"), _task("Y")])
    s.assign()  # A, X -> e0; F, Y -> e1
    # Ids given back but not asked for, and ids the engine does not hold (another's, or unknown), change nothing.
    assert s.recalled(e0, ["X", "Y", "nope"], ["Y", "nope"]) == 0
    assert set(e0.outstanding) == {"A", "X"} and set(e1.outstanding) == {"F", "Y"}


def test_recall_reply_after_the_request_timed_out_still_counts():
    s, e0, e1 = _two_engines(clock=lambda: now[0])
    now = [0.0]
    s.submit([_task("A"), _task("F"), _task("X")])
    s.assign()  # A, X -> e0; F -> e1
    s.finish(e1, "F", True, 0.5)
    s.assign()
    assert s.recalls() == {e0: ["X"]}
    assert s.recalls() == {}  # still awaiting the answer
    now[0] += 5.0  # no answer (an engine in C code holding the GIL): the request no longer blocks others
    assert s.recalls() == {e0: ["X"]}  # asked again
    # The late answer: X was dropped by the engine, so it is ready again, not lost.
    assert s.recalled(e0, ["X"], ["X"]) == 1
    assert "X" not in e0.outstanding and "X" in {t.task_id for t in s._ready_tasks()}


def test_no_recall_under_load_blind_schemes():
    for scheme in ("lru", "plainrandom", "twobin"):
        s = Scheduler(scheme, hwm=2, seed=1)
        e0, e1 = s.add_engine(0, b"e0"), s.add_engine(1, b"e1")
        s.submit([_task("A"), _task("B"), _task("C"), _task("D")])
        s.assign()
        for slot in (e0, e1):
            if len(slot.outstanding) < 2:
                for task_id in list(slot.outstanding):
                    s.finish(slot, task_id, True, 0.5)
        assert s.recalls() == {}


# -- an engine's death, knowing which task it was running (its run slot) --------------------------------------


@pytest.mark.parametrize(
    "started, failed, placed_again",
    [
        ("t3", ["t1", "t3"], ["t5"]),  # it ran t1 (reply lost) and died in t3; t5 never started
        ("t1", ["t1"], ["t3", "t5"]),
        ("", [], ["t1", "t3", "t5"]),  # it had started none
        ("t0", [], ["t1", "t3", "t5"]),  # its last start was answered already: every held task waited behind it
        (None, ["t1", "t3", "t5"], []),  # unknown: every task it held fails, as without a run slot
    ],
)
def test_tasks_queued_behind_the_one_an_engine_died_in_are_placed_again(started, failed, placed_again):
    s = make_scheduler(2, hwm=0)
    s.submit(tasks(6))
    s.assign()  # engine 1 holds t1, t3, t5, in that order
    stranded = s.remove_engine(b"engine-1", "died from SIGSEGV", started)
    assert [t.task_id for t in stranded] == failed
    assert sorted(t.task_id for t in s.queue) == placed_again  # waiting for an engine, retries untouched
    assert all(task_id not in s.done for task_id in placed_again)
    assert ids(s.assign()) == ({0: placed_again} if placed_again else {})


# -- pushed tasks (the direct path) -------------------------------------------


def test_pushed_tasks_count_as_placed_and_are_recorded_when_answered():
    s = make_scheduler(2)
    engine = s.engines[b"engine-0"]
    s.adopt(engine, tasks(3, "p"))
    assert [t.pushed for t in engine.outstanding.values()] == [True] * 3
    assert s.status()["engines"]["0"]["queue"] == 3 and s.queued() == 0
    task = s.finish(engine, "p0", ok=True, run_s=0.001)
    assert task is not None and task.final and task.pushed and s.done["p0"] >= 0
    # A pushed task whose functional dependency is unmet there (@require) runs elsewhere, placed by the controller.
    task = s.finish(engine, "p1", ok=False, run_s=0.001, unmet=True)
    assert task is not None and not task.final and not task.pushed and ids(s.assign()) == {1: ["p1"]}


def test_pushed_tasks_recalled_for_an_idle_engine_go_the_controllers_way():
    s = make_scheduler(2)
    busy = s.engines[b"engine-0"]
    s.adopt(busy, tasks(4, "p"))
    asks = s.recalls()
    assert ids({slot: [s.live[i] for i in task_ids] for slot, task_ids in asks.items()}) == {0: ["p3"]}
    assert s.recalled(busy, ["p3"], ["p3"]) == 1
    placed = s.assign()
    assert ids(placed) == {1: ["p3"]} and not any(t.pushed for t in placed[s.engines[b"engine-1"]])


def test_pushed_tasks_of_a_dead_engine_fail_or_run_elsewhere_as_placed_ones_do():
    s = make_scheduler(2)
    s.adopt(s.engines[b"engine-0"], tasks(3, "p"))
    stranded = s.remove_engine(b"engine-0", "died from SIGKILL", started="p0")
    assert [t.task_id for t in stranded] == ["p0"]  # it ran there
    assert ids(s.assign()) == {1: ["p1", "p2"]}  # never started: placed again, by the controller


def test_a_pushed_task_aborted_before_it_was_known_is_marked_to_be_given_back():
    s = make_scheduler(1)
    assert s.abort(["p0"]) == (0, {})  # not known yet: remembered
    s.adopt(s.engines[b"engine-0"], tasks(2, "p"))
    assert s.live["p0"].abort_asked and not s.live["p1"].abort_asked


def test_a_pushed_task_reusing_a_live_id_fails():
    s = make_scheduler(1)
    s.submit(tasks(1, "p"))
    s.adopt(s.engines[b"engine-0"], tasks(1, "p"))
    (failure,) = s.take_failures()
    assert failure[1].value == "InvalidDependency" and "already in use" in failure[2]


# -- sharing between clients -----------------------------------------------------------------


def client_tasks(client: bytes, n: int) -> list[Task]:
    return [Task(f"{client.decode()}{i}", client, [b"payload"]) for i in range(n)]


def test_the_ready_queue_takes_the_clients_in_turn_each_in_its_order():
    queue = ReadyQueue()
    for task in client_tasks(b"a", 4) + client_tasks(b"b", 2) + client_tasks(b"c", 1):
        queue.append(task)
    # A client with nothing queued takes the next turn: the last to come is first.
    assert len(queue) == 7 and [t.task_id for t in queue] == ["c0", "b0", "b1", "a0", "a1", "a2", "a3"]
    taken = [queue.popleft().task_id for _ in range(7)]
    assert taken == ["c0", "b0", "a0", "b1", "a1", "a2", "a3"]
    assert not queue and len(queue) == 0
    with pytest.raises(IndexError):
        queue.popleft()


def test_the_ready_queue_of_one_client_is_a_fifo_and_given_back_tasks_go_first():
    queue = ReadyQueue()
    for task in client_tasks(b"a", 3):
        queue.append(task)
    back = [Task("x0", b"x", []), Task("a9", b"a", [])]
    queue.extendleft(reversed(back))  # as deque.extendleft: back's order, ahead of everything
    assert [queue.popleft().task_id for _ in range(5)] == ["x0", "a9", "a0", "a1", "a2"]


def test_a_clients_single_task_is_placed_before_another_clients_long_backlog():
    s = make_scheduler(1, hwm=1)
    s.submit(client_tasks(b"big", 1000))
    assert ids(s.assign()) == {0: ["big0"]}
    s.submit(client_tasks(b"small", 1))
    engine = s.by_id[0]
    s.finish(engine, "big0", True, 0.01)
    assert ids(s.assign()) == {0: ["small0"]}  # not behind the 999 others
    s.finish(engine, "small0", True, 0.01)
    assert ids(s.assign()) == {0: ["big1"]}


# -- leastload through a heap, from HEAP_MIN_ENGINES engines --------------------------------


def _run_leastload(n_engines: int, seed: int, **settings) -> list[dict[int, list[str]]]:
    """A random run (submissions, replies, failures with retries, a clock): what each assign() placed."""
    rng = random.Random(seed)
    now = [0.0]
    s = Scheduler("leastload", seed=0, clock=lambda: now[0], **settings)
    for i in range(n_engines):
        s.add_engine(i, b"engine-%d" % i)
    placed = []
    count = 0
    for _ in range(60):
        batch = []
        for _ in range(rng.randrange(0, 3 * n_engines)):
            batch.append(_task(f"t{count}", retries=1) if rng.random() < 0.2 else _task(f"t{count}"))
            count += 1
        s.submit(batch)
        placed.append(ids(s.assign()))
        for slot in list(s.engines.values()):
            for task_id in list(slot.outstanding):
                if rng.random() < 0.4:
                    s.finish(slot, task_id, ok=rng.random() < 0.9, run_s=rng.random() * 0.01)
        now[0] += 0.01
        placed.append(ids(s.assign()))
    return placed


@pytest.mark.parametrize("settings", [{"hwm": 1}, {"hwm": 3}, {"hwm": 0}, {}, {"max_tasks_per_engine": 7}])
def test_leastload_through_the_heap_places_as_the_scan_does(settings, monkeypatch):
    from zpool.controller import scheduler

    assert scheduler.HEAP_MIN_ENGINES <= 40
    with_heap = _run_leastload(40, seed=7, **settings)
    monkeypatch.setattr(scheduler, "HEAP_MIN_ENGINES", 10**9)  # the scan of choose_engine for every task
    scanned = _run_leastload(40, seed=7, **settings)
    assert with_heap == scanned
    assert sum(len(t) for step in with_heap for t in step.values()) > 1000  # (a real run, not an empty one)
