"""The HTTP API: a plain Starlette app over :meth:`Nexus.aexecute`.

Routes (built once per server start; deployments added later are served at
once because the workflow routes are parameterised)::

    POST   /api/workflows/{name}/execute   {"inputs": {...}, "session_id": "..."?}
    GET    /api/workflows                  deployments with their input schemas
    GET    /api/workflows/{name}
    POST   /api/sessions                   {"user_id"?, "metadata"?, "ttl"?}
    GET    /api/sessions                   the caller's sessions (?user_id= without auth)
    GET    /api/sessions/{session_id}      session info + state
    DELETE /api/sessions/{session_id}
    GET    /health                         always open
    GET    /openapi.json                   OpenAPI 3.1, one execute path per deployment
    GET    /metrics                        Prometheus text (only with enable_monitoring)

Design notes:

* Plain Starlette routes, not FastAPI: FastAPI's dependency/pydantic layer
  costs ~4x per request here, and input validation already happens once, in
  the deployment's :class:`~nexus_lab.schema.InputSchema`.
* Every error is ``{"error": {"type", "message", ...}}`` from
  ``NexusError.to_dict()``; routing 404/405 and unexpected bugs (500 with an
  ``error_id``, never a traceback) use the same shape.
* The body limit (``app.max_body_bytes``) is enforced from ``Content-Length``
  before reading and again while streaming, so chunked bodies cannot buffer
  past it. (With ``Content-Length`` the HTTP parser never hands over more
  bytes than declared, so a lying header cannot smuggle a larger body.)
* Auth and rate limiting are :class:`~nexus_lab.platform.guard.GuardMiddleware`
  (shared with MCP); it is not installed at all when both are off.
* Nothing is cached: two identical POSTs run the agent twice.
* Header ``X-Nexus-Channel: cli`` (sent by the ``nexus`` CLI) runs the call on
  the ``cli`` channel with string coercion of structured inputs.
"""

from __future__ import annotations

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

from ..errors import (
    BadRequest,
    Forbidden,
    InputValidationError,
    NexusError,
    NotFound,
    PayloadTooLarge,
    SessionNotFound,
)
from .guard import PRINCIPAL_SCOPE_KEY, GuardMiddleware

if TYPE_CHECKING:
    from .app import Nexus

__all__ = ["build_api_app", "build_openapi", "PayloadTooLarge", "BadRequest", "Forbidden"]

logger = logging.getLogger("nexus_lab.http")

JSON_TYPE = "application/json"
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode
_EXEC_KEYS = frozenset(("inputs", "session_id"))
_SESSION_KEYS = frozenset(("user_id", "metadata", "ttl"))
_EXPECTED = 'expected a JSON object {"inputs": {...}, "session_id": "..." (optional)}'


# ----------------------------------------------------------------------------- helpers
def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        _encode(data).encode(), status_code=status, headers=headers, media_type=JSON_TYPE
    )


def _error(exc: NexusError, headers: dict[str, str] | None = None) -> Response:
    body = exc.to_dict()
    if isinstance(exc, InputValidationError) and exc.errors:
        body["errors"] = exc.errors
    return _json({"error": body}, exc.http_status, headers or getattr(exc, "headers", None))


def _internal_error(exc: BaseException, where: str) -> Response:
    error_id = uuid.uuid4().hex[:12]
    logger.error("unexpected error in %s (error id %s)", where, error_id, exc_info=exc)
    return _json(
        {
            "error": {
                "type": "internal_error",
                "message": f"internal server error; see the server log for error id {error_id}",
                "error_id": error_id,
            }
        },
        500,
    )


Endpoint = Callable[[Request], Awaitable[Response]]


def _endpoint(fn: Endpoint) -> Endpoint:
    """Turn NexusError into its JSON response and any other exception into a 500."""

    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except NexusError as exc:
            return _error(exc)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening any more
        except Exception as exc:
            return _internal_error(exc, f"{request.method} {request.url.path}")

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without buffering it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"invalid Content-Length header {declared!r}") from None
        if size > limit:
            raise PayloadTooLarge(
                f"request body of {size} bytes is over the limit of {limit} bytes"
            )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest(f"malformed JSON body: {exc}") from None


