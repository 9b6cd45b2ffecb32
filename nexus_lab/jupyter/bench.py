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

* it runs on **one private event-loop thread** (uvloop when installed),
  started for the run and closed at the end, with one keep-alive connection
  per concurrent worker, closed at the end too: a finished bench leaves no
  thread and no connection behind. An interrupt cancels the workers first.
* every channel first makes one call through
  :class:`~nexus_lab.client.AsyncNexusClient` (not counted): a wrong name or
  input fails at once with the client's exception, before any load.
* ``mcp`` load goes through ``AsyncNexusClient`` (its one MCP session,
  streamable HTTP), as does ``engine="client"`` on ``api``/``cli``.
* ``api`` and ``cli`` load (``engine="auto"``) is the same POST the client
  sends - ``/api/workflows/NAME/execute`` with ``X-Nexus-Channel: cli`` for
  ``cli`` - written on a bare HTTP/1.1 keep-alive connection. The load runs in
  the kernel, sharing the GIL with the platform it measures; httpx's client
  layer alone costs ~0.3 ms per request on the 2-core machines this was
  built on, which capped the load at ~0.15x of what ``wrk`` gets from the
  same deployment. The bare connection costs a few microseconds and keeps the
  figure comparable with ``wrk``'s (``benchmarks/bench_magic_bench.py``
  prints both).

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
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import ConfigError

