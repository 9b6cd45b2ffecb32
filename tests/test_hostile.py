"""What a hostile or careless client does, against a real server on loopback.

Each test names the row of the hardening issue it covers. Every bad request
must get a clear 4xx JSON error (an MCP tool error, a CLI exit code) naming
the problem, and nothing may be stored for it. Servers are real (127.0.0.1,
port 0); waits are on conditions (a socket's answer, a server closing it),
never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_lab import (
    Nexus,
    NexusSessionManager,
    deploy_as_cli,
    deploy_as_mcp,
    deploy_multi_channel,
    deploy_with_sessions,
)
from nexus_lab.errors import ConfigError
from nexus_lab.platform.security import ApiKeyAuth, HTTPPolicy

JSON = {"content-type": "application/json"}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
NEXUS = Path(sys.executable).parent / "nexus"


# --------------------------------------------------------------------------- helpers
class Recorder:
    """An agent that records what it was called with (to show that nothing ran)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self._lock = threading.Lock()

    def process(self, query: str, extra: Any = None) -> dict:
        with self._lock:
            self.calls.append({"query": query, "extra": extra})
        return {"response": query}


def kwargs_agent(**inputs: Any) -> dict:
    """Takes any inputs; they all go into the session as last_query."""
    return {"response": "ok"}


def typed(n: int, x: float = 1.0, flag: bool = False) -> dict:
    return {"n": n, "x": x, "flag": flag}


def nested(levels: int, leaf: Any = 1) -> Any:
    """``levels`` nested single-element lists around ``leaf`` (built without recursion)."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def nested_text(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


def error_of(resp: httpx.Response, status: int, type_: str | None = None) -> dict:
    """The ``error`` object of a JSON error response, after checking status and shape."""
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    if type_ is not None:
        assert error["type"] == type_, error
    return error


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def raw_exchange(url: str, data: bytes, *, timeout: float = 30.0) -> bytes:
    """Send ``data`` on a new connection; return all the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server may answer and stop reading before all is sent
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def parse_raw(answer: bytes) -> tuple[int, dict[str, str], Any]:
    """``(status, headers, JSON body)`` of one raw HTTP/1.1 response."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, json.loads(body) if body else None


def mcp_call(url: str, arguments: Any, name: str = "rec", **headers: str) -> httpx.Response:
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": name, "arguments": arguments}}
    return mcp_raw(url, json.dumps(message).encode(), **headers)


def mcp_raw(url: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(url, content=body, headers={**MCP_HEADERS, **headers}, timeout=30,
                      trust_env=False)


def tool_error(resp: httpx.Response) -> dict:
    """The JSON error body of an MCP tool result that is an error."""
    assert resp.status_code == 200, resp.text[:500]
    result = resp.json()["result"]
    assert result["isError"] is True, result
    return json.loads(result["content"][0]["text"])["error"]


def mcp_refusal(resp: httpx.Response, status: int, type_: str) -> dict:
    """A refusal of the MCP HTTP front: a JSON-RPC error with the platform's error object."""
    assert resp.status_code == status, resp.text[:500]
    body = resp.json()
    assert body["jsonrpc"] == "2.0" and body["error"]["type"] == type_, body
    assert body["error"]["data"]["http_status"] == status
    return body["error"]


def nexus_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(NEXUS), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1"})


# --------------------------------------------------------------------------- 5: bare API keys
def test_bare_api_keys_are_distinct_principals_that_reveal_nothing(make_app, serve, monkeypatch):
    key_a, key_b = "teamA-9f8e7d6c5b4a", "teamB-1a2b3c4d5e6f"
    monkeypatch.setenv("NEXUS_API_KEYS", f"{key_a},{key_b}")
    auth = ApiKeyAuth.from_config(None)
    user_a, user_b = auth.principal_for(key_a), auth.principal_for(key_b)
    assert user_a != user_b
    for user in (user_a, user_b):
        for key in (key_a, key_b):  # not even 4 characters of a key
            assert not any(key[i : i + 4] in user for i in range(len(key) - 3))

    app = make_app(enable_auth=True)
    with pytest.warns(UserWarning):
        manager = NexusSessionManager(cleanup_interval=None)
    deploy_with_sessions(lambda query: {"response": query}, app, "echo", manager)
    client = serve(app)
    a = client.post("/api/workflows/echo/execute", json={"inputs": {"query": "secret of A"}},
                    headers={"Authorization": f"Bearer {key_a}"})
    assert a.status_code == 200, a.text
    sid = a.json()["session_id"]
    b = client.get(f"/api/sessions/{sid}", headers={"X-API-Key": key_b})
    assert b.status_code == 404
    listed = client.get("/api/sessions", headers={"X-API-Key": key_b}).json()
    assert listed["count"] == 0
    manager.close()


