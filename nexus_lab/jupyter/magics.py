r"""The ``%nexus`` magics: deploy, serve, call, load-test and inspect agents from a notebook.

Load with ``%load_ext nexus_lab``. One line magic with subcommands, plus a
cell magic for ``call``::

    %nexus deploy AGENT [--name NAME] [--app APP] [--channels api,cli,mcp]
                        [--sessions MANAGER] [--no-cache]
    %nexus undeploy NAME [--app APP]
    %nexus start [--api-port P] [--mcp-port P] [--app APP]
    %nexus stop [--app APP]
    %nexus status [--app APP]
    %nexus call NAME [QUERY | key=value ...] [--session ID] [--channel api|mcp|cli]
                     [--json] [--api-key KEY] [--timeout S] [--app APP]
    %%nexus call NAME [key=value ...] [--session ID] [--channel ...] [--json]
    <the query, on as many lines as you like>
    %nexus bench NAME [-n REQUESTS] [-c CONCURRENCY] [--duration S]
                      [--channel api|mcp|cli] [--input key=value ...] [--quiet]
    %nexus sessions [--user U] [--app APP]
    %nexus metrics [--plot] [--app APP]
    %nexus dashboard [--app APP]
    %nexus logs [-n N] [--level LEVEL]
    %nexus last-error

``%nexus -h`` and ``%nexus SUBCOMMAND -h`` print the help; TAB completes
subcommands, flags, deployment names and the notebook variables that fit
(agents after ``deploy``, apps after ``--app``, session managers after
``--sessions``). A mistyped subcommand or flag gets ``did you mean ...?``.

The line is read like a shell line: quotes group words, and an unquoted
``#`` after whitespace starts a comment (``%nexus start   # free ports``);
``"#1"`` in quotes is kept.

The app
-------
``AGENT``, ``APP`` and ``MANAGER`` are names of variables in the notebook
(``agents.helper`` attribute paths work too). Without ``--app`` the magics
use the ``Nexus`` in the variable ``nexus_app``; when there is none, the
first magic creates ``Nexus(auto_discovery=False, enable_monitoring=True,
api_port=0, mcp_port=0)`` and stores it there, so ``nexus_app`` is the app
your code and the magics share. ``--app NAME`` switches the magics to that
variable's app for this and every later magic (``--app nexus_app`` switches
back). ``%nexus undeploy NAME`` removes a deployment (``app.unregister``).

``%nexus start`` keeps the app's configured ports unless ``--api-port`` /
``--mcp-port`` are given; the default app uses ``0`` (free ports), so it
never clashes with anything. The URLs are in the returned status
(``.api_url``, ``.mcp_url``) and on ``nexus_app``.

Lifecycles
----------
``%nexus stop`` stops serving (saying so when in-flight calls make it wait),
ends the platform's worker threads, closes the magics' client of that
platform and pauses that platform's live widgets (they keep their last view;
``%nexus start`` resumes them). ``%unload_ext nexus_lab`` does the same for
everything the magics started, ends the one refresh thread of the widgets and
the magics' event-loop thread, and gives the server log back to stderr.
Deployments and sessions are kept.

Calls
-----
``call`` goes through the real channel while the platform is serving:
``api`` is an HTTP POST to ``/api/workflows/NAME/execute``, ``mcp`` a
``tools/call`` over streamable HTTP, both made by one
:class:`~nexus_lab.client.AsyncNexusClient` per running platform (and API
key), kept between calls on the magics' own event-loop thread (the kernel's
thread already runs a loop) - one connection pool, one MCP session - and
closed by ``%nexus stop``; ``cli`` is a ``nexus run ... --json`` subprocess.
Interrupting the kernel cancels the call in flight on every channel (the
coroutine is cancelled and its connection closed, or the subprocess killed).
When the platform is not serving, ``--channel api`` (the default) runs
in-process through ``app.execute`` and the result says so
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

Load
----
``bench`` sends ``-n`` requests (default 200) or runs ``--duration``
seconds, ``-c`` at a time, to a deployment of the serving platform
(loopback only), with a live progress bar and latency chart, and returns a
:class:`~nexus_lab.jupyter.bench.BenchResult` (``rps``, ``p50_ms``,
``p95_ms``, ``p99_ms``, ``errors``, ``error_counts``, ``to_dataframe()``,
``chart``). See :mod:`nexus_lab.jupyter.bench`.

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
kernel never exits. A failed call names the error type, the message and the
error id, e.g. ``flaky via api: ZeroDivisionError: division by zero
[agent_error, error id 3f2a9c81d0e4]``; ``%nexus last-error`` returns the
:class:`~nexus_lab.jupyter.results.CallError` with the full ``traceback``.
Server-side log records never print under a cell: ``%nexus logs`` and the
dashboard's *Server log* tab show them.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from . import commands
from .commands._common import USER_ERRORS, fail
from .parsing import (
    API_KEY_ENV,
    DEFAULT_TIMEOUT,
    SUBCOMMANDS,
    HelpShown,
    build_parser,
    did_you_mean,
    parse_inputs,
    parse_value,
    split_line,
)

__all__ = [
    "NexusMagics",
    "load_ipython_extension",
    "unload_ipython_extension",
    "DEFAULT_APP_VARIABLE",
    "DEFAULT_TIMEOUT",
    "API_KEY_ENV",
    "split_line",
    "parse_value",
    "parse_inputs",
]

#: The notebook variable holding the app the magics use by default.
DEFAULT_APP_VARIABLE = "nexus_app"

_NAME_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

@magics_class
class NexusMagics(Magics):
    """``%nexus`` / ``%%nexus``: a router into :mod:`nexus_lab.jupyter.commands`.

    Holds what the commands share: the current app, the clients and the
    event-loop thread they run on, the last failed call.
    """

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        from .logs import capture

        self._parser, self._subparsers = build_parser()
        self._app_variable = DEFAULT_APP_VARIABLE
        #: The app these magics created (stored in ``nexus_app``), if any.
        self.owned_app: Any = None
        #: Apps that ``%nexus start`` started; ``%unload_ext`` stops them.
        self.started_apps: list[Any] = []
        #: (id(app), api key) -> (app, its URLs, AsyncNexusClient): see :meth:`client`.
        self._clients: dict[tuple[int, str | None], tuple[Any, tuple[Any, Any], Any]] = {}
        self._loop: Any = None  # LoopThread, started by the first served call
        #: The last failed call (``%nexus last-error``).
        self.last_error: Any = None
        #: id(app) -> widgets paused by ``%nexus stop`` (resumed by ``%nexus start``).
        self.paused: dict[int, list[Any]] = {}
        #: The kernel's server-log capture (installed while the extension is loaded).
        self.logs = capture()

    # -- the app -----------------------------------------------------------------
    @property
    def ns(self) -> dict[str, Any]:
        """The notebook's namespace."""
        return self.shell.user_ns

    def lookup(self, path: str, what: str) -> Any:
        """The object a notebook variable (or ``var.attr`` path) holds; UsageError if none."""
        if not _NAME_PATH_RE.match(path):
            raise UsageError(f"{what} must be the name of a notebook variable, got {path!r}")
        head, *rest = path.split(".")
        if head not in self.ns:
            names = [k for k in self.ns if not k.startswith("_")]
            raise UsageError(
                f"{what} {path!r}: no variable named {head!r} in the notebook{did_you_mean(head, names)}"
            )
        obj = self.ns[head]
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
            obj = self.lookup(name, "--app")
            if not isinstance(obj, Nexus):
                raise UsageError(f"--app {name!r} is a {type(obj).__name__}, not a nexus_lab.Nexus")
            self._app_variable = name
            return obj
        var = self._app_variable
        obj = self.ns.get(var)
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
        except USER_ERRORS as exc:  # e.g. a bad $NEXUS_API_KEYS
            raise fail("cannot create the default app", exc) from None
        self.ns[var] = app
        self.owned_app = app
        return app

    def current_app(self) -> Any:
        """The current app without creating one (None when there is none); for completion."""
        from ..platform.app import Nexus

        obj = self.ns.get(self._app_variable)
        return obj if isinstance(obj, Nexus) else None

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
                raise UsageError(
                    f"%nexus: unknown subcommand {command!r}{did_you_mean(command, SUBCOMMANDS)} "
                    "(see %nexus -h)"
                )
            args = parser.parse_intermixed_args(words[1:])
        except HelpShown:
            return None
        if cell is not None and command != "call":
            raise UsageError(f"%%nexus supports only 'call' as a cell magic, not {command!r}")
        return commands.HANDLERS[command](self, args, cell)

    # -- the clients of served platforms ----------------------------------------------
    def loop(self) -> Any:
        """The magics' event-loop thread (``nexus-kernel-loop``), started on first use."""
        from ._loop import LoopThread

        if self._loop is None or not self._loop.is_alive:
            self._loop = LoopThread("nexus-kernel-loop")
        return self._loop

    def client(self, app: Any, api_key: str | None = None) -> Any:
        """The :class:`~nexus_lab.client.AsyncNexusClient` of a serving ``app`` (one per app and key).

        Kept between calls (one connection pool, one MCP session), used on
        :meth:`loop`, closed by ``%nexus stop``, ``%unload_ext``, an
        interrupted call, or the next call once the platform stopped or moved.
        """
        from ..client import AsyncNexusClient

        self.prune_clients()
        key = (id(app), api_key)
        entry = self._clients.get(key)
        if entry is not None:
            return entry[2]
        client = AsyncNexusClient(app.api_url, api_key=api_key, mcp_url=app.mcp_url, timeout=DEFAULT_TIMEOUT)
        self._clients[key] = (app, (app.api_url, app.mcp_url), client)
        return client

    def _close_client(self, client: Any) -> None:
        loop = self._loop
        if loop is None or not loop.is_alive:
            return
        try:
            loop.run(client.aclose(), timeout=10.0)
        except Exception:  # closing goes on: the loop is closed later anyway
            pass

    def drop_client(self, client: Any) -> None:
        """Close ``client`` and forget it (after an interrupted call: its MCP session may be mid-call)."""
        for key, entry in list(self._clients.items()):
            if entry[2] is client:
                del self._clients[key]
        self._close_client(client)

    def prune_clients(self) -> None:
        """Close the clients of platforms that stopped or now serve elsewhere."""
        for key, (app, urls, client) in list(self._clients.items()):
            if not app.is_running or urls != (app.api_url, app.mcp_url):
                del self._clients[key]
                self._close_client(client)

    def close_clients(self, app: Any = None) -> None:
        """Close the cached clients (of ``app`` only, when given); end the loop thread when none is left."""
        for key, (owner, _, client) in list(self._clients.items()):
            if app is None or owner is app:
                del self._clients[key]
                self._close_client(client)
        if not self._clients and self._loop is not None:
            self._loop.close()
            self._loop = None

    # -- unloading -------------------------------------------------------------------
    def close(self) -> None:
        """Stop what the magics started: servers, worker threads, clients, their loop thread,
        widget refreshing; give the server log back to stderr.

        Apps are only stopped (deployments and sessions are kept), so the app in
        ``nexus_app`` stays usable after ``%reload_ext nexus_lab``.
        """
        from .commands.platform import release_workers

        self.close_clients()
        apps, self.started_apps = self.started_apps, []
        if self.owned_app is not None and all(self.owned_app is not a for a in apps):
            apps.append(self.owned_app)
        for app in apps:
            app.stop()
            release_workers(app)
        widgets = sys.modules.get("nexus_lab.jupyter.widgets")
        if widgets is not None:
            widgets.pause_widgets(None)
        from ._refresh import scheduler

        scheduler().stop_all()
        self.paused.clear()
        self.logs.uninstall()


NexusMagics.nexus.__doc__ = __doc__  # ``%nexus?`` shows the whole guide

_LOADED: dict[int, NexusMagics] = {}


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%nexus`` magics and their completer on ``ipython`` (``%load_ext nexus_lab``)."""
    from .completion import install_completer

    magics = NexusMagics(ipython)
    previous = _LOADED.get(id(ipython))
    if previous is not None:  # loaded twice: the new instance takes over what the first owns
        magics.owned_app, magics.started_apps = previous.owned_app, previous.started_apps
        magics._clients, magics._loop = previous._clients, previous._loop
        magics.last_error, magics.paused = previous.last_error, previous.paused
        previous.owned_app, previous.started_apps, previous._clients = None, [], {}
        previous._loop, previous.paused = None, {}
        previous.logs.uninstall()  # its use of the log capture goes with it (the new one holds one)
    ipython.register_magics(magics)
    install_completer(ipython, magics)
    _LOADED[id(ipython)] = magics


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nexus_lab``: stop what the magics started, remove the completer."""
    from .completion import remove_completer

    remove_completer(ipython)
    magics = _LOADED.pop(id(ipython), None)
    if magics is not None:
        magics.close()
