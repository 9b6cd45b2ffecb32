"""The MCP channel: every deployment exposed on ``"mcp"`` is a tool (official ``mcp`` SDK v2).

Three entry points:

* :func:`build_mcp_server` -> an :class:`mcp.server.MCPServer` whose tools are
  the app's deployments, read from the registry on every ``tools/list`` and
  ``tools/call`` (a deployment added while serving shows up on the next list);
* :func:`build_mcp_app` -> the ASGI app the platform serves at ``{base}/mcp``
  (streamable HTTP), behind the platform's guard (timing, auth, rate limit);
* :func:`run_stdio` -> the same tools over stdio, for desktop MCP clients
  (``nexus mcp APP_REF`` or ``python -m nexus_lab.platform.mcp APP_REF``).

Design
------
*Subclass, not the low-level server.* :class:`NexusMCPServer` subclasses
``MCPServer`` and overrides its public ``list_tools`` / ``call_tool`` plus
``_tool_input_schema`` (the hook the SDK's streamable-HTTP transport uses to
validate ``Mcp-Param-*`` headers before dispatch). Everything else - the
transports, the protocol-version negotiation, the request context, the
DNS-rebinding protection, and tools added with ``@server.tool()`` (served
after the deployments, which win on a name clash) - stays the SDK's.
The SDK's ``ToolManager`` is not used for deployments, so nothing is
snapshotted at build time and validation is the deployment's own
(:meth:`InputSchema.validate`, the same one the HTTP API uses).

*Tool shape.* name = the deployment name; description = the deployment's
``tool_description`` or docstring; ``inputSchema`` = the deployment's input
schema plus an optional ``session_id`` string (unless the deployment has an
input of that name, which then stays an input). ``outputSchema`` declares the
structured result, the same object the HTTP API answers
(:attr:`Execution.json_body`)::

    {"outputs": {...the agent's answer...}, "session_id": "..." | null,
     "execution_time_ms": 1.2, "agent_time_ms": 0.9}

The text content carries the same object as JSON, for clients that ignore
``structuredContent``.

*Errors.* A deployment that fails (bad input, unknown or foreign session, the
agent raising) returns a tool result with ``isError: true`` whose text is the
platform's message - naming the field, or carrying the error id logged
server-side - never a traceback. An unknown tool name is a protocol error
(JSON-RPC ``-32602``), as the MCP specification asks.

*HTTP.* ``json_response=True`` (one JSON body per POST; the SSE-response mode
degrades badly under concurrency) and ``stateless_http=True`` (no MCP
transport sessions kept in one process's memory, so several workers may
serve the same URL; conversation state lives in the platform's session
manager, addressed by the ``session_id`` argument). In front of the SDK's
app, :func:`build_mcp_app` puts two small ASGI layers::

    uvicorn -> _NoEventStream -> GuardMiddleware -> SDK streamable-HTTP app -> call_tool
               (GET -> 405)      (started, auth,                              (principal,
                                  rate limit)                                  started)

:class:`~nexus_lab.platform.guard.GuardMiddleware` is the API's guard, with
the same policy and the same error writer; only its refusals are wrapped as
JSON-RPC errors (``jsonrpc_errors=True``) so that an MCP client reports the
message. It notes when each request arrived and who sent it; the tool call
reads both back (the principal from the SDK's request context,
``ctx.request_context.request.scope``; the arrival time from
:data:`~nexus_lab.platform.guard.request_started`) and hands them to
:meth:`Nexus.aexecute`, which enforces session ownership and measures
``execution_time_ms`` from the arrival.

*stdio* has no auth (a local child process); the SDK diverts ``sys.stdout``
to stderr while it serves, so an agent's ``print`` cannot corrupt the protocol,
and logging goes to stderr.

Example::

    from mcp import Client
    async with Client(app.mcp_url) as client:          # after app.start(block=False)
        result = await client.call_tool("assistant", {"query": "hi"})
        result.structured_content["outputs"]["response"]
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import uuid
from typing import TYPE_CHECKING, Any

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, TextContent
from mcp_types import Tool as MCPTool

from ..errors import (
    InputValidationError,
    InternalError,
    MethodNotAllowed,
    NexusError,
    PayloadTooLarge,
)
from .guard import (
    PRINCIPAL_SCOPE_KEY,
    GuardMiddleware,
    current_principal,
    error_response,
    json_nesting_exceeds,
    nesting_exceeds,
    request_started,
    require_json_body,
    too_deep,
    unencodable_path,
)
from .openapi import check_input_types
from .security import HTTPPolicy

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from .app import Nexus
    from .deployment import Deployment

__all__ = [
    "NexusMCPServer",
    "build_mcp_server",
    "build_mcp_app",
    "run_stdio",
    "MCP_PATH",
    "PRINCIPAL_SCOPE_KEY",
    "OUTPUT_SCHEMA",
]

logger = logging.getLogger("nexus_lab.mcp")

#: Path of the streamable-HTTP endpoint inside the MCP server.
MCP_PATH = "/mcp"
#: The channel name every MCP call is executed and measured under.
CHANNEL = "mcp"
SESSION_ARG = "session_id"

_SESSION_PROPERTY = {
    "type": "string",
    "description": (
        "Optional: continue the conversation of this session (any channel's). "
        "Without it a deployment with sessions starts a new one; its id comes back as session_id."
    ),
}

#: JSON Schema of ``structured_content`` on success (:attr:`Execution.json_body`).
OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "outputs": {"type": "object", "description": "What the deployment returned."},
        "session_id": {
            "type": ["string", "null"],
            "description": "The session this call read and updated, if any.",
        },
        "execution_time_ms": {
            "type": "number",
            "description": "What the call took inside the platform, from the request reaching it.",
        },
        "agent_time_ms": {"type": "number", "description": "The agent's own part of it."},
    },
    "required": ["outputs", "session_id", "execution_time_ms"],
}


class NexusMCPServer(MCPServer):
    """An ``MCPServer`` whose tools are the live deployments of a :class:`~nexus_lab.Nexus`."""

    def __init__(self, app: Nexus, **kwargs: Any) -> None:
        kwargs.setdefault("name", app.title)
        kwargs.setdefault(
            "instructions",
            "Each tool runs a deployed agent or function. Pass session_id to continue a session.",
        )
        _construct_quietly(super().__init__, **kwargs)
        self.nexus = app
        self._max_depth = HTTPPolicy.of(app).max_json_depth  # checked once (ConfigError if bad)
        # name -> (deployment, tool); a redeploy replaces the Deployment object, so
        # identity tells whether the cached tool is still current.
        self._tool_cache: dict[str, tuple[Deployment, MCPTool]] = {}

    # -- registry -------------------------------------------------------
    def _deployment(self, name: str) -> Deployment | None:
        dep = self.nexus._deployments.get(name)
        if dep is None or CHANNEL not in dep.channels:
            return None
        return dep

    def _tool_for(self, dep: Deployment) -> MCPTool:
        sessions = dep.session_manager is not None
        cached = self._tool_cache.get(dep.name)
        if cached is not None and cached[0] is dep and cached[2] == sessions:
            return cached[1]
        schema = dep.schema.json_schema()
        props = schema.setdefault("properties", {})
        # listed only where sessions are the deployment's own; an explicit session_id is still
        # accepted on any tool (call_tool pops it), as on the API
        if sessions and SESSION_ARG not in props:
            props[SESSION_ARG] = dict(_SESSION_PROPERTY)
        tool = MCPTool(
            name=dep.name,
            description=dep.description,
            input_schema=schema,
            output_schema=OUTPUT_SCHEMA,
        )
        self._tool_cache[dep.name] = (dep, tool, sessions)
        return tool

    async def list_tools(self) -> list[MCPTool]:
        deployments = [d for d in self.nexus._deployments.values() if CHANNEL in d.channels]
        tools = [self._tool_for(d) for d in sorted(deployments, key=lambda d: d.name)]
        names = {t.name for t in tools}
        stale = set(self._tool_cache) - names
        for name in stale:
            self._tool_cache.pop(name, None)
        tools.extend(t for t in await super().list_tools() if t.name not in names)
        return tools

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        dep = self._deployment(name)
        if dep is not None:
            return self._tool_for(dep).input_schema
        return super()._tool_input_schema(name)

    # -- calls ----------------------------------------------------------
    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        dep = self._deployment(name)
        if dep is None:
            if self._tool_manager.get_tool(name) is not None:
                return await super().call_tool(name, arguments, context)
            available = sorted(
                n for n, d in self.nexus._deployments.items() if CHANNEL in d.channels
            )
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"Unknown tool: {name!r} (available: {', '.join(available) or 'none'})",
            )
        args = dict(arguments or {})
        depth = self._max_depth
        if nesting_exceeds(args, depth):  # also on stdio, where no HTTP front looked
            return _error_result(too_deep(depth))
        session_id = None
        if SESSION_ARG not in dep.schema.names:
            session_id = args.pop(SESSION_ARG, None)
            if session_id is not None and not isinstance(session_id, str):
                return _error_result(InputValidationError(
                    f"invalid input {SESSION_ARG!r}: must be a string, got {type(session_id).__name__}",
                    field=SESSION_ARG,
                ))
            session_id = session_id or None
        try:
            # the JSON types the tool's inputSchema publishes, as the API checks them: a "5"
            # for an integer is refused here too, not converted by pydantic's lax mode
            check_input_types(dep, args)
            execution = await self.nexus.aexecute(
                name,
                args,
                channel=CHANNEL,
                session_id=session_id,
                principal=_principal_of(context),
                # set by the guard when the HTTP request arrived (None on stdio / in-process)
                started=request_started.get(),
            )
        except NexusError as exc:
            return _error_result(exc)
        except Exception as exc:  # a platform bug, not the agent's (that is AgentExecutionError)
            error_id = uuid.uuid4().hex[:12]
            logger.error("MCP tool %r failed (error id %s)", name, error_id, exc_info=exc)
            return _error_result(InternalError(error_id))
        # the body the HTTP API answers, encoded once by the execution path; parsed back for
        # structuredContent, so text and structure always agree and hold only JSON values
        text = execution.json_body.decode()
        return CallToolResult(
            content=[TextContent(type="text", text=text)], structured_content=json.loads(text)
        )


def _error_result(exc: NexusError) -> CallToolResult:
    """A tool error whose text is the JSON error body every channel uses
    (``{"error": {"type", "message", ...}}``), so clients map it without guessing."""
    body = exc.to_dict()
    if isinstance(exc, InputValidationError) and exc.errors:
        body["errors"] = exc.errors
    text = json.dumps({"error": body}, ensure_ascii=False, default=str)
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def _principal_of(context: Any) -> str | None:
    """The principal the guard put in this HTTP request's scope (None on stdio)."""
    try:
        request = context.request_context.request
    except (AttributeError, ValueError):  # no context, or one built outside a request
        return current_principal.get()
    scope = getattr(request, "scope", None)
    if scope is None:
        return current_principal.get()
    return scope.get(PRINCIPAL_SCOPE_KEY)


