"""Prometheus text exposition (format 0.0.4) of a platform's metrics.

Written by hand (the format is small) so that no extra package is needed.
Every metrics category (``api``, ``cli``, ``mcp``, ``workflow:NAME`` or any
name recorded by user code) becomes one labelled series of a summary::

    # TYPE nexus_request_duration_seconds summary
    nexus_request_duration_seconds{category="api",quantile="0.5"} 0.0012
    nexus_request_duration_seconds_sum{category="api"} 0.042
    nexus_request_duration_seconds_count{category="api"} 35

plus ``nexus_request_errors_total{category=...}`` (counter),
``nexus_active_sessions`` (gauge, when the platform has a session manager),
``nexus_deployments`` and ``nexus_uptime_seconds``.

The agent's own time, recorded by the execution path under ``agent:CHANNEL``,
is a summary of its own, ``nexus_agent_duration_seconds{channel=...}``: it is
a part of a request's duration, not another request, so it stays out of the
request series (and out of their error counts).

Quantiles cover the metrics window (the most recent samples); ``_sum``,
``_count`` and the error counter cover every sample.

Example::

    from nexus_lab.platform.prometheus import render_metrics, CONTENT_TYPE
    text = render_metrics(app)
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Nexus

__all__ = ["render_metrics", "render_summary", "CONTENT_TYPE"]

#: The content type Prometheus expects for the text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_QUANTILES = (("0.5", "median"), ("0.95", "p95"), ("0.99", "p99"))
#: Category prefix under which the execution path records the agent's own time.
_AGENT = "agent:"


def _value(v: Any) -> str:
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _summary_lines(name: str, help_text: str, label: str, summary: dict[str, dict[str, Any]]) -> list[str]:
    """A summary metric ``name`` with one series per key of ``summary`` (seconds)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} summary"]
    for key, stats in summary.items():
        lab = _label(key)
        for q, stat in _QUANTILES:
            if stat in stats:
                lines.append(f'{name}{{{label}="{lab}",quantile="{q}"}} {_value(stats[stat])}')
        count = stats.get("count", 0)
        total = stats["sum"] if "sum" in stats else stats.get("mean", 0.0) * count
        lines.append(f'{name}_sum{{{label}="{lab}"}} {_value(total)}')
        lines.append(f'{name}_count{{{label}="{lab}"}} {_value(count)}')
    return lines


def render_summary(summary: dict[str, dict[str, Any]], prefix: str = "nexus") -> list[str]:
    """Lines for ``PerformanceMetrics.get_summary()`` output (seconds), one series per category."""
    if not summary:
        return []
    lines = _summary_lines(
        f"{prefix}_request_duration_seconds",
        "Execution latency per category (channel or workflow:NAME).",
        "category",
        summary,
    )
    errors = f"{prefix}_request_errors_total"
    lines.append(f"# HELP {errors} Executions that raised, per category.")
    lines.append(f"# TYPE {errors} counter")
    for category, stats in summary.items():
        lines.append(f'{errors}{{category="{_label(category)}"}} {_value(stats.get("errors", 0))}')
    return lines


def render_metrics(app: Nexus) -> str:
    """The whole ``/metrics`` page for ``app``."""
    summary = app.metrics.get_summary()
    agent = {k[len(_AGENT) :]: v for k, v in summary.items() if k.startswith(_AGENT)}
    lines = render_summary({k: v for k, v in summary.items() if not k.startswith(_AGENT)})
    if agent:
        lines += _summary_lines(
            "nexus_agent_duration_seconds",
            "The agent's own part of the execution latency, per channel.",
            "channel",
            agent,
        )
    manager = getattr(app, "_session_manager", None)  # do not create one just to report 0
    if manager is not None:
        try:
            active = manager.get_session_metrics().get("active_sessions")
        except Exception:  # a store that is down must not break the scrape
            active = None
        if active is not None:
            lines += [
                "# HELP nexus_active_sessions Sessions that have not expired.",
                "# TYPE nexus_active_sessions gauge",
                f"nexus_active_sessions {_value(active)}",
            ]
    lines += [
        "# HELP nexus_deployments Registered deployments.",
        "# TYPE nexus_deployments gauge",
        f"nexus_deployments {len(app.deployments)}",
        "# HELP nexus_uptime_seconds Seconds since the platform was created.",
        "# TYPE nexus_uptime_seconds gauge",
        f"nexus_uptime_seconds {_value(round(time.time() - app.started_at, 3))}",
    ]
    return "\n".join(lines) + "\n"
