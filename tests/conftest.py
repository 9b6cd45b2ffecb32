"""Shared fixtures.

* ``make_app(**kwargs)`` -> a ``Nexus`` on free ports (``api_port=0``,
  ``mcp_port=0``), closed at teardown.
* ``serve(app)`` -> starts ``app`` in the background and returns an
  ``httpx.Client`` bound to ``app.api_url``; client and servers are closed at
  teardown.
* ``free_port()`` -> a TCP port that was free a moment ago (for subprocesses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import _procs  # tests/_procs.py: the real processes the suites start
import pytest
from _procs import RedisProcess


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
    """A function returning a loopback port the OS says is free now (``_procs.free_port``)."""
    return _procs.free_port


# ----------------------------------------------------------------------------- Redis
#
# ``redis_server`` (session scope): one real redis-server on a free loopback port, started
# once and shut down at the end. ``redis_url`` (per test): its URL, the database flushed
# first. ``redis_factory`` (per test): starts further servers a test may stop, kill, hang
# and restart (persistence and outage tests), stopped at teardown. All are
# ``_procs.RedisProcess``, the helper the scale-out tests and benchmarks use too. Without a redis-server
# binary (or redis-py) these skip, unless NEXUS_REQUIRE_REDIS=1 (CI) makes that a failure.


def _require_redis() -> str:
    import importlib.util
    import os
    import shutil

    binary = shutil.which("redis-server")
    missing = []
    if binary is None:
        missing.append("no redis-server binary on PATH (apt-get install redis-server)")
    if importlib.util.find_spec("redis") is None:
        missing.append("redis-py is not installed (pip install 'nexus-lab[redis]')")
    if missing:
        reason = "; ".join(missing)
        if os.environ.get("NEXUS_REQUIRE_REDIS") == "1":
            pytest.fail(f"NEXUS_REQUIRE_REDIS=1 but {reason}")
        pytest.skip(reason)
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = RedisProcess(binary=_require_redis(), appendonly=False).start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """The shared server's URL, its data flushed before the test."""
    client = redis_server.client()
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisProcess]]:
    """``redis_factory(*server_args, password=None)`` -> a started RedisProcess of this test
    (no persistence unless ``server_args`` turn it on), closed at teardown."""
    binary = _require_redis()
    servers: list[RedisProcess] = []

    def start(*args: str, password: str | None = None) -> RedisProcess:
        server = RedisProcess(binary=binary, appendonly=False, args=args, password=password)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.close()  # resumes a paused one first
