"""The ``%nexus`` magics on a plain InteractiveShell, with real servers on free ports.

Background work is awaited by polling a condition with a deadline (``wait_for``),
never by sleeping a fixed time; interrupts are real SIGINTs sent to the main thread
once the agent has started (an event the agent sets).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("IPython")

from IPython.core.error import UsageError  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from traitlets.config import Config  # noqa: E402

from nexus_lab import Nexus, NexusSessionManager  # noqa: E402
from nexus_lab.jupyter.magics import parse_inputs, parse_value, split_line  # noqa: E402
from nexus_lab.jupyter.results import (  # noqa: E402
    CallResult,
    MetricsChart,
    MetricsSummary,
    PlatformStatus,
    SessionTable,
)
from nexus_lab.platform.deploy import DeploymentChannels  # noqa: E402

SETUP = '''
from nexus_lab import AIAssistant, NexusSessionManager
agent = AIAssistant()
mgr = NexusSessionManager(cleanup_interval=300)

def add(a: int, b: int = 1) -> dict:
    """Add two integers."""
    return {"sum": a + b}

def echo(tags: list, n: int, flag: bool = False, note: str = "") -> dict:
    return {"tags": tags, "n": n, "flag": flag, "note": note}

def flaky(n: int) -> dict:
    """Divide one by n."""
    return {"x": 1 / n}
'''

DEADLINE = 20.0


def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def new_threads(before: set) -> list[str]:
    """Names of the live threads that did not exist in ``before``."""
    return sorted(t.name for t in threading.enumerate() if t not in before and t.is_alive())


def _new_shell() -> InteractiveShell:
    InteractiveShell.clear_instance()
    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=cfg)
    shell.run_line_magic("load_ext", "nexus_lab")
    result = shell.run_cell(SETUP)
    assert result.success, result.error_in_exec
    return shell


def _teardown(shell: InteractiveShell) -> None:
    shell.run_line_magic("unload_ext", "nexus_lab")
    for value in list(shell.user_ns.values()):
        if isinstance(value, Nexus):
            value.close()
        elif isinstance(value, NexusSessionManager):
            value.close()
    InteractiveShell.clear_instance()


@pytest.fixture
def ip():
    shell = _new_shell()
    yield shell
    _teardown(shell)


@pytest.fixture(scope="module")
def served():
    """One shell whose default app serves ``assistant`` (with sessions) and ``add``."""
    shell = _new_shell()
    shell.run_line_magic("nexus", "deploy agent --name assistant --sessions mgr")
    shell.run_line_magic("nexus", "deploy add")
    shell.run_line_magic("nexus", "deploy flaky")
    status = shell.run_line_magic("nexus", "start")
    assert status.is_running
    yield shell
    _teardown(shell)


def nexus(shell: InteractiveShell, line: str):
    return shell.run_line_magic("nexus", line)


def _usage_error(shell: InteractiveShell, line: str) -> str:
    with pytest.raises(UsageError) as info:
        nexus(shell, line)
    assert type(info.value) is UsageError  # a subclass would print a full traceback
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- loading
def test_import_nexus_lab_does_not_import_ipython():
    code = (
        "import sys, nexus_lab\n"
        "nexus_lab.Nexus; nexus_lab.deploy_multi_channel\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipykernel', 'ipywidgets'))\n"
        "assert not bad, bad\n"
        "assert 'nexus_lab.jupyter.magics' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_load_ext_registers_line_and_cell_magic(ip):
    magics = ip.magics_manager.magics
    assert "nexus" in magics["line"]
    assert "nexus" in magics["cell"]


def test_help_prints_and_never_exits(ip, capsys):
    assert nexus(ip, "") is None
    assert nexus(ip, "-h") is None
    assert nexus(ip, "call -h") is None
    out = capsys.readouterr().out
    assert "deploy" in out and "--session" in out


def test_magic_docstring_documents_the_grammar():
    from nexus_lab.jupyter import magics

    for word in ("deploy AGENT", "%%nexus call", "--channels", "nexus_app", "in-process"):
        assert word in magics.__doc__


# --------------------------------------------------------------------------- deploy
def test_deploy_from_namespace_creates_and_reuses_default_app(ip):
    channels = nexus(ip, "deploy agent --name assistant")
    assert isinstance(channels, DeploymentChannels)
    assert channels == {
        "api": "/api/workflows/assistant/execute",
        "cli": "nexus run assistant",
        "mcp": "assistant",
    }
    assert "<table" in channels._repr_html_()
    app = ip.user_ns["nexus_app"]
    assert isinstance(app, Nexus)
    assert app.enable_monitoring and app.api_port == 0 and app.mcp_port == 0
    nexus(ip, "deploy add")  # the name defaults to the variable's
    assert ip.user_ns["nexus_app"] is app
    assert sorted(app.deployments) == ["add", "assistant"]


def test_deploy_unknown_agent_names_it(ip):
    message = _usage_error(ip, "deploy no_such_agent --name x")
    assert "no_such_agent" in message
    assert "nexus_app" not in ip.user_ns or not ip.user_ns["nexus_app"].deployments


def test_deploy_agent_attribute_path(ip):
    ip.run_cell("import types\nbox = types.SimpleNamespace(helper=add)")
    assert nexus(ip, "deploy box.helper") == {
        "api": "/api/workflows/helper/execute",
        "cli": "nexus run helper",
        "mcp": "helper",
    }
    assert "nothing" in _usage_error(ip, "deploy box.nothing")


def test_deploy_invalid_name_and_none_agent_are_usage_errors(ip):
    assert "invalid deployment name" in _usage_error(ip, "deploy agent --name 'a b'")
    ip.run_cell("nothing = None")
    assert "None" in _usage_error(ip, "deploy nothing --name x")


@pytest.mark.parametrize(
    "line",
    [
        "deploy agent --bogus",
        "deploy",
        "frobnicate",
        "deploy agent --channels api,web",
        "start --api-port 70000",
        "start --api-port abc",
        "call",
        "call add --channel smoke",
    ],
)
def test_bad_arguments_are_one_line_usage_errors(ip, line):
    _usage_error(ip, line)


def test_bad_flag_in_a_cell_keeps_the_shell_alive(ip):
    result = ip.run_cell("%nexus deploy agent --bogus")
    assert type(result.error_in_exec) is UsageError
    result = ip.run_cell("%nexus frobnicate")
    assert type(result.error_in_exec) is UsageError
    result = ip.run_cell("x = 1 + 1")
    assert result.success and ip.user_ns["x"] == 2
    assert nexus(ip, "deploy add")["api"] == "/api/workflows/add/execute"


def test_channels_subset(ip):
    channels = nexus(ip, "deploy add --name adder --channels mcp,api")
    assert channels == {"api": "/api/workflows/adder/execute", "mcp": "adder"}
    app = ip.user_ns["nexus_app"]
    assert app.get_deployment("adder").channels == {"api", "mcp"}
    assert nexus(ip, "deploy echo --channels cli") == {"cli": "nexus run echo"}


def test_sessions_flag_attaches_the_manager(ip):
    nexus(ip, "deploy agent --name assistant --sessions mgr")
    app = ip.user_ns["nexus_app"]
    mgr = ip.user_ns["mgr"]
    assert app.get_deployment("assistant").session_manager is mgr
    first = nexus(ip, "call assistant hi")
    assert first.session_id is not None
    nexus(ip, f"call assistant again --session {first.session_id}")
    assert mgr.get_session_state(first.session_id)["turns"] == 2


def test_sessions_flag_errors(ip):
    assert "--channels" in _usage_error(ip, "deploy agent --sessions mgr --channels api")
    assert "nope" in _usage_error(ip, "deploy agent --sessions nope")
    assert "NexusSessionManager" in _usage_error(ip, "deploy agent --sessions add")


def test_no_cache_compiles_again(ip):
    nexus(ip, "deploy add")
    app = ip.user_ns["nexus_app"]
    assert app.deploy_cache_info()["misses"] == 1
    nexus(ip, "deploy add")
    assert app.deploy_cache_info() == {**app.deploy_cache_info(), "hits": 1, "misses": 1}
    nexus(ip, "deploy add --no-cache")
    info = app.deploy_cache_info()
    assert (info["hits"], info["misses"]) == (1, 2)


def test_app_option_selects_and_keeps_an_app(ip):
    ip.run_cell("from nexus_lab import Nexus\nmine = Nexus(auto_discovery=False)")
    nexus(ip, "deploy add --app mine")
    mine = ip.user_ns["mine"]
    assert "add" in mine.deployments
    assert "nexus_app" not in ip.user_ns  # no default app was needed
    assert nexus(ip, "call add a=1").outputs == {"sum": 2}  # mine is now current
    assert "nope" in _usage_error(ip, "status --app nope")
    assert "not a nexus_lab.Nexus" in _usage_error(ip, "status --app agent")
    nexus(ip, "status --app nexus_app")  # back to the default app (created now)
    assert isinstance(ip.user_ns["nexus_app"], Nexus)
    assert "add" not in ip.user_ns["nexus_app"].deployments


# --------------------------------------------------------------------------- start / stop
def test_start_status_stop(ip):
    nexus(ip, "deploy add")
    before = nexus(ip, "status")
    assert isinstance(before, PlatformStatus)
    assert before.state == "not started" and before.api_url is None
    status = nexus(ip, "start --api-port 0 --mcp-port 0")
    try:
        assert status.state == "serving"
        assert status.api_url.startswith("http://127.0.0.1:")
        assert status.mcp_url.endswith("/mcp")
        assert repr(status) == (
            "PlatformStatus(state='serving', channels={'api': 'serving', 'cli': 'serving', "
            "'mcp': 'serving'}, deployments=['add'])"
        )
        assert status.api_url in status._repr_html_()
        assert nexus(ip, "start").is_running  # idempotent
        assert "already running" in _usage_error(ip, "start --api-port 0")
        assert nexus(ip, "status").channels["mcp"]["url"] == status.mcp_url
    finally:
        stopped = nexus(ip, "stop")
    assert stopped.state == "stopped" and stopped.api_url is None
    assert not ip.user_ns["nexus_app"].is_running


def test_start_port_in_use_is_a_usage_error(ip):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        port = sock.getsockname()[1]
        message = _usage_error(ip, f"start --api-port {port}")
        assert str(port) in message
    finally:
        sock.close()
    assert not ip.user_ns["nexus_app"].is_running


def test_unload_stops_what_the_magics_started(ip):
    nexus(ip, "deploy add")
    nexus(ip, "start")
    app = ip.user_ns["nexus_app"]
    assert app.is_running
    ip.run_line_magic("unload_ext", "nexus_lab")
    assert not app.is_running
    assert "add" in app.deployments  # stopped, not emptied
    ip.run_line_magic("load_ext", "nexus_lab")
    assert nexus(ip, "call add a=4").outputs == {"sum": 5}  # the same app is reused


# --------------------------------------------------------------------------- calls
def test_call_in_process_when_not_running(ip):
    nexus(ip, "deploy agent --name assistant")
    result = nexus(ip, 'call assistant "What is AI?"')
    assert isinstance(result, CallResult)
    assert result.in_process and result.transport == "in-process"
    assert result.response == "[mock:mock-model] You said: What is AI?"
    assert repr(result) == (
        "CallResult(name='assistant', channel='api', via='in-process', "
        "response='[mock:mock-model] You said: What is AI?')"
    )
    assert "in-process" in result._repr_html_()
    assert {"outputs", "session_id", "execution_time_ms"} <= set(result.json)


def test_call_mcp_or_cli_when_not_running_asks_to_start(ip):
    nexus(ip, "deploy add")
    for channel in ("mcp", "cli"):
        assert "%nexus start" in _usage_error(ip, f"call add a=1 --channel {channel}")


def test_call_values_are_json_then_literal_then_text(ip):
    nexus(ip, "deploy echo")
    result = nexus(ip, 'call echo tags=["a", "b c"] n=5 flag=True note="two words"')
    assert result.outputs == {"tags": ["a", "b c"], "n": 5, "flag": True, "note": "two words"}
    assert result.response is None
    assert repr(result) == (
        "CallResult(name='echo', channel='api', via='in-process', "
        "outputs={'tags': ['a', 'b c'], 'n': 5, 'flag': True, 'note': 'two words'})"
    )
    ip.user_ns["values"] = ["x"]
    assert nexus(ip, "call echo tags=$values n=1").outputs["tags"] == ["x"]  # IPython expansion


def test_call_errors_in_process_are_one_line(ip):
    nexus(ip, "deploy add")
    assert "'a'" in _usage_error(ip, "call add a=notanumber")
    assert "missing" in _usage_error(ip, "call add")
    assert "nope" in _usage_error(ip, "call nope a=1")
    assert "session" in _usage_error(ip, "call add a=1 --session does-not-exist").lower()
    assert "mix" in _usage_error(ip, "call add a=1 extra words")
    assert "twice" in _usage_error(ip, "call add a=1 a=2")
    assert "unbalanced" in _usage_error(ip, "call add What's up")


def test_call_json_flag_returns_the_wire_dict(ip):
    nexus(ip, "deploy add")
    body = nexus(ip, "call add a=2 --json")
    assert body["outputs"] == {"sum": 3}
    assert {"outputs", "session_id", "execution_time_ms"} <= set(body)


@pytest.mark.parametrize(("channel", "transport"), [("api", "http"), ("mcp", "mcp"), ("cli", "cli")])
def test_call_through_the_real_channel(served, channel, transport):
    app = served.user_ns["nexus_app"]
    before = app.metrics.get_summary().get(channel, {}).get("count", 0)
    result = nexus(served, f'call assistant "hello {channel}" --channel {channel}')
    assert result.transport == transport and not result.in_process
    assert result.channel == channel
    assert result.response == f"[mock:mock-model] You said: hello {channel}"
    assert result.session_id  # the deployment has sessions
    short = result.session_id[:8] + "\u2026"
    assert repr(result) == (
        f"CallResult(name='assistant', channel={channel!r}, session={short!r}, "
        f"response='[mock:mock-model] You said: hello {channel}')"
    )
    # the whole id is selectable in the HTML (shown cut to 8 characters)
    assert f"<code class='nexus-sid' title='{result.session_id}'" in result._repr_html_()
    assert result.json["session_id"] == result.session_id
    assert app.metrics.get_summary(channel)["count"] == before + 1  # recorded on that channel
    added = nexus(served, f"call add a=2 b=40 --channel {channel}")
    assert added.outputs == {"sum": 42}
    assert nexus(served, f"call add a=1 --json --channel {channel}")["outputs"] == {"sum": 2}


def test_calls_reuse_one_client_until_stop(ip):
    from nexus_lab.client import AsyncNexusClient

    magics = ip.magics_manager.registry["NexusMagics"]
    before = set(threading.enumerate())
    nexus(ip, "deploy add")
    nexus(ip, "start")
    app = ip.user_ns["nexus_app"]
    try:
        assert nexus(ip, "call add a=1").outputs == {"sum": 2}
        (entry,) = magics._clients.values()
        client = entry[2]
        assert isinstance(client, AsyncNexusClient)
        for line in ("call add a=2", "call add a=3 --channel mcp", "call add a=4 --channel mcp"):
            nexus(ip, line)
        assert list(magics._clients.values()) == [entry]  # one client: one pool, one MCP session
        assert client._mcp is not None
        assert "nexus-kernel-loop" in new_threads(before)
        assert nexus(ip, "call add a=1 --api-key other").outputs == {"sum": 2}  # auth off: any key
        assert len(magics._clients) == 2  # one client per key
    finally:
        nexus(ip, "stop")
    assert magics._clients == {} and client._closed
    assert new_threads(before) == []  # servers, workers, the loop thread: all ended
    nexus(ip, "start")
    try:
        nexus(ip, "call add a=1 --channel mcp")
        (entry,) = magics._clients.values()
        assert entry[2] is not client  # a new client for the new servers
        app.stop()  # stopped behind the magics' back: the next call closes the stale client
        assert nexus(ip, "call add a=5").in_process
        assert magics._clients == {}
    finally:
        nexus(ip, "stop")
    assert new_threads(before) == []


def test_session_continues_across_channels(served):
    mgr = served.user_ns["mgr"]
    first = nexus(served, "call assistant query=hi")
    sid = first.session_id
    assert mgr.get_session_state(sid)["turns"] == 1
    for turn, channel in enumerate(("mcp", "cli", "api"), start=2):
        result = nexus(served, f"call assistant 'turn {turn}' --session {sid} --channel {channel}")
        assert result.session_id == sid
        assert mgr.get_session_state(sid)["turns"] == turn
    served.user_ns["r"] = first
    nexus(served, "call assistant more --session {r.session_id} --channel mcp")  # IPython expands {}
    assert mgr.get_session_state(sid)["turns"] == 5
    assert mgr.get_session(sid).channels == ["api", "mcp", "cli"]


@pytest.mark.parametrize("channel", ["api", "mcp", "cli"])
def test_server_errors_become_one_line_usage_errors(served, channel):
    message = _usage_error(served, f"call add a=notanumber --channel {channel}")
    assert message.startswith(f"add via {channel}:")
    assert "'a'" in message
    assert "Traceback" not in message
    assert "nope" in _usage_error(served, f"call nope a=1 --channel {channel}")
    session = _usage_error(served, f"call assistant hi --session unknown-id --channel {channel}")
    assert "unknown-id" in session


def test_cell_magic_body_is_the_query(served):
    result = served.run_cell_magic("nexus", "call assistant --channel mcp", "What is AI?\nExplain.\n")
    assert result.channel == "mcp"
    assert result.response == "[mock:mock-model] You said: What is AI?\nExplain."
    follow = served.run_cell_magic("nexus", f"call assistant --session {result.session_id}", "more")
    assert follow.session_id == result.session_id
    assert served.user_ns["mgr"].get_session_state(result.session_id)["turns"] == 2


def test_cell_magic_errors(ip):
    nexus(ip, "deploy agent --name assistant")
    with pytest.raises(UsageError, match="empty"):
        ip.run_cell_magic("nexus", "call assistant", "  \n")
    with pytest.raises(UsageError, match="only 'call'"):
        ip.run_cell_magic("nexus", "status", "x")
    with pytest.raises(UsageError, match="cell body"):
        ip.run_cell_magic("nexus", "call assistant query=x", "y")
    result = ip.run_cell("%%nexus call assistant\nhi there")
    assert result.success
    assert result.result.response == "[mock:mock-model] You said: hi there"


def test_cell_and_line_results_assign_in_a_notebook(ip):
    nexus(ip, "deploy agent --name assistant --sessions mgr")
    assert ip.run_cell('r = %nexus call assistant query="hi"').success
    r = ip.user_ns["r"]
    assert r.response.endswith("You said: hi")
    assert isinstance(r.session_id, str)


def test_auth_uses_the_api_key_option_or_env(ip, monkeypatch):
    monkeypatch.delenv("NEXUS_API_KEY", raising=False)
    ip.run_cell(
        "from nexus_lab import Nexus\n"
        "secure = Nexus(auto_discovery=False, api_port=0, mcp_port=0, enable_auth=True,"
        " api_keys={'k-123': 'alice'})"
    )
    nexus(ip, "deploy add --app secure")
    nexus(ip, "start")
    try:
        message = _usage_error(ip, "call add a=1")
        assert "--api-key" in message and "k-123" not in message
        assert nexus(ip, "call add a=1 --api-key k-123").outputs == {"sum": 2}
        assert nexus(ip, "call add a=1 --api-key k-123 --channel mcp").outputs == {"sum": 2}
        monkeypatch.setenv("NEXUS_API_KEY", "k-123")
        assert nexus(ip, "call add a=1 --channel cli").outputs == {"sum": 2}
        assert nexus(ip, "call add a=1").transport == "http"
        monkeypatch.setenv("NEXUS_API_KEY", "wrong")
        _usage_error(ip, "call add a=1 --channel mcp")
        _usage_error(ip, "call add a=1 --channel cli")
    finally:
        nexus(ip, "stop")


# --------------------------------------------------------------------------- inspection
def test_sessions_table(ip):
    nexus(ip, "deploy agent --name assistant --sessions mgr")
    empty = nexus(ip, "sessions")
    assert isinstance(empty, SessionTable) and len(empty) == 0
    assert repr(empty) == "SessionTable(0 sessions)"
    a = nexus(ip, "call assistant one")
    nexus(ip, f"call assistant two --session {a.session_id}")
    ip.user_ns["mgr"].create_session(user_id="bob")
    table = nexus(ip, "sessions")
    assert len(table) == 2
    assert table.session_ids[0] == a.session_id
    bob_id = table.session_ids[1]
    assert repr(table) == (
        "SessionTable(2 sessions)\n"
        f"  id={a.session_id[:8] + chr(0x2026)!r} user='anonymous' channels=['api'] "
        "keys=['last_query', 'last_response', 'last_channel', 'turns', 'history'] turns=2\n"
        f"  id={bob_id[:8] + chr(0x2026)!r} user='bob' channels=[] keys=[] turns=0"
    )
    html = table._repr_html_()
    assert "<table" in html and "<th>id</th>" in html
    # shown short, selectable whole
    assert f"title='{a.session_id}'" in html and f">{a.session_id}</code>" in html
    frame = table.to_dataframe()
    assert list(frame.columns) == ["session_id", "user", "channels", "keys", "turns",
                                   "created_at", "last_accessed", "expires_at"]
    assert frame["session_id"].tolist() == [a.session_id, bob_id]
    assert frame["turns"].tolist() == [2, 0]
    assert str(frame["created_at"].dtype).startswith("datetime64")
    bob = nexus(ip, "sessions --user bob")
    assert [r.user for r in bob] == ["bob"]
    assert repr(bob).startswith("SessionTable(1 session, user='bob')")
    assert len(nexus(ip, "sessions --user nobody").to_dataframe()) == 0


def test_metrics_summary(ip):
    nexus(ip, "deploy add")
    empty = nexus(ip, "metrics")
    assert isinstance(empty, MetricsSummary)
    assert repr(empty) == "MetricsSummary(monitoring=True, counts={})"
    nexus(ip, "call add a=1")
    nexus(ip, "call add a=2")
    with pytest.raises(UsageError):
        nexus(ip, "call add a=x")  # invalid input fails before the agent runs: not counted
    summary = nexus(ip, "metrics")
    assert repr(summary) == (
        "MetricsSummary(monitoring=True, counts={'agent:api': 2, 'api': 2, 'workflow:add': 2})"
    )
    assert summary.summary["api"]["count"] == 2
    assert "<table" in summary._repr_html_() and "p95 ms" in summary._repr_html_()


def test_metrics_with_monitoring_off_says_so(ip):
    ip.run_cell("from nexus_lab import Nexus\nquiet = Nexus(auto_discovery=False)")
    nexus(ip, "deploy add --app quiet")
    nexus(ip, "call add a=1")
    summary = nexus(ip, "metrics")
    assert summary.monitoring is False and "monitoring is off" in summary._repr_html_()


def test_metrics_plot_falls_back_to_a_png(ip, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setitem(sys.modules, "nexus_lab.jupyter.widgets", None)  # import -> ImportError
    nexus(ip, "deploy add")
    nexus(ip, "call add a=1")
    chart = nexus(ip, "metrics --plot")
    assert isinstance(chart, MetricsChart)
    assert chart._repr_png_().startswith(b"\x89PNG")
    assert repr(chart) == "MetricsChart(categories=['api'])"  # one row per channel, no duplicate


def test_metrics_plot_and_dashboard_widgets(ip):
    widgets = pytest.importorskip("nexus_lab.jupyter.widgets")
    nexus(ip, "deploy add")
    board = nexus(ip, "metrics --plot")
    dash = nexus(ip, "dashboard")
    try:
        assert isinstance(board, widgets.MetricsDashboard)
        assert isinstance(dash, widgets.Dashboard)
    finally:
        for w in (board, dash):
            w.close()


# --------------------------------------------------------------------------- parsing units
def test_split_line_keeps_quotes_and_brackets_together():
    assert split_line('call a "What is AI?"') == ["call", "a", "What is AI?"]
    assert split_line('x tags=["a", "b"] q="hi there"') == ["x", 'tags=["a", "b"]', 'q="hi there"']
    assert split_line("--session='a b' k={'a': 1}") == ["--session=a b", "k={'a': 1}"]
    assert split_line("q=hello :(") == ["q=hello", ":("]  # unbalanced bracket: plain text
    assert split_line(r'"say \"hi\""') == ['say "hi"']


def test_parse_value_and_inputs():
    assert parse_value("5") == 5
    assert parse_value("2.5") == 2.5
    assert parse_value('["a"]') == ["a"]
    assert parse_value('{"a": 1}') == {"a": 1}
    assert parse_value("null") is None
    assert parse_value("True") is True
    assert parse_value("{'a': (1, 2)}") == {"a": (1, 2)}
    assert parse_value("{1, 2}") == "{1, 2}"  # a set is not JSON: kept as text
    assert parse_value("NaN") == "NaN"
    assert parse_value("hello") == "hello"
    assert parse_value('"5"') == "5"
    assert parse_inputs(split_line("What is AI")) == {"query": "What is AI"}
    assert parse_inputs(split_line('"x=1"')) == {"query": "x=1"}  # quoted: a query, not a pair
    assert parse_inputs(split_line("a=1 b=two")) == {"a": 1, "b": "two"}


def test_results_have_stable_reprs_without_volatile_values():
    result = CallResult(
        name="assistant",
        channel="api",
        transport="http",
        outputs={"response": "hi"},
        session_id="0123456789abcdef",
        json={"outputs": {"response": "hi"}, "session_id": "0123456789abcdef", "execution_time_ms": 1.5},
        execution_time_ms=1.5,
    )
    assert repr(result) == (
        "CallResult(name='assistant', channel='api', session='01234567\u2026', response='hi')"
    )
    assert "1.5" not in repr(result) + result._repr_html_()
    assert str(result) == "hi"
    assert result["response"] == "hi"
    assert json.loads(json.dumps(result.json))["session_id"] == "0123456789abcdef"


def test_str_inputs_keep_their_text(ip):
    nexus(ip, "deploy agent --name assistant")
    assert nexus(ip, "call assistant query=42").response.endswith("You said: 42")
    assert nexus(ip, "call assistant query=[1]").response.endswith("You said: [1]")
    assert nexus(ip, 'call assistant query="quoted"').response.endswith("You said: quoted")
    nexus(ip, "deploy echo")
    assert nexus(ip, "call echo tags=[] n=1 note=7").outputs["note"] == "7"


def test_help_of_the_magic_is_the_guide(ip):
    assert "deploy AGENT" in ip.find_line_magic("nexus").__doc__


def test_a_session_id_starting_with_a_dash_is_a_value_not_an_option(served):
    mgr = served.user_ns["mgr"]
    sid = mgr.create_session(user_id="anonymous", session_id="-dash-id").session_id
    result = nexus(served, "call assistant hi --session -dash-id")
    assert result.session_id == "-dash-id"
    assert mgr.get_session_state(sid)["turns"] == 1


# --------------------------------------------------------------------------- comments
def test_split_line_reads_a_trailing_comment_like_a_shell():
    assert split_line("deploy agent --name assistant   # AGENT is a variable") == [
        "deploy", "agent", "--name", "assistant"]
    assert split_line("# only a comment") == []
    assert split_line('call a "What is #1?" q=#2 # note') == ["call", "a", "What is #1?", "q=#2"]
    assert split_line("call a 'it''s' #x") == ["call", "a", "'it''s'"]
    assert split_line('call a tags=["#a", "b"] # c') == ["call", "a", 'tags=["#a", "b"]']
    assert split_line("call a hello :( # sad") == ["call", "a", "hello", ":("]


@pytest.mark.parametrize(
    "line",
    [
        "deploy agent --name assistant   # AGENT is a variable of the notebook",
        "start                           # free ports, background threads",
        "status # the channels",
        "dashboard                       # channels, sessions, latency charts in tabs",
    ],
)
def test_magic_lines_with_trailing_comments_run(ip, line):
    result = nexus(ip, line)
    try:
        assert result is not None
    finally:
        if hasattr(result, "close"):
            result.close()
        if ip.user_ns.get("nexus_app") is not None:
            nexus(ip, "stop")


def test_a_comment_never_becomes_part_of_the_query(ip):
    nexus(ip, "deploy agent --name assistant")
    r = nexus(ip, 'call assistant "What is AI?"     # through the real HTTP API')
    assert r.response == "[mock:mock-model] You said: What is AI?"
    r = nexus(ip, "call assistant What is AI   # bare words, then a comment")
    assert r.response.endswith("You said: What is AI")
    r = nexus(ip, 'call assistant "keep #this" # drop this')
    assert r.response.endswith("You said: keep #this")


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("channel", ["in-process", "api", "mcp", "cli"])
def test_an_agent_failure_is_one_line_with_type_message_and_error_id(request, channel, capfd):
    shell = request.getfixturevalue("ip" if channel == "in-process" else "served")
    if channel == "in-process":
        nexus(shell, "deploy flaky")
    flag = "" if channel == "in-process" else f" --channel {channel}"
    message = _usage_error(shell, f"call flaky n=0{flag}")
    where = "flaky (in-process)" if channel == "in-process" else f"flaky via {channel}"
    assert message.startswith(f"{where}: ZeroDivisionError: division by zero [agent_error, error id ")
    assert message.endswith("; traceback: %nexus last-error")
    err = nexus(shell, "last-error")
    assert err.error_type == "agent_error" and err.error_id and err.error_id in message
    assert err.message == "ZeroDivisionError: division by zero"
    assert "Traceback" in err.traceback and "return {\"x\": 1 / n}" in err.traceback
    assert repr(err) == (
        f"CallError(name='flaky', channel={'api' if channel == 'in-process' else channel!r}, "
        "error_type='agent_error', message='ZeroDivisionError: division by zero')"
    )
    assert err.error_id in err._repr_html_() and "nexus-traceback" in err._repr_html_()
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out  # on the result, never printed


def test_last_error_without_a_failure_says_so(ip):
    assert "no call has failed" in _usage_error(ip, "last-error")


def test_server_logs_are_kept_not_printed(served, capfd):
    import logging

    import httpx

    app = served.user_ns["nexus_app"]
    assert logging.getLogger("nexus_lab").propagate is False  # never to stderr, a cell's output
    # a failing request from outside the kernel's magics
    r = httpx.post(f"{app.api_url}/api/workflows/flaky/execute", json={"inputs": {"n": 0}},
                   trust_env=False)
    assert r.status_code == 500
    error_id = r.json()["error"]["error_id"]
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err and error_id not in printed.err
    table = nexus(served, "logs --level ERROR -n 5")
    entry = [e for e in table if e.error_id == error_id]
    assert entry and "ZeroDivisionError" in entry[0].traceback
    assert error_id in table._repr_html_() and "<details>" in table._repr_html_()
    assert repr(table).startswith("LogTable(level='ERROR', records={'ERROR': ")


def test_unload_gives_the_log_back(ip):
    import logging

    from nexus_lab.jupyter.logs import LogCapture, capture

    log = logging.getLogger("nexus_lab")
    kernel = capture(install=False)
    assert log.propagate is False and kernel in log.handlers
    users = kernel._users
    ip.run_line_magic("unload_ext", "nexus_lab")
    assert kernel._users == users - 1  # other shells of this test process may still use it
    ip.run_line_magic("load_ext", "nexus_lab")
    assert kernel._users == users
    # the last user gives the loggers back as they were
    own = LogCapture()
    name = "nexus_lab.test_only"
    other = logging.getLogger(name)
    import nexus_lab.jupyter.logs as logs_module

    saved = logs_module.CAPTURED_LOGGERS
    logs_module.CAPTURED_LOGGERS = (name,)
    try:
        own.install()
        own.install()
        assert other.propagate is False and own in other.handlers
        own.uninstall()
        assert other.propagate is False  # one user left
        own.uninstall()
        assert other.propagate is True and own not in other.handlers
        assert other.level == logging.NOTSET
    finally:
        logs_module.CAPTURED_LOGGERS = saved


def test_session_none_from_a_result_without_a_session_says_why(ip):
    nexus(ip, "deploy add")
    ip.user_ns["r"] = nexus(ip, "call add a=1")
    assert ip.user_ns["r"].session_id is None
    message = _usage_error(ip, "call add a=2 --session {r.session_id}")
    assert "--session 'None'" in message and "without sessions" in message


# --------------------------------------------------------------------------- suggestions
@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("stat", "did you mean 'status'?"),
        ("sesions", "did you mean 'sessions'?"),
        ("deploy agent --nme x", "did you mean '--name'?"),
        ("call add a=1 --chanel mcp", "did you mean '--channel'?"),
        ("call add a=1 --channel mpc", "did you mean 'mcp'?"),
        ("deploy agnt", "did you mean 'agent'?"),
        ("deploy agent --channels api,mpc", "did you mean 'mcp'?"),
    ],
)
def test_mistakes_suggest_the_closest_word(ip, line, hint):
    assert hint in _usage_error(ip, line)


def test_unknown_deployment_suggests_the_closest(served):
    for channel in ("api", "mcp"):
        message = _usage_error(served, f"call asistant hi --channel {channel}")
        assert "did you mean 'assistant'?" in message


def test_undeploy(ip):
    nexus(ip, "deploy add")
    nexus(ip, "deploy agent --name assistant")
    status = nexus(ip, "undeploy add   # no longer needed")
    assert status.deployments == ["assistant"]
    assert "add" not in ip.user_ns["nexus_app"].deployments
    message = _usage_error(ip, "undeploy asistant")
    assert "did you mean 'assistant'?" in message


def test_undeploy_while_serving_removes_it_from_every_channel(ip):
    nexus(ip, "deploy add")
    nexus(ip, "deploy agent --name assistant")
    nexus(ip, "start")
    try:
        nexus(ip, "undeploy add")
        for channel in ("api", "mcp"):
            assert "no deployment" in _usage_error(ip, f"call add a=1 --channel {channel}").lower() or \
                "unknown tool" in _usage_error(ip, f"call add a=1 --channel {channel}").lower()
        assert nexus(ip, "call assistant hi").response.endswith("hi")
    finally:
        nexus(ip, "stop")


# --------------------------------------------------------------------------- completion
def _complete(shell: InteractiveShell, text: str) -> list[str]:
    from IPython.core.completer import provisionalcompleter

    with provisionalcompleter():
        return [c.text for c in shell.Completer.completions(text, len(text))]


def test_completion_of_subcommands_flags_and_names(ip):
    assert _complete(ip, "%nexus de") == ["deploy"]
    assert "%debug" not in _complete(ip, "%nexus de")
    assert _complete(ip, "%nexus stat") == ["status"]
    assert _complete(ip, "%nexus call --ch") == ["--channel"]
    assert _complete(ip, "%nexus call x --channel m") == ["mcp"]
    assert _complete(ip, "%nexus call x --channel=c") == ["cli"]
    assert _complete(ip, "%nexus deploy x --channels api,m") == ["mcp"]
    assert _complete(ip, "%nexus deploy ag") == ["agent"]  # notebook variables holding agents
    assert set(_complete(ip, "%nexus deploy ")) >= {"agent", "add", "echo", "flaky"}
    assert _complete(ip, "%nexus deploy agent --sessions ") == ["mgr"]
    nexus(ip, "deploy agent --name assistant --sessions mgr")
    assert _complete(ip, "%nexus deploy agent --app ") == ["nexus_app"]
    assert _complete(ip, "%nexus call as") == ["assistant"]
    assert _complete(ip, "%nexus undeploy ") == ["assistant"]
    assert _complete(ip, "%nexus call assistant q") == ["query="]
    assert _complete(ip, "%nexus bench assistant --input ") == ["query="]
    sid = nexus(ip, "call assistant hi").session_id
    assert _complete(ip, "%nexus call assistant hi --session ") == [sid]
    assert _complete(ip, "%%nexus call assist") == ["assistant"]
    assert _complete(ip, "%nexus call assistant hi # a comm") == []  # in a comment: nothing
    assert "%debug" in _complete(ip, "de")  # outside %nexus, nothing changes


def test_unload_removes_the_completer(ip):
    ip.run_line_magic("unload_ext", "nexus_lab")
    assert "deploy" not in _complete(ip, "%nexus de")
    ip.run_line_magic("load_ext", "nexus_lab")
    assert _complete(ip, "%nexus de") == ["deploy"]


# --------------------------------------------------------------------------- lifecycles
def test_dashboards_share_one_thread_that_stop_and_unload_end(ip):
    nexus(ip, "deploy agent --name assistant --sessions mgr")
    nexus(ip, "call assistant hi")
    before = set(threading.enumerate())
    nexus(ip, "start")
    dashboards = [nexus(ip, "dashboard") for _ in range(4)]
    try:
        nexus(ip, "call assistant again")
        nexus(ip, "call assistant once more --channel mcp")
        started = new_threads(before)
        assert started.count("nexus-refresh") == 1  # four dashboards, sixteen views, one thread
        assert "nexus-servers" in started and "nexus-kernel-loop" in started
        status = nexus(ip, "stop")
        assert status.state == "stopped"
        assert new_threads(before) == []  # refresher, workers, servers, client loop: all ended
        for dash in dashboards:
            assert dash.channels.states == {"api": "stopped", "cli": "stopped", "mcp": "stopped"}
            assert not any(view.refreshing for view in dash.views)
        nexus(ip, "start")  # the paused views follow the platform again
        assert all(view.refreshing for dash in dashboards for view in dash.views)
        wait_for(lambda: all(d.channels.states.get("api") == "serving" for d in dashboards),
                 what="the dashboards to see the restart")
        ip.run_line_magic("unload_ext", "nexus_lab")
        assert new_threads(before) == []
        ip.run_line_magic("load_ext", "nexus_lab")
    finally:
        for dash in dashboards:
            dash.close()


def test_stop_pauses_only_that_platforms_widgets(ip):
    from nexus_lab.widgets import ChannelStatus

    ip.run_cell("from nexus_lab import Nexus\nother = Nexus(auto_discovery=False, api_port=0, mcp_port=0)")
    nexus(ip, "deploy add")
    mine = ChannelStatus(ip.user_ns["nexus_app"], refresh_interval=0.1)
    theirs = ChannelStatus(ip.user_ns["other"], refresh_interval=0.1)
    try:
        nexus(ip, "stop")
        assert not mine.refreshing and theirs.refreshing
    finally:
        mine.close()
        theirs.close()


def test_stop_says_it_waits_for_calls_in_flight(ip, capsys, monkeypatch):
    import httpx

    from nexus_lab.jupyter.commands import platform as platform_cmd

    started, release = threading.Event(), threading.Event()

    def slow(query: str) -> dict:
        started.set()
        release.wait(DEADLINE)
        return {"response": query}

    ip.user_ns["slow"] = slow
    nexus(ip, "deploy slow")
    nexus(ip, "start")
    app = ip.user_ns["nexus_app"]
    url = f"{app.api_url}/api/workflows/slow/execute"
    answers: list[int] = []
    caller = threading.Thread(target=lambda: answers.append(
        httpx.post(url, json={"inputs": {"query": "x"}}, trust_env=False, timeout=DEADLINE).status_code))
    caller.start()
    assert started.wait(DEADLINE)
    # let the agent finish once stop has begun (the platform then refuses new calls)
    releaser = threading.Thread(target=lambda: (wait_for(lambda: not app.is_running), release.set()))
    releaser.start()
    monkeypatch.setattr(platform_cmd, "STOP_NOTICE_AFTER", 0.0)
    try:
        assert nexus(ip, "stop").state == "stopped"
    finally:
        release.set()
        releaser.join()
        caller.join()
    assert "waiting for the calls in flight to finish" in capsys.readouterr().out
    assert answers == [200]  # the call in flight finished


class _Blocking:
    """A deployable function that blocks until released, and says when it started."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, query: str) -> dict:
        self.started.set()
        self.release.wait(DEADLINE)
        return {"response": query}


