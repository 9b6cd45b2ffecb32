"""The ``nexus`` console script, run as a real subprocess against real servers.

The platforms are started in the test process (``app.start(block=False)`` on
port 0) and the CLI is pointed at them with ``--url``. ``nexus serve`` and
``nexus demo --once`` run as subprocesses of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nexus_lab import AIAssistant, Nexus, deploy_multi_channel
from nexus_lab.cli import (
    EXIT_AUTH,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_RATE_LIMITED,
    EXIT_SERVER,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)

API_KEY = "cli-test-key-0123456789"
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def nexus(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run ``python -m nexus_lab.cli ARGS`` and return the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "nexus_lab.cli", *args],
        capture_output=True,
        text=True,
        env=env or _env(),
        cwd=cwd or REPO,
        timeout=timeout,
    )


def assert_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exit ``code``, one ``error:`` line on stderr, nothing on stdout, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert proc.stdout == ""
    return lines[0]


def add(a: int, b: int = 1) -> dict:
    """Add two integers."""
    return {"sum": a + b, "types": [type(a).__name__, type(b).__name__]}


def boom(query: str) -> dict:
    """Always fails."""
    raise RuntimeError("kaboom: secret internals")


def _script() -> str:
    """The installed ``nexus`` console script of this interpreter's environment."""
    local = Path(sys.executable).parent / "nexus"
    return str(local) if local.exists() else (shutil.which("nexus") or str(local))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_until(proc: subprocess.Popen, prefix: str, deadline: float) -> tuple[str, list[str]]:
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return line[len(prefix) :].strip(), seen
    raise AssertionError(f"no {prefix!r} line; stdout so far: {seen}; stderr: {proc.stderr.read()}")


# ---------------------------------------------------------------------------
# fixtures: real platforms on free ports
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def platform():
    app = Nexus(auto_discovery=False, api_port=0, mcp_port=0, enable_monitoring=True)
    deploy_multi_channel(
        AIAssistant(config={"llm_provider": "mock", "model": "m"}), app, "assistant"
    )
    deploy_multi_channel(add, app, "add")
    deploy_multi_channel(boom, app, "boom")
    app.start(block=False)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture(scope="module")
def url(platform) -> str:
    return platform.api_url


@pytest.fixture(scope="module")
def auth_platform():
    app = Nexus(
        auto_discovery=False, api_port=0, mcp_port=0, enable_auth=True, api_keys={API_KEY: "alice"}
    )
    deploy_multi_channel(
        AIAssistant(config={"llm_provider": "mock", "model": "m"}), app, "assistant"
    )
    app.start(block=False)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture(scope="module")
def app_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("apps") / "cli_app.py"
    path.write_text(
        textwrap.dedent("""
        from nexus_lab import AIAssistant, Nexus, deploy_multi_channel

        print("this line must not reach stdout under `nexus mcp`")
        app = Nexus(auto_discovery=False)
        deploy_multi_channel(AIAssistant(config={"llm_provider": "mock", "model": "m"}), app, "assistant")
    """)
    )
    return path


