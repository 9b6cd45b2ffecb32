"""The HTTP API on a real uvicorn (127.0.0.1, port 0), exercised with httpx.

No mocks and no timing assertions: concurrency is shown with events (a slow
agent is still in flight while other requests complete).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from nexus_lab import (
    ConfigError,
    Nexus,
    NexusSessionManager,
    deploy_as_api,
    deploy_as_cli,
    deploy_as_mcp,
    deploy_multi_channel,
    deploy_with_sessions,
)
from nexus_lab.errors import (
    AuthenticationError,
    InputValidationError,
    MethodNotAllowed,
    NexusError,
    RateLimitExceeded,
    ServiceUnavailable,
)
from nexus_lab.platform.guard import (
    authenticate_request,
    check_rate,
    error_response,
    guard_request,
    request_started,
)


# ----------------------------------------------------------------------------- agents
def echo(text: str, n: int = 1) -> dict:
    """Repeat a text."""
    return {"echo": text * n}


def total(values: list[int]) -> dict:
    return {"total": sum(values)}


def boom(x: int) -> dict:
    raise RuntimeError("secret internal detail")


class Item(BaseModel):
    sku: str
    price: float


def order(item: Item, qty: int = 1) -> dict:
    return {"cost": item.price * qty}


class CountingAgent:
    """Counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def process(self, query: str) -> dict:
        with self._lock:
            self.calls += 1
            return {"response": f"#{self.calls}: {query}"}


class ChatAgent:
    def process(self, query: str) -> dict:
        return {"response": f"you said {query}"}


@pytest.fixture
def client(make_app, serve):
    app = make_app()
    deploy_multi_channel(echo, app, "echo")
    deploy_multi_channel(total, app, "total")
    deploy_multi_channel(boom, app, "boom")
    deploy_multi_channel(order, app, "order")
    c = serve(app)
    c.app = app
    return c


#: bodies sent as raw bytes declare their type, as a real client does (anything else is a 415)
JSON = {"content-type": "application/json"}


