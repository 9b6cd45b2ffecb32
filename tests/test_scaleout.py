"""Scale-out (issue 9) with real processes: workers, hosts behind nginx, Redis faults.

Every test starts its own ``redis-server``, ``nexus serve`` hosts and ``nginx``
on free loopback ports (``tests/_procs.py``) and stops them at teardown, also
when it fails. The app is ``tests/_procs.py:scale_app``: API-key auth, a rate
limit, monitoring; ``echo`` with sessions and ``whoami`` without, both
answering with the pid of the process that ran them.

Nothing here sleeps to synchronise: tests wait for lines processes print, for
PING, for a count of acknowledged requests, each with a deadline. The one
deadline the issue states - service is back within 5 s of Redis answering
again - is asserted as such.

Skipped with the reason when ``redis-server`` or ``nginx`` is missing, unless
``NEXUS_REQUIRE_REDIS=1`` / ``NEXUS_REQUIRE_NGINX=1`` (CI sets both) turn the
absence into a failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _procs import (
    API_KEY,
    NGINX_TEMPLATE,
    RATE_ENV,
    SCALE_APP,
    NexusServe,
    NginxProcess,
    RedisProcess,
    find_binary,
    nexus_env,
    run_nexus,
)

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
ECHO = "/api/workflows/echo/execute"
WHOAMI = "/api/workflows/whoami/execute"
#: a rate limit that never refuses in the tests that are not about it (still checked per call)
UNLIMITED = 10**7
#: service must be back this soon after Redis answers again (the issue's figure)
RECOVERY_S = 5.0


# ----------------------------------------------------------------------------- requirements
def _binary(name: str, package: str, env: str) -> str:
    path = find_binary(name)
    if path:
        return path
    if os.environ.get(env) == "1":
        pytest.fail(f"{name} is required ({env}=1) but not installed: apt-get install {package}")
    pytest.skip(f"{name} is not installed (apt-get install {package}; scripts/system-deps.sh "
                f"does it as root); {env}=1 makes this a failure")


@pytest.fixture(scope="session")
def redis_bin() -> str:
    return _binary("redis-server", "redis-server", "NEXUS_REQUIRE_REDIS")


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    return _binary("nginx", "nginx", "NEXUS_REQUIRE_NGINX")


@pytest.fixture(scope="session")
def redis_store() -> None:
    """The Redis session store (``--sessions redis://``) is part of this tree."""
    if importlib.util.find_spec("nexus_lab.sessions.stores.redis") is not None:
        return
    reason = "the Redis session store (nexus_lab/sessions/stores/redis.py) is not in this tree"
    if os.environ.get("NEXUS_REQUIRE_REDIS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def procs() -> Iterator[contextlib.ExitStack]:
    """Every process a test starts is entered here: all are stopped at teardown, in
    reverse order, also when the test fails; their output is printed (shown on failure)."""
    started: list[Any] = []

    class Stack(contextlib.ExitStack):
        def add(self, proc: Any) -> Any:
            started.append(proc)
            return self.enter_context(proc)

    with Stack() as stack:
        try:
            yield stack
        finally:
            for proc in started:
                if proc.proc is not None:
                    print(proc.output())


# ----------------------------------------------------------------------------- clients
def client(url: str, key: str = API_KEY, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                        timeout=30.0, trust_env=False, **kwargs)


def error_type(resp: httpx.Response) -> str | None:
    try:
        return resp.json()["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


def session_state(url: str, sid: str) -> dict:
    with client(url) as c:
        resp = c.get(f"/api/sessions/{sid}")
    assert resp.status_code == 200, resp.text
    return resp.json()["state"]


def new_session(url: str) -> str:
    with client(url) as c:
        resp = c.post("/api/sessions", json={})
    assert resp.status_code == 201, resp.text
    return resp.json()["session_id"]


def poll(check: Callable[[], Any], within: float, what: str, interval: float = 0.02) -> Any:
    """``check()`` until it returns something truthy, at most ``within`` seconds.

    A condition polled at a short interval (each check is one request), with a deadline;
    raises AssertionError with the last value when the deadline passes."""
    deadline = time.monotonic() + within
    pause = threading.Event()
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {within} s (last: {last!r})")
        pause.wait(interval)


# ----------------------------------------------------------------------------- loads
@dataclass
class Rec:
    """One request of a load: when it ran, what it asked, what came back."""

    worker: int
    query: str
    t0: float
    t1: float
    status: int | None  # None: no HTTP answer at all
    kind: str | None  # the JSON error type, or the transport error's class
    pid: int | None = None


class SessionLoad:
    """``len(sessions)`` threads, each continuing its own session through ``url`` in a closed
    loop (at most ``max_requests`` each) until :meth:`stop`; every request is recorded."""

    def __init__(self, url: str, sessions: list[str], *, max_requests: int = 5000) -> None:
        self.url = url
        self.sessions = sessions
        self.max_requests = max_requests
        self.records: list[Rec] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(len(sessions))]

    def _run(self, i: int) -> None:
        sid = self.sessions[i]
        with client(self.url) as c:
            for n in range(self.max_requests):
                if self._stop.is_set():
                    break
                query = f"w{i}-{n}"
                t0 = time.monotonic()
                pid = None
                try:
                    resp = c.post(ECHO, json={"inputs": {"query": query}, "session_id": sid})
                    status, kind = resp.status_code, error_type(resp)
                    if status == 200:
                        pid = resp.json()["outputs"]["pid"]
                except httpx.HTTPError as exc:
                    status, kind = None, type(exc).__name__
                rec = Rec(i, query, t0, time.monotonic(), status, kind, pid)
                with self._cond:
                    self.records.append(rec)
                    self._cond.notify_all()

    def __enter__(self) -> SessionLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not finish"

    def wait_for(self, predicate: Callable[[list[Rec]], bool], within: float, what: str) -> None:
        deadline = time.monotonic() + within
        with self._cond:
            while not predicate(self.records):
                left = deadline - time.monotonic()
                if left <= 0 or not any(t.is_alive() for t in self._threads):
                    raise AssertionError(f"load: {what} not seen within {within} s; "
                                         f"{len(self.records)} requests so far")
                self._cond.wait(left)

    def of(self, i: int) -> list[Rec]:
        with self._cond:
            return [r for r in self.records if r.worker == i]


def check_session_whole(state: dict, recs: list[Rec]) -> None:
    """The session holds every acknowledged update of ``recs`` (issued in order by one
    client) and is consistent: a refused request wrote all of itself or nothing."""
    acked = [r for r in recs if r.status == 200]
    failed = [r for r in recs if r.status != 200]
    turns = state.get("turns", 0)
    # every acknowledged update is counted; an unacknowledged one at most once
    assert len(acked) <= turns <= len(acked) + len(failed), (turns, len(acked), len(failed))
    if not turns:
        return
    history = state["history"]
    assert len(history) == min(turns, 8), (turns, history)
    assert history[-1]["query"] == state["last_query"] == history[-1]["response"]
    issued = [r.query for r in recs]
    order = [issued.index(h["query"]) for h in history]
    assert order == sorted(order) and len(set(order)) == len(order), history
    # within the window the history covers, every acknowledged update is there
    window = {h["query"] for h in history}
    assert all(r.query in window for r in acked if issued.index(r.query) >= order[0]), history


# ----------------------------------------------------------------------------- a cluster
def start_hosts(procs: contextlib.ExitStack, n: int, redis: RedisProcess, *,
                rate_limit: int | None = UNLIMITED, shared_limit: bool = True) -> list[NexusServe]:
    """``n`` single-worker hosts on ``redis`` (sessions, and the rate limit when shared)."""
    hosts = [procs.add(NexusServe(
        sessions=redis.url, rate_limit=rate_limit,
        rate_limit_store=redis.url if rate_limit and shared_limit else None)) for _ in range(n)]
    for h in hosts:
        h.launch()
    for h in hosts:
        h.ready()
    return hosts


def start_nginx(procs: contextlib.ExitStack, hosts: list[NexusServe], binary: str) -> NginxProcess:
    lb = procs.add(NginxProcess([h.api_addr for h in hosts], [h.mcp_addr for h in hosts],
                                binary=binary))
    return lb.start()


def call_whoami(c: httpx.Client, url: str, channel: str) -> tuple[int, str | None, int | None]:
    """``whoami`` once over the API or MCP (a bare stateless ``tools/call``: one HTTP
    request, so one rate-limit token, on a connection any worker may have accepted)."""
    if channel == "api":
        resp = c.post(url + WHOAMI, json={"inputs": {}})
        body = resp.json()
        pid = body["outputs"]["pid"] if resp.status_code == 200 else None
        return resp.status_code, error_type(resp), pid
    resp = c.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                             "params": {"name": "whoami", "arguments": {}}},
                  headers={"Accept": "application/json, text/event-stream"})
    body = resp.json()
    if resp.status_code == 200:
        result = body["result"]
        assert not result.get("isError"), result
        return 200, None, result["structuredContent"]["outputs"]["pid"]
    return resp.status_code, error_type(resp), None


