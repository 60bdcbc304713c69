"""Dependencies on a real cluster: after, follow, targets, timeout, retries, @require, @depend, abort, flags."""

from __future__ import annotations

import os
import signal

import pytest

import zpool
from tests import _tasks
from tests._wait import engine_gone, wait_until
from zpool import Dependency, depend, dependent, require

T = 60


def test_after_runs_only_once_its_dependencies_completed(pool):
    first = [pool.apply_async(_tasks.sleep_then, (0.3, i)) for i in range(2)]
    then = pool.apply_async(_tasks.getpid, after=first)
    assert then.get(T) > 0
    for ar in first:
        assert then.metadata.started >= ar.metadata.completed


def test_after_a_failure_is_impossible(pool):
    bad = pool.apply_async(_tasks.raise_value_error, ("no",))
    after_bad = pool.apply_async(_tasks.square, (2,), after=[bad])
    chained = pool.apply_async(_tasks.square, (3,), after=[after_bad])
    with pytest.raises(zpool.ImpossibleDependency, match="can never run"):
        after_bad.get(T)
    with pytest.raises(zpool.ImpossibleDependency):
        chained.get(T)
    cleanup = pool.apply_async(_tasks.square, (4,), after=Dependency([bad], success=False, failure=True))
    assert cleanup.get(T) == 16


def test_unknown_dependency_is_invalid(pool):
    with pytest.raises(zpool.InvalidDependency, match="unknown task no-such-task"):
        pool.apply_async(_tasks.square, (1,), after=["no-such-task"]).get(T)


def test_follow_and_targets_choose_the_engine(pool):
    engines = pool.wait_for_engines(2, timeout=T)
    for engine_id in engines:
        anchor = pool.apply_async(_tasks.square, (1,), targets=engine_id)
        anchor.get(T)
        assert anchor.metadata.engine_id == engine_id
        followers = [pool.apply_async(_tasks.square, (i,), follow=[anchor]) for i in range(6)]
        assert {(ar.get(T), ar.metadata.engine_id)[1] for ar in followers} == {engine_id}


def test_targets_on_map_and_imap(pool):
    engine_id = pool.wait_for_engines(2, timeout=T)[-1]
    ar = pool.map_async(_tasks.getpid, range(20), chunksize=2, targets=[engine_id])
    assert len(set(ar.get(T))) == 1
    assert {md.engine_id for md in ar.metadata} == {engine_id}
    assert len(set(pool.imap(_tasks.getpid, range(20), targets=[engine_id]))) == 1


def test_target_that_does_not_exist_is_impossible(pool):
    with pytest.raises(zpool.ImpossibleDependency, match="no engine can run"):
        pool.apply_async(_tasks.square, (1,), targets=[99]).get(T)


def test_dependency_timeout(pool):
    slow = pool.apply_async(_tasks.sleep_then, (3, None))
    waiting = pool.apply_async(_tasks.square, (2,), after=[slow], timeout=0.3)
    with pytest.raises(zpool.DependencyTimeout, match="not met in time"):
        waiting.get(T)
    slow.get(T)


def test_retries_after_an_exception(pool, tmp_path):
    marker = str(tmp_path / "once")
    ar = pool.apply_async(_tasks.fail_first_time, (marker,), retries=1)
    assert ar.get(T)[0] == "second try"
    with pytest.raises(RuntimeError, match="first try fails"):
        pool.apply_async(_tasks.fail_first_time, (str(tmp_path / "never-retried"),)).get(T)


def test_retries_after_the_engine_is_killed(fresh_pool, tmp_path):
    pool = fresh_pool(2)
    ar = pool.apply_async(_tasks.die_first_time, (str(tmp_path / "once"),), retries=1)
    assert ar.get(T) > 0
    with pytest.raises(zpool.EngineError):
        pool.apply_async(_tasks.die_first_time, (str(tmp_path / "twice"),)).get(T)


