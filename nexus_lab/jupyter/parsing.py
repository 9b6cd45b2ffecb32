r"""Reading a ``%nexus`` line: words like a shell, ``key=value`` inputs, argparse, suggestions.

A magic line is read the way a shell reads a command line, because that is
what people type into it:

* whitespace separates words, except inside quotes and inside brackets
  (``tags=["a", "b"]`` stays one word);
* an unquoted ``#`` at the start of a word (after whitespace) starts a
  comment that runs to the end of the line - IPython hands trailing comments
  to line magics, so ``%nexus start   # free ports`` must not see ``#``;
  a quoted ``"#1"`` and a ``#`` inside a word (``q=#1``) are kept;
* a word written entirely in quotes is unquoted and is always a literal word
  (never ``key=value``).

The parser is argparse whose ``error()`` raises one ``UsageError`` line (with
``did you mean '...'?`` when a word is close to a valid one) and whose
``exit()`` never raises ``SystemExit``, so a bad flag never kills the kernel.

Example::

    >>> split_line('call assistant "What is #1?" --channel mcp   # ask over MCP')
    ['call', 'assistant', 'What is #1?', '--channel', 'mcp']
    >>> parse_inputs(split_line('n=5 tags=["a"] note="two words"'))
    {'n': 5, 'tags': ['a'], 'note': 'two words'}
    >>> closest("stat", ["start", "status", "stop"])
    'status'
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
import sys
import typing
from collections.abc import Iterable
from typing import Any

from IPython.core.error import UsageError

from ..platform.deployment import CHANNELS

__all__ = [
    "Quoted",
    "split_line",
    "parse_value",
    "parse_inputs",
    "text_inputs",
    "closest",
    "did_you_mean",
    "build_parser",
    "HelpShown",
    "SUBCOMMANDS",
    "API_KEY_ENV",
    "DEFAULT_TIMEOUT",
]

#: Seconds a call waits for its channel, unless ``--timeout`` says otherwise.
DEFAULT_TIMEOUT = 60.0
API_KEY_ENV = "NEXUS_API_KEY"

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_QUOTES = "\"'"
_OPEN, _CLOSE = "[{(", "]})"


# --------------------------------------------------------------------------- words
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


class _Unbalanced(Exception):
    pass


def _split(line: str, group_brackets: bool) -> list[str]:
    tokens: list[str] = []
    buf: list[str] = []
    depth = 0
    i = 0
    n = len(line)
    while i < n:
        ch = line[i]
        if ch == "#" and not buf and depth == 0:
            break  # a comment: "#" at the start of a word, like a shell
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


def split_line(line: str) -> list[str]:
    """Split a magic line into words (see the module docstring for the rules).

    A word written entirely in quotes is unquoted and returned as
    :class:`Quoted`; quotes inside a word are kept (``query="hi there"``
    stays as written, for :func:`parse_value`). ``--opt="x y"`` becomes
    ``--opt=x y``.

    >>> split_line("deploy agent --name assistant   # AGENT is a variable")
    ['deploy', 'agent', '--name', 'assistant']
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


def parse_inputs(words: Iterable[str], text_inputs: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """``key=value`` words to inputs; other words (all of them) form the ``query``.

    Inputs named in ``text_inputs`` (declared ``str``) keep their text:
    ``query=42`` is ``"42"`` for them, ``42`` otherwise.

    >>> parse_inputs(["What", "is", "AI?"])
    {'query': 'What is AI?'}
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


def text_inputs(app: Any, name: str) -> set[str]:
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


# --------------------------------------------------------------------------- suggestions
def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` most likely meant: its only completion, else the closest spelling.

    >>> closest("de", ["deploy", "dashboard"]), closest("sesions", ["sessions", "status"])
    ('deploy', 'sessions')
    """
    options = sorted(set(choices))
    if not word or not options:
        return None
    prefixed = [c for c in options if c.startswith(word)]
    if len(prefixed) == 1:
        return prefixed[0]
    found = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'status'?"``, or ``""`` when nothing is close."""
    match = closest(word, choices)
    return f"; did you mean {match!r}?" if match is not None and match != word else ""


# --------------------------------------------------------------------------- argparse
class HelpShown(Exception):
    """Raised by :meth:`_Parser.exit` after ``-h``: the magic returns nothing."""


_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)$")
_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)'")


