"""zpool._stream: multipart messages over a Unix stream socket (the direct path's transport)."""

from __future__ import annotations

import os
import random
import socket
import struct

import numpy as np
import pytest

from zpool._stream import BIG_FRAME, MAX_FRAMES, Frame, FramedSocket, FramingError, listen, unix_path


def pair() -> tuple[FramedSocket, FramedSocket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return FramedSocket(a), FramedSocket(b)


def framed(frames: list[bytes]) -> bytes:
    """The bytes of one message on the wire, written here independently of the module."""
    return struct.pack("<I", len(frames)) + b"".join(struct.pack("<Q", len(f)) for f in frames) + b"".join(frames)


def receive_all(conn: FramedSocket, count: int) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    while len(got) < count:
        got += conn.receive()
        assert not conn.closed
    return got


def test_messages_round_trip_with_empty_small_and_big_frames():
    a, b = pair()
    try:
        sent = [
            [b"x"],
            [b"", b"header", b""],
            [b"a" * 10, bytes(range(256)) * (BIG_FRAME // 256 + 3), b"tail"],
        ]
        for frames in sent:
            assert a.send(frames)
        got = receive_all(b, len(sent))
        assert [[bytes(f) for f in m] for m in got] == sent
        assert type(got[2][1]) is Frame  # a big frame gets a buffer of its own
        assert type(got[2][0]) is bytes
    finally:
        a.close()
        b.close()


def test_the_bytes_on_the_wire_follow_the_documented_layout():
    a, b = pair()
    try:
        assert a.send([b"one", b"", b"three"])
        raw = b.sock.recv(1 << 16)
        assert raw == framed([b"one", b"", b"three"])
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("seed", range(5))
def test_any_split_of_the_stream_gives_the_same_messages(seed):
    """Bytes arriving in arbitrary pieces (1 byte to 100 kB) are reassembled exactly."""
    rng = random.Random(seed)
    sizes = [0, 1, 7, 100, BIG_FRAME - 1, BIG_FRAME, 3 * BIG_FRAME]
    messages = [[os.urandom(rng.choice(sizes)) for _ in range(rng.randint(1, 6))] for _ in range(20)]
    wire = b"".join(framed(m) for m in messages)
    raw, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = FramedSocket(b)
    got: list[list[bytes]] = []
    try:
        raw.setblocking(True)
        pos = 0
        while pos < len(wire):
            step = rng.choice([1, 3, 50, 4096, 100_000])
            raw.sendall(wire[pos : pos + step])
            pos += step
            got += conn.receive()
        while len(got) < len(messages):
            got += conn.receive()
        assert [[bytes(f) for f in m] for m in got] == messages
    finally:
        raw.close()
        conn.close()


def test_a_numpy_array_is_sent_from_its_own_memory_and_received_whole():
    a, b = pair()
    try:
        arr = np.arange(200_000, dtype=np.float64).reshape(400, 500)
        assert a.send([b"head", arr, memoryview(arr[::2].copy())])
        got: list[list[bytes]] = []
        while not got:
            a.flush()
            got = b.receive()
        head, body, half = got[0]
        assert head == b"head"
        assert np.array_equal(np.frombuffer(body, dtype=np.float64).reshape(400, 500), arr)
        assert np.array_equal(np.frombuffer(half, dtype=np.float64).reshape(200, 500), arr[::2])
    finally:
        a.close()
        b.close()


def test_what_the_peer_does_not_take_waits_and_goes_when_it_reads():
    """send never blocks: a message larger than the socket's buffers waits (sending) until flushed."""
    a, b = pair()
    try:
        big = os.urandom(8 << 20)
        assert a.send([big])
        assert a.sending  # the kernel took part of it
        got: list[list[bytes]] = []
        while not got:
            assert a.flush()
            got = b.receive()
        assert not a.sending
        assert bytes(got[0][0]) == big
    finally:
        a.close()
        b.close()


def test_the_peer_closing_is_seen_by_both_ends():
    a, b = pair()
    assert a.send([b"last"])
    a.close()
    assert b.receive() == [[b"last"]]  # what was complete before the close still arrives
    assert b.receive() == []  # (the close itself: read by the call after a short read)
    assert b.closed
    assert not b.send([b"x"])
    assert not a.send([b"x"])  # (closed here)


def test_sending_to_a_peer_that_left_says_so():
    a, b = pair()
    b.close()
    assert not a.send([b"x" * 1000]) or not a.send([b"y" * 1000])
    assert a.closed


@pytest.mark.parametrize("count", [0, MAX_FRAMES + 1])
def test_a_malformed_frame_count_closes_the_connection(count):
    raw, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = FramedSocket(b)
    try:
        raw.sendall(struct.pack("<I", count) + b"\0" * 64)
        with pytest.raises(FramingError, match="frames"):
            while True:
                conn.receive()
        assert conn.closed
    finally:
        raw.close()


def test_a_half_message_waits_for_its_rest():
    raw, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = FramedSocket(b)
    try:
        wire = framed([b"abc", b"x" * (2 * BIG_FRAME)])
        raw.sendall(wire[: len(wire) // 2])
        assert conn.receive() == []
        raw.sendall(wire[len(wire) // 2 :])
        got = conn.receive()
        while not got:
            got = conn.receive()
        assert [bytes(f) for f in got[0]] == [b"abc", b"x" * (2 * BIG_FRAME)]
    finally:
        raw.close()
        conn.close()


def test_listen_connect_and_a_private_path(tmp_path):
    path = str(tmp_path / "d1")
    listener = listen(path)
    try:
        assert os.stat(path).st_mode & 0o077 == 0
        client = FramedSocket.connect("unix://" + path)
        server, _ = listener.accept()
        conn = FramedSocket(server)
        assert client.send([b"hi"])
        got = conn.receive()
        while not got:
            got = conn.receive()
        assert got == [[b"hi"]]
        client.close()
        conn.close()
    finally:
        listener.close()
    with pytest.raises(OSError):
        FramedSocket.connect("unix://" + str(tmp_path / "nobody"))
    with pytest.raises(ValueError, match="unix://"):
        unix_path("ipc:///tmp/x")


def test_connecting_to_a_full_backlog_does_not_wait(tmp_path):
    """An engine busy with a long task accepts nothing: connecting fails at once rather than blocking the caller."""
    path = str(tmp_path / "d2")
    listener = listen(path, backlog=1)
    made = []
    try:
        with pytest.raises(OSError):
            for _ in range(64):
                made.append(FramedSocket.connect("unix://" + path))
        assert made  # the backlog took some first
    finally:
        for conn in made:
            conn.close()
        listener.close()
