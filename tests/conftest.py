"""Shared fixtures.

* ``make_app(**kwargs)`` -> a ``Nexus`` on free ports (``api_port=0``,
  ``mcp_port=0``), closed at teardown.
* ``serve(app)`` -> starts ``app`` in the background and returns an
  ``httpx.Client`` bound to ``app.api_url``; client and servers are closed at
  teardown.
* ``free_port()`` -> a TCP port that was free a moment ago (for subprocesses).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def make_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    from nexus_lab import Nexus

    monkeypatch.delenv("NEXUS_API_KEYS", raising=False)
    apps: list[Any] = []

    def factory(**kwargs: Any) -> Any:
        kwargs.setdefault("api_port", 0)
        kwargs.setdefault("mcp_port", 0)
        app = Nexus(**kwargs)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Any]]:
    import httpx

    started: list[tuple[Any, Any]] = []

    def start(app: Any, **client_kwargs: Any) -> httpx.Client:
        app.start(block=False)
        client_kwargs.setdefault("timeout", 30.0)
        client = httpx.Client(base_url=app.api_url, trust_env=False, **client_kwargs)
        started.append((app, client))
        return client

    yield start
    for app, client in started:
        client.close()
        app.stop()


@pytest.fixture
def free_port() -> Callable[[], int]:
    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick
