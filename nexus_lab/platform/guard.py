"""The front door of the HTTP API and of MCP over HTTP: timing, auth, rate limit, errors.

Both channels must identify callers, count their requests and answer errors
the same way, so this module holds the one implementation, in layers:

* :func:`authenticate_request` turns ``Authorization: Bearer KEY`` or
  ``X-API-Key: KEY`` into a principal (the user id of the key) when
  ``app.auth`` is set, and returns ``None`` when auth is off;
* :func:`check_rate` takes one token from ``app.rate_limiter`` for a key and
  returns the ``X-RateLimit-*`` headers (or raises
  :class:`~nexus_lab.errors.RateLimitExceeded`, which carries them);
* :func:`guard_request` combines both with the platform's policy;
* :func:`error_response` is the one writer of a
  :class:`~nexus_lab.errors.NexusError` as an HTTP response: status, JSON
  body ``{"error": {...}}`` and the error's own headers. The guard, the API's
  endpoints and its 404/405/500 handlers, and MCP's HTTP front all use it;
* :class:`GuardMiddleware` (pure ASGI) sits in front of the API app and of the
  MCP app, always. On every HTTP request it first notes when the request
  arrived (``scope["nexus.started"]`` and the :data:`request_started` context
  variable), from which :meth:`Nexus.aexecute` measures ``execution_time_ms``;
  then, when auth or a rate limit is on, it applies :func:`guard_request`,
  answers 401/429 itself, leaves the principal in ``scope["nexus.principal"]``
  and :data:`current_principal`, and adds the rate-limit headers to the
  response. With both off it is a pass-through.

How a request flows (API; MCP is the same with the SDK's app inside)::

    uvicorn -> Starlette -> GuardMiddleware -> router -> endpoint -> Nexus.aexecute
                            (started, principal)                     (started=...)

Policy: the rate-limit key is the authenticated user id, else the client
address. A request whose key is missing or wrong is counted against its
client address, so guessing keys is rate limited too (429 before 401 once the
address is over its budget). API keys are never logged or echoed.

This module imports nothing heavy at import time: :meth:`Nexus.aexecute` reads
:data:`request_started` from here, and ``import nexus_lab`` must stay light;
Starlette is imported when the first error response is written.

Example (in another channel)::

    from nexus_lab.platform.guard import GuardMiddleware
    asgi = GuardMiddleware(asgi, nexus_app, exempt_paths=())
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import AuthenticationError, InputValidationError, NexusError, RateLimitExceeded

if TYPE_CHECKING:
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from .app import Nexus

__all__ = [
    "GuardResult",
    "GuardMiddleware",
    "authenticate_request",
    "check_rate",
    "guard_request",
    "rate_key",
    "error_response",
    "current_principal",
    "request_started",
    "PRINCIPAL_SCOPE_KEY",
    "STARTED_SCOPE_KEY",
]

#: ASGI scope key where :class:`GuardMiddleware` stores the caller's principal.
PRINCIPAL_SCOPE_KEY = "nexus.principal"
#: ASGI scope key where :class:`GuardMiddleware` stores when the request arrived
#: (a ``time.perf_counter()`` value).
STARTED_SCOPE_KEY = "nexus.started"

#: The authenticated user id of the request being handled (None without auth).
current_principal: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "nexus_principal", default=None
)
#: ``time.perf_counter()`` when the HTTP request being handled reached the platform
#: (None outside one). A context variable, so that code the request runs without
#: access to the ASGI scope - the MCP SDK's tool handler - can read it.
request_started: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "nexus_request_started", default=None
)

JSON_TYPE = "application/json"
#: JSON-RPC "Invalid Request": the code an MCP client sees for a refused HTTP request.
JSONRPC_INVALID_REQUEST = -32600

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


# ----------------------------------------------------------------------------- errors
def error_response(exc: NexusError, *, jsonrpc: bool = False) -> Response:
    """The HTTP response for ``exc``: its status, ``{"error": exc.to_dict()}``, its headers.

    A validation error with per-field details adds them as ``error.errors``.
    ``jsonrpc=True`` (MCP over HTTP) wraps the same error object as a JSON-RPC
    error - ``{"jsonrpc": "2.0", "id": null, "error": {..., "code", "data"}}`` -
    which the MCP SDK client surfaces as an ``MCPError`` carrying the message
    (``data.http_status`` says which refusal it was) instead of a generic
    transport failure; ``error.type`` and ``error.message`` stay where every
    other channel has them.

    The result is a Starlette ``Response``, itself an ASGI app: endpoints return
    it, pure-ASGI middleware awaits ``response(scope, receive, send)``.
    """
    from starlette.responses import Response

    error = exc.to_dict()
    if isinstance(exc, InputValidationError) and exc.errors:
        error["errors"] = exc.errors
    body: dict[str, Any] = {"error": error}
    if jsonrpc:
        error["code"] = JSONRPC_INVALID_REQUEST
        error["data"] = {"type": error["type"], "http_status": exc.http_status}
        body = {"jsonrpc": "2.0", "id": None, "error": error}
    return Response(
        _encode(body).encode(),
        status_code=exc.http_status,
        headers=exc.headers or None,
        media_type=JSON_TYPE,
    )


# ----------------------------------------------------------------------------- policy
def _header(headers: Any, name: str) -> str | None:
    """Header lookup on a Starlette ``Headers``, a dict, or a raw ASGI header list."""
    if isinstance(headers, list):
        raw = name.encode()
        for key, value in headers:
            if key.lower() == raw:
                return value.decode("latin-1")
        return None
    value = headers.get(name)
    if value is None and isinstance(headers, dict):  # plain dicts are case-sensitive
        lname = name.lower()
        for key, val in headers.items():
            if key.lower() == lname:
                return val
    return value


def _client_host(client: Any) -> str:
    if client is None:
        return "unknown"
    if isinstance(client, str):
        return client
    host = getattr(client, "host", None)
    if host is None and isinstance(client, (tuple, list)) and client:
        host = client[0]
    return str(host) if host else "unknown"


def authenticate_request(
    app: Nexus, headers: Mapping[str, str] | list, client: Any = None
) -> str | None:
    """The principal (user id) of a request, or None when ``app.auth`` is off.

    ``headers``: a Starlette ``Headers``, a dict, or the raw ASGI header list.
    Raises :class:`AuthenticationError` (HTTP 401) for a missing or wrong key.
    ``client`` is accepted for symmetry with :func:`guard_request` and unused.
    """
    auth = app.auth
    if auth is None:
        return None
    return auth.authenticate(_header(headers, "authorization"), _header(headers, "x-api-key"))


def rate_key(principal: str | None, client: Any) -> str:
    """What the rate limiter counts: the principal, else the client address."""
    return principal if principal is not None else _client_host(client)


def check_rate(app: Nexus, key: str) -> dict[str, str]:
    """Take one token for ``key``; return the ``X-RateLimit-*`` headers ({} when no limiter).

    Over the limit raises :class:`RateLimitExceeded` (HTTP 429), whose
    ``headers`` are ``Retry-After`` and the ``X-RateLimit-*`` headers.
    """
    limiter = app.rate_limiter
    if limiter is None:
        return {}
    decision = limiter.check(key)
    headers = decision.headers()
    if not decision.allowed:
        raise RateLimitExceeded(
            f"rate limit of {decision.limit} requests per minute exceeded; "
            f"retry after {headers['Retry-After']} s",
            retry_after=decision.retry_after,
            limit=decision.limit,
            rate_limit_headers=headers,
        )
    return headers


@dataclass
class GuardResult:
    """Who is calling and the headers to add to the response."""

    principal: str | None
    headers: dict[str, str] = field(default_factory=dict)


def guard_request(app: Nexus, headers: Mapping[str, str] | list, client: Any = None) -> GuardResult:
    """Authenticate, then rate limit, with the platform's policy (see module doc).

    Raises :class:`AuthenticationError` (its ``headers``: ``WWW-Authenticate``
    and the rate-limit headers of the attempt) or :class:`RateLimitExceeded`.
    """
    try:
        principal = authenticate_request(app, headers, client)
    except AuthenticationError as exc:
        # a failed attempt costs a token of the client address: may raise 429 instead
        extra = check_rate(app, rate_key(None, client))
        if not extra:
            raise
        raise AuthenticationError(exc.message, rate_limit_headers=extra) from None
    return GuardResult(principal, check_rate(app, rate_key(principal, client)))


# ----------------------------------------------------------------------------- middleware
class GuardMiddleware:
    """Pure-ASGI front of an app: request timing always, auth + rate limit when on.

    ``exempt_paths`` (``/health`` by default) skip auth and the rate limit.
    ``jsonrpc_errors=True`` writes refusals as JSON-RPC errors (MCP; see
    :func:`error_response`). Non-HTTP scopes (``lifespan``) go straight
    through: uvicorn runs only the outermost app's lifespan, and the MCP SDK
    app's lifespan starts its session manager.
    """

    def __init__(
        self,
        app: ASGIApp,
        nexus: Nexus,
        exempt_paths: Iterable[str] = ("/health",),
        *,
        jsonrpc_errors: bool = False,
    ) -> None:
        self.app = app
        self.nexus = nexus
        self.exempt = frozenset(exempt_paths)
        self.jsonrpc_errors = jsonrpc_errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # First of all, so that execution_time_ms covers everything the platform does with
        # the request: the scope carries it to the API's endpoints, the context variable to
        # code that has no scope at hand (the MCP tool handler, inside the SDK).
        started = time.perf_counter()
        scope[STARTED_SCOPE_KEY] = started
        started_token = request_started.set(started)
        try:
            nexus = self.nexus
            if (nexus.auth is None and nexus.rate_limiter is None) or scope["path"] in self.exempt:
                await self.app(scope, receive, send)
                return
            await self._guarded(nexus, scope, receive, send)
        finally:
            request_started.reset(started_token)

    async def _guarded(self, nexus: Nexus, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            result = guard_request(nexus, scope["headers"], scope.get("client"))
        except NexusError as exc:
            await error_response(exc, jsonrpc=self.jsonrpc_errors)(scope, receive, send)
            return
        scope[PRINCIPAL_SCOPE_KEY] = result.principal
        principal_token = current_principal.set(result.principal)
        try:
            await self.app(scope, receive, _adding_headers(send, result.headers))
        finally:
            current_principal.reset(principal_token)


def _adding_headers(send: Send, headers: Mapping[str, str]) -> Send:
    """``send`` that appends ``headers`` to the response start (``send`` itself when none)."""
    if not headers:
        return send
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return send_with_headers
