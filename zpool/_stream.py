"""Multipart messages over a Unix stream socket, without ZeroMQ: the direct path's transport.

A blocking call pushed straight to an engine (``zpool.client.pusher``,
``zpool.engine.pushed``) travels on a plain ``AF_UNIX`` stream socket
between the caller's thread and the engine's main thread. Each ZeroMQ hop
passes through an I/O thread on both sides, which has to be woken; on a
socket of its own the message wakes the thread that reads it and no other
(a bare ping-pong: 25 to 50 µs against ZeroMQ ``ipc://``'s 110 to 160 µs here).
The frames are the same signed frames as on ZeroMQ's sockets; only their
framing is this module's::

    u32 number of frames n, n u64 frame lengths, then the frames' bytes

(little-endian). Both ends are non-blocking and never wait on the other:
:meth:`FramedSocket.send` queues what the kernel does not take at once
(:attr:`FramedSocket.sending`: poll for ``POLLOUT`` and :meth:`flush`), and
:meth:`FramedSocket.receive` returns the messages complete so far, keeping
a partial one for the next call. Large frames are sent from their own
memory (``sendmsg`` of the frames' buffers) and received into one buffer
of their size, each copied once by the kernel only.

Framing is not authentication: the socket lives in the cluster's private
directory, and every message is signed and verified as on the others. A
peer whose framing makes no sense is cut off (:class:`FramingError`): the
stream cannot be trusted to resynchronise.

Not thread-safe: each end is used by one thread at a time (its owner's lock).
"""

from __future__ import annotations

import collections
import errno
import mmap
import os
import socket
import struct
from typing import Any, Sequence

__all__ = ["MAX_FRAMES", "SCHEME", "Frame", "FramedSocket", "FramingError", "listen", "unix_path"]

# Where an engine's direct socket is: "unix://" + its path.
SCHEME = "unix://"
# A message of more frames than this is malformed (a batch of 4,096 tasks has about 10,000).
MAX_FRAMES = 1 << 20
# A frame this long or longer is received straight into a buffer of its own.
BIG_FRAME = 1 << 16
# How much one read asks for: a small message in one read; most of a large frame is then read
# straight into its own buffer, not copied from here.
READ_SIZE = 1 << 14
# Buffers given to one sendmsg (the kernel takes at most IOV_MAX, 1,024 on Linux).
IOV_BATCH = 512

_COUNT = struct.Struct("<I")
# (a peer gone is EPIPE, not SIGPIPE, even where code restored its default action)
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF, errno.ESHUTDOWN)


class Frame(mmap.mmap):
    """A large frame as received: a mapping of its own, which what is unpickled from it views without copying.

    Anonymous memory (as a large ``malloc`` is), received into by the
    kernel directly; freed when nothing views it any more.
    """

    __slots__ = ()


class FramingError(ValueError):
    """What a peer sent is not a well-framed message: the connection is closed."""


def unix_path(address: str) -> str:
    """The filesystem path of a ``unix://`` address."""
    if not address.startswith(SCHEME) or len(address) == len(SCHEME):
        raise ValueError(f"not a unix:// address: {address!r}")
    return address[len(SCHEME) :]


