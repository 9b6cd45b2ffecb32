r"""One client for a running nexus_lab platform: the HTTP API and MCP, sync and async.

:class:`NexusClient` (blocking) and :class:`AsyncNexusClient` (``await``) have
the same methods. Each keeps, for its whole lifetime:

* **one HTTP connection pool** (``httpx.Client`` / ``httpx.AsyncClient``;
  proxy settings from the environment are ignored for loopback URLs), used by
  ``run(channel="api" | "cli")``, ``workflows()``, ``health()`` and
  ``sessions``;
* **one MCP session** (the official SDK's ``mcp.Client`` over streamable
  HTTP), opened on the first ``run(channel="mcp")`` and kept. The blocking
  client runs it on one private event-loop thread, which :meth:`NexusClient.close`
  stops and joins: no thread outlives ``close()``.

``httpx`` is imported when a client is built and ``mcp`` on the first MCP
call, so ``import nexus_lab`` stays fast.

Example::

    from nexus_lab import NexusClient

    with NexusClient("http://127.0.0.1:8000", api_key=None) as client:
        result = client.run("assistant", {"query": "hi"})
        result.outputs          # {'response': '[mock:gpt-4] You said: hi'}
        again = client.run("assistant", {"query": "more"},
                           session_id=result.session_id, channel="mcp")
        sid = client.sessions.create(user_id="u1")["session_id"]

Errors
------
A failed call raises the :mod:`nexus_lab.errors` class a local
``app.execute`` would raise. Every server answer goes through one table
(``_error_from``), whichever channel carried it::

    HTTP error response ───────────► status + {"error": {"type", "message",
      (status, JSON body,                        "field"?, "error_id"?}}
       Retry-After header)                         │
    MCP tool result is_error ──────► its text: that JSON, or the bare message
                                     (the type is then recognised from it)
    MCP protocol error (MCPError) ─► data {"type", "http_status"} + message
                                                   │
                                                   ▼
                                            _error_from(...)
       error "type"        HTTP   raises
       ──────────────────  ────   ──────────────────────────────────────────────
       not_found           404    DeploymentNotFound   (NotFound: "no route ...")
       session_not_found   404    SessionNotFound       .session_id
       validation_error    422    InputValidationError  .field, .errors
       session_state_error 422    SessionStateError
       bad_request         400    BadRequest
       config_error        400    ConfigError           .field
       unauthorized        401    AuthenticationError
       forbidden           403    Forbidden
       method_not_allowed  405    MethodNotAllowed      .allow
       conflict            409    DeploymentExists
       payload_too_large   413    PayloadTooLarge
       rate_limited        429    RateLimitExceeded     .retry_after, .limit
       agent_error         500    AgentExecutionError   .error_id
       internal_error      500    InternalError         .error_id (a platform bug)
       provider_error      502    ProviderError
       service_unavailable 503    ServiceUnavailable    .retry_after (or None)
       timeout             504    ExecutionTimeout
       http_error          any    HTTPError             .http_status
       (unknown type)      any    the class of the status above, else NexusError

    no answer from the server ─────► NexusConnectionError  .url, .connected
      refused, unreachable, DNS:           connected=False
      timed out or dropped after connect:  connected=True

``retry_after`` comes from the ``Retry-After`` header, else the body
(``retry_after``), else the message ("retry after N s", as MCP carries it).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit

from .errors import (
    AgentExecutionError,
    AuthenticationError,
    BadRequest,
    ConfigError,
    DeploymentExists,
    DeploymentNotFound,
    ExecutionTimeout,
    Forbidden,
    HTTPError,
    InputValidationError,
    InternalError,
    MethodNotAllowed,
    NexusConnectionError,
    NexusError,
    NotFound,
    PayloadTooLarge,
    ProviderError,
    RateLimitExceeded,
    ServiceUnavailable,
    SessionNotFound,
    SessionStateError,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["NexusClient", "AsyncNexusClient", "RunResult", "CHANNELS"]

#: The channels :meth:`NexusClient.run` can use.
CHANNELS = ("api", "cli", "mcp")
CHANNEL_HEADER = "X-Nexus-Channel"

_T = TypeVar("_T")


# ----------------------------------------------------------------------------- result
@dataclass(repr=False, eq=False)
class RunResult:
    """The answer of :meth:`NexusClient.run`.

    Attributes:
        name: the deployment called.
        channel: ``"api"``, ``"cli"`` or ``"mcp"``.
        outputs: what the deployment returned (a dict).
        session_id: the session the call read and updated (None without sessions).
        execution_time_ms: the server's own figure for the execution.
        latency_ms: the round trip measured by this client (request sent to answer decoded).
        raw: the whole wire answer ``{"outputs", "session_id", "execution_time_ms", ...}``.

    The ``repr`` shows no ids or timings, so notebook outputs stay stable::

        >>> client.run("assistant", {"query": "hi"})
        RunResult(name='assistant', channel='api', response='[mock:gpt-4] You said: hi')
    """

    name: str
    channel: str
    outputs: dict[str, Any]
    session_id: str | None = None
    execution_time_ms: float | None = None
    latency_ms: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def response(self) -> Any:
        """The ``response`` output, or None when the deployment has none."""
        return self.outputs.get("response") if isinstance(self.outputs, dict) else None

    def __getitem__(self, key: str) -> Any:
        return self.outputs[key]

    def __repr__(self) -> str:
        if isinstance(self.outputs, dict) and "response" in self.outputs:
            shown = f"response={self.outputs['response']!r}"
        else:
            shown = f"outputs={self.outputs!r}"
        return f"RunResult(name={self.name!r}, channel={self.channel!r}, {shown})"

    def _repr_html_(self) -> str:
        value = self.response
        if isinstance(value, str):
            body = f"<div style='white-space:pre-wrap'>{html.escape(value)}</div>"
        else:
            shown = self.outputs if value is None else value
            body = f"<pre>{html.escape(json.dumps(shown, indent=2, ensure_ascii=False, default=str))}</pre>"
        session = "session: yes (id in <code>.session_id</code>)" if self.session_id else "no session"
        return (
            f"<div class='nexus-run'><div><b>{html.escape(self.name)}</b> &middot; channel "
            f"<code>{html.escape(self.channel)}</code></div>{body}"
            f"<div style='opacity:.7;font-size:smaller'>{session}</div></div>"
        )


# ----------------------------------------------------------------------------- errors
# error "type" (the ``error_type`` of each class in nexus_lab.errors) -> class
_BY_TYPE: dict[str, type[NexusError]] = {
    DeploymentNotFound.error_type: DeploymentNotFound,
    SessionNotFound.error_type: SessionNotFound,
    InputValidationError.error_type: InputValidationError,
    SessionStateError.error_type: SessionStateError,
    BadRequest.error_type: BadRequest,
    MethodNotAllowed.error_type: MethodNotAllowed,
    HTTPError.error_type: HTTPError,
    ConfigError.error_type: ConfigError,
    AuthenticationError.error_type: AuthenticationError,
    Forbidden.error_type: Forbidden,
    DeploymentExists.error_type: DeploymentExists,
    PayloadTooLarge.error_type: PayloadTooLarge,
    RateLimitExceeded.error_type: RateLimitExceeded,
    AgentExecutionError.error_type: AgentExecutionError,
    InternalError.error_type: InternalError,
    ProviderError.error_type: ProviderError,
    ServiceUnavailable.error_type: ServiceUnavailable,
    ExecutionTimeout.error_type: ExecutionTimeout,
}
# HTTP status -> class, for an answer without a known type
_BY_STATUS: dict[int, type[NexusError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: DeploymentExists,
    413: PayloadTooLarge,
    422: InputValidationError,
    429: RateLimitExceeded,
    502: ProviderError,
    503: ServiceUnavailable,
    504: ExecutionTimeout,
}
# The platform's messages, for an MCP tool error whose text is only the message.
_MESSAGE_TYPES: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"^(?:tool '.*' failed with|internal server error).*error id (?P<error_id>[0-9A-Za-z]{6,})"),
        "internal_error",
    ),
    (re.compile(r"error id (?P<error_id>[0-9A-Za-z]{6,})"), "agent_error"),
    (re.compile(r"^Session '(?P<session_id>.*)' not found"), "session_not_found"),
    (re.compile(r"^no deployment named '"), "not_found"),
    (re.compile(r"^(?:invalid|missing required|unknown) input '(?P<field>[^']+)'"), "validation_error"),
    (re.compile(r"^inputs must be a JSON object"), "validation_error"),
    (re.compile(r"^rate limit of \d+ requests"), "rate_limited"),
    (re.compile(r"^(?:missing|invalid) API key"), "unauthorized"),
    (re.compile(r"did not finish within its timeout|^deployment '.*' timed out$"), "timeout"),
]
_RETRY_RE = re.compile(r"retry after (\d+(?:\.\d+)?) ?s")
_LIMIT_RE = re.compile(r"rate limit of (\d+) ")
_ERROR_ID_RE = re.compile(r"error id ([0-9A-Za-z]{6,})")
_QUOTED_RE = re.compile(r"'([^']*)'")


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and isinstance(headers, dict):  # a plain dict is case-sensitive
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _error_from(
    status: int | None,
    error: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    session_id: str | None = None,
) -> NexusError:
    """THE mapping: an error answer (HTTP status and/or ``{"type", "message", ...}``) -> exception.

    Used for HTTP error responses and for MCP errors alike (see the module docstring).
    """
    etype = error.get("type")
    message = str(error.get("message") or etype or f"HTTP {status}")
    cls: type[NexusError] | None = _BY_TYPE.get(etype) if isinstance(etype, str) else None
    if cls is DeploymentNotFound and message.startswith("no route "):
        cls = NotFound
    if cls is None:
        cls = _BY_STATUS.get(status or 0, NexusError)
    headers = headers or {}
    exc: NexusError
    if cls is SessionNotFound:
        sid = session_id
        if sid is None:
            found = _QUOTED_RE.search(message)
            sid = found.group(1) if found else ""
        exc = SessionNotFound(sid, message)
    elif cls is InputValidationError:
        errors = error.get("errors")
        exc = InputValidationError(
            message, field=error.get("field"), errors=errors if isinstance(errors, list) else None
        )
    elif cls is ConfigError:
        exc = ConfigError(message, field=error.get("field"))
    elif cls is RateLimitExceeded:
        retry = _number(_header(headers, "retry-after"))
        if retry is None:
            retry = _number(error.get("retry_after"))
        if retry is None:
            found = _RETRY_RE.search(message)
            retry = float(found.group(1)) if found else 0.0
        limit = _number(_header(headers, "x-ratelimit-limit"))
        if limit is None:
            limit = _number(error.get("limit"))
        if limit is None:
            found = _LIMIT_RE.search(message)
            limit = float(found.group(1)) if found else 0
        exc = RateLimitExceeded(message, retry_after=retry, limit=int(limit))
    elif cls is AgentExecutionError or cls is InternalError:
        error_id = error.get("error_id")
        if not error_id:
            found = _ERROR_ID_RE.search(message)
            error_id = found.group(1) if found else ""
        if cls is AgentExecutionError:
            exc = AgentExecutionError(message, str(error_id))
        else:
            exc = InternalError(str(error_id))
            exc.message = message  # the server's own words
            exc.args = (message,)
    elif cls is ServiceUnavailable:
        exc = ServiceUnavailable(message, retry_after=_number(_header(headers, "retry-after")))
    elif cls is MethodNotAllowed:
        exc = MethodNotAllowed(message, allow=_header(headers, "allow") or "")
    elif cls is HTTPError:
        exc = HTTPError(message, status or 500, headers=dict(headers))
    elif cls is ProviderError:
        exc = ProviderError(message)
    else:
        exc = cls(message)
        if cls is NexusError and status:
            exc.http_status = status
    return exc


def _error_from_http(status: int, reason: str, content: bytes, headers: Any, session_id: str | None) -> NexusError:
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        error = dict(err)
    elif isinstance(err, str) and err:
        error = {"message": err}
    elif isinstance(body, dict) and isinstance(body.get("detail"), str):
        error = {"message": body["detail"]}
    else:
        lines = content.decode("utf-8", "replace").strip().splitlines() if content else []
        error = {"message": f"HTTP {status} {reason}" + (f": {lines[0][:200]}" if lines else "")}
    return _error_from(status, error, headers=headers, session_id=session_id)


def _error_from_tool_text(text: str, session_id: str | None) -> NexusError:
    """An MCP tool error: its text is the platform's JSON error body, or only the message."""
    error: dict[str, Any] | None = None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            body = json.loads(stripped)
        except ValueError:
            body = None
        if isinstance(body, dict):
            inner = body.get("error", body)
            if isinstance(inner, dict) and inner.get("message"):
                error = dict(inner)
    if error is None:
        error = {"message": stripped or "the tool reported an error"}
        for pattern, etype in _MESSAGE_TYPES:
            found = pattern.search(error["message"])
            if found:
                error["type"] = etype
                error.update({k: v for k, v in found.groupdict().items() if v is not None})
                if etype == "validation_error":
                    error.setdefault("field", "inputs")
                break
    status = error.get("http_status")
    return _error_from(status if isinstance(status, int) else None, error, session_id=session_id)


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups (anyio task groups wrap errors)."""
    while isinstance(getattr(exc, "exceptions", None), (list, tuple)) and exc.exceptions:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if "Connection refused" in text or "Errno 111" in text or "All connection attempts failed" in text:
        return "connection refused"
    return text.splitlines()[-1] if text else type(exc).__name__


def _connection_error(message: str, url: str, connected: bool) -> NexusConnectionError:
    return NexusConnectionError(message, url=url, connected=connected)


# ----------------------------------------------------------------------------- helpers
def _is_loopback(url: str) -> bool:
    """True for a local server: proxy settings from the environment are then ignored."""
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")


def _check_url(url: Any, what: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{what} must be a URL like 'http://127.0.0.1:8000', got {url!r}", field=what)
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"invalid {what} {url!r}: {exc}", field=what) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"invalid {what} {url!r}: expected http://HOST:PORT or https://HOST:PORT", field=what
        )
    return url


def _check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}", field="timeout")
    return float(timeout)


def _execution_body(name: str, channel: str, body: Any, where: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), dict):
        raise NexusError(f"{where} answered {name!r} with an unexpected body: {str(body)[:200]!r}")
    return body


def _result(name: str, channel: str, body: dict[str, Any], started: float) -> RunResult:
    return RunResult(
        name=name,
        channel=channel,
        outputs=body["outputs"],
        session_id=body.get("session_id"),
        execution_time_ms=body.get("execution_time_ms"),
        latency_ms=(time.perf_counter() - started) * 1000.0,
        raw=body,
    )


def _mcp_url_from_health(health: Any, base: str) -> str:
    channels = health.get("channels") if isinstance(health, dict) else None
    mcp = channels.get("mcp") if isinstance(channels, dict) else None
    url = mcp.get("url") if isinstance(mcp, dict) else None
    if not isinstance(url, str) or not url:
        raise ConfigError(
            f"the platform at {base} reports no MCP URL (is its MCP channel serving?); "
            "pass mcp_url= to the client",
            field="mcp_url",
        )
    return url


class _Common:
    """Configuration and the request/answer logic shared by the sync and async clients."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        mcp_url: str | None,
        timeout: float,
        headers: Mapping[str, str] | None,
    ) -> None:
        self.url = _check_url(url, "url")
        self.mcp_url: str | None = _check_url(mcp_url, "mcp_url") if mcp_url is not None else None
        self.timeout = _check_timeout(timeout)
        self._api_key = api_key or None
        self._closed = False
        self._trust_env = not _is_loopback(self.url)
        from ._version import __version__

        base = {"Accept": "application/json", "User-Agent": f"nexus-lab/{__version__}"}
        if self._api_key:
            base["Authorization"] = f"Bearer {self._api_key}"
        extra = dict(headers or {})
        base.update(extra)
        self._headers = base
        # per-channel request headers (None: the client's defaults are right as they are)
        has_channel = any(k.lower() == CHANNEL_HEADER.lower() for k in extra)
        self._channel_headers: dict[str, dict[str, str] | None] = {
            "api": {CHANNEL_HEADER: "api"} if has_channel else None,
            "cli": {CHANNEL_HEADER: "cli"},
        }
        self._paths: dict[str, str] = {}
        self._mcp_headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    @property
    def api_key_set(self) -> bool:
        """True when the client sends an API key (the key itself is never shown)."""
        return self._api_key is not None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"{type(self).__name__}({self.url!r}, {state})"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")

    def _execute_path(self, name: str) -> str:
        path = self._paths.get(name)
        if path is None:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"the deployment name must be a non-empty string, got {name!r}", field="name")
            path = f"/api/workflows/{quote(name, safe='')}/execute"
            if len(self._paths) < 1024:
                self._paths[name] = path
        return path

    @staticmethod
    def _check_run(inputs: Any, session_id: Any, channel: Any) -> dict[str, Any]:
        if channel not in CHANNELS:
            raise ConfigError(f"channel must be one of {', '.join(CHANNELS)}, got {channel!r}", field="channel")
        if inputs is None:
            return {}
        if not isinstance(inputs, Mapping):
            raise InputValidationError(
                f"inputs must be a mapping of input names to values, got {type(inputs).__name__}",
                field="inputs",
            )
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise InputValidationError("session_id must be a non-empty string or None", field="session_id")
        return dict(inputs)

    def _decode(
        self,
        resp: httpx.Response,
        method: str,
        path: str,
        accept_status: tuple[int, ...] = (),
        session_id: str | None = None,
    ) -> Any:
        status = resp.status_code
        if 200 <= status < 300 or status in accept_status:
            content = resp.content
            if not content:
                return None
            try:
                return json.loads(content)
            except ValueError:
                raise NexusError(
                    f"{self.url} answered {method} {path} with something that is not JSON; "
                    "is the URL a nexus_lab server?"
                ) from None
        raise _error_from_http(status, resp.reason_phrase, resp.content, resp.headers, session_id)

    def _transport_error(self, exc: Exception, method: str, path: str, timeout: float | None) -> NexusError:
        import httpx

        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return _connection_error(
                f"cannot reach the nexus server at {self.url} ({_reason(exc)})", self.url, False
            )
        if isinstance(exc, httpx.TimeoutException):
            return _connection_error(
                f"{method} {self.url}{path} got no answer within {timeout or self.timeout:g} s",
                self.url,
                True,
            )
        if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
            return ConfigError(f"invalid url {self.url!r}: {exc}", field="url")
        return _connection_error(
            f"connection to {self.url} failed: {type(exc).__name__}: {_reason(exc)}", self.url, True
        )


