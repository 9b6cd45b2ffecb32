"""NexusClient / AsyncNexusClient against real platforms (uvicorn on port 0, the real MCP endpoint).

No mocks, no sleeps, no timing assertions: blocking agents wait on events the
test sets, and connection reuse is shown by a TCP relay that counts the
connections it accepts.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from nexus_lab import (
    AIAssistant,
    Nexus,
    NexusSessionManager,
    deploy_multi_channel,
    deploy_with_sessions,
)
from nexus_lab.client import AsyncNexusClient, NexusClient, RunResult
from nexus_lab.errors import (
    AgentExecutionError,
    AuthenticationError,
    BadRequest,
    ConfigError,
    DeploymentNotFound,
    ExecutionTimeout,
    Forbidden,
    InputValidationError,
    MethodNotAllowed,
    NexusConnectionError,
    NotFound,
    PayloadTooLarge,
    RateLimitExceeded,
    SessionNotFound,
)

API_KEY = "client-test-key-0123456789"
CHANNELS = ("api", "cli", "mcp")


# ----------------------------------------------------------------------------- agents
def add(a: int, b: int = 1) -> dict:
    """Add two integers."""
    return {"sum": a + b, "types": [type(a).__name__, type(b).__name__]}


def boom(query: str) -> dict:
    """Always fails."""
    raise RuntimeError("kaboom: secret internals")


async def echo(text: str) -> dict:
    """An async agent: runs on the server's loop, no worker thread."""
    return {"echo": text}


