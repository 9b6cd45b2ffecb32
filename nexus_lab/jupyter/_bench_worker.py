"""The load generator of ``%nexus bench`` (``api``/``cli``, bare HTTP), run in a process of its own.

:func:`nexus_lab.jupyter.bench.run_bench` starts this file as a child process
(``python -c <bootstrap> .../_bench_worker.py``), so that the load does not
share the kernel's GIL with the platform it measures. It imports only the
standard library (and uvloop when installed): no ``nexus_lab`` module, so it
starts in under 0.1 s on the 2-core machines this was built on, and it is
started *before* the kernel makes its first (uncounted, validating) call,
which hides most of that.

The load: ``concurrency`` keep-alive connections, each writing its next
request from the very callback that read the previous answer (no task, future
or event-loop turn per request: ~20 us of CPU a request here, syscalls
included; wrk takes ~13). A connection that breaks or whose answer is overdue
(the run's watchdog closes it) fails that request and is replaced.

Protocol - the kernel writes to the child's **stdin**:

1. once the first call succeeded, one line of JSON, the job: ``host``,
   ``port``, ``request`` (the whole HTTP request, latin-1), ``concurrency``,
   ``requests`` (or null), ``duration`` (or null), ``timeout``, ``flush``
   (seconds between sample batches); the load starts at once;
2. end of file, at any time: stop now (the kernel was interrupted, failed or
   died), close every connection and exit.

The child writes **frames** to its stdout: a 1-byte kind, a 4-byte length
(native order), the payload:

* ``G`` - the load started (the measured window opens);
* ``E`` - a new error type (utf-8); error types are numbered 1, 2, ... in the
  order of these frames, 0 meaning success;
* ``S`` - a batch of samples: ``n`` (uint32), then ``n`` starts (float64, s
  since ``G``), ``n`` latencies (float64, ms: request written to answer read),
  ``n`` HTTP statuses (uint16, 0 = no answer), ``n`` error types (uint16);
  sent every ``flush`` seconds while there is something to send;
* ``H`` - a heartbeat (nothing to send this time): the kernel knows the child
  is alive;
* ``D`` - done: the window's length in seconds (float64); the child exits 0;
* ``X`` - a fatal error (utf-8 text); the child exits 1.

SIGINT is ignored here: the kernel's interrupt reaches the child as the end of
its stdin (a Jupyter interrupt may signal the whole process group).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import select
import signal
import struct
import sys
import time
from array import array
from typing import Any

__all__ = ["COUNT", "DURATION", "HEADER", "main"]

#: Frame header: kind (1 byte), payload length (uint32), native order and sizes.
HEADER = struct.Struct("=cI")
COUNT = struct.Struct("=I")
DURATION = struct.Struct("=d")


class _Out:
    """Frames to the kernel on a blocking pipe (a full pipe slows the load: backpressure)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def frame(self, kind: bytes, payload: bytes = b"") -> None:
        data = memoryview(HEADER.pack(kind, len(payload)) + payload)
        while data:
            try:
                n = os.write(self.fd, data)
            except BlockingIOError:
                select.select([], [self.fd], [])
                continue
            data = data[n:]


