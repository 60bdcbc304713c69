"""An engine: receive task batches, run them, send results back.

::

    controller ──"engine" socket──▶ main thread: verify → deserialize → call → serialize ─┐
               ◀────────────────── replies, coalesced while more work waits ◀─────────────┘
    controller ──"heartbeat" socket──▶ heartbeat thread: answer beats, obey shutdown,
                                       exit when the parent or the controller is gone

The main thread runs user code and does the engine socket's I/O; the
heartbeat thread (:mod:`zpool.engine.heartbeat`) owns its own socket, so a
long task never looks like a dead engine.

Replies of tiny tasks are held back while more tasks are waiting and the
held replies are young, then sent as one message: tiny tasks travel many per
message both ways. A task that ran longer than ``HOLD_TASK_MAX_S`` is
answered at once, so the controller sends the next without delay. So that
a held reply never waits for a slow task that follows it, the heartbeat
thread sends the held replies when the main thread has been in user code
longer than the hold time. That is the one place two threads use
the engine socket, and a lock serialises every use of it (ZeroMQ sockets
may change threads across a memory barrier; they may not be used by two at
once).

While no task waits, the main thread imports the modules the pool names
to preload (:mod:`zpool._preload`), one per pass of its loop, outside the
lock, so a task never waits for more than the one import under way; and
only once no task has run for ``PRELOAD_IDLE_S``, so that a loop of quick
calls (an optimizer's) never waits for one at all.

The engine's namespace is a fresh ``__main__`` module: names pushed there
are what tasks see as globals of ``__main__``, and classes sent by value
from the caller's ``__main__`` find their home. It is held, with the
engine's id, by the process's :class:`~zpool._engine_context.EngineContext`.

Who touches what. Three actors share an :class:`Engine`: the main thread
(task loop, user code), the heartbeat thread (:class:`~zpool.engine.heartbeat.Heartbeat`:
beats, recall, interrupt, held replies) and the SIGINT handler, which
Python runs in the main thread between two bytecodes of whatever it is
running. Single-field reads and writes are atomic under the GIL; what
needs more takes ``lock``::

    field             written by                     read by                      guarded by
    ----------------  -----------------------------  ---------------------------  ----------------------------------
    sock, outbox      main; heartbeat (flush;        main; heartbeat              lock once ``serving`` (before:
                      give_back's _drain)                                         main alone, registering)
    pending           main (pop, _drain); heartbeat  main (unlocked "anything     lock, for every change
                      (give_back replaces it)        queued?", re-checked locked)
    aborted           main (_drain; discards the     main                         lock, but main's discard of the
                      task it popped); heartbeat                                  task it popped: nobody else adds
                      (give_back)                                                 or removes that id any more
    outbox_since      main (_push)                   heartbeat (hold deadline)    lock for writes; read unlocked
    serving           main, once: False -> True      heartbeat (give_back)        none
    in_task           main                           heartbeat; SIGINT handler    none
    task_id           main, before in_task = True    heartbeat (request_          none: the handler compares it
                                                     interrupt); SIGINT handler   with interrupting
    interrupting      heartbeat (request_interrupt)  main; SIGINT handler         none
    _interrupt_sent   heartbeat (True); SIGINT       SIGINT handler               none: set before os.kill
                      handler (False)
    _interrupt_due    main (False at each task);     _call_task (main)            none: one thread
                      SIGINT handler (True)
    _beats._woken     main (wake: True); heartbeat   both                         none: the pipe carries wake-ups
                      (_send_held_replies: False)
    _beats.last_beat, heartbeat; main (configure,    heartbeat                    none: ``configured`` is set last
    interval, misses  once, registering)
    output            main (start, finish of a       main; any thread that        its own lock (TaskOutput.lock)
                      task); writes: any thread      prints
    context,          main                           main                         none: one thread
    engine_id,
    preloader, ...

An interrupt (``request_interrupt``, heartbeat thread, then SIGINT to this
process) finds the task in one of four states, by ``in_task`` and the frame
the handler interrupts::

    idle ──pop a task──▶ loading ──loads_call done──▶ calling ──result back──▶ answering ──▶ idle
    in_task False       in_task True                in_task True             in_task False
    SIGINT ignored      KeyboardInterrupt in        KeyboardInterrupt in     SIGINT ignored: the
                        loads: "aborted before      the task's code (or      reply goes as it is
                        it ran"                     _call_task): "aborted"

Between loading and calling (the handler interrupts ``_run_one``'s own
frame, where an exception could escape its handlers) the handler only
sets ``_interrupt_due``, and ``_call_task`` raises at its entry. A SIGINT
sent for a task that has ended is ignored: ``interrupting`` names a task
that is no longer ``task_id``.
"""