def _principal(request: Request) -> str | None:
    return request.scope.get(PRINCIPAL_SCOPE_KEY)


def _session_view(session: Any, *, with_state: bool = True) -> dict[str, Any]:
    data = session.to_dict()
    if not with_state:
        data["keys"] = list(data.pop("state", {}))
        data.pop("writers", None)
    return data


# ----------------------------------------------------------------------------- the app
def build_api_app(app: Nexus) -> Starlette:
    """The ASGI app serving ``app``'s HTTP API (see the module docstring)."""
    limit = app.max_body_bytes
    openapi_cache: dict[str, Any] = {}

    async def execute(request: Request) -> Response:
        name = request.path_params["name"]
        header = request.headers.get("x-nexus-channel")
        if header is None:
            channel, coerce = "api", False
        else:
            value = header.strip().lower()
            if value == "api":
                channel, coerce = "api", False
            elif value == "cli":
                channel, coerce = "cli", True
            else:
                raise BadRequest(f"X-Nexus-Channel must be 'api' or 'cli', got {header!r}")
        app.get_deployment(name, channel)  # 404 before reading the body
        body = await read_body(request, limit)
        if not body.strip():
            raise InputValidationError(f"empty request body; {_EXPECTED}", field="inputs")
        data = _parse_json(body)
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
        if len(data) > 1:
            extra = sorted(k for k in data if k not in _EXEC_KEYS)
            if extra:
                raise InputValidationError(
                    f"unknown top-level key {extra[0]!r}; {_EXPECTED}", field=extra[0]
                )
        session_id = data.get("session_id")
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise InputValidationError(
                "session_id must be a non-empty string or null", field="session_id"
            )
        execution = await app.aexecute(
            name,
            data["inputs"],
            channel=channel,
            session_id=session_id,
            principal=request.scope.get(PRINCIPAL_SCOPE_KEY),
            coerce_strings=coerce,
        )
        return _json(execution.to_dict())

    async def list_workflows(request: Request) -> Response:
        deps = app.deployments
        return _json({"workflows": [deps[n].info() for n in sorted(deps)]})

    async def get_workflow(request: Request) -> Response:
        return _json(app.get_deployment(request.path_params["name"]).info())

    async def health(request: Request) -> Response:
        return _json(app.health_check())

    async def openapi(request: Request) -> Response:
        key = (
            tuple(
                (n, id(d), tuple(sorted(d.channels))) for n, d in sorted(app.deployments.items())
            ),
            app.auth is not None,
            app.rate_limiter is not None,
            app.enable_monitoring,
        )
        if openapi_cache.get("key") != key:
            openapi_cache["body"] = _encode(build_openapi(app)).encode()
            openapi_cache["key"] = key
        return Response(openapi_cache["body"], media_type=JSON_TYPE)

    async def metrics(request: Request) -> Response:
        if not app.enable_monitoring:
            raise NotFound(
                "monitoring is off: create the platform with Nexus(enable_monitoring=True) to serve /metrics"
            )
        from .prometheus import CONTENT_TYPE, render_metrics

        return Response(render_metrics(app), headers={"content-type": CONTENT_TYPE})

    # -- sessions -----------------------------------------------------------------
    def _owned(request: Request) -> Any:
        session_id = request.path_params["session_id"]
        session = app.session_manager.get_session(session_id)
        principal = _principal(request)
        if session is None or (principal is not None and session.user_id != principal):
            raise SessionNotFound(session_id)  # another user's session looks like a missing one
        return session

    async def create_session(request: Request) -> Response:
        body = await read_body(request, limit)
        data = _parse_json(body) if body.strip() else {}
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
        user_id = data.get("user_id")
        if user_id is not None and (not isinstance(user_id, str) or not user_id.strip()):
            raise InputValidationError("user_id must be a non-empty string", field="user_id")
        if principal is not None:
            if user_id is not None and user_id != principal:
                raise Forbidden("you may only create sessions for your own user id")
            user_id = principal
        metadata = data.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise InputValidationError("metadata must be a JSON object", field="metadata")
        ttl = data.get("ttl")
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0
        ):
            raise InputValidationError("ttl must be a positive number of seconds", field="ttl")
        try:
            channel = (
                "cli" if (request.headers.get("x-nexus-channel") or "").lower() == "cli" else "api"
            )
            session = app.session_manager.create_session(
                user_id or "anonymous", metadata=metadata, ttl=ttl, channel=channel
            )
        except NexusError:
            raise
        except (TypeError, ValueError) as exc:
            raise InputValidationError(str(exc), field="body") from None
        return _json(_session_view(session), 201)

    async def list_sessions(request: Request) -> Response:
        principal = _principal(request)
        wanted = request.query_params.get("user_id")
        if principal is not None:
            if wanted is not None and wanted != principal:
                raise Forbidden("you may only list your own sessions")
            wanted = principal
        sessions = app.session_manager.list_sessions(user_id=wanted or None)
        views = [_session_view(s, with_state=False) for s in sessions]
        return _json({"sessions": views, "count": len(views)})

    async def get_session(request: Request) -> Response:
        return _json(_session_view(_owned(request)))

    async def delete_session(request: Request) -> Response:
        session = _owned(request)
        if not app.session_manager.delete_session(session.session_id):
            raise SessionNotFound(session.session_id)
        return _json({"deleted": True, "session_id": session.session_id})

    routes = [
        Route("/api/workflows/{name}/execute", _endpoint(execute), methods=["POST"]),
        Route("/api/workflows", _endpoint(list_workflows), methods=["GET"]),
        Route("/api/workflows/{name}", _endpoint(get_workflow), methods=["GET"]),
        Route("/api/sessions", _endpoint(list_sessions), methods=["GET"]),
        Route("/api/sessions", _endpoint(create_session), methods=["POST"]),
        Route("/api/sessions/{session_id}", _endpoint(get_session), methods=["GET"]),
        Route("/api/sessions/{session_id}", _endpoint(delete_session), methods=["DELETE"]),
        Route("/health", _endpoint(health), methods=["GET"]),
        Route("/openapi.json", _endpoint(openapi), methods=["GET"]),
        Route("/metrics", _endpoint(metrics), methods=["GET"]),
    ]
    middleware = []
    if app.auth is not None or app.rate_limiter is not None:
        middleware.append(Middleware(GuardMiddleware, nexus=app, exempt_paths=("/health",)))
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_exception, Exception: _unhandled},
    )


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404:
        body = {
            "type": "not_found",
            "message": f"no route {request.method} {request.url.path}; see /openapi.json",
        }
    elif status == 405:
        allowed = headers.get("Allow") or headers.get("allow") or ""
        body = {
            "type": "method_not_allowed",
            "message": f"method {request.method} is not allowed on {request.url.path}; allowed: {allowed}",
        }
    else:
        body = {"type": "http_error", "message": str(exc.detail)}
    return _json({"error": body}, status, headers)


