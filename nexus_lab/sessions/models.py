"""Data types of the session package: ``Session``, ``SessionEvent``, ``SessionRecord``.

* ``Session`` is the public, detached snapshot the manager hands out. Changing it
  changes nothing in the store.
* ``SessionEvent`` is one entry of a session's bounded activity log.
* ``SessionRecord`` is what a store keeps: plain values plus the state as JSON
  text. Keeping the state as text makes every read a natural deep copy (one
  decode) and lets one encoding per update serve as the JSON check, the size
  check and the stored form (``merge_json`` does an update's decode, merge and
  encode in one call).

The module also holds the package's JSON codec (``encode_json`` /
``decode_json``). With orjson installed it does the work (about 10x faster
to encode and 2x faster to decode than the standard library here); without it
the standard library does, with the same rules. Either way the codec accepts
and refuses the same things:

* refused: NaN and +/-Infinity, dict keys that are not ``str`` (at any depth),
  strings holding a lone surrogate such as ``"\\ud800"`` (they cannot be
  encoded as UTF-8, so no store could hold them), nesting deeper than 254
  containers (or circular), and types JSON has no form for (sets, bytes,
  datetimes, dataclasses, arbitrary objects);
* accepted as their plain JSON form: subclasses of str/int/float/dict/list,
  tuples (as arrays), ``uuid.UUID`` (its string) and ``Enum`` members (their
  value);
* ints of any size: those beyond 64 bits go through the standard library, and
  the text then starts with one space (still valid JSON) so that
  ``decode_json`` reads it back exactly rather than as a float;
* the text is compact UTF-8 JSON, so ``len(encode_json_bytes(x))`` is the size
  that is stored and measured against ``max_state_bytes``.

Example::

    from nexus_lab.sessions import NexusSessionManager

    with NexusSessionManager(cleanup_interval=None) as manager:
        session = manager.create_session(user_id="user-123")
        manager.update_session_state(session.session_id, {"query": "hi"}, channel="api")
        manager.get_session(session.session_id)
        # Session(user_id='user-123', channels=['api'], keys=['query'])
"""

from __future__ import annotations

import dataclasses
import enum
import html
import json
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Session",
    "SessionEvent",
    "SessionRecord",
    "EventFields",
    "encode_json",
    "encode_json_bytes",
    "decode_json",
    "merge_json",
    "StateTooLarge",
]

EventAction = Literal["create", "update", "read", "delete"]


# --------------------------------------------------------------------------- JSON codec
_MAX_DEPTH = 254  # orjson's nesting limit; the standard-library path enforces the same one
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson encodes, and decodes exactly
_EXACT = " "  # first character of a text that holds ints beyond 64 bits
_SURROGATE = (
    "a string holds a lone surrogate code point (such as '\\ud800'), which cannot be "
    "encoded as UTF-8, so it cannot be stored"
)
_TOO_DEEP = f"the value is nested more than {_MAX_DEPTH} levels deep, or is circular"


