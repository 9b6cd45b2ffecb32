"""Input schemas come from process()/function signatures and validate with clear errors."""

from __future__ import annotations

from typing import Any

import pytest

from nexus_lab import AIAssistant, InputSchema, InputValidationError


def greet(name: str, times: int = 1, tags: list[str] | None = None) -> dict:
    return {}


def test_fields_from_signature():
    schema = InputSchema.from_callable(greet)
    assert schema.names == ["name", "times", "tags"]
    assert schema.required == ["name"]
    js = schema.json_schema()
    assert js["type"] == "object"
    assert js["properties"]["times"]["type"] == "integer"
    assert js["required"] == ["name"]
    assert js["additionalProperties"] is False


def test_bound_method_skips_self_and_session_state():
    schema = InputSchema.from_callable(AIAssistant().process)
    assert schema.names == ["query"]


def test_validate_converts_and_fills_defaults():
    schema = InputSchema.from_callable(greet)
    assert schema.validate({"name": "Ada", "times": "2"}) == {"name": "Ada", "times": 2, "tags": None}


@pytest.mark.parametrize(
    ("inputs", "field", "needle"),
    [
        ({}, "name", "missing required input 'name'"),
        ({"name": "a", "times": "many"}, "times", "invalid input 'times'"),
        ({"name": "a", "colour": 1}, "colour", "unknown input 'colour'"),
        (["name"], "inputs", "must be a JSON object"),
    ],
)
def test_errors_name_the_field(inputs, field, needle):
    schema = InputSchema.from_callable(greet)
    with pytest.raises(InputValidationError, match=needle) as info:
        schema.validate(inputs)
    assert info.value.field == field
    assert info.value.http_status == 422


def test_cli_coercion_parses_json_for_structured_fields():
    schema = InputSchema.from_callable(greet)
    assert schema.validate({"name": "a", "tags": '["x", "y"]'}, coerce_strings=True)["tags"] == ["x", "y"]
    with pytest.raises(InputValidationError):
        schema.validate({"name": "a", "tags": '["x", "y"]'})


def test_var_keyword_allows_extra_inputs():
    def anything(query: str, **extra: Any) -> dict:
        return {}

    schema = InputSchema.from_callable(anything)
    assert schema.validate({"query": "q", "k": 1}) == {"query": "q", "k": 1}
    assert schema.json_schema()["additionalProperties"] is True


def test_untyped_parameters_accept_anything():
    def loose(x, y=3):
        return {}

    schema = InputSchema.from_callable(loose)
    assert schema.validate({"x": [1, {"a": 2}]}) == {"x": [1, {"a": 2}], "y": 3}
    assert schema.describe() == [
        {"name": "x", "type": "any", "required": True},
        {"name": "y", "type": "any", "required": False, "default": 3},
    ]


def test_positional_only_is_rejected():
    def bad(a, /):
        return {}

    with pytest.raises(TypeError, match="positional-only"):
        InputSchema.from_callable(bad)
