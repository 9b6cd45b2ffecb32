"""One background refresher for every live widget of the kernel.

The live views (:mod:`nexus_lab.jupyter.widgets`) refresh from ONE daemon
thread, ``nexus-refresh``, owned by the module-level :class:`RefreshScheduler`.
Each view subscribes with its own interval (never below
:data:`MIN_INTERVAL`); the thread calls each subscriber's ``_tick()`` when it
is due. The thread starts with the first subscription and *ends* when the last
one goes, so a kernel with no live widget has no refresh thread at all - four
dashboards cost one thread, not twelve, and closing them (or ``%nexus stop``,
or ``%unload_ext nexus_lab``) leaves none.

A subscription

* holds its target only through a weak reference: an unreferenced widget can
  be collected, and its subscription then ends by itself;
* never raises into the thread: an exception in ``_tick`` is logged (once per
  streak of identical failures) and handed to the target's
  ``_tick_failed(exc)``; the other subscribers keep ticking;
* is ended by :meth:`Refresher.stop`, idempotent, which also waits until a
  tick of that target in progress has finished - after ``stop()`` returns,
  ``_tick`` is not running and will not run again.

Why one thread: threads per widget added up (each dashboard started three)
and outlived what started them. A refresh is bounded (the metrics chart
throttles itself to ~10% of the time), so one thread keeps every view live.

Example::

    refresher = Refresher(widget, 0.5)
    refresher.start()        # subscribes; the shared thread starts if needed
    ...
    refresher.stop()         # unsubscribes; the thread ends with the last one
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from typing import Any

__all__ = ["MIN_INTERVAL", "Refresher", "RefreshScheduler", "clamp_interval", "scheduler",
           "THREAD_NAME"]

logger = logging.getLogger("nexus_lab.jupyter")

#: The shortest refresh interval in seconds (10 Hz at most).
MIN_INTERVAL = 0.1
#: The name of the one refresh thread.
THREAD_NAME = "nexus-refresh"

_counter = itertools.count(1)


def clamp_interval(value: Any) -> float:
    """``value`` as seconds, at least :data:`MIN_INTERVAL` (ValueError if not a number).

    >>> clamp_interval(0), clamp_interval("2")
    (0.1, 2.0)
    """
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
    """A subscription: call ``target._tick()`` every ``interval`` seconds from the shared thread.

    ``target`` is referenced weakly; it may define ``_tick_failed(exc)`` to
    record errors. ``interval`` may be changed while subscribed.
    ``ticks`` and ``failures`` count this subscription's calls.
    """

    def __init__(self, target: Any, interval: float, *, name: str | None = None,
                 scheduler: RefreshScheduler | None = None) -> None:
        self._ref = weakref.ref(target)
        self._interval = clamp_interval(interval)
        self.name = name or f"{type(target).__name__}-{next(_counter)}"
        self.ticks = 0
        self.failures = 0
        self._scheduler = scheduler if scheduler is not None else _scheduler
        self._stopped = False
        self._subscribed = False
        self.due = 0.0
        self._last_error: str | None = None
        # Unsubscribe when the target is collected, even if nobody called stop().
        self._finalizer = weakref.finalize(target, self._scheduler._drop_collected, self)

    @property
    def interval(self) -> float:
        return self._interval

    @interval.setter
    def interval(self, value: float) -> None:
        self._interval = clamp_interval(value)
        self._scheduler._wake()

    @property
    def thread(self) -> threading.Thread | None:
        """The shared refresh thread while subscribed (None otherwise)."""
        return self._scheduler.thread if self.is_alive else None

    @property
    def is_alive(self) -> bool:
        """Subscribed, and the shared thread runs."""
        thread = self._scheduler.thread
        return self._subscribed and thread is not None and thread.is_alive()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def start(self) -> None:
        """Subscribe (no-op when subscribed; a stopped refresher cannot restart)."""
        if self._stopped or self._subscribed or self._ref() is None:
            return
        self._scheduler._add(self)

    def stop(self) -> None:
        """Unsubscribe and wait for a tick in progress to finish (idempotent)."""
        self._stopped = True
        self._finalizer.detach()
        self._scheduler._remove(self)

    def _call(self) -> None:
        """One tick, on the shared thread; never raises."""
        target = self._ref()
        if target is None:
            return
        try:
            target._tick()
            self.ticks += 1
            self._last_error = None
        except Exception as exc:  # a failing refresh must not end the thread
            self.failures += 1
            text = f"{type(exc).__name__}: {exc}"
            # Once per streak of identical failures, not at every tick.
            if text != self._last_error:
                logger.warning("%s: refresh failed: %s", self.name, text, exc_info=True)
            else:
                logger.debug("%s: refresh failed again: %s", self.name, text)
            self._last_error = text
            handler = getattr(target, "_tick_failed", None)
            if handler is not None:
                try:
                    handler(exc)
                except Exception:  # pragma: no cover - last line of defence
                    logger.exception("%s: could not record the refresh error", self.name)
        finally:
            del target  # keep no strong reference between ticks

    def __repr__(self) -> str:
        state = "running" if self.is_alive else "stopped"
        return f"Refresher(interval={self._interval:g}, {state})"


class RefreshScheduler:
    """The shared thread behind every :class:`Refresher` (use :func:`scheduler`)."""

    def __init__(self, thread_name: str = THREAD_NAME) -> None:
        self._cond = threading.Condition()
        self._subs: list[Refresher] = []
        self._current: Refresher | None = None  # the subscription ticking now
        self.thread: threading.Thread | None = None
        self._thread_name = thread_name

    # -- subscriptions -----------------------------------------------------------------
    @property
    def subscriptions(self) -> int:
        return len(self._subs)

    def _add(self, sub: Refresher) -> None:
        with self._cond:
            if sub in self._subs:
                return
            sub._subscribed = True
            sub.due = time.monotonic() + sub.interval
            self._subs.append(sub)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
                self.thread.start()
            self._cond.notify_all()

    def _remove(self, sub: Refresher) -> None:
        me = threading.current_thread()
        with self._cond:
            if sub in self._subs:
                self._subs.remove(sub)
            sub._subscribed = False
            self._cond.notify_all()
            # A tick of this target in progress finishes before stop() returns.
            while self._current is sub and self.thread is not me:
                self._cond.wait()
            thread = self.thread
            if self._subs or thread is None or thread is me:
                return
            # The last subscription is gone: the thread ends (unless someone subscribes
            # meanwhile); wait for it, so that "no refresh thread" is observable on return.
            while self.thread is thread and not self._subs:
                self._cond.wait()
            ended = self.thread is not thread
        if ended:
            thread.join()

    def _drop_collected(self, sub: Refresher) -> None:
        # A weakref finalizer: may run on any thread, including this scheduler's.
        with self._cond:
            if sub in self._subs:
                self._subs.remove(sub)
            sub._subscribed = False
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop_all(self) -> None:
        """End every subscription and the thread (what ``%unload_ext`` does)."""
        with self._cond:
            subs = list(self._subs)
        for sub in subs:
            sub.stop()

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while True:
                    if not self._subs:
                        if self.thread is threading.current_thread():
                            self.thread = None
                        cond.notify_all()
                        return
                    now = time.monotonic()
                    sub = min(self._subs, key=lambda s: s.due)
                    if sub.due <= now:
                        break
                    cond.wait(sub.due - now)
                self._current = sub
            try:
                sub._call()
            finally:
                with cond:
                    self._current = None
                    # from the end of this tick: a slow tick never queues up a burst
                    sub.due = time.monotonic() + sub.interval
                    cond.notify_all()
            del sub

    def __repr__(self) -> str:
        alive = self.thread is not None and self.thread.is_alive()
        return f"RefreshScheduler({len(self._subs)} subscriptions, {'running' if alive else 'idle'})"


_scheduler = RefreshScheduler()


def scheduler() -> RefreshScheduler:
    """The kernel's one refresh scheduler."""
    return _scheduler
