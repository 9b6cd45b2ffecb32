"""The OpenAPI 3.1 document of the HTTP API (served at ``GET /openapi.json``).

:func:`build_openapi` describes what :mod:`nexus_lab.platform.http` serves for
one platform: one ``POST /api/workflows/{name}/execute`` path per deployment on
the API or CLI channel, whose request body is that deployment's input schema
(the same pydantic-generated JSON Schema that validates the inputs, with its
``$defs`` hoisted into ``components.schemas``), plus the fixed workflow,
session and platform routes. 401/429 responses and the security schemes
appear only when auth / the rate limit are on, ``/metrics`` only with
monitoring.

:class:`OpenAPICache` keeps the encoded document and rebuilds it only when
something it describes changes (a deployment added, replaced or removed, or
a platform setting), so serving it costs a tuple comparison.

Example::

    from nexus_lab.platform.openapi import build_openapi
    doc = build_openapi(app)
    doc["paths"]["/api/workflows/assistant/execute"]["post"]["requestBody"]
"""

from __future__ import annotations

import json
import weakref
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import InputValidationError

if TYPE_CHECKING:
    from .app import Nexus
    from .deployment import Deployment

__all__ = ["build_openapi", "OpenAPICache", "JSONTypes", "check_input_types"]

JSON_TYPE = "application/json"
# default=str: a schema default pydantic could not make JSON (rare) becomes text, not a 500
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode

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
        "execution_time_ms": {
            "type": "number",
            "description": "what the call took inside the platform, from the request reaching it "
            "to the response being ready (validation, session, agent, encoding)",
        },
        "agent_time_ms": {
            "type": "number",
            "description": "the agent's own part of execution_time_ms",
        },
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
                    "minLength": 1,
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
                        ("400", "Malformed JSON (not UTF-8, NaN, nested deeper than "
                                f"max_json_depth={app.max_json_depth}) or a bad X-Nexus-Channel header"),
                        ("404", "Unknown deployment or session"),
                        ("413", f"Body over {app.max_body_bytes} bytes"),
                        ("415", "The body is not sent as Content-Type: application/json"),
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
                                    "minLength": 1,
                                    "pattern": "\\S",
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
                    ("413", f"Body over {app.max_body_bytes} bytes"),
                    ("415", "The body is not sent as Content-Type: application/json"),
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


class OpenAPICache:
    """The encoded document of one platform, rebuilt when what it describes changes."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._body = b""

    @staticmethod
    def _key_of(app: Nexus) -> tuple[Any, ...]:
        # the Deployment object's id: a redeploy under the same name replaces the object
        deployments = tuple(
            (name, id(dep), tuple(sorted(dep.channels)))
            for name, dep in sorted(app.deployments.items())
        )
        return (
            deployments,
            app.auth is not None,
            app.rate_limiter is not None,
            app.enable_monitoring,
            app.max_body_bytes,
            app.max_json_depth,
        )

    def body(self, app: Nexus) -> bytes:
        """The document as JSON bytes."""
        key = self._key_of(app)
        if key != self._key:
            self._body = _encode(build_openapi(app)).encode()
            self._key = key
        return self._body


# ----------------------------------------------------------------------------- JSON types
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "object": (dict,),
    "array": (list,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is(value: Any, kind: str) -> bool:
    """Whether a decoded JSON value is of JSON Schema type ``kind`` (no bool for a number)."""
    if kind == "integer":
        return (value.__class__ is int) or (value.__class__ is float and value.is_integer())
    if kind == "number":
        return value.__class__ is int or value.__class__ is float
    kinds = _JSON_TYPES.get(kind)
    return kinds is None or value.__class__ in kinds


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if value.__class__ is bool:
        return "boolean"
    if value.__class__ in (int, float):
        return "number"
    if value.__class__ is str:
        return "string"
    return "array" if value.__class__ is list else "object"


class JSONTypes:
    """The JSON types a JSON Schema admits, checked on decoded JSON.

    The deployment's input schema is what ``/openapi.json`` and the MCP tool
    publish, and the server must accept no less and no more than it says.
    Validation itself is pydantic's (in the deployment's
    :class:`~nexus_lab.schema.InputSchema`), which in its lax mode also takes
    ``"5"`` or ``true`` for an integer; this checks only the ``type`` keywords
    - through ``properties``, ``additionalProperties``, ``items``,
    ``prefixItems``, ``anyOf``/``oneOf``/``allOf`` and local ``$ref`` - so a
    value of the wrong JSON type is refused before pydantic converts it.

    Example::

        types = JSONTypes({"type": "object", "properties": {"n": {"type": "integer"}}})
        types.mismatch({"n": True})      # ('n', 'integer', 'boolean')
        types.mismatch({"n": 2})         # None
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.defs: dict[str, Any] = schema.get("$defs") or {}

    def mismatch(self, value: Any) -> tuple[str, str, str] | None:
        """``(path, expected, got)`` of the first value of a wrong type, or None."""
        return self._check(self.schema, value, "")

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        while isinstance(ref, str) and ref.startswith("#/$defs/"):
            schema = self.defs.get(ref[len("#/$defs/"):], {})
            ref = schema.get("$ref")
        return schema

    def _check(self, schema: Any, value: Any, path: str) -> tuple[str, str, str] | None:
        if not isinstance(schema, dict):
            return None
        schema = self._resolve(schema)
        kind = schema.get("type")
        if kind is not None:
            kinds = kind if isinstance(kind, list) else [kind]
            if not any(_is(value, k) for k in kinds):
                return (path, " or ".join(kinds), _type_name(value))
        branches = schema.get("anyOf") or schema.get("oneOf")
        if branches:
            found = [self._check(b, value, path) for b in branches]
            if all(f is not None for f in found):
                # the branch that got furthest names the problem best
                return max(found, key=lambda f: len(f[0]))  # type: ignore[arg-type, return-value]
        for sub in schema.get("allOf") or ():
            found = self._check(sub, value, path)
            if found is not None:
                return found
        if value.__class__ is dict:
            props = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                sub = props.get(key, extra)
                if isinstance(sub, dict):
                    found = self._check(sub, item, f"{path}.{key}" if path else str(key))
                    if found is not None:
                        return found
        elif value.__class__ is list:
            prefix = schema.get("prefixItems") or []
            items = schema.get("items")
            for i, item in enumerate(value):
                sub = prefix[i] if i < len(prefix) else items
                found = self._check(sub, item, f"{path}[{i}]")
                if found is not None:
                    return found
        return None


_INPUT_TYPES: weakref.WeakKeyDictionary[Any, JSONTypes] = weakref.WeakKeyDictionary()


def check_input_types(deployment: Deployment, inputs: dict[str, Any]) -> None:
    """Refuse (422, naming the field) inputs whose JSON types the published schema does not admit.

    The checker is built once per deployment schema. See :class:`JSONTypes`.

    Example::

        check_input_types(app.get_deployment("add"), {"a": True})
        # InputValidationError: invalid input 'a': must be integer (JSON), got boolean
    """
    schema = deployment.schema
    if schema.plain_values(inputs) is not None:  # each value has exactly its field's type
        return
    types = _INPUT_TYPES.get(schema)
    if types is None:
        types = _INPUT_TYPES[schema] = JSONTypes(schema.json_schema())
    found = types.mismatch(inputs)
    if found is not None:
        path, expected, got = found
        field = path.split(".")[0].split("[")[0] or "inputs"
        raise InputValidationError(
            f"invalid input {path or 'inputs'!r}: must be {expected} (JSON), got {got}",
            field=field,
        )