class StateTooLarge(ValueError):
    """Raised by :func:`merge_json` when the merged text is over ``limit``; ``size`` in bytes."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size:,} bytes of JSON, over the {limit:,}-byte limit")
        self.size = size
        self.limit = limit


_TooLarge = StateTooLarge


def _walk(obj: Any, depth: int) -> bool:
    """Apply the rules orjson applies by itself; ``True`` if ``obj`` holds an int beyond 64 bits.

    Used by the standard-library path, and after orjson when its output holds
    ``null`` (orjson writes NaN/Infinity as ``null``, which we must refuse).
    """
    if isinstance(obj, dict):
        if depth >= _MAX_DEPTH:
            raise ValueError(_TOO_DEEP)
        big = False
        for key, value in obj.items():
            if key.__class__ is not str:
                raise TypeError(f"dict keys must be strings at every level, got {key!r}")
            if value.__class__ is not str and _walk(value, depth + 1):
                big = True
        return big
    if isinstance(obj, (list, tuple)):
        if depth >= _MAX_DEPTH:
            raise ValueError(_TOO_DEEP)
        big = False
        for value in obj:
            if value.__class__ is not str and _walk(value, depth + 1):
                big = True
        return big
    if isinstance(obj, float):
        if obj != obj or obj in (math.inf, -math.inf):
            raise ValueError(f"Out of range float values are not JSON compliant: {obj!r}")
        return False
    if isinstance(obj, int):
        return not isinstance(obj, bool) and not _INT_MIN <= obj <= _INT_MAX
    if isinstance(obj, enum.Enum):
        return _walk(obj.value, depth)
    return False


def _std_default(obj: Any) -> Any:
    # what orjson encodes natively beyond plain JSON types; everything else is refused
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


_std_encode = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_std_default
).encode


def _encode_std(obj: Any) -> bytes:
    """The standard-library encoder under the same rules as orjson (and ints of any size)."""
    big = _walk(obj, 0)
    try:
        text = _std_encode(obj)
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(_SURROGATE) from None
    return (_EXACT.encode() + raw) if big else raw


_std_decode = json.JSONDecoder().decode

try:  # orjson: an optional accelerator, same results
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    _orjson = None


def _orjson_default(obj: Any) -> Any:
    if isinstance(obj, float):  # float subclasses (numpy.float64 ...), as the stdlib takes them
        return float(obj)
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


if _orjson is not None:
    _dumps = _orjson.dumps
    _loads = _orjson.loads
    _OPTS = _orjson.OPT_PASSTHROUGH_DATETIME | _orjson.OPT_PASSTHROUGH_DATACLASS
    _EncodeError = _orjson.JSONEncodeError
    _DecodeError = _orjson.JSONDecodeError

    def encode_json_bytes(obj: Any) -> bytes:
        try:
            out = _dumps(obj, default=_orjson_default, option=_OPTS)
        except _EncodeError:
            # The standard-library path decides: it raises the clear error for what both
            # refuse, and encodes what only orjson cannot (ints beyond 64 bits). No
            # dependence on orjson's messages.
            return _encode_std(obj)
        # orjson writes NaN/Infinity as null: when a null appears, check the value itself
        # (bytes.find, not `in`: `in` costs 3x as much on bytes here)
        if out.find(b"null") >= 0:
            _walk(obj, 0)
        return out

    def decode_json(text: str) -> Any:
        if text[:1] != _EXACT:  # else it holds ints beyond 64 bits, which orjson makes floats
            try:
                return _loads(text)
            except _DecodeError:  # text an older version wrote, e.g. a lone-surrogate escape
                pass
        return _std_decode(text)

    def merge_json(
        text: str, updates: Mapping[str, Any], limit: int, base: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], str]:
        if base is not None:
            merged = base
        elif text[:1] != _EXACT:
            try:
                merged = _loads(text)
            except _DecodeError:
                merged = _std_decode(text)
        else:
            merged = _std_decode(text)
        merged.update(updates)
        try:
            out = _dumps(merged, default=_orjson_default, option=_OPTS)
        except _EncodeError:
            out = _encode_std(merged)  # as in encode_json_bytes: raises, or big ints
        new = out.decode()
        # Decoded text never holds NaN (JSON has no such literal), so only ``updates`` can
        # have put one there (written by orjson as null): check them when a null appears.
        if "null" in new:
            _walk(updates, 0)
        if len(out) > limit:
            raise _TooLarge(len(out), limit)
        return merged, new

else:  # pragma: no cover - without orjson (tested in a subprocess)

    def encode_json_bytes(obj: Any) -> bytes:
        return _encode_std(obj)

    def decode_json(text: str) -> Any:
        return _std_decode(text)

    def merge_json(
        text: str, updates: Mapping[str, Any], limit: int, base: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], str]:
        merged = _std_decode(text) if base is None else base
        merged.update(updates)
        out = _encode_std(merged)
        if len(out) > limit:
            raise _TooLarge(len(out), limit)
        return merged, out.decode()


def encode_json(obj: Any) -> str:
    """Compact UTF-8 JSON text of ``obj``; what it refuses raises ``TypeError``/``ValueError``.

    Example::

        encode_json({"a": [1, 2.5, None]})   # '{"a":[1,2.5,null]}'
        encode_json({"x": float("nan")})     # ValueError
    """
    return encode_json_bytes(obj).decode()


encode_json_bytes.__doc__ = """:func:`encode_json` as UTF-8 bytes: ``len()`` is the stored size.

Example::

    encode_json_bytes({"city": "Zürich"})   # b'{"city":"Z\\xc3\\xbcrich"}', 19 bytes
"""
merge_json.__doc__ = """``decode_json(text)`` updated with ``updates``, and its JSON text, in one step.

