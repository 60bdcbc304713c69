"""Timelines: a per-engine Gantt chart of tasks, drawn from their metadata (``AsyncResult.timeline``).

::

    results ──metadata (engine_id, started, completed, status) per task──▶ one bar per task, one row per engine

So that a user sees balance and idle time: which engine ran what, when,
and where engines waited. Drawn with matplotlib, an optional extra
(``pip install "zpool[timeline]"``), without pyplot when saving to a file
(no display needed, nothing global touched); on an Axes of the caller's
when given one.
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["Span", "draw", "spans"]

# Bar colours, one per result drawn (matplotlib's "tab10"), and failed tasks' edge colour.
_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_FAILED = "#d62728"


class Span:
    """One task's run: which engine, from when to when (seconds since the epoch), which result, whether it failed."""

    __slots__ = ("engine_id", "failed", "result", "started", "stopped")

    def __init__(self, engine_id: int, started: float, stopped: float, result: int, failed: bool) -> None:
        self.engine_id = engine_id
        self.started = started
        self.stopped = stopped
        self.result = result
        self.failed = failed


def spans(results: Iterable[Any]) -> list[Span]:
    """The runs of the finished tasks of `results` (AsyncResults) that an engine ran, in no particular order."""
    out: list[Span] = []
    for number, result in enumerate(results):
        metadata = result.metadata
        for md in metadata if isinstance(metadata, list) else [metadata]:
            if md is None or md.get("engine_id") is None or md.get("started") is None or md.get("completed") is None:
                continue  # pending, or failed before any engine ran it
            out.append(
                Span(
                    int(md["engine_id"]),
                    md["started"].timestamp(),
                    md["completed"].timestamp(),
                    number,
                    md.get("status") != "ok",
                )
            )
    return out


def draw(results: Iterable[Any], path: str | None = None, ax: Any = None, title: str | None = None) -> Any:
    """Draw the tasks of `results` as a per-engine Gantt chart; save it to `path` (PNG, SVG, PDF...) if given.

    Parameters
    ----------
    results : iterable of AsyncResult
        Each result's tasks get a colour of their own (up to nine, then
        again); failed tasks are edged in red.
    path : str, optional
        Save the chart there (the format from its extension).
    ax : matplotlib.axes.Axes, optional
        Draw on it (a new figure of its own otherwise).
    title : str, optional
        Default: how many tasks on how many engines, over how long, and
        how busy the engines were.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.

    Raises
    ------
    ImportError
        If matplotlib is not installed, saying how to install it.
    ValueError
        If no task of `results` has run on an engine yet.
    """
    results = list(results)
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "timelines are drawn with matplotlib, which is not installed: pip install 'zpool[timeline]'"
            " (or pip install matplotlib)"
        ) from None
    runs = spans(results)
    if not runs:
        raise ValueError("no task of these results has run on an engine yet: nothing to draw (wait for them first)")
    start = min(r.started for r in runs)
    end = max(r.stopped for r in runs)
    engines = sorted({r.engine_id for r in runs})
    row = {engine_id: i for i, engine_id in enumerate(engines)}
    if ax is None:
        figure = Figure(figsize=(10, 1.2 + 0.5 * len(engines)), layout="constrained")
        ax = figure.add_subplot()
    for r in runs:
        ax.broken_barh(
            [(r.started - start, max(r.stopped - r.started, 1e-6))],
            (row[r.engine_id] - 0.4, 0.8),
            facecolors=_COLORS[r.result % len(_COLORS)],
            edgecolors=_FAILED if r.failed else "white",
            linewidth=1.5 if r.failed else 0.5,
        )
    ax.set_yticks(range(len(engines)), [f"engine {e}" for e in engines])
    ax.set_ylim(-0.6, len(engines) - 0.4)
    ax.invert_yaxis()
    ax.set_xlim(0, max(end - start, 1e-6))
    ax.set_xlabel("seconds since the first task started")
    busy = sum(r.stopped - r.started for r in runs) / (len(engines) * max(end - start, 1e-9))
    ax.set_title(
        title or f"{len(runs)} tasks on {len(engines)} engines in {end - start:.3g} s; engines busy {busy:.0%}"
    )
    if path is not None:
        ax.figure.savefig(path, dpi=100)
    return ax
