"""Each stage of a task's trip, by each way of failing there: the task fails with a clear error, the pool carries on.

The checks follow CPython's ``Lib/test/test_concurrent_futures/test_deadlock.py``
(one test per stage and failure; the error expected; never a hang), restated
for zpool, where a failure fails only its own task instead of breaking the pool.
A hang fails through pytest-timeout, which dumps every thread's stack.

Stages, and the process each runs in::

    arg_pickle       caller  pickling an argument           FailsWhenPickled.__reduce__
    arg_unpickle     engine  rebuilding the argument        FailsWhenUnpickled.__setstate__, FailsWhenRebuilt
    run              engine  the task's own code            fail_running
    result_pickle    engine  pickling the result            FailsWhenPickled.__reduce__
    result_unpickle  caller  rebuilding the result          FailsWhenUnpickled.__setstate__, FailsWhenRebuilt

Failures (``tests._tasks.fail_as``): raise ``StageError``, ``sys.exit(7)``,
``os._exit(7)``, and a crash (``ctypes.string_at(0)``: SIGSEGV).

The matrix, with the exception the task fails with (``EXPECTED`` below)::

                     raise                 sys.exit             os._exit             crash
    arg_pickle       SerializationError    SerializationError   -                    -
    arg_unpickle     RemoteError (*)       RemoteError          EngineError (code)   EngineError (SIGSEGV)
    run              StageError            RemoteError          EngineError (code)   EngineError (SIGSEGV)
    result_pickle    ResultEncodingError   ResultEncodingError  EngineError (code)   EngineError (SIGSEGV)
    result_unpickle  SerializationError    SerializationError   -                    -

(*) naming ``StageError``: an error while loading the task comes back without
its exception object (a builtin type such as RuntimeError is rebuilt by name).

The two caller stages run in the caller's own process (here the test
process): ``os._exit`` or a crash there ends the user's program, as it would
with any library, and leaves no one to report to, so those four combinations
do not exist. ``sys.exit`` there only raises ``SystemExit``, which must come back
as a ``SerializationError`` instead of ending the program. ``SystemExit`` raised
on an engine comes back as a ``RemoteError`` (raising it would end the caller);
the engine lives on.

Every combination runs through ``apply`` and through ``map``/``imap`` with
chunks of ``CHUNK`` items, one of them bad: the bad item's chunk fails, every
other chunk's results arrive. An engine that dies (``os._exit``, crash) holds
one task at a time here (``hwm=1``): with the adaptive default it may hold
more, those queued behind the deadly one go elsewhere (the tests at the end),
but a short task that finished just before it may lose its reply, which
would make the "every other chunk arrives" checks racy. After each
failure the pool still serves, on a replacement engine if one died.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests import _tasks
from tests._tasks import FAILURES, STAGE_EXIT_CODE, FailsWhenPickled, FailsWhenRebuilt, FailsWhenUnpickled, StageError
from tests._wait import T, wait_until
from zpool.error import EngineError, RemoteError, ResultEncodingError, SerializationError

pytestmark = pytest.mark.timeout(180)

STAGES = ("arg_pickle", "arg_unpickle", "run", "result_pickle", "result_unpickle")
CALLER_STAGES = ("arg_pickle", "result_unpickle")
DEADLY = ("os_exit", "crash")  # end the process the stage runs in

N_ITEMS = 9
CHUNK = 2
BAD = 5  # the bad item's index: its chunk is items 4 and 5


@dataclasses.dataclass(frozen=True)
class Expected:
    """The exception a task failing this way ends with, and text its message must hold."""

    type: type[BaseException]
    texts: tuple[str, ...]

    def check(self, exc: BaseException) -> None:
        assert isinstance(exc, self.type), f"expected {self.type.__name__}, got {exc!r}"
        for text in self.texts:
            assert text in str(exc), f"{text!r} not in {str(exc)!r}"


EXIT = f"exit code {STAGE_EXIT_CODE}"
SYSTEM_EXIT = f"SystemExit: {STAGE_EXIT_CODE}"

EXPECTED = {
    ("arg_pickle", "raise"): Expected(SerializationError, ("cannot serialize", "StageError")),
    ("arg_pickle", "sys_exit"): Expected(SerializationError, ("cannot serialize", SYSTEM_EXIT)),
    # The engine sends no exception object when the task could not be loaded: a builtin type
    # is rebuilt from its name, any other comes back as a RemoteError naming it.
    ("arg_unpickle", "raise"): Expected(RemoteError, ("StageError", "could not deserialize the task")),
    ("arg_unpickle", "sys_exit"): Expected(RemoteError, ("SystemExit", "could not deserialize the task")),
    ("arg_unpickle", "os_exit"): Expected(EngineError, (EXIT,)),
    ("arg_unpickle", "crash"): Expected(EngineError, ("SIGSEGV",)),
    ("run", "raise"): Expected(StageError, ("raised on purpose",)),
    ("run", "sys_exit"): Expected(RemoteError, (SYSTEM_EXIT,)),
    ("run", "os_exit"): Expected(EngineError, (EXIT,)),
    ("run", "crash"): Expected(EngineError, ("SIGSEGV",)),
    ("result_pickle", "raise"): Expected(ResultEncodingError, ("StageError",)),
    ("result_pickle", "sys_exit"): Expected(ResultEncodingError, (f"SystemExit({STAGE_EXIT_CODE})",)),
    ("result_pickle", "os_exit"): Expected(EngineError, (EXIT,)),
    ("result_pickle", "crash"): Expected(EngineError, ("SIGSEGV",)),
    ("result_unpickle", "raise"): Expected(SerializationError, ("could not be deserialized", "StageError")),
    ("result_unpickle", "sys_exit"): Expected(SerializationError, ("could not be deserialized", SYSTEM_EXIT)),
}

# map pickles its items in chunks, and says so.
EXPECTED_MAP = {
    **EXPECTED,
    ("arg_pickle", "raise"): Expected(SerializationError, ("cannot serialize an item", "raised on purpose")),
    ("arg_pickle", "sys_exit"): Expected(SerializationError, ("cannot serialize an item", SYSTEM_EXIT)),
}

COMBINATIONS = [
    pytest.param(stage, how, id=f"{stage}-{how}")
    for stage in STAGES
    for how in FAILURES
    if stage not in CALLER_STAGES or how not in DEADLY
]


def test_the_matrix_covers_every_combination_that_exists():
    assert set(EXPECTED) == {tuple(p.values) for p in COMBINATIONS}
    assert len(EXPECTED) == len(STAGES) * len(FAILURES) - len(CALLER_STAGES) * len(DEADLY)


def a_call(stage: str, how: str):
    """(function, args) of a call that fails at `stage` in the way `how`."""
    if stage == "arg_pickle":
        return _tasks.identity, (FailsWhenPickled(how),)
    if stage == "arg_unpickle":
        return _tasks.identity, (FailsWhenUnpickled(how),)
    if stage == "run":
        return _tasks.fail_running, (how,)
    if stage == "result_pickle":
        return _tasks.return_failing_pickle, (how,)
    return _tasks.return_failing_unpickle, (how,)


def a_bad_item(stage: str, how: str):
    """An item that makes ``square_or_fail`` fail at `stage` in the way `how`."""
    if stage == "arg_pickle":
        return FailsWhenPickled(how)
    if stage == "arg_unpickle":
        return FailsWhenUnpickled(how)
    return stage, how


def a_pool(pool, fresh_pool, how: str):
    """The module's shared pool, or one of the test's own when an engine is to die."""
    return fresh_pool(2, hwm=1) if how in DEADLY else pool


def engine_pids(pool) -> set[int]:
    return set(pool.queue_status()["engine_pids"].values())


def assert_still_serves(pool, pids_before: set[int], how: str) -> None:
    """The pool runs tasks again; an engine that died was replaced, and only then."""
    if how in DEADLY:
        wait_until(
            lambda: (pids := engine_pids(pool)) and len(pids) == 2 and pids - pids_before,
            T,
            "a replacement engine registered in place of the one that died",
        )
    else:
        assert engine_pids(pool) == pids_before, "no engine should have ended"
    assert pool.apply_async(_tasks.square, (3,)).get(timeout=T) == 9
    assert pool.map_async(_tasks.square, range(6), chunksize=2).get(timeout=T) == [0, 1, 4, 9, 16, 25]


@pytest.mark.parametrize(("stage", "how"), COMBINATIONS)
def test_apply(pool, fresh_pool, stage, how):
    pool = a_pool(pool, fresh_pool, how)
    pids_before = engine_pids(pool)
    func, args = a_call(stage, how)
    with pytest.raises(BaseException) as info:
        pool.apply_async(func, args).get(timeout=T)
    EXPECTED[stage, how].check(info.value)
    if how in DEADLY:
        assert any(f"(pid {pid})" in str(info.value) for pid in pids_before), str(info.value)
    assert_still_serves(pool, pids_before, how)


@pytest.mark.parametrize(("stage", "how"), COMBINATIONS)
def test_map_in_chunks(pool, fresh_pool, stage, how):
    pool = a_pool(pool, fresh_pool, how)
    pids_before = engine_pids(pool)
    items = list(range(N_ITEMS))
    items[BAD] = a_bad_item(stage, how)

    with pytest.raises(BaseException) as info:
        pool.map_async(_tasks.square_or_fail, items, chunksize=CHUNK).get(timeout=T)
    EXPECTED_MAP[stage, how].check(info.value)

    # imap: the bad chunk's failure at its place, every other chunk's results.
    outcomes: list[object] = []
    results = pool.imap(_tasks.square_or_fail, items, chunksize=CHUNK)
    while True:
        try:
            outcomes.append(results.next(timeout=T))
        except StopIteration:
            break
        except Exception as exc:
            outcomes.append(exc)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failures) == 1, f"only the bad item's chunk fails: {outcomes}"
    EXPECTED_MAP[stage, how].check(failures[0])
    first_bad = BAD - BAD % CHUNK
    assert outcomes.index(failures[0]) == first_bad or outcomes.index(failures[0]) == BAD, outcomes
    good = [i * i for i in range(N_ITEMS) if not first_bad <= i < first_bad + CHUNK]
    assert [o for o in outcomes if o in good] == good, outcomes

    assert_still_serves(pool, pids_before, how)


@pytest.mark.parametrize(
    ("stage", "how"), [p for p in COMBINATIONS if p.values[0] in ("arg_unpickle", "result_unpickle")]
)
def test_unpickling_by_reduce_reconstruction(pool, fresh_pool, stage, how):
    """The same, when what fails is the callable ``__reduce__`` names to rebuild the object (not ``__setstate__``)."""
    pool = a_pool(pool, fresh_pool, how)
    pids_before = engine_pids(pool)
    if stage == "arg_unpickle":
        func, args = _tasks.identity, (FailsWhenRebuilt(how),)
    else:
        func, args = _tasks.return_failing_rebuild, (how,)
    with pytest.raises(BaseException) as info:
        pool.apply_async(func, args).get(timeout=T)
    EXPECTED[stage, how].check(info.value)
    assert_still_serves(pool, pids_before, how)


@pytest.mark.parametrize("how", ["raise", "sys_exit"])
def test_a_failure_in_the_caller_leaves_the_caller_running(pool, how):
    """sys.exit() in a __reduce__ or __setstate__ run by the caller raises an error; it never ends the program."""
    for func, args in (a_call("arg_pickle", how), a_call("result_unpickle", how)):
        try:
            pool.apply_async(func, args).get(timeout=T)
        except SystemExit:  # pragma: no cover - the failure this test is for
            pytest.fail("SystemExit reached the caller")
        except SerializationError:
            pass
    assert pool.apply_async(_tasks.square, (4,)).get(timeout=T) == 16


# -- tasks queued behind the one that killed its engine --------------------------------------------------------


@pytest.mark.parametrize("how", ["os_exit", "crash"])
def test_tasks_queued_behind_a_deadly_one_run_elsewhere(fresh_pool, how):
    """With no in-flight limit, every task sits in one engine's queue; only the one that killed it fails.

    The engine notes each task it starts (its run slot); the controller reads
    which one it was running, and places those queued behind it again.
    """
    pool = fresh_pool(1, hwm=0)
    before = engine_pids(pool)
    first = pool.apply_async(_tasks.sleep_then, (0.3, "first"))
    deadly = pool.apply_async(_tasks.fail_running, (how,))
    behind = [pool.apply_async(_tasks.square, (i,)) for i in range(20)]
    try:
        assert first.get(T) == "first"
    except EngineError as exc:
        # It ran, but the engine died at the start of the next task, before ZeroMQ had sent its reply.
        assert "its result is lost" in str(exc)
    with pytest.raises(EngineError, match="while holding task"):
        deadly.get(T)
    assert [ar.get(T) for ar in behind] == [i * i for i in range(20)]
    assert engine_pids(pool).isdisjoint(before)  # replaced


def test_imap_chunks_queued_behind_a_crash_with_the_adaptive_limit(fresh_pool):
    """The default in-flight limit grows on short tasks, several chunks wait on each engine; a crash fails its own.

    (Tasks of a millisecond: an engine sends their replies at once. Replies of
    tasks under 0.2 ms wait up to 2 ms to travel together, and those an engine
    held when it died are lost: their tasks fail saying so.)
    """
    pool = fresh_pool(2)
    pool.map(_tasks.sleep_then, [0.001] * 200, chunksize=1)  # the adaptive limit grows
    assert pool.queue_status()["hwm"] is None  # (the adaptive default)
    items: list = list(range(200))
    items[41] = ("run", "crash")
    results, errors = [], []
    iterator = pool.imap(_tasks.slow_square_or_fail, items, chunksize=2)
    while True:
        try:
            results.append(next(iterator))
        except StopIteration:
            break
        except EngineError as exc:
            errors.append(exc)
    assert len(errors) == 1, errors  # the crashing chunk (items 40 and 41), nothing queued behind it
    assert "SIGSEGV" in str(errors[0])
    assert results == [i * i for i in range(200) if i not in (40, 41)]