def _interrupt_when(event: threading.Event) -> threading.Thread:
    def run() -> None:
        if event.wait(DEADLINE):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    thread = threading.Thread(target=run, name="test-interrupter")
    thread.start()
    return thread


@pytest.mark.parametrize("channel", ["in-process", "api", "mcp", "cli"])
def test_an_interrupt_cancels_the_call_in_flight(ip, channel):
    blocking = _Blocking()
    ip.user_ns["slow"] = blocking
    nexus(ip, "deploy slow")
    magics = ip.magics_manager.registry["NexusMagics"]
    before = set(threading.enumerate())
    if channel != "in-process":
        nexus(ip, "start")
    flag = "" if channel == "in-process" else f" --channel {channel}"
    interrupter = _interrupt_when(blocking.started)
    try:
        with pytest.raises(KeyboardInterrupt):
            nexus(ip, f"call slow hi{flag}")
        interrupter.join()
        if channel in ("api", "mcp"):
            assert magics._clients == {}  # the interrupted client was closed, not reused
            loop = magics._loop
            pending = loop.run(_pending_tasks())
            assert pending == 0  # nothing of the call still runs on the loop thread
    finally:
        blocking.release.set()
    if channel != "in-process":
        blocking.started.clear()
        assert nexus(ip, f"call slow again{flag}").response == "again"  # the magics go on
        nexus(ip, "stop")
    assert new_threads(before) == []


