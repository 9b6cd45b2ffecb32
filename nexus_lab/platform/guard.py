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
  then it checks ``Host`` and ``Origin`` (:func:`check_host_origin`: 421/403,
  against DNS rebinding and other sites' pages); then, when auth or a rate
  limit is on, it applies :func:`guard_request`, answers 401/429 itself,
  leaves the principal in ``scope["nexus.principal"]`` and
  :data:`current_principal`, and adds the rate-limit headers to the response.
  For the API's execute endpoint a shared limiter's check (Redis) is started and
  left in the scope instead of awaited (:func:`settle_rate`): its command goes
  to Redis together with the call's session read;
* request bodies: :func:`require_json_body` (415 for anything but JSON) and
  :func:`parse_json` (strict UTF-8, no NaN, nesting bounded by
  ``max_json_depth`` before the parser recurses: 400 naming the limit);
* below ASGI, :func:`uvicorn_options` gives uvicorn a protocol class with a
  connection guard: request heads over ``max_header_bytes`` get 431, heads
  and bodies that do not arrive within ``header_timeout`` / ``body_timeout``
  get 408, and at ``max_connections`` the connection idle longest is closed
  to make room (slowloris cannot lock ``/health`` out). It also keeps
  ``X-Forwarded-For`` unbelieved unless ``forwarded_allow_ips`` names the proxy.

How a request flows (API; MCP is the same with the SDK's app inside)::

    uvicorn (guarded protocol) -> Starlette -> GuardMiddleware -> router -> endpoint
    (431, 408, connection cap)                 (started, Host/Origin,
                                                principal)

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
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from ..errors import (
    AuthenticationError,
    BadRequest,
    Forbidden,
    HeadersTooLarge,
    InputValidationError,
    MisdirectedRequest,
    NexusError,
    RateLimitExceeded,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from .security import HTTPPolicy

if TYPE_CHECKING:
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from .app import Nexus

__all__ = [
    "GuardResult",
    "GuardMiddleware",
    "authenticate_request",
    "check_rate",
    "acheck_rate",
    "guard_request",
    "aguard_request",
    "rate_key",
    "error_response",
    "error_body",
    "parse_json",
    "unencodable_path",
    "json_nesting_exceeds",
    "nesting_exceeds",
    "require_json_body",
    "require_json_content",
    "check_host_origin",
    "uvicorn_options",
    "current_principal",
    "request_started",
    "PRINCIPAL_SCOPE_KEY",
    "STARTED_SCOPE_KEY",
    "RESPONSE_HEADERS_SCOPE_KEY",
    "RATE_PENDING_SCOPE_KEY",
    "pending_admission",
    "settle_rate",
]

#: ASGI scope key where :class:`GuardMiddleware` stores the caller's principal.
PRINCIPAL_SCOPE_KEY = "nexus.principal"
#: ASGI scope key where :class:`GuardMiddleware` leaves the headers (ASGI pairs) the
#: response must carry, for an inner app with ``adds_guard_headers = True``.
RESPONSE_HEADERS_SCOPE_KEY = "nexus.response_headers"
#: ASGI scope key where :class:`GuardMiddleware` leaves a shared limiter's check it started
#: but did not await (for an inner app with ``adds_guard_headers``: see :func:`settle_rate`).
RATE_PENDING_SCOPE_KEY = "nexus.rate_pending"
#: The request's rate-limit check still in flight (set by the API's execute endpoint from
#: ``scope[RATE_PENDING_SCOPE_KEY]``): :meth:`Nexus.aexecute` awaits it before the agent runs.
pending_admission: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "nexus_pending_admission", default=None
)
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
def error_body(exc: NexusError, *, jsonrpc: bool = False) -> bytes:
    """The JSON bytes of ``exc`` as every channel writes it: ``{"error": exc.to_dict()}``.

    A validation error with per-field details adds them as ``error.errors``;
    ``jsonrpc=True`` wraps the same object as a JSON-RPC error (see
    :func:`error_response`). Text UTF-8 cannot encode (a lone surrogate a
    client sent, echoed in a field name) is written as a ``\\uXXXX`` escape
    instead of failing the response.

    >>> error_body(BadRequest("no"))
    b'{"error":{"type":"bad_request","message":"no"}}'
    """
    error = exc.to_dict()
    if isinstance(exc, InputValidationError) and exc.errors:
        error["errors"] = exc.errors
    body: dict[str, Any] = {"error": error}
    if jsonrpc:
        error["code"] = JSONRPC_INVALID_REQUEST
        error["data"] = {"type": error["type"], "http_status": exc.http_status}
        body = {"jsonrpc": "2.0", "id": None, "error": error}
    try:
        return _encode(body).encode()
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":"), default=str).encode()


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

    return Response(
        error_body(exc, jsonrpc=jsonrpc),
        status_code=exc.http_status,
        headers=exc.headers or None,
        media_type=JSON_TYPE,
    )


