"""Wire format: building, signing, verifying and splitting messages; connection files."""

from __future__ import annotations

import json
import os
import re
import stat
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
    with pytest.raises(AuthenticationError, match=r"^replayed message 'once' refused$"):
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


@pytest.mark.parametrize(
    "header",
    [
        {"msg_id": "m", "session": "s", "date": 1e9},
        {"msg_id": "m", "msg_type": 7, "session": "s", "date": 1e9},
        {"msg_type": "apply_request", "session": "s", "date": 1e9},
        {"msg_id": "m", "msg_type": "apply_request", "session": "s"},
        {"msg_id": "m", "msg_type": "apply_request", "session": "s", "date": "yesterday"},
    ],
    ids=["no-msg_type", "msg_type-int", "no-msg_id", "no-date", "date-str"],
)
def test_header_missing_fields(sender, receiver, header):
    with pytest.raises(ProtocolError, match=r"^header lacks msg_id, msg_type or date$"):
        receiver.unpack(signed(sender, encode(header)))


def test_bad_content_json_raises_on_access(sender, receiver):
    msg = receiver.unpack(sender.build("apply_request", content=b"[1, 2]", metadata=b"{oops"))
    with pytest.raises(ProtocolError, match=r"^content is a JSON list, not an object$"):
        msg.content
    with pytest.raises(ProtocolError, match=r"^metadata is not valid JSON: "):
        msg.metadata


# -- replay guard ------------------------------------------------------------


def test_replay_guard_generations_rotate():
    guard = ReplayGuard(generation_size=2, slack=0.0)
    assert guard.check(b"s1", 1.0)
    assert guard.check(b"s2", 2.0)  # generation 1 full: becomes the previous one
    assert not guard.check(b"s1", 1.0)  # still remembered
    assert guard.check(b"s3", 3.0)
    assert guard.check(b"s4", 4.0)  # generation 1 forgotten; horizon = 2.0
    assert not guard.check(b"s3", 3.0)  # generation 2 still remembered

    # s1 is forgotten, but it is dated at or below the horizon, so still refused.
    assert not guard.check(b"s1", 1.0)
    assert not guard.check(b"s2", 2.0)
    assert not guard.check(b"never-seen", 2.0)
    # A fresh message after the rotation is accepted.
    assert guard.check(b"s5", 2.5)
    assert guard.check(b"s6", 5.0)


def test_replay_guard_horizon_is_newest_of_forgotten_generation():
    guard = ReplayGuard(generation_size=3, slack=0.0)
    for i, date in enumerate([10.0, 30.0, 20.0]):  # out of order: newest is 30
        assert guard.check(b"a%d" % i, date)
    for i, date in enumerate([31.0, 32.0, 33.0]):
        assert guard.check(b"b%d" % i, date)
    assert not guard.check(b"fresh-but-old", 30.0)
    assert guard.check(b"fresh", 30.5)


def test_replay_guard_slack_tolerates_slightly_older_genuine_messages():
    guard = ReplayGuard(generation_size=2, slack=5.0)
    assert guard.check(b"a", 100.0)
    assert guard.check(b"b", 101.0)
    assert guard.check(b"c", 102.0)
    assert guard.check(b"d", 103.0)  # generation {a, b} forgotten; horizon = 101 - 5
    assert guard.check(b"late-but-genuine", 97.0)  # within the slack: accepted
    assert not guard.check(b"too-old", 96.0)  # at the horizon: refused
    assert not guard.check(b"c", 102.0)  # still remembered


def test_replay_guard_rejects_duplicate_within_generation():
    guard = ReplayGuard(generation_size=100)
    assert guard.check(b"sig", 1.0)
    assert not guard.check(b"sig", 1.0)
    assert not guard.check(b"sig", 99.0)
    assert guard.check(b"other", 0.5)  # no horizon yet: order does not matter


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
