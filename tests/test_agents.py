"""Agents: config coercion (the spec's Configuration Pattern), schemas, providers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from nexus_lab import AIAssistant, BaseAgent, BaseAgentConfig, ConfigError, coerce_config
from nexus_lab.errors import InputValidationError


@dataclass
class AssistantConfig:
    """Domain-specific configuration (spec, Configuration Pattern)."""

    llm_provider: str = "openai"
    model: str = "gpt-4"
    temperature: float = 0.7
    max_tokens: int = 2000


@dataclass
class DomainConfig:
    llm_provider: str = "mock"
    model: str = "tiny"
    temperature: float = 0.2
    max_tokens: int = 50
    persona: str = "tutor"
    languages: tuple = ("en", "fr")


def test_spec_configuration_pattern_runs_as_written():
    # Auto-converted to BaseAgentConfig; no key is needed until the agent is called.
    agent = AIAssistant(config=AssistantConfig())
    assert isinstance(agent.config, BaseAgentConfig)
    assert agent.config.llm_provider == "openai"
    assert agent.config.model == "gpt-4"
    assert agent.config.max_tokens == 2000


def test_domain_fields_are_kept_and_readable():
    agent = AIAssistant(config=DomainConfig())
    assert agent.config.persona == "tutor"
    assert agent.config.languages == ("en", "fr")
    assert agent.config.to_dict()["persona"] == "tutor"
    assert agent.domain_config.persona == "tutor"
    with pytest.raises(AttributeError, match="no field 'nope'"):
        _ = agent.config.nope


def test_positional_config_and_mapping_config():
    assert AIAssistant(DomainConfig()).config.model == "tiny"
    cfg = coerce_config({"model": "m", "team": "search"})
    assert cfg.model == "m" and cfg.team == "search"
    assert coerce_config(None).llm_provider == "mock"
    assert coerce_config(cfg) is cfg
    assert coerce_config(cfg, model="other").model == "other"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("temperature", "hot", "'temperature' must be a number"),
        ("temperature", 3.5, "'temperature' must be between"),
        ("max_tokens", 1.5, "'max_tokens' must be an integer"),
        ("max_tokens", 0, "'max_tokens' must be >= 1"),
        ("max_tokens", True, "'max_tokens' must be an integer"),
        ("llm_provider", 42, "'llm_provider' must be a string"),
        ("model", None, "'model' must be a string"),
        ("timeout", 0, "'timeout' must be > 0"),
    ],
)
def test_wrong_types_are_rejected_naming_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        coerce_config({field: value})
    assert info.value.field == field


def test_config_of_unsupported_type_is_rejected():
    with pytest.raises(ConfigError, match="config must be a dataclass"):
        AIAssistant(config=42)


def test_int_temperature_is_accepted_as_float():
    assert coerce_config({"temperature": 1}).temperature == 1.0


def test_mock_assistant_is_deterministic_and_contains_query():
    agent = AIAssistant(config=DomainConfig())
    first = agent.process(query="What is AI?")
    assert first == agent.process(query="What is AI?")
    assert "What is AI?" in first["response"]


def test_assistant_uses_session_history():
    agent = AIAssistant()
    state = {"history": [{"channel": "api", "query": "What is AI?", "response": "..."}]}
    out = agent.process(query="Tell me more", session_state=state)["response"]
    assert "Tell me more" in out
    assert "What is AI?" in out  # the mock provider mentions the earlier question


def test_assistant_rejects_empty_query():
    with pytest.raises(InputValidationError, match="query"):
        AIAssistant().process(query="   ")


def test_unknown_provider_is_a_clear_error_at_call_time():
    agent = AIAssistant(config={"llm_provider": "nonesuch"})
    with pytest.raises(ConfigError, match="nonesuch"):
        agent.process(query="hi")


def test_subclass_contract():
    class Summarizer(BaseAgent):
        """Summarise a text."""

        def process(self, text: str, max_words: int = 3) -> dict:
            return {"summary": " ".join(text.split()[:max_words])}

    assert Summarizer().process(text="a b c d e") == {"summary": "a b c"}
    assert "Summarizer" in repr(Summarizer())
