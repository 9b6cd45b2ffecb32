"""Tests of the live widgets (nexus_lab.jupyter.widgets), without a browser.

Widget state lives in traitlets, so it is asserted directly; without a kernel
``widget.comm`` is a dummy comm. Background refreshes are awaited by polling
with a generous deadline, never by timing assertions.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

import ipywidgets  # noqa: E402

from nexus_lab import AIAssistant, deploy_multi_channel  # noqa: E402
from nexus_lab.jupyter._refresh import (  # noqa: E402
    MIN_INTERVAL,
    THREAD_NAME,
    Refresher,
    clamp_interval,
    scheduler,
)
from nexus_lab.metrics import PerformanceMetrics  # noqa: E402
from nexus_lab.sessions import NexusSessionManager  # noqa: E402
from nexus_lab.widgets import (  # noqa: E402
    ChannelStatus,
    Dashboard,
    LogView,
    MetricsDashboard,
    SessionInspector,
)

PNG = b"\x89PNG\r\n\x1a\n"
DEADLINE = 15.0


def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def refresh_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


@pytest.fixture(autouse=True)
def no_leaked_subscriptions() -> Iterator[None]:
    """Every test ends with no widget subscribed, hence no refresh thread."""
    yield
    assert scheduler().subscriptions == 0, "a widget of this test was left refreshing"
    assert refresh_threads() == []


@pytest.fixture
def closing() -> Iterator[Callable[[Any], Any]]:
    """Register widgets to close at teardown (even when a test fails)."""
    opened: list[Any] = []

    def register(widget: Any) -> Any:
        opened.append(widget)
        return widget

    yield register
    for widget in opened:
        widget.close()


@pytest.fixture
def manager() -> Iterator[NexusSessionManager]:
    # An increasing fake clock: creation order is unambiguous, nothing expires.
    now = [1_800_000_000.0]
    lock = threading.Lock()

    def clock() -> float:
        with lock:
            now[0] += 1.0
            return now[0]

    m = NexusSessionManager(cleanup_interval=300, session_ttl=10**6, clock=clock)
    yield m
    m.close()


def _greet(name: str, times: int = 1) -> dict:
    """Greet someone."""
    return {"response": " ".join([f"hello {name}"] * times)}


# ----------------------------------------------------------------------------- ChannelStatus
def test_channel_status_follows_start_and_stop(make_app, closing) -> None:
    app = make_app()
    deploy_multi_channel(AIAssistant(), app, "assistant")
    status = closing(ChannelStatus(app, refresh_interval=0.1))

    assert status.states == {"api": "registered", "cli": "registered", "mcp": "registered"}
    assert status.urls == {"api": None, "cli": None, "mcp": None}
    assert status.deployments == {"api": ["assistant"], "cli": ["assistant"], "mcp": ["assistant"]}
    assert "nexus-channel-api" in status.view.value
    assert ">registered<" in status.view.value

    app.start(block=False)
    try:
        wait_for(lambda: status.states.get("api") == "serving" and status.states.get("mcp") == "serving",
                 what="serving")
        wait_for(lambda: status.urls.get("api") == app.api_url, what="urls")
        assert status.urls["mcp"] == app.mcp_url
        html = status.view.value
        for ch in ("api", "mcp"):
            assert f"nexus-channel {'nexus-channel-' + ch} nexus-state-serving" in html
        assert ">serving<" in html
        assert app.api_url in html
    finally:
        app.stop()
    wait_for(lambda: set(status.states.values()) == {"stopped"}, what="stopped")
    assert status.urls == {"api": None, "cli": None, "mcp": None}
    assert "nexus-state-stopped" in status.view.value
    assert status.error == ""
    assert status.thread is not None and status.thread.is_alive()


def test_channel_status_request_counts_need_monitoring(make_app, closing) -> None:
    app = make_app(enable_monitoring=True)
    deploy_multi_channel(AIAssistant(), app, "assistant")
    status = closing(ChannelStatus(app, auto_refresh=False))
    assert status.counts == {"api": 0, "cli": 0, "mcp": 0}
    app.invoke("assistant", {"query": "a"}, channel="api")
    app.invoke("assistant", {"query": "b"}, channel="api")
    app.invoke("assistant", {"query": "c"}, channel="mcp")
    status.refresh()
    assert status.counts == {"api": 2, "cli": 0, "mcp": 1}

    quiet = make_app()
    deploy_multi_channel(AIAssistant(), quiet, "assistant")
    quiet.invoke("assistant", {"query": "a"})
    plain = closing(ChannelStatus(quiet, auto_refresh=False))
    assert plain.counts == {}
    assert "enable_monitoring=True" in plain.view.value
    assert plain.thread is None


def test_channel_status_shows_per_channel_deployments(make_app, closing) -> None:
    from nexus_lab import deploy_as_api, deploy_as_mcp

    app = make_app()
    deploy_as_api(AIAssistant(), app, "only-api")
    deploy_as_mcp(_greet, app, "greet")
    status = closing(ChannelStatus(app, auto_refresh=False))
    assert status.deployments == {"api": ["only-api"], "cli": [], "mcp": ["greet"]}


# ----------------------------------------------------------------------------- SessionInspector
def test_inspector_shows_new_state_within_its_interval(manager, closing) -> None:
    first = manager.create_session(user_id="alice")
    second = manager.create_session(user_id="bob")
    inspector = closing(SessionInspector(manager, refresh_interval=0.1))

    # newest first, newest selected
    assert inspector.session_ids == [second.session_id, first.session_id]
    assert inspector.selected == second.session_id
    assert inspector.state == {}

    manager.update_session_state(second.session_id, {"query": "What is AI?"}, channel="cli")
    wait_for(lambda: inspector.state.get("query") == "What is AI?", what="the new key")
    wait_for(lambda: any(e["action"] == "update" for e in inspector.events), what="the update event")
    update = [e for e in inspector.events if e["action"] == "update"][-1]
    assert update["channel"] == "cli"
    assert update["keys"] == ["query"]
    assert inspector.writers == {"query": "cli"}
    assert inspector.channel_activity["cli"] == {"update": 1}
    assert "What is AI?" in inspector.state_view.value
    assert "cli" in inspector.timeline_view.value
    assert inspector.manager_metrics["active_sessions"] == 2

    # a session created later is listed, the selection stays
    third = manager.create_session(user_id="carol")
    wait_for(lambda: third.session_id in inspector.session_ids, what="the new session")
    assert inspector.session_ids[0] == third.session_id
    assert inspector.selected == second.session_id


def test_inspector_reads_without_touching(manager, closing) -> None:
    session = manager.create_session(user_id="alice")
    manager.update_session_state(session.session_id, {"a": 1}, channel="api")
    before_events = manager.get_session_events(session.session_id)
    before = manager.list_sessions()[0]

    inspector = closing(SessionInspector(manager, refresh_interval=0.1))
    start = inspector.refresh_count
    wait_for(lambda: inspector.refresh_count >= start + 5, what="several refreshes")
    inspector.refresh()

    assert manager.get_session_events(session.session_id) == before_events
    assert not any(e.action == "read" for e in manager.get_session_events(session.session_id))
    after = manager.list_sessions()[0]
    assert (after.last_accessed, after.expires_at) == (before.last_accessed, before.expires_at)
    assert manager.get_session_metrics()["channel_activity"] == {"api": 1}
    assert [e["action"] for e in inspector.events] == [e.action for e in before_events]


def test_inspector_user_filter_narrows_the_list(manager, closing) -> None:
    a1 = manager.create_session(user_id="user-1")
    a10 = manager.create_session(user_id="user-10")
    b = manager.create_session(user_id="bob")
    a1b = manager.create_session(user_id="user-1")
    inspector = closing(SessionInspector(manager, auto_refresh=False))
    assert inspector.session_ids == [a1b.session_id, b.session_id, a10.session_id, a1.session_id]

    inspector.user_filter = "user-1"  # an exact user id: only that user
    assert inspector.session_ids == [a1b.session_id, a1.session_id]
    assert inspector.selected == a1b.session_id
    assert inspector.filter_box.value == "user-1"

    inspector.filter_box.value = "USER"  # typed in the box: case-insensitive substring
    assert inspector.user_filter == "USER"
    assert inspector.session_ids == [a1b.session_id, a10.session_id, a1.session_id]

    inspector.user_filter = "nobody"
    assert inspector.session_ids == []
    assert inspector.selected is None
    assert inspector.state == {} and inspector.events == []

    inspector.user_filter = ""
    assert len(inspector.session_ids) == 4

    only_bob = closing(SessionInspector(manager, auto_refresh=False, user_id="bob"))
    assert only_bob.session_ids == [b.session_id]
    assert only_bob.selected == b.session_id


def test_inspector_selection(manager, closing) -> None:
    old = manager.create_session(user_id="alice")
    manager.update_session_state(old.session_id, {"color": "blue"}, channel="mcp")
    new = manager.create_session(user_id="alice")
    inspector = closing(SessionInspector(manager, auto_refresh=False))
    assert inspector.selected == new.session_id

    inspector.selected = old.session_id
    assert inspector.state == {"color": "blue"}
    assert inspector.session_list.value == old.session_id
    assert inspector.channel_activity["mcp"] == {"update": 1}

    inspector.session_list.value = new.session_id  # a click in the list
    assert inspector.selected == new.session_id
    assert inspector.state == {}

    # a session created after the last listing can be selected at once
    newest = manager.create_session(user_id="dave")
    manager.update_session_state(newest.session_id, {"k": [1, {"x": 2}]}, channel="api")
    inspector.selected = newest.session_id
    assert inspector.state == {"k": [1, {"x": 2}]}

    # the selected session disappears: the newest remaining one is selected
    manager.delete_session(newest.session_id)
    inspector.refresh()
    assert newest.session_id not in inspector.session_ids
    assert inspector.selected == new.session_id


def test_inspector_accepts_an_app(make_app, closing) -> None:
    app = make_app()
    session = app.session_manager.create_session(user_id="u")
    inspector = closing(SessionInspector(app, auto_refresh=False))
    assert inspector.manager is app.session_manager
    assert inspector.session_ids == [session.session_id]


# ----------------------------------------------------------------------------- MetricsDashboard
def test_metrics_dashboard_redraws_only_on_change(closing) -> None:
    metrics = PerformanceMetrics()
    dash = closing(MetricsDashboard(metrics, auto_refresh=False))
    assert dash.frames == 1  # the empty chart
    assert bytes(dash.image.value).startswith(PNG)
    assert dash.summary == {} and dash.categories == []

    metrics.record("api", 0.010)
    metrics.record("api", 0.030, success=False)
    metrics.record("workflow:assistant", 0.020)
    dash.refresh()
    assert dash.frames == 2
    assert dash.categories == ["api", "workflow:assistant"]
    assert dash.summary["api"]["count"] == 2
    assert dash.summary["api"]["errors"] == 1
    assert bytes(dash.image.value).startswith(PNG)
    assert "p95 ms" in dash.table.value and "workflow:assistant" in dash.table.value

    png = bytes(dash.image.value)
    dash.refresh()
    dash.refresh()
    assert dash.frames == 2  # nothing changed: no redraw
    assert bytes(dash.image.value) == png
    assert dash.version == metrics.version


def test_metrics_dashboard_follows_live_metrics(closing) -> None:
    metrics = PerformanceMetrics()
    dash = closing(MetricsDashboard(metrics, refresh_interval=0.1))
    frames = dash.frames
    for i in range(20):
        metrics.record("mcp", 0.001 * (i + 1))
    wait_for(lambda: dash.summary.get("mcp", {}).get("count") == 20, what="the mcp summary")
    assert dash.frames > frames
    assert bytes(dash.image.value).startswith(PNG)
    # idle: the thread keeps ticking but does not redraw
    settled = dash.frames
    ticks = dash._refresher.ticks
    wait_for(lambda: dash._refresher.ticks >= ticks + 3, what="idle ticks")
    assert dash.frames == settled


def test_metrics_dashboard_accepts_an_app(make_app, closing) -> None:
    app = make_app(enable_monitoring=True)
    deploy_multi_channel(AIAssistant(), app, "assistant")
    app.invoke("assistant", {"query": "hi"}, channel="cli")
    dash = closing(MetricsDashboard(app, auto_refresh=False))
    assert dash.metrics is app.metrics
    assert set(dash.categories) == {"cli", "workflow:assistant", "agent:cli"}


# ----------------------------------------------------------------------------- Dashboard
def test_dashboard_has_four_tabs_on_one_thread_and_closes_them(make_app) -> None:
    app = make_app(enable_monitoring=True)
    deploy_multi_channel(AIAssistant(), app, "assistant")
    app.session_manager.create_session(user_id="u")
    dash = Dashboard(app, refresh_interval=0.1)
    try:
        assert isinstance(dash, ipywidgets.Tab)
        assert tuple(dash.titles) == ("Channels", "Sessions", "Metrics", "Server log")
        assert [type(c) for c in dash.children] == [ChannelStatus, SessionInspector, MetricsDashboard, LogView]
        assert dash.sessions.manager is app.session_manager
        assert dash.metrics.metrics is app.metrics
        threads = {v.thread for v in dash.views}
        assert len(threads) == 1  # one shared refresh thread for the four views
        (thread,) = threads
        assert thread.is_alive() and thread.name == THREAD_NAME and thread.daemon
        assert all(v.watches(app) for v in dash.views)
    finally:
        dash.close()
    assert not thread.is_alive()  # the last subscription gone: the thread ended
    assert all(v.closed and v.comm is None for v in dash.views)
    assert dash.comm is None
    dash.close()  # idempotent


def test_a_dashboard_never_creates_a_session_manager(make_app) -> None:
    app = make_app()
    deploy_multi_channel(AIAssistant(), app, "assistant")
    before = set(threading.enumerate())
    dash = Dashboard(app, auto_refresh=False)
    try:
        assert app._session_manager is None  # no manager (and no cleanup thread) made to show none
        assert dash.sessions.session_ids == []
        assert "no session manager" in dash.sessions.summary_view.value
        session = app.session_manager.create_session(user_id="later")  # the app makes one later
        dash.refresh()
        assert dash.sessions.session_ids == [session.session_id]
    finally:
        dash.close()
    assert [t for t in threading.enumerate() if t not in before and t.name == THREAD_NAME] == []


def test_four_dashboards_one_thread(make_app) -> None:
    app = make_app(enable_monitoring=True)
    before = set(threading.enumerate())
    dashboards = [Dashboard(app, refresh_interval=0.1) for _ in range(4)]
    try:
        started = [t.name for t in threading.enumerate() if t not in before]
        assert started == [THREAD_NAME]
        assert scheduler().subscriptions == 16
        wait_for(lambda: all(v.refresh_count >= 2 for d in dashboards for v in d.views),
                 what="every view to refresh from the one thread")
    finally:
        for dash in dashboards:
            dash.close()
    assert [t for t in threading.enumerate() if t not in before] == []


# ----------------------------------------------------------------------------- refresher
def test_close_stops_the_thread_and_is_idempotent(make_app) -> None:
    app = make_app()
    metrics = PerformanceMetrics()
    manager = app.session_manager
    makers = (lambda: ChannelStatus(app), lambda: SessionInspector(manager),
              lambda: MetricsDashboard(metrics), LogView)
    for make in makers:  # one at a time: each is the thread's only subscriber
        widget = make()
        thread = widget.thread
        assert thread is not None and thread.is_alive() and thread.daemon
        assert widget.refreshing
        children = list(widget.children)
        widget.close()
        assert not thread.is_alive()  # it was the only subscriber
        assert widget.thread is None and not widget.refreshing
        assert widget.comm is None
        assert all(child.comm is None for child in children)
        widget.close()
        widget.refresh()  # a closed widget ignores refreshes


def test_front_end_close_stops_the_thread(manager) -> None:
    inspector = SessionInspector(manager, refresh_interval=0.1)
    thread = inspector.thread
    assert thread is not None and thread.is_alive()
    inspector.comm.handle_close({"content": {"data": {}}})  # what a front-end comm_close triggers
    assert not thread.is_alive()
    assert inspector.closed


def test_auto_refresh_can_be_paused_and_resumed(manager) -> None:
    inspector = SessionInspector(manager, refresh_interval=0.1)
    try:
        first = inspector.thread
        inspector.auto_refresh = False
        assert inspector.thread is None and not first.is_alive() and not inspector.refreshing
        inspector.auto_refresh = True
        second = inspector.thread
        assert second is not None and second.is_alive() and second is not first
        assert inspector.refreshing
        inspector.refresh_interval = 0.0
        assert inspector.refresh_interval == MIN_INTERVAL
        assert inspector._refresher.interval == MIN_INTERVAL
    finally:
        inspector.close()


def test_refresh_interval_is_clamped(manager, closing) -> None:
    assert clamp_interval(0) == MIN_INTERVAL
    assert clamp_interval(2) == 2.0
    with pytest.raises(ValueError):
        clamp_interval("fast")
    with pytest.raises(ValueError):
        clamp_interval(True)
    inspector = closing(SessionInspector(manager, refresh_interval=0.001, auto_refresh=False))
    assert inspector.refresh_interval == MIN_INTERVAL


class _FlakyManager:
    """A session manager whose listing fails while ``broken`` is set."""

    def __init__(self, real: NexusSessionManager) -> None:
        self.real = real
        self.broken = False

    def list_sessions(self, user_id: str | None = None) -> list:
        if self.broken:
            raise RuntimeError("store unavailable")
        return self.real.list_sessions(user_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_refresh_error_is_recorded_and_the_thread_keeps_going(manager, closing) -> None:
    flaky = _FlakyManager(manager)
    inspector = closing(SessionInspector(flaky, refresh_interval=0.1))
    assert inspector.error == ""
    flaky.broken = True
    wait_for(lambda: "store unavailable" in inspector.error, what="the error")
    assert inspector.error_count >= 1
    assert "RuntimeError" in inspector.error
    assert "store unavailable" in inspector._error_label.value
    failures = inspector.error_count
    wait_for(lambda: inspector.error_count > failures, what="more failed ticks")
    assert inspector.thread.is_alive()

    with pytest.raises(RuntimeError):
        inspector.refresh()  # an explicit refresh raises (and records)

    flaky.broken = False
    session = manager.create_session(user_id="back")
    wait_for(lambda: inspector.error == "", what="recovery")
    wait_for(lambda: session.session_id in inspector.session_ids, what="the listing after recovery")
    assert inspector._error_label.value == ""
    assert inspector.thread.is_alive()


def test_a_widget_failing_at_construction_still_builds(closing) -> None:
    class Broken:
        version = 0

        def get_summary(self) -> dict:
            raise KeyError("boom")

        def categories(self) -> list:
            return []

    dash = closing(MetricsDashboard(Broken(), auto_refresh=False))
    assert "boom" in dash.error
    assert dash.frames == 0


def test_refresher_ends_when_its_target_is_collected() -> None:
    class Target:
        def __init__(self) -> None:
            self.ticks = 0

        def _tick(self) -> None:
            self.ticks += 1

    target = Target()
    refresher = Refresher(target, 0.1)
    refresher.start()
    wait_for(lambda t=target: t.ticks >= 2, what="ticks")
    ref = weakref.ref(target)
    del target
    gc.collect()
    assert ref() is None
    wait_for(lambda: not refresher.is_alive, what="the thread to end")
    refresher.stop()  # still fine


def test_refresher_survives_errors_without_a_handler() -> None:
    class Failing:
        calls = 0

        def _tick(self) -> None:
            Failing.calls += 1
            raise ValueError("nope")

    target = Failing()
    refresher = Refresher(target, 0.1)
    refresher.start()
    try:
        wait_for(lambda: refresher.failures >= 3, what="repeated failures")
        assert refresher.is_alive
    finally:
        refresher.stop()
    assert not refresher.is_alive
    assert "stopped" in repr(refresher)


def test_closed_widget_can_be_collected(manager) -> None:
    inspector = SessionInspector(manager, refresh_interval=0.1)
    thread = inspector.thread
    ref = weakref.ref(inspector)
    inspector.close()
    del inspector
    gc.collect()
    assert ref() is None
    assert not thread.is_alive()


def test_widget_text_reprs_are_stable(make_app) -> None:
    # nbval skips the widget-view mime type but compares the text/plain beside it
    texts = []
    for _ in range(2):
        app = make_app(enable_monitoring=True)
        deploy_multi_channel(AIAssistant(), app, "assistant")
        app.session_manager.create_session(user_id="u")
        app.invoke("assistant", {"query": "hi"})
        dash = Dashboard(app, refresh_interval=0.2)
        try:
            texts.append([w._repr_mimebundle_()["text/plain"] for w in (dash, *dash.views)])
        finally:
            dash.close()
    assert texts[0] == texts[1]
    assert texts[0] == [
        "Dashboard(tabs=['Channels', 'Sessions', 'Metrics', 'Server log'])",
        "ChannelStatus(refresh_interval=0.2)",
        "SessionInspector(user_filter='', refresh_interval=0.2)",
        "MetricsDashboard(refresh_interval=0.2)",
        "LogView(level='INFO', refresh_interval=0.2)",
    ]


def test_public_module_exports() -> None:
    import nexus_lab.jupyter.widgets as impl
    import nexus_lab.widgets as public

    for name in ("ChannelStatus", "SessionInspector", "MetricsDashboard", "Dashboard", "LogView",
                 "BenchProgress"):
        assert getattr(public, name) is getattr(impl, name)
    with pytest.raises(AttributeError):
        public.Nope  # noqa: B018


def test_chart_shows_channels_not_their_per_deployment_copies() -> None:
    from nexus_lab.jupyter.charts import chart_categories

    assert chart_categories(["workflow:a", "mcp", "api", "deployment"]) == ["api", "mcp", "deployment"]
    assert chart_categories(["workflow:a", "custom"]) == ["workflow:a", "custom"]
    assert chart_categories([]) == []


# ----------------------------------------------------------------------------- charts
def _metrics_with_outlier() -> PerformanceMetrics:
    metrics = PerformanceMetrics()
    t = 1_800_000_000.0
    metrics.record("api", 0.0045, timestamp=t)  # one early outlier, then calls of ~0.3-0.5 ms
    metrics.record("agent:api", 0.004, timestamp=t)
    for i in range(1, 60):
        metrics.record("api", 0.0003 + (i % 5) * 0.00005, timestamp=t + i)
        metrics.record("agent:api", 0.0001, timestamp=t + i)
        metrics.record("workflow:assistant", 0.0003, timestamp=t + i)
        if i % 3 == 0:
            metrics.record("mcp", 0.002, timestamp=t + i)
            metrics.record("agent:mcp", 0.0001, timestamp=t + i)
    return metrics


def test_chart_draws_callers_and_agent_time_but_no_workflow_copy() -> None:
    from nexus_lab.jupyter.charts import LatencyChart

    chart = LatencyChart()
    png = chart.render(_metrics_with_outlier())
    assert png.startswith(PNG)
    drawn = {c: line for c, line in chart._lines.items() if len(line.get_xdata())}
    assert set(drawn) == {"api", "agent:api", "mcp", "agent:mcp"}
    assert drawn["agent:api"].get_linestyle() == "--" and drawn["api"].get_linestyle() == "-"
    assert drawn["agent:api"].get_color() == drawn["api"].get_color()
    labels = [t.get_text() for t in chart.ax_time.get_legend().get_texts()]
    assert labels == ["api", "mcp", "api: agent's own", "mcp: agent's own"]


def test_one_outlier_does_not_set_the_scale() -> None:
    from nexus_lab.jupyter.charts import LatencyChart, clip_limit

    chart = LatencyChart()
    chart.render(_metrics_with_outlier())
    top = chart.ax_time.get_ylim()[1]
    assert chart.clipped == 1 and chart.clipped_at is not None
    assert top < 4.5 / 2  # not the 4.5 ms outlier: the axis stops near p99
    assert "clipped at p99" in chart._clip_text.get_text() and "4.5 ms" in chart._clip_text.get_text()
    # drawn as marks on the top edge: the caller's sample and the agent's part of it
    assert len(chart._clipped_marks.get_xdata()) == 2
    assert clip_limit([1.0, 2.0, 3.0]) is None and clip_limit([2.0] * 10) is None


def test_metrics_chart_fallback_has_one_row_per_channel_and_the_legend_below() -> None:
    from nexus_lab.jupyter.results import MetricsChart

    chart = MetricsChart(_metrics_with_outlier().get_summary())
    assert chart.categories == ["api", "mcp"]  # no workflow:NAME, no agent:* rows
    assert chart._repr_png_().startswith(PNG)


# ----------------------------------------------------------------------------- log view
def test_log_view_shows_the_captured_server_records(closing) -> None:
    import logging

    from nexus_lab.jupyter.logs import LogCapture

    capture = LogCapture()
    view = closing(LogView(refresh_interval=0.1, capture=capture, level="WARNING"))
    assert view.entries == [] and "No server log records" in view.view.value
    record = logging.LogRecord("nexus_lab.http", logging.ERROR, __file__, 1,
                               "deployment 'x' failed (error id abc123def456)", None, None)
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        import sys

        record.exc_info = sys.exc_info()
    capture.handle(record)
    capture.handle(logging.LogRecord("nexus_lab", logging.INFO, __file__, 1, "serving", None, None))
    wait_for(lambda: len(view.entries) == 1, what="the record in the view")
    (entry,) = view.entries
    assert entry["error_id"] == "abc123def456" and "ZeroDivisionError" in entry["traceback"]
    assert "<details>" in view.view.value and "abc123def456" in view.view.value
    view.level = "info"
    assert view.level == "INFO" and len(view.entries) == 2  # re-read at once
    with pytest.raises(Exception, match="unknown log level"):  # noqa: B017 - traitlets wraps it
        view.level = "LOUD"
    assert capture.traceback_for("abc123def456").startswith("Traceback")


# ----------------------------------------------------------------------------- pause / resume
def test_pause_and_resume_widgets_of_one_app(make_app, closing) -> None:
    from nexus_lab.jupyter.widgets import pause_widgets, resume_widgets

    app, other = make_app(), make_app()
    mine = closing(ChannelStatus(app, refresh_interval=0.1))
    theirs = closing(ChannelStatus(other, refresh_interval=0.1))
    metrics = closing(MetricsDashboard(app, refresh_interval=0.1))
    count = mine.refresh_count
    paused = pause_widgets(app)
    assert set(paused) == {mine, metrics}
    assert mine.refresh_count > count  # a last refresh before pausing
    assert not mine.refreshing and not metrics.refreshing and theirs.refreshing
    assert repr(mine) == "ChannelStatus(refresh_interval=0.1, auto_refresh=False)"
    resume_widgets(paused)
    assert mine.refreshing and metrics.refreshing
    assert pause_widgets(None) and not theirs.refreshing
    assert refresh_threads() == []


def test_stop_waits_for_a_tick_in_progress() -> None:
    class Slow:
        def __init__(self) -> None:
            self.inside = threading.Event()
            self.leave = threading.Event()
            self.after_stop = False
            self.stopped = False

        def _tick(self) -> None:
            self.inside.set()
            self.leave.wait(DEADLINE)
            if self.stopped:
                self.after_stop = True

    target = Slow()
    refresher = Refresher(target, 0.1)
    refresher.start()
    assert target.inside.wait(DEADLINE)
    stopper = threading.Thread(target=refresher.stop)
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive()  # stop() waits: the tick is still running
    target.leave.set()
    stopper.join(DEADLINE)
    assert not stopper.is_alive() and not refresher.is_alive
    target.stopped = True
    assert refresh_threads() == []


# ----------------------------------------------------------------------------- bench view
def test_live_svg_chart_clips_at_p99() -> None:
    from nexus_lab.jupyter.charts import svg_latency

    samples = [(i * 0.01, 0.001 * (1 + i % 3), i != 7) for i in range(60)] + [(0.6, 0.5, True)]
    svg = svg_latency(samples)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "clipped at p99" in svg and "1 slower" in svg
    assert "stroke='#b91c1c'" in svg  # the failed request
    assert "no samples yet" in svg_latency([])


def test_bench_progress_fills_in() -> None:
    from nexus_lab.jupyter.bench import BenchSnapshot
    from nexus_lab.widgets import BenchProgress

    view = BenchProgress("assistant", "api", total=10)
    try:
        samples = [(i * 0.1, 0.001 * (1 + i % 3), True) for i in range(5)]
        view.update(BenchSnapshot(done=5, errors=0, elapsed=0.5, total=10, duration=None, samples=samples))
        assert view.bar.value == 0.5
        assert "5/10 requests" in view.label.value
        assert view.chart.value.startswith("<svg") and view.frames == 1
        view.update(BenchSnapshot(done=10, errors=2, elapsed=1.0, total=10, duration=None, samples=samples))
        assert view.bar.value == 1.0 and "2 failed" in view.label.value
        assert repr(view) == "BenchProgress(name='assistant', channel='api')"
    finally:
        view.close()
    assert view.comm is None
