"""The HTTP API: a plain Starlette app over :meth:`Nexus.aexecute`.

Routes (built once per server start; deployments added later are served at
once because the workflow routes are parameterised)::

    POST   /api/workflows/{name}/execute   {"inputs": {...}, "session_id": "..."?}
    GET    /api/workflows                  deployments this channel reaches, with input schemas
    GET    /api/workflows/{name}
    POST   /api/sessions                   {"user_id"?, "metadata"?, "ttl"?}
    GET    /api/sessions                   the caller's sessions (?user_id= without auth)
    GET    /api/sessions/{session_id}      session info + state
    DELETE /api/sessions/{session_id}
    GET    /health                         always open
    GET    /openapi.json                   OpenAPI 3.1 (:mod:`~nexus_lab.platform.openapi`)
    GET    /metrics                        Prometheus text (only with enable_monitoring)

How the pieces fit:

* :func:`build_api_app` only assembles: the route table, the
  :class:`~nexus_lab.platform.guard.GuardMiddleware` in front (always: it
  notes when each request arrived, and applies auth / the rate limit when
  on), the handlers for routing errors, and ``app.state.nexus``.
* The endpoints are module-level ``async def endpoint(request) -> Response``
  functions. Each reaches the platform as ``request.app.state.nexus`` and the
  caller as ``request.scope["nexus.principal"]`` (set by the guard), and
  reports a problem by raising a :class:`~nexus_lab.errors.NexusError`.
* :func:`error_response` (from the guard module) is the one place an error
  becomes an HTTP response, so every error is ``{"error": {"type",
  "message", ...}}`` with the error's own headers: the endpoints' errors,
  routing 404/405, and unexpected bugs (500 with an ``error_id``, never a
  traceback).
* The execute endpoint hands the request's arrival time to
  :meth:`Nexus.aexecute` (``started=``) and returns the body the execution
  path already encoded (``Execution.json_body``) unchanged.

Design notes:

* Plain Starlette routes, not FastAPI: FastAPI's dependency/pydantic layer
  costs ~4x per request here, and input validation already happens once, in
  the deployment's :class:`~nexus_lab.schema.InputSchema`.
* The body limit (``app.max_body_bytes``) is enforced from ``Content-Length``
  before reading and again while streaming, so chunked bodies cannot buffer
  past it. (With ``Content-Length`` the HTTP parser never hands over more
  bytes than declared, so a lying header cannot smuggle a larger body.)
* A body must be ``application/json`` (else 415, which also stops "simple"
  cross-site POSTs), strict UTF-8 JSON without NaN, nested at most
  ``max_json_depth`` levels below its envelope (else 400 naming the limit);
  a key that is present holds its documented type (``null`` is not "absent").
  Inputs on the API channel must have the JSON types the published schema
  says (``true`` is no integer, ``"5"`` no number): 422 naming the field.
* One route per path: a wrong method's 405 lists in ``Allow`` every method
  the path serves.
* A session read checks the owner inside the read, so another user's GET
  or DELETE touches nothing (no sliding expiry); the store is called off the
  event loop when it blocks (SQLite).
* CORS is off unless the platform has ``cors_origins`` (Starlette's
  ``CORSMiddleware``, outside the guard so that preflights pass).
* Nothing is cached: two identical POSTs run the agent twice.
* Header ``X-Nexus-Channel: cli`` (sent by the ``nexus`` CLI) runs the call on
  the ``cli`` channel with string coercion of structured inputs.

Example::

    import uvicorn
    from nexus_lab.platform.http import build_api_app
    uvicorn.run(build_api_app(app), port=8000)   # app.start() does this for you
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import (
    BadRequest,
    Forbidden,
    HTTPError,
    InputValidationError,
    InternalError,
    MethodNotAllowed,
    NexusError,
    NotFound,
    PayloadTooLarge,
    SessionNotFound,
)
from .guard import (
    PRINCIPAL_SCOPE_KEY,
    RATE_PENDING_SCOPE_KEY,
    RESPONSE_HEADERS_SCOPE_KEY,
    STARTED_SCOPE_KEY,
    GuardMiddleware,
    error_response,
    parse_json,
    pending_admission,
    require_json_body,
    require_json_content,
    settle_rate,
)
from .openapi import OpenAPICache, check_input_types
from .security import HTTPPolicy

if TYPE_CHECKING:
    from ..sessions import Session
    from .app import Nexus

__all__ = ["build_api_app", "read_body", "receive_body", "ExecuteEndpoint"]

logger = logging.getLogger("nexus_lab.http")

JSON_TYPE = "application/json"
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode
_EXEC_KEYS = frozenset(("inputs", "session_id"))
_SESSION_KEYS = frozenset(("user_id", "metadata", "ttl"))
_EXPECTED = 'expected a JSON object {"inputs": {...}, "session_id": "..." (optional)}'

Endpoint = Callable[[Request], Awaitable[Response]]


# ----------------------------------------------------------------------------- helpers
def _json(data: Any, status: int = 200) -> Response:
    return Response(_encode(data).encode(), status_code=status, media_type=JSON_TYPE)


def _nexus(request: Request) -> Nexus:
    """The platform this app serves (set by :func:`build_api_app`)."""
    return request.app.state.nexus


def _principal(request: Request) -> str | None:
    """The authenticated caller (None without auth), as the guard left it in the scope."""
    return request.scope.get(PRINCIPAL_SCOPE_KEY)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without buffering it.

    A body must be declared ``Content-Type: application/json`` (415 otherwise,
    see :func:`~nexus_lab.platform.guard.require_json_body`), checked before a
    byte of it is read. A body that stops arriving is cut off by the server's
    ``body_timeout`` (408), below this function.
    """
    require_json_body(request.headers)
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