def test_require_runs_only_where_the_module_imports(fresh_pool, tmp_path):
    pool = fresh_pool(2, initializer=_tasks.init_optional_module, initargs=(str(tmp_path / "first"),))
    lacking = {has: pid for has, _, pid in pool.map(_tasks.plain_optional, range(40), chunksize=1)}
    assert set(lacking) == {True, False}  # one engine lacks the module
    wrapped = require(_tasks.OPTIONAL_MODULE)(_tasks.use_optional)
    assert wrapped.__name__ == "use_optional"
    results = [pool.apply_async(wrapped, (i,)) for i in range(20)]
    assert {r.get(T)[1] for r in results} == {lacking[True]}
    assert [r.get(T)[0] for r in results] == [42 + i for i in range(20)]


def test_require_nowhere_is_impossible(pool):
    wrapped = require("zpool_no_such_module_anywhere")(_tasks.square)
    with pytest.raises(zpool.ImpossibleDependency, match="functional dependency"):
        pool.apply_async(wrapped, (2,)).get(T)


def test_depend_reroutes_to_an_engine_where_the_condition_holds(fresh_pool, tmp_path):
    pool = fresh_pool(2, initializer=_tasks.init_optional_module, initargs=(str(tmp_path / "first"),))
    where = {has: pid for has, _, pid in pool.map(_tasks.plain_optional, range(40), chunksize=1)}
    decorated = depend(_tasks.has_optional)(_tasks.getpid)
    assert {pool.apply_async(decorated).get(T) for _ in range(10)} == {where[True]}
    assert {pool.apply_async(dependent(_tasks.getpid, _tasks.has_optional)).get(T) for _ in range(10)} == {where[True]}


def test_abort_tasks_not_started(fresh_pool):
    pool = fresh_pool(1, hwm=1)
    running = pool.apply_async(_tasks.sleep_then, (1.0, "done"))
    queued = [pool.apply_async(_tasks.square, (i,)) for i in range(5)]
    later = pool.apply_async(_tasks.square, (9,), after=[running])
    report = pool.abort([*queued, later])
    assert report["aborted"] + report["sent_to_engines"] == 6
    for ar in [*queued, later]:
        with pytest.raises(zpool.TaskAborted):
            ar.get(T)
    assert running.get(T) == "done"
    assert pool.apply(_tasks.square, (3,)) == 9


def test_temp_flags_and_set_flags(pool):
    engine_id = pool.wait_for_engines(2, timeout=T)[0]
    with pool.temp_flags(targets=engine_id):
        assert pool.flags == {"targets": engine_id}
        inside = [pool.apply_async(_tasks.square, (i,)) for i in range(4)]
        other = pool.apply_async(_tasks.square, (5,), targets=1 - engine_id)  # the call's own flag wins
    assert pool.flags == {}
    assert {ar.get(T) is not None and ar.metadata.engine_id for ar in inside} == {engine_id}
    assert other.get(T) == 25 and other.metadata.engine_id == 1 - engine_id
    pool.set_flags(retries=1)
    try:
        assert pool.flags == {"retries": 1}
    finally:
        pool.set_flags(retries=None)
    assert pool.flags == {}


@pytest.mark.parametrize(
    "flags, error",
    [({"colour": 1}, TypeError), ({"timeout": -2}, ValueError), ({"targets": "all"}, TypeError)],
)
def test_bad_flags_raise_in_the_caller(pool, flags, error):
    with pytest.raises(error):
        pool.apply_async(_tasks.square, (1,), **flags)
    with pytest.raises(error):
        pool.map_async(_tasks.square, [1], **flags)
    with pytest.raises(error):
        with pool.temp_flags(**flags):
            pass


def test_a_dead_target_fails_fast(fresh_pool):
    pool = fresh_pool(2)
    engines = pool.wait_for_engines(2, timeout=T)
    pid = pool.queue_status()["engine_pids"][str(engines[1])]
    os.kill(pid, signal.SIGKILL)
    engine_gone(pool, engines[1])
    with pytest.raises(zpool.ImpossibleDependency, match="no engine can run"):
        pool.apply_async(_tasks.square, (1,), targets=engines[1]).get(T)


