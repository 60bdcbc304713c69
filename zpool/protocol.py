"""zpool's wire format: framing, signing and the replay guard.

A message is a list of ZeroMQ frames::

    [ident..., DELIMITER, signature, header, parent_header, metadata, content, buffer...]

* ``ident...``: routing identities added by ROUTER sockets (not signed).
* ``signature``: HMAC-SHA256 under the cluster key over every frame after
  it, each preceded by its length as 8 little-endian bytes (so bytes cannot
  be shifted from one frame to the next without breaking the signature).
* ``header``, ``parent_header``, ``metadata``, ``content``: compact JSON
  objects. ``header`` always has ``msg_id``, ``msg_type``, ``session`` (the
  sending :class:`Session`'s random id), ``seq`` (that session's message
  count: 0, 1, 2... in the order it built them) and ``date`` (seconds since
  the epoch, a float: metadata only, which no check relies on).
* ``buffer...``: opaque payload frames (pickles and raw array data).

A batch of tasks is one message, laid out by :class:`BatchWriter` and read
back by :class:`Batch`: the header holds per-task columns (ids, frame counts,
inline sizes, and for replies status and timestamps), and small one-frame
payloads travel concatenated in a single pack frame, so ten thousand tiny
tasks cost a handful of frames and Python objects, not tens of thousands.

Verification happens before any payload is interpreted: the signature is
compared in constant time; then the header (JSON, never pickle) is decoded
to read its session and sequence number for the :class:`ReplayGuard` (no
clock plays a part: clocks differ between hosts, and step). Nothing here
unpickles anything, and nothing downstream sees a message that failed
either check.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import itertools
import json
import os
import threading
import time
from typing import Any, Iterable, NamedTuple, Sequence

import zmq

from zpool._settings import SCHEMES  # (re-exported: defined with the controller's settings)
from zpool._transport import CurveKeys
from zpool.error import AuthenticationError, ProtocolError

__all__ = [
    "DELIMITER",
    "REPLY_COLUMNS",
    "SCHEMES",
    "Batch",
    "BatchWriter",
    "ConnectionInfo",
    "Message",
    "MsgType",
    "ReplayGuard",
    "Session",
    "TaskStatus",
    "nbytes",
    "new_key",
    "recv_frames",
    "recv_ready",
    "send_frames",
]

DELIMITER = b"<IDS|MSG>"
SIGNATURE_BYTES = 32
# Headers list a batch's task ids; even a batch of 100,000 tasks stays far below this.
MAX_HEADER_BYTES = 16 << 20
EMPTY = b"{}"
# A one-frame payload up to this size travels inside the batch's pack frame.
INLINE_MAX_BYTES = 16 * 1024
# Per-task fields of an apply_reply batch, in this order.
REPLY_COLUMNS = ("status", "engine_id", "started", "completed")

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_ENCODE = _ENCODER.encode


def _c_encoder() -> Any:
    """The C encoder under ``_ENCODER``, made once (JSONEncoder makes one per call), or None if there is none.

    Without circular-reference markers: what is encoded here is built by
    zpool, and a cycle would end in RecursionError all the same. Checked
    against ``_ENCODER`` once, at import.
    """
    try:
        from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]

        if c_make_encoder is None:
            return None
        made = c_make_encoder(None, _ENCODER.default, encode_basestring, None, ":", ",", False, False, True)
        sample = {"a": [1, 2.5, None, True, "\u00e9\n"], "b": {"c": -1e300, "d": float("nan")}}
        return made if "".join(made(sample, 0)) == _ENCODE(sample) else None
    except Exception:  # (another Python's json): the encoder's own way
        return None


_C_ENCODE = _c_encoder()
_LENGTHS = [n.to_bytes(8, "little") for n in range(256)]
_DELIMITER_LEN = len(DELIMITER)
# Messages with at most this many bytes of frames are signed with one update, over a joined copy.
SIGN_JOIN_MAX = 16 * 1024


class MsgType(str, enum.Enum):
    """Every message type on zpool's sockets."""

    APPLY_REQUEST = "apply_request"
    APPLY_REPLY = "apply_reply"
    REGISTER_REQUEST = "register_request"
    REGISTER_REPLY = "register_reply"
    CONNECT_REQUEST = "connect_request"
    CONNECT_REPLY = "connect_reply"
    QUEUE_REQUEST = "queue_request"
    QUEUE_REPLY = "queue_reply"
    SHUTDOWN_REQUEST = "shutdown_request"
    SHUTDOWN_REPLY = "shutdown_reply"
    HEARTBEAT_REQUEST = "heartbeat_request"
    HEARTBEAT_REPLY = "heartbeat_reply"
    REJECT_NOTICE = "reject_notice"
    STREAM = "stream"  # what engines printed (controller -> client; zpool.controller.output)
    ENGINE_READY = "engine_ready"
    ABORT_REQUEST = "abort_request"
    ABORT_REPLY = "abort_reply"
    RESUBMIT_REQUEST = "resubmit_request"
    RESUBMIT_REPLY = "resubmit_reply"
    INTERRUPT_REQUEST = "interrupt_request"
    INTERRUPT_REPLY = "interrupt_reply"
    PURGE_REQUEST = "purge_request"
    PURGE_REPLY = "purge_reply"
    RECALL_REQUEST = "recall_request"
    RECALL_REPLY = "recall_reply"
    ROSTER_REQUEST = "roster_request"
    ROSTER_NOTICE = "roster_notice"
    RESULT_REQUEST = "result_request"  # send me the replies of these tasks, any client's (Pool.get_result)
    RESULT_REPLY = "result_reply"
    DB_REQUEST = "db_request"  # a question for the task database (Pool.db_query)
    DB_REPLY = "db_reply"