class _Connection(asyncio.Protocol):
    """One keep-alive connection of a run: it writes a request, reads the answer (by
    ``Content-Length``, what the platform sends), records it and writes the next request -
    all in the protocol's callbacks: no task, future or extra loop turn per request.

    ``due`` is when the answer in flight is late (``inf``: none in flight); the run's watchdog
    closes a connection past it. ``closed`` is done once the connection is gone: its worker
    then opens another one, if the run goes on.
    """

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.started = 0.0
        self.due = math.inf
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, now: float) -> None:
        """Write one request (already counted by the run's ``take``) at ``now``."""
        assert self.transport is not None
        self.started = now
        self.due = now + self.run.timeout
        self.transport.write(self.run.request)

    def _answered(self, etype: str | None, status: int) -> None:
        now = time.perf_counter()  # one clock read: this answer's end, the next request's start
        self.due = math.inf
        self.run.record(self.started, now, etype, status)
        if self.run.take(now):
            self.send(now)
        else:
            self.close()

    def data_received(self, data: bytes) -> None:
        # the hot path: one whole answer in one read, parsed in place (no copy, no buffer)
        buf = self.buf
        if buf:
            buf += data
            data = buf
        end = data.find(b"\r\n\r\n")
        if end < 0 or self.due == math.inf:
            if data is not buf:
                buf += data
            return
        # the platform (uvicorn) sends lower-case names; any other case is read too
        at = data.find(b"\r\ncontent-length:", 0, end)
        if at < 0:
            at = bytes(data[:end]).lower().find(b"\r\ncontent-length:")
        try:
            if at < 0:
                raise ValueError("an answer without Content-Length")
            stop = data.find(b"\r\n", at + 2, end)
            length = int(data[at + 17 : stop if stop > 0 else end])
            status = int(data[9:12])
        except ValueError:  # not what the platform sends: fail the request, start afresh
            self.due = math.inf
            self.run.record(self.started, time.perf_counter(), "connection_error", 0)
            self.close()
            return
        total = end + 4 + length
        if len(data) < total:
            if data is not buf:
                buf += data
            return
        etype = None if 200 <= status < 300 else _error_type(bytes(data[end + 4 : total]), status)
        if data is buf:
            del buf[:total]
        elif len(data) > total:
            buf += data[total:]
        self._answered(etype, status)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.due != math.inf:  # an answer was due: closed by the watchdog, or reset
            self.due = math.inf
            now = time.perf_counter()
            timed_out = now - self.started >= self.run.timeout
            self.run.record(self.started, now, "timeout" if timed_out else "connection_error", 0)
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _error_type(body: bytes, status: int) -> str:
    try:
        err = json.loads(body).get("error")
        etype = err.get("type") if isinstance(err, dict) else None
    except (ValueError, AttributeError):
        etype = None
    return str(etype) if etype else f"http_{status}"


