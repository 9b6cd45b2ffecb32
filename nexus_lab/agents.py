"""Agents: configuration, the ``BaseAgent`` contract and the ``AIAssistant`` example.

An agent is any object with a ``process(**inputs) -> dict`` method. Its input
schema (names, types, required) is read from ``process``'s signature and type
hints; the platform uses it for HTTP validation, the MCP tool schema and CLI
flags. A plain typed function is deployable too.

Configuration follows the spec's *Configuration Pattern*: pass any dataclass
or mapping as ``config=`` and it is converted to :class:`BaseAgentConfig`.
Fields that ``BaseAgentConfig`` knows are type-checked; the others (your
domain fields) are kept and readable as attributes.

Example::

    from dataclasses import dataclass
    from nexus_lab import AIAssistant

    @dataclass
    class AssistantConfig:
        llm_provider: str = "mock"
        model: str = "gpt-4"
        temperature: float = 0.7
        max_tokens: int = 2000
        persona: str = "tutor"          # a domain field, kept

    agent = AIAssistant(config=AssistantConfig())
    agent.config.persona                # 'tutor'
    agent.process(query="What is AI?")  # {'response': '[mock:gpt-4] You said: What is AI?'}
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError, InputValidationError

__all__ = ["BaseAgentConfig", "BaseAgent", "AIAssistant", "coerce_config"]

_NUMBER = (int, float)


@dataclasses.dataclass
class BaseAgentConfig:
    """The configuration every agent understands.

    Unknown fields given through :func:`coerce_config` are kept in ``extras``
    and readable as attributes (``config.persona``).
    """

    llm_provider: str = "mock"
    model: str = "mock-model"
    temperature: float = 0.7
    max_tokens: int = 1000
    system_prompt: str = "You are a helpful assistant."
    base_url: str | None = None
    api_key: str | None = dataclasses.field(default=None, repr=False)
    timeout: float = 30.0
    max_retries: int = 2
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_str(self, "llm_provider", allow_none=False)
        _check_str(self, "model", allow_none=False)
        _check_str(self, "system_prompt", allow_none=False)
        _check_str(self, "base_url", allow_none=True)
        _check_str(self, "api_key", allow_none=True)
        _check_number(self, "temperature", lo=0.0, hi=2.0)
        _check_int(self, "max_tokens", lo=1)
        _check_number(self, "timeout", lo=0.0, strict_lo=True)
        _check_int(self, "max_retries", lo=0)
        if not isinstance(self.extras, dict):
            raise ConfigError("config field 'extras' must be a dict", field="extras")
        self.llm_provider = self.llm_provider.strip().lower()
        if not self.llm_provider:
            raise ConfigError("config field 'llm_provider' must not be empty", field="llm_provider")

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: expose domain fields.
        extras = self.__dict__.get("extras")
        if extras is not None and name in extras:
            return extras[name]
        raise AttributeError(f"{type(self).__name__!s} has no field {name!r}")

    def to_dict(self, *, include_secrets: bool = False) -> dict[str, Any]:
        """All fields, domain fields flattened in; the API key is left out unless asked."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extras"}
        if not include_secrets:
            data.pop("api_key", None)
        data.update(self.extras)
        return data

    def fingerprint(self) -> str:
        """A stable text key of the configuration (used by the deployment cache)."""
        return json.dumps(self.to_dict(include_secrets=True), sort_keys=True, default=repr)


_KNOWN = {f.name for f in dataclasses.fields(BaseAgentConfig)} - {"extras"}


def coerce_config(config: Any = None, **overrides: Any) -> BaseAgentConfig:
    """Convert ``config`` (None, a ``BaseAgentConfig``, any dataclass, a mapping,
    or an object with attributes) into a :class:`BaseAgentConfig`.

    A wrong type raises :class:`~nexus_lab.errors.ConfigError` naming the field.

    >>> coerce_config({"model": "gpt-4", "team": "search"}).team
    'search'
    """
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, BaseAgentConfig):
        if not overrides:
            return config
        data = config.to_dict(include_secrets=True)
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    elif isinstance(config, Mapping):
        data = dict(config)
    elif hasattr(config, "__dict__") and not isinstance(config, type):
        data = {k: v for k, v in vars(config).items() if not k.startswith("_")}
    else:
        raise ConfigError(
            f"config must be a dataclass, a mapping or BaseAgentConfig, got {type(config).__name__}",
            field="config",
        )
    data.update(overrides)
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be strings, got {key!r}", field=str(key))
    known = {k: v for k, v in data.items() if k in _KNOWN}
    extras = dict(data.pop("extras", None) or {})
    extras.update({k: v for k, v in data.items() if k not in _KNOWN and k != "extras"})
    return BaseAgentConfig(**known, extras=extras)


