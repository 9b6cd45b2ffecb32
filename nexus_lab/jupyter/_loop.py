"""A private asyncio event loop on one daemon thread, whose calls an interrupt cancels.

The kernel's own thread already runs an event loop (ipykernel's), so
coroutines of :class:`~nexus_lab.client.AsyncNexusClient` run on a loop of
their own. :meth:`LoopThread.run` blocks the calling thread until the
coroutine is done; a ``KeyboardInterrupt`` there (the notebook's stop button)
*cancels* the coroutine on the loop and waits until it has unwound (its
``finally`` blocks ran, its connections are closed) before re-raising - so an
interrupted call leaves nothing running behind.

:meth:`LoopThread.close` cancels what is left, shuts the loop down and joins
the thread: no thread outlives ``close()``.

Example::

    loop = LoopThread("nexus-kernel-loop")
    client = loop.run(make_client())          # built on the loop that will use it
    result = loop.run(client.run("assistant", {"query": "hi"}))
    loop.run(client.aclose())
    loop.close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")

#: Seconds an interrupted coroutine gets to unwind before ``run`` re-raises anyway.
CANCEL_GRACE = 10.0


def _new_loop(fast: bool) -> asyncio.AbstractEventLoop:
    if fast:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class LoopThread:
    """One event loop on one daemon thread (named ``name``).

    Args:
        name: the thread's name (``threading.enumerate()`` shows it).
        fast: use uvloop when installed (the load generator wants it; the
            default asyncio loop is the safest for anything else).
    """

    def __init__(self, name: str = "nexus-kernel-loop", *, fast: bool = False) -> None:
        self.loop = _new_loop(fast)
        self._closed = False
        started = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(started,), name=name, daemon=True)
        self.thread.start()
        started.wait()

    def _main(self, started: threading.Event) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    @property
    def is_alive(self) -> bool:
        return self.thread.is_alive()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop and return its future (does not wait)."""
        if self._closed:
            coro.close()
            raise RuntimeError("this event loop thread is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (or exception).

        A ``KeyboardInterrupt`` while waiting (or the ``timeout``) cancels the
        coroutine and waits (bounded) until it has finished unwinding, then
        propagates (a timeout as :class:`TimeoutError`).
        """
        if self._closed:
            coro.close()
            raise RuntimeError("this event loop thread is closed")
        finished = threading.Event()
        outcome: list[Any] = []  # [task] once started
        holder: list[asyncio.Task[T]] = []

        def deliver(task: asyncio.Task[T]) -> None:
            outcome.append(task)
            finished.set()

        def start() -> None:
            task = self.loop.create_task(coro)
            holder.append(task)
            task.add_done_callback(deliver)

        # Callbacks run in order: start() has run before any cancel scheduled below.
        self.loop.call_soon_threadsafe(start)
        try:
            if not finished.wait(timeout):
                self._cancel(holder, finished)
                raise TimeoutError(f"no result within {timeout:g} s")
        except KeyboardInterrupt:
            self._cancel(holder, finished)
            raise
        task = outcome[0]
        if task.cancelled():
            raise concurrent.futures.CancelledError()
        exc = task.exception()
        if exc is not None:
            raise exc
        return task.result()

    def _cancel(self, holder: list[asyncio.Task[Any]], finished: threading.Event) -> None:
        try:
            self.loop.call_soon_threadsafe(lambda: holder and holder[0].cancel())
        except RuntimeError:  # the loop closed meanwhile: nothing runs any more
            return
        finished.wait(CANCEL_GRACE)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what still runs, close the loop and join the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if not self.thread.is_alive():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # the loop already closed
            return
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    def __repr__(self) -> str:
        return f"LoopThread({self.thread.name!r}, {'closed' if self._closed else 'running'})"
