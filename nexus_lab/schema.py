"""Input schemas derived from a callable's signature.

The same :class:`InputSchema` drives HTTP validation (422 naming the field),
the MCP tool's ``inputSchema``, the OpenAPI document and the CLI's
``--input key=value`` coercion. It is built once per deployment with pydantic
(``create_model``), so validation is pydantic's and error messages name the
field.

Example::

    def greet(name: str, times: int = 1) -> dict: ...
    schema = InputSchema.from_callable(greet)
    schema.validate({"name": "Ada", "times": "2"})   # {'name': 'Ada', 'times': 2}
    schema.json_schema()["required"]                 # ['name']
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import InputValidationError

__all__ = ["InputField", "InputSchema", "SESSION_STATE_PARAM", "unencodable_path"]

#: A parameter of this name is never an input: the platform injects the
#: caller's session state into it (a dict, ``{}`` without a session).
SESSION_STATE_PARAM = "session_state"


@dataclass(frozen=True)
class InputField:
    """One input of a deployment: its name, annotation, and whether it is required."""

    name: str
    annotation: Any
    required: bool
    default: Any = None

    @property
    def type_name(self) -> str:
        ann = self.annotation
        if ann is Any or ann is inspect.Parameter.empty:
            return "any"
        return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


class InputSchema:
    """The validated input contract of a deployable callable."""

    def __init__(self, fields: list[InputField], *, allow_extra: bool = False, title: str = "Inputs") -> None:
        from pydantic import ConfigDict, create_model

        self.fields = fields
        self.allow_extra = allow_extra
        self.title = title
        definitions: dict[str, Any] = {}
        for f in fields:
            ann = Any if f.annotation is inspect.Parameter.empty else f.annotation
            definitions[f.name] = (ann, ... if f.required else f.default)
        config = ConfigDict(extra="allow" if allow_extra else "forbid", arbitrary_types_allowed=True)
        self._model = create_model(_model_name(title), __config__=config, **definitions)
        self._json_schema: dict | None = None
        self._structured = {f.name for f in fields if _wants_json(f.annotation)}
        # When every input is a plain str/int/float/bool with an immutable default, a call
        # whose values already have exactly those types needs no conversion: see plain_values
        self._plain: dict[str, tuple[type, bool, Any]] | None = None
        if not allow_extra and all(
            any(f.annotation is t for t in _PLAIN_TYPES)
            and (f.required or any(f.default.__class__ is t for t in _IMMUTABLE))
            for f in fields
        ):
            self._plain = {f.name: (f.annotation, f.required, f.default) for f in fields}

    # -- construction -------------------------------------------------
    @classmethod
    def from_callable(cls, fn: Callable[..., Any], *, title: str | None = None) -> InputSchema:
        """Build the schema from ``fn``'s parameters and type hints.

        ``self``, ``*args`` and a ``session_state`` parameter are not inputs;
        ``**kwargs`` allows extra inputs.
        """
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"Cannot read the signature of {fn!r}: {exc}") from exc
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolved forward references: fall back to raw annotations
            hints = {}
        fields: list[InputField] = []
        allow_extra = False
        for param in sig.parameters.values():
            if param.name == SESSION_STATE_PARAM or param.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                allow_extra = True
                continue
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise TypeError(
                    f"{getattr(fn, '__qualname__', fn)!r} has positional-only parameter "
                    f"{param.name!r}; deployable callables take keyword inputs"
                )
            ann = hints.get(param.name, param.annotation)
            required = param.default is inspect.Parameter.empty
            fields.append(InputField(param.name, ann, required, None if required else param.default))
        name = title or getattr(fn, "__qualname__", "Inputs").replace(".process", "")
        return cls(fields, allow_extra=allow_extra, title=name)

    # -- use ----------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def required(self) -> list[str]:
        return [f.name for f in self.fields if f.required]

    def plain_values(self, inputs: dict[str, Any]) -> dict[str, Any] | None:
        """The validated values, when the schema has only ``str``/``int``/``float``/``bool``
        inputs and each value given has exactly its field's type (valid Unicode text), no
        input is missing and none is unknown; else ``None``, and :meth:`validate` decides.

        The usual call from JSON (``{"query": "hi"}`` for ``query: str``) needs no
        conversion, and pydantic would return the same values; this check costs
        ~1 us where pydantic's costs several. Defaults fill what is not given.

        >>> InputSchema([InputField("query", str, True)]).plain_values({"query": "hi"})
        {'query': 'hi'}
        """
        plain = self._plain
        if plain is None:
            return None
        out: dict[str, Any] = {}
        found = 0
        for name, (kind, required, default) in plain.items():  # in field order, as pydantic
            if name in inputs:
                value = inputs[name]
                if value.__class__ is not kind or (
                    kind is str and not value.isascii() and _bad_text(value)
                ):
                    return None
                out[name] = value
                found += 1
            elif required:
                return None
            else:
                out[name] = default
        return out if found == len(inputs) else None

    def validate(self, inputs: Any, *, coerce_strings: bool = False) -> dict[str, Any]:
        """Validate ``inputs`` and return the converted values.

        ``coerce_strings=True`` (the CLI) also parses JSON text given for list,
        dict and other structured fields. Raises :class:`InputValidationError`
        naming the first offending field.
        """
        from pydantic import ValidationError

        if inputs is None:
            inputs = {}
        if not isinstance(inputs, dict):
            raise InputValidationError(
                f"inputs must be a JSON object mapping input names to values, got {type(inputs).__name__}",
                field="inputs",
            )
        if self._plain is not None:
            values = self.plain_values(inputs)
            if values is not None:
                return values
        bad = unencodable_path(inputs)
        if bad is not None:
            raise InputValidationError(
                f"invalid input {bad!r}: text that is not valid Unicode (a lone surrogate such as "
                "'\\ud800'); send UTF-8 text",
                field=bad.split(".")[0].split("[")[0] or "inputs",
            )
        if coerce_strings and self._structured:
            inputs = dict(inputs)
            for key in self._structured & inputs.keys():
                value = inputs[key]
                if isinstance(value, str):
                    try:
                        inputs[key] = json.loads(value)
                    except ValueError:
                        pass
        try:
            model = self._model.model_validate(inputs)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            first = errors[0]
            field = ".".join(str(p) for p in first.get("loc", ())) or "inputs"
            kind = first.get("type")
            if kind == "missing":
                msg = f"missing required input {field!r}"
            elif kind == "extra_forbidden":
                msg = f"unknown input {field!r}; expected {_fmt_names(self.names)}"
            else:
                msg = f"invalid input {field!r}: {first.get('msg')}"
            if len(errors) > 1:
                msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
            clean = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
            raise InputValidationError(msg, field=field, errors=clean) from None
        data = dict(model.__dict__)
        if self.allow_extra and model.__pydantic_extra__:
            data.update(model.__pydantic_extra__)
        return data

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of the inputs (an ``object``), as used by OpenAPI and MCP."""
        if self._json_schema is None:
            schema = self._model.model_json_schema()
            schema["title"] = self.title
            schema.setdefault("properties", {})
            if not self.allow_extra:
                schema["additionalProperties"] = False
            self._json_schema = schema
        return json.loads(json.dumps(self._json_schema))

    def describe(self) -> list[dict[str, Any]]:
        """A compact list of ``{"name", "type", "required", "default"}``, for tables and the CLI."""
        out = []
        for f in self.fields:
            item: dict[str, Any] = {"name": f.name, "type": f.type_name, "required": f.required}
            if not f.required:
                item["default"] = f.default if _is_jsonable(f.default) else repr(f.default)
            out.append(item)
        return out

    def __repr__(self) -> str:
        parts = [f"{f.name}: {f.type_name}{'' if f.required else ' = …'}" for f in self.fields]
        return f"InputSchema({', '.join(parts)})"