async def _pending_tasks() -> int:
    import asyncio

    return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])


# --------------------------------------------------------------------------- bench
def _socket_fds() -> int:
    fds = os.listdir("/proc/self/fd")
    count = 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def _bench_children(monkeypatch) -> list[subprocess.Popen]:
    """The load-generator processes the benches of this test start (their ``Popen``)."""
    from nexus_lab.jupyter import bench as bench_module

    children: list[subprocess.Popen] = []
    real_init = bench_module._Child.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        children.append(self.proc)

    monkeypatch.setattr(bench_module._Child, "__init__", init)
    return children


def _reaped(proc: subprocess.Popen) -> bool:
    """The process has ended and was waited for: neither running nor a zombie of ours."""
    if proc.returncode is None:
        return False
    try:
        os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:
        return True  # not our child any more: reaped
    return False


class _AnswersThenBlocks:
    """A deployable function: the first ``answered`` calls answer, the next ones block until
    released; ``blocked`` is set when the first of them starts."""

    def __init__(self, answered: int = 1) -> None:
        self.answered = answered
        self.calls = 0
        self.lock = threading.Lock()
        self.blocked = threading.Event()
        self.release = threading.Event()

    def __call__(self, query: str) -> dict:
        with self.lock:
            self.calls += 1
            block = self.calls > self.answered
        if block:
            self.blocked.set()
            self.release.wait(DEADLINE)
        return {"response": query}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts sockets in /proc")