async def receive_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body from the ASGI ``receive``, refusing (413) anything over ``limit`` bytes:
    from ``Content-Length`` (``declared``) before reading, and again while streaming, so
    a chunked body cannot buffer past it."""
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"invalid Content-Length header {declared!r}") from None
        if size > limit:
            raise PayloadTooLarge(
                f"request body of {size} bytes is over the limit of {limit} bytes"
            )
    # the ASGI messages read directly (request.stream() is an async generator per request)
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def _policy(request: Request) -> HTTPPolicy:
    """The checked HTTP settings of the platform (built once with the app)."""
    return request.app.state.policy


def _parse_json(request: Request, body: bytes) -> Any:
    """The body decoded: strict UTF-8, nesting within ``max_json_depth`` (else 400)."""
    return parse_json(body, _policy(request).max_json_depth)


def _channel(request: Request) -> tuple[str, bool]:
    """``(channel, coerce_strings)`` from ``X-Nexus-Channel`` (absent: the API channel)."""
    return _channel_of(request.headers.get("x-nexus-channel"))


def _channel_of(header: str | None) -> tuple[str, bool]:
    """``(channel, coerce_strings)`` for an ``X-Nexus-Channel`` value (None: the API channel)."""
    if header is None:
        return "api", False
    value = header.strip().lower()
    if value == "api":
        return "api", False
    if value == "cli":  # the nexus CLI: its --input key=value strings are coerced to the schema
        return "cli", True
    raise BadRequest(f"X-Nexus-Channel must be 'api' or 'cli', got {header!r}")


def _execute_body(body: bytes, max_depth: int) -> tuple[dict[str, Any], str | None]:
    """``(inputs, session_id)`` of an execute request body, or a 422 that says what is wrong."""
    if not body.strip():
        raise InputValidationError(f"empty request body; {_EXPECTED}", field="inputs")
    data = parse_json(body, max_depth)
    if not isinstance(data, dict):
        raise InputValidationError(
            f"request body must be a JSON object, got {type(data).__name__}; {_EXPECTED}",
            field="inputs",
        )
    if "inputs" not in data:
        got = ", ".join(repr(k) for k in list(data)[:10]) or "none"
        raise InputValidationError(
            f"missing 'inputs': the inputs go under an \"inputs\" key, not at the top level "
            f"(top-level keys: {got}); {_EXPECTED}",
            field="inputs",
        )
    if len(data) > 1 and not _EXEC_KEYS.issuperset(data):
        extra = sorted(k for k in data if k not in _EXEC_KEYS)
        if extra:
            raise InputValidationError(
                f"unknown top-level key {extra[0]!r}; {_EXPECTED}", field=extra[0]
            )
    inputs = data["inputs"]
    if not isinstance(inputs, dict):  # null included: the schema says an object, so does the server
        raise InputValidationError(
            f"'inputs' must be a JSON object mapping input names to values, got "
            f"{_json_type(inputs)}; {_EXPECTED}",
            field="inputs",
        )
    session_id = data.get("session_id")
    if session_id is not None and (not isinstance(session_id, str) or not session_id):
        raise InputValidationError(
            "session_id must be a non-empty string or null", field="session_id"
        )
    return inputs, session_id


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


async def _sessions_call(manager: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` of the session manager, off the loop when its store blocks (SQLite)."""
    if getattr(manager, "blocking", False):
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(fn, *args, **kwargs)
    return fn(*args, **kwargs)