def test_resubmit_runs_finished_tasks_again(pool, tmp_path):
    ar = pool.apply_async(_tasks.getpid)
    ar.get(T)
    again = pool.resubmit(ar)
    assert type(again) is zpool.AsyncResult and again.msg_ids != ar.msg_ids
    assert again.get(T) > 0
    mapped = pool.map_async(_tasks.square, range(10), chunksize=3)
    mapped.get(T)
    remapped = pool.resubmit(mapped)
    assert type(remapped) is zpool.MapResult and remapped.get(T) == [x * x for x in range(10)]
    by_id = pool.resubmit(ar.msg_ids[0])
    assert by_id.get(T) > 0


def test_resubmit_of_an_unfinished_or_unknown_task_fails_with_the_reason(pool):
    slow = pool.apply_async(_tasks.sleep_then, (1.0, None))
    with pytest.raises(zpool.InvalidDependency, match="has not finished yet"):
        pool.resubmit(slow).get(T)
    with pytest.raises(zpool.InvalidDependency, match="there is no task nope"):
        pool.resubmit("nope").get(T)
    slow.get(T)


def test_queue_status_counts(pool):
    slow = [pool.apply_async(_tasks.sleep_then, (0.5, None)) for _ in range(2)]
    waiting = pool.apply_async(_tasks.square, (1,), after=slow)

    def placed():  # the status may be taken before the controller's next placement pass
        status = pool.queue_status()
        return status if sum(e["running"] for e in status["engines"].values()) >= 1 else None

    status = wait_until(placed, T, "a task running")
    assert status["waiting"] == 1
    assert sum(e["running"] for e in status["engines"].values()) >= 1
    assert {"queue", "running", "queued", "completed", "failed"} <= set(next(iter(status["engines"].values())))
    assert waiting.get(T) == 1


def test_require_with_map_and_imap_reroutes_whole_chunks(fresh_pool, tmp_path):
    pool = fresh_pool(2, initializer=_tasks.init_optional_module, initargs=(str(tmp_path / "first"),))
    where = {has: pid for has, _, pid in pool.map(_tasks.plain_optional, range(40), chunksize=1)}
    wrapped = require(_tasks.OPTIONAL_MODULE)(_tasks.use_optional)
    mapped = pool.map(wrapped, range(30), chunksize=3)
    assert [value for value, _ in mapped] == [42 + i for i in range(30)]
    assert {pid for _, pid in mapped} == {where[True]}
    streamed = list(pool.imap(wrapped, range(30)))
    assert [value for value, _ in streamed] == [42 + i for i in range(30)]
    assert {pid for _, pid in streamed} == {where[True]}


def test_a_map_after_a_large_map(pool):
    # The flags of a map's chunks travel once per message, not once per chunk.
    first = pool.map_async(_tasks.square, range(1500), chunksize=1)
    second = pool.map_async(_tasks.identity, range(1500), chunksize=1, after=first)
    assert second.get(T) == list(range(1500))
    assert min(md.started for md in second.metadata) >= max(md.completed for md in first.metadata)


def test_imap_with_retries_retries_each_item(pool, tmp_path):
    markers = [str(tmp_path / f"m{i}") for i in range(6)]
    results = list(pool.imap(_tasks.fail_first_time, markers, retries=1))
    assert [value for value, _ in results] == ["second try"] * 6


def test_an_imap_iterator_is_no_dependency(pool):
    it = pool.imap(_tasks.square, range(6))
    with pytest.raises(TypeError, match="imap's results cannot be depended on"):
        pool.apply_async(_tasks.square, (1,), after=it)
    with pytest.raises(TypeError):
        pool.abort(it)
    assert list(it) == [x * x for x in range(6)]  # nothing consumed


