"""SQLite session store: sessions in one file, shared by threads and processes.

The embedded default for servers: no service to run, survives restarts, and
several processes (uvicorn workers, a CLI, a notebook) can share one file.

* WAL journal, ``synchronous=NORMAL`` (a process crash loses nothing; a power
  cut may lose the last transactions), ``busy_timeout`` so that writers wait
  for each other instead of failing.
* Every write is one ``BEGIN IMMEDIATE`` transaction: the read-modify-write of
  ``update`` takes the write lock before it reads, so two processes updating
  one session never lose each other's keys. Counters and the event log are
  written in the same transaction.
* One connection per store object, guarded by a lock (threads of one process
  take turns; SQLite would serialise their writes anyway). A forked child
  opens its own connection on first use.

Example::

    from nexus_lab.sessions import NexusSessionManager

    manager = NexusSessionManager(store="sqlite:///var/sessions.db")
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ...errors import SessionNotFound
from ..models import SessionEvent, SessionRecord, decode_json, encode_json
from . import COUNTER_CREATED, COUNTER_DELETED, COUNTER_EXPIRED, SessionStore

__all__ = ["SQLiteSessionStore"]

T = TypeVar("T")

_LIVE = "__live__"  # internal counter: records held, kept by create/delete/delete_expired
_TRIM_EVERY = 16  # trim a session's event rows every this many events

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS nexus_sessions (
        session_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_accessed REAL NOT NULL,
        expires_at REAL NOT NULL,
        ttl REAL,
        metadata TEXT NOT NULL,
        channels TEXT NOT NULL,
        writers TEXT NOT NULL,
        state TEXT NOT NULL,
        event_seq INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS nexus_sessions_expires ON nexus_sessions(expires_at)",
    "CREATE INDEX IF NOT EXISTS nexus_sessions_user ON nexus_sessions(user_id, created_at)",
    """CREATE TABLE IF NOT EXISTS nexus_session_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        ts REAL NOT NULL,
        channel TEXT,
        action TEXT NOT NULL,
        keys TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS nexus_session_events_sid ON nexus_session_events(session_id, id)",
    "CREATE TABLE IF NOT EXISTS nexus_session_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)

_COLUMNS = "session_id, user_id, created_at, last_accessed, expires_at, ttl, metadata, channels, writers, state"
_INCR = (
    "INSERT INTO nexus_session_counters(name, value) VALUES (?, ?) "
    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)


def _record(row: tuple) -> SessionRecord:
    return SessionRecord(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        decode_json(row[7]),
        decode_json(row[8]),
        row[9],
    )