def burst(targets: list[tuple[str, str]], total: int, concurrency: int, *, key: str = API_KEY,
          fresh_connections: bool = False) -> tuple[list[Rec], float]:
    """``total`` ``whoami`` calls from ``concurrency`` threads, the n-th to
    ``targets[n % len(targets)]`` (``(url, "api" | "mcp")``); the records (``query`` is the
    channel) and the seconds from before the first request to after the last answer."""
    records: list[Rec] = []
    lock = threading.Lock()
    next_index = iter(range(total))
    extra = {"Connection": "close"} if fresh_connections else {}

    def run(worker: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}", **extra}, timeout=30.0,
                          trust_env=False) as c:
            while True:
                with lock:
                    n = next(next_index, None)
                if n is None:
                    return
                url, channel = targets[n % len(targets)]
                t0 = time.monotonic()
                status, kind, pid = call_whoami(c, url, channel)
                rec = Rec(worker, channel, t0, time.monotonic(), status, kind, pid)
                with lock:
                    records.append(rec)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), "a burst thread did not finish"
    return records, elapsed


def assert_exact_rate_limit(records: list[Rec], elapsed: float, limit: int) -> list[Rec]:
    """A token bucket of ``limit``/min (burst ``limit``) refilling ``limit``/60 per second
    allows between ``limit`` and ``limit + floor(elapsed * limit / 60)`` of more requests
    than that; the rest are 429 ``rate_limited``. Returns the allowed ones."""
    assert len(records) > limit
    allowed = [r for r in records if r.status == 200]
    refused = [r for r in records if r.status != 200]
    assert {(r.status, r.kind) for r in refused} <= {(429, "rate_limited")}, \
        {(r.status, r.kind) for r in refused}
    bound = limit + math.floor(elapsed * limit / 60)
    assert limit <= len(allowed) <= bound, (len(allowed), limit, bound, elapsed)
    return allowed


