"""Cross-channel sessions: one state seen by the API, the CLI and MCP.

Example::

    from nexus_lab.sessions import NexusSessionManager

    manager = NexusSessionManager(cleanup_interval=300, session_ttl=7200)
    session = manager.create_session(user_id="user-123")
    sid = session.session_id
    manager.update_session_state(sid, {"query": "What is AI?"}, channel="api")
    manager.get_session_state(sid, channel="cli")   # {'query': 'What is AI?'}

    # what the platform does per call: a pure read, then one atomic update that
    # also slides the expiry and records the channel (one write transaction)
    session = manager.get_session(sid, channel="api", user_id="user-123", touch=False)
    manager.apply_session_update(sid, lambda s: {"turns": s.get("turns", 0) + 1}, channel="api")

    # shared by processes (group-committed writes; manager.blocking is True, so an
    # asyncio server runs its calls in worker threads):
    NexusSessionManager(store="sqlite:///sessions.db")

    # shared by processes on several hosts (pip install 'nexus-lab[redis]'):
    NexusSessionManager(store="redis://localhost:6379/0")

``SQLiteSessionStore`` and ``RedisSessionStore`` are imported on first use, so
that importing this package loads neither ``sqlite3`` nor redis-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .manager import NexusSessionManager
from .models import Session, SessionEvent, SessionRecord
from .stores import SessionStore, open_store
from .stores.memory import MemorySessionStore

if TYPE_CHECKING:  # pragma: no cover
    from .stores.redis import RedisSessionStore
    from .stores.sqlite import SQLiteSessionStore

__all__ = [
    "NexusSessionManager",
    "Session",
    "SessionEvent",
    "SessionRecord",
    "SessionStore",
    "MemorySessionStore",
    "SQLiteSessionStore",
    "RedisSessionStore",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name == "SQLiteSessionStore":
        from .stores.sqlite import SQLiteSessionStore

        return SQLiteSessionStore
    if name == "RedisSessionStore":
        from .stores.redis import RedisSessionStore

        return RedisSessionStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
