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


# ----------------------------------------------------------------------------- Redis
#
# ``redis_server`` (session scope): one real redis-server on a free loopback port, started
# once and shut down at the end. ``redis_url`` (per test): its URL, the database flushed
# first. ``redis_factory`` (per test): starts further servers a test may stop, kill, hang
# and restart (persistence and outage tests), stopped at teardown. Without a redis-server
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


class RedisServer:
    """A redis-server process on 127.0.0.1 that a test can stop, kill, pause and restart.

    Readiness is a condition, not a sleep: the server logs to stdout and ``start`` reads
    its lines until "Ready to accept connections" (or until it exits, e.g. port taken),
    then confirms with a PING. A thread then drains the log, so the pipe never fills.
    """

    def __init__(self, binary: str, directory: Any, *args: str, password: str | None = None):
        self.binary = binary
        self.directory = directory
        self.args = list(args)
        self.password = password
        self.port: int | None = None
        self.proc: Any = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> Any:
        import redis

        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", 10)
        return redis.Redis.from_url(self.url, **kwargs)

    def _launch(self, port: int) -> bool:
        import subprocess
        import threading

        cmd = [
            self.binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", "",
            "--daemonize", "no",
            *self.args,  # later options win: a test may turn persistence on
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:  # blocks until the server writes a line or exits
            lines.append(line)
            if "Ready to accept connections" in line:
                break
        else:  # stdout closed: the server exited
            proc.wait()
            self.log.extend(lines)
            if any("Address already in use" in line for line in lines):
                return False
            raise RuntimeError("redis-server did not start:\n" + "".join(lines))
        self.proc, self.port = proc, port
        self.log.extend(lines)
        stdout = proc.stdout

        def drain() -> None:
            for line in stdout:
                self.log.append(line)

        threading.Thread(target=drain, name=f"redis-log-{port}", daemon=True).start()
        client = self.client()
        try:
            assert client.ping() is True
        finally:
            client.close()
        return True

    def start(self, port: int | None = None) -> RedisServer:
        """Start on ``port`` (the last one by default, e.g. for a restart) or a free one."""
        port = port or self.port
        for _ in range(10):
            candidate = port or _free_loopback_port()
            if self._launch(candidate):
                return self
            if port:  # a fixed port that someone else took meanwhile
                raise RuntimeError(f"port {port} is taken:\n" + "".join(self.log[-5:]))
        raise RuntimeError("no free port for redis-server after 10 tries")

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM: an AOF is flushed and fsynced)."""
        import subprocess

        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - a wedged server
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """A crash: SIGKILL, nothing flushed."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGCONT)


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = _require_redis()
    server = RedisServer(binary, tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server's URL, its data flushed before the test."""
    client = redis_server.client()
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    """``redis_factory(*server_args, password=None)`` -> a started RedisServer of this test."""
    binary = _require_redis()
    servers: list[RedisServer] = []

    def start(*args: str, password: str | None = None) -> RedisServer:
        server = RedisServer(binary, tmp_path_factory.mktemp("redis-own"), *args, password=password)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.resume()  # a paused server cannot handle SIGTERM
        server.stop()
