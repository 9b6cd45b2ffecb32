"""Authentication (API keys -> principals) and rate limiting (token buckets).

Both are plain Python and shared by every channel: the HTTP API and MCP over
HTTP call :meth:`ApiKeyAuth.authenticate` and :meth:`RateLimiter.check` with
the same principal, so limits and identities are the same everywhere.

Example::

    auth = ApiKeyAuth.from_config({"s3cret": "alice"})
    auth.authenticate("Bearer s3cret")      # 'alice'
    limiter = TokenBucketLimiter(rate_per_minute=100)
    limiter.check("alice")                  # RateDecision(allowed=True, remaining=99, ...)
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import AuthenticationError, ConfigError

__all__ = [
    "ApiKeyAuth",
    "RateDecision",
    "RateLimiter",
    "TokenBucketLimiter",
    "validate_rate_limit",
    "API_KEYS_ENV",
]

#: Environment variable holding ``key:user,key2:user2`` (a bare key is its own user,
#: named ``key-<12 hex digits of its SHA-256>``).
API_KEYS_ENV = "NEXUS_API_KEYS"


class ApiKeyAuth:
    """Maps API keys to user ids; compares keys in constant time; never logs them."""

    def __init__(self, keys: dict[str, str]) -> None:
        if not keys:
            raise ConfigError(
                "enable_auth=True needs at least one API key: pass api_keys={'<key>': '<user-id>'} "
                f"or set {API_KEYS_ENV}='<key>:<user-id>'. There is no built-in fallback key.",
                field="api_keys",
            )
        self._keys: list[tuple[bytes, str]] = []
        for key, user in keys.items():
            if not isinstance(key, str) or not key.strip():
                raise ConfigError("API keys must be non-empty strings", field="api_keys")
            if not isinstance(user, str) or not user.strip():
                raise ConfigError("each API key must map to a non-empty user id", field="api_keys")
            self._keys.append((key.encode(), user))

    @classmethod
    def from_config(cls, api_keys: Any = None) -> ApiKeyAuth:
        """Build from ``api_keys`` (dict, or list of keys) or, when None, from ``$NEXUS_API_KEYS``."""
        if api_keys is None:
            api_keys = _parse_env_keys(os.environ.get(API_KEYS_ENV, ""))
        elif isinstance(api_keys, (list, tuple, set, frozenset)):
            api_keys = {k: _default_user(k) for k in api_keys}
        elif not isinstance(api_keys, dict):
            raise ConfigError(
                f"api_keys must be a dict mapping key -> user id, got {type(api_keys).__name__}",
                field="api_keys",
            )
        return cls(dict(api_keys))

    @property
    def users(self) -> list[str]:
        return sorted({user for _, user in self._keys})

    def principal_for(self, key: str | None) -> str | None:
        """The user id of ``key``, or None. Every configured key is compared, in constant time."""
        if not key:
            return None
        candidate = key.encode()
        found = None
        for stored, user in self._keys:
            if hmac.compare_digest(stored, candidate):
                found = user
        return found

    def authenticate(self, authorization: str | None = None, api_key: str | None = None) -> str:
        """Return the principal for an ``Authorization: Bearer`` value or an ``X-API-Key`` value.

        Raises :class:`AuthenticationError` when the key is missing or wrong.
        """
        key = api_key
        if not key and authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                key = token.strip()
        if not key:
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        user = self.principal_for(key)
        if user is None:
            raise AuthenticationError("invalid API key")
        return user

    def __repr__(self) -> str:  # never show keys
        return f"ApiKeyAuth(users={self.users!r})"


def _default_user(key: str) -> str:
    """The principal of a key given without ``:user``: its own, and revealing none of the key.

    ``key-`` plus 12 hex digits of the key's SHA-256, so two keys are always two
    users (a prefix of the key itself would merge ``teamA-...`` and ``teamB-...``
    keys into one ``key-team`` and print part of each key in every session).
    """
    import hashlib

    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _parse_env_keys(text: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for item in text.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, user = item.partition(":")
        keys[key.strip()] = user.strip() if sep and user.strip() else _default_user(key.strip())
    return keys


def validate_rate_limit(value: Any) -> int | None:
    """Accept ``None`` or a positive int (requests per minute); reject anything else clearly."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"rate_limit must be a positive integer (requests per minute) or None, got {type(value).__name__} {value!r}",
            field="rate_limit",
        )
    if value <= 0:
        raise ConfigError(f"rate_limit must be a positive integer, got {value}", field="rate_limit")
    return value


@dataclass(frozen=True)
class RateDecision:
    """The outcome of one rate-limit check, with what the headers need."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: float

    def headers(self) -> dict[str, str]:
        h = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining)}
        if not self.allowed:
            h["Retry-After"] = str(max(1, int(self.retry_after + 0.999)))
        return h


class RateLimiter:
    """Interface: ``check(principal) -> RateDecision`` consumes one token if allowed.

    A Redis-backed limiter (shared by several workers) implements the same method.
    """

    limit: int

    def check(self, principal: str) -> RateDecision:  # pragma: no cover - interface
        raise NotImplementedError


class TokenBucketLimiter(RateLimiter):
    """In-process token bucket: ``rate_per_minute`` tokens, refilled continuously.

    The bucket holds at most ``rate_per_minute`` tokens (burst), so ``N``
    requests pass at once and then one more every ``60/N`` seconds.
    At most ``max_principals`` buckets are kept (least recently used dropped).
    """

    def __init__(self, rate_per_minute: int, *, clock=time.monotonic, max_principals: int = 100_000) -> None:
        self.limit = validate_rate_limit(rate_per_minute) or 0
        if not self.limit:
            raise ConfigError("rate_per_minute must be a positive integer", field="rate_limit")
        self._rate = self.limit / 60.0
        self._clock = clock
        self._max = max_principals
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, principal: str) -> RateDecision:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(principal, (float(self.limit), now))
            tokens = min(float(self.limit), tokens + (now - last) * self._rate)
            if tokens >= 1.0:
                tokens -= 1.0
                allowed, retry = True, 0.0
            else:
                allowed, retry = False, (1.0 - tokens) / self._rate
            self._buckets[principal] = (tokens, now)
            self._buckets.move_to_end(principal)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        return RateDecision(allowed, self.limit, int(tokens), retry)

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()