async def _unhandled(request: Request, exc: Exception) -> Response:
    return _internal_error(exc, f"{request.method} {request.url.path}")


# ----------------------------------------------------------------------------- OpenAPI
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {
                    "type": "string",
                    "examples": ["validation_error", "not_found", "agent_error"],
                },
                "message": {"type": "string"},
                "field": {
                    "type": "string",
                    "description": "the offending input (validation errors)",
                },
                "error_id": {
                    "type": "string",
                    "description": "look this id up in the server log (500s)",
                },
                "errors": {"type": "array", "items": {"type": "object"}},
            },
            "additionalProperties": True,
        }
    },
}

_EXECUTION_SCHEMA = {
    "type": "object",
    "required": ["outputs", "session_id", "execution_time_ms"],
    "properties": {
        "outputs": {"type": "object", "additionalProperties": True},
        "session_id": {"type": ["string", "null"]},
        "execution_time_ms": {"type": "number"},
    },
}

_SESSION_SCHEMA = {
    "type": "object",
    "properties": {
        "session_id": {"type": "string"},
        "user_id": {"type": "string"},
        "created_at": {"type": "number"},
        "last_accessed": {"type": "number"},
        "expires_at": {"type": "number"},
        "ttl": {"type": "number"},
        "channels": {"type": "array", "items": {"type": "string"}},
        "metadata": {"type": "object"},
        "state": {"type": "object"},
    },
}

