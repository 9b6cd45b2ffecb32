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


def render_summary(summary: dict[str, dict[str, Any]], prefix: str = "nexus") -> list[str]:
    """Lines for ``PerformanceMetrics.get_summary()`` output (seconds)."""
    if not summary:
        return []
    name = f"{prefix}_request_duration_seconds"
    lines = [
        f"# HELP {name} Execution latency per category (channel or workflow:NAME).",
        f"# TYPE {name} summary",
    ]
    for category, stats in summary.items():
        lab = _label(category)
        for q, key in _QUANTILES:
            if key in stats:
                lines.append(f'{name}{{category="{lab}",quantile="{q}"}} {_value(stats[key])}')
        count = stats.get("count", 0)
        total = stats["sum"] if "sum" in stats else stats.get("mean", 0.0) * count
        lines.append(f'{name}_sum{{category="{lab}"}} {_value(total)}')
        lines.append(f'{name}_count{{category="{lab}"}} {_value(count)}')
    errors = f"{prefix}_request_errors_total"
    lines.append(f"# HELP {errors} Executions that raised, per category.")
    lines.append(f"# TYPE {errors} counter")
    for category, stats in summary.items():
        lines.append(f'{errors}{{category="{_label(category)}"}} {_value(stats.get("errors", 0))}')
    return lines


def render_metrics(app: Nexus) -> str:
    """The whole ``/metrics`` page for ``app``."""
    lines = render_summary(app.metrics.get_summary())
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