class Gate:
    """A sync agent that blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def process(self, query: str) -> dict:
        self.entered.set()
        self.release.wait(60)
        return {"response": query}


class Never:
    """An async agent that never answers (until its deployment's timeout cancels it)."""

    async def aprocess(self, query: str) -> dict:
        await asyncio.Event().wait()
        return {}

    def process(self, query: str) -> dict:  # the schema comes from process()
        return {}


# ----------------------------------------------------------------------------- helpers
class CountingRelay:
    """A TCP relay in front of a server port that counts the connections it accepts."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="test-relay", daemon=True)
        self._accepting.start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            up = socket.create_connection(("127.0.0.1", self.target_port))
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sockets.append(s)
            for a, b in ((down, up), (up, down)):
                t = threading.Thread(target=self._pump, args=(a, b), name="test-relay-pump", daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self.listener.close()
        self._accepting.join(10)
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self._threads:
            t.join(10)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- platforms
@pytest.fixture(scope="module")
def platform() -> Iterator[Nexus]:
    app = Nexus(auto_discovery=False, api_port=0, mcp_port=0, enable_monitoring=True)
    manager = NexusSessionManager(cleanup_interval=300, session_ttl=3600)
    deploy_with_sessions(
        AIAssistant(config={"llm_provider": "mock", "model": "m"}), app, "assistant", manager
    )
    deploy_multi_channel(add, app, "add")
    deploy_multi_channel(boom, app, "boom")
    deploy_multi_channel(echo, app, "echo")
    with app.running():
        yield app
    app.close()
    manager.close()


@pytest.fixture
def client(platform: Nexus) -> Iterator[NexusClient]:
    with NexusClient(platform.api_url) as c:
        yield c


@pytest.fixture(scope="module")
def auth_platform() -> Iterator[Nexus]:
    app = Nexus(
        auto_discovery=False, api_port=0, mcp_port=0, enable_auth=True, api_keys={API_KEY: "alice"}
    )
    deploy_multi_channel(add, app, "add")
    with app.running():
        yield app
    app.close()


# ----------------------------------------------------------------------------- running
def test_the_three_channels_give_the_same_outputs(platform, client):
    before = {ch: platform.metrics.get_summary().get(ch, {}).get("count", 0) for ch in CHANNELS}
    results = {
        "api": client.run("add", {"a": 2, "b": 40}),
        "cli": client.run("add", {"a": "2", "b": "40"}, channel="cli"),  # the server coerces text
        "mcp": client.run("add", {"a": 2, "b": 40}, channel="mcp"),
    }
    for channel, result in results.items():
        assert isinstance(result, RunResult)
        assert result.outputs == {"sum": 42, "types": ["int", "int"]}, channel
        assert result.channel == channel and result.name == "add"
        assert result.session_id is None
        assert isinstance(result.execution_time_ms, float) and result.execution_time_ms >= 0
        assert result.latency_ms > 0
        assert result.raw["outputs"] == result.outputs
    after = platform.metrics.get_summary()
    assert {ch: after[ch]["count"] - before[ch] for ch in CHANNELS} == {"api": 1, "cli": 1, "mcp": 1}


def test_result_repr_is_stable_and_has_html(client):
    result = client.run("assistant", {"query": "hi"})
    assert result.session_id
    assert repr(result) == "RunResult(name='assistant', channel='api', response='[mock:m] You said: hi')"
    assert result.response == "[mock:m] You said: hi" and result["response"] == result.response
    html = result._repr_html_()
    assert "You said: hi" in html and result.session_id not in html
    assert repr(client.run("add", {"a": 1})) == (
        "RunResult(name='add', channel='api', outputs={'sum': 2, 'types': ['int', 'int']})"
    )


def test_a_session_continues_across_channels(platform, client):
    first = client.run("assistant", {"query": "first question"})
    sid = first.session_id
    for channel in ("mcp", "cli"):
        result = client.run("assistant", {"query": f"via {channel}"}, session_id=sid, channel=channel)
        assert result.session_id == sid
        assert "earlier you asked" in result.response
    state = client.sessions.get(sid)["state"]
    assert state["turns"] == 3
    assert [turn["channel"] for turn in state["history"]] == ["api", "mcp", "cli"]


def test_sessions_crud(client):
    created = client.sessions.create(user_id="u1")
    sid = created["session_id"]
    assert created["user_id"] == "u1"
    assert client.sessions.get(sid)["user_id"] == "u1"
    assert sid in [s["session_id"] for s in client.sessions.list()]
    assert sid in [s["session_id"] for s in client.sessions.list(user_id="u1")]
    assert sid not in [s["session_id"] for s in client.sessions.list(user_id="someone-else")]
    assert client.run("assistant", {"query": "hello"}, session_id=sid).session_id == sid
    assert client.sessions.delete(sid) == {"deleted": True, "session_id": sid}
    with pytest.raises(SessionNotFound) as info:
        client.sessions.get(sid)
    assert info.value.session_id == sid
    with pytest.raises(SessionNotFound):
        client.sessions.delete(sid)


def test_workflows_and_health(platform, client):
    names = [w["name"] for w in client.workflows()]
    assert names == sorted(platform.deployments)
    health = client.health()
    assert health["status"] == "healthy"
    assert health["channels"]["mcp"]["url"] == platform.mcp_url


def test_mcp_url_comes_from_health(platform, client):
    assert client.mcp_url is None
    client.run("add", {"a": 1}, channel="mcp")
    assert client.mcp_url == platform.mcp_url


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("channel", CHANNELS)
def test_unknown_deployment(client, channel):
    with pytest.raises(DeploymentNotFound) as info:
        client.run("nope", {"query": "x"}, channel=channel)
    assert "nope" in str(info.value)
    assert isinstance(info.value, KeyError)  # as a local app.execute raises it


@pytest.mark.parametrize("channel", CHANNELS)
def test_unknown_session(client, channel):
    with pytest.raises(SessionNotFound) as info:
        client.run("assistant", {"query": "x"}, session_id="no-such-session", channel=channel)
    assert info.value.session_id == "no-such-session"
    assert "no-such-session" in str(info.value)


@pytest.mark.parametrize("channel", CHANNELS)
def test_bad_input_names_the_field(client, channel):
    with pytest.raises(InputValidationError) as info:
        client.run("add", {"a": "not-a-number"}, channel=channel)
    assert info.value.field == "a"
    assert "'a'" in str(info.value)
    with pytest.raises(InputValidationError) as info:
        client.run("add", {}, channel=channel)
    assert info.value.field == "a"


@pytest.mark.parametrize("channel", CHANNELS)
def test_agent_error_carries_the_servers_error_id(client, channel, caplog):
    with caplog.at_level(logging.ERROR, logger="nexus_lab"):
        with pytest.raises(AgentExecutionError) as info:
            client.run("boom", {"query": "x"}, channel=channel)
    error_id = info.value.error_id
    assert re.fullmatch(r"[0-9a-f]{12}", error_id)
    assert "kaboom" not in str(info.value)
    # the same id is the one the server logged with the traceback (same process)
    assert any(error_id in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("channel", ["api", "mcp"])
def test_auth(auth_platform, channel):
    with NexusClient(auth_platform.api_url, api_key=API_KEY) as good:
        assert good.run("add", {"a": 1}, channel=channel).outputs["sum"] == 2
        assert good.api_key_set and API_KEY not in repr(good)
    for key in ("wrong-key", None):
        with NexusClient(auth_platform.api_url, api_key=key, mcp_url=auth_platform.mcp_url) as bad:
            with pytest.raises(AuthenticationError):
                bad.run("add", {"a": 1}, channel=channel)


def test_forbidden(auth_platform):
    with NexusClient(auth_platform.api_url, api_key=API_KEY) as c:
        with pytest.raises(Forbidden):
            c.sessions.create(user_id="bob")  # alice may not act for bob
        assert c.sessions.create()["user_id"] == "alice"


@pytest.mark.parametrize("channel", ["api", "mcp"])
def test_rate_limit_has_retry_after(channel):
    app = Nexus(auto_discovery=False, api_port=0, mcp_port=0, rate_limit=1)
    deploy_multi_channel(add, app, "add")
    with app.running(), NexusClient(app.api_url, mcp_url=app.mcp_url) as c:
        if channel == "api":
            assert c.run("add", {"a": 1}).outputs["sum"] == 2  # the one token
        with pytest.raises(RateLimitExceeded) as info:
            c.run("add", {"a": 1}, channel=channel)
    assert info.value.retry_after > 0
    assert info.value.limit == 1
    app.close()


def test_payload_too_large_bad_request_and_routes(make_app):
    app = make_app(max_body_bytes=1024)
    deploy_multi_channel(add, app, "add")
    with app.running(), NexusClient(app.api_url) as c:
        with pytest.raises(PayloadTooLarge):
            c.run("add", {"a": 1, "pad": "x" * 4096})
        with pytest.raises(BadRequest):
            c.request(
                "POST", "/api/workflows/add/execute", json={"inputs": {"a": 1}},
                headers={"X-Nexus-Channel": "carrier-pigeon"},
            )
        with pytest.raises(MethodNotAllowed) as info:
            c.request("GET", "/api/workflows/add/execute")
        assert "POST" in info.value.allow
        with pytest.raises(NotFound):
            c.request("GET", "/no/such/route")


@pytest.mark.parametrize("channel", ["api", "mcp"])
def test_execution_timeout(make_app, channel):
    app = make_app()
    deploy_multi_channel(Never(), app, "never", timeout=0.2)
    with app.running(), NexusClient(app.api_url) as c:
        with pytest.raises(ExecutionTimeout) as info:
            c.run("never", {"query": "x"}, channel=channel)
    assert "never" in str(info.value)


@pytest.mark.parametrize("channel", ["api", "mcp"])
def test_client_timeout_is_a_connection_error(make_app, channel):
    gate = Gate()
    app = make_app()
    deploy_multi_channel(gate, app, "gate")
    try:
        with app.running(), NexusClient(app.api_url, timeout=0.5) as c:
            c.health()
            with pytest.raises(NexusConnectionError) as info:
                c.run("gate", {"query": "x"}, channel=channel)
            assert info.value.connected
            assert "no answer within 0.5 s" in str(info.value)
    finally:
        gate.release.set()


def test_connection_refused_names_the_url():
    dead = f"http://127.0.0.1:{free_port()}"
    with NexusClient(dead) as c:
        for call in (lambda: c.run("add", {"a": 1}), c.health, c.workflows, c.sessions.list):
            with pytest.raises(NexusConnectionError) as info:
                call()
            assert dead in str(info.value) and info.value.url == dead
            assert not info.value.connected
        with pytest.raises(NexusConnectionError) as info:  # mcp_url comes from /health: the API URL
            c.run("add", {"a": 1}, channel="mcp")
        assert dead in str(info.value)
    dead_mcp = f"http://127.0.0.1:{free_port()}/mcp"
    with NexusClient(dead, mcp_url=dead_mcp) as c:
        with pytest.raises(NexusConnectionError) as info:
            c.run("add", {"a": 1}, channel="mcp")
        assert dead_mcp in str(info.value) and not info.value.connected


def test_bad_arguments():
    for url in ("", "ftp://x", "not a url", "http://127.0.0.1:99999"):
        with pytest.raises(ConfigError) as info:
            NexusClient(url)
        assert info.value.field == "url"
    with pytest.raises(ConfigError):
        NexusClient("http://127.0.0.1:1", timeout=0)
    with NexusClient("http://127.0.0.1:1") as c:
        with pytest.raises(ConfigError):
            c.run("add", {"a": 1}, channel="smoke")
        with pytest.raises(InputValidationError):
            c.run("add", ["a"])  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="closed"):
        c.run("add", {"a": 1})


def test_no_mcp_url_in_health_asks_for_mcp_url():
    from nexus_lab.client import _mcp_url_from_health

    health = {"status": "healthy", "channels": {"mcp": {"state": "stopped", "url": None}}}
    with pytest.raises(ConfigError, match="pass mcp_url="):
        _mcp_url_from_health(health, "http://127.0.0.1:8000")


@pytest.mark.parametrize(
    "text, cls, attrs",
    [
        (
            "tool 'x' failed with TypeError; see the server log for error id 0123456789ab",
            "InternalError",
            {"error_id": "0123456789ab"},
        ),
        (
            '{"error": {"type": "validation_error", "message": "invalid input \'n\'", "field": "n"}}',
            "InputValidationError",
            {"field": "n"},
        ),
        (
            "deployment 'slow' did not finish within its timeout of 1 s; the call was cancelled",
            "ExecutionTimeout",
            {},
        ),
        ("something else went wrong", "NexusError", {}),
    ],
)
def test_tool_error_text_goes_through_the_same_table(text, cls, attrs):
    """MCP tool errors carry the platform's JSON body or only its message; both are mapped."""
    from nexus_lab.client import _error_from_tool_text

    exc = _error_from_tool_text(text, None)
    assert type(exc).__name__ == cls
    for key, value in attrs.items():
        assert getattr(exc, key) == value


# ----------------------------------------------------------------------------- one pool, one session
def test_one_connection_and_one_mcp_session_for_many_calls(platform):
    api = CountingRelay(_port(platform.api_url))
    mcp = CountingRelay(_port(platform.mcp_url))
    try:
        with NexusClient(api.url(), mcp_url=mcp.url("/mcp")) as c:
            for i in range(20):
                assert c.run("add", {"a": i}).outputs["sum"] == i + 1
            c.run("add", {"a": 1}, channel="cli")
            c.health()
            c.workflows()
            c.sessions.list()
            for i in range(10):
                assert c.run("add", {"a": i}, channel="mcp").outputs["sum"] == i + 1
            session = c._mcp
            c.run("echo", {"text": "x"}, channel="mcp")
            assert c._mcp is session  # the same MCP session throughout
        assert api.accepted == 1
        assert mcp.accepted == 1
    finally:
        api.close()
        mcp.close()


def test_no_thread_outlives_close(platform):
    with NexusClient(platform.api_url) as warm:  # the server's own lazy threads start here
        warm.run("echo", {"text": "warm"}, channel="mcp")
    before = set(threading.enumerate())
    c = NexusClient(platform.api_url)
    c.run("echo", {"text": "a"})
    assert set(threading.enumerate()) == before  # HTTP only: no thread at all
    c.run("echo", {"text": "b"}, channel="mcp")
    started = set(threading.enumerate()) - before
    assert [t.name for t in started] == ["nexus-client-loop"]
    c.close()
    assert set(threading.enumerate()) == before
    c.close()  # idempotent


# ----------------------------------------------------------------------------- async
def test_async_client(platform):
    with NexusClient(platform.api_url) as warm:  # the server's worker thread for sync agents
        warm.run("add", {"a": 1})
    before = set(threading.enumerate())
    api = CountingRelay(_port(platform.api_url))
    mcp = CountingRelay(_port(platform.mcp_url))

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with AsyncNexusClient(api.url(), mcp_url=mcp.url("/mcp")) as c:
            out["outputs"] = {
                "api": (await c.run("add", {"a": 2, "b": 40})).outputs,
                "cli": (await c.run("add", {"a": "2", "b": "40"}, channel="cli")).outputs,
                "mcp": (await c.run("add", {"a": 2, "b": 40}, channel="mcp")).outputs,
            }
            both = await asyncio.gather(  # async agent: no server worker thread either
                *(c.run("echo", {"text": str(i)}, channel=ch) for i in range(5) for ch in ("api", "mcp"))
            )
            out["gathered"] = [r.outputs["echo"] for r in both]
            created = await c.sessions.create(user_id="async-user")
            sid = created["session_id"]
            r = await c.run("assistant", {"query": "async hi"}, session_id=sid, channel="mcp")
            out["sid_kept"] = r.session_id == sid
            out["listed"] = sid in [s["session_id"] for s in await c.sessions.list(user_id="async-user")]
            out["turns"] = (await c.sessions.get(sid))["state"]["turns"]
            await c.sessions.delete(sid)
            for channel in CHANNELS:
                with pytest.raises(SessionNotFound):
                    await c.run("assistant", {"query": "x"}, session_id=sid, channel=channel)
                with pytest.raises(DeploymentNotFound):
                    await c.run("nope", {}, channel=channel)
                with pytest.raises(InputValidationError) as info:
                    await c.run("add", {"a": "x"}, channel=channel)
                assert info.value.field == "a"
            out["workflows"] = [w["name"] for w in await c.workflows()]
            out["health"] = (await c.health())["status"]
        with pytest.raises(RuntimeError, match="closed"):
            await c.run("add", {"a": 1})
        return out

    try:
        out = asyncio.run(scenario())
        assert api.accepted <= 5  # gather may open a few; not one per call
        assert mcp.accepted <= 5
    finally:
        api.close()
        mcp.close()
    assert out["outputs"] == {ch: {"sum": 42, "types": ["int", "int"]} for ch in CHANNELS}
    assert out["gathered"] == [str(i) for i in range(5) for _ in range(2)]
    assert out["sid_kept"] and out["listed"] and out["turns"] == 1
    assert "add" in out["workflows"] and out["health"] == "healthy"
    assert set(threading.enumerate()) == before


def test_async_client_errors_and_refused(auth_platform):
    dead = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> None:
        async with AsyncNexusClient(auth_platform.api_url, api_key="wrong") as c:
            for channel in ("api", "mcp"):
                with pytest.raises(AuthenticationError):
                    await c.run("add", {"a": 1}, channel=channel)
        async with AsyncNexusClient(auth_platform.api_url, api_key=API_KEY) as c:
            assert (await c.run("add", {"a": 1}, channel="mcp")).outputs["sum"] == 2
        async with AsyncNexusClient(dead) as c:
            with pytest.raises(NexusConnectionError) as info:
                await c.run("add", {"a": 1})
            assert dead in str(info.value)

    asyncio.run(scenario())