# ============================================================================= workers
def test_workers_without_a_shared_store_are_refused_with_the_reason(tmp_path):
    env = nexus_env(**{RATE_ENV: "100"})
    proc = run_nexus("serve", SCALE_APP, "--workers", "2", "--api-port", "0", "--mcp-port", "0",
                     env=env)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --workers 2 needs state shared by every worker"), proc.stderr
    assert "--sessions redis://" in line and "--rate-limit-store redis://" in line, line
    assert "Traceback" not in proc.stderr and "API:" not in proc.stdout
    # sessions shared (SQLite, one host) but the rate limit still per process: only that
    db = f"sqlite:///{tmp_path}/s.db"
    proc = run_nexus("serve", SCALE_APP, "--workers", "2", "--sessions", db,
                     "--api-port", "0", "--mcp-port", "0", env=env)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    line = proc.stderr.strip().splitlines()[-1]
    assert "rate limit would be counted per worker" in line and "--sessions" not in line, line


def test_nexus_serve_tunes_the_garbage_collector_of_the_serving_process(procs):
    """``nexus serve`` freezes what loading the app built and collects the young generation
    less often (server.tune_gc_for_serving); the call runs in the serving process."""
    host = procs.add(NexusServe()).start()
    with client(host.api_url) as c:
        r = c.post(WHOAMI, json={"inputs": {}})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    assert out["pid"] == host.pid
    assert out["gc_threshold"] >= 7000 and out["gc_frozen"] > 0, out


@pytest.mark.redis
def test_two_workers_serve_api_and_mcp_from_two_pids_with_one_exact_rate_limit(
        procs, redis_bin, redis_store):
    limit = 60
    redis = procs.add(RedisProcess(binary=redis_bin)).start()
    host = procs.add(NexusServe(workers=2, sessions=redis.url, rate_limit_store=redis.url,
                                rate_limit=limit)).start()
    assert len(set(host.worker_pids)) == 2 and host.pid not in host.worker_pids

    # API and MCP calls in turn, a new connection each, so the kernel hands them to either
    # worker: one bucket for the principal, whichever worker and channel takes the token
    targets = [(host.api_url, "api"), (host.mcp_url, "mcp")]
    records, elapsed = burst(targets, limit + 40, 8, fresh_connections=True)
    allowed = assert_exact_rate_limit(records, elapsed, limit)
    for channel in ("api", "mcp"):
        pids = {r.pid for r in allowed if r.query == channel}
        assert pids == set(host.worker_pids), f"{channel}: one worker answered everything"