__all__ = ["BenchResult", "BenchSnapshot", "run_bench", "is_loopback", "DEFAULT_REQUESTS",
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
class _HTTPConnection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection: write a request, wait for its whole answer.

    Answers are read by ``Content-Length`` (what the platform sends); anything
    else fails the request clearly.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.buf = bytearray()
        self.lost: BaseException | None = None
        self.due = math.inf  # when the answer in flight is late (see _Load._watch)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionResetError("the server closed the connection")
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        waiter = self.waiter
        if at < 0:
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("an answer without Content-Length"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop > 0 else len(head)])
        total = end + 4 + length
        if len(buf) < total:
            return
        status = int(head[9:12])
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.lost is not None or self.transport is None:
            raise ConnectionResetError("the connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _error_type(status: int, body: bytes) -> str:
    try:
        err = json.loads(body).get("error")
        etype = err.get("type") if isinstance(err, dict) else None
    except (ValueError, AttributeError):
        etype = None
    return str(etype) if etype else f"http_{status}"


class _Load:
    """The workers of one run and what they record (appended on the loop thread, read anywhere)."""

    def __init__(self, *, url: str, name: str, inputs: dict[str, Any], channel: str, api_key: str | None,
                 mcp_url: str | None, concurrency: int, requests: int | None, duration: float | None,
                 timeout: float, engine: str) -> None:
        self.url, self.name, self.inputs, self.channel = url, name, inputs, channel
        self.api_key, self.mcp_url, self.timeout = api_key, mcp_url, timeout
        self.concurrency, self.total, self.duration, self.engine = concurrency, requests, duration, engine
        self.starts: list[float] = []
        self.latencies: list[float] = []
        self.oks: list[bool] = []
        self.etypes: list[str | None] = []
        self.statuses: list[int | None] = []
        self.errors = 0
        self.issued = 0
        self.t0 = 0.0
        self.t_end = 0.0
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []
        self.main: asyncio.Task[None] | None = None
        self.client: Any = None
        self.deadline = math.inf
        self.conns: set[_HTTPConnection] = set()  # what the watchdog looks after

    # -- run ---------------------------------------------------------------------------
    async def run(self) -> None:
        from ..client import AsyncNexusClient

        self.main = asyncio.current_task()
        if self.stopping:  # interrupted before the loop got to it
            return
        self.client = AsyncNexusClient(self.url, api_key=self.api_key, mcp_url=self.mcp_url,
                                       timeout=self.timeout)
        try:
            # one call first (not counted): a wrong name or input fails here, before any load
            await self.client.run(self.name, self.inputs, channel=self.channel, timeout=self.timeout)
            worker = self._client_worker if self.engine == "client" else self._http_worker
            request = self._request_bytes() if self.engine == "http" else b""
            self.t0 = time.perf_counter()
            self.deadline = self.t0 + self.duration if self.duration else math.inf
            self.tasks = [asyncio.ensure_future(worker(request)) for _ in range(self.concurrency)]
            watch = asyncio.ensure_future(self._watch())
            try:
                await asyncio.gather(*self.tasks)
            finally:
                watch.cancel()
                for task in self.tasks:
                    task.cancel()
                await asyncio.gather(*self.tasks, return_exceptions=True)
                self.t_end = time.perf_counter()
        finally:
            await self.client.aclose()

    async def _watch(self) -> None:
        """Close the connections whose answer is overdue (``timeout``), checked a few times a
        second; the worker waiting on one records a timeout and goes on."""
        every = min(0.25, self.timeout / 4)
        while True:
            await asyncio.sleep(every)
            now = time.perf_counter()
            for conn in [c for c in self.conns if c.due <= now]:
                conn.close()
            self.conns = {c for c in self.conns if c.lost is None and c.transport is not None
                          and not c.transport.is_closing()}

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

    def _record(self, started: float, ok: bool, etype: str | None, status: int | None) -> None:
        now = time.perf_counter()
        self.starts.append(started - self.t0)
        self.latencies.append((now - started) * 1000.0)
        self.oks.append(ok)
        self.etypes.append(etype)
        self.statuses.append(status)
        if not ok:
            self.errors += 1

    def _request_bytes(self) -> bytes:
        parts = urlsplit(self.url)
        host = parts.netloc
        body = json.dumps({"inputs": self.inputs}, separators=(",", ":")).encode()
        lines = [
            f"POST /api/workflows/{quote(self.name, safe='')}/execute HTTP/1.1",
            f"Host: {host}",
            "Content-Type: application/json",
            "Accept: application/json",
            f"Content-Length: {len(body)}",
        ]
        if self.api_key:
            lines.append(f"Authorization: Bearer {self.api_key}")
        if self.channel == "cli":
            lines.append("X-Nexus-Channel: cli")  # what the client and the `nexus` CLI send
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    # -- workers ---------------------------------------------------------------------
    async def _http_worker(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        parts = urlsplit(self.url)
        conn: _HTTPConnection | None = None
        try:
            while self._take():
                if conn is None or conn.lost is not None:
                    if conn is not None:
                        conn.close()
                    started = time.perf_counter()
                    try:
                        _, conn = await loop.create_connection(_HTTPConnection, parts.hostname, parts.port)
                    except OSError:
                        # the server is gone: record it once per worker and stop the run
                        self._record(started, False, "connection_error", None)
                        self.stopping = True
                        conn = None
                        return
                    self.conns.add(conn)  # the run's watchdog looks after it from now on
                started = time.perf_counter()
                # a hung answer frees the worker: the run's watchdog closes a connection past
                # its due time (one timer per run, not one per request: this loop is hot)
                conn.due = started + self.timeout
                try:
                    status, body = await conn.request(request)
                except OSError:  # reset, or closed by the watchdog
                    timed_out = time.perf_counter() - started >= self.timeout
                    self._record(started, False, "timeout" if timed_out else "connection_error", None)
                    continue
                finally:
                    conn.due = math.inf
                if 200 <= status < 300:
                    self._record(started, True, None, status)
                else:
                    self._record(started, False, _error_type(status, body), status)
        finally:
            if conn is not None:
                conn.close()

    async def _client_worker(self, request: bytes) -> None:
        from ..errors import NexusError

        client = self.client
        while self._take():
            started = time.perf_counter()
            try:
                await client.run(self.name, self.inputs, channel=self.channel, timeout=self.timeout)
            except NexusError as exc:
                self._record(started, False, exc.error_type, getattr(exc, "http_status", None))
            else:
                self._record(started, True, None, 200 if self.channel != "mcp" else None)

    # -- reading -----------------------------------------------------------------------
    def snapshot(self) -> BenchSnapshot:
        n = len(self.oks)  # lists grow on the loop thread: read up to a consistent length
        elapsed = (time.perf_counter() - self.t0) if self.t0 else 0.0
        step = max(1, n // LIVE_POINTS)  # a live view needs a few thousand points, not a million
        starts, latencies, oks = self.starts[:n:step], self.latencies[:n:step], self.oks[:n:step]
        samples = list(zip(starts, (x / 1000.0 for x in latencies), oks, strict=True))
        return BenchSnapshot(done=n, errors=self.errors, elapsed=elapsed, total=self.total,
                             duration=self.duration, samples=samples)


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
    from ._loop import LoopThread

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

    load = _Load(url=url, name=name, inputs=dict(inputs or {}), channel=channel, api_key=api_key,
                 mcp_url=mcp_url, concurrency=concurrency, requests=requests, duration=duration,
                 timeout=timeout, engine=engine)
    loop = LoopThread("nexus-bench-loop", fast=True)
    interrupted = False
    try:
        future = loop.submit(load.run())
        try:
            while True:
                done, _ = concurrent.futures.wait([future], progress_interval)
                if done:
                    break
                if progress is not None and load.t0:
                    progress(load.snapshot())
        except KeyboardInterrupt:
            interrupted = True
            loop.loop.call_soon_threadsafe(load.cancel)
            concurrent.futures.wait([future], 30.0)
            raise
        future.result()  # the first call's error, if any
    finally:
        loop.close()
    if progress is not None:
        progress(load.snapshot())
    return BenchResult(
        name=name, channel=channel, concurrency=concurrency, requests=len(load.oks), errors=load.errors,
        duration_s=max(0.0, load.t_end - load.t0), error_counts=_count(load.etypes),
        engine=engine, interrupted=interrupted, starts=load.starts, latencies_ms=load.latencies,
        oks=load.oks, error_types=load.etypes, statuses=load.statuses,
    )


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
