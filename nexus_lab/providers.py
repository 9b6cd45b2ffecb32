"""LLM providers used by agents: ``mock``, ``openai`` and ``ollama``, plus your own.

Every provider implements one method::

    provider.complete(messages, model=..., temperature=..., max_tokens=...) -> str

where ``messages`` are OpenAI-style ``{"role": "system"|"user"|"assistant",
"content": str}`` dicts.

* ``mock``: deterministic and offline; echoes the last user message (and
  mentions the previous one, so conversation continuation is visible).
* ``openai``: the official ``openai`` package against api.openai.com or any
  OpenAI-compatible ``base_url`` (vLLM, llama.cpp server, LM Studio, ...).
* ``ollama``: Ollama's native ``/api/chat`` over httpx.

Every failure of a remote provider (unreachable, HTTP 4xx/5xx, timeout,
malformed response) is raised as one ``ProviderError`` naming the provider, the
URL and the cause (``status_code`` set when there is one), chained with
``from`` to the original exception. Heavy packages (openai, httpx) are imported
on first use only.

Example::

    from nexus_lab.providers import get_provider

    llm = get_provider("mock")
    llm.complete([{"role": "user", "content": "hi"}], model="m", temperature=0, max_tokens=50)
    # '[mock:m] You said: hi'

    local = get_provider("openai", base_url="http://127.0.0.1:8000/v1")
"""

from __future__ import annotations

import json
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from .errors import ConfigError, ProviderError

__all__ = [
    "LLMProvider",
    "MockProvider",
    "OpenAIProvider",
    "OllamaProvider",
    "get_provider",
    "register_provider",
    "available_providers",
]

ProviderFactory = Callable[..., "LLMProvider"]


def _text(content: Any) -> str:
    """The text of a message ``content`` (a str, or a list of OpenAI content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                if part.get("type", "text") == "text":
                    parts.append(str(part.get("text", "")))
            else:
                parts.append(str(part))
        return "".join(parts)
    return str(content)


def _check_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r}")
    return messages


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class LLMProvider(ABC):
    """A chat-completion backend.

    Subclass it and register a factory with ``register_provider`` to add your own.

    Example::

        class Upper(LLMProvider):
            name = "upper"
            def complete(self, messages, *, model, temperature=0.7, max_tokens=1000):
                return messages[-1]["content"].upper()

        register_provider("upper", lambda **kw: Upper())
    """

    name: str = "provider"

    @abstractmethod
    def complete(
        self,
        messages: list[dict],
        *,
        model: str,
        temperature: float = 0.7,
        max_tokens: int = 1000,
    ) -> str:
        """Answer the conversation ``messages``; raise ``ProviderError`` on failure."""

    async def acomplete(
        self,
        messages: list[dict],
        *,
        model: str,
        temperature: float = 0.7,
        max_tokens: int = 1000,
    ) -> str:
        """Async :meth:`complete`. The default runs ``complete`` in a worker thread;
        providers that are pure CPU (``mock``) or have an async client override it."""
        import asyncio
        import functools

        call = functools.partial(
            self.complete, messages, model=model, temperature=temperature, max_tokens=max_tokens
        )
        return await asyncio.get_running_loop().run_in_executor(None, call)

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release network clients, if any."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class MockProvider(LLMProvider):
    """Deterministic, offline provider for tests, demos and development.

    The answer contains the last user message verbatim; when earlier user turns
    exist it also mentions the turn number and the previous question.

    Example::

        >>> p = MockProvider()
        >>> p.complete([{"role": "user", "content": "hi"}], model="m")
        '[mock:m] You said: hi'
        >>> p.complete([{"role": "user", "content": "hi"},
        ...             {"role": "assistant", "content": "..."},
        ...             {"role": "user", "content": "and?"}], model="m")
        '[mock:m] You said: and? (turn 2; earlier you asked: hi)'
    """

    name = "mock"

    def __init__(self, **_ignored: Any) -> None:
        pass

    async def acomplete(self, messages: list[dict], *, model: str, temperature: float = 0.7,
                        max_tokens: int = 1000) -> str:
        """Pure CPU and instant: answered on the event loop, no worker thread."""
        return self.complete(messages, model=model, temperature=temperature, max_tokens=max_tokens)

    def complete(
        self,
        messages: list[dict],
        *,
        model: str,
        temperature: float = 0.7,
        max_tokens: int = 1000,
    ) -> str:
        _check_messages(messages)
        user_turns = [_text(m["content"]) for m in messages if m.get("role") == "user"]
        query = user_turns[-1] if user_turns else ""
        answer = f"[mock:{model}] You said: {query}"
        if len(user_turns) > 1:
            answer += f" (turn {len(user_turns)}; earlier you asked: {_short(user_turns[-2], 80)})"
        return answer


class _RemoteProvider(LLMProvider):
    """What providers that call a server share: where, credentials, limits, one cached client."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
    ) -> None:
        self.base_url = self._resolve_base_url(base_url)
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self._client: Any = None
        self._lock = threading.Lock()

    def _resolve_base_url(self, base_url: str | None) -> str | None:
        return base_url


