"""Scale-out throughput: the production configuration on 1 and N workers, SQLite vs Redis.

Every server is a real process on a free loopback port (``tests/_procs.py``), and ``wrk``
(``-t1``, ``--connections``, a distinct body per request) loads one at a time:

* ``bare``           - a bare Starlette endpoint (``await request.json()``, a JSONResponse of
                       the execute response's shape) on uvicorn with uvloop/httptools, in its
                       own process: the reference of the ratio;
* ``sqlite x1``      - ``nexus serve tests/_procs.py:scale_app --sessions sqlite:///...``:
                       API-key auth, a rate limit (10^9/min, checked on every call but never
                       refusing, in-process), monitoring, an async echo agent with sessions;
                       every request continues one of 64 sessions (read + write);
* ``redis x1``       - the same with ``--sessions redis://... --rate-limit-store redis://...``
                       (a redis-server started here, AOF everysec);
* ``redis xN+nginx`` - ``--workers N`` of that, behind nginx (``tests/nginx.conf.template``,
                       keep-alive to the upstream).

Rounds are interleaved (bare, sqlite, redis, nginx, bare, ...) so drift hits all alike;
req/s and the ratio are medians over rounds, p50/p99 the median of wrk's per-round figures,
errors the sum of non-2xx answers and socket errors (must be 0). RSS is each worker's
``VmRSS`` after start-up (sessions created) and after the last round.

Target (issue 9): ``redis x1`` >= 0.3x ``bare``. Printed, never fails the run. Loopback only,
bounded in time (a few seconds per configuration and round).

    python benchmarks/bench_scale.py                         # 2 rounds x 3 s, 32 connections, N=2
    python benchmarks/bench_scale.py --rounds 3 --duration 4 --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _procs  # noqa: E402  (tests/_procs.py: the processes the scale-out tests use)
from _procs import API_KEY, NexusServe, NginxProcess, RedisProcess, find_binary, rss_kib  # noqa: E402

POOL = 64
RATE = 10**9
TARGET = 0.3
EXECUTE = "/api/workflows/echo/execute"

# the same wrk scripts as bench_http_prod.py: a session per call from a pool, and the bare body
from bench_http_prod import BARE_LUA, LUA, wrk  # noqa: E402


# ----------------------------------------------------------------------------- the bare server
def serve_bare() -> int:
    """``--serve-bare``: the reference endpoint, served as ServerGroup serves the platform."""
    import asyncio

    import uvicorn
    import uvloop
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from nexus_lab.platform.server import bind_socket

    async def bare(request: Request) -> JSONResponse:
        data = await request.json()
        return JSONResponse({"outputs": {"response": data["inputs"]["query"]},
                             "session_id": None, "execution_time_ms": 0.0})

    app = Starlette(routes=[Route("/bare", bare, methods=["POST"])])
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           lifespan="on", server_header=False))

    # bound and listening already: connections made before uvicorn accepts wait in the backlog
    print(f"API: http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    return 0


class BareServe(_procs.ChildProcess):
    """``bench_scale.py --serve-bare`` as a process, ready once it prints its URL."""

    name = "bare starlette"

    def start(self, timeout: float = 60.0) -> BareServe:
        self._spawn([sys.executable, __file__, "--serve-bare"], env=_procs.nexus_env(), cwd=REPO)
        self.api_url = self._wait_line(self.out, r"^API: (\S+)", time.monotonic() + timeout).group(1)
        self.worker_pids = [self.pid]
        return self


def create_sessions(url: str, n: int) -> list[str]:
    import httpx

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"},
                      trust_env=False, timeout=30) as c:
        out = []
        for _ in range(n):
            resp = c.post("/api/sessions", json={})
            if resp.status_code != 201:
                raise SystemExit(f"creating a session at {url} failed: {resp.status_code} {resp.text}")
            out.append(resp.json()["session_id"])
    return out


def rss_mib(pids: list[int]) -> list[float | None]:
    return [None if (k := rss_kib(p)) is None else k / 1024 for p in pids]


def _fmt_rss(before: list[float | None], after: list[float | None]) -> str:
    def f(v: float | None) -> str:
        return "gone" if v is None else f"{v:.0f}"

    return ", ".join(f"{f(b)}->{f(a)}" for b, a in zip(before, after, strict=True))


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run (default 3)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--workers", type=int, default=2, help="N of the nginx configuration (default 2)")
    ap.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_bare:
        return serve_bare()
    if not (0 < args.duration <= 30 and 0 < args.rounds <= 10 and 0 < args.connections <= 256
            and 1 <= args.workers <= 16):
        ap.error("keep the run bounded: duration <= 30 s, rounds <= 10, connections <= 256, "
                 "workers <= 16")
    binary = shutil.which("wrk")
    if binary is None:
        print("wrk not found (apt-get install wrk): this benchmark needs it")
        return 0
    have_redis = find_binary("redis-server") is not None
    have_nginx = find_binary("nginx") is not None
    if not have_redis:
        print("redis-server not found (apt-get install redis-server): the Redis rows are left out")
    elif not have_nginx:
        print("nginx not found (apt-get install nginx): the nginx row is left out")

    servers: dict[str, object] = {}
    closers: list[object] = []
    tmp = tempfile.mkdtemp(prefix="nexus-bench-scale-")
    try:
        servers["bare"] = BareServe()
        closers.append(servers["bare"])
        sqlite_host = NexusServe(sessions=f"sqlite:///{tmp}/sessions.db", rate_limit=RATE)
        closers.append(sqlite_host)
        servers["sqlite x1"] = sqlite_host
        redis = None
        if have_redis:
            redis = RedisProcess()  # AOF everysec
            closers.append(redis)
            redis.start()
            one = NexusServe(sessions=redis.url, rate_limit_store=redis.url, rate_limit=RATE)
            closers.append(one)
            servers["redis x1"] = one
            if have_nginx:
                many = NexusServe(sessions=redis.url, rate_limit_store=redis.url, rate_limit=RATE,
                                  workers=args.workers)
                closers.append(many)
                servers[f"redis x{args.workers}+nginx"] = many
        for srv in servers.values():
            srv.launch() if isinstance(srv, NexusServe) else srv.start()
        for srv in servers.values():
            if isinstance(srv, NexusServe):
                srv.ready()
        urls = {name: srv.api_url for name, srv in servers.items()}
        pids = {name: list(srv.worker_pids) for name, srv in servers.items()}
        lb_name = f"redis x{args.workers}+nginx"
        if lb_name in servers:
            many = servers[lb_name]
            lb = NginxProcess([many.api_addr], [many.mcp_addr])
            closers.append(lb)
            lb.start()
            urls[lb_name] = lb.api_url
        scripts, paths = {}, {}
        for name, url in urls.items():
            if name == "bare":
                scripts[name], paths[name] = BARE_LUA, url + "/bare"
            else:
                pool = create_sessions(url, POOL)
                scripts[name] = LUA % {"key": API_KEY, "sessions": ",".join(f'"{s}"' for s in pool)}
                paths[name] = url + EXECUTE

        print(f"python {sys.version.split()[0]}, cpus={os.cpu_count()}, wrk -t1 "
              f"-c{args.connections} -d{round(args.duration)}s x {args.rounds} rounds, interleaved; "
              f"redis-server AOF everysec")
        print("production configuration: API-key auth + rate limit (checked, never refusing) + "
              "monitoring + a session read and written per call (pool of 64), async echo agent")
        rss_before = {name: rss_mib(p) for name, p in pids.items()}
        for name in servers:  # warm-up (JIT-free, but caches, pools, connections)
            wrk(binary, paths[name], scripts[name], 1, args.connections)
        runs: dict[str, list[dict]] = {name: [] for name in servers}
        ratios: dict[str, list[float]] = {name: [] for name in servers}
        for r in range(args.rounds):
            row = {}
            for name in servers:
                res = wrk(binary, paths[name], scripts[name], args.duration, args.connections)
                runs[name].append(res)
                row[name] = res["rps"]
                print(f"  round {r + 1} {name:16} {res['rps']:8.0f} req/s  p50 {res['p50']:.2f} ms  "
                      f"p99 {res['p99']:.2f} ms  errors {res['errors']}")
            for name in servers:
                ratios[name].append(row[name] / row["bare"])
        rss_after = {name: rss_mib(p) for name, p in pids.items()}
    finally:
        for proc in reversed(closers):
            proc.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("| configuration | req/s | x bare | p50 ms | p99 ms | errors | RSS MiB per worker, before->after |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in servers:
        rs = runs[name]
        print(f"| {name} | {statistics.median(x['rps'] for x in rs):.0f} "
              f"| {statistics.median(ratios[name]):.2f} "
              f"| {statistics.median(x['p50'] for x in rs):.2f} "
              f"| {statistics.median(x['p99'] for x in rs):.2f} "
              f"| {sum(x['errors'] for x in rs)} "
              f"| {_fmt_rss(rss_before[name], rss_after[name])} |")
    print()
    if "redis x1" in ratios:
        ratio = statistics.median(ratios["redis x1"])
        print(f"target: redis x1 >= {TARGET}x bare: {ratio:.2f}x, "
              f"{'met' if ratio >= TARGET else 'MISSED'}")
    total_errors = sum(x["errors"] for rs in runs.values() for x in rs)
    print(f"errors: {total_errors} ({'none' if not total_errors else 'SOME REQUESTS FAILED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