class SQLiteSessionStore(SessionStore):
    """Sessions in a SQLite file (or ``":memory:"``), safe across threads and processes.

    ``path`` is a file path (parent directories are created) or ``":memory:"``.
    ``timeout`` is how long a writer waits for another one (seconds).

    Example::

        store = SQLiteSessionStore("data/sessions.db")
        with NexusSessionManager(store=store) as manager:
            sid = manager.create_session(user_id="u1").session_id
        # another process: NexusSessionManager(store="sqlite:///data/sessions.db")
        store.close()
    """

    name = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        max_events: int = 100,
        timeout: float = 30.0,
    ) -> None:
        self.max_events = max_events
        self.timeout = float(timeout)
        raw = os.fspath(path)
        self.in_memory = raw in (":memory:", "")
        if self.in_memory:
            self.path = ":memory:"
        else:
            p = Path(raw).expanduser()
            p.parent.mkdir(parents=True, exist_ok=True)
            self.path = str(p)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        self._connect()

    # -- connection handling
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if not self.in_memory:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                conn.execute(
                    "INSERT OR IGNORE INTO nexus_session_counters(name, value) VALUES (?, 0)",
                    (_LIVE,),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._pid = os.getpid()
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("SQLiteSessionStore is closed")
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            if self.in_memory and conn is not None:
                raise RuntimeError("a ':memory:' SQLite store cannot be used from a forked process")
            # forked child: never touch the parent's connection, open our own
            conn = self._connect()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _apply_incr(conn: sqlite3.Connection, incr: Mapping[str, int]) -> None:
        for item in incr.items():
            conn.execute(_INCR, item)

    def _log(
        self, conn: sqlite3.Connection, session_id: str, event: SessionEvent, seq: int
    ) -> None:
        conn.execute(
            "INSERT INTO nexus_session_events(session_id, ts, channel, action, keys) VALUES (?, ?, ?, ?, ?)",
            (
                session_id,
                event.timestamp,
                event.channel,
                event.action,
                encode_json(list(event.keys)),
            ),
        )
        if seq % _TRIM_EVERY == 0:
            self._trim(conn, session_id)

    def _trim(self, conn: sqlite3.Connection, session_id: str) -> None:
        if self.max_events <= 0:
            conn.execute("DELETE FROM nexus_session_events WHERE session_id = ?", (session_id,))
            return
        conn.execute(
            "DELETE FROM nexus_session_events WHERE session_id = ? AND id < ("
            "SELECT min(id) FROM (SELECT id FROM nexus_session_events WHERE session_id = ? "
            "ORDER BY id DESC LIMIT ?))",
            (session_id, session_id, self.max_events),
        )

    # -- SessionStore
    def create(
        self,
        record: SessionRecord,
        now: float,
        event: SessionEvent | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> bool:
        sid = record.session_id
        with self._write() as conn:
            row = conn.execute(
                "SELECT expires_at FROM nexus_sessions WHERE session_id = ?", (sid,)
            ).fetchone()
            if row is not None:
                if row[0] > now:
                    return False
                conn.execute("DELETE FROM nexus_sessions WHERE session_id = ?", (sid,))
                conn.execute("DELETE FROM nexus_session_events WHERE session_id = ?", (sid,))
                conn.execute(_INCR, (COUNTER_EXPIRED, 1))
                conn.execute(_INCR, (_LIVE, -1))
            seq = 1 if event is not None else 0
            conn.execute(
                f"INSERT INTO nexus_sessions({_COLUMNS}, event_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sid,
                    record.user_id,
                    record.created_at,
                    record.last_accessed,
                    record.expires_at,
                    record.ttl,
                    record.metadata_json,
                    encode_json(record.channels),
                    encode_json(record.writers),
                    record.state_json,
                    seq,
                ),
            )
            if event is not None:
                self._log(conn, sid, event, seq)
            conn.execute(_INCR, (COUNTER_CREATED, 1))
            conn.execute(_INCR, (_LIVE, 1))
            if incr:
                self._apply_incr(conn, incr)
        return True

    def get(self, session_id: str, now: float) -> SessionRecord | None:
        with self._lock:
            row = (
                self._connection()
                .execute(
                    f"SELECT {_COLUMNS} FROM nexus_sessions WHERE session_id = ? AND expires_at > ?",
                    (session_id, now),
                )
                .fetchone()
            )
        return None if row is None else _record(row)

    def update(
        self,
        session_id: str,
        mutate: Callable[[SessionRecord], T],
        now: float,
        event: SessionEvent | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> T:
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS}, event_seq FROM nexus_sessions WHERE session_id = ?",
                (session_id,),
            ).fetchone()
            if row is None or row[4] <= now:
                raise SessionNotFound(session_id)
            rec = _record(row)
            result = mutate(rec)
            seq = row[10] + (1 if event is not None else 0)
            conn.execute(
                "UPDATE nexus_sessions SET last_accessed = ?, expires_at = ?, ttl = ?, metadata = ?, "
                "channels = ?, writers = ?, state = ?, event_seq = ? WHERE session_id = ?",
                (
                    rec.last_accessed,
                    rec.expires_at,
                    rec.ttl,
                    rec.metadata_json,
                    encode_json(rec.channels),
                    encode_json(rec.writers),
                    rec.state_json,
                    seq,
                    session_id,
                ),
            )
            if event is not None:
                self._log(conn, session_id, event, seq)
            if incr:
                self._apply_incr(conn, incr)
        return result

    def delete(self, session_id: str, now: float) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM nexus_sessions WHERE session_id = ? AND expires_at > ?",
                (session_id, now),
            )
            if cur.rowcount != 1:
                return False
            conn.execute("DELETE FROM nexus_session_events WHERE session_id = ?", (session_id,))
            conn.execute(_INCR, (COUNTER_DELETED, 1))
            conn.execute(_INCR, (_LIVE, -1))
            return True

    def list(self, user_id: str | None, now: float) -> list[SessionRecord]:
        with self._lock:
            conn = self._connection()
            if user_id is None:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM nexus_sessions WHERE expires_at > ? "
                    "ORDER BY created_at, session_id",
                    (now,),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM nexus_sessions WHERE user_id = ? AND expires_at > ? "
                    "ORDER BY created_at, session_id",
                    (user_id, now),
                ).fetchall()
        return [_record(r) for r in rows]

    def events(self, session_id: str, now: float) -> list[SessionEvent]:
        if self.max_events <= 0:
            return []
        with self._lock:
            conn = self._connection()
            live = conn.execute(
                "SELECT 1 FROM nexus_sessions WHERE session_id = ? AND expires_at > ?",
                (session_id, now),
            ).fetchone()
            if live is None:
                return []
            rows = conn.execute(
                "SELECT ts, channel, action, keys FROM (SELECT id, ts, channel, action, keys "
                "FROM nexus_session_events WHERE session_id = ? ORDER BY id DESC LIMIT ?) ORDER BY id",
                (session_id, self.max_events),
            ).fetchall()
        return [SessionEvent(r[0], r[1], r[2], tuple(decode_json(r[3]))) for r in rows]

    def delete_expired(self, now: float) -> int:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM nexus_session_events WHERE session_id IN "
                "(SELECT session_id FROM nexus_sessions WHERE expires_at <= ?)",
                (now,),
            )
            n = conn.execute("DELETE FROM nexus_sessions WHERE expires_at <= ?", (now,)).rowcount
            if n:
                conn.execute(_INCR, (COUNTER_EXPIRED, n))
                conn.execute(_INCR, (_LIVE, -n))
            return n

    def incr(self, counter: str, n: int = 1) -> None:
        with self._write() as conn:
            conn.execute(_INCR, (counter, n))

    def counters(self) -> dict[str, int]:
        with self._lock:
            rows = (
                self._connection()
                .execute("SELECT name, value FROM nexus_session_counters")
                .fetchall()
            )
        return {name: value for name, value in rows if name != _LIVE}

    def count(self) -> int:
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT value FROM nexus_session_counters WHERE name = ?", (_LIVE,))
                .fetchone()
            )
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the connection (idempotent). Later calls raise ``RuntimeError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                conn.close()

    def __repr__(self) -> str:
        return f"SQLiteSessionStore({self.path!r}, max_events={self.max_events})"
