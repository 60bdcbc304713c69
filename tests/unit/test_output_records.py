"""The output pipe's records (zpool._output), the engine's writer of them, and the caller's forwarder."""

from __future__ import annotations

import io
import os
import random
import sys

import pytest

from zpool._output import BEGIN, END, ERR, OUT, WRITE_MAX, RecordReader, pack, split_begin
from zpool.client.output import Forwarder, parse_parts
from zpool.engine.output import TaskOutput
from zpool.error import ProtocolError


def _records(data: bytes, cuts: int = 0) -> list[tuple[int, bytes]]:
    """The records in `data`, fed to a reader in pieces cut at `cuts` random places."""
    reader = RecordReader()
    points = sorted(random.Random(cuts).sample(range(1, len(data)), min(cuts, len(data) - 1))) if cuts else []
    got: list[tuple[int, bytes]] = []
    start = 0
    for point in [*points, len(data)]:
        got += list(reader.feed(data[start:point]))
        start = point
    assert reader.pending == 0
    return got


def test_records_survive_any_read_boundaries():
    data = pack(BEGIN, b"task-1\0route") + pack(OUT, "héllo\n".encode()) + pack(ERR, b"") + pack(END, b"task-1")
    expected = [(BEGIN, b"task-1\0route"), (OUT, "héllo\n".encode()), (ERR, b""), (END, b"task-1")]
    for cuts in (0, 1, 3, 10, len(data) - 1):
        assert _records(data, cuts) == expected
    assert split_begin(b"task-1\0route") == ("task-1", b"route")
    assert split_begin(b"task-1\0") == ("task-1", b"")


def test_a_record_cut_short_waits_for_the_rest():
    reader = RecordReader()
    record = pack(OUT, b"abcdef")
    assert list(reader.feed(record[:4])) == []
    assert reader.pending == 4
    assert list(reader.feed(record[4:])) == [(OUT, b"abcdef")]


class _Pipe:
    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.writes: list[int] = []

    def read_all(self) -> bytes:
        os.close(self.w)
        chunks = []
        while True:
            chunk = os.read(self.r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self.r)
        return b"".join(chunks)


@pytest.fixture
def pipe(monkeypatch):
    p = _Pipe()
    real_write = os.write

    def counting_write(fd, data):
        if fd == p.w:
            p.writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    yield p
    for fd in (p.r, p.w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_task_output_sends_whole_lines_announced_once_and_ended(pipe):
    out = TaskOutput(pipe.w, limit=1 << 20)
    stdout = out.stream(OUT)
    out.start("t1", b"client")
    print("one", file=stdout)
    stdout.write("tw")
    stdout.write("o\nthree")  # "three" waits for its line's end, or the task's
    assert out.finish("t1") is True
    out.start("t2", b"")
    assert out.finish("t2") is False  # printed nothing: nothing announced
    assert out.finish("t2") is False
    records = _records(pipe.read_all(), cuts=7)
    assert records == [
        (BEGIN, b"t1\0client"),
        (OUT, b"one\n"),
        (OUT, b"two\n"),
        (OUT, b"three"),
        (END, b"t1"),
    ]
    assert all(n <= WRITE_MAX for n in pipe.writes)


def test_output_outside_tasks_is_the_engines(pipe):
    out = TaskOutput(pipe.w, limit=1 << 20)
    out.start("t1", b"")
    out.stream(ERR).write("in task\n")
    out.finish("t1")
    out.stream(ERR).write("engine's own\n")
    records = _records(pipe.read_all())
    assert records == [
        (BEGIN, b"t1\0"),
        (ERR, b"in task\n"),
        (END, b"t1"),  # (after an END, text is the engine's own: no BEGIN needed)
        (ERR, b"engine's own\n"),
    ]


def test_long_output_goes_in_writes_of_at_most_pipe_buf(pipe):
    out = TaskOutput(pipe.w, limit=1 << 20)
    out.start("t1", b"")
    text = "".join(f"line {i} " + "y" * (i % 300) + "\n" for i in range(300))
    out.stream(OUT).write(text)
    out.finish("t1")
    got = _records(pipe.read_all(), cuts=50)
    assert b"".join(payload for kind, payload in got if kind == OUT).decode() == text
    assert pipe.writes and all(n <= WRITE_MAX for n in pipe.writes)


def test_a_task_may_send_up_to_its_limit(pipe):
    out = TaskOutput(pipe.w, limit=100)
    out.start("t1", b"")
    for _ in range(10):
        out.stream(OUT).write("z" * 30 + "\n")
    out.finish("t1")
    got = _records(pipe.read_all())
    sent = b"".join(payload for kind, payload in got if kind == OUT)
    notes = b"".join(payload for kind, payload in got if kind == ERR).decode()
    assert len(sent) == 100
    assert "wrote more than 100 bytes" in notes


def test_a_task_over_its_limit_at_once_is_still_ended(pipe):
    out = TaskOutput(pipe.w, limit=0)
    out.start("t1", b"")
    out.stream(OUT).write("too much\n")
    assert out.finish("t1") is True
    got = _records(pipe.read_all())
    assert [kind for kind, _ in got] == [BEGIN, ERR, END]
    assert b"wrote more than 0 bytes" in got[1][1]


def test_the_stream_looks_like_a_text_file(pipe):
    out = TaskOutput(pipe.w, limit=1000)
    stream = out.stream(OUT)
    assert stream.writable() and not stream.isatty()
    assert stream.fileno() == 1 and out.stream(ERR).fileno() == 2
    assert stream.encoding == "utf-8"
    with pytest.raises(TypeError, match="must be str"):
        stream.write(b"bytes")  # type: ignore[arg-type]


def test_forwarder_prefixes_each_line_with_its_engine(monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    fw = Forwarder()
    fw.write([["engine 1", "t1", "out", "a\nb"], ["engine 2", "t2", "out", "c\n"]])
    fw.write([["engine 1", "t1", "out", "-continued\n"], ["engine 1", "t1", "err", "oops\n"]])
    fw.write([["engine 2", "t3", "out", "open"], ["engine 2", "t3", "end", ""], ["engine 2", "", "out", "next\n"]])
    # Whole lines only: a line left open waits for its end, or its task's.
    assert out.getvalue() == ("[engine 1] a\n[engine 2] c\n[engine 1] b-continued\n[engine 2] open\n[engine 2] next\n")
    fw.write([["engine 3", "t4", "out", "\r 10%"], ["engine 3", "t4", "out", "\r 20%"]])
    assert out.getvalue().endswith("[engine 3] \r[engine 3]  10%\r")  # (a progress bar redrawn: one behind)
    assert err.getvalue() == "[engine 1] oops\n"


def test_malformed_stream_messages_are_refused():
    assert parse_parts({"parts": [["engine 1", "", "out", "x"]]}) == [["engine 1", "", "out", "x"]]
    for content in ({}, {"parts": "x"}, {"parts": [["a", "b", "c"]]}, {"parts": [["a", "b", "c", 1]]}, []):
        with pytest.raises(ProtocolError):
            parse_parts(content)
