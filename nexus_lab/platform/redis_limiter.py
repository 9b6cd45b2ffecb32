"""A token bucket in Redis: one rate limit shared by every worker and host.

``Nexus(rate_limit=N, rate_limit_store="redis://host:6379/0")`` (and
``nexus serve --rate-limit-store``) uses :class:`RedisTokenBucketLimiter`
instead of the in-process bucket, so N requests per minute per principal hold
across all the processes and hosts that share the Redis server: N are allowed
in all, then 429 with ``Retry-After``.

* One Lua script per check: read the bucket, refill it by the time elapsed,
  take a token, write it back, set its expiry. Redis runs a script atomically,
  so two hosts can never both take the last token; the time is the Redis
  server's (``TIME``), so hosts with skewed clocks agree.
* The servers call :meth:`RedisTokenBucketLimiter.acheck` on their event loop: no
  blocking call on the loop. It sends the script through the auto-pipelined
  client the session store uses too (one connection per loop; what every
  concurrent request sends in one loop iteration leaves in one write, see
  ``nexus_lab/sessions/stores/_redis_async.py``), a few microseconds of Python
  per check. :meth:`check` is the sync twin for code that has no loop.
* Redis unreachable: the check raises
  :class:`~nexus_lab.errors.ServiceUnavailable` (HTTP 503) naming the server
  (never its password). The limit fails closed: an outage must not turn into
  unlimited traffic. The next check after Redis is back works again.

Example::

    limiter = RedisTokenBucketLimiter(100, "redis://127.0.0.1:6379/0")
    limiter.check("alice")          # RateDecision(allowed=True, limit=100, remaining=99, ...)
    await limiter.acheck("alice")   # the same, on an event loop
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError, ServiceUnavailable
from .security import RateDecision, RateLimiter, validate_rate_limit

__all__ = ["RedisTokenBucketLimiter", "redacted_url"]

#: KEYS[1] the bucket; ARGV[1] capacity (tokens), ARGV[2] refill rate (tokens per second).
#: Returns {allowed (0/1), tokens left (string), seconds until a token (string)}.
_TAKE = """
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'x')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = cap
  ts = now
end
if now > ts then
  tokens = math.min(cap, tokens + (now - ts) * rate)
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
-- The key expires once the bucket would be full again (then it is the same as no key):
-- life + a quarter + 1 s after x, renewed (x = now) only when x is over a quarter old, so
-- most checks skip the PEXPIRE and the key still outlives the last check by life + 1 s.
local life = cap / rate
local x = tonumber(b[3])
if x == nil or now < x or now - x > life / 4 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now), 'x', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil(life * 1250) + 1000)
else
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
end
return {allowed, tostring(tokens), tostring(wait)}
"""


_TAKE_SHA = hashlib.sha1(_TAKE.encode()).hexdigest()


def _retried() -> tuple[type[BaseException], ...]:
    """What :meth:`AsyncRedis.script` handles itself (reload the script, send once more)."""
    from ..sessions.stores._redis_async import ConnectionLostError, NoScriptError

    return (NoScriptError, ConnectionLostError)


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    """What means "Redis cannot be reached now" (a 503), for every check path."""
    import redis

    return (redis.ConnectionError, redis.TimeoutError, OSError)


def _chain(source: asyncio.Future[Any], result: asyncio.Future[Any]) -> None:
    """Settle ``result`` as ``source`` settled (unless ``result`` was cancelled)."""
    if result.done():
        if not source.cancelled():
            source.exception()  # retrieved: nobody waits for it any more
        return
    if source.cancelled():
        result.cancel()
    elif (exc := source.exception()) is not None:
        result.set_exception(exc)
    else:
        result.set_result(source.result())


def redacted_url(url: str) -> str:
    """``url`` without its password, for messages and logs.

    >>> redacted_url("redis://:s3cret@db:6379/0")
    'redis://:***@db:6379/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, ""))


