"""Property-based fuzzing (hypothesis) of every socket of the controller, and of an engine.

Controller: an outsider process connects a DEALER to each socket the controller
binds (client, engine, heartbeat) and sends generated batches of malformed,
truncated, oversized, unsigned, wrong-key and replayed messages while the
pool runs real work. Every one must be dropped (counted exactly in
``dropped_messages``, a replay logged as such, a client told by a
``reject_notice`` naming its signature), no forged task may run, the real
work must come back exact, and no process may die.

Engine: the test plays the controller (its own ROUTERs on the engine and
heartbeat addresses of a connection file with a known key), registers a real
``python -m zpool.engine`` process, then throws the same kinds of messages at
both of its sockets, plus validly signed but malformed ones (a buggy
controller). The engine must drop exactly what it should, answer exactly the
tasks it was given (garbage payloads as errors), keep answering heartbeats,
and still run a properly signed task.

Examples are derandomized and bounded, and shrinking is off, so a run is
deterministic and short; a failure prints the failing example as generated.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from typing import Any, Callable

import psutil
import pytest
import zmq
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tests import _tasks
from tests._wait import wait_until
from zpool._process import caller_path, python_command
from zpool.protocol import (
    DELIMITER,
    REPLY_COLUMNS,
    Batch,
    BatchWriter,
    ConnectionInfo,
    MsgType,
    Session,
    encode,
    new_key,
)
from zpool.serialize import dumps, dumps_call, loads

T = 60  # starting processes
WAIT = 20  # an answer during the fuzzing (short: hypothesis runs a failing example twice)
# Hypothesis keeps caches (not examples: database=None) in a directory: this run's temporary
# one (see conftest.pytest_configure), not the source tree.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "hypothesis"))
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example costs a round trip
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CONTROLLER_EXAMPLES = 60
ENGINE_EXAMPLES = 100
# The last message of each batch: garbage of a frame count no generated message has, so
# that its line in the controller's log says the whole batch has been read.
SENTINEL = [b"sentinel"] * 77
SENTINEL_LINE = "dropped a message of 78 frames: ProtocolError: no delimiter among 78 frames"
MB = 1 << 20

Frames = list[bytes]
Builder = Callable[[Session], Frames]

# -- strategies ---------------------------------------------------------------

# JSON values. Their text may hold lone surrogates (json.dumps escapes them as "\ud800"):
# a signed header holding one once killed engines and the controller (it decoded, but
# could not be encoded again); now such a message is dropped as malformed.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=()), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
json_frames = st.builds(lambda v: json.dumps(v).encode(), json_values)
headerish = st.builds(
    lambda d: json.dumps(d).encode(),
    st.dictionaries(st.sampled_from(["msg_id", "msg_type", "session", "date", "ids", "beat"]), json_values, max_size=5),
)
junk_frames = st.one_of(
    st.binary(max_size=64),
    st.just(DELIMITER),
    st.binary(min_size=32, max_size=32),  # signature-sized
    st.sampled_from([b"", b"{}", b"[]", b"null", b'{"msg_type":"queue_request"}']),
    json_frames,
    headerish,
)


KINDS = ("malformed", "truncated", "oversized", "unsigned", "wrong_key", "replayed")


def corruptions(n_bases: int, n_replayable: int) -> st.SearchStrategy[tuple[str, Any]]:
    """What an outsider can send: ``(kind, parameters)``, made into frames by :func:`corrupt`."""
    base = st.integers(0, n_bases - 1)
    return st.one_of(
        st.tuples(st.just("malformed"), st.lists(junk_frames, min_size=1, max_size=12)),
        # base, frames kept, and where to cut the last one kept (None: keep it whole)
        st.tuples(st.just("truncated"), st.tuples(base, st.integers(1, 64), st.none() | st.integers(0, 1 << 20))),
        # base, size, which frame to replace, or append one instead, and a seed for its bytes
        st.tuples(
            st.just("oversized"),
            st.tuples(base, st.integers(1 * MB, 4 * MB), st.integers(0, 63), st.booleans(), st.integers(0, 2**32 - 1)),
        ),
        st.tuples(st.just("unsigned"), st.tuples(base, st.just(b"") | st.binary(max_size=64))),
        st.tuples(st.just("wrong_key"), st.tuples(base, st.binary(min_size=1, max_size=64))),
        # which replayable message, and whether its copy comes at the end of the batch
        st.tuples(st.just("replayed"), st.tuples(st.integers(0, n_replayable - 1), st.booleans())),
    )


def _big(size: int, seed: int) -> bytes:
    chunk = random.Random(seed).randbytes(64 * 1024)
    return (chunk * (size // len(chunk) + 1))[:size]


def corrupt(kind: str, params: Any, bases: list[Builder], session: Session) -> Frames:
    """The frames of a corruption (any kind but "replayed"): never a message `session` would accept."""
    if kind == "malformed":
        return list(params)
    if kind == "wrong_key":
        index, key = params
        assume(key != session.key)
        return bases[index](Session(key))
    index = params[0]
    frames = bases[index](session)
    if kind == "truncated":
        _, keep, cut = params
        keep = min(keep, len(frames))
        out = frames[:keep]
        if cut is not None and out[-1]:
            out[-1] = out[-1][: cut % len(out[-1])]
        elif keep == len(frames):
            out = frames[:-1]
        return out
    if kind == "oversized":
        _, size, where, append, seed = params
        big = _big(size, seed)
        if append:
            frames.append(big)
        else:
            frames[where % len(frames)] = big
        return frames
    if kind == "unsigned":
        frames[1] = params[1]
        return frames
    raise AssertionError(kind)


# -- the controller -------------------------------------------------------------


@dataclasses.dataclass
class Replayable:
    frames: Frames
    msg_id: str
    first_dropped: bool  # the original is dropped too (e.g. it comes from no registered engine)
    reply_type: str | None = None  # client socket: the reply the original gets
    task: tuple[str, Any] | None = None  # client socket: (task id, result) the original runs


@dataclasses.dataclass
class ControllerTarget:
    name: str
    bases: list[Builder]
    replayables: list[Callable[[Session], Replayable]]


def _header_id(frames: Frames) -> str:
    return json.loads(frames[2])["msg_id"]


def _controller_target(name: str, marker: str) -> ControllerTarget:
    counter = iter(range(1 << 30))

    def forged_tasks(s: Session) -> Frames:
        # Tasks that must never run: the first would create `marker`.
        batch = BatchWriter()
        batch.add(f"forged-{next(counter)}", dumps_call(open, (marker, "w")))
        batch.add(f"forged-{next(counter)}", dumps_call(_tasks.identity, (b"\x01" * 70_000,)))  # frames of its own
        return s.build(MsgType.APPLY_REQUEST, batch.fields(), buffers=batch.buffers())

    if name == "client":

        def request(msg_type: MsgType, reply: MsgType) -> Callable[[Session], Replayable]:
            def build(s: Session) -> Replayable:
                frames = s.build(msg_type)
                return Replayable(frames, _header_id(frames), False, reply_type=reply.value)

            return build

        def square(s: Session) -> Replayable:
            x = next(counter)
            task_id = f"replayed-task-{x}"
            batch = BatchWriter()
            batch.add(task_id, dumps_call(_tasks.square, (x,)))
            frames = s.build(MsgType.APPLY_REQUEST, batch.fields(), buffers=batch.buffers())
            return Replayable(frames, _header_id(frames), False, task=(task_id, x * x))

        return ControllerTarget(
            name,
            [
                lambda s: s.build(MsgType.QUEUE_REQUEST),
                lambda s: s.build(MsgType.CONNECT_REQUEST),
                lambda s: s.build(MsgType.SHUTDOWN_REQUEST),
                lambda s: s.build(MsgType.ABORT_REQUEST, content=encode({"ids": ["forged-0"]})),
                forged_tasks,
            ],
            [
                request(MsgType.QUEUE_REQUEST, MsgType.QUEUE_REPLY),
                request(MsgType.CONNECT_REQUEST, MsgType.CONNECT_REPLY),
                square,
            ],
        )

    def fake_reply(s: Session) -> Frames:
        now = time.time()
        batch = BatchWriter(REPLY_COLUMNS)
        batch.add(f"forged-{next(counter)}", dumps(1), "ok", 0, now, now)
        return s.build(MsgType.APPLY_REPLY, batch.fields(), buffers=batch.buffers())

    def dropped_twice(build: Builder) -> Callable[[Session], Replayable]:
        def replayable(s: Session) -> Replayable:
            frames = build(s)
            return Replayable(frames, _header_id(frames), True)

        return replayable

    if name == "engine":
        ready = lambda s: s.build(MsgType.ENGINE_READY, content=encode({"ok": True}))  # noqa: E731
        return ControllerTarget(
            name,
            [
                # Accepted, this would register an engine of ours (and get real tasks).
                lambda s: s.build(MsgType.REGISTER_REQUEST, content=encode({"hostname": "fuzz"})),
                fake_reply,
                ready,
            ],
            # From no registered engine, even the originals are dropped; the copies as replays.
            [dropped_twice(ready), dropped_twice(fake_reply)],
        )

    assert name == "heartbeat"

    def pong(s: Session) -> Replayable:
        frames = s.build(MsgType.HEARTBEAT_REPLY, {"beat": next(counter)})
        return Replayable(frames, _header_id(frames), False)  # an unknown engine's pong: ignored, not dropped

    return ControllerTarget(
        name,
        [
            lambda s: s.build(MsgType.HEARTBEAT_REPLY, {"beat": 1}),
            lambda s: s.build(MsgType.HEARTBEAT_REQUEST, {"beat": 1}),
            lambda s: s.build(MsgType.SHUTDOWN_REQUEST),
        ],
        [pong],
    )


@dataclasses.dataclass
class Plan:
    sends: list[Frames] = dataclasses.field(default_factory=list)
    drops: int = 0
    notices: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    replay_signatures: set[str] = dataclasses.field(default_factory=set)
    replies: dict[str, str] = dataclasses.field(default_factory=dict)  # request msg_id -> reply type
    tasks: dict[str, Any] = dataclasses.field(default_factory=dict)  # task id -> result
    replayed_ids: list[str] = dataclasses.field(default_factory=list)


def _notice_signature(frames: Frames) -> str | None:
    """The signature a reject_notice names for `frames` dropped on the client socket (Hub._notify_rejected)."""
    raw = [b"identity", *frames[:63]]  # the ROUTER puts the sender's identity first
    if DELIMITER not in raw:
        return None
    i = raw.index(DELIMITER)
    if i + 1 >= len(raw):
        return None
    return raw[i + 1][:64].hex()


def _plan_controller(cases: list[tuple[str, Any]], target: ControllerTarget, session: Session) -> Plan:
    plan = Plan()
    late: list[Frames] = []

    def dropped(frames: Frames, replay: bool = False) -> None:
        plan.drops += 1
        if target.name == "client":
            signature = _notice_signature(frames)
            if signature is not None:
                plan.notices[signature] += 1
                if replay:
                    plan.replay_signatures.add(signature)

    for kind, params in cases:
        if kind != "replayed":
            frames = corrupt(kind, params, target.bases, session)
            plan.sends.append(frames)
            dropped(frames)
            continue
        index, at_end = params
        original = target.replayables[index](session)
        plan.sends.append(original.frames)
        if original.first_dropped:
            dropped(original.frames)
        if original.reply_type:
            plan.replies[original.msg_id] = original.reply_type
        if original.task:
            plan.tasks[original.task[0]] = original.task[1]
        (late if at_end else plan.sends).append(list(original.frames))
        dropped(original.frames, replay=True)
        plan.replayed_ids.append(original.msg_id)
    plan.sends += late
    return plan


def _controller_log(pool) -> str:
    with open(pool._cluster.log_path, errors="replace") as f:
        return f.read()


def _dropped(pool) -> int:
    return pool.queue_status()["dropped_messages"]


def _read_sentinels(pool, n: int) -> bool:
    """Whether the controller has logged `n` sentinels (the end of each batch); fails at once if it died."""
    assert pool._cluster.failure() is None, pool._cluster.failure()
    return _controller_log(pool).count(SENTINEL_LINE) >= n


def _collect_client_answers(sock: zmq.Socket, plan: Plan, reader: Session) -> None:
    """Receive exactly the notices, replies and task results `plan` expects on the client socket."""
    notices = collections.Counter(plan.notices)
    replies = dict(plan.replies)
    tasks = dict(plan.tasks)
    deadline = time.monotonic() + WAIT
    while +notices or replies or tasks:
        left = deadline - time.monotonic()
        assert left > 0 and sock.poll(left * 1000), (
            f"still waiting for notices {dict(+notices)}, replies {replies}, tasks {tasks}"
        )
        msg = reader.unpack(sock.recv_multipart())
        if msg.msg_type == MsgType.REJECT_NOTICE.value:
            signature = msg.content["signature"]
            assert notices[signature] > 0, f"unexpected reject_notice {msg.content}"
            notices[signature] -= 1
            if signature in plan.replay_signatures:
                assert "replayed" in msg.content["reason"], msg.content
        elif msg.msg_type == MsgType.APPLY_REPLY.value:
            batch = Batch(msg.header, msg.buffers, REPLY_COLUMNS)
            for i, task_id in enumerate(batch.ids):
                assert task_id in tasks, f"task {task_id!r} ran, or ran twice"
                assert batch.columns["status"][i] == "ok", bytes(batch.payload(i)[0])
                assert loads(batch.payload(i)) == tasks.pop(task_id)
        else:
            parent = msg.parent.get("msg_id")
            assert replies.pop(parent, None) == msg.msg_type, f"unexpected {msg.msg_type} to {parent!r}"


@pytest.fixture(scope="module")
def marker_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fuzz-markers"))


@pytest.mark.timeout(120)
def test_fuzzed_sockets_are_every_socket_the_controller_binds(pool):
    info = pool._cluster.info
    addresses = info._asdict()  # every field of the connection info
    endpoints = {name for name, value in addresses.items() if isinstance(value, str) and "://" in value}
    assert endpoints == {"client", "engine", "heartbeat"}
    controller = psutil.Process(pool._cluster.proc.pid)
    connections = getattr(controller, "net_connections", None) or controller.connections  # psutil < 6
    assert connections(kind="inet") == []
    bound = {c.laddr for c in connections(kind="unix") if c.laddr}
    assert bound == {addresses[name][len("ipc://") :] for name in endpoints}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("socket_name", ["client", "engine", "heartbeat"])
def test_controller_socket_survives_fuzzing(pool, marker_dir, socket_name):
    cluster = pool._cluster
    info = cluster.info
    pids = set(cluster.pids())
    engine_pids = pool.queue_status()["engine_pids"]
    assert len(engine_pids) == 2
    marker = os.path.join(marker_dir, f"ran-{socket_name}")
    target = _controller_target(socket_name, marker)
    session = Session(info.key)  # what an insider would sign with
    reader = Session(info.key)  # verifies what comes back
    real: list[tuple[Any, Any]] = []  # (AsyncResult, exact result)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(getattr(info, socket_name))
    sentinels = _controller_log(pool).count(SENTINEL_LINE)
    replayed: list[str] = []
    kinds: collections.Counter[str] = collections.Counter()

    @settings(FUZZ, max_examples=CONTROLLER_EXAMPLES)
    @given(
        cases=st.lists(corruptions(len(target.bases), len(target.replayables)), min_size=1, max_size=6),
        xs=st.lists(st.integers(-(10**6), 10**6), max_size=12),
    )
    def fuzz(cases, xs):
        nonlocal sentinels
        assert not sock.poll(0), "an answer nobody asked for reached the attacker"
        plan = _plan_controller(cases, target, session)
        # Real work in flight while the garbage arrives.
        work = [
            (pool.map_async(_tasks.square, xs, chunksize=3), [x * x for x in xs]),
            (pool.apply_async(_tasks.add, (len(cases), 1)), len(cases) + 1),
        ]
        real.extend(work)
        before = _dropped(pool)
        for frames in plan.sends:
            sock.send_multipart(frames)
        sock.send_multipart(SENTINEL)
        sentinels += 1
        wait_until(lambda: _read_sentinels(pool, sentinels), WAIT, "the controller read the end of the batch")
        assert _dropped(pool) - before == plan.drops + 1
        if socket_name == "client":
            _collect_client_answers(sock, plan, reader)
        for ar, expected in work:
            assert ar.get(WAIT) == expected
        replayed.extend(plan.replayed_ids)
        assert not os.path.exists(marker), "a forged task ran"
        kinds.update(kind for kind, _ in cases)

    try:
        fuzz()
        # After the fuzzing too: real work, exact.
        assert pool.map(_tasks.square, range(100), chunksize=7) == [x * x for x in range(100)]
        assert not sock.poll(200), "an answer nobody asked for reached the attacker"
    finally:
        sock.close(0)
        ctx.term()

    assert set(kinds) == set(KINDS), kinds  # every kind of message was thrown
    assert real and all(ar.ready() and ar.successful() for ar, _ in real), "real work was lost"
    assert not os.path.exists(marker), "a forged task ran"
    log = _controller_log(pool)
    for msg_id in replayed:
        assert log.count(f"AuthenticationError: replayed message {msg_id!r} refused") == 1, msg_id
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    status = pool.queue_status()
    assert status["engine_pids"] == engine_pids  # no engine registered by the fuzz, none died
    assert status["unassigned"] == 0 and status["waiting"] == 0
    assert all(e["queue"] == 0 for e in status["engines"].values()), status
    assert cluster.failure() is None
    assert set(cluster.pids()) == pids


# -- an engine, with the test as its controller ------------------------------------


class FakeController:
    """Binds the engine and heartbeat sockets of a cluster, with a known key, and runs one engine."""

    def __init__(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="fuzz-engine-")
        os.chmod(self.workdir, 0o700)
        base = f"ipc://{self.workdir}"
        self.info = ConnectionInfo(f"{base}/client", f"{base}/engine", f"{base}/heartbeat", new_key())
        self.session = Session(self.info.key)
        self.reader = Session(self.info.key)  # verifies the engine's main socket
        self.hb_reader = Session(self.info.key)  # and its heartbeat thread's
        self.log_path = os.path.join(self.workdir, "engine.log")
        self.stderr_path = os.path.join(self.workdir, "engine.stderr")
        self.marker = os.path.join(self.workdir, "forged-task-ran")
        self.ctx = zmq.Context()
        self.engine = self._bind(self.info.engine)
        self.heartbeat = self._bind(self.info.heartbeat)
        self.proc: subprocess.Popen | None = None
        self.ident = b""
        self.counter = iter(range(1 << 30))

    def _bind(self, address: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(address)
        return sock

    def start(self) -> None:
        path = os.path.join(self.workdir, "cluster.json")
        self.info.write(path)
        args = ["--connection-file", path, "--parent-pid", str(os.getpid())]
        args += ["--log-file", self.log_path, "--log-level", "WARNING"]
        argv = python_command("zpool.engine", args, caller_path())  # as the controller starts engines
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        assert self.engine.poll(T * 1000), "the engine never asked to register"
        frames = self.engine.recv_multipart()
        msg = self.session.unpack(frames)
        assert msg.msg_type == MsgType.REGISTER_REQUEST.value
        assert msg.content["pid"] == self.proc.pid
        self.ident = frames[0]
        # What Hub._on_register_request answers; 60 misses of 1 s: the engine outlives any slow test.
        content = {"engine_id": 0, "heartbeat_interval": 1.0, "heartbeat_misses": 60, "setup": False}
        reply = self.session.build(MsgType.REGISTER_REPLY, parent=encode(msg.header), content=encode(content))
        self.engine.send_multipart([self.ident, *reply])

        def first_beat_sent() -> bool:
            try:
                self.send("hb", self.session.build(MsgType.HEARTBEAT_REQUEST, {"beat": "first-beat"}))
            except zmq.ZMQError:
                return False
            return True

        wait_until(first_beat_sent, T, "the engine's heartbeat socket connected")
        assert self.heartbeat_replies("first-beat") == []

    # -- sending as the controller does

    def task(self, task_id: str, func: Any, args: tuple = ()) -> Frames:
        """An apply_request as the controller sends it (Hub._dispatch, or forwarded from a client)."""
        batch = BatchWriter()
        batch.add(task_id, dumps_call(func, args))
        return self.session.build(MsgType.APPLY_REQUEST, batch.fields(), buffers=batch.buffers())

    def send(self, to: str, frames: Frames) -> None:
        (self.engine if to == "main" else self.heartbeat).send_multipart([self.ident, *frames])

    # -- receiving

    def heartbeat_replies(self, until: Any) -> list[Any]:
        """The beats the engine answered, in order, until it answers `until` (which is not included)."""
        beats = []
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and self.heartbeat.poll(left * 1000), f"no answer to beat {until!r}; got {beats}"
            frames = self.heartbeat.recv_multipart()
            assert frames[0] == self.ident
            msg = self.hb_reader.unpack(frames)
            assert msg.msg_type == MsgType.HEARTBEAT_REPLY.value
            beat = msg.header["beat"]
            if beat == until:
                return beats
            beats.append(beat)

    def task_replies(self, until: str) -> list[tuple[str, str, list[bytes]]]:
        """``(task id, status, payload)`` answered, until and including task `until`."""
        answered = []
        deadline = time.monotonic() + WAIT
        while not any(task_id == until for task_id, _, _ in answered):
            left = deadline - time.monotonic()
            assert left > 0 and self.engine.poll(left * 1000), f"task {until} was never answered; got {answered}"
            frames = self.engine.recv_multipart()
            assert frames[0] == self.ident
            msg = self.reader.unpack(frames)
            assert msg.msg_type == MsgType.APPLY_REPLY.value, msg.msg_type
            batch = Batch(msg.header, msg.buffers, REPLY_COLUMNS)
            for i, task_id in enumerate(batch.ids):
                payload = [bytes(f) for f in batch.payload(i)]
                answered.append((task_id, batch.columns["status"][i], payload))
        return answered

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def stop(self) -> int | None:
        """Ask the engine to leave (as the controller does); return its exit code, None if it had to be killed."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None and self.ident:
                try:
                    self.send("hb", self.session.build(MsgType.SHUTDOWN_REQUEST))
                except zmq.ZMQError:
                    pass
            try:
                code = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.engine.close(0)
        self.heartbeat.close(0)
        self.ctx.term()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return code


