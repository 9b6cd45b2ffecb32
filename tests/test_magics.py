"""The ``%nexus`` magics on a plain InteractiveShell, with real servers on free ports."""

from __future__ import annotations

import json
import subprocess
import sys

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
'''


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
    assert result.session_id not in repr(result)
    assert result.session_id not in result._repr_html_()
    assert repr(result) == (
        f"CallResult(name='assistant', channel={channel!r}, "
        f"response='[mock:mock-model] You said: hello {channel}')"
    )
    assert result.json["session_id"] == result.session_id
    assert app.metrics.get_summary(channel)["count"] == before + 1  # recorded on that channel
    added = nexus(served, f"call add a=2 b=40 --channel {channel}")
    assert added.outputs == {"sum": 42}
    assert nexus(served, f"call add a=1 --json --channel {channel}")["outputs"] == {"sum": 2}


def _client_threads() -> set:
    import threading

    return {t for t in threading.enumerate() if t.name == "nexus-client-loop"}


def test_calls_reuse_one_client_until_stop(ip):
    from nexus_lab.client import NexusClient

    magics = ip.magics_manager.registry["NexusMagics"]
    others = _client_threads()  # e.g. the clients of the module's `served` shell
    nexus(ip, "deploy add")
    nexus(ip, "start")
    app = ip.user_ns["nexus_app"]
    try:
        assert nexus(ip, "call add a=1").outputs == {"sum": 2}
        (entry,) = magics._clients.values()
        client = entry[2]
        assert isinstance(client, NexusClient)
        for line in ("call add a=2", "call add a=3 --channel mcp", "call add a=4 --channel mcp"):
            nexus(ip, line)
        assert list(magics._clients.values()) == [entry]  # one client: one pool, one MCP session
        assert client._mcp is not None and len(_client_threads() - others) == 1
        assert nexus(ip, "call add a=1 --api-key other").outputs == {"sum": 2}  # auth off: any key
        assert len(magics._clients) == 2  # one client per key
    finally:
        nexus(ip, "stop")
    assert magics._clients == {} and client._closed
    assert _client_threads() - others == set()
    nexus(ip, "start")
    try:
        nexus(ip, "call add a=1 --channel mcp")
        (entry,) = magics._clients.values()
        assert entry[2] is not client  # a new client for the new servers
        app.stop()  # stopped behind the magics' back: the next call closes the stale client
        assert nexus(ip, "call add a=5").in_process
        assert magics._clients == {} and _client_threads() - others == set()
    finally:
        nexus(ip, "stop")


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
    assert repr(table) == (
        "SessionTable(2 sessions)\n"
        "  user='anonymous' channels=['api'] keys=['last_query', 'last_response', 'last_channel', "
        "'turns', 'history'] turns=2\n"
        "  user='bob' channels=[] keys=[] turns=0"
    )
    html = table._repr_html_()
    assert "<table" in html and a.session_id not in html and a.session_id not in repr(table)
    bob = nexus(ip, "sessions --user bob")
    assert [r.user for r in bob] == ["bob"]
    assert repr(bob).startswith("SessionTable(1 session, user='bob')")


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
    text = repr(result) + result._repr_html_()
    assert "0123456789abcdef" not in text and "1.5" not in text
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
