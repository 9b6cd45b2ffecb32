"""A small asyncio Redis client: one auto-pipelined connection per event loop.

What the Redis session store's awaitable twins (``aget``, ``aupdate``, ...;
see :mod:`nexus_lab.sessions.stores.redis`) and the rate limiter's ``acheck``
(:mod:`nexus_lab.platform.redis_limiter`) send their commands through. Private:
it does only what those two callers need (commands, Lua scripts, ``AUTH`` and
``SELECT``), not pub/sub, transactions, RESP3 or Cluster.

Why not ``redis.asyncio``: its connection pool and locks cost ~75 us of CPU per
command; this client costs ~4 us (measured: 32 tasks on uvloop, 3 commands
each, CPU per command; the same client writing each command at once ~8 us, a
batching I/O thread with redis-py pipelines ~19 us, from its GIL hand-offs).

* **Auto-pipelined.** :class:`AsyncRedis` packs a command (hiredis'
  ``pack_command``, in C), appends it to its connection's output and returns a
  future. Everything the loop's callers queue in one loop iteration leaves in
  ONE write at its end; each chunk read is parsed by hiredis and resolves
  every reply it holds, in order (Redis answers FIFO). No thread hop, no lock.
* **Timeouts.** The oldest unanswered command waits at most ``socket_timeout``
  for the next reply to arrive: one watchdog timer per connection, not one per
  command. Then every command in flight fails with ``redis.TimeoutError`` and
  the connection is dropped (a timeout is never repeated: Redis hung).
* **Reconnect and resend.** Connected on first use and again after a failure
  (one connect at a time, shared by its waiters). A command whose connection
  broke under it (:class:`ConnectionLostError`, e.g. a server restart) is sent
  once more on a new connection, as redis-py's one ``Retry`` does; it may have
  run already, so callers make their writes idempotent (the session store's
  scripts carry a token each and apply it once). A script Redis has lost
  (``NOSCRIPT``) is loaded and the same ``EVALSHA`` sent again, pipelined.
* **Loops, processes and forks.** :class:`LoopClients` holds one client per
  event loop for one endpoint. A client closes its connection when its loop
  shuts down (``asyncio.run``, ``uvloop.run``). A forked child starts with no
  clients and connects anew: its parent's sockets and loops are not its own
  (the parent's clients stay referenced, never closed, in the child).

Needs hiredis 2.1 or newer (the ``redis`` extra installs it); :data:`AVAILABLE`
tells whether it is there.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import Any, NamedTuple

import redis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:  # the redis extra installs it; pack_command (C) since hiredis 2.1
    import hiredis
    from hiredis import pack_command
except ImportError:  # pragma: no cover - then the platform calls the sync methods in threads
    hiredis = None

__all__ = [
    "AVAILABLE",
    "AsyncRedis",
    "ConnectionLostError",
    "Endpoint",
    "LoopClients",
    "LuaScript",
    "reply_hash",
]

#: whether this client can run here (hiredis with its C ``pack_command``)
AVAILABLE = hiredis is not None and hasattr(hiredis, "pack_command")


class ConnectionLostError(RedisConnectionError):
    """The connection broke with the command in flight (it may or may not have run)."""


_ERRORS: dict[str, type[RedisError]] = {  # the error codes these commands can meet
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,  # a restarted server reading its data: retry shortly
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
    "READONLY": ReadOnlyError,
}


def _reply_error(message: str) -> RedisError:
    """The redis-py exception for an error reply (hiredis calls this for each one)."""
    code, _, rest = message.partition(" ")
    cls = _ERRORS.get(code)
    if cls is not None:
        return cls(rest)
    if message == "ERR invalid password" or message.startswith("ERR AUTH"):
        return AuthenticationError(message)
    return ResponseError(message)


class LuaScript(NamedTuple):
    """A script's text and SHA1: sent as ``EVALSHA``, loaded again if Redis has lost it."""

    text: str
    sha: str

    @classmethod
    def of(cls, text: str) -> LuaScript:
        return cls(text, hashlib.sha1(text.encode()).hexdigest())