_WORKFLOW_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["agent", "function"]},
        "description": {"type": "string"},
        "channels": {"type": "array", "items": {"type": "string"}},
        "sessions": {"type": "boolean"},
        "endpoint": {"type": "string"},
        "inputs": {"type": "array", "items": {"type": "object"}},
        "input_schema": {"type": "object"},
    },
}


def _err(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(
    description: str, schema: dict[str, Any], status_content: str = JSON_TYPE
) -> dict[str, Any]:
    return {"description": description, "content": {status_content: {"schema": schema}}}


def _safe_key(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def _hoist(schema: dict[str, Any], schemas: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Move ``$defs`` into ``components.schemas`` (as ``prefix_Name``) and rewrite the refs."""
    defs = schema.pop("$defs", None) or {}
    mapping = {f"#/$defs/{k}": f"#/components/schemas/{_safe_key(prefix + '_' + k)}" for k in defs}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rewrite(v) for k, v in node.items()}
            ref = out.get("$ref")
            if isinstance(ref, str) and ref in mapping:
                out["$ref"] = mapping[ref]
            return out
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    for k, v in defs.items():
        schemas[_safe_key(prefix + "_" + k)] = rewrite(v)
    return rewrite(schema)


def build_openapi(app: Nexus) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s HTTP API, one execute path per deployment."""
    from .. import __version__

    auth = app.auth is not None
    limited = app.rate_limiter is not None
    schemas: dict[str, Any] = {
        "Error": _ERROR_SCHEMA,
        "ExecutionResult": _EXECUTION_SCHEMA,
        "Session": _SESSION_SCHEMA,
        "Workflow": _WORKFLOW_SCHEMA,
    }

    def common(*extra: tuple[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for code, text in extra:
            out[code] = _err(text)
        if auth:
            out["401"] = _err("Missing or invalid API key")
        if limited:
            out["429"] = _err("Rate limit exceeded; see Retry-After")
        out["500"] = _err("Internal error (the body carries an error_id)")
        return out

    paths: dict[str, Any] = {}
    deps = app.deployments
    for name in sorted(deps):
        dep = deps[name]
        if "api" not in dep.channels and "cli" not in dep.channels:
            continue  # MCP-only deployments are not served over HTTP
        key = _safe_key(f"{name}_inputs")
        schemas[key] = _hoist(dep.schema.json_schema(), schemas, name)
        channels = [c for c in ("api", "cli") if c in dep.channels]
        body_schema = {
            "type": "object",
            "required": ["inputs"],
            "additionalProperties": False,
            "properties": {
                "inputs": {"$ref": f"#/components/schemas/{key}"},
                "session_id": {
                    "type": ["string", "null"],
                    "description": "continue this session"
                    + (
                        " (a new one is created when omitted)"
                        if dep.session_manager is not None
                        else ""
                    ),
                },
            },
        }
        paths[f"/api/workflows/{name}/execute"] = {
            "post": {
                "operationId": _safe_key(f"execute_{name}"),
                "summary": f"Run {name}",
                "description": dep.description,
                "tags": ["workflows"],
                "parameters": [
                    {
                        "name": "X-Nexus-Channel",
                        "in": "header",
                        "required": False,
                        "description": "'cli' runs on the CLI channel (string inputs are coerced)",
                        "schema": {"type": "string", "enum": channels},
                    }
                ],
                "requestBody": {"required": True, "content": {JSON_TYPE: {"schema": body_schema}}},
                "responses": {
                    "200": _ok(
                        "The deployment's outputs", {"$ref": "#/components/schemas/ExecutionResult"}
                    ),
                    **common(
                        ("400", "Malformed JSON or a bad X-Nexus-Channel header"),
                        ("404", "Unknown deployment or session"),
                        ("413", f"Body over {app.max_body_bytes} bytes"),
                        ("422", "Inputs do not match the schema (the error names the field)"),
                    ),
                },
            }
        }

    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    sid_param = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}
    paths["/api/workflows"] = {
        "get": {
            "operationId": "list_workflows",
            "summary": "List deployments with their input schemas",
            "tags": ["workflows"],
            "responses": {
                "200": _ok(
                    "Deployments",
                    {
                        "type": "object",
                        "properties": {
                            "workflows": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Workflow"},
                            }
                        },
                    },
                ),
                **common(),
            },
        }
    }
    paths["/api/workflows/{name}"] = {
        "get": {
            "operationId": "get_workflow",
            "summary": "One deployment",
            "tags": ["workflows"],
            "parameters": [name_param],
            "responses": {
                "200": _ok("The deployment", {"$ref": "#/components/schemas/Workflow"}),
                **common(("404", "Unknown deployment")),
            },
        }
    }
    user_note = "the authenticated user's sessions" if auth else "sessions, optionally of one user"
    list_params = (
        []
        if auth
        else [{"name": "user_id", "in": "query", "required": False, "schema": {"type": "string"}}]
    )
    paths["/api/sessions"] = {
        "get": {
            "operationId": "list_sessions",
            "summary": f"List {user_note}",
            "tags": ["sessions"],
            "parameters": list_params,
            "responses": {
                "200": _ok(
                    "Sessions (without state)",
                    {
                        "type": "object",
                        "properties": {
                            "sessions": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Session"},
                            },
                            "count": {"type": "integer"},
                        },
                    },
                ),
                **common(("403", "Another user's sessions")),
            },
        },
        "post": {
            "operationId": "create_session",
            "summary": "Create a session",
            "tags": ["sessions"],
            "requestBody": {
                "required": False,
                "content": {
                    JSON_TYPE: {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "user_id": {
                                    "type": "string",
                                    "description": "must be the caller's user id with auth",
                                },
                                "metadata": {"type": "object"},
                                "ttl": {"type": "number", "exclusiveMinimum": 0},
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": _ok("The new session", {"$ref": "#/components/schemas/Session"}),
                **common(
                    ("400", "Malformed JSON"),
                    ("403", "user_id is not the caller's"),
                    ("422", "Invalid field"),
                ),
            },
        },
    }
    paths["/api/sessions/{session_id}"] = {
        "get": {
            "operationId": "get_session",
            "summary": "Session info and state",
            "tags": ["sessions"],
            "parameters": [sid_param],
            "responses": {
                "200": _ok("The session", {"$ref": "#/components/schemas/Session"}),
                **common(("404", "Unknown, expired or another user's session")),
            },
        },
        "delete": {
            "operationId": "delete_session",
            "summary": "Delete a session",
            "tags": ["sessions"],
            "parameters": [sid_param],
            "responses": {
                "200": _ok(
                    "Deleted",
                    {
                        "type": "object",
                        "properties": {
                            "deleted": {"type": "boolean"},
                            "session_id": {"type": "string"},
                        },
                    },
                ),
                **common(("404", "Unknown, expired or another user's session")),
            },
        },
    }
    paths["/health"] = {
        "get": {
            "operationId": "health",
            "summary": "Platform health (never needs a key, never rate limited)",
            "tags": ["platform"],
            "security": [],
            "responses": {"200": _ok("Health", {"type": "object"})},
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["platform"],
            "responses": {"200": _ok("OpenAPI 3.1 document", {"type": "object"}), **common()},
        }
    }
    if app.enable_monitoring:
        paths["/metrics"] = {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format 0.0.4)",
                "tags": ["platform"],
                "responses": {"200": _ok("Metrics", {"type": "string"}, "text/plain"), **common()},
            }
        }

    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": app.title, "version": __version__, "description": "nexus_lab HTTP API"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if auth:
        doc["components"]["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer"},
            "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        doc["security"] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
    return doc
