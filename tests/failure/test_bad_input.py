"""Wrong signatures, truncated messages, garbage and replays on every controller socket.

Each is dropped (the controller counts it in ``queue_status()["dropped_messages"]``)
and the cluster keeps serving.
"""

from __future__ import annotations

import os

import pytest
import zmq

import zpool
from tests import _tasks
from tests._wait import wait_until
from zpool.protocol import DELIMITER, BatchWriter, MsgType, Session

T = 60


@pytest.fixture
def attacker():
    ctx = zmq.Context()
    socks = []

    def connect(address: str) -> zmq.Socket:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(address)
        socks.append(s)
        return s

    yield connect
    for s in socks:
        s.close(0)
    ctx.term()


def _dropped(pool) -> int:
    return pool.queue_status()["dropped_messages"]


def _bad_messages(info):
    wrong_key = Session(b"0" * 64)
    right = Session(info.key)
    good = right.build(MsgType.QUEUE_REQUEST)
    return {
        "wrong signature": wrong_key.build(MsgType.QUEUE_REQUEST),
        "unsigned": [DELIMITER, b"", *good[2:]],
        "tampered header": [*good[:2], good[2].replace(b"queue", b"QUEUE"), *good[3:]],
        "truncated": good[:4],
        "no delimiter": [os.urandom(40) for _ in range(6)],
        "random garbage": [os.urandom(1000)],
        "huge garbage": [DELIMITER, os.urandom(32), os.urandom(8 << 20), b"{}", b"{}", b"{}"],
        "unknown type": right.build("launch_missiles_request"),
        "non-json header": [DELIMITER, *_signed(right, [b"\xff\xfe", b"{}", b"{}", b"{}"])],
    }


def _signed(session, frames):
    return [session.sign(frames), *frames]


@pytest.mark.parametrize("socket_name", ["client", "engine", "heartbeat"])
def test_bad_messages_are_dropped_and_cluster_serves(pool, attacker, socket_name):
    info = pool._cluster.info
    sock = attacker(getattr(info, socket_name))
    before = _dropped(pool)
    bad = _bad_messages(info)
    for frames in bad.values():
        sock.send_multipart(frames)
    wait_until(lambda: _dropped(pool) >= before + len(bad), T, f"the controller dropped {len(bad)} more message(s)")
    assert pool.apply(_tasks.square, (12,)) == 144
    assert pool.map(_tasks.square, range(10)) == [x * x for x in range(10)]
    assert len(pool.queue_status()["engines"]) == 2


def test_replayed_message_is_dropped(pool, attacker):
    info = pool._cluster.info
    sock = attacker(info.client)
    message = Session(info.key).build(MsgType.QUEUE_REQUEST)
    sock.send_multipart(message)
    assert sock.poll(T * 1000), "the genuine request got no answer"
    sock.recv_multipart()
    before = _dropped(pool)
    sock.send_multipart(message)  # the very same signed frames again
    wait_until(lambda: _dropped(pool) >= before + 1, T, "the controller dropped 1 more message(s)")
    # What comes back is not an answer but a notice naming the rejected message.
    assert sock.poll(T * 1000)
    notice = Session(info.key).unpack(sock.recv_multipart())
    assert notice.msg_type == "reject_notice"
    assert notice.content["signature"] == message[1].hex()
    assert "replayed" in notice.content["reason"]
    assert pool.apply(_tasks.square, (3,)) == 9


def test_modified_argument_fails_its_task_instead_of_hanging(pool):
    """An array changed after apply_async but before sending breaks the signature:
    the controller drops the message and tells the client, whose task fails."""
    import numpy as np

    conn = pool._conn
    arr = np.zeros(1 << 15)  # 256 KiB: out of band as a frame (shared memory starts at 1 MiB)
    before = _dropped(pool)
    # Change the data right after the I/O thread signed it, before ZeroMQ sends it
    # (the window a caller hits by writing to an argument after apply_async returns).
    original_sign = conn.session.sign

    def sign_then_mutate(frames):
        signature = original_sign(frames)
        frames = list(frames)
        if len(frames) > 4 and any(memoryview(f).nbytes == arr.nbytes for f in frames[4:]):
            arr[1] = 2.0
        return signature

    conn.session.sign = sign_then_mutate
    try:
        ar = pool.apply_async(_tasks.identity, (arr,))
        with pytest.raises(zpool.AuthenticationError, match="modified after the call returned"):
            ar.get(T)
    finally:
        del conn.session.sign
    assert _dropped(pool) > before
    assert pool.apply(_tasks.square, (4,)) == 16