class TaskStatus(str, enum.Enum):
    """Outcome of one task, as carried in reply headers."""

    OK = "ok"
    ERROR = "error"
    ABORTED = "aborted"
    UNMET = "unmet"  # the task raised UnmetDependency: the scheduler tries another engine


_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)


def send_frames(sock: zmq.Socket[Any], frames: Sequence[Any], flags: int = 0, track: bool = False) -> list[Any]:
    """Send a multipart message: small frames copied, large ones (>= zmq.COPY_THRESHOLD) without copying.

    Three times cheaper than ``Socket.send_multipart`` for our many small
    frames (no per-frame flag enums or Frame objects). All frames of a message
    are queued together by ZeroMQ, so an error can only come from the first.
    With `track`, returns a ``zmq.MessageTracker`` per frame sent without
    copying (done once ZeroMQ no longer needs its memory); else ``[]``.
    """
    last = len(frames) - 1
    flags = int(flags)  # (an IntFlag such as zmq.DONTWAIT would make every `|` below build an enum)
    threshold = zmq.COPY_THRESHOLD
    send = sock.send
    trackers: list[Any] = []
    for i, frame in enumerate(frames):
        more = _SNDMORE if i < last else 0
        if type(frame) is bytes or nbytes(frame) < threshold:
            send(frame, flags | more)
        elif track:
            trackers.append(send(frame, flags | more, copy=False, track=True))
        else:
            send(frame, flags | more, copy=False)
    return trackers


def recv_frames(sock: zmq.Socket[Any], flags: int = 0) -> list[Any]:
    """Receive one multipart message as zmq.Frame objects (twice as cheap as ``recv_multipart``).

    Raises
    ------
    zmq.Again
        With ``flags=zmq.NOBLOCK`` when no message is waiting.
    """
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(0, copy=False)
        frames.append(frame)
    return frames


