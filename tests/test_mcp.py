"""The MCP channel, end to end with the official SDK client.

Over streamable HTTP against ``app.start(block=False)`` (real uvicorn on
127.0.0.1, port 0) and over stdio against a subprocess
(``python -m nexus_lab.platform.mcp`` and ``nexus mcp``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("mcp")

import httpx2  # noqa: E402  (the SDK's HTTP client; a dependency of mcp)
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

from nexus_lab import (  # noqa: E402
    AIAssistant,
    BaseAgent,
    Nexus,
    NexusSessionManager,
    deploy_as_api,
    deploy_as_cli,
    deploy_as_mcp,
    deploy_multi_channel,
    deploy_with_sessions,
)
from nexus_lab.platform.guard import request_started  # noqa: E402
from nexus_lab.platform.mcp import OUTPUT_SCHEMA, build_mcp_server  # noqa: E402

VENV_BIN = Path(sys.executable).parent
ERROR_ID = re.compile(r"error id [0-9a-f]{12}")


# ----------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------
def add(a: int, b: int = 2) -> dict:
    """Add two integers."""
    return {"sum": a + b}


async def shout(text: str) -> dict:
    """Upper-case a text (an async function)."""
    await asyncio.sleep(0)
    return {"text": text.upper()}


class Broken(BaseAgent):
    """Always fails."""

    def process(self, query: str) -> dict:
        raise RuntimeError("internal detail that must not leak")


@contextlib.contextmanager
def serving(app: Nexus):
    app.start(block=False)
    try:
        assert app.mcp_url and app.mcp_url.endswith("/mcp")
        yield app.mcp_url
    finally:
        app.close()


@contextlib.asynccontextmanager
async def connect(url: str, key: str | None = None):
    """An SDK client over streamable HTTP, optionally sending ``X-API-Key``."""
    if key is None:
        async with Client(url) as client:
            yield client
        return
    async with httpx2.AsyncClient(headers={"X-API-Key": key}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


def run(coro):
    return asyncio.run(coro)


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def find_mcp_error(exc: BaseException) -> MCPError | None:
    """The MCPError inside ``exc`` (the client may wrap it in exception groups)."""
    if isinstance(exc, MCPError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = find_mcp_error(inner)
        if found is not None:
            return found
    cause = exc.__cause__ or exc.__context__
    return find_mcp_error(cause) if cause is not None else None


def raw_post(url: str, body: dict, **headers: str) -> httpx.Response:
    """A bare JSON-RPC POST (stateless, JSON response), to look at statuses and headers."""
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    return httpx.post(url, content=json.dumps(body), headers={**base, **headers}, timeout=10)


LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


@pytest.fixture
def app():
    a = Nexus(api_port=0, mcp_port=0)
    yield a
    a.close()


# ----------------------------------------------------------------------
# tools over streamable HTTP
# ----------------------------------------------------------------------
def test_list_and_call_over_http(app):
    deploy_multi_channel(AIAssistant(), app, "assistant")
    deploy_multi_channel(add, app, "add")
    deploy_as_api(add, app, "api_only")
    deploy_as_cli(add, app, "cli_only")

    async def main(url):
        async with connect(url) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"assistant", "add"}  # api/cli-only deployments are not tools

            t = tools["assistant"]
            assert t.description == AIAssistant.tool_description
            assert t.input_schema["type"] == "object"
            assert t.input_schema["required"] == ["query"]
            assert t.input_schema["properties"]["query"]["type"] == "string"
            # no sessions of its own: no session_id input listed (still accepted when given)
            assert "session_id" not in t.input_schema["properties"]
            assert "session_state" not in t.input_schema["properties"]
            assert t.output_schema == OUTPUT_SCHEMA

            a = tools["add"]
            assert a.description == "Add two integers."
            assert a.input_schema["properties"]["a"]["type"] == "integer"
            assert a.input_schema["properties"]["b"]["default"] == 2
            assert a.input_schema["required"] == ["a"]

            r = await client.call_tool("assistant", {"query": "What is AI?"})
            assert not r.is_error
            assert r.structured_content["outputs"] == {
                "response": "[mock:mock-model] You said: What is AI?"
            }
            assert r.structured_content["session_id"] is None
            assert r.structured_content["execution_time_ms"] >= 0
            assert 0 <= r.structured_content["agent_time_ms"] <= r.structured_content["execution_time_ms"]
            assert json.loads(text_of(r)) == r.structured_content  # text carries the same JSON

            r = await client.call_tool("add", {"a": 40, "b": 2})
            assert not r.is_error and r.structured_content["outputs"] == {"sum": 42}

            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool("api_only", {"a": 1})
            with pytest.raises(MCPError, match="Unknown tool: 'nope'"):
                await client.call_tool("nope", {})

    with serving(app) as url:
        run(main(url))


def test_wrong_json_types_are_refused_alike_on_mcp_and_the_api(app):
    """The tool publishes the inputSchema /openapi.json does, and both channels hold callers
    to it: a "5" or a true for an integer is a tool error naming the field, as it is a 422
    on the API, not a value pydantic's lax mode converts."""
    deploy_multi_channel(add, app, "add")
    cases = [{"a": "5"}, {"a": True}, {"a": 1, "b": "2"}, {"a": 1.5}, {"a": [1]}]

    async def main(url):
        async with connect(url) as client:
            for inputs in cases:
                r = await client.call_tool("add", inputs)
                assert r.is_error, inputs
                mcp_error = json.loads(text_of(r))["error"]
                api = httpx.post(
                    f"{app.api_url}/api/workflows/add/execute", json={"inputs": inputs}, timeout=30
                )
                assert api.status_code == 422, (inputs, api.text)
                api_error = api.json()["error"]
                assert mcp_error["type"] == api_error["type"] == "validation_error", inputs
                assert mcp_error["message"] == api_error["message"], inputs
                assert mcp_error["field"] == api_error["field"], inputs
            r = await client.call_tool("add", {"a": 40})  # the right type still passes
            assert not r.is_error and r.structured_content["outputs"] == {"sum": 42}

    with serving(app) as url:
        run(main(url))


