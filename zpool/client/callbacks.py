"""The thread that runs users' callbacks in the caller's process.

``callback`` and ``error_callback`` of ``apply_async``/``map_async``, and
``add_done_callback`` functions, run in one thread of the caller's process,
``zpool-callbacks``, started on first use: never in the client's I/O thread
(a callback may itself submit work and wait for it), and one at a time, in
the order results arrived, as the standard library's result-handler thread
runs them. An :class:`~zpool.asyncresult.AsyncResult` with a ``callback``
becomes ready only after it ran (:meth:`AsyncResult._set`).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

__all__ = ["CallbackThread", "run_callback"]


class CallbackThread:
    """Runs ``callback``/``error_callback`` (and done-callbacks) in one thread of the caller's process.

    :meth:`stop` lets the thread run what is queued, including what those
    callbacks queue in turn, then end; anything queued after that runs in
    the calling thread.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._done = False  # the thread has drained its queue and ended

    def is_current(self) -> bool:
        """Whether the calling thread is the callback thread."""
        return threading.current_thread() is self._thread

    def call(self, func: Callable[[Any], Any], value: Any) -> None:
        """Run ``func(value)`` in the callback thread (in this thread once the pool has stopped)."""
        with self._lock:
            if not self._done:
                if self._thread is None and not self._stopping:
                    self._thread = threading.Thread(target=self._run, name="zpool-callbacks", daemon=True)
                    self._thread.start()
                if self._thread is not None:
                    self._queue.put((func, value))
                    return
        run_callback(func, value)

    def _run(self) -> None:
        stopping = False
        while True:
            if not stopping:
                item = self._queue.get()
            else:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    with self._lock:  # call() queues under this lock: nothing can slip in unseen
                        if self._queue.empty():
                            self._done = True
                            return
                    continue
            if item is None:
                stopping = True
                continue
            run_callback(*item)

    def stop(self, timeout: float | None) -> None:
        """Let the thread finish what is queued and end; wait up to `timeout` s (None: as long as it takes)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            if thread is None:
                self._done = True
                return
            self._queue.put(None)
        if threading.current_thread() is not thread:
            thread.join(timeout)


def run_callback(func: Callable[[Any], Any], value: Any) -> None:
    try:
        func(value)
    except BaseException:  # as multiprocessing does, report and go on serving callbacks
        import traceback

        traceback.print_exc()