# ============================================================================= two hosts
@pytest.mark.redis
def test_two_hosts_behind_nginx_share_sessions_and_lose_no_concurrent_update(
        procs, redis_bin, nginx_bin, redis_store):
    redis = procs.add(RedisProcess(binary=redis_bin)).start()
    a, b = start_hosts(procs, 2, redis)
    lb = start_nginx(procs, [a, b], nginx_bin)

    # a session created through one host is continued through the other, and over MCP via nginx
    sid = new_session(a.api_url)
    with client(a.api_url) as ca, client(b.api_url) as cb:
        r1 = ca.post(ECHO, json={"inputs": {"query": "first, on A"}, "session_id": sid})
        r2 = cb.post(ECHO, json={"inputs": {"query": "then on B"}, "session_id": sid})
    assert (r1.status_code, r2.status_code) == (200, 200), (r1.text, r2.text)
    assert (r1.json()["outputs"]["pid"], r2.json()["outputs"]["pid"]) == (a.pid, b.pid)
    from nexus_lab import NexusClient

    with NexusClient(lb.api_url, api_key=API_KEY, mcp_url=lb.mcp_url) as nc:
        nc.run("echo", {"query": "and over MCP"}, session_id=sid, channel="mcp")
    state = session_state(lb.api_url, sid)
    assert state["turns"] == 3
    assert [h["query"] for h in state["history"]] == ["first, on A", "then on B", "and over MCP"]
    assert [h["channel"] for h in state["history"]] == ["api", "api", "mcp"]

    # nginx: round robin over both hosts on one client connection
    with client(lb.api_url) as c:
        pids = [c.post(WHOAMI, json={"inputs": {}}).json()["outputs"]["pid"] for _ in range(6)]
    assert set(pids) == {a.pid, b.pid}, pids

    # 2 x 8 concurrent updaters of one session (8 on each host): no update lost
    per_thread = 12
    sid = new_session(lb.api_url)
    failures: list[str] = []

    def updater(url: str, w: int) -> None:
        with client(url) as c:
            for n in range(per_thread):
                resp = c.post(ECHO, json={"inputs": {"query": f"u{w}-{n}"}, "session_id": sid})
                if resp.status_code != 200:
                    failures.append(f"{resp.status_code} {resp.text[:200]}")

    threads = [threading.Thread(target=updater, args=(h.api_url, i * 2 + j), daemon=True)
               for i in range(8) for j, h in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:5]
    state = session_state(lb.api_url, sid)
    assert state["turns"] == 16 * per_thread
    # each updater's own turns appear in its order in the history
    seen = [h["query"] for h in state["history"]]
    for w in range(16):
        mine = [int(q.split("-")[1]) for q in seen if q.startswith(f"u{w}-")]
        assert mine == sorted(mine), seen


@pytest.mark.redis
def test_rate_limit_is_exact_across_two_hosts_behind_nginx(procs, redis_bin, nginx_bin,
                                                           redis_store):
    limit = 40
    redis = procs.add(RedisProcess(binary=redis_bin)).start()
    a, b = start_hosts(procs, 2, redis, rate_limit=limit)
    lb = start_nginx(procs, [a, b], nginx_bin)
    records, elapsed = burst([(lb.api_url, "api"), (lb.mcp_url, "mcp")], limit + 40, 8)
    allowed = assert_exact_rate_limit(records, elapsed, limit)
    for channel in ("api", "mcp"):
        assert {r.pid for r in allowed if r.query == channel} == {a.pid, b.pid}, channel


