"""The objects the ``%nexus`` magics return.

Each has a rich ``_repr_html_`` for notebooks and a *stable* ``repr``: no
session ids, ports, URLs, addresses, timestamps or durations, so notebook
outputs compare equal from run to run (nbval compares ``text/plain`` and
``text/html``). Volatile values stay available as attributes
(``CallResult.session_id``, ``PlatformStatus.api_url``, ...).

================  ==============================================  =========================
class             returned by                                     volatile parts
================  ==============================================  =========================
CallResult        ``%nexus call``, ``%%nexus call``               the session id
CallError         ``%nexus last-error`` (a failed call)           error id, traceback
PlatformStatus    ``%nexus start``, ``stop``, ``status``          URLs (while serving)
SessionTable      ``%nexus sessions``                             session ids
MetricsSummary    ``%nexus metrics``                              the latency figures
MetricsChart      ``%nexus metrics --plot`` without ipywidgets    (a PNG)
LogTable          ``%nexus logs``                                 times, error ids
================  ==============================================  =========================

Session ids are shown short (``'5d1c2e7a…'`` in text; in HTML the whole id
sits in a ``<code class='nexus-sid'>`` cut to 8 characters on screen, so
selecting it copies the full id). ``notebooks/nbval-sanitize.cfg`` masks them.

None of these classes imports IPython.

Example::

    r = %nexus call assistant query="hi"
    r                  # CallResult(name='assistant', channel='api', session='5d1c2e7a…', response='...')
    r.session_id       # '5d1c2e7a...' (the full id; None for a deployment without sessions)
    r.outputs          # {'response': '[mock:mock-model] You said: hi'}
    r.json             # {'outputs': {...}, 'session_id': ..., 'execution_time_ms': ...}
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CallResult",
    "CallError",
    "PlatformStatus",
    "SessionRow",
    "SessionTable",
    "MetricsSummary",
    "MetricsChart",
    "LogTable",
    "short_id",
    "session_id_html",
]

_esc = html.escape

#: Characters of a session id shown (the rest is one click-and-copy away).
SHORT_ID = 8


def short_id(session_id: str) -> str:
    """The first characters of an id and an ellipsis: ``'5d1c2e7a…'`` (short ids unchanged).

    >>> short_id("5d1c2e7a9b0f4e11"), short_id("abc")
    ('5d1c2e7a…', 'abc')
    """
    return session_id if len(session_id) <= SHORT_ID + 1 else session_id[:SHORT_ID] + "\u2026"


def session_id_html(session_id: str) -> str:
    """The whole id in a ``<code>`` cut to 8 characters on screen (selecting it copies all of it).

    The ``title`` shows the whole id on hover. nbval masks it by its class.
    """
    sid = _esc(session_id)
    return (
        f"<code class='nexus-sid' title='{sid}' style='display:inline-block;max-width:9ch;"
        "overflow:hidden;text-overflow:ellipsis;white-space:nowrap;vertical-align:bottom;"
        f"user-select:all'>{sid}</code>"
    )

#: How each transport is named in a result.
TRANSPORTS = ("http", "mcp", "cli", "in-process")


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)


# --------------------------------------------------------------------------- calls
@dataclass(repr=False)
class CallResult:
    """The answer of one ``%nexus call``.

    Attributes:
        name: the deployment called.
        channel: ``"api"``, ``"mcp"`` or ``"cli"``.
        transport: how the call travelled: ``"http"`` (the API server),
            ``"mcp"`` (the MCP server, SDK client), ``"cli"`` (a ``nexus run``
            subprocess) or ``"in-process"`` (``app.execute``: the platform was
            not running).
        outputs: the deployment's outputs (a dict).
        session_id: the session the call ran in (None without sessions).
        json: the whole wire answer ``{"outputs", "session_id", "execution_time_ms"}``.
        execution_time_ms: server-side execution time, when reported.
    """

    name: str
    channel: str
    transport: str
    outputs: dict[str, Any]
    session_id: str | None = None
    json: dict[str, Any] = field(default_factory=dict)
    execution_time_ms: float | None = None

    @property
    def response(self) -> Any:
        """The ``response`` output (None when the deployment has no such output)."""
        return self.outputs.get("response") if isinstance(self.outputs, dict) else None

    @property
    def in_process(self) -> bool:
        """True when the call ran in this kernel because the platform was not serving."""
        return self.transport == "in-process"

    def __getitem__(self, key: str) -> Any:
        return self.outputs[key]

    def __str__(self) -> str:
        value = self.response
        if isinstance(value, str):
            return value
        return _dumps(self.outputs if value is None else value)

    def __repr__(self) -> str:
        via = ", via='in-process'" if self.in_process else ""
        session = f", session={short_id(self.session_id)!r}" if self.session_id else ""
        if isinstance(self.outputs, dict) and "response" in self.outputs:
            shown = f"response={self.outputs['response']!r}"
        else:
            shown = f"outputs={self.outputs!r}"
        return f"CallResult(name={self.name!r}, channel={self.channel!r}{via}{session}, {shown})"

    def _repr_html_(self) -> str:
        value = self.response
        if isinstance(value, str):
            body = f"<div class='nexus-response' style='white-space:pre-wrap'>{_esc(value)}</div>"
        else:
            body = f"<pre>{_esc(_dumps(self.outputs if value is None else value))}</pre>"
        via = {
            "http": "HTTP API",
            "mcp": "MCP server",
            "cli": "<code>nexus run</code>",
            "in-process": "in-process (platform not running)",
        }.get(self.transport, _esc(self.transport))
        session = (
            f"session {session_id_html(self.session_id)} (<code>.session_id</code>)"
            if self.session_id
            else "no session"
        )
        return (
            "<div class='nexus-call'>"
            f"<div><b>{_esc(self.name)}</b> &middot; channel <code>{_esc(self.channel)}</code>"
            f" &middot; {via}</div>{body}"
            f"<div style='opacity:.7;font-size:smaller'>{session}</div></div>"
        )


@dataclass(repr=False)
class CallError:
    """A failed ``%nexus call``: what ``%nexus last-error`` returns.

    The magic raises one line (``UsageError``) naming the error type, the
    message and the error id; the rest is here.

    Attributes:
        name, channel, transport: as in :class:`CallResult`.
        error_type: the platform's error type (``agent_error``, ``validation_error`` ...).
        message: what went wrong, one line; for an agent failure the agent's
            own exception (``ZeroDivisionError: division by zero``) when this
            kernel captured the server's log of it, else the server's message.
        error_id: the id the server logged the failure under (agent and
            internal errors), or None.
        traceback: the agent's full traceback when known (the platform runs in
            this kernel, or the call ran in-process), else None.
        http_status: the HTTP status the error maps to.
        exit_code: the exit status of ``nexus run`` (channel ``cli``).
        exception: the :mod:`nexus_lab.errors` exception the client raised.
    """

    name: str
    channel: str
    transport: str
    error_type: str
    message: str
    error_id: str | None = None
    traceback: str | None = None
    http_status: int | None = None
    exit_code: int | None = None
    exception: BaseException | None = None

    def line(self, where: str | None = None) -> str:
        """The one line the magic shows: ``assistant via api: ValueError: boom [agent_error, error id 3f..]``."""
        where = where or f"{self.name} via {self.channel}"
        tags = [self.error_type]
        if self.error_id:
            tags.append(f"error id {self.error_id}")
        elif self.http_status:
            tags.append(f"HTTP {self.http_status}")
        elif self.exit_code is not None:
            tags.append(f"exit {self.exit_code}")
        tail = "; traceback: %nexus last-error" if self.traceback else ""
        return f"{where}: {self.message} [{', '.join(tags)}]{tail}"

    def __str__(self) -> str:
        return self.line()

    def __repr__(self) -> str:  # no error id: stable in notebook outputs
        return (
            f"CallError(name={self.name!r}, channel={self.channel!r}, "
            f"error_type={self.error_type!r}, message={self.message!r})"
        )

    def _repr_html_(self) -> str:
        eid = f" &middot; error id <code>{_esc(self.error_id)}</code>" if self.error_id else ""
        tb = (
            f"<pre class='nexus-traceback' style='font-size:smaller'>{_esc(self.traceback)}</pre>"
            if self.traceback
            else "<p style='opacity:.7'>No traceback here: the server logged it under the error id.</p>"
        )
        return (
            "<div class='nexus-call-error'>"
            f"<div><b>{_esc(self.name)}</b> &middot; channel <code>{_esc(self.channel)}</code>"
            f" &middot; <code>{_esc(self.error_type)}</code>{eid}</div>"
            f"<div style='color:#b91c1c'>{_esc(self.message)}</div>{tb}</div>"
        )


# --------------------------------------------------------------------------- platform
@dataclass(repr=False)
class PlatformStatus:
    """State of a platform's channels, returned by ``%nexus start|stop|status``.

    Attributes:
        state: ``"serving"``, ``"stopped"``, ``"failed"`` or ``"not started"``.
        channels: ``{channel: {"state", "url", "deployments", ...}}`` from
            :meth:`Nexus.channel_status`.
        deployments: the registered deployment names.
        api_url, mcp_url: where the servers listen (None when not serving).
        health: the full :meth:`Nexus.health_check` document.
    """

    state: str
    channels: dict[str, dict[str, Any]]
    deployments: list[str]
    api_url: str | None = None
    mcp_url: str | None = None
    health: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_app(cls, app: Any) -> PlatformStatus:
        health = app.health_check()
        channels = health.get("channels") or app.channel_status()
        states = {c.get("state") for c in channels.values()}
        if app.is_running:
            state = "serving"
        elif "failed" in states:
            state = "failed"
        elif "stopped" in states:
            state = "stopped"
        else:
            state = "not started"
        return cls(
            state=state,
            channels=channels,
            deployments=list(health.get("deployments", [])),
            api_url=app.api_url,
            mcp_url=app.mcp_url,
            health=health,
        )

    @property
    def is_running(self) -> bool:
        return self.state == "serving"

    def __repr__(self) -> str:
        states = {name: info.get("state") for name, info in self.channels.items()}
        return (
            f"PlatformStatus(state={self.state!r}, channels={states!r}, "
            f"deployments={self.deployments!r})"
        )

    def _repr_html_(self) -> str:
        rows = []
        for name, info in self.channels.items():
            url = info.get("url")
            where = f"<code>{_esc(str(url))}</code>" if url else "&mdash;"
            if name == "cli" and url:
                where = f"<code>nexus run NAME --url {_esc(str(url))}</code>"
            error = info.get("error")
            state = _esc(str(info.get("state")))
            if error:
                state += f" <small>({_esc(str(error))})</small>"
            deps = ", ".join(info.get("deployments") or []) or "&mdash;"
            rows.append(
                f"<tr><td>{_esc(name)}</td><td>{state}</td><td>{where}</td>"
                f"<td>{_esc(deps) if deps != '&mdash;' else deps}</td></tr>"
            )
        return (
            f"<div class='nexus-status'><b>nexus platform</b>: {_esc(self.state)}"
            "<table><thead><tr><th>channel</th><th>state</th><th>address</th>"
            f"<th>deployments</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        )


# --------------------------------------------------------------------------- sessions
@dataclass(frozen=True, repr=False)
class SessionRow:
    """One session as ``%nexus sessions`` shows it (the id shown short)."""

    user: str
    channels: tuple[str, ...]
    keys: tuple[str, ...]
    turns: int
    session_id: str

    def __repr__(self) -> str:
        return (
            f"SessionRow(id={short_id(self.session_id)!r}, user={self.user!r}, "
            f"channels={list(self.channels)!r}, keys={list(self.keys)!r}, turns={self.turns!r})"
        )


class SessionTable:
    """The sessions of a platform, oldest first (``%nexus sessions``).

    Iterable and indexable (rows are :class:`SessionRow`); ``.session_ids``
    lists the full ids, ``.sessions`` the :class:`~nexus_lab.sessions.Session`
    snapshots and :meth:`to_dataframe` one row per session.

    Example::

        table = %nexus sessions
        table[0].session_id                  # the full id of the oldest session
        table.to_dataframe()[["user", "turns"]]
    """

    def __init__(self, sessions: list[Any], user: str | None = None) -> None:
        self.sessions = sorted(sessions, key=lambda s: (s.created_at, s.session_id))
        self.user = user
        self.rows = [
            SessionRow(
                user=s.user_id,
                channels=tuple(s.channels),
                keys=tuple(s.keys),
                turns=_turns(s.state),
                session_id=s.session_id,
            )
            for s in self.sessions
        ]

    @property
    def session_ids(self) -> list[str]:
        return [r.session_id for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[SessionRow]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> SessionRow:
        return self.rows[index]

    def to_dataframe(self) -> Any:
        """One row per session (needs pandas): ``session_id`` (full), ``user``,
        ``channels``, ``keys``, ``turns``, ``created_at``, ``last_accessed``,
        ``expires_at`` (UTC timestamps)."""
        import pandas as pd

        columns = ["session_id", "user", "channels", "keys", "turns",
                   "created_at", "last_accessed", "expires_at"]
        records = [
            {
                "session_id": s.session_id,
                "user": r.user,
                "channels": list(r.channels),
                "keys": list(r.keys),
                "turns": r.turns,
                "created_at": s.created_at,
                "last_accessed": s.last_accessed,
                "expires_at": s.expires_at,
            }
            for s, r in zip(self.sessions, self.rows, strict=True)
        ]
        frame = pd.DataFrame.from_records(records, columns=columns)
        for col in ("created_at", "last_accessed", "expires_at"):
            frame[col] = pd.to_datetime(frame[col], unit="s", utc=True)
        return frame

    def __repr__(self) -> str:
        who = f", user={self.user!r}" if self.user is not None else ""
        head = f"SessionTable({len(self.rows)} session{'s' if len(self.rows) != 1 else ''}{who})"
        lines = [head]
        for r in self.rows:
            lines.append(
                f"  id={short_id(r.session_id)!r} user={r.user!r} channels={list(r.channels)!r} "
                f"keys={list(r.keys)!r} turns={r.turns}"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if not self.rows:
            who = f" for user <code>{_esc(self.user)}</code>" if self.user is not None else ""
            return f"<p class='nexus-sessions'><b>Sessions</b>: none{who}</p>"
        body = "".join(
            f"<tr><td>{session_id_html(r.session_id)}</td><td>{_esc(r.user)}</td>"
            f"<td>{_esc(', '.join(r.channels)) or '&mdash;'}</td>"
            f"<td>{_esc(', '.join(r.keys)) or '&mdash;'}</td><td>{r.turns}</td></tr>"
            for r in self.rows
        )
        return (
            "<table class='nexus-sessions'><caption>Sessions (select an id to copy it whole; "
            "<code>.session_ids</code>)</caption><thead><tr><th>id</th><th>user</th>"
            "<th>channels</th><th>state keys</th><th>turns</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
        )


def _turns(state: Mapping[str, Any]) -> int:
    turns = state.get("turns") if isinstance(state, Mapping) else None
    return turns if isinstance(turns, int) and not isinstance(turns, bool) else 0


# --------------------------------------------------------------------------- metrics
class MetricsSummary:
    """The platform's latency summary (``%nexus metrics``).

    ``summary`` is :meth:`PerformanceMetrics.get_summary` (seconds) by
    category (``api``, ``cli``, ``mcp``, ``workflow:NAME``); ``metrics`` is the
    live :class:`~nexus_lab.metrics.PerformanceMetrics`. The ``repr`` shows
    only call counts (and error counts), which do not vary between runs.
    """

    def __init__(self, metrics: Any, monitoring: bool = True) -> None:
        self.metrics = metrics
        self.monitoring = bool(monitoring)
        self.summary: dict[str, dict[str, Any]] = dict(sorted(metrics.get_summary().items()))

    @property
    def counts(self) -> dict[str, int]:
        return {k: int(v["count"]) for k, v in self.summary.items()}

    @property
    def errors(self) -> dict[str, int]:
        return {k: int(v["errors"]) for k, v in self.summary.items() if v.get("errors")}

    def to_dataframe(self) -> Any:
        """One row per category (needs pandas)."""
        return self.metrics.summary_dataframe()

    def __repr__(self) -> str:
        errors = self.errors
        extra = f", errors={errors!r}" if errors else ""
        return f"MetricsSummary(monitoring={self.monitoring!r}, counts={self.counts!r}{extra})"

    def _repr_html_(self) -> str:
        note = ""
        if not self.monitoring:
            note = (
                "<p><b>monitoring is off</b>: create the app with "
                "<code>Nexus(enable_monitoring=True)</code> to record calls.</p>"
            )
        if not self.summary:
            return note + "<p><b>Metrics</b>: no calls recorded yet</p>"
        head = "".join(
            f"<th>{h}</th>"
            for h in ("category", "calls", "errors", "mean ms", "p50 ms", "p95 ms", "p99 ms")
        )
        body = []
        for name, s in self.summary.items():
            cells = [
                _esc(name),
                str(s["count"]),
                str(s["errors"]),
                *(f"{s[k] * 1000:.2f}" for k in ("mean", "median", "p95", "p99")),
            ]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        return (
            f"{note}<table class='nexus-metrics'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
        )


class MetricsChart:
    """A static PNG chart of latency per channel (``%nexus metrics --plot`` fallback).

    One row per channel (or per category when no channel was recorded): what
    the caller waited (p50 and p95) and, beside it, the agent's own p50
    (``agent:CHANNEL``). The legend sits under the axes, never on the bars.
    Rendered with matplotlib's Agg canvas (no pyplot, no GUI); ``png`` holds
    the bytes. Shown as ``image/png`` in a notebook.
    """

    def __init__(self, summary: Mapping[str, Mapping[str, Any]]) -> None:
        from .charts import chart_categories

        self.categories = chart_categories(sorted(summary))
        self.png = _render_png(summary, self.categories)

    def _repr_png_(self) -> bytes:
        return self.png

    def __repr__(self) -> str:
        return f"MetricsChart(categories={self.categories!r})"


def _render_png(summary: Mapping[str, Mapping[str, Any]], names: list[str]) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 1.3 + 0.6 * max(1, len(names))), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if names:
        ys = list(range(len(names)))
        h = 0.26
        p50 = [summary[n]["median"] * 1000 for n in names]
        p95 = [summary[n]["p95"] * 1000 for n in names]
        agent = [summary.get(f"agent:{n}", {}).get("median", 0.0) * 1000 for n in names]
        ax.barh([y - h for y in ys], p50, height=h, label="caller waits, p50")
        ax.barh(ys, p95, height=h, label="caller waits, p95")
        if any(agent):
            ax.barh([y + h for y in ys], agent, height=h, label="agent's own time, p50")
        ax.set_yticks(ys)
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        ax.set_xlabel("latency (ms)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False,
                  fontsize="small")
    else:
        ax.text(0.5, 0.5, "no calls recorded yet", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --------------------------------------------------------------------------- logs
def _clock(ts: float) -> str:
    """Local wall-clock time ``HH:MM:SS.mmm``."""
    import time

    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int((ts % 1) * 1000):03d}"


_LEVEL_COLORS = {"ERROR": "#b91c1c", "CRITICAL": "#b91c1c", "WARNING": "#b45309"}


def log_table_html(entries: list[Any]) -> str:
    """The captured log records (:class:`~nexus_lab.jupyter.logs.LogEntry`), newest first;
    tracebacks folded in a ``<details>``. Shared by ``%nexus logs`` and the dashboard."""
    if not entries:
        return ("<p class='nexus-empty'>No server log records: agent failures and server errors "
                "appear here instead of under a random cell.</p>")
    cell = "text-align:left;padding:1px 8px 1px 0;vertical-align:top"
    head = "".join(f"<th style='{cell}'>{h}</th>" for h in ("time", "level", "logger", "message"))
    rows = []
    for e in reversed(entries):
        color = _LEVEL_COLORS.get(e.level, "#374151")
        text = _esc(e.message if len(e.message) <= 500 else e.message[:499] + "\u2026")
        if e.traceback:
            text = (f"<details><summary>{text}</summary>"
                    f"<pre style='font-size:smaller'>{_esc(e.traceback)}</pre></details>")
        rows.append(
            f"<tr class='nexus-log nexus-log-{_esc(e.level.lower())}'>"
            f"<td style='{cell}'>{_clock(e.created)}</td>"
            f"<td style='{cell}'><b style='color:{color}'>{_esc(e.level)}</b></td>"
            f"<td style='{cell}'><code>{_esc(e.logger)}</code></td><td style='{cell}'>{text}</td></tr>"
        )
    return (f"<table class='nexus-log-table' style='border-collapse:collapse;margin:2px 0'>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


class LogTable:
    """Server-side log records captured in this kernel (``%nexus logs``), oldest first.

    ``entries`` holds the :class:`~nexus_lab.jupyter.logs.LogEntry` records;
    the ``repr`` shows only how many there are per level.
    """

    def __init__(self, entries: list[Any], level: str = "WARNING") -> None:
        self.entries = list(entries)
        self.level = level

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.entries)

    def __getitem__(self, index: int) -> Any:
        return self.entries[index]

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for e in self.entries:
            counts[e.level] = counts.get(e.level, 0) + 1
        return f"LogTable(level={self.level!r}, records={counts!r})"

    def _repr_html_(self) -> str:
        return log_table_html(self.entries)
