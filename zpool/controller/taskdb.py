"""The task database of a standalone cluster: every task's record, in SQLite.

::

    Hub (its thread) ──submitted / finished / ask──▶ queue ──▶ writer thread ──▶ tasks.db (WAL)
        ◀──────── answers, and a byte on the wake pipe ◀──────

A standalone cluster (``zpool cluster start``, ``zpool controller --db``)
keeps a record of every task its controller receives, so that a client
that comes back, or another client, can fetch results by task id
(``Pool.get_result``), query the records (``Pool.db_query``) and run
finished tasks again (``Pool.resubmit``), even after the controller was
restarted. The hidden cluster of a plain ``Pool()`` keeps none (its
results go to the one client that waits for them).

One record per task (table ``tasks``): its id, its client (the first part
of the task id, the submitting pool's :attr:`~zpool.Pool.client_id`), its
status (``pending`` until it ends, then ``ok``, ``error`` or ``aborted``;
``lost`` for a task that was pending when its controller stopped), the
engine and times, its scheduling flags (JSON), and two payloads, kept as
frames packed by :func:`pack_frames`: the call (for ``resubmit``) and the
reply (for ``get_result``). The controller never unpickles either.

The controller is the only writer, from a thread of its own: the hub only
appends to a queue, so SQLite's work is off the loop that routes tasks.
Writes are committed in batches, whatever arrived since the last commit,
in WAL mode with ``synchronous=NORMAL``: a committed record survives the
controller's death (SIGKILL included; the operating system holds what was
written), and a power cut may lose the last commits, never corrupt the
file. Queries run in the same thread after the writes queued before them,
so a client sees every record the controller had received when it asked.

Sizes are bounded: a call of more than :data:`MAX_CALL_BYTES`, or a
result of more than :data:`MAX_RESULT_BYTES`, is recorded without its
payload (its size is kept, and fetching it says why it is missing); and
when the payloads of all records exceed ``max_bytes`` (``--db-max-mb``),
the oldest finished records are removed until they take 90% of it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import sqlite3
import struct
import threading
import time
from typing import Any, Iterable, Sequence

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_CALL_BYTES",
    "MAX_RESULT_BYTES",
    "QUERY_KEYS",
    "QUERY_LIMIT",
    "STATUSES",
    "TaskDB",
    "client_of",
    "pack_frames",
    "unpack_frames",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Payloads (calls and results) kept in all, by default (--db-max-mb).
DEFAULT_MAX_BYTES = 1 << 30
# A call or a result larger than this is recorded without its payload.
MAX_CALL_BYTES = 16 << 20
MAX_RESULT_BYTES = 64 << 20
# Rows a query returns at most, unless it asks for fewer.
QUERY_LIMIT = 10_000
# What a record's status may be.
STATUSES = ("pending", "ok", "error", "aborted", "lost")
# The fields of a record a query returns (payloads are fetched with get_result).
QUERY_KEYS = (
    "id",
    "client",
    "status",
    "engine",
    "submitted",
    "started",
    "completed",
    "flags",
    "call_bytes",
    "result_bytes",
    "call_kept",
    "result_kept",
)
# A new task's record waits this long, in seconds, for the task to finish, to be written once, whole.
PENDING_HOLD_S = 0.1
# Items the writer takes off its queue for one transaction, at most.
BATCH_ITEMS = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    status TEXT NOT NULL,
    engine INTEGER,
    submitted REAL NOT NULL,
    started REAL,
    completed REAL,
    flags TEXT,
    call BLOB,
    result BLOB,
    call_bytes INTEGER NOT NULL DEFAULT 0,
    result_bytes INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_client ON tasks (client, submitted);
"""

