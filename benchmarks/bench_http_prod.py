"""HTTP execute in the production configuration vs a bare Starlette endpoint, one run.

What is measured: requests per second that ``wrk`` (``--connections``
connections, a distinct body per request) gets from one in-process uvicorn
(uvloop, and the uvicorn options ``ServerGroup`` gives the API server:
``guard.uvicorn_options``, i.e. the guarded HTTP protocol, the connection
cap, no proxy headers) serving, behind one path dispatcher that costs the
same for all:

* ``/bare`` - a bare Starlette endpoint: ``await request.json()``, answer a
  ``JSONResponse`` of the execute response's shape;
* ``/memory/...`` - ours, ``build_api_app(app)`` where ``app`` has API-key auth
  (``Authorization: Bearer``), a rate limit (set high enough never to refuse,
  but checked on every call), monitoring, and an agent deployed with sessions
  in the memory store; every request continues one of 64 sessions (round
  robin), so every call reads and writes a session (``last_query``,
  ``history`` of 8 turns, ...). The agent is an ``async def`` echo by default,
  so the figure is the platform's cost; ``--agent assistant`` runs
  ``AIAssistant`` on the mock provider instead (its own prompt building is
  then part of the figure);
* ``/sqlite/...`` - the same with the SQLite store (a WAL file in a temp dir).

The whole call is measured: HTTP parsing, the guard, the body, validation, the
session read, the agent, the session write, encoding. Rounds are interleaved
(bare, memory, sqlite, bare, ...) so drift hits all alike; the printed ratio is
the median over ``--rounds`` of (ours / bare of the same round).

Targets (issue "production path"): memory >= 0.6x bare, SQLite >= 0.3x bare.
Printed, never fails the run. Loopback only, bounded in time.

    python benchmarks/bench_http_prod.py                    # 3 rounds x 4 s, 32 connections
    python benchmarks/bench_http_prod.py --rounds 5 --duration 5
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_http import Server  # noqa: E402  (same directory)

KEY = "bench-key-0123456789"
POOL = 64
TARGETS = {"memory": 0.6, "sqlite": 0.3}

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
local sessions = {%(sessions)s}
local counter = 0
request = function()
  counter = counter + 1
  local sid = sessions[(counter %% #sessions) + 1]
  return wrk.format(nil, nil, nil,
    '{"inputs":{"query":"message number ' .. counter .. '"},"session_id":"' .. sid .. '"}')
end
"""

