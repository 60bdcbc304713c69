"""Wire format: building, signing, verifying and splitting messages; connection files."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import re
import stat
import threading
import time

import pytest
import zmq

from zpool.error import AuthenticationError, ProtocolError
from zpool.protocol import (
    DELIMITER,
    ConnectionInfo,
    MsgType,
    ReplayGuard,
    Session,
    encode,
    new_key,
)

KEY = b"0123456789abcdef" * 4
BIG = bytes(range(256)) * 4096  # 1 MiB, every byte value


@pytest.fixture
def sender():
    return Session(KEY)


@pytest.fixture
def receiver():
    return Session(KEY)


def flip_last_byte(frame) -> bytes:
    raw = bytes(frame)
    return raw[:-1] + bytes([raw[-1] ^ 0x01])


def signed(session: Session, header: bytes, rest=(b"{}", b"{}", b"{}")) -> list:
    """A correctly signed message with an arbitrary header frame."""
    body = [header, *rest]
    return [DELIMITER, session.sign(body), *body]


def build_full(sender: Session) -> list:
    return sender.build(
        MsgType.APPLY_REQUEST,
        {"tasks": [["t-1", 2, 0]]},
        parent=encode({"msg_id": "p-1"}),
        metadata=encode({"engine": 3, "note": "é"}),
        content=encode({"value": [1, 2.5, None]}),
        buffers=[BIG, memoryview(bytearray(b"small buffer"))],
    )


# -- round trip --------------------------------------------------------------


def test_build_unpack_round_trip(sender, receiver):
    before = time.time()
    frames = build_full(sender)
    after = time.time()
    assert frames[0] == DELIMITER
    assert len(frames[1]) == 32

    msg = receiver.unpack(frames)

    assert msg.idents == []
    assert msg.msg_type == "apply_request"
    assert msg.header["msg_type"] == "apply_request"
    assert re.fullmatch(r"[0-9a-f]{12}-\d+", msg.header["msg_id"])
    assert msg.header["session"] == sender.session
    assert msg.header["seq"] == 0
    assert before <= msg.header["date"] <= after
    assert msg.header["tasks"] == [["t-1", 2, 0]]
    assert msg.parent == {"msg_id": "p-1"}
    assert msg.metadata == {"engine": 3, "note": "é"}
    assert msg.content == {"value": [1, 2.5, None]}
    assert [bytes(b) for b in msg.buffers] == [BIG, b"small buffer"]


def test_round_trip_with_zmq_frames(sender, receiver):
    frames = [zmq.Frame(bytes(f)) for f in build_full(sender)]
    msg = receiver.unpack(frames)
    assert msg.msg_type == "apply_request"
    assert msg.content == {"value": [1, 2.5, None]}
    assert msg.parent == {"msg_id": "p-1"}
    assert all(isinstance(b, zmq.Frame) for b in msg.buffers)
    assert [b.bytes for b in msg.buffers] == [BIG, b"small buffer"]


def test_empty_json_frames_and_no_buffers(sender, receiver):
    msg = receiver.unpack(sender.build("queue_request", msg_id="fixed-id"))
    assert msg.header["msg_id"] == "fixed-id"
    assert msg.msg_type == "queue_request"
    assert (msg.parent, msg.metadata, msg.content, msg.buffers) == ({}, {}, {}, [])


def test_message_ids_are_unique(sender):
    ids = {sender.new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert Session(KEY).session != sender.session


def test_empty_key_refused():
    with pytest.raises(ValueError, match="a cluster key is required"):
        Session(b"")


def test_routing_identities_are_returned(sender, receiver):
    idents = [b"client-\x00\x01", b"router-2"]
    msg = receiver.unpack([*idents, *sender.build("apply_request")])
    assert msg.idents == idents
    assert msg.msg_type == "apply_request"


def test_routing_identities_as_frames(sender, receiver):
    frames = [zmq.Frame(f) for f in [b"id-a", b"id-b", *sender.build("apply_reply")]]
    msg = receiver.unpack(frames)
    assert [f.bytes for f in msg.idents] == [b"id-a", b"id-b"]


# -- authentication ----------------------------------------------------------


def test_other_key_rejected(sender):
    stranger = Session(new_key())
    with pytest.raises(AuthenticationError, match=r"^bad signature \(wrong cluster key or altered message\)$"):
        stranger.unpack(sender.build("apply_request", content=encode({"x": 1})))


@pytest.mark.parametrize(
    "index",
    [1, 2, 3, 4, 5, 6, 7],
    ids=["signature", "header", "parent", "metadata", "content", "big-buffer", "small-buffer"],
)
def test_any_altered_frame_rejected(sender, receiver, index):
    frames = build_full(sender)
    frames[index] = flip_last_byte(frames[index])
    with pytest.raises(AuthenticationError, match="^bad signature"):
        receiver.unpack(frames)


def test_dropped_or_added_buffer_rejected(sender, receiver):
    frames = build_full(sender)
    with pytest.raises(AuthenticationError, match="^bad signature"):
        receiver.unpack(frames[:-1])
    with pytest.raises(AuthenticationError, match="^bad signature"):
        receiver.unpack([*frames, b"extra"])


@pytest.mark.parametrize("left", [2, 5], ids=["header-into-parent", "content-into-buffer"])
def test_bytes_shifted_between_frames_rejected(sender, receiver, left):
    frames = [bytes(f) for f in build_full(sender)]
    shifted = list(frames)
    shifted[left] = frames[left][:-1]
    shifted[left + 1] = frames[left][-1:] + frames[left + 1]
    # Same bytes in the same order: only the length prefixes tell them apart.
    assert b"".join(shifted[2:]) == b"".join(frames[2:])
    with pytest.raises(AuthenticationError, match="^bad signature"):
        receiver.unpack(shifted)
    assert receiver.unpack(frames).msg_type == "apply_request"


def test_replay_rejected(sender, receiver):
    frames = sender.build("apply_request", msg_id="once")
    assert receiver.unpack(list(frames)).header["msg_id"] == "once"
    with pytest.raises(AuthenticationError, match=r"^replayed message 'once' refused: message 0 of session "):
        receiver.unpack(list(frames))


def test_replay_rejected_even_with_new_identities(sender, receiver):
    frames = sender.build("apply_request", msg_id="twice")
    receiver.unpack([b"a", *frames])
    with pytest.raises(AuthenticationError, match="replayed message 'twice'"):
        receiver.unpack([b"b", *frames])


# -- malformed messages ------------------------------------------------------


def test_truncated_message(sender, receiver):
    frames = sender.build("apply_request")
    with pytest.raises(ProtocolError, match=r"^truncated message: 4 frames after the delimiter, need 5$"):
        receiver.unpack(frames[:5])
    with pytest.raises(ProtocolError, match=r"^truncated message: 0 frames after the delimiter, need 5$"):
        receiver.unpack([b"ident", DELIMITER])


def test_no_delimiter(sender, receiver):
    frames = sender.build("apply_request")
    with pytest.raises(ProtocolError, match=r"^no delimiter among 5 frames$"):
        receiver.unpack(frames[1:])
    with pytest.raises(ProtocolError, match=r"^no delimiter among 0 frames$"):
        receiver.unpack([])


@pytest.mark.parametrize("length", [0, 31, 33])
def test_signature_of_wrong_length(sender, receiver, length):
    frames = sender.build("apply_request")
    frames[1] = (frames[1] * 2)[:length]
    with pytest.raises(AuthenticationError, match=rf"^signature of {length} bytes, need 32$"):
        receiver.unpack(frames)


def test_header_not_json(sender, receiver):
    with pytest.raises(ProtocolError, match=r"^header is not valid JSON: "):
        receiver.unpack(signed(sender, b"{not json"))
    with pytest.raises(ProtocolError, match=r"^header is not valid JSON: "):
        receiver.unpack(signed(sender, b"\xff\xfe"))


def test_header_json_list(sender, receiver):
    with pytest.raises(ProtocolError, match=r"^header is a JSON list, not an object$"):
        receiver.unpack(signed(sender, b'["msg_id", "msg_type"]'))


GOOD_HEADER = {"msg_id": "m", "msg_type": "apply_request", "session": "s", "seq": 0, "date": 1e9}


@pytest.mark.parametrize(
    "changes",
    [
        {"msg_type": None},
        {"msg_type": 7},
        {"msg_id": None},
        {"session": None},
        {"session": 5},
        {"seq": None},
        {"seq": True},
        {"seq": -1},
        {"seq": 1.0},
        {"seq": "1"},
        {"date": None},
        {"date": "yesterday"},
    ],
    ids=[
        "no-msg_type",
        "msg_type-int",
        "no-msg_id",
        "no-session",
        "session-int",
        "no-seq",
        "seq-bool",
        "seq-negative",
        "seq-float",
        "seq-str",
        "no-date",
        "date-str",
    ],
)
def test_header_missing_fields(sender, receiver, changes):
    header = {**GOOD_HEADER, **changes}
    header = {k: v for k, v in header.items() if v is not None}
    with pytest.raises(ProtocolError, match=r"^header lacks msg_id, msg_type, session, seq \(a count\) or date$"):
        receiver.unpack(signed(sender, encode(header)))
    assert receiver.unpack(signed(sender, encode(GOOD_HEADER))).header == GOOD_HEADER


def test_bad_content_json_raises_on_access(sender, receiver):
    msg = receiver.unpack(sender.build("apply_request", content=b"[1, 2]", metadata=b"{oops"))
    with pytest.raises(ProtocolError, match=r"^content is a JSON list, not an object$"):
        msg.content
    with pytest.raises(ProtocolError, match=r"^metadata is not valid JSON: "):
        msg.metadata


# -- replay guard ------------------------------------------------------------


def test_replay_guard_generations_rotate():
    guard = ReplayGuard(generation_size=2)
    assert guard.check(b"s1", "A", 1)
    assert guard.check(b"s2", "A", 2)  # generation 1 full: becomes the previous one
    assert not guard.check(b"s1", "A", 1)  # still remembered
    assert guard.check(b"s3", "A", 3)
    assert guard.check(b"s4", "A", 4)  # generation 1 forgotten; A's horizon = 2
    assert not guard.check(b"s3", "A", 3)  # generation 2 still remembered

    # s1 and s2 are forgotten, but numbered at or below A's horizon, so still refused.
    assert not guard.check(b"s1", "A", 1)
    assert not guard.check(b"s2", "A", 2)
    assert not guard.check(b"never-seen", "A", 2)
    # Messages numbered above the horizon are accepted, in any order.
    assert guard.check(b"s6", "A", 6)
    assert guard.check(b"s5", "A", 5)
    # Another session's numbers are its own: A's horizon does not concern it.
    assert guard.check(b"b1", "B", 1)
    assert guard.check(b"b0", "B", 0)


def test_replay_guard_horizon_is_highest_seq_of_forgotten_generation():
    guard = ReplayGuard(generation_size=3)
    for i, seq in enumerate([10, 30, 20]):  # out of order: the highest is 30
        assert guard.check(b"a%d" % i, "A", seq)
    for i in range(3):  # another session's messages fill the next generation
        assert guard.check(b"b%d" % i, "B", i)
    assert not guard.check(b"fresh-but-numbered-too-low", "A", 30)
    assert not guard.check(b"another", "A", 11)  # never received, but cannot be told from a replay
    assert guard.check(b"fresh", "A", 31)
    # B's messages are in the remembered generation: B has no horizon yet.
    assert guard.check(b"b-late", "B", 0)


def test_replay_guard_rejects_duplicate_within_generation():
    guard = ReplayGuard(generation_size=100)
    assert guard.check(b"sig", "A", 5)
    assert not guard.check(b"sig", "A", 5)
    assert not guard.check(b"sig", "A", 99)  # the signature decides, whatever the header says
    assert not guard.check(b"sig", "B", 0)
    assert guard.check(b"other", "A", 1)  # no horizon yet: order does not matter


def test_replay_guard_accepts_genuine_traffic_refuses_every_replay():
    """Several sessions, interleaved and mildly out of order, across many rotations."""
    rng = random.Random(16)
    generation = 64
    guard = ReplayGuard(generation_size=generation)
    sessions = [os.urandom(16).hex() for _ in range(5)]
    sent = [(session, seq) for seq in range(2000) for session in sessions]
    rng.shuffle(sent)
    sent.sort(key=lambda m: m[1])  # each session's messages in order, sessions interleaved at random
    # Then shuffled within windows shorter than a generation: overtaken by a few messages each.
    for start in range(0, len(sent), 20):
        window = sent[start : start + 20]
        rng.shuffle(window)
        sent[start : start + 20] = window
    messages = [(hashlib.sha256(f"{session}/{seq}".encode()).digest(), session, seq) for session, seq in sent]
    assert all(guard.check(*m) for m in messages)  # 10,000 messages: 156 rotations
    # Every one of them replayed: still remembered (the last two generations) or at or below its horizon.
    assert not any(guard.check(*m) for m in messages)
    assert not any(guard.check(*m) for m in reversed(messages))
    # The senders go on: accepted.
    assert all(guard.check(os.urandom(32), session, 2000) for session in sessions)


def test_replay_guard_ignores_dates():
    """Messages dated anything, the clock stepping back an hour mid-stream, are accepted; replays are not."""
    sender, receiver = Session(KEY), Session(KEY)
    receiver.guard = ReplayGuard(generation_size=8)
    first = sender.build("apply_request")
    receiver.unpack(first)
    dates = [time.time(), 0, -1e9, 1e18, time.time() + 86_400] + [time.time() - 3600] * 40
    for date in dates:
        header = {"msg_id": sender.new_id(), "msg_type": "apply_request", "session": sender.session}
        header.update(seq=next(sender._seq), date=date)
        assert receiver.unpack(signed(sender, encode(header))).header["date"] == date
    with pytest.raises(AuthenticationError, match="^replayed message "):
        receiver.unpack(first)  # forgotten (45 messages = 5 generations ago), refused all the same


def test_session_accepts_after_wall_clock_steps_back(sender, monkeypatch):
    receiver = Session(KEY)
    receiver.guard = ReplayGuard(generation_size=16)
    for _ in range(100):  # six rotations: every session has a horizon
        receiver.unpack(sender.build("apply_request"))
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
    stepped = [sender.build("apply_request") for _ in range(100)]
    assert all(receiver.unpack(frames).header["date"] < real_time() - 3000 for frames in stepped)
    assert Session(KEY).unpack(sender.build("apply_request"))  # a fresh receiver too
    for frames in stepped[-30:]:  # the last two generations' still remembered; older ones at the horizon
        with pytest.raises(AuthenticationError, match="^replayed message "):
            receiver.unpack(frames)


def test_replay_of_forgotten_message_refused(sender):
    receiver = Session(KEY)
    receiver.guard = ReplayGuard(generation_size=4)
    old = sender.build("apply_request", msg_id="old")
    receiver.unpack(list(old))
    other = Session(KEY)
    for _ in range(12):  # three generations later, `old` is no longer remembered by its signature
        receiver.unpack(sender.build("apply_request"))
        receiver.unpack(other.build("apply_request"))
    with pytest.raises(AuthenticationError, match=r"^replayed message 'old' refused: message 0 of session "):
        receiver.unpack(list(old))


def test_messages_overtaken_within_a_generation_are_accepted(sender, receiver):
    early, late = sender.build("apply_request"), sender.build("apply_request")
    assert receiver.unpack(late).header["seq"] == 1
    assert receiver.unpack(early).header["seq"] == 0


def test_seq_counts_a_sessions_messages():
    a, b = Session(KEY), Session(KEY)
    seqs = [json.loads(a.build("queue_request")[2])["seq"] for _ in range(3)]
    assert seqs == [0, 1, 2]
    a.new_id()  # ids do not use up sequence numbers
    assert json.loads(a.build("queue_request", msg_id="x")[2])["seq"] == 3
    assert json.loads(b.build("queue_request")[2])["seq"] == 0  # each session counts its own


def test_seq_unique_across_threads():
    session = Session(KEY)

    def build_many(_):
        return [json.loads(session.build("queue_request")[2])["seq"] for _ in range(2000)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        seqs = [seq for chunk in pool.map(build_many, range(4)) for seq in chunk]
    assert sorted(seqs) == list(range(8000))


def test_replay_guard_session_table_is_bounded():
    guard = ReplayGuard(generation_size=4, max_sessions=8)
    sessions = [f"session-{i}" for i in range(1000)]
    for session in sessions:  # a process each, sending one message: engines replaced over a long run
        assert guard.check(session.encode(), session, 0)
    assert len(guard._horizons) == 8
    assert len(guard._current_newest) <= 4 and len(guard._previous_newest) <= 4
    # The last generation is remembered by signature, the 8 sessions before by their horizons...
    for session in sessions[-4:]:
        assert not guard.check(session.encode(), session, 0)
    for session in sessions[-12:-4]:
        assert not guard.check(b"anything", session, 0)
    # ...while a session silent since (a process long gone) is forgotten: a replay passes again.
    assert guard.check(b"session-0", "session-0", 0)


def test_replay_guard_keeps_horizons_of_every_session_just_forgotten():
    """With max_sessions >= generation_size, a whole generation of distinct sessions keeps its horizons."""
    guard = ReplayGuard(generation_size=16, max_sessions=16)
    sessions = [f"s{i}" for i in range(64)]
    for session in sessions:
        assert guard.check(session.encode(), session, 5)
    # The last 16 are remembered by signature, the 16 before (the generation just forgotten) by their horizons.
    for session in sessions[-16:]:
        assert not guard.check(session.encode(), session, 5)
    for session in sessions[-32:-16]:
        assert not guard.check(b"x" + session.encode(), session, 5)
    assert guard.check(b"s0", "s0", 5)  # (forgotten: 32 sessions since)


def test_replay_guard_thread_safe():
    """Concurrent checks of the same messages (a client's threads share a guard): each accepted once."""
    guard = ReplayGuard(generation_size=1 << 16)
    messages = [(os.urandom(32), "A", seq) for seq in range(5000)]
    barrier = threading.Barrier(4)

    def check_all(_):
        barrier.wait()
        return sum(guard.check(*m) for m in messages)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(check_all, range(4))) == len(messages)