class _Parser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` (one line) and never ``SystemExit``.

    ``prog`` is written ``%%nexus`` because argparse %-formats it in places;
    the help and messages show ``%nexus``.
    """

    @property
    def name(self) -> str:
        return self.prog.replace("%%", "%")

    def option_strings(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings]

    def _print_message(self, message: str, file: Any = None) -> None:
        super()._print_message(message.replace("%%", "%") if message else message, file)

    def error(self, message: str) -> Any:  # type: ignore[override]
        message = " ".join(message.replace("%%", "%").split())
        hint = ""
        found = _UNRECOGNIZED.search(message)
        if found:
            flags = [w for w in found.group(1).split() if w.startswith("-")]
            if flags:
                hint = did_you_mean(flags[0].split("=")[0], self.option_strings())
        else:
            found = _INVALID_CHOICE.search(message)
            if found:
                choices = re.findall(r"'([^']*)'", message.split("choose from", 1)[-1])
                hint = did_you_mean(found.group(1), choices)
        raise UsageError(f"{self.name}: {message}{hint} (see {self.name} -h)")

    def exit(self, status: int = 0, message: str | None = None) -> Any:  # type: ignore[override]
        if message:
            print(message.rstrip(), file=sys.stderr)
        raise HelpShown


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
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _count(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid count {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _channels(text: str) -> tuple[str, ...]:
    parts = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in CHANNELS]
    if bad or not parts:
        hint = did_you_mean(bad[0], CHANNELS) if bad else ""
        raise argparse.ArgumentTypeError(
            f"invalid channels {text!r}: a comma-separated subset of {','.join(CHANNELS)}{hint}"
        )
    return tuple(c for c in CHANNELS if c in parts)


#: Subcommands and their one-line help, in the order ``%nexus -h`` lists them.
SUBCOMMANDS: dict[str, str] = {
    "deploy": "Deploy an agent (a notebook variable) on the platform.",
    "undeploy": "Remove a deployment from the platform (app.unregister).",
    "start": "Serve the API and MCP in the background.",
    "stop": "Stop serving (in-flight requests finish) and end the platform's threads.",
    "status": "Show the channels, their state and addresses.",
    "call": "Call a deployment through a channel.",
    "bench": "Put a bounded load on a served deployment (loopback only) and chart it.",
    "sessions": "List the sessions (id, user, channels, state keys, turns).",
    "metrics": "Latency per channel: what callers waited, and the agents' own time.",
    "dashboard": "The live dashboard widget (channels, sessions, metrics, server log).",
    "logs": "The server-side log records captured in this kernel.",
    "last-error": "The last failed call: error type, message, error id and traceback.",
}


def build_parser() -> tuple[_Parser, dict[str, _Parser]]:
    """The ``%nexus`` parser and its subcommand parsers, by name."""
    top = _Parser(
        prog="%%nexus",
        description="Deploy, serve, call, load-test and inspect nexus_lab agents from a notebook.",
        epilog="Run '%nexus SUBCOMMAND -h' for a subcommand's options; '%nexus?' for the full guide. "
        "A '#' starts a comment.",
        allow_abbrev=False,
    )
    subs = top.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    parsers: dict[str, _Parser] = {}

    def add(name: str) -> _Parser:
        text = SUBCOMMANDS[name]
        p = subs.add_parser(name, help=text, description=text, allow_abbrev=False)
        p.add_argument("--app", metavar="APP", help="variable holding the Nexus app (becomes current)")
        parsers[name] = p
        return p

    p = add("deploy")
    p.add_argument("agent", metavar="AGENT", help="variable holding the agent or typed function")
    p.add_argument("--name", help="deployment name (default: the variable's name)")
    p.add_argument("--channels", type=_channels, default=CHANNELS, metavar="api,cli,mcp",
                   help="channels to expose (default: all three, one deployment)")
    p.add_argument("--sessions", metavar="MANAGER",
                   help="variable holding a NexusSessionManager (deploy_with_sessions)")
    p.add_argument("--no-cache", action="store_true", help="compile again (use_cache=False)")

    p = add("undeploy")
    p.add_argument("name", metavar="NAME", help="deployment name")

    p = add("start")
    p.add_argument("--api-port", type=_port, metavar="P", help="API port (0 = free; default: the app's)")
    p.add_argument("--mcp-port", type=_port, metavar="P", help="MCP port (0 = free; default: the app's)")

    add("stop")
    add("status")

    p = add("call")
    p.add_argument("name", metavar="NAME", help="deployment name")
    p.add_argument("params", nargs="*", metavar="key=value | QUERY", help="inputs, or the query text")
    p.add_argument("--session", metavar="ID", help="continue this session")
    p.add_argument("--channel", choices=CHANNELS, default="api", help="channel (default: api)")
    p.add_argument("--json", action="store_true", help="return the wire JSON (a dict) instead")
    p.add_argument("--api-key", metavar="KEY", help=f"API key (default: ${API_KEY_ENV})")
    p.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds to wait (default: {DEFAULT_TIMEOUT:g})")

    p = add("bench")
    p.add_argument("name", metavar="NAME", help="deployment name (the platform must be serving)")
    p.add_argument("-n", "--requests", type=_count(1, 1_000_000), metavar="REQUESTS",
                   help="requests to send (default: 200, or unbounded with --duration)")
    p.add_argument("-c", "--concurrency", type=_count(1, 256), default=8, metavar="CONCURRENCY",
                   help="requests in flight at once (default: 8)")
    p.add_argument("--duration", type=_positive, metavar="S", help="stop after S seconds (at most 3600)")
    p.add_argument("--channel", choices=CHANNELS, default="api", help="channel (default: api)")
    p.add_argument("--input", action="extend", nargs="+", default=[], metavar="key=value",
                   help="inputs of every request (default: none)")
    p.add_argument("--api-key", metavar="KEY", help=f"API key (default: ${API_KEY_ENV})")
    p.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds one request may take (default: {DEFAULT_TIMEOUT:g})")
    p.add_argument("--quiet", action="store_true", help="no live progress bar and chart")

    p = add("sessions")
    p.add_argument("--user", metavar="U", help="only this user's sessions")

    p = add("metrics")
    p.add_argument("--plot", action="store_true", help="a live MetricsDashboard (or a PNG chart)")

    add("dashboard")

    p = add("logs")
    p.add_argument("-n", "--last", type=_count(1, 10_000), default=50, metavar="N",
                   help="the last N records (default: 50)")
    p.add_argument("--level", default="WARNING", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   help="lowest level shown (default: WARNING)")

    add("last-error")
    return top, parsers