@pytest.mark.redis
def test_kill_9_of_one_host_under_load_fails_over_and_loses_no_acknowledged_update(
        procs, redis_bin, nginx_bin, redis_store):
    redis = procs.add(RedisProcess(binary=redis_bin)).start()
    a, b = start_hosts(procs, 2, redis)
    lb = start_nginx(procs, [a, b], nginx_bin)
    clients = 8
    sessions = [new_session(lb.api_url) for _ in range(clients)]
    with SessionLoad(lb.api_url, sessions) as load:
        # under way, both hosts answering
        load.wait_for(lambda rs: {r.pid for r in rs if r.status == 200} == {a.pid, b.pid}
                      and len(rs) >= 80, 60, "both hosts answering")
        k0 = time.monotonic()
        a.kill()
        k1 = time.monotonic()
        # then a good run of requests that all started after the kill
        load.wait_for(lambda rs: sum(1 for r in rs if r.t0 > k1 and r.status == 200) >= 160,
                      60, "160 acknowledged requests after the kill")
    records = load.records
    in_flight = [r for r in records if r.t0 < k1 and r.t1 > k0]
    failed = [r for r in records if r.status != 200]
    print(f"kill -9: {len(records)} requests, {len(in_flight)} in flight at the kill, "
          f"{len(failed)} failed")
    # clients see at most the requests in flight on the killed host fail (nginx answers 502)
    assert all(r in in_flight for r in failed), [(r.t0 - k0, r.t1 - k0, r.status) for r in failed]
    assert len(failed) <= clients
    assert {r.status for r in failed} <= {502}, {(r.status, r.kind) for r in failed}
    assert {r.pid for r in records if r.t0 > k1 and r.status == 200} == {b.pid}
    # every acknowledged update is in its session, and nothing is half-written
    for i, sid in enumerate(sessions):
        check_session_whole(session_state(b.api_url, sid), load.of(i))


