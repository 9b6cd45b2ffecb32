"""The ``nexus`` command line: run deployments, inspect and serve a platform.

Only ``click`` and the standard library are imported at module level, so
``nexus --help`` answers in well under half a second; the client
(:class:`nexus_lab.client.NexusClient`, with ``httpx``) and the platform are
imported inside the commands that need them.

Commands::

    nexus run NAME [--query TEXT] [--input k=v ...] [--json-input '{...}'] [--session ID]
    nexus list                       deployments: name, channels, inputs
    nexus health                     platform health (non-zero exit unless healthy)
    nexus serve APP_REF              serve an app's API and MCP until Ctrl-C / SIGTERM
    nexus mcp APP_REF                serve an app's deployments as MCP tools over stdio
    nexus sessions list|create|show|delete
    nexus demo                       the self-contained demo (nexus_lab.demo)

The client commands talk to a running platform over HTTP, through
:class:`~nexus_lab.client.NexusClient` (one connection per command): ``--url`` (default
``$NEXUS_URL``, else ``http://127.0.0.1:8000``), ``--api-key`` (default
``$NEXUS_API_KEY``, sent as ``Authorization: Bearer``) and ``--timeout``
(default ``$NEXUS_TIMEOUT``, else 60 s). Every request carries
``X-Nexus-Channel: cli``, so the platform records the call on the ``cli``
channel and converts ``--input`` text to the deployment's input types.

``nexus run`` prints the answer on stdout (the ``response`` output when
there is one, else the outputs as JSON; the whole response with ``--json``)
and the session id on stderr (``session: <id>``), so stdout stays the answer.

Exit codes (an error is one ``error: ...`` line on stderr, never a traceback):

====  ===========================================================
0     success
1     server or agent error (HTTP 5xx), timeout, platform failed to start
2     usage error (bad option, malformed ``--input``, invalid JSON, bad APP_REF)
3     cannot reach the server (start one with ``nexus serve`` or ``make demo``)
4     not found: unknown deployment or session (HTTP 404)
5     invalid input (HTTP 400 / 413 / 422)
6     authentication failed (HTTP 401 / 403)
7     rate limited (HTTP 429; the message says when to retry)
====  ===========================================================

Set ``NEXUS_DEBUG=1`` to get the traceback of an unexpected error.

Example::

    $ nexus serve nexus_lab.demo:build_app --api-port 8000 &
    $ nexus run assistant --query "What is AI?"
    [mock:gpt-4] You said: What is AI?
    session: 3f0c...
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click

__all__ = [
    "main",
    "cli",
    "CliError",
    "EXIT_OK",
    "EXIT_SERVER",
    "EXIT_USAGE",
    "EXIT_UNREACHABLE",
    "EXIT_NOT_FOUND",
    "EXIT_INVALID",
    "EXIT_AUTH",
    "EXIT_RATE_LIMITED",
    "shutdown_signals",
]

EXIT_OK = 0
EXIT_SERVER = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_INVALID = 5
EXIT_AUTH = 6
EXIT_RATE_LIMITED = 7

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0

_EPILOG = """\b
Exit codes:
  0  success
  1  server or agent error (HTTP 5xx), timeout, platform failed to start
  2  usage error (bad option, malformed --input, invalid JSON, bad APP_REF)
  3  cannot reach the server (start one with `nexus serve APP_REF` or `make demo`)
  4  not found: unknown deployment or session (HTTP 404)
  5  invalid input (HTTP 400/413/422)
  6  authentication failed (HTTP 401/403)
  7  rate limited (HTTP 429)

\b
Environment: NEXUS_URL (default http://127.0.0.1:8000), NEXUS_API_KEY,
NEXUS_TIMEOUT (seconds, default 60), NEXUS_DEBUG=1 (tracebacks).
"""


class CliError(click.ClickException):
    """An error shown as one ``error: ...`` line on stderr, exiting with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_SERVER) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file or sys.stderr)


