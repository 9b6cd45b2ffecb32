"""HTTP execute: nexus_lab's API vs a bare Starlette endpoint on the same uvicorn, one run.

One in-process uvicorn (the platform's settings: ``lifespan="on"``, no access
log, no server header, a socket bound by ``nexus_lab.platform.server.bind_socket``,
its own event-loop thread created like ``ServerGroup`` does) serves:

* ``/api/workflows/echo_async/execute`` - ours: ``build_api_app(app)`` with an
  ``async def`` echo agent (runs on the event loop);
* ``/api/workflows/echo_sync/execute`` - ours with a plain ``def`` agent (runs
  in a worker thread, as every sync agent does so that a slow one never blocks
  the server);
* ``/guarded/...`` - ours with auth and a (never reached) rate limit, i.e. the
  guard middleware on the path (``--guard``);
* ``/bare`` - a bare Starlette endpoint: ``await request.json()``, answer a
  ``JSONResponse`` of the same shape.

A tiny path dispatcher in front (one ``startswith``) costs the same for all.

Measures:

1. sequential latency, httpx, ``--requests`` calls per target interleaved one
   by one (so drift hits all alike): p50 / p99;
2. throughput with ``wrk`` (``--connections`` connections, ``--duration``
   seconds, a Lua script making a distinct POST body per request) when
   ``/usr/bin/wrk`` exists, else a clearly labelled multi-process httpx
   fallback (client-bound: it understates both sides).

Target (task brief): ours (async agent) >= 0.67x bare throughput; printed, never
fails the run. Loopback only.

    python benchmarks/bench_http.py                   # 5 s per wrk run, 32 connections
    python benchmarks/bench_http.py --duration 10 --guard
    python benchmarks/bench_http.py --loop uvloop     # both sides on uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET = 0.67
BODY_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%s
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{"inputs":{"query":"message number ' .. counter .. '"}}')
end
"""


# ----------------------------------------------------------------------------- server
def echo_sync(query: str) -> dict:
    return {"echo": query}


async def echo_async(query: str) -> dict:
    return {"echo": query}


def build_asgi(guard: bool):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from nexus_lab import AIAssistant, Nexus, deploy_multi_channel
    from nexus_lab.platform.http import build_api_app

    app = Nexus(api_port=0, mcp_port=0)
    deploy_multi_channel(echo_async, app, "echo_async")
    deploy_multi_channel(echo_sync, app, "echo_sync")
    deploy_multi_channel(AIAssistant(config={"llm_provider": "mock"}), app, "assistant")
    ours = build_api_app(app)

    guarded = None
    if guard:
        gapp = Nexus(
            api_port=0,
            mcp_port=0,
            enable_auth=True,
            api_keys={"bench-key": "bench"},
            rate_limit=10**9,
        )
        deploy_multi_channel(echo_async, gapp, "echo_async")
        guarded = build_api_app(gapp)

    async def bare_endpoint(request: Request) -> JSONResponse:
        data = await request.json()
        return JSONResponse(
            {
                "outputs": {"echo": data["inputs"]["query"]},
                "session_id": None,
                "execution_time_ms": 0.0,
            }
        )

    bare = Starlette(routes=[Route("/bare", bare_endpoint, methods=["POST"])])

    async def dispatch(scope, receive, send):
        path = scope.get("path", "")
        if path.startswith("/bare"):
            await bare(scope, receive, send)
        elif guarded is not None and path.startswith("/guarded"):
            scope = dict(scope, path=path[len("/guarded") :], raw_path=None)
            await guarded(scope, receive, send)
        else:
            await ours(scope, receive, send)

    return dispatch


class Server:
    """uvicorn on a background loop thread, set up like nexus_lab's ServerGroup."""

    def __init__(self, asgi, loop_kind: str, options: dict | None = None) -> None:
        import uvicorn

        from nexus_lab.platform.server import bind_socket

        self.sock = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            asgi,
            log_level="warning",
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=10,
            server_header=False,
            **(options or {}),
        )
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None
        self.loop_kind = loop_kind
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.loop_kind == "uvloop":
            import uvloop

            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        loop.close()

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


# ----------------------------------------------------------------------------- latency
def latency(url: str, targets: dict[str, tuple[str, dict]], n: int) -> dict[str, list[float]]:
    import httpx

    out: dict[str, list[float]] = {name: [] for name in targets}
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
        for i in range(n + 50):
            for name, (path, headers) in targets.items():
                body = json.dumps({"inputs": {"query": f"message number {i}"}})
                t0 = time.perf_counter()
                r = c.post(
                    path, content=body, headers={"content-type": "application/json", **headers}
                )
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    raise SystemExit(f"{name}: HTTP {r.status_code} {r.text[:200]}")
                if i >= 50:  # warm-up
                    out[name].append(dt)
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ----------------------------------------------------------------------------- throughput
def wrk_rps(
    wrk: str, url: str, headers: dict, duration: float, connections: int, threads: int
) -> tuple[float, str]:
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(BODY_LUA % extra)
        script = f.name
    try:
        proc = subprocess.run(
            [
                wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, int(round(duration)))}s",
                "-s",
                script,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=duration + 60,
        )
    finally:
        os.unlink(script)
    text = proc.stdout
    m = re.search(r"Requests/sec:\s*([\d.]+)", text)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"wrk failed:\n{proc.stdout}\n{proc.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    note = f"{bad.group(1)} non-2xx responses!" if bad else ""
    errs = re.search(r"Socket errors:.*", text)
    if errs:
        note = (note + " " + errs.group(0)).strip()
    return float(m.group(1)), note


