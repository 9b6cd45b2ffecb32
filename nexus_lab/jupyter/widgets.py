"""Live, read-only notebook views of a running platform (ipywidgets).

* :class:`ChannelStatus` - state, URL, deployments and request counts per channel.
* :class:`SessionInspector` - sessions, the selected session's state, its
  per-channel activity and event timeline.
* :class:`MetricsDashboard` - latency charts (matplotlib Agg -> PNG) and a
  p50/p95/p99 table.
* :class:`LogView` - the server-side log records captured in this kernel
  (:mod:`nexus_lab.jupyter.logs`), tracebacks folded.
* :class:`Dashboard` - the four in a ``Tab``.

Everything a view shows is also held in plain traitlets (``states``,
``session_ids``, ``summary``, ...), so tests and code can read it without a
browser. All widgets of a kernel refresh from ONE shared daemon thread
(:mod:`nexus_lab.jupyter._refresh`), each at its own bounded rate
(``refresh_interval``, at least 0.1 s); they never block a cell, batch their
updates with ``hold_sync()`` and only send what changed. A failing refresh is
logged and recorded in the ``error`` trait (cleared by the next good refresh);
the thread keeps going. ``close()`` unsubscribes (idempotent; a refresh in
progress finishes first) and closes the child widgets; closing the widget from
the front end does the same. The shared thread ends with the last subscription.

:func:`pause_widgets` is what ``%nexus stop`` and ``%unload_ext nexus_lab``
call: each live view of that platform (or every one) refreshes a last time -
so it shows "stopped" - and stops refreshing, but stays on screen;
:func:`resume_widgets` (``%nexus start``) brings them back.

Watching never changes what is watched: the session inspector reads through
``list_sessions`` and ``get_session_events``, which neither record read events
nor slide a session's expiry.

Example::

    from nexus_lab.widgets import Dashboard
    dash = Dashboard(app)
    dash                      # last expression of a cell: displays the tabs
    ...
    dash.close()
"""

from __future__ import annotations

import contextlib
import html
import logging
import threading
import time
import weakref
from typing import Any

import ipywidgets as widgets
from traitlets import Bool, Dict, Float, Int, List, Unicode, observe, validate

from ..render import (
    _CELL,
    _TABLE,
    CHANNEL_LABELS,
    _ordered,
    _shorten,
    state_badge,
    state_tree_html,
    summary_table_html,
    value_text,
)
from ._refresh import Refresher, clamp_interval
from .results import log_table_html

__all__ = [
    "ChannelStatus",
    "SessionInspector",
    "MetricsDashboard",
    "LogView",
    "Dashboard",
    "BenchProgress",
    "LiveWidget",
    "live_widgets",
    "pause_widgets",
    "resume_widgets",
]

logger = logging.getLogger("nexus_lab.jupyter")

esc = html.escape
DASH = "\u2014"


def _th(text: str) -> str:
    return f"<th style='{_CELL}'>{text}</th>"


def _td(text: str, cls: str = "") -> str:
    attr = f" class='{cls}'" if cls else ""
    return f"<td{attr} style='{_CELL}'>{text}</td>"


def _clock(ts: float) -> str:
    """Local wall-clock time ``HH:MM:SS.mmm``."""
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int((ts % 1) * 1000):03d}"


