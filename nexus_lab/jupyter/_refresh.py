"""A bounded-rate background refresher shared by the live widgets.

Each live widget owns one :class:`Refresher`: a daemon thread that calls the
widget's ``_tick()`` every ``interval`` seconds (never faster than
:data:`MIN_INTERVAL`). The thread

* holds the widget only through a weak reference, so an unreferenced widget
  can be collected, and it then ends by itself;
* never raises: an exception in ``_tick`` is logged and handed to the widget's
  ``_tick_failed(exc)`` (which records it in the ``error`` trait), and the
  thread keeps ticking;
* stops on :meth:`Refresher.stop`, which is idempotent and joins the thread
  (unless called from the thread itself).

Why a thread per widget rather than one shared scheduler: a widget's refresh
can be slow (a chart takes ~30 ms to render, a big session store longer) and
one slow view must not delay the others; and ``close()`` can simply join its
own thread, which makes "stopped" easy to observe and to test.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from typing import Any

__all__ = ["MIN_INTERVAL", "Refresher", "clamp_interval"]

logger = logging.getLogger("nexus_lab.jupyter")

#: The shortest refresh interval in seconds (10 Hz at most).
MIN_INTERVAL = 0.1

_counter = itertools.count(1)


def clamp_interval(value: Any) -> float:
    """``value`` as seconds, at least :data:`MIN_INTERVAL` (ValueError if not a number)."""
    if isinstance(value, bool):
        raise ValueError(f"refresh_interval must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"refresh_interval must be a number of seconds, got {value!r}") from None
    if seconds != seconds:  # NaN
        raise ValueError("refresh_interval must be a number of seconds, got nan")
    return max(MIN_INTERVAL, seconds)


class Refresher:
    """Call ``target._tick()`` every ``interval`` seconds on a daemon thread.

    ``target`` is referenced weakly; it may define ``_tick_failed(exc)`` to
    record errors. ``interval`` may be changed while running (read each tick).

    Example::

        refresher = Refresher(widget, 0.5)
        refresher.start()
        ...
        refresher.stop()      # idempotent; joins the thread
    """

    def __init__(self, target: Any, interval: float, *, name: str | None = None) -> None:
        self._ref = weakref.ref(target)
        self.interval = clamp_interval(interval)
        self._stop = threading.Event()
        self.name = name or f"nexus-refresh-{type(target).__name__}-{next(_counter)}"
        self.thread: threading.Thread | None = None
        self.ticks = 0
        self.failures = 0
        # Stop when the target is collected, even if nobody called stop().
        self._finalizer = weakref.finalize(target, self._stop.set)

    @property
    def is_alive(self) -> bool:
        """Whether the thread is running."""
        return self.thread is not None and self.thread.is_alive()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        """Start the thread (no-op when running; a stopped refresher cannot restart)."""
        if self.is_alive or self._stop.is_set():
            return
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop ticking and wait for the thread to end (idempotent)."""
        self._stop.set()
        self._finalizer.detach()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        stop = self._stop
        last_error: str | None = None
        while not stop.wait(self.interval):
            target = self._ref()
            if target is None:
                break
            try:
                target._tick()
                self.ticks += 1
                last_error = None
            except Exception as exc:  # a failing refresh must not end the thread
                self.failures += 1
                text = f"{type(exc).__name__}: {exc}"
                # Once per streak of identical failures, not at every tick.
                if text != last_error:
                    logger.warning("%s: refresh failed: %s", self.name, text, exc_info=True)
                else:
                    logger.debug("%s: refresh failed again: %s", self.name, text)
                last_error = text
                handler = getattr(target, "_tick_failed", None)
                if handler is not None:
                    try:
                        handler(exc)
                    except Exception:  # pragma: no cover - last line of defence
                        logger.exception("%s: could not record the refresh error", self.name)
            finally:
                del target  # keep no strong reference while sleeping

    def __repr__(self) -> str:
        state = "running" if self.is_alive else "stopped"
        return f"Refresher(interval={self.interval:g}, {state})"