from __future__ import annotations

import builtins
import collections
import logging
import math
import mmap
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
import types
from typing import Any, Sequence

import zmq

from zpool import _shm
from zpool._engine_context import MAX_TRACEBACK_CHARS, describe_exception, set_main_namespace
from zpool._partition import ItemFailure, run_each
from zpool._preload import Preloader
from zpool._process import ParentWatch
from zpool._transport import host_id, launcher_rank, member_socket
from zpool._wire import RUN_SLOT_BYTES, encode_run_slot
from zpool.engine.heartbeat import Heartbeat
from zpool.engine.output import TaskOutput
from zpool.engine.pushed import PushedTasks
from zpool.error import (
    ImpossibleDependency,
    ProtocolError,
    ResultEncodingError,
    SerializationError,
    TaskAborted,
    UnmetDependency,
    ZPoolError,
)
from zpool.protocol import (
    REPLY_COLUMNS,
    Batch,
    BatchWriter,
    ConnectionInfo,
    Message,
    MsgType,
    Session,
    TaskStatus,
    encode,
    recv_frames,
    recv_ready,
    send_frames,
)
from zpool.serialize import callable_name, dumps, loads, loads_call, short_repr

# The controller may bind after we connect (they start together): retry soon.
RECONNECT_IVL_MS = 10

__all__ = ["Engine"]

logger = logging.getLogger(__name__)

# Replies wait at most this long for company while more tasks are queued.
REPLY_HOLD_S = 0.002
# ... and only after tasks shorter than this: a longer task's reply goes at once, so that the
# controller hears of it (and sends the next task) without delay; a message per such task costs
# little. (The heartbeat thread, which sends held replies when a task runs long, may itself wait
# for the interpreter lock up to sys.getswitchinterval() behind CPU-bound code.)
HOLD_TASK_MAX_S = 0.0002
# The engine preloads modules (zpool._preload) only once no task has run for this long, in seconds.
PRELOAD_IDLE_S = 0.05
REPLY_BATCH_MAX = 512
REGISTER_TIMEOUT_S = 60.0
# While tasks are queued here, the socket is read between tasks at least this often.
DRAIN_EVERY_S = 0.001
# How long the heartbeat thread waits for the main thread's lock to take recalled tasks back.
GIVE_BACK_WAIT_S = 0.05