async def _owned_session(request: Request, *, touch: bool) -> Session:
    """The session named in the path, if the caller may see it (404 otherwise).

    Ownership is checked inside the read (``user_id=``), so another user's
    session is never touched: its expiry does not slide, nothing is recorded.
    ``touch=True`` (a GET by the owner) slides the expiry like any use.
    """
    session_id = request.path_params["session_id"]
    manager = _nexus(request).session_manager
    session = await _sessions_call(
        manager, manager.get_session, session_id, user_id=_principal(request), touch=touch
    )
    if session is None:
        raise SessionNotFound(session_id)  # another user's session looks like a missing one
    return session


def _session_view(session: Session, *, with_state: bool = True) -> dict[str, Any]:
    data = session.to_dict()
    if not with_state:
        data["keys"] = list(data.pop("state", {}))
        data.pop("writers", None)
    return data


def _internal_error(exc: BaseException, where: str) -> InternalError:
    """Log an unexpected exception with a fresh error id; the error the caller gets names only the id."""
    error_id = uuid.uuid4().hex[:12]
    logger.error("unexpected error in %s (error id %s)", where, error_id, exc_info=exc)
    return InternalError(error_id)


# ----------------------------------------------------------------------------- workflows
class ExecuteEndpoint:
    """``POST /api/workflows/{name}/execute``: run a deployment, answer its outputs.

    The hottest endpoint, so it is a plain ASGI app rather than a
    ``Request -> Response`` function: one pass over the headers, the body from
    ``receive``, :meth:`Nexus.aexecute`, two ``send`` calls. The router serves
    it as any route (it is the ``execute`` route's endpoint), and
    :class:`_APIApp` also calls it directly behind the guard, skipping
    Starlette's middleware stack and route matching for this one path.
    The guard's rate-limit headers are appended here (``adds_guard_headers``).
    With a shared limiter (Redis) the guard only starts the check
    (``scope[RATE_PENDING_SCOPE_KEY]``): the call reads its session meanwhile,
    :meth:`Nexus.aexecute` settles the check before the agent runs, and every
    answer waits for it (a refusal answers 429 before any other error).
    """

    adds_guard_headers = True
    __name__ = "execute"

    def __init__(self, nexus: Nexus, policy: HTTPPolicy) -> None:
        self.nexus = nexus
        self.max_depth = policy.max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extra = scope.get(RESPONSE_HEADERS_SCOPE_KEY) or ()
        # a shared limiter's check the guard started: decided before any answer, and before
        # the agent runs (aexecute awaits it); the session read goes to Redis with it
        pending = scope.get(RATE_PENDING_SCOPE_KEY)
        token = None if pending is None else pending_admission.set(pending)
        error: NexusError | None = None
        body = b""
        try:
            body = await self._execute(scope, receive)
        except NexusError as exc:
            error = exc
        except ClientDisconnect:
            if pending is not None:
                await asyncio.gather(pending, return_exceptions=True)  # retrieved, not lost
            return  # nobody is listening any more
        except Exception as exc:
            error = _internal_error(exc, f"POST {scope.get('path')}")
        finally:
            if token is not None:
                pending_admission.reset(token)
        if pending is not None:
            try:
                extra = await settle_rate(pending)
            except NexusError as exc:  # over the limit (429) or the limiter is down (503)
                error, extra = exc, ()
        if error is not None:
            await self._send_error(error, extra, scope, receive, send)
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if extra:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _execute(self, scope: Scope, receive: Receive) -> bytes:
        nexus = self.nexus
        length = content_type = channel_header = None
        chunked = False
        for key, value in scope["headers"]:  # one pass (names arrive lowercased)
            if key == b"content-length":
                length = value.decode("latin-1")
            elif key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"x-nexus-channel":
                channel_header = value.decode("latin-1")
            elif key == b"transfer-encoding":
                chunked = True
        channel, coerce = _channel_of(channel_header)
        deployment = nexus.get_deployment(scope["path_params"]["name"], channel)  # 404 before the body
        require_json_content(length, chunked, content_type)
        body = await receive_body(receive, length, nexus.max_body_bytes)
        inputs, session_id = _execute_body(body, self.max_depth)
        if not coerce:  # JSON types as published (the CLI's key=value strings are coerced instead)
            check_input_types(deployment, inputs)
        execution = await nexus.aexecute(
            deployment,  # looked up once per call
            inputs,
            channel=channel,
            session_id=session_id,
            principal=scope.get(PRINCIPAL_SCOPE_KEY),
            coerce_strings=coerce,
            started=scope.get(STARTED_SCOPE_KEY),
        )
        # encoded once by the execution path (RFC 8259 JSON); sent as is
        return execution.json_body

    @staticmethod
    async def _send_error(
        exc: NexusError, extra: Any, scope: Scope, receive: Receive, send: Send
    ) -> None:
        response = error_response(exc)
        if extra:
            response.raw_headers.extend(extra)
        await response(scope, receive, send)