@pytest.mark.parametrize("channel", ["api", "mcp", "cli"])
def test_bench_measures_and_leaves_nothing_behind(served, channel, monkeypatch):
    from nexus_lab.jupyter.bench import BenchResult

    app = served.user_ns["nexus_app"]
    nexus(served, "call add a=1 --channel mcp")  # the magics' own client is open already
    threads = set(threading.enumerate())
    sockets = _socket_fds()
    children = _bench_children(monkeypatch)
    before = app.metrics.get_summary().get(channel, {}).get("count", 0)
    result = nexus(served, f"bench add -n 60 -c 4 --channel {channel} --input a=1 b=2 --quiet")
    assert isinstance(result, BenchResult)
    assert (result.requests, result.errors, result.error_counts) == (60, 0, {})
    assert result.rps > 0 and 0 < result.p50_ms <= result.p95_ms <= result.p99_ms
    frame = result.to_dataframe()
    assert len(frame) == 60 and list(frame.columns) == ["start_s", "latency_ms", "ok", "error_type", "status"]
    assert frame["ok"].all()
    assert result.chart.png.startswith(b"\x89PNG")
    assert repr(result) == f"BenchResult(name='add', channel={channel!r}, concurrency=4, requests=60, errors=0)"
    assert "<img class='nexus-bench-chart'" in result._repr_html_()
    # one uncounted first call, then the load: all recorded on that channel by the platform
    assert app.metrics.get_summary(channel)["count"] == before + 61
    # the bench's own loop thread is gone (the platform's worker pool may have grown: it
    # ends with %nexus stop, see test_dashboards_share_one_thread_that_stop_and_unload_end)
    assert [n for n in new_threads(threads) if not n.startswith("nexus-agent")] == []
    wait_for(lambda: _socket_fds() <= sockets, what="the bench's sockets to close")
    # api/cli load ran in a child process, gone and reaped; mcp load stays in the kernel
    assert len(children) == (0 if channel == "mcp" else 1)
    assert all(_reaped(proc) and proc.returncode == 0 for proc in children)
    assert result.engine == ("client" if channel == "mcp" else "http")


