"""``NexusSessionManager``: sessions shared by every channel (API, CLI, MCP).

What it fixes relative to the upstream manager: a real ``session_ttl`` with
sliding expiry (every update, and every read that touches, moves
``expires_at`` to ``now + ttl``), a
per-session ttl override, a cleanup thread that actually runs, locks, deep
copies on read, JSON and size validation on write, a bounded event log per
session, O(1) metrics, and pluggable stores (memory, SQLite shared by
processes, Redis shared by hosts).

Design notes:

* The store keeps the state as JSON text. An update decodes the old text,
  merges the top-level keys, and encodes once: that single encoding is the
  JSON check, the size check and the stored form. A read decodes the text,
  which is the cheapest deep copy there is.
* Every write is one atomic ``store.update(session_id, mutate, ...)`` call;
  the mutate function validates before it changes anything, so a rejected
  update leaves the stored state as it was.
* A read can be pure: ``get_session(..., touch=False)`` is one ``store.get``
  and writes nothing. The platform reads that way and lets the update that
  follows (``apply_session_update``) slide the expiry and record the channel,
  so a call costs one write transaction, not two.
* ``blocking`` tells whether store calls wait on I/O (SQLite, Redis). Each
  call the platform makes has an awaitable twin (``aget_session``,
  ``aapply_session_update``, ``acreate_session``, ``adelete_session``) with
  the same preparation; an asyncio server awaits the twin when
  ``async_native`` (the store hands the work to its own I/O thread or async
  client) and otherwise runs the sync call in a worker thread, never on its
  event loop.
* Metrics are counters the stores maintain in the same transaction as the
  change they count, so ``get_session_metrics`` never scans sessions and,
  with the SQLite or Redis store, several processes see the same numbers.
* A store that depends on a server (Redis) raises ``ServiceUnavailable``
  (HTTP 503) while the server is down; ``store_healthy()`` asks it without
  raising, so a health check can report ``degraded``.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InputValidationError, ServiceUnavailable, SessionNotFound, SessionStateError
from .models import (
    EventFields,
    Session,
    SessionEvent,
    SessionRecord,
    StateTooLarge,
    decode_json,
    encode_json_bytes,
    merge_json,
)
from .stores import (
    CHANNEL_PREFIX,
    COUNTER_CREATED,
    COUNTER_DELETED,
    COUNTER_EXPIRED,
    SessionStore,
    open_store,
)

__all__ = ["NexusSessionManager"]

logger = logging.getLogger(__name__)

_MAX_ID_LENGTH = 256
_ENCODE_ERRORS = (TypeError, ValueError, RecursionError)


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return value


def _cleanup_loop(
    ref: weakref.ReferenceType[NexusSessionManager], stop: threading.Event, interval: float
) -> None:
    # Holds only a weak reference, so an abandoned manager can be collected (its __del__ stops us).
    while not stop.wait(interval):
        manager = ref()
        if manager is None:
            return
        try:
            manager.cleanup_expired_sessions()
        except ServiceUnavailable as exc:  # e.g. Redis down: expected, no traceback every round
            logger.warning("session cleanup skipped: %s", exc)
        except Exception:  # keep the thread alive; the next round may succeed
            logger.exception("session cleanup failed")
        finally:
            del manager


def _new_session_id() -> str:
    """22 URL-safe characters (128 random bits) that never start with ``-``, so that an
    id is never taken for an option (``nexus run --session ID``, ``%nexus call --session ID``)."""
    while True:
        sid = secrets.token_urlsafe(16)
        if sid[0] != "-":
            return sid


def _check_text(field: str, value: str, error: type[Exception] = InputValidationError) -> None:
    """Refuse text that cannot be encoded as UTF-8 (a lone surrogate): no store could hold it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        msg = (
            f"{field} holds a lone surrogate code point (such as '\\ud800'), which cannot be "
            "encoded as UTF-8, so it cannot be stored"
        )
        if error is InputValidationError:
            raise InputValidationError(msg, field=field) from None
        raise error(msg) from None