# -- connection files and keys -----------------------------------------------


def make_info() -> ConnectionInfo:
    return ConnectionInfo(
        client="tcp://127.0.0.1:5555",
        engine="ipc:///tmp/zpool-engine",
        heartbeat="tcp://127.0.0.1:5557",
        key=new_key(),
        controller_pid=4242,
    )


def test_connection_info_round_trip(tmp_path):
    info = make_info()
    path = str(tmp_path / "cluster.json")
    info.write(path)
    assert ConnectionInfo.read(path) == info
    with open(path) as f:
        data = json.load(f)
    assert data["signature_scheme"] == "hmac-sha256"
    assert data["key"] == info.key.decode("ascii")


def test_connection_file_mode_0600(tmp_path):
    path = tmp_path / "cluster.json"
    make_info().write(str(path))
    assert oct(stat.S_IMODE(path.stat().st_mode)) == oct(0o600)


def test_connection_file_mode_0600_when_overwriting(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    info = make_info()
    info.write(str(path))
    assert ConnectionInfo.read(str(path)) == info
    # The file holds the key: it must not stay readable by others.
    assert oct(stat.S_IMODE(path.stat().st_mode)) == oct(0o600)


def test_connection_file_incomplete(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"client": "a", "engine": "b", "heartbeat": "c"}))
    expected = r"^connection file .*cluster\.json is incomplete or malformed: KeyError\('key'\)$"
    with pytest.raises(ProtocolError, match=expected):
        ConnectionInfo.read(str(path))