# ---------------------------------------------------------------------------
# the client: nexus_lab.client.NexusClient, errors turned into CliError
# ---------------------------------------------------------------------------
def _exit_code(exc: Exception) -> int:
    """The exit code of an error raised by :class:`~nexus_lab.client.NexusClient`."""
    from .errors import (
        AuthenticationError,
        ConfigError,
        DeploymentNotFound,
        Forbidden,
        NexusConnectionError,
        NotFound,
        RateLimitExceeded,
        SessionNotFound,
    )

    if isinstance(exc, NexusConnectionError):
        # connected: the server took the connection, then timed out or dropped it
        return EXIT_SERVER if exc.connected else EXIT_UNREACHABLE
    if isinstance(exc, ConfigError) and exc.field == "url":
        return EXIT_USAGE
    if isinstance(exc, (AuthenticationError, Forbidden)):
        return EXIT_AUTH
    if isinstance(exc, (DeploymentNotFound, SessionNotFound, NotFound)):
        return EXIT_NOT_FOUND
    if isinstance(exc, RateLimitExceeded):
        return EXIT_RATE_LIMITED
    status = getattr(exc, "http_status", 500)
    if 400 <= status < 500:  # InputValidationError, BadRequest, PayloadTooLarge, ...
        return EXIT_INVALID
    return EXIT_SERVER


def _cli_error(exc: Exception, api_key: str | None) -> CliError:
    """One ``error:`` line for a client error, with the hint the CLI user needs."""
    from .errors import ConfigError, NexusConnectionError, RateLimitExceeded

    code = _exit_code(exc)
    message = str(exc)
    if code == EXIT_UNREACHABLE:
        message += (
            "; start one with `nexus serve APP_REF` or `make demo`, or pass --url / set $NEXUS_URL"
        )
    elif code == EXIT_USAGE and isinstance(exc, ConfigError):
        message = message.replace("invalid url", "invalid --url", 1)
    elif isinstance(exc, NexusConnectionError) and exc.connected and "no answer" in message:
        message += " (raise --timeout)"
    elif code == EXIT_SERVER and "is the URL a nexus_lab server" in message:
        message = message.replace("is the URL", "is --url")
    elif isinstance(exc, RateLimitExceeded):
        message += f" (retry after {exc.retry_after:g} s)"
    elif code == EXIT_AUTH and not api_key:
        message += " (pass --api-key or set $NEXUS_API_KEY)"
    elif getattr(exc, "error_id", None) and exc.error_id not in message:
        message += f" (error id {exc.error_id})"  # AgentExecutionError, InternalError
    return CliError(message, code)


@contextlib.contextmanager
def _client(url: str, api_key: str | None, timeout: float) -> Iterator[Any]:
    """A :class:`~nexus_lab.client.NexusClient` on the ``cli`` channel; its errors exit cleanly."""
    from .client import NexusClient
    from .errors import NexusError

    try:
        client = NexusClient(
            url, api_key=api_key or None, timeout=timeout, headers={"X-Nexus-Channel": "cli"}
        )
    except NexusError as exc:
        raise _cli_error(exc, api_key) from None
    try:
        with client:
            yield client
    except NexusError as exc:
        raise _cli_error(exc, api_key) from None


