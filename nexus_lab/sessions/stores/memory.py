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
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ...errors import SessionNotFound
from ..models import EventFields, SessionEvent, SessionRecord
from . import COUNTER_CREATED, COUNTER_DELETED, COUNTER_EXPIRED, SessionStore

__all__ = ["MemorySessionStore"]

T = TypeVar("T")


class MemorySessionStore(SessionStore):
    """Sessions in a dict, guarded by a single lock.

    Each session is one entry: its :class:`SessionRecord` (state as JSON text)
    and its event log, one flat list of the last ``max_events`` events' fields
    (``timestamp, channel, action, keys`` four slots an event; ``SessionEvent``
    objects are made when events are read). One lookup reaches both, and the
    flat list holds no object per event and a tenth of what a ``deque`` would
    (a 64-slot block per session): at 10,000 sessions an update is bound by
    memory reads more than by its instructions. A per-user index keeps
    ``list(user_id)`` proportional to that user's sessions.

    Example::

        store = MemorySessionStore(max_events=50)
        manager = NexusSessionManager(store=store, cleanup_interval=60)
    """

    name = "memory"
    blocking = False  # every call is a few dict operations under one lock: fine on an event loop

    def __init__(self, max_events: int = 100) -> None:
        self.max_events = max_events
        self._lock = threading.Lock()
        # a session's log is flat: (timestamp, channel, action, keys) of each event in a row
        self._sessions: dict[str, tuple[SessionRecord, list[Any]]] = {}
        self._by_user: dict[str, set[str]] = {}
        self._counters: dict[str, int] = {}
        self._closed = False

    # -- helpers (call with the lock held)
    def _remove(self, session_id: str, record: SessionRecord) -> None:
        del self._sessions[session_id]
        ids = self._by_user.get(record.user_id)
        if ids is not None:
            ids.discard(session_id)
            if not ids:
                del self._by_user[record.user_id]

    def _add(self, counter: str, n: int) -> None:
        c = self._counters
        c[counter] = c.get(counter, 0) + n

    def _live(self, session_id: str, now: float) -> tuple[SessionRecord, list[Any]] | None:
        entry = self._sessions.get(session_id)
        if entry is None or entry[0].expires_at <= now:
            return None
        return entry

    # -- SessionStore
    def create(
        self,
        record: SessionRecord,
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> bool:
        sid = record.session_id
        log: list[Any] = [*event] if event is not None and self.max_events > 0 else []
        with self._lock:
            old = self._sessions.get(sid)
            if old is not None:
                if old[0].expires_at > now:
                    return False
                self._remove(sid, old[0])
                self._add(COUNTER_EXPIRED, 1)
            self._sessions[sid] = (record, log)
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
            entry = self._sessions.get(session_id)
            if entry is None:
                return None
            rec = entry[0]
            return None if rec.expires_at <= now else rec.copy()
        finally:
            lock.release()

    def update(
        self,
        session_id: str,
        mutate: Callable[[SessionRecord], T],
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> T:
        lock = self._lock
        lock.acquire()
        try:
            entry = self._sessions.get(session_id)
            if entry is None or entry[0].expires_at <= now:
                raise SessionNotFound(session_id)
            result = mutate(entry[0])  # raises before changing the record, or changes it
            if event is not None:
                log = entry[1]
                log += event  # its four fields, flat: no object per event
                over = len(log) - 4 * self.max_events
                if over > 0:  # trim the oldest
                    del log[:over]
            if incr:
                c = self._counters
                for name, n in incr.items():
                    c[name] = c.get(name, 0) + n
            return result
        finally:
            lock.release()

    def delete(self, session_id: str, now: float) -> bool:
        with self._lock:
            entry = self._live(session_id, now)
            if entry is None:
                return False
            self._remove(session_id, entry[0])
            self._add(COUNTER_DELETED, 1)
            return True

    def list(self, user_id: str | None, now: float) -> list[SessionRecord]:
        with self._lock:
            if user_id is None:
                records = [entry[0] for entry in self._sessions.values()]
            else:
                records = [self._sessions[sid][0] for sid in self._by_user.get(user_id, ())]
            out = [r.copy() for r in records if r.expires_at > now]
        out.sort(key=lambda r: (r.created_at, r.session_id))
        return out

    def events(self, session_id: str, now: float) -> list[SessionEvent]:
        with self._lock:
            entry = self._live(session_id, now)
            if entry is None:
                return []
            log = entry[1]
            return [SessionEvent(*log[i : i + 4]) for i in range(0, len(log), 4)]

    def delete_expired(self, now: float) -> int:
        with self._lock:
            expired = [(sid, e[0]) for sid, e in self._sessions.items() if e[0].expires_at <= now]
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
        return len(self._sessions)

    def close(self) -> None:
        """Mark the store closed. Data stays readable; a memory store holds no OS resources."""
        self._closed = True

    def __repr__(self) -> str:
        return f"MemorySessionStore(max_events={self.max_events})"
