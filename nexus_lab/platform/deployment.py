"""A deployment: one agent or function under one name, and the code that runs it.

:class:`Deployment` holds what is compiled once (input schema, description,
how to call the target); :class:`Execution` is the result of one call. The
single execution path lives in :meth:`nexus_lab.Nexus.execute`, which every
channel uses.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..schema import SESSION_STATE_PARAM, InputSchema

__all__ = ["Deployment", "Execution", "CHANNELS", "validate_name", "session_update", "HISTORY_TURNS"]

CHANNELS = ("api", "cli", "mcp")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
#: How many earlier turns a session keeps under ``history``.
HISTORY_TURNS = 8
_TRUNCATE = 500


def validate_name(name: Any) -> str:
    """Deployment names: 1-128 letters, digits, ``_``, ``-`` or ``.``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid deployment name {name!r}: use 1-128 letters, digits, '_', '-' or '.' "
            "(it becomes a URL path segment, a CLI argument and an MCP tool name)"
        )
    return name


def _callable_of(target: Any) -> Callable[..., Any]:
    process = getattr(target, "process", None)
    if callable(process):
        return process
    if callable(target):
        return target
    raise TypeError(
        f"cannot deploy {type(target).__name__!s}: pass an agent with a process(**inputs) method "
        "or a typed function"
    )


def _defined_at(cls: type, attr: str) -> int | None:
    """Index in ``cls.__mro__`` of the first class that defines ``attr`` itself."""
    for i, klass in enumerate(cls.__mro__):
        if attr in vars(klass):
            return i
    return None


def resolve_methods(target: Any) -> tuple[Callable[..., Any] | None, Callable[..., Any] | None]:
    """``(sync_fn, async_fn)``: what runs for ``target`` — the method the user wrote.

    * A plain function or callable: itself, as sync or async.
    * An agent: its ``process``. An ``async def aprocess`` is used only when it is
      defined at the same level as the most-derived ``process`` (a twin: both run the
      same logic, the servers await the async one) or below it (the subclass wrote
      ``aprocess`` last, so it is what runs everywhere). A subclass that overrides
      ``process`` therefore wins over an ``aprocess`` it inherits.

    Example::

        class Mine(AIAssistant):               # AIAssistant has process + aprocess
            def process(self, query: str, tone: str = "plain") -> dict: ...
        resolve_methods(Mine())                # (Mine().process, None)
    """
    process = getattr(target, "process", None)
    if not callable(process):
        if not callable(target):
            _callable_of(target)  # raises the clear TypeError
        fn = target
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
            return None, fn
        return fn, None
    cls = type(target)
    at_process = -1 if "process" in vars(target) else _defined_at(cls, "process")
    aprocess = getattr(target, "aprocess", None)
    at_aprocess = -1 if "aprocess" in vars(target) else _defined_at(cls, "aprocess")
    async_fn = None
    if (
        aprocess is not None
        and inspect.iscoroutinefunction(aprocess)
        and at_aprocess is not None
        and at_process is not None
        and at_aprocess <= at_process
    ):
        async_fn = aprocess
    if inspect.iscoroutinefunction(process):
        return None, async_fn or process
    if async_fn is not None and at_aprocess < at_process:
        return None, async_fn  # aprocess overrides process: the stale sync one must not run
    return process, async_fn


def _description(target: Any, fn: Callable[..., Any]) -> str:
    text = getattr(target, "tool_description", None)
    if not text:
        doc = None if inspect.isfunction(target) else inspect.getdoc(target)
        if doc == inspect.getdoc(object):  # a class without a docstring inherits object's
            doc = None
        text = doc or inspect.getdoc(fn) or ""
    text = (text or "").strip()
    return text.split("\n\n")[0].strip() if text else f"Run {getattr(fn, '__qualname__', 'the deployment')}"


@dataclass(frozen=True)
class Compiled:
    """The cacheable part of a deployment: schema, description, and what to call.

    ``sync_attr`` names what runs on the sync path (a worker thread for the
    servers) and ``async_attr`` what is awaited on the event loop: ``"process"``,
    ``"aprocess"``, ``""`` for the target itself, or None (see
    :func:`resolve_methods`). Names, not bound methods, because one compiled entry
    may serve several agent instances with the same config.
    """

    schema: InputSchema
    description: str
    accepts_state: bool
    sync_attr: str | None = None
    async_attr: str | None = None

    @property
    def is_async(self) -> bool:
        """The servers await this deployment on their event loop."""
        return self.async_attr is not None

    @classmethod
    def build(cls, target: Any) -> Compiled:
        sync_fn, async_fn = resolve_methods(target)
        # the schema follows the method that runs everywhere; a twin shares process()'s inputs
        fn = sync_fn if sync_fn is not None else async_fn
        schema = InputSchema.from_callable(fn, title=_title(target, fn))
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        return cls(
            schema=schema,
            description=_description(target, fn),
            accepts_state=SESSION_STATE_PARAM in params,
            sync_attr=_attr_name(target, sync_fn),
            async_attr=_attr_name(target, async_fn),
        )