def _client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--url, --api-key and --timeout, shared by every command that talks HTTP."""
    fn = click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        envvar="NEXUS_TIMEOUT",
        default=DEFAULT_TIMEOUT,
        show_default=True,
        metavar="S",
        help="Seconds to wait for the server ($NEXUS_TIMEOUT).",
    )(fn)
    fn = click.option(
        "--api-key",
        envvar="NEXUS_API_KEY",
        default=None,
        metavar="KEY",
        help="API key, sent as 'Authorization: Bearer KEY' ($NEXUS_API_KEY).",
    )(fn)
    fn = click.option(
        "--url",
        envvar="NEXUS_URL",
        default=DEFAULT_URL,
        show_default=True,
        metavar="URL",
        help="Base URL of the nexus server ($NEXUS_URL).",
    )(fn)
    return fn


def _dump(data: Any, *, pretty: bool = False) -> str:
    if pretty:
        return json.dumps(data, indent=2, ensure_ascii=False, default=str)
    return json.dumps(data, ensure_ascii=False, default=str)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
def _version() -> str:
    from . import __version__

    return __version__


@click.group(
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(
    _version(), "-V", "--version", prog_name="nexus", message="%(prog)s %(version)s"
)
def cli() -> None:
    """nexus: run AI agents deployed on a nexus_lab platform, and serve them.

    One deployment answers on the HTTP API, this CLI and MCP; pass --session
    to continue a conversation started on any channel.
    """


def _parse_inputs(
    json_input: str | None, pairs: tuple[str, ...], query: str | None
) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if json_input is not None:
        try:
            data = json.loads(json_input)
        except ValueError as exc:
            raise click.BadParameter(
                f"not valid JSON ({exc})", param_hint="'--json-input'"
            ) from None
        except RecursionError:
            raise click.BadParameter(
                "JSON nested too deeply to read", param_hint="'--json-input'"
            ) from None
        if not isinstance(data, dict):
            raise click.BadParameter(
                f'must be a JSON object like \'{{"query": "hi"}}\', got {type(data).__name__}',
                param_hint="'--json-input'",
            )
        inputs.update(data)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="'--input'")
        inputs[key] = value
    if query is not None:
        inputs["query"] = query
    from .schema import unencodable_path

    bad = unencodable_path(inputs)
    if bad is not None:  # a lone surrogate: a JSON escape, or bytes that are not UTF-8
        raise click.BadParameter(
            f"input {bad!r} holds text that is not valid Unicode (a lone surrogate such as "
            "'\\ud800' or bytes that are not UTF-8)",
            param_hint="'--json-input', '--input' or '--query'",
        )
    return inputs


@cli.command(epilog=_EPILOG)
@click.argument("name")
@click.option("-q", "--query", default=None, help="Text for the 'query' input.")
@click.option(
    "-i",
    "--input",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An input value (repeatable); the server converts it to the input's type.",
)
@click.option("--json-input", default=None, metavar="JSON", help="Inputs as a JSON object.")
@click.option(
    "-s", "--session", "session_id", default=None, metavar="ID", help="Session to continue."
)
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print the whole JSON response.")
def run(name, query, pairs, json_input, session_id, url, api_key, timeout, as_json) -> None:
    """Run deployment NAME and print its answer.

    Inputs merge --json-input, then --input pairs, then --query (as 'query').
    The answer goes to stdout, the session id to stderr ('session: ID');
    --json prints the whole response (session id included) instead.
    """
    inputs = _parse_inputs(json_input, pairs, query)
    with _client(url, api_key, timeout) as client:
        resp = client.run(name, inputs, session_id=session_id or None, channel="cli").raw
    if as_json:
        click.echo(_dump(resp, pretty=True))
        return
    outputs = resp.get("outputs", resp) if isinstance(resp, dict) else resp
    if isinstance(outputs, dict) and "response" in outputs:
        answer = outputs["response"]
        click.echo(answer if isinstance(answer, str) else _dump(answer))
    else:
        click.echo(_dump(outputs))
    sid = resp.get("session_id") if isinstance(resp, dict) else None
    if sid:
        click.echo(f"session: {sid}", err=True)


def _fmt_inputs(inputs: Any) -> str:
    if not isinstance(inputs, list):
        return ""
    parts = []
    for item in inputs:
        if not isinstance(item, dict):
            continue
        text = f"{item.get('name')}: {item.get('type', 'any')}"
        if not item.get("required", True):
            text += f" = {_dump(item.get('default'))}"
        parts.append(text)
    return ", ".join(parts)


@cli.command("list")
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print the JSON listing.")
def list_(url, api_key, timeout, as_json) -> None:
    """List the deployments of the server: name, channels, inputs."""
    with _client(url, api_key, timeout) as client:
        items = client.workflows()
    body = {"workflows": items}
    if as_json:
        click.echo(_dump(body, pretty=True))
        return
    if not items:
        click.echo("no deployments")
        return
    rows = []
    for it in items:
        if not isinstance(it, dict):
            continue
        channels = it.get("channels") or []
        rows.append(
            [
                str(it.get("name", "")),
                ",".join(channels) if isinstance(channels, list) else str(channels),
                ("yes" if it.get("sessions") else "no"),
                _fmt_inputs(it.get("inputs")),
            ]
        )
    click.echo(_table(["name", "channels", "sessions", "inputs"], rows))


@cli.command()
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print the JSON health document.")
def health(url, api_key, timeout, as_json) -> None:
    """Show the platform's health; exits 1 unless the status is 'healthy'."""
    with _client(url, api_key, timeout) as client:
        status_code, body = client.request("GET", "/health", accept_status=(503,))
    if not isinstance(body, dict):
        raise CliError(f"{client.url}/health returned no health document", EXIT_SERVER)
    status = str(body.get("status", "unknown"))
    if as_json:
        click.echo(_dump(body, pretty=True))
    else:
        click.echo(f"status: {status}  ({client.url})")
        channels = body.get("channels")
        if isinstance(channels, dict):
            for ch, info in channels.items():
                if isinstance(info, dict):
                    line = f"  {ch:<4} {info.get('state', '?')}"
                    if info.get("url"):
                        line += f"  {info['url']}"
                    if info.get("error"):
                        line += f"  ({info['error']})"
                    click.echo(line)
        deps = body.get("deployments")
        if isinstance(deps, list):
            click.echo(f"deployments: {', '.join(map(str, deps)) or 'none'}")
        sessions = body.get("sessions")
        if isinstance(sessions, dict):
            click.echo(f"sessions: {sessions.get('active')} active ({sessions.get('store')})")
        flags = [f"{k}={body[k]}" for k in ("auth", "rate_limit", "monitoring") if k in body]
        if flags:
            click.echo("  ".join(flags))
        if "uptime_seconds" in body:
            click.echo(f"uptime: {body['uptime_seconds']} s")
    if status not in ("healthy", "ok"):
        raise CliError(
            f"the platform at {client.url} is {status} (HTTP {status_code})", EXIT_SERVER
        )


