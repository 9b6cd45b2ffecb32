"""``%nexus sessions | metrics | dashboard | logs | last-error``: reading the platform.

Example::

    %nexus sessions --user alice        # SessionTable: ids, users, channels, turns
    %nexus metrics --plot               # the live MetricsDashboard
    %nexus dashboard                    # channels, sessions, metrics, server log in tabs
    %nexus logs --level ERROR           # the server-side records captured in this kernel
    err = %nexus last-error             # CallError with .traceback
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError

from ..results import LogTable, MetricsChart, MetricsSummary, SessionTable

__all__ = ["sessions", "metrics", "dashboard", "logs", "last_error"]


def sessions(m: Any, args: argparse.Namespace, cell: Any = None) -> SessionTable:
    """The sessions of every manager the app and its deployments use."""
    app = m.app(args.app)
    managers: list[Any] = []
    for manager in [app.session_manager, *(d.session_manager for d in app.deployments.values())]:
        if manager is not None and all(manager is not x for x in managers):
            managers.append(manager)
    found: list[Any] = []
    for manager in managers:
        found.extend(manager.list_sessions(args.user))
    return SessionTable(found, user=args.user)


def metrics(m: Any, args: argparse.Namespace, cell: Any = None) -> Any:
    """The summary; with ``--plot`` the live dashboard (or a PNG chart without ipywidgets)."""
    app = m.app(args.app)
    if not args.plot:
        return MetricsSummary(app.metrics, monitoring=app.enable_monitoring)
    try:
        from ..widgets import MetricsDashboard
    except ImportError:
        MetricsDashboard = None  # noqa: N806
    if MetricsDashboard is not None:
        try:
            return MetricsDashboard(app)
        except ImportError:
            pass
    try:
        return MetricsChart(app.metrics.get_summary())
    except ImportError:
        raise UsageError("--plot needs ipywidgets or matplotlib: pip install 'nexus-lab[jupyter]'") from None


def dashboard(m: Any, args: argparse.Namespace, cell: Any = None) -> Any:
    """The live :class:`~nexus_lab.jupyter.widgets.Dashboard` of the app."""
    app = m.app(args.app)
    try:
        from ..widgets import Dashboard
    except ImportError as exc:
        raise UsageError(f"the dashboard needs ipywidgets: pip install 'nexus-lab[jupyter]' ({exc})") from None
    return Dashboard(app)


def logs(m: Any, args: argparse.Namespace, cell: Any = None) -> LogTable:
    """The last ``-n`` captured server-side records at ``--level`` or above."""
    return LogTable(m.logs.records(args.level, last=args.last), level=args.level)


def last_error(m: Any, args: argparse.Namespace, cell: Any = None) -> Any:
    """The :class:`~nexus_lab.jupyter.results.CallError` of the last failed call."""
    if m.last_error is None:
        raise UsageError("%nexus last-error: no call has failed in this kernel")
    return m.last_error