class Endpoint:
    """Where and how to connect, read from a redis-py pool (so URL query options count too).

    ``where`` (host:port or the socket path) is what errors name: never the password.
    """

    def __init__(self, pool: redis.ConnectionPool) -> None:
        kw = pool.connection_kwargs
        self.path: str | None = kw.get("path")
        self.host: str = kw.get("host", "localhost")
        self.port: int = int(kw.get("port", 6379))
        self.where = self.path or f"{self.host}:{self.port}"
        self.username: str | None = kw.get("username")
        self.password: str | None = kw.get("password")
        self.db = int(kw.get("db") or 0)
        self.timeout: float | None = kw.get("socket_timeout")
        self.connect_timeout: float | None = kw.get("socket_connect_timeout") or self.timeout
        self._tls: dict[str, Any] | None = None
        if issubclass(pool.connection_class, redis.SSLConnection):
            self._tls = {k: v for k, v in kw.items() if k in _ASYNC_TLS_OPTIONS}
        self._ssl: Any = None

    def ssl_context(self) -> Any:
        """The TLS context (``rediss://``), built as redis.asyncio builds it; None for plain TCP."""
        if self._tls is None:
            return None
        if self._ssl is None:
            import redis.asyncio

            self._ssl = redis.asyncio.SSLConnection(**self._tls).ssl_context.get()
        return self._ssl


def _async_tls_options() -> frozenset[str]:
    try:
        import inspect

        import redis.asyncio

        params = inspect.signature(redis.asyncio.SSLConnection.__init__).parameters
    except Exception:  # pragma: no cover - redis-py without asyncio/ssl support
        return frozenset()
    return frozenset(p for p in params if p.startswith("ssl_"))


_ASYNC_TLS_OPTIONS = _async_tls_options()


def _again(exc: RedisError) -> RedisError:
    return type(exc)(*exc.args)