BARE_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{"inputs":{"query":"message number ' .. counter .. '"}}')
end
"""


async def echo(query: str) -> dict:
    """The agent of the default run: no work of its own."""
    return {"response": query}


def build(tmp: str, agent: str):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from nexus_lab import AIAssistant, Nexus, NexusSessionManager, deploy_with_sessions
    from nexus_lab.platform.http import build_api_app

    apps, pools, closers = {}, {}, []
    for kind, store in (("memory", None), ("sqlite", f"sqlite:///{tmp}/sessions.db")):
        app = Nexus(
            api_port=0, mcp_port=0, enable_auth=True, api_keys={KEY: "bench"},
            rate_limit=10**9, enable_monitoring=True,
        )
        manager = NexusSessionManager(cleanup_interval=300, session_ttl=3600, store=store)
        target = AIAssistant(config={"llm_provider": "mock"}) if agent == "assistant" else echo
        deploy_with_sessions(target, app, "assistant", manager)
        pools[kind] = [manager.create_session("bench").session_id for _ in range(POOL)]
        apps[kind] = build_api_app(app)
        closers.append((app, manager))

    async def bare_endpoint(request: Request) -> JSONResponse:
        data = await request.json()
        return JSONResponse(
            {"outputs": {"response": data["inputs"]["query"]}, "session_id": None,
             "execution_time_ms": 0.0}
        )

    bare = Starlette(routes=[Route("/bare", bare_endpoint, methods=["POST"])])

    async def dispatch(scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/bare"):
            await bare(scope, receive, send)
            return
        kind, _, rest = path[1:].partition("/")
        scope = dict(scope, path="/" + rest, raw_path=None)
        await apps[kind](scope, receive, send)

    return dispatch, pools, closers


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(binary: str, url: str, script: str, duration: float, connections: int) -> dict:
    """One wrk run: req/s, p50/p99 in ms, errors (non-2xx + socket errors). Also used by
    bench_scale.py."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        proc = subprocess.run(
            [binary, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
             "-s", path, url],
            capture_output=True, text=True, timeout=duration + 60,
        )
    finally:
        os.unlink(path)
    out = proc.stdout
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if proc.returncode != 0 or not rps:
        raise SystemExit(f"wrk failed:\n{out}\n{proc.stderr}")
    errors = 0
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    if bad:
        errors += int(bad.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    return {"rps": float(rps.group(1)), "p50": _ms(p50.group(1)), "p99": _ms(p99.group(1)),
            "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--connections", type=int, default=32, help="connections (default 32)")
    ap.add_argument("--agent", choices=["echo", "assistant"], default="echo",
                    help="async echo (platform cost only, default) or AIAssistant on the mock provider")
    args = ap.parse_args(argv)
    if not (0 < args.duration <= 60 and 0 < args.rounds <= 20 and 0 < args.connections <= 512):
        ap.error("keep the run bounded: duration <= 60 s, rounds <= 20, connections <= 512")
    binary = shutil.which("wrk")
    if binary is None:
        print("wrk not found (apt-get install wrk): this benchmark needs it")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        asgi, pools, closers = build(tmp, args.agent)
        scripts = {
            "bare": BARE_LUA,
            **{
                kind: LUA % {"key": KEY, "sessions": ",".join(f'"{s}"' for s in pool)}
                for kind, pool in pools.items()
            },
        }
        paths = {"bare": "/bare", "memory": "/memory/api/workflows/assistant/execute",
                 "sqlite": "/sqlite/api/workflows/assistant/execute"}
        print(f"python {sys.version.split()[0]}, cpus={os.cpu_count()}, wrk -t1 "
              f"-c{args.connections} -d{round(args.duration)}s x {args.rounds} rounds, interleaved")
        print("ours = auth + rate limit + monitoring + a session per call (pool of 64), "
              f"agent: {'AIAssistant (mock provider)' if args.agent == 'assistant' else 'async echo'}")
        results: dict[str, list[float]] = {k: [] for k in scripts}
        ratios: dict[str, list[float]] = {"memory": [], "sqlite": []}
        from nexus_lab.platform.guard import uvicorn_options

        # the server as nexus serves the API: its protocol class with the connection guard,
        # its limits, no proxy headers (bare is served by the same server)
        with Server(asgi, "uvloop", uvicorn_options(closers[0][0])) as srv:
            for kind in scripts:  # warm-up
                wrk(binary, srv.url + paths[kind], scripts[kind], 1, args.connections)
            for r in range(args.rounds):
                row = {}
                for kind in scripts:
                    run = wrk(binary, srv.url + paths[kind], scripts[kind], args.duration,
                              args.connections)
                    rps = row[kind] = run["rps"]
                    results[kind].append(rps)
                    errors = f"  {run['errors']} errors!" if run["errors"] else ""
                    print(f"  round {r + 1} {kind:7} {rps:9.0f} req/s  p50 {run['p50']:.2f} ms  "
                          f"p99 {run['p99']:.2f} ms{errors}")
                for kind in ratios:
                    ratios[kind].append(row[kind] / row["bare"])
        for app, manager in closers:
            app.close()
            manager.close()

    print("\nmedian over rounds (the ratio: the median of the per-round ratios, their range beside):")
    print(f"  bare    {statistics.median(results['bare']):9.0f} req/s")
    for kind, target in TARGETS.items():
        ratio = statistics.median(ratios[kind])
        verdict = "met" if ratio >= target else "MISSED"
        spread = f"rounds {min(ratios[kind]):.2f}-{max(ratios[kind]):.2f}"
        print(f"  {kind:7} {statistics.median(results[kind]):9.0f} req/s  {ratio:.2f}x bare "
              f"({spread}; target >= {target}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