def test_bench_counts_errors_by_type(ip):
    ip.run_cell(
        "from nexus_lab import Nexus\n"
        "limited = Nexus(auto_discovery=False, api_port=0, mcp_port=0, rate_limit=5)"
    )
    nexus(ip, "deploy add --app limited")
    nexus(ip, "start")
    try:
        result = nexus(ip, "bench add -n 20 -c 2 --input a=1 --quiet")
        # 5 a minute: the first (uncounted) call and 4 of the load pass
        assert result.requests == 20 and result.errors == 16
        assert result.error_counts == {"rate_limited": 16}
        frame = result.to_dataframe()
        assert set(frame.loc[~frame.ok, "status"]) == {429}
    finally:
        nexus(ip, "stop")


def test_bench_with_a_duration_stops_by_itself(served):
    result = nexus(served, "bench add --duration 0.5 -c 2 --input a=1 --quiet")
    assert result.requests > 0 and result.errors == 0
    assert result.duration_s >= 0.5


def test_bench_refuses_what_it_cannot_load(ip, served):
    nexus(ip, "deploy add")
    assert "%nexus start" in _usage_error(ip, "bench add --input a=1")
    message = _usage_error(served, "bench add --input a=notanumber --quiet")
    assert message.startswith("%nexus bench add via api: ") and "'a'" in message
    assert "did you mean 'add'?" in _usage_error(served, "bench ad --input a=1 --quiet")
    assert "-c" in _usage_error(served, "bench add -c 0") or "between" in _usage_error(served, "bench add -c 0")


