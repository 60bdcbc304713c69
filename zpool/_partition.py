"""Splitting work into chunks, and running a chunk on an engine."""

from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["default_chunksize", "run_chunk", "split"]


def default_chunksize(n_items: int, n_engines: int) -> int:
    """The standard library's rule: about four chunks per worker."""
    chunksize, extra = divmod(n_items, max(1, n_engines) * 4)
    return chunksize + 1 if extra else chunksize


def split(items: Sequence[Any], chunksize: int) -> list[Sequence[Any]]:
    """Cut `items` into consecutive chunks of `chunksize` (the last may be shorter)."""
    return [items[i : i + chunksize] for i in range(0, len(items), chunksize)]


def run_chunk(func: Callable[..., Any], items: Sequence[Any], star: bool = False) -> list[Any]:
    """Apply `func` to each item (unpacking each item's arguments when `star`)."""
    if star:
        return [func(*args) for args in items]
    return list(map(func, items))