def _attr_name(target: Any, fn: Callable[..., Any] | None) -> str | None:
    if fn is None:
        return None
    if fn is target:
        return ""
    return getattr(fn, "__name__", None) or ""


def _bind(target: Any, attr: str | None) -> Callable[..., Any] | None:
    if attr is None:
        return None
    return target if attr == "" else getattr(target, attr)


def _title(target: Any, fn: Callable[..., Any]) -> str:
    if getattr(fn, "__self__", None) is target and not inspect.isfunction(target):
        return type(target).__name__
    return getattr(fn, "__name__", "Inputs")


@dataclass(eq=False)  # identity: a deployment is also the key of its worker slots
class Deployment:
    """A registered agent or function, exposed on some channels."""

    name: str
    target: Any
    compiled: Compiled
    channels: set[str] = field(default_factory=lambda: set(CHANNELS))
    session_manager: Any = None
    created_at: float = field(default_factory=time.time)
    #: Seconds a served call may run (None: the platform's ``execution_timeout``).
    timeout: float | None = None
    #: Sync calls holding a worker thread at once; more wait their turn (None: the platform's default).
    max_concurrency: int | None = None

    @property
    def schema(self) -> InputSchema:
        return self.compiled.schema

    @property
    def description(self) -> str:
        return self.compiled.description

    @property
    def kind(self) -> str:
        return "agent" if callable(getattr(self.target, "process", None)) else "function"

    def __post_init__(self) -> None:
        self._sync = _bind(self.target, self.compiled.sync_attr)
        self._async = _bind(self.target, self.compiled.async_attr)

    def _kwargs(self, values: dict[str, Any], session_state: dict[str, Any] | None) -> dict[str, Any]:
        if not self.compiled.accepts_state:
            return values
        kwargs = dict(values)
        kwargs[SESSION_STATE_PARAM] = session_state if session_state is not None else {}
        return kwargs

    def call(self, values: dict[str, Any], session_state: dict[str, Any] | None) -> Any:
        """Run the target with validated ``values`` on the calling thread.

        An agent whose only method is async runs to completion here: on a fresh
        event loop, or on a short-lived thread when this thread already runs one
        (a notebook kernel does).
        """
        kwargs = self._kwargs(values, session_state)
        fn = self._sync
        result = fn(**kwargs) if fn is not None else self._async(**kwargs)
        if inspect.isawaitable(result):
            return _run_to_completion(result)
        return result

    async def acall(self, values: dict[str, Any], session_state: dict[str, Any] | None) -> Any:
        """Await the target's async method with validated ``values``."""
        result = self._async(**self._kwargs(values, session_state))
        if inspect.isawaitable(result):
            result = await result
        return result

    def info(self) -> dict[str, Any]:
        """JSON description used by ``GET /api/workflows`` and ``nexus list``."""
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "channels": sorted(self.channels),
            "sessions": self.session_manager is not None,
            "endpoint": f"/api/workflows/{self.name}/execute",
            "inputs": self.schema.describe(),
            "input_schema": self.schema.json_schema(),
        }


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _run_to_completion(awaitable: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(awaitable))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="nexus-async-call") as pool:
        return pool.submit(asyncio.run, _await(awaitable)).result()


@dataclass
class Execution:
    """The result of one call: outputs plus where and how fast it ran.

    ``execution_time_ms`` is what the caller waits inside the platform: from the
    request reaching it (or the call starting, in-process) to the response being
    ready — validation, the session read and write, the agent, encoding.
    ``agent_time_ms`` is the agent's own part of it. ``json_body`` is the HTTP
    response body, RFC 8259 JSON (no NaN/Infinity), encoded once by the
    execution path.
    """

    name: str
    outputs: dict[str, Any]
    session_id: str | None
    execution_time_ms: float
    channel: str
    agent_time_ms: float = 0.0
    outputs_json: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        return {
            "outputs": self.outputs,
            "session_id": self.session_id,
            "execution_time_ms": round(self.execution_time_ms, 3),
            "agent_time_ms": round(self.agent_time_ms, 3),
        }

    @property
    def json_body(self) -> bytes:
        """``{"outputs", "session_id", "execution_time_ms", "agent_time_ms"}`` as JSON bytes."""
        outputs = self.outputs_json or encode_outputs(self.name, self.outputs)
        sid = self.session_id
        # ids we make are URL-safe ASCII: quoted as is; any other id goes through the encoder
        if sid is None:
            sid = b"null"
        else:
            sid = b'"' + sid.encode() + b'"' if _PLAIN_ID(sid) else _encode(sid).encode()
        return b"".join((
            b'{"outputs":', outputs, b',"session_id":', sid,
            b',"execution_time_ms":', b"%.3f" % self.execution_time_ms,
            b',"agent_time_ms":', b"%.3f" % self.agent_time_ms, b"}",
        ))

    def __repr__(self) -> str:  # stable: no timings or ids
        return f"Execution(name={self.name!r}, channel={self.channel!r}, outputs={self.outputs!r})"

    def _repr_html_(self) -> str:
        from ..render import execution_html

        return execution_html(self.name, self.channel, self.outputs)