def test_async_function_deployment(app):
    deploy_as_mcp(shout, app, "shout")

    async def main(url):
        async with connect(url) as client:
            r = await client.call_tool("shout", {"text": "hi"})
            assert r.structured_content["outputs"] == {"text": "HI"}

    with serving(app) as url:
        run(main(url))


def test_errors_are_tool_errors_without_tracebacks(app):
    deploy_multi_channel(AIAssistant(), app, "assistant")
    deploy_multi_channel(add, app, "add")
    deploy_multi_channel(Broken(), app, "broken")

    async def main(url):
        async with connect(url) as client:
            r = await client.call_tool("assistant", {})
            assert r.is_error and "'query'" in text_of(r) and "missing" in text_of(r)

            r = await client.call_tool("add", {"a": "not a number"})
            assert r.is_error and "'a'" in text_of(r)

            r = await client.call_tool("add", {"a": 1, "c": 3})
            assert r.is_error and "'c'" in text_of(r)

            r = await client.call_tool("add", {"a": 1, "session_id": 7})
            assert r.is_error and "session_id" in text_of(r)

            r = await client.call_tool("broken", {"query": "x"})
            msg = text_of(r)
            assert r.is_error and ERROR_ID.search(msg), msg
            assert "RuntimeError" in msg
            assert "internal detail" not in msg and "Traceback" not in msg
            assert r.structured_content is None

            r = await client.call_tool("assistant", {"query": "x", "session_id": "no-such-session"})
            assert r.is_error and "not found" in text_of(r)

    with serving(app) as url:
        run(main(url))