# ---------------------------------------------------------------------------
# help, version, usage
# ---------------------------------------------------------------------------
def test_help_documents_exit_codes():
    proc = nexus("--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Exit codes" in out
    for code, word in [
        (0, "success"),
        (1, "server"),
        (2, "usage"),
        (3, "cannot reach"),
        (4, "not found"),
        (5, "invalid input"),
        (6, "auth"),
        (7, "rate limited"),
    ]:
        assert any(
            line.strip().startswith(f"{code} ") and word in line for line in out.splitlines()
        ), (code, out)
    for command in ("run", "list", "health", "serve", "mcp", "sessions", "demo"):
        assert command in out


def test_installed_console_script_help_and_version():
    script = _script()
    assert Path(script).exists(), "the nexus console script is not installed"
    proc = subprocess.run(
        [script, "--help"], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert proc.returncode == 0 and "Exit codes" in proc.stdout
    proc = subprocess.run(
        [script, "--version"], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("nexus ")


def test_help_does_not_import_the_server_stack():
    code = (
        "import sys\nfrom nexus_lab import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('httpx', 'uvicorn', 'starlette', 'mcp', 'pydantic', 'nexus_lab.platform')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert "HEAVY []" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--input", "noequals"], "KEY=VALUE"),
        (["--input", "=value"], "KEY=VALUE"),
        (["--json-input", "{not json"], "not valid JSON"),
        (["--json-input", "[1, 2]"], "JSON object"),
    ],
)
def test_malformed_inputs_are_usage_errors(args, needle):
    # no server needed: the CLI rejects these before any request
    proc = nexus("run", "assistant", *args, "--url", "http://127.0.0.1:9")
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_option_is_usage_error():
    proc = nexus("run", "assistant", "--nope")
    assert proc.returncode == EXIT_USAGE


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------
def test_run_query_prints_the_response(url):
    proc = nexus("run", "assistant", "--query", "What is AI?", "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[mock:m] You said: What is AI?\n"


def test_run_uses_nexus_url_env(url):
    proc = nexus("run", "assistant", "-q", "via env", env=_env(NEXUS_URL=url))
    assert proc.returncode == 0, proc.stderr
    assert "You said: via env" in proc.stdout


def test_run_input_pairs_are_coerced_by_the_server(url):
    proc = nexus("run", "add", "--input", "a=40", "--input", "b=2", "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"sum": 42, "types": ["int", "int"]}


def test_run_json_input_merges_with_pairs(url):
    proc = nexus("run", "add", "--json-input", '{"a": 1, "b": 5}', "--input", "b=10", "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sum"] == 11


def test_run_query_overrides_json_input(url):
    proc = nexus(
        "run",
        "assistant",
        "--json-input",
        '{"query": "from json"}',
        "-q",
        "from flag",
        "--url",
        url,
    )
    assert proc.returncode == 0, proc.stderr
    assert "You said: from flag" in proc.stdout


def test_run_json_prints_the_whole_response(url):
    proc = nexus("run", "assistant", "-q", "hi", "--json", "--url", url)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["outputs"] == {"response": "[mock:m] You said: hi"}
    assert "execution_time_ms" in body and "session_id" in body


def test_run_with_session_is_recorded_on_the_cli_channel(platform, url):
    created = nexus("sessions", "create", "--url", url)
    assert created.returncode == 0, created.stderr
    sid = created.stdout.strip()
    assert sid
    first = nexus("run", "assistant", "-q", "first question", "--session", sid, "--url", url)
    assert first.returncode == 0, first.stderr
    assert f"session: {sid}" in first.stderr
    second = nexus("run", "assistant", "-q", "second", "--session", sid, "--url", url)
    assert second.returncode == 0, second.stderr
    assert "earlier you asked: first question" in second.stdout
    state = platform.session_manager.get_session_state(sid)
    assert state["last_channel"] == "cli"
    assert state["turns"] == 2
    assert "cli" in platform.session_manager.get_session(sid).channels


def test_cli_calls_are_counted_on_the_cli_channel(platform, url):
    before = platform.metrics.get_summary().get("cli", {}).get("count", 0)
    proc = nexus("run", "assistant", "-q", "count me", "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert platform.metrics.get_summary()["cli"]["count"] == before + 1


def test_run_unknown_workflow_exits_4(url):
    line = assert_error(nexus("run", "nope", "-q", "x", "--url", url), EXIT_NOT_FOUND)
    assert "nope" in line


def test_run_unknown_session_exits_4(url):
    assert_error(
        nexus("run", "assistant", "-q", "x", "--session", "no-such-session", "--url", url),
        EXIT_NOT_FOUND,
        "no-such-session",
    )


def test_run_invalid_input_exits_5(url):
    line = assert_error(
        nexus("run", "add", "--input", "a=not-a-number", "--url", url), EXIT_INVALID
    )
    assert "'a'" in line


def test_run_missing_input_exits_5(url):
    assert_error(nexus("run", "add", "--url", url), EXIT_INVALID, "a")


def test_run_agent_error_exits_1_without_internals(url):
    line = assert_error(nexus("run", "boom", "-q", "x", "--url", url), EXIT_SERVER)
    assert "kaboom" not in line


def test_unreachable_server_exits_3_with_hint():
    dead = f"http://127.0.0.1:{free_port()}"
    line = assert_error(nexus("run", "assistant", "-q", "hi", "--url", dead), EXIT_UNREACHABLE)
    assert dead in line and "nexus serve" in line
    assert_error(nexus("list", "--url", dead), EXIT_UNREACHABLE)
    assert_error(nexus("health", "--url", dead), EXIT_UNREACHABLE)


# ---------------------------------------------------------------------------
# auth
# ---------------------------------------------------------------------------
def test_auth_with_api_key_option(auth_platform):
    proc = nexus(
        "run", "assistant", "-q", "secure", "--api-key", API_KEY, "--url", auth_platform.api_url
    )
    assert proc.returncode == 0, proc.stderr
    assert "You said: secure" in proc.stdout


def test_auth_with_api_key_env(auth_platform):
    proc = nexus(
        "run",
        "assistant",
        "-q",
        "env key",
        env=_env(NEXUS_URL=auth_platform.api_url, NEXUS_API_KEY=API_KEY),
    )
    assert proc.returncode == 0, proc.stderr
    assert "You said: env key" in proc.stdout


def test_auth_wrong_or_missing_key_exits_6(auth_platform):
    u = auth_platform.api_url
    assert_error(nexus("run", "assistant", "-q", "x", "--api-key", "wrong", "--url", u), EXIT_AUTH)
    line = assert_error(nexus("run", "assistant", "-q", "x", "--url", u), EXIT_AUTH)
    assert "--api-key" in line


# ---------------------------------------------------------------------------
# rate limit
# ---------------------------------------------------------------------------
def test_rate_limited_exits_7():
    app = Nexus(auto_discovery=False, api_port=0, mcp_port=0, rate_limit=1)
    deploy_multi_channel(add, app, "add")
    with app.running():
        codes = []
        for _ in range(4):
            proc = nexus("run", "add", "-i", "a=1", "--url", app.api_url)
            codes.append(proc.returncode)
            if proc.returncode == EXIT_RATE_LIMITED:
                line = assert_error(proc, EXIT_RATE_LIMITED)
                assert "retry after" in line
                break
    assert codes[0] == 0 and codes[-1] == EXIT_RATE_LIMITED, codes


# ---------------------------------------------------------------------------
# list, health, sessions
# ---------------------------------------------------------------------------
def test_list_table_and_json(url):
    proc = nexus("list", "--url", url)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "CHANNELS"]
    add_line = next(line for line in lines if line.startswith("add "))
    assert "api,cli,mcp" in add_line and "a: int" in add_line and "b: int = 1" in add_line
    proc = nexus("list", "--json", "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert "assistant" in proc.stdout and json.loads(proc.stdout)


def test_health_healthy(url):
    proc = nexus("health", "--url", url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("status: healthy")
    assert "assistant" in proc.stdout
    proc = nexus("health", "--json", "--url", url)
    assert proc.returncode == 0 and json.loads(proc.stdout)["status"] == "healthy"


def test_sessions_list_show_delete(url):
    sid = nexus("sessions", "create", "--user", "bob", "--url", url).stdout.strip()
    assert sid
    proc = nexus("run", "assistant", "-q", "remember me", "-s", sid, "--url", url)
    assert proc.returncode == 0, proc.stderr

    listed = nexus("sessions", "list", "--url", url)
    assert listed.returncode == 0, listed.stderr
    assert sid in listed.stdout
    mine = nexus("sessions", "list", "--user", "bob", "--url", url)
    assert sid in mine.stdout
    other = nexus("sessions", "list", "--user", "nobody-else", "--url", url)
    assert other.returncode == 0 and sid not in other.stdout

    shown = nexus("sessions", "show", sid, "--url", url)
    assert shown.returncode == 0, shown.stderr
    assert "remember me" in shown.stdout and "cli" in shown.stdout
    json.loads(shown.stdout)

    deleted = nexus("sessions", "delete", sid, "--url", url)
    assert deleted.returncode == 0, deleted.stderr
    assert_error(nexus("sessions", "show", sid, "--url", url), EXIT_NOT_FOUND)
    assert_error(nexus("sessions", "delete", sid, "--url", url), EXIT_NOT_FOUND)


# ---------------------------------------------------------------------------
# serve, mcp, demo
# ---------------------------------------------------------------------------
def test_serve_file_app_run_then_sigint(app_file, tmp_path):
    db = tmp_path / "state" / "sessions.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nexus_lab.cli",
            "serve",
            f"{app_file}:app",
            "--api-port",
            "0",
            "--mcp-port",
            "0",
            "--sessions",
            f"sqlite:///{db}",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        api, seen = _read_until(proc, "API: ", time.monotonic() + 60)
        assert api.startswith("http://127.0.0.1:")
        mcp_url, _ = _read_until(proc, "MCP: ", time.monotonic() + 10)
        assert mcp_url.endswith("/mcp")

        run = nexus("run", "assistant", "-q", "served", "--url", api)
        assert run.returncode == 0, run.stderr
        assert "You said: served" in run.stdout

        sid = nexus("sessions", "create", "--url", api).stdout.strip()
        assert nexus("run", "assistant", "-q", "kept", "-s", sid, "--url", api).returncode == 0
        assert db.exists(), "--sessions sqlite:///... did not create the database"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in proc.stderr.read()


def test_serve_sigterm_exits_0(app_file, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nexus_lab.cli",
            "serve",
            f"{app_file}:app",
            "--api-port",
            "0",
            "--mcp-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        api, _ = _read_until(proc, "API: ", time.monotonic() + 60)
        assert nexus("health", "--url", api).returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_bad_app_ref_exits_2(tmp_path):
    assert_error(nexus("serve", str(tmp_path / "missing.py") + ":app"), EXIT_USAGE, "not found")
    assert_error(nexus("serve", "no_such_module_xyz:app"), EXIT_USAGE, "no_such_module_xyz")


def test_serve_port_in_use_exits_1(app_file):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = nexus("serve", f"{app_file}:app", "--api-port", str(port), "--mcp-port", "0")
    assert proc.returncode == EXIT_SERVER
    assert f"Port {port}" in proc.stderr and "Traceback" not in proc.stderr


def test_mcp_stdio_lists_and_calls_the_tool(app_file):
    pytest.importorskip("nexus_lab.platform.mcp")
    import anyio
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "nexus_lab.cli", "mcp", f"{app_file}:app"], env=_env()
    )

    async def scenario():
        async with Client(params) as client:
            tools = await client.list_tools()
            names = [t.name for t in tools.tools]
            result = await client.call_tool("assistant", {"query": "over stdio"})
            return names, result

    names, result = anyio.run(scenario)
    assert "assistant" in names
    text = json.dumps([getattr(c, "text", "") for c in result.content])
    assert "You said: over stdio" in text


def test_demo_once(tmp_path):
    db = tmp_path / "demo.db"
    proc = nexus(
        "demo",
        "--once",
        "--api-port",
        "0",
        "--mcp-port",
        "0",
        "--store",
        f"sqlite:///{db}",
        cwd=tmp_path,
        timeout=90,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    out = proc.stdout
    assert "You said: What is an AI agent?" in out
    assert "earlier you asked: What is an AI agent?" in out
    assert "turns=2" in out
    assert "curl -s -X POST http://127.0.0.1:" in out and "/api/workflows/assistant/execute" in out
    assert "nexus run assistant --query" in out and "--session " in out
    assert "/mcp" in out and "self-check ok" in out
    assert db.exists()


def test_demo_module_default_store_creates_nexus_dir(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nexus_lab.demo", "--once", "--api-port", "0", "--mcp-port", "0"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=90,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert (tmp_path / ".nexus" / "sessions.db").exists()


def test_demo_falls_back_to_a_free_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        proc = nexus(
            "demo",
            "--once",
            "--api-port",
            str(busy),
            "--mcp-port",
            "0",
            "--store",
            "memory://",
            cwd=tmp_path,
            timeout=90,
        )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert f"port {busy} is in use" in proc.stdout


def test_installed_script_runs_against_a_platform(url):
    script = _script()
    proc = subprocess.run(
        [script, "run", "assistant", "--query", "installed", "--url", url],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[mock:m] You said: installed\n"
