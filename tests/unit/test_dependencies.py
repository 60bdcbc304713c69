"""The scheduler's dependency rules (DESIGN §5), without sockets: every rule and every impossible case."""

from __future__ import annotations

import pytest

from zpool.controller.scheduler import FAILED_UNPLACED, Scheduler, Task
from zpool.dependency import Dependency, task_flags


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(n_engines: int = 2, hwm: int = 0) -> Scheduler:
    s = Scheduler(hwm=hwm, clock=Clock())
    for i in range(n_engines):
        s.engine_registered(i)
        s.add_engine(i, b"engine-%d" % i)
    return s


def task(task_id: str, **flags) -> Task:
    return Task(task_id, b"client", [b"payload"], task_flags(flags))


def placed(s: Scheduler) -> dict[str, int]:
    """Assign, and return task id -> engine id for what was placed."""
    return {t.task_id: slot.engine_id for slot, batch in s.assign().items() for t in batch}


def run(s: Scheduler, task_id: str, ok: bool = True, **kwargs) -> Task:
    """Finish a placed task on the engine that holds it."""
    slot = next(e for e in s.engines.values() if task_id in e.outstanding)
    return s.finish(slot, task_id, ok, 0.01, **kwargs)


def failures(s: Scheduler) -> dict[str, str]:
    return {t.task_id: ename for t, ename, _, _ in s.take_failures()}


# -- Dependency and flags -------------------------------------------------------------


def test_dependency_is_a_set_of_ids_with_switches():
    dep = Dependency(["a", "b", "a"], all=False, success=False, failure=True)
    assert dep == {"a", "b"} and isinstance(dep, set)
    assert (dep.all, dep.success, dep.failure) == (False, False, True)
    assert sorted(dep) == ["a", "b"]
    assert dep.as_dict() == {"ids": ["a", "b"], "all": False, "success": False, "failure": True}


def test_dependency_that_could_never_be_met_is_refused():
    with pytest.raises(ValueError, match="could never be met"):
        Dependency(["a"], success=False, failure=False)


def test_dependency_accepts_async_results_and_ids():
    class FakeResult:
        msg_ids = ["x-1", "x-2"]

    assert Dependency([FakeResult(), "y"]) == {"x-1", "x-2", "y"}
    assert Dependency(FakeResult()) == {"x-1", "x-2"}
    with pytest.raises(TypeError, match="task id"):
        Dependency([3])