class RedisTokenBucketLimiter(RateLimiter):
    """``rate_per_minute`` requests per minute per principal, shared through Redis.

    Buckets hold at most ``rate_per_minute`` tokens (the burst) and refill
    continuously; keys are ``<prefix>ratelimit:<principal>`` and expire within a
    quarter of a refill after the bucket would be full again (an expired key and a
    full bucket are the same), so idle principals cost no memory.
    """

    def __init__(
        self,
        rate_per_minute: int,
        url: str,
        *,
        prefix: str = "nexus:",
        timeout: float = 2.0,
    ) -> None:
        self.limit = validate_rate_limit(rate_per_minute) or 0
        if not self.limit:
            raise ConfigError("rate_per_minute must be a positive integer", field="rate_limit")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"rate_limit_store must be a redis:// URL, got {url!r}", field="rate_limit_store"
            )
        try:
            import redis  # noqa: F401
        except ModuleNotFoundError:
            raise ConfigError(
                "the Redis rate limiter needs the redis package: pip install 'nexus-lab[redis]'",
                field="rate_limit_store",
            ) from None
        self.url = url
        self.shown_url = redacted_url(url)
        self.prefix = prefix
        self.timeout = float(timeout)
        self._rate = self.limit / 60.0
        self._sync: Any = None
        self._loops: Any = None  # the per-loop clients of acheck, made on its first call
        self._ascript: Any = None  # _TAKE for them (a LuaScript)
        self._lock = threading.Lock()

    # -- clients -------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        return {
            "socket_connect_timeout": self.timeout,
            "socket_timeout": self.timeout,
            "health_check_interval": 10,
            "retry_on_timeout": False,
        }

    def _script(self) -> Any:
        if self._sync is None:
            import redis

            with self._lock:
                if self._sync is None:
                    client = redis.Redis.from_url(self.url, **self._options())
                    self._sync = client.register_script(_TAKE)
        return self._sync

    def _aclient(self) -> Any:
        """The running loop's pipelined client (one per loop and process)."""
        loops = self._loops
        if loops is None:
            loops = self._make_loops()
        return loops.get()

    def _make_loops(self) -> Any:
        import redis

        from ..sessions.stores._redis_async import Endpoint, LoopClients, LuaScript

        with self._lock:
            if self._loops is None:
                self._ascript = LuaScript(_TAKE, _TAKE_SHA)
                # the pool only reads the URL and options here; it never connects
                pool = redis.ConnectionPool.from_url(self.url, **self._options())
                self._loops = LoopClients(Endpoint(pool))
        return self._loops

    # -- checks --------------------------------------------------------------------
    def _args(self, principal: str) -> tuple[list[str], list[Any]]:
        return [f"{self.prefix}ratelimit:{principal}"], [self.limit, repr(self._rate)]

    def _decision(self, reply: Any) -> RateDecision:
        allowed, tokens, wait = int(reply[0]), float(reply[1]), float(reply[2])
        return RateDecision(bool(allowed), self.limit, int(tokens), wait)

    def _unavailable(self, exc: BaseException) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"the shared rate limiter's Redis at {self.shown_url} is unavailable "
            f"({type(exc).__name__}); retry shortly",
            retry_after=1,
        )

    def check(self, principal: str) -> RateDecision:
        """Take one token for ``principal`` (sync; blocks on Redis for one round trip)."""
        keys, args = self._args(principal)
        try:
            return self._decision(self._script()(keys=keys, args=args))
        except _unavailable_errors() as exc:  # evaluated only when something was raised
            raise self._unavailable(exc) from None

    async def acheck(self, principal: str) -> RateDecision:
        """Take one token for ``principal`` on the running event loop (what the servers call)."""
        try:
            return self._decision(await self._aclient().script(self._ascript, *self._args(principal)))
        except _unavailable_errors() as exc:
            raise self._unavailable(exc) from None

    def astart(self, principal: str) -> asyncio.Future[RateDecision]:
        """:meth:`acheck`, started: the script is queued now (it leaves with whatever else
        this loop iteration sends to Redis, e.g. the request's session read) and the returned
        future resolves to the decision (or fails as :meth:`acheck` raises). Call it on the
        loop; await the future, any number of times.

        No task per check: the reply's future is chained to the result (a task and its
        coroutines cost more than the rest of the check). When the connection is not open,
        or the reply asks for what :meth:`acheck` handles (the script lost by a Redis restart,
        a connection lost in flight), it is :meth:`acheck` in a task.
        """
        client = self._aclient()
        raw = client.script_now(self._ascript, *self._args(principal))
        if raw is None:
            return asyncio.ensure_future(self.acheck(principal))
        result: asyncio.Future[RateDecision] = client.loop.create_future()

        def decide(raw: asyncio.Future[Any]) -> None:
            if result.done():  # its awaiter was cancelled: the reply is dropped
                return
            if raw.cancelled():  # (the client never cancels one; a loop torn down might)
                result.cancel()
                return
            exc = raw.exception()
            if exc is None:
                try:
                    result.set_result(self._decision(raw.result()))
                except Exception as bad:  # a reply that is not the script's
                    result.set_exception(bad)
            elif isinstance(exc, _retried()):
                again = asyncio.ensure_future(self.acheck(principal))
                again.add_done_callback(lambda t: _chain(t, result))
            elif isinstance(exc, _unavailable_errors()):
                result.set_exception(self._unavailable(exc))
            else:
                result.set_exception(exc)

        raw.add_done_callback(decide)
        return result

    def ping(self) -> bool:
        """True when Redis answers (for ``health_check``)."""
        try:
            return bool(self._script().registered_client.ping())
        except Exception:
            return False

    def close(self) -> None:
        """Drop the connections (the sync pool and every loop's)."""
        script, self._sync = self._sync, None
        if script is not None:
            script.registered_client.close()
        loops, self._loops = self._loops, None
        if loops is not None:
            loops.close()

    def __repr__(self) -> str:
        return f"RedisTokenBucketLimiter({self.limit}/min, {self.shown_url!r})"