_encode = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str
).encode


_PLAIN_ID = re.compile(r"[A-Za-z0-9_.\-]{1,256}").fullmatch


try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; the stdlib path stays correct
    _fast_dumps = None
else:
    _fast_dumps = _orjson.dumps
    _FAST_OPTIONS = (
        _orjson.OPT_PASSTHROUGH_DATETIME
        | _orjson.OPT_PASSTHROUGH_DATACLASS
        | _orjson.OPT_PASSTHROUGH_SUBCLASS
    )


def encode_outputs(name: str, outputs: dict[str, Any]) -> bytes:
    """The outputs as RFC 8259 JSON bytes; a value JSON cannot hold is the agent's error.

    ``NaN``/``Infinity`` and text that is not valid Unicode (a lone surrogate)
    raise :class:`~nexus_lab.errors.AgentExecutionError` naming the output field.
    Other non-JSON values (dates, decimals, ...) become their ``str()``.
    """
    if _fast_dumps is not None:
        # orjson for the usual outputs; anything it would write differently from the
        # standard library goes the standard way below: types it does not know or takes
        # as subclasses (str() them), ints beyond 64 bits, lone surrogates, non-str keys,
        # and NaN/Infinity (orjson writes null: so a null sends the outputs there too)
        try:
            out = _fast_dumps(outputs, option=_FAST_OPTIONS)
        except (TypeError, ValueError):
            pass
        else:
            if out.find(b"null") < 0:
                return out
    try:
        return _encode(outputs).encode()
    except (ValueError, UnicodeEncodeError, RecursionError, TypeError):
        pass
    for key, value in outputs.items():
        try:
            _encode(value).encode()
        except (ValueError, UnicodeEncodeError, RecursionError, TypeError) as exc:
            problem = (
                "text that is not valid Unicode" if isinstance(exc, UnicodeEncodeError)
                else "nesting too deep" if isinstance(exc, RecursionError)
                else "a value JSON cannot represent (NaN or Infinity)"
            )
            raise _output_error(name, str(key), problem) from None
    raise _output_error(name, "?", "a value JSON cannot represent")


def _output_error(name: str, key: str, problem: str) -> Exception:
    import logging
    import uuid

    from ..errors import AgentExecutionError

    error_id = uuid.uuid4().hex[:12]
    message = f"deployment {name!r} returned {problem} in output {key!r}; responses must be JSON"
    logging.getLogger("nexus_lab").error("%s (error id %s)", message, error_id)
    return AgentExecutionError(f"{message} (error id {error_id})", error_id)


def normalize_outputs(result: Any) -> dict[str, Any]:
    """Agents return dicts; anything else is wrapped as ``{"result": value}``."""
    if isinstance(result, dict):
        return result
    return {"result": result}


def _short(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= _TRUNCATE else value[: _TRUNCATE - 1] + "…"
    return value


def session_update(
    values: dict[str, Any], outputs: dict[str, Any], state: dict[str, Any], channel: str
) -> dict[str, Any]:
    """What a call writes into its session (the documented shape).

    ``last_query`` (the ``query`` input, or all inputs), ``last_response``
    (the ``response`` output, or all outputs), ``last_channel``, ``turns`` (a
    counter) and ``history`` (the last :data:`HISTORY_TURNS` turns as
    ``{"channel", "query", "response"}``, long texts shortened).
    """
    query = values["query"] if "query" in values else values
    response = outputs["response"] if "response" in outputs else outputs
    history = state.get("history")
    history = list(history)[-(HISTORY_TURNS - 1):] if isinstance(history, list) else []
    history.append({"channel": channel, "query": _short(query), "response": _short(response)})
    turns = state.get("turns")
    return {
        "last_query": query,
        "last_response": response,
        "last_channel": channel,
        "turns": (turns if isinstance(turns, int) else 0) + 1,
        "history": history,
    }
