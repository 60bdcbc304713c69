"""The task database (``zpool.controller.taskdb``): records, queries, bounds, and a writer killed mid-write."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from zpool.controller import taskdb
from zpool.controller.taskdb import Query, TaskDB, client_of, pack_frames, unpack_frames

T = 60


def ask(db: TaskDB, op: str, question=None):
    """Ask `db` and wait for its answer (as the hub does, through the wake pipe)."""
    token = object()
    db.ask(token, op, question)
    deadline = time.monotonic() + T
    while time.monotonic() < deadline:
        for got, answer in db.answers():
            assert got is token
            if isinstance(answer, Exception):
                raise answer
            return answer
        time.sleep(0.005)
    raise AssertionError(f"no answer to {op} within {T} s")


@pytest.fixture
def db(tmp_path):
    store = TaskDB(str(tmp_path / "tasks.db"))
    yield store
    store.close()


def test_frames_pack_and_unpack():
    frames = [b"", b"header", bytes(range(256)) * 10, memoryview(b"view")]
    assert unpack_frames(pack_frames(frames)) == [b"", b"header", bytes(range(256)) * 10, b"view"]
    assert unpack_frames(pack_frames([])) == []
    blob = pack_frames([b"abc"])
    for bad in (b"", blob[:-1], blob + b"x", blob[:6]):
        with pytest.raises(ValueError):
            unpack_frames(bad)


def test_the_file_is_private_and_a_foreign_or_newer_database_is_refused(tmp_path):
    path = tmp_path / "tasks.db"
    TaskDB(str(path)).close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
    with pytest.raises(ValueError, match="not a zpool task database"):
        TaskDB(str(other))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema'")
    with pytest.raises(ValueError, match="schema 99, newer"):
        TaskDB(str(path))


def _fill(db: TaskDB, clients: int, per_client: int, t0: float) -> dict[str, dict]:
    """Record tasks as the hub does (submitted, then finished in batches); what each record must say."""
    expected = {}
    for c in range(clients):
        client = f"{c:012x}"
        rows, done = [], []
        for i in range(per_client):
            task_id = f"{client}-{i}"
            submitted = t0 + i
            status = "error" if i % 10 == 3 else "ok"
            engine = i % 4
            rows.append((task_id, submitted, json.dumps({"retries": 1}) if i % 2 else None, [b"call", str(i).encode()]))
            if i % 7 != 6:  # every seventh stays pending
                done.append((task_id, status, engine, submitted + 0.1, submitted + 0.5, [f"result {i}".encode()]))
                expected[task_id] = {"client": client, "status": status, "engine": engine, "submitted": submitted}
            else:
                expected[task_id] = {"client": client, "status": "pending", "engine": None, "submitted": submitted}
            if len(rows) == 500:
                db.submitted(rows)
                db.finished(done)
                rows, done = [], []
        db.submitted(rows)
        db.finished(done)
    return expected


def test_ten_thousand_records_are_queried_by_status_client_engine_and_time(db):
    t0 = 1_700_000_000.0
    expected = _fill(db, clients=3, per_client=4000, t0=t0)
    assert len(expected) == 12_000
    everything = ask(db, "query", Query({}))
    assert len(everything) == taskdb.QUERY_LIMIT  # bounded, oldest first
    assert ask(db, "stats")["records"] == 12_000

    def ids(**criteria):
        return {r["id"] for r in ask(db, "query", Query({**criteria, "limit": taskdb.QUERY_LIMIT}))}

    def want(pred):
        return {i for i, e in expected.items() if pred(e)}

    assert ids(status="error") == want(lambda e: e["status"] == "error")
    assert ids(status=["pending"], client="000000000001") == want(
        lambda e: e["status"] == "pending" and e["client"] == "000000000001"
    )
    assert ids(engine=2, client="000000000002") == want(lambda e: e["engine"] == 2 and e["client"] == "000000000002")
    assert ids(submitted_after=t0 + 3990, submitted_before=t0 + 3995) == want(
        lambda e: t0 + 3990 <= e["submitted"] < t0 + 3995
    )
    assert ids(completed_before=t0 + 2.0) == want(lambda e: e["status"] != "pending" and e["submitted"] + 0.5 < t0 + 2)
    picked = ["000000000000-5", "000000000002-3999", "none-1"]
    records = ask(db, "query", Query({"ids": picked}))
    assert [r["id"] for r in records] == picked[:2]
    first = records[0]
    assert first["flags"] == {"retries": 1} and first["status"] == "ok" and first["engine"] == 1
    assert first["call_kept"] and first["result_kept"] and first["result_bytes"] == len(b"result 5")
    assert first["started"] == pytest.approx(first["submitted"] + 0.1)
    fetched = ask(db, "fetch", ["000000000001-3", "000000000001-6", "missing-0"])
    assert fetched["000000000001-3"][0] == "error" and fetched["000000000001-3"][4] == [b"result 3"]
    assert fetched["000000000001-6"][0] == "pending" and fetched["000000000001-6"][4] is None
    assert "missing-0" not in fetched
    calls = ask(db, "calls", ["000000000000-1"])
    assert calls["000000000000-1"][1] == [b"call", b"1"] and json.loads(calls["000000000000-1"][2]) == {"retries": 1}


def test_queries_are_checked():
    for bad, match in (
        ({"status": "done"}, "status"),
        ({"engine": "0"}, "engine"),
        ({"ids": "a-1"}, "ids"),
        ({"limit": 0}, "limit"),
        ({"limit": 10**9}, "limit"),
        ({"submitted_after": "yesterday"}, "submitted_after"),
        ({"colour": "red"}, "unknown query criteria: colour"),
        ([], "object"),
    ):
        with pytest.raises(ValueError, match=match):
            Query(bad)
    assert client_of("0123456789ab-42") == "0123456789ab"


def test_purge_removes_finished_records_and_never_pending_ones(db):
    expected = _fill(db, clients=1, per_client=100, t0=0.0)
    pending = {i for i, e in expected.items() if e["status"] == "pending"}
    assert ask(db, "purge", ["000000000000-0", "000000000000-6", "nobody-1"]) == 1  # -6 is pending
    assert ask(db, "purge", None) == 100 - len(pending) - 1
    assert {r["id"] for r in ask(db, "query", Query({}))} == pending
    assert ask(db, "stats")["payload_bytes"] == sum(
        len(pack_frames([b"call", i.split("-")[1].encode()])) for i in pending
    )


def test_the_size_cap_removes_the_oldest_finished_records(tmp_path):
    store = TaskDB(str(tmp_path / "tasks.db"), max_bytes=200_000)
    try:
        store.submitted([("keep-0", 0.0, None, [b"x" * 100])])  # pending: never removed
        for i in range(50):
            store.submitted([(f"c-{i}", float(i), None, [b"a" * 100])])
            store.finished([(f"c-{i}", "ok", 0, float(i), float(i) + 1, [b"r" * 10_000])])
        left = ask(store, "query", Query({}))
        stats = ask(store, "stats")
        assert stats["payload_bytes"] <= 200_000
        kept = [r["id"] for r in left]
        assert kept[0] == "keep-0" and kept[-1] == "c-49"
        assert 10 < len(kept) < 21 and kept[1:] == [f"c-{i}" for i in range(51 - len(kept), 50)]
    finally:
        store.close()


def test_a_payload_beyond_its_bound_is_recorded_without_it(db, monkeypatch):
    monkeypatch.setattr(taskdb, "MAX_RESULT_BYTES", 1000)
    monkeypatch.setattr(taskdb, "MAX_CALL_BYTES", 1000)
    db.submitted([("big-0", 1.0, None, [b"c" * 2000]), ("small-0", 1.0, None, [b"c"])])
    db.finished([("big-0", "ok", 0, 1.0, 2.0, [b"r" * 5000])])
    (big,) = ask(db, "query", Query({"ids": ["big-0"]}))
    assert not big["call_kept"] and not big["result_kept"]
    assert big["call_bytes"] == 2000 and big["result_bytes"] == 5000
    assert ask(db, "fetch", ["big-0"])["big-0"][4] is None
    assert ask(db, "calls", ["small-0"])["small-0"][1] == [b"c"]


def test_writes_from_several_threads_all_land(db):
    def client(c: int) -> None:
        for i in range(0, 1000, 50):
            ids = [f"{c:012x}-{j}" for j in range(i, i + 50)]
            db.submitted([(task_id, float(j), None, [b"x"]) for j, task_id in enumerate(ids)])
            db.finished([(task_id, "ok", c, 1.0, 2.0, [b"y"]) for task_id in ids])

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    stats = ask(db, "stats")
    assert stats["records"] == 4000
    assert stats["clients"] == {f"{c:012x}": {"ok": 1000} for c in range(4)}


def test_records_pending_when_the_controller_stopped_become_lost(tmp_path):
    path = str(tmp_path / "tasks.db")
    first = TaskDB(path)
    first.submitted([("a-0", 1.0, None, [b"x"]), ("a-1", 1.0, None, [b"x"])])
    first.finished([("a-0", "ok", 0, 1.0, 2.0, [b"y"])])
    first.close()
    second = TaskDB(path)
    try:
        assert second.lost == 1
        assert [(r["id"], r["status"]) for r in ask(second, "query", Query({}))] == [("a-0", "ok"), ("a-1", "lost")]
    finally:
        second.close()


WRITER = textwrap.dedent(
    """
    import sys, time
    from zpool.controller.taskdb import TaskDB

    db = TaskDB(sys.argv[1])
    n = 0
    while True:
        ids = [f"w-{n + i}" for i in range(200)]
        db.submitted([(i, time.time(), None, [b"call" * 50]) for i in ids])
        db.finished([(i, "ok", 0, 1.0, 2.0, [i.encode() * 20]) for i in ids])
        n += 200
        token = object()
        db.ask(token, "stats", None)  # answered after the commit of everything before it
        while not db.answers():
            time.sleep(0.001)
        print(n, flush=True)  # every record up to w-(n-1) is committed
    """
)


@pytest.mark.timeout(120)
def test_a_writer_killed_mid_write_loses_no_committed_record(tmp_path):
    path = str(tmp_path / "tasks.db")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True)
    committed = 0
    try:
        for line in writer.stdout:  # (it writes all the time: the kill lands in a write)
            committed = int(line)
            if committed >= 20_000:
                break
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    assert committed >= 20_000
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = TaskDB(path)  # opened as a controller started again would
    try:
        found = ask(store, "fetch", [f"w-{i}" for i in range(committed)])
        assert len(found) == committed
        assert all(
            found[f"w-{i}"][0] == "ok" and found[f"w-{i}"][4] == [f"w-{i}".encode() * 20] for i in range(committed)
        )
        assert ask(store, "stats")["records"] >= committed
    finally:
        store.close()
