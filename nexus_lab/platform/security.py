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
import ipaddress
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import AuthenticationError, ConfigError

__all__ = [
    "ApiKeyAuth",
    "RateDecision",
    "RateLimiter",
    "TokenBucketLimiter",
    "validate_rate_limit",
    "API_KEYS_ENV",
    "HTTPPolicy",
    "HostPattern",
    "OriginPattern",
    "is_loopback",
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


class RateDecision(NamedTuple):
    """The outcome of one rate-limit check, with what the headers need.

    Immutable; a named tuple rather than a frozen dataclass because one is made
    per request (a third of the cost to build).
    """

    allowed: bool
    limit: int
    remaining: int
    retry_after: float

    def headers(self) -> dict[str, str]:
        h = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining)}
        if not self.allowed:
            h["Retry-After"] = str(max(1, int(self.retry_after + 0.999)))
        return h

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The ``X-RateLimit-*`` headers of an allowed request as ASGI header pairs
        (the servers' hot path; :meth:`headers` is the readable form)."""
        return [
            (b"x-ratelimit-limit", b"%d" % self.limit),
            (b"x-ratelimit-remaining", b"%d" % self.remaining),
        ]


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


# ----------------------------------------------------------------------------- HTTP front
#: Host names that reach this machine only: the default ``allowed_hosts`` of a loopback bind.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
#: JSON deeper than this cannot be configured: CPython's decoder recurses once per level.
MAX_JSON_DEPTH_LIMIT = 512

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` makes a server reachable from this machine only.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, str | None]:
    """``"Example.com:8000"`` -> ``("example.com", "8000")``; ``"[::1]"`` -> ``("[::1]", None)``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        rest = value[end + 1 :]
        return value[: end + 1], (rest[1:] if rest.startswith(":") else rest or None)
    if ":" in value:
        name, _, port = value.rpartition(":")
        return name, port
    return value, None


def _host_name(host: str) -> str:
    """A bind address as it appears in a ``Host`` header (IPv6 in brackets)."""
    host = host.strip().lower()
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


@dataclass(frozen=True)
class HostPattern:
    """One ``allowed_hosts`` entry: ``name`` (any port), ``name:port``, ``name:*``,
    ``*.example.com`` (any subdomain) or ``*`` (anything).

    >>> HostPattern.parse("*.example.com").matches("api.example.com", "443")
    True
    """

    name: str
    port: str | None  # None: any port, or none

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        if text.strip() == "*":
            return cls("*", None)
        name, port = split_host(text)
        if not name or (port is not None and port != "*" and not port.isdigit()):
            raise ConfigError(
                f"allowed_hosts entry {text!r} is not 'name', 'name:port', 'name:*', "
                "'*.domain' or '*'",
                field="allowed_hosts",
            )
        return cls(name, None if port == "*" else port)

    def matches(self, name: str, port: str | None) -> bool:
        if self.name == "*":
            return True
        if self.name.startswith("*."):
            ok = name.endswith(self.name[1:])
        else:
            ok = name == self.name
        return ok and (self.port is None or self.port == port)


@dataclass(frozen=True)
class OriginPattern:
    """One ``allowed_origins`` / ``cors_origins`` entry: ``scheme://host[:port]``,
    ``scheme://host:*`` (any port) or ``*``.

    >>> OriginPattern.parse("https://app.example.com", "cors_origins").matches("https", "app.example.com", None)
    True
    """

    scheme: str
    host: HostPattern

    @classmethod
    def parse(cls, text: str, field: str) -> OriginPattern:
        if text.strip() == "*":
            return cls("*", HostPattern("*", None))
        scheme, sep, rest = text.strip().lower().partition("://")
        if not sep or not scheme or not rest or "/" in rest:
            raise ConfigError(
                f"{field} entry {text!r} is not an origin such as 'https://app.example.com', "
                "'http://localhost:*' or '*' (no path)",
                field=field,
            )
        host = HostPattern.parse(rest)
        if host.port is None and not rest.endswith(":*"):  # 'https://x' means x's default port
            host = HostPattern(host.name, _DEFAULT_PORTS.get(scheme))
        return cls(scheme, host)

    def matches(self, scheme: str, name: str, port: str | None) -> bool:
        if self.scheme == "*":
            return True
        return scheme == self.scheme and self.host.matches(name, port or _DEFAULT_PORTS.get(scheme))


def _text_list(value: Any, field: str) -> list[str] | None:
    """None, or a list of non-empty strings (a comma-separated string is split)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(
        isinstance(v, str) and v.strip() for v in value
    ):
        raise ConfigError(
            f"{field} must be a list of non-empty strings (or None), got {value!r}", field=field
        )
    return [v.strip() for v in value]


def _positive(value: Any, field: str, *, integer: bool = False, minimum: float = 0) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not minimum < value < float("inf"):
        what = "an integer" if integer else "a number of seconds"
        raise ConfigError(f"{field} must be {what} above {minimum:g}, got {value!r}", field=field)
    return value


@dataclass(frozen=True)
class HTTPPolicy:
    """What the HTTP front of one platform (API and MCP) accepts, checked once at start.

    Built from the platform's options by :meth:`of`, which raises
    :class:`~nexus_lab.errors.ConfigError` naming a bad one. ``hosts`` is None
    when the ``Host`` header is not checked (a non-loopback bind without
    ``allowed_hosts``); an ``Origin`` header, when present, must be the
    request's own origin or match ``origins``.

    Example::

        policy = HTTPPolicy.of(Nexus(allowed_hosts=["api.example.com"]))
        policy.host_allowed("api.example.com:443")    # True
        policy.host_allowed("evil.example")           # False
    """

    max_json_depth: int = 64
    hosts: tuple[HostPattern, ...] | None = None
    origins: tuple[OriginPattern, ...] = ()
    cors_origins: tuple[str, ...] = ()
    forwarded_allow_ips: tuple[str, ...] | None = None
    max_connections: int = 1000
    max_header_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0

    @classmethod
    def of(cls, app: Any) -> HTTPPolicy:
        """The checked policy of ``app`` (a :class:`~nexus_lab.Nexus`; its ``host`` as it is now)."""
        depth = _positive(getattr(app, "max_json_depth", 64), "max_json_depth", integer=True)
        if depth > MAX_JSON_DEPTH_LIMIT:
            raise ConfigError(
                f"max_json_depth must be at most {MAX_JSON_DEPTH_LIMIT}, got {depth}",
                field="max_json_depth",
            )
        bind = str(getattr(app, "host", "127.0.0.1"))
        loopback = is_loopback(bind)
        # the address api_url shows (0.0.0.0 is shown as 127.0.0.1): the platform's own tools use it
        own = "127.0.0.1" if bind in ("0.0.0.0", "::") else _host_name(bind)
        hosts_given = _text_list(getattr(app, "allowed_hosts", None), "allowed_hosts")
        hosts: tuple[HostPattern, ...] | None
        if hosts_given is None:
            hosts = tuple(HostPattern(n, None) for n in dict.fromkeys((own, *LOOPBACK_HOSTS))) if loopback else None
        elif "*" in hosts_given:
            hosts = None
        else:
            hosts = tuple(HostPattern.parse(h) for h in (*hosts_given, own))
        origins_given = _text_list(getattr(app, "allowed_origins", None), "allowed_origins")
        cors = _text_list(getattr(app, "cors_origins", None), "cors_origins") or []
        origins = [OriginPattern.parse(o, "cors_origins") for o in cors]
        if origins_given is not None:
            origins += [OriginPattern.parse(o, "allowed_origins") for o in origins_given]
        elif loopback:
            origins += [
                OriginPattern(s, HostPattern(n, None))
                for n in dict.fromkeys((own, *LOOPBACK_HOSTS))
                for s in ("http", "https")
            ]
        forwarded = _text_list(getattr(app, "forwarded_allow_ips", None), "forwarded_allow_ips")
        for entry in forwarded or ():
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(
                    f"forwarded_allow_ips entry {entry!r} is not an IP address, a network "
                    "(10.0.0.0/8) or '*'",
                    field="forwarded_allow_ips",
                ) from None
        return cls(
            max_json_depth=depth,
            hosts=hosts,
            origins=tuple(origins),
            cors_origins=tuple(cors),
            forwarded_allow_ips=tuple(forwarded) if forwarded else None,
            max_connections=_positive(
                getattr(app, "max_connections", 1000), "max_connections", integer=True
            ),
            max_header_bytes=_positive(
                getattr(app, "max_header_bytes", 16 * 1024), "max_header_bytes", integer=True,
                minimum=255,
            ),
            header_timeout=_positive(getattr(app, "header_timeout", 10.0), "header_timeout"),
            body_timeout=_positive(getattr(app, "body_timeout", 30.0), "body_timeout"),
            keep_alive_timeout=_positive(
                getattr(app, "keep_alive_timeout", 5.0), "keep_alive_timeout"
            ),
        )

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request with this ``Host`` header is answered (always, without a check)."""
        if self.hosts is None:
            return True
        if not host:
            return False
        name, port = split_host(host)
        if port is not None and not port.isdigit():
            return False
        return any(p.matches(name, port) for p in self.hosts)

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Whether a request carrying ``Origin: origin`` (to ``Host: host``) is answered.

        The request's own origin (same host and port) always is; ``null``
        (sandboxed frames, files) only through a ``*`` entry.
        """
        scheme, sep, rest = origin.strip().lower().partition("://")
        if not sep or not rest or "/" in rest:
            return any(p.scheme == "*" for p in self.origins)
        name, port = split_host(rest)
        port = port or _DEFAULT_PORTS.get(scheme)
        if host:
            host_name, host_port = split_host(host)
            if host_name == name and (host_port or _DEFAULT_PORTS.get(scheme)) == port:
                return True
        return any(p.matches(scheme, name, port) for p in self.origins)