class _Connection(asyncio.Protocol):
    """One pipelined Redis connection on one loop (see :class:`AsyncRedis`).

    Replies are matched to the futures in sending order. ``timeout`` bounds how long the
    oldest unanswered command may wait without any reply arriving (socket_timeout's meaning):
    a watchdog timer, not a timer per command, so a busy connection pays one timer a second.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None, where: str):
        self._loop = loop
        self._timeout = timeout
        self._where = where
        self._reader = hiredis.Reader(encoding="utf-8", replyError=_reply_error)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._out: list[bytes] = []
        self._transport: Any = None
        self._since = 0.0  # when the oldest waiting command last saw progress
        self._timer: asyncio.TimerHandle | None = None
        self.broken: RedisError | None = None  # why this connection is no longer usable

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; its reply (or error) resolves the returned future."""
        loop = self._loop
        fut = loop.create_future()
        if self.broken is not None:  # broke after its caller was handed it
            fut.set_exception(_again(self.broken))
            return fut
        waiting = self._waiting
        if not waiting:
            self._since = loop.time()
            if self._timer is None and self._timeout:
                self._timer = loop.call_later(self._timeout, self._watch)
        waiting.append(fut)
        out = self._out
        if not out:  # the first command of this loop iteration: write them all at its end
            loop.call_soon(self._flush)
        out.append(packed)
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.broken is None and out:
            try:
                self._transport.write(b"".join(out))
            except Exception as exc:  # the transport is closing: fail the waiters now
                self._fail(ConnectionLostError(f"Connection to {self._where} lost: {exc}"))

    # -- asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        waiting = self._waiting
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                fut = waiting.popleft()
                if fut.done():  # its caller was cancelled; the reply is dropped
                    continue
                if isinstance(reply, RedisError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except Exception as exc:  # garbage on the wire (or a reply with no caller): give up
            self._fail(RedisConnectionError(f"Protocol error from {self._where}: {exc}"))
            return
        if waiting:
            self._since = self._loop.time()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail(ConnectionLostError(f"Connection to {self._where} lost"
                                       + (f": {exc}" if exc else "")))

    # -- failure
    def _watch(self) -> None:
        self._timer = None
        if not self._waiting or self.broken is not None:
            return
        assert self._timeout is not None
        late = self._loop.time() - self._since
        if late >= self._timeout:
            self._fail(RedisTimeoutError(f"Timeout reading from {self._where}"))
        else:
            self._timer = self._loop.call_later(self._timeout - late, self._watch)

    def _fail(self, exc: RedisError) -> None:
        """Mark broken, fail every waiting command with ``exc`` and drop the socket."""
        if self.broken is None:
            self.broken = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting = self._waiting
        while waiting:
            fut = waiting.popleft()
            if not fut.done():
                fut.set_exception(_again(exc))  # one instance per caller: tracebacks apart
        self._out = []
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()

    def close(self) -> None:
        self._fail(RedisConnectionError("Connection closed by the client"))


class AsyncRedis:
    """Redis commands awaited on one event loop, auto-pipelined over one connection.

    Connected on first use and again after a failure (one connect at a time, shared by the
    callers that wait for it), so it recovers by itself when Redis comes back. A command whose
    connection broke under it is sent once more on a new connection, as the sync client's
    ``Retry`` does (the store's writes carry tokens, so a repeat applies once); a timeout is not
    repeated (Redis hung: the caller has waited ``socket_timeout`` already).

    Get one from :class:`LoopClients` (one per endpoint, loop and process).
    """

    def __init__(self, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self.loop = loop
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closed = False
        self._closer: Any = None  # see close_at_shutdown
        #: per-key queues for callers that must take turns (the store's writers of a session)
        self.turns: dict[str, deque[asyncio.Future[None]] | None] = {}

    def call(self, *args: Any) -> Awaitable[Any]:
        """One command (``call("HGETALL", key)``); await its reply (or a ``RedisError``)."""
        return self._send(pack_command(args), None)

    def script(self, script: LuaScript, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        """Run ``script`` (``EVALSHA``; loaded again first if Redis has lost it); await the reply.

        The command is packed before anything is awaited: while a call waits, it holds one
        bytes object (which the garbage collector does not track), not its argument lists.
        """
        return self._send(pack_command(("EVALSHA", script.sha, len(keys), *keys, *args)), script)

    def script_now(
        self, script: LuaScript, keys: list[str], args: list[Any]
    ) -> asyncio.Future[Any] | None:
        """:meth:`script` without a coroutine: the ``EVALSHA`` is queued on the open
        connection now and its raw reply future returned; ``None`` when there is no healthy
        connection (then use :meth:`script`, which connects). The future fails with
        ``NoScriptError`` or ``ConnectionLostError`` where :meth:`script` would load the
        script or send once more: the caller falls back to :meth:`script` for those.
        """
        conn = self._conn
        if conn is None or conn.broken is not None:
            return None
        return conn.send(pack_command(("EVALSHA", script.sha, len(keys), *keys, *args)))

    async def _send(self, packed: bytes, script: LuaScript | None) -> Any:
        conn = self._conn
        if conn is None or conn.broken is not None:
            conn = await self._connected()
        try:
            try:
                return await conn.send(packed)
            except ConnectionLostError:  # e.g. Redis restarted: once more, on a new connection
                conn = await self._connected()
                return await conn.send(packed)
        except NoScriptError:  # not run: load it, then the same EVALSHA (pipelined, in order)
            if script is None:
                raise
            conn = await self._connected()
            loaded = conn.send(pack_command(("SCRIPT", "LOAD", script.text)))
            again = conn.send(packed)
            await loaded
            return await again

    async def _connected(self) -> _Connection:
        if self._closed:
            raise RedisConnectionError("the client is closed")
        conn = self._conn
        if conn is not None and conn.broken is None:
            return conn
        task = self._connecting
        if task is None:
            task = self._connecting = self.loop.create_task(self._connect())
            task.add_done_callback(_connect_done)
        # shielded: a caller that gives up does not cancel the connect the others wait for
        return await asyncio.shield(task)

    async def _connect(self) -> _Connection:
        ep = self.endpoint
        loop = self.loop
        try:
            try:
                if ep.path:
                    opening = loop.create_unix_connection(
                        lambda: _Connection(loop, ep.timeout, ep.where), ep.path)
                else:
                    opening = loop.create_connection(
                        lambda: _Connection(loop, ep.timeout, ep.where), ep.host, ep.port,
                        ssl=ep.ssl_context())
                _, conn = await asyncio.wait_for(opening, ep.connect_timeout)
            except asyncio.TimeoutError:
                raise RedisTimeoutError(f"Timeout connecting to {ep.where}") from None
            except OSError as exc:
                raise RedisConnectionError(
                    f"Error {exc.errno} connecting to {ep.where}. {exc.strerror or exc}."
                ) from None
            except Exception as exc:  # e.g. a TLS option redis-py refuses: a failed connect too
                raise RedisConnectionError(f"Error connecting to {ep.where}: {exc}") from None
            hello = []
            if ep.password:
                auth = ("AUTH", ep.username, ep.password) if ep.username else ("AUTH", ep.password)
                hello.append(conn.send(pack_command(auth)))
            if ep.db:
                hello.append(conn.send(pack_command(("SELECT", ep.db))))
            for reply in await asyncio.gather(*hello, return_exceptions=True):
                if isinstance(reply, BaseException):
                    conn.close()
                    raise reply
            if self._closed:
                conn.close()
                raise RedisConnectionError("the client is closed")
            self._conn = conn
            return conn
        finally:
            self._connecting = None

    def close_at_shutdown(self) -> None:
        """Close when the loop shuts down, not when the garbage collector finds the socket.

        ``asyncio.run`` and ``uvloop.run`` close every async generator of the loop before
        they close it (``shutdown_asyncgens``); this one's ``finally`` closes the client.
        Call it on the loop.
        """
        closer = _close_at_shutdown(self)
        try:
            closer.asend(None).send(None)  # to its yield: the loop's hooks now know it
        except StopIteration:
            pass
        self._closer = closer  # the loop keeps a weak reference only

    def close(self) -> None:
        """Drop the connection (callable from any thread; the loop may be gone already)."""
        self._closed = True
        closer, self._closer = self._closer, None
        if closer is not None:  # finished here, so it never reaches the loop's finalizer
            try:
                closer.aclose().send(None)
            except (StopIteration, RuntimeError):
                pass
        conn, self._conn = self._conn, None
        if conn is None or self.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            conn.close()
        else:
            try:
                self.loop.call_soon_threadsafe(conn.close)
            except RuntimeError:  # closed meanwhile: its transports went with it
                pass


async def _close_at_shutdown(client: AsyncRedis) -> AsyncIterator[None]:
    try:
        yield
    finally:
        client.close()


def _connect_done(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: every waiter may have given up


class LoopClients:
    """One :class:`AsyncRedis` per event loop for one endpoint, per process.

    A client closes its connection when its loop shuts down (``asyncio.run``, ``uvloop.run``:
    see :meth:`AsyncRedis.close_at_shutdown`); clients of loops closed otherwise are closed
    when another loop asks. A forked child starts with none (its parent's sockets are not
    its own).
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._clients: dict[asyncio.AbstractEventLoop, AsyncRedis] = {}
        self._lock = threading.Lock()  # loops of several threads may attach at once
        _LOOP_CLIENTS.add(self)

    def get(self) -> AsyncRedis:
        """The running loop's client (call it on the loop)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._attach(loop)
        return client

    def _attach(self, loop: asyncio.AbstractEventLoop) -> AsyncRedis:
        with self._lock:
            for old in [lp for lp in self._clients if lp.is_closed()]:
                self._clients.pop(old).close()
            client = self._clients[loop] = AsyncRedis(self.endpoint, loop)
        client.close_at_shutdown()
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def _forget(self) -> None:
        """In a forked child: the parent's connections stay the parent's. Kept referenced,
        never collected here: closing them could touch the parent's event loop state."""
        _PARENTS.extend(self._clients.values())
        self._clients = {}
        self._lock = threading.Lock()  # a parent thread may have held it at fork time


_LOOP_CLIENTS: weakref.WeakSet[LoopClients] = weakref.WeakSet()
_PARENTS: list[AsyncRedis] = []  # in a forked child: its parent's clients (see _forget)


def reply_hash(reply: list[str]) -> dict[str, str]:
    """``HGETALL``'s flat reply as the dict redis-py makes of it."""
    it = iter(reply)
    return dict(zip(it, it, strict=True))


def _after_fork_in_child() -> None:
    for clients in list(_LOOP_CLIENTS):  # the parent's sockets: the child connects anew
        clients._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