class OpenAIProvider(_RemoteProvider):
    """OpenAI or any OpenAI-compatible server, through the official ``openai`` package.

    The API key comes from ``api_key``, else ``$OPENAI_API_KEY``; with a custom
    ``base_url`` (or ``$OPENAI_BASE_URL``) and no key a placeholder key is sent
    (local servers ignore it). The client is created on first use and cached.

    Example::

        llm = OpenAIProvider(base_url="http://127.0.0.1:8000/v1", timeout=10)
        llm.complete([{"role": "user", "content": "hi"}], model="qwen2.5",
                     temperature=0.2, max_tokens=100)
    """

    name = "openai"
    PLACEHOLDER_KEY = "sk-no-key-required"
    DEFAULT_BASE_URL = "https://api.openai.com/v1"

    @property
    def url(self) -> str:
        """The chat-completions URL requests go to."""
        base = self.base_url or os.environ.get("OPENAI_BASE_URL") or self.DEFAULT_BASE_URL
        return base.rstrip("/") + "/chat/completions"

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            base_url = self.base_url or os.environ.get("OPENAI_BASE_URL") or None
            api_key = self.api_key or os.environ.get("OPENAI_API_KEY")
            if not api_key:
                if base_url is None:
                    raise ProviderError(
                        "openai provider: no API key. Set the OPENAI_API_KEY environment "
                        "variable, pass api_key=..., or pass base_url=... for an "
                        "OpenAI-compatible local server",
                        provider=self.name,
                    )
                api_key = self.PLACEHOLDER_KEY
            try:
                import openai
            except ImportError as exc:
                raise ProviderError(
                    "openai provider needs the 'openai' package: pip install 'nexus-lab[openai]'",
                    provider=self.name,
                ) from exc
            self._client = openai.OpenAI(
                api_key=api_key,
                base_url=base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
            return self._client

    def complete(
        self,
        messages: list[dict],
        *,
        model: str,
        temperature: float = 0.7,
        max_tokens: int = 1000,
    ) -> str:
        _check_messages(messages)
        client = self._get_client()
        import openai

        url = self.url
        where = f"openai provider request to {url}"
        try:
            response = client.chat.completions.create(
                model=model,
                messages=messages,
                temperature=temperature,
                max_tokens=max_tokens,
            )
        except openai.APITimeoutError as exc:
            raise ProviderError(
                f"{where} timed out after {self.timeout}s", provider=self.name
            ) from exc
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise ProviderError(
                f"{where} failed: could not connect ({_short(str(cause) or type(cause).__name__)})",
                provider=self.name,
            ) from exc
        except openai.APIStatusError as exc:
            detail = _status_detail(exc)
            raise ProviderError(
                f"{where} failed: HTTP {exc.status_code}{': ' + detail if detail else ''}",
                provider=self.name,
                status_code=exc.status_code,
            ) from exc
        except openai.OpenAIError as exc:
            raise ProviderError(
                f"{where} failed: {type(exc).__name__}: {_short(str(exc))}", provider=self.name
            ) from exc
        except ValueError as exc:  # e.g. a 200 response whose body is not JSON
            raise ProviderError(
                f"{where} returned a malformed response ({type(exc).__name__}: {_short(str(exc))})",
                provider=self.name,
            ) from exc
        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise ProviderError(
                f"{where} returned a malformed response (no choices[0].message): "
                f"{_short(repr(response))}",
                provider=self.name,
            ) from exc
        if content is None:
            raise ProviderError(
                f"{where} returned a malformed response: choices[0].message.content is null",
                provider=self.name,
            )
        if not isinstance(content, str):
            raise ProviderError(
                f"{where} returned a malformed response: content is "
                f"{type(content).__name__}, not text",
                provider=self.name,
            )
        return content

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _status_detail(exc: Any) -> str:
    """A short human message out of an openai APIStatusError."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return _short(str(err["message"]))
        if isinstance(err, str):
            return _short(err)
    message = getattr(exc, "message", "") or ""
    return _short(message)


class OllamaProvider(_RemoteProvider):
    """Ollama's native chat API (``POST /api/chat``) over httpx.

    The server is ``base_url``, else ``$OLLAMA_HOST``, else
    ``http://127.0.0.1:11434``. Connection errors, timeouts, HTTP 429 and 5xx
    are retried up to ``max_retries`` times with a short backoff.

    Example::

        llm = OllamaProvider(base_url="http://127.0.0.1:11434")
        llm.complete([{"role": "user", "content": "hi"}], model="llama3.2",
                     temperature=0.7, max_tokens=200)
    """

    name = "ollama"
    DEFAULT_HOST = "http://127.0.0.1:11434"

    def _resolve_base_url(self, base_url: str | None) -> str:
        host = base_url or os.environ.get("OLLAMA_HOST") or self.DEFAULT_HOST
        if "://" not in host:
            host = "http://" + host
        return host.rstrip("/")

    @property
    def url(self) -> str:
        """The chat URL requests go to."""
        return self.base_url + "/api/chat"

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import httpx
                except ImportError as exc:
                    raise ProviderError(
                        "ollama provider needs the 'httpx' package: pip install httpx",
                        provider=self.name,
                    ) from exc
                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                self._client = httpx.Client(timeout=self.timeout, headers=headers)
            return self._client

    def complete(
        self,
        messages: list[dict],
        *,
        model: str,
        temperature: float = 0.7,
        max_tokens: int = 1000,
    ) -> str:
        _check_messages(messages)
        client = self._get_client()
        import httpx

        url = self.url
        where = f"ollama provider request to {url}"
        payload = {
            "model": model,
            "messages": [{"role": m["role"], "content": _text(m["content"])} for m in messages],
            "stream": False,
            "options": {"temperature": temperature, "num_predict": max_tokens},
        }
        attempt = 0
        while True:
            retryable = False
            try:
                response = client.post(url, json=payload)
            except httpx.TimeoutException as exc:
                error = ProviderError(
                    f"{where} timed out after {self.timeout}s", provider=self.name
                )
                error.__cause__ = exc
                retryable = True
            except httpx.TransportError as exc:
                error = ProviderError(
                    f"{where} failed: could not connect "
                    f"({_short(str(exc) or type(exc).__name__)}); is Ollama running?",
                    provider=self.name,
                )
                error.__cause__ = exc
                retryable = True
            except httpx.HTTPError as exc:
                raise ProviderError(
                    f"{where} failed: {type(exc).__name__}: {_short(str(exc))}", provider=self.name
                ) from exc
            else:
                if response.status_code < 400:
                    return self._parse(response, where)
                detail = _ollama_error_detail(response)
                error = ProviderError(
                    f"{where} failed: HTTP {response.status_code}{': ' + detail if detail else ''}",
                    provider=self.name,
                    status_code=response.status_code,
                )
                retryable = response.status_code == 429 or response.status_code >= 500
            if not retryable or attempt >= self.max_retries:
                raise error
            time.sleep(min(0.25 * 2**attempt, 2.0))
            attempt += 1

    def _parse(self, response: Any, where: str) -> str:
        try:
            data = response.json()
        except (ValueError, json.JSONDecodeError) as exc:
            raise ProviderError(
                f"{where} returned a malformed response (not JSON): {_short(response.text)}",
                provider=self.name,
                status_code=response.status_code,
            ) from exc
        try:
            content = data["message"]["content"]
        except (KeyError, TypeError) as exc:
            raise ProviderError(
                f"{where} returned a malformed response (no message.content): "
                f"{_short(json.dumps(data) if isinstance(data, (dict, list)) else repr(data))}",
                provider=self.name,
                status_code=response.status_code,
            ) from exc
        if not isinstance(content, str):
            raise ProviderError(
                f"{where} returned a malformed response: message.content is "
                f"{type(content).__name__}, not text",
                provider=self.name,
                status_code=response.status_code,
            )
        return content

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _ollama_error_detail(response: Any) -> str:
    try:
        data = response.json()
    except ValueError:
        return _short(response.text)
    if isinstance(data, dict) and data.get("error"):
        return _short(str(data["error"]))
    return _short(json.dumps(data))


# -- registry ----------------------------------------------------------------------
_REGISTRY: dict[str, ProviderFactory] = {
    "mock": MockProvider,
    "openai": OpenAIProvider,
    "ollama": OllamaProvider,
}
_REGISTRY_LOCK = threading.Lock()


def _normalize(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"provider name must be a non-empty string, got {name!r}", field="llm_provider"
        )
    return name.strip().lower()


def register_provider(name: str, factory: ProviderFactory) -> None:
    """Register (or replace) a provider factory under ``name`` (case-insensitive).

    ``factory`` is called as ``factory(base_url=..., api_key=..., timeout=...,
    max_retries=...)`` and must return an ``LLMProvider``.

    Example::

        register_provider("echo", lambda **kw: MyEchoProvider())
        get_provider("echo")
    """
    key = _normalize(name)
    if not callable(factory):
        raise ConfigError(f"provider factory for {name!r} must be callable", field="factory")
    with _REGISTRY_LOCK:
        _REGISTRY[key] = factory


def available_providers() -> list[str]:
    """Names of the registered providers, sorted.

    Example::

        >>> "mock" in available_providers()
        True
    """
    with _REGISTRY_LOCK:
        return sorted(_REGISTRY)


def get_provider(
    name: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
    max_retries: int = 2,
) -> LLMProvider:
    """A new provider instance by name; unknown names raise ``ConfigError``.

    Example::

        llm = get_provider("ollama", base_url="http://127.0.0.1:11434", timeout=60)
    """
    key = _normalize(name)
    with _REGISTRY_LOCK:
        factory = _REGISTRY.get(key)
        known = sorted(_REGISTRY)
    if factory is None:
        raise ConfigError(
            f"Unknown LLM provider {name!r}; known providers: {', '.join(known)} "
            "(add your own with nexus_lab.providers.register_provider)",
            field="llm_provider",
        )
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"timeout must be a positive number, got {timeout!r}", field="timeout")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError(
            f"max_retries must be an integer >= 0, got {max_retries!r}", field="max_retries"
        )
    provider = factory(
        base_url=base_url, api_key=api_key, timeout=float(timeout), max_retries=max_retries
    )
    if not isinstance(provider, LLMProvider):
        raise ConfigError(
            f"provider factory for {name!r} returned {type(provider).__name__}, not an LLMProvider",
            field="llm_provider",
        )
    return provider