def _state_error(exc: Exception) -> SessionStateError:
    """The manager's error for a state that ``merge_json`` refused."""
    if isinstance(exc, StateTooLarge):
        return SessionStateError(
            f"Session state would be {exc.size:,} bytes as JSON, over the {exc.limit:,}-byte "
            "limit (max_state_bytes); store summaries, not full histories"
        )
    return SessionStateError(
        "Session state must be JSON-serialisable (str, int, float, bool, None, list, "
        f"dict with str keys): {exc}"
    )


class NexusSessionManager:
    """Create, share and expire sessions across channels.

    Parameters:
        cleanup_interval: seconds between runs of the background cleanup
            thread (floats allowed). ``None`` runs no thread and warns: expired
            sessions then stay in memory until ``cleanup_expired_sessions()``.
        session_ttl: default time-to-live in seconds, measured from the last
            update or touching read (sliding expiry; ``touch=False`` reads do
            not slide it).
        store: ``None``/``"memory://"`` (in-process), ``"sqlite:///path.db"``
            or a path ending in ``.db`` (shared by processes),
            ``"redis://host:port/db"`` (shared by hosts; ``rediss://``,
            ``unix://`` too), or a :class:`SessionStore`. The manager closes stores it opened; a
            store object you pass in stays yours to close.
        max_state_bytes: limit of a session's state, as compact JSON.
        max_events: events kept per session (older ones drop off).
        clock: the time source (``time.time``); tests inject a fake clock.

    Example::

        manager = NexusSessionManager(cleanup_interval=300, session_ttl=7200)
        session = manager.create_session(user_id="user-123")
        manager.update_session_state(
            session.session_id, {"query": "What is AI?", "source": "api"}, channel="api"
        )
        state = manager.get_session_state(session.session_id, channel="cli")
        assert state["query"] == "What is AI?"
        manager.get_session_metrics()["active_sessions"]   # 1
        manager.close()                                    # or use `with`
    """

    def __init__(
        self,
        cleanup_interval: float | None = 300,
        session_ttl: float = 7200,
        store: SessionStore | str | Any = None,
        max_state_bytes: int = 65536,
        max_events: int = 100,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._closed = True  # until fully built, so that __del__/close are safe
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._owns_store = False
        self.session_ttl = _check_positive("session_ttl", session_ttl)
        if cleanup_interval is not None:
            _check_positive("cleanup_interval", cleanup_interval)
        if isinstance(max_state_bytes, bool) or not isinstance(max_state_bytes, int):
            raise TypeError(f"max_state_bytes must be an int, not {type(max_state_bytes).__name__}")
        if max_state_bytes <= 0:
            raise ValueError(f"max_state_bytes must be positive, got {max_state_bytes}")
        if isinstance(max_events, bool) or not isinstance(max_events, int):
            raise TypeError(f"max_events must be an int, not {type(max_events).__name__}")
        if max_events < 0:
            raise ValueError(f"max_events must be >= 0, got {max_events}")
        if not callable(clock):
            raise TypeError("clock must be a callable returning seconds, like time.time")
        self.cleanup_interval = cleanup_interval
        self.max_state_bytes = max_state_bytes
        self.max_events = max_events
        self._clock = clock
        self._channel_incr: dict[str, dict[str, int]] = {}
        self._owns_store = not isinstance(store, SessionStore)
        self._store = open_store(store, max_events=max_events)
        # bound once: the hot paths call these on every operation
        self._store_update = self._store.update
        self._store_get = self._store.get
        self._store.max_events = max_events
        self._close_lock = threading.Lock()
        self._closed = False
        if cleanup_interval is None:
            warnings.warn(
                "NexusSessionManager(cleanup_interval=None) runs no cleanup thread: expired sessions "
                "stay in the store (a memory leak for the memory store) until you call "
                "cleanup_expired_sessions(). Pass cleanup_interval=300 (seconds) for automatic cleanup.",
                UserWarning,
                stacklevel=2,
            )
        else:
            self._thread = threading.Thread(
                target=_cleanup_loop,
                args=(weakref.ref(self), self._stop, float(cleanup_interval)),
                name="nexus-session-cleanup",
                daemon=True,
            )
            self._thread.start()

    # ------------------------------------------------------------------ helpers
    @property
    def store(self) -> SessionStore:
        """The session store in use."""
        return self._store

    @property
    def blocking(self) -> bool:
        """Whether calls into the store wait on I/O (the store's :attr:`SessionStore.blocking`).

        ``False`` for the memory store, ``True`` for SQLite (and Redis). An
        asyncio server runs a blocking manager's calls in worker threads so
        that a commit never stalls its event loop.

        Example::

            if manager.blocking:
                session = await loop.run_in_executor(pool, manager.get_session, sid)
            else:
                session = manager.get_session(sid)
        """
        return self._store.blocking

    @property
    def async_native(self) -> bool:
        """Whether the ``a*`` twins (:meth:`aget_session`, :meth:`aapply_session_update`,
        :meth:`acreate_session`, :meth:`adelete_session`) never block the event loop:
        ``True`` for a store that does not block (memory) or has native async twins
        (:attr:`SessionStore.async_native`: SQLite's I/O threads, Redis)."""
        store = self._store
        return store.async_native or not store.blocking

    def store_healthy(self) -> bool:
        """Whether the store answers now: its ``ping()`` if it has one (Redis), else ``True``.

        Never raises, so a health check can call it while the store's server is
        down and report ``degraded`` instead of failing.

        Example::

            status = "healthy" if manager.store_healthy() else "degraded"
        """
        ping = getattr(self._store, "ping", None)
        if ping is None:
            return True
        try:
            return bool(ping())
        except Exception:  # a third-party store's ping that raises means "not healthy"
            return False

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def _incr_for(self, channel: Any) -> dict[str, int]:
        """The counter increment of ``channel``, validated on first sight and then cached."""
        self._check_channel(channel)
        incr = self._channel_incr.get(channel)
        if incr is None:
            incr = {CHANNEL_PREFIX + channel: 1}
            if len(self._channel_incr) < 256:  # bounded: callers may invent channel names
                self._channel_incr[channel] = incr
        return incr

    @staticmethod
    def _check_channel(channel: Any) -> None:
        if channel.__class__ is not str or not channel:
            raise ValueError(
                f"channel must be a non-empty string such as 'api', 'cli' or 'mcp', got {channel!r}"
            )
        if not channel.isascii():
            _check_text("channel", channel, ValueError)

    # ------------------------------------------------------------------ lifecycle
    def create_session(
        self,
        user_id: str,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        *,
        channel: str | None = None,
    ) -> Session:
        """Create a session for ``user_id`` and return its snapshot.

        ``session_id`` defaults to a random URL-safe token; an id already in
        use by a live session raises ``ValueError``. ``metadata`` is a
        JSON-serialisable dict stored with the session. ``ttl`` overrides the
        manager's ``session_ttl`` for this session. ``channel`` optionally
        names the creating channel.

        Example::

            s = manager.create_session("user-123", metadata={"plan": "pro"}, ttl=600)
            s.ttl        # 600
        """
        record, now, event, incr, session = self._new_session(user_id, session_id, metadata, ttl, channel)
        if not self._store.create(record, now, event, incr):
            raise InputValidationError(f"Session {record.session_id!r} already exists", field="session_id")
        return session

    async def acreate_session(
        self,
        user_id: str,
        session_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        *,
        channel: str | None = None,
    ) -> Session:
        """:meth:`create_session`, awaited on an event loop (the store's :meth:`acreate`).

        Example::

            session = await manager.acreate_session("user-123", channel="api")
        """
        record, now, event, incr, session = self._new_session(user_id, session_id, metadata, ttl, channel)
        if not await self._store.acreate(record, now, event, incr):
            raise InputValidationError(f"Session {record.session_id!r} already exists", field="session_id")
        return session

    def _new_session(
        self,
        user_id: str,
        session_id: str | None,
        metadata: Mapping[str, Any] | None,
        ttl: float | None,
        channel: str | None,
    ) -> tuple[SessionRecord, float, EventFields, dict[str, int] | None, Session]:
        """The checked record of a new session and what its ``store.create`` call needs."""
        if not isinstance(user_id, str) or not user_id.strip():
            raise InputValidationError(
                f"user_id must be a non-empty string, got {user_id!r}", field="user_id"
            )
        _check_text("user_id", user_id)
        if session_id is None:
            sid = _new_session_id()
        elif (
            not isinstance(session_id, str)
            or not session_id.strip()
            or len(session_id) > _MAX_ID_LENGTH
        ):
            raise InputValidationError(
                f"session_id must be a non-empty string of at most {_MAX_ID_LENGTH} characters, "
                f"got {session_id!r}",
                field="session_id",
            )
        else:
            _check_text("session_id", session_id)
            sid = session_id
        if ttl is not None:
            try:
                _check_positive("ttl", ttl)
            except (TypeError, ValueError) as exc:
                raise InputValidationError(str(exc), field="ttl") from None
        incr = self._incr_for(channel) if channel is not None else None
        if metadata is None or (isinstance(metadata, Mapping) and not metadata):
            meta_json = "{}"
            meta: dict[str, Any] = {}
        elif not isinstance(metadata, Mapping):
            raise InputValidationError(
                f"metadata must be a dict, not {type(metadata).__name__}", field="metadata"
            )
        else:
            try:
                raw = encode_json_bytes(dict(metadata))
            except _ENCODE_ERRORS as exc:
                raise InputValidationError(
                    f"metadata must be JSON-serialisable: {exc}", field="metadata"
                ) from None
            if len(raw) > self.max_state_bytes:
                raise InputValidationError(
                    f"metadata is {len(raw):,} bytes as JSON, over the "
                    f"{self.max_state_bytes:,}-byte limit (max_state_bytes)",
                    field="metadata",
                )
            meta_json = raw.decode()
            meta = decode_json(meta_json)
        now = self._clock()
        effective_ttl = ttl if ttl is not None else self.session_ttl
        channels = [channel] if channel is not None else []
        record = SessionRecord(
            sid, user_id, now, now, now + effective_ttl, ttl, meta_json, channels, {}, "{}"
        )
        session = Session(
            sid, user_id, now, now, now + effective_ttl, effective_ttl, list(channels), meta, {}, {}
        )
        return record, now, (now, channel, "create", ()), incr, session

    def update_session_state(
        self, session_id: str, updates: Mapping[str, Any], channel: str = "api"
    ) -> dict[str, Any]:
        """Merge ``updates`` into the session's state (top-level keys) and return the new state.

        Atomic: a concurrent update of other keys, from this or another
        process (SQLite store), is never lost. Records ``channel`` as the writer
        of each key and refreshes the session's expiry. The returned dict is
        the caller's own: it shares nothing with the store.

        Raises ``SessionNotFound`` (a ``KeyError``) for an unknown or expired
        session, ``TypeError`` if ``updates`` is not a dict, and
        ``SessionStateError`` (a ``ValueError``) if the merged state is not
        JSON-serialisable (see :mod:`nexus_lab.sessions.models` for the rules:
        no NaN, string keys only, no lone surrogates) or is over
        ``max_state_bytes``; the stored state is then unchanged.

        Example::

            manager.update_session_state(sid, {"query": "What is AI?"}, channel="api")
        """
        if updates.__class__ is not dict:
            if not isinstance(updates, Mapping):
                raise TypeError(f"updates must be a dict, not {type(updates).__name__}")
            updates = dict(updates)
        try:  # the common case: a channel seen before (validated then)
            incr = self._channel_incr[channel]
        except (KeyError, TypeError):
            incr = self._incr_for(channel)
        now = self._clock()
        limit = self.max_state_bytes
        default_ttl = self.session_ttl

        # One closure per call: the store's atomic read-modify-write needs a callable, and a
        # closure is the cheapest one that carries this call's values.
        def mutate(rec: SessionRecord) -> dict[str, Any]:
            try:  # one decode and one encoding: the JSON check, size check and stored form
                merged, rec.state_json = merge_json(rec.state_json, updates, limit)
            except _ENCODE_ERRORS as exc:  # raised before rec changed: nothing is written
                raise _state_error(exc) from None
            # the bookkeeping of a write, inline (this is the hot path; apply's twin below)
            rec.last_accessed = now
            ttl = rec.ttl
            rec.expires_at = now + (default_ttl if ttl is None else ttl)
            writers = rec.writers
            stamp = (channel, now)
            for key in updates:
                writers[key] = stamp
            if channel not in rec.channels:
                rec.channels.append(channel)
            return merged

        event = (now, channel, "update", tuple(updates))  # EventFields: a tuple is cheapest
        return self._store_update(session_id, mutate, now, event, incr)

    def apply_session_update(
        self,
        session_id: str,
        compute: Callable[[dict[str, Any]], Mapping[str, Any]],
        channel: str = "api",
        *,
        pure: bool = False,
    ) -> dict[str, Any]:
        """Like :meth:`update_session_state`, with the updates computed from the
        current state inside the same atomic read-modify-write.

        Use it for counters and histories that several channels may update at
        once (the platform does, for ``turns`` and ``history``). ``compute``
        receives a private copy of the state and returns the keys to merge; it
        may run more than once on a store that retries (Redis), so keep it pure.
        It also slides the session's expiry and records ``channel``, so a read
        with ``get_session(..., touch=False)`` before it is all a call needs.

        ``pure=True`` promises that ``compute`` does not change the state it is
        given (it builds new values instead), so the state it read is merged
        and stored without decoding it a second time. By default an edit
        ``compute`` makes in place to a key it does not return is not stored.

        Example::

            manager.apply_session_update(sid, lambda s: {"turns": s.get("turns", 0) + 1})
        """
        return self._store_update(*self._apply_call(session_id, compute, channel, pure))

    async def aapply_session_update(
        self,
        session_id: str,
        compute: Callable[[dict[str, Any]], Mapping[str, Any]],
        channel: str = "api",
        *,
        pure: bool = False,
    ) -> dict[str, Any]:
        """:meth:`apply_session_update`, awaited on an event loop (the store's :meth:`aupdate`).

        ``compute`` may run on the store's I/O thread, so it must be pure, as always.

        Example::

            await manager.aapply_session_update(sid, lambda s: {"turns": s.get("turns", 0) + 1})
        """
        return await self._store.aupdate(*self._apply_call(session_id, compute, channel, pure))

    def _apply_call(
        self,
        session_id: str,
        compute: Callable[[dict[str, Any]], Mapping[str, Any]],
        channel: str,
        pure: bool = False,
    ) -> tuple[str, Callable[[SessionRecord], dict[str, Any]], float, EventFields, dict[str, int]]:
        """The ``store.update`` arguments of :meth:`apply_session_update`."""
        if not callable(compute):
            raise TypeError(f"compute must be callable, not {type(compute).__name__}")
        try:
            incr = self._channel_incr[channel]
        except (KeyError, TypeError):
            incr = self._incr_for(channel)
        now = self._clock()
        limit = self.max_state_bytes
        default_ttl = self.session_ttl
        event = [now, channel, "update", ()]  # keys filled in by mutate

        def mutate(rec: SessionRecord) -> dict[str, Any]:
            text = rec.state_json
            state = decode_json(text)
            upd = compute(state)
            if upd.__class__ is not dict:
                if not isinstance(upd, Mapping):
                    raise TypeError(f"compute must return a dict, not {type(upd).__name__}")
                upd = dict(upd)
            # Unless compute is pure, a second decode (in merge_json), not compute's copy:
            # edits compute made in place to keys it did not return must not be stored.
            try:
                merged, rec.state_json = merge_json(text, upd, limit, state if pure else None)
            except _ENCODE_ERRORS as exc:
                raise _state_error(exc) from None
            rec.last_accessed = now
            ttl = rec.ttl
            rec.expires_at = now + (default_ttl if ttl is None else ttl)
            writers = rec.writers
            stamp = (channel, now)
            for key in upd:
                writers[key] = stamp
            if channel not in rec.channels:
                rec.channels.append(channel)
            event[3] = tuple(upd)  # known only now; the store logs the event after mutate
            return merged

        return session_id, mutate, now, event, incr

    def get_session_state(
        self, session_id: str, channel: str | None = None, *, touch: bool = True
    ) -> dict[str, Any]:
        """A deep copy of the session's state; ``{}`` if unknown or expired.

        By default the read refreshes the expiry and, with ``channel``, is
        recorded (event, channel list, channel activity): one write. With
        ``touch=False`` it is a pure read that writes nothing.

        Example::

            state = manager.get_session_state(sid, channel="cli")
            state = manager.get_session_state(sid, touch=False)   # no write at all
        """
        if not touch:
            if channel is not None:
                self._check_channel(channel)
            rec = self._store_get(session_id, self._clock())
            return {} if rec is None else decode_json(rec.state_json)
        incr = self._incr_for(channel) if channel is not None else None
        now = self._clock()
        default_ttl = self.session_ttl

        def touch_record(rec: SessionRecord) -> str:
            rec.last_accessed = now
            ttl = rec.ttl
            rec.expires_at = now + (default_ttl if ttl is None else ttl)
            if channel is not None and channel not in rec.channels:
                rec.channels.append(channel)
            return rec.state_json

        try:
            if channel is None:
                text = self._store_update(session_id, touch_record, now)
            else:
                text = self._store_update(
                    session_id, touch_record, now, (now, channel, "read", ()), incr
                )
        except SessionNotFound:
            return {}
        return decode_json(text)

    def get_session(
        self,
        session_id: str,
        channel: str | None = None,
        *,
        user_id: str | None = None,
        touch: bool = True,
    ) -> Session | None:
        """A snapshot of the session, state included, or ``None`` if unknown or expired.

        ``touch=True`` (the default) refreshes the expiry and, with ``channel``,
        records the read as :meth:`get_session_state` does: one write.
        ``touch=False`` is one pure read (``store.get``): nothing is written,
        recorded or slid, and ``channel`` is only validated.

        With ``user_id`` a session of another user is ``None`` too, and nothing
        about it is touched or recorded in either mode.

        The platform reads with ``touch=False`` and lets the update after the
        call (:meth:`apply_session_update`) slide the expiry and record the
        channel, in that one transaction.

        Example::

            session = manager.get_session(sid, channel="api", user_id="alice", touch=False)
            state = session.state if session else {}
            # ... run the agent ...
            manager.apply_session_update(sid, lambda cur: {"turns": cur.get("turns", 0) + 1},
                                         channel="api")
        """
        if not touch:
            if channel is not None:
                self._check_channel(channel)
            return self._visible(self._store_get(session_id, self._clock()), user_id)
        incr = self._incr_for(channel) if channel is not None else None
        now = self._clock()
        default_ttl = self.session_ttl

        def touch_record(rec: SessionRecord) -> SessionRecord:
            if user_id is not None and rec.user_id != user_id:
                raise SessionNotFound(session_id)  # before any change: nothing is written
            rec.last_accessed = now
            ttl = rec.ttl
            rec.expires_at = now + (default_ttl if ttl is None else ttl)
            if channel is not None and channel not in rec.channels:
                rec.channels.append(channel)
            return rec.copy()

        try:
            if channel is None:
                rec = self._store_update(session_id, touch_record, now)
            else:
                rec = self._store_update(
                    session_id, touch_record, now, (now, channel, "read", ()), incr
                )
        except SessionNotFound:
            return None
        return Session._from_snapshot(rec, default_ttl)

    async def aget_session(
        self,
        session_id: str,
        channel: str | None = None,
        *,
        user_id: str | None = None,
        touch: bool = False,
    ) -> Session | None:
        """``get_session(..., touch=False)`` awaited on an event loop: one pure read
        (the store's :meth:`aget`), nothing written. ``touch`` must stay ``False``
        (it is accepted so that both methods take the same arguments).

        Example::

            session = await manager.aget_session(sid, channel="api", user_id="alice")
        """
        if touch:
            raise ValueError("aget_session is a pure read; use get_session(..., touch=True) to touch")
        if channel is not None:
            self._check_channel(channel)
        return self._visible(await self._store.aget(session_id, self._clock()), user_id)

    def _visible(self, rec: SessionRecord | None, user_id: str | None) -> Session | None:
        """The snapshot of a record read purely, if it is there and ``user_id`` (if any) owns it."""
        if rec is None or (user_id is not None and rec.user_id != user_id):
            return None
        return Session._from_snapshot(rec, self.session_ttl)  # rec is ours: no 2nd copy

    def list_sessions(self, user_id: str | None = None) -> list[Session]:
        """Snapshots of the live sessions (of ``user_id`` if given), oldest first. Touches nothing."""
        ttl = self.session_ttl
        return [Session._from_snapshot(r, ttl) for r in self._store.list(user_id, self._clock())]

    def delete_session(self, session_id: str) -> bool:
        """Delete a live session and its events; ``False`` if unknown or already expired."""
        return self._store.delete(session_id, self._clock())

    async def adelete_session(self, session_id: str) -> bool:
        """:meth:`delete_session`, awaited on an event loop (the store's :meth:`adelete`)."""
        return await self._store.adelete(session_id, self._clock())

    def get_session_events(self, session_id: str) -> list[SessionEvent]:
        """The session's last ``max_events`` events, oldest first; ``[]`` if unknown or expired."""
        return self._store.events(session_id, self._clock())

    def cleanup_expired_sessions(self) -> int:
        """Remove every expired session now; returns how many were removed."""
        return self._store.delete_expired(self._clock())

    def get_session_metrics(self) -> dict[str, Any]:
        """Counters, without scanning sessions (O(number of channels)).

        ``active_sessions`` counts the sessions the store holds: an expired
        session is invisible at once but counted until cleanup removes it.

        Example::

            manager.get_session_metrics()
            # {'active_sessions': 1, 'total_created': 1, 'expired_cleaned': 0, 'deleted': 0,
            #  'channel_activity': {'api': 1, 'cli': 1}, 'store': 'memory'}
        """
        counters = self._store.counters()
        n = len(CHANNEL_PREFIX)
        return {
            "active_sessions": self._store.count(),
            "total_created": counters.get(COUNTER_CREATED, 0),
            "expired_cleaned": counters.get(COUNTER_EXPIRED, 0),
            "deleted": counters.get(COUNTER_DELETED, 0),
            "channel_activity": {
                k[n:]: v for k, v in counters.items() if k.startswith(CHANNEL_PREFIX)
            },
            "store": self._store.name,
        }

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop the cleanup thread and close the store if the manager opened it. Idempotent."""
        lock = getattr(self, "_close_lock", None)
        if lock is None:  # __init__ failed early
            stop = getattr(self, "_stop", None)
            if stop is not None:
                stop.set()
            return
        with lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=5)
        if self._owns_store:
            self._store.close()

    def __enter__(self) -> NexusSessionManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown or a half-built object
            pass

    def __repr__(self) -> str:
        return (
            f"NexusSessionManager(store={self._store.name!r}, session_ttl={self.session_ttl!r}, "
            f"cleanup_interval={self.cleanup_interval!r})"
        )