class _Control(asyncio.Protocol):
    """The kernel's side of the child's stdin: lines, then end of file (stop)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (at := self.buf.find(b"\n")) >= 0:
            self.lines.put_nowait(bytes(self.buf[:at]))
            del self.buf[: at + 1]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lines.put_nowait(None)
        if not self.closed.done():
            self.closed.set_result(None)


class _Run:
    """The workers of one run and the samples they record, sent to the kernel in batches."""

    def __init__(self, job: dict[str, Any], out: _Out) -> None:
        self.host, self.port = job["host"], int(job["port"])
        self.request = str(job["request"]).encode("latin-1")
        self.concurrency = int(job["concurrency"])
        self.total = job.get("requests")
        self.duration = job.get("duration")
        self.timeout = float(job["timeout"])
        self.flush_every = float(job.get("flush") or 0.1)
        self.out = out
        self.etype_ids: dict[str, int] = {}
        self.new_etypes: list[str] = []  # named to the kernel with the next batch
        self._new_batch()
        self.issued = 0
        self.t0 = 0.0
        self.deadline = math.inf
        self.stopping = False
        self.conns: set[_Connection] = set()  # what the watchdog looks after
        self.cancelled = False

    def _new_batch(self) -> None:
        self.starts, self.latencies = array("d"), array("d")
        self.statuses, self.etypes = array("H"), array("H")

    async def run(self) -> None:
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + self.duration if self.duration else math.inf
        self.out.frame(b"G")
        tasks = [asyncio.ensure_future(self._worker()) for _ in range(self.concurrency)]
        helpers = [asyncio.ensure_future(self._watch()), asyncio.ensure_future(self._send_batches())]
        try:
            await asyncio.gather(*tasks)
        finally:
            t_end = time.perf_counter()
            for task in tasks + helpers:
                task.cancel()
            await asyncio.gather(*tasks, *helpers, return_exceptions=True)
        self.flush()
        self.out.frame(b"D", DURATION.pack(t_end - self.t0))

    def cancel(self) -> None:
        """Stop now (the kernel let go): nothing more is issued or recorded."""
        self.stopping = self.cancelled = True

    # -- samples -----------------------------------------------------------------------
    def record(self, started: float, now: float, etype: str | None, status: int) -> None:
        """One request, from ``started`` to ``now`` (``time.perf_counter()``)."""
        if self.cancelled:
            return  # an interrupted run: nothing more goes to the kernel
        self.starts.append(started - self.t0)
        self.latencies.append((now - started) * 1000.0)
        self.statuses.append(status)
        if etype is None:
            self.etypes.append(0)
            return
        eid = self.etype_ids.get(etype)
        if eid is None:  # a new type: named to the kernel before the batch that uses it
            eid = self.etype_ids[etype] = len(self.etype_ids) + 1
            self.new_etypes.append(etype)
        self.etypes.append(eid)

    def flush(self) -> bool:
        """Send what was recorded since the last batch (nothing is written anywhere else while
        the load runs: a protocol callback never blocks on, or fails with, the pipe)."""
        n = len(self.etypes)
        if not n:
            return False
        for etype in self.new_etypes:
            self.out.frame(b"E", etype.encode("utf-8", "replace"))
        self.new_etypes.clear()
        payload = b"".join((COUNT.pack(n), self.starts.tobytes(), self.latencies.tobytes(),
                            self.statuses.tobytes(), self.etypes.tobytes()))
        self._new_batch()
        self.out.frame(b"S", payload)
        return True

    async def _send_batches(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.flush_every)
                if not self.flush():
                    self.out.frame(b"H")
        except OSError:  # the kernel stopped reading: stop issuing (the run then ends)
            self.stopping = True
            raise

    # -- the load ----------------------------------------------------------------------
    async def _watch(self) -> None:
        """Close the connections whose answer is overdue (``timeout``), checked a few times a
        second; the request counts as a ``timeout`` and its worker goes on."""
        every = min(0.25, self.timeout / 4)
        while True:
            await asyncio.sleep(every)
            now = time.perf_counter()
            for conn in [c for c in self.conns if c.due <= now]:
                conn.close()

    def take(self, now: float) -> bool:
        """One more request at ``now``, if the run goes on (count and time)."""
        if self.stopping or (self.total is not None and self.issued >= self.total):
            return False
        if now >= self.deadline:
            return False
        self.issued += 1
        return True

    async def _worker(self) -> None:
        """One connection at a time: open it, let it run requests until it is gone (the run is
        over, or it broke); open another while the run goes on."""
        loop = asyncio.get_running_loop()
        while self.take(time.perf_counter()):
            started = time.perf_counter()
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: _Connection(self), self.host, self.port),
                    self.timeout)
            except asyncio.TimeoutError:  # no room in the server's backlog yet: go on
                self.record(started, time.perf_counter(), "timeout", 0)
                continue
            except OSError:
                # the server is gone: record it once per worker and stop the run
                self.record(started, time.perf_counter(), "connection_error", 0)
                self.stopping = True
                return
            self.conns.add(conn)  # the run's watchdog looks after it from now on
            try:
                conn.send(time.perf_counter())  # the request just taken
                await conn.closed
            finally:
                conn.close()
                self.conns.discard(conn)


async def _serve(out: _Out) -> None:
    loop = asyncio.get_running_loop()
    control = _Control()
    await loop.connect_read_pipe(lambda: control, sys.stdin)
    job = await control.lines.get()
    if job is None:
        return  # the first call failed, or was interrupted: no load
    run = _Run(json.loads(job), out)
    main = asyncio.ensure_future(run.run())
    # end of stdin: stop issuing and cancel what is in flight (connections close in finally)

    def stop(_: Any) -> None:
        run.cancel()
        main.cancel()

    control.closed.add_done_callback(stop)
    try:
        await main
    except asyncio.CancelledError:
        pass


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> int:
    """Run one job (see the module docstring); the exit status is 0 unless it failed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # frames go to a private copy of stdout; anything printed lands on stderr instead
    out = _Out(os.dup(1))
    os.dup2(2, 1)
    loop = _new_loop()
    try:
        loop.run_until_complete(_serve(out))
    except BrokenPipeError:
        return 0  # the kernel stopped reading: it is gone or no longer wants the samples
    except BaseException as exc:  # noqa: BLE001 - reported to the kernel, then exit 1
        import traceback

        text = "".join(traceback.format_exception(exc)).rstrip()
        try:
            out.frame(b"X", text.encode("utf-8", "replace"))
        except OSError:
            print(text, file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
