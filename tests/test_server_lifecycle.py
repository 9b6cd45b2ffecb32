"""Starting and stopping the platform's servers: ports, URLs, states, signals.

Real sockets and real uvicorn; no timing assertions.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from nexus_lab import PortInUseError, deploy_multi_channel

ROOT = Path(__file__).resolve().parents[1]


def echo(text: str) -> dict:
    return {"echo": text}


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


def test_start_non_blocking_returns_with_both_ports_accepting(make_app):
    app = make_app()
    deploy_multi_channel(echo, app, "echo")
    assert app.api_url is None and app.mcp_url is None and not app.is_running
    app.start(block=False)
    try:
        assert app.is_running
        api, mcp = urlsplit(app.api_url), urlsplit(app.mcp_url)
        assert api.scheme == mcp.scheme == "http"
        assert api.hostname == mcp.hostname == "127.0.0.1"
        assert api.port and mcp.port and api.port != mcp.port  # port 0 became real ports
        assert mcp.path == "/mcp"
        assert _accepts(api.port) and _accepts(mcp.port)
        with httpx.Client(trust_env=False, timeout=30) as c:
            assert c.get(app.api_url + "/health").json()["status"] == "healthy"
            r = c.post(app.api_url + "/api/workflows/echo/execute", json={"inputs": {"text": "hi"}})
            assert r.json()["outputs"] == {"echo": "hi"}
            # the MCP endpoint answers HTTP (what it says is the MCP tests' business)
            m = c.post(
                app.mcp_url, json={}, headers={"Accept": "application/json, text/event-stream"}
            )
            assert 400 <= m.status_code < 500
    finally:
        app.stop()


def test_two_apps_on_port_zero_get_distinct_ports(make_app):
    a, b = make_app(), make_app()
    with a.running(), b.running():
        ports = {_port(a.api_url), _port(a.mcp_url), _port(b.api_url), _port(b.mcp_url)}
        assert len(ports) == 4


@pytest.mark.parametrize("which", ["api_port", "mcp_port"])
def test_port_in_use_raises_port_in_use_error_naming_the_port(make_app, which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        app = make_app(**{which: port})
        with pytest.raises(PortInUseError) as info:
            app.start(block=False)
        assert str(port) in str(info.value)
        assert info.value.port == port
        assert not app.is_running and app.api_url is None
        assert app.health_check()["channels"]["api"]["state"] == "failed"
    # nothing was left bound: the same app starts once the port is free
    app.api_port = app.mcp_port = 0
    with app.running():
        assert app.health_check()["channels"]["api"]["state"] == "serving"


def test_stop_is_idempotent_and_closes_the_ports(make_app):
    app = make_app()
    app.stop()  # before start: nothing to do
    app.start(block=False)
    api_port, mcp_port = _port(app.api_url), _port(app.mcp_url)
    app.stop()
    app.stop()
    assert not app.is_running and app.api_url is None and app.mcp_url is None
    assert not _accepts(api_port) and not _accepts(mcp_port)


def test_start_twice_non_blocking_keeps_the_running_servers(make_app):
    app = make_app()
    app.start(block=False)
    try:
        url = app.api_url
        app.start(block=False)
        assert app.api_url == url and app.is_running
    finally:
        app.stop()


def test_running_context_manager(make_app):
    app = make_app()
    deploy_multi_channel(echo, app, "echo")
    with app.running() as same:
        assert same is app and app.is_running
        port = _port(app.api_url)
        with httpx.Client(trust_env=False, timeout=30) as c:
            assert c.get(app.api_url + "/health").status_code == 200
    assert not app.is_running and not _accepts(port)


def test_running_context_manager_stops_on_error(make_app):
    app = make_app()
    with pytest.raises(ZeroDivisionError), app.running():
        port = _port(app.api_url)
        1 / 0  # noqa: B018
    assert not app.is_running and not _accepts(port)


def test_health_channel_states_registered_serving_stopped(make_app):
    app = make_app()
    deploy_multi_channel(echo, app, "echo")

    def states() -> set[str]:
        return {ch["state"] for ch in app.health_check()["channels"].values()}

    assert states() == {"registered"}
    assert app.health_check()["status"] == "healthy"
    app.start(block=False)
    assert states() == {"serving"}
    channels = app.health_check()["channels"]
    assert channels["api"]["url"] == app.api_url and channels["mcp"]["url"] == app.mcp_url
    app.stop()
    assert states() == {"stopped"}
    assert all(ch["url"] is None for ch in app.health_check()["channels"].values())
    # and it can serve again
    with app.running():
        assert states() == {"serving"}


SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path

    from nexus_lab import Nexus, deploy_multi_channel

    marker = Path(sys.argv[1])

    def slow(x: int) -> dict:
        marker.write_text("started")
        time.sleep(1.5)  # in flight when the signal arrives
        return {"x": x, "done": True}

    app = Nexus(api_port=0, mcp_port=0)
    deploy_multi_channel(slow, app, "slow")

    def announce():
        while app.api_url is None:
            time.sleep(0.01)
        print(app.api_url, flush=True)

    threading.Thread(target=announce, daemon=True).start()
    app.start()  # blocks until SIGINT / SIGTERM
    print("stopped cleanly", flush=True)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_blocking_start_stops_gracefully_on_signal(tmp_path, signum):
    script = tmp_path / "serve_blocking.py"
    script.write_text(SCRIPT)
    marker = tmp_path / "started"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NEXUS_API_KEYS", None)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if not url else url
        with httpx.Client(trust_env=False, timeout=30) as c:
            for _ in range(500):  # until the blocking start() is serving
                try:
                    if c.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.02)
        result: dict = {}

        def call() -> None:
            with httpx.Client(trust_env=False, timeout=30) as c:
                result["resp"] = c.post(
                    url + "/api/workflows/slow/execute", json={"inputs": {"x": 3}}
                )

        t = threading.Thread(target=call)
        t.start()
        for _ in range(1000):
            if marker.exists():
                break
            time.sleep(0.01)
        assert marker.exists(), "the slow request never reached the agent"
        proc.send_signal(signum)
        t.join(30)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert result["resp"].status_code == 200, result["resp"].text
    assert result["resp"].json()["outputs"] == {"x": 3, "done": True}
    assert proc.returncode == 0, err
    assert "stopped cleanly" in out
    assert "Traceback" not in err


def test_health_tells_the_truth_when_a_server_dies(make_app):
    """A server that stops behind the platform's back is reported, not remembered as serving."""
    import httpx

    app = make_app()
    app.start(block=False)
    assert app.health_check()["status"] == "healthy"
    group = app._serving.group
    mcp_server = group._servers[1][0]
    mcp_server.should_exit = True  # the MCP server ends on its own (as on a fatal error)
    deadline = time.monotonic() + 30
    while app.health_check()["status"] != "degraded" and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    health = app.health_check()
    assert health["status"] == "degraded"
    assert {c["state"] for c in health["channels"].values()} == {"failed"}
    assert not app.is_running
    app.stop()
    assert app.health_check()["status"] == "stopped"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{group.api_url}/health", timeout=2, trust_env=False)


def test_start_without_the_server_extras_names_the_extra(tmp_path):
    """Without uvicorn/starlette/mcp, start() says what to install instead of a bare ImportError."""
    script = textwrap.dedent(
        """
        import sys
        for mod in ("uvicorn", "starlette", "mcp"):
            sys.modules[mod] = None  # as if not installed
        from nexus_lab import Nexus
        from nexus_lab.errors import ConfigError
        app = Nexus(api_port=0, mcp_port=0)
        try:
            app.start(block=False)
        except ConfigError as exc:
            print("ERROR:", exc)
        print("STATE:", app.health_check()["status"])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "pip install 'nexus-lab[server]'" in done.stdout, done.stdout + done.stderr
    assert "STATE: degraded" in done.stdout


def test_a_bad_http_option_fails_start_and_frees_the_ports(make_app, free_port):
    """The option is named, and the ports it had bound are free again at once."""
    from nexus_lab.errors import ConfigError

    port = free_port()
    app = make_app(api_port=port, max_json_depth=0)
    with pytest.raises(ConfigError, match="max_json_depth"):
        app.start(block=False)
    with socket.socket() as s:  # bindable again: the failed start closed its socket
        s.bind(("127.0.0.1", port))
    assert app.health_check()["status"] == "degraded"