#: Annotations :meth:`InputSchema.plain_values` checks itself, and the defaults it may share.
_PLAIN_TYPES = (str, int, float, bool)
_IMMUTABLE = (str, int, float, bool, type(None))


def _bad_text(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unencodable_path(value: Any) -> str | None:
    """The path (``a.b[2]``) of the first string or key that UTF-8 cannot encode, or None.

    JSON's ``\\ud800`` escape decodes to a lone surrogate that no store, log or
    response can encode later; it is refused at the door, naming where it was.
    Iterative, so a deeply nested value cannot exhaust the stack.
    """
    if value.__class__ is dict and all(  # the usual case: flat ASCII text, nothing to walk
        k.__class__ is str and k.isascii() and v.__class__ is str and v.isascii()
        for k, v in value.items()
    ):
        return None
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if _bad_text(item):
                return path or "inputs"
        elif isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(key, str) and _bad_text(key):
                    return f"{path}.{key!r}" if path else repr(key)
                stack.append((f"{path}.{key}" if path else str(key), sub))
        elif isinstance(item, (list, tuple)):
            for i, sub in enumerate(item):
                stack.append((f"{path}[{i}]", sub))
    return None


def _model_name(title: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in title).strip("_") or "Inputs"
    return cleaned if cleaned.endswith("Inputs") else cleaned + "Inputs"


def _wants_json(annotation: Any) -> bool:
    if annotation in (str, Any, inspect.Parameter.empty):
        return False
    origin = typing.get_origin(annotation) or annotation
    if origin in (int, float, bool):
        return False
    if origin is typing.Union:
        return any(_wants_json(a) for a in typing.get_args(annotation) if a is not type(None))
    return True


def _is_jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _fmt_names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names) if names else "no inputs"