# ----------------------------------------------------------------------------- MCP session
class _MCPSession:
    """One ``mcp.Client`` session over streamable HTTP, owned by one task of one event loop.

    The SDK's transport lives in an anyio task group, which must be entered and
    left by the same task: a private owner task opens the session, parks until
    :meth:`close`, then leaves it.
    """

    def __init__(self, url: str, headers: dict[str, str], timeout: float, trust_env: bool) -> None:
        self.url = url
        self._headers = headers
        self._timeout = timeout
        self._trust_env = trust_env
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self.broken = False

    async def open(self) -> Any:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Any] = loop.create_future()
        self._stop = asyncio.Event()
        self._task = loop.create_task(self._own(ready), name="nexus-client-mcp-session")
        try:
            self._client = await ready
        except BaseException:
            await asyncio.gather(self._task, return_exceptions=True)
            raise
        return self._client

    async def _own(self, ready: asyncio.Future[Any]) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        assert self._stop is not None
        try:
            async with httpx2.AsyncClient(
                headers=self._headers,
                timeout=httpx2.Timeout(self._timeout),
                trust_env=self._trust_env,
            ) as http:
                transport = streamable_http_client(self.url, http_client=http)
                async with Client(transport, read_timeout_seconds=self._timeout) as client:
                    if not ready.done():
                        ready.set_result(client)
                    await self._stop.wait()
        except BaseException as exc:  # handed to open(); after that a closing error is moot
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            if not isinstance(exc, Exception):
                raise

    async def call_tool(self, name: str, arguments: dict[str, Any], timeout: float) -> Any:
        return await self._client.call_tool(name, arguments, read_timeout_seconds=timeout)

    async def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._client = None