def test_new_key():
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert isinstance(key, bytes)
        assert re.fullmatch(rb"[0-9a-f]{64}", key)


@pytest.mark.parametrize("where", ["header", "content"])
def test_signed_json_holding_a_lone_surrogate_is_malformed(sender, receiver, where):
    """It decodes, but no reply naming it could be encoded: refused at once (found by the fuzz harness)."""
    lone = json.dumps({"ids": ["\ud800"]}).encode()  # the escape \ud800, as any JSON library may send it
    if where == "header":
        frames = sender.build(MsgType.APPLY_REQUEST, {"ids": ["x"]})
        delim = frames.index(DELIMITER)
        frames[delim + 2] = frames[delim + 2][:-1] + b',"extra":' + lone + b"}"
        frames[delim + 1] = sender.sign(frames[delim + 2 :])
        with pytest.raises(ProtocolError, match="header is not valid JSON"):
            receiver.unpack(frames)
    else:
        msg = receiver.unpack(sender.build(MsgType.APPLY_REQUEST, content=lone))
        with pytest.raises(ProtocolError, match="content is not valid JSON"):
            _ = msg.content
    pair = json.dumps({"ids": ["\U0001f600 \u00e9"]}).encode()  # escaped as a surrogate pair: fine
    assert b"\\ud83d" in pair
    assert receiver.unpack(sender.build(MsgType.APPLY_REQUEST, content=pair)).content == {"ids": ["\U0001f600 \u00e9"]}


