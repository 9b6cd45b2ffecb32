"""Cross-channel sessions: one state seen by the API, the CLI and MCP.

Example::

    from nexus_lab.sessions import NexusSessionManager

    manager = NexusSessionManager(cleanup_interval=300, session_ttl=7200)
    session = manager.create_session(user_id="user-123")
    manager.update_session_state(session.session_id, {"query": "What is AI?"}, channel="api")
    manager.get_session_state(session.session_id, channel="cli")   # {'query': 'What is AI?'}

    # shared by processes:
    NexusSessionManager(store="sqlite:///sessions.db")

``SQLiteSessionStore`` is imported on first use, so that importing this
package does not load ``sqlite3``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .manager import NexusSessionManager
from .models import Session, SessionEvent, SessionRecord
from .stores import SessionStore, open_store
from .stores.memory import MemorySessionStore

if TYPE_CHECKING:  # pragma: no cover
    from .stores.sqlite import SQLiteSessionStore

__all__ = [
    "NexusSessionManager",
    "Session",
    "SessionEvent",
    "SessionRecord",
    "SessionStore",
    "MemorySessionStore",
    "SQLiteSessionStore",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name == "SQLiteSessionStore":
        from .stores.sqlite import SQLiteSessionStore

        return SQLiteSessionStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
