"""Redis session store: sessions on a Redis server, shared by processes and hosts.

For several servers (or uvicorn workers on several hosts) sharing one set of
sessions. Needs redis-py (``pip install 'nexus-lab[redis]'``) and a Redis
server (5.0 or newer; tested with 7.0).

Keys, under a prefix (default ``nexus:``) so several apps can share one server:

==============================  ===============================================================
``{prefix}s:{session_id}``      hash: the record (user, times, ttl, metadata, channels,
                                writers, state) and ``v``, the token of the last write
``{prefix}e:{session_id}``      list: the last ``max_events`` events (``RPUSH``; ``LTRIM``
                                once it holds 16 more, so one update in 16 trims)
``{prefix}u:{user_id}``         sorted set: the user's session ids by ``created_at``
``{prefix}x``                   sorted set: every session id by ``expires_at``, as a lower
                                bound at most a minute old (the hash's ``xi``: an update
                                moves the entry only when it lags by more; most skip that
                                ``ZADD``). ``delete_expired`` reads the range up to now and
                                repairs an entry it finds early; ``list(None)`` reads from a
                                minute back; ``count()`` is its ``ZCARD``, O(1)
``{prefix}n``                   hash: the counters (``get_session_metrics``)
``{prefix}t:{token}``           a one-minute marker that makes a retried delete/incr count once
==============================  ===============================================================

How it keeps the :class:`~nexus_lab.sessions.stores.SessionStore` contract:

* **Atomic read-modify-write.** ``update`` runs ``mutate`` here on the
  record and writes the record, its event, the expiry index and the counters
  in ONE Lua script, which Redis runs atomically. The script first checks that
  ``v`` is still the token of the record ``mutate`` saw (optimistic
  concurrency): if another writer came in between, nothing is written, the
  script returns the current record, and ``update`` calls ``mutate`` again
  on it (the interface allows it). Writers of one process take turns per
  session (striped locks) before they reach Redis, so only writers in other
  processes ever cause a retry.
* **One round trip per update, usually.** The record ``mutate`` first sees is
  the one this store last read or wrote for that session (the platform reads
  a session right before updating it), so the common update is one script
  call; without such a record it is read first (``HGETALL``). The version
  check makes a stale guess harmless; an error ``mutate`` raises on a guess
  (a size limit, another user) counts only once confirmed on a fresh read.
* **Exactly once across connection retries.** Every write carries a fresh
  random token. redis-py retries a command once when a connection breaks
  (e.g. after a server restart); if the first attempt had in fact been
  applied and only its reply was lost, the script sees its own token and
  reports success without applying it twice.
* **Expiry.** ``expires_at`` (the caller's clock) decides what is visible,
  exactly as in the other stores. The session's keys also carry a Redis TTL
  of ``expires_at - now + expiry_grace`` seconds, renewed by a write once
  ``expires_at`` has slid, since the last renewal, by more than the least of
  half the grace, a minute and a quarter of the TTL, so they always outlive
  ``expires_at`` by at least half the grace, and
  Redis reclaims an abandoned session by itself even if no cleanup ever
  runs. It is set relative to ``now`` (``PEXPIRE``, not ``PEXPIREAT``) so
  that the Redis host's clock, or a test's fake clock, cannot make a live
  session vanish early. The grace lets ``delete_expired`` still find and
  count most expired sessions; an index entry whose session Redis already
  reclaimed is dropped (and counted) by ``delete_expired`` or, for a user's
  set, the next time that user's sessions are listed.
* **No keyspace scans.** Listing a user's sessions reads that user's sorted
  set; ``delete_expired`` reads a range of ``{prefix}x`` (in chunks, so no
  single script holds the server for long). Nothing runs ``KEYS`` or ``SCAN``.
* **Failures.** When Redis is unreachable, stops mid-call or does not answer
  within ``socket_timeout``, every call raises
  :class:`~nexus_lab.errors.ServiceUnavailable` (HTTP 503) naming the URL
  (never its password) and what failed; a write is one script, so it was
  applied whole or not at all (after a timeout, the caller cannot know
  which). Nothing needs restarting: the connection pool reconnects on the
  next call. :meth:`RedisSessionStore.ping` tells whether Redis answers now.

What a crash loses depends on the server's persistence settings (the store
cannot choose them; ``redis-cli CONFIG GET appendonly`` shows them):

=============================================  =================================================
``--save "" --appendonly no``                   everything, on any restart: a cache, not a store
``save 3600 1 300 100 60 10000`` (the default)  every write since the last RDB snapshot (minutes)
``--appendonly yes --appendfsync everysec``     a Redis crash (even ``kill -9``): nothing
                                                acknowledged (the AOF ``write`` comes before the
                                                reply, unless a slow disk makes Redis postpone it
                                                by up to 2 s); an OS crash or power cut: about
                                                the last second of writes
``--appendonly yes --appendfsync always``       nothing acknowledged, even on power loss, at one
                                                fsync per write
=============================================  =================================================

Use ``maxmemory-policy noeviction`` (the default): an evicting policy would
drop live sessions when memory runs short. Redis Cluster is not supported
(the scripts touch keys of several hash slots).

Two ways in, one behaviour. The sync methods (redis-py, a connection pool)
block: ``blocking`` is ``True``, so an asyncio server never calls them on its
loop. The awaitable twins the platform calls per request (``aget``,
``aupdate``, ``acreate``, ``adelete``; ``async_native`` is ``True``) run on the
loop without blocking it, through a small asyncio Redis client of their own
(:class:`~nexus_lab.sessions.stores._redis_async.AsyncRedis`: the client, its
figures and why it is not ``redis.asyncio`` are in ``_redis_async.py``):

* **Auto-pipelined.** Each event loop (per process) has ONE connection (an
  asyncio protocol with the hiredis parser). A call packs its command, queues
  it and awaits a future; everything the loop's callers queue in one
  iteration leaves in one write at its end, and each chunk read resolves
  every reply it holds, in order. Per command that is a few microseconds of
  Python, no thread hop and no lock (measured: ~4 us, where ``redis.asyncio``
  took ~75 us and a batching I/O thread ~19 us). The rate limiter's
  ``acheck`` uses the same client class. (Sharing one connection
  between the store and the limiter was tried: no measurable gain.)
* **Little held while waiting.** A command is packed before its caller waits,
  and the update drops its working copies first: with 32 requests waiting on
  Redis at once, what each keeps alive is what makes the garbage collector run.
  The guess keeps the record parsed (the one ``mutate`` changed, once its write
  is acknowledged; only copies of it are ever handed out), so a read of the
  version this store last wrote, and the update after it, copy it instead of
  parsing the hash again.
* **The same algorithm.** ``update`` and ``aupdate`` drive one generator
  (``_update_steps``: guess, mutate, version-checked commit, retry) that yields
  the Redis calls it needs; the scripts, keys, arguments, tokens and TTLs are
  built by the same helpers. Writers of one session on one loop take turns
  (a queue per session, made once a second writer waits), as threads do on
  the stripe locks.
* **Failures.** A command waits at most ``socket_timeout`` for the next reply
  (one watchdog timer per connection, not one per command), then every command
  in flight fails with ``ServiceUnavailable`` ("may or may not have been
  applied" for writes). A connection that breaks with commands in flight is
  replaced and each command sent once more (the tokens make a repeated write
  count once), as redis-py's one retry does; a refused connect fails at once.
  The next call connects again, so the store recovers by itself. A script the
  server lost (a restart, ``SCRIPT FLUSH``) is loaded again (``SCRIPT LOAD``,
  pipelined just before the same ``EVALSHA``).
* **Processes and loops.** Connections are made on first use in each process
  (a forked child leaves its parent's alone), so ``nexus serve --workers N``
  needs nothing more; a loop's connection closes when the loop shuts down
  (``asyncio.run``, ``uvloop.run``).

Example::

    from nexus_lab.sessions import NexusSessionManager

    manager = NexusSessionManager(store="redis://localhost:6379/0")
    manager = NexusSessionManager(store="redis://:secret@redis.internal:6379/2?prefix=app1:")
    manager = NexusSessionManager(store="unix:///run/redis/redis.sock?db=1")
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Generator, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ...errors import ConfigError, ServiceUnavailable, SessionNotFound
from ..models import EventFields, SessionEvent, SessionRecord, decode_json, encode_json
from . import COUNTER_CREATED, COUNTER_DELETED, COUNTER_EXPIRED, SessionStore
from ._redis_async import AVAILABLE as _ASYNC_CLIENT_AVAILABLE
from ._redis_async import Endpoint, LoopClients, LuaScript, reply_hash

__all__ = ["RedisSessionStore"]

T = TypeVar("T")

_CLOSED = "RedisSessionStore is closed"
_NESTED = (
    "a RedisSessionStore write was called from inside a mutate function; mutate must only "
    "change the record it is given (nothing was written)"
)
_STRIPES = 256  # per-process locks that make writers of one session take turns (power of 2)
_MAX_ATTEMPTS = 1000  # optimistic attempts of one update before a 503: with 16 processes on one
# session a writer loses a round with p=15/16, so 100 would starve one in 600; 1000, never
_MARKER_MS = 60_000  # how long a delete/incr token is remembered (covers any client retry)
_EXPIRE_CHUNK = 500  # sessions removed per delete_expired script: keeps each script short
_GUESSES = 1024  # records remembered per store as update's first guess (see update)
_GUESS_MAX_STATE = 16_384  # ... only when their state is at most this long (bounded memory)
# An update moves a session's entry in the expiry index ({prefix}x), and renews its keys'
# Redis TTLs, only once expires_at has slid by more than this many seconds since they last
# moved (or a quarter of the session's TTL, or half of expiry_grace, if less; the hash's
# 'xi' is where they last moved). The entry stays a lower bound of expires_at, at most this
# old: delete_expired repairs an entry it finds early, and list(None) reads this far back.
# The keys still outlive expires_at by half the grace. Most updates then run 4 commands
# instead of 10; the ZADD alone was 17 us of the script's ~45 on a small (listpack) index.
_INDEX_LAG = 60
_TRIM_SLACK = 16  # an event list is trimmed back to max_events once it holds this many more

# Record fields in the hash. Numbers are stored as Python reprs: Lua's tonumber reads them
# back exactly (a float repr round-trips through strtod), and ints stay ints.
_FIELDS = ("u", "c", "a", "e", "t", "m", "ch", "w", "s", "v")

# KEYS: hash, events, expiry zset, counters, user zset
# ARGV: prefix, sid, now, ttl_ms, token, u, c, a, e, t, m, ch, w, s, event, max_events,
#       then counter name/increment pairs
_CREATE = f"""
local cur = redis.call('HMGET', KEYS[1], 'v', 'e', 'u')
if cur[1] then
  if cur[1] == ARGV[5] then return 1 end  -- our own create, retried after a lost reply
  if tonumber(cur[2]) > tonumber(ARGV[3]) then return 0 end  -- a live session has the id
  redis.call('ZREM', ARGV[1] .. 'u:' .. cur[3], ARGV[2])
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HINCRBY', KEYS[4], '{COUNTER_EXPIRED}', 1)
elseif redis.call('ZSCORE', KEYS[3], ARGV[2]) then
  -- expired and already reclaimed by its Redis TTL: replaced, counted as the others do
  redis.call('DEL', KEYS[2])
  redis.call('HINCRBY', KEYS[4], '{COUNTER_EXPIRED}', 1)