# -- sessions ------------------------------------------------------------
@cli.group()
def sessions() -> None:
    """List, create, show and delete sessions on the server."""


def _fmt_time(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return str(value) if value is not None else ""
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


@sessions.command("list")
@click.option("--user", "user_id", default=None, help="Only this user's sessions.")
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print the JSON listing.")
def sessions_list(user_id, url, api_key, timeout, as_json) -> None:
    """List sessions (of one user with --user)."""
    with _client(url, api_key, timeout) as client:
        listed = client.sessions.list(user_id=user_id or None)
    if as_json:
        click.echo(_dump({"sessions": listed, "count": len(listed)}, pretty=True))
        return
    items = [it for it in listed if isinstance(it, dict)]
    if not items:
        click.echo("no sessions")
        return
    rows = []
    for it in items:
        channels = it.get("channels") or []
        rows.append(
            [
                str(it.get("session_id", it.get("id", ""))),
                str(it.get("user_id", "")),
                ",".join(map(str, channels)) if isinstance(channels, list) else str(channels),
                _fmt_time(it.get("last_accessed")),
                _fmt_time(it.get("expires_at")),
            ]
        )
    click.echo(_table(["session", "user", "channels", "last accessed", "expires"], rows))


@sessions.command("create")
@click.option("--user", "user_id", default=None, help="Owner of the session (default: the caller).")
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print the JSON response.")
def sessions_create(user_id, url, api_key, timeout, as_json) -> None:
    """Create a session and print its id."""
    with _client(url, api_key, timeout) as client:
        resp = client.sessions.create(user_id=user_id or None)
    if as_json:
        click.echo(_dump(resp, pretty=True))
        return
    sid = resp.get("session_id") if isinstance(resp, dict) else None
    if not sid and isinstance(resp, dict) and isinstance(resp.get("session"), dict):
        sid = resp["session"].get("session_id")
    click.echo(sid or _dump(resp))


@sessions.command("show")
@click.argument("session_id")
@_client_options
def sessions_show(session_id, url, api_key, timeout) -> None:
    """Print a session (owner, channels, state) as JSON."""
    with _client(url, api_key, timeout) as client:
        body = client.sessions.get(session_id)
    click.echo(_dump(body, pretty=True))


@sessions.command("delete")
@click.argument("session_id")
@_client_options
def sessions_delete(session_id, url, api_key, timeout) -> None:
    """Delete a session."""
    with _client(url, api_key, timeout) as client:
        client.sessions.delete(session_id)
    click.echo(f"deleted {session_id}")


# -- serving -------------------------------------------------------------
def _load(app_ref: str) -> Any:
    from .platform.loader import AppRefError, load_app

    try:
        return load_app(app_ref)
    except AppRefError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def shutdown_signals():
    """See :func:`nexus_lab.platform.server.shutdown_signals` (imported lazily: it loads the platform)."""
    from .platform.server import shutdown_signals as _signals

    return _signals()


def _start_error(exc: BaseException) -> NoReturn:
    from .errors import NexusError

    if isinstance(exc, NexusError):
        raise CliError(str(exc), EXIT_SERVER) from None
    raise CliError(
        f"the platform failed to start: {type(exc).__name__}: {exc}", EXIT_SERVER
    ) from None


@cli.command()
@click.argument("app_ref", metavar="APP_REF")
@click.option("--host", default=None, help="Bind address (default: the app's, 127.0.0.1).")
@click.option(
    "--api-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="API port; 0 picks a free one (default: the app's, 8000).",
)
@click.option(
    "--mcp-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="MCP port; 0 picks a free one (default: the app's, 3001).",
)
@click.option(
    "--sessions",
    "sessions_url",
    default=None,
    metavar="URL",
    help="Session store, e.g. sqlite:///.nexus/sessions.db (replaces the app's).",
)
@click.option(
    "--rate-limit-store",
    default=None,
    metavar="URL",
    help="Share the app's rate limit through Redis, e.g. redis://127.0.0.1:6379/0.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes sharing the ports; needs shared state (--sessions redis://... and, "
    "when the app rate-limits, --rate-limit-store).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Server log level (stderr).",
)
@click.option(
    "--forwarded-allow-ips",
    default=None,
    metavar="IPS",
    help="Comma-separated proxy addresses or networks (or '*') whose X-Forwarded-For is "
    "believed (default: the app's; none).",
)
@click.option(
    "--allowed-hosts",
    default=None,
    metavar="HOSTS",
    help="Comma-separated Host names the servers answer, e.g. api.example.com "
    "(default: the app's; the loopback names on a loopback bind).",
)
def serve(
    app_ref, host, api_port, mcp_port, sessions_url, log_level, rate_limit_store, workers,
    forwarded_allow_ips, allowed_hosts,
) -> None:
    """Serve APP_REF's HTTP API and MCP until Ctrl-C or SIGTERM.

    APP_REF is 'module:attr' or 'path/to/file.py:attr' naming a Nexus app or a
    factory returning one (attr defaults to 'app'). Prints 'API: URL' and
    'MCP: URL' once both servers accept connections.
    """
    import logging

    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .platform.server import inherited_sockets

    sockets = inherited_sockets()  # set when this process is a worker of a supervisor
    with shutdown_signals() as stop:
        app = _load(app_ref)
        if host is not None:
            app.host = host
        if api_port is not None:
            app.api_port = api_port
        if mcp_port is not None:
            app.mcp_port = mcp_port
        if forwarded_allow_ips is not None:
            app.forwarded_allow_ips = _comma_list(forwarded_allow_ips)
        if allowed_hosts is not None:
            app.allowed_hosts = _comma_list(allowed_hosts)
        if forwarded_allow_ips is not None or allowed_hosts is not None:
            _check_http_options(app)
        if sessions_url:
            _replace_sessions(app, sessions_url)
        if rate_limit_store:
            try:
                app.use_rate_limit_store(rate_limit_store)
            except Exception as exc:
                raise CliError(f"--rate-limit-store: {exc}", EXIT_USAGE) from None
        if workers > 1 and sockets is None:
            _supervise(app, workers, stop, _worker_args(click.get_current_context()))
            return
        from .platform.server import tune_gc_for_serving

        tune_gc_for_serving()  # this process only serves from here on (see its docstring)
        try:
            app.start(block=False, sockets=sockets)
        except Exception as exc:
            _start_error(exc)
        names = ", ".join(sorted(app.deployments)) or "none"
        if sockets is not None:  # a worker: the supervisor printed the URLs once
            click.echo(f"worker {os.getpid()} serving {app_ref} (deployments: {names})")
            sys.stdout.flush()
            try:
                app.wait(stop)
            finally:
                app.close()
            return
        click.echo(f"nexus_lab serving {app_ref} (deployments: {names})")
        click.echo(f"API: {app.api_url}")
        click.echo(f"MCP: {app.mcp_url}")
        if sessions_url:
            click.echo(f"sessions: {sessions_url}")
        click.echo("Press Ctrl-C to stop.")
        sys.stdout.flush()
        try:
            app.wait(stop)
        finally:
            app.close()
    click.echo("stopped", err=True)


def _supervise(app: Any, workers: int, stop: Any, argv: list[str]) -> None:
    """``--workers N``: check the app can share its state, then run N worker processes."""
    from .platform.server import run_workers

    problems = app.shared_state_problems()
    host, api_port, mcp_port = app.host, app.api_port, app.mcp_port
    app.close()
    if problems:
        raise CliError(
            f"--workers {workers} needs state shared by every worker, but " + "; and ".join(problems),
            EXIT_USAGE,
        )
    # each worker runs this same command line with --workers 1, on the supervisor's sockets
    worker_argv = [sys.executable, "-m", "nexus_lab.cli", *argv]
    code = run_workers(worker_argv, workers, host, api_port, mcp_port, stop=stop, announce=click.echo)
    sys.stdout.flush()
    if code:
        sys.exit(code)


def _worker_args(ctx: click.Context) -> list[str]:
    """This ``nexus serve`` command line as a worker runs it: every option given, but
    no ports (workers inherit the sockets) and no ``--workers``. ``--host`` is kept: a
    worker binds nothing, but its Host/Origin defaults follow the address it serves."""
    args = [ctx.info_name or "serve"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            args.append(str(value))
        elif param.name not in ("workers", "api_port", "mcp_port") and value is not None:
            if isinstance(value, bool):
                if value:
                    args.append(param.opts[0])
            else:
                args.extend([param.opts[0], str(value)])
    return args


def _check_http_options(app: Any) -> None:
    """A bad --forwarded-allow-ips / --allowed-hosts is a usage error, named before serving."""
    from .errors import ConfigError
    from .platform.security import HTTPPolicy

    try:
        HTTPPolicy.of(app)
    except ConfigError as exc:
        option = "--" + (exc.field or "option").replace("_", "-")
        raise CliError(f"{option}: {exc}", EXIT_USAGE) from None


def _comma_list(text: str) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``: an option naming several values."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _replace_sessions(app: Any, url: str) -> None:
    """Use a session store at ``url`` for the platform and every deployment with sessions."""
    from .sessions import NexusSessionManager

    try:
        manager = NexusSessionManager(cleanup_interval=300, session_ttl=7200, store=url)
    except Exception as exc:
        raise CliError(f"--sessions {url!r}: {exc}", EXIT_USAGE) from None
    old: dict[int, Any] = {}
    for dep in app.deployments.values():
        if dep.session_manager is not None:
            old[id(dep.session_manager)] = dep.session_manager
            dep.session_manager = manager
    app.session_manager = manager  # closes a manager the app created itself
    for previous in old.values():
        if previous is not manager:
            try:
                previous.close()
            except Exception:  # a store that cannot close cleanly must not stop serving
                pass


@cli.command()
@click.argument("app_ref", metavar="APP_REF")
def mcp(app_ref) -> None:
    """Serve APP_REF's deployments as MCP tools over stdio.

    Only MCP protocol messages go to stdout; anything the app prints while
    loading goes to stderr.
    """
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):
        app = _load(app_ref)
        from .platform.mcp import run_stdio
    try:
        run_stdio(app)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()


@cli.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    }
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args) -> None:
    """Run the demo: an assistant with sessions, then the platform (try --help)."""
    from .demo import main as demo_main

    code = demo_main(list(args))
    if code:
        sys.exit(code)


# ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``nexus`` console script."""
    try:
        return cli.main(args=argv, prog_name="nexus")
    except SystemExit:
        raise
    except Exception as exc:  # last resort: one line, no traceback
        if os.environ.get("NEXUS_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()
        click.echo(
            f"error: unexpected {type(exc).__name__}: {msg[0] if msg else ''} "
            "(set NEXUS_DEBUG=1 for the traceback)",
            err=True,
        )
        sys.exit(EXIT_SERVER)


if __name__ == "__main__":
    main()