@pytest.mark.parametrize(
    "flags, error, match",
    [
        ({"colour": "red"}, TypeError, "unknown scheduling flag"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": "soon"}, ValueError, "timeout"),
        ({"retries": 1.5}, ValueError, "retries"),
        ({"retries": -1}, ValueError, "retries"),
        ({"targets": []}, ValueError, "targets is empty"),
        ({"targets": ["zero"]}, TypeError, "targets"),
        ({"targets": [1.5]}, TypeError, "targets"),
        ({"after": [object()]}, TypeError, "task id"),
    ],
)
def test_bad_flags(flags, error, match):
    with pytest.raises(error, match=match):
        task_flags(flags)


def test_flags_wire_form():
    assert task_flags({}) is None
    assert task_flags({"after": None, "timeout": 0, "retries": 0}) is None
    assert task_flags({"after": ["a"], "targets": 3, "timeout": 2, "retries": 1}) == {
        "after": {"ids": ["a"], "all": True, "success": True, "failure": False},
        "targets": [3],
        "timeout": 2.0,
        "retries": 1,
    }


# -- after -------------------------------------------------------------------------------


def test_after_waits_until_dependencies_succeed():
    s = make()
    s.submit([task("a"), task("b"), task("c", after=["a", "b"])])
    assert set(placed(s)) == {"a", "b"}
    run(s, "a")
    assert placed(s) == {}
    run(s, "b")
    assert set(placed(s)) == {"c"}
    assert s.status()["waiting"] == 0


def test_after_a_finished_task_runs_at_once():
    s = make()
    s.submit([task("a")])
    placed(s)
    run(s, "a")
    s.submit([task("b", after=["a"])])
    assert set(placed(s)) == {"b"}
    assert not s.waiting


def test_after_a_failed_task_is_impossible_and_cascades():
    s = make()
    s.submit([task("a"), task("b", after=["a"]), task("c", after=["b"]), task("d", after=["c"])])
    placed(s)
    run(s, "a", ok=False)
    assert failures(s) == {"b": "ImpossibleDependency", "c": "ImpossibleDependency", "d": "ImpossibleDependency"}
    assert s.done["d"] == FAILED_UNPLACED
    assert not s.waiting and not s.dependents


def test_cascade_through_a_long_chain_does_not_recurse():
    s = make()
    n = 20_000
    s.submit([task("t0")] + [task(f"t{i}", after=[f"t{i - 1}"]) for i in range(1, n)])
    placed(s)
    run(s, "t0", ok=False)
    assert len(failures(s)) == n - 1


def test_failure_only_dependency_runs_clean_up_on_failure():
    s = make()
    cleanup = Dependency(["a"], success=False, failure=True)
    s.submit([task("a"), task("on-fail", after=cleanup)])
    placed(s)
    run(s, "a", ok=False)
    assert set(placed(s)) == {"on-fail"}

    s.submit([task("b"), task("never", after=Dependency(["b"], success=False, failure=True))])
    placed(s)
    run(s, "b", ok=True)
    assert failures(s) == {"never": "ImpossibleDependency"}


def test_success_or_failure_dependency_waits_for_completion_only():
    s = make()
    s.submit([task("a"), task("b", after=Dependency(["a"], failure=True))])
    placed(s)
    run(s, "a", ok=False)
    assert set(placed(s)) == {"b"}


def test_any_dependency_met_by_one_success():
    s = make()
    s.submit([task("a"), task("b"), task("c", after=Dependency(["a", "b"], all=False))])
    placed(s)
    run(s, "a", ok=False)
    assert placed(s) == {} and not failures(s)
    run(s, "b", ok=True)
    assert set(placed(s)) == {"c"}


def test_any_dependency_impossible_when_every_one_failed():
    s = make()
    s.submit([task("a"), task("b"), task("c", after=Dependency(["a", "b"], all=False))])
    placed(s)
    run(s, "a", ok=False)
    run(s, "b", ok=False)
    assert failures(s) == {"c": "ImpossibleDependency"}


@pytest.mark.parametrize("dep", [["nope"], ["a", "nope"]])
def test_unknown_dependency_is_invalid(dep):
    s = make()
    s.submit([task("a"), task("b", after=dep)])
    assert failures(s) == {"b": "InvalidDependency"}


def test_self_dependency_is_invalid():
    s = make()
    s.submit([task("a", after=["a"])])
    assert failures(s) == {"a": "InvalidDependency"}


def test_reused_task_id_is_refused():
    s = make()
    s.submit([task("a")])
    s.submit([task("a")])
    assert failures(s) == {"a": "InvalidDependency"}


def test_timeout_fails_a_waiting_task():
    s = make()
    s.submit([task("a"), task("b", after=["a"], timeout=5), task("c", after=["b"])])
    placed(s)
    assert s.next_deadline() == 1005.0
    s._clock.now += 4.9
    s.expire()
    assert not failures(s)
    s._clock.now += 0.2
    s.expire()
    assert failures(s) == {"b": "DependencyTimeout", "c": "ImpossibleDependency"}
    run(s, "a")  # finishing later changes nothing
    assert placed(s) == {} and not failures(s)
    assert s.next_deadline() is None


def test_timeout_is_only_for_dependencies():
    s = make()
    s.submit([task("a"), task("b", after=["a"], timeout=5)])
    placed(s)
    run(s, "a")
    assert set(placed(s)) == {"b"}
    s._clock.now += 60
    s.expire()
    assert not failures(s)


# -- follow and targets -----------------------------------------------------------------------


def test_follow_runs_where_its_dependencies_ran():
    s = make(3)
    s.submit([task("a", targets=[2])])
    assert placed(s) == {"a": 2}
    s.submit([task(f"f{i}", follow=["a"]) for i in range(4)])
    assert placed(s) == {}  # follow also waits for its tasks
    run(s, "a")
    assert placed(s) == {f"f{i}": 2 for i in range(4)}


def test_follow_all_on_different_engines_is_impossible():
    s = make(2)
    s.submit([task("a", targets=[0]), task("b", targets=[1]), task("c", follow=["a", "b"])])
    placed(s)
    run(s, "a")
    run(s, "b")
    assert failures(s) == {"c": "ImpossibleDependency"}


def test_follow_any_may_run_on_either_engine():
    s = make(3)
    s.submit([task("a", targets=[0]), task("b", targets=[1]), task("c", follow=Dependency(["a", "b"], all=False))])
    placed(s)
    run(s, "a")
    run(s, "b")
    assert placed(s)["c"] in {0, 1}


def test_follow_an_engine_that_died_is_impossible():
    s = make(2)
    s.submit([task("a", targets=[1])])
    placed(s)
    run(s, "a")
    s.remove_engine(b"engine-1")
    s.submit([task("b", follow=["a"])])
    assert failures(s) == {"b": "ImpossibleDependency"}


def test_targets_restrict_placement():
    s = make(3, hwm=1)
    s.submit([task(f"t{i}", targets=[1]) for i in range(3)] + [task("free")])
    first = placed(s)
    assert first["t0"] == 1 and "t1" not in first and first["free"] in {0, 2}
    run(s, "t0")
    assert placed(s) == {"t1": 1}


def test_targets_of_a_dead_engine_are_impossible():
    s = make(2, hwm=1)
    s.submit([task("a", targets=[1]), task("b", targets=[1])])
    placed(s)
    stranded = s.remove_engine(b"engine-1")
    assert [t.task_id for t in stranded] == ["a"]
    assert failures(s) == {"b": "ImpossibleDependency"}
    s.submit([task("c", targets=[1]), task("d", targets=[7])])
    assert failures(s) == {"c": "ImpossibleDependency", "d": "ImpossibleDependency"}


def test_targets_of_an_engine_still_starting_wait():
    s = make(1)
    s.set_more_coming(True)  # two more engines were launched
    s.submit([task("a", targets=[2]), task("b", targets=[1])])
    assert placed(s) == {} and not failures(s)
    s.engine_registered(1)  # registered, running its initializer
    s.engine_registered(2)
    s.set_more_coming(False)
    s.add_engine(2, b"engine-2")  # 2 gets ready before 1
    assert placed(s) == {"a": 2} and not failures(s)
    s.engine_lost(1)  # its initializer failed: it never gets ready
    assert failures(s) == {"b": "ImpossibleDependency"}


def test_target_beyond_the_launched_engines_fails_once_none_are_coming():
    s = make(1)
    s.set_more_coming(True)
    s.submit([task("a", targets=[5])])
    assert not failures(s)
    s.set_more_coming(False)
    assert failures(s) == {"a": "ImpossibleDependency"}


def test_retry_waits_for_an_engine_when_none_is_up():
    s = make(1)
    s.submit([task("a", retries=1)])
    placed(s)
    assert s.remove_engine(b"engine-0") == []  # retried, not failed
    s.set_more_coming(True)  # the replacement starts
    assert not failures(s) and placed(s) == {}
    s.engine_registered(1)
    s.add_engine(1, b"engine-1")
    assert placed(s) == {"a": 1}


def test_unmet_everywhere_waits_while_engines_are_starting():
    s = make(1)
    s.set_more_coming(True)
    s.submit([task("a")])
    placed(s)
    run(s, "a", ok=False, unmet=True)
    assert not failures(s) and placed(s) == {}
    s.engine_registered(1)
    s.add_engine(1, b"engine-1")
    assert placed(s) == {"a": 1}
    run(s, "a", ok=False, unmet=True)
    s.set_more_coming(False)
    assert failures(s) == {"a": "ImpossibleDependency"}


def test_aborted_reply_is_never_retried():
    s = make(2)
    s.submit([task("a", retries=3)])
    placed(s)
    finished = run(s, "a", ok=False, aborted=True)
    assert finished.final is True and placed(s) == {}


def test_duplicate_id_does_not_orphan_the_waiting_original():
    s = make(1)
    s.submit([task("a"), task("b", after=["a"])])
    s.submit([task("b")])  # a reused id: refused
    assert failures(s) == {"b": "InvalidDependency"}
    placed(s)
    run(s, "a")
    assert placed(s) == {"b": 0}


def test_many_restricted_tasks_are_not_rescanned():
    s = make(2, hwm=1)
    s.submit([task(f"t{i}", targets=[0, 1]) for i in range(5000)])
    for _ in range(2500):
        batch = placed(s)
        assert len(batch) == 2
        for task_id in batch:
            run(s, task_id)
    assert not s._ready_tasks()


# -- retries and functional dependencies ----------------------------------------------------


def test_retries_after_failure_go_to_another_engine():
    s = make(2)
    s.submit([task("a", retries=2)])
    first = placed(s)["a"]
    assert run(s, "a", ok=False).final is False
    second = placed(s)["a"]
    assert second != first
    assert run(s, "a", ok=False).final is False
    assert placed(s)["a"] in {0, 1}  # every engine tried: the same again
    last = run(s, "a", ok=False)
    assert last.final is True and s.done["a"] <= -2


def test_retries_after_engine_death():
    s = make(2)
    s.submit([task("a", retries=1), task("b")])
    where = placed(s)
    victim = where["a"]
    stranded = s.remove_engine(b"engine-%d" % victim)
    assert "a" not in [t.task_id for t in stranded]
    assert placed(s) == {"a": 1 - victim}


def test_unmet_functional_dependency_is_rerouted_never_twice():
    s = make(3)
    s.submit([task("a")])
    tried = {placed(s)["a"]}
    assert run(s, "a", ok=False, unmet=True).final is False
    tried.add(placed(s)["a"])
    assert len(tried) == 2
    run(s, "a", ok=False, unmet=True)
    tried.add(placed(s)["a"])
    assert tried == {0, 1, 2}
    run(s, "a", ok=False, unmet=True)
    assert failures(s) == {"a": "ImpossibleDependency"}
    assert placed(s) == {}


def test_unmet_with_targets_left_nowhere_is_impossible():
    s = make(3)
    s.submit([task("a", targets=[0, 1]), task("b", after=["a"])])
    placed(s)
    run(s, "a", ok=False, unmet=True)
    placed(s)
    run(s, "a", ok=False, unmet=True)
    assert failures(s) == {"a": "ImpossibleDependency", "b": "ImpossibleDependency"}


# -- abort and scale ---------------------------------------------------------------------------


def test_abort_fails_waiting_and_queued_tasks_and_reports_placed_ones():
    s = make(1, hwm=1)
    s.submit([task("a"), task("b"), task("c", after=["a"])])
    placed(s)
    count, on_engines = s.abort(["a", "b", "c", "unknown"])
    assert count == 2
    assert {slot.engine_id: ids for slot, ids in on_engines.items()} == {0: ["a"]}
    assert failures(s) == {"b": "TaskAborted", "c": "TaskAborted"}
    assert s.queued() == 0 and not s.waiting


def test_dag_index_touches_only_dependents():
    # 10,000 tasks and 40,000 edges: submit, then finish in topological order.
    s = make(4)
    n = 10_000
    tasks_ = [task("n0")]
    for i in range(1, n):
        deps = sorted({f"n{max(0, i - k)}" for k in (1, 2, 3, 5)} - {f"n{i}"})
        tasks_.append(task(f"n{i}", after=deps))
    s.submit(tasks_)
    finished = 0
    while finished < n:
        batch = placed(s)
        assert batch, "the DAG stalled"
        for task_id in batch:
            run(s, task_id)
            finished += 1
    assert not s.waiting and not s.dependents and len(s.done) == n


# -- the record window: what the scheduler remembers of finished tasks ------------------------


def make_windowed(window: int, age: float = 3600.0) -> Scheduler:
    s = Scheduler(hwm=0, clock=Clock(), record_window=window, record_age=age)
    s.engine_registered(0)
    s.add_engine(0, b"engine-0")
    return s


def run_all(s: Scheduler, ids: list[str]) -> None:
    s.submit([task(i) for i in ids])
    placed(s)
    for task_id in ids:
        run(s, task_id)


def test_finished_tasks_are_remembered_within_the_window_by_count():
    s = make_windowed(3)
    run_all(s, ["a", "b", "c", "d", "e"])
    assert list(s.done) == ["c", "d", "e"]
    s.submit([task("x", after=["d"]), task("y", after=["a"])])
    assert placed(s) == {"x": 0}
    fails = s.take_failures()
    assert [(t.task_id, ename) for t, ename, _, _ in fails] == [("y", "InvalidDependency")]
    assert "record_window" in fails[0][2] and "unknown task a" in fails[0][2]


def test_finished_tasks_are_forgotten_after_the_age():
    s = make_windowed(1000, age=60.0)
    run_all(s, ["a"])
    s._clock.now += 61
    run_all(s, ["b"])  # each finish forgets what is too old
    assert list(s.done) == ["b"]


def test_outcomes_sent_along_stand_in_for_forgotten_tasks():
    s = make_windowed(1)
    run_all(s, ["a", "b"])
    assert "a" not in s.done
    ok = Task("x", b"client", [b"p"], {"after": {"ids": ["a"], "known": {"a": 0}}})
    failed = Task("y", b"client", [b"p"], {"after": {"ids": ["a"], "known": {"a": -2}}})
    on_failure = {"ids": ["a"], "failure": True, "success": False, "known": {"a": -2}}
    cleanup = Task("z", b"client", [b"p"], {"after": on_failure})
    s.submit([ok, failed, cleanup])
    assert placed(s) == {"x": 0, "z": 0}
    assert failures(s) == {"y": "ImpossibleDependency"}


def test_kept_calls_for_resubmit_go_with_the_window():
    s = make_windowed(2)
    run_all(s, ["a", "b", "c"])
    assert list(s.kept) == ["b", "c"]
    assert s.records.kept_bytes == 2 * len(b"payload")


def test_stale_deadlines_do_not_pile_up():
    s = make_windowed(10)
    for n in range(3000):
        s.submit([task(f"d{n}"), task(f"t{n}", after=[f"d{n}"], timeout=3600)])  # t waits: it gets a deadline
        placed(s)
        run(s, f"d{n}")
        placed(s)
        run(s, f"t{n}")
    assert len(s.graph.deadlines) <= 1024 + 2 * len(s.waiting)
    assert len(s.done) == 10 and not s.live and not s.waiting


def test_tasks_that_stop_waiting_leave_the_dependents_index():
    """Behind one task that runs for ever, waiting tasks that time out or are aborted take no memory."""
    s = make_windowed(100)
    s.submit([task("long")])
    placed(s)  # runs for ever
    for i in range(2000):
        s.submit([task(f"t{i}", after=["long"], timeout=0.5)])
        if i % 2:
            s._clock.now += 1.0
            s.expire()
        else:
            s.abort([f"t{i}"])
    s.take_failures()
    assert not s.waiting and not s.dependents
    # any-of: met by one, it leaves the other's list too
    s.submit([task("a"), task("b"), task("x", after=Dependency(["a", "b"], all=False))])
    placed(s)
    run(s, "a")
    assert "x" not in s.waiting and "b" not in s.dependents


def test_purge_forgets_finished_tasks_and_keeps_the_window_whole():
    s = make_windowed(4)
    run_all(s, ["a", "b", "c", "d"])
    s.submit([task("live")])
    assert s.purge(["a", "b", "live", "nope"]) == (2, ["live"])
    assert list(s.done) == ["c", "d"] and list(s.kept) == ["c", "d"]
    run_all(s, ["e", "f"])
    assert list(s.done) == ["c", "d", "e", "f"]  # the purged ones no longer count against the window
    assert s.purge(None) == (4, []) and not s.done and not s.kept and s.records.kept_bytes == 0
