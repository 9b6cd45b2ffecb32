"""One conversation across the three channels, using exactly the identifiers a deploy returns.

Upstream's returned endpoints 404 on the live server; here the API path, the
CLI command and the MCP tool name that ``deploy_with_sessions`` returns are
used verbatim against a running platform, with one session shared by all:
the API writes, the CLI reads and continues, MCP reads the result.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from nexus_lab import AIAssistant, Nexus, NexusSessionManager, deploy_with_sessions

NEXUS = str(Path(sys.executable).parent / "nexus")


@pytest.fixture
def platform(tmp_path):
    manager = NexusSessionManager(cleanup_interval=300, session_ttl=7200, store=f"sqlite:///{tmp_path}/s.db")
    app = Nexus(auto_discovery=False, api_port=0, mcp_port=0, enable_monitoring=True)
    channels = deploy_with_sessions(AIAssistant(config={"model": "gpt-4"}), app, "assistant", manager)
    app.start(block=False)
    try:
        yield app, manager, channels
    finally:
        app.stop()
        manager.close()


async def _mcp_call(url: str, tool: str, args: dict):
    from mcp import Client

    async with Client(url) as client:
        return await client.call_tool(tool, args)


def test_one_session_across_api_cli_and_mcp(platform):
    app, manager, channels = platform

    # 1. API: the returned path, verbatim
    r = httpx.post(app.api_url + channels["api"], json={"inputs": {"query": "What is AI?"}}, timeout=10)
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    assert "What is AI?" in r.json()["outputs"]["response"]
    assert manager.get_session_state(sid)["last_channel"] == "api"

    # 2. CLI: the returned command, verbatim, as a real subprocess of the console script
    argv = shlex.split(channels["cli"])
    assert argv[0] == "nexus"
    done = subprocess.run(
        [NEXUS, *argv[1:], "--query", "Tell me more", "--session", sid, "--url", app.api_url, "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    cli_answer = json.loads(done.stdout)
    assert cli_answer["session_id"] == sid
    assert "Tell me more" in cli_answer["outputs"]["response"]
    assert "What is AI?" in cli_answer["outputs"]["response"]  # it saw the API turn
    state = manager.get_session_state(sid)
    assert state["turns"] == 2 and state["last_channel"] == "cli"

    # 3. MCP: the returned tool name, verbatim, through the SDK client over streamable HTTP
    result = asyncio.run(_mcp_call(app.mcp_url, channels["mcp"], {"query": "Summarise", "session_id": sid}))
    assert not result.is_error
    outputs = result.structured_content["outputs"]
    assert "Summarise" in outputs["response"]
    assert "Tell me more" in outputs["response"]  # it read the CLI turn from the shared session

    state = manager.get_session_state(sid)
    assert state["turns"] == 3
    assert [turn["channel"] for turn in state["history"]] == ["api", "cli", "mcp"]
    session = manager.get_session(sid)
    assert {"api", "cli", "mcp"} <= set(session.channels)

    # every channel was measured, and only once per call
    summary = app.metrics.get_summary()
    assert summary["api"]["count"] == 1 and summary["cli"]["count"] == 1 and summary["mcp"]["count"] == 1
    assert summary["workflow:assistant"]["count"] == 3