async def list_workflows(request: Request) -> Response:
    """``GET /api/workflows``: the deployments the caller's channel reaches, with input schemas.

    The channel is the API's, or the CLI's with ``X-Nexus-Channel: cli``; an
    MCP-only deployment is never listed, so every ``endpoint`` shown answers.
    """
    channel, _ = _channel(request)
    deployments = _nexus(request).deployments
    return _json({
        "workflows": [
            deployments[n].info() for n in sorted(deployments) if channel in deployments[n].channels
        ]
    })


async def get_workflow(request: Request) -> Response:
    """``GET /api/workflows/{name}`` (404 unless the caller's channel reaches it)."""
    channel, _ = _channel(request)
    return _json(_nexus(request).get_deployment(request.path_params["name"], channel).info())


# ----------------------------------------------------------------------------- sessions
async def create_session(request: Request) -> Response:
    """``POST /api/sessions``: a new session, owned by the caller when auth is on."""
    nexus = _nexus(request)
    body = await read_body(request, nexus.max_body_bytes)
    data = _parse_json(request, body) if body.strip() else {}
    if not isinstance(data, dict):
        raise InputValidationError(
            'request body must be a JSON object {"user_id"?, "metadata"?, "ttl"?}', field="body"
        )
    extra = sorted(k for k in data if k not in _SESSION_KEYS)
    if extra:
        raise InputValidationError(
            f"unknown key {extra[0]!r}; expected any of 'user_id', 'metadata', 'ttl'",
            field=extra[0],
        )
    principal = _principal(request)
    # a key that is present must hold its type: null is not "absent" (as the schema says)
    user_id = data.get("user_id")
    if "user_id" in data and (not isinstance(user_id, str) or not user_id.strip()):
        raise InputValidationError("user_id must be a non-empty string", field="user_id")
    if principal is not None:
        if user_id is not None and user_id != principal:
            raise Forbidden("you may only create sessions for your own user id")
        user_id = principal
    metadata = data.get("metadata")
    if "metadata" in data and not isinstance(metadata, dict):
        raise InputValidationError("metadata must be a JSON object", field="metadata")
    ttl = data.get("ttl")
    if "ttl" in data and (
        isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < float("inf")
    ):
        raise InputValidationError("ttl must be a positive number of seconds", field="ttl")
    # the session records where it was made; an unknown header value is simply the API
    channel = "cli" if (request.headers.get("x-nexus-channel") or "").lower() == "cli" else "api"
    manager = nexus.session_manager
    try:
        session = await _sessions_call(
            manager, manager.create_session,
            user_id or "anonymous", metadata=metadata, ttl=ttl, channel=channel,
        )
    except NexusError:
        raise
    except (TypeError, ValueError) as exc:  # the manager's own checks (sizes, types)
        raise InputValidationError(str(exc), field="body") from None
    return _json(_session_view(session), 201)