# ============================================================================= Redis faults
@pytest.mark.redis
def test_redis_going_away_answers_503_says_degraded_and_recovers_by_itself(
        procs, redis_bin, redis_store):
    ipywidgets = pytest.importorskip("ipywidgets")  # noqa: F841  (the channel widget)
    import _procs

    from nexus_lab import Nexus, NexusClient, NexusSessionManager, deploy_with_sessions
    from nexus_lab.errors import ServiceUnavailable
    from nexus_lab.jupyter.widgets import ChannelStatus

    # appendfsync always: the crash below then loses nothing acknowledged, however busy the
    # disk (everysec may hold a write back for up to 2 s then: see the persistence tests)
    redis = procs.add(RedisProcess(binary=redis_bin, appendfsync="always")).start()
    # `full`: sessions and the rate limit in Redis; `sess`: sessions only (no rate limit)
    full = procs.add(NexusServe(sessions=redis.url, rate_limit_store=redis.url,
                                rate_limit=UNLIMITED)).launch()
    sess = procs.add(NexusServe(sessions=redis.url)).launch()
    full.ready()
    sess.ready()
    # in-process: the same platform as a notebook holds it, with the channel widget
    local = Nexus(auto_discovery=False, api_port=0, mcp_port=0, rate_limit=UNLIMITED,
                  rate_limit_store=redis.url)
    manager = NexusSessionManager(cleanup_interval=300, session_ttl=3600, store=redis.url)
    deploy_with_sessions(_procs.echo, local, "echo", manager)
    widget = ChannelStatus(local, auto_refresh=False)
    try:
        local.start(block=False)  # serving, as in a notebook after %nexus start
        assert local.health_check()["status"] == "healthy"
        sid = new_session(full.api_url)
        with client(full.api_url) as c:
            for n in range(3):
                assert c.post(ECHO, json={"inputs": {"query": f"before {n}"},
                                          "session_id": sid}).status_code == 200
        local_sid = manager.create_session("nb").session_id
        loads = [new_session(sess.api_url) for _ in range(4)]
        with SessionLoad(sess.api_url, loads) as load:
            load.wait_for(lambda rs: sum(r.status == 200 for r in rs) >= 40, 60, "40 updates")
            redis.kill()  # Redis goes away (a crash; its AOF has what it acknowledged)
            down = time.monotonic()
            load.wait_for(lambda rs: sum(r.t0 > down for r in rs) >= 20, 60,
                          "20 requests while Redis is down")

            # --- while Redis is down --------------------------------------------------
            with client(full.api_url) as c:
                for body in ({"inputs": {"query": "x"}, "session_id": sid},
                             {"inputs": {"query": "new session"}}):
                    resp = c.post(ECHO, json=body)
                    assert resp.status_code == 503, resp.text
                    assert error_type(resp) == "service_unavailable", resp.text
                    assert "Redis" in resp.json()["error"]["message"], resp.text
                # the shared rate limit is needed by every guarded call
                resp = c.post(WHOAMI, json={"inputs": {}})
                assert (resp.status_code, error_type(resp)) == (503, "service_unavailable")
                assert c.get(f"/api/sessions/{sid}").status_code == 503
                health = c.get("/health").json()
            assert health["status"] == "degraded", health
            assert health.get("problems"), health
            with client(sess.api_url) as c:
                # sessions only: a call without a session still works, one with it is refused
                assert c.post(WHOAMI, json={"inputs": {}}).status_code == 200
                resp = c.post(ECHO, json={"inputs": {"query": "x"}, "session_id": sid})
                assert (resp.status_code, error_type(resp)) == (503, "service_unavailable")
                assert c.get("/health").json()["status"] == "degraded"
            with NexusClient(full.api_url, api_key=API_KEY, mcp_url=full.mcp_url) as nc:
                with pytest.raises(ServiceUnavailable, match="Redis"):  # an MCP tool error
                    nc.run("echo", {"query": "x"}, session_id=sid, channel="mcp")
            with NexusClient(sess.api_url, api_key=API_KEY, mcp_url=sess.mcp_url) as nc:
                with pytest.raises(ServiceUnavailable, match="Redis"):
                    nc.run("echo", {"query": "x"}, session_id=sid, channel="mcp")
            cli = run_nexus("run", "echo", "-q", "x", "--session", sid, "--url", full.api_url,
                            "--api-key", API_KEY)  # checked at the end, with the widget
            health = local.health_check()
            assert health["status"] == "degraded" and len(health["problems"]) == 2, health
            with pytest.raises(ServiceUnavailable):
                local.invoke("echo", {"query": "x"}, session_id=local_sid)
            widget.refresh()
            degraded_view, degraded_states = widget.view.value, dict(widget.states)

            # --- Redis returns (same port, same data) ------------------------------------
            redis.start()
            back = time.monotonic()
            load.wait_for(lambda rs: any(r.t0 > back and r.status == 200 for r in rs),
                          RECOVERY_S, "an update acknowledged after Redis returned")
            first = min(r.t1 for r in load.records if r.t0 > back and r.status == 200)
            print(f"sessions served again {first - back:.3f} s after Redis answered PING")
            with client(full.api_url) as c:
                poll(lambda: c.post(ECHO, json={"inputs": {"query": "after"},
                                                "session_id": sid}).status_code == 200,
                     back + RECOVERY_S - time.monotonic(), "the full host serving again")
            load.wait_for(lambda rs: sum(r.t0 > back and r.status == 200 for r in rs) >= 40,
                          60, "40 updates after Redis returned")

        # refused calls were 503 JSON, never anything else
        assert {(r.status, r.kind) for r in load.records if r.status != 200} <= {
            (503, "service_unavailable")}
        assert any(r.status == 503 for r in load.records)
        for i, lsid in enumerate(loads):
            check_session_whole(session_state(sess.api_url, lsid), load.of(i))
        state = session_state(full.api_url, sid)
        assert state["turns"] == 4 and state["last_query"] == "after", state
        with client(full.api_url) as c:
            assert c.get("/health").json()["status"] == "healthy"
        assert local.health_check()["status"] == "healthy"
        assert local.invoke("echo", {"query": "y"}, session_id=local_sid)
        widget.refresh()
        # the CLI: exit 1 with the server's message, one line
        assert cli.returncode == 1, (cli.returncode, cli.stdout, cli.stderr)
        assert cli.stdout == "" and "Traceback" not in cli.stderr
        assert cli.stderr.startswith("error: ") and "Redis" in cli.stderr, cli.stderr
        # the channel widget said so while Redis was down (and no longer does)
        assert "degraded" in degraded_view, (
            f"the channel widget showed no 'degraded' while Redis was down: {degraded_states}")
        assert "degraded" not in widget.view.value
    finally:
        widget.close()
        local.close()
        manager.close()