# --------------------------------------------------------------------------- 7: hung agents
class _Hang:
    """A sync agent that blocks until the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def process(self, query: str) -> dict:
        self.entered.release()
        self.release.wait(60)
        return {"response": query}


def test_a_hung_sync_agent_times_out_and_cannot_take_every_worker(make_app, serve):
    hang = _Hang()
    app = make_app(worker_threads=4, execution_timeout=30, enable_monitoring=True)
    deploy_multi_channel(hang, app, "hang", timeout=0.5)
    deploy_multi_channel(lambda query: {"response": query}, app, "plain")
    client = serve(app)
    assert app.max_concurrency == 3
    pool = app._worker_pool()
    dep = app.deployments["hang"]
    try:
        with httpx.Client(base_url=app.api_url, trust_env=False, timeout=30) as c:
            results: list[httpx.Response] = []

            def call() -> None:
                results.append(c.post("/api/workflows/hang/execute", json={"inputs": {"query": "x"}}))

            callers = [threading.Thread(target=call) for _ in range(6)]
            for t in callers:
                t.start()
            for t in callers:
                t.join(60)
        # three ran and were abandoned, three waited for a slot that never came: all 504 JSON
        assert sorted(r.status_code for r in results) == [504] * 6, [r.text for r in results]
        for r in results:
            body = r.json()["error"]
            assert body["type"] == "timeout" and "'hang'" in body["message"]
            assert "0.5 s" in body["message"]
        # the hung agent holds three threads (its max_concurrency); a plain call still gets one
        assert pool.running(dep) == 3
        plain = client.post("/api/workflows/plain/execute", json={"inputs": {"query": "hi"}})
        assert plain.status_code == 200 and plain.json()["outputs"] == {"response": "hi"}
        assert app.metrics.get_summary("workflow:hang")["errors"] == 6
        assert hang.entered._value == 3  # the waiting calls never ran
    finally:
        hang.release.set()
    # once the agent returns, its slots and threads come back
    wait = threading.Event()
    for _ in range(1000):
        if pool.running(dep) == 0 and pool._abandoned == 0:
            break
        wait.wait(0.01)
    assert pool.running(dep) == 0 and pool._abandoned == 0
    assert hang.entered._value == 3


def test_a_hung_async_agent_is_cancelled(make_app, serve):
    cancelled = threading.Event()

    async def slow(query: str) -> dict:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"response": query}

    app = make_app(execution_timeout=0.3)
    deploy_multi_channel(slow, app, "slow")
    client = serve(app)
    r = client.post("/api/workflows/slow/execute", json={"inputs": {"query": "x"}})
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "timeout"
    assert "cancelled" in r.json()["error"]["message"]
    assert cancelled.wait(10)


def test_timeout_is_a_tool_error_on_mcp(make_app):
    from mcp import Client

    async def slow(query: str) -> dict:
        await asyncio.sleep(60)
        return {}

    app = make_app(execution_timeout=0.3)
    deploy_multi_channel(slow, app, "slow")

    async def go():
        async with Client(app.mcp_url) as mcp:
            return await mcp.call_tool("slow", {"query": "x"})

    with app.running():
        result = asyncio.run(go())
    assert result.is_error
    assert "timeout of 0.3 s" in result.content[0].text


@pytest.mark.parametrize("bad", [0, -1, "5", float("inf"), True])
def test_timeouts_are_validated(make_app, bad):
    from nexus_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="execution_timeout"):
        make_app(execution_timeout=bad)
    app = make_app()
    with pytest.raises(ConfigError, match="timeout"):
        deploy_multi_channel(lambda query: {}, app, "x", timeout=bad)


# --------------------------------------------------------------------------- 11: too big for the session
@pytest.fixture
def small(make_app, serve):
    """A served deployment ``small`` whose sessions hold at most 4,096 bytes: ``(client,
    manager, sid, calls)``, ``calls`` the queries its agent ran."""
    calls: list[str] = []

    def agent(query: str) -> dict:
        calls.append(query)
        return {"response": "ok"}

    app = make_app()
    manager = NexusSessionManager(cleanup_interval=300, max_state_bytes=4096)
    deploy_with_sessions(agent, app, "small", manager)
    client = serve(app)
    yield client, manager, manager.create_session("anonymous").session_id, calls
    manager.close()


def test_a_query_that_cannot_fit_the_session_is_refused_before_the_agent_runs(small):
    client, manager, sid, calls = small
    r = client.post("/api/workflows/small/execute",
                    json={"inputs": {"query": "x" * 5000}, "session_id": sid})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "session_state_error"
    assert "max_state_bytes" in r.json()["error"]["message"]
    assert calls == []  # the agent never ran
    assert manager.get_session_state(sid) == {}  # nothing stored
    ok = client.post("/api/workflows/small/execute", json={"inputs": {"query": "hi"}, "session_id": sid})
    assert ok.status_code == 200 and calls == ["hi"]


def test_a_query_that_would_overflow_a_nearly_full_session_is_refused_before_the_agent_runs(small):
    """The room check counts what the session already holds, not only the new query."""
    client, manager, sid, calls = small
    manager.update_session_state(sid, {"notes": "n" * 3800})
    before = manager.get_session_state(sid)
    # 2 x 200 bytes of query would fit an empty session; not one holding 3,800 bytes already
    r = client.post("/api/workflows/small/execute",
                    json={"inputs": {"query": "q" * 200}, "session_id": sid})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "session_state_error"
    assert calls == []  # the agent never ran
    assert manager.get_session_state(sid) == before  # nothing stored


# --------------------------------------------------------------------------- 1: lone surrogates
@pytest.fixture
def recorded(make_app, serve):
    """A served app: ``rec`` (Recorder, sessions), ``kw`` (any inputs, sessions), ``typed``."""
    app = make_app()
    manager = NexusSessionManager(cleanup_interval=300)
    agent = Recorder()
    deploy_with_sessions(agent, app, "rec", manager)
    deploy_with_sessions(kwargs_agent, app, "kw", manager)
    deploy_multi_channel(typed, app, "typed")
    client = serve(app)
    client.app, client.agent, client.manager = app, agent, manager
    yield client
    manager.close()


SURROGATE = b"\\ud800"  # the JSON escape, as it travels: valid JSON, not valid Unicode


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/api/workflows/rec/execute", b'{"inputs": {"query": "a\\ud800b"}}', "query"),
        ("/api/workflows/rec/execute", b'{"inputs": {"query": "x", "extra": {"k": ["\\udfff"]}}}', "extra"),
        ("/api/workflows/kw/execute", b'{"inputs": {"\\ud800": "x"}}', None),  # a state key
        ("/api/sessions", b'{"user_id": "\\ud800"}', "user_id"),
        ("/api/sessions", b'{"metadata": {"\\ud800": 1}}', "metadata"),
        ("/api/sessions", b'{"metadata": {"note": "\\udc00"}}', "metadata"),
    ],
)
def test_lone_surrogates_are_refused_naming_the_field_and_store_nothing(recorded, path, body, field):
    """Row 1: 422 naming the field, nothing stored, and every listing still answers."""
    err = error_of(recorded.post(path, content=body, headers=JSON), 422, "validation_error")
    if field is not None:
        assert err["field"] == field and field in err["message"]
    else:  # the key itself is the field: named in the message, as an escape
        assert "\\ud800" in err["message"]
    assert "surrogate" in err["message"]
    assert recorded.agent.calls == []
    assert recorded.manager.list_sessions() == []  # not even a session for the call
    listing = recorded.get("/api/sessions")
    assert listing.status_code == 200 and listing.json()["count"] == 0
    assert recorded.get("/api/workflows").status_code == 200


def test_a_lone_surrogate_echoed_in_an_error_keeps_the_answer_json(recorded):
    """An unknown key that is a lone surrogate: the error names it, still as valid JSON."""
    r = recorded.post("/api/workflows/rec/execute", headers=JSON,
                      content=b'{"inputs": {"query": "x"}, "\\ud800": 1}')
    err = error_of(r, 422, "validation_error")
    assert err["field"] == "\ud800"  # written as the escape, decoded back by the client
    r = recorded.post("/api/workflows/rec/execute", headers=JSON,
                      content=b'{"inputs": {"query": "x"}, "session_id": "\\ud800"}')
    error_of(r, 404, "session_not_found")
    assert recorded.agent.calls == [] and recorded.manager.list_sessions() == []


def test_lone_surrogates_are_refused_naming_the_argument_over_mcp(recorded):
    url = recorded.app.mcp_url
    for arguments, field in [
        (b'{"query": "\\ud800"}', "query"),
        (b'{"query": "x", "extra": ["ok", "\\udbff"]}', "extra"),
        (b'{"query": "x", "session_id": "\\ud800"}', "session_id"),
    ]:
        body = (b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", '
                b'"params": {"name": "rec", "arguments": ' + arguments + b'}}')
        err = mcp_refusal(mcp_raw(url, body), 422, "validation_error")
        assert err["field"] == field and "surrogate" in err["message"]
    # an escaped surrogate *pair* (an emoji, as json.dumps writes it) is fine
    ok = mcp_raw(url, b'{"jsonrpc": "2.0", "id": 8, "method": "tools/call", '
                      b'"params": {"name": "rec", "arguments": {"query": "\\ud83d\\ude00"}}}')
    assert ok.status_code == 200 and ok.json()["result"]["isError"] is False
    assert [c["query"] for c in recorded.agent.calls] == ["\U0001f600"]
    assert len(recorded.manager.list_sessions()) == 1  # the emoji call's session, only


# --------------------------------------------------------------------------- 2: deep JSON
@pytest.mark.parametrize("levels", [1_000, 100_000])
def test_deep_json_is_400_naming_the_limit_on_the_api(recorded, levels):
    """Row 2: no RecursionError 500; the parser never sees it."""
    deep = nested_text(levels).encode()
    for path, body in [
        ("/api/workflows/rec/execute", b'{"inputs": {"query": "x", "extra": ' + deep + b"}}"),
        ("/api/sessions", b'{"metadata": {"m": ' + deep + b"}}"),
        ("/api/workflows/rec/execute", deep),  # not even an object
        ("/api/workflows/rec/execute", b"[" * levels),  # nor balanced
    ]:
        err = error_of(recorded.post(path, content=body, headers=JSON), 400, "bad_request")
        assert "max_json_depth=64" in err["message"], err
    assert recorded.agent.calls == [] and recorded.manager.list_sessions() == []


def test_json_depth_limit_is_exact_and_configurable(make_app, serve):
    app = make_app(max_json_depth=8)
    agent = Recorder()
    deploy_multi_channel(agent, app, "rec")
    c = serve(app)

    def call(levels: int) -> httpx.Response:
        # inputs -> extra -> lists: the inputs object is level 1, "extra" holds levels - 1 more
        return c.post("/api/workflows/rec/execute", json={"inputs": {"query": "x", "extra": nested(levels - 1)}})

    assert call(8).status_code == 200
    err = error_of(call(9), 400, "bad_request")
    assert "max_json_depth=8" in err["message"]
    # brackets inside strings do not nest
    ok = c.post("/api/workflows/rec/execute", json={"inputs": {"query": "[" * 500}})
    assert ok.status_code == 200
    assert len(agent.calls) == 2


def test_deep_tool_arguments_are_refused_naming_the_limit_on_mcp(recorded):
    url = recorded.app.mcp_url
    deep = nested_text(5_000).encode()
    body = (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", '
            b'"params": {"name": "rec", "arguments": {"query": "x", "extra": ' + deep + b"}}}")
    err = mcp_refusal(mcp_raw(url, body), 400, "bad_request")
    assert "max_json_depth=64" in err["message"]
    # just past the limit: the HTTP front lets the envelope through, the tool refuses it
    err = tool_error(mcp_call(url, {"query": "x", "extra": nested(64)}))
    assert err["type"] == "bad_request" and "max_json_depth=64" in err["message"]
    ok = mcp_call(url, {"query": "x", "extra": nested(63)})
    assert ok.json()["result"]["isError"] is False
    assert len(recorded.agent.calls) == 1


@pytest.mark.parametrize("bad", [0, -1, 10_000, "64", 2.5, True])
def test_max_json_depth_is_validated(make_app, bad):
    with pytest.raises(ConfigError, match="max_json_depth") as info:
        HTTPPolicy.of(make_app(max_json_depth=bad))
    assert info.value.field == "max_json_depth"


# --------------------------------------------------------------------------- 4: other sites, rebinding
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",  # what fetch() sends for a string body
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,  # a Blob without a type: no header at all
        "application/json; charset=utf-16",
    ],
)
def test_cross_site_simple_posts_are_415_and_run_nothing(recorded, content_type):
    """Row 4: a page elsewhere may POST these without a CORS preflight; the API refuses them."""
    headers = {} if content_type is None else {"content-type": content_type}
    body = b'{"inputs": {"query": "from another site"}}'
    err = error_of(recorded.post("/api/workflows/rec/execute", content=body, headers=headers), 415,
                   "unsupported_media_type")
    assert "application/json" in err["message"] or "UTF-8" in err["message"]
    error_of(recorded.post("/api/sessions", content=b'{"user_id": "victim"}', headers=headers), 415)
    r = mcp_raw(recorded.app.mcp_url, b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}',
                **{"Content-Type": content_type or ""})
    mcp_refusal(r, 415, "unsupported_media_type")
    assert recorded.agent.calls == [] and recorded.manager.list_sessions() == []
    # a bodyless POST needs no type (POST /api/sessions with no body creates one)
    assert recorded.post("/api/sessions").status_code == 201


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "", "a:b:c"])
def test_a_foreign_host_is_421_on_the_api_and_mcp(recorded, host):
    """Row 4: a rebinding DNS name reaches the loopback port; the Host header gives it away."""
    for method, path in [("POST", "/api/workflows/rec/execute"), ("GET", "/health"),
                         ("GET", "/api/sessions"), ("GET", "/openapi.json")]:
        r = recorded.request(method, path, json={"inputs": {"query": "x"}}, headers={"Host": host})
        err = error_of(r, 421, "misdirected_request")
        assert "allowed_hosts" in err["message"]
    r = mcp_call(recorded.app.mcp_url, {"query": "x"}, Host=host)
    mcp_refusal(r, 421, "misdirected_request")
    assert recorded.agent.calls == []
    # the loopback names themselves, any port
    for ok in ["localhost", f"127.0.0.1:{port_of(recorded.app.api_url)}", "[::1]:1"]:
        assert recorded.get("/health", headers={"Host": ok}).status_code == 200, ok


def test_two_host_headers_are_refused(recorded):
    answer = raw_exchange(
        recorded.app.api_url,
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    status, _, body = parse_raw(answer)
    assert status == 400 and "Host" in body["error"]["message"]


def test_a_foreign_origin_is_403_and_own_or_loopback_origins_pass(recorded):
    api, mcp = recorded.app.api_url, recorded.app.mcp_url
    body = {"inputs": {"query": "x"}}
    for origin in ["http://evil.example", "https://127.0.0.1.evil.example", "null", "file://"]:
        r = recorded.post("/api/workflows/rec/execute", json=body, headers={"Origin": origin})
        err = error_of(r, 403, "forbidden")
        assert "origin" in err["message"] and "allowed_origins" in err["message"]
        mcp_refusal(mcp_call(mcp, {"query": "x"}, Origin=origin), 403, "forbidden")
    assert recorded.agent.calls == []
    for origin in [api, "http://localhost:8888", "https://127.0.0.1"]:  # own, Jupyter, loopback
        r = recorded.post("/api/workflows/rec/execute", json=body, headers={"Origin": origin})
        assert r.status_code == 200, (origin, r.text)
    # CORS is off: no browser may read the answer, even from an allowed origin
    assert "access-control-allow-origin" not in r.headers
    pre = recorded.options("/api/workflows/rec/execute", headers={
        "Origin": "http://localhost:8888", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 405 and "access-control-allow-origin" not in pre.headers
    assert pre.headers["allow"] == "POST"


def test_allowed_hosts_origins_and_cors_are_configurable(make_app, serve):
    app = make_app(
        allowed_hosts=["api.example.com", "*.internal.example"],
        allowed_origins=["https://tools.example.com"],
        cors_origins=["https://app.example.com"],
    )
    agent = Recorder()
    deploy_multi_channel(agent, app, "rec")
    c = serve(app)
    body = {"inputs": {"query": "x"}}
    for host in ["api.example.com", "api.example.com:443", "a.b.internal.example", "127.0.0.1"]:
        assert c.post("/api/workflows/rec/execute", json=body, headers={"Host": host}).status_code == 200
    for host in ["example.com", "internal.example", "localhost", "api.example.com.evil"]:
        error_of(c.post("/api/workflows/rec/execute", json=body, headers={"Host": host}), 421)
    error_of(c.post("/api/workflows/rec/execute", json=body,
                    headers={"Origin": "http://localhost:8888"}), 403)  # no loopback origins now
    ok = c.post("/api/workflows/rec/execute", json=body, headers={"Origin": "https://tools.example.com"})
    assert ok.status_code == 200 and "access-control-allow-origin" not in ok.headers
    # CORS for the configured origin: the preflight passes without a key, the answer is readable
    pre = c.options("/api/workflows/rec/execute", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-api-key"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
    r = c.post("/api/workflows/rec/execute", json=body, headers={"Origin": "https://app.example.com"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
    bad = c.options("/api/workflows/rec/execute", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in bad.headers
    assert len(agent.calls) == 6


def test_http_policy_defaults_follow_the_bind_address():
    loop = HTTPPolicy.of(Nexus(api_port=0, mcp_port=0))
    assert loop.host_allowed("localhost:1234") and not loop.host_allowed("evil.example")
    assert not loop.host_allowed(None) and not loop.host_allowed("127.0.0.1:port")
    assert loop.origin_allowed("http://localhost:3000", "127.0.0.1:8000")
    assert not loop.origin_allowed("http://evil.example", "127.0.0.1:8000")
    # a public bind cannot guess its names: Host is not checked unless allowed_hosts says
    public = HTTPPolicy.of(Nexus(host="0.0.0.0", api_port=0, mcp_port=0))
    assert public.hosts is None and public.host_allowed("anything.example")
    assert public.origin_allowed("https://svc.example", "svc.example")  # its own origin
    assert not public.origin_allowed("http://localhost:3000", "svc.example")
    pinned = HTTPPolicy.of(Nexus(host="0.0.0.0", allowed_hosts=["svc.example"], api_port=0, mcp_port=0))
    assert pinned.host_allowed("svc.example:8000") and pinned.host_allowed("127.0.0.1:8000")
    assert not pinned.host_allowed("evil.example")
    assert HTTPPolicy.of(Nexus(allowed_hosts=["*"], api_port=0, mcp_port=0)).hosts is None


@pytest.mark.parametrize(
    "option, value",
    [
        ("allowed_hosts", ["bad host:x"]),
        ("allowed_hosts", [""]),
        ("allowed_hosts", 5),
        ("allowed_origins", ["example.com"]),  # no scheme
        ("cors_origins", ["https://app.example.com/path"]),
        ("forwarded_allow_ips", ["not-an-ip"]),
        ("max_connections", 0),
        ("max_header_bytes", 10),
        ("header_timeout", 0),
        ("body_timeout", float("inf")),
        ("keep_alive_timeout", "5"),
    ],
)
def test_http_options_are_validated_naming_the_option(option, value):
    with pytest.raises(ConfigError) as info:
        HTTPPolicy.of(Nexus(api_port=0, mcp_port=0, **{option: value}))
    assert info.value.field == option and option in str(info.value)


# --------------------------------------------------------------------------- 6: X-Forwarded-For
def test_forwarded_for_is_not_believed_by_default_so_the_rate_limit_holds(make_app, serve):
    """Row 6: a random X-Forwarded-For on every request no longer buys a fresh bucket."""
    app = make_app(rate_limit=3)
    agent = Recorder()
    deploy_multi_channel(agent, app, "rec")
    c = serve(app)
    codes = [
        c.post("/api/workflows/rec/execute", json={"inputs": {"query": str(i)}},
               headers={"X-Forwarded-For": f"203.0.113.{i}", "Forwarded": f"for=198.51.100.{i}"}).status_code
        for i in range(6)
    ]
    assert codes == [200, 200, 200, 429, 429, 429]
    assert len(agent.calls) == 3


def test_forwarded_for_is_believed_from_configured_proxies(make_app, serve):
    app = make_app(rate_limit=2, forwarded_allow_ips=["127.0.0.1", "::1"])
    deploy_multi_channel(Recorder(), app, "rec")
    c = serve(app)

    def call(client_ip: str) -> int:
        return c.post("/api/workflows/rec/execute", json={"inputs": {"query": "x"}},
                      headers={"X-Forwarded-For": client_ip}).status_code

    # the proxy (us, on loopback) names the client: one bucket per client behind it
    assert [call("203.0.113.1") for _ in range(3)] == [200, 200, 429]
    assert [call("203.0.113.2") for _ in range(2)] == [200, 200]
    # from an address that is not a configured proxy, the header is ignored again
    other = make_app(rate_limit=2, forwarded_allow_ips=["10.0.0.0/8"])
    deploy_multi_channel(Recorder(), other, "rec")
    c2 = serve(other)
    codes = [c2.post("/api/workflows/rec/execute", json={"inputs": {"query": "x"}},
                     headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(3)]
    assert codes == [200, 200, 429]


# --------------------------------------------------------------------------- 8: heads, slowloris
def test_oversized_headers_are_431_on_the_api_and_mcp(make_app, serve):
    """Row 8: four 8 MiB headers are refused after max_header_bytes, not buffered."""
    app = make_app()
    agent = Recorder()
    deploy_multi_channel(agent, app, "rec")
    c = serve(app)
    big = b"a" * (8 * 1024 * 1024)
    for url, path in [(app.api_url, b"/health"), (app.api_url, b"/api/workflows/rec/execute"),
                      (app.mcp_url, b"/mcp"), (app.api_url, b"/" + b"x" * 20_000)]:
        head = b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if not path.startswith(b"/x"):
            head += b"X-Big: " + big + b"\r\n"
        status, headers, body = parse_raw(raw_exchange(url, head + b"\r\n"))
        assert status == 431 and headers["connection"] == "close"
        error = body["error"] if "jsonrpc" not in body else body["error"]
        assert error["type"] == "headers_too_large" and "16384" in error["message"]
    assert agent.calls == []
    # many headers that are each small add up the same way
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(400))
    status, _, _ = parse_raw(raw_exchange(app.api_url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n"))
    assert status == 431
    assert c.get("/health").status_code == 200  # and the server is fine


def test_slowloris_sockets_cannot_lock_health_out(make_app, serve):
    """Row 8: 200 connections that never finish their head, against a cap of 40."""
    app = make_app(max_connections=40, header_timeout=60)  # the cap, not the timeout, acts
    deploy_multi_channel(Recorder(), app, "rec")
    serve(app)
    port = port_of(app.api_url)
    sockets = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            sockets.append(s)
        # while they hang on, /health answers every time, on fresh connections
        for _ in range(10):
            with httpx.Client(trust_env=False, timeout=30) as fresh:
                r = fresh.get(app.api_url + "/health")
            assert r.status_code == 200 and r.json()["status"] == "healthy"
        # the server made room by closing the connections that waited longest: wait until
        # at most 40 of ours are still open (each closed one reads as EOF)
        open_ = set(sockets)
        deadline = time.monotonic() + 60
        while len(open_) > 40 and time.monotonic() < deadline:
            readable, _, _ = select.select(list(open_), [], [], 1.0)
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    open_.discard(s)
        assert len(open_) <= 40, len(open_)
    finally:
        for s in sockets:
            s.close()


def test_heads_and_bodies_that_never_arrive_are_cut_off_with_408(make_app, serve):
    app = make_app(header_timeout=0.5, body_timeout=0.5)
    agent = Recorder()
    deploy_multi_channel(agent, app, "rec")
    c = serve(app)
    # half a head: 408 JSON, then the server closes
    status, headers, body = parse_raw(raw_exchange(app.api_url, b"GET /health HTTP/1.1\r\nHost: 12"))
    assert status == 408 and headers["connection"] == "close"
    assert "header_timeout" in body["error"]["message"]
    # a body that stops: 408, and the agent never ran
    status, _, body = parse_raw(raw_exchange(
        app.api_url,
        b"POST /api/workflows/rec/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inputs\":",
    ))
    assert status == 408 and "body_timeout" in body["error"]["message"]
    # an idle connection that never says anything is simply closed
    assert raw_exchange(app.api_url, b"") == b""
    # on MCP too, as a JSON-RPC error
    status, _, body = parse_raw(raw_exchange(app.mcp_url, b"POST /mcp HTTP/1.1\r\n"))
    assert status == 408 and body["jsonrpc"] == "2.0" and body["error"]["type"] == "request_timeout"
    assert agent.calls == []
    assert c.post("/api/workflows/rec/execute", json={"inputs": {"query": "x"}}).status_code == 200


# --------------------------------------------------------------------------- 10: others' sessions
class Clock:
    """A settable time source for the session manager."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_reading_another_users_session_touches_nothing(make_app, serve):
    """Row 10: B's GET and DELETE answer 404 and leave A's expiry where it was."""
    clock = Clock()
    manager = NexusSessionManager(cleanup_interval=300, session_ttl=600, clock=clock)
    app = make_app(enable_auth=True, api_keys={"key-a": "alice", "key-b": "bob"},
                   session_manager=manager)
    c = serve(app)
    alice, bob = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}
    sid = c.post("/api/sessions", json={}, headers=alice).json()["session_id"]
    created = manager.get_session(sid, touch=False)
    clock.now += 100
    error_of(c.get(f"/api/sessions/{sid}", headers=bob), 404, "session_not_found")
    error_of(c.delete(f"/api/sessions/{sid}", headers=bob), 404, "session_not_found")
    after = manager.get_session(sid, touch=False)
    assert after.expires_at == created.expires_at and after.last_accessed == created.last_accessed
    assert manager.get_session_events(sid)[-1].action == "create"  # nothing recorded for bob
    # the owner's read is a use: it slides the expiry
    mine = c.get(f"/api/sessions/{sid}", headers=alice)
    assert mine.status_code == 200 and mine.json()["expires_at"] == created.expires_at + 100
    assert c.delete(f"/api/sessions/{sid}", headers=alice).status_code == 200
    manager.close()