def listen(path: str, backlog: int = 128) -> socket.socket:
    """A non-blocking listening ``AF_UNIX`` stream socket bound at `path` (made private to the user)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class FramedSocket:
    """One end of a connection carrying multipart messages.

    Parameters
    ----------
    sock : socket.socket
        A connected ``AF_UNIX`` stream socket; made non-blocking.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.closed = False
        self._out: collections.deque[memoryview] = collections.deque()
        self._inbuf = bytearray()  # bytes read, not yet parsed
        self._frames: list[Any] = []  # frames of the message being received
        self._lengths: list[int] | None = None  # its frame lengths, once its header is in
        self._big: Frame | None = None  # a large frame being received into its own buffer
        self._big_got = 0

    @classmethod
    def connect(cls, address: str) -> FramedSocket:
        """Connect to a ``unix://`` address, without waiting.

        Raises OSError if nobody listens there, no file descriptor is left,
        or the listener's backlog is full (``BlockingIOError``: a blocking
        connect would wait for a busy engine to accept).
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.connect(unix_path(address))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def fileno(self) -> int:
        """The socket's file descriptor (for pollers); -1 once closed."""
        return -1 if self.closed else self.sock.fileno()

    # -- sending ----------------------------------------------------------------

    @property
    def sending(self) -> bool:
        """Whether part of a message waits for the socket to take it (poll for POLLOUT, then :meth:`flush`)."""
        return bool(self._out)

    def send(self, frames: Sequence[Any]) -> bool:
        """Queue a message and send as much of it as the socket takes now.

        Returns False if the connection is gone (nothing more will be sent
        on it); True otherwise, even if part of the message still waits
        (:attr:`sending`).
        """
        if self.closed:
            return False
        views = [memoryview(f).cast("B") if type(f) is not bytes else memoryview(f) for f in frames]
        header = _COUNT.pack(len(views)) + struct.pack(f"<{len(views)}Q", *(v.nbytes for v in views))
        out = self._out
        out.append(memoryview(header))
        out.extend(v for v in views if v.nbytes)
        return self.flush()

    def flush(self) -> bool:
        """Send what waits, as far as the socket takes it now; False if the connection is gone."""
        out = self._out
        while out:
            batch = list(out)[:IOV_BATCH] if len(out) > IOV_BATCH else list(out)
            try:
                sent = self.sock.sendmsg(batch, (), _NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in _GONE:
                    self.close()
                    return False
                raise
            while sent:
                head = out[0]
                if sent >= head.nbytes:
                    sent -= head.nbytes
                    out.popleft()
                else:
                    out[0] = head[sent:]
                    sent = 0
        return True

    # -- receiving --------------------------------------------------------------

    def receive(self) -> list[list[Any]]:
        """The messages that arrived complete since the last call (each a list of frames); [] if none.

        Small frames are ``bytes``; a frame of :data:`BIG_FRAME` bytes or more
        is a :class:`Frame` of its own. Reads until the socket is empty, or
        until a read returns less than it asked for (the common small message:
        one system call, where asking again would fail with ``EAGAIN``);
        pollers are level-triggered, so what came meanwhile is read at the
        next call. Once a call reads the peer's close, :attr:`closed` is true
        (messages complete before that are still returned, by that call or
        an earlier one).

        Raises
        ------
        FramingError
            If the peer's framing is malformed (the connection is closed).
        """
        messages: list[list[Any]] = []
        short = False
        while not self.closed:
            if self._big is not None:
                if not self._read_big():
                    break
                continue
            if not self._parse(messages):
                if short:
                    break
                got = self._read()
                if not got:
                    break
                short = got < READ_SIZE
        return messages

    def _read(self) -> int:
        """Read what is there into the buffer; how many bytes (0 if nothing, or the peer closed)."""
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno in _GONE:
                self.close()
                return 0
            raise
        if not data:
            self.close()
            return 0
        self._inbuf += data
        return len(data)

    def _read_big(self) -> bool:
        big = self._big
        assert big is not None
        view = memoryview(big)
        while self._big_got < len(big):
            try:
                n = self.sock.recv_into(view[self._big_got :])
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                if exc.errno in _GONE:
                    self.close()
                    return False
                raise
            if n == 0:
                self.close()
                return False
            self._big_got += n
        self._frames.append(big)
        self._big = None
        return True

    def _parse(self, messages: list[list[Any]]) -> bool:
        """Take what the buffer holds into frames and messages; False when it needs more bytes."""
        buf = self._inbuf
        pos = 0
        progressed = False
        try:
            while True:
                lengths = self._lengths
                if lengths is None:
                    if len(buf) - pos < 4:
                        return progressed
                    (count,) = _COUNT.unpack_from(buf, pos)
                    if not 0 < count <= MAX_FRAMES:
                        self.close()
                        raise FramingError(f"a message of {count} frames")
                    if len(buf) - pos < 4 + 8 * count:
                        return progressed
                    self._lengths = lengths = list(struct.unpack_from(f"<{count}Q", buf, pos + 4))
                    pos += 4 + 8 * count
                    progressed = True
                while len(self._frames) < len(lengths):
                    n = lengths[len(self._frames)]
                    if n >= BIG_FRAME:
                        big = Frame(-1, n)
                        have = min(n, len(buf) - pos)
                        big[:have] = buf[pos : pos + have]
                        pos += have
                        progressed = True
                        if have < n:
                            self._big, self._big_got = big, have
                            return True  # (the caller reads the rest into it)
                        self._frames.append(big)
                        continue
                    if len(buf) - pos < n:
                        return progressed
                    self._frames.append(bytes(buf[pos : pos + n]))
                    pos += n
                    progressed = True
                messages.append(self._frames)
                self._frames, self._lengths = [], None
        finally:
            if pos:
                del buf[:pos]

    def close(self) -> None:
        """Close the socket (idempotent); what waited to be sent is dropped."""
        if not self.closed:
            self.closed = True
            self._out.clear()
            self.sock.close()
