"""``%nexus call`` / ``%%nexus call``: one call through a real channel.

* the platform serving: ``api`` and ``mcp`` through the magics' cached
  :class:`~nexus_lab.client.AsyncNexusClient` on their event-loop thread,
  ``cli`` as a ``nexus run --json`` subprocess;
* not serving: ``api`` runs in-process (``app.execute``).

A failure becomes a :class:`~nexus_lab.jupyter.results.CallError` (kept as
``%nexus last-error``) and one ``UsageError`` line naming the error type,
the message and the error id. For an agent failure of a platform running in
this kernel, the message is the agent's own exception and the traceback is
looked up by error id in the captured server log
(:mod:`nexus_lab.jupyter.logs`); it never prints under the cell.

An interrupt (``KeyboardInterrupt``) cancels the call in flight: the
coroutine on the loop thread is cancelled and its client closed (its MCP
session may be mid-call), or the ``nexus run`` subprocess is killed.

Example::

    r = %nexus call assistant "What is AI?" --channel mcp
    %nexus call assistant query="more" --session {r.session_id}
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import traceback as tb_module
from typing import Any

from IPython.core.error import UsageError

from ...errors import NexusError
from ..parsing import API_KEY_ENV, did_you_mean, parse_inputs, text_inputs
from ..results import CallError, CallResult
from ._common import fail, one_line

__all__ = ["call", "describe_error"]

_ERROR_ID = re.compile(r"error id ([0-9A-Za-z]{6,})")
# `nexus run` exit codes -> error types (nexus_lab.cli documents them)
_EXIT_TYPES = {1: "server_error", 2: "usage_error", 3: "connection_error", 4: "not_found",
               5: "invalid_input", 6: "unauthorized", 7: "rate_limited"}
#: Seconds past --timeout the channel gets before the magic gives up on it.
GRACE = 30.0


def call(m: Any, args: argparse.Namespace, cell: str | None) -> Any:
    """Run one call; return a :class:`CallResult` (or the wire dict with ``--json``)."""
    app = m.app(args.app)
    inputs = parse_inputs(args.params, text_inputs(app, args.name))
    if cell is not None:
        query = cell.strip()
        if not query:
            raise UsageError("the %%nexus call cell is empty: write the query in its body")
        if "query" in inputs:
            raise UsageError("the query is the cell body; do not also pass it on the %%nexus line")
        inputs["query"] = query
    session_id = args.session
    if session_id is not None and session_id.strip() in ("", "None", "null"):
        # what `--session {r.session_id}` expands to when r ran without a session
        raise UsageError(
            f"--session {session_id!r}: no session id (a result of a deployment without sessions "
            "has session_id None); leave --session out, or deploy with --sessions MANAGER"
        )
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    channel = args.channel
    if not app.is_running:
        m.prune_clients()
        if channel != "api":
            raise UsageError(
                f"the platform is not running: run %nexus start first to call {args.name!r} "
                f"over {channel} (or use --channel api to run it in-process)"
            )
        result = _in_process(m, app, args.name, inputs, session_id)
    elif channel in ("api", "mcp"):
        result = _through_client(m, app, args.name, inputs, session_id, api_key, args.timeout, channel)
    else:
        result = _through_cli(m, app, args.name, inputs, session_id, api_key, args.timeout)
    return result.json if args.json else result


# --------------------------------------------------------------------------- channels
def _in_process(m: Any, app: Any, name: str, inputs: dict, session_id: str | None) -> CallResult:
    try:
        execution = app.execute(name, inputs, channel="api", session_id=session_id)
    except NexusError as exc:
        raise _failed(m, app, exc, name, "api", "in-process", None, f"{name} (in-process)") from None
    wire = execution.to_dict()
    return CallResult(
        name=name, channel="api", transport="in-process", outputs=execution.outputs,
        session_id=execution.session_id, json=wire, execution_time_ms=wire.get("execution_time_ms"),
    )


def _through_client(m: Any, app: Any, name: str, inputs: dict, session_id: str | None,
                    api_key: str | None, timeout: float, channel: str) -> CallResult:
    client = m.client(app, api_key)
    coro = client.run(name, inputs, session_id=session_id, channel=channel, timeout=timeout)
    try:
        result = m.loop().run(coro, timeout=timeout + GRACE)
    except KeyboardInterrupt:
        m.drop_client(client)  # cancelled mid-call: start the next call on a fresh client
        raise
    except NexusError as exc:
        where = f"{name} via {channel}"
        transport = "http" if channel == "api" else channel
        raise _failed(m, app, exc, name, channel, transport, api_key, where) from None
    except TimeoutError:
        m.drop_client(client)
        raise UsageError(f"{name} via {channel}: no answer within {timeout + GRACE:g} s") from None
    return CallResult(
        name=name, channel=channel, transport="http" if channel == "api" else channel,
        outputs=result.outputs, session_id=result.session_id, json=result.raw,
        execution_time_ms=result.execution_time_ms,
    )


def _through_cli(m: Any, app: Any, name: str, inputs: dict, session_id: str | None,
                 api_key: str | None, timeout: float) -> CallResult:
    where = f"{name} via cli"
    cmd = [
        sys.executable, "-m", "nexus_lab.cli", "run", name,
        "--url", app.api_url, "--json", "--json-input", json.dumps(inputs),
        "--timeout", f"{timeout:g}",
    ]
    if session_id:
        cmd += ["--session", session_id]
    env = dict(os.environ)
    env.pop("NEXUS_URL", None)
    if api_key:
        env[API_KEY_ENV] = api_key
    try:
        # on KeyboardInterrupt subprocess.run kills the child before re-raising
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout + GRACE,
                              check=False)
    except subprocess.TimeoutExpired:
        raise UsageError(f"{where}: `nexus run` did not finish within {timeout + GRACE:g} s") from None
    except OSError as exc:
        raise fail(f"{where}: cannot run the nexus CLI", exc) from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        message = (errors or lines or [f"exit status {proc.returncode}"])[-1]
        message = message.removeprefix("error:").strip()
        found = _ERROR_ID.search(message)
        etype = _EXIT_TYPES.get(proc.returncode, "error")
        if found and proc.returncode == 1:
            # a 500 with an error id: the agent's, unless the platform itself failed
            # (the client tells them apart by the same words)
            etype = "internal_error" if "internal server error" in message else "agent_error"
        info = CallError(
            name=name, channel="cli", transport="cli", error_type=etype, message=message,
            error_id=found.group(1) if found else None, exit_code=proc.returncode,
        )
        _add_server_detail(m, info)
        m.last_error = info
        raise UsageError(info.line(where))
    try:
        body = json.loads(proc.stdout)
    except ValueError:
        raise UsageError(f"{where}: `nexus run --json` printed no JSON: {proc.stdout[:200]!r}") from None
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), dict):
        raise UsageError(f"{where}: unexpected answer {str(body)[:200]!r}")
    return CallResult(
        name=name, channel="cli", transport="cli", outputs=body["outputs"],
        session_id=body.get("session_id"), json=body, execution_time_ms=body.get("execution_time_ms"),
    )


# --------------------------------------------------------------------------- errors
def describe_error(exc: NexusError, name: str, channel: str, transport: str,
                   api_key: str | None = None, logs: Any = None, app: Any = None) -> CallError:
    """A :class:`CallError` for ``exc``: type, one-line message, error id, traceback when known.

    ``logs`` is the kernel's :class:`~nexus_lab.jupyter.logs.LogCapture`
    (where a platform running in this kernel logged the traceback); ``app``
    names the deployments for a ``did you mean``.
    """
    from ...errors import AuthenticationError, Forbidden, NexusConnectionError

    message = one_line(exc)
    if isinstance(exc, NexusConnectionError):
        if getattr(exc, "connected", False) and "no answer" in message:
            message += " (raise --timeout)"
    elif isinstance(exc, (AuthenticationError, Forbidden)) and not api_key:
        message += f" (pass --api-key or set ${API_KEY_ENV})"
    elif exc.error_type == "not_found" and app is not None and name not in app.deployments:
        message += did_you_mean(name, app.deployments)
    info = CallError(
        name=name, channel=channel, transport=transport, error_type=exc.error_type,
        message=message, error_id=getattr(exc, "error_id", None) or None,
        http_status=getattr(exc, "http_status", None), exception=exc,
    )
    cause = exc.__cause__
    if transport == "in-process" and isinstance(cause, BaseException) and info.error_id:
        # the agent's own exception, chained by the platform
        info.traceback = "".join(tb_module.format_exception(type(cause), cause, cause.__traceback__))
        info.message = one_line(ValueError(tb_module.format_exception_only(type(cause), cause)[-1]))
    elif logs is not None:
        _add_server_detail(None, info, logs)
    return info


def _add_server_detail(m: Any, info: CallError, logs: Any = None) -> None:
    """Fill in the traceback (and the agent's own exception) logged under ``info.error_id``."""
    logs = logs if logs is not None else getattr(m, "logs", None)
    if logs is None or not info.error_id:
        return
    entry = logs.entry_for(info.error_id)
    if entry is None or not entry.traceback:
        return
    info.traceback = entry.traceback
    last = [ln for ln in entry.traceback.splitlines() if ln.strip()]
    if last:
        info.message = " ".join(last[-1].split())


def _failed(m: Any, app: Any, exc: NexusError, name: str, channel: str, transport: str,
            api_key: str | None, where: str) -> UsageError:
    info = describe_error(exc, name, channel, transport, api_key, logs=m.logs, app=app)
    m.last_error = info
    return UsageError(info.line(where))
