"""The client's I/O thread: the only thread that touches the client's main socket.

::

    user threads ── submit()/request() ──▶ out-queue + wake pipe ──▶ I/O thread ──DEALER──▶ controller
    AsyncResults ◀── ResultTable.handle_reply ◀──────────────────── I/O thread ◀─────────── replies

Submitting threads serialize their calls themselves (so errors surface in
the caller) and append them to the out-queue; the I/O thread takes
whatever has accumulated since it last looked and sends it as one signed
message, so a burst of ``apply_async`` calls travels as a few batches.
The wake pipe is written only when the queue goes from empty to non-empty.

The I/O thread also asks a watch function, a few times a second, whether
the controller still lives; when it does not, every outstanding task fails
with :class:`~zpool.error.BrokenPoolError` instead of waiting forever.

One exception: a blocking call sends and reads on sockets of its own from
the calling thread (:meth:`Connection.call_now`); those sockets, and what
was sent on them, belong to :mod:`zpool.client.own_socket`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import threading
import time
from typing import Any, Callable

import zmq

from zpool import _shm
from zpool._transport import member_socket
from zpool.client.ctrlc import HoldCtrlC, default_int_handler, sigint_handler
from zpool.client.own_socket import OWN_POLL_MS, OwnSocket
from zpool.client.results import ResultTable
from zpool.error import (
    AuthenticationError,
    BrokenPoolError,
    PoolClosedError,
    ProtocolError,
    TimeoutError,
    ZPoolError,
    rejected_call_text,
)
from zpool.protocol import (
    BatchWriter,
    ConnectionInfo,
    Message,
    MsgType,
    Session,
    encode,
    nbytes,
    recv_ready,
    send_frames,
)

# The controller may bind after we connect (they start together): retry soon.
RECONNECT_IVL_MS = 10

__all__ = ["Connection"]

logger = logging.getLogger(__name__)

# One message carries at most this many tasks or this many payload bytes.
BATCH_MAX_TASKS = 4096
# Signatures of recently sent messages are remembered (up to this many task
# ids) so that a controller's reject_notice can fail the right tasks.
SENT_MEMORY_TASKS = 200_000
# How often a wait_on_send looks whether the connection broke meanwhile, in seconds.
TRACK_POLL_S = 0.1
BATCH_MAX_BYTES = 64 << 20
WATCH_INTERVAL_S = 0.1
# A blocking call polls its sockets without sleeping for up to this long, in seconds, for its reply:
# a thread put to sleep and woken by the reply costs 60-90 µs more per call on a 2-core machine than
# one that is awake when it lands (apply round trip 430 -> 340 µs, a map of 16 cheap items 0.48 ->
# 0.40 ms). The caller has nothing else to do meanwhile; the cost is its CPU for at most that long,
# and only while calls come back within SPIN_WORTH_S (a slow call's reply would not land in time).
# Engines never spin: on two cores, an idle engine polling slows the caller and the busy engine.
SPIN_S = 0.0004
SPIN_WORTH_S = 0.002


class _Flagged:
    """Tasks queued for sending with scheduling flags (all the same), and perhaps a send tracker."""

    __slots__ = ("flags", "items", "tracker")

    def __init__(
        self, items: list[tuple[str, list[Any]]], flags: dict[str, Any] | None, tracker: SendTracker | None = None
    ) -> None:
        self.items = items
        self.flags = flags
        self.tracker = tracker


class SendTracker:
    """When ZeroMQ has let go of the buffers of some tasks (``track=True``).

    The I/O thread sends the tasks, in one or several batches, with tracked
    zero-copy frames, and hands each batch's ZeroMQ trackers over here.
    """

    def __init__(self, n_tasks: int, dead: threading.Event | None = None) -> None:
        self._left = n_tasks
        self._trackers: list[Any] = []
        self._handed = threading.Event()  # every task was sent (or failed before it could be)
        # Set when the connection broke: what is still queued in ZeroMQ will never go out.
        self._dead = dead if dead is not None else threading.Event()
        if n_tasks == 0:
            self._handed.set()

    def _sent(self, n_tasks: int, trackers: list[Any]) -> None:
        """`n_tasks` of the tasks went out in a message tracked by `trackers` (I/O thread)."""
        self._trackers += trackers
        self._left -= n_tasks
        if self._left <= 0:
            self._handed.set()

    def abandon(self) -> None:
        """The tasks will never be sent (the connection failed): nothing holds their buffers."""
        self._handed.set()

    @property
    def done(self) -> bool:
        return self._dead.is_set() or (self._handed.is_set() and all(t.done for t in self._trackers))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until ZeroMQ let go of every buffer (or never will send them); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            step = TRACK_POLL_S if left is None else min(TRACK_POLL_S, left)
            if not self._handed.is_set():
                self._handed.wait(step)
                continue
            pending = next((t for t in self._trackers if not t.done), None)
            if pending is not None:
                try:
                    pending.wait(step)
                except zmq.NotDone:
                    pass
        return True


class _Request:
    __slots__ = ("content", "future", "msg_type")

    def __init__(self, msg_type: MsgType, content: dict[str, Any]) -> None:
        self.msg_type = msg_type
        self.content = content
        self.future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()


class Connection:
    """A client's connection to a controller, with its I/O thread.

    Parameters
    ----------
    info : ConnectionInfo
        The controller's addresses and key.
    results : ResultTable
        Where replies are settled.
    watch : callable, optional
        Returns a reason string once the controller is known to be gone.
    silence : float, optional
        While tasks or requests are outstanding, the controller is pinged
        when it has said nothing for a tenth of this many seconds, and the
        connection breaks when it has said nothing for this long (it is
        alive but stuck, or unreachable). None: never.
    """

    def __init__(
        self,
        info: ConnectionInfo,
        results: ResultTable,
        watch: Callable[[], str | None] | None = None,
        silence: float | None = None,
    ) -> None:
        self.session = Session(info.key)
        self.results = results
        self.broken: str | None = None
        self._watch = watch
        self._silence = silence
        # Since when the controller owes us an answer: the later of when it last said anything and
        # when we last sent it something (it answers in order, after all we sent before).
        self._heard = time.monotonic()
        self._pinged = 0.0
        self._checked = time.monotonic()  # when this thread last looked (see _check_silence)
        self._lock = threading.Lock()
        self._queue: list[Any] = []
        self._signaled = False
        self._closing = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        member_socket(self._sock, info.client, info.curve)
        self._sock.connect(info.client)
        self._requests: dict[str, _Request] = {}
        self._sent: collections.OrderedDict[bytes, list[str] | str] = collections.OrderedDict()
        # Shared-memory segments of the messages in _sent that carry any (to free them if rejected).
        self._sent_segments: dict[bytes, list[str]] = {}
        # Set when the connection breaks: tracked sends still queued will never go out.
        self.dead = threading.Event()
        self._sent_tasks = 0
        self._sending = False  # the I/O thread took queued items and is sending them
        # The calling thread's own sockets for blocking calls (see call_now), made on first
        # use; whoever holds their lock may use them (the I/O thread only reads leftovers).
        self._own = OwnSocket(self._ctx, self.session, info.client, results, info.curve)
        # Whether blocking calls may push their tasks straight to the engines (set by the pool).
        self.pushing = False
        # Whether the last blocking call came back within SPIN_WORTH_S (the next one then spins: see call_now).
        self._quick_calls = True
        self._thread = threading.Thread(target=self._run, name="zpool-io", daemon=True)
        self._thread.start()

    # -- user threads -------------------------------------------------------------

    def submit_each(
        self,
        groups: list[tuple[list[tuple[str, list[Any]]], dict[str, Any] | None]],
        tracker: SendTracker | None = None,
    ) -> None:
        """Queue several submissions at once (all or none): ``(items, flags)`` each, as for :meth:`submit`."""
        self._enqueue_all([_Flagged(items, flags, tracker) for items, flags in groups])

    def submit(
        self,
        items: list[tuple[str, list[Any]]],
        flags: dict[str, Any] | None = None,
        tracker: SendTracker | None = None,
    ) -> None:
        """Queue tasks for sending: ``(task_id, payload_frames)`` each, all with the same scheduling `flags`.

        With a `tracker`, their zero-copy frames are sent tracked (see :class:`SendTracker`).
        """
        self._enqueue(items if flags is None and tracker is None else _Flagged(items, flags, tracker))

    def request(
        self, msg_type: MsgType, content: dict[str, Any] | None = None, timeout: float | None = 30.0
    ) -> dict[str, Any]:
        """Send a control request and wait for the reply's content.

        Raises
        ------
        BrokenPoolError
            If the controller is gone.
        zpool.TimeoutError
            If no reply arrives within `timeout` seconds.
        """
        req = _Request(msg_type, content or {})
        self._enqueue(req)
        try:
            return req.future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"the controller did not answer {msg_type.value} within {timeout} s") from None

    def call_now(self, items: list[tuple[str, list[Any]]], done: Callable[[], bool]) -> bool:
        """Send tasks and wait for their answers in the calling thread; False (nothing sent) if that cannot be now.

        A blocking call whose tasks have no scheduling flags takes this path
        when nothing else of this connection is queued, being sent or
        outstanding, so nothing it sends can overtake earlier work: the
        calling thread sends on sockets of its own and reads the replies
        itself, sparing the two hand-offs to and from the I/O thread
        (:class:`~zpool.client.own_socket.OwnSocket`; with :attr:`pushing`,
        and tasks that use no shared memory, straight to the engines,
        sparing the controller's two hops as well). It returns once
        ``done()`` holds: the replies were settled here, or the tasks were
        failed elsewhere (the connection broke or closed). If the wait is
        interrupted (Ctrl-C), the I/O thread reads the replies later.

        In the main thread, a Ctrl-C is held while a message is sent or a
        reply read and settled (:class:`HoldCtrlC`); where that cannot be
        done (another SIGINT handler is installed), this path is not taken.
        """
        hold = HoldCtrlC()
        if hold.needed and sigint_handler() is not default_int_handler:
            return False
        own = self._own
        if not own.lock.acquire(blocking=False):
            return False  # another thread is in a call of its own
        try:
            with self._lock:
                if self.broken or self._closing or self._queue or self._sending or len(self.results) != len(items):
                    return False
            signature = own.send(items, hold, self.pushing, self.submit)
            if signature is None:
                return False  # nothing went out: the I/O thread's socket takes them
            poll, read, dead = own.poll, own.read, self.dead
            # While calls come back quickly, the first SPIN_S of the wait polls without sleeping: a quick
            # call's reply is read as it lands, sparing the thread's wake-up (see SPIN_S).
            clock = time.perf_counter
            began = clock()
            spin_until = began + SPIN_S if self._quick_calls else 0.0
            while not done():
                if dead.is_set() or self._closing:
                    self._fail_unanswered([task_id for task_id, _ in items])
                    break
                timeout = 0 if spin_until and clock() < spin_until else OWN_POLL_MS
                for each in poll(timeout):  # (a roster notice read here may change the sockets)
                    read(each, hold)
            self._quick_calls = clock() - began < SPIN_WORTH_S
            own.sent.pop(signature, None)  # answered: no notice about it can follow
            return True
        finally:
            own.lock.release()

    def _fail_unanswered(self, ids: list[str]) -> None:
        broken = self.broken
        if broken:
            self.results.fail(ids, lambda: BrokenPoolError(broken))
        else:
            self.results.fail(ids, lambda: PoolClosedError("the connection to the controller was closed"))

    def _enqueue(self, item: Any) -> None:
        self._enqueue_all([item])

    def _enqueue_all(self, items: list[Any]) -> None:
        # Checked under the lock: the I/O thread closes the wake pipe under it too,
        # so nothing is ever written to a closed (and perhaps reused) descriptor.
        with self._lock:
            if self.broken:
                raise BrokenPoolError(self.broken)
            if self._closing:
                raise PoolClosedError("the connection to the controller is closed")
            self._queue += items
            if self._signaled:
                return
            self._signaled = True
            os.write(self._wake_w, b"x")

    def on_io_thread(self) -> bool:
        """Whether the calling thread is this connection's I/O thread (which must never wait on itself)."""
        return threading.current_thread() is self._thread

    def close(self, timeout: float = 5.0) -> None:
        """Stop the I/O thread and close the sockets."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the I/O thread --------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_watch = time.monotonic() + WATCH_INTERVAL_S
        try:
            while not self._closing:
                for sock, _ in poller.poll(int(WATCH_INTERVAL_S * 1000)):
                    if sock is self._sock:
                        self._receive()
                    else:
                        self._send_queued()
                if time.monotonic() >= next_watch:
                    next_watch = time.monotonic() + WATCH_INTERVAL_S
                    self._check_controller()
                    self._own.read_leftovers()
                    self.results.expire_deferred()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            logger.exception("zpool I/O thread failed")
            self._break(f"the client's I/O thread failed: {type(exc).__name__}: {exc}")
        finally:
            self._sock.close(linger=0)
            self._closing = True  # a caller waiting on its own socket leaves within OWN_POLL_MS
            self._own.close()
            self._ctx.term()
            self.dead.set()  # the socket is closed: nothing queued will go out any more
            with self._lock:
                self._closing = True
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
                leftover, self._queue = self._queue, []
            closed = "the connection to the controller was closed"
            self._fail_items(leftover, lambda: PoolClosedError(closed))
            self._fail_requests(PoolClosedError(closed))

    def _take_queue(self) -> list[Any]:
        with self._lock:
            try:
                while self._wake_r >= 0 and os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            items, self._queue = self._queue, []
            self._signaled = False
            self._sending = bool(items)
        return items

    def _send_queued(self) -> None:
        items = self._take_queue()
        self._heard = time.monotonic()  # (see __init__: it owes nothing older than this)
        try:
            self._send_items(items)
            self._sending = False
        except BaseException:
            # Whatever was not sent never will be (the I/O thread fails): no wait on it may hang.
            for item in items:
                if isinstance(item, _Flagged) and item.tracker is not None:
                    item.tracker.abandon()
            raise

    def _send_items(self, items: list[Any]) -> None:
        if self.broken:
            reason = self.broken
            self._fail_items(items, lambda: BrokenPoolError(reason))
            return
        batch = BatchWriter()
        size = 0
        batch_flags: list[list[Any]] = []  # [first task index, count, flags]: one entry per submission
        # Trackers of the tasks in this batch: [tracker, how many of its tasks].
        tracked: list[list[Any]] = []
        segments: list[str] = []  # shared-memory segments the batch's payloads refer to
        for item in items:
            if isinstance(item, _Request):
                if len(batch):  # tasks queued before a request reach the controller before it
                    self._send_batch(batch, batch_flags, tracked, segments)
                    batch, size, batch_flags, tracked, segments = BatchWriter(), 0, [], [], []
                msg_id = self.session.new_id()
                self._requests[msg_id] = item
                msg = self.session.build(item.msg_type, content=encode(item.content), msg_id=msg_id)
                self._remember(msg[1], msg_id)
                send_frames(self._sock, msg)
                continue
            flags = None
            tracker = None
            tasks = item
            if isinstance(item, _Flagged):
                tasks, flags, tracker = item.items, item.flags, item.tracker
            for task_id, frames in tasks:
                segments += _shm.manifest_names(frames)
                if tracker is not None:
                    if tracked and tracked[-1][0] is tracker:
                        tracked[-1][1] += 1
                    else:
                        tracked.append([tracker, 1])
                if flags is not None:
                    if batch_flags and batch_flags[-1][2] is flags and sum(batch_flags[-1][:2]) == len(batch):
                        batch_flags[-1][1] += 1
                    else:
                        batch_flags.append([len(batch), 1, flags])
                batch.add(task_id, frames)
                size += sum(nbytes(f) for f in frames)
                if len(batch) >= BATCH_MAX_TASKS or size >= BATCH_MAX_BYTES:
                    self._send_batch(batch, batch_flags, tracked, segments)
                    batch, size, batch_flags, tracked, segments = BatchWriter(), 0, [], [], []
        if len(batch):
            self._send_batch(batch, batch_flags, tracked, segments)

    def _send_batch(
        self,
        batch: BatchWriter,
        flags: list[list[Any]],
        tracked: list[list[Any]] | None = None,
        segments: list[str] | None = None,
    ) -> None:
        fields = batch.fields()
        if flags:
            # [first task index, count, flags] per run of tasks sharing flags: a map's
            # thousand chunks that depend on a thousand tasks carry the ids once.
            fields["flags"] = flags
        if segments:
            fields["shm"] = True  # the controller looks for segments in this message's payloads
        msg = self.session.build(MsgType.APPLY_REQUEST, fields, buffers=batch.buffers())
        self._remember(msg[1], batch.ids)
        if segments:
            self._sent_segments[msg[1]] = segments
        if not tracked:
            send_frames(self._sock, msg)
            return
        trackers = send_frames(self._sock, msg, track=True)
        for tracker, n_tasks in tracked:
            tracker._sent(n_tasks, trackers)

    def _remember(self, signature: bytes, what: list[str] | str) -> None:
        self._sent[signature] = what
        self._sent_tasks += len(what) if isinstance(what, list) else 1
        while self._sent_tasks > SENT_MEMORY_TASKS:
            signature, old = self._sent.popitem(last=False)
            self._sent_tasks -= len(old) if isinstance(old, list) else 1
            self._sent_segments.pop(signature, None)

    def _on_rejected(self, msg: Message) -> None:
        content = msg.content
        try:
            signature = bytes.fromhex(str(content.get("signature", "")))
        except ValueError:
            return
        what = self._sent.pop(signature, None)
        if what is None:
            return  # not ours, or long forgotten
        self._sent_tasks -= len(what) if isinstance(what, list) else 1
        for name in self._sent_segments.pop(signature, ()):  # the controller never accepted them
            _shm.unlink(name)
        text = rejected_call_text(content.get("reason"))
        if isinstance(what, list):
            self.results.fail(what, lambda: AuthenticationError(text))
        else:
            req = self._requests.pop(what, None)
            if req is not None and not req.future.done():
                req.future.set_exception(AuthenticationError(text))

    def _receive(self) -> None:
        while True:
            frames = recv_ready(self._sock)
            if frames is None:
                return
            try:
                msg = self.session.unpack(frames)
                self._heard = time.monotonic()
                if msg.msg_type == MsgType.HEARTBEAT_REPLY.value:
                    continue  # an answer to _check_silence's ping: hearing it was the point
                if msg.msg_type == MsgType.APPLY_REPLY.value:
                    self.results.handle_reply(msg)
                elif msg.msg_type == MsgType.STREAM.value:
                    self.results.handle_stream(msg)
                elif msg.msg_type == MsgType.REJECT_NOTICE.value:
                    self._on_rejected(msg)
                else:
                    self._settle_request(msg)
            except ZPoolError as exc:
                logger.error("dropped a message of %d frames: %s: %s", len(frames), type(exc).__name__, exc)

    def _settle_request(self, msg: Message) -> None:
        parent_id = msg.parent.get("msg_id")
        req = self._requests.pop(parent_id, None) if isinstance(parent_id, str) else None
        if req is None:
            raise ProtocolError(f"a {msg.msg_type} answering no request of ours")
        if not req.future.done():
            req.future.set_result(msg.content)

    def _check_controller(self) -> None:
        if self.broken:
            return
        reason = self._watch() if self._watch is not None else None
        if reason:
            self._break(reason)
        elif self._silence is not None:
            self._check_silence(self._silence)

    def _check_silence(self, silence: float) -> None:
        """Ping a controller silent while work is outstanding; break if it stays silent `silence` seconds."""
        now = time.monotonic()
        away, self._checked = now - self._checked, now
        if away > silence / 4:
            # This thread itself did not run for a while (another thread held the GIL, the
            # process was stopped, a long send): what it did not read is not the controller's silence.
            self._heard = now
        if not len(self.results) and not self._requests:
            self._heard = now  # waiting for nothing: silence means nothing
            return
        self._receive()  # what has arrived counts
        quiet = now - self._heard
        if quiet >= silence:
            self._break(
                f"the controller has not answered for {quiet:.1f} s (2 x heartbeat_interval x heartbeat_misses,"
                " 5 s at least): it is stuck or unreachable"
            )
        elif quiet >= silence / 10 and now - self._pinged >= silence / 10:
            self._pinged = now
            send_frames(self._sock, self.session.build(MsgType.HEARTBEAT_REQUEST))

    def _break(self, reason: str) -> None:
        self.broken = reason
        self.dead.set()
        self.results.fail_all(lambda: BrokenPoolError(reason))
        self._fail_requests(BrokenPoolError(reason))
        self._fail_items(self._take_queue(), lambda: BrokenPoolError(reason))

    def _fail_requests(self, exc: BaseException) -> None:
        requests, self._requests = self._requests, {}
        for req in requests.values():
            if not req.future.done():
                req.future.set_exception(exc)

    def _fail_items(self, items: list[Any], exc_for: Callable[[], BaseException]) -> None:
        for item in items:
            if isinstance(item, _Request):
                if not item.future.done():
                    item.future.set_exception(exc_for())
            else:
                tasks = item.items if isinstance(item, _Flagged) else item
                self.results.fail([task_id for task_id, _ in tasks], exc_for)
                for _, frames in tasks:  # never sent: their segments are still ours
                    _shm.release(frames)
                if isinstance(item, _Flagged) and item.tracker is not None:
                    item.tracker.abandon()
