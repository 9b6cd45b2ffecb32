"""TAB completion inside a ``%nexus`` / ``%%nexus`` line.

What it offers, by position:

* the first word: the subcommands (``%nexus de<TAB>`` -> ``deploy``, never
  ``%debug``);
* a word starting with ``-``: the subcommand's flags;
* the value of a flag: ``--app`` the notebook variables holding a ``Nexus``,
  ``--sessions`` those holding a ``NexusSessionManager``, ``--channel`` and
  ``--channels`` the channels, ``--session`` the ids of the current app's
  deployments' sessions, ``--level`` the log levels;
* ``deploy AGENT``: the notebook variables holding agents (objects with a
  ``process`` method), then the functions defined in the notebook;
* ``call`` / ``bench`` / ``undeploy`` ``NAME``: the current app's
  deployments; after ``call NAME`` (and ``bench NAME --input``), its inputs
  as ``key=``.

Inside a ``%nexus`` line only these are offered (the other matchers are
suppressed). Installed by ``%load_ext nexus_lab`` as an IPython "v2" matcher
(``IPCompleter.custom_matchers``), removed by ``%unload_ext``.

Example::

    from nexus_lab.jupyter.completion import candidates
    candidates(magics, "%nexus de")          # (['deploy'], 'de')
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import Any

from ..platform.deployment import CHANNELS
from .parsing import SUBCOMMANDS

__all__ = ["candidates", "install_completer", "remove_completer", "MATCHER_ID"]

MATCHER_ID = "nexus_lab.magic_matcher"
_LINE = re.compile(r"^\s*%%?nexus(\s+)")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
logger = logging.getLogger("nexus_lab.jupyter")


def _variables(ns: dict[str, Any], test: Any) -> list[str]:
    return sorted(k for k, v in ns.items() if not k.startswith("_") and _safe(test, v))


def _safe(test: Any, value: Any) -> bool:
    try:
        return bool(test(value))
    except Exception:  # a strange object in the namespace must not break completion
        return False


def _is_agent(value: Any) -> bool:
    return not inspect.isclass(value) and callable(getattr(value, "process", None))


def _is_notebook_function(value: Any) -> bool:
    return inspect.isfunction(value) and getattr(value, "__module__", "") == "__main__"


def _deployment_names(magics: Any) -> list[str]:
    app = magics.current_app()
    return sorted(app.deployments) if app is not None else []


def _input_names(magics: Any, name: str) -> list[str]:
    app = magics.current_app()
    try:
        return [f.name for f in app.get_deployment(name).schema.fields] if app is not None else []
    except Exception:  # unknown deployment
        return []


def _session_ids(magics: Any) -> list[str]:
    app = magics.current_app()
    if app is None:
        return []
    managers: list[Any] = []
    for dep in app.deployments.values():  # never app.session_manager: that would create one
        manager = dep.session_manager
        if manager is not None and all(manager is not m for m in managers):
            managers.append(manager)
    ids: list[str] = []
    for manager in managers:
        try:
            ids += [s.session_id for s in manager.list_sessions()]
        except Exception:
            continue
    return ids


def _value_choices(magics: Any, flag: str) -> list[str] | None:
    """Candidates for the value of ``flag`` (None: the flag takes no value we know)."""
    from ..platform.app import Nexus

    ns = magics.ns
    if flag == "--app":
        return _variables(ns, lambda v: isinstance(v, Nexus))
    if flag == "--sessions":
        from ..sessions import NexusSessionManager

        return _variables(ns, lambda v: isinstance(v, NexusSessionManager))
    if flag in ("--channel", "--channels"):
        return list(CHANNELS)
    if flag == "--session":
        return _session_ids(magics)
    if flag == "--level":
        return list(_LEVELS)
    return None


def candidates(magics: Any, line: str) -> tuple[list[str], str] | None:
    """``(completions, fragment)`` for the text of a ``%nexus`` line up to the cursor,
    or None when ``line`` is not a ``%nexus`` line (or the cursor sits in a comment).

    ``fragment`` is the end of ``line`` the completions replace.
    """
    head = _LINE.match(line)
    if head is None:
        return None
    rest = line[head.end():]
    words = rest.split()
    if rest and not rest[-1].isspace():
        fragment = words.pop()
    else:
        fragment = ""
    if any(w.startswith("#") for w in words) or fragment.startswith("#"):
        return None  # in a comment
    if not words:
        return [c for c in SUBCOMMANDS if c.startswith(fragment)], fragment
    command = words[0]
    parser = magics._subparsers.get(command)
    if parser is None:
        return [], fragment
    previous = words[-1] if len(words) > 1 else ""
    positional = _positionals(parser, words[1:])
    if command == "bench" and "--input" in words[1:] and positional and not fragment.startswith("-"):
        keys = [f"{k}=" for k in _input_names(magics, positional[0])]
        return [k for k in keys if k.startswith(fragment)], fragment
    # --flag=value: complete the value after "="
    if fragment.startswith("--") and "=" in fragment:
        flag, _, value = fragment.partition("=")
        choices = _value_choices(magics, flag) or []
        return _matching(choices, value, flag == "--channels"), value.rsplit(",", 1)[-1]
    if previous.startswith("-") and "=" not in previous and _takes_value(parser, previous):
        choices = _value_choices(magics, previous)
        return _matching(choices or [], fragment, previous == "--channels"), fragment.rsplit(",", 1)[-1] \
            if previous == "--channels" else fragment
    if fragment.startswith("-"):
        flags = [f for f in parser.option_strings() if f not in ("-h", "--help")]
        return [f for f in flags if f.startswith(fragment)], fragment
    if command == "deploy" and not positional:
        ns = magics.ns
        names = _variables(ns, _is_agent) + _variables(ns, _is_notebook_function)
        return [n for n in names if n.startswith(fragment)], fragment
    if command in ("call", "bench", "undeploy") and not positional:
        return [n for n in _deployment_names(magics) if n.startswith(fragment)], fragment
    if command == "call" and positional:
        keys = [f"{k}=" for k in _input_names(magics, positional[0])]
        return [k for k in keys if k.startswith(fragment)], fragment
    return [], fragment


def _matching(choices: list[str], typed: str, comma_list: bool) -> list[str]:
    if comma_list:
        typed = typed.rsplit(",", 1)[-1]
    return [c for c in choices if c.startswith(typed)]


def _takes_value(parser: Any, flag: str) -> bool:
    for action in parser._actions:
        if flag in action.option_strings:
            return action.nargs != 0
    return False


def _positionals(parser: Any, words: list[str]) -> list[str]:
    """The positional words already typed (flags and their values skipped)."""
    out: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word.startswith("-"):
            skip = "=" not in word and _takes_value(parser, word) and word != "--input"
            continue
        out.append(word)
    return out


def install_completer(ipython: Any, magics: Any) -> None:
    """Add the ``%nexus`` matcher to ``ipython``'s completer (replacing an earlier one)."""
    completer = getattr(ipython, "Completer", None)
    if completer is None or not hasattr(completer, "custom_matchers"):
        return  # a shell without the v2 matcher API: no completion, nothing else changes
    from IPython.core.completer import SimpleCompletion, completion_matcher

    @completion_matcher(identifier=MATCHER_ID, priority=100, api_version=2)
    def nexus_matcher(context: Any) -> dict[str, Any]:
        try:
            found = candidates(magics, context.text_until_cursor)
        except Exception:  # completion must never raise into the editor
            logger.debug("%nexus completion failed", exc_info=True)
            found = None
        if found is None:
            return {"completions": [], "suppress": False}
        texts, fragment = found
        return {
            "completions": [SimpleCompletion(t, type="nexus") for t in texts],
            "matched_fragment": fragment,
            "suppress": True,  # %nexus de<TAB> must not offer %debug
            "ordered": True,
        }

    remove_completer(ipython)
    completer.custom_matchers.append(nexus_matcher)


def remove_completer(ipython: Any) -> None:
    """Remove the ``%nexus`` matcher (idempotent)."""
    completer = getattr(ipython, "Completer", None)
    matchers = getattr(completer, "custom_matchers", None)
    if matchers is None:
        return
    matchers[:] = [m for m in matchers if getattr(m, "matcher_identifier", None) != MATCHER_ID]