def test_rejected_message_frees_its_shared_memory_segments(pool):
    """A call whose frame argument was modified in flight is rejected; the segments of its
    other, large argument are freed by the client (the controller never accepted them)."""
    import glob

    import numpy as np

    conn = pool._conn
    prefix = pool._cluster.info.shm_prefix
    big = np.ones(1 << 18)  # 2 MiB: through shared memory
    arr = np.zeros(1 << 15)  # 256 KiB: a frame, modified after signing
    original_sign = conn.session.sign

    def sign_then_mutate(frames):
        signature = original_sign(frames)
        if any(memoryview(f).nbytes == arr.nbytes for f in list(frames)[4:]):
            arr[1] = 2.0
        return signature

    conn.session.sign = sign_then_mutate
    try:
        ar = pool.apply_async(_tasks.identity, (big, arr))
        with pytest.raises(zpool.AuthenticationError):
            ar.get(T)
    finally:
        del conn.session.sign
    # Only the segment the client keeps for reuse (-k<n>, zpool._shm.Writer) is left: no message names one.
    assert [p for p in glob.glob(f"/dev/shm/{prefix}-*") if "-k" not in os.path.basename(p)] == []


def test_task_with_wrong_key_never_runs(pool, attacker, tmp_path):
    """A forged apply_request (valid layout, wrong key) must not execute."""
    from zpool.serialize import dumps_call

    marker = tmp_path / "pwned"
    info = pool._cluster.info
    sock = attacker(info.client)
    frames = dumps_call(open, (str(marker), "w"))
    batch = BatchWriter()
    batch.add("forged-1", frames)
    forged = Session(b"f" * 64).build(MsgType.APPLY_REQUEST, batch.fields(), buffers=batch.buffers())
    before = _dropped(pool)
    sock.send_multipart(forged)
    wait_until(lambda: _dropped(pool) >= before + 1, T, "the controller dropped 1 more message(s)")
    assert pool.apply(_tasks.square, (2,)) == 4
    assert not marker.exists()


def test_connection_file_and_directory_are_private(pool):
    import stat

    workdir = pool._cluster.workdir
    assert stat.S_IMODE(os.stat(workdir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(workdir, "cluster.json")).st_mode) == 0o600
    for address in (pool._cluster.info.client, pool._cluster.info.engine, pool._cluster.info.heartbeat):
        assert address.startswith("ipc://" + workdir)


def test_forged_engine_registration_is_rejected(pool, attacker):
    """Without the key, no fake engine joins (it would be handed real tasks)."""
    from zpool.protocol import encode, new_key

    info = pool._cluster.info
    before_ids = pool.wait_for_engines(2, timeout=T)
    before = _dropped(pool)
    forger = Session(new_key())
    sock = attacker(info.engine)
    content = encode({"pid": os.getpid(), "hostname": "forged"})
    sock.send_multipart(forger.build(MsgType.REGISTER_REQUEST, content=content))  # wrong key
    genuine = Session(info.key).build(MsgType.REGISTER_REQUEST, content=content)
    unsigned = [*genuine[:1], b"\0" * 32, *genuine[2:]]
    sock.send_multipart(unsigned)
    wait_until(lambda: _dropped(pool) >= before + 2, T, "the controller dropped 2 more message(s)")
    assert not sock.poll(500)  # no register_reply, no engine id
    assert sorted(int(i) for i in pool.queue_status()["engines"]) == sorted(before_ids)
    assert pool.map(_tasks.square, range(10)) == [x * x for x in range(10)]
