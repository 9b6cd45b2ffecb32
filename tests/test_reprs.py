"""Stable notebook reprs (nexus_lab.render, nexus_lab.jupyter.results and the nbval masks).

nbval compares ``text/plain`` and ``text/html``: what is rendered here must not
change from run to run (no ids, addresses, ports, timestamps, durations).
"""

from __future__ import annotations

import re

import pytest

from nexus_lab import AIAssistant, deploy_as_api, deploy_multi_channel, deploy_with_sessions
from nexus_lab.metrics import PerformanceMetrics
from nexus_lab.render import (
    metrics_html,
    nexus_html,
    nexus_text,
    session_html,
    state_tree_html,
    value_text,
)
from nexus_lab.sessions import NexusSessionManager

VOLATILE = [
    re.compile(r"https?://"),
    re.compile(r"127\.0\.0\.1"),
    re.compile(r":\d{2,5}\b"),           # a port
    re.compile(r"\b\d{9,}\b"),           # epoch seconds
    re.compile(r"\d+\.\d+ ?(ms|s)\b"),   # a duration
]


def assert_stable_text(text: str) -> None:
    for pattern in VOLATILE:
        assert not pattern.search(text), f"{pattern.pattern!r} found in {text!r}"


def _greet(name: str, times: int = 1) -> dict:
    """Greet <someone> & more."""
    return {"response": " ".join([f"hello {name}"] * times)}


def _build(make_app, **kwargs):
    app = make_app(**kwargs)
    deploy_multi_channel(AIAssistant(), app, "assistant")
    deploy_as_api(_greet, app, "greet")
    return app


def test_two_apps_on_different_ports_render_identically(make_app) -> None:
    one, two = _build(make_app), _build(make_app)
    assert nexus_html(one) == nexus_html(two)
    assert repr(one) == repr(two) and nexus_text(one) == nexus_text(two)

    one.start(block=False)
    two.start(block=False)
    try:
        assert one.api_url != two.api_url
        html1, html2 = one._repr_html_(), two._repr_html_()
        assert html1 == html2 == nexus_html(one)
        assert_stable_text(html1)
        assert repr(one) == repr(two)
        assert_stable_text(repr(one))
        assert nexus_text(one) == nexus_text(two)
        assert "serving" in html1 and "app.api_url" in html1
        for url in (one.api_url, one.mcp_url, two.api_url):
            port = url.rsplit(":", 1)[1].split("/")[0]
            assert port not in html1
    finally:
        one.stop()
        two.stop()
    assert nexus_html(one) == nexus_html(two)
    assert "stopped" in nexus_html(one)


def test_nexus_html_content(make_app) -> None:
    app = _build(make_app, enable_monitoring=True, rate_limit=60)
    html = nexus_html(app)
    assert_stable_text(html)
    for text in ("assistant", "greet", "registered", "query: str", "name: str",
                 "times: int = 1", "monitoring on", "rate limit 60/min", "auth off",
                 "nexus-app-channel-api", "nexus-state-registered", "app.start(block=False)"):
        assert text in html, text
    # the live widget's row class is kept for the widget (browser tests look for it)
    assert "nexus-channel-api" not in html
    # API row lists both deployments, MCP only the multi-channel one
    api_row = re.search(r"<tr class='nexus-app-channel nexus-app-channel-api.*?</tr>", html).group(0)
    mcp_row = re.search(r"<tr class='nexus-app-channel nexus-app-channel-mcp.*?</tr>", html).group(0)
    assert "greet" in api_row and "greet" not in mcp_row
    # descriptions are escaped
    assert "Greet &lt;someone&gt; &amp; more." in html
    assert "<someone>" not in html
    assert nexus_text(app) == "Nexus(deployments=['assistant', 'greet'], api=registered, cli=registered, mcp=registered)"


def test_nexus_html_without_deployments(make_app) -> None:
    html = make_app()._repr_html_()
    assert "No deployments yet" in html
    assert "0 deployments" in html