# --------------------------------------------------------------------------- 12: Allow
@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("OPTIONS", "/api/sessions/abc", "DELETE, GET, HEAD"),
        ("PUT", "/api/sessions/abc", "DELETE, GET, HEAD"),
        ("POST", "/api/sessions/abc", "DELETE, GET, HEAD"),
        ("PATCH", "/api/sessions", "GET, HEAD, POST"),
        ("DELETE", "/api/sessions", "GET, HEAD, POST"),
        ("GET", "/api/workflows/rec/execute", "POST"),
        ("OPTIONS", "/api/workflows", "GET, HEAD"),
        ("POST", "/health", "GET, HEAD"),
    ],
)
def test_405_allow_lists_every_method_the_path_serves(recorded, method, path, allow):
    r = recorded.request(method, path)
    err = error_of(r, 405, "method_not_allowed")
    assert r.headers["allow"] == allow and allow in err["message"]
    for served in allow.split(", "):  # and each of them is served (not 405)
        if served != "HEAD":
            assert recorded.request(served, path, json={"inputs": {"query": "x"}}).status_code != 405
    assert recorded.head("/api/sessions/abc").status_code == 404


# --------------------------------------------------------------------------- workflows listed
def test_workflows_lists_only_what_the_channel_reaches(make_app, serve):
    app = make_app()
    deploy_multi_channel(Recorder(), app, "everywhere")
    deploy_as_mcp(Recorder(), app, "mcp_only")
    deploy_as_cli(Recorder(), app, "cli_only")
    c = serve(app)
    for channel, names in [("api", ["everywhere"]), ("cli", ["cli_only", "everywhere"])]:
        headers = {"X-Nexus-Channel": channel}
        listed = c.get("/api/workflows", headers=headers).json()["workflows"]
        assert [w["name"] for w in listed] == names
        for w in listed:  # every endpoint listed answers, on that channel
            assert c.get(f"/api/workflows/{w['name']}", headers=headers).status_code == 200
            r = c.post(w["endpoint"], json={"inputs": {"query": "hi"}}, headers=headers)
            assert r.status_code == 200, r.text
    error_of(c.get("/api/workflows/mcp_only"), 404, "not_found")
    error_of(c.get("/api/workflows/cli_only"), 404, "not_found")
    assert c.get("/api/workflows").json()["workflows"][0]["name"] == "everywhere"


