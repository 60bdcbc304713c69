"""``imap`` and ``imap_unordered``: a feeder thread, a bounded window, and the iterator.

::

    consumer (IMapIterator.next) ◀── IMapState ◀── chunk outcomes (IMapChunk, on the I/O thread)
                                        │ ▲
                    room in the window  ▼ │ reserve / chunk_done
                              zpool-imap-feeder ──reads──▶ the input iterable
                                        │
                                        └── chunks ──▶ Submitter ──▶ controller

:func:`start` checks the arguments in the caller and starts one
``zpool-imap-feeder`` thread, which reads the input a chunk at a time,
only while fewer than ``window`` chunks are submitted and not yet taken by
the consumer: an endless input runs in constant memory. Chunks are sized
from measured engine times unless ``chunksize`` is given. Every item has
its own outcome: an item whose call raised raises at its place, and the
iteration goes on after it; an item that cannot be serialized likewise.
:class:`IMapState` is what the consumer, the feeder and the replies share,
under one condition.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import sys
import threading
import time
import weakref
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar, cast

from zpool._partition import ItemFailure
from zpool._settings import is_int
from zpool.client.submitter import Submitter, release_unsent
from zpool.dependency import task_flags
from zpool.error import PoolClosedError, SerializationError, TimeoutError, serialization_error
from zpool.serialize import callable_name, dumps

__all__ = ["IMAP_CHUNK_MAX", "IMAP_CHUNK_TARGET_S", "IMapIterator", "IMapState", "start"]

T = TypeVar("T")

# Adaptive imap chunks: aim for this much engine time per chunk, in seconds,
# and never more than this many items.
IMAP_CHUNK_TARGET_S = 0.005
IMAP_CHUNK_MAX = 4096
# An ``async for`` over imap waits in a worker thread this long at most per look (a cancelled one lets go then).
ASYNC_WAIT_SLICE_S = 0.5
# Chunks an imap submits ahead of its consumer, at least (see Pool.imap's buffersize).
IMAP_MIN_READ_AHEAD = 32
# ... and, with a fixed chunksize, at least this many items.
IMAP_MIN_ITEMS_AHEAD = 1024


class IMapState:
    """What an :class:`IMapIterator` shares with its feeder thread and its chunks' replies.

    Chunks are numbered in input order. ``in_flight`` counts chunks
    submitted and not yet taken by the consumer; the feeder waits while it
    reaches ``window``, which bounds the memory one ``imap`` holds however
    long its input. ``length`` is the number of chunks once the input is
    exhausted (or failed).
    """

    def __init__(self, ordered: bool, window: int, convert: Callable[[ItemFailure], BaseException]) -> None:
        self.ordered = ordered
        self.window = window
        self.convert = convert  # an item's failure report -> the exception to raise
        self.item_s: float | None = None  # measured engine time per item (moving average)
        self.cond = threading.Condition(threading.Lock())
        self.in_flight = 0
        self.length: int | None = None
        self.stopped = False  # the consumer is gone, or the pool terminated: feed no more
        self.finished = False  # the feeder is done
        self.arrived: dict[int, tuple[bool, Any]] = {}  # ordered: chunk number -> outcome
        self.queue: collections.deque[tuple[bool, Any]] = collections.deque()  # unordered
        self.next_chunk = 0  # ordered: the chunk to yield from next
        self.taken = 0  # chunks the consumer has taken
        self.items: collections.deque[Any] = collections.deque()  # the current chunk's values

    # -- feeder side ------------------------------------------------------------

    def reserve(self) -> bool:
        """Wait for room for one more chunk; False if feeding should stop."""
        with self.cond:
            while self.in_flight >= self.window and not self.stopped:
                self.cond.wait()
            if self.stopped:
                return False
            self.in_flight += 1
            return True

    def unbound(self) -> None:
        """Read ahead without limit from now on (the pool is being joined)."""
        with self.cond:
            self.window = sys.maxsize
            self.cond.notify_all()

    def release(self) -> None:
        """Give back a reservation that was not used (the input ended)."""
        with self.cond:
            self.in_flight -= 1

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def wait_finished(self) -> None:
        """Wait until the feeder has submitted its last chunk."""
        with self.cond:
            while not self.finished:
                self.cond.wait()

    def end(self, length: int) -> None:
        """The input is exhausted: `length` chunks in all."""
        with self.cond:
            self.length = length
            self.finished = True
            self.cond.notify_all()

    def next_size(self, previous: int) -> int:
        """Items for the next chunk when sizing adaptively.

        One item until a chunk has been timed (so the first result comes
        quickly), then enough items for about :data:`IMAP_CHUNK_TARGET_S` of
        engine time, growing at most twofold per chunk and never past
        :data:`IMAP_CHUNK_MAX`.
        """
        item_s = self.item_s
        if item_s is None:
            return 1
        wanted = int(IMAP_CHUNK_TARGET_S / max(item_s, 1e-7))
        return max(1, min(wanted, 2 * previous, IMAP_CHUNK_MAX))

    def timed(self, n_items: int, run_s: float) -> None:
        """A chunk of `n_items` ran for `run_s` seconds on its engine."""
        if n_items > 0 and run_s >= 0:
            per_item = run_s / n_items
            mean = self.item_s
            self.item_s = per_item if mean is None else mean + 0.3 * (per_item - mean)

    def chunk_done(self, number: int, ok: bool, value: Any) -> None:
        """Record chunk `number`'s outcome: its list of values, or the exception to raise at its place."""
        with self.cond:
            if self.ordered:
                self.arrived[number] = (ok, value)
            else:
                self.queue.append((ok, value))
            self.cond.notify_all()

    # -- consumer side ------------------------------------------------------------

    def next(self, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                if self.items:
                    value = self.items.popleft()
                    if type(value) is ItemFailure:
                        raise self.convert(value)
                    return value
                outcome = self._take()
                if outcome is not None:
                    ok, value = outcome
                    if not ok:
                        raise value
                    self.items.extend(value)
                    continue
                if self.length is not None and self.taken >= self.length:
                    raise StopIteration
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(
                        f"no imap result within {timeout} s; the work goes on, call next() again to wait more"
                    )
                self.cond.wait(left)

    def wait_ready(self, timeout: float) -> None:
        """Wait up to `timeout` seconds until :meth:`next` would not wait (a result, a failure, or the end).

        Takes nothing: an ``async for`` waits here in a worker thread, and a
        cancelled consumer must not lose a result taken on its behalf.
        """
        with self.cond:
            self.cond.wait_for(self._ready, timeout)

    def _ready(self) -> bool:
        if self.items or (self.next_chunk in self.arrived if self.ordered else self.queue):
            return True
        return self.length is not None and self.taken >= self.length

    def _take(self) -> tuple[bool, Any] | None:
        if self.ordered:
            outcome = self.arrived.pop(self.next_chunk, None)
            if outcome is None:
                return None
            self.next_chunk += 1
        elif self.queue:
            outcome = self.queue.popleft()
        else:
            return None
        self.taken += 1
        self.in_flight -= 1
        self.cond.notify_all()  # room for the feeder
        return outcome


class IMapChunk:
    """One submitted chunk of an ``imap``, as the client's result table sees it."""

    __slots__ = ("holes", "msg_ids", "number", "state")

    def __init__(
        self, state: IMapState, number: int, task_id: str, holes: list[tuple[int, BaseException]] | None = None
    ) -> None:
        self.state = state
        self.number = number
        self.msg_ids = [task_id]
        # Items that could not be sent, by place in the chunk: they fail there.
        self.holes = holes

    def _task_done(self, index: int, ok: bool, value: Any, md: tuple[Any, ...]) -> None:
        started, completed = md[2], md[3]
        if ok and started is not None and completed is not None:
            self.state.timed(len(value), completed - started)
        if ok and self.holes:
            value = list(value)
            for place, exc in self.holes:
                value.insert(place, ItemFailure({}, exc))
        self.state.chunk_done(self.number, ok, value)

    def _add_output(self, index: int, kind: str, text: str) -> None:
        """What the chunk printed: forwarded (``output="forward"``), not kept (an iterator has no result object)."""

    def _fail(self, exc: BaseException) -> None:
        self.state.chunk_done(self.number, False, exc)


class IMapIterator(Generic[T]):
    """The iterator :meth:`Pool.imap` and :meth:`Pool.imap_unordered` return.

    Results are yielded as they arrive (in input order for ``imap``); the
    input is read ahead only as far as the consumer keeps up, so an endless
    input runs in constant memory. A failed task raises its exception at its
    place (its chunk's first place when chunked), and iteration can go on
    after it.
    """

    def __init__(self, state: IMapState, owner: Any = None) -> None:
        self._state = state
        self._owner = owner  # the pool stays alive while someone iterates
        self._bar: Any = None  # a progress bar moved by each result taken (show_progress)
        weakref.finalize(self, state.stop)

    def show_progress(self, total: int | None, desc: str) -> None:
        """Draw a progress bar (tqdm) that counts the results as they are taken; `total` if known."""
        from zpool import _progress

        self._bar = _progress.make_bar(total, desc, "item")

    def __iter__(self) -> IMapIterator[T]:
        return self

    def __next__(self) -> T:
        return self.next()

    def next(self, timeout: float | None = None) -> T:
        """Return the next result, waiting at most `timeout` seconds.

        Raises
        ------
        zpool.TimeoutError
            If no result arrives in time (also a ``multiprocessing.TimeoutError``).
        StopIteration
            When every result has been returned.
        """
        bar = self._bar
        try:
            value = cast(T, self._state.next(timeout))
        except StopIteration:
            self._owner = None
            if bar is not None:
                self._bar = None
                bar.close()
            raise
        except TimeoutError:
            raise
        except BaseException:
            if bar is not None:  # a failed item counts as done
                bar.update(1)
            raise
        if bar is not None:
            bar.update(1)
        return value

    def __aiter__(self) -> IMapIterator[T]:
        return self

    async def __anext__(self) -> T:
        """The next result, for ``async for``: the event loop runs on while it is awaited.

        Results already here are returned at once; otherwise a worker thread
        of the loop's default executor waits until one is (taking nothing,
        so a cancelled ``async for`` loses no result).
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                return self.next(0)
            except StopIteration:
                raise StopAsyncIteration from None
            except TimeoutError:
                pass
            await loop.run_in_executor(None, self._state.wait_ready, ASYNC_WAIT_SLICE_S)

    def __repr__(self) -> str:
        kind = "imap" if self._state.ordered else "imap_unordered"
        return f"<zpool {kind} iterator: {self._state.taken} chunk(s) taken>"


def start(
    submitter: Submitter,
    owner: Any,
    func: Callable[..., T],
    iterable: Iterable[Any],
    chunksize: int | None,
    buffersize: int | None,
    ordered: bool,
    flags: Mapping[str, Any],
    convert: Callable[[ItemFailure], BaseException],
    one_per_task: bool = False,
) -> IMapIterator[T]:
    """Check an ``imap``'s arguments here, start its feeder thread, and return its iterator.

    `convert` turns an item's failure report into the exception it raises;
    with `one_per_task` (``maxtasksperchild``), adaptive chunks hold one
    item, so that a task is an item as with the standard library.
    """
    submitter.check_running()
    if not callable(func):
        raise TypeError(f"func must be callable, not {type(func).__name__}")
    # (imap's arguments are read lazily by its feeder: their sends are not tracked)
    wire_flags, _ = submitter.wire_flags(flags)
    refresh: Callable[[], dict[str, Any] | None] | None = None
    if wire_flags and ("after" in wire_flags or "follow" in wire_flags):
        # Chunks sent later say how the AsyncResults they depend on have ended by then
        # (the controller may have forgotten them: record_window).
        merged = submitter.flags
        merged.update(flags)
        refresh = functools.partial(task_flags, merged)
    if chunksize is not None:
        if not is_int(chunksize):
            raise TypeError(f"chunksize must be an int or None, not {type(chunksize).__name__}")
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
    if buffersize is None:
        # Enough chunks for the engines never to wait on a round trip; small fixed
        # chunks get more of them (at least IMAP_MIN_ITEMS_AHEAD items in all).
        buffersize = max(IMAP_MIN_READ_AHEAD, 4 * submitter.processes)
        if chunksize is not None:
            buffersize = max(buffersize, IMAP_MIN_ITEMS_AHEAD // chunksize)
    elif not is_int(buffersize) or buffersize < 1:
        raise ValueError(f"buffersize must be a positive int or None, not {buffersize!r}")
    strict = bool(wire_flags and wire_flags.get("retries"))
    if chunksize is None and (one_per_task or strict):
        # A chunk is one task: maxtasksperchild then counts items, as the stdlib's imap
        # does, and a failed item is retried alone (with retries, a failure fails its chunk).
        chunksize = 1
    items = iter(iterable)  # not iterable: TypeError here, in the caller
    state = IMapState(ordered, buffersize, convert)
    submitter.feeders.add(state)
    feeder = _Feeder(submitter, state, func, chunksize, wire_flags, strict, refresh)
    threading.Thread(target=feeder.run, args=(items,), name="zpool-imap-feeder", daemon=True).start()
    return IMapIterator(state, owner=owner)


class _Feeder:
    """The ``zpool-imap-feeder`` thread of one ``imap``: reads its input and submits it chunk by chunk."""

    def __init__(
        self,
        submitter: Submitter,
        state: IMapState,
        func: Callable[..., Any],
        chunksize: int | None,
        flags: dict[str, Any] | None,
        strict: bool,
        refresh: Callable[[], dict[str, Any] | None] | None,
    ) -> None:
        self.submitter = submitter
        self.state = state
        self.func = func
        self.chunksize = chunksize  # None: sized from measured task times
        self.flags = flags
        self.strict = strict
        self.refresh = refresh  # each chunk's flags made anew (see start)

    def run(self, items: Iterable[Any]) -> None:
        """Read the input chunk by chunk as the consumer makes room, and submit."""
        state, chunksize = self.state, self.chunksize
        number = 0
        size = chunksize or 1
        try:
            while state.reserve():
                if chunksize is None:
                    size = state.next_size(size)
                chunk: list[Any] = []
                failure: BaseException | None = None
                try:
                    chunk.extend(itertools.islice(items, size))
                except BaseException as exc:  # the input failed: it is raised at this place, as the stdlib does
                    failure = exc
                    if chunksize is not None:
                        chunk = []  # the stdlib drops a fixed-size chunk whole; adaptive ones keep what was read
                if chunk:
                    if self.refresh is not None:
                        self.flags = self.refresh()
                    submitted = self._submit(chunk, number)
                    number += 1
                    if not submitted:
                        break
                    if failure is None:
                        continue
                    if not state.reserve():  # the failure takes a place of its own
                        break
                elif failure is None:
                    state.release()  # the input is exhausted
                    break
                state.chunk_done(number, False, failure)
                number += 1
                break
        finally:
            state.end(number)

    def _submit(self, chunk: list[Any], number: int) -> bool:
        """Submit one chunk as number `number`; False if the pool can take no more."""
        submitter, state, func = self.submitter, self.state, self.func
        task_id = submitter.new_id()
        holes: list[tuple[int, BaseException]] = []
        try:
            try:
                frames = submitter.dump_chunk(func, chunk, False, what="imap", each=True, strict=self.strict)
            except SerializationError:
                dumps(func)  # the function itself: the whole chunk fails with it
                # Some items: each raises at its own place, the others still run.
                holes, chunk = _unsendable_items(func, chunk)
                if not chunk:
                    state.chunk_done(number, True, [ItemFailure({}, exc) for _, exc in holes])
                    return True
                frames = submitter.dump_chunk(func, chunk, False, what="imap", each=True, strict=self.strict)
            del chunk
            submitter.results.add(IMapChunk(state, number, task_id, holes))
        except BaseException as exc:  # unserializable: raise it at this chunk's place, and go on
            state.chunk_done(number, False, exc)
            return not isinstance(exc, PoolClosedError)
        try:
            submitter.conn.submit([(task_id, frames)], self.flags)
        except BaseException as exc:
            submitter.fail([task_id], exc)
            release_unsent([(task_id, frames)])
            return False
        return True


def _unsendable_items(func: Callable[..., Any], chunk: list[Any]) -> tuple[list[tuple[int, BaseException]], list[Any]]:
    """Split `chunk` into the items that cannot be serialized (with their errors, by place) and the others."""
    holes: list[tuple[int, BaseException]] = []
    good: list[Any] = []
    for i, item in enumerate(chunk):
        try:
            dumps(item)
        except SerializationError as exc:
            cause = exc.__cause__ or exc
            message = f"cannot serialize an item of the iterable given to imap({callable_name(func)}): {exc}"
            holes.append((i, serialization_error(message, cause)))
        else:
            good.append(item)
    return holes, good