# ----------------------------------------------------------------------------- bodies
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_nesting_exceeds(body: bytes, limit: int) -> bool:
    """Whether the JSON text ``body`` nests arrays/objects more than ``limit`` levels deep.

    Decided on the bytes, before any parser recurses into them: a body with at
    most ``limit`` brackets cannot be deeper (two C-speed counts, the usual
    case); otherwise strings are cut out and matched bracket pairs peeled off,
    one level per pass. Text that is not JSON at all is left to the parser to
    name, unless its open brackets alone go deeper than ``limit``.

    >>> json_nesting_exceeds(b'{"a": [[1]]}', 3), json_nesting_exceeds(b'{"a": [[1]]}', 2)
    (False, True)
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(_BRACKETS, _NOT_BRACKETS)
    for level in range(limit):
        if not brackets:
            return False
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):  # unbalanced: ']]][[[' is left
            return level + brackets.count(b"[") > limit
        brackets = shorter
    return bool(brackets)


def nesting_exceeds(value: Any, limit: int) -> bool:
    """Whether a decoded JSON value nests dicts/lists more than ``limit`` levels deep.

    Iterative, so a value built deeper than the interpreter's recursion limit is
    measured too (MCP tool arguments arrive decoded).

    >>> nesting_exceeds({"a": [[1]]}, 3), nesting_exceeds({"a": [[1]]}, 2)
    (False, True)
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if not isinstance(item, (dict, list, tuple)):
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, tuple)))
    return False