def _client_proc(url: str, headers: dict, duration: float, threads: int, q) -> None:
    import httpx

    count = [0] * threads
    deadline = time.perf_counter() + duration

    def work(k: int) -> None:
        with httpx.Client(trust_env=False, timeout=30) as c:
            i = 0
            while time.perf_counter() < deadline:
                i += 1
                body = json.dumps({"inputs": {"query": f"message number {k}-{i}"}})
                r = c.post(
                    url, content=body, headers={"content-type": "application/json", **headers}
                )
                if r.status_code == 200:
                    count[k] += 1

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    q.put(sum(count))


def httpx_rps(url: str, headers: dict, duration: float, connections: int) -> tuple[float, str]:
    procs_n = max(1, min(os.cpu_count() or 1, connections))
    per = max(1, connections // procs_n)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_client_proc, args=(url, headers, duration, per, q))
        for _ in range(procs_n)
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    elapsed = max(duration, time.perf_counter() - t0 - 1.0)  # minus rough process start-up
    return total / elapsed, f"httpx fallback, {procs_n} processes x {per} threads"


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--duration", type=float, default=5.0, help="seconds per throughput run (default 5)"
    )
    ap.add_argument(
        "--connections", type=int, default=32, help="concurrent connections (default 32)"
    )
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument(
        "--requests", type=int, default=500, help="sequential calls per target (default 500)"
    )
    ap.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="uvloop",
        help="server event loop; ServerGroup uses uvloop when installed (default)",
    )
    ap.add_argument("--guard", action="store_true", help="also measure ours with auth + rate limit")
    ap.add_argument(
        "--no-wrk", action="store_true", help="use the httpx fallback even if wrk exists"
    )
    args = ap.parse_args(argv)
    if not (
        0 < args.duration <= 120 and 0 < args.connections <= 1024 and 0 < args.requests <= 100_000
    ):
        ap.error("keep the run bounded: duration <= 120 s, connections <= 1024, requests <= 100000")

    targets = {
        "bare": ("/bare", {}),
        "ours (async agent)": ("/api/workflows/echo_async/execute", {}),
        "ours (sync agent)": ("/api/workflows/echo_sync/execute", {}),
        "ours (AIAssistant, mock)": ("/api/workflows/assistant/execute", {}),
    }
    if args.guard:
        targets["ours+auth+limit (async)"] = (
            "/guarded/api/workflows/echo_async/execute",
            {"X-API-Key": "bench-key"},
        )

    import httpx
    import starlette
    import uvicorn

    print(
        f"python {sys.version.split()[0]}, starlette {starlette.__version__}, uvicorn {uvicorn.__version__}, "
        f"httpx {httpx.__version__}, loop={args.loop}, cpus={os.cpu_count()}"
    )
    with Server(build_asgi(args.guard), args.loop) as srv:
        print(f"\nSequential execute latency (httpx, {args.requests} calls each, interleaved)")
        lat = latency(srv.url, targets, args.requests)
        base50 = pct(lat["bare"], 0.5)
        print(f"  {'target':26} {'p50 ms':>8} {'p99 ms':>8} {'p50 vs bare':>12}")
        for name, vals in lat.items():
            p50, p99 = pct(vals, 0.5), pct(vals, 0.99)
            print(f"  {name:26} {p50 * 1e3:8.3f} {p99 * 1e3:8.3f} {p50 / base50:11.2f}x")

        wrk = shutil.which("wrk") or ("/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else None)
        if args.no_wrk or wrk is None:
            if wrk is None:
                print(
                    "\nwrk not found (apt-get install wrk): using the multi-process httpx fallback. "
                    "It is client-bound here, so absolute numbers understate both servers."
                )
            mode = "httpx fallback"
        else:
            mode = f"wrk -t{args.threads} -c{args.connections} -d{int(round(args.duration))}s, distinct bodies"
        print(f"\nThroughput ({mode})")
        rps: dict[str, float] = {}
        for name, (path, headers) in targets.items():
            if mode.startswith("wrk"):
                value, note = wrk_rps(
                    wrk, srv.url + path, headers, args.duration, args.connections, args.threads
                )
            else:
                value, note = httpx_rps(srv.url + path, headers, args.duration, args.connections)
            rps[name] = value
            print(f"  {name:26} {value:10.0f} req/s  {rps[name] / rps['bare']:5.2f}x bare  {note}")

    ratio = rps["ours (async agent)"] / rps["bare"]
    verdict = "met" if ratio >= TARGET else "MISSED"
    print(f"\nTarget: ours (async agent) >= {TARGET}x bare throughput -> {ratio:.2f}x, {verdict}")
    sync_ratio = rps["ours (sync agent)"] / rps["bare"]
    assistant_ratio = rps["ours (AIAssistant, mock)"] / rps["bare"]
    print(f"        ours (AIAssistant, awaited via aprocess): {assistant_ratio:.2f}x bare, "
          f"{'met' if assistant_ratio >= TARGET else 'MISSED'}")
    print(
        f"        ours (plain sync agent, worker-thread hop per call): {sync_ratio:.2f}x bare (informative)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