async def list_sessions(request: Request) -> Response:
    """``GET /api/sessions``: the caller's sessions (any user's, or ``?user_id=``, without auth)."""
    principal = _principal(request)
    wanted = request.query_params.get("user_id")
    if principal is not None:
        if wanted is not None and wanted != principal:
            raise Forbidden("you may only list your own sessions")
        wanted = principal
    manager = _nexus(request).session_manager
    sessions = await _sessions_call(manager, manager.list_sessions, user_id=wanted or None)
    views = [_session_view(s, with_state=False) for s in sessions]
    return _json({"sessions": views, "count": len(views)})


async def get_session(request: Request) -> Response:
    """``GET /api/sessions/{session_id}``: info and state."""
    return _json(_session_view(await _owned_session(request, touch=True)))


async def delete_session(request: Request) -> Response:
    """``DELETE /api/sessions/{session_id}``."""
    session = await _owned_session(request, touch=False)
    manager = _nexus(request).session_manager
    if not await _sessions_call(manager, manager.delete_session, session.session_id):
        raise SessionNotFound(session.session_id)
    return _json({"deleted": True, "session_id": session.session_id})


# ----------------------------------------------------------------------------- platform
async def health(request: Request) -> Response:
    """``GET /health`` (exempt from auth and the rate limit).

    The check pings the shared stores (Redis), so it runs in a worker thread: a
    store that hangs delays this answer, never the event loop.
    """
    nexus = _nexus(request)
    return _json(await nexus._worker_pool().run(nexus.health_check))


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``, rebuilt only when the deployments or settings change."""
    cache: OpenAPICache = request.app.state.openapi
    return Response(cache.body(_nexus(request)), media_type=JSON_TYPE)


async def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus text, when the platform records metrics."""
    nexus = _nexus(request)
    if not nexus.enable_monitoring:
        raise NotFound(
            "monitoring is off: create the platform with Nexus(enable_monitoring=True) to serve /metrics"
        )
    from .prometheus import CONTENT_TYPE, render_metrics

    return Response(render_metrics(nexus), headers={"content-type": CONTENT_TYPE})


# ----------------------------------------------------------------------------- errors
def _answering_errors(endpoint: Endpoint) -> Endpoint:
    """``endpoint``, with its errors answered as JSON by :func:`error_response`.

    Caught here, inside the route, rather than by a Starlette ``Exception``
    handler: that handler runs outside the guard (no rate-limit headers) and
    re-raises, so uvicorn would log the bug a second time and drop the
    keep-alive connection.
    """

    @functools.wraps(endpoint)
    async def answering_errors(request: Request) -> Response:
        try:
            return await endpoint(request)
        except NexusError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening any more
        except Exception as exc:
            return error_response(_internal_error(exc, f"{request.method} {request.url.path}"))

    return answering_errors


