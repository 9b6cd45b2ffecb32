"""A ready-to-serve app: the assistant on all three channels, with SQLite sessions.

    nexus serve examples/assistant_app.py:app              # API :8000, MCP :3001/mcp
    nexus mcp examples/assistant_app.py:app                # the same tools over stdio
    nexus run assistant --query "What is AI?"              # from another terminal

For a desktop MCP client (stdio), point its config at:
    {"command": "<path to .venv>/bin/nexus", "args": ["mcp", "<path to>/examples/assistant_app.py:app"]}

Set ``ENVIRONMENT=production`` and ``NEXUS_API_KEYS=key:user`` to turn on
auth, monitoring and a rate limit, as the spec's environment sample does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nexus_lab import (
    AIAssistant,
    Nexus,
    NexusSessionManager,
    deploy_multi_channel,
    deploy_with_sessions,
)


@dataclass
class AssistantConfig:
    """Domain-specific configuration (converted to BaseAgentConfig; extra fields kept)."""

    llm_provider: str = os.environ.get("NEXUS_LLM_PROVIDER", "mock")
    model: str = os.environ.get("NEXUS_MODEL", "gpt-4")
    temperature: float = 0.7
    max_tokens: int = 2000
    system_prompt: str = "You are a concise, friendly assistant."


def add(a: float, b: float = 0.0) -> dict:
    """Add two numbers (a plain typed function is deployable too)."""
    return {"sum": a + b}


production = os.environ.get("ENVIRONMENT") == "production"
app = Nexus(
    auto_discovery=False,
    api_port=8000,
    mcp_port=3001,
    enable_auth=production,
    enable_monitoring=True,
    rate_limit=100 if production else None,
)
sessions = NexusSessionManager(cleanup_interval=300, session_ttl=7200, store="sqlite:///.nexus/example-sessions.db")
channels = deploy_with_sessions(AIAssistant(config=AssistantConfig()), app, "assistant", sessions)
deploy_multi_channel(add, app, "add")