def test_nexus_html_shows_sessions_column(make_app) -> None:
    app = make_app()
    with NexusSessionManager(cleanup_interval=300) as manager:
        deploy_with_sessions(AIAssistant(), app, "chat", manager)
        html = nexus_html(app)
    row = re.search(r"<tr class='nexus-deployment'>.*?</tr>", html).group(0)
    assert ">yes<" in row


def test_nexus_html_shows_a_failed_channel(make_app, free_port) -> None:
    import socket

    from nexus_lab.errors import PortInUseError

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        app = make_app(api_port=port)
        with pytest.raises(PortInUseError):
            app.start(block=False)
    html = nexus_html(app)
    assert "nexus-state-failed" in html and ">failed<" in html
    assert "nexus-error" in html


def test_session_html_is_stable() -> None:
    with NexusSessionManager(cleanup_interval=300) as manager:
        htmls = []
        for _ in range(2):
            s = manager.create_session(user_id="user-123", metadata={"team": "a"})
            manager.update_session_state(
                s.session_id, {"query": "What is AI?", "history": [{"q": 1}, {"q": 2}]}, channel="api"
            )
            manager.get_session_state(s.session_id, channel="cli")
            session = manager.get_session(s.session_id)
            html = session_html(session)
            assert s.session_id not in html
            assert_stable_text(html)
            htmls.append(html)
    assert htmls[0] == htmls[1]
    for text in ("user-123", "api, cli", "What is AI?", "history", "team"):
        assert text in htmls[0], text
    assert "unknown or expired" in session_html(None)


def test_metrics_html_is_stable_by_default() -> None:
    fast, slow = PerformanceMetrics(), PerformanceMetrics()
    for m, d in ((fast, 0.001), (slow, 0.250)):
        m.record("api", d)
        m.record("api", d, success=False)
        m.record("workflow:assistant", d)
    assert metrics_html(fast) == metrics_html(slow)
    assert_stable_text(metrics_html(fast))
    assert "ms" not in metrics_html(fast)
    timed = metrics_html(slow, timings=True)
    assert "p95 ms" in timed and "250.00" in timed
    assert "No samples" in metrics_html(PerformanceMetrics())


def test_state_tree_nests_escapes_and_truncates() -> None:
    value = {
        "html": "<script>alert(1)</script>",
        "nested": {"a": {"b": {"c": [1, 2, 3]}}},
        "many": list(range(80)),
        "long": "x" * 1000,
        "none": None,
    }
    html = state_tree_html(value)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "… 30 more" in html
    assert "x" * 1000 not in html and "…" in html
    assert "null" in html
    assert "<details" in html
    deep: dict = {}
    cur = deep
    for i in range(10):
        cur["k"] = {"level": i}
        cur = cur["k"]
    assert "keys}" in state_tree_html(deep)  # deep levels are summarised
    assert value_text("a" * 300).endswith("…")
    assert value_text(object()).startswith('"<object object')


# ----------------------------------------------------------------------------- results
def _sanitizer():
    """The tutorials' nbval masks (notebooks/nbval-sanitize.cfg), as nbval applies them."""
    import configparser
    from pathlib import Path

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "notebooks" / "nbval-sanitize.cfg")
    patterns = [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]

    def sanitize(text: str) -> str:
        for regex, replace in patterns:
            text = regex.sub(replace, text)
        return text

    return sanitize


def _call_result(session_id: str | None):
    from nexus_lab.jupyter.results import CallResult

    return CallResult(name="assistant", channel="api", transport="http", outputs={"response": "hi"},
                      session_id=session_id, json={"outputs": {"response": "hi"}, "session_id": session_id})


