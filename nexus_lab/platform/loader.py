"""Load a ``Nexus`` app from an ``APP_REF``: ``module:attr`` or ``path/to/file.py:attr``.

Used by ``nexus serve`` and ``nexus mcp``. ``attr`` may name a ``Nexus``
instance or a zero-argument factory returning one; it defaults to ``app``.

Example::

    app = load_app("examples/assistant_app.py:app")
    app = load_app("nexus_lab.demo:build_app")
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

__all__ = ["load_app", "AppRefError"]


class AppRefError(ValueError):
    """The APP_REF cannot be loaded; the message says why."""


def load_app(ref: str) -> Any:
    from .app import Nexus

    if not isinstance(ref, str) or not ref.strip():
        raise AppRefError("APP_REF must look like 'module:attr' or 'path/to/file.py:attr'")
    target, sep, attr = ref.strip().rpartition(":")
    if not sep or (len(target) == 1 and target.isalpha()):  # no colon, or a Windows drive letter
        target, attr = ref.strip(), "app"
    attr = attr or "app"
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise AppRefError(f"APP_REF file not found: {path}")
        mod_name = f"_nexus_app_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise AppRefError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        parent = str(path.resolve().parent)
        if parent not in sys.path:
            sys.path.insert(0, parent)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise AppRefError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise AppRefError(f"cannot import module {target!r}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise AppRefError(f"{target!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Nexus) and callable(obj):
        obj = obj()
    if not isinstance(obj, Nexus):
        raise AppRefError(f"{ref!r} is a {type(obj).__name__}, not a nexus_lab.Nexus app")
    return obj