def _error(resp: httpx.Response, status: int, type_: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if type_ is not None:
        assert body["error"]["type"] == type_
    return body["error"]


# ----------------------------------------------------------------------------- routes
def test_execute_returns_outputs_session_and_time(client):
    r = client.post("/api/workflows/echo/execute", json={"inputs": {"text": "ab", "n": 2}})
    assert r.status_code == 200
    body = r.json()
    assert body["outputs"] == {"echo": "abab"}
    assert body["session_id"] is None
    assert isinstance(body["execution_time_ms"], (int, float)) and body["execution_time_ms"] >= 0
    assert isinstance(body["agent_time_ms"], (int, float))
    assert 0 <= body["agent_time_ms"] <= body["execution_time_ms"]
    assert r.headers["content-type"] == "application/json"


async def since_arrival() -> dict:
    """An async agent (runs on the loop, in the request's context) reading the guard's clock."""
    started = request_started.get()
    if started is None:
        return {"arrived": False}
    return {"arrived": True, "ms": (time.perf_counter() - started) * 1000.0}


def test_execution_time_is_measured_from_the_request_reaching_the_platform(make_app, serve):
    """The guard notes the arrival first; the execution path measures from it (no timing thresholds)."""
    app = make_app()
    deploy_multi_channel(since_arrival, app, "since_arrival")
    c = serve(app)
    body = c.post("/api/workflows/since_arrival/execute", json={"inputs": {}}).json()
    assert body["outputs"]["arrived"] is True
    # the agent ran after the arrival and before the response was ready
    assert body["outputs"]["ms"] <= body["execution_time_ms"]
    assert body["agent_time_ms"] <= body["execution_time_ms"]
    # outside a request nothing is set (in-process calls measure from the call)
    assert app.invoke("since_arrival", {}) == {"arrived": False}


def test_execute_with_nested_model_input(client):
    r = client.post(
        "/api/workflows/order/execute",
        json={"inputs": {"item": {"sku": "a", "price": 2.5}, "qty": 2}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == {"cost": 5.0}


def test_list_and_get_workflows(client):
    r = client.get("/api/workflows")
    assert r.status_code == 200
    workflows = {w["name"]: w for w in r.json()["workflows"]}
    assert set(workflows) == {"echo", "total", "boom", "order"}
    w = workflows["echo"]
    assert w["endpoint"] == "/api/workflows/echo/execute"
    assert w["input_schema"]["required"] == ["text"]
    assert set(w["input_schema"]["properties"]) == {"text", "n"}
    assert w["description"] == "Repeat a text."
    one = client.get("/api/workflows/echo")
    assert one.status_code == 200 and one.json() == w
    err = _error(client.get("/api/workflows/nope"), 404, "not_found")
    assert "nope" in err["message"]


def test_health_is_served(client):
    r = client.get("/health")
    assert r.status_code == 200
    health = r.json()
    assert health["status"] == "healthy"
    assert health["channels"]["api"]["state"] == "serving"
    assert health["channels"]["api"]["url"] == client.app.api_url
    assert "echo" in health["deployments"]


def _resolve(doc: dict, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return out + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_openapi_describes_every_deployment_and_route(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    paths = doc["paths"]
    for name in ("echo", "total", "boom", "order"):
        post = paths[f"/api/workflows/{name}/execute"]["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["inputs"]
        assert set(body["properties"]) == {"inputs", "session_id"}
        assert (
            "422" in post["responses"] and "404" in post["responses"] and "413" in post["responses"]
        )
        assert post["responses"]["422"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    echo_inputs = _resolve(
        doc,
        paths["/api/workflows/echo/execute"]["post"]["requestBody"]["content"]["application/json"][
            "schema"
        ]["properties"]["inputs"]["$ref"],
    )
    assert echo_inputs["required"] == ["text"]
    assert echo_inputs["properties"]["n"]["type"] == "integer"
    assert "error" in doc["components"]["schemas"]["Error"]["properties"]
    result = doc["components"]["schemas"]["ExecutionResult"]
    assert result["properties"]["agent_time_ms"]["type"] == "number"
    assert "agent_time_ms" not in result["required"]  # optional: older servers do not send it
    assert set(result["required"]) == {"outputs", "session_id", "execution_time_ms"}
    for path, methods in {
        "/api/workflows": {"get"},
        "/api/workflows/{name}": {"get"},
        "/api/sessions": {"get", "post"},
        "/api/sessions/{session_id}": {"get", "delete"},
        "/health": {"get"},
        "/openapi.json": {"get"},
    }.items():
        assert set(paths[path]) == methods, path
    assert "/metrics" not in paths  # monitoring is off for this app
    # every $ref resolves inside the document (pydantic $defs are hoisted)
    refs = _refs(doc)
    assert any("Item" in ref for ref in refs)
    for ref in refs:
        _resolve(doc, ref)


def test_openapi_document_is_valid_openapi_31(client):
    from openapi_spec_validator import validate

    validate(client.get("/openapi.json").json())  # raises on any violation of the OpenAPI 3.1 schema


def test_openapi_input_schema_validates_real_inputs(client):
    jsonschema = pytest.importorskip("jsonschema")
    doc = client.get("/openapi.json").json()
    schema = dict(_resolve(doc, "#/components/schemas/order_inputs"))
    schema["components"] = doc["components"]  # make '#/components/...' refs resolvable
    jsonschema.validate({"item": {"sku": "a", "price": 1}, "qty": 3}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"item": {"sku": "a"}}, schema)


def test_openapi_follows_new_deployments(client):
    before = client.get("/openapi.json").json()
    assert "/api/workflows/late/execute" not in before["paths"]
    deploy_multi_channel(echo, client.app, "late")
    after = client.get("/openapi.json").json()
    assert "/api/workflows/late/execute" in after["paths"]
    r = client.post("/api/workflows/late/execute", json={"inputs": {"text": "x"}})
    assert r.status_code == 200


# ----------------------------------------------------------------------------- CLI channel
def test_cli_channel_header_coerces_strings_and_reaches_cli_only_deployments(make_app, serve):
    app = make_app(enable_monitoring=True)
    deploy_as_cli(total, app, "cli_total")
    deploy_as_api(total, app, "api_total")
    c = serve(app)
    body = {"inputs": {"values": "[1, 2, 3]"}}
    r = c.post("/api/workflows/cli_total/execute", json=body, headers={"X-Nexus-Channel": "cli"})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == {"total": 6}
    # the same string on the API channel is not coerced
    _error(c.post("/api/workflows/api_total/execute", json=body), 422, "validation_error")
    # a CLI-only deployment is not on the API channel, and vice versa
    _error(
        c.post("/api/workflows/cli_total/execute", json={"inputs": {"values": [1]}}),
        404,
        "not_found",
    )
    _error(
        c.post(
            "/api/workflows/api_total/execute",
            json={"inputs": {"values": [1]}},
            headers={"X-Nexus-Channel": "cli"},
        ),
        404,
    )
    assert "cli" in app.metrics.categories()


def test_unknown_channel_header_is_400(client):
    r = client.post(
        "/api/workflows/echo/execute",
        json={"inputs": {"text": "a"}},
        headers={"X-Nexus-Channel": "mcp"},
    )
    err = _error(r, 400, "bad_request")
    assert "X-Nexus-Channel" in err["message"]


def test_mcp_only_deployment_is_not_on_http(make_app, serve):
    app = make_app()
    deploy_as_mcp(echo, app, "mcp_echo")
    c = serve(app)
    _error(c.post("/api/workflows/mcp_echo/execute", json={"inputs": {"text": "a"}}), 404)
    assert "/api/workflows/mcp_echo/execute" not in c.get("/openapi.json").json()["paths"]


# ----------------------------------------------------------------------------- error matrix
def test_unknown_workflow_is_404(client):
    err = _error(client.post("/api/workflows/nope/execute", json={"inputs": {}}), 404, "not_found")
    assert "nope" in err["message"]


def test_unknown_route_is_404_json(client):
    err = _error(client.get("/no/such/route"), 404, "not_found")
    assert "/no/such/route" in err["message"]


def test_wrong_method_is_405_json(client):
    r = client.get("/api/workflows/echo/execute")
    err = _error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"] and "POST" in err["message"]
    _error(client.put("/health"), 405)
    _error(client.delete("/api/workflows"), 405)


@pytest.mark.parametrize(
    "raw", [b"{not json", b'{"inputs": {"text": "a"}', "\xff\xfe".encode("latin-1")]
)
def test_malformed_json_is_400(client, raw):
    r = client.post(
        "/api/workflows/echo/execute", content=raw, headers=JSON
    )
    err = _error(r, 400, "bad_request")
    assert "JSON" in err["message"]


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"text": "a"}, "inputs", "inputs"),  # inputs at the top level are NOT inputs
        ({}, "inputs", "inputs"),
        ([1, 2], "inputs", "JSON object"),
        ("text", "inputs", "JSON object"),
        ({"inputs": {"text": "a"}, "sesion_id": "x"}, "sesion_id", "sesion_id"),
        ({"inputs": {"text": "a"}, "session_id": 5}, "session_id", "session_id"),
        ({"inputs": [1]}, "inputs", "inputs"),
    ],
)
def test_wrong_body_shape_is_422_explaining_it(client, body, field, words):
    err = _error(client.post("/api/workflows/echo/execute", json=body), 422, "validation_error")
    assert err["field"] == field
    assert words in err["message"]
    if field == "inputs" and isinstance(body, dict) and "inputs" not in body:
        assert '{"inputs": {...}' in err["message"]


def test_empty_body_is_422(client):
    err = _error(client.post("/api/workflows/echo/execute", content=b""), 422, "validation_error")
    assert "inputs" in err["message"]


@pytest.mark.parametrize(
    "inputs, field",
    [
        ({}, "text"),  # missing
        ({"text": "a", "n": "many"}, "n"),  # wrong type
        ({"text": "a", "bogus": 1}, "bogus"),  # unknown
        ({"text": ["a"]}, "text"),
    ],
)
def test_inputs_not_matching_schema_are_422_naming_the_field(client, inputs, field):
    err = _error(
        client.post("/api/workflows/echo/execute", json={"inputs": inputs}), 422, "validation_error"
    )
    assert err["field"] == field
    assert repr(field) in err["message"]


def test_body_over_limit_is_413(make_app, serve):
    app = make_app(max_body_bytes=200)
    deploy_multi_channel(echo, app, "echo")
    c = serve(app)

    def body(size: int) -> bytes:
        head = b'{"inputs":{"text":"'
        tail = b'"}}'
        return head + b"a" * (size - len(head) - len(tail)) + tail

    ok = c.post("/api/workflows/echo/execute", content=body(200), headers=JSON)
    assert ok.status_code == 200, ok.text
    err = _error(c.post("/api/workflows/echo/execute", content=body(201), headers=JSON), 413, "payload_too_large")
    assert "200" in err["message"]
    # sessions routes share the limit
    _error(c.post("/api/sessions", content=b'{"metadata": {"a": "' + b"x" * 300 + b'"}}', headers=JSON), 413)
    # the connection stays usable afterwards
    assert c.get("/health").status_code == 200


def test_chunked_body_over_limit_is_413_while_streaming(make_app, serve):
    """No Content-Length: the limit is enforced while reading, not after buffering it all."""
    app = make_app(max_body_bytes=1000)
    deploy_multi_channel(echo, app, "echo")
    c = serve(app)
    sent = []

    def chunks():
        yield b'{"inputs":{"text":"'
        for _ in range(20):
            sent.append(1)
            yield b"a" * 500
        yield b'"}}'

    r = c.post("/api/workflows/echo/execute", content=chunks(), headers=JSON)
    assert "content-length" not in r.request.headers
    _error(r, 413, "payload_too_large")

    def small():
        yield b'{"inputs":'
        yield b'{"text":"hi"}}'

    ok = c.post("/api/workflows/echo/execute", content=small(), headers=JSON)
    assert ok.status_code == 200 and ok.json()["outputs"] == {"echo": "hi"}


def test_default_limit_is_one_mib(client):
    assert client.app.max_body_bytes == 1024 * 1024
    big = b'{"inputs":{"text":"' + b"a" * (1024 * 1024) + b'"}}'
    _error(client.post("/api/workflows/echo/execute", content=big, headers=JSON), 413, "payload_too_large")


def test_agent_exception_is_500_with_error_id_and_no_traceback(client, caplog):
    with caplog.at_level(logging.ERROR, logger="nexus_lab"):
        r = client.post("/api/workflows/boom/execute", json={"inputs": {"x": 1}})
    err = _error(r, 500, "agent_error")
    assert err["error_id"] and err["error_id"] in err["message"]
    assert "Traceback" not in r.text and "secret internal detail" not in r.text
    assert err["error_id"] in caplog.text  # the log has the id to look up


class BrokenManager(NexusSessionManager):
    """A session manager with a bug in list_sessions (a real subclass, not a mock)."""

    def list_sessions(self, user_id=None):
        raise RuntimeError("bug in the store: secret path /var/lib/x")


def test_unexpected_server_bug_is_500_json(make_app, serve, caplog):
    manager = BrokenManager(cleanup_interval=300)
    app = make_app(session_manager=manager)
    c = serve(app)
    with caplog.at_level(logging.ERROR, logger="nexus_lab"):
        r = c.get("/api/sessions")
    err = _error(r, 500, "internal_error")
    assert err["error_id"] in err["message"]
    assert "secret" not in r.text and "Traceback" not in r.text
    assert err["error_id"] in caplog.text
    manager.close()


def test_non_json_outputs_are_serialised_not_500(make_app, serve):
    import datetime as dt

    def when(day: int) -> dict:
        return {"date": dt.date(2024, 1, day)}

    app = make_app()
    deploy_multi_channel(when, app, "when")
    c = serve(app)
    r = c.post("/api/workflows/when/execute", json={"inputs": {"day": 2}})
    assert r.status_code == 200 and r.json()["outputs"] == {"date": "2024-01-02"}


# ----------------------------------------------------------------------------- no cache, concurrency
def test_identical_posts_run_the_agent_twice(make_app, serve):
    agent = CountingAgent()
    app = make_app()
    deploy_multi_channel(agent, app, "counter")
    c = serve(app)
    body = {"inputs": {"query": "same"}}
    r1 = c.post("/api/workflows/counter/execute", json=body)
    r2 = c.post("/api/workflows/counter/execute", json=body)
    assert r1.status_code == r2.status_code == 200
    assert agent.calls == 2
    assert r1.json()["outputs"] != r2.json()["outputs"]


def test_slow_sync_agent_does_not_block_other_requests(make_app, serve):
    started = threading.Event()
    release = threading.Event()

    def slow(x: int) -> dict:
        started.set()
        release.wait(30)
        return {"x": x, "released": release.is_set()}

    app = make_app()
    deploy_multi_channel(slow, app, "slow")
    deploy_multi_channel(echo, app, "echo")
    c = serve(app)
    result: dict[str, Any] = {}

    def call_slow() -> None:
        with httpx.Client(base_url=app.api_url, trust_env=False, timeout=60) as other:
            result["resp"] = other.post("/api/workflows/slow/execute", json={"inputs": {"x": 7}})

    t = threading.Thread(target=call_slow)
    t.start()
    try:
        assert started.wait(20), "the slow agent never started"
        # while the slow call is in flight, other requests complete
        assert c.get("/health").status_code == 200
        fast = c.post("/api/workflows/echo/execute", json={"inputs": {"text": "quick"}})
        assert fast.status_code == 200 and fast.json()["outputs"] == {"echo": "quick"}
        assert t.is_alive() and "resp" not in result  # ordering: the slow call has not finished
    finally:
        release.set()
        t.join(30)
    assert result["resp"].status_code == 200
    assert result["resp"].json()["outputs"] == {"x": 7, "released": True}


# ----------------------------------------------------------------------------- sessions
def test_session_routes_create_get_list_delete(make_app, serve):
    app = make_app()
    c = serve(app)
    r = c.post("/api/sessions", json={"user_id": "ada", "metadata": {"plan": "pro"}, "ttl": 600})
    assert r.status_code == 201, r.text
    s = r.json()
    sid = s["session_id"]
    assert s["user_id"] == "ada" and s["metadata"] == {"plan": "pro"} and s["ttl"] == 600
    assert s["channels"] == ["api"]
    cli = c.post("/api/sessions", json={"user_id": "cy"}, headers={"X-Nexus-Channel": "cli"})
    assert cli.json()["channels"] == ["cli"]
    assert c.delete(f"/api/sessions/{cli.json()['session_id']}").status_code == 200
    assert c.post("/api/sessions", json={"user_id": "bob"}).status_code == 201
    anon = c.post("/api/sessions")  # no body at all
    assert anon.status_code == 201 and anon.json()["user_id"] == "anonymous"

    got = c.get(f"/api/sessions/{sid}")
    assert got.status_code == 200
    assert got.json()["session_id"] == sid and got.json()["state"] == {}

    everyone = c.get("/api/sessions").json()
    assert everyone["count"] == 3
    ada = c.get("/api/sessions", params={"user_id": "ada"}).json()
    assert [x["session_id"] for x in ada["sessions"]] == [sid]

    d = c.delete(f"/api/sessions/{sid}")
    assert d.status_code == 200 and d.json() == {"deleted": True, "session_id": sid}
    _error(c.get(f"/api/sessions/{sid}"), 404, "session_not_found")
    _error(c.delete(f"/api/sessions/{sid}"), 404)


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"ttl": -1}, 422, "ttl"),
        ({"ttl": "soon"}, 422, "ttl"),
        ({"metadata": [1]}, 422, "metadata"),
        ({"user_id": ""}, 422, "user_id"),
        ({"owner": "x"}, 422, "owner"),
    ],
)
def test_create_session_validates_its_body(make_app, serve, body, status, field):
    c = serve(make_app())
    err = _error(c.post("/api/sessions", json=body), status, "validation_error")
    assert err["field"] == field


