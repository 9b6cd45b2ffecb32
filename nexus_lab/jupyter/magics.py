r"""The ``%nexus`` magics: deploy, serve, call and inspect agents from a notebook.

Load with ``%load_ext nexus_lab``. One line magic with subcommands, plus a
cell magic for ``call``::

    %nexus deploy AGENT [--name NAME] [--app APP] [--channels api,cli,mcp]
                        [--sessions MANAGER] [--no-cache]
    %nexus start [--api-port P] [--mcp-port P] [--app APP]
    %nexus stop [--app APP]
    %nexus status [--app APP]
    %nexus call NAME [QUERY | key=value ...] [--session ID] [--channel api|mcp|cli]
                     [--json] [--api-key KEY] [--timeout S] [--app APP]
    %%nexus call NAME [key=value ...] [--session ID] [--channel ...] [--json]
    <the query, on as many lines as you like>
    %nexus sessions [--user U] [--app APP]
    %nexus metrics [--plot] [--app APP]
    %nexus dashboard [--app APP]

``%nexus -h`` and ``%nexus SUBCOMMAND -h`` print the help.

The app
-------
``AGENT``, ``APP`` and ``MANAGER`` are names of variables in the notebook
(``agents.helper`` attribute paths work too). Without ``--app`` the magics
use the ``Nexus`` in the variable ``nexus_app``; when there is none, the
first magic creates ``Nexus(auto_discovery=False, enable_monitoring=True,
api_port=0, mcp_port=0)`` and stores it there, so ``nexus_app`` is the app
your code and the magics share. ``--app NAME`` switches the magics to that
variable's app for this and every later magic (``--app nexus_app`` switches
back). ``%unload_ext nexus_lab`` stops the servers that ``%nexus start``
started and the app the magics created (deployments and sessions are kept).

``%nexus start`` keeps the app's configured ports unless ``--api-port`` /
``--mcp-port`` are given; the default app uses ``0`` (free ports), so it
never clashes with anything. The URLs are in the returned status
(``.api_url``, ``.mcp_url``) and on ``nexus_app``.

Calls
-----
``call`` goes through the real channel while the platform is serving:
``api`` is an HTTP POST to ``/api/workflows/NAME/execute``, ``mcp`` a
``tools/call`` over streamable HTTP, both made by one
:class:`~nexus_lab.client.NexusClient` per running platform (and API key),
kept between calls - one connection pool, one MCP session on the client's
own thread, since the kernel already runs an event loop - and closed by
``%nexus stop``; ``cli`` is a ``nexus run ... --json`` subprocess. When the platform is not serving, ``--channel api`` (the
default) runs in-process through ``app.execute`` and the result says so
(``via='in-process'``; it runs in the kernel, so no API key is needed);
``mcp`` and ``cli`` ask you to ``%nexus start``.
The API key for an app with ``enable_auth=True`` comes from ``--api-key``
or ``$NEXUS_API_KEY``.

Inputs are ``key=value`` pairs; values are read as JSON (``n=5`` -> 5,
``tags=["a", "b"]`` -> a list, ``query="two words"``), then as a Python
literal (``flag=True``, ``d={'a': 1}``), else kept as text (``query=hi``);
an input the deployment declares ``str`` always gets the text (``query=42``
sends ``"42"``).
Otherwise the remaining words are the ``query``:
``%nexus call assistant "What is AI?"`` or ``%nexus call assistant What is AI``.
IPython expands ``{expr}`` and ``$name`` in a magic line first, so
``--session {r.session_id}`` continues the session of an earlier result
``r``; write a literal brace as ``{{``.

Results
-------
Everything is *returned*, never printed: ``r = %nexus call assistant hi``
then ``r.response``, ``r.session_id``, ``r.outputs``, ``r.json``. See
:mod:`nexus_lab.jupyter.results`; ``deploy`` returns the
:class:`~nexus_lab.platform.deploy.DeploymentChannels` of the deployment.

Errors
------
Every expected error (bad flag, unknown variable, invalid input, an error
answered by a channel, a port in use...) is one ``UsageError`` line; the
kernel never exits. ``UsageError`` itself is raised (IPython prints a
subclass with a full traceback).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import typing
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from ..errors import NexusError
from ..platform.deployment import CHANNELS
from .results import CallResult, MetricsChart, MetricsSummary, PlatformStatus, SessionTable

__all__ = [
    "NexusMagics",
    "load_ipython_extension",
    "unload_ipython_extension",
    "DEFAULT_APP_VARIABLE",
    "split_line",
    "parse_value",
]

#: The notebook variable holding the app the magics use by default.
DEFAULT_APP_VARIABLE = "nexus_app"
#: Seconds a call waits for its channel, unless ``--timeout`` says otherwise.
DEFAULT_TIMEOUT = 60.0
API_KEY_ENV = "NEXUS_API_KEY"

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_NAME_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_QUOTES = "\"'"
_OPEN, _CLOSE = "[{(", "]})"

# Exceptions from nexus_lab and the platform that are user errors, shown as one line.
_USER_ERRORS = (NexusError, ValueError, TypeError, KeyError, RuntimeError, OSError)


# --------------------------------------------------------------------------- tokenizing
class Quoted(str):
    """A token written entirely in quotes: always a literal word, never ``key=value``."""

    __slots__ = ()


def _closing_quote(text: str, start: int) -> int:
    """Index of the quote closing the one at ``start`` (backslash escapes), or -1."""
    q = text[start]
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == q:
            return i
        i += 1
    return -1


def _unquote(token: str) -> str:
    """``"a \\"b\\""`` -> ``a "b"``; ``'x'`` -> ``x`` (JSON / Python string rules)."""
    try:
        value = json.loads(token) if token[0] == '"' else ast.literal_eval(token)
    except (ValueError, SyntaxError):
        value = None
    return value if isinstance(value, str) else token[1:-1]


def _split(line: str, group_brackets: bool) -> list[str]:
    tokens: list[str] = []
    buf: list[str] = []
    depth = 0
    i = 0
    n = len(line)
    while i < n:
        ch = line[i]
        if ch in _QUOTES:
            end = _closing_quote(line, i)
            if end < 0:
                raise UsageError(
                    f"unbalanced {ch} in the %nexus line: quote the whole query "
                    "or put it in the body of a %%nexus call cell"
                )
            buf.append(line[i : end + 1])
            i = end + 1
            continue
        if group_brackets and ch in _OPEN:
            depth += 1
        elif group_brackets and ch in _CLOSE and depth:
            depth -= 1
        elif ch.isspace() and depth == 0:
            if buf:
                tokens.append("".join(buf))
                buf = []
            i += 1
            continue
        buf.append(ch)
        i += 1
    if buf:
        tokens.append("".join(buf))
    if depth:
        raise _Unbalanced
    return tokens


class _Unbalanced(Exception):
    pass


def split_line(line: str) -> list[str]:
    """Split a magic line into words.

    Whitespace separates words except inside quotes and inside brackets
    (``tags=["a", "b"]`` stays one word). A word written entirely in quotes is
    unquoted and returned as :class:`Quoted`; quotes inside a word are kept
    (``query="hi there"`` stays as written, for :func:`parse_value`).
    ``--opt="x y"`` becomes ``--opt=x y``.
    """
    try:
        raw = _split(line, group_brackets=True)
    except _Unbalanced:  # e.g. a smiley ":(" in a query: brackets are then plain characters
        raw = _split(line, group_brackets=False)
    out: list[str] = []
    for tok in raw:
        if tok[0] in _QUOTES and _closing_quote(tok, 0) == len(tok) - 1:
            out.append(Quoted(_unquote(tok)))
        elif tok.startswith("-") and "=" in tok:
            opt, _, value = tok.partition("=")
            if value and value[0] in _QUOTES and _closing_quote(value, 0) == len(value) - 1:
                value = _unquote(value)
            out.append(f"{opt}={value}")
        else:
            out.append(tok)
    return _attach_dash_values(out)


#: Options whose value may itself start with "-" (a session id is any string).
_TAKES_ANY_VALUE = ("--session",)


def _attach_dash_values(tokens: list[str]) -> list[str]:
    """``--session -x1`` -> ``--session=-x1``: argparse would read ``-x1`` as an option."""
    out: list[str] = []
    it = iter(tokens)
    for tok in it:
        if tok in _TAKES_ANY_VALUE:
            value = next(it, None)
            if value is None:
                out.append(tok)
            elif value.startswith("-"):
                out.append(f"{tok}={value}")
            else:
                out += [tok, value]
        else:
            out.append(tok)
    return out


def _no_special_floats(name: str) -> Any:
    raise ValueError(name)


def parse_value(text: str) -> Any:
    """A ``key=value`` value: JSON, else a Python literal, else the text itself.

    >>> parse_value("5"), parse_value('["a"]'), parse_value("True"), parse_value("hi")
    (5, ['a'], True, 'hi')
    """
    try:
        return json.loads(text, parse_constant=_no_special_floats)
    except ValueError:
        pass
    if text[:1] in _QUOTES + _OPEN or text in ("True", "False", "None"):
        try:
            value = ast.literal_eval(text)
            json.dumps(value, allow_nan=False)
            return value
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return text


def parse_inputs(words: list[str], text_inputs: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """``key=value`` words to inputs; other words (all of them) form the ``query``.

    Inputs named in ``text_inputs`` (declared ``str``) keep their text:
    ``query=42`` is ``"42"`` for them, ``42`` otherwise.
    """
    inputs: dict[str, Any] = {}
    loose: list[str] = []
    for word in words:
        key, sep, value = word.partition("=")
        if sep and not isinstance(word, Quoted) and _KEY_RE.match(key):
            if key in inputs:
                raise UsageError(f"input {key!r} is given twice")
            parsed = parse_value(value)
            if key in text_inputs and parsed is not None and not isinstance(parsed, str):
                parsed = value
            inputs[key] = parsed
        else:
            loose.append(str(word))
    if loose:
        if inputs:
            raise UsageError(
                f"cannot mix a bare query ({' '.join(loose)!r}) with key=value inputs: "
                "write query=\"...\" instead"
            )
        inputs["query"] = " ".join(loose)
    return inputs


def _text_inputs(app: Any, name: str) -> set[str]:
    """Names of the deployment's inputs declared ``str`` (or ``str | None``)."""
    try:
        fields = app.get_deployment(name).schema.fields
    except Exception:  # unknown deployment: the channel reports it
        return set()
    out = set()
    for f in fields:
        ann = f.annotation
        args = set(typing.get_args(ann)) - {type(None)}
        if ann is str or (args == {str} and type(None) in typing.get_args(ann)):
            out.add(f.name)
    return out