def _construct_quietly(init: Any, **kwargs: Any) -> None:
    """Run ``MCPServer.__init__`` without its ``logging.basicConfig`` touching the host process.

    The SDK configures the root logger (handler + INFO level) when the root has
    no handler; inside a notebook or a user's service that would be a global
    side effect, so a placeholder handler is present for the duration.
    """
    root = logging.getLogger()
    placeholder = None
    if not root.handlers:
        placeholder = logging.NullHandler()
        root.addHandler(placeholder)
    try:
        init(**kwargs)
    finally:
        if placeholder is not None:
            root.removeHandler(placeholder)


def build_mcp_server(app: Nexus, **kwargs: Any) -> NexusMCPServer:
    """An ``MCPServer`` exposing ``app``'s MCP deployments as tools (read live from the registry).

    ``kwargs`` go to ``MCPServer`` (``name``, ``instructions``, ...).

    >>> server = build_mcp_server(app)
    >>> async with Client(server) as c: await c.call_tool("assistant", {"query": "hi"})
    """
    return NexusMCPServer(app, **kwargs)


# ----------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------
class _NoEventStream:
    """Answers ``GET`` with 405 (the one error writer, as a JSON-RPC error); the rest passes.

    Stateless JSON mode has no server-initiated messages: the SDK would answer
    a GET with an SSE stream that never sends nor ends (and holds up graceful
    shutdown). Refused before the guard, as before it existed: a GET costs
    neither a rate-limit token nor a key check.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            refusal = MethodNotAllowed(
                "use POST for MCP requests (stateless JSON mode; no SSE stream)", "POST, DELETE"
            )
            await error_response(refusal, jsonrpc=True)(scope, receive, send)
            return
        await self.app(scope, receive, send)


#: A ``\uD800``-``\uDFFF`` escape: a surrogate, maybe a lone one (the SDK's parser refuses that
#: with a position only; a valid pair, an escaped emoji, is decoded and passed on).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
#: Levels of a JSON-RPC message around a tool's arguments: message, params, arguments (+1 batch).
_ENVELOPE = 3


class _BodyCheck:
    """Behind the guard, before the SDK: a POST's body is JSON of sane shape, or a JSON-RPC error.

    * not declared ``application/json``: 415 (the SDK would say a plain-text 400);
    * over ``max_body_bytes``: 413;
    * nested deeper than ``max_json_depth`` (plus the JSON-RPC envelope): 400
      naming the limit, before any parser recurses into it;
    * a lone surrogate escape (``"\\ud800"``): 422 naming the argument, where the
      SDK's parser would give only a position.

    The body, read once, is handed on to the SDK unchanged.
    """

    def __init__(self, app: ASGIApp, nexus: Nexus, policy: HTTPPolicy) -> None:
        self.app = app
        self.nexus = nexus
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
            if body is None:  # the client went away
                return
            self._check(body)
        except NexusError as exc:
            await error_response(exc, jsonrpc=True)(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        require_json_body(scope["headers"])
        limit = self.nexus.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _check(self, body: bytes) -> None:
        depth = self.policy.max_json_depth
        if json_nesting_exceeds(body, depth + _ENVELOPE):
            raise too_deep(depth)
        if _SURROGATE_ESCAPE.search(body) is None:
            return
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            return  # not JSON: the SDK's parser says so
        path = unencodable_path(message)
        if path is None:
            return  # surrogate pairs only (an escaped emoji): fine
        for prefix in ("params.arguments.", "params."):
            if path.startswith(prefix):
                path = path[len(prefix):]
                break
        raise InputValidationError(
            f"invalid input {path!r}: text that is not valid Unicode (a lone surrogate such as "
            "'\\ud800'); send UTF-8 text",
            field=path.split(".")[0].split("[")[0] or "arguments",
        )


def build_mcp_app(app: Nexus, *, path: str = MCP_PATH) -> ASGIApp:
    """The ASGI app serving ``app``'s tools over streamable HTTP at ``path`` (``/mcp``).

    Stateless JSON-response mode (see the module docstring), DNS-rebinding
    protection on loopback binds (the SDK's default for ``127.0.0.1``,
    ``localhost`` and ``::1``), request bodies capped at ``app.max_body_bytes``,
    behind the platform's :class:`~nexus_lab.platform.guard.GuardMiddleware`.
    """
    policy = HTTPPolicy.of(app)
    server = build_mcp_server(app)
    inner = server.streamable_http_app(
        streamable_http_path=path,
        json_response=True,
        stateless_http=True,
        host=app.host,
        max_request_body_size=app.max_body_bytes,
        # Host and Origin are checked by the guard, with the API's rules (allowed_hosts,
        # allowed_origins); the SDK's own check knows fewer patterns and would disagree
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    guarded = GuardMiddleware(
        _BodyCheck(inner, app, policy), app, exempt_paths=(), jsonrpc_errors=True
    )
    # no exempt paths: MCP has no /health, every request is checked
    return _NoEventStream(guarded)


# ----------------------------------------------------------------------
# stdio
# ----------------------------------------------------------------------
def run_stdio(app: Nexus) -> None:
    """Serve ``app``'s MCP tools over stdin/stdout until the client closes the pipe.

    No auth (the client started this process); sessions use the app's session
    manager; logs go to stderr, and nothing but the MCP protocol reaches stdout.
    The caller still owns ``app`` (close it afterwards).
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    server = build_mcp_server(app)
    try:
        server.run("stdio")
    except KeyboardInterrupt:
        pass


def _main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(
            "usage: python -m nexus_lab.platform.mcp APP_REF   (module:attr or path/to/file.py:attr)",
            file=sys.stderr,
        )
        return 0 if args and args[0] in ("-h", "--help") else 2
    from .loader import AppRefError, load_app

    try:
        # an app printing while it is imported must not break the protocol
        with contextlib.redirect_stdout(sys.stderr):
            app = load_app(args[0])
    except AppRefError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run_stdio(app)
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