class BaseAgent:
    """Base class for deployable agents.

    Subclasses implement ``process(self, **inputs) -> dict`` with typed
    keyword parameters; those parameters are the agent's inputs on every
    channel. A parameter named ``session_state`` is not an input: the
    platform fills it with the caller's session state.

    The servers run a sync ``process`` in a worker thread. An agent may also
    define ``async def aprocess(...)`` with the same parameters; the servers
    then await it on the event loop instead (no thread per call), while
    ``process`` stays the plain Python API.

    Example::

        class Summarizer(BaseAgent):
            '''Summarise a text in one line.'''
            def process(self, text: str, max_words: int = 20) -> dict:
                words = text.split()[:max_words]
                return {"summary": " ".join(words)}
    """

    #: Text used as the MCP tool description and in the API listing (defaults to the docstring).
    tool_description: str | None = None

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        self.domain_config = config
        self.config: BaseAgentConfig = coerce_config(config, **overrides)
        self._provider = None

    # -- the contract -------------------------------------------------
    def process(self, **inputs: Any) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement process(**inputs) -> dict")

    # -- helpers for subclasses -----------------------------------------
    @property
    def provider(self):
        """The LLM provider named by ``config.llm_provider`` (created on first use)."""
        if self._provider is None:
            from .providers import get_provider

            cfg = self.config
            self._provider = get_provider(
                cfg.llm_provider,
                base_url=cfg.base_url,
                api_key=cfg.api_key,
                timeout=cfg.timeout,
                max_retries=cfg.max_retries,
            )
        return self._provider

    def complete(self, messages: list[dict[str, str]]) -> str:
        """Ask the configured provider for a completion of ``messages``."""
        cfg = self.config
        return self.provider.complete(
            messages, model=cfg.model, temperature=cfg.temperature, max_tokens=cfg.max_tokens
        )

    async def acomplete(self, messages: list[dict[str, str]]) -> str:
        """Async :meth:`complete` (providers without an async client use a worker thread)."""
        cfg = self.config
        return await self.provider.acomplete(
            messages, model=cfg.model, temperature=cfg.temperature, max_tokens=cfg.max_tokens
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(llm_provider={self.config.llm_provider!r}, model={self.config.model!r})"


class AIAssistant(BaseAgent):
    """A conversational assistant: answers ``query`` with the configured LLM.

    With a session, earlier turns (kept by the platform under
    ``session_state["history"]``) are sent along, so a conversation started on
    one channel continues on another.

    >>> AIAssistant(config={"llm_provider": "mock"}).process(query="hi")["response"]
    '[mock:mock-model] You said: hi'
    """

    tool_description = "Answer a question with the configured LLM; pass session_id to continue a conversation."

    def process(self, query: str, session_state: dict | None = None) -> dict[str, Any]:
        return {"response": self.complete(self._messages(query, session_state))}

    async def aprocess(self, query: str, session_state: dict | None = None) -> dict[str, Any]:
        """The same as :meth:`process`, without a worker thread: the platform's servers
        call this, so an assistant waiting on its LLM never holds a thread."""
        return {"response": await self.acomplete(self._messages(query, session_state))}

    def _messages(self, query: str, session_state: dict | None) -> list[dict[str, str]]:
        if not isinstance(query, str) or not query.strip():
            raise InputValidationError("query must be a non-empty string", field="query")
        messages: list[dict[str, str]] = [{"role": "system", "content": self.config.system_prompt}]
        for turn in (session_state or {}).get("history", []):
            if isinstance(turn, dict):
                if turn.get("query"):
                    messages.append({"role": "user", "content": str(turn["query"])})
                if turn.get("response"):
                    messages.append({"role": "assistant", "content": str(turn["response"])})
        messages.append({"role": "user", "content": query})
        return messages


# -- config checks ------------------------------------------------------
def _check_str(cfg: Any, name: str, *, allow_none: bool) -> None:
    value = getattr(cfg, name)
    if value is None and allow_none:
        return
    if not isinstance(value, str):
        raise ConfigError(
            f"config field {name!r} must be a string, got {type(value).__name__} {value!r}", field=name
        )


def _check_number(cfg: Any, name: str, *, lo: float, hi: float | None = None, strict_lo: bool = False) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, _NUMBER) or math.isnan(value):
        raise ConfigError(
            f"config field {name!r} must be a number, got {type(value).__name__} {value!r}", field=name
        )
    if value < lo or (strict_lo and value == lo) or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else (f"> {lo}" if strict_lo else f">= {lo}")
        raise ConfigError(f"config field {name!r} must be {bound}, got {value!r}", field=name)
    setattr(cfg, name, float(value))


def _check_int(cfg: Any, name: str, *, lo: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"config field {name!r} must be an integer, got {type(value).__name__} {value!r}", field=name
        )
    if value < lo:
        raise ConfigError(f"config field {name!r} must be >= {lo}, got {value!r}", field=name)