@pytest.fixture(scope="module")
def fake_controller():
    fc = FakeController()
    try:
        fc.start()
        yield fc
    finally:
        was_running = fc.proc is not None and fc.proc.poll() is None
        code = fc.stop()
    assert not was_running or code == 0, f"the engine did not obey a real shutdown_request (exit code {code})"


# Payload frames of tasks a buggy controller might send: never a runnable call.
_SQUARE_PICKLE = bytes(dumps_call(_tasks.square, (3,))[0])
garbage_payload_frames = st.one_of(
    st.binary(max_size=24).map(lambda b: b"\x00" + b),  # 0x00 is no pickle opcode
    st.builds(lambda v: b"ZPSHM1" + json.dumps(v).encode(), json_values),  # shared-memory manifests
    st.builds(
        lambda v: b"ZPSHM1" + json.dumps({"segments": {"0": [f"zpool-00000000-e1-{v}", 8]}}).encode(),
        st.integers(0, 99),
    ),
    st.integers(1, len(_SQUARE_PICKLE) - 1).map(lambda n: _SQUARE_PICKLE[:n]),  # a truncated pickle
)
garbage_payloads = st.lists(garbage_payload_frames, min_size=1, max_size=3)
BATCH_FIELDS = ("ids", "nframes", "sizes", "packed")