@pytest.mark.redis
def test_a_hung_redis_does_not_stall_calls_that_do_not_need_it(procs, redis_bin, redis_store):
    """Redis hangs (SIGSTOP: connections accepted, nothing answers): ``/health`` waits for its
    pings to time out, and meanwhile the host keeps answering calls that need no Redis."""
    redis = procs.add(RedisProcess(binary=redis_bin)).start()
    (host,) = start_hosts(procs, 1, redis, rate_limit=None)  # sessions in Redis, no rate limit
    hostport = host.api_addr
    with client(host.api_url) as c, socket.create_connection(hostport.rsplit(":", 1)) as raw:
        assert c.post(WHOAMI, json={"inputs": {}}).status_code == 200  # connection open
        redis.pause()
        # /health is in the host's hands before the first call below is sent
        raw.sendall(f"GET /health HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
                    .encode())
        answered = 0
        # whoami needs no session: count the answers that come while /health has none yet
        while not select.select([raw], [], [], 0)[0] and answered < 200:
            assert c.post(WHOAMI, json={"inputs": {}}).status_code == 200
            answered += 1
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    redis.resume()
    health = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    print(f"{answered} calls answered while /health waited on the hung Redis")
    assert health["status"] == "degraded", health
    assert answered >= 20, (
        f"only {answered} calls that need no Redis were answered while /health waited on the "
        "hung Redis: the health check blocks the host's event loop")


@pytest.mark.parametrize(
    "mode", ["aof-always-kill-9", "aof-everysec-kill-9", "aof-everysec-restart", "rdb-restart"])
@pytest.mark.redis
def test_sessions_survive_a_redis_restart_with_its_data(procs, redis_bin, redis_store, mode):
    redis = procs.add(RedisProcess(
        binary=redis_bin, appendonly=mode.startswith("aof"),
        appendfsync="always" if "always" in mode else "everysec",
        save="" if mode.startswith("aof") else "3600 1 300 100 60 10000")).start()
    (host,) = start_hosts(procs, 1, redis)
    sids = [new_session(host.api_url) for _ in range(5)]
    with client(host.api_url) as c:
        for sid in sids:
            for n in range(3):
                assert c.post(ECHO, json={"inputs": {"query": f"q{n}"},
                                          "session_id": sid}).status_code == 200
    if mode == "aof-everysec-kill-9":
        # everysec writes the AOF before replying, except while an fsync of the previous
        # second is still running (a busy disk): then Redis holds the write back for up to
        # 2 s. Wait for the condition "nothing held back", so the crash below tests what
        # the guide promises for that case (a Redis crash loses nothing written)
        poll(lambda: redis.info()["aof_buffer_length"] == "0", 10, "the AOF buffer written")
    if mode.endswith("kill-9"):
        redis.kill()
        redis.start()
    else:
        redis.restart()  # clean shutdown: the AOF fsynced, or the RDB written
    with client(host.api_url) as c:
        poll(lambda: c.get(f"/api/sessions/{sids[0]}").status_code == 200,
             RECOVERY_S, "the host reading sessions again")
        for sid in sids:
            resp = c.post(ECHO, json={"inputs": {"query": "after"}, "session_id": sid})
            assert resp.status_code == 200, resp.text
    for sid in sids:
        state = session_state(host.api_url, sid)
        assert state["turns"] == 4 and [h["query"] for h in state["history"]] == [
            "q0", "q1", "q2", "after"], state


@pytest.mark.redis
def test_rdb_only_loses_what_came_after_the_last_snapshot_on_a_crash(procs, redis_bin,
                                                                    redis_store):
    """What docs/operations.md says RDB loses on a crash, shown."""
    import redis as redis_py

    redis = procs.add(RedisProcess(binary=redis_bin, appendonly=False,
                                   save="3600 1 300 100 60 10000")).start()
    (host,) = start_hosts(procs, 1, redis)
    kept = new_session(host.api_url)
    with redis_py.Redis.from_url(redis.url) as r:
        r.save()  # a snapshot, as the save points would take one
    lost = new_session(host.api_url)
    redis.kill()
    redis.start()
    with client(host.api_url) as c:
        poll(lambda: c.get(f"/api/sessions/{kept}").status_code == 200,
             RECOVERY_S, "the session from before the snapshot")
        resp = c.get(f"/api/sessions/{lost}")
        assert (resp.status_code, error_type(resp)) == (404, "session_not_found"), resp.text


# ============================================================================= the guide
def test_the_operations_guide_shows_the_nginx_config_the_tests_run():
    guide = (REPO / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", guide, re.S)
    assert NGINX_TEMPLATE.read_text() in blocks, "docs/operations.md must show tests/nginx.conf.template as is"
