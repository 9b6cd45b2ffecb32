"""Tests of nexus_lab.providers against small fake servers on 127.0.0.1.

The fake servers pick their behaviour from the requested model name:
``ok`` (echo the last user message), ``fail-500``, ``fail-401``, ``slow``
(sleep past the client timeout), ``malformed`` (200 with a body that is not a
completion), ``notjson`` (200 with a non-JSON body), ``flaky`` (500 once, then ok).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nexus_lab.errors import ConfigError, ProviderError
from nexus_lab.providers import (
    LLMProvider,
    MockProvider,
    OllamaProvider,
    OpenAIProvider,
    available_providers,
    get_provider,
    register_provider,
)

USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OLLAMA_HOST"):
        monkeypatch.delenv(var, raising=False)


# -- fake servers --------------------------------------------------------------------
class _FakeServer:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.requests: list[dict] = []
        self.stop = threading.Event()
        self.flaky_calls = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: object, raw: bytes | None = None) -> None:
                data = raw if raw is not None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(length) or b"{}")
                req["_path"] = self.path
                req["_auth"] = self.headers.get("Authorization")
                server.requests.append(req)
                expected = "/v1/chat/completions" if server.kind == "openai" else "/api/chat"
                if self.path != expected:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                model = req.get("model", "")
                if model == "fail-500":
                    self._send(500, {"error": {"message": "internal explosion"}})
                elif model == "fail-401":
                    self._send(401, {"error": {"message": "Incorrect API key provided"}})
                elif model == "slow":
                    server.stop.wait(3)
                    self._send(200, self._ok(req))
                elif model == "malformed":
                    self._send(200, {"unexpected": True})
                elif model == "notjson":
                    self._send(200, None, raw=b"<html>proxy error</html>")
                elif model == "flaky":
                    server.flaky_calls += 1
                    if server.flaky_calls == 1:
                        self._send(503, {"error": "loading model"})
                    else:
                        self._send(200, self._ok(req))
                else:
                    self._send(200, self._ok(req))

            def _ok(self, req: dict) -> dict:
                last = [m["content"] for m in req["messages"] if m["role"] == "user"][-1]
                text = f"echo: {last}"
                if server.kind == "openai":
                    return {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 1700000000,
                        "model": req["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                return {
                    "model": req["model"],
                    "created_at": "2024-01-01T00:00:00Z",
                    "message": {"role": "assistant", "content": text},
                    "done": True,
                }

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> _FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def openai_server() -> Iterator[_FakeServer]:
    with _FakeServer("openai") as srv:
        yield srv


@pytest.fixture
def ollama_server() -> Iterator[_FakeServer]:
    with _FakeServer("ollama") as srv:
        yield srv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- registry ------------------------------------------------------------------------
def test_get_provider_builtin_and_unknown() -> None:
    assert isinstance(get_provider("mock"), MockProvider)
    assert isinstance(get_provider("OpenAI"), OpenAIProvider)
    assert isinstance(get_provider("ollama"), OllamaProvider)
    assert {"mock", "openai", "ollama"} <= set(available_providers())
    with pytest.raises(ConfigError, match="known providers: .*mock.*ollama.*openai") as info:
        get_provider("anthropicz")
    assert "anthropicz" in str(info.value)
    for bad in ("", None, 3):
        with pytest.raises(ConfigError):
            get_provider(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timeout"):
        get_provider("mock", timeout=0)
    with pytest.raises(ConfigError, match="max_retries"):
        get_provider("mock", max_retries=-1)


def test_register_provider() -> None:
    class Upper(LLMProvider):
        name = "upper-test"

        def __init__(self, **kwargs: object) -> None:
            self.kwargs = kwargs

        def complete(self, messages, *, model, temperature=0.7, max_tokens=1000):  # type: ignore[no-untyped-def]
            return messages[-1]["content"].upper()

    register_provider("Upper-Test", Upper)
    p = get_provider("upper-test", base_url="http://x", timeout=5)
    assert isinstance(p, Upper)
    assert p.kwargs == {"base_url": "http://x", "api_key": None, "timeout": 5.0, "max_retries": 2}
    assert p.complete(USER, model="m", temperature=0, max_tokens=5) == USER[0]["content"].upper()
    assert "upper-test" in available_providers()
    with pytest.raises(ConfigError):
        register_provider("nope", "not callable")  # type: ignore[arg-type]
    register_provider("bad-factory", lambda **kw: object())
    with pytest.raises(ConfigError, match="not an LLMProvider"):
        get_provider("bad-factory")


# -- mock ------------------------------------------------------------------------------
def test_mock_content_and_determinism() -> None:
    p = get_provider("mock")
    out = p.complete(USER, model="gpt-4", temperature=0.7, max_tokens=100)
    assert out == "[mock:gpt-4] You said: What is the capital of France?"
    assert out == get_provider("mock").complete(USER, model="gpt-4", temperature=0.1, max_tokens=9)


def test_mock_conversation_continuation() -> None:
    p = MockProvider()
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    out = p.complete(messages, model="m", temperature=0, max_tokens=10)
    assert "What is my name?" in out
    assert "turn 2" in out and "earlier you asked: My name is Ada." in out
    assert out == p.complete(list(messages), model="m", temperature=0, max_tokens=10)


def test_mock_bad_messages() -> None:
    p = MockProvider()
    with pytest.raises(ValueError):
        p.complete([], model="m", temperature=0, max_tokens=1)
    with pytest.raises(ValueError):
        p.complete([{"content": "no role"}], model="m", temperature=0, max_tokens=1)


# -- openai ----------------------------------------------------------------------------
def _openai(srv: _FakeServer, **kw: object) -> LLMProvider:
    return get_provider("openai", base_url=f"http://127.0.0.1:{srv.port}/v1", **kw)  # type: ignore[arg-type]


def test_openai_compatible_server(openai_server: _FakeServer) -> None:
    p = _openai(openai_server)
    out = p.complete(USER, model="local-model", temperature=0.2, max_tokens=64)
    assert out == "echo: What is the capital of France?"
    req = openai_server.requests[-1]
    assert req["_path"] == "/v1/chat/completions"
    assert req["model"] == "local-model" and req["temperature"] == 0.2
    assert req["max_tokens"] == 64 and req["messages"] == USER
    assert req["_auth"] == f"Bearer {OpenAIProvider.PLACEHOLDER_KEY}"
    client = p._client  # type: ignore[attr-defined]
    p.complete(USER, model="local-model", temperature=0.2, max_tokens=64)
    assert p._client is client  # type: ignore[attr-defined]
    p.close()


def test_openai_api_key_from_arg_and_env(
    openai_server: _FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _openai(openai_server, api_key="sk-arg").complete(USER, model="m", temperature=0, max_tokens=5)
    assert openai_server.requests[-1]["_auth"] == "Bearer sk-arg"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    _openai(openai_server).complete(USER, model="m", temperature=0, max_tokens=5)
    assert openai_server.requests[-1]["_auth"] == "Bearer sk-env"


def test_openai_without_key_or_base_url() -> None:
    p = get_provider("openai")
    with pytest.raises(ProviderError, match="OPENAI_API_KEY.*base_url") as info:
        p.complete(USER, model="gpt-4", temperature=0.7, max_tokens=10)
    assert info.value.provider == "openai"


@pytest.mark.parametrize(
    ("model", "status", "detail"),
    [("fail-500", 500, "internal explosion"), ("fail-401", 401, "Incorrect API key")],
)
def test_openai_http_errors(
    openai_server: _FakeServer, model: str, status: int, detail: str
) -> None:
    p = _openai(openai_server, max_retries=0)
    with pytest.raises(ProviderError) as info:
        p.complete(USER, model=model, temperature=0, max_tokens=5)
    err = info.value
    assert err.status_code == status and err.provider == "openai"
    msg = str(err)
    assert f"HTTP {status}" in msg and detail in msg
    assert f"http://127.0.0.1:{openai_server.port}/v1/chat/completions" in msg
    assert err.__cause__ is not None
    assert len(openai_server.requests) == 1  # max_retries=0


def test_openai_404_wrong_path(openai_server: _FakeServer) -> None:
    p = get_provider("openai", base_url=f"http://127.0.0.1:{openai_server.port}", max_retries=0)
    with pytest.raises(ProviderError, match="HTTP 404") as info:
        p.complete(USER, model="m", temperature=0, max_tokens=5)
    assert info.value.status_code == 404


def test_openai_timeout(openai_server: _FakeServer) -> None:
    p = _openai(openai_server, timeout=0.3, max_retries=0)
    with pytest.raises(ProviderError, match="timed out after 0.3s") as info:
        p.complete(USER, model="slow", temperature=0, max_tokens=5)
    assert info.value.status_code is None and info.value.__cause__ is not None
    assert str(openai_server.port) in str(info.value)


@pytest.mark.parametrize("model", ["malformed", "notjson"])
def test_openai_malformed(openai_server: _FakeServer, model: str) -> None:
    p = _openai(openai_server, max_retries=0)
    with pytest.raises(ProviderError, match="openai provider request to http://127.0.0.1"):
        p.complete(USER, model=model, temperature=0, max_tokens=5)


def test_openai_unreachable() -> None:
    port = _free_port()
    p = get_provider("openai", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=5)
    with pytest.raises(ProviderError, match="could not connect") as info:
        p.complete(USER, model="m", temperature=0, max_tokens=5)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert info.value.provider == "openai" and info.value.__cause__ is not None


# -- ollama ----------------------------------------------------------------------------
def _ollama(srv: _FakeServer, **kw: object) -> LLMProvider:
    return get_provider("ollama", base_url=f"http://127.0.0.1:{srv.port}", **kw)  # type: ignore[arg-type]


def test_ollama_chat(ollama_server: _FakeServer) -> None:
    p = _ollama(ollama_server)
    out = p.complete(USER, model="llama3.2", temperature=0.3, max_tokens=42)
    assert out == "echo: What is the capital of France?"
    req = ollama_server.requests[-1]
    assert req["_path"] == "/api/chat"
    assert req["model"] == "llama3.2" and req["stream"] is False
    assert req["options"] == {"temperature": 0.3, "num_predict": 42}
    assert req["messages"] == USER
    p.close()


def test_ollama_host_env(ollama_server: _FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{ollama_server.port}")
    p = get_provider("ollama")
    assert p.url == f"http://127.0.0.1:{ollama_server.port}/api/chat"  # type: ignore[attr-defined]
    assert p.complete(USER, model="m", temperature=0, max_tokens=5).startswith("echo: ")
    monkeypatch.delenv("OLLAMA_HOST")
    assert get_provider("ollama").url == "http://127.0.0.1:11434/api/chat"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("model", "status", "detail"),
    [("fail-500", 500, "internal explosion"), ("fail-401", 401, "Incorrect API key")],
)
def test_ollama_http_errors(
    ollama_server: _FakeServer, model: str, status: int, detail: str
) -> None:
    p = _ollama(ollama_server, max_retries=0)
    with pytest.raises(ProviderError) as info:
        p.complete(USER, model=model, temperature=0, max_tokens=5)
    err = info.value
    assert err.status_code == status and err.provider == "ollama"
    assert f"HTTP {status}" in str(err) and detail in str(err)
    assert f"http://127.0.0.1:{ollama_server.port}/api/chat" in str(err)
    assert len(ollama_server.requests) == 1


def test_ollama_retry_then_success(ollama_server: _FakeServer) -> None:
    p = _ollama(ollama_server, max_retries=1)
    assert p.complete(USER, model="flaky", temperature=0, max_tokens=5).startswith("echo: ")
    assert len(ollama_server.requests) == 2


def test_ollama_timeout(ollama_server: _FakeServer) -> None:
    p = _ollama(ollama_server, timeout=0.3, max_retries=0)
    with pytest.raises(ProviderError, match="timed out after 0.3s") as info:
        p.complete(USER, model="slow", temperature=0, max_tokens=5)
    assert info.value.__cause__ is not None and info.value.provider == "ollama"


@pytest.mark.parametrize(
    ("model", "what"), [("malformed", "no message.content"), ("notjson", "not JSON")]
)
def test_ollama_malformed(ollama_server: _FakeServer, model: str, what: str) -> None:
    p = _ollama(ollama_server, max_retries=0)
    with pytest.raises(ProviderError, match=what) as info:
        p.complete(USER, model=model, temperature=0, max_tokens=5)
    assert "/api/chat" in str(info.value)


def test_ollama_unreachable() -> None:
    port = _free_port()
    p = get_provider("ollama", base_url=f"http://127.0.0.1:{port}", max_retries=0, timeout=5)
    with pytest.raises(ProviderError, match="could not connect") as info:
        p.complete(USER, model="m", temperature=0, max_tokens=5)
    assert f"127.0.0.1:{port}/api/chat" in str(info.value)
    assert info.value.__cause__ is not None


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, nexus_lab.providers; "
        "print(any(m in sys.modules for m in ('pandas', 'numpy', 'openai', 'httpx')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