def test_tools_follow_the_registry_while_serving(app):
    deploy_multi_channel(add, app, "add")

    def mul(x: int, y: int) -> dict:
        """Multiply."""
        return {"product": x * y}

    def add3(a: int, b: int, c: int) -> dict:
        """Add three."""
        return {"sum": a + b + c}

    async def main(url):
        async with connect(url) as client:
            assert [t.name for t in (await client.list_tools()).tools] == ["add"]

            deploy_as_mcp(mul, app, "mul")  # after start
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"add", "mul"}
            assert tools["mul"].description == "Multiply."
            r = await client.call_tool("mul", {"x": 6, "y": 7})
            assert r.structured_content["outputs"] == {"product": 42}

            deploy_multi_channel(add3, app, "add")  # replaced: the new schema is served
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert tools["add"].input_schema["required"] == ["a", "b", "c"]

            app.unregister("mul")
            assert [t.name for t in (await client.list_tools()).tools] == ["add"]
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool("mul", {"x": 1, "y": 2})

    with serving(app) as url:
        run(main(url))


def test_session_id_continues_a_session(app):
    manager = NexusSessionManager(cleanup_interval=300)
    deploy_with_sessions(AIAssistant(), app, "assistant", manager)

    async def main(url):
        async with connect(url) as client:
            r1 = await client.call_tool("assistant", {"query": "first"})
            sid = r1.structured_content["session_id"]
            assert sid
            r2 = await client.call_tool("assistant", {"query": "second", "session_id": sid})
            assert not r2.is_error and r2.structured_content["session_id"] == sid
            return sid

    with serving(app) as url:
        sid = run(main(url))
    state = app.session_manager.get_session_state(sid)
    assert state["turns"] == 2
    assert state["last_query"] == "second"
    assert state["last_channel"] == "mcp"
    assert [h["query"] for h in state["history"]] == ["first", "second"]
    manager.close()


def test_session_started_on_another_channel(app):
    deploy_multi_channel(AIAssistant(), app, "assistant")
    session = app.session_manager.create_session(user_id="anonymous")
    app.invoke("assistant", {"query": "from the api"}, channel="api", session_id=session.session_id)

    async def main(url):
        async with connect(url) as client:
            r = await client.call_tool(
                "assistant", {"query": "from mcp", "session_id": session.session_id}
            )
            assert not r.is_error

    with serving(app) as url:
        run(main(url))
    state = app.session_manager.get_session_state(session.session_id)
    assert [h["channel"] for h in state["history"]] == ["api", "mcp"]


def test_monitoring_records_the_mcp_channel():
    app = Nexus(api_port=0, mcp_port=0, enable_monitoring=True)
    deploy_multi_channel(add, app, "add")

    async def main(url):
        async with connect(url) as client:
            for i in range(3):
                await client.call_tool("add", {"a": i})

    with serving(app) as url:
        run(main(url))
    assert "mcp" in app.metrics
    assert app.metrics.get_summary("mcp")["count"] == 3
    assert app.metrics.get_summary("workflow:add")["count"] == 3


async def since_arrival() -> dict:
    """An async agent (awaited in the tool call's context) reading the guard's clock."""
    started = request_started.get()
    if started is None:
        return {"arrived": False}
    return {"arrived": True, "ms": (time.perf_counter() - started) * 1000.0}


def test_execution_time_is_measured_from_the_request_reaching_the_platform(app):
    """Over HTTP the guard notes the arrival and the tool call measures from it; in-process nothing is set."""
    deploy_as_mcp(since_arrival, app, "since_arrival")

    async def over_http(url):
        async with connect(url) as client:
            return (await client.call_tool("since_arrival", {})).structured_content

    async def in_process():
        async with Client(build_mcp_server(app)) as client:
            return (await client.call_tool("since_arrival", {})).structured_content

    with serving(app) as url:
        result = run(over_http(url))
    assert result["outputs"]["arrived"] is True
    assert result["outputs"]["ms"] <= result["execution_time_ms"]
    assert result["agent_time_ms"] <= result["execution_time_ms"]
    assert run(in_process())["outputs"] == {"arrived": False}


def test_in_process_server_is_the_same(app):
    deploy_multi_channel(add, app, "add")

    async def main():
        async with Client(build_mcp_server(app)) as client:
            assert [t.name for t in (await client.list_tools()).tools] == ["add"]
            r = await client.call_tool("add", {"a": 1})
            assert r.structured_content["outputs"] == {"sum": 3}

    run(main())