def test_create_session_malformed_json_is_400(make_app, serve):
    c = serve(make_app())
    _error(c.post("/api/sessions", content=b"{oops", headers=JSON), 400, "bad_request")


def test_deploy_with_sessions_over_http(make_app, serve):
    app = make_app()
    manager = NexusSessionManager(cleanup_interval=300)
    deploy_with_sessions(ChatAgent(), app, "chat", manager)
    c = serve(app)
    first = c.post("/api/workflows/chat/execute", json={"inputs": {"query": "hello"}})
    assert first.status_code == 200
    sid = first.json()["session_id"]
    assert sid
    second = c.post(
        "/api/workflows/chat/execute", json={"inputs": {"query": "again"}, "session_id": sid}
    )
    assert second.status_code == 200 and second.json()["session_id"] == sid
    state = c.get(f"/api/sessions/{sid}").json()["state"]
    assert state["turns"] == 2
    assert state["last_query"] == "again"
    assert state["last_channel"] == "api"
    _error(
        c.post(
            "/api/workflows/chat/execute",
            json={"inputs": {"query": "x"}, "session_id": "no-such-session"},
        ),
        404,
        "session_not_found",
    )
    manager.close()


# ----------------------------------------------------------------------------- monitoring
def test_metrics_endpoint_with_monitoring(make_app, serve):
    app = make_app(enable_monitoring=True)
    manager = NexusSessionManager(cleanup_interval=300)
    deploy_with_sessions(ChatAgent(), app, "chat", manager)
    deploy_multi_channel(boom, app, "boom")
    c = serve(app)
    for q in ("a", "b"):
        assert (
            c.post("/api/workflows/chat/execute", json={"inputs": {"query": q}}).status_code == 200
        )
    assert c.post("/api/workflows/boom/execute", json={"inputs": {"x": 1}}).status_code == 500
    r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert "# TYPE nexus_request_duration_seconds summary" in text
    assert 'nexus_request_duration_seconds{category="api",quantile="0.5"} ' in text
    assert 'nexus_request_duration_seconds{category="api",quantile="0.99"} ' in text
    assert 'nexus_request_duration_seconds_count{category="api"} 3\n' in text
    assert 'nexus_request_duration_seconds_sum{category="api"} ' in text
    assert 'nexus_request_duration_seconds_count{category="workflow:chat"} 2\n' in text
    assert 'nexus_request_errors_total{category="api"} 1\n' in text
    assert 'nexus_request_errors_total{category="workflow:boom"} 1\n' in text
    assert "nexus_active_sessions 2\n" in text
    # the agent's own time is its own summary, not a request category
    assert "# TYPE nexus_agent_duration_seconds summary" in text
    assert 'nexus_agent_duration_seconds_count{channel="api"} 3\n' in text
    assert 'category="agent:' not in text
    # every sample line is "name{labels} value" or "name value" with a float value
    for line in text.splitlines():
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
    assert "/metrics" in c.get("/openapi.json").json()["paths"]
    manager.close()


