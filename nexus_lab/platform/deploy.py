"""Deploy functions with the spec's signatures.

Each returns identifiers that work against the running platform:

====================  ==========================================
channel               identifier
====================  ==========================================
API                   ``/api/workflows/<name>/execute``
CLI                   ``nexus run <name>``
MCP                   the tool ``<name>``
====================  ==========================================

``deploy_multi_channel`` registers ONE deployment reachable on all three.
Every deploy function also takes ``timeout=SECONDS`` (a served call that runs
longer answers 504; default: the platform's ``execution_timeout``) and
``max_concurrency=N`` (sync calls holding a worker thread at once; more wait).
Deploying again under the same name replaces the deployment on purpose;
compiled schemas come from the app's own bounded cache unless
``use_cache=False``.

Example::

    channels = deploy_multi_channel(agent, app, "assistant")
    channels["api"]   # '/api/workflows/assistant/execute'
"""

from __future__ import annotations

from typing import Any

from .deployment import CHANNELS

__all__ = [
    "DeploymentChannels",
    "deploy_as_api",
    "deploy_as_cli",
    "deploy_as_mcp",
    "deploy_multi_channel",
    "deploy_with_sessions",
]


class DeploymentChannels(dict):
    """The ``{"api": ..., "cli": ..., "mcp": ...}`` dict a deploy returns, with an HTML view."""

    def _repr_html_(self) -> str:
        from ..render import channels_html

        return channels_html(self)


def _identifier(channel: str, name: str) -> str:
    if channel == "api":
        return f"/api/workflows/{name}/execute"
    if channel == "cli":
        return f"nexus run {name}"
    return name


def _check(agent: Any, app: Any) -> None:
    if agent is None:
        raise ValueError("Agent cannot be None: pass an agent with process() or a typed function")
    from .app import Nexus

    if not isinstance(app, Nexus):
        raise TypeError(f"Invalid Nexus app: expected nexus_lab.Nexus, got {type(app).__name__}")


def _deploy(agent: Any, app: Any, name: str, channels: tuple[str, ...], use_cache: bool,
            session_manager: Any = None, merge: bool = True, **limits: Any) -> Any:
    _check(agent, app)
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be True or False, got {use_cache!r}")
    return app.deploy(
        name, agent, channels=channels, use_cache=use_cache, session_manager=session_manager,
        merge_channels=merge, **limits,
    )


def deploy_as_api(
    agent: Any, app: Any, name: str, use_cache: bool = True, *,
    timeout: float | None = None, max_concurrency: int | None = None,
) -> str:
    """Expose ``agent`` on the HTTP API; returns ``/api/workflows/<name>/execute``."""
    _deploy(agent, app, name, ("api",), use_cache, timeout=timeout, max_concurrency=max_concurrency)
    return _identifier("api", name)


def deploy_as_cli(
    agent: Any, app: Any, name: str, use_cache: bool = True, *,
    timeout: float | None = None, max_concurrency: int | None = None,
) -> str:
    """Expose ``agent`` to the ``nexus`` CLI; returns ``nexus run <name>``."""
    _deploy(agent, app, name, ("cli",), use_cache, timeout=timeout, max_concurrency=max_concurrency)
    return _identifier("cli", name)


def deploy_as_mcp(
    agent: Any, app: Any, name: str, use_cache: bool = True, *,
    timeout: float | None = None, max_concurrency: int | None = None,
) -> str:
    """Expose ``agent`` as an MCP tool; returns the tool name."""
    _deploy(agent, app, name, ("mcp",), use_cache, timeout=timeout, max_concurrency=max_concurrency)
    return _identifier("mcp", name)


def deploy_multi_channel(
    agent: Any, app: Any, name: str, use_cache: bool = True, *,
    timeout: float | None = None, max_concurrency: int | None = None,
) -> DeploymentChannels:
    """Register ONE deployment reachable on the API, the CLI and MCP.

    >>> deploy_multi_channel(agent, app, "assistant")
    {'api': '/api/workflows/assistant/execute', 'cli': 'nexus run assistant', 'mcp': 'assistant'}
    """
    _deploy(agent, app, name, CHANNELS, use_cache, merge=False, timeout=timeout,
            max_concurrency=max_concurrency)
    return DeploymentChannels((c, _identifier(c, name)) for c in CHANNELS)


def deploy_with_sessions(
    agent: Any, app: Any, name: str, session_manager: Any, use_cache: bool = True, *,
    timeout: float | None = None, max_concurrency: int | None = None,
) -> DeploymentChannels:
    """Like :func:`deploy_multi_channel`, with ``session_manager`` attached.

    Every call then reads its session's state before running and writes
    ``last_query``, ``last_response``, ``last_channel``, ``turns`` and
    ``history`` after; a call without ``session_id`` starts a new session and
    returns its id. The manager also becomes the platform's (``/api/sessions``);
    a platform already using another manager refuses it (``ConfigError``).
    """
    if session_manager is None:
        raise ValueError("session_manager cannot be None: pass a NexusSessionManager")
    from ..sessions import NexusSessionManager

    if not isinstance(session_manager, NexusSessionManager):
        raise TypeError(f"session_manager must be a NexusSessionManager, got {type(session_manager).__name__}")
    _deploy(agent, app, name, CHANNELS, use_cache, session_manager=session_manager, merge=False,
            timeout=timeout, max_concurrency=max_concurrency)
    return DeploymentChannels((c, _identifier(c, name)) for c in CHANNELS)