async def _routing_error(request: Request, exc: Exception) -> Response:
    """The router's 404/405 (raised as Starlette ``HTTPException``), as platform errors."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    error: NexusError
    if exc.status_code == 404:
        error = NotFound(f"no route {where}; see /openapi.json")
    elif exc.status_code == 405:
        # every method the path serves (one Route per path, see _route), in a stable order
        allow = ", ".join(sorted(m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()))
        error = MethodNotAllowed(
            f"method {request.method} is not allowed on {request.url.path}; allowed: {allow}", allow
        )
    else:
        error = HTTPError(str(exc.detail), exc.status_code, exc.headers)
    return error_response(error)


async def _unhandled(request: Request, exc: Exception) -> Response:
    """A bug outside the endpoints (in a middleware): 500 with an error id."""
    return error_response(_internal_error(exc, f"{request.method} {request.url.path}"))


# ----------------------------------------------------------------------------- the app
def _route(path: str, **endpoints: Endpoint) -> Route:
    """One route per path, its methods dispatched here: a 405 then lists all of them in ``Allow``.

    (One Starlette ``Route`` per method would answer a wrong method with the
    ``Allow`` of whichever route matched first.)

    Example::

        _route("/api/sessions", get=list_sessions, post=create_session)
        # PUT /api/sessions -> 405, Allow: GET, HEAD, POST
    """
    handlers = {method.upper(): _answering_errors(fn) for method, fn in endpoints.items()}
    if len(handlers) == 1:
        ((method, handler),) = handlers.items()
        return Route(path, handler, methods=[method], name=next(iter(endpoints.values())).__name__)

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    name = "_".join(fn.__name__ for fn in endpoints.values())
    return Route(path, dispatch, methods=list(handlers), name=name)


class _APIApp(Starlette):
    """The API's Starlette app, with ``POST /api/workflows/{name}/execute`` taken
    straight to its endpoint behind its own guard (and CORS, when on).

    The same endpoint object is also the router's ``execute`` route, which then
    only answers what the shortcut leaves to it (a wrong method's 405, an app
    mounted under a ``root_path``). Matching is Starlette's for ``{name}``: one
    non-empty path segment.
    """

    def __init__(self, *, execute: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._execute = execute

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path = scope["path"]
            if path.startswith("/api/workflows/") and path.endswith("/execute"):
                name = path[15:-8]
                if name and "/" not in name:
                    scope["app"] = self
                    scope["path_params"] = {"name": name}
                    await self._execute(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def build_api_app(nexus: Nexus) -> Starlette:
    """The ASGI app serving ``nexus``'s HTTP API (see the module docstring).

    Raises :class:`~nexus_lab.errors.ConfigError` for a bad HTTP option of the
    platform (``allowed_hosts``, ``cors_origins``, ``max_json_depth``, ...).
    """
    policy = HTTPPolicy.of(nexus)
    if policy.hosts is None and nexus.allowed_hosts is None:
        logger.warning(
            "serving on %s without allowed_hosts: the Host header is not checked, so a DNS "
            "name rebound to this machine reaches the API; pass allowed_hosts=[...] "
            "(nexus serve --allowed-hosts) with the names clients use",
            nexus.host,
        )
    execute = ExecuteEndpoint(nexus, policy)
    routes = [
        Route("/api/workflows/{name}/execute", execute, methods=["POST"], name="execute"),
        _route("/api/workflows", get=list_workflows),
        _route("/api/workflows/{name}", get=get_workflow),
        _route("/api/sessions", get=list_sessions, post=create_session),
        _route("/api/sessions/{session_id}", get=get_session, delete=delete_session),
        _route("/health", get=health),
        _route("/openapi.json", get=openapi),
        _route("/metrics", get=metrics),
    ]
    guard = {"nexus": nexus, "exempt_paths": ("/health",)}
    middleware = [Middleware(GuardMiddleware, **guard)]
    shortcut: ASGIApp = GuardMiddleware(execute, **guard)
    if policy.cors_origins:
        # outside the guard: a browser's preflight carries no API key, and the guard's
        # refusals (401, 429) need the CORS headers for the page to read them
        from starlette.middleware.cors import CORSMiddleware

        cors = {
            "allow_origins": list(policy.cors_origins),
            "allow_methods": ["GET", "POST", "DELETE"],
            "allow_headers": ["Authorization", "X-API-Key", "Content-Type", "X-Nexus-Channel"],
            "expose_headers": ["Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining"],
            "max_age": 600,
        }
        middleware.insert(0, Middleware(CORSMiddleware, **cors))
        shortcut = CORSMiddleware(shortcut, **cors)
    api = _APIApp(
        execute=shortcut,
        routes=routes,
        middleware=middleware,
        # HTTPException: the router's 404/405, handled inside the guard (rate-limit headers
        # included); Exception: Starlette's last resort, for bugs outside the endpoints
        exception_handlers={HTTPException: _routing_error, Exception: _unhandled},
    )
    api.state.nexus = nexus
    api.state.policy = policy
    api.state.openapi = OpenAPICache()
    return api