def test_monitoring_off_records_nothing_and_metrics_is_404(client):
    assert (
        client.post("/api/workflows/echo/execute", json={"inputs": {"text": "a"}}).status_code
        == 200
    )
    err = _error(client.get("/metrics"), 404, "not_found")
    assert "monitoring" in err["message"]
    assert client.app.metrics.categories() == []


# ----------------------------------------------------------------------------- auth
KEYS = {"alice-key-123": "alice", "bob-key-456": "bob"}


@pytest.fixture
def authed(make_app, serve):
    app = make_app(enable_auth=True, api_keys=KEYS)
    manager = NexusSessionManager(cleanup_interval=300)
    deploy_with_sessions(ChatAgent(), app, "chat", manager)
    deploy_multi_channel(echo, app, "echo")
    c = serve(app)
    c.app = app
    yield c
    manager.close()


ALICE = {"Authorization": "Bearer alice-key-123"}
BOB = {"X-API-Key": "bob-key-456"}


def test_auth_accepts_bearer_and_x_api_key(authed):
    r = authed.post("/api/workflows/echo/execute", json={"inputs": {"text": "a"}}, headers=ALICE)
    assert r.status_code == 200
    r = authed.post("/api/workflows/echo/execute", json={"inputs": {"text": "b"}}, headers=BOB)
    assert r.status_code == 200
    assert authed.get("/api/workflows", headers=BOB).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": "wrong"},
        {"Authorization": "Basic alice-key-123"},
        {"Authorization": "Bearer"},
        {"X-API-Key": ""},
    ],
)
def test_auth_rejects_missing_or_wrong_keys(authed, headers, caplog):
    with caplog.at_level(logging.DEBUG):
        for method, path in [
            ("POST", "/api/workflows/echo/execute"),
            ("GET", "/api/workflows"),
            ("GET", "/openapi.json"),
            ("GET", "/api/sessions"),
            ("GET", "/no/such"),
        ]:
            r = authed.request(method, path, headers=headers, json={"inputs": {"text": "a"}})
            _error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
    server_logs = "\n".join(
        rec.getMessage()
        for rec in caplog.records
        if rec.name.startswith(("nexus_lab", "uvicorn", "starlette"))
    )
    assert "alice-key-123" not in server_logs and "wrong" not in server_logs