async def _mcp_run(
    owner: _Common,
    get_session: Callable[[], Awaitable[_MCPSession]],
    drop_session: Callable[[_MCPSession], Awaitable[None]],
    name: str,
    arguments: dict[str, Any],
    session_id: str | None,
    timeout: float,
) -> dict[str, Any]:
    """One ``tools/call``: the deployment's wire answer, or the mapped exception."""
    from mcp.shared.exceptions import MCPError

    mcp_url = owner.mcp_url or ""
    session: _MCPSession | None = None
    try:
        session = await get_session()
        result = await session.call_tool(name, arguments, timeout)
    except MCPError as exc:
        raise _mcp_error(exc, session_id, mcp_url, timeout) from None
    except Exception as exc:
        leaf = _leaf(exc)
        if session is not None:
            await drop_session(session)  # the next call opens a fresh session
        if isinstance(leaf, MCPError):
            raise _mcp_error(leaf, session_id, mcp_url, timeout) from None
        if isinstance(leaf, NexusError):
            raise leaf from None
        raise _mcp_transport_error(leaf, mcp_url, timeout) from None
    if getattr(result, "is_error", False):
        text = " ".join(getattr(c, "text", "") for c in (getattr(result, "content", None) or []))
        raise _error_from_tool_text(text, session_id)
    body = getattr(result, "structured_content", None)
    if body is None:  # a server that sent no structuredContent: the text holds the same JSON
        try:
            body = json.loads(result.content[0].text)
        except (AttributeError, IndexError, TypeError, ValueError):
            body = None
    return _execution_body(name, "mcp", body, mcp_url)