_COUNT = struct.Struct("<I")
INSERT_SQL = (
    "INSERT OR IGNORE INTO tasks (id, client, status, engine, submitted, started, completed, flags, call, result,"
    " call_bytes, result_bytes, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def client_of(task_id: str) -> str:
    """The client that submitted `task_id`: the part before its first ``-`` (see ``Session.new_id``)."""
    return task_id.partition("-")[0]


def _nbytes(frame: Any) -> int:
    return len(frame) if type(frame) is bytes else memoryview(frame).nbytes


def pack_frames(frames: Sequence[Any]) -> bytes:
    """Frames as one blob: their count (u32), each one's length (u64), then their bytes, little-endian."""
    sizes = [_nbytes(f) for f in frames]
    return b"".join([_COUNT.pack(len(sizes)), struct.pack(f"<{len(sizes)}Q", *sizes), *frames])


def unpack_frames(blob: bytes) -> list[bytes]:
    """The frames of a blob made by :func:`pack_frames`.

    Raises
    ------
    ValueError
        If `blob` is not such a blob.
    """
    view = memoryview(blob)
    if view.nbytes < 4:
        raise ValueError("a frames blob is at least 4 bytes")
    (count,) = _COUNT.unpack_from(view)
    pos = 4 + 8 * count
    if view.nbytes < pos:
        raise ValueError("a frames blob is shorter than its lengths")
    out = []
    for size in struct.unpack_from(f"<{count}Q", view, 4):
        if pos + size > view.nbytes:
            raise ValueError("a frames blob is shorter than its frames")
        out.append(bytes(view[pos : pos + size]))
        pos += size
    if pos != view.nbytes:
        raise ValueError("a frames blob is longer than its frames")
    return out


class Query:
    """A client's query of the records, checked (see ``Pool.db_query``)."""

    def __init__(self, spec: Any) -> None:
        if not isinstance(spec, dict):
            raise ValueError("a query is an object of criteria")
        where: list[str] = []
        args: list[Any] = []
        ids = spec.get("ids")
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError("'ids' must be a list of task ids")
            where.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
            args += ids
        status = spec.get("status")
        if status is not None:
            wanted = [status] if isinstance(status, str) else status
            if not isinstance(wanted, list) or not wanted or not all(s in STATUSES for s in wanted):
                raise ValueError(f"'status' must be one of {', '.join(STATUSES)}, or a list of them")
            where.append(f"status IN ({','.join('?' * len(wanted))})")
            args += wanted
        client = spec.get("client")
        if client is not None:
            if not isinstance(client, str):
                raise ValueError("'client' must be a client id (str)")
            where.append("client = ?")
            args.append(client)
        engine = spec.get("engine")
        if engine is not None:
            if type(engine) is not int:
                raise ValueError("'engine' must be an engine id (int)")
            where.append("engine = ?")
            args.append(engine)
        for key, column, op in (
            ("submitted_after", "submitted", ">="),
            ("submitted_before", "submitted", "<"),
            ("completed_after", "completed", ">="),
            ("completed_before", "completed", "<"),
        ):
            value = spec.get(key)
            if value is not None:
                if type(value) not in (int, float):
                    raise ValueError(f"{key!r} must be a time in seconds since the epoch")
                where.append(f"{column} {op} ?")
                args.append(value)
        limit = spec.get("limit", QUERY_LIMIT)
        if type(limit) is not int or not 0 < limit <= QUERY_LIMIT:
            raise ValueError(f"'limit' must be an int from 1 to {QUERY_LIMIT}")
        unknown = set(spec) - {
            "ids",
            "status",
            "client",
            "engine",
            "submitted_after",
            "submitted_before",
            "completed_after",
            "completed_before",
            "limit",
        }
        if unknown:
            raise ValueError(f"unknown query criteria: {', '.join(sorted(unknown))}")
        self.sql = (
            "SELECT id, client, status, engine, submitted, started, completed, flags, call_bytes, result_bytes,"
            " call IS NOT NULL, result IS NOT NULL FROM tasks"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY submitted, seq LIMIT ?"
        )
        self.args = [*args, limit]


class TaskDB:
    """The records of a cluster's tasks in SQLite, written by a thread of its own.

    Parameters
    ----------
    path : str
        The database file (created, mode 0600, if missing). Records left
        ``pending`` by a controller that stopped become ``lost``.
    max_bytes : int
        Payload bytes kept in all (see the module docstring).

    Raises
    ------
    ValueError
        If `path` is not a zpool task database, or of a later version.
    sqlite3.Error
        If it cannot be opened.
    """

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        if not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self.lost, self.payload_bytes = self._prepare(self._conn)
            self._seq = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM tasks").fetchone()[0]
        except BaseException:
            self._conn.close()
            raise
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.failed: str | None = None  # the last write error, for the log and the status
        self._thread = threading.Thread(target=self._run, name="zpool-taskdb", daemon=True)
        self._thread.start()

    @staticmethod
    def _prepare(conn: sqlite3.Connection) -> tuple[int, int]:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "tasks" not in tables:
            raise ValueError("not a zpool task database (it has other tables); name another file with --db")
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise ValueError(f"the task database has schema {row[0]}, newer than this zpool's {SCHEMA_VERSION}")
        lost = conn.execute("UPDATE tasks SET status='lost' WHERE status='pending'").rowcount
        total = conn.execute(
            "SELECT COALESCE(SUM(LENGTH(call)), 0) + COALESCE(SUM(LENGTH(result)), 0) FROM tasks"
        ).fetchone()[0]
        return lost, int(total)

    # -- the hub's side -----------------------------------------------------

    @property
    def wake_fd(self) -> int:
        """Readable when answers wait (:meth:`answers`)."""
        return self._wake_r

    def submitted(self, rows: list[tuple[str, float, str | None, list[Any] | None]]) -> None:
        """Record new tasks: ``(task id, submitted (epoch s), flags JSON or None, call frames or None)`` each.

        The frames are read by the writer later: they must not change.
        """
        if rows:
            self._queue.put(("submitted", rows))

    def finished(self, rows: list[tuple[str, str, int | None, float, float, list[Any]]]) -> None:
        """Record tasks that ended: ``(task id, status, engine id, started, completed, reply frames)`` each."""
        if rows:
            self._queue.put(("finished", rows))

    def ask(self, token: Any, op: str, arg: Any) -> None:
        """Ask a question, answered in turn after the writes asked before it (see :meth:`answers`).

        `op`: ``query`` (a :class:`Query`), ``fetch`` or ``calls`` (task
        ids), ``purge`` (task ids, or None for every finished record),
        ``stats`` (None).
        """
        self._queue.put((op, (token, arg)))

    def answers(self) -> list[tuple[Any, Any]]:
        """The answers ready: ``(token, answer)`` each; an answer is an exception if the question failed."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while True:
            try:
                out.append(self._answers.get_nowait())
            except queue.Empty:
                return out

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer and close the file."""
        self._queue.put(("stop", None))
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("the task database's writer did not finish within %.0f s", timeout)
        else:
            self._conn.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- the writer thread --------------------------------------------------

    def _run(self) -> None:
        # Records of new tasks wait here up to PENDING_HOLD_S (oldest first): most tasks finish by then,
        # and are written once, whole, rather than inserted and then updated.
        staged: collections.OrderedDict[str, list[Any]] = collections.OrderedDict()
        stop = False
        while not stop:
            try:
                items = [self._queue.get(timeout=PENDING_HOLD_S if staged else None)]
            except queue.Empty:
                items = []
            while len(items) < BATCH_ITEMS:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            answers: list[tuple[Any, Any]] = []
            finished: list[list[Any]] = []  # staged records that finished: written now
            updates: list[tuple[Any, ...]] = []  # tasks written as pending already
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                for op, arg in items:
                    if op == "stop":
                        stop = True
                    elif op == "submitted":
                        self._stage_submitted(arg, staged)
                    elif op == "finished":
                        self._stage_finished(arg, staged, finished, updates)
                    else:
                        self._write(staged, finished, updates, every=True)  # it sees every write asked before it
                        token, question = arg
                        try:
                            answers.append((token, self._answer(op, question)))
                        except (sqlite3.Error, ValueError) as exc:
                            answers.append((token, exc))
                self._write(staged, finished, updates, every=stop)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self.failed = f"{type(exc).__name__}: {exc}"
                logger.error("the task database could not record %d changes: %s", len(items), self.failed)
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                answers = [(token, exc) for token, _ in answers]
            for answer in answers:
                self._answers.put(answer)
            if answers:
                try:
                    os.write(self._wake_w, b"\0")
                except (BlockingIOError, OSError):
                    pass  # a byte is there already, or the hub is gone

    def _stage_submitted(
        self, rows: list[tuple[str, float, str | None, list[Any] | None]], staged: dict[str, list[Any]]
    ) -> None:
        now = time.monotonic()
        for task_id, when, flags, frames in rows:
            if task_id in staged:
                continue  # (a pushed task the engine passed on again keeps its first record)
            size = sum(_nbytes(f) for f in frames) if frames else 0
            call = pack_frames(frames) if frames and size <= MAX_CALL_BYTES else None
            if call is not None:
                self.payload_bytes += len(call)
            # The columns of INSERT_SQL (seq: the order the controller received them in), and when it was staged.
            self._seq += 1
            row = [
                task_id,
                client_of(task_id),
                "pending",
                None,
                when,
                None,
                None,
                flags,
                call,
                None,
                size,
                0,
                self._seq,
                now,
            ]
            staged[task_id] = row

    def _stage_finished(
        self,
        rows: list[tuple[str, str, int | None, float, float, list[Any]]],
        staged: dict[str, list[Any]],
        finished: list[list[Any]],
        updates: list[tuple[Any, ...]],
    ) -> None:
        for task_id, status, engine, started, completed, frames in rows:
            size = sum(_nbytes(f) for f in frames)
            result = pack_frames(frames) if size <= MAX_RESULT_BYTES else None
            if result is not None:
                self.payload_bytes += len(result)
            row = staged.pop(task_id, None)
            if row is not None:
                row[2:4] = status, engine
                row[5:7] = started, completed
                row[9] = result
                row[11] = size
                finished.append(row)
            else:
                updates.append((status, engine, started, completed, result, size, task_id))

    def _write(
        self,
        staged: collections.OrderedDict[str, list[Any]],
        finished: list[list[Any]],
        updates: list[tuple[Any, ...]],
        every: bool,
    ) -> None:
        """Write the finished records, and the pending ones staged long enough (`every`: all of them).

        Then keep within ``max_bytes``. The lists are emptied.
        """
        horizon = time.monotonic() - PENDING_HOLD_S
        while staged:
            first = next(iter(staged.values()))
            if not every and first[-1] > horizon:
                break
            finished.append(staged.popitem(last=False)[1])
        if finished:
            # A task id recorded already (a pushed task the engine passed on) keeps its first record.
            self._conn.executemany(INSERT_SQL, [row[:-1] for row in finished])
            finished.clear()
        if updates:
            self._conn.executemany(
                "UPDATE tasks SET status=?, engine=?, started=?, completed=?, result=?, result_bytes=? WHERE id=?",
                updates,
            )
            updates.clear()
        if self.payload_bytes > self.max_bytes:
            self._shrink()

    def _shrink(self) -> None:
        """Remove the oldest finished records until the payloads take 90% of ``max_bytes``.

        Oldest in the order written (the table's own order: no sort), which
        is the order they finished, but for tasks written while pending.
        """
        goal = self.max_bytes * 9 // 10
        # (The running count may overstate: a record written twice, an update of no record.)
        self.payload_bytes = self._conn.execute(
            "SELECT COALESCE(SUM(LENGTH(call)), 0) + COALESCE(SUM(LENGTH(result)), 0) FROM tasks"
        ).fetchone()[0]
        if self.payload_bytes <= self.max_bytes:
            return
        removed = 0
        while self.payload_bytes > goal:
            rows = self._conn.execute(
                "SELECT id, COALESCE(LENGTH(call), 0) + COALESCE(LENGTH(result), 0) FROM tasks"
                " WHERE status != 'pending' ORDER BY rowid LIMIT 1000"
            ).fetchall()
            if not rows:
                break
            take = []
            for task_id, size in rows:
                take.append((task_id,))
                self.payload_bytes -= size
                if self.payload_bytes <= goal:
                    break
            self._conn.executemany("DELETE FROM tasks WHERE id=?", take)
            removed += len(take)
        logger.info("task database over %d bytes: removed the %d oldest finished records", self.max_bytes, removed)

    def _answer(self, op: str, question: Any) -> Any:
        conn = self._conn
        if op == "query":
            keys = QUERY_KEYS
            rows = conn.execute(question.sql, question.args).fetchall()
            out = []
            for row in rows:
                record = dict(zip(keys, row))
                record["flags"] = json.loads(record["flags"]) if record["flags"] else None
                record["call_kept"] = bool(record["call_kept"])
                record["result_kept"] = bool(record["result_kept"])
                out.append(record)
            return out
        if op == "fetch":  # task id -> (status, engine, started, completed, reply frames or None, reply bytes)
            found: dict[str, tuple[Any, ...]] = {}
            for chunk in _chunks(question):
                for task_id, status, engine, started, completed, result, size in conn.execute(
                    "SELECT id, status, engine, started, completed, result, result_bytes FROM tasks"
                    f" WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ):
                    frames = unpack_frames(result) if result is not None else None
                    found[task_id] = (status, engine, started, completed, frames, size)
            return found
        if op == "calls":  # task id -> (status, call frames or None, flags JSON or None, call bytes)
            found = {}  # (the same dict type)
            for chunk in _chunks(question):
                for task_id, status, call, flags, size in conn.execute(
                    f"SELECT id, status, call, flags, call_bytes FROM tasks WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ):
                    found[task_id] = (status, unpack_frames(call) if call is not None else None, flags, size)
            return found
        if op == "purge":
            before = self.payload_bytes
            if question is None:
                size = conn.execute(
                    "SELECT COALESCE(SUM(LENGTH(call)), 0) + COALESCE(SUM(LENGTH(result)), 0) FROM tasks"
                    " WHERE status != 'pending'"
                ).fetchone()[0]
                purged = conn.execute("DELETE FROM tasks WHERE status != 'pending'").rowcount
                self.payload_bytes = before - int(size)
                return purged
            purged = 0
            for chunk in _chunks(question):
                marks = ",".join("?" * len(chunk))
                size = conn.execute(
                    "SELECT COALESCE(SUM(LENGTH(call)), 0) + COALESCE(SUM(LENGTH(result)), 0) FROM tasks"
                    f" WHERE status != 'pending' AND id IN ({marks})",
                    chunk,
                ).fetchone()[0]
                deleted = conn.execute(f"DELETE FROM tasks WHERE status != 'pending' AND id IN ({marks})", chunk)
                purged += deleted.rowcount
                self.payload_bytes -= int(size)
            return purged
        if op == "stats":
            per_client: dict[str, dict[str, int]] = {}
            for client, status, count in conn.execute("SELECT client, status, COUNT(*) FROM tasks GROUP BY 1, 2"):
                per_client.setdefault(client, {})[status] = count
            records = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
            return {
                "path": self.path,
                "records": records,
                "payload_bytes": self.payload_bytes,
                "max_bytes": self.max_bytes,
                "clients": per_client,
                "failed": self.failed,
            }
        raise ValueError(f"unknown task database question {op!r}")


def _chunks(ids: Iterable[str], size: int = 500) -> Iterable[list[str]]:
    """`ids` in lists of at most `size` (SQLite bounds the parameters of one statement)."""
    chunk: list[str] = []
    for task_id in ids:
        chunk.append(task_id)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