def test_health_is_open_with_auth(authed):
    r = authed.get("/health")
    assert r.status_code == 200 and r.json()["auth"] is True


def test_sessions_belong_to_their_user(authed):
    # a session made by an execute call belongs to the caller
    sid = authed.post(
        "/api/workflows/chat/execute", json={"inputs": {"query": "hi"}}, headers=ALICE
    ).json()["session_id"]
    assert authed.get(f"/api/sessions/{sid}", headers=ALICE).json()["user_id"] == "alice"
    # bob cannot see, continue, or delete it: it looks missing
    _error(authed.get(f"/api/sessions/{sid}", headers=BOB), 404, "session_not_found")
    _error(authed.delete(f"/api/sessions/{sid}", headers=BOB), 404)
    _error(
        authed.post(
            "/api/workflows/chat/execute",
            json={"inputs": {"query": "x"}, "session_id": sid},
            headers=BOB,
        ),
        404,
    )
    # sessions created over HTTP take the principal; another user id is forbidden
    mine = authed.post("/api/sessions", json={}, headers=BOB)
    assert mine.status_code == 201 and mine.json()["user_id"] == "bob"
    assert authed.post("/api/sessions", json={"user_id": "bob"}, headers=BOB).status_code == 201
    _error(authed.post("/api/sessions", json={"user_id": "alice"}, headers=BOB), 403, "forbidden")
    # listings show only the caller's sessions
    listed = authed.get("/api/sessions", headers=BOB).json()
    assert listed["count"] == 2 and {s["user_id"] for s in listed["sessions"]} == {"bob"}
    _error(authed.get("/api/sessions", params={"user_id": "alice"}, headers=BOB), 403)
    # alice still owns hers
    assert (
        authed.post(
            "/api/workflows/chat/execute",
            json={"inputs": {"query": "again"}, "session_id": sid},
            headers=ALICE,
        ).status_code
        == 200
    )
    assert authed.delete(f"/api/sessions/{sid}", headers=ALICE).status_code == 200


