"""HTML for notebooks: every ``_repr_html_`` and widget renders through this module.

It sits at the bottom of the package (the standard library only, no
``nexus_lab`` import), so the platform, sessions and metrics can render
themselves without importing the Jupyter layer, and there is one renderer.

nbval compares the ``text/html`` of every output, so everything rendered here
is *stable*: it holds no ids, addresses, ports, timestamps or durations, only
what the notebook itself decided (names, states, inputs, counts). Two apps with
the same deployments render the same HTML whatever ports they got. The live,
volatile figures (URLs, latencies) belong to the widgets in
:mod:`nexus_lab.jupyter.widgets` and to ``app.api_url`` / ``app.mcp_url``.

This module imports only the standard library.

Example::

    from nexus_lab.render import nexus_html, session_html, metrics_html

    app                       # in a cell: Nexus._repr_html_ -> nexus_html(app)
    session_html(manager.get_session(sid))
    metrics_html(app.metrics)                  # counts and errors only (stable)
    metrics_html(app.metrics, timings=True)    # plus p50/p95/p99 (not stable)
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = [
    "STATE_COLORS",
    "CHANNEL_LABELS",
    "nexus_html",
    "nexus_text",
    "deployments_html",
    "session_html",
    "metrics_html",
    "state_tree_html",
    "state_badge",
    "value_text",
    "execution_html",
    "channels_html",
    "metrics_table_html",
]

#: Channels in display order and their labels.
CHANNEL_LABELS = {"api": "API", "cli": "CLI", "mcp": "MCP"}

#: Colours of the state badges (CSS class ``nexus-state-<state>`` carries the same information).
STATE_COLORS = {
    "registered": "#6b7280",
    "serving": "#15803d",
    "degraded": "#c2410c",
    "stopped": "#b45309",
    "failed": "#b91c1c",
}

_TABLE = "border-collapse:collapse;margin:2px 0"
_CELL = "text-align:left;padding:1px 8px 1px 0;vertical-align:top"
_MAX_TEXT = 200
_MAX_ITEMS = 50
_MAX_DEPTH = 6

esc = html.escape


def state_badge(state: str) -> str:
    """``<span class="nexus-state nexus-state-serving">serving</span>`` with a colour."""
    color = STATE_COLORS.get(state, "#374151")
    return (
        f"<span class='nexus-state nexus-state-{esc(state)}' "
        f"style='color:{color};font-weight:bold'>{esc(state)}</span>"
    )


def _th(text: str) -> str:
    return f"<th style='{_CELL}'>{text}</th>"


def _td(text: str) -> str:
    return f"<td style='{_CELL}'>{text}</td>"


def _inputs_html(describe: list[dict[str, Any]]) -> str:
    parts = []
    for item in describe:
        text = f"{item['name']}: {item['type']}"
        if not item.get("required", True):
            text += f" = {value_text(item.get('default'), 40)}"
        parts.append(f"<code>{esc(text)}</code>")
    return ", ".join(parts) or "&mdash;"


def deployments_html(app: Any) -> str:
    """A table of ``app``'s deployments: name, kind, channels, inputs, sessions, description."""
    deployments = app.deployments
    if not deployments:
        return "<p class='nexus-empty'>No deployments yet: use <code>deploy_multi_channel(agent, app, name)</code>.</p>"
    head = "".join(_th(h) for h in ("deployment", "kind", "channels", "inputs", "sessions", "description"))
    rows = []
    for name in sorted(deployments):
        dep = deployments[name]
        channels = ", ".join(CHANNEL_LABELS.get(c, c) for c in _ordered(dep.channels))
        try:
            inputs = _inputs_html(dep.schema.describe())
        except Exception:  # a repr must not raise
            inputs = "?"
        rows.append(
            f"<tr class='nexus-deployment'>{_td(f'<b>{esc(name)}</b>')}{_td(esc(dep.kind))}"
            f"{_td(esc(channels))}{_td(inputs)}"
            f"{_td('yes' if dep.session_manager is not None else 'no')}"
            f"{_td(esc(_shorten(dep.description, 120)))}</tr>"
        )
    return (
        f"<table class='nexus-deployments' style='{_TABLE}'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def nexus_html(app: Any) -> str:
    """The stable HTML view of a :class:`~nexus_lab.Nexus` (its ``_repr_html_``).

    Shows each channel's state and deployments, the deployments with their
    inputs, and the security/monitoring settings. URLs are left out on
    purpose (they carry ports that change from run to run): read
    ``app.api_url`` and ``app.mcp_url``, or use the ``ChannelStatus`` widget.
    """
    try:
        status = app.channel_status()
    except Exception as exc:  # a repr must not raise
        return f"<p class='nexus-error'>Nexus: cannot read the channel status ({esc(type(exc).__name__)})</p>"
    head = "".join(_th(h) for h in ("channel", "state", "deployments"))
    rows = []
    for ch in _ordered(status):
        entry = status[ch]
        state = str(entry.get("state", "?"))
        names = entry.get("deployments") or []
        deps = esc(", ".join(names)) if names else "&mdash;"
        extra = ""
        if entry.get("error"):
            extra = f"<br><span class='nexus-error'>{esc(_shorten(str(entry['error']), 200))}</span>"
        rows.append(
            # not ``nexus-channel-<ch>``: that class marks the live ChannelStatus rows
            f"<tr class='nexus-app-channel nexus-app-channel-{esc(ch)} nexus-state-{esc(state)}'>"
            f"{_td(esc(CHANNEL_LABELS.get(ch, ch)))}{_td(state_badge(state) + extra)}{_td(deps)}</tr>"
        )
    settings = [
        f"auth {'on' if getattr(app, 'enable_auth', False) else 'off'}",
        f"rate limit {esc(str(app.rate_limit)) + '/min' if getattr(app, 'rate_limit', None) else 'off'}",
        f"monitoring {'on' if getattr(app, 'enable_monitoring', False) else 'off'}",
    ]
    title = esc(str(getattr(app, "title", "nexus_lab")))
    serving = any(status[c].get("state") == "serving" for c in status)
    hint = (
        "URLs: <code>app.api_url</code>, <code>app.mcp_url</code>"
        if serving
        else "start serving with <code>app.start(block=False)</code>"
    )
    return (
        "<div class='nexus-app'>"
        f"<b>Nexus</b> <code>{title}</code> &middot; {len(app.deployments)} deployment"
        f"{'' if len(app.deployments) == 1 else 's'} &middot; {' &middot; '.join(settings)}"
        f"<table class='nexus-app-channels' style='{_TABLE}'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"{deployments_html(app)}"
        f"<div class='nexus-hint' style='color:#6b7280'>{hint}</div>"
        "</div>"
    )


def nexus_text(app: Any) -> str:
    """A stable one-line summary: ``Nexus(deployments=[...], api=serving, cli=serving, mcp=serving)``."""
    status = app.channel_status()
    states = ", ".join(f"{ch}={status[ch]['state']}" for ch in _ordered(status))
    return f"Nexus(deployments={sorted(app.deployments)!r}, {states})"


def session_html(session: Any, *, state: bool = True) -> str:
    """A stable view of a :class:`~nexus_lab.sessions.Session`: user, channels, state tree.

    No session id, timestamps or expiry: only what the notebook put there.
    """
    if session is None:
        return "<p class='nexus-empty'>No such session (unknown or expired).</p>"
    channels = list(getattr(session, "channels", None) or [])
    rows = [
        ("user", esc(str(session.user_id))),
        ("channels", esc(", ".join(channels)) if channels else "&mdash;"),
    ]
    metadata = getattr(session, "metadata", None)
    if metadata:
        rows.append(("metadata", state_tree_html(metadata)))
    if state:
        rows.append(("state", state_tree_html(getattr(session, "state", {}) or {})))
    body = "".join(f"<tr><th style='{_CELL}'>{k}</th>{_td(v)}</tr>" for k, v in rows)
    return f"<table class='nexus-session' style='{_TABLE}'><caption style='text-align:left'><b>Session</b></caption>{body}</table>"


def metrics_html(metrics: Any, *, timings: bool = False) -> str:
    """A table of a :class:`~nexus_lab.metrics.PerformanceMetrics`, one row per category.

    By default only counts and errors (stable from run to run); with
    ``timings=True`` also mean/p50/p95/p99/max in milliseconds (volatile: tag
    such a notebook cell ``# NBVAL_IGNORE_OUTPUT``).
    """
    summary = metrics.get_summary() if hasattr(metrics, "get_summary") else dict(metrics)
    return summary_table_html(summary, timings=timings)


def summary_table_html(summary: dict[str, dict[str, Any]], *, timings: bool = True) -> str:
    """The table of :func:`metrics_html` from a ``get_summary()`` dict."""
    if not summary:
        return "<p class='nexus-empty'>No samples recorded yet.</p>"
    cols = ["category", "count", "errors"]
    if timings:
        cols += ["mean ms", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    head = "".join(_th(c) for c in cols)
    rows = []
    for name, s in summary.items():
        cells = [f"<code>{esc(name)}</code>", str(s.get("count", 0)), str(s.get("errors", 0))]
        if timings:
            cells += [f"{s[k] * 1000:.2f}" for k in ("mean", "median", "p95", "p99", "max")]
        rows.append(f"<tr class='nexus-metric-row'>{''.join(_td(c) for c in cells)}</tr>")
    return (
        f"<table class='nexus-metrics' style='{_TABLE}'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# ----------------------------------------------------------------------------- state tree
def value_text(value: Any, limit: int = _MAX_TEXT) -> str:
    """A short JSON-like text of a scalar (strings quoted), cut at ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return _shorten(text, limit)


def state_tree_html(value: Any, *, open_levels: int = 2) -> str:
    """A JSON value as a collapsible HTML tree (``<details>`` per dict/list).

    Dicts and lists show at most 50 items per level and 6 levels; long strings
    are shortened. The first ``open_levels`` levels start expanded.
    """
    return f"<div class='nexus-tree' style='font-family:monospace'>{_tree(value, 0, open_levels)}</div>"


def _tree(value: Any, depth: int, open_levels: int) -> str:
    if isinstance(value, dict):
        if not value:
            return "<code>{}</code>"
        if depth >= _MAX_DEPTH:
            return f"<code>{{…{len(value)} keys}}</code>"
        items = list(value.items())
        lis = [_item(esc(str(k)), v, depth, open_levels) for k, v in items[:_MAX_ITEMS]]
        return _list_html(lis, len(items))
    if isinstance(value, (list, tuple)):
        if not value:
            return "<code>[]</code>"
        if depth >= _MAX_DEPTH:
            return f"<code>[…{len(value)} items]</code>"
        lis = [_item(str(i), v, depth, open_levels) for i, v in enumerate(value[:_MAX_ITEMS])]
        return _list_html(lis, len(value))
    return f"<code>{esc(value_text(value))}</code>"


def _item(key: str, value: Any, depth: int, open_levels: int) -> str:
    """One ``<li>``: ``key: value`` for a scalar, a collapsible ``<details>`` for a container."""
    label = f"<span class='nexus-key'>{key}</span>"
    if isinstance(value, (dict, list, tuple)) and value and depth + 1 < _MAX_DEPTH:
        kind = f"{{{len(value)} keys}}" if isinstance(value, dict) else f"[{len(value)} items]"
        opened = " open" if depth + 1 < open_levels else ""
        return (
            f"<li><details{opened}><summary>{label} <span style='color:#6b7280'>{kind}</span>"
            f"</summary>{_tree(value, depth + 1, open_levels)}</details></li>"
        )
    return f"<li>{label}: {_tree(value, depth + 1, open_levels)}</li>"


def _list_html(lis: list[str], total: int) -> str:
    if total > len(lis):
        lis.append(f"<li style='color:#6b7280'>… {total - len(lis)} more</li>")
    return f"<ul style='margin:0;padding-left:1.2em;list-style:none'>{''.join(lis)}</ul>"


# ----------------------------------------------------------------------------- helpers
def _ordered(channels: Any) -> list[str]:
    """Channels in the canonical order (api, cli, mcp), others after, sorted."""
    known = [c for c in CHANNEL_LABELS if c in channels]
    return known + sorted(c for c in channels if c not in CHANNEL_LABELS)


def _shorten(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def execution_html(name: str, channel: str, outputs: Any) -> str:
    """One call's outputs (``Execution._repr_html_``)."""
    body = esc(json.dumps(outputs, indent=2, ensure_ascii=False, default=str))
    return (
        f"<div class='nexus-execution'><b>{esc(name)}</b> via "
        f"<code>{esc(channel)}</code><pre>{body}</pre></div>"
    )


def channels_html(identifiers: dict[str, Any]) -> str:
    """The identifiers a deploy returns, one row per channel (``DeploymentChannels``)."""
    labels = {"api": "HTTP API", "cli": "CLI", "mcp": "MCP tool"}
    rows = "".join(
        f"<tr><td>{esc(labels.get(k, k))}</td><td><code>{esc(str(v))}</code></td></tr>"
        for k, v in identifiers.items()
    )
    return (
        "<table class='nexus-channels'><thead><tr><th>channel</th><th>identifier</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def metrics_table_html(summary: dict[str, dict[str, Any]]) -> str:
    """``PerformanceMetrics._repr_html_``: count, errors and latency per category, in ms."""
    if not summary:
        return "<p><b>PerformanceMetrics</b>: no samples recorded yet</p>"
    head = "".join(
        f"<th>{h}</th>"
        for h in ("category", "count", "errors", "mean ms", "p50 ms", "p95 ms", "p99 ms")
    )
    body = []
    for name, s in summary.items():
        cells = [
            esc(name),
            str(s["count"]),
            str(s["errors"]),
            *(f"{s[k] * 1000:.2f}" for k in ("mean", "median", "p95", "p99")),
        ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (
        '<table class="nexus-metrics">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