engine_main_signed = st.one_of(
    # A batch of garbage tasks, perhaps with one header field or buffer replaced.
    st.tuples(
        st.just("batch"),
        st.tuples(
            st.lists(st.tuples(st.text(max_size=6), garbage_payloads), max_size=4),
            st.none()
            | st.tuples(st.sampled_from(BATCH_FIELDS), json_values)
            | st.tuples(st.just("buffers"), st.lists(st.binary(max_size=16), max_size=3)),
        ),
    ),
    st.tuples(
        st.just("type"),
        st.sampled_from([t.value for t in MsgType if t not in (MsgType.APPLY_REQUEST, MsgType.ABORT_REQUEST)])
        | st.text(max_size=12).filter(lambda t: t not in (MsgType.APPLY_REQUEST.value, MsgType.ABORT_REQUEST.value)),
    ),
    # Aborts of tasks it does not hold: ignored.
    st.tuples(st.just("abort"), st.lists(st.text(max_size=6).map("abort-".__add__), max_size=3) | json_values),
)


def _ids_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, str) for i in value)


_HEARTBEAT_SOCKET_TYPES = (MsgType.HEARTBEAT_REQUEST, MsgType.SHUTDOWN_REQUEST, MsgType.INTERRUPT_REQUEST)
engine_heartbeat_signed = st.one_of(
    st.tuples(
        st.just("type"),
        st.sampled_from([t.value for t in MsgType if t not in _HEARTBEAT_SOCKET_TYPES])
        | st.text(max_size=12).filter(lambda t: t not in {m.value for m in _HEARTBEAT_SOCKET_TYPES}),
    ),
    st.tuples(st.just("beat"), json_values),  # whatever the beat, the engine echoes it
    # Interrupts of tasks it is not running (ignored), or with ids that are no list of ids (dropped);
    # never ids=None, which would interrupt whatever real task runs.
    st.tuples(
        st.just("interrupt"),
        st.lists(st.text(max_size=6).map("interrupt-".__add__), max_size=3)
        | json_values.filter(
            lambda v: v is not None and not (isinstance(v, list) and all(isinstance(i, str) for i in v))
        ),
    ),
)
engine_cases = st.one_of(
    st.tuples(st.just("main"), corruptions(3, 1)),
    st.tuples(st.just("hb"), corruptions(2, 1)),
    st.tuples(st.just("main"), st.tuples(st.just("signed"), engine_main_signed)),
    st.tuples(st.just("hb"), st.tuples(st.just("signed"), engine_heartbeat_signed)),
)