def test_run_bench_refuses_other_hosts():
    from nexus_lab.errors import ConfigError
    from nexus_lab.jupyter.bench import is_loopback, run_bench

    assert is_loopback("http://127.0.0.1:1") and is_loopback("http://localhost:1")
    assert is_loopback("http://[::1]:1") and not is_loopback("http://10.1.2.3:80")
    before = set(threading.enumerate())
    with pytest.raises(ConfigError, match="loopback"):
        run_bench("http://192.0.2.1:8000", "assistant", {"query": "hi"})
    with pytest.raises(ConfigError, match="loopback"):
        run_bench("http://example.com", "assistant")
    assert new_threads(before) == []


def test_run_bench_times_out_a_hung_answer_and_goes_on():
    """An answer that does not come within ``timeout`` is a ``timeout`` error (the run's
    watchdog closes its connection) and the worker goes on with the next request."""
    from nexus_lab import Nexus, deploy_multi_channel
    from nexus_lab.jupyter.bench import run_bench

    calls = []

    async def slow(query: str) -> dict:
        calls.append(query)
        if len(calls) > 1:  # the first (uncounted) call answers; the counted ones hang
            await asyncio.sleep(30)
        return {"response": query}

    app = Nexus(api_port=0, mcp_port=0, auto_discovery=False)
    deploy_multi_channel(slow, app, "slow", timeout=2)  # the server gives up later than the bench
    app.start(block=False)
    try:
        result = run_bench(app, "slow", {"query": "hi"}, requests=3, concurrency=1, timeout=0.3)
    finally:
        app.close()
    assert result.requests == 3 and result.errors == 3, result
    assert result.error_counts == {"timeout": 3}, result.error_counts
    assert len(calls) == 4  # the worker went on after each timeout, on a new connection


