"""The nexus_lab demo: one assistant, sessions, and the platform serving it.

``build_app()`` follows the spec's production recipe with the offline mock
LLM: a domain config dataclass (the *Configuration Pattern*), an
``AIAssistant`` deployed with ``deploy_with_sessions`` on a
``NexusSessionManager`` backed by SQLite, and ``enable_monitoring=True``.

``main()`` (also ``nexus demo`` and ``python -m nexus_lab.demo``):

1. asks the assistant two questions in-process through
   ``app.invoke("assistant", {...}, session_id=...)`` inside one session and
   prints the answers and the session state;
2. starts the HTTP API and MCP (ports ``--api-port``/``--mcp-port``, 8000
   and 3001 by default; a port in use falls back to a free one, with a
   notice) and prints a ``curl`` line, a ``nexus run`` line and the MCP URL
   that continue the same conversation; Ctrl-C or SIGTERM stops it.

``--once`` checks the running servers over HTTP (health, an execute in the
same session, the session state) and exits instead of waiting, so tests
and CI can run the demo end to end.

Example::

    $ python -m nexus_lab.demo --once --api-port 0 --mcp-port 0
    $ nexus serve nexus_lab.demo:build_app       # the same app, without the walkthrough
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .platform.app import Nexus

__all__ = ["AssistantConfig", "build_app", "main", "DEFAULT_STORE"]

DEFAULT_STORE = "sqlite:///.nexus/sessions.db"
DEMO_USER = "demo-user"
QUESTIONS = ("What is an AI agent?", "And how do sessions help it?")


@dataclass
class AssistantConfig:
    """Domain configuration of the demo assistant (converted to ``BaseAgentConfig``)."""

    llm_provider: str = "mock"
    model: str = "gpt-4"
    temperature: float = 0.7
    max_tokens: int = 2000
    system_prompt: str = "You are a concise assistant for the nexus_lab demo."


def _ensure_store_dir(store_url: str | None) -> None:
    prefix = "sqlite:///"
    if store_url and store_url.startswith(prefix):
        path = store_url[len(prefix) :]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)


def build_app(
    store_url: str | None = DEFAULT_STORE,
    api_port: int = 8000,
    mcp_port: int = 3001,
    *,
    host: str = "127.0.0.1",
) -> Nexus:
    """The demo platform: an ``AIAssistant`` (mock LLM) deployed with sessions as ``assistant``.

    ``store_url`` is the session store (``sqlite:///path.db``; ``None`` keeps
    sessions in memory). Usable as an APP_REF: ``nexus serve nexus_lab.demo:build_app``.
    """
    from .agents import AIAssistant
    from .platform import Nexus, deploy_with_sessions
    from .sessions import NexusSessionManager

    _ensure_store_dir(store_url)
    app = Nexus(
        auto_discovery=False,
        api_port=api_port,
        mcp_port=mcp_port,
        host=host,
        enable_monitoring=True,
    )
    manager = NexusSessionManager(cleanup_interval=300, session_ttl=7200, store=store_url)
    deploy_with_sessions(AIAssistant(config=AssistantConfig()), app, "assistant", manager)
    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nexus demo",
        description="An AIAssistant (mock LLM) with sessions, answered in-process, then served "
        "on the HTTP API and MCP until Ctrl-C.",
    )
    p.add_argument(
        "--api-port", type=int, default=8000, help="API port (default 8000; 0 = any free port)"
    )
    p.add_argument(
        "--mcp-port", type=int, default=3001, help="MCP port (default 3001; 0 = any free port)"
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument(
        "--store",
        default=DEFAULT_STORE,
        help=f"session store URL (default {DEFAULT_STORE}; 'memory://' keeps them in memory)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="check the started servers over HTTP, then stop and exit (for tests and CI)",
    )
    return p


def _start(app: Nexus) -> None:
    """Start in the background; a busy default port falls back to a free one, with a notice."""
    from .errors import PortInUseError

    for _ in range(3):
        try:
            app.start(block=False)
            return
        except PortInUseError as exc:
            if exc.port == 0:
                raise
            which = "api_port" if exc.port == app.api_port else "mcp_port"
            label = "API" if which == "api_port" else "MCP"
            print(f"   note: {label} port {exc.port} is in use; using a free port instead")
            setattr(app, which, 0)
    app.start(block=False)


def _self_check(app: Nexus, session_id: str) -> list[str]:
    """Health, one execute in the demo session and its state, over real HTTP; returns problems."""
    from .client import NexusClient
    from .errors import NexusError

    problems: list[str] = []
    with NexusClient(app.api_url, timeout=30) as client:
        try:
            health = client.health()
            if health.get("status") != "healthy":
                problems.append(f"/health says {health.get('status')!r}")
            result = client.run("assistant", {"query": "Hello over HTTP"}, session_id=session_id)
        except NexusError as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
        else:
            print(f"   POST /api/workflows/assistant/execute -> {result.outputs.get('response')}")
            if result.session_id != session_id:
                problems.append(
                    f"execute returned session {result.session_id!r}, expected {session_id!r}"
                )
    state = app.session_manager.get_session_state(session_id)
    print(
        f"   session state now: turns={state.get('turns')}, last_channel={state.get('last_channel')}"
    )
    if state.get("turns") != len(QUESTIONS) + 1:
        problems.append(
            f"expected {len(QUESTIONS) + 1} turns in the session, found {state.get('turns')}"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code (0 on success)."""
    args = _parser().parse_args(argv)
    store = None if args.store in ("memory", "memory://") else args.store
    from .errors import NexusError

    try:
        app = build_app(store, args.api_port, args.mcp_port, host=args.host)
    except (NexusError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .platform.server import shutdown_signals

    try:
        with shutdown_signals() as stop:  # a Ctrl-C during start-up is not lost
            return _run(app, args, store, stop)
    except KeyboardInterrupt:  # a second Ctrl-C
        return 130
    finally:
        app.close()
        manager = app.session_manager
        manager.close()


def _run(app: Nexus, args: argparse.Namespace, store: str | None, stop: threading.Event) -> int:
    manager = app.session_manager
    print(
        f"nexus_lab demo: an AIAssistant (mock LLM) deployed as 'assistant', "
        f"sessions in {store or 'memory'}\n"
    )

    # 1) in-process, through the single execution path, inside one session
    session = manager.create_session(user_id=DEMO_USER)
    sid = session.session_id
    print("1) In-process: app.invoke('assistant', {'query': ...}, session_id=...)")
    print(f"   session {sid} (user {DEMO_USER})")
    for question in QUESTIONS:
        outputs = app.invoke("assistant", {"query": question}, session_id=sid)
        print(f"   > {question}")
        print(f"   < {outputs.get('response')}")
    state = manager.get_session_state(sid)
    print(
        f"   session state: turns={state.get('turns')}, last_channel={state.get('last_channel')}, "
        f"last_query={state.get('last_query')!r}, history={len(state.get('history') or [])} entries\n"
    )

    # 2) the platform
    print("2) The platform: HTTP API + MCP")
    try:
        _start(app)
    except Exception as exc:
        print(f"error: the platform failed to start: {exc}", file=sys.stderr)
        return 1
    api, mcp_url = app.api_url, app.mcp_url
    body = json.dumps({"inputs": {"query": "Hello"}, "session_id": sid})
    print(f"   API: {api}")
    print(f"   MCP: {mcp_url}   (tool 'assistant'; pass session_id to continue)")
    print("\n   Continue the same conversation from another channel:")
    print(
        f"   curl -s -X POST {api}/api/workflows/assistant/execute "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
    print(f'   nexus run assistant --query "What did I ask first?" --session {sid} --url {api}')
    print(f"   nexus sessions show {sid} --url {api}")
    sys.stdout.flush()

    if args.once:
        print("\n3) Self-check over HTTP (--once)")
        try:
            problems = _self_check(app, sid)
        except Exception as exc:  # a failed check is a demo failure, reported on one line
            problems = [f"{type(exc).__name__}: {exc}"]
        finally:
            app.stop()
        if problems:
            for p in problems:
                print(f"error: self-check: {p}", file=sys.stderr)
            return 1
        print("   self-check ok; stopped")
        return 0

    print("\nPress Ctrl-C to stop.")
    sys.stdout.flush()
    app.wait(stop)
    print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