def recv_ready(sock: zmq.Socket[Any]) -> list[Any] | None:
    """Receive one message if one is waiting, else None.

    Asking the socket (ZMQ_EVENTS) costs a third of what a non-blocking
    receive that raises ``zmq.Again`` does, and loops that drain a socket
    end on that case once per wake-up.
    """
    if not int(sock.get(_EVENTS)) & _POLLIN:
        return None
    try:
        return recv_frames(sock, _NOBLOCK)
    except zmq.Again:
        return None


def new_key() -> bytes:
    """Return a fresh random cluster key (hex text, 256 bits)."""
    return os.urandom(32).hex().encode("ascii")


def encode(obj: Any) -> bytes:
    """Encode a JSON-able object as compact UTF-8 JSON."""
    if _C_ENCODE is not None and type(obj) is dict:
        return "".join(_C_ENCODE(obj, 0)).encode()
    return _ENCODE(obj).encode()


def nbytes(frame: Any) -> int:
    """Size in bytes of a frame (bytes, memoryview, zmq.Frame or any buffer)."""
    if type(frame) is bytes:
        return len(frame)
    return memoryview(frame).nbytes


def write_frames(path: str, frames: Sequence[Any]) -> None:
    """Store `frames` in a file only its owner can read (mode 0600): sizes as JSON, then the bytes."""
    sizes = [nbytes(f) for f in frames]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(encode(sizes) + b"\n")
        for frame in frames:
            f.write(frame)


def read_frames(path: str) -> list[bytes]:
    """Read frames stored by :func:`write_frames`."""
    with open(path, "rb") as f:
        sizes = json.loads(f.readline())
        if not isinstance(sizes, list) or not all(isinstance(n, int) and n >= 0 for n in sizes):
            raise ProtocolError(f"{path} does not hold frames")
        frames = [f.read(n) for n in sizes]
    if [len(frame) for frame in frames] != sizes:
        raise ProtocolError(f"{path} is truncated")
    return frames


class ReplayGuard:
    """Refuse messages received before, in bounded memory, whatever the clocks say.

    Every message names its sender's session and carries a sequence number
    (``seq``) that the sender's :class:`Session` raises at every message it
    builds. The guard remembers the exact signatures of the last two
    generations of at most ``generation_size`` messages, and, per session,
    the highest ``seq`` recorded in each. When the newer generation fills
    up, the older is forgotten, and each session's *horizon* rises to its
    highest ``seq`` there: a message of that session numbered at or below
    its horizon might be a replay the guard can no longer recognise, and is
    refused from then on. No slack is needed, and no clock is read, so a
    wall clock that steps (NTP, a virtual machine resynchronised) or hosts
    that disagree change nothing.

    A genuine message is refused only if, after a later message of its
    session arrived, the guard took in more than a whole generation of
    messages before it did. Senders number messages as they send them and
    each socket delivers in order; a client reads its two sockets (see
    ``Connection.call_now``) within a tenth of a second of each other; and
    the controller forwards a message whole (with its sender's session
    and ``seq``) only within a second of receiving it (``FORWARD_MAX_AGE_S``
    in ``zpool.controller.hub``, timed by its own monotonic clock), and
    re-signs older ones under its own session. So a receiver would have to
    take in more than a whole generation of messages (65,536 by default)
    within that second for a genuine message to be refused.

    Horizons are kept for the ``max_sessions`` sessions most recently
    active (seen in a forgotten generation): sessions are random per
    process, and engines come and go over a long run. A session forgotten
    there has been silent while that many others were active; a message of
    it older than both generations, replayed, would be accepted again. With
    ``max_sessions`` at least ``generation_size`` (the default), every
    session of the generation just forgotten keeps its horizon.

    Thread-safe: a client's threads share one session (and guard).
    """

    def __init__(self, generation_size: int = 1 << 16, max_sessions: int = 1 << 16) -> None:
        self._generation_size = generation_size
        self._max_sessions = max_sessions
        self._current: set[bytes] = set()
        self._previous: set[bytes] = set()
        # Per session, the highest seq recorded in the current and the previous generation.
        self._current_newest: dict[str, int] = {}
        self._previous_newest: dict[str, int] = {}
        # Per session, the highest seq of the generations forgotten; least recently active first.
        self._horizons: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, signature: bytes, session: str, seq: int) -> bool:
        """Record message `seq` of `session`, signed `signature`; return False if it is a replay or too old to tell."""
        with self._lock:
            if seq <= self._horizons.get(session, -1) or signature in self._current or signature in self._previous:
                return False
            self._current.add(signature)
            newest = self._current_newest
            if seq > newest.get(session, -1):
                newest[session] = seq
            if len(self._current) >= self._generation_size:
                self._rotate()
            return True

    def _rotate(self) -> None:
        """Forget the previous generation, raising its sessions' horizons; the current one becomes previous."""
        horizons = self._horizons
        for session, seq in self._previous_newest.items():
            # Re-inserted: the dict's order is the sessions' last activity.
            horizons[session] = max(seq, horizons.pop(session, -1))
        excess = len(horizons) - self._max_sessions
        if excess > 0:
            for session in list(itertools.islice(horizons, excess)):
                del horizons[session]
        self._previous, self._current = self._current, set()
        self._previous_newest, self._current_newest = self._current_newest, {}


