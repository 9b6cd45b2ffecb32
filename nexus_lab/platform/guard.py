"""Request-level guards shared by the HTTP API and MCP over HTTP: auth + rate limit.

Both channels must identify callers and count their requests the same way, so
this module holds the one implementation:

* :func:`authenticate_request` turns ``Authorization: Bearer KEY`` or
  ``X-API-Key: KEY`` into a principal (the user id of the key) when
  ``app.auth`` is set, and returns ``None`` when auth is off;
* :func:`check_rate` takes one token from ``app.rate_limiter`` for a principal
  and returns the ``X-RateLimit-*`` headers (raises
  :class:`~nexus_lab.errors.RateLimitExceeded` carrying ``.headers`` when over);
* :func:`guard_request` combines both with the platform's policy;
* :class:`GuardMiddleware` applies it to any ASGI app (pure ASGI, no
  per-request allocations when auth and rate limit are off), answering 401/429
  itself with the JSON error body and adding the rate-limit headers to every
  other response. The principal is left in ``scope["nexus.principal"]`` and in
  the :data:`current_principal` context variable.

Policy: the rate-limit key is the authenticated user id, else the client
address. A request whose key is missing or wrong is counted against its
client address, so guessing keys is rate limited too (429 before 401 once the
address is over its budget). API keys are never logged or echoed.

Example (in another channel)::

    from nexus_lab.platform.guard import GuardMiddleware
    asgi = GuardMiddleware(asgi, nexus_app, exempt_paths=())
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import AuthenticationError, NexusError, RateLimitExceeded

if TYPE_CHECKING:
    from .app import Nexus

__all__ = [
    "GuardResult",
    "GuardMiddleware",
    "authenticate_request",
    "check_rate",
    "guard_request",
    "rate_key",
    "error_body",
    "send_error",
    "current_principal",
    "PRINCIPAL_SCOPE_KEY",
]

#: ASGI scope key where :class:`GuardMiddleware` stores the caller's principal.
PRINCIPAL_SCOPE_KEY = "nexus.principal"

#: The authenticated user id of the request being handled (None without auth).
current_principal: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "nexus_principal", default=None
)

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def error_body(exc: NexusError) -> bytes:
    """The JSON error body every channel uses: ``{"error": {"type": ..., "message": ...}}``."""
    return _encode({"error": exc.to_dict()}).encode()


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

    Over the limit raises :class:`RateLimitExceeded` (HTTP 429) whose
    ``headers`` attribute holds ``Retry-After`` and the ``X-RateLimit-*`` headers.
    """
    limiter = app.rate_limiter
    if limiter is None:
        return {}
    decision = limiter.check(key)
    headers = decision.headers()
    if not decision.allowed:
        exc = RateLimitExceeded(
            f"rate limit of {decision.limit} requests per minute exceeded; "
            f"retry after {headers['Retry-After']} s",
            retry_after=decision.retry_after,
            limit=decision.limit,
        )
        exc.headers = headers  # type: ignore[attr-defined]
        raise exc
    return headers


@dataclass
class GuardResult:
    """Who is calling and the headers to add to the response."""

    principal: str | None
    headers: dict[str, str] = field(default_factory=dict)


def guard_request(app: Nexus, headers: Mapping[str, str] | list, client: Any = None) -> GuardResult:
    """Authenticate, then rate limit, with the platform's policy (see module doc).

    Raises :class:`AuthenticationError` (with ``headers`` holding
    ``WWW-Authenticate`` and any rate-limit headers) or :class:`RateLimitExceeded`.
    """
    try:
        principal = authenticate_request(app, headers, client)
    except AuthenticationError as exc:
        extra = check_rate(app, rate_key(None, client))  # may raise 429 instead
        exc.headers = {"WWW-Authenticate": "Bearer", **extra}  # type: ignore[attr-defined]
        raise
    return GuardResult(principal, check_rate(app, rate_key(principal, client)))


class GuardMiddleware:
    """Pure-ASGI auth + rate-limit gate in front of ``asgi_app``.

    Paths in ``exempt_paths`` (``/health`` by default) skip both checks. When
    the app has neither auth nor a rate limiter, requests pass straight through.
    """

    def __init__(
        self, asgi_app: Any, nexus: Nexus, exempt_paths: Iterable[str] = ("/health",)
    ) -> None:
        self.asgi_app = asgi_app
        self.nexus = nexus
        self.exempt = frozenset(exempt_paths)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        nexus = self.nexus
        if scope["type"] != "http" or (nexus.auth is None and nexus.rate_limiter is None):
            await self.asgi_app(scope, receive, send)
            return
        if scope["path"] in self.exempt:
            await self.asgi_app(scope, receive, send)
            return
        try:
            result = guard_request(nexus, scope["headers"], scope.get("client"))
        except NexusError as exc:
            await send_error(send, exc, getattr(exc, "headers", None))
            return
        scope[PRINCIPAL_SCOPE_KEY] = result.principal
        token = current_principal.set(result.principal)
        try:
            if not result.headers:
                await self.asgi_app(scope, receive, send)
                return
            extra = [(k.lower().encode(), v.encode()) for k, v in result.headers.items()]

            async def send_with_headers(message: dict) -> None:
                if message["type"] == "http.response.start":
                    message = dict(message)
                    message["headers"] = [*message.get("headers", ()), *extra]
                await send(message)

            await self.asgi_app(scope, receive, send_with_headers)
        finally:
            current_principal.reset(token)


async def send_error(send: Any, exc: NexusError, headers: Mapping[str, str] | None = None) -> None:
    """Send a complete JSON error response for ``exc`` on a raw ASGI ``send``."""
    body = error_body(exc)
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if headers:
        raw.extend((k.lower().encode(), v.encode()) for k, v in headers.items())
    await send({"type": "http.response.start", "status": exc.http_status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