def test_bench_interrupted_leaves_nothing_behind(ip, monkeypatch):
    blocking = _Blocking()
    ip.user_ns["slow"] = blocking
    nexus(ip, "deploy slow")
    before = set(threading.enumerate())
    nexus(ip, "start")
    children = _bench_children(monkeypatch)
    # the first (uncounted) call blocks: interrupt it there (the load generator is already
    # starting: it overlaps that call)
    interrupter = _interrupt_when(blocking.started)
    try:
        with pytest.raises(KeyboardInterrupt):
            nexus(ip, "bench slow -n 50 -c 4 --input query=x --quiet")
        interrupter.join()
    finally:
        blocking.release.set()
    assert "nexus-bench-loop" not in new_threads(before)
    assert len(children) == 1 and _reaped(children[0])  # stopped before any load, and waited for
    nexus(ip, "stop")
    assert new_threads(before) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts sockets in /proc")
@pytest.mark.parametrize("channel", ["api", "cli"])
def test_bench_interrupted_during_the_load_stops_its_process(ip, monkeypatch, channel):
    """An interrupt while the child process loads: it is stopped and reaped, its connections
    closed, and the kernel keeps no thread of the bench."""
    slow = _AnswersThenBlocks(answered=1)  # the first call answers; the load's calls block
    ip.user_ns["slow"] = slow
    nexus(ip, "deploy slow")
    nexus(ip, "start")
    before = set(threading.enumerate())
    sockets = _socket_fds()
    children = _bench_children(monkeypatch)
    interrupter = _interrupt_when(slow.blocked)
    try:
        with pytest.raises(KeyboardInterrupt):
            nexus(ip, f"bench slow -n 50 -c 4 --channel {channel} --input query=x --quiet")
        interrupter.join()
        assert len(children) == 1 and _reaped(children[0])
        assert [n for n in new_threads(before) if not n.startswith("nexus-agent")] == []
    finally:
        slow.release.set()
    # the server's ends of the child's connections close once the blocked calls return
    wait_for(lambda: _socket_fds() <= sockets, what="the bench's connections to close")
    assert nexus(ip, "bench slow -n 5 -c 1 --input query=y --quiet").requests == 5  # it goes on
    nexus(ip, "stop")


