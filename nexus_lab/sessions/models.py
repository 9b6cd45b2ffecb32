"""Data types of the session package: ``Session``, ``SessionEvent``, ``SessionRecord``.

* ``Session`` is the public, detached snapshot the manager hands out. Changing it
  changes nothing in the store.
* ``SessionEvent`` is one entry of a session's bounded activity log.
* ``SessionRecord`` is what a store keeps: plain values plus the state as JSON
  text. Keeping the state as text makes every read a natural deep copy
  (``json.loads``) and lets one ``json.dumps`` per update serve both as the
  JSON check, the size check and the stored form.

The module also holds the package's JSON codec (``encode_json`` /
``decode_json``): the C encoder and scanner of the standard ``json`` module,
built once instead of on every call, which halves the cost of the hot path.
If the running Python's private ``json`` internals differ, the codec falls back
to the public ``json`` API with the same output.

Example::

    from nexus_lab.sessions import NexusSessionManager

    with NexusSessionManager(cleanup_interval=None) as manager:
        session = manager.create_session(user_id="user-123")
        manager.update_session_state(session.session_id, {"query": "hi"}, channel="api")
        manager.get_session(session.session_id)
        # Session(user_id='user-123', channels=['api'], keys=['query'])
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Session", "SessionEvent", "SessionRecord", "encode_json", "decode_json"]

EventAction = Literal["create", "update", "read", "delete"]


# --------------------------------------------------------------------------- JSON codec
def _default(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _build_codec() -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    public_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

    def public_decode(text: str) -> Any:
        return json.loads(text)

    try:
        from json.encoder import c_make_encoder, encode_basestring_ascii
        from json.scanner import c_make_scanner

        if c_make_encoder is None or c_make_scanner is None:
            return public_encode, public_decode
        # markers=None: no circular check; cycles end in RecursionError, which callers catch.
        c_encode = c_make_encoder(
            None, _default, encode_basestring_ascii, None, ":", ",", False, False, False
        )
        scan = c_make_scanner(json.JSONDecoder())

        def fast_encode(obj: Any) -> str:
            return "".join(c_encode(obj, 0))

        def fast_decode(text: str) -> Any:
            obj, end = scan(text, 0)
            if end != len(text):  # trailing whitespace or text not written by us
                return json.loads(text)
            return obj

        sample = {"a": [1, 2.5, None, True, "é\n"], "b": {"c": -0.0, "d": 10**20}, "e": ""}
        if (
            fast_encode(sample) != public_encode(sample)
            or fast_decode(public_encode(sample)) != sample
        ):
            return public_encode, public_decode
        try:
            fast_encode({"x": float("nan")})
        except ValueError:
            pass
        else:
            return public_encode, public_decode
        return fast_encode, fast_decode
    except Exception:  # pragma: no cover - other interpreters or changed internals
        return public_encode, public_decode


encode_json, decode_json = _build_codec()
encode_json.__doc__ = "Compact, ASCII-only JSON text of ``obj``; NaN/inf and unknown types raise."
decode_json.__doc__ = "Decode JSON text produced by :func:`encode_json` (any JSON text works)."


# --------------------------------------------------------------------------- records
@dataclass(slots=True)
class SessionRecord:
    """What a :class:`~nexus_lab.sessions.stores.SessionStore` keeps for one session.

    ``state_json`` and ``metadata_json`` hold JSON text. ``ttl`` is the
    session's own time-to-live override in seconds (``None``: the manager's
    ``session_ttl``). ``writers`` maps each state key to ``(channel, timestamp)``
    of its last write. ``channels`` lists the channels that touched the
    session, in first-touch order. Timestamps are ``time.time()`` seconds.
    """

    session_id: str
    user_id: str
    created_at: float
    last_accessed: float
    expires_at: float
    ttl: float | None = None
    metadata_json: str = "{}"
    channels: list[str] = field(default_factory=list)
    writers: dict[str, Any] = field(default_factory=dict)
    state_json: str = "{}"

    def copy(self) -> SessionRecord:
        """A snapshot that shares no mutable object with this record."""
        return SessionRecord(
            self.session_id,
            self.user_id,
            self.created_at,
            self.last_accessed,
            self.expires_at,
            self.ttl,
            self.metadata_json,
            list(self.channels),
            dict(self.writers),
            self.state_json,
        )


@dataclass(slots=True)
class SessionEvent:
    """One entry of a session's activity log.

    ``action`` is one of ``"create"``, ``"update"``, ``"read"``, ``"delete"``;
    ``keys`` are the state keys written (``update``) and empty otherwise;
    ``channel`` is ``None`` when the caller named no channel.

    Example::

        events = manager.get_session_events(session.session_id)
        [(e.action, e.channel, e.keys) for e in events]
        # [('create', None, ()), ('update', 'api', ('query',)), ('read', 'cli', ())]
    """

    timestamp: float
    channel: str | None
    action: EventAction
    keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """``{"timestamp", "channel", "action", "keys"}`` with ``keys`` as a list."""
        return {
            "timestamp": self.timestamp,
            "channel": self.channel,
            "action": self.action,
            "keys": list(self.keys),
        }

    def __repr__(self) -> str:  # no timestamp: notebooks compare reprs
        return f"SessionEvent(action={self.action!r}, channel={self.channel!r}, keys={self.keys!r})"


# --------------------------------------------------------------------------- public session
@dataclass(repr=False)
class Session:
    """A detached snapshot of one session, as returned by the manager.

    Attributes: ``session_id``, ``user_id``, ``created_at``, ``last_accessed``,
    ``expires_at`` (``time.time()`` seconds), ``ttl`` (the effective
    time-to-live in seconds: the session's override or the manager's
    ``session_ttl``), ``channels`` (channels that touched it, first-touch
    order), ``metadata``, ``state`` (a deep copy of the state when the snapshot
    was taken) and ``writers`` (``{key: (channel, timestamp)}`` of the last
    write of each key). Editing a ``Session`` changes nothing stored: use
    ``manager.update_session_state``.

    The ``repr`` holds no ids, addresses or timestamps, so notebook outputs
    stay the same from run to run.

    Example::

        session = manager.create_session(user_id="user-123")
        manager.update_session_state(session.session_id, {"query": "hi"}, channel="api")
        manager.get_session_state(session.session_id, channel="cli")
        manager.get_session(session.session_id)
        # Session(user_id='user-123', channels=['api', 'cli'], keys=['query'])
    """

    session_id: str
    user_id: str
    created_at: float
    last_accessed: float
    expires_at: float
    ttl: float
    channels: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    writers: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """The state's top-level keys, in insertion order."""
        return list(self.state)

    def is_expired(self, now: float) -> bool:
        """Whether the snapshot's ``expires_at`` lies at or before ``now``."""
        return self.expires_at <= now

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every attribute (``writers`` values as lists)."""
        return {
            "session_id": self.session_id,
            "user_id": self.user_id,
            "created_at": self.created_at,
            "last_accessed": self.last_accessed,
            "expires_at": self.expires_at,
            "ttl": self.ttl,
            "channels": list(self.channels),
            "metadata": decode_json(encode_json(self.metadata)),
            "state": decode_json(encode_json(self.state)),
            "writers": {k: list(v) for k, v in self.writers.items()},
        }

    def __repr__(self) -> str:
        return f"Session(user_id={self.user_id!r}, channels={list(self.channels)!r}, keys={self.keys!r})"

    def _repr_html_(self) -> str:
        esc = html.escape
        ttl = f"{self.ttl:g} s"
        rows = [
            ("user", esc(self.user_id)),
            ("channels", esc(", ".join(self.channels)) or "&mdash;"),
            ("state keys", esc(", ".join(self.keys)) or "&mdash;"),
            ("ttl", esc(ttl)),
        ]
        if self.metadata:
            rows.append(("metadata keys", esc(", ".join(map(str, self.metadata)))))
        body = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>"
            for k, v in rows
        )
        return f"<table class='nexus-session'><caption>Session</caption>{body}</table>"

    @classmethod
    def from_record(cls, record: SessionRecord, default_ttl: float) -> Session:
        """Build a detached snapshot from a store record."""
        return cls(
            session_id=record.session_id,
            user_id=record.user_id,
            created_at=record.created_at,
            last_accessed=record.last_accessed,
            expires_at=record.expires_at,
            ttl=record.ttl if record.ttl is not None else default_ttl,
            channels=list(record.channels),
            metadata=decode_json(record.metadata_json),
            state=decode_json(record.state_json),
            writers={k: (v[0], v[1]) for k, v in record.writers.items()},
        )