def test_odd_inputs_and_outputs_in_process(app):
    import datetime

    def lookup(session_id: str) -> dict:
        """A deployment whose own input is called session_id keeps it as an input."""
        return {"looked_up": session_id}

    def when() -> dict:
        return {"at": datetime.date(2024, 1, 2), "n": 1}

    def plain(x: int) -> int:
        return x * 2

    deploy_as_mcp(lookup, app, "lookup")
    deploy_as_mcp(when, app, "when")
    deploy_as_mcp(plain, app, "plain")

    async def main():
        async with Client(build_mcp_server(app)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert tools["lookup"].input_schema["required"] == ["session_id"]
            r = await client.call_tool("lookup", {"session_id": "abc"})
            assert r.structured_content["outputs"] == {"looked_up": "abc"}
            assert r.structured_content["session_id"] is None
            r = await client.call_tool("when", {})  # values JSON cannot hold come back as text
            assert r.structured_content["outputs"] == {"at": "2024-01-02", "n": 1}
            r = await client.call_tool("plain", {"x": 21})  # non-dict results are wrapped
            assert r.structured_content["outputs"] == {"result": 42}

    run(main())


def test_extra_sdk_tools_are_served_after_deployments(app):
    deploy_multi_channel(add, app, "add")
    server = build_mcp_server(app)

    @server.tool()
    def ping() -> str:
        """Say pong."""
        return "pong"

    @server.tool(name="add")
    def shadowed(a: int) -> int:  # a deployment wins a name clash
        return -1

    async def main():
        async with Client(server) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert names == ["add", "ping"]
            assert text_of(await client.call_tool("ping", {})) == "pong"
            r = await client.call_tool("add", {"a": 1})
            assert r.structured_content["outputs"] == {"sum": 3}

    run(main())


# ----------------------------------------------------------------------
# auth, rate limit, transport security
# ----------------------------------------------------------------------
def test_auth_required_over_http():
    app = Nexus(
        api_port=0, mcp_port=0, enable_auth=True, api_keys={"alice-key": "alice", "bob-key": "bob"}
    )
    deploy_multi_channel(AIAssistant(), app, "assistant")

    async def main(url):
        with pytest.raises(BaseException) as info:  # noqa: B017 - the client wraps it in groups
            async with connect(url) as client:
                await client.list_tools()
        err = find_mcp_error(info.value)
        assert err is not None, repr(info.value)
        assert err.error.data["http_status"] == 401
        assert "missing API key" in err.error.message

        with pytest.raises(BaseException) as info:  # noqa: B017
            async with connect(url, key="wrong") as client:
                await client.list_tools()
        err = find_mcp_error(info.value)
        assert err is not None and err.error.data["http_status"] == 401
        assert "invalid API key" in err.error.message

        async with connect(url, key="alice-key") as client:
            r = await client.call_tool("assistant", {"query": "hi"})
            assert not r.is_error

    with serving(app) as url:
        r = raw_post(url, LIST)
        assert r.status_code == 401
        body = r.json()
        assert body["error"]["type"] == "unauthorized" and body["error"]["message"]
        assert "WWW-Authenticate" in r.headers
        assert raw_post(url, LIST, Authorization="Bearer bob-key").status_code == 200
        assert raw_post(url, LIST, **{"X-API-Key": "bob-key"}).status_code == 200
        assert raw_post(url, LIST, Authorization="Bearer nope").status_code == 401
        run(main(url))


def test_sessions_belong_to_their_principal():
    manager = NexusSessionManager(cleanup_interval=300)
    app = Nexus(
        api_port=0, mcp_port=0, enable_auth=True, api_keys={"alice-key": "alice", "bob-key": "bob"}
    )
    deploy_with_sessions(AIAssistant(), app, "assistant", manager)

    async def main(url):
        async with connect(url, key="alice-key") as alice:
            r = await alice.call_tool("assistant", {"query": "mine"})
            sid = r.structured_content["session_id"]
        async with connect(url, key="bob-key") as bob:
            r = await bob.call_tool("assistant", {"query": "steal", "session_id": sid})
            assert r.is_error and "not found" in text_of(r)
        async with connect(url, key="alice-key") as alice:
            r = await alice.call_tool("assistant", {"query": "again", "session_id": sid})
            assert not r.is_error
        return sid

    with serving(app) as url:
        sid = run(main(url))
    assert manager.get_session(sid).user_id == "alice"
    state = manager.get_session_state(sid)
    assert state["turns"] == 2 and state["last_query"] == "again"
    manager.close()


def test_rate_limit_answers_429_after_n_requests():
    app = Nexus(api_port=0, mcp_port=0, rate_limit=5)
    deploy_multi_channel(add, app, "add")
    with serving(app) as url:
        for i in range(5):
            r = raw_post(url, LIST)
            assert r.status_code == 200, r.text
            assert r.headers["X-RateLimit-Limit"] == "5"
            assert int(r.headers["X-RateLimit-Remaining"]) == 4 - i
        r = raw_post(url, LIST)
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["X-RateLimit-Limit"] == "5"
        assert r.json()["error"]["type"] == "rate_limited"

        async def main():
            with pytest.raises(BaseException) as info:  # noqa: B017
                async with connect(url) as client:
                    await client.call_tool("add", {"a": 1})
            err = find_mcp_error(info.value)
            assert err is not None and err.error.data["http_status"] == 429
            assert "rate limit" in err.error.message

        run(main())


def test_get_is_405_before_auth_as_a_json_rpc_error():
    """Stateless JSON mode has no event stream to open: GET is refused, with or without a key."""
    app = Nexus(api_port=0, mcp_port=0, enable_auth=True, api_keys={"alice-key": "alice"})
    with serving(app) as url:
        r = httpx.get(url, headers={"Accept": "text/event-stream"}, timeout=10)
        assert r.status_code == 405
        assert r.headers["allow"] == "POST, DELETE"
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["jsonrpc"] == "2.0" and body["id"] is None
        assert body["error"]["type"] == "method_not_allowed" and "POST" in body["error"]["message"]
        assert body["error"]["data"] == {"type": "method_not_allowed", "http_status": 405}


def test_refusals_carry_their_headers_and_rate_limit_counts_bad_keys():
    app = Nexus(api_port=0, mcp_port=0, enable_auth=True, api_keys={"alice-key": "alice"}, rate_limit=2)
    with serving(app) as url:
        r = raw_post(url, LIST, **{"X-API-Key": "guess"})
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.headers["X-RateLimit-Limit"] == "2" and r.headers["X-RateLimit-Remaining"] == "1"
        assert r.json()["error"]["data"]["http_status"] == 401
        assert raw_post(url, LIST, **{"X-API-Key": "guess"}).status_code == 401
        r = raw_post(url, LIST, **{"X-API-Key": "guess"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        ok = raw_post(url, LIST, **{"X-API-Key": "alice-key"})  # alice has her own bucket
        assert ok.status_code == 200 and ok.headers["X-RateLimit-Remaining"] == "1"


def test_dns_rebinding_protection_on_loopback(app):
    """The API's Host/Origin rules (the guard), answered as JSON-RPC errors naming the option."""
    deploy_multi_channel(add, app, "add")
    with serving(app) as url:
        assert raw_post(url, LIST).status_code == 200
        r = raw_post(url, LIST, Host="evil.example.com")
        assert r.status_code == 421, r.status_code
        assert r.json()["error"]["type"] == "misdirected_request"
        assert "allowed_hosts" in r.json()["error"]["message"]
        r = raw_post(url, LIST, Origin="http://evil.example.com")
        assert r.status_code == 403, r.status_code
        assert r.json()["error"]["data"] == {"type": "forbidden", "http_status": 403}
        # a local tool (an MCP inspector on another loopback port) is welcome
        assert raw_post(url, LIST, Origin="http://localhost:6274").status_code == 200


def test_allowed_hosts_apply_to_mcp_too():
    app = Nexus(api_port=0, mcp_port=0, allowed_hosts=["mcp.example.com"])
    deploy_multi_channel(add, app, "add")
    with serving(app) as url:
        assert raw_post(url, LIST, Host="mcp.example.com").status_code == 200
        assert raw_post(url, LIST, Host="localhost").status_code == 421
        assert raw_post(url, LIST).status_code == 200  # its own address (127.0.0.1) always


def test_non_json_bodies_are_415_before_the_sdk(app):
    deploy_multi_channel(add, app, "add")
    with serving(app) as url:
        r = raw_post(url, LIST, **{"Content-Type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"]["type"] == "unsupported_media_type"
        assert r.json()["jsonrpc"] == "2.0"


# ----------------------------------------------------------------------
# stdio
# ----------------------------------------------------------------------
APP_FILE = """
    import sys
    from nexus_lab import AIAssistant, BaseAgent, Nexus, NexusSessionManager
    from nexus_lab import deploy_as_api, deploy_multi_channel, deploy_with_sessions

    print("printed while importing the app")  # must not reach the MCP stream


    class Noisy(BaseAgent):
        \"\"\"Prints, then answers.\"\"\"

        def process(self, word: str) -> dict:
            print("printed by an agent")
            return {"echo": word}


    def secret(x: int) -> dict:
        return {"x": x}


    app = Nexus()
    deploy_multi_channel(AIAssistant(), app, "assistant")
    deploy_multi_channel(Noisy(), app, "noisy")
    deploy_with_sessions(AIAssistant(), app, "chat", NexusSessionManager(cleanup_interval=300))
    deploy_as_api(secret, app, "api_only")
"""


def _stdio_check(params: StdioServerParameters) -> None:
    async def main():
        async with Client(params) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"assistant", "noisy", "chat"}
            assert tools["assistant"].description == AIAssistant.tool_description
            r = await client.call_tool("assistant", {"query": "over stdio"})
            assert r.structured_content["outputs"] == {
                "response": "[mock:mock-model] You said: over stdio"
            }
            r = await client.call_tool("noisy", {"word": "hello"})
            assert r.structured_content["outputs"] == {"echo": "hello"}
            r = await client.call_tool("assistant", {})
            assert r.is_error and "'query'" in text_of(r)
            r1 = await client.call_tool("chat", {"query": "one"})
            sid = r1.structured_content["session_id"]
            r2 = await client.call_tool("chat", {"query": "two", "session_id": sid})
            assert not r2.is_error and r2.structured_content["session_id"] == sid
            r3 = await client.call_tool("chat", {"query": "x", "session_id": "unknown-id"})
            assert r3.is_error and "not found" in text_of(r3)

    asyncio.run(main())


def _write_app(tmp_path: Path) -> str:
    path = tmp_path / "stdio_app.py"
    path.write_text(textwrap.dedent(APP_FILE))
    return f"{path}:app"


def test_stdio_via_python_module(tmp_path):
    ref = _write_app(tmp_path)
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "nexus_lab.platform.mcp", ref], cwd=str(tmp_path)
    )
    _stdio_check(params)


def test_stdio_via_nexus_cli(tmp_path):
    nexus = VENV_BIN / "nexus"
    if not nexus.exists():
        pytest.skip("the nexus console script is not installed")
    ref = _write_app(tmp_path)
    _stdio_check(StdioServerParameters(command=str(nexus), args=["mcp", ref], cwd=str(tmp_path)))


def test_module_entry_point_rejects_a_bad_ref(tmp_path):
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "nexus_lab.platform.mcp", str(tmp_path / "missing.py") + ":app"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_session_id_is_listed_only_for_deployments_with_sessions(app):
    from nexus_lab import NexusSessionManager, deploy_with_sessions

    manager = NexusSessionManager(cleanup_interval=300)
    deploy_with_sessions(AIAssistant(), app, "chat", manager)
    deploy_multi_channel(add, app, "add")

    async def main(url):
        async with connect(url) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert tools["chat"].input_schema["properties"]["session_id"]["type"] == "string"
            assert "session_id" not in tools["add"].input_schema["properties"]

    with app.running():
        asyncio.run(main(app.mcp_url))
    manager.close()
