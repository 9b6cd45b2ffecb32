"""The threads that run sync agents for the servers' event loop.

``loop.run_in_executor`` costs, per call, a ``concurrent.futures.Future``, a
wrapped asyncio future, callbacks, and one ``call_soon_threadsafe`` (a write on
the loop's self-pipe: a syscall) for every completion. Under load that is
most of a sync agent's overhead here. :class:`WorkerPool` keeps the same
guarantees (a slow agent holds a worker thread, never the event loop) and
completes finished calls in batches: a worker appends its result to a queue
and wakes the loop only when no wake-up is already pending, so under load one
wake-up delivers many results.

Example::

    pool = WorkerPool(max_workers=8)
    result = await pool.run(lambda: agent.process(query="hi"))
    pool.close()
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["WorkerPool"]

T = TypeVar("T")


class _Completions:
    """Results finished by workers for one event loop, delivered in batches."""

    __slots__ = ("loop", "items", "scheduled", "lock")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: collections.deque = collections.deque()
        self.scheduled = False
        self.lock = threading.Lock()

    def push(self, future: asyncio.Future, ok: bool, value: Any) -> None:  # worker thread
        self.items.append((future, ok, value))
        with self.lock:
            if self.scheduled:
                return  # the pending drain will deliver this one too
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self.drain)
        except RuntimeError:  # the loop is closed: nobody waits for these results any more
            with self.lock:
                self.scheduled = False
            self.items.clear()

    def drain(self) -> None:  # event-loop thread
        with self.lock:
            self.scheduled = False
        items = self.items
        while items:
            future, ok, value = items.popleft()
            if future.done():  # cancelled while it ran
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


class WorkerPool:
    """At most ``max_workers`` threads, started on demand, running sync calls for event loops."""

    def __init__(self, max_workers: int = 40, *, name: str = "nexus-agent") -> None:
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive integer, got {max_workers!r}")
        self.max_workers = max_workers
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._completions: dict[asyncio.AbstractEventLoop, _Completions] = {}
        self._closed = False
        # threads held by calls whose caller gave up (a timeout): the pool may start that many
        # more, so a hung agent cannot starve every other call of a worker
        self._abandoned = 0
        self._started = 0
        self._running: dict[Any, int] = {}
        self._waiting: dict[Any, collections.deque] = {}

    @property
    def threads(self) -> int:
        """Worker threads alive now."""
        return len(self._threads)

    def abandon(self) -> None:
        """A running call's caller gave up on it (timeout): allow one more thread until
        :meth:`reclaim` says that call ended."""
        with self._lock:
            self._abandoned += 1

    def reclaim(self) -> None:
        """An abandoned call ended; its thread is one of the pool's again."""
        with self._lock:
            self._abandoned = max(0, self._abandoned - 1)

    async def run(self, fn: Callable[[], T], *, key: Any = None, limit: int = 0) -> T:
        """Run ``fn()`` in a worker thread and return (or raise) what it did.

        With ``key`` and ``limit``, at most ``limit`` calls of that key hold a
        thread at once; the others wait their turn in the pool without holding
        one (so one hung deployment cannot take every worker), and a caller that
        gives up while waiting (a timeout cancels its future) is skipped.
        """
        loop = asyncio.get_running_loop()
        completions = self._completions.get(loop)
        if completions is None:
            with self._lock:
                completions = self._completions.setdefault(loop, _Completions(loop))
        future = loop.create_future()
        item = (completions, future, fn, key)
        if key is not None:
            with self._lock:
                running = self._running.get(key, 0)
                if running >= limit:
                    self._waiting.setdefault(key, collections.deque()).append(item)
                    item = None
                else:
                    self._running[key] = running + 1
        if item is not None:
            self._submit(item)
        return await future

    def running(self, key: Any) -> int:
        """Calls of ``key`` holding a worker thread now (an abandoned one until it returns)."""
        return self._running.get(key, 0)

    def _next_of(self, key: Any) -> tuple | None:
        """The next waiting call of ``key`` to run in the slot just freed, or None (slot released)."""
        with self._lock:
            waiting = self._waiting.get(key)
            while waiting:
                item = waiting.popleft()
                if not item[1].done():  # not cancelled while it waited
                    return item
            self._waiting.pop(key, None)
            running = self._running.get(key, 0) - 1
            if running > 0:
                self._running[key] = running
            else:
                self._running.pop(key, None)
            return None

    def _submit(self, item: tuple) -> None:
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        if not self._idle.acquire(blocking=False):  # no idle worker: start one if allowed
            with self._lock:
                if len(self._threads) < self.max_workers + self._abandoned:
                    self._started += 1
                    thread = threading.Thread(
                        target=self._work, name=f"{self.name}-{self._started}", daemon=True
                    )
                    self._threads.append(thread)
                    thread.start()
        self._queue.put(item)

    def _work(self) -> None:
        get = self._queue.get
        item = get()
        while item is not None:
            completions, future, fn, key = item
            if not future.done():  # a caller that gave up before its turn: skip the call
                try:
                    value, ok = fn(), True
                except BaseException as exc:  # delivered to the awaiting coroutine
                    value, ok = exc, False
                completions.push(future, ok, value)
                del value
            del item, future, fn
            if key is not None:
                # the next call waiting for this key's slot runs here at once: no queue,
                # no wake-up of another thread (under load a key's calls run back to back)
                item = self._next_of(key)
                if item is not None:
                    continue
            with self._lock:  # a surplus thread (started for an abandoned call) leaves
                if len(self._threads) > self.max_workers + self._abandoned and not self._closed:
                    self._threads.remove(threading.current_thread())
                    return
            self._idle.release()
            item = get()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers once the calls already queued are done (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        self._completions.clear()