class Engine:
    """One engine process.

    Parameters
    ----------
    info : ConnectionInfo
        Where the controller listens, and the cluster key.
    parent_pid : int or None
        Exit when this process ends (the controller that launched us).
    """

    def __init__(
        self,
        info: ConnectionInfo,
        parent_pid: int | None = None,
        run_slot: str | None = None,
        preload: Sequence[str] = (),
        direct: str | None = None,
        output: TaskOutput | None = None,
        reconnect_s: float = 0.0,
    ) -> None:
        self.info = info
        # How long it waits for a controller that stopped answering to come back (a standalone cluster's
        # controller started again at the same addresses), registering again; 0: it exits at once.
        self.reconnect_s = reconnect_s
        self.register_due = False  # the heartbeat thread asks the main thread to register again
        # Where sys.stdout and sys.stderr write, task by task, when the cluster collects output.
        self.output = output
        # Modules to import while no task waits (Pool(preload=...), zpool._preload).
        self.preloader: Preloader | None = Preloader(preload) if preload else None
        self.busy_at = 0.0  # when the last task ended (preloading waits for a pause: PRELOAD_IDLE_S)
        # Which task it is running, for its controller to read should it die (see zpool._wire's run slot).
        self.run_slot = _open_run_slot(run_slot) if run_slot else None
        self.session = Session(info.key)
        self.ident = b"engine-" + os.urandom(16).hex().encode()
        self.engine_id: int | None = None
        main = types.ModuleType("__main__", "zpool engine namespace")
        # As a real __main__ has: code run with these globals (and C code that
        # imports on its behalf, as numpy's array methods do) looks builtins up here.
        main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main
        self.namespace: dict[str, Any] = main.__dict__
        # Who this engine is and what its __main__ holds, for the whole process (zpool._engine_context).
        self.context = set_main_namespace(self.namespace)
        if info.mp_authkey:
            # The caller's multiprocessing authkey: Manager proxies it sends can connect back.
            multiprocessing.current_process().authkey = info.mp_authkey
        self.parent = ParentWatch(parent_pid) if parent_pid else None
        # Large results go through shared memory when the cluster offers it (zpool._shm).
        self.shared = _shm.Writer(info.shm_prefix, "e") if info.shm_prefix and _shm.available() else None
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.ident)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        member_socket(self.sock, info.engine, info.curve)
        self.sock.connect(info.engine)
        self.pending: collections.deque[tuple[str, list[Any]]] = collections.deque()
        self.aborted: set[str] = set()  # queued here, aborted by the client: answered, never run
        self.outbox = BatchWriter(REPLY_COLUMNS)
        self.outbox_since = 0.0
        self.outbox_printed = False  # a task answered in the outbox wrote output (its END is in the pipe)
        self.held = 0  # replies held, for the controller (outbox) and for clients that pushed tasks
        # Clients may push tasks to this socket of its own (the direct path; zpool.engine.pushed).
        self.pushed: PushedTasks | None = None
        if direct:
            try:
                self.pushed = PushedTasks(direct, self.session)
            except OSError as exc:  # (a path too long, no fd left): clients use the controller's way
                logger.warning("no direct socket at %s: %s", direct, exc)
        self.last_run_s = 0.0  # how long the last task took, loading and answering included
        self._drained_at = 0.0  # when the main thread last read the socket between tasks
        self.in_task = False
        self.task_id: str | None = None  # the task running, or last run
        self.interrupting: str | None = None  # the task interrupt() was asked for last (see request_interrupt)
        self._interrupt_sent = False  # a SIGINT of request_interrupt's is on its way
        self._interrupt_due = False  # it arrived between the task's loading and its call (see _call_task)
        self.lock = threading.Lock()  # every use of self.sock and self.outbox, once serving
        self.serving = False  # registered and in the task loop
        self._beats = Heartbeat(self, REPLY_HOLD_S, RECONNECT_IVL_MS)

    # -- lifecycle ----------------------------------------------------------

    def run(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_sigint)
        self._beats.start()
        self._register()
        pushed = self.pushed
        poller, polled = self._poller(), pushed.version if pushed is not None else 0
        lock = self.lock
        self.serving = True  # from now on the socket is used under the lock only (see give_back)
        while True:
            if not self.pending:
                preloader = self.preloader
                wait_ms = 1000
                if preloader is not None:  # preload once idle for PRELOAD_IDLE_S: not in a loop's gaps
                    wait_ms = max(0, math.ceil((self.busy_at + PRELOAD_IDLE_S - time.monotonic()) * 1000))
                with lock:
                    if self.register_due:  # (see Heartbeat._wait_for_controller)
                        self.register_due = False
                        self.register_again()
                    self.flush()
                    if self.pending:  # the heartbeat thread drained the sockets meanwhile (give_back)
                        continue
                    if pushed is not None:
                        if pushed.noting:  # wake when the notices are due
                            wait_ms = min(wait_ms, math.ceil(pushed.notice_wait_s() * 1000))
                        if pushed.version != polled:  # a client came or went, or a reply waits to be taken
                            poller, polled = self._poller(), pushed.version
                    arrived = poller.poll(wait_ms)
                    if arrived:
                        self._drain()
                if not arrived and preloader is not None and time.monotonic() - self.busy_at >= PRELOAD_IDLE_S:
                    preloader.step()  # one module, outside the lock: the heartbeat thread may flush meanwhile
                    if preloader.done:
                        self.preloader = None
                continue
            began = time.monotonic()
            self._run_one()
            self.busy_at = time.monotonic()
            self.last_run_s = self.busy_at - began
            with lock:
                # Between tasks, read what arrived: more work, and aborts, which must overtake
                # the tasks queued here (a millisecond late at most: asking the socket costs as
                # much as a tiny task; aborts of queued tasks also come through recall).
                now = time.monotonic()
                if not self.pending or now - self._drained_at >= DRAIN_EVERY_S:
                    self._drained_at = now
                    self._drain()
                if (
                    not self.pending
                    or self.held >= REPLY_BATCH_MAX
                    or self.last_run_s >= HOLD_TASK_MAX_S
                    or time.monotonic() - self.outbox_since > REPLY_HOLD_S
                ):
                    self.flush()

    def _poller(self) -> zmq.Poller:
        """What the main thread waits on: the controller's socket, and the direct socket's (zpool.engine.pushed)."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if self.pushed is not None:
            for item, events in self.pushed.poll_items():
                poller.register(item, events)
        return poller

    def _register_request(self) -> list[Any]:
        fields: dict[str, Any] = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "host_id": host_id(),
            "rank": launcher_rank(),
        }
        if self.pushed is not None:
            fields["direct"] = self.pushed.address
        return self.session.build(MsgType.REGISTER_REQUEST, content=encode(fields))

    def register_again(self) -> None:
        """Ask the controller to register this engine again (heartbeat thread, holding the lock).

        Sent when the controller stopped answering: the socket reconnects by
        itself to a controller started again at the same address, which
        receives the request then; its reply is read by the main thread
        (:meth:`_registered`). A controller that knows this engine answers
        with the same engine id.
        """
        send_frames(self.sock, self._register_request())

    def _registered(self, msg: Message) -> None:
        """The controller's reply to :meth:`_register`, or to :meth:`register_again` (main thread, holding the lock)."""
        content = msg.content
        if content.get("refused"):
            logger.critical("the controller refused this engine: %s", content["refused"])
            raise SystemExit(f"zpool engine: the controller refused this engine: {content['refused']}")
        engine_id = int(content["engine_id"])
        if self.engine_id is None:
            logger.info("registered as engine %d", engine_id)
        elif not content.get("known"):
            # A new controller: the tasks queued here, and the replies held, were its predecessor's.
            logger.warning(
                "registered again, as engine %d (was %s); %d task(s) queued for the previous controller dropped",
                engine_id,
                self.engine_id,
                len(self.pending),
            )
            self.pending.clear()
            self.outbox = BatchWriter(REPLY_COLUMNS)
            self.held = 0
        if engine_id != self.engine_id:
            self.engine_id = engine_id
            self.context.registered(engine_id)
        self._beats.configure(float(content["heartbeat_interval"]), int(content["heartbeat_misses"]))
        if content.get("inline_results"):
            self.shared = None  # the controller keeps results (its task database): never in shared memory
        if content.get("setup"):
            self._setup(msg.buffers)

    def _register(self) -> None:
        send_frames(self.sock, self._register_request())
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.sock.poll(100):
                continue
            frames = recv_frames(self.sock)
            try:
                msg = self.session.unpack(frames)
            except ZPoolError as exc:
                logger.error("dropped a message while registering: %s", exc)
                continue
            if msg.msg_type == MsgType.REGISTER_REPLY.value:
                self._registered(msg)
                return
            if msg.msg_type == MsgType.APPLY_REQUEST.value:
                self._queue(msg)
        raise SystemExit(
            f"zpool engine: no answer from the controller at {self.info.engine} within {REGISTER_TIMEOUT_S:.0f} s"
        )

    def _setup(self, frames: list[Any]) -> None:
        """Run the pool's initializer, then tell the controller whether this engine can take tasks.

        On failure the controller asks this engine to shut down (through the
        heartbeat thread); until then it waits here, taking no task.
        """
        try:
            func, args, kwargs = loads_call(frames)
            func(*args, **kwargs)
        except BaseException as exc:
            tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            error = f"the initializer raised {type(exc).__name__}: {_safe_str(exc)} in {self.context.label}:\n{text}"
            content = {"ok": False, "error": error[:MAX_TRACEBACK_CHARS]}
            with self.lock:
                send_frames(self.sock, self.session.build(MsgType.ENGINE_READY, content=encode(content)))
            while True:  # the heartbeat thread ends the process
                time.sleep(1.0)
        with self.lock:
            self.flush_streams()
            send_frames(self.sock, self.session.build(MsgType.ENGINE_READY, content=encode({"ok": True})))

    # -- receiving ------------------------------------------------------------

    def _drain(self) -> None:
        if self.pushed is not None:
            self.pushed.drain(self._queue)
        while True:
            frames = recv_ready(self.sock)
            if frames is None:
                return
            try:
                msg = self.session.unpack(frames)
                if msg.msg_type == MsgType.REGISTER_REPLY.value:
                    self._registered(msg)
                    continue
                if msg.msg_type == MsgType.ABORT_REQUEST.value:
                    ids = msg.header.get("ids")
                    if isinstance(ids, list):
                        # The tasks were sent before the abort: queued here, or already run.
                        queued = {task_id for task_id, _ in self.pending}
                        self.aborted.update(i for i in ids if isinstance(i, str) and i in queued)
                    continue
                if msg.msg_type != MsgType.APPLY_REQUEST.value:
                    raise ProtocolError(f"unexpected message type {msg.msg_type!r}")
                self._queue(msg)
            except Exception as exc:
                logger.error("dropped a message of %d frames: %s: %s", len(frames), type(exc).__name__, exc)

    def _to_controller(self, frames: list[Any]) -> None:
        """Send the controller a signed message: a request pushed here, or its replies (caller holds the lock)."""
        send_frames(self.sock, frames)

    def _queue(self, msg: Message, batch: Batch | None = None) -> None:
        if batch is None:
            batch = Batch(msg.header, msg.buffers)
        self.pending.extend((task_id, batch.payload(i)) for i, task_id in enumerate(batch.ids))

    def give_back(self, ids: set[str]) -> list[str]:
        """Take the tasks of `ids` that are queued here, not started, out of the queue; return their ids.

        Called by the heartbeat thread when the controller recalls them (for
        an idle engine, or to abort them). The main thread reads the socket
        only between tasks, so this reads what has arrived first. Never
        waits long for the main thread: when it holds the lock for long, it
        is waiting for work, and nothing is queued.
        """
        if not self.serving or not self.lock.acquire(timeout=GIVE_BACK_WAIT_S):
            return []  # (while registering, the main thread reads the socket without the lock)
        try:
            self._drain()
            given: list[str] = []
            kept: collections.deque[tuple[str, list[Any]]] = collections.deque()
            for entry in self.pending:
                if entry[0] in ids:
                    given.append(entry[0])
                else:
                    kept.append(entry)
            if given:
                self.pending = kept
                self.aborted.difference_update(given)
                if self.pushed is not None:
                    self.pushed.forget(given)
            return given
        finally:
            self.lock.release()

    # -- interrupting ---------------------------------------------------------

    def request_interrupt(self, ids: Any) -> bool:
        """Interrupt the running task (any thread): with `ids`, only if it is one of them; True if signalled.

        SIGINT to this process runs :meth:`_on_sigint` in the main thread,
        which raises KeyboardInterrupt in the task's code, even in a blocking
        call such as ``time.sleep``. Code that holds the interpreter lock in C
        for long is interrupted when it returns.
        """
        task_id = self.task_id
        if not self.in_task or task_id is None or (ids is not None and task_id not in ids):
            return False
        self.interrupting = task_id
        self._interrupt_sent = True
        os.kill(os.getpid(), signal.SIGINT)
        return True

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT: interrupt the task's code; ignored between tasks and in the engine's own frame around it.

        In ``_run_one`` itself (just before or after the call) an exception
        could escape its handlers: the task would go unanswered.
        ``_call_task`` gives the call a frame of its own, where raising is
        always caught, even when the function is C code (``time.sleep``).
        """
        if self._interrupt_sent:
            self._interrupt_sent = False
            if self.interrupting != self.task_id:
                return  # meant for a task that has ended since: the one running now is not concerned
        if not self.in_task or frame is None:
            return
        if frame.f_code is _RUN_ONE_CODE:
            self._interrupt_due = True  # between loading and calling: _call_task raises it
            return
        raise KeyboardInterrupt

    # -- running --------------------------------------------------------------

    def _run_one(self) -> None:
        with self.lock:  # give_back may have taken the queue's tasks meanwhile (heartbeat thread)
            if not self.pending:
                return
            task_id, frames = self.pending.popleft()
        started = time.time()
        if self.aborted and task_id in self.aborted:
            self.aborted.discard(task_id)
            error = TaskAborted(f"task {task_id} was aborted before it ran")
            self._answer_error(task_id, error, started, "", skip_frames=None, status=TaskStatus.ABORTED.value)
            return
        func: Any = None
        output = self.output
        if output is not None:  # what it prints from now on is its own
            pushed = self.pushed
            output.start(task_id, pushed.route_of(task_id) if pushed is not None else b"")
        slot = self.run_slot
        if slot is not None:  # from here on, the task counts as started should this engine die
            mark = encode_run_slot(task_id)
            slot[: len(mark)] = mark
        # Interruptible from here (loading its arguments may take a while) to the end of its call.
        self.task_id, self._interrupt_due = task_id, False
        self.in_task = True
        if self.held:  # have the replies held sent if this task is slow (after in_task: see Heartbeat.run)
            self._beats.wake()
        # (Notices of pushed tasks only: the heartbeat thread looks at them every NOTICE_HOLD_S while
        # they are held, unwoken; a wake-up per quick pushed call cost more than the call's own work.)
        try:
            func, args, kwargs = loads_call(frames)
        except BaseException as exc:
            self.in_task = False
            if isinstance(exc, KeyboardInterrupt) and self.interrupting == task_id:
                error = TaskAborted(f"task {task_id} was interrupted on engine {self.engine_id} before it ran")
                self._answer_error(task_id, error, started, "", skip_frames=None, status=TaskStatus.ABORTED.value)
            else:
                self._answer_error(task_id, exc, started, "could not deserialize the task: ")
            return
        del frames
        # imap chunks: every item has its own outcome, so none may spoil the others.
        per_item = func is run_each and bool(args)
        item_func = args[0] if per_item else None
        try:
            result = _call_task(self, func, args, kwargs)
        except BaseException as exc:
            self.in_task = False
            if isinstance(exc, KeyboardInterrupt) and self.interrupting == task_id:
                error = TaskAborted(f"task {task_id} was interrupted while running on engine {self.engine_id}")
                error.__traceback__ = exc.__traceback__
                self._answer_error(task_id, error, started, "", skip_frames=1, status=TaskStatus.ABORTED.value)
                return
            # Its functional dependency is not met here: the scheduler tries another engine.
            unmet = isinstance(exc, UnmetDependency) and not isinstance(exc, ImpossibleDependency)
            status = TaskStatus.UNMET.value if unmet else TaskStatus.ERROR.value
            self._answer_error(task_id, exc, started, "", skip_frames=1, status=status)
            return
        finally:
            self.in_task = False
            del args, kwargs
        if per_item:
            _make_failures_portable(result)
        try:
            try:
                payload = dumps(result, self.shared)
            except SerializationError:
                if not per_item:
                    raise
                _replace_unsendable(result, item_func)
                payload = dumps(result, self.shared)
        except SerializationError as exc:
            cause = exc.__cause__ or exc
            hint = f" (the result of {callable_name(func)}() cannot be sent back: return something picklable)"
            error = ResultEncodingError(short_repr(cause, 2000), short_repr(result, 200), hint)
            del result
            self._answer_error(task_id, error, started, "", skip_frames=None)
            return
        completed = time.time()
        self._push(task_id, payload, TaskStatus.OK.value, started, completed)

    def _answer_error(
        self,
        task_id: str,
        exc: BaseException,
        started: float,
        prefix: str,
        skip_frames: int | None = 0,
        status: str = TaskStatus.ERROR.value,
    ) -> None:
        completed = time.time()
        tb = exc.__traceback__
        if skip_frames:
            for _ in range(skip_frames):
                tb = tb.tb_next if tb is not None else None
        error = describe_exception(exc, tb, f", task {task_id}")
        if prefix:
            error["evalue"] = (prefix + error["evalue"])[:10_000]
        frames: list[Any] = [encode(error)]
        exc_frames = _portable_exception(exc) if not prefix else None
        if exc_frames is not None:
            frames += exc_frames
        self._push(task_id, frames, status, started, completed)

    def _push(self, task_id: str, frames: list[Any], status: str, started: float, completed: float) -> None:
        # Its output is complete (END is in the pipe) before its reply goes.
        wrote = self.output is not None and self.output.finish(task_id)
        with self.lock:
            if not self.held:
                self.outbox_since = time.monotonic()
            self.held += 1
            pushed = self.pushed
            if pushed is not None and status == TaskStatus.UNMET.value:
                # Its functional dependency is not met here: the controller places it elsewhere, and
                # its answer comes that way (the controller's reply, not this one, is the client's).
                pushed.forget((task_id,))
                pushed = None
            if pushed is None or not pushed.add(task_id, frames, wrote, status, self.engine_id, started, completed):
                self.outbox.add(task_id, frames, status, self.engine_id, started, completed)
                if wrote:
                    self.outbox_printed = True

    def holding(self) -> bool:
        """Whether replies, or notices of pushed tasks for the controller, are held."""
        return bool(self.held) or (self.pushed is not None and self.pushed.noting)

    def flush(self, notices: bool = False) -> None:
        """Send the held replies: to the controller, and to each client that pushed tasks (caller holds the lock).

        The notices of pushed tasks go to the controller when due (see
        :mod:`zpool.engine.pushed`), with `notices` at once, and always before
        replies of the controller's own: an unmet dependency's reply may
        answer a pushed task.
        """
        pushed = self.pushed
        if self.held:
            self.held = 0
            self.flush_streams()
            if pushed is not None:
                pushed.send_replies()
        if pushed is not None and pushed.noting and (notices or self.outbox or pushed.notice_wait_s() == 0):
            pushed.send_notices(self._to_controller)
        if self.outbox:
            batch, self.outbox = self.outbox, BatchWriter(REPLY_COLUMNS)
            fields = batch.fields()
            if self.outbox_printed:  # the controller sends the output on before these replies
                self.outbox_printed = False
                fields["printed"] = True
            send_frames(self.sock, self.session.build(MsgType.APPLY_REPLY, fields, buffers=batch.buffers()))

    @staticmethod
    def flush_streams() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def _make_failures_portable(results: list[Any]) -> None:
    """Keep only the item exceptions that will be rebuilt as themselves in the caller; the others travel as reports."""
    for failure in results:
        if type(failure) is ItemFailure and failure.exc is not None and _portable_exception(failure.exc) is None:
            failure.exc = None


def _replace_unsendable(results: list[Any], func: Any) -> None:
    """Put an :class:`ItemFailure` in place of each result in `results` that cannot be serialized."""
    for i, value in enumerate(results):
        if type(value) is ItemFailure:
            continue
        try:
            dumps(value)
        except SerializationError as exc:
            cause = exc.__cause__ or exc
            hint = f" (the result of {callable_name(func)}() cannot be sent back: return something picklable)"
            error = ResultEncodingError(short_repr(cause, 2000), short_repr(value, 200), hint)
            results[i] = ItemFailure(describe_exception(error, None, " in imap"), error)


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:
        return f"<unprintable {type(exc).__name__}>"


def _portable_exception(exc: BaseException) -> list[Any] | None:
    """Serialize `exc` if it survives the round trip as the same type, else None."""
    try:
        frames = dumps(exc)
        back = loads([bytes(memoryview(f)) for f in frames])
    except BaseException:  # whatever its __reduce__ raises, SystemExit included
        return None
    # Compare by name: a class sent by value is rebuilt as a new, equivalent class.
    same = (type(back).__module__, type(back).__qualname__) == (type(exc).__module__, type(exc).__qualname__)
    return frames if same else None


def _call_task(engine: Engine, func: Any, args: Any, kwargs: Any) -> Any:
    """Call the task's function: a frame of its own, in which SIGINT may raise even if `func` is written in C."""
    if engine._interrupt_due:  # interrupted in _run_one's own frame, just before this call
        raise KeyboardInterrupt
    return func(*args, **kwargs)


_RUN_ONE_CODE = Engine._run_one.__code__


def _open_run_slot(path: str) -> mmap.mmap | None:
    """The engine's run slot, mapped (a store per task, no system call); None if it cannot be made."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        logger.warning("no run slot at %s (%s): if this engine dies, all tasks queued on it fail", path, exc)
        return None
    try:
        os.ftruncate(fd, RUN_SLOT_BYTES)
        return mmap.mmap(fd, RUN_SLOT_BYTES)
    except OSError as exc:
        logger.warning("no run slot at %s (%s): if this engine dies, all tasks queued on it fail", path, exc)
        return None
    finally:
        os.close(fd)
