"""The ``%nexus`` subcommands, one small module per concern (the magic only routes here).

Each handler is ``handler(magics, args, cell) -> result``: ``magics`` is the
:class:`~nexus_lab.jupyter.magics.NexusMagics` (the current app, the clients,
the last error), ``args`` the parsed ``argparse.Namespace`` and ``cell`` the
body of a ``%%nexus`` cell (``call`` only). Handlers are thin: the work is
done by the platform (``nexus_lab.platform``), the client
(``nexus_lab.client``), :mod:`nexus_lab.jupyter.bench` and the result
classes of :mod:`nexus_lab.jupyter.results`.

Example::

    from nexus_lab.jupyter.commands import HANDLERS
    HANDLERS["status"](magics, argparse.Namespace(app=None), None)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import bench, call, platform, views

__all__ = ["HANDLERS"]

HANDLERS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "deploy": platform.deploy,
    "undeploy": platform.undeploy,
    "start": platform.start,
    "stop": platform.stop,
    "status": platform.status,
    "call": call.call,
    "bench": bench.bench,
    "sessions": views.sessions,
    "metrics": views.metrics,
    "dashboard": views.dashboard,
    "logs": views.logs,
    "last-error": views.last_error,
}