def _mcp_error(exc: Any, session_id: str | None, url: str, timeout: float) -> NexusError:
    from mcp_types import INVALID_PARAMS, REQUEST_TIMEOUT

    message = str(exc.message)
    data = exc.data if isinstance(exc.data, dict) else {}
    if exc.code == REQUEST_TIMEOUT:
        return _connection_error(f"MCP call to {url} got no answer within {timeout:g} s", url, True)
    if data.get("type") or data.get("http_status"):
        status = data.get("http_status")
        return _error_from(
            status if isinstance(status, int) else None,
            {"type": data.get("type"), "message": message},
            session_id=session_id,
        )
    if exc.code == INVALID_PARAMS and message.startswith("Unknown tool"):
        return DeploymentNotFound(message)
    return _error_from_tool_text(message, session_id) if message else NexusError(f"MCP error {exc.code}")


def _mcp_transport_error(exc: BaseException, url: str, timeout: float) -> NexusError:
    import httpx2

    if isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout, ConnectionRefusedError)):
        return _connection_error(f"cannot reach the MCP server at {url} ({_reason(exc)})", url, False)
    if isinstance(exc, (httpx2.TimeoutException, TimeoutError)):
        return _connection_error(f"MCP call to {url} got no answer within {timeout:g} s", url, True)
    if isinstance(exc, (httpx2.InvalidURL, httpx2.UnsupportedProtocol)):
        return ConfigError(f"invalid mcp_url {url!r}: {exc}", field="mcp_url")
    return _connection_error(
        f"MCP connection to {url} failed: {type(exc).__name__}: {_reason(exc)}", url, True
    )