@dataclasses.dataclass
class EnginePlan:
    sends: list[tuple[str, Frames]] = dataclasses.field(default_factory=list)
    drops: int = 0
    tasks: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # garbage: errors
    results: dict[str, Any] = dataclasses.field(default_factory=dict)  # real tasks: exact results
    beats: list[Any] = dataclasses.field(default_factory=list)
    replayed_ids: list[str] = dataclasses.field(default_factory=list)
    garbage_batches: int = 0  # signed batches the engine reads (their tasks fail to deserialize)


def _plan_engine(fc: FakeController, cases: list[tuple[str, tuple[str, Any]]]) -> EnginePlan:
    s = fc.session
    n = fc.counter

    def forged(t: Session) -> Frames:
        batch = BatchWriter()
        batch.add(f"forged-{next(n)}", dumps_call(open, (fc.marker, "w")))
        batch.add(f"forged-{next(n)}", dumps_call(_tasks.identity, (b"\x01" * 70_000,)))
        return t.build(MsgType.APPLY_REQUEST, batch.fields(), buffers=batch.buffers())

    def forged_one(t: Session) -> Frames:
        batch = BatchWriter()
        batch.add(f"forged-{next(n)}", dumps_call(open, (fc.marker, "w")))
        return t.build(MsgType.APPLY_REQUEST, batch.fields(), buffers=batch.buffers())

    bases: dict[str, list[Builder]] = {
        "main": [forged_one, forged, lambda t: t.build(MsgType.ABORT_REQUEST, {"ids": ["forged-0"]})],
        # Accepted, these would be answered (a beat nobody sent) or end the engine.
        "hb": [
            lambda t: t.build(MsgType.HEARTBEAT_REQUEST, {"beat": "forged"}),
            lambda t: t.build(MsgType.SHUTDOWN_REQUEST),
        ],
    }
    plan = EnginePlan()
    late: list[tuple[str, Frames]] = []
    for to, (kind, params) in cases:
        if kind == "replayed":
            x = next(n)
            if to == "main":
                task_id = f"replayed-{x}"
                frames = fc.task(task_id, _tasks.square, (x,))
                plan.results[task_id] = x * x
            else:
                frames = s.build(MsgType.HEARTBEAT_REQUEST, {"beat": f"replayed-{x}"})
                plan.beats.append(f"replayed-{x}")
            plan.sends.append((to, frames))
            (late if params[1] else plan.sends).append((to, list(frames)))
            plan.drops += 1
            plan.replayed_ids.append(_header_id(frames))
            continue
        if kind != "signed":
            plan.sends.append((to, corrupt(kind, params, bases[to], s)))
            plan.drops += 1
            continue
        what, detail = params
        if what == "type":
            plan.sends.append((to, s.build(detail)))
            plan.drops += 1
        elif what == "beat":
            plan.sends.append((to, s.build(MsgType.HEARTBEAT_REQUEST, {"beat": detail})))
            plan.beats.append(detail)
        elif what == "abort":
            plan.sends.append((to, s.build(MsgType.ABORT_REQUEST, {"ids": detail})))
        elif what == "interrupt":
            plan.sends.append((to, s.build(MsgType.INTERRUPT_REQUEST, content=encode({"ids": detail}))))
            if not _ids_list(detail):
                plan.drops += 1
        else:
            assert what == "batch"
            tasks, change = detail
            batch = BatchWriter()
            for name, payload in tasks:
                batch.add(f"garbage-{name}", payload)
            fields, buffers = batch.fields(), batch.buffers()
            if change is not None and change[0] == "buffers":
                buffers = change[1]
            elif change is not None:
                fields[change[0]] = change[1]
            try:
                expected = Batch(fields, buffers).ids  # the engine reads it with the same code
            except Exception:
                expected = None
            if expected is None:
                plan.drops += 1
            else:
                plan.tasks.update(expected)
                plan.garbage_batches += 1
            plan.sends.append((to, s.build(MsgType.APPLY_REQUEST, fields, buffers=buffers)))
    plan.sends += late
    return plan