class Message:
    """A received, verified message. Only the header is decoded eagerly."""

    __slots__ = ("frames", "header", "idents")

    def __init__(self, idents: list[Any], header: dict[str, Any], frames: list[Any]) -> None:
        self.idents = idents
        self.header = header
        self.frames = frames  # [parent, metadata, content, *buffers], as received

    def __repr__(self) -> str:
        return f"Message({self.idents!r}, {self.header!r}, <{len(self.frames)} frames>)"

    @property
    def msg_type(self) -> str:
        return str(self.header["msg_type"])

    @property
    def parent(self) -> dict[str, Any]:
        return _decode_dict(self.frames[0], "parent_header")

    @property
    def metadata(self) -> dict[str, Any]:
        return _decode_dict(self.frames[1], "metadata")

    @property
    def content(self) -> dict[str, Any]:
        return _decode_dict(self.frames[2], "content")

    @property
    def buffers(self) -> list[Any]:
        return self.frames[3:]


def _as_bytes(frame: Any) -> bytes:
    return frame if type(frame) is bytes else frame.bytes


def _decode_dict(frame: Any, what: str) -> dict[str, Any]:
    raw = _as_bytes(frame)
    if raw == EMPTY:
        return {}
    try:
        # Strict UTF-8 first: json.loads of bytes would also take UTF-16, and surrogates
        # encoded as UTF-8 bytes.
        text = raw.decode("utf-8")
        value = json.loads(text)
        if "\\ud" in text or "\\uD" in text:
            # An escaped surrogate: a lone one decodes, but could never be encoded again
            # (a reply naming it would fail far from here). Only such rare messages pay.
            encode(value)
    except (ValueError, UnicodeError) as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is a JSON {type(value).__name__}, not an object")
    return value