What an update does: the merged state (the caller's, sharing nothing with
``text``) and the text to store. Raises like :func:`encode_json`, and
:class:`StateTooLarge` (a ``ValueError``) when the text is over ``limit`` bytes.
``base``, when given, is ``decode_json(text)`` already made by the caller (and
given up to it: it is updated in place), which saves the decode.

Example::

    merged, text = merge_json('{"a":1}', {"b": 2}, limit=65536)
    # ({'a': 1, 'b': 2}, '{"a":1,"b":2}')
"""
decode_json.__doc__ = """Decode JSON text: what :func:`encode_json` wrote, exactly, or any other JSON text
(where an int beyond 64 bits, unmarked, may come back as a float: the SQLite
store marks such texts written by older versions when it opens a file).

Example::

    decode_json('{"a":[1,2]}')   # {'a': [1, 2]}, a new object on every call
"""


# --------------------------------------------------------------------------- records
@dataclass(slots=True)
class SessionRecord:
    """What a :class:`~nexus_lab.sessions.stores.SessionStore` keeps for one session.

    ``state_json`` and ``metadata_json`` hold JSON text. ``ttl`` is the
    session's own time-to-live override in seconds (``None``: the manager's
    ``session_ttl``). ``writers`` maps each state key to a ``(channel, timestamp)``
    tuple (a store that keeps it as JSON turns the lists back into tuples) for
    its last write. ``channels`` lists the channels that touched the
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


#: What the manager hands a store to log: ``(timestamp, channel, action, keys)``, a
#: :class:`SessionEvent`'s fields in order. A plain tuple, because it is built on every
#: call (a third of the price of a ``SessionEvent``); a list when ``keys`` are known only
#: once ``mutate`` has run (``apply_session_update``). Stores read it by position after
#: ``mutate`` returns (``ts, channel, action, keys = event``), which a ``SessionEvent``
#: also allows, and build ``SessionEvent`` objects only when events are read.
EventFields = Sequence[Any]


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

    def __iter__(self) -> Iterator[Any]:
        """The fields in order, so an event unpacks like the :data:`EventFields` a store logs."""
        return iter((self.timestamp, self.channel, self.action, self.keys))

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


def _utf8_size(text: str) -> int:
    """``len(text.encode())`` without encoding ASCII text (``isascii`` is O(1) here)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------- public session
@dataclass(repr=False, slots=True)  # slots: built on every read; 30% cheaper to construct
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
    #: Size of the stored state as compact JSON (what ``max_state_bytes`` limits).
    state_bytes: int = 0

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
    def _from_snapshot(cls, rec: SessionRecord, default_ttl: float) -> Session:
        """Like :meth:`from_record` for a record the caller owns (a store's ``get`` result):
        its lists and dicts are taken over, not copied again. The read path of the platform."""
        meta = rec.metadata_json
        ttl = rec.ttl
        text = rec.state_json
        session = _StoredSession(
            rec.session_id,
            rec.user_id,
            rec.created_at,
            rec.last_accessed,
            rec.expires_at,
            default_ttl if ttl is None else ttl,
            rec.channels,
            {} if meta == "{}" else decode_json(meta),
            _UNDECODED,
            rec.writers,
            _utf8_size(text),
        )
        session._text = text
        return session

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
            state_bytes=_utf8_size(record.state_json),
        )


#: The slot that holds a :class:`Session`'s decoded state.
_STATE_SLOT = Session.__dict__["state"]
#: Passed for ``state`` to build a :class:`_StoredSession` whose state is not decoded yet.
_UNDECODED = object()


class _StoredSession(Session):
    """A :class:`Session` read from a store, whose ``state`` is decoded on first use.

    A call through the platform reads its session to check ownership and room,
    and most agents never look at the state; decoding it only when asked saves
    a JSON decode per call. It behaves as a ``Session`` in every other way,
    equality with one included.
    """

    __slots__ = ("_text",)

    @property  # type: ignore[override]
    def state(self) -> dict[str, Any]:
        try:
            return _STATE_SLOT.__get__(self, Session)
        except AttributeError:
            value = decode_json(self._text)
            _STATE_SLOT.__set__(self, value)
            return value

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        if value is not _UNDECODED:
            _STATE_SLOT.__set__(self, value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Session):
            return NotImplemented
        return all(
            getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(Session)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like Session
