"""``%nexus deploy | undeploy | start | stop | status``: the platform's registry and servers.

Example::

    %nexus deploy agent --name assistant      # deploy_multi_channel(agent, nexus_app, "assistant")
    %nexus start                              # app.start(block=False)
    %nexus undeploy assistant                 # app.unregister("assistant")
    %nexus stop                               # app.stop(), workers released, widgets paused
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from IPython.core.error import UsageError

from ...errors import DeploymentNotFound
from ...platform.deployment import CHANNELS
from ..parsing import did_you_mean
from ..results import PlatformStatus
from ._common import USER_ERRORS, fail

__all__ = ["deploy", "undeploy", "start", "stop", "status", "release_workers"]

#: Seconds ``%nexus stop`` waits silently before saying that in-flight calls hold it.
STOP_NOTICE_AFTER = 0.5


def deploy(m: Any, args: argparse.Namespace, cell: Any = None) -> Any:
    """``deploy_multi_channel`` / ``deploy_as_*`` / ``deploy_with_sessions`` of a notebook variable."""
    from ...platform import deploy as d
    app = m.app(args.app)
    agent = m.lookup(args.agent, "AGENT")
    name = args.name or args.agent.rsplit(".", 1)[-1]
    use_cache = not args.no_cache
    channels = args.channels
    try:
        if args.sessions is not None:
            if channels != CHANNELS:
                raise UsageError(
                    "--sessions deploys on all channels (deploy_with_sessions); drop --channels"
                )
            manager = m.lookup(args.sessions, "--sessions")
            return d.deploy_with_sessions(agent, app, name, manager, use_cache=use_cache)
        if channels == CHANNELS:
            return d.deploy_multi_channel(agent, app, name, use_cache=use_cache)
        functions = {"api": d.deploy_as_api, "cli": d.deploy_as_cli, "mcp": d.deploy_as_mcp}
        for channel in channels:
            functions[channel](agent, app, name, use_cache=use_cache)
    except USER_ERRORS as exc:
        raise fail(f"cannot deploy {args.agent!r} as {name!r}", exc) from None
    deployed = app.get_deployment(name).channels
    return d.DeploymentChannels((c, d._identifier(c, name)) for c in CHANNELS if c in deployed)


def undeploy(m: Any, args: argparse.Namespace, cell: Any = None) -> PlatformStatus:
    """``app.unregister(NAME)``; the channels stop offering it at once (also while serving)."""
    app = m.app(args.app)
    try:
        app.unregister(args.name)
    except DeploymentNotFound:
        names = sorted(app.deployments)
        raise UsageError(
            f"%nexus undeploy: no deployment named {args.name!r} "
            f"(deployed: {', '.join(names) or 'none'}){did_you_mean(args.name, names)}"
        ) from None
    return PlatformStatus.from_app(app)


def start(m: Any, args: argparse.Namespace, cell: Any = None) -> PlatformStatus:
    """``app.start(block=False)``; resumes the widgets ``%nexus stop`` paused."""
    app = m.app(args.app)
    if app.is_running:
        if args.api_port is not None or args.mcp_port is not None:
            raise UsageError("the platform is already running; %nexus stop first to change ports")
        return PlatformStatus.from_app(app)
    if args.api_port is not None:
        app.api_port = args.api_port
    if args.mcp_port is not None:
        app.mcp_port = args.mcp_port
    try:
        app.start(block=False)
    except USER_ERRORS as exc:
        raise fail("the platform did not start", exc) from None
    if all(app is not a for a in m.started_apps):
        m.started_apps.append(app)
    paused = m.paused.pop(id(app), None)
    widgets = sys.modules.get("nexus_lab.jupyter.widgets")
    if paused and widgets is not None:
        widgets.resume_widgets(paused)
    return PlatformStatus.from_app(app)


def stop(m: Any, args: argparse.Namespace, cell: Any = None) -> PlatformStatus:
    """Stop serving, end the worker threads, close the client, pause the platform's widgets."""
    app = m.app(args.app)
    m.close_clients(app)
    if app.is_running:
        _stop_telling(app)
    release_workers(app)
    widgets = sys.modules.get("nexus_lab.jupyter.widgets")  # no widget ever made: nothing to pause
    if widgets is not None:
        paused = widgets.pause_widgets(app)
        if paused:
            m.paused.setdefault(id(app), []).extend(paused)
    return PlatformStatus.from_app(app)


def status(m: Any, args: argparse.Namespace, cell: Any = None) -> PlatformStatus:
    """The channels, their state and addresses."""
    return PlatformStatus.from_app(m.app(args.app))


# --------------------------------------------------------------------------- helpers
def _stop_telling(app: Any) -> None:
    """``app.stop()``, saying so when in-flight calls make it wait (a graceful stop lets them finish)."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            app.stop()
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=run, name="nexus-stop", daemon=True)
    worker.start()
    if not done.wait(STOP_NOTICE_AFTER):
        print(
            "%nexus stop: waiting for the calls in flight to finish (new calls are refused; "
            "after 10 s they are cut off)...",
            flush=True,
        )
        done.wait()
    worker.join()
    if failure:
        raise failure[0]


def release_workers(app: Any) -> None:
    """End the threads a stopped platform ran sync agents in (a new pool starts on demand).

    ``Nexus.close()`` does this too, but also closes the session manager the
    app made for itself, which a notebook still uses after ``%nexus stop``.
    """
    if app.is_running:
        return
    app.release_workers()