class BatchWriter:
    """Lays out tasks as one message's header fields and buffer frames, column by column.

    A batch's header holds parallel lists, one entry per task::

        {"ids": [...], "nframes": [...], "sizes": [...], "packed": n, <column>: [...], ...}

    A task whose payload is a single frame of at most ``INLINE_MAX_BYTES`` is
    *inline* (``nframes`` 0, ``sizes`` its length): its bytes join one shared
    pack frame, the first buffer. Other tasks own ``nframes`` frames each,
    after the pack, in task order (``sizes`` 0). Columns carry per-task
    fields: replies have ``status``, ``engine_id``, ``started``, ``completed``.
    Columns rather than a list per task keep the number of Python objects
    per task, and so the garbage collector's work in the caller's process, low.

    Parameters
    ----------
    columns : sequence of str
        Names of the per-task fields passed to :meth:`add`.
    """

    __slots__ = ("_columns", "_inline", "_own", "_packed", "ids", "nframes", "sizes")

    def __init__(self, columns: Sequence[str] = ()) -> None:
        self.ids: list[str] = []
        self.nframes: list[int] = []
        self.sizes: list[int] = []
        self._columns: dict[str, list[Any]] = {name: [] for name in columns}
        self._inline: list[Any] = []
        self._own: list[Any] = []
        self._packed = 0

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, task_id: str, frames: Sequence[Any], *values: Any) -> None:
        """Append a task: its id, payload frames and one value per column."""
        self.ids.append(task_id)
        if len(frames) == 1:
            size = nbytes(frames[0])
            if size <= INLINE_MAX_BYTES:
                self._inline.append(frames[0])
                self._packed += size
                self.nframes.append(0)
                self.sizes.append(size)
                self._add_values(values)
                return
        self._own += frames
        self.nframes.append(len(frames))
        self.sizes.append(0)
        self._add_values(values)

    def _add_values(self, values: tuple[Any, ...]) -> None:
        for column, value in zip(self._columns.values(), values):
            column.append(value)

    def fields(self) -> dict[str, Any]:
        """The header fields describing the batch."""
        return {"ids": self.ids, "nframes": self.nframes, "sizes": self.sizes, "packed": self._packed, **self._columns}

    def buffers(self) -> list[Any]:
        """The buffer frames: the pack (if any task is inline), then the other tasks' frames."""
        return [b"".join(self._inline), *self._own] if self._packed else list(self._own)


class Batch:
    """A received batch (see :class:`BatchWriter`): ids, columns and each task's payload.

    Payloads are produced on demand by :meth:`payload`; inline ones are
    read-only slices of the pack frame, never copies.
    """

    __slots__ = ("_frame_at", "_frames", "_pack", "columns", "ids", "nframes", "sizes")

    def __init__(self, header: dict[str, Any], buffers: Sequence[Any], columns: Sequence[str] = ()) -> None:
        ids, nframes, sizes, packed = (
            header.get("ids"),
            header.get("nframes"),
            header.get("sizes"),
            header.get("packed"),
        )
        if not (isinstance(ids, list) and isinstance(nframes, list) and isinstance(sizes, list)):
            raise ProtocolError("batch header lacks its ids, nframes and sizes lists")
        if type(packed) is not int or packed < 0 or not len(ids) == len(nframes) == len(sizes):
            raise ProtocolError("batch header's lists disagree in length, or packed is not a count")
        self.columns: dict[str, list[Any]] = {}
        for name in columns:
            column = header.get(name)
            if not isinstance(column, list) or len(column) != len(ids):
                raise ProtocolError(f"batch header lacks a {name!r} entry per task")
            self.columns[name] = column
        first = 0
        self._pack: memoryview | None = None
        if packed:
            if not buffers:
                raise ProtocolError("batch announces a pack frame but has no buffers")
            self._pack = memoryview(getattr(buffers[0], "buffer", buffers[0])).toreadonly()
            if self._pack.nbytes != packed:
                raise ProtocolError(f"pack frame has {self._pack.nbytes} bytes, header says {packed}")
            first = 1
        # One offset per task: into the pack for inline tasks, into `buffers` for the others.
        at: list[int] = []
        pack_offset, frame_offset = 0, first
        for task_id, n, size in zip(ids, nframes, sizes):
            if type(task_id) is not str or type(n) is not int or type(size) is not int or n < 0 or size < 0:
                raise ProtocolError(f"bad task entry {task_id!r}, {n!r}, {size!r}")
            if n == 0:
                if size == 0:
                    raise ProtocolError(f"task {task_id!r} has no payload")
                at.append(pack_offset)
                pack_offset += size
            else:
                at.append(frame_offset)
                frame_offset += n
        if pack_offset != packed or frame_offset != len(buffers):
            raise ProtocolError(
                f"batch accounts for {frame_offset} of {len(buffers)} frames, {pack_offset} of {packed} packed bytes"
            )
        self.ids: list[str] = ids
        self.nframes: list[int] = nframes
        self.sizes: list[int] = sizes
        self._frame_at = at
        self._frames = buffers

    def __len__(self) -> int:
        return len(self.ids)

    def payload(self, i: int) -> list[Any]:
        """The payload frames of task `i`."""
        start = self._frame_at[i]
        n = self.nframes[i]
        if n == 0:
            assert self._pack is not None
            return [self._pack[start : start + self.sizes[i]]]
        return list(self._frames[start : start + n])