# ----------------------------------------------------------------------------- sync client
class _BackgroundLoop:
    """One private event loop on one daemon thread; :meth:`stop` joins it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(started,), name="nexus-client-loop", daemon=True
        )
        self.thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            finally:
                self.loop.close()

    def run(self, coro: Awaitable[_T], timeout: float | None = None) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # the loop already closed
            return
        if threading.current_thread() is not self.thread:
            self.thread.join()


class _Sessions:
    """``client.sessions``: create, get, list and delete sessions over the HTTP API."""

    def __init__(self, client: NexusClient) -> None:
        self._c = client

    def create(
        self, user_id: str | None = None, *, metadata: dict[str, Any] | None = None, ttl: float | None = None
    ) -> dict[str, Any]:
        """Create a session (owned by the caller with auth on) and return it.

        >>> client.sessions.create(user_id="u1")["session_id"]
        '3f0c...'
        """
        body = {k: v for k, v in (("user_id", user_id), ("metadata", metadata), ("ttl", ttl)) if v is not None}
        return self._c.request("POST", "/api/sessions", json=body)[1]

    def get(self, session_id: str) -> dict[str, Any]:
        """The session: owner, channels, times and state (SessionNotFound when unknown)."""
        path = f"/api/sessions/{quote(session_id, safe='')}"
        return self._c.request("GET", path, session_id=session_id)[1]

    def list(self, user_id: str | None = None) -> list[dict[str, Any]]:
        """The sessions (the caller's with auth on; of ``user_id`` without), without state."""
        params = {"user_id": user_id} if user_id else None
        body = self._c.request("GET", "/api/sessions", params=params)[1]
        items = body.get("sessions") if isinstance(body, dict) else body
        return list(items) if isinstance(items, list) else []

    def delete(self, session_id: str) -> dict[str, Any]:
        """Delete a session; returns ``{"deleted": True, "session_id": ...}``."""
        path = f"/api/sessions/{quote(session_id, safe='')}"
        return self._c.request("DELETE", path, session_id=session_id)[1]


class NexusClient(_Common):
    """A blocking client of a running platform: HTTP API, CLI channel and MCP.

    Args:
        url: the API's base URL, e.g. ``app.api_url`` or ``"http://127.0.0.1:8000"``.
        api_key: sent as ``Authorization: Bearer`` on every request (HTTP and MCP).
        mcp_url: the MCP endpoint; by default the one the platform's ``/health`` reports.
        timeout: seconds to wait for any answer (per call: ``run(..., timeout=)``).
        headers: extra headers for every HTTP request.

    One HTTP connection pool and one MCP session (opened on the first MCP call,
    on a private event-loop thread) for the client's lifetime; close it, or use
    it as a context manager::

        with NexusClient(app.api_url) as client:
            r = client.run("assistant", {"query": "hi"})
            client.run("assistant", {"query": "more"}, session_id=r.session_id, channel="mcp")
            client.workflows(); client.health(); client.sessions.list()
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        mcp_url: str | None = None,
        timeout: float = 30.0,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(url, api_key, mcp_url, timeout, headers)
        import httpx

        self._default_timeout = httpx.USE_CLIENT_DEFAULT
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=self.timeout, trust_env=self._trust_env
        )
        self._lock = threading.Lock()
        self._loop: _BackgroundLoop | None = None
        self._mcp: _MCPSession | None = None
        self._mcp_lock: asyncio.Lock | None = None
        self.sessions = _Sessions(self)

    # -- HTTP ------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        accept_status: tuple[int, ...] = (),
        timeout: float | None = None,
        session_id: str | None = None,
    ) -> tuple[int, Any]:
        """One HTTP request on the pool: ``(status, decoded JSON body)``.

        An error status (unless in ``accept_status``) raises the mapped
        exception; ``session_id`` names the session a 404 is about.

        >>> client.request("GET", "/health", accept_status=(503,))
        (200, {'status': 'healthy', ...})
        """
        self._check_open()
        try:
            resp = self._http.request(
                method,
                path,
                json=json,
                params=params,
                headers=headers,
                timeout=self._default_timeout if timeout is None else timeout,
            )
        except Exception as exc:
            raise self._transport_error(exc, method, path, timeout) from None
        return resp.status_code, self._decode(resp, method, path, accept_status, session_id)

    def run(
        self,
        name: str,
        inputs: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        channel: str = "api",
        *,
        timeout: float | None = None,
    ) -> RunResult:
        """Run deployment ``name`` on ``channel`` (``"api"``, ``"cli"`` or ``"mcp"``).

        ``cli`` is the HTTP API with ``X-Nexus-Channel: cli`` (the server then
        converts string inputs to the schema's types), as the ``nexus`` CLI does.

        >>> client.run("assistant", {"query": "hi"}).outputs
        {'response': '[mock:gpt-4] You said: hi'}
        """
        args = self._check_run(inputs, session_id, channel)
        if channel == "mcp":
            return self._run_mcp(name, args, session_id, timeout)
        self._check_open()
        path = self._execute_path(name)
        body: dict[str, Any] = {"inputs": args}
        if session_id is not None:
            body["session_id"] = session_id
        started = time.perf_counter()
        try:
            resp = self._http.post(
                path,
                json=body,
                headers=self._channel_headers[channel],
                timeout=self._default_timeout if timeout is None else timeout,
            )
        except Exception as exc:
            raise self._transport_error(exc, "POST", path, timeout) from None
        data = self._decode(resp, "POST", path, (), session_id)
        return _result(name, channel, _execution_body(name, channel, data, self.url), started)

    def workflows(self) -> list[dict[str, Any]]:
        """The deployments: name, channels, sessions, inputs and input schema."""
        body = self.request("GET", "/api/workflows")[1]
        items = body.get("workflows") if isinstance(body, dict) else body
        return list(items) if isinstance(items, list) else []

    def health(self) -> dict[str, Any]:
        """The platform's health document (also when it answers 503 with one)."""
        body = self.request("GET", "/health", accept_status=(503,))[1]
        if not isinstance(body, dict):
            raise NexusError(f"{self.url}/health returned no health document")
        return body

    # -- MCP -------------------------------------------------------------------------
    def _background(self) -> _BackgroundLoop:
        with self._lock:
            self._check_open()
            if self._loop is None:
                if self.mcp_url is None:
                    self.mcp_url = _mcp_url_from_health(self.health(), self.url)
                self._loop = _BackgroundLoop()
                # a client dropped without close() still stops its thread when collected
                weakref.finalize(self, self._loop.stop)
            return self._loop

    async def _session(self) -> _MCPSession:
        if self._mcp_lock is None:
            self._mcp_lock = asyncio.Lock()
        async with self._mcp_lock:
            if self._mcp is None:
                session = _MCPSession(self.mcp_url or "", self._mcp_headers, self.timeout, self._trust_env)
                await session.open()
                self._mcp = session
            return self._mcp

    async def _drop(self, session: _MCPSession) -> None:
        if self._mcp is session:
            self._mcp = None
        await session.close()

    def _run_mcp(self, name: str, args: dict[str, Any], session_id: str | None, timeout: float | None) -> RunResult:
        loop = self._background()
        if session_id is not None:
            args["session_id"] = session_id
        wait = self.timeout if timeout is None else _check_timeout(timeout)
        started = time.perf_counter()
        coro = _mcp_run(self, self._session, self._drop, name, args, session_id, wait)
        body = loop.run(coro)
        return _result(name, "mcp", body, started)

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """Close the MCP session, stop and join its thread, close the connection pool."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, self._loop = self._loop, None
        try:
            if loop is not None:
                try:
                    if self._mcp is not None:
                        loop.run(self._drop(self._mcp), timeout=self.timeout)
                except Exception:  # closing must go on: the thread is stopped below
                    pass
                finally:
                    loop.stop()
        finally:
            self._http.close()

    def __enter__(self) -> NexusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- async client
class _AsyncSessions:
    """``client.sessions`` of :class:`AsyncNexusClient` (awaitable methods)."""

    def __init__(self, client: AsyncNexusClient) -> None:
        self._c = client

    async def create(
        self, user_id: str | None = None, *, metadata: dict[str, Any] | None = None, ttl: float | None = None
    ) -> dict[str, Any]:
        """Create a session and return it: ``(await client.sessions.create(user_id="u1"))["session_id"]``."""
        body = {k: v for k, v in (("user_id", user_id), ("metadata", metadata), ("ttl", ttl)) if v is not None}
        return (await self._c.request("POST", "/api/sessions", json=body))[1]

    async def get(self, session_id: str) -> dict[str, Any]:
        """The session: owner, channels, times and state (SessionNotFound when unknown)."""
        path = f"/api/sessions/{quote(session_id, safe='')}"
        return (await self._c.request("GET", path, session_id=session_id))[1]

    async def list(self, user_id: str | None = None) -> list[dict[str, Any]]:
        """The sessions (the caller's with auth on; of ``user_id`` without), without state."""
        params = {"user_id": user_id} if user_id else None
        body = (await self._c.request("GET", "/api/sessions", params=params))[1]
        items = body.get("sessions") if isinstance(body, dict) else body
        return list(items) if isinstance(items, list) else []

    async def delete(self, session_id: str) -> dict[str, Any]:
        """Delete a session; returns ``{"deleted": True, "session_id": ...}``."""
        path = f"/api/sessions/{quote(session_id, safe='')}"
        return (await self._c.request("DELETE", path, session_id=session_id))[1]


class AsyncNexusClient(_Common):
    """The ``await`` twin of :class:`NexusClient`, for code already on an event loop.

    Same arguments and methods; the MCP session lives on the loop that makes
    the first MCP call (use the client from that one loop).

    Example::

        async with AsyncNexusClient(app.api_url) as client:
            r = await client.run("assistant", {"query": "hi"}, channel="mcp")
            await client.sessions.delete(r.session_id)
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        mcp_url: str | None = None,
        timeout: float = 30.0,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(url, api_key, mcp_url, timeout, headers)
        import httpx

        self._default_timeout = httpx.USE_CLIENT_DEFAULT
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=self.timeout, trust_env=self._trust_env
        )
        self._mcp: _MCPSession | None = None
        self._mcp_lock: asyncio.Lock | None = None
        self.sessions = _AsyncSessions(self)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        accept_status: tuple[int, ...] = (),
        timeout: float | None = None,
        session_id: str | None = None,
    ) -> tuple[int, Any]:
        """One HTTP request on the pool: ``(status, decoded JSON body)`` (see :meth:`NexusClient.request`)."""
        self._check_open()
        try:
            resp = await self._http.request(
                method,
                path,
                json=json,
                params=params,
                headers=headers,
                timeout=self._default_timeout if timeout is None else timeout,
            )
        except Exception as exc:
            raise self._transport_error(exc, method, path, timeout) from None
        return resp.status_code, self._decode(resp, method, path, accept_status, session_id)

    async def run(
        self,
        name: str,
        inputs: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        channel: str = "api",
        *,
        timeout: float | None = None,
    ) -> RunResult:
        """Run deployment ``name`` on ``channel``: ``(await client.run("assistant", {"query": "hi"})).outputs``."""
        args = self._check_run(inputs, session_id, channel)
        self._check_open()
        if channel == "mcp":
            if self.mcp_url is None:
                self.mcp_url = _mcp_url_from_health(await self.health(), self.url)
            if session_id is not None:
                args["session_id"] = session_id
            wait = self.timeout if timeout is None else _check_timeout(timeout)
            started = time.perf_counter()
            body = await _mcp_run(self, self._session, self._drop, name, args, session_id, wait)
            return _result(name, "mcp", body, started)
        path = self._execute_path(name)
        payload: dict[str, Any] = {"inputs": args}
        if session_id is not None:
            payload["session_id"] = session_id
        started = time.perf_counter()
        try:
            resp = await self._http.post(
                path,
                json=payload,
                headers=self._channel_headers[channel],
                timeout=self._default_timeout if timeout is None else timeout,
            )
        except Exception as exc:
            raise self._transport_error(exc, "POST", path, timeout) from None
        data = self._decode(resp, "POST", path, (), session_id)
        return _result(name, channel, _execution_body(name, channel, data, self.url), started)

    async def workflows(self) -> list[dict[str, Any]]:
        """The deployments: name, channels, sessions, inputs and input schema."""
        body = (await self.request("GET", "/api/workflows"))[1]
        items = body.get("workflows") if isinstance(body, dict) else body
        return list(items) if isinstance(items, list) else []

    async def health(self) -> dict[str, Any]:
        """The platform's health document (also when it answers 503 with one)."""
        body = (await self.request("GET", "/health", accept_status=(503,)))[1]
        if not isinstance(body, dict):
            raise NexusError(f"{self.url}/health returned no health document")
        return body

    async def _session(self) -> _MCPSession:
        if self._mcp_lock is None:
            self._mcp_lock = asyncio.Lock()
        async with self._mcp_lock:
            self._check_open()
            if self._mcp is None:
                session = _MCPSession(self.mcp_url or "", self._mcp_headers, self.timeout, self._trust_env)
                await session.open()
                self._mcp = session
            return self._mcp

    async def _drop(self, session: _MCPSession) -> None:
        if self._mcp is session:
            self._mcp = None
        await session.close()

    async def aclose(self) -> None:
        """Close the MCP session and the connection pool."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._mcp is not None:
                with contextlib.suppress(Exception):
                    await self._drop(self._mcp)
        finally:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncNexusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
