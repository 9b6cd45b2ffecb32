"""nexus_lab: deploy, watch and measure AI agents from a notebook.

One agent, three real channels (HTTP API, the ``nexus`` CLI, MCP), sessions
shared across them, and metrics you can chart. Public names are imported
lazily so that ``import nexus_lab`` stays fast.

Example::

    from nexus_lab import AIAssistant, Nexus, deploy_multi_channel

    app = Nexus(auto_discovery=False)
    deploy_multi_channel(AIAssistant(), app, "assistant")
    app.invoke("assistant", {"query": "What is AI?"})
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__  # re-exported (in __all__)

_EXPORTS: dict[str, str] = {
    # agents
    "BaseAgent": "nexus_lab.agents",
    "BaseAgentConfig": "nexus_lab.agents",
    "AIAssistant": "nexus_lab.agents",
    "coerce_config": "nexus_lab.agents",
    "InputSchema": "nexus_lab.schema",
    # metrics
    "PerformanceMetrics": "nexus_lab.metrics",
    "PerformanceMonitor": "nexus_lab.metrics",
    # sessions
    "NexusSessionManager": "nexus_lab.sessions",
    "Session": "nexus_lab.sessions",
    # platform
    "Nexus": "nexus_lab.platform.app",
    "Deployment": "nexus_lab.platform.deployment",
    "Execution": "nexus_lab.platform.deployment",
    "DeploymentChannels": "nexus_lab.platform.deploy",
    "deploy_as_api": "nexus_lab.platform.deploy",
    "deploy_as_cli": "nexus_lab.platform.deploy",
    "deploy_as_mcp": "nexus_lab.platform.deploy",
    "deploy_multi_channel": "nexus_lab.platform.deploy",
    "deploy_with_sessions": "nexus_lab.platform.deploy",
    # client of a running platform (httpx / mcp imported only when a client is built / used)
    "NexusClient": "nexus_lab.client",
    "AsyncNexusClient": "nexus_lab.client",
    "RunResult": "nexus_lab.client",
    # errors
    "NexusError": "nexus_lab.errors",
    "ConfigError": "nexus_lab.errors",
    "InputValidationError": "nexus_lab.errors",
    "DeploymentNotFound": "nexus_lab.errors",
    "DeploymentExists": "nexus_lab.errors",
    "SessionNotFound": "nexus_lab.errors",
    "SessionStateError": "nexus_lab.errors",
    "ProviderError": "nexus_lab.errors",
    "AuthenticationError": "nexus_lab.errors",
    "RateLimitExceeded": "nexus_lab.errors",
    "AgentExecutionError": "nexus_lab.errors",
    "PortInUseError": "nexus_lab.errors",
}

__all__ = sorted([*_EXPORTS, "NEXUS_AVAILABLE", "__version__", "load_ipython_extension"])

if TYPE_CHECKING:  # pragma: no cover
    from .agents import AIAssistant, BaseAgent, BaseAgentConfig, coerce_config  # noqa: F401
    from .client import AsyncNexusClient, NexusClient, RunResult  # noqa: F401
    from .errors import *  # noqa: F401,F403
    from .metrics import PerformanceMetrics, PerformanceMonitor  # noqa: F401
    from .platform.app import Nexus  # noqa: F401
    from .platform.deploy import (  # noqa: F401
        DeploymentChannels,
        deploy_as_api,
        deploy_as_cli,
        deploy_as_mcp,
        deploy_multi_channel,
        deploy_with_sessions,
    )
    from .schema import InputSchema  # noqa: F401
    from .sessions import NexusSessionManager, Session  # noqa: F401

_SERVER_MODULES = ("starlette", "uvicorn", "mcp")


def _server_extras_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in _SERVER_MODULES)


#: True when the ``server`` extras (starlette, uvicorn, mcp) are installed, so the
#: platform can serve its HTTP API and MCP channels. Checked without importing them.
NEXUS_AVAILABLE: bool = _server_extras_available()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nexus_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nexus_lab``: registers the ``%nexus`` magics (IPython imported only here)."""
    from .jupyter.magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .jupyter.magics import unload_ipython_extension as _unload

    _unload(ipython)
