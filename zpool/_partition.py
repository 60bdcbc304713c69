"""Splitting work into chunks, running a chunk on an engine, and joining the pieces back.

Chunking for ``map``/``imap`` (:func:`default_chunksize`, :func:`split`), the
functions an engine runs on a chunk (:func:`run_chunk`; :func:`run_each`,
whose items fail one by one as :class:`ItemFailure`), and the even cuts of
``scatter``/``gather`` (:func:`split_evenly`, :func:`join_parts`). Who the
engine is, and how its errors are reported, is :mod:`zpool._engine_context`'s.
"""

from __future__ import annotations

import math
import sys
import traceback
from typing import Any, Callable, Sequence

from zpool._engine_context import describe_exception
from zpool.error import ImpossibleDependency, UnmetDependency

__all__ = [
    "ItemFailure",
    "default_chunksize",
    "even_bounds",
    "join_parts",
    "measured_chunksize",
    "run_chunk",
    "run_each",
    "split",
    "split_evenly",
]


def default_chunksize(n_items: int, n_engines: int) -> int:
    """The standard library's rule: about four chunks per worker."""
    chunksize, extra = divmod(n_items, max(1, n_engines) * 4)
    return chunksize + 1 if extra else chunksize


# A map whose items' cost is known (measured on earlier maps of the same function) gets chunks of about
# this much engine time each, between one and four per engine: a loop of small maps on cheap items sends
# one chunk per engine instead of four (each chunk costs its caller and engine about 0.1 ms).
CHUNK_TARGET_S = 0.002
# ... and a map of at most this much work in all goes as one chunk: a second engine would save less time
# than the second message costs (about 0.15 ms here).
ONE_CHUNK_MAX_S = 0.0002


def measured_chunksize(n_items: int, n_engines: int, item_s: float) -> int:
    """Chunk size for `n_items` items of `item_s` seconds each: chunks of :data:`CHUNK_TARGET_S`, 1-4 per engine.

    A map of at most :data:`ONE_CHUNK_MAX_S` of work is one chunk. A map of
    more than four chunks' worth per engine gets the standard library's
    four chunks per engine (:func:`default_chunksize`), which keeps uneven
    work balanced.
    """
    engines = max(1, n_engines)
    work = n_items * max(item_s, 0.0)
    if work <= ONE_CHUNK_MAX_S:
        return max(1, n_items)
    wanted = math.ceil(work / CHUNK_TARGET_S)
    chunks = max(1, min(max(engines, wanted), 4 * engines, n_items))
    return max(1, math.ceil(n_items / chunks))


def split(items: Sequence[Any], chunksize: int) -> list[Sequence[Any]]:
    """Cut `items` into consecutive chunks of `chunksize` (the last may be shorter)."""
    return [items[i : i + chunksize] for i in range(0, len(items), chunksize)]


def run_chunk(func: Callable[..., Any], items: Sequence[Any], star: bool = False) -> list[Any]:
    """Apply `func` to each item (unpacking each item's arguments when `star`)."""
    if star:
        return [func(*args) for args in items]
    return list(map(func, items))


def run_each(func: Callable[..., Any], items: Sequence[Any], strict: bool = False) -> list[Any]:
    """Apply `func` to each item; an item that raises gives an :class:`ItemFailure` in its place.

    What ``imap`` runs: every item has its own outcome, so a failure costs
    the caller no other item's result, however the input was chunked. An
    :class:`~zpool.error.UnmetDependency` (the function cannot run on this
    engine) is raised for the whole chunk, which the scheduler sends to
    another engine. With `strict` (the call has ``retries``), any exception
    fails the whole chunk, so that the scheduler runs it again.
    """
    if strict:
        return [func(item) for item in items]
    out: list[Any] = []
    for item in items:
        try:
            out.append(func(item))
        except ImpossibleDependency as exc:  # an UnmetDependency, but final: this item's outcome
            out.append(ItemFailure.capture(exc, "in imap: "))
        except UnmetDependency:
            raise  # this engine cannot run the function: the whole chunk goes elsewhere
        except Exception as exc:
            out.append(ItemFailure.capture(exc, "in imap: "))
    return out


class ItemFailure:
    """The exception one item of a chunk raised, carried back in the chunk's list of results.

    `exc` is the exception itself, or None when it could not be sent back
    (the caller then rebuilds it by name, as for any task); `error` is the
    report of :func:`zpool._engine_context.describe_exception`.
    """

    __slots__ = ("error", "exc")

    def __init__(self, error: dict[str, Any], exc: BaseException | None) -> None:
        self.error = error
        self.exc = exc

    @classmethod
    def capture(cls, exc: BaseException, context: str = "") -> ItemFailure:
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # skip run_each's frame
        error = describe_exception(exc, tb, context)
        # The text has the traceback: free its frames (and their locals) now, not when the chunk ends.
        if tb is not None:
            traceback.clear_frames(tb)
        exc.__traceback__ = None
        return cls(error, exc)

    def __reduce__(self) -> Any:
        return ItemFailure, (self.error, self.exc)

    def __repr__(self) -> str:
        return f"<ItemFailure {self.error.get('ename')}: {self.error.get('evalue')}>"


def even_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of `parts` consecutive pieces of `n` items, lengths differing by at most one (longer first)."""
    size, extra = divmod(n, parts)
    out: list[tuple[int, int]] = []
    start = 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def split_evenly(seq: Any, parts: int) -> list[Any]:
    """Cut `seq` into `parts` pieces at :func:`even_bounds`.

    A numpy array is cut along its first axis into views (no copy); a list,
    tuple or range into lists.
    """
    if _is_array(seq):
        return [seq[start:stop] for start, stop in even_bounds(len(seq), parts)]
    return [list(seq[start:stop]) for start, stop in even_bounds(len(seq), parts)]


def join_parts(parts: Sequence[Any]) -> Any:
    """Join pieces back into one: arrays into one array (along the first axis), anything else into a list.

    Arrays of one dimension or more are concatenated; numpy scalars mixed
    with 1-D arrays count as one-element arrays (what ``scatter(...,
    flatten=True)`` leaves of a 1-D array). In a list, a list or tuple piece
    contributes its elements and any other value counts as one element.
    """
    numpy = sys.modules.get("numpy")
    if parts and numpy is not None and all(isinstance(p, (numpy.ndarray, numpy.generic)) for p in parts):
        # Arrays, or numpy scalars (the parts of a 1-D array scattered with flatten=True);
        # masked arrays keep their masks.
        masked = any(isinstance(p, numpy.ma.MaskedArray) for p in parts)
        concatenate = numpy.ma.concatenate if masked else numpy.concatenate
        if all(isinstance(p, numpy.ndarray) and p.ndim >= 1 for p in parts):
            return concatenate(parts)
        if all(numpy.ndim(p) <= 1 for p in parts):
            return concatenate([numpy.atleast_1d(p) for p in parts])
    out: list[Any] = []
    for part in parts:
        if isinstance(part, (list, tuple)) or (_is_array(part) and part.ndim >= 1):
            out.extend(part)
        else:
            out.append(part)
    return out


def _is_array(obj: Any) -> bool:
    # numpy is loaded only if the caller (or an unpickled result) uses it.
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, numpy.ndarray)
