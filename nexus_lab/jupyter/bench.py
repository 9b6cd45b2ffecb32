r"""A bounded load on a served deployment, from the kernel: ``%nexus bench`` and :func:`run_bench`.

``run_bench`` sends ``requests`` calls (or runs for ``duration`` seconds),
``concurrency`` at a time, to one deployment of a platform serving on
**loopback** (any other host is refused: this is a notebook tool, not a load
tester for other people's servers), and returns a :class:`BenchResult`:

* ``requests``, ``errors``, ``error_counts`` (per error type, e.g.
  ``{"rate_limited": 12}``), ``rps``, ``p50_ms`` / ``p95_ms`` / ``p99_ms``
  (what the caller waited, measured here: request written to answer read, of
  the successful requests);
* ``to_dataframe()``: one row per request (``start_s``, ``latency_ms``,
  ``ok``, ``error_type``, ``status``);
* ``chart``: latency over time and its distribution (PNG), the same chart as
  the metrics dashboard, its axis clipped at p99.

How the load is made, and why:

* every channel first makes one call through
  :class:`~nexus_lab.client.AsyncNexusClient` (not counted), on a private
  event-loop thread of the kernel (``nexus-bench-loop``): a wrong name or
  input fails at once with the client's exception, before any load.
* ``api`` and ``cli`` load (``engine="auto"`` or ``"http"``) is the same POST
  the client sends - ``/api/workflows/NAME/execute`` with
  ``X-Nexus-Channel: cli`` for ``cli`` - written on bare HTTP/1.1 keep-alive
  connections, one per concurrent worker, by a **load generator in a process
  of its own** (:mod:`nexus_lab.jupyter._bench_worker`, the standard library
  and uvloop only). The platform it measures runs in the kernel: a load made
  in the kernel too would share the kernel's GIL with the server, and every
  microsecond it spends would come out of the server's throughput (it reached
  0.59x of what ``wrk`` gets from the same deployment once the server got
  faster). The child is started *before* the first call, so its start-up
  (an interpreter and asyncio, a few tens of milliseconds) mostly overlaps
  that call; the measured window opens when the child starts sending.
  ``benchmarks/bench_magic_bench.py`` compares the figure with ``wrk``'s.
* the child measures each request (written to answer read) and streams the
  samples back over its stdout in compact binary batches (columns of
  float64/uint16, every 0.1 s; a heartbeat when there is nothing to send),
  which the kernel reads on the calling thread into the progress view; an
  error type travels once as a name, then as a small number.
* the child ends with the run. The kernel stops it by closing its stdin - on
  an interrupt, an error, or when the kernel itself goes - and it then closes
  its connections and exits; one that does not within ``EXIT_GRACE_S`` is
  killed, and it is always reaped: a finished (or interrupted) bench leaves
  no process, thread or connection behind. A child that dies, or sends
  nothing for ``STALL_S``, fails the run with a :class:`BenchError` that says
  so (``%nexus bench`` shows it as a one-line error), never a hang. A hung
  answer is a ``timeout`` error after ``timeout`` seconds (the child's
  watchdog closes that connection) and the worker goes on.
* ``mcp`` load goes through ``AsyncNexusClient`` (its one MCP session,
  streamable HTTP), as does ``engine="client"`` on ``api``/``cli``: on the
  same private loop thread in the kernel, closed at the end (an interrupt
  cancels the workers first). httpx's client layer costs ~0.3 ms a request
  on the 2-core machines this was built on: far slower than the bare
  connections, whose figure is the one comparable with ``wrk``'s.

Example::

    result = %nexus bench assistant -n 500 -c 16 --input query=hello
    result.rps, result.p95_ms, result.error_counts
    result.to_dataframe().latency_ms.describe()

    from nexus_lab.jupyter.bench import run_bench
    run_bench(app, "assistant", {"query": "hi"}, requests=200, concurrency=8, channel="mcp")
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import math
import os
import selectors
import signal
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import ConfigError
from ._bench_worker import COUNT, DURATION, HEADER

__all__ = ["BenchError", "BenchResult", "BenchSnapshot", "run_bench", "is_loopback", "DEFAULT_REQUESTS",
           "MAX_CONCURRENCY", "MAX_DURATION"]

#: Requests sent when neither ``requests`` nor ``duration`` is given.
DEFAULT_REQUESTS = 200
MAX_CONCURRENCY = 256
MAX_REQUESTS = 1_000_000
MAX_DURATION = 3600.0
#: Points a chart draws per series at most (a long run is thinned evenly; the figures use all).
CHART_POINTS = 20_000
#: Samples a progress snapshot carries at most (evenly thinned).
LIVE_POINTS = 5_000
#: Seconds the load generator's process may send nothing (it sends a batch or a heartbeat every
#: 0.1 s) before it is taken for hung: it is killed and the run fails with a :class:`BenchError`.
STALL_S = 30.0
#: Seconds a stopping load generator gets to close its connections and exit before it is killed.
EXIT_GRACE_S = 5.0
#: The child runs the worker *file*: no ``nexus_lab`` import, and neither the working directory
#: nor the worker's own directory on ``sys.path`` (nothing there can shadow the standard library).
_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bench_worker.py")
_BOOT = "import runpy, sys; sys.path[:1] = [p for p in sys.path[:1] if p]; " \
        "runpy.run_path(sys.argv[1], run_name='__main__')"


def is_loopback(url: str) -> bool:
    """True for ``http://127.x.x.x``, ``localhost`` and ``[::1]`` URLs.

    >>> is_loopback("http://127.0.0.1:8000"), is_loopback("http://example.com")
    (True, False)
    """
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class BenchSnapshot:
    """Progress of a running bench, handed to the ``progress`` callback a few times a second."""

    done: int
    errors: int
    elapsed: float
    total: int | None
    duration: float | None
    samples: list[tuple[float, float, bool]]

    @property
    def fraction(self) -> float:
        """How far along (0..1), by requests or by time."""
        parts = []
        if self.total:
            parts.append(self.done / self.total)
        if self.duration:
            parts.append(self.elapsed / self.duration)
        return min(1.0, max(parts, default=0.0))


@dataclass(repr=False)
class BenchResult:
    """What a bench measured. Figures are in requests/s and milliseconds.

    Attributes:
        name, channel, concurrency: what was loaded, and how.
        requests: requests answered (or failed) during the run.
        errors: how many of them failed; ``error_counts`` per error type.
        duration_s: from the first request sent to the last answer.
        rps: ``requests / duration_s``.
        p50_ms, p95_ms, p99_ms, mean_ms, max_ms: what the caller waited, of
            the successful requests (of all, when none succeeded).
        engine: ``"http"`` (bare keep-alive connections) or ``"client"``
            (:class:`~nexus_lab.client.AsyncNexusClient`).
        interrupted: the run was cut short by an interrupt.
    """

    name: str
    channel: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    error_counts: dict[str, int] = field(default_factory=dict)
    engine: str = "http"
    interrupted: bool = False
    starts: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    oks: list[bool] = field(default_factory=list)
    error_types: list[str | None] = field(default_factory=list)
    statuses: list[int | None] = field(default_factory=list)
    rps: float = 0.0
    p50_ms: float = math.nan
    p95_ms: float = math.nan
    p99_ms: float = math.nan
    mean_ms: float = math.nan
    max_ms: float = math.nan
    _png: bytes | None = None

    def __post_init__(self) -> None:
        self.rps = self.requests / self.duration_s if self.duration_s > 0 else 0.0
        good = [lat for lat, ok in zip(self.latencies_ms, self.oks, strict=True) if ok] or list(self.latencies_ms)
        good.sort()
        if good:
            self.p50_ms = _percentile(good, 50)
            self.p95_ms = _percentile(good, 95)
            self.p99_ms = _percentile(good, 99)
            self.mean_ms = sum(good) / len(good)
            self.max_ms = good[-1]

    # -- data -------------------------------------------------------------------------
    def to_dataframe(self) -> Any:
        """One row per request: ``start_s`` (since the first), ``latency_ms``, ``ok``,
        ``error_type`` (None when ok), ``status`` (HTTP status; None on MCP or without answer)."""
        import pandas as pd

        return pd.DataFrame({
            "start_s": self.starts,
            "latency_ms": self.latencies_ms,
            "ok": self.oks,
            "error_type": self.error_types,
            "status": pd.array(self.statuses, dtype="Int64"),
        })

    def samples(self) -> list[tuple[float, float, bool]]:
        """``[(start_s, latency_s, ok)]``: what :class:`~nexus_lab.jupyter.charts.LatencyChart` draws."""
        return [(s, lat / 1000.0, ok) for s, lat, ok in zip(self.starts, self.latencies_ms, self.oks, strict=True)]

    @property
    def chart(self) -> BenchChart:
        """Latency over time and its distribution (a PNG; shown as an image in a notebook)."""
        if self._png is None:
            self._png = render_bench_chart(self.channel, self.samples())
        return BenchChart(self._png, f"{self.name} via {self.channel}")

    # -- display ----------------------------------------------------------------------
    def __repr__(self) -> str:  # only what the notebook decided: stable for nbval
        cut = ", interrupted=True" if self.interrupted else ""
        return (
            f"BenchResult(name={self.name!r}, channel={self.channel!r}, "
            f"concurrency={self.concurrency}, requests={self.requests}, errors={self.errors}{cut})"
        )

    def _repr_html_(self) -> str:
        from html import escape

        def num(value: float) -> str:
            return "&mdash;" if value != value else f"{value:.1f}"

        cells = [("requests/s", num(self.rps)), ("p50 ms", num(self.p50_ms)),
                 ("p95 ms", num(self.p95_ms)), ("p99 ms", num(self.p99_ms)),
                 ("max ms", num(self.max_ms))]
        head = "".join(f"<th>{k}</th>" for k, _ in cells)
        row = "".join(f"<td>{v}</td>" for _, v in cells)
        errors = ""
        if self.error_counts:
            listed = ", ".join(f"<code>{escape(k)}</code> {v}" for k, v in sorted(self.error_counts.items()))
            errors = f"<div class='nexus-bench-errors' style='color:#b91c1c'>errors: {listed}</div>"
        cut = " &middot; <b>interrupted</b>" if self.interrupted else ""
        png = base64.b64encode(self.chart.png).decode()
        return (
            "<div class='nexus-bench'>"
            f"<div><b>{escape(self.name)}</b> via <code>{escape(self.channel)}</code> &middot; "
            f"{self.requests} requests, {self.errors} failed, concurrency {self.concurrency}{cut}</div>"
            f"<table class='nexus-bench-figures'><thead><tr>{head}</tr></thead>"
            f"<tbody><tr>{row}</tr></tbody></table>{errors}"
            f"<img class='nexus-bench-chart' style='max-width:100%' src='data:image/png;base64,{png}'/>"
            "</div>"
        )


class BenchChart:
    """A PNG chart (``.png`` bytes), shown as an image by Jupyter; ``save(path)`` writes it."""

    def __init__(self, png: bytes, title: str = "") -> None:
        self.png = png
        self.title = title

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.png)

    def __repr__(self) -> str:
        return f"BenchChart({self.title!r})"


def _thin(rows: list[Any], limit: int = CHART_POINTS) -> list[Any]:
    if len(rows) <= limit:
        return rows
    step = len(rows) / limit
    return [rows[int(i * step)] for i in range(limit)]


def render_bench_chart(channel: str, samples: list[tuple[float, float, bool]], chart: Any = None) -> bytes:
    """PNG of ``samples`` (``[(start_s, latency_s, ok)]``) on a latency chart (a new one unless given)."""
    from .charts import LatencyChart

    chart = chart or LatencyChart(title=f"what the caller waited per request ({channel})",
                                  x_from="first")
    chart.update({channel: _thin(samples)})
    from .charts import figure_png

    return figure_png(chart.figure)


# ----------------------------------------------------------------------------- the load
class BenchError(RuntimeError):
    """The load generator failed - e.g. its process died or stopped answering; nothing is returned.

    The message is one line; ``detail`` holds what more there is (the child's traceback, if any).
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class _Samples:
    """One entry per request, in columns: appended by the load (on the loop thread, or from the
    child's batches), read by the progress view on the calling thread."""

    def __init__(self) -> None:
        self.starts = array("d")  # s since the window opened
        self.latencies = array("d")  # ms
        self.statuses = array("H")  # HTTP status, 0 = none
        self.etypes = array("H")  # 0 = ok, else 1 + index in names
        self.names: list[str] = []
        self.errors = 0
        self.t0 = 0.0  # time.perf_counter() here when the window opened (0: not yet)

    def record(self, start_s: float, latency_ms: float, etype: str | None, status: int | None) -> None:
        self.starts.append(start_s)
        self.latencies.append(latency_ms)
        self.statuses.append(status or 0)
        if etype is None:
            self.etypes.append(0)
            return
        if etype not in self.names:
            self.names.append(etype)
        self.errors += 1
        self.etypes.append(self.names.index(etype) + 1)  # etypes last: len(etypes) is the count

    def extend(self, batch: bytes) -> None:
        """Add an ``S`` frame of the child (see :mod:`._bench_worker`)."""
        (n,) = COUNT.unpack_from(batch)
        at = COUNT.size
        for column in (self.starts, self.latencies, self.statuses):
            size = n * column.itemsize
            column.frombytes(batch[at : at + size])
            at += size
        etypes = array("H", batch[at : at + n * self.etypes.itemsize])
        self.errors += n - etypes.count(0)
        self.etypes.extend(etypes)

    def snapshot(self, total: int | None, duration: float | None) -> BenchSnapshot:
        n = len(self.etypes)  # columns grow on another thread: read up to a consistent length
        elapsed = (time.perf_counter() - self.t0) if self.t0 else 0.0
        step = max(1, n // LIVE_POINTS)  # a live view needs a few thousand points, not a million
        samples = [(s, lat / 1000.0, e == 0) for s, lat, e in
                   zip(self.starts[:n:step], self.latencies[:n:step], self.etypes[:n:step], strict=True)]
        return BenchSnapshot(done=n, errors=self.errors, elapsed=elapsed, total=total,
                             duration=duration, samples=samples)

    def result(self, duration_s: float, **what: Any) -> BenchResult:
        n = len(self.etypes)
        names = [None, *self.names]
        error_types = [names[e] for e in self.etypes[:n]]
        return BenchResult(
            requests=n, errors=n - self.etypes[:n].count(0), duration_s=max(0.0, duration_s),
            error_counts=_count(error_types), starts=self.starts[:n].tolist(),
            latencies_ms=self.latencies[:n].tolist(), oks=[e == 0 for e in self.etypes[:n]],
            error_types=error_types, statuses=[s or None for s in self.statuses[:n]], **what,
        )


def _request_bytes(url: str, name: str, inputs: dict[str, Any], channel: str, api_key: str | None) -> bytes:
    """The POST :class:`~nexus_lab.client.AsyncNexusClient` sends, as bytes on the wire."""
    body = json.dumps({"inputs": inputs}, separators=(",", ":")).encode()
    lines = [
        f"POST /api/workflows/{quote(name, safe='')}/execute HTTP/1.1",
        f"Host: {urlsplit(url).netloc}",
        "Content-Type: application/json",
        "Accept: application/json",
        f"Content-Length: {len(body)}",
    ]
    if api_key:
        lines.append(f"Authorization: Bearer {api_key}")
    if channel == "cli":
        lines.append("X-Nexus-Channel: cli")  # what the client and the `nexus` CLI send
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _first_call(url: str, mcp_url: str | None, api_key: str | None, timeout: float,
                      name: str, inputs: dict[str, Any], channel: str) -> Any:
    """One call through the client: returns the client (open) or raises the client's error."""
    from ..client import AsyncNexusClient

    client = AsyncNexusClient(url, api_key=api_key, mcp_url=mcp_url, timeout=timeout)
    try:
        await client.run(name, inputs, channel=channel, timeout=timeout)
    except BaseException:
        await client.aclose()
        raise
    return client


class _ClientLoad:
    """``engine="client"`` (and ``mcp``): the load made by ``AsyncNexusClient``, on the kernel's
    private loop thread. Samples are appended there and read from the calling thread."""

    def __init__(self, *, url: str, name: str, inputs: dict[str, Any], channel: str, api_key: str | None,
                 mcp_url: str | None, concurrency: int, requests: int | None, duration: float | None,
                 timeout: float, samples: _Samples) -> None:
        self.url, self.name, self.inputs, self.channel = url, name, inputs, channel
        self.api_key, self.mcp_url, self.timeout = api_key, mcp_url, timeout
        self.concurrency, self.total, self.duration = concurrency, requests, duration
        self.samples = samples
        self.issued = 0
        self.t0 = 0.0
        self.t_end = 0.0
        self.deadline = math.inf
        self.stopping = False
        self.main: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self.main = asyncio.current_task()
        if self.stopping:  # interrupted before the loop got to it
            return
        # one call first (not counted): a wrong name or input fails here, before any load
        client = await _first_call(self.url, self.mcp_url, self.api_key, self.timeout, self.name,
                                   self.inputs, self.channel)
        try:
            self.t0 = self.samples.t0 = time.perf_counter()
            self.deadline = self.t0 + self.duration if self.duration else math.inf
            tasks = [asyncio.ensure_future(self._worker(client)) for _ in range(self.concurrency)]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self.t_end = time.perf_counter()
        finally:
            await client.aclose()

    def cancel(self) -> None:
        """Stop issuing and cancel everything in flight (call it on the loop thread)."""
        self.stopping = True
        if self.main is not None:
            self.main.cancel()  # its finally cancels the workers and closes the client

    def _take(self) -> bool:
        if self.stopping or (self.total is not None and self.issued >= self.total):
            return False
        if time.perf_counter() >= self.deadline:
            return False
        self.issued += 1
        return True

    async def _worker(self, client: Any) -> None:
        from ..errors import NexusError

        while self._take():
            started = time.perf_counter()
            try:
                await client.run(self.name, self.inputs, channel=self.channel, timeout=self.timeout)
            except NexusError as exc:
                etype, status = exc.error_type, getattr(exc, "http_status", None)
            else:
                etype, status = None, (200 if self.channel != "mcp" else None)
            now = time.perf_counter()
            self.samples.record(started - self.t0, (now - started) * 1000.0, etype, status)


class _Child:
    """The http load generator in its own process (:mod:`._bench_worker`): started (it then
    waits for its job), given its job by :meth:`run` and read until the end; always stopped
    and reaped by :meth:`close`."""

    def __init__(self) -> None:
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,  # a Jupyter interrupt signals the
            )                                                    # process group: not the child
        except OSError as exc:
            raise BenchError(f"could not start the load generator ({sys.executable}): {exc}") from exc
        self.buf = bytearray()
        self.duration_s: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except OSError:  # a broken pipe: the child is gone
            raise self._died() from None

    def run(self, job: dict[str, Any], samples: _Samples, progress: Callable[[BenchSnapshot], None] | None,
            interval: float, total: int | None, duration: float | None) -> float:
        """Start the load, collect its samples until it is done; the window's length in seconds."""
        assert self.proc.stdout is not None
        self._send(json.dumps(job, separators=(",", ":")).encode() + b"\n")  # the load starts
        with selectors.DefaultSelector() as selector:  # not select(): no limit on the fd's number
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            return self._collect(selector, samples, progress, interval, total, duration)

    def _collect(self, selector: selectors.BaseSelector, samples: _Samples,
                 progress: Callable[[BenchSnapshot], None] | None, interval: float,
                 total: int | None, duration: float | None) -> float:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        heard = time.monotonic()
        tick = math.inf  # the next progress snapshot, once the window is open
        while self.duration_s is None:
            now = time.monotonic()
            wait = min(heard + STALL_S, tick) - now
            ready = selector.select(max(0.0, wait))
            now = time.monotonic()
            if ready:
                data = os.read(fd, 1 << 20)
                if not data:
                    raise self._died()
                heard = now
                opened = samples.t0
                self._frames(data, samples)
                if not opened and samples.t0 and progress is not None:
                    tick = now + interval
            elif now - heard >= STALL_S:
                self.proc.kill()
                raise BenchError(f"the load generator (process {self.pid}) sent nothing for "
                                 f"{STALL_S:g} s: stopped it")
            if now >= tick and self.duration_s is None:
                assert progress is not None
                progress(samples.snapshot(total, duration))
                tick = time.monotonic() + interval
        return self.duration_s

    def _frames(self, data: bytes, samples: _Samples) -> None:
        buf = self.buf
        buf += data
        at, size = 0, len(buf)
        while size - at >= HEADER.size:
            kind, length = HEADER.unpack_from(buf, at)
            end = at + HEADER.size + length
            if end > size:
                break
            payload = bytes(buf[at + HEADER.size : end])
            at = end
            if kind == b"S":
                samples.extend(payload)
            elif kind == b"E":
                samples.names.append(payload.decode("utf-8", "replace"))
            elif kind == b"G":
                samples.t0 = time.perf_counter()
            elif kind == b"D":
                (self.duration_s,) = DURATION.unpack(payload)
            elif kind == b"X":  # its traceback: the last line says, the whole is kept
                text = payload.decode("utf-8", "replace")
                last = (text.strip().splitlines() or ["?"])[-1]
                raise BenchError(f"the load generator (process {self.pid}) failed: {last}", detail=text)
            # b"H": a heartbeat, nothing to do
        del buf[:at]

    def _died(self) -> BenchError:
        try:
            code = self.proc.wait(EXIT_GRACE_S)
        except subprocess.TimeoutExpired:  # its stdout closed, yet it runs: stop it
            self.proc.kill()
            code = self.proc.wait()
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit status {code}"
        err = b""
        if self.proc.stderr is not None:
            with contextlib.suppress(OSError):
                err = self.proc.stderr.read()
        text = err.decode("utf-8", "replace").strip()
        said = f": {text.splitlines()[-1]}" if text else ""
        return BenchError(f"the load generator (process {self.pid}) died before the end of the "
                          f"run ({how}){said}", detail=text)

    def close(self) -> None:
        """Stop the child (end of its stdin: it closes its connections and exits), kill it if it
        does not within ``EXIT_GRACE_S``, and reap it. Idempotent."""
        proc = self.proc
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        try:
            proc.wait(EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                with contextlib.suppress(OSError):
                    proc.stderr.close()


def run_bench(
    target: Any,
    name: str,
    inputs: Mapping[str, Any] | None = None,
    *,
    requests: int | None = None,
    concurrency: int = 8,
    duration: float | None = None,
    channel: str = "api",
    api_key: str | None = None,
    timeout: float = 60.0,
    engine: str = "auto",
    progress: Callable[[BenchSnapshot], None] | None = None,
    progress_interval: float = 0.25,
) -> BenchResult:
    """Load deployment ``name`` of ``target`` (a serving ``Nexus`` or an API URL) and measure it.

    Args:
        target: a ``Nexus`` that is serving, or the API's base URL (loopback only).
        name: the deployment.
        inputs: the inputs of every request.
        requests: how many requests (default 200, or unbounded with ``duration``).
        concurrency: requests in flight at once (1..256).
        duration: stop after this many seconds (at most 3600).
        channel: ``"api"``, ``"cli"`` or ``"mcp"``.
        api_key: for a platform with auth.
        timeout: seconds one request may take (it then counts as a ``timeout`` error).
        engine: ``"auto"`` (bare HTTP for api/cli, the client for mcp),
            ``"client"`` (``AsyncNexusClient`` for every request) or ``"http"``.
        progress: called from the calling thread with a :class:`BenchSnapshot`
            every ``progress_interval`` seconds (and once at the end).

    Raises:
        ConfigError: a bad argument, a server that is not on loopback or not serving.
        nexus_lab.errors.NexusError: the first (uncounted) call failed - e.g.
            an unknown deployment or invalid inputs.
        KeyboardInterrupt: after cancelling the requests and closing everything.

    Example::

        result = run_bench(app, "assistant", {"query": "hi"}, requests=500, concurrency=16)
        print(result.rps, result.p95_ms)
    """
    url, mcp_url = _urls(target)
    if channel not in ("api", "cli", "mcp"):
        raise ConfigError(f"channel must be api, cli or mcp, got {channel!r}", field="channel")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"concurrency must be 1..{MAX_CONCURRENCY}, got {concurrency!r}", field="concurrency")
    if duration is not None and not (0 < duration <= MAX_DURATION):
        raise ConfigError(f"duration must be in (0, {MAX_DURATION:g}] seconds, got {duration!r}", field="duration")
    if requests is None and duration is None:
        requests = DEFAULT_REQUESTS
    if requests is not None and (isinstance(requests, bool) or not isinstance(requests, int)
                                 or not 1 <= requests <= MAX_REQUESTS):
        raise ConfigError(f"requests must be 1..{MAX_REQUESTS}, got {requests!r}", field="requests")
    if engine not in ("auto", "client", "http"):
        raise ConfigError(f"engine must be auto, client or http, got {engine!r}", field="engine")
    if engine == "auto":
        engine = "client" if channel == "mcp" else "http"
    if engine == "http" and channel == "mcp":
        raise ConfigError("the mcp channel is loaded through the client (engine='client')", field="engine")

    inputs = dict(inputs or {})
    samples = _Samples()
    what = {"name": name, "channel": channel, "concurrency": concurrency, "engine": engine}
    if engine == "http":
        duration_s = _run_in_child(url, mcp_url, name, inputs, channel, api_key, concurrency, requests,
                                   duration, timeout, samples, progress, progress_interval)
    else:
        duration_s = _run_in_kernel(url, mcp_url, name, inputs, channel, api_key, concurrency, requests,
                                    duration, timeout, samples, progress, progress_interval)
    if progress is not None:
        progress(samples.snapshot(requests, duration))
    return samples.result(duration_s, **what)


def _run_in_child(url: str, mcp_url: str | None, name: str, inputs: dict[str, Any], channel: str,
                  api_key: str | None, concurrency: int, requests: int | None, duration: float | None,
                  timeout: float, samples: _Samples, progress: Callable[[BenchSnapshot], None] | None,
                  progress_interval: float) -> float:
    """``api``/``cli`` over bare HTTP: the load runs in a child process, this thread reads its
    samples; the window's length in seconds."""
    from ._loop import LoopThread

    # started first: its start-up (an interpreter, asyncio) overlaps the first call; it gets
    # its job once that call has passed
    child = _Child()
    try:
        loop = LoopThread("nexus-bench-loop", fast=True)
        try:
            client = loop.run(_first_call(url, mcp_url, api_key, timeout, name, inputs, channel))
            loop.run(client.aclose())
        finally:
            loop.close()
        parts = urlsplit(url)
        job = {
            "host": parts.hostname, "port": parts.port or 80, "concurrency": concurrency,
            "request": _request_bytes(url, name, inputs, channel, api_key).decode("latin-1"),
            "requests": requests, "duration": duration, "timeout": timeout,
            "flush": max(0.01, min(0.1, progress_interval / 2)),
        }
        return child.run(job, samples, progress, progress_interval, requests, duration)
    finally:
        child.close()  # an interrupt, an error or the end: the child is stopped and reaped


def _run_in_kernel(url: str, mcp_url: str | None, name: str, inputs: dict[str, Any], channel: str,
                   api_key: str | None, concurrency: int, requests: int | None, duration: float | None,
                   timeout: float, samples: _Samples, progress: Callable[[BenchSnapshot], None] | None,
                   progress_interval: float) -> float:
    """``mcp`` and ``engine="client"``: the load made by the client on a private loop thread."""
    from ._loop import LoopThread

    load = _ClientLoad(url=url, name=name, inputs=inputs, channel=channel, api_key=api_key,
                       mcp_url=mcp_url, concurrency=concurrency, requests=requests, duration=duration,
                       timeout=timeout, samples=samples)
    loop = LoopThread("nexus-bench-loop", fast=True)
    try:
        future = loop.submit(load.run())
        try:
            while True:
                done, _ = concurrent.futures.wait([future], progress_interval)
                if done:
                    break
                if progress is not None and load.t0:
                    progress(samples.snapshot(requests, duration))
        except KeyboardInterrupt:
            loop.loop.call_soon_threadsafe(load.cancel)
            concurrent.futures.wait([future], 30.0)
            raise
        future.result()  # the first call's error, if any
    finally:
        loop.close()
    return load.t_end - load.t0


def _count(etypes: list[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for etype in etypes:
        if etype is not None:
            out[etype] = out.get(etype, 0) + 1
    return dict(sorted(out.items()))


def _urls(target: Any) -> tuple[str, str | None]:
    if isinstance(target, str):
        url, mcp_url = target.rstrip("/"), None
    else:
        if not getattr(target, "is_running", False):
            raise ConfigError("the platform is not serving: start it first (%nexus start)", field="target")
        url, mcp_url = target.api_url, target.mcp_url
    if not is_loopback(url) or (mcp_url is not None and not is_loopback(mcp_url)):
        raise ConfigError(
            f"bench only loads servers on this machine's loopback (127.0.0.1, localhost, ::1), "
            f"not {url}", field="target",
        )
    return url, mcp_url
