"""What a hostile or careless client does, against a real server on loopback.

Each test names the row of the hardening issue it covers. Every bad request
must get a clear 4xx/5xx JSON error (an MCP tool error, a CLI exit code) naming
the problem, and nothing may be stored for it.
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from nexus_lab import NexusSessionManager, deploy_multi_channel, deploy_with_sessions
from nexus_lab.platform.security import ApiKeyAuth


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
def test_a_query_that_cannot_fit_the_session_is_refused_before_the_agent_runs(make_app, serve):
    calls = []

    def agent(query: str) -> dict:
        calls.append(query)
        return {"response": "ok"}

    app = make_app()
    manager = NexusSessionManager(cleanup_interval=300, max_state_bytes=4096)
    deploy_with_sessions(agent, app, "small", manager)
    client = serve(app)
    sid = manager.create_session("anonymous").session_id
    r = client.post("/api/workflows/small/execute",
                    json={"inputs": {"query": "x" * 5000}, "session_id": sid})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "session_state_error"
    assert "max_state_bytes" in r.json()["error"]["message"]
    assert calls == []  # the agent never ran
    assert manager.get_session_state(sid) == {}  # nothing stored
    ok = client.post("/api/workflows/small/execute", json={"inputs": {"query": "hi"}, "session_id": sid})
    assert ok.status_code == 200 and calls == ["hi"]
    manager.close()