# --------------------------------------------------------------------------- the rest of the table
TEN_K = {f"k{i}": i for i in range(10_000)}


@pytest.mark.parametrize(
    "method, path, body, status, type_, words",
    [
        # oversized bodies
        ("POST", "/api/workflows/rec/execute", b'{"inputs": {"query": "' + b"x" * (1 << 20) + b'"}}', 413, "payload_too_large", "limit"),
        ("POST", "/api/sessions", b'{"metadata": {"m": "' + b"x" * (1 << 20) + b'"}}', 413, "payload_too_large", "limit"),
        # not UTF-8, not JSON
        ("POST", "/api/workflows/rec/execute", b'{"inputs": {"query": "\xff\xfe"}}', 400, "bad_request", "UTF-8"),
        ("POST", "/api/workflows/rec/execute", b'{"inputs": {"query": "\xed\xa0\x80"}}', 400, "bad_request", "UTF-8"),
        ("POST", "/api/workflows/rec/execute", '{"inputs": {"query": "x"}}'.encode("utf-16"), 400, "bad_request", "UTF-8"),
        ("POST", "/api/workflows/rec/execute", b'\xef\xbb\xbf{"inputs": {"query": "x"}}', 400, "bad_request", "JSON"),
        ("POST", "/api/workflows/rec/execute", b'{"inputs": {"query": "x", "extra": NaN}}', 400, "bad_request", "NaN"),
        ("POST", "/api/workflows/rec/execute", b'{"inputs": {"query": "x", "extra": 1e999}}', 400, "bad_request", "too large"),
        ("POST", "/api/workflows/rec/execute", b'{"inputs": {"query": "x", "extra": ' + b"9" * 5000 + b"}}", 400, "bad_request", "JSON"),
        # unknown fields, wrong types, nulls
        ("POST", "/api/workflows/rec/execute", b'{"inputs": {"query": "x", "bogus": 1}}', 422, "validation_error", "bogus"),
        ("POST", "/api/workflows/rec/execute", b'{"input": {"query": "x"}}', 422, "validation_error", "inputs"),
        ("POST", "/api/workflows/rec/execute", b'{"inputs": null}', 422, "validation_error", "inputs"),
        ("POST", "/api/workflows/rec/execute", b'{"inputs": {"query": 5}}', 422, "validation_error", "query"),
        ("POST", "/api/workflows/typed/execute", b'{"inputs": {"n": true}}', 422, "validation_error", "'n'"),
        ("POST", "/api/workflows/typed/execute", b'{"inputs": {"n": "5"}}', 422, "validation_error", "'n'"),
        ("POST", "/api/workflows/typed/execute", b'{"inputs": {"n": 1, "x": false}}', 422, "validation_error", "'x'"),
        ("POST", "/api/workflows/typed/execute", b'{"inputs": {"n": 1, "flag": 1}}', 422, "validation_error", "'flag'"),
        ("POST", "/api/workflows/typed/execute", b'{"inputs": {"n": 1.5}}', 422, "validation_error", "'n'"),
        ("POST", "/api/sessions", b'{"ttl": null}', 422, "validation_error", "ttl"),
        ("POST", "/api/sessions", b'{"ttl": true}', 422, "validation_error", "ttl"),
        ("POST", "/api/sessions", b'{"user_id": null}', 422, "validation_error", "user_id"),
        ("POST", "/api/sessions", b'{"user_id": "   "}', 422, "validation_error", "user_id"),
        ("POST", "/api/sessions", b'{"metadata": null}', 422, "validation_error", "metadata"),
        ("POST", "/api/sessions", b'{"owner": "x"}', 422, "validation_error", "owner"),
        # 10k keys
        ("POST", "/api/workflows/rec/execute", json.dumps({"inputs": {"query": "x", **TEN_K}}).encode(), 422, "validation_error", "k0"),
        ("POST", "/api/sessions", json.dumps({"metadata": TEN_K}).encode(), 422, "validation_error", "max_state_bytes"),
        # path tricks in names and ids
        ("POST", "/api/workflows/..%2F..%2Fhealth/execute", b'{"inputs": {}}', 404, "not_found", "no route"),
        ("POST", "/api/workflows/%2e%2e/execute", b'{"inputs": {}}', 404, "not_found", "deployment"),
        ("POST", "/api/workflows/rec%00/execute", b'{"inputs": {"query": "x"}}', 404, "not_found", "deployment"),
        ("POST", "/api/workflows/" + "r" * 5000 + "/execute", b'{"inputs": {}}', 404, "not_found", "deployment"),
        ("GET", "/api/workflows/..%2Frec", None, 404, "not_found", "no route"),
        ("GET", "/api/sessions/..%2F..%2Fetc%2Fpasswd", None, 404, "not_found", "no route"),
        ("GET", "/api/sessions/%2e%2e", None, 404, "session_not_found", "not found"),
        ("DELETE", "/api/sessions/x%00y", None, 404, "session_not_found", "not found"),
        ("GET", "/api/sessions/" + "s" * 10_000, None, 404, "session_not_found", "not found"),
        ("POST", "/api/workflows/rec/execute", b'{"inputs": {"query": "x"}, "session_id": "../../x"}', 404, "session_not_found", "not found"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
def test_hostile_requests_get_a_clear_4xx_and_store_nothing(recorded, method, path, body, status, type_, words):
    headers = JSON if body is not None else {}
    r = recorded.request(method, path, content=body, headers=headers)
    err = error_of(r, status, type_)
    assert words in err["message"], err
    assert "Traceback" not in r.text
    assert recorded.agent.calls == []
    assert recorded.manager.list_sessions() == []
    assert recorded.get("/health").status_code == 200


class KwargsRecorder:
    """Takes any inputs (they all become the session's last_query); records its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def process(self, **inputs: Any) -> dict:
        self.calls += 1
        return {"response": "ok"}


def test_a_10k_key_state_is_refused_before_the_agent_runs(make_app, serve):
    app = make_app()
    manager = NexusSessionManager(cleanup_interval=300)
    agent = KwargsRecorder()
    deploy_with_sessions(agent, app, "kw", manager)
    c = serve(app)
    sid = manager.create_session("anonymous").session_id
    r = c.post("/api/workflows/kw/execute", json={"inputs": TEN_K, "session_id": sid})
    err = error_of(r, 422, "session_state_error")
    assert "max_state_bytes" in err["message"]
    assert agent.calls == 0 and manager.get_session_state(sid) == {}
    manager.close()


def test_a_10k_key_state_without_a_session_stores_nothing(make_app, serve):
    app = make_app()
    manager = NexusSessionManager(cleanup_interval=300)
    agent = KwargsRecorder()
    deploy_with_sessions(agent, app, "kw", manager)
    c = serve(app)
    try:
        error_of(c.post("/api/workflows/kw/execute", json={"inputs": TEN_K}), 422, "session_state_error")
        assert manager.list_sessions() == [] and agent.calls == 0
    finally:
        manager.close()


def test_the_same_requests_done_right_are_accepted(recorded):
    """The table's refusals are not blanket ones: the well-formed neighbours pass."""
    ok = [
        ("/api/workflows/rec/execute", {"inputs": {"query": "é \U0001f600 [{\"x\"}]"}}),
        ("/api/workflows/typed/execute", {"inputs": {"n": 2, "x": 3, "flag": True}}),
        ("/api/workflows/typed/execute", {"inputs": {"n": 2.0}}),  # an integral number is an integer
        ("/api/sessions", {"user_id": "u-1", "metadata": {"k": [1, {"a": None}]}, "ttl": 0.5}),
    ]
    for path, body in ok:
        r = recorded.post(path, json=body)
        assert r.status_code in (200, 201), r.text
    r = recorded.post("/api/workflows/rec/execute", content=json.dumps({"inputs": {"query": "x"}}).encode(),
                      headers={"content-type": "application/json; charset=UTF-8"})
    assert r.status_code == 200


# --------------------------------------------------------------------------- the CLI
CLI_APP = """
    from nexus_lab import Nexus, NexusSessionManager, deploy_with_sessions

    def echo(query: str) -> dict:
        return {"response": query}

    app = Nexus(rate_limit=1)
    deploy_with_sessions(echo, app, "echo", NexusSessionManager(cleanup_interval=300))
"""


@pytest.fixture
def cli_server(recorded):
    if not NEXUS.exists():
        pytest.skip("the nexus console script is not installed")
    return recorded


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["run", "../../etc/passwd", "-q", "x"], 4, "../../etc/passwd"),
        (["run", "%2e%2e", "-q", "x"], 4, "no deployment"),
        (["run", "r" * 100_000, "-q", "x"], 2, "too long"),  # refused before sending
        (["run", "rec", "-i", "=x"], 2, "KEY=VALUE"),
        (["run", "rec", "-i", "query"], 2, "KEY=VALUE"),
        (["run", "rec", "--json-input", "[1]"], 2, "JSON object"),
        (["run", "rec", "--json-input", "{"], 2, "JSON"),
        (["run", "rec", "--json-input", '{"query": "x", "extra": ' + nested_text(200) + "}"], 5, "max_json_depth"),
        (["run", "rec", "--json-input", '{"query": "\\ud800"}'], 2, "surrogate"),
        (["run", "rec", "-q", "x", "-i", "bogus=1"], 5, "bogus"),
        (["run", "rec", "-q", "x", "--session", "../../x"], 4, "not found"),
        (["run", "rec", "-q", "x", "--timeout", "-1"], 2, "timeout"),
        (["sessions", "show", "../../etc/passwd"], 4, "../../etc/passwd"),
        (["sessions", "delete", "%00"], 4, "not found"),
        (["sessions", "create", "--user", "   "], 5, "user_id"),
    ],
    ids=lambda v: None,
)
def test_cli_argument_abuse_exits_non_zero_naming_the_problem(cli_server, args, code, words):
    proc = nexus_cli(*args, "--url", cli_server.app.api_url)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr[-500:])
    assert words in proc.stderr, proc.stderr[-500:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert cli_server.agent.calls == []
    assert cli_server.manager.list_sessions() == []


@pytest.mark.parametrize(
    "args, words",
    [
        (["--forwarded-allow-ips", "not-an-ip"], "--forwarded-allow-ips"),
        (["--allowed-hosts", "bad host:x"], "--allowed-hosts"),
        (["--api-port", "70000"], "--api-port"),
    ],
)
def test_nexus_serve_refuses_bad_options_naming_them(tmp_path, args, words):
    if not NEXUS.exists():
        pytest.skip("the nexus console script is not installed")
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(CLI_APP))
    proc = nexus_cli("serve", f"{path}:app", "--api-port", "0", "--mcp-port", "0", *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert words in proc.stderr and "Traceback" not in proc.stderr


def test_nexus_serve_forwarded_allow_ips_and_allowed_hosts(tmp_path):
    """``nexus serve --forwarded-allow-ips``: the proxy's X-Forwarded-For picks the bucket."""
    if not NEXUS.exists():
        pytest.skip("the nexus console script is not installed")
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(CLI_APP))
    proc = subprocess.Popen(
        [str(NEXUS), "serve", f"{path}:app", "--api-port", "0", "--mcp-port", "0",
         "--forwarded-allow-ips", "127.0.0.1,::1", "--allowed-hosts", "api.example.com",
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = None
        for line in proc.stdout:  # waits for the line, no sleeping
            if line.startswith("API: "):
                url = line.split(": ", 1)[1].strip()
                break
        assert url, proc.stderr.read() if proc.poll() is not None else "no API line"
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
            body = {"inputs": {"query": "x"}}
            a = [c.post("/api/workflows/echo/execute", json=body,
                        headers={"X-Forwarded-For": "203.0.113.1"}).status_code for _ in range(2)]
            b = c.post("/api/workflows/echo/execute", json=body, headers={"X-Forwarded-For": "203.0.113.2"})
            assert a == [200, 429] and b.status_code == 200  # rate_limit=1 per client behind the proxy
            assert c.get("/health", headers={"Host": "api.example.com"}).status_code == 200
            assert c.get("/health", headers={"Host": "evil.example"}).status_code == 421
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()


# --------------------------------------------------------------------------- secrets stay out of logs
class LeakyStore(NexusSessionManager):
    """A session manager with a bug whose message carries a secret (a real subclass, not a mock)."""

    def list_sessions(self, user_id=None):
        raise RuntimeError("store bug while holding token sk-store-SECRET-0000")


def test_logs_of_failing_calls_hold_no_key_or_secret(make_app, serve, caplog, free_port):
    import logging

    from nexus_lab import AIAssistant

    keys = {"alice-KEY-7f3a9b2c": "alice"}
    provider_key = "sk-provider-SECRET-5e6f"
    manager = LeakyStore(cleanup_interval=300)
    app = make_app(enable_auth=True, api_keys=keys, rate_limit=1000, session_manager=manager,
                   max_header_bytes=2048)

    def boom(query: str) -> dict:
        raise ValueError("agent failed")

    deploy_multi_channel(boom, app, "boom")
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: the provider call fails
    deploy_multi_channel(AIAssistant(config={"llm_provider": "openai", "base_url": dead,
                                             "api_key": provider_key, "timeout": 5}), app, "llm")
    c = serve(app)
    good = {"Authorization": "Bearer alice-KEY-7f3a9b2c"}
    with caplog.at_level(logging.DEBUG):
        for headers in [{"Authorization": "Bearer alice-KEY-7f3a9b2c-wrong"},
                        {"X-API-Key": "alice-KEY-7f3a9b2"}, {"Authorization": "alice-KEY-7f3a9b2c"}]:
            error_of(c.get("/api/workflows", headers=headers), 401, "unauthorized")
            mcp_refusal(mcp_call(app.mcp_url, {"query": "x"}, name="boom", **headers), 401, "unauthorized")
        error_of(c.post("/api/workflows/boom/execute", json={"inputs": {"query": "x"}}, headers=good), 500, "agent_error")
        r = c.post("/api/workflows/llm/execute", json={"inputs": {"query": "x"}}, headers=good)
        assert r.status_code >= 500 and provider_key not in r.text
        error_of(c.get("/api/sessions", headers=good), 500, "internal_error")
        tool_error(mcp_call(app.mcp_url, {"query": "x"}, name="boom", **{"X-API-Key": "alice-KEY-7f3a9b2c"}))
        # a refused head carrying the key, and a mangled request line
        big = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer alice-KEY-7f3a9b2c\r\nX-Pad: " + b"p" * 4096 + b"\r\n\r\n"
        assert parse_raw(raw_exchange(app.api_url, big))[0] == 431
        raw_exchange(app.api_url, b"GET /\x00 alice-KEY-7f3a9b2c\r\n\r\n")
    # everything logged, tracebacks and the raw arguments of each record included
    logged = caplog.text + "\n".join(f"{rec.args!r}" for rec in caplog.records)
    # the log does hold what went wrong, under the error ids the callers were given ...
    assert "agent failed" in logged and "store bug" in logged
    # ... but neither a caller's key (right, wrong or truncated) nor the provider's
    for secret in ("alice-KEY-7f3a9b2", provider_key):
        assert secret not in logged, secret
    manager.close()
