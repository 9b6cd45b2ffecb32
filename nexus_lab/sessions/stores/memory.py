"""In-process session store: dicts behind one lock.

The fastest store, for one process (a notebook, tests, a single server
worker). Sessions vanish with the process; use the SQLite store to share them
between processes or keep them across restarts.

Example::

    from nexus_lab.sessions import MemorySessionStore, NexusSessionManager

    manager = NexusSessionManager(store=MemorySessionStore())
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import TypeVar

from ...errors import SessionNotFound
from ..models import SessionEvent, SessionRecord
from . import COUNTER_CREATED, COUNTER_DELETED, COUNTER_EXPIRED, SessionStore

__all__ = ["MemorySessionStore"]

T = TypeVar("T")


class MemorySessionStore(SessionStore):
    """Sessions in a dict, guarded by a single lock.

    Records live as :class:`SessionRecord` objects whose state is JSON text;
    each session's events sit in a ``deque(maxlen=max_events)``; a per-user
    index keeps ``list(user_id)`` proportional to that user's sessions.

    Example::

        store = MemorySessionStore(max_events=50)
        manager = NexusSessionManager(store=store, cleanup_interval=60)
    """

    name = "memory"
    blocking = False  # every call is a few dict operations under one lock: fine on an event loop

    def __init__(self, max_events: int = 100) -> None:
        self.max_events = max_events
        self._lock = threading.Lock()
        self._records: dict[str, SessionRecord] = {}
        self._events: dict[str, deque[SessionEvent]] = {}
        self._by_user: dict[str, set[str]] = {}
        self._counters: dict[str, int] = {}
        self._closed = False

    # -- helpers (call with the lock held)
    def _remove(self, session_id: str, record: SessionRecord) -> None:
        del self._records[session_id]
        self._events.pop(session_id, None)
        ids = self._by_user.get(record.user_id)
        if ids is not None:
            ids.discard(session_id)
            if not ids:
                del self._by_user[record.user_id]

    def _add(self, counter: str, n: int) -> None:
        c = self._counters
        c[counter] = c.get(counter, 0) + n

    # -- SessionStore
    def create(
        self,
        record: SessionRecord,
        now: float,
        event: SessionEvent | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> bool:
        sid = record.session_id
        log: deque[SessionEvent] = deque(maxlen=max(0, self.max_events))
        if event is not None:
            log.append(event)
        with self._lock:
            old = self._records.get(sid)
            if old is not None:
                if old.expires_at > now:
                    return False
                self._remove(sid, old)
                self._add(COUNTER_EXPIRED, 1)
            self._records[sid] = record
            self._events[sid] = log
            ids = self._by_user.get(record.user_id)
            if ids is None:
                self._by_user[record.user_id] = {sid}
            else:
                ids.add(sid)
            c = self._counters
            c[COUNTER_CREATED] = c.get(COUNTER_CREATED, 0) + 1
            if incr:
                for name, n in incr.items():
                    c[name] = c.get(name, 0) + n
        return True

    # get and update are the hot path: explicit acquire/release costs half of `with lock` here.
    def get(self, session_id: str, now: float) -> SessionRecord | None:
        lock = self._lock
        lock.acquire()
        try:
            rec = self._records.get(session_id)
            if rec is None or rec.expires_at <= now:
                return None
            return rec.copy()
        finally:
            lock.release()

    def update(
        self,
        session_id: str,
        mutate: Callable[[SessionRecord], T],
        now: float,
        event: SessionEvent | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> T:
        lock = self._lock
        lock.acquire()
        try:
            rec = self._records.get(session_id)
            if rec is None or rec.expires_at <= now:
                raise SessionNotFound(session_id)
            result = mutate(rec)  # raises before changing rec, or changes it: no partial write
            if event is not None:
                self._events[session_id].append(event)
            if incr:
                c = self._counters
                for name, n in incr.items():
                    c[name] = c.get(name, 0) + n
            return result
        finally:
            lock.release()

    def delete(self, session_id: str, now: float) -> bool:
        with self._lock:
            rec = self._records.get(session_id)
            if rec is None or rec.expires_at <= now:
                return False
            self._remove(session_id, rec)
            self._add(COUNTER_DELETED, 1)
            return True

    def list(self, user_id: str | None, now: float) -> list[SessionRecord]:
        with self._lock:
            if user_id is None:
                records = self._records.values()
            else:
                records = [self._records[sid] for sid in self._by_user.get(user_id, ())]
            out = [r.copy() for r in records if r.expires_at > now]
        out.sort(key=lambda r: (r.created_at, r.session_id))
        return out

    def events(self, session_id: str, now: float) -> list[SessionEvent]:
        with self._lock:
            rec = self._records.get(session_id)
            if rec is None or rec.expires_at <= now:
                return []
            log = self._events.get(session_id, ())
            return [SessionEvent(e.timestamp, e.channel, e.action, e.keys) for e in log]

    def delete_expired(self, now: float) -> int:
        with self._lock:
            expired = [(sid, r) for sid, r in self._records.items() if r.expires_at <= now]
            for sid, rec in expired:
                self._remove(sid, rec)
            if expired:
                self._add(COUNTER_EXPIRED, len(expired))
            return len(expired)

    def incr(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self._add(counter, n)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def count(self) -> int:
        return len(self._records)

    def close(self) -> None:
        """Mark the store closed. Data stays readable; a memory store holds no OS resources."""
        self._closed = True

    def __repr__(self) -> str:
        return f"MemorySessionStore(max_events={self.max_events})"