def test_bench_whose_load_process_dies_says_so(served, monkeypatch):
    """The child killed mid-run: a clear one-line error at once (not a hang), nothing left."""
    from nexus_lab.widgets import BenchProgress

    children = _bench_children(monkeypatch)
    threads = set(threading.enumerate())
    real_update = BenchProgress.update

    def update(self: Any, snap: Any) -> None:
        real_update(self, snap)
        if snap.done and children[0].poll() is None:  # samples came back: it is loading
            children[0].kill()

    monkeypatch.setattr(BenchProgress, "update", update)
    message = _usage_error(served, f"bench add --duration {DEADLINE * 3:g} -c 2 --input a=1")
    assert message.startswith("%nexus bench: the load generator (process ")
    assert "died before the end of the run (killed by SIGKILL)" in message
    assert len(children) == 1 and _reaped(children[0])
    assert [n for n in new_threads(threads) if not n.startswith("nexus-agent")] == []
    assert nexus(served, "bench add -n 10 -c 2 --input a=1 --quiet").requests == 10  # it goes on


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="stops the child with SIGSTOP")
def test_run_bench_stops_a_load_process_that_stops_answering(served, monkeypatch):
    """A child that sends nothing (here: stopped) for STALL_S fails the run; it is killed."""
    from nexus_lab.jupyter import bench as bench_module
    from nexus_lab.jupyter.bench import BenchError, run_bench

    monkeypatch.setattr(bench_module, "STALL_S", 2.0)
    children = _bench_children(monkeypatch)

    def progress(snap: Any) -> None:
        if snap.done and children[0].poll() is None:
            os.kill(children[0].pid, signal.SIGSTOP)

    app = served.user_ns["nexus_app"]
    with pytest.raises(BenchError, match="sent nothing for 2 s"):
        run_bench(app, "add", {"a": 1}, duration=DEADLINE * 3, concurrency=2, progress=progress,
                  progress_interval=0.05)
    assert len(children) == 1 and _reaped(children[0])


def test_run_bench_reports_a_failing_load_process():
    """A load generator that fails (here: a job without a host) says why in one line; its
    traceback is kept in ``detail``; it is reaped."""
    from nexus_lab.jupyter.bench import BenchError, _Child, _Samples

    child = _Child()
    try:
        with pytest.raises(BenchError, match=r"^the load generator \(process \d+\) failed: KeyError: 'host'$") as info:
            child.run({}, _Samples(), None, 0.25, None, None)
        assert "Traceback" in info.value.detail
    finally:
        child.close()
    assert _reaped(child.proc) and child.proc.returncode == 1


def test_run_bench_load_process_reads_answers_however_they_come():
    """The child's reader on a raw server: an answer split across writes with upper-case
    names, an error answer (its type read from the body), one without Content-Length (a failed
    request: the connection is dropped and a new one opened), then a plain one."""
    import socket

    from nexus_lab.jupyter.bench import _Child, _Samples

    request = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
    error = json.dumps({"error": {"type": "overloaded", "message": "try later"}}).encode()
    answers = [
        [b"HTTP/1.1 200 OK\r\nCONTENT-LEN", b"GTH: 2\r\n\r\n{", b"}"],
        [b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: %d\r\n\r\n%s" % (len(error), error)],
        [b"HTTP/1.1 200 OK\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"],
    ]
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(DEADLINE)
    connections: list[int] = []

    def serve() -> None:
        pending = list(answers)
        with listener:
            while pending:
                conn, _ = listener.accept()
                conn.settimeout(DEADLINE)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connections.append(1)
                with conn:
                    while pending:
                        got = b""
                        while len(got) < len(request):
                            chunk = conn.recv(len(request) - len(got))
                            if not chunk:
                                break
                            got += chunk
                        if not got:
                            break  # the client closed this connection: accept the next
                        for piece in pending.pop(0):
                            conn.sendall(piece)

    server = threading.Thread(target=serve, name="test-raw-server")
    server.start()
    job = {"host": "127.0.0.1", "port": listener.getsockname()[1], "request": request.decode("latin-1"),
           "concurrency": 1, "requests": 4, "duration": None, "timeout": DEADLINE, "flush": 0.05}
    samples = _Samples()
    child = _Child()
    try:
        duration = child.run(job, samples, None, 0.25, 4, None)
    finally:
        child.close()
        server.join(DEADLINE)
    result = samples.result(duration, name="raw", channel="api", concurrency=1, engine="http")
    assert result.statuses == [200, 503, None, 200]
    assert result.error_types == [None, "overloaded", "connection_error", None]
    assert result.error_counts == {"connection_error": 1, "overloaded": 1}
    assert len(connections) == 2 and not server.is_alive()


def test_run_bench_streams_samples_while_it_runs():
    """The progress view fills in from the child's batches during the run, not at its end:
    the load's 6th call blocks until a progress snapshot has shown the first 5."""
    from nexus_lab import Nexus, deploy_multi_channel
    from nexus_lab.jupyter.bench import run_bench

    gated = _AnswersThenBlocks(answered=6)  # the first (uncounted) call, then 5 of the load
    seen: list[Any] = []

    def progress(snap: Any) -> None:
        seen.append(snap)
        if snap.done >= 5:
            gated.release.set()

    app = Nexus(api_port=0, mcp_port=0, auto_discovery=False)
    deploy_multi_channel(gated, app, "gated")
    app.start(block=False)
    try:
        result = run_bench(app, "gated", {"query": "hi"}, requests=20, concurrency=1,
                           progress=progress, progress_interval=0.05)
    finally:
        gated.release.set()
        app.close()
    assert (result.requests, result.errors) == (20, 0)
    first = next(snap for snap in seen if snap.done >= 5)
    assert first.done == 5 and len(first.samples) == 5  # seen while the 6th call was blocked
    assert first is not seen[-1] and seen[-1].done == 20


def test_bench_live_view_fills_in_and_goes(served, monkeypatch):
    from nexus_lab.jupyter import bench as bench_module
    from nexus_lab.widgets import BenchProgress

    views: list[Any] = []
    real_update = BenchProgress.update

    def update(self: Any, snap: Any) -> None:
        views.append((self, snap.done))
        real_update(self, snap)

    monkeypatch.setattr(BenchProgress, "update", update)
    result = nexus(served, "bench add -n 200 -c 4 --input a=1")
    assert result.requests == 200
    assert views, "the live view was never updated"
    view = views[-1][0]
    assert views[-1][1] == 200  # the final snapshot
    assert view.frames >= 1 and view.chart.value.startswith("<svg")
    assert view.comm is None  # closed at the end: the result shows the final chart
    assert repr(view) == "BenchProgress(name='add', channel='api')"
    assert bench_module.DEFAULT_REQUESTS == 200
