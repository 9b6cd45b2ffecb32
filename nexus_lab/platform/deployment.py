"""A deployment: one agent or function under one name, and the code that runs it.

:class:`Deployment` holds what is compiled once (input schema, description,
how to call the target); :class:`Execution` is the result of one call. The
single execution path lives in :meth:`nexus_lab.Nexus.execute`, which every
channel uses.
"""

from __future__ import annotations

import asyncio
import inspect
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
    """The cacheable part of a deployment: schema and description."""

    schema: InputSchema
    description: str
    accepts_state: bool
    is_async: bool
    #: The agent has an ``async def aprocess`` twin of ``process`` (awaited by the servers).
    has_twin: bool = False

    @classmethod
    def build(cls, target: Any) -> Compiled:
        fn = _callable_of(target)
        schema = InputSchema.from_callable(fn, title=_title(target, fn))
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        has_twin = _async_twin(target) is not None
        return cls(
            schema=schema,
            description=_description(target, fn),
            accepts_state=SESSION_STATE_PARAM in params,
            is_async=has_twin or inspect.iscoroutinefunction(fn),
            has_twin=has_twin,
        )


def _async_twin(target: Any) -> Callable[..., Any] | None:
    """An agent's ``async def aprocess`` (same inputs as ``process``), if it has one."""
    fn = getattr(target, "aprocess", None)
    if fn is not None and inspect.iscoroutinefunction(fn) and callable(getattr(target, "process", None)):
        return fn
    return None


def _title(target: Any, fn: Callable[..., Any]) -> str:
    if getattr(target, "process", None) == fn and not inspect.isfunction(target):
        return type(target).__name__
    return getattr(fn, "__name__", "Inputs")


@dataclass
class Deployment:
    """A registered agent or function, exposed on some channels."""

    name: str
    target: Any
    compiled: Compiled
    channels: set[str] = field(default_factory=lambda: set(CHANNELS))
    session_manager: Any = None
    created_at: float = field(default_factory=time.time)

    @property
    def schema(self) -> InputSchema:
        return self.compiled.schema

    @property
    def description(self) -> str:
        return self.compiled.description

    @property
    def kind(self) -> str:
        return "agent" if callable(getattr(self.target, "process", None)) else "function"

    def call(self, values: dict[str, Any], session_state: dict[str, Any] | None) -> Any:
        """Run the target with validated ``values`` (sync; async targets run to completion)."""
        fn = _callable_of(self.target)
        kwargs = dict(values)
        if self.compiled.accepts_state:
            kwargs[SESSION_STATE_PARAM] = session_state or {}
        result = fn(**kwargs)
        if inspect.isawaitable(result):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(_await(result))
            raise RuntimeError(
                f"deployment {self.name!r} is async; call Nexus.aexecute from inside an event loop"
            )
        return result

    async def acall(self, values: dict[str, Any], session_state: dict[str, Any] | None) -> Any:
        fn = self.target.aprocess if self.compiled.has_twin else _callable_of(self.target)
        kwargs = dict(values)
        if self.compiled.accepts_state:
            kwargs[SESSION_STATE_PARAM] = session_state or {}
        result = fn(**kwargs)
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


@dataclass
class Execution:
    """The result of one call: outputs plus where and how fast it ran."""

    name: str
    outputs: dict[str, Any]
    session_id: str | None
    execution_time_ms: float
    channel: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "outputs": self.outputs,
            "session_id": self.session_id,
            "execution_time_ms": round(self.execution_time_ms, 3),
        }

    def __repr__(self) -> str:  # stable: no timings or ids
        return f"Execution(name={self.name!r}, channel={self.channel!r}, outputs={self.outputs!r})"

    def _repr_html_(self) -> str:
        import html
        import json

        body = html.escape(json.dumps(self.outputs, indent=2, ensure_ascii=False, default=str))
        return (
            f"<div class='nexus-execution'><b>{html.escape(self.name)}</b> via "
            f"<code>{html.escape(self.channel)}</code><pre>{body}</pre></div>"
        )


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