def test_resubmit_keeps_order_and_repeats(pool):
    ars = [pool.apply_async(_tasks.identity, (i,)) for i in range(8)]
    for ar in ars:
        ar.get(T)
    again = pool.resubmit([*ars, ars[0]])
    assert again.get(T) == [0, 1, 2, 3, 4, 5, 6, 7, 0]


# -- the controller's record window ------------------------------------------------------------


def test_dependencies_on_results_older_than_the_record_window(fresh_pool):
    pool = fresh_pool(2, record_window=5)
    first = pool.apply_async(_tasks.square, (3,))
    assert first.get(T) == 9
    failed = pool.apply_async(_tasks.raise_value_error, ("old failure",))
    with pytest.raises(ValueError):
        failed.get(T)
    assert pool.map(_tasks.square, range(20), chunksize=1) == [x * x for x in range(20)]  # both forgotten
    # Given as AsyncResults, their outcomes go along: success and failure count as they were.
    assert pool.apply_async(_tasks.add, (1, 2), after=[first]).get(T) == 3
    with pytest.raises(zpool.ImpossibleDependency):
        pool.apply_async(_tasks.add, (1, 2), after=[failed]).get(T)
    cleanup = pool.apply_async(_tasks.add, (5,), after=zpool.Dependency([failed], success=False, failure=True))
    assert cleanup.get(T) == 5
    # Given as a bare id, the controller cannot know: it says why.
    with pytest.raises(zpool.InvalidDependency, match="record_window"):
        pool.apply_async(_tasks.add, (1, 2), after=first.msg_ids).get(T)
    with pytest.raises(zpool.InvalidDependency, match="there is no task"):
        pool.resubmit(first).get(T)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"record_window": 0},
        {"record_window": 1.5},
        {"record_age": 0},
        {"record_age": float("nan")},
        {"record_age": "1"},
    ],
)
def test_record_window_arguments_are_checked(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        zpool.Pool(1, **kwargs)


def test_purge_results_forgets_finished_tasks(fresh_pool):
    pool = fresh_pool(1)
    done = pool.map_async(_tasks.square, range(4), chunksize=1)
    assert done.get(T) == [0, 1, 4, 9]
    running = pool.apply_async(_tasks.sleep_then, (1.0, "x"))
    reply = pool.purge_results([done, running])
    assert reply == {"purged": 4, "not_finished": running.msg_ids}
    with pytest.raises(zpool.InvalidDependency, match="unknown task"):
        pool.apply_async(_tasks.square, (2,), after=done.msg_ids[:1]).get(T)
    with pytest.raises(zpool.InvalidDependency, match="there is no task"):
        pool.resubmit(done).get(T)
    assert running.get(T) == "x"  # left alone
    assert pool.purge_results()["purged"] >= 1
    assert pool.purge_results("all")["purged"] == 0
    with pytest.raises(TypeError):
        pool.purge_results(3.5)


def test_a_dependency_made_from_a_result_remembers_how_it_ended(fresh_pool):
    """Even once the AsyncResult itself is gone and the controller has forgotten its tasks."""
    pool = fresh_pool(2, record_window=5)
    dep = Dependency(pool.starmap_async(_tasks.sleep_then, [(0.3, i) for i in range(2)], chunksize=1))
    # (the result, dropped at once, ends meanwhile)
    wait_until(lambda: sum(e["completed"] for e in pool.queue_status()["engines"].values()) >= 2, T, "its 2 tasks done")
    pool.map(_tasks.square, range(20), chunksize=1)  # its tasks leave the window
    assert pool.apply_async(_tasks.square, (4,), after=dep).get(T) == 16


def test_imap_chunks_say_how_their_dependencies_ended(fresh_pool):
    """imap(after=ar) with ar still running when it starts: later chunks still pass once ar is forgotten."""
    pool = fresh_pool(2, record_window=20)
    ar = pool.apply_async(_tasks.sleep_then, (0.5, "first"))
    got = list(pool.imap(_tasks.square, range(300), chunksize=1, after=ar))
    assert got == [x * x for x in range(300)]