@pytest.mark.parametrize(
    "content",
    [
        b'{"ids": ["\xed\xa0\x80"]}',  # a surrogate as (invalid) UTF-8 bytes
        '{"ids": ["\\ud800"]}'.encode("utf-16"),  # JSON in UTF-16, which json.loads of bytes would take
        '{"ids": ["x"]}'.encode("utf-16-le"),
    ],
    ids=["utf8-surrogate-bytes", "utf16-escape", "utf16-plain"],
)
def test_content_must_be_strict_utf8(sender, receiver, content):
    msg = receiver.unpack(sender.build(MsgType.APPLY_REQUEST, content=content))
    with pytest.raises(ProtocolError, match="content is not valid JSON"):
        _ = msg.content


# -- the schema (zpool._wire) and the controller's settings (zpool._settings) -------


@pytest.mark.parametrize(
    "ok, engine_id, code", [(True, 0, 0), (True, 3, 3), (False, None, -1), (False, 0, -2), (False, 3, -5)]
)
def test_outcome_codes_round_trip(ok, engine_id, code):
    from zpool._wire import decode_outcome, encode_outcome

    assert encode_outcome(ok, engine_id) == code
    assert decode_outcome(code) == (ok, engine_id)


def test_a_success_needs_its_engine():
    from zpool._wire import encode_outcome

    with pytest.raises(ValueError, match="engine_id is required"):
        encode_outcome(True, None)


