"""Session stores: where ``NexusSessionManager`` keeps sessions.

A store is small on purpose so that another backend is a single file
(``redis.py`` is one). It keeps :class:`~nexus_lab.sessions.models.SessionRecord`
objects, whose state is JSON text, plus a bounded event log per session and a
few shared counters. Every mutating call is atomic, and the counters it
touches change in the same transaction, so several processes sharing one
store (SQLite file, Redis server) agree on them.

Built-in stores, chosen with :func:`open_store`:

=================================  ==================================================
``None``, ``"memory://"``          :class:`MemorySessionStore` (one process)
``"sqlite:///relative/path.db"``   :class:`SQLiteSessionStore`, SQLAlchemy-style URL:
``"sqlite:////abs/path.db"``       three slashes then the path (four for absolute)
``"sqlite:///:memory:"``           SQLite in memory (one process)
``Path("x.db")``, ``"x.db"``       SQLite file at that path (``.db``, ``.sqlite``, ``.sqlite3``)
``"redis://host:port/db"``         :class:`RedisSessionStore` (``pip install 'nexus-lab[redis]'``);
``"rediss://..."``, ``"unix://..."``  also TLS and a Unix socket; ``?prefix=app1:`` sets the key prefix
a ``SessionStore`` instance        used as is
=================================  ==================================================

Standard counter names (every store maintains them itself):
``total_created`` (on ``create``), ``deleted`` (on ``delete``),
``expired_cleaned`` (sessions removed by ``delete_expired`` or replaced by a
``create`` after expiring). Callers add their own through ``incr=``; the
manager counts channel activity as ``channel:<name>``.

Writing a store: subclass :class:`SessionStore` and implement the abstract
methods. Expired records (``expires_at <= now``) must be invisible to
``get``/``update``/``delete``/``list``/``events`` even before
``delete_expired`` removes them. ``update`` may call ``mutate`` more than
once under optimistic concurrency (e.g. a Redis ``WATCH`` retry), so the
function must only touch the record it is given; it may also run on another
thread than the caller's (the SQLite store commits a group of writers
together), and it must not call the store itself. ``get`` is a pure read: it
writes nothing, so a platform call costs one write (its ``update``).

Set the class attribute ``blocking``: ``True`` if a call can wait on I/O or on
another process (a file, a socket: SQLite, Redis), ``False`` if every call is
short CPU work in this process (the memory store). An asyncio server reads it
(``NexusSessionManager.blocking``) to run a blocking store's calls in its
worker threads instead of on the event loop, where one slow commit would stall
every connection. A store may also set ``async_native = True`` and implement
the awaitable twins (``aget``, ``aupdate``, ``acreate``, ``adelete``) so that
the server awaits them on its loop instead (SQLite hands them to its own I/O
threads; Redis pipelines them).

Example::

    from nexus_lab.sessions import NexusSessionManager, open_store

    store = open_store("sqlite:///sessions.db")
    with NexusSessionManager(store=store) as manager:
        ...
    store.close()
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import ConfigError
from ..models import EventFields, SessionEvent, SessionRecord

if TYPE_CHECKING:  # pragma: no cover
    from .memory import MemorySessionStore
    from .redis import RedisSessionStore
    from .sqlite import SQLiteSessionStore

__all__ = [
    "SessionStore",
    "MemorySessionStore",
    "SQLiteSessionStore",
    "RedisSessionStore",
    "open_store",
    "COUNTER_CREATED",
    "COUNTER_DELETED",
    "COUNTER_EXPIRED",
    "CHANNEL_PREFIX",
]

COUNTER_CREATED = "total_created"
COUNTER_DELETED = "deleted"
COUNTER_EXPIRED = "expired_cleaned"
CHANNEL_PREFIX = "channel:"

T = TypeVar("T")

SUPPORTED = (
    "None or 'memory://', 'sqlite:///path/to.db' (or a path ending in .db), 'sqlite:///:memory:', "
    "'redis://host:port/db', 'rediss://host:port/db', 'unix:///path/to/redis.sock?db=N'"
)


class SessionStore(ABC):
    """Where sessions live. Thread safe; atomic per call.

    ``name`` identifies the backend (``"memory"``, ``"sqlite"``, ...),
    ``max_events`` bounds each session's event log (the manager sets it) and
    ``blocking`` says whether a call may wait on I/O (see the module docs);
    it defaults to ``True``, the safe answer for a store that talks to a
    file or a server.

    ``event`` arguments are :data:`~nexus_lab.sessions.models.EventFields`:
    ``(timestamp, channel, action, keys)`` by position (``ts, channel, action,
    keys = event``), read once ``mutate`` has returned; ``events()`` returns
    :class:`SessionEvent` objects made from them.

    Example::

        class MyStore(SessionStore):
            name = "mine"
            blocking = True        # talks to a server: keep it off the event loop
            def create(self, record, now, event=None, incr=None): ...
            # ... the other abstract methods
    """

    name: str = "abstract"
    max_events: int = 100
    blocking: bool = True

    @abstractmethod
    def create(
        self,
        record: SessionRecord,
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> bool:
        """Insert ``record``; ``False`` (nothing written) if a live session has its id.

        An expired record with the same id is replaced (counted as expired_cleaned).
        Adds 1 to ``total_created`` plus ``incr``, and logs ``event``, atomically.
        """

    @abstractmethod
    def get(self, session_id: str, now: float) -> SessionRecord | None:
        """A snapshot of the live record, or ``None`` (missing or expired).

        A pure read: it writes nothing (no expiry slide, no event, no counter)
        and shares no mutable object with the store.
        """

    @abstractmethod
    def update(
        self,
        session_id: str,
        mutate: Callable[[SessionRecord], T],
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> T:
        """Atomic read-modify-write of one live record.

        ``mutate(record)`` changes the record in place and returns a value that
        ``update`` returns. If ``mutate`` raises, nothing is written (it must
        raise before it changes the record) and the exception propagates.
        On success the record, ``event`` and ``incr`` are written together.
        Raises :class:`~nexus_lab.errors.SessionNotFound` if the session is
        missing or expired at ``now``.
        """

    @abstractmethod
    def delete(self, session_id: str, now: float) -> bool:
        """Remove a live session and its events; ``True`` if removed (adds 1 to ``deleted``)."""

    @abstractmethod
    def list(self, user_id: str | None, now: float) -> list[SessionRecord]:
        """Snapshots of the live records (of ``user_id`` if given), oldest first."""

    @abstractmethod
    def events(self, session_id: str, now: float) -> list[SessionEvent]:
        """The session's last ``max_events`` events, oldest first; ``[]`` if missing/expired."""

    @abstractmethod
    def delete_expired(self, now: float) -> int:
        """Remove every record with ``expires_at <= now``; adds the number to expired_cleaned."""

    @abstractmethod
    def incr(self, counter: str, n: int = 1) -> None:
        """Add ``n`` to a shared counter."""

    @abstractmethod
    def counters(self) -> dict[str, int]:
        """Every counter (``{name: value}``); O(number of counters)."""

    @abstractmethod
    def count(self) -> int:
        """Records held, O(1). Expired ones count until ``delete_expired`` removes them."""

    @abstractmethod
    def close(self) -> None:
        """Release resources. Idempotent."""

    # -- async twins (what an asyncio server awaits) -----------------------------------
    #: ``True`` when :meth:`aget`, :meth:`aupdate`, :meth:`acreate` and :meth:`adelete` are
    #: native: awaiting them never blocks the event loop (the store hands the work to its
    #: own I/O thread or an async client). ``False`` (the default) means the twins below just
    #: call the sync methods, which is right for a store that does not block (memory); a
    #: blocking store without native twins is called from worker threads by the platform.
    async_native: bool = False

    async def aget(self, session_id: str, now: float) -> SessionRecord | None:
        """:meth:`get`, awaitable. Default: the sync call (see :attr:`async_native`)."""
        return self.get(session_id, now)

    async def aupdate(
        self,
        session_id: str,
        mutate: Callable[[SessionRecord], T],
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> T:
        """:meth:`update`, awaitable. ``mutate`` may run on another thread than the caller's."""
        return self.update(session_id, mutate, now, event, incr)

    async def acreate(
        self,
        record: SessionRecord,
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> bool:
        """:meth:`create`, awaitable."""
        return self.create(record, now, event, incr)

    async def adelete(self, session_id: str, now: float) -> bool:
        """:meth:`delete`, awaitable."""
        return self.delete(session_id, now)

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _sqlite_path_from_url(url: str) -> str:
    rest = url[len("sqlite:") :]
    if rest in ("", "//"):
        return ":memory:"
    if not rest.startswith("///"):
        raise ConfigError(
            f"Bad SQLite URL {url!r}: use 'sqlite:///relative/path.db', "
            "'sqlite:////absolute/path.db' or 'sqlite:///:memory:'",
            field="store",
        )
    path = rest[3:]
    if not path:
        raise ConfigError(f"SQLite URL {url!r} names no file", field="store")
    return path


def open_store(
    store: SessionStore | str | os.PathLike[str] | None = None, *, max_events: int = 100
) -> SessionStore:
    """Return a :class:`SessionStore` for a URL, a path, ``None`` or a store instance.

    Example::

        open_store()                            # MemorySessionStore
        open_store("sqlite:///data/sessions.db")  # SQLite file data/sessions.db (dirs created)
        open_store(Path("/tmp/s.db"))            # SQLite file

    An unknown scheme raises :class:`~nexus_lab.errors.ConfigError` (a
    ``ValueError``) naming the supported ones.
    """
    if isinstance(store, SessionStore):
        return store
    if store is None:
        from .memory import MemorySessionStore

        return MemorySessionStore(max_events=max_events)
    if isinstance(store, os.PathLike):
        from .sqlite import SQLiteSessionStore

        return SQLiteSessionStore(Path(store), max_events=max_events)
    if not isinstance(store, str):
        raise TypeError(
            f"store must be a SessionStore, a URL string, a path or None, not {type(store).__name__}"
        )
    url = store.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if url.lower() in ("memory", "memory://", "memory:") or scheme == "memory":
        from .memory import MemorySessionStore

        return MemorySessionStore(max_events=max_events)
    if url.lower().startswith("sqlite:"):
        from .sqlite import SQLiteSessionStore

        return SQLiteSessionStore(_sqlite_path_from_url(url), max_events=max_events)
    if scheme in ("redis", "rediss", "unix"):
        return _open_redis(url, max_events)
    if not scheme and url.lower().endswith((".db", ".sqlite", ".sqlite3")):
        from .sqlite import SQLiteSessionStore

        return SQLiteSessionStore(url, max_events=max_events)
    raise ConfigError(f"Unsupported session store {store!r}; supported: {SUPPORTED}", field="store")


def _open_redis(url: str, max_events: int) -> SessionStore:
    try:
        from .redis import RedisSessionStore
    except ModuleNotFoundError as exc:
        # only when redis-py itself is missing; any other import error is a real bug: raise it
        if exc.name != "redis" and not (exc.name or "").startswith("redis."):
            raise
        raise ConfigError(
            f"The Redis session store ({url.split('://', 1)[0]}://) needs the redis package, "
            "which is not installed: pip install 'nexus-lab[redis]'. Or use "
            "'sqlite:///path/to.db' to share sessions between processes on one host.",
            field="store",
        ) from None
    return RedisSessionStore.from_url(url, max_events=max_events)


def __getattr__(name: str) -> Any:
    if name == "MemorySessionStore":
        from .memory import MemorySessionStore

        return MemorySessionStore
    if name == "SQLiteSessionStore":
        from .sqlite import SQLiteSessionStore

        return SQLiteSessionStore
    if name == "RedisSessionStore":  # imports redis-py: only when asked for
        from .redis import RedisSessionStore

        return RedisSessionStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