class Session:
    """Builds, signs and verifies messages for one process.

    Parameters
    ----------
    key : bytes
        The cluster's secret key; every peer must hold the same one.
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("a cluster key is required: messages are always signed")
        self.key = key
        self.session = os.urandom(16).hex()
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._counter = itertools.count()
        # Numbers the messages built, for receivers' replay guards (next() on a count is atomic).
        self._seq = itertools.count()
        self._id_prefix = self.session[:12] + "-"
        self.guard = ReplayGuard()

    def new_id(self) -> str:
        """Return an id unique across the cluster (session id + counter)."""
        return f"{self._id_prefix}{next(self._counter)}"

    def sign(self, frames: Iterable[Any]) -> bytes:
        """Return the HMAC-SHA256 signature of `frames` (length-prefixed)."""
        parts: list[Any] = []
        total = 0
        for frame in frames:
            n = len(frame) if type(frame) is bytes else memoryview(frame).nbytes
            parts.append(_LENGTHS[n] if n < 256 else n.to_bytes(8, "little"))
            parts.append(frame)
            total += n
        mac = self._mac.copy()
        if total <= SIGN_JOIN_MAX:  # one update over a small copy: the common message
            mac.update(b"".join(parts))
        else:
            for part in parts:
                mac.update(part)
        return mac.digest()

    def build(
        self,
        msg_type: MsgType | str,
        fields: dict[str, Any] | None = None,
        *,
        parent: bytes = EMPTY,
        metadata: bytes = EMPTY,
        content: bytes = EMPTY,
        buffers: Sequence[Any] = (),
        msg_id: str | None = None,
    ) -> list[Any]:
        """Build a signed message (without routing identities).

        Frame layout: ``[DELIMITER, signature, header, parent, metadata,
        content, *buffers]``; `parent`, `metadata` and `content` are
        already-encoded JSON (see :func:`encode`).
        """
        header: dict[str, Any] = {
            "msg_id": msg_id or self.new_id(),
            "msg_type": msg_type.value if isinstance(msg_type, MsgType) else msg_type,
            "session": self.session,
            "seq": next(self._seq),
            "date": time.time(),
        }
        if fields:
            header.update(fields)
        frames = [encode(header), parent, metadata, content, *buffers]
        return [DELIMITER, self.sign(frames), *frames]

    def unpack(self, frames: list[Any]) -> Message:
        """Verify and split a received multipart message.

        Raises
        ------
        ProtocolError
            If the frames do not follow the layout, or the header lacks a
            field every message has.
        AuthenticationError
            If the signature is wrong, or the :class:`ReplayGuard` refuses
            the message (received before, or older than all it remembers).
        """
        # The delimiter comes first from a DEALER, second from a ROUTER (one routing identity): look there first.
        if frames and len(frames[0]) == _DELIMITER_LEN and _as_bytes(frames[0]) == DELIMITER:
            i = 0
        else:
            i = next(
                (n for n, frame in enumerate(frames) if len(frame) == _DELIMITER_LEN and _as_bytes(frame) == DELIMITER),
                -1,
            )
        if i < 0:
            raise ProtocolError(f"no delimiter among {len(frames)} frames")
        if len(frames) < i + 6:
            raise ProtocolError(f"truncated message: {len(frames) - i - 1} frames after the delimiter, need 5")
        signature = _as_bytes(frames[i + 1])
        if len(signature) != SIGNATURE_BYTES:
            raise AuthenticationError(f"signature of {len(signature)} bytes, need {SIGNATURE_BYTES}")
        body = frames[i + 2 :]
        if len(body[0]) > MAX_HEADER_BYTES:
            raise ProtocolError(f"header of {len(body[0])} bytes exceeds {MAX_HEADER_BYTES}")
        if not hmac.compare_digest(signature, self.sign(body)):
            raise AuthenticationError("bad signature (wrong cluster key or altered message)")
        header = _decode_dict(body[0], "header")
        session, seq = header.get("session"), header.get("seq")
        if (
            not isinstance(header.get("msg_type"), str)
            or not isinstance(header.get("msg_id"), str)
            or type(session) is not str
            or type(seq) is not int  # (not a bool either)
            or seq < 0
            or not isinstance(header.get("date"), (int, float))
        ):
            raise ProtocolError("header lacks msg_id, msg_type, session, seq (a count) or date")
        if not self.guard.check(signature, session, seq):
            raise AuthenticationError(
                f"replayed message {header['msg_id']!r} refused: message {seq} of session {session[:12]}"
                " was received already, or is older than all this receiver still remembers"
            )
        return Message(list(frames[:i]), header, body[1:])


def _curve_keys(data: Any) -> CurveKeys:
    if not isinstance(data, dict):
        raise ValueError("curve is not an object of keys")
    return CurveKeys(data["server_public"], data["public"], data["secret"])


class ConnectionInfo(NamedTuple):
    """Where a cluster's controller listens, and its key.

    Stored as a JSON *connection file*, readable only by its owner (mode
    0600), since the key lets its holder run code on the engines.
    ``mp_authkey`` is the creating process's multiprocessing authkey, for
    engines to adopt, so that Manager proxies it passes to tasks connect
    (hidden clusters only). Large buffers go through shared-memory segments
    named with ``shm_prefix`` (``zpool-<cluster id>``); None: through the
    sockets (see zpool._shm).

    (A named tuple rather than a dataclass: every engine and controller
    reads one at start-up, and ``dataclasses`` costs them 7 ms to import.)
    """

    client: str
    engine: str
    heartbeat: str
    key: bytes
    controller_pid: int | None = None
    mp_authkey: bytes | None = None
    shm_prefix: str | None = None
    # CURVE keys of a cluster on TCP (zpool._transport): the server's public key and the members' pair.
    curve: CurveKeys | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "client": self.client,
            "engine": self.engine,
            "heartbeat": self.heartbeat,
            "key": self.key.decode("ascii"),
            "signature_scheme": "hmac-sha256",
            "controller_pid": self.controller_pid,
        }
        if self.mp_authkey is not None:
            data["mp_authkey"] = self.mp_authkey.hex()
        if self.shm_prefix is not None:
            data["shm_prefix"] = self.shm_prefix
        if self.curve is not None:
            curve = self.curve
            data["curve"] = {"server_public": curve.server_public, "public": curve.public, "secret": curve.secret}
        return data

    def write(self, path: str) -> None:
        """Write the connection file at `path` with mode 0600."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    @classmethod
    def read(cls, path: str) -> ConnectionInfo:
        """Read a connection file written by :meth:`write`."""
        with open(path) as f:
            data = json.load(f)
        try:
            return cls(
                client=data["client"],
                engine=data["engine"],
                heartbeat=data["heartbeat"],
                key=data["key"].encode("ascii"),
                controller_pid=data.get("controller_pid"),
                mp_authkey=bytes.fromhex(data["mp_authkey"]) if data.get("mp_authkey") else None,
                shm_prefix=str(data["shm_prefix"]) if data.get("shm_prefix") else None,
                curve=_curve_keys(data["curve"]) if data.get("curve") else None,
            )
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise ProtocolError(f"connection file {path} is incomplete or malformed: {exc!r}") from exc