def test_controller_error_names_are_zpool_errors():
    import zpool.error
    from zpool._wire import ErrorName, error_reply

    for name in ErrorName:
        assert name.value in zpool.error.__all__
    reply = error_reply(ErrorName.TASK_ABORTED, "gone", engine_id=2)
    assert json.loads(json.dumps(reply)) == {"ename": "TaskAborted", "evalue": "gone", "traceback": "", "engine_id": 2}
    assert error_reply("KeyError", "k", "tb", None, emodule="builtins")["emodule"] == "builtins"


def test_controller_settings_survive_the_command_line():
    from zpool._settings import ControllerSettings

    for settings in (ControllerSettings(), ControllerSettings("lru", 0, 0.5, 3, 10, 60, 7)):
        assert ControllerSettings.from_argv(settings.to_argv()) == settings.validate()


@pytest.mark.parametrize(
    "field, value, exc, match",
    [
        ("scheme", "fastest", ValueError, "unknown scheme 'fastest'"),
        ("hwm", -1, ValueError, "hwm must be None"),
        ("heartbeat_interval", "1", TypeError, "heartbeat_interval must be a number"),
        ("heartbeat_interval", float("nan"), ValueError, "heartbeat_interval must be a positive"),
        ("heartbeat_misses", 0, ValueError, "heartbeat_misses must be a positive int"),
        ("record_window", 0, ValueError, "record_window must be a positive int"),
        ("record_age", True, ValueError, "record_age must be a positive number"),
        ("max_tasks_per_engine", 0, ValueError, "maxtasksperchild must be a positive int or None"),
    ],
)
def test_controller_settings_say_which_argument_is_wrong(field, value, exc, match):
    from zpool._settings import ControllerSettings

    with pytest.raises(exc, match=match):
        ControllerSettings()._replace(**{field: value}).validate()


def test_pool_signature_shows_the_controller_defaults():
    # Pool's signature spells its defaults out for help(Pool); they must be the settings' own.
    import inspect

    import zpool
    from zpool._settings import ControllerSettings

    params = inspect.signature(zpool.Pool).parameters
    names = {"max_tasks_per_engine": "maxtasksperchild"}
    for field, default in ControllerSettings._field_defaults.items():
        assert params[names.get(field, field)].default == default, field
