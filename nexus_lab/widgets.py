"""Live notebook widgets (public import path).

Example::

    from nexus_lab.widgets import ChannelStatus, SessionInspector, MetricsDashboard, Dashboard

    Dashboard(app)                       # channels, sessions and metrics in tabs
    ChannelStatus(app)                   # state / URL / deployments per channel
    SessionInspector(app.session_manager, user_id="user-123")
    MetricsDashboard(app.metrics)
    LogView(level="ERROR")               # server-side log records captured in this kernel

ipywidgets (and matplotlib, for ``MetricsDashboard``) are imported on first
access of a name, so ``import nexus_lab.widgets`` itself is cheap.
See :mod:`nexus_lab.jupyter.widgets` for the details.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "BenchProgress",
    "ChannelStatus",
    "Dashboard",
    "LiveWidget",
    "LogView",
    "MetricsDashboard",
    "SessionInspector",
]

if TYPE_CHECKING:  # pragma: no cover
    from .jupyter.widgets import (  # noqa: F401
        BenchProgress,
        ChannelStatus,
        Dashboard,
        LiveWidget,
        LogView,
        MetricsDashboard,
        SessionInspector,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module("nexus_lab.jupyter.widgets"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