# --------------------------------------------------------------------------- argparse
class _HelpShown(Exception):
    """Raised by :meth:`_Parser.exit` after ``-h``: the magic returns nothing."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` and never ``SystemExit``.

    ``prog`` is written ``%%nexus`` because argparse %-formats it in places;
    the help and messages show ``%nexus``.
    """

    @property
    def name(self) -> str:
        return self.prog.replace("%%", "%")

    def _print_message(self, message: str, file: Any = None) -> None:
        super()._print_message(message.replace("%%", "%") if message else message, file)

    def error(self, message: str) -> Any:  # type: ignore[override]
        message = message.replace("%%", "%")
        raise UsageError(f"{self.name}: {' '.join(message.split())} (see {self.name} -h)")

    def exit(self, status: int = 0, message: str | None = None) -> Any:  # type: ignore[override]
        if message:
            print(message.rstrip(), file=sys.stderr)
        raise _HelpShown


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: use 0-65535 (0 = free port)") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value}: use 0-65535 (0 = free port)")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _channels(text: str) -> tuple[str, ...]:
    parts = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in CHANNELS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(
            f"invalid channels {text!r}: a comma-separated subset of {','.join(CHANNELS)}"
        )
    return tuple(c for c in CHANNELS if c in parts)


def build_parser() -> tuple[_Parser, dict[str, _Parser]]:
    """The ``%nexus`` parser and its subcommand parsers, by name."""
    top = _Parser(
        prog="%%nexus",
        description="Deploy, serve, call and inspect nexus_lab agents from a notebook.",
        epilog="Run '%nexus SUBCOMMAND -h' for a subcommand's options; '%nexus?' for the full guide.",
        allow_abbrev=False,
    )
    subs = top.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    parsers: dict[str, _Parser] = {}

    def add(name: str, help_text: str) -> _Parser:
        p = subs.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        p.add_argument("--app", metavar="APP", help="variable holding the Nexus app (becomes current)")
        parsers[name] = p
        return p

    p = add("deploy", "Deploy an agent (a notebook variable) on the platform.")
    p.add_argument("agent", metavar="AGENT", help="variable holding the agent or typed function")
    p.add_argument("--name", help="deployment name (default: the variable's name)")
    p.add_argument("--channels", type=_channels, default=CHANNELS, metavar="api,cli,mcp",
                   help="channels to expose (default: all three, one deployment)")
    p.add_argument("--sessions", metavar="MANAGER",
                   help="variable holding a NexusSessionManager (deploy_with_sessions)")
    p.add_argument("--no-cache", action="store_true", help="compile again (use_cache=False)")

    p = add("start", "Serve the API and MCP in the background.")
    p.add_argument("--api-port", type=_port, metavar="P", help="API port (0 = free; default: the app's)")
    p.add_argument("--mcp-port", type=_port, metavar="P", help="MCP port (0 = free; default: the app's)")

    add("stop", "Stop serving (in-flight requests finish).")
    add("status", "Show the channels, their state and addresses.")

    p = add("call", "Call a deployment through a channel.")
    p.add_argument("name", metavar="NAME", help="deployment name")
    p.add_argument("params", nargs="*", metavar="key=value | QUERY", help="inputs, or the query text")
    p.add_argument("--session", metavar="ID", help="continue this session")
    p.add_argument("--channel", choices=CHANNELS, default="api", help="channel (default: api)")
    p.add_argument("--json", action="store_true", help="return the wire JSON (a dict) instead")
    p.add_argument("--api-key", metavar="KEY", help=f"API key (default: ${API_KEY_ENV})")
    p.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds to wait (default: {DEFAULT_TIMEOUT:g})")

    p = add("sessions", "List the sessions (user, channels, state keys, turns).")
    p.add_argument("--user", metavar="U", help="only this user's sessions")

    p = add("metrics", "Latency per channel and per deployment.")
    p.add_argument("--plot", action="store_true", help="a live MetricsDashboard (or a PNG chart)")

    add("dashboard", "The live dashboard widget.")
    return top, parsers