class LiveWidget(widgets.VBox):
    """Base of the live views: a ``VBox`` refreshed by a background thread.

    Subclasses implement ``_update(force)``, which reads the source and sets
    traits and child widget values (under ``self._lock``).
    """

    #: Seconds between refreshes (clamped to >= 0.1).
    refresh_interval = Float(1.0)
    #: Whether the background thread runs (set False to pause, True to resume).
    auto_refresh = Bool(True)
    #: The message of the last failed refresh ("" when the last refresh succeeded).
    error = Unicode("")
    #: How many refreshes failed so far.
    error_count = Int(0)
    #: How many refreshes succeeded so far.
    refresh_count = Int(0)

    # Class-level defaults keep close() safe on a half-built instance.
    _refresher: Refresher | None = None
    _closed = False
    _ready = False
    _error_label: widgets.HTML | None = None
    #: The platform this view belongs to (``%nexus stop`` pauses its views), if known.
    owner: Any = None

    def __init__(self, refresh_interval: float, auto_refresh: bool,
                 children: list[widgets.Widget], **kwargs: Any) -> None:
        self._lock = threading.RLock()
        _LIVE.add(self)
        self._error_label = widgets.HTML(value="", layout=widgets.Layout(display="none"))
        self._error_label.add_class("nexus-refresh-error")
        super().__init__(refresh_interval=clamp_interval(refresh_interval), auto_refresh=False,
                         children=[*children, self._error_label], **kwargs)
        self.add_class("nexus-widget")
        if self.comm is not None:
            self.comm.on_close(self._on_frontend_close)
        self._ready = True
        self._safe_update(force=True)
        self.auto_refresh = bool(auto_refresh)

    # -- traits ---------------------------------------------------------------------
    @validate("refresh_interval")
    def _valid_interval(self, proposal: Any) -> float:
        return clamp_interval(proposal["value"])

    @observe("refresh_interval")
    def _interval_changed(self, change: Any) -> None:
        if self._refresher is not None:
            self._refresher.interval = change["new"]

    @observe("auto_refresh")
    def _auto_refresh_changed(self, change: Any) -> None:
        if change["new"] and not self._closed:
            if self._refresher is None or not self._refresher.is_alive:
                self._refresher = Refresher(self, self.refresh_interval)
                self._refresher.start()
        elif self._refresher is not None:
            self._refresher.stop()
            self._refresher = None

    def watches(self, app: Any) -> bool:
        """Whether this view shows (part of) ``app``: ``%nexus stop`` pauses such views."""
        return self.owner is app

    @observe("error")
    def _error_changed(self, change: Any) -> None:
        label = self._error_label
        if label is None:
            return
        if change["new"]:
            label.value = (
                "<span class='nexus-refresh-error' style='color:#b91c1c'>refresh failed: "
                f"{esc(_shorten(change['new'], 300))}</span>"
            )
            label.layout.display = None
        else:
            label.value = ""
            label.layout.display = "none"

    # -- refreshing -----------------------------------------------------------------
    @property
    def thread(self) -> threading.Thread | None:
        """The shared refresh thread while this view is subscribed (None when auto refresh
        is off or the widget is closed)."""
        return self._refresher.thread if self._refresher is not None else None

    @property
    def refreshing(self) -> bool:
        """Whether the shared thread refreshes this view."""
        return self._refresher is not None and self._refresher.is_alive

    def refresh(self) -> None:
        """Update now, in the calling thread; a failure is recorded in ``error`` and raised."""
        try:
            self._do_update(force=True)
        except Exception as exc:
            self._tick_failed(exc)
            raise

    def _tick(self) -> None:  # called by the Refresher thread
        self._do_update(force=False)

    def _tick_failed(self, exc: BaseException) -> None:
        with self._lock:
            self.error = f"{type(exc).__name__}: {exc}"
            self.error_count += 1

    def _safe_update(self, force: bool) -> None:
        try:
            self._do_update(force)
        except Exception as exc:
            logger.warning("%s: refresh failed: %s", type(self).__name__, exc, exc_info=True)
            self._tick_failed(exc)

    def _do_update(self, force: bool) -> None:
        if self._closed:
            return
        with self._lock:
            self._update(force)
            self.refresh_count += 1
            if self.error:
                self.error = ""

    def _update(self, force: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @contextlib.contextmanager
    def _batched(self, *children: widgets.Widget) -> Any:
        """``hold_sync()`` on ``children`` so each sends at most one message."""
        with contextlib.ExitStack() as stack:
            for child in children:
                if child.comm is not None:
                    stack.enter_context(child.hold_sync())
            yield

    # -- closing --------------------------------------------------------------------
    def _child_widgets(self) -> list[widgets.Widget]:
        return []

    def _on_frontend_close(self, msg: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the refresher (joining its thread) and close this widget and its children."""
        self._closed = True
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.stop()
        for child in [*self._child_widgets(), self._error_label]:
            if child is not None:
                with contextlib.suppress(Exception):
                    child.close()
        super().close()

    @property
    def closed(self) -> bool:
        return self._closed

    # nbval skips the widget-view mime type but compares the text/plain next to it,
    # which ipywidgets fills with repr(): keep it free of live values.
    def _repr_args(self) -> str:
        return ""

    def __repr__(self) -> str:
        args = self._repr_args()
        auto = "" if self.auto_refresh or self._closed else "auto_refresh=False"
        state = "closed" if self._closed else ""
        parts = ", ".join(p for p in (args, f"refresh_interval={self.refresh_interval:g}", auto, state) if p)
        return f"{type(self).__name__}({parts})"


# ===================================================================================
class ChannelStatus(LiveWidget):
    """One row per channel: state, URL, deployments and request counts.

    Args:
        app: the :class:`~nexus_lab.Nexus` to watch.
        refresh_interval: seconds between refreshes (>= 0.1).
        auto_refresh: start the background refresh thread.

    Traits (read them, do not set them): ``states`` ``{"api": "serving", ...}``,
    ``urls`` (``None`` when not serving), ``deployments`` ``{channel: [names]}``,
    ``counts`` ``{channel: requests}`` (``{}`` unless the app was created with
    ``enable_monitoring=True``), ``errors`` ``{channel: message}`` of failed channels,
    ``problems``: what ``health_check()`` found wrong with the shared stores; while
    there are any, a serving channel shows ``degraded`` (its calls that need them get 503).

    The view is an ``HTML`` table whose rows carry the CSS classes
    ``nexus-channel nexus-channel-<channel> nexus-state-<state>`` and show the
    state as a word (``serving``, ...).
    """

    states = Dict()
    urls = Dict()
    deployments = Dict()
    counts = Dict()
    errors = Dict()
    problems = List()

    def __init__(self, app: Any, refresh_interval: float = 0.5, auto_refresh: bool = True) -> None:
        self.app = app
        self.owner = app
        self.view = widgets.HTML(value="")
        self.view.add_class("nexus-channel-status")
        super().__init__(refresh_interval, auto_refresh, children=[self.view])

    def _child_widgets(self) -> list[widgets.Widget]:
        return [self.view] if hasattr(self, "view") else []

    def _update(self, force: bool) -> None:
        app = self.app
        # health_check, not channel_status: it also asks the shared stores (Redis sessions, a
        # Redis rate limit), so a serving channel whose calls would get 503 shows "degraded"
        health = app.health_check()
        status = health["channels"]
        problems = [str(p) for p in health.get("problems", [])]
        monitoring = bool(getattr(app, "enable_monitoring", False))
        summary: dict[str, Any] = {}
        if monitoring:
            summary = app.metrics.get_summary()
        states = {
            ch: "degraded" if problems and e.get("state") == "serving" else str(e.get("state"))
            for ch, e in status.items()
        }
        urls = {ch: e.get("url") for ch, e in status.items()}
        deployments = {ch: list(e.get("deployments") or []) for ch, e in status.items()}
        errors = {ch: str(e["error"]) for ch, e in status.items() if e.get("error")}
        counts = {ch: int(summary.get(ch, {}).get("count", 0)) for ch in status} if monitoring else {}
        failed = {ch: int(summary.get(ch, {}).get("errors", 0)) for ch in status} if monitoring else {}
        value = self._render(status, states, urls, deployments, counts, failed, errors, monitoring,
                             problems)
        with self._batched(self.view):
            self.problems = problems
            self.states = states
            self.urls = urls
            self.deployments = deployments
            self.counts = counts
            self.errors = errors
            self.view.value = value

    def _render(self, status, states, urls, deployments, counts, failed, errors, monitoring,
                problems=()) -> str:
        head = "".join(_th(h) for h in ("channel", "state", "URL", "deployments", "requests"))
        rows = []
        for ch in _ordered(status):
            state = states[ch]
            url = urls.get(ch)
            if url:
                shown = f"<code>{esc(url)}</code>"
                if ch == "cli":
                    shown = f"<span title='the CLI calls the API'>{shown}</span>"
            else:
                shown = DASH
            names = deployments.get(ch) or []
            deps = esc(", ".join(names)) if names else DASH
            if monitoring:
                n = counts.get(ch, 0)
                req = str(n) + (f" ({failed[ch]} failed)" if failed.get(ch) else "")
            else:
                req = DASH
            badge = state_badge(state)
            if ch in errors:
                badge += f"<br><span class='nexus-error' style='color:#b91c1c'>{esc(_shorten(errors[ch], 200))}</span>"
            rows.append(
                f"<tr class='nexus-channel nexus-channel-{esc(ch)} nexus-state-{esc(state)}' "
                f"data-channel='{esc(ch)}' data-state='{esc(state)}'>"
                f"{_td(esc(CHANNEL_LABELS.get(ch, ch)), 'nexus-channel-name')}"
                f"{_td(badge, 'nexus-channel-state')}{_td(shown, 'nexus-channel-url')}"
                f"{_td(deps, 'nexus-channel-deployments')}{_td(req, 'nexus-channel-requests')}</tr>"
            )
        notes = [f"<span class='nexus-problem' style='color:#c2410c'>{esc(p)}</span>" for p in problems]
        if not monitoring:
            notes.append("request counts need <code>Nexus(enable_monitoring=True)</code>")
        if getattr(self.app, "enable_auth", False):
            notes.append("API key required")
        foot = f"<div style='color:#6b7280'>{' &middot; '.join(notes)}</div>" if notes else ""
        return (
            f"<table class='nexus-channel-table' style='{_TABLE}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{foot}"
        )


# ===================================================================================
class SessionInspector(LiveWidget):
    """Browse sessions and watch one: its state, per-channel activity and events.

    Args:
        manager: a :class:`~nexus_lab.sessions.NexusSessionManager` (or a
            ``Nexus``, meaning its ``session_manager``).
        refresh_interval: seconds between refreshes (>= 0.1).
        auto_refresh: start the background refresh thread.
        user_id: initial user filter.
        max_sessions: at most this many (newest) sessions are listed.

    Traits: ``session_ids`` (listed sessions, newest first), ``selected``
    (a session id or None; set it to select), ``state`` (the selected
    session's state), ``writers`` (``{key: channel}`` of each key's last
    write), ``events`` (``[{"timestamp", "channel", "action", "keys"}]``,
    oldest first), ``channel_activity`` (``{channel: {action: count}}`` over
    the selected session's events; a ``None`` channel shows as ``"-"``),
    ``manager_metrics`` (``get_session_metrics()``), ``user_filter``.

    The user filter selects sessions whose user id equals it, or, when no user
    id equals it, contains it (case-insensitive); empty shows all. With nothing
    selected, the newest listed session is selected.

    Reading never records events or slides expiry: the inspector uses
    ``list_sessions`` and ``get_session_events`` only. Listing is O(sessions);
    with many sessions the list is re-read less often (at most ~5% of the time
    is spent listing), while the selected session is re-read every tick
    through its user's (indexed) listing.
    """

    session_ids = List()
    selected = Unicode(None, allow_none=True)
    state = Dict()
    writers = Dict()
    events = List()
    channel_activity = Dict()
    manager_metrics = Dict()
    user_filter = Unicode("")

    #: Events shown in the timeline (the ``events`` trait holds all the manager keeps).
    TIMELINE_ROWS = 50

    def __init__(self, manager: Any, refresh_interval: float = 0.5, auto_refresh: bool = True,
                 user_id: str | None = None, *, max_sessions: int = 200) -> None:
        # hasattr on the type: on the instance the property would create a manager
        if not hasattr(manager, "list_sessions") and hasattr(type(manager), "session_manager"):
            self.owner = manager  # a Nexus app
            # its manager if it has one; asking app.session_manager would create one
            # (and its cleanup thread) just to show that there are no sessions
            manager = _existing_manager(manager)
        self.manager = manager
        self.max_sessions = max(1, int(max_sessions))
        self._internal: int | None = None  # id of the thread applying an update
        self._labels: dict[str, str] = {}
        self._users: dict[str, str] = {}
        self._next_list = 0.0
        self._list_dirty = True
        self.filter_box = widgets.Text(value=user_id or "", placeholder="filter by user id",
                                       description="user", layout=widgets.Layout(width="320px"))
        self.session_list = widgets.Select(options=[], rows=6, description="session",
                                           layout=widgets.Layout(width="auto", min_width="320px"))
        self.summary_view = widgets.HTML(value="")
        self.state_view = widgets.HTML(value="")
        self.activity_view = widgets.HTML(value="")
        self.timeline_view = widgets.HTML(value="")
        for w in (self.state_view, self.activity_view, self.timeline_view):
            w.layout.overflow = "auto"
        self.state_view.add_class("nexus-session-state")
        self.activity_view.add_class("nexus-session-activity")
        self.timeline_view.add_class("nexus-session-timeline")
        details = widgets.Tab(children=[self.state_view, self.activity_view, self.timeline_view])
        details.titles = ("State", "Activity", "Timeline")
        self.details = details
        header = widgets.HBox([widgets.VBox([self.filter_box, self.summary_view]), self.session_list])
        self._header = header
        super().__init__(refresh_interval, auto_refresh, children=[header, details],
                         user_filter=user_id or "")
        self.filter_box.observe(self._filter_typed, "value")
        self.session_list.observe(self._session_clicked, "value")

    def _repr_args(self) -> str:
        return f"user_filter={self.user_filter!r}"

    def watches(self, app: Any) -> bool:
        # the manager of one of the app's deployments (read without creating the app's own)
        if super().watches(app):
            return True
        if self.manager is None:
            return False
        if getattr(app, "current_session_manager", None) is self.manager:
            return True
        deployments = getattr(app, "deployments", None) or {}
        return any(getattr(d, "session_manager", None) is self.manager for d in deployments.values())

    def _child_widgets(self) -> list[widgets.Widget]:
        names = ("filter_box", "session_list", "summary_view", "state_view", "activity_view",
                 "timeline_view", "details", "_header")
        out = [getattr(self, n) for n in names if hasattr(self, n)]
        if hasattr(self, "_header"):
            out.append(self._header.children[0])
        return out

    # -- user interaction -------------------------------------------------------------
    def _filter_typed(self, change: Any) -> None:
        self.user_filter = change["new"]

    @observe("user_filter")
    def _user_filter_changed(self, change: Any) -> None:
        if self.filter_box.value != change["new"]:
            self.filter_box.value = change["new"]
        self._list_dirty = True
        if self._ready:
            self._safe_update(force=True)

    def _session_clicked(self, change: Any) -> None:
        if self._internal == threading.get_ident() or change["new"] is None:
            return
        self.selected = change["new"]

    @observe("selected")
    def _selected_changed(self, change: Any) -> None:
        if self._internal == threading.get_ident() or not self._ready:
            return
        self._safe_update(force=False)

    # -- refreshing -------------------------------------------------------------------
    def _matching(self, sessions: list[Any]) -> list[Any]:
        text = self.user_filter.strip()
        if not text:
            return sessions
        exact = [s for s in sessions if s.user_id == text]
        if exact:
            return exact
        low = text.lower()
        return [s for s in sessions if low in str(s.user_id).lower()]

    def _update(self, force: bool) -> None:
        if self.manager is None and self.owner is not None:
            self.manager = _existing_manager(self.owner)  # the app made one since
        manager = self.manager
        if manager is None:
            self._show_no_manager()
            return
        now = time.monotonic()
        listed: list[Any] | None = None
        unknown = self.selected is not None and self.selected not in self._users
        if force or unknown or self._list_dirty or now >= self._next_list:
            t0 = time.perf_counter()
            listed = self._matching(manager.list_sessions())
            spent = time.perf_counter() - t0
            # Spend at most ~5% of the time listing a large store.
            self._next_list = now + max(self.refresh_interval, 20 * spent)
            self._list_dirty = False
            listed.sort(key=lambda s: (s.created_at, s.session_id), reverse=True)
            listed = listed[: self.max_sessions]
            self._users = {s.session_id: s.user_id for s in listed}
            self._labels = {s.session_id: self._label(s) for s in listed}

        ids = list(self._labels)
        selected = self.selected
        if selected is not None and selected not in self._users:
            selected = None
        if selected is None and ids:
            selected = ids[0]

        session = None
        if selected is not None:
            pool = listed if listed is not None else manager.list_sessions(user_id=self._users[selected])
            session = next((s for s in pool if s.session_id == selected), None)
            if session is None:  # expired or deleted since the last listing
                self._list_dirty = True
                ids.remove(selected)
                self._labels.pop(selected, None)
                self._users.pop(selected, None)
                selected = ids[0] if ids else None
            else:
                self._labels[selected] = self._label(session)

        events = []
        if session is not None:
            events = [self._event_dict(e) for e in manager.get_session_events(session.session_id)]
        metrics = manager.get_session_metrics()
        activity = self._activity(events)
        state = dict(session.state) if session is not None else {}
        writers = {k: v[0] for k, v in session.writers.items()} if session is not None else {}

        options = [(self._labels[i], i) for i in ids]
        values = {
            "summary": self._render_summary(metrics, len(ids)),
            "state": self._render_state(session),
            "activity": self._render_activity(activity, session),
            "timeline": self._render_timeline(events),
        }
        with self._batched(self.session_list, self.summary_view, self.state_view,
                           self.activity_view, self.timeline_view):
            self._internal = threading.get_ident()
            try:
                if list(self.session_list.options) != options:
                    self.session_list.options = options
                if self.session_list.value != selected:
                    self.session_list.value = selected
                self.session_ids = ids
                self.selected = selected
                self.state = state
                self.writers = writers
                self.events = events
                self.channel_activity = activity
                self.manager_metrics = metrics
            finally:
                self._internal = None
            self.summary_view.value = values["summary"]
            self.state_view.value = values["state"]
            self.activity_view.value = values["activity"]
            self.timeline_view.value = values["timeline"]

    def _show_no_manager(self) -> None:
        empty = "<p class='nexus-empty'>No sessions yet: this app has no session manager.</p>"
        with self._batched(self.session_list, self.summary_view, self.state_view,
                           self.activity_view, self.timeline_view):
            self._internal = threading.get_ident()
            try:
                if self.session_list.options:
                    self.session_list.options = []
                self.session_ids = []
                self.selected = None
                self.state = {}
                self.writers = {}
                self.events = []
                self.channel_activity = {}
                self.manager_metrics = {}
            finally:
                self._internal = None
            self.summary_view.value = empty
            for view in (self.state_view, self.activity_view, self.timeline_view):
                view.value = ""

    @staticmethod
    def _label(session: Any) -> str:
        channels = ", ".join(session.channels) or "no channel yet"
        return f"{session.user_id} \u00b7 {session.session_id[:8]} \u00b7 {channels}"

    @staticmethod
    def _event_dict(event: Any) -> dict[str, Any]:
        return {"timestamp": event.timestamp, "channel": event.channel,
                "action": event.action, "keys": list(event.keys)}

    @staticmethod
    def _activity(events: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for e in events:
            ch = e["channel"] if e["channel"] is not None else "-"
            per = out.setdefault(ch, {})
            per[e["action"]] = per.get(e["action"], 0) + 1
        return out

    # -- rendering --------------------------------------------------------------------
    @staticmethod
    def _render_summary(metrics: dict[str, Any], listed: int) -> str:
        active = metrics.get("active_sessions", "?")
        store = metrics.get("store")
        per = metrics.get("channel_activity") or {}
        activity = ", ".join(f"{esc(str(k))} {v}" for k, v in per.items()) or DASH
        return (
            "<div class='nexus-session-summary' style='color:#374151'>"
            f"{listed} listed &middot; {esc(str(active))} active"
            f"{f' ({esc(str(store))})' if store else ''}<br>"
            f"total created {esc(str(metrics.get('total_created', '?')))} &middot; "
            f"expired {esc(str(metrics.get('expired_cleaned', '?')))}<br>"
            f"channel activity: {activity}</div>"
        )

    @staticmethod
    def _render_state(session: Any) -> str:
        if session is None:
            return "<p class='nexus-empty'>No session selected.</p>"
        head = "".join(_th(h) for h in ("key", "value", "writer", "at"))
        rows = []
        for key, value in session.state.items():
            writer = session.writers.get(key)
            by = esc(str(writer[0])) if writer and writer[0] else DASH
            at = _clock(writer[1]) if writer else DASH
            cell = state_tree_html(value) if isinstance(value, (dict, list)) and value else (
                f"<code>{esc(value_text(value))}</code>")
            rows.append(f"<tr class='nexus-state-key'>{_td(f'<b>{esc(key)}</b>')}{_td(cell)}"
                        f"{_td(by)}{_td(at)}</tr>")
        if not rows:
            body = "<p class='nexus-empty'>The state is empty.</p>"
        else:
            body = (f"<table style='{_TABLE}'><thead><tr>{head}</tr></thead>"
                    f"<tbody>{''.join(rows)}</tbody></table>")
        channels = ", ".join(session.channels) or DASH
        return (
            f"<div><b>{esc(str(session.user_id))}</b> &middot; <code>{esc(session.session_id)}</code>"
            f" &middot; channels: {esc(channels)} &middot; expires {_clock(session.expires_at)}</div>"
            f"{body}"
        )

    @staticmethod
    def _render_activity(activity: dict[str, dict[str, int]], session: Any) -> str:
        if session is None:
            return "<p class='nexus-empty'>No session selected.</p>"
        if not activity:
            return "<p class='nexus-empty'>No events recorded.</p>"
        actions = ("create", "update", "read", "delete")
        head = "".join(_th(h) for h in ("channel", *actions))
        rows = []
        for ch in _ordered(activity):
            per = activity[ch]
            cells = "".join(_td(str(per.get(a, 0))) for a in actions)
            name = DASH if ch == "-" else esc(ch)
            rows.append(f"<tr class='nexus-activity-{esc(ch)}'>{_td(name)}{cells}</tr>")
        return (f"<table style='{_TABLE}'><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")

    def _render_timeline(self, events: list[dict[str, Any]]) -> str:
        if not events:
            return "<p class='nexus-empty'>No events recorded.</p>"
        head = "".join(_th(h) for h in ("time", "channel", "action", "keys"))
        rows = []
        for e in reversed(events[-self.TIMELINE_ROWS:]):
            keys = ", ".join(e["keys"]) or DASH
            ch = e["channel"] if e["channel"] is not None else DASH
            rows.append(
                f"<tr class='nexus-event nexus-event-{esc(e['action'])}'>{_td(_clock(e['timestamp']))}"
                f"{_td(esc(ch))}{_td(esc(e['action']))}{_td(esc(keys))}</tr>"
            )
        more = len(events) - self.TIMELINE_ROWS
        foot = f"<div style='color:#6b7280'>… {more} older events</div>" if more > 0 else ""
        return (f"<table style='{_TABLE}'><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>{foot}")


# ===================================================================================
class MetricsDashboard(LiveWidget):
    """Latency charts per category and a p50/p95/p99 table.

    Args:
        metrics: a :class:`~nexus_lab.metrics.PerformanceMetrics` (or a
            ``Nexus``, meaning its ``metrics``).
        refresh_interval: seconds between checks (>= 0.1); the chart is only
            redrawn when ``metrics.version`` changed, and the background thread
            spends at most ~10% of the time drawing.
        auto_refresh: start the background refresh thread.

    Traits: ``summary`` (``metrics.get_summary()``, seconds), ``categories``
    (in first-recorded order), ``frames`` (how many times the chart was drawn),
    ``version`` (the ``metrics.version`` last drawn).
    The chart is the PNG in ``self.image`` (``widgets.Image``), the table the
    HTML in ``self.table``.
    """

    summary = Dict()
    categories = List()
    frames = Int(0)
    version = Int(-1)

    def __init__(self, metrics: Any, refresh_interval: float = 1.0, auto_refresh: bool = True,
                 *, figsize: tuple[float, float] = (10.0, 3.4), dpi: float = 90) -> None:
        from .charts import LatencyChart

        if not hasattr(metrics, "version") and hasattr(metrics, "metrics"):
            self.owner = metrics  # a Nexus app
            metrics = metrics.metrics
        self.metrics = metrics
        self._next_draw = 0.0
        self.chart = LatencyChart(figsize=figsize, dpi=dpi)
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.image.add_class("nexus-metrics-chart")
        self.table = widgets.HTML(value="")
        self.table.add_class("nexus-metrics-table")
        super().__init__(refresh_interval, auto_refresh, children=[self.image, self.table])

    def _child_widgets(self) -> list[widgets.Widget]:
        return [getattr(self, n) for n in ("image", "table") if hasattr(self, n)]

    def watches(self, app: Any) -> bool:
        return super().watches(app) or getattr(app, "metrics", None) is self.metrics

    def _update(self, force: bool) -> None:
        metrics = self.metrics
        version = metrics.version
        if version == self.version and self.frames:
            return
        now = time.monotonic()
        if not force and now < self._next_draw:
            return  # drawn very recently: the next tick will catch up
        summary = metrics.get_summary()
        t0 = time.perf_counter()
        png = self.chart.render(metrics)
        # A frame costs ~30-150 ms: keep drawing under ~10% of the time under constant traffic.
        self._next_draw = now + 10 * (time.perf_counter() - t0)
        table = summary_table_html(_table_order(summary), timings=True)
        with self._batched(self.image, self.table):
            self.image.value = png
            self.table.value = table
            self.summary = summary
            self.categories = list(summary)
            self.version = version
            self.frames += 1

    def close(self) -> None:
        super().close()
        chart = getattr(self, "chart", None)
        if chart is not None:
            with contextlib.suppress(Exception):
                chart.figure.clear()


# ===================================================================================
class LogView(LiveWidget):
    """The server-side log records captured in this kernel, newest first.

    The platform logs agent failures (with an error id and the traceback) from
    its server thread; in a notebook they would print under whichever cell ran
    last. :mod:`nexus_lab.jupyter.logs` keeps them instead, and this view shows
    them: time, level, logger, message, error id, and the traceback folded in
    a ``<details>``.

    Args:
        level: the lowest level shown (``"DEBUG"`` ... ``"CRITICAL"``, default ``"INFO"``).
        refresh_interval: seconds between checks (>= 0.1); redrawn only when a record arrived.
        auto_refresh: subscribe to the shared refresh thread.
        max_rows: at most this many (newest) records are shown.

    Traits: ``entries`` (``[{"time", "level", "logger", "message", "error_id",
    "traceback"}]``, oldest first), ``level``.

    Example::

        from nexus_lab.widgets import LogView
        LogView(level="ERROR")
    """

    entries = List()
    level = Unicode("INFO")

    def __init__(self, level: str = "INFO", refresh_interval: float = 0.5, auto_refresh: bool = True,
                 *, max_rows: int = 200, capture: Any = None) -> None:
        from .logs import capture as kernel_capture

        # the kernel's capture, counted as used until close() (records stop printing meanwhile)
        self._owns_capture = capture is None
        self.capture = capture if capture is not None else kernel_capture()
        self.max_rows = max(1, int(max_rows))
        self._seen = (-1, "")
        self.view = widgets.HTML(value="")
        self.view.add_class("nexus-log-view")
        self.view.layout.overflow = "auto"
        self.view.layout.max_height = "420px"
        super().__init__(refresh_interval, auto_refresh, children=[self.view], level=str(level).upper())

    @validate("level")
    def _valid_level(self, proposal: Any) -> str:
        value = str(proposal["value"]).upper()
        if not isinstance(logging.getLevelName(value), int):
            raise ValueError(f"unknown log level {proposal['value']!r}")
        return value

    @observe("level")
    def _level_changed(self, change: Any) -> None:
        if self._ready:
            self._safe_update(force=True)

    def _repr_args(self) -> str:
        return f"level={self.level!r}"

    def close(self) -> None:
        if not self._closed and getattr(self, "_owns_capture", False):
            self.capture.uninstall()
        super().close()

    def _child_widgets(self) -> list[widgets.Widget]:
        return [self.view] if hasattr(self, "view") else []

    def _update(self, force: bool) -> None:
        capture = self.capture
        key = (capture.version, self.level)
        if key == self._seen and not force:
            return
        records = capture.records(self.level, last=self.max_rows)
        entries = [
            {"time": e.created, "level": e.level, "logger": e.logger, "message": e.message,
             "error_id": e.error_id, "traceback": e.traceback}
            for e in records
        ]
        value = log_table_html(records)
        with self._batched(self.view):
            self.entries = entries
            self.view.value = value
        self._seen = key


# ===================================================================================
class Dashboard(widgets.Tab):
    """Channels, sessions, metrics and the server log of one app in a ``Tab``.

    Args:
        app: the :class:`~nexus_lab.Nexus` to watch (its ``session_manager`` and
            ``metrics`` are used).
        refresh_interval: one interval for all four views, or None for their
            defaults (0.5 s, 0.5 s, 1 s, 0.5 s).
        auto_refresh: subscribe the views to the shared refresh thread.

    Attributes: ``channels`` (:class:`ChannelStatus`), ``sessions``
    (:class:`SessionInspector`), ``metrics`` (:class:`MetricsDashboard`),
    ``logs`` (:class:`LogView`). All four views share the kernel's one refresh
    thread; ``close()`` (or ``%nexus stop``) ends their refreshing.
    """

    TITLES = ("Channels", "Sessions", "Metrics", "Server log")

    def __init__(self, app: Any, refresh_interval: float | None = None, auto_refresh: bool = True) -> None:
        kw: dict[str, Any] = {"auto_refresh": auto_refresh}
        if refresh_interval is not None:
            kw["refresh_interval"] = refresh_interval
        self.app = app
        try:
            self.channels = ChannelStatus(app, **kw)
            self.sessions = SessionInspector(app, **kw)
            self.metrics = MetricsDashboard(app, **kw)
            self.logs = LogView(**kw)
            self.logs.owner = app
        except BaseException:
            for view in self.views:
                view.close()
            raise
        super().__init__(children=[self.channels, self.sessions, self.metrics, self.logs])
        self.titles = self.TITLES
        self.add_class("nexus-dashboard")
        if self.comm is not None:
            self.comm.on_close(lambda msg: self.close())

    def __repr__(self) -> str:  # stable: see LiveWidget.__repr__
        return f"Dashboard(tabs={list(self.titles)!r})"

    @property
    def views(self) -> list[LiveWidget]:
        """The live views (fewer on a half-built instance)."""
        names = ("channels", "sessions", "metrics", "logs")
        return [getattr(self, n) for n in names if isinstance(getattr(self, n, None), LiveWidget)]

    def refresh(self) -> None:
        """Refresh the views now."""
        for view in self.views:
            view.refresh()

    def close(self) -> None:
        """Close the views (ending their refreshing) and the tabs."""
        for view in self.views:
            view.close()
        super().close()


# ===================================================================================
def _existing_manager(app: Any) -> Any:
    """The app's session manager if it has one (never creating it), else a deployment's."""
    # Nexus.session_manager creates an in-memory manager on first access; this only looks
    manager = getattr(app, "current_session_manager", None)
    if manager is not None:
        return manager
    for dep in (getattr(app, "deployments", None) or {}).values():
        if getattr(dep, "session_manager", None) is not None:
            return dep.session_manager
    return None


_LIVE: weakref.WeakSet[LiveWidget] = weakref.WeakSet()


def live_widgets() -> list[LiveWidget]:
    """The views of this kernel that are not closed."""
    return [w for w in list(_LIVE) if not w.closed]


def pause_widgets(app: Any = None) -> list[LiveWidget]:
    """Stop refreshing the views of ``app`` (all views when None), after a last refresh.

    They stay on screen showing their last state (e.g. "stopped"). Returns the
    views paused, for :func:`resume_widgets`.
    """
    paused = []
    for view in live_widgets():
        if not view.auto_refresh or (app is not None and not view.watches(app)):
            continue
        view._safe_update(force=True)
        view.auto_refresh = False
        paused.append(view)
    return paused


def resume_widgets(views: list[LiveWidget]) -> None:
    """Refresh ``views`` again (the ones not closed meanwhile)."""
    for view in views:
        if not view.closed:
            view.auto_refresh = True


def _table_order(summary: dict[str, Any]) -> dict[str, Any]:
    """Channels (what callers waited) first, then the agents' own time, then the rest."""
    channels = [c for c in CHANNEL_LABELS if c in summary]
    agents = [f"agent:{c}" for c in CHANNEL_LABELS if f"agent:{c}" in summary]
    rest = [k for k in summary if k not in channels and k not in agents]
    return {k: summary[k] for k in (*channels, *agents, *rest)}


# ===================================================================================
class BenchProgress(widgets.VBox):
    """The live view of a running ``%nexus bench``: a progress bar, the figures so far and
    the latency of each request filling in. Updated by :meth:`update` from the thread that
    waits for the bench (the kernel's), so it needs no refresh thread; ``close()`` removes it.

    The live chart is a light SVG (:func:`~nexus_lab.jupyter.charts.svg_latency`, a few
    milliseconds a frame): the server being loaded usually runs in this kernel, and a
    matplotlib frame (tens of milliseconds holding the GIL) would show up in the very
    latencies being measured. The result's ``chart`` is the full matplotlib one.

    Example::

        view = BenchProgress("assistant", "api", total=500)
        display(view)
        run_bench(app, "assistant", {"query": "hi"}, requests=500, progress=view.update)
        view.close()
    """

    def __init__(self, name: str, channel: str, total: int | None = None,
                 duration: float | None = None) -> None:
        self.name, self.channel, self.total, self.duration = name, channel, total, duration
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="bench",
                                         bar_style="info", layout=widgets.Layout(width="60%"))
        self.label = widgets.HTML(value="starting…")
        self.chart = widgets.HTML(value="")
        self.chart.add_class("nexus-bench-live-chart")
        self.frames = 0
        super().__init__(children=[widgets.HBox([self.bar, self.label]), self.chart])
        self.add_class("nexus-bench-progress")

    def update(self, snap: Any) -> None:
        """Show a :class:`~nexus_lab.jupyter.bench.BenchSnapshot`."""
        from .charts import svg_latency

        rps = snap.done / snap.elapsed if snap.elapsed > 0 else 0.0
        of = f"/{snap.total}" if snap.total else ""
        failed = f", <span style='color:#b91c1c'>{snap.errors} failed</span>" if snap.errors else ""
        svg = svg_latency(snap.samples) if snap.samples else None
        with contextlib.ExitStack() as stack:
            for child in (self.bar, self.label, self.chart):
                if child.comm is not None:
                    stack.enter_context(child.hold_sync())
            self.bar.value = snap.fraction
            self.label.value = f"{snap.done}{of} requests, {rps:.0f}/s{failed}"
            if svg is not None:
                self.chart.value = svg
                self.frames += 1

    def close(self) -> None:
        for child in (self.bar, self.label, self.chart):
            with contextlib.suppress(Exception):
                child.close()
        super().close()

    def __repr__(self) -> str:  # stable (nbval compares the text/plain beside the widget)
        return f"BenchProgress(name={self.name!r}, channel={self.channel!r})"