def test_enable_auth_without_keys_is_a_config_error(monkeypatch):
    monkeypatch.delenv("NEXUS_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match="API key"):
        Nexus(enable_auth=True, api_port=0, mcp_port=0)


def test_auth_keys_from_environment(make_app, serve, monkeypatch):
    monkeypatch.setenv("NEXUS_API_KEYS", "env-key-789:carol")
    app = make_app(enable_auth=True)
    deploy_multi_channel(echo, app, "echo")
    c = serve(app)
    _error(c.get("/api/workflows"), 401)
    assert (
        c.get("/api/workflows", headers={"Authorization": "Bearer env-key-789"}).status_code == 200
    )


# ----------------------------------------------------------------------------- rate limit
def test_rate_limit_429_with_headers(make_app, serve):
    app = make_app(rate_limit=3)
    deploy_multi_channel(echo, app, "echo")
    c = serve(app)
    remaining = []
    for _ in range(3):
        r = c.post("/api/workflows/echo/execute", json={"inputs": {"text": "a"}})
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit"] == "3"
        remaining.append(int(r.headers["x-ratelimit-remaining"]))
    assert remaining == [2, 1, 0]
    r = c.post("/api/workflows/echo/execute", json={"inputs": {"text": "a"}})
    _error(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-limit"] == "3" and r.headers["x-ratelimit-remaining"] == "0"
    # every route except /health is limited
    _error(c.get("/api/workflows"), 429)
    _error(c.get("/no/such/route"), 429)
    h = c.get("/health")
    assert h.status_code == 200 and "x-ratelimit-limit" not in h.headers


def test_rate_limit_headers_on_error_responses(make_app, serve):
    app = make_app(rate_limit=10)
    c = serve(app)
    r = c.get("/api/workflows/missing")
    _error(r, 404)
    assert r.headers["x-ratelimit-limit"] == "10" and r.headers["x-ratelimit-remaining"] == "9"


def test_rate_limit_is_per_principal(make_app, serve):
    app = make_app(rate_limit=2, enable_auth=True, api_keys=KEYS)
    deploy_multi_channel(echo, app, "echo")
    c = serve(app)
    body = {"inputs": {"text": "a"}}
    for _ in range(2):
        assert c.post("/api/workflows/echo/execute", json=body, headers=ALICE).status_code == 200
    _error(c.post("/api/workflows/echo/execute", json=body, headers=ALICE), 429)
    # bob has his own bucket
    r = c.post("/api/workflows/echo/execute", json=body, headers=BOB)
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining"] == "1"
    # wrong keys are counted per client address, apart from the users' buckets
    for _ in range(2):
        r = c.get("/api/workflows", headers={"X-API-Key": "guess"})
        _error(r, 401)
        assert r.headers["www-authenticate"] == "Bearer" and r.headers["x-ratelimit-limit"] == "2"
    _error(c.get("/api/workflows", headers={"X-API-Key": "guess"}), 429)
    assert c.get("/api/workflows", headers=BOB).status_code == 200


# ----------------------------------------------------------------------------- guard helpers
def test_guard_helpers_are_usable_without_http():
    app = Nexus(enable_auth=True, api_keys=KEYS, rate_limit=1, api_port=0, mcp_port=0)
    assert authenticate_request(app, {"authorization": "Bearer alice-key-123"}) == "alice"
    assert authenticate_request(app, [(b"x-api-key", b"bob-key-456")]) == "bob"
    with pytest.raises(AuthenticationError):
        authenticate_request(app, {"X-API-Key": "nope"})
    assert check_rate(app, "alice") == {"X-RateLimit-Limit": "1", "X-RateLimit-Remaining": "0"}
    with pytest.raises(RateLimitExceeded) as info:
        check_rate(app, "alice")
    assert info.value.headers["Retry-After"]
    result = guard_request(app, {"X-API-Key": "bob-key-456"}, ("10.0.0.1", 5000))
    assert result.principal == "bob" and result.headers["X-RateLimit-Remaining"] == "0"
    open_app = Nexus(api_port=0, mcp_port=0)
    assert authenticate_request(open_app, {}) is None and check_rate(open_app, "x") == {}


def test_error_bodies_are_json_objects(client):
    """Every error response parses as {"error": {...}} (spot check of json content)."""
    r = client.post("/api/workflows/echo/execute", json={"inputs": {}})
    assert json.loads(r.content)["error"]["type"] == "validation_error"


# ----------------------------------------------------------------------------- errors carry their headers
def test_errors_carry_their_own_headers():
    assert NexusError("x").headers == {}
    assert AuthenticationError("no key").headers == {"WWW-Authenticate": "Bearer"}
    limited = {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0"}
    assert AuthenticationError("no key", rate_limit_headers=limited).headers == {
        "WWW-Authenticate": "Bearer",
        **limited,
    }
    over = RateLimitExceeded("slow down", retry_after=2.1, limit=5, rate_limit_headers=limited)
    assert over.headers == {**limited, "Retry-After": "3"}  # rounded up, never 0
    assert RateLimitExceeded("x", retry_after=0.01, limit=5).headers == {"Retry-After": "1"}
    assert MethodNotAllowed("use POST", "POST").headers == {"Allow": "POST"}
    assert ServiceUnavailable("busy").headers == {}
    assert ServiceUnavailable("busy", retry_after=0.2).headers == {"Retry-After": "1"}


def test_error_response_is_the_one_error_writer():
    invalid = InputValidationError("bad", field="n", errors=[{"loc": ["n"]}])
    r = error_response(invalid)
    assert r.status_code == 422 and r.media_type == "application/json"
    assert json.loads(r.body) == {
        "error": {"type": "validation_error", "message": "bad", "field": "n", "errors": [{"loc": ["n"]}]}
    }
    r = error_response(RateLimitExceeded("slow down", retry_after=1, limit=1), jsonrpc=True)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    body = json.loads(r.body)
    assert body["jsonrpc"] == "2.0" and body["id"] is None
    assert body["error"]["type"] == "rate_limited" and body["error"]["message"] == "slow down"
    assert body["error"]["data"] == {"type": "rate_limited", "http_status": 429}