def test_session_ids_are_shown_and_masked_for_nbval() -> None:
    sanitize = _sanitizer()
    a, b = _call_result("5d1c2e7a9b0f4e11aa"), _call_result("Zz_-9b0f4e11aa5d1c")
    assert "5d1c2e7a\u2026" in repr(a) and "5d1c2e7a9b0f4e11aa" in a._repr_html_()
    assert repr(a) != repr(b)
    assert sanitize(repr(a)) == sanitize(repr(b)) == (
        "CallResult(name='assistant', channel='api', session='SESSION-ID', response='hi')"
    )
    assert sanitize(a._repr_html_()) == sanitize(b._repr_html_())
    assert "SESSION-ID" in sanitize(a._repr_html_())
    none = _call_result(None)
    assert "session" not in repr(none) and "no session" in none._repr_html_()


def test_session_table_masks_the_same_way() -> None:
    from nexus_lab.jupyter.results import SessionTable

    sanitize = _sanitizer()
    tables = []
    for _ in range(2):
        manager = NexusSessionManager(cleanup_interval=300)
        try:
            s = manager.create_session(user_id="u1")
            manager.update_session_state(s.session_id, {"turns": 2}, channel="api")
            tables.append(SessionTable(manager.list_sessions()))
        finally:
            manager.close()
    texts = [(sanitize(repr(t)), sanitize(t._repr_html_())) for t in tables]
    assert texts[0] == texts[1]
    assert texts[0][0] == "SessionTable(1 session)\n  id='SESSION-ID' user='u1' channels=['api'] keys=['turns'] turns=2"
    assert tables[0].session_ids[0] not in texts[0][1]


def test_bench_result_repr_is_stable_and_its_html_masks() -> None:
    from nexus_lab.jupyter.bench import BenchResult

    sanitize = _sanitizer()
    results = []
    for scale in (1.0, 3.0):
        n = 20
        results.append(BenchResult(
            name="assistant", channel="api", concurrency=4, requests=n, errors=1, duration_s=0.1 * scale,
            error_counts={"rate_limited": 1}, starts=[i * 0.005 * scale for i in range(n)],
            latencies_ms=[scale * (1 + i % 4) for i in range(n)], oks=[i != 3 for i in range(n)],
            error_types=[None if i != 3 else "rate_limited" for i in range(n)],
            statuses=[200 if i != 3 else 429 for i in range(n)],
        ))
    a, b = results
    assert repr(a) == repr(b) == (
        "BenchResult(name='assistant', channel='api', concurrency=4, requests=20, errors=1)"
    )
    assert a.rps == pytest.approx(200.0) and a.p50_ms == pytest.approx(2.0)  # of the 19 that passed
    assert a.error_counts == {"rate_limited": 1}
    assert sanitize(a._repr_html_()) == sanitize(b._repr_html_())
    assert "rate_limited" in a._repr_html_()
    frame = a.to_dataframe()
    assert len(frame) == 20 and frame["status"].tolist()[3] == 429


def test_call_error_and_log_table_reprs_hold_no_ids() -> None:
    from nexus_lab.jupyter.logs import LogEntry
    from nexus_lab.jupyter.results import CallError, LogTable

    err = CallError(name="flaky", channel="api", transport="http", error_type="agent_error",
                    message="ZeroDivisionError: division by zero", error_id="3f2a9c81d0e4",
                    traceback="Traceback (most recent call last):\n...")
    assert "3f2a9c81d0e4" not in repr(err)
    assert err.line() == (
        "flaky via api: ZeroDivisionError: division by zero [agent_error, error id 3f2a9c81d0e4]; "
        "traceback: %nexus last-error"
    )
    entry = LogEntry(created=1_800_000_000.5, level="ERROR", levelno=40, logger="nexus_lab",
                     message="deployment 'flaky' failed (error id 3f2a9c81d0e4)", error_id="3f2a9c81d0e4")
    assert repr(LogTable([entry], level="ERROR")) == "LogTable(level='ERROR', records={'ERROR': 1})"
    assert_stable_text(repr(entry))
