"""A result that came straight from its engine waits for its task's output (zpool.client.results).

On the direct path the engine answers the caller itself while the task's
output travels the controller's way; the reply says which tasks printed,
and the client settles those once their END has come (or after
``OUTPUT_WAIT_S``), so that ``get()`` returns with ``ar.stdout`` complete.
"""

from __future__ import annotations

import logging

from zpool import serialize
from zpool.asyncresult import AsyncResult
from zpool.client import results as results_module
from zpool.client.results import ResultTable
from zpool.protocol import REPLY_COLUMNS, BatchWriter, MsgType, Session, encode, new_key

SESSION = Session(new_key())


def _reply(values: dict[str, object], wrote: list[str] | None = None):
    batch = BatchWriter(REPLY_COLUMNS)
    for task_id, value in values.items():
        batch.add(task_id, serialize.dumps(value), "ok", 1, 0.0, 0.0)
    fields = batch.fields()
    if wrote is not None:
        fields["wrote"] = wrote
    return SESSION.unpack(SESSION.build(MsgType.APPLY_REPLY, fields, buffers=batch.buffers()))


def _stream(*parts: list[str]):
    return SESSION.unpack(SESSION.build(MsgType.STREAM, content=encode({"parts": [list(p) for p in parts]})))


def test_a_reply_that_says_its_task_printed_waits_for_the_output():
    table = ResultTable()
    ar: AsyncResult = AsyncResult(["t1"])
    table.add(ar)
    table.handle_reply(_reply({"t1": 42}, wrote=["t1"]))
    assert not ar.done() and len(table) == 1
    table.handle_stream(_stream(["engine 1", "t1", "out", "hello\n"]))
    assert not ar.done()
    table.handle_stream(_stream(["engine 1", "t1", "end", ""]))
    assert ar.done() and ar.get(0) == 42 and ar.stdout == "hello\n"
    assert len(table) == 0 and table.wait_empty(0)


def test_output_that_came_first_lets_the_reply_settle_at_once():
    table = ResultTable()
    ar: AsyncResult = AsyncResult(["t1"])
    table.add(ar)
    table.handle_stream(_stream(["engine 1", "t1", "err", "oops\n"], ["engine 1", "t1", "end", ""]))
    table.handle_reply(_reply({"t1": 7}, wrote=["t1"]))
    assert ar.get(0) == 7 and ar.stderr == "oops\n"
    assert not table._ended  # nothing remembered once the reply came


def test_a_reply_whose_output_never_comes_is_settled_after_the_wait(monkeypatch, caplog):
    monkeypatch.setattr(results_module, "OUTPUT_WAIT_S", 0.0)
    table = ResultTable()
    ar: AsyncResult = AsyncResult(["t1"])
    table.add(ar)
    table.handle_reply(_reply({"t1": 1}, wrote=["t1"]))
    with caplog.at_level(logging.WARNING, logger="zpool.client.results"):
        table.expire_deferred()
    assert ar.get(0) == 1
    assert "did not all arrive" in caplog.text


def test_failing_everything_still_gives_replies_that_came_their_results():
    table = ResultTable()
    waiting: AsyncResult = AsyncResult(["t1"])
    unanswered: AsyncResult = AsyncResult(["t2"])
    table.add(waiting)
    table.add(unanswered)
    table.handle_reply(_reply({"t1": "done"}, wrote=["t1"]))
    table.close(lambda: RuntimeError("closed"))
    assert waiting.get(0) == "done"
    assert isinstance(unanswered.exception(0), RuntimeError)


def test_replies_that_printed_nothing_are_not_held():
    table = ResultTable()
    ar: AsyncResult = AsyncResult(["t1", "t2"])
    table.add(ar)
    table.handle_reply(_reply({"t1": 1, "t2": 2}, wrote=[]))
    assert ar.get(0) == [1, 2] and ar.stdout == ["", ""]