def unencodable_path(value: Any) -> str | None:
    """The path (``a.b[2]``) of the first string or key UTF-8 cannot encode, or None.

    JSON's ``\\ud800`` escape is valid syntax for a lone surrogate, which no
    store, log or response can encode; a channel that decodes JSON itself
    refuses it naming where it was. Iterative, for any depth.

    >>> unencodable_path({"a": ["ok", "\\ud800"]})
    'a[1]'
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return path
        elif isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(key, str) and unencodable_path(key) is not None:
                    return f"{path}.{key!r}" if path else repr(key)
                stack.append((f"{path}.{key}" if path else str(key), sub))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", sub) for i, sub in enumerate(item))
    return None


def too_deep(limit: int) -> BadRequest:
    """The refusal of JSON nested deeper than ``limit`` (the platform's ``max_json_depth``).

    >>> too_deep(64).message
    'JSON nested more than 64 levels deep (the limit is max_json_depth=64)'
    """
    return BadRequest(
        f"JSON nested more than {limit} levels deep (the limit is max_json_depth={limit})"
    )


def parse_json(body: bytes, max_depth: int, *, envelope: int = 1) -> Any:
    """Decode a JSON request body: strict UTF-8, nesting bounded, else 400 naming the problem.

    ``max_depth`` bounds the values the body carries (inputs, metadata), which
    sit ``envelope`` levels inside the body (1: ``{"inputs": {...}}``), so the
    body as a whole may be ``max_depth + envelope`` levels deep.

    UTF-8 is decoded strictly (RFC 8259): invalid bytes, a BOM or UTF-16 text
    are refused rather than guessed at, and an encoded surrogate
    (``ED A0 80``) cannot slip in as text. The ``\\ud800`` *escape* is valid
    JSON; it decodes to a lone surrogate that the schema and the session
    store refuse, naming the field.

    >>> parse_json(b'{"inputs": {"a": 1}}', 64)
    {'inputs': {'a': 1}}
    """
    if _fast_loads is not None and not _has_long_number(body):
        # orjson takes what RFC 8259 allows and refuses the rest (bad UTF-8, a BOM, NaN,
        # lone surrogates, numbers beyond a double); a refusal goes the standard way below,
        # which names the problem. Integers of 19+ digits go that way too: orjson would
        # make floats of those beyond 64 bits.
        try:
            value = _fast_loads(body)
        except ValueError:
            pass
        else:
            if json_nesting_exceeds(body, max_depth + envelope):
                raise too_deep(max_depth)
            return value
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"request body is not valid UTF-8 (byte {exc.start}: {exc.reason}); send JSON as UTF-8"
        ) from None
    if json_nesting_exceeds(body, max_depth + envelope):
        raise too_deep(max_depth)
    try:
        return _DECODER.decode(text)
    except RecursionError:  # a backstop: json_nesting_exceeds stops these first
        raise too_deep(max_depth) from None
    except ValueError as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None


def _not_json(name: str) -> Any:
    """``NaN`` / ``Infinity``: Python's decoder takes them, JSON (RFC 8259) has no such values."""
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    """A JSON number as a float, refusing one too large for a double (``1e999`` would be inf)."""
    value = float(text)
    if value - value != 0.0:  # inf (NaN cannot be written as a JSON number)
        raise ValueError(f"number {text[:40]} is too large")
    return value


try:
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency; the standard path is complete
    _fast_loads = None
# A run of 19+ digits, found as a run of "0"s once every digit maps to "0" and every other
# byte to " ": a C translate and a substring search, 3x (small bodies) to 12x (large) faster
# than the regex [0-9]{19}, which this replaces on every request body.
_DIGITS_AS_ZEROS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_RUN = b"0" * 19


def _has_long_number(body: bytes) -> bool:
    """Whether ``body`` holds 19 digits in a row (maybe an integer beyond 64 bits)."""
    return _LONG_RUN in body.translate(_DIGITS_AS_ZEROS)


#: One decoder for every body (``json.loads`` with hooks builds a new one per call).
_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def require_json_body(headers: Any) -> None:
    """Refuse (415) a request that carries a body not declared ``application/json``.

    A body is present when ``Content-Length`` is above 0 or the body is chunked.
    ``application/*+json`` is JSON too; a ``charset`` other than UTF-8 is refused.
    Browsers send "simple" cross-origin POSTs (``text/plain``, forms, or a body
    without a type) without asking first, so this also stops such pages.

    Example::

        require_json_body({"content-length": "2", "content-type": "application/json"})  # ok
        require_json_body({"content-length": "2", "content-type": "text/plain"})  # 415
    """
    require_json_content(
        _header(headers, "content-length"),
        _header(headers, "transfer-encoding") is not None,
        _header(headers, "content-type"),
    )


def require_json_content(length: str | None, chunked: bool, declared: str | None) -> None:
    """:func:`require_json_body` on the header values themselves: ``Content-Length``,
    whether ``Transfer-Encoding`` is present, and ``Content-Type``."""
    if (length is None or length.strip() in ("", "0")) and not chunked:
        return
    if declared == JSON_TYPE:  # the usual request
        return
    media, _, params = (declared or "").partition(";")
    media = media.strip().lower()
    if media != JSON_TYPE and not (media.startswith("application/") and media.endswith("+json")):
        shown = f"{declared!r}" if declared else "none"
        raise UnsupportedMediaType(
            f"request bodies must be JSON sent as Content-Type: application/json (got {shown})"
        )
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise UnsupportedMediaType(
                f"JSON must be UTF-8; Content-Type says charset={value.strip()!r}"
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
    return _rate_headers(limiter.check(key))


async def acheck_rate(app: Nexus, key: str) -> dict[str, str]:
    """:func:`check_rate` on an event loop: a shared limiter (Redis) is awaited, never blocked on."""
    limiter = app.rate_limiter
    if limiter is None:
        return {}
    acheck = getattr(limiter, "acheck", None)
    return _rate_headers(await acheck(key) if acheck is not None else limiter.check(key))


def _rate_headers(decision: Any) -> dict[str, str]:
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


async def aguard_request(app: Nexus, headers: Mapping[str, str] | list, client: Any = None) -> GuardResult:
    """:func:`guard_request` for the servers' event loop (the rate limit is awaited)."""
    principal = await _aauthenticate(
        app, _header(headers, "authorization"), _header(headers, "x-api-key"), client
    )
    return GuardResult(principal, await acheck_rate(app, rate_key(principal, client)))


async def _aauthenticate(
    app: Nexus, authorization: str | None, api_key: str | None, client: Any
) -> str | None:
    """The principal of the key given (None without auth); a missing or wrong key is a 401
    that costs a token of the client address, so it may be a 429 instead."""
    auth = app.auth
    if auth is None:
        return None
    try:
        return auth.authenticate(authorization, api_key)
    except AuthenticationError as exc:
        extra = await acheck_rate(app, rate_key(None, client))
        if not extra:
            raise
        raise AuthenticationError(exc.message, rate_limit_headers=extra) from None


def _allowed_headers(decision: Any) -> list[tuple[bytes, bytes]]:
    """The rate-limit headers (ASGI pairs) of an allowed decision; a refusal raises 429."""
    if not decision.allowed:
        _rate_headers(decision)  # raises RateLimitExceeded with its headers
    return decision.raw_headers()


def check_host_origin(policy: HTTPPolicy, host: str | None, origin: str | None) -> None:
    """Refuse a request to a ``Host`` this server does not answer (421) or from a foreign ``Origin`` (403).

    The ``Host`` check stops DNS rebinding (a page whose name resolves to this
    machine); the ``Origin`` check (only when the header is present: browsers
    send it, other clients need not) stops pages of other sites from using a
    browser as their client. See :class:`~nexus_lab.platform.security.HTTPPolicy`.

    Example::

        check_host_origin(HTTPPolicy.of(app), "127.0.0.1:8000", None)  # passes
        check_host_origin(HTTPPolicy.of(app), "evil.example", None)    # MisdirectedRequest
    """
    if not policy.host_allowed(host):
        raise MisdirectedRequest(
            f"this server does not answer for Host {host!r}; add it to the platform's "
            "allowed_hosts if it is yours"
        )
    if origin is not None and not policy.origin_allowed(origin, host):
        raise Forbidden(
            f"requests from origin {origin!r} are not allowed; add it to the platform's "
            "allowed_origins (or cors_origins) if it is yours"
        )


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
        self.policy = HTTPPolicy.of(nexus)
        # an app that appends the guard's response headers itself (from
        # scope[RESPONSE_HEADERS_SCOPE_KEY]) saves a send wrapper per request
        self.inner_adds_headers = bool(getattr(app, "adds_guard_headers", False))
        # Host values already found allowed (most requests repeat one); bounded, since a
        # client chooses what it sends
        self._hosts_ok: set[bytes] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # First of all, so that execution_time_ms covers everything the platform does with
        # the request: the scope carries it to the API's endpoints, the context variable to
        # code that has no scope at hand (the MCP tool handler, inside the SDK).
        started = time.perf_counter()
        scope[STARTED_SCOPE_KEY] = started
        # one pass over the headers for everything the guard reads (names arrive lowercased)
        host = origin = authorization = api_key = None
        hosts = 0
        for key, value in scope["headers"]:
            if key == b"host":
                host = value
                hosts += 1
            elif key == b"authorization":
                authorization = value
            elif key == b"x-api-key":
                api_key = value
            elif key == b"origin":
                origin = value
        if hosts > 1:  # which one would a proxy have routed by? refuse to guess
            refusal: NexusError | None = BadRequest("a request must carry exactly one Host header")
        elif origin is None and (host in self._hosts_ok or self.policy.hosts is None):
            refusal = None  # the usual request: an allowed Host seen before, no Origin
        else:
            refusal = self._front_door(host, origin)
        if refusal is not None:
            await error_response(refusal, jsonrpc=self.jsonrpc_errors)(scope, receive, send)
            return
        started_token = request_started.set(started)
        try:
            nexus = self.nexus
            if (nexus.auth is None and nexus.rate_limiter is None) or scope["path"] in self.exempt:
                await self.app(scope, receive, send)
                return
            try:
                principal, extra = await self._admit(
                    nexus, authorization, api_key, scope.get("client"),
                    scope if self.inner_adds_headers else None,
                )
            except NexusError as exc:
                await error_response(exc, jsonrpc=self.jsonrpc_errors)(scope, receive, send)
                return
            scope[PRINCIPAL_SCOPE_KEY] = principal
            principal_token = current_principal.set(principal)
            try:
                if self.inner_adds_headers:  # the app appends them itself (no wrapper per request)
                    scope[RESPONSE_HEADERS_SCOPE_KEY] = extra
                    await self.app(scope, receive, send)
                else:
                    await self.app(scope, receive, _adding_headers(send, extra))
            finally:
                current_principal.reset(principal_token)
        finally:
            request_started.reset(started_token)

    def _front_door(self, host: bytes | None, origin: bytes | None) -> NexusError | None:
        """The refusal of a request's ``Host`` / ``Origin`` (:func:`check_host_origin`), or None."""
        text = None if host is None else host.decode("latin-1")
        try:
            check_host_origin(self.policy, text, None if origin is None else origin.decode("latin-1"))
        except NexusError as exc:
            return exc
        if host is not None and origin is None and len(self._hosts_ok) < 256:
            self._hosts_ok.add(host)  # bounded: a client chooses what it sends
        return None

    @staticmethod
    async def _admit(
        nexus: Nexus,
        authorization: bytes | None,
        api_key: bytes | None,
        client: Any,
        scope: Scope | None = None,
    ) -> tuple[str | None, list[tuple[bytes, bytes]] | None]:
        """:func:`aguard_request` on the raw header values: ``(principal, rate-limit headers)``.

        Raises :class:`AuthenticationError` (401, after a token of the client
        address is taken) or :class:`RateLimitExceeded` (429).

        With ``scope`` (an inner app that settles the decision itself, see
        :func:`settle_rate`) a shared limiter's check (Redis) is started, not
        awaited: it is left in ``scope[RATE_PENDING_SCOPE_KEY]`` and the headers
        returned are ``None``. Its command then travels to Redis with the
        request's session read, one round trip instead of two in a row.
        """
        principal = None
        if nexus.auth is not None:
            principal = await _aauthenticate(
                nexus,
                None if authorization is None else authorization.decode("latin-1"),
                None if api_key is None else api_key.decode("latin-1"),
                client,
            )
        limiter = nexus.rate_limiter
        if limiter is None:
            return principal, []
        key = rate_key(principal, client)
        if scope is not None:
            start = getattr(limiter, "astart", None)  # a shared limiter's check, started
            if start is not None:
                scope[RATE_PENDING_SCOPE_KEY] = start(key)
                return principal, None
        acheck = getattr(limiter, "acheck", None)
        return principal, _allowed_headers(await acheck(key) if acheck is not None else limiter.check(key))


async def settle_rate(pending: Any) -> list[tuple[bytes, bytes]]:
    """The rate-limit headers of a request whose check the guard started (its
    ``scope[RATE_PENDING_SCOPE_KEY]``), once it is decided; raises
    :class:`RateLimitExceeded` (429) or :class:`ServiceUnavailable` (503, Redis down).

    An app that gets such a request must settle it before it answers anything
    and before the call has any effect (the platform awaits it before the agent
    runs, see :data:`pending_admission`); it may read (pure reads) meanwhile.
    """
    return _allowed_headers(await pending)


def _adding_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send`` that appends the ASGI header pairs ``extra`` to the response start
    (``send`` itself when there are none)."""
    if not extra:
        return send

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return send_with_headers


# ----------------------------------------------------------------------------- connections
def uvicorn_options(app: Nexus, *, jsonrpc_errors: bool = False) -> dict[str, Any]:
    """The ``uvicorn.Config`` keyword arguments that bound what one client can hold.

    * ``http``: uvicorn's own HTTP protocol with the connection guard mixed in
      (:class:`_ConnectionGuard`): the request-head size limit (431), the head
      and body read deadlines (408) and the connection cap;
    * ``limit_concurrency``: uvicorn answers 503 past it; the guard keeps the
      open connections at ``max_connections`` (uvicorn counts the arriving
      one too, hence the + 1), so this is the backstop for requests in flight;
    * ``timeout_keep_alive``; ``h11_max_incomplete_event_size`` (the head
      limit, should uvicorn run on h11);
    * ``proxy_headers`` / ``forwarded_allow_ips``: ``X-Forwarded-For`` is
      believed only from the proxies the platform names, never by default
      (uvicorn's default trusts any local client, and its ``None`` reads
      ``$FORWARDED_ALLOW_IPS``).

    Raises :class:`~nexus_lab.errors.ConfigError` naming a bad option.

    Example::

        config = uvicorn.Config(asgi, **uvicorn_options(app))
    """
    policy = HTTPPolicy.of(app)
    return {
        "http": guarded_protocol(policy, jsonrpc_errors),
        "limit_concurrency": policy.max_connections + 1,
        "timeout_keep_alive": policy.keep_alive_timeout,
        "h11_max_incomplete_event_size": policy.max_header_bytes,
        "proxy_headers": policy.forwarded_allow_ips is not None,
        "forwarded_allow_ips": list(policy.forwarded_allow_ips or ()),
    }


def guarded_protocol(policy: HTTPPolicy, jsonrpc_errors: bool = False) -> type:
    """uvicorn's HTTP protocol class (httptools, else h11) with :class:`_ConnectionGuard` mixed in.

    With h11 the head limit is h11's own (``h11_max_incomplete_event_size``,
    answered 400 by uvicorn); the deadlines and the cap work the same.

    Example::

        uvicorn.Config(asgi, http=guarded_protocol(HTTPPolicy.of(app)))
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type(
        "GuardedHTTPProtocol",
        (_ConnectionGuard, AutoHTTPProtocol),
        {"nexus_policy": policy, "nexus_jsonrpc": jsonrpc_errors},
    )


def _raw_response(exc: NexusError, jsonrpc: bool) -> bytes:
    """``exc`` as a complete HTTP/1.1 response that closes the connection (written below ASGI)."""
    body = error_body(exc, jsonrpc=jsonrpc)
    head = [f"HTTP/1.1 {exc.http_status} {HTTPStatus(exc.http_status).phrase}"]
    head += [f"{k}: {v}" for k, v in exc.headers.items()]
    head += [
        f"content-type: {JSON_TYPE}",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


#: How long a refused connection keeps reading before it is closed (see _ConnectionGuard._nx_close).
_LINGER_SECONDS = 2.0


class _Tracker:
    """The deadlines and the connection cap of one uvicorn server.

    ``heads``: connections waiting for a request head, oldest first, with the
    time they must have it by; ``bodies``: the same for requests whose body is
    still arriving. Insertion order is deadline order (one timeout per table),
    so one timer per server, run only while something waits, closes whatever
    is due from the front. At the cap, the connection that has waited longest
    for its head (an idle or slowloris one) is closed to make room, so that a
    flood of connections that never send anything cannot lock real clients
    (and ``/health``) out.
    """

    def __init__(self, policy: HTTPPolicy, loop: Any) -> None:
        self.policy = policy
        self.loop = loop
        self.live: set[Any] = set()
        self.heads: dict[Any, float] = {}
        self.bodies: dict[Any, float] = {}
        self.lingering: dict[Any, float] = {}
        self._timer: Any = None
        # the deadlines are kept to about a quarter of the shortest timeout
        self._every = min(1.0, policy.header_timeout / 4, policy.body_timeout / 4)

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(self._every, self._sweep)

    def wait_head(self, conn: Any) -> None:
        self.bodies.pop(conn, None)
        self.heads.pop(conn, None)
        self.heads[conn] = self.loop.time() + self.policy.header_timeout
        self._arm()

    def read_body(self, conn: Any) -> None:
        self.bodies[conn] = self.loop.time() + self.policy.body_timeout
        self._arm()

    def forget(self, conn: Any) -> None:
        self.live.discard(conn)
        self.heads.pop(conn, None)
        self.bodies.pop(conn, None)
        self.lingering.pop(conn, None)

    def linger(self, conn: Any) -> bool:
        """Keep a refused connection reading (and dropping) for a moment; False when too many do."""
        if len(self.lingering) >= self.policy.max_connections:
            return False
        self.lingering[conn] = self.loop.time() + _LINGER_SECONDS
        self._arm()
        return True

    def admit(self, conn: Any) -> bool:
        """Count a new connection; False when it must be refused (all others are busy)."""
        self.live.add(conn)
        while len(self.live) > self.policy.max_connections:
            victim = next((c for c in self.heads if c is not conn), None)
            if victim is None:
                victim = next((c for c in self.bodies if c is not conn), None)
            if victim is None:
                return False
            victim._nx_close(None)
        return True

    def _sweep(self) -> None:
        self._timer = None
        now = self.loop.time()
        for table, what in ((self.heads, "head"), (self.bodies, "body"), (self.lingering, "")):
            while table:
                conn, deadline = next(iter(table.items()))
                if deadline > now:
                    break
                del table[conn]
                if what:
                    conn._nx_expired(what)
                else:
                    conn.transport.close()
        if self.heads or self.bodies or self.lingering:
            self._arm()


class _ConnectionGuard:
    """Mixed into uvicorn's HTTP protocol (see :func:`guarded_protocol`); one per connection.

    It follows the connection through uvicorn's own hooks - ``connection_made``,
    ``data_received`` (a new request cycle means a head arrived; ``more_body``
    false means its body did), ``on_response_complete`` and ``connection_lost`` -
    and, with httptools, counts the request target and header bytes in the
    parser's callbacks, refusing the request (431) as soon as they pass
    ``max_header_bytes``, before more is buffered. Refusals and timeouts are
    written as a complete JSON error response with ``connection: close``.
    """

    nexus_policy: HTTPPolicy
    nexus_jsonrpc: bool = False
    _nx_head = 0
    _nx_partial = False
    _nx_refused = False

    # -- the connection
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        state = self.server_state  # type: ignore[attr-defined]
        tracker = getattr(state, "_nexus_tracker", None)
        if tracker is None:
            tracker = state._nexus_tracker = _Tracker(self.nexus_policy, self.loop)  # type: ignore[attr-defined]
        self._nx_tracker = tracker
        if not tracker.admit(self):
            self._nx_close(ServiceUnavailable(
                f"the server is at its limit of {self.nexus_policy.max_connections} connections; "
                "retry shortly", retry_after=1,
            ))
            return
        tracker.wait_head(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._nx_tracker.forget(self)
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._nx_refused:
            return
        cycle = self.cycle  # type: ignore[attr-defined]
        tracker = self._nx_tracker
        super().data_received(data)  # type: ignore[misc]
        if self._nx_refused:
            return
        current = self.cycle  # type: ignore[attr-defined]
        if current is not cycle:  # a request head arrived
            tracker.heads.pop(self, None)
            if current.more_body and not current.response_complete:
                tracker.read_body(self)
        elif self in tracker.heads:
            self._nx_partial = True
        elif current is not None and not current.more_body and self in tracker.bodies:
            del tracker.bodies[self]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        cycle = self.cycle  # type: ignore[attr-defined]
        if not self.transport.is_closing() and (cycle is None or cycle.response_complete):  # type: ignore[attr-defined]
            self._nx_partial = False
            self._nx_tracker.wait_head(self)

    def handle_websocket_upgrade(self) -> None:
        # the connection now belongs to uvicorn's WebSocket protocol: no head deadline for it
        self._nx_tracker.forget(self)
        super().handle_websocket_upgrade()  # type: ignore[misc]

    def send_400_response(self, msg: str) -> None:
        if not self._nx_refused:  # after a refusal of ours the parser's complaint is moot
            super().send_400_response(msg)  # type: ignore[misc]

    # -- the head, counted in httptools' callbacks (h11 has its own limit)
    def on_message_begin(self) -> None:
        self._nx_head = 0
        super().on_message_begin()  # type: ignore[misc]

    def on_url(self, url: bytes) -> None:
        if self._nx_refused or self._nx_over(len(url)):
            return
        super().on_url(url)  # type: ignore[misc]

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._nx_refused or self._nx_over(len(name) + len(value)):
            return
        super().on_header(name, value)  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        if not self._nx_refused:
            super().on_headers_complete()  # type: ignore[misc]

    def on_body(self, body: bytes) -> None:
        if not self._nx_refused:
            super().on_body(body)  # type: ignore[misc]

    def on_message_complete(self) -> None:
        if not self._nx_refused:
            super().on_message_complete()  # type: ignore[misc]

    def _nx_over(self, size: int) -> bool:
        self._nx_head += size
        limit = self.nexus_policy.max_header_bytes
        if self._nx_head <= limit:
            return False
        self._nx_close(HeadersTooLarge(
            f"request line and headers are over the limit of {limit} bytes (max_header_bytes)"
        ))
        return True

    # -- refusals
    def _nx_expired(self, what: str) -> None:
        """A deadline passed: 408 for a request begun, a quiet close for an idle connection."""
        if what == "head" and not self._nx_partial:
            self._nx_close(None)
            return
        seconds = self.nexus_policy.header_timeout if what == "head" else self.nexus_policy.body_timeout
        cycle = self.cycle  # type: ignore[attr-defined]
        started = what == "body" and cycle is not None and cycle.response_started
        self._nx_close(None if started else RequestTimeout(
            f"the request {what} did not arrive within {seconds:g} s "
            f"({'header_timeout' if what == 'head' else 'body_timeout'})"
        ))

    def _nx_close(self, error: NexusError | None) -> None:
        """Stop this connection: answer ``error`` (if any) and close; the app sees a disconnect."""
        self._nx_refused = True
        self._nx_tracker.forget(self)
        # uncounted at once: uvicorn's own count (limit_concurrency) would otherwise include
        # it until its connection_lost runs, an event-loop turn or two later
        self.connections.discard(self)  # type: ignore[attr-defined]
        cycle = self.cycle  # type: ignore[attr-defined]
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's later writes are dropped, its reads end
            cycle.message_event.set()
        transport = self.transport  # type: ignore[attr-defined]
        if transport.is_closing():
            return
        if error is not None:
            transport.write(_raw_response(error, self.nexus_jsonrpc))
            # A lingering close: the answer, then our FIN, while what the client is still
            # sending is read and dropped for a moment. Closing at once with unread bytes
            # would send a reset, and the client's kernel would discard the answer unread.
            if transport.can_write_eof() and self._nx_tracker.linger(self):
                transport.write_eof()
                transport.resume_reading()
                return
        transport.close()