end
local ms = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'u', ARGV[6], 'c', ARGV[7], 'a', ARGV[8], 'e', ARGV[9],
  't', ARGV[10], 'm', ARGV[11], 'ch', ARGV[12], 'w', ARGV[13], 's', ARGV[14], 'v', ARGV[5],
  'xi', ARGV[9])
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('ZADD', KEYS[3], ARGV[9], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[2])
if redis.call('PTTL', KEYS[5]) < ms then redis.call('PEXPIRE', KEYS[5], ms) end
local n = tonumber(ARGV[16])
if ARGV[15] ~= '' and n > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[15])
  redis.call('LTRIM', KEYS[2], -n, -1)
  redis.call('PEXPIRE', KEYS[2], ms)
end
redis.call('HINCRBY', KEYS[4], '{COUNTER_CREATED}', 1)
for i = 17, #ARGV, 2 do redis.call('HINCRBY', KEYS[4], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: hash, events, expiry zset, counters, user zset
# ARGV: token read, new token, sid, ttl_ms, a, e, t, m, ch, w, s, event, max_events, lag,
#       then counter name/increment pairs
_COMMIT = f"""
local cur = redis.call('HMGET', KEYS[1], 'v', 'xi')
if cur[1] ~= ARGV[1] then
  if cur[1] == ARGV[2] then return 1 end  -- our own write, retried after a lost reply
  -- changed (or deleted: empty) since the caller's copy: hand it the current record, so
  -- its next attempt needs no separate read
  return redis.call('HGETALL', KEYS[1])
end
local ms = tonumber(ARGV[4])
-- The expiry index entry and the keys' Redis TTLs move only once expires_at has slid by
-- more than ARGV[14] seconds since they last did (the hash's xi): see _INDEX_LAG.
local xi = cur[2]
local lag = tonumber(ARGV[6]) - (tonumber(xi) or -1)
local move = lag < 0 or lag > tonumber(ARGV[14])
if move then
  xi = ARGV[6]
  redis.call('ZADD', KEYS[3], xi, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ms)
  redis.call('PEXPIRE', KEYS[2], ms)
  if redis.call('PTTL', KEYS[5]) < ms then redis.call('PEXPIRE', KEYS[5], ms) end
end
redis.call('HSET', KEYS[1], 'a', ARGV[5], 'e', ARGV[6], 't', ARGV[7], 'm', ARGV[8],
  'ch', ARGV[9], 'w', ARGV[10], 's', ARGV[11], 'v', ARGV[2], 'xi', xi)
local n = tonumber(ARGV[13])
if ARGV[12] ~= '' and n > 0 then
  -- trimmed once it holds _TRIM_SLACK more than it keeps: events() reads the last n
  local len = redis.call('RPUSH', KEYS[2], ARGV[12])
  if len > n + {_TRIM_SLACK} then
    redis.call('LTRIM', KEYS[2], -n, -1)
  elseif len == 1 and not move then
    redis.call('PEXPIRE', KEYS[2], ms)  -- a list made just now: never without a TTL
  end
end
for i = 15, #ARGV, 2 do redis.call('HINCRBY', KEYS[4], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: hash, events, expiry zset, counters, marker; ARGV: prefix, sid, now
_DELETE = f"""
if redis.call('EXISTS', KEYS[5]) == 1 then return 1 end  -- retried after a lost reply
local f = redis.call('HMGET', KEYS[1], 'e', 'u')
if not f[1] or tonumber(f[1]) <= tonumber(ARGV[3]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', ARGV[1] .. 'u:' .. f[2], ARGV[2])
redis.call('HINCRBY', KEYS[4], '{COUNTER_DELETED}', 1)
redis.call('SET', KEYS[5], '1', 'PX', {_MARKER_MS})
return 1
"""

# KEYS: expiry zset, counters; ARGV: prefix, now, chunk -> {removed, ids looked at}
_EXPIRE = f"""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, sid in ipairs(ids) do
  local key = ARGV[1] .. 's:' .. sid
  local f = redis.call('HMGET', key, 'u', 'e')
  if f[2] and tonumber(f[2]) > tonumber(ARGV[2]) then
    -- the index lagged the record: repair it (xi stays: it marks the TTLs' last renewal)
    redis.call('ZADD', KEYS[1], f[2], sid)
  else
    if f[1] then redis.call('ZREM', ARGV[1] .. 'u:' .. f[1], sid) end
    redis.call('DEL', key, ARGV[1] .. 'e:' .. sid)
    redis.call('ZREM', KEYS[1], sid)
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[2], '{COUNTER_EXPIRED}', n) end
return {{n, #ids}}
"""

# KEYS: counters, marker; ARGV: name, n
_INCR = f"""
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', {_MARKER_MS}) then
  redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""

# KEYS: user zset; ARGV: prefix, user, sid... -> drops ids whose record is gone or now
# belongs to another user (checked here, atomically: a session re-created meanwhile stays)
_PRUNE = """
local n = 0
for i = 3, #ARGV do
  local u = redis.call('HGET', ARGV[1] .. 's:' .. ARGV[i], 'u')
  if u ~= ARGV[2] then
    redis.call('ZREM', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""


#: a Redis call ``_update_steps`` asks for: a key to ``HGETALL``, or a commit's keys and args
_Step = str | tuple[list[str], list[Any]]


def _end_turn(turns: dict[str, deque[asyncio.Future[None]] | None], key: str) -> None:
    """Hand ``key``'s turn to its next waiter still waiting, or free it."""
    waiters = turns[key]
    while waiters:
        turn = waiters.popleft()
        if not turn.done():
            turn.set_result(None)
            return
    del turns[key]


def _num(text: str) -> float:
    """A number stored by :func:`_text`: ints come back as ints, floats exactly."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _text(value: float) -> str:
    # repr is the shortest text that reads back as the same float, so Lua's tonumber and
    # Redis' sorted-set scores (both strtod) see exactly the value the caller's clock gave
    return repr(value)


def _record(session_id: str, h: Mapping[str, str]) -> SessionRecord:
    t = h["t"]
    return SessionRecord(
        session_id,
        h["u"],
        _num(h["c"]),
        _num(h["a"]),
        _num(h["e"]),
        _num(t) if t else None,
        h["m"],
        decode_json(h["ch"]),
        {k: (v[0], v[1]) for k, v in decode_json(h["w"]).items()},  # JSON has no tuples
        h["s"],
    )


def _event_text(event: EventFields | None) -> str:
    if event is None:
        return ""
    ts, channel, action, keys = event
    return encode_json([ts, channel, action, list(keys)])


def _event(text: str) -> SessionEvent:
    ts, channel, action, keys = decode_json(text)
    return SessionEvent(ts, channel, action, tuple(keys))


def _token() -> str:
    return os.urandom(9).hex()  # 72 random bits: unique per write, so no ABA on ``v``


def redact_url(url: str) -> str:
    """``url`` without its password (user info and ``password=`` query values become ``***``).

    Example::

        redact_url("redis://:s3cret@cache:6379/0")   # 'redis://***@cache:6379/0'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable Redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "?" + urlencode(
            [(k, "***" if k.lower() in ("password", "username") else v) for k, v in pairs],
            safe="*:/",
        )
    # not urlunsplit: it writes 'unix:/path' for an empty host, which redis-py refuses
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


# the scripts the awaitable twins send (the sync methods use redis-py's Script objects)
_CREATE_LUA = LuaScript.of(_CREATE)
_COMMIT_LUA = LuaScript.of(_COMMIT)
_DELETE_LUA = LuaScript.of(_DELETE)

_STORES: weakref.WeakSet[RedisSessionStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # a lock held by a parent thread at fork time would stay held forever in the child (the
    # loops' clients are _redis_async's: it forgets the parent's connections by itself)
    for store in list(_STORES):
        store._stripes = [threading.Lock() for _ in range(_STRIPES)]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RedisSessionStore(SessionStore):
    """Sessions on a Redis server (see the module docs for the key layout and guarantees).

    Parameters:
        url: ``redis://[[user]:password@]host:port/db``, ``rediss://...`` (TLS) or
            ``unix:///path/to/redis.sock?db=N``. A ``prefix=`` query value sets
            ``key_prefix``; redis-py's own query options (``socket_timeout=``...)
            override the arguments below.
        max_events: events kept per session.
        key_prefix: prepended to every key, so several apps can share a server.
        socket_timeout, socket_connect_timeout: seconds before a call to a dead or
            hung server fails with ``ServiceUnavailable`` (each is tried at most twice).
        health_check_interval: seconds a pooled connection may sit idle before it is
            checked with a ``PING`` on its next use (a restarted server is noticed
            before the command goes out).
        expiry_grace: seconds Redis keeps a session's keys past its ``expires_at``
            before reclaiming them itself.

    Example::

        store = RedisSessionStore("redis://localhost:6379/0", key_prefix="chat:")
        with NexusSessionManager(store=store) as manager:
            sid = manager.create_session("u1").session_id
        store.ping()   # True while Redis answers
        store.close()
    """

    name = "redis"
    blocking = True  # every sync call is a network round trip: keep it off event loops
    #: the twins below await Redis on the loop (auto-pipelined), never blocking it
    async_native = _ASYNC_CLIENT_AVAILABLE  # hiredis with its C pack_command

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        max_events: int = 100,
        key_prefix: str = "nexus:",
        socket_timeout: float = 1.0,
        socket_connect_timeout: float = 1.0,
        health_check_interval: float = 15.0,
        expiry_grace: float = 60.0,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a string, not {type(url).__name__}")
        url = url.strip()
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"Bad Redis URL {redact_url(url)!r}: use 'redis://host:port/db', "
                "'rediss://host:port/db' (TLS) or 'unix:///path/to/redis.sock?db=N'",
                field="store",
            )
        base, _, qs = url.partition("?")
        query = parse_qsl(qs, keep_blank_values=True)
        for key, value in query:
            if key == "prefix":
                key_prefix = value
        query = [(k, v) for k, v in query if k != "prefix"]  # ours, not a redis-py option
        client_url = base + ("?" + urlencode(query) if query else "")
        if not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix must be a string, not {type(key_prefix).__name__}")
        if expiry_grace < 0:
            raise ValueError(f"expiry_grace must be >= 0 seconds, got {expiry_grace!r}")
        self.url = redact_url(url)  # what messages and reprs show: never the password
        self.key_prefix = key_prefix
        self.max_events = max_events
        self.expiry_grace = float(expiry_grace)
        self._closed = False
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._local = threading.local()  # .mutating: this thread runs a mutate of ours
        # session id -> [its last record seen (the hash), that record parsed (or None yet)]
        self._guesses: dict[str, list[Any]] = {}
        try:
            self._client: redis.Redis = redis.Redis.from_url(
                client_url,
                decode_responses=True,  # every text we store is valid UTF-8 (the codec says so)
                protocol=2,  # RESP2: plain replies, works with any Redis-compatible server
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout,
                health_check_interval=health_check_interval,
                # One quick retry on a broken connection or a timeout (e.g. after a server
                # restart); not redis-py's default of 10, so a dead server fails fast. Retried
                # writes are applied once: see the tokens in the scripts.
                retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"Bad Redis URL {self.url!r}: {exc}", field="store") from None
        reg = self._client.register_script  # registered locally; loaded on first use
        self._create = reg(_CREATE)
        self._commit = reg(_COMMIT)
        self._delete = reg(_DELETE)
        self._expire = reg(_EXPIRE)
        self._incr = reg(_INCR)
        self._prune = reg(_PRUNE)
        p = key_prefix
        self._x = p + "x"
        self._n = p + "n"
        self._hgetall = self._client.hgetall
        # the awaitable twins' connections: one per event loop, made on first use
        self._loops = LoopClients(Endpoint(self._client.connection_pool))
        _STORES.add(self)

    @classmethod
    def from_url(cls, url: str, *, max_events: int = 100, **kwargs: Any) -> RedisSessionStore:
        """The store for ``url``, as :func:`~nexus_lab.sessions.stores.open_store` opens it.

        Example::

            store = RedisSessionStore.from_url("redis://localhost:6379/0?prefix=app1:")
        """
        return cls(url, max_events=max_events, **kwargs)

    # -- helpers
    def _unavailable(self, what: str, exc: BaseException) -> ServiceUnavailable:
        msg = f"Redis session store at {self.url}: {what} failed ({type(exc).__name__}: {exc})"
        if isinstance(exc, RedisTimeoutError) and what.startswith(("update", "create", "delete")):
            msg += "; Redis did not answer in time, so the write may or may not have been applied"
        return ServiceUnavailable(msg, retry_after=1.0)

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError(_CLOSED)

    def _check_write(self) -> None:
        if self._closed:
            raise RuntimeError(_CLOSED)
        if getattr(self._local, "mutating", False):
            # refused, as SQLite does: the same session's stripe lock is held (a deadlock)
            raise RuntimeError(_NESTED)

    def _guess(self, session_id: str, h: dict[str, str], rec: SessionRecord | None) -> None:
        """Remember ``h`` as update's first guess of the session's record (bounded), with
        ``rec``, ``h`` parsed (if done already; never handed out, only copies of it)."""
        guesses = self._guesses
        if len(h["s"]) > _GUESS_MAX_STATE:
            guesses.pop(session_id, None)
            return
        if len(guesses) >= _GUESSES:
            guesses.clear()  # cheaper than an LRU, and a miss only costs one read
        guesses[session_id] = [h, rec]

    @staticmethod
    def _parsed(session_id: str, known: list[Any]) -> SessionRecord:
        """The guess ``known`` parsed: once per version of the record, then copied."""
        rec = known[1]
        if rec is None:
            rec = known[1] = _record(session_id, known[0])
        return rec

    def _ttl_ms(self, expires_at: float, now: float) -> int:
        # relative to the caller's clock (see the module docs): remaining life plus the grace
        return max(1, int((max(0.0, expires_at - now) + self.expiry_grace) * 1000) + 1)

    def _lag(self, expires_at: float, now: float) -> str:
        # how far expires_at may slide before the index and the Redis TTLs follow: the keys
        # then still outlive expires_at by half the grace, and the index lags by <= 60 s
        return _text(min(_INDEX_LAG, max(0.0, expires_at - now) / 4, self.expiry_grace / 2))

    @staticmethod
    def _pairs(args: list[Any], incr: Mapping[str, int] | None) -> list[Any]:
        if incr:
            for name, n in incr.items():
                args.append(name)
                args.append(int(n))
        return args

    # -- the calls, without their I/O (shared by the sync methods and their awaitable twins)
    def _create_call(
        self,
        record: SessionRecord,
        now: float,
        event: EventFields | None,
        incr: Mapping[str, int] | None,
    ) -> tuple[list[str], list[Any]]:
        """``_CREATE``'s keys and args (and the session's guess forgotten)."""
        p = self.key_prefix
        sid = record.session_id
        args = self._pairs(
            [
                p,
                sid,
                _text(now),
                self._ttl_ms(record.expires_at, now),
                _token(),
                record.user_id,
                _text(record.created_at),
                _text(record.last_accessed),
                _text(record.expires_at),
                "" if record.ttl is None else _text(record.ttl),
                record.metadata_json,
                encode_json(record.channels),
                encode_json(record.writers),
                record.state_json,
                _event_text(event),
                self.max_events,
            ],
            incr,
        )
        keys = [p + "s:" + sid, p + "e:" + sid, self._x, self._n, p + "u:" + record.user_id]
        self._guesses.pop(sid, None)
        return keys, args

    def _update_steps(
        self,
        session_id: str,
        mutate: Callable[[SessionRecord], T],
        now: float,
        event: EventFields | None,
        incr: Mapping[str, int] | None,
    ) -> Generator[_Step, Any, T]:
        """``update``'s algorithm without its I/O, driven by :meth:`update` and :meth:`aupdate`.

        It yields each Redis call it needs and is sent the reply: a key (``str``) is an
        ``HGETALL`` of it, sent back as a dict; ``(keys, args)`` is a ``_COMMIT``, sent back
        as redis-py returns it. It returns what ``mutate`` returned.
        """
        p = self.key_prefix
        key = p + "s:" + session_id
        local = self._local
        guesses = self._guesses
        known = guesses.get(session_id)
        fresh = known is None or float(known[0]["e"]) <= now  # expired guess: maybe slid since
        if fresh:
            known = [(yield key), None]
        for _ in range(_MAX_ATTEMPTS):
            h = known[0]
            if not h or float(h["e"]) <= now:
                guesses.pop(session_id, None)
                raise SessionNotFound(session_id)
            base = self._parsed(session_id, known)
            rec = base.copy()
            local.mutating = True
            try:
                result = mutate(rec)  # raises before changing rec, or changes it
            except Exception:
                if fresh:
                    raise
                known, fresh = [(yield key), None], True  # confirm on the current record
                continue
            finally:
                local.mutating = False
            channels = rec.channels
            new = {
                "a": _text(rec.last_accessed),
                "e": _text(rec.expires_at),
                "t": "" if rec.ttl is None else _text(rec.ttl),
                "m": rec.metadata_json,
                # the usual update adds no channel: its text then is the one read
                "ch": h["ch"] if channels == base.channels else encode_json(channels),
                "w": encode_json(rec.writers),
                "s": rec.state_json,
                "v": _token(),
            }
            ttl_ms = self._ttl_ms(rec.expires_at, now)
            lag = self._lag(rec.expires_at, now)
            # ``rec`` is kept, parsed, for the guess of the version written: the platform's
            # next read of this session copies it instead of parsing the hash again
            base = channels = None  # not needed any more: gone before the wait
            # the lists are the driver's alone (not bound here), so they go once it has sent them
            reply = yield (
                [key, p + "e:" + session_id, self._x, self._n, p + "u:" + h["u"]],
                self._pairs(
                    [
                        h["v"],
                        new["v"],
                        session_id,
                        ttl_ms,
                        new["a"],
                        new["e"],
                        new["t"],
                        new["m"],
                        new["ch"],
                        new["w"],
                        new["s"],
                        _event_text(event),  # after mutate: apply_session_update sets keys
                        self.max_events,
                        lag,
                    ],
                    incr,
                ),
            )
            if reply == 1:
                self._guess(session_id, {"u": h["u"], "c": h["c"], **new}, rec)
                return result
            known, fresh = [reply_hash(reply), None], True  # changed: the current record came back
        raise ServiceUnavailable(
            f"Redis session store at {self.url}: session {session_id!r} changed under "
            f"{_MAX_ATTEMPTS} consecutive update attempts (other processes writing it); "
            "nothing was written",
            retry_after=1.0,
        )

    def _delete_call(self, session_id: str, now: float) -> tuple[list[str], list[Any]]:
        """``_DELETE``'s keys and args (and the session's guess forgotten)."""
        p = self.key_prefix
        keys = [p + "s:" + session_id, p + "e:" + session_id, self._x, self._n, p + "t:" + _token()]
        self._guesses.pop(session_id, None)
        return keys, [p, session_id, _text(now)]

    def _seen(self, session_id: str, h: dict[str, str], now: float) -> SessionRecord | None:
        """What ``get`` returns for the hash it read (remembered as update's first guess)."""
        if not h or float(h["e"]) <= now:
            return None
        known = self._guesses.get(session_id)
        if known is None or known[0]["v"] != h["v"]:  # not the version this store knows
            known = [h, None]
            self._guess(session_id, h, None)  # the platform updates what it just read
        return self._parsed(session_id, known).copy()

    # -- SessionStore: writes
    def create(
        self,
        record: SessionRecord,
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> bool:
        self._check_write()
        keys, args = self._create_call(record, now, event, incr)
        try:
            return self._create(keys, args) == 1
        except RedisError as exc:
            raise self._unavailable(f"create of session {record.session_id!r}", exc) from exc

    def update(
        self,
        session_id: str,
        mutate: Callable[[SessionRecord], T],
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> T:
        self._check_write()
        steps = self._update_steps(session_id, mutate, now, event, incr)
        hgetall, commit = self._hgetall, self._commit
        # Writers of one session in this process take turns here: they would only make each
        # other retry at Redis (each success invalidates every other writer's read).
        with self._stripes[hash(session_id) & (_STRIPES - 1)]:
            try:
                step = next(steps)
                while True:
                    step = steps.send(hgetall(step) if step.__class__ is str else commit(*step))
            except StopIteration as done:
                return done.value
            except RedisError as exc:
                raise self._unavailable(f"update of session {session_id!r}", exc) from exc

    def delete(self, session_id: str, now: float) -> bool:
        self._check_write()
        keys, args = self._delete_call(session_id, now)
        try:
            return self._delete(keys, args) == 1
        except RedisError as exc:
            raise self._unavailable(f"delete of session {session_id!r}", exc) from exc

    def delete_expired(self, now: float) -> int:
        self._check_write()
        total = 0
        try:
            while True:
                removed, seen = self._expire(
                    [self._x, self._n], [self.key_prefix, _text(now), _EXPIRE_CHUNK]
                )
                total += removed
                if seen < _EXPIRE_CHUNK:
                    return total
        except RedisError as exc:
            raise self._unavailable("delete_expired", exc) from exc

    def incr(self, counter: str, n: int = 1) -> None:
        self._check_write()
        try:
            self._incr([self._n, self.key_prefix + "t:" + _token()], [counter, int(n)])
        except RedisError as exc:
            raise self._unavailable(f"incr of counter {counter!r}", exc) from exc

    # -- SessionStore: reads (pure: nothing written, except pruning a user's stale ids)
    def get(self, session_id: str, now: float) -> SessionRecord | None:
        self._check()
        try:
            h = self._hgetall(self.key_prefix + "s:" + session_id)
        except RedisError as exc:
            raise self._unavailable(f"read of session {session_id!r}", exc) from exc
        return self._seen(session_id, h, now)

    def _fetch(self, ids: list[str]) -> list[dict[str, str]]:
        pipe = self._client.pipeline(transaction=False)
        p = self.key_prefix
        for sid in ids:
            pipe.hgetall(p + "s:" + sid)
        return pipe.execute()

    def list(self, user_id: str | None, now: float) -> list[SessionRecord]:
        self._check()
        out: list[SessionRecord] = []
        try:
            if user_id is None:
                # the index may lag a record by up to _INDEX_LAG seconds: look that far back
                ids = self._client.zrangebyscore(self._x, f"({_text(now - _INDEX_LAG)}", "+inf")
                for sid, h in zip(ids, self._fetch(ids), strict=True):
                    if h and float(h["e"]) > now:
                        out.append(_record(sid, h))
            else:
                ukey = self.key_prefix + "u:" + user_id
                ids = self._client.zrange(ukey, 0, -1)
                stale: list[str] = []
                for sid, h in zip(ids, self._fetch(ids), strict=True):
                    if not h or h["u"] != user_id:
                        stale.append(sid)  # reclaimed by its Redis TTL, deleted, or re-created
                    elif float(h["e"]) > now:
                        out.append(_record(sid, h))
                    # An expired record still present stays indexed: another process's clock
                    # may see it live; delete_expired removes it with its index entry.
                if stale:
                    self._prune([ukey], [self.key_prefix, user_id, *stale])
        except RedisError as exc:
            what = "list of all sessions" if user_id is None else f"list of {user_id!r}'s sessions"
            raise self._unavailable(what, exc) from exc
        out.sort(key=lambda r: (r.created_at, r.session_id))
        return out

    def events(self, session_id: str, now: float) -> list[SessionEvent]:
        self._check()
        if self.max_events <= 0:
            return []
        p = self.key_prefix
        try:
            pipe = self._client.pipeline(transaction=True)  # MULTI: liveness and rows together
            pipe.hget(p + "s:" + session_id, "e")
            pipe.lrange(p + "e:" + session_id, -self.max_events, -1)
            expires, rows = pipe.execute()
        except RedisError as exc:
            raise self._unavailable(f"events of session {session_id!r}", exc) from exc
        if expires is None or float(expires) <= now:
            return []
        return [_event(r) for r in rows]

    def counters(self) -> dict[str, int]:
        self._check()
        try:
            raw = self._client.hgetall(self._n)
        except RedisError as exc:
            raise self._unavailable("counters", exc) from exc
        return {k: int(v) for k, v in raw.items()}

    def count(self) -> int:
        self._check()
        try:
            return int(self._client.zcard(self._x))
        except RedisError as exc:
            raise self._unavailable("count", exc) from exc

    # -- the awaitable twins: the same calls, awaited on the running loop (see the module docs)
    async def aget(self, session_id: str, now: float) -> SessionRecord | None:
        self._check()
        try:
            reply = await self._loops.get().call("HGETALL", self.key_prefix + "s:" + session_id)
        except RedisError as exc:
            raise self._unavailable(f"read of session {session_id!r}", exc) from exc
        return self._seen(session_id, reply_hash(reply), now)

    async def aupdate(
        self,
        session_id: str,
        mutate: Callable[[SessionRecord], T],
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> T:
        self._check_write()
        client = self._loops.get()
        steps = self._update_steps(session_id, mutate, now, event, incr)
        # Writers of one session on this loop take turns, as threads do on the stripe locks:
        # 200 concurrent writers would otherwise each lose ~100 rounds at Redis.
        turns = client.turns
        if session_id not in turns:
            turns[session_id] = None  # free: ours now (a queue only once someone waits)
        else:
            waiters = turns[session_id]
            if waiters is None:
                waiters = turns[session_id] = deque()
            turn = client.loop.create_future()
            waiters.append(turn)
            del waiters
            try:
                await turn  # handed over by the writer before us
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():  # handed over, then cancelled
                    _end_turn(turns, session_id)
                raise
        try:
            step = next(steps)
            while True:
                if step.__class__ is str:
                    reply = reply_hash(await client.call("HGETALL", step))
                else:
                    pending = client.script(_COMMIT_LUA, *step)
                    step = None  # packed: the lists can go before we wait
                    reply = await pending
                step = steps.send(reply)
        except StopIteration as done:
            return done.value
        except RedisError as exc:
            raise self._unavailable(f"update of session {session_id!r}", exc) from exc
        finally:
            _end_turn(turns, session_id)

    async def acreate(
        self,
        record: SessionRecord,
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> bool:
        self._check_write()
        keys, args = self._create_call(record, now, event, incr)
        try:
            return await self._loops.get().script(_CREATE_LUA, keys, args) == 1
        except RedisError as exc:
            raise self._unavailable(f"create of session {record.session_id!r}", exc) from exc

    async def adelete(self, session_id: str, now: float) -> bool:
        self._check_write()
        keys, args = self._delete_call(session_id, now)
        try:
            return await self._loops.get().script(_DELETE_LUA, keys, args) == 1
        except RedisError as exc:
            raise self._unavailable(f"delete of session {session_id!r}", exc) from exc

    # -- health and lifecycle
    def ping(self) -> bool:
        """``True`` if Redis answers a ``PING`` now; never raises.

        Example::

            if not store.ping():
                print("sessions unavailable: Redis is down")
        """
        if self._closed:
            return False
        try:
            return bool(self._client.ping())
        except RedisError:
            return False

    def close(self) -> None:
        """Close the connection pool (idempotent). Later calls raise ``RuntimeError``."""
        if self._closed:
            return
        self._closed = True
        self._loops.close()
        try:
            self._client.close()
        except RedisError:  # already gone: nothing to release
            pass

    def __repr__(self) -> str:
        return (
            f"RedisSessionStore({self.url!r}, key_prefix={self.key_prefix!r}, "
            f"max_events={self.max_events})"
        )