# --------------------------------------------------------------------------- helpers
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError) and not isinstance(exc, NexusError) and exc.args:
        text = str(exc.args[0])
    text = " ".join(text.split())
    return text or type(exc).__name__


def _fail(prefix: str, exc: BaseException) -> UsageError:
    return UsageError(f"{prefix}: {_one_line(exc)}")


def _client_error(where: str, exc: NexusError, api_key: str | None) -> UsageError:
    """One line for an error the platform answered (or a connection that failed)."""
    from ..errors import AuthenticationError, Forbidden, NexusConnectionError

    message = _one_line(exc)
    if isinstance(exc, NexusConnectionError):
        if getattr(exc, "connected", False) and "no answer" in message:
            message += " (raise --timeout)"
        return UsageError(f"{where}: {message} [{exc.error_type}]")
    if isinstance(exc, (AuthenticationError, Forbidden)) and not api_key:
        message += f" (pass --api-key or set ${API_KEY_ENV})"
    return UsageError(f"{where}: {message} [{exc.error_type}, HTTP {exc.http_status}]")


# --------------------------------------------------------------------------- magics
@magics_class
class NexusMagics(Magics):
    """``%nexus`` / ``%%nexus``: see the module docstring (``%nexus?``)."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self._parser, self._subparsers = build_parser()
        self._app_variable = DEFAULT_APP_VARIABLE
        #: The app these magics created (stored in ``nexus_app``), if any.
        self.owned_app: Any = None
        #: Apps that ``%nexus start`` started; ``%unload_ext`` stops them.
        self.started_apps: list[Any] = []
        #: (id(app), api key) -> (app, its URLs, NexusClient): see :meth:`client`.
        self._clients: dict[tuple[int, str | None], tuple[Any, tuple[Any, Any], Any]] = {}

    # -- the app -----------------------------------------------------------------
    @property
    def _ns(self) -> dict[str, Any]:
        return self.shell.user_ns

    def _lookup(self, path: str, what: str) -> Any:
        if not _NAME_PATH_RE.match(path):
            raise UsageError(f"{what} must be the name of a notebook variable, got {path!r}")
        head, *rest = path.split(".")
        if head not in self._ns:
            raise UsageError(f"{what} {path!r}: no variable named {head!r} in the notebook")
        obj = self._ns[head]
        for i, attr in enumerate(rest):
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                seen = ".".join([head, *rest[:i]])
                raise UsageError(f"{what} {path!r}: {seen} has no attribute {attr!r}") from None
        return obj

    def app(self, name: str | None = None) -> Any:
        """The current ``Nexus`` (``--app NAME`` selects one and makes it current)."""
        from ..platform.app import Nexus

        if name == DEFAULT_APP_VARIABLE:
            self._app_variable = name
            name = None
        if name is not None:
            obj = self._lookup(name, "--app")
            if not isinstance(obj, Nexus):
                raise UsageError(f"--app {name!r} is a {type(obj).__name__}, not a nexus_lab.Nexus")
            self._app_variable = name
            return obj
        var = self._app_variable
        obj = self._ns.get(var)
        if isinstance(obj, Nexus):
            return obj
        if var != DEFAULT_APP_VARIABLE:
            raise UsageError(
                f"the current app variable {var!r} no longer holds a Nexus app; "
                f"pass --app NAME (or --app {DEFAULT_APP_VARIABLE})"
            )
        if obj is not None:
            raise UsageError(
                f"the variable {var!r} holds a {type(obj).__name__}, not a Nexus app; "
                "pass --app NAME or delete it to get a default app"
            )
        try:
            app = Nexus(auto_discovery=False, enable_monitoring=True, api_port=0, mcp_port=0)
        except _USER_ERRORS as exc:  # e.g. a bad $NEXUS_API_KEYS
            raise _fail("cannot create the default app", exc) from None
        self._ns[var] = app
        self.owned_app = app
        return app

    # -- the magic -----------------------------------------------------------------
    @line_cell_magic
    def nexus(self, line: str = "", cell: str | None = None) -> Any:
        """Deploy, serve, call and inspect nexus_lab agents; ``%nexus -h`` for the commands."""
        words = split_line(line)
        try:
            if not words or words[0] in ("-h", "--help"):
                self._parser.print_help()
                return None
            command = str(words[0])
            parser = self._subparsers.get(command)
            if parser is None:
                self._parser.parse_args([command])  # raises UsageError: invalid choice
                raise UsageError(f"%nexus: unknown subcommand {command!r}")
            args = parser.parse_intermixed_args(words[1:])
        except _HelpShown:
            return None
        if cell is not None and command != "call":
            raise UsageError(f"%%nexus supports only 'call' as a cell magic, not {command!r}")
        handler = getattr(self, f"_cmd_{command}")
        return handler(args, cell) if command == "call" else handler(args)

    # -- subcommands ---------------------------------------------------------------
    def _cmd_deploy(self, args: argparse.Namespace) -> Any:
        from ..platform import deploy as d

        app = self.app(args.app)
        agent = self._lookup(args.agent, "AGENT")
        name = args.name or args.agent.rsplit(".", 1)[-1]
        use_cache = not args.no_cache
        channels = args.channels
        try:
            if args.sessions is not None:
                if channels != CHANNELS:
                    raise UsageError(
                        "--sessions deploys on all channels (deploy_with_sessions); drop --channels"
                    )
                manager = self._lookup(args.sessions, "--sessions")
                return d.deploy_with_sessions(agent, app, name, manager, use_cache=use_cache)
            if channels == CHANNELS:
                return d.deploy_multi_channel(agent, app, name, use_cache=use_cache)
            functions = {"api": d.deploy_as_api, "cli": d.deploy_as_cli, "mcp": d.deploy_as_mcp}
            for channel in channels:
                functions[channel](agent, app, name, use_cache=use_cache)
        except _USER_ERRORS as exc:
            raise _fail(f"cannot deploy {args.agent!r} as {name!r}", exc) from None
        deployed = app.get_deployment(name).channels
        return d.DeploymentChannels((c, d._identifier(c, name)) for c in CHANNELS if c in deployed)

    def _cmd_start(self, args: argparse.Namespace) -> PlatformStatus:
        app = self.app(args.app)
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
        except _USER_ERRORS as exc:
            raise _fail("the platform did not start", exc) from None
        if all(app is not a for a in self.started_apps):
            self.started_apps.append(app)
        return PlatformStatus.from_app(app)

    def _cmd_stop(self, args: argparse.Namespace) -> PlatformStatus:
        app = self.app(args.app)
        self.close_clients(app)
        app.stop()
        return PlatformStatus.from_app(app)

    def _cmd_status(self, args: argparse.Namespace) -> PlatformStatus:
        return PlatformStatus.from_app(self.app(args.app))

    def _cmd_call(self, args: argparse.Namespace, cell: str | None) -> Any:
        app = self.app(args.app)
        inputs = parse_inputs(args.params, _text_inputs(app, args.name))
        if cell is not None:
            query = cell.strip()
            if not query:
                raise UsageError("the %%nexus call cell is empty: write the query in its body")
            if "query" in inputs:
                raise UsageError("the query is the cell body; do not also pass it on the %%nexus line")
            inputs["query"] = query
        api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
        channel = args.channel
        where = f"{args.name} via {channel}"
        if not app.is_running:
            self._prune_clients()
            if channel != "api":
                raise UsageError(
                    f"the platform is not running: run %nexus start first to call {args.name!r} "
                    f"over {channel} (or use --channel api to run it in-process)"
                )
            result = self._call_in_process(app, args.name, inputs, args.session)
        elif channel in ("api", "mcp"):
            result = self._call_client(
                app, args.name, inputs, args.session, api_key, args.timeout, where, channel
            )
        else:
            result = self._call_cli(app, args.name, inputs, args.session, api_key, args.timeout, where)
        return result.json if args.json else result

    # -- channels --------------------------------------------------------------------
    @staticmethod
    def _call_in_process(app: Any, name: str, inputs: dict, session_id: str | None) -> CallResult:
        try:
            execution = app.execute(name, inputs, channel="api", session_id=session_id)
        except NexusError as exc:
            raise UsageError(f"{name} (in-process): {_one_line(exc)} [{exc.error_type}]") from None
        wire = execution.to_dict()
        return CallResult(
            name=name,
            channel="api",
            transport="in-process",
            outputs=execution.outputs,
            session_id=execution.session_id,
            json=wire,
            execution_time_ms=wire.get("execution_time_ms"),
        )

    @staticmethod
    def _from_wire(name: str, channel: str, transport: str, body: Any, where: str) -> CallResult:
        if not isinstance(body, dict) or not isinstance(body.get("outputs"), dict):
            raise UsageError(f"{where}: unexpected answer {str(body)[:200]!r}")
        return CallResult(
            name=name,
            channel=channel,
            transport=transport,
            outputs=body["outputs"],
            session_id=body.get("session_id"),
            json=body,
            execution_time_ms=body.get("execution_time_ms"),
        )

    # -- clients ---------------------------------------------------------------------
    def client(self, app: Any, api_key: str | None = None) -> Any:
        """The :class:`~nexus_lab.client.NexusClient` of a serving ``app`` (one per app and key).

        Kept between calls (one connection pool, one MCP session), closed by
        ``%nexus stop``, ``%unload_ext`` or the next call once the platform
        stopped or moved to other ports.
        """
        from ..client import NexusClient

        self._prune_clients()
        key = (id(app), api_key)
        entry = self._clients.get(key)
        if entry is not None:
            return entry[2]
        client = NexusClient(app.api_url, api_key=api_key, mcp_url=app.mcp_url, timeout=DEFAULT_TIMEOUT)
        self._clients[key] = (app, (app.api_url, app.mcp_url), client)
        return client

    def _prune_clients(self) -> None:
        """Close the clients of platforms that stopped or now serve elsewhere."""
        for key, (app, urls, client) in list(self._clients.items()):
            if not app.is_running or urls != (app.api_url, app.mcp_url):
                del self._clients[key]
                client.close()

    def close_clients(self, app: Any = None) -> None:
        """Close the cached clients (of ``app`` only, when given)."""
        for key, (owner, _, client) in list(self._clients.items()):
            if app is None or owner is app:
                del self._clients[key]
                client.close()

    def _call_client(self, app, name, inputs, session_id, api_key, timeout, where, channel) -> CallResult:
        try:
            result = self.client(app, api_key).run(
                name, inputs, session_id=session_id, channel=channel, timeout=timeout
            )
        except NexusError as exc:
            raise _client_error(where, exc, api_key) from None
        transport = "http" if channel == "api" else channel
        return CallResult(
            name=name,
            channel=channel,
            transport=transport,
            outputs=result.outputs,
            session_id=result.session_id,
            json=result.raw,
            execution_time_ms=result.execution_time_ms,
        )

    def _call_cli(self, app, name, inputs, session_id, api_key, timeout, where) -> CallResult:
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
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=timeout + 30, check=False
            )
        except subprocess.TimeoutExpired:
            raise UsageError(f"{where}: `nexus run` did not finish within {timeout + 30:g} s") from None
        except OSError as exc:
            raise _fail(f"{where}: cannot run the nexus CLI", exc) from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("error:")]
            message = (errors or lines or [f"exit status {proc.returncode}"])[-1]
            message = message.removeprefix("error:").strip()
            raise UsageError(f"{where}: {message} [exit {proc.returncode}]")
        try:
            body = json.loads(proc.stdout)
        except ValueError:
            raise UsageError(f"{where}: `nexus run --json` printed no JSON: {proc.stdout[:200]!r}") from None
        return self._from_wire(name, "cli", "cli", body, where)

    # -- inspection ------------------------------------------------------------------
    def _cmd_sessions(self, args: argparse.Namespace) -> SessionTable:
        app = self.app(args.app)
        managers: list[Any] = []
        for manager in [app.session_manager, *(d.session_manager for d in app.deployments.values())]:
            if manager is not None and all(manager is not m for m in managers):
                managers.append(manager)
        sessions: list[Any] = []
        for manager in managers:
            sessions.extend(manager.list_sessions(args.user))
        return SessionTable(sessions, user=args.user)

    def _cmd_metrics(self, args: argparse.Namespace) -> Any:
        app = self.app(args.app)
        if not args.plot:
            return MetricsSummary(app.metrics, monitoring=app.enable_monitoring)
        try:
            from .widgets import MetricsDashboard
        except ImportError:
            MetricsDashboard = None  # noqa: N806
        if MetricsDashboard is not None:
            try:
                return MetricsDashboard(app.metrics)
            except ImportError:
                pass
        try:
            return MetricsChart(app.metrics.get_summary())
        except ImportError:
            raise UsageError("--plot needs ipywidgets or matplotlib: pip install 'nexus-lab[jupyter]'") from None

    def _cmd_dashboard(self, args: argparse.Namespace) -> Any:
        app = self.app(args.app)
        try:
            from .widgets import Dashboard
        except ImportError as exc:
            raise UsageError(f"the dashboard needs ipywidgets: pip install 'nexus-lab[jupyter]' ({exc})") from None
        return Dashboard(app)

    # -- unloading -------------------------------------------------------------------
    def close(self) -> None:
        """Stop the servers ``%nexus start`` started and the app the magics created.

        Only stopped (deployments and sessions are kept), so the app in
        ``nexus_app`` stays usable after ``%reload_ext nexus_lab``.
        """
        self.close_clients()
        apps, self.started_apps = self.started_apps, []
        if self.owned_app is not None and all(self.owned_app is not a for a in apps):
            apps.append(self.owned_app)
        for app in apps:
            app.stop()


NexusMagics.nexus.__doc__ = __doc__  # ``%nexus?`` shows the whole guide

_LOADED: dict[int, NexusMagics] = {}


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%nexus`` magics on ``ipython`` (``%load_ext nexus_lab``)."""
    magics = NexusMagics(ipython)
    previous = _LOADED.get(id(ipython))
    if previous is not None:  # loaded twice: the new instance takes over what the first owns
        magics.owned_app, magics.started_apps = previous.owned_app, previous.started_apps
        magics._clients = previous._clients
        previous.owned_app, previous.started_apps, previous._clients = None, [], {}
    ipython.register_magics(magics)
    _LOADED[id(ipython)] = magics


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nexus_lab``: stop the app the magics created."""
    magics = _LOADED.pop(id(ipython), None)
    if magics is not None:
        magics.close()