@pytest.mark.timeout(120)
def test_engine_survives_a_fuzzing_controller(fake_controller):
    fc = fake_controller
    pid = fc.proc.pid
    checked: collections.Counter[str] = collections.Counter()

    @settings(FUZZ, max_examples=ENGINE_EXAMPLES)
    @given(cases=st.lists(engine_cases, min_size=1, max_size=8), x=st.integers(-(10**9), 10**9))
    def fuzz(cases, x):
        plan = _plan_engine(fc, cases)
        drops_before = fc.log().count("dropped a message")
        # A real task is queued before the garbage, another one after it.
        first, last = f"real-{next(fc.counter)}", f"real-{next(fc.counter)}"
        fc.send("main", fc.task(first, _tasks.square, (x,)))
        for to, frames in plan.sends:
            fc.send(to, frames)
        fc.send("main", fc.task(last, _tasks.add, (x, 1)))
        beat = f"check-beat-{next(fc.counter)}"  # longer than any generated text
        fc.send("hb", fc.session.build(MsgType.HEARTBEAT_REQUEST, {"beat": beat}))

        # Each socket is read in order: once these are answered, everything sent before was read.
        assert fc.heartbeat_replies(beat) == plan.beats
        answered = fc.task_replies(last)
        seen = collections.Counter(task_id for task_id, _, _ in answered)
        expected = collections.Counter(plan.tasks)
        expected.update([first, last, *plan.results])
        assert seen == expected
        for task_id, status, payload in answered:
            if task_id in (first, last) or task_id in plan.results:
                assert status == "ok", payload[0]
                value = {first: x * x, last: x + 1}.get(task_id, plan.results.get(task_id))
                assert loads(payload) == value
            else:
                assert status == "error"
                assert json.loads(payload[0])["evalue"].startswith("could not deserialize the task"), payload[0]
        log = fc.log()
        assert log.count("dropped a message") - drops_before == plan.drops, log[-3000:]
        for msg_id in plan.replayed_ids:
            assert log.count(f"replayed message {msg_id!r} refused") == 1, msg_id
        assert not os.path.exists(fc.marker), "a forged task ran"
        assert fc.proc.poll() is None, fc.stderr()
        checked["batches"] += 1
        checked["garbage-batches"] += plan.garbage_batches
        checked["garbage-tasks"] += sum(plan.tasks.values())
        checked.update(f"{to}-{kind}" if kind != "signed" else f"{to}-signed-{p[0]}" for to, (kind, p) in cases)

    fuzz()
    assert checked["batches"] >= ENGINE_EXAMPLES // 2
    # Every kind of message reached both sockets, and some garbage tasks were taken in (and failed).
    sent = {name for name in checked if name.startswith(("main-", "hb-"))}
    assert sent >= {f"{to}-{kind}" for to in ("main", "hb") for kind in KINDS}, checked
    assert sent >= {"main-signed-batch", "main-signed-type", "main-signed-abort", "hb-signed-type", "hb-signed-beat"}
    assert checked["garbage-tasks"] > 0, checked
    assert fc.proc.poll() is None
    assert psutil.Process(pid).children() == []
    stderr = fc.stderr()
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr
    assert "Traceback" not in fc.log()
    assert "engine exiting" not in fc.log()
