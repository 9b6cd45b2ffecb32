"""NexusSessionManager behaviour (memory store unless a test says otherwise).

Covers the spec's session samples as written, TTL and sliding expiry with an
injected clock, the cleanup thread, deep copies, validation, events, metrics,
thread safety, and the upstream defects listed in ARCHITECTURE.md.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import warnings

import pytest

from nexus_lab.errors import SessionNotFound, SessionStateError
from nexus_lab.sessions import (
    MemorySessionStore,
    NexusSessionManager,
    Session,
    SessionEvent,
    SessionStore,
)


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def manager(clock: FakeClock):
    m = NexusSessionManager(cleanup_interval=300, session_ttl=100, clock=clock)
    yield m
    m.close()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ----------------------------------------------------------------------------- spec samples


def test_spec_session_management_pattern():
    manager = NexusSessionManager(cleanup_interval=300)
    try:
        session = manager.create_session(user_id="user-123")
        manager.update_session_state(
            session.session_id,
            {"query": "What is AI?", "source": "api"},
            channel="api",
        )
        state = manager.get_session_state(session.session_id, channel="cli")
        assert state["query"] == "What is AI?"
        assert state == {"query": "What is AI?", "source": "api"}
        assert manager.get_session(session.session_id).channels == ["api", "cli"]
    finally:
        manager.close()


def test_spec_session_lifecycle():
    manager = NexusSessionManager(
        cleanup_interval=300,  # 5 minutes
        session_ttl=7200,  # 2 hours
    )
    try:
        session = manager.create_session(user_id="user-123")
        manager.update_session_state(session.session_id, {"context": "..."}, channel="api")
        state = manager.get_session_state(session.session_id)
        assert state == {"context": "..."}
        cleaned = manager.cleanup_expired_sessions()
        assert cleaned == 0  # nothing has expired yet
        assert session.ttl == 7200
        assert session.expires_at == pytest.approx(session.created_at + 7200)
    finally:
        manager.close()


@pytest.mark.parametrize(
    ("interval", "ttl"),
    [(120, 1800), (600, 14400), (300, 7200), (1800, 86400), (3600, 172800)],
    ids=["high-traffic", "low-traffic", "web-chat", "background-jobs", "long-running"],
)
def test_spec_configurations_by_use_case(interval, ttl):
    session_manager = NexusSessionManager(cleanup_interval=interval, session_ttl=ttl)
    try:
        assert session_manager.cleanup_interval == interval
        assert session_manager.session_ttl == ttl
        s = session_manager.create_session(user_id="u")
        assert s.expires_at - s.created_at == pytest.approx(ttl)
        threads = [t for t in threading.enumerate() if t.name == "nexus-session-cleanup"]
        assert threads and all(t.daemon for t in threads)
    finally:
        session_manager.close()


def get_session_safely(manager, session_id):
    """The spec's pattern, as written (with a module logger)."""
    logger = logging.getLogger("test")
    state = manager.get_session_state(session_id)
    if state is None or state == {}:
        logger.warning(f"Session {session_id} not found, creating new session")
        return {"context": "new_session"}
    return state


def test_spec_get_session_safely(manager, clock):
    assert get_session_safely(manager, "no-such-session") == {"context": "new_session"}
    s = manager.create_session(user_id="user-123")
    manager.update_session_state(s.session_id, {"context": "kept"}, channel="api")
    assert get_session_safely(manager, s.session_id) == {"context": "kept"}
    clock.advance(101)
    assert get_session_safely(manager, s.session_id) == {"context": "new_session"}


def test_spec_integration_cross_channel(manager):
    session = manager.create_session(user_id="test_user")
    manager.update_session_state(session.session_id, {"query": "test"}, channel="api")
    state = manager.get_session_state(session.session_id, channel="cli")
    assert state["query"] == "test"


def test_spec_post_deployment_metrics(manager):
    manager.create_session(user_id="a")
    session_metrics = manager.get_session_metrics()
    assert session_metrics["active_sessions"] == 1
    assert not session_metrics["active_sessions"] > 1000


# ----------------------------------------------------------------------------- create


def test_create_session_attributes(manager, clock):
    s = manager.create_session("user-123", metadata={"plan": "pro", "tags": ["a"]})
    assert isinstance(s, Session)
    assert isinstance(s.session_id, str) and len(s.session_id) >= 16
    assert s.user_id == "user-123"
    assert s.created_at == s.last_accessed == clock.now
    assert s.expires_at == clock.now + 100
    assert s.ttl == 100
    assert s.channels == []
    assert s.metadata == {"plan": "pro", "tags": ["a"]}
    assert s.state == {}
    fetched = manager.get_session(s.session_id)
    assert fetched.metadata == {"plan": "pro", "tags": ["a"]}


def test_metadata_is_copied_and_validated(manager):
    meta = {"tags": ["a"]}
    s = manager.create_session("u", metadata=meta)
    meta["tags"].append("b")
    s.metadata["tags"].append("c")
    assert manager.get_session(s.session_id).metadata == {"tags": ["a"]}
    with pytest.raises(ValueError, match="metadata"):
        manager.create_session("u", metadata={"x": {1, 2}})
    with pytest.raises(ValueError, match="metadata"):
        manager.create_session("u", metadata=["not", "a", "dict"])


def test_session_ids_are_unique_and_random(manager):
    ids = {manager.create_session("u").session_id for _ in range(500)}
    assert len(ids) == 500


@pytest.mark.parametrize("bad", ["", "   ", None, 123, b"user"])
def test_bad_user_id_is_a_value_error(manager, bad):
    with pytest.raises(ValueError, match="user_id"):
        manager.create_session(bad)
    assert manager.get_session_metrics()["total_created"] == 0


def test_duplicate_explicit_session_id(manager, clock):
    manager.create_session("u", session_id="fixed")
    with pytest.raises(ValueError, match="already exists"):
        manager.create_session("other", session_id="fixed")
    assert manager.get_session("fixed").user_id == "u"
    clock.advance(101)  # the old one expired: the id may be reused
    s = manager.create_session("other", session_id="fixed")
    assert s.user_id == "other"
    m = manager.get_session_metrics()
    assert m["total_created"] == 2 and m["expired_cleaned"] == 1 and m["active_sessions"] == 1


@pytest.mark.parametrize("bad", ["", 5, None.__class__])
def test_bad_explicit_session_id(manager, bad):
    with pytest.raises(ValueError, match="session_id"):
        manager.create_session("u", session_id=bad)


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "60", True])
def test_bad_session_ttl_override(manager, bad):
    with pytest.raises(ValueError, match="ttl"):
        manager.create_session("u", ttl=bad)


# ----------------------------------------------------------------------------- repr


def test_repr_is_stable_without_ids_or_times(manager, clock):
    a = manager.create_session("user-123")
    b = manager.create_session("user-123")
    for s in (a, b):
        manager.update_session_state(s.session_id, {"query": "hi"}, channel="api")
        clock.advance(7)
        manager.get_session_state(s.session_id, channel="cli")
    ra, rb = repr(manager.get_session(a.session_id)), repr(manager.get_session(b.session_id))
    assert ra == rb == "Session(user_id='user-123', channels=['api', 'cli'], keys=['query'])"
    assert a.session_id not in ra and "0x" not in ra and str(int(clock.now)) not in ra
    html = manager.get_session(a.session_id)._repr_html_()
    assert html.startswith("<table") and "user-123" in html and "api, cli" in html
    assert a.session_id not in html and str(int(clock.now)) not in html
    assert html == manager.get_session(b.session_id)._repr_html_()


def test_html_repr_escapes():
    s = Session("id", "<b>x</b>", 0.0, 0.0, 1.0, 1.0)
    assert "<b>x</b>" not in s._repr_html_() and "&lt;b&gt;" in s._repr_html_()


def test_event_repr_has_no_timestamp():
    e = SessionEvent(123456.789, "api", "update", ("a",))
    assert repr(e) == "SessionEvent(action='update', channel='api', keys=('a',))"
    assert e.to_dict() == {
        "timestamp": 123456.789,
        "channel": "api",
        "action": "update",
        "keys": ["a"],
    }


def test_manager_repr(manager):
    assert (
        repr(manager)
        == "NexusSessionManager(store='memory', session_ttl=100, cleanup_interval=300)"
    )


# ----------------------------------------------------------------------------- expiry


def test_ttl_expiry_makes_session_invisible_before_cleanup(manager, clock):
    s = manager.create_session("u")
    manager.update_session_state(s.session_id, {"a": 1})
    clock.advance(100.5)
    assert manager.get_session_state(s.session_id) == {}
    assert manager.get_session(s.session_id) is None
    assert manager.list_sessions() == []
    assert manager.list_sessions("u") == []
    assert manager.get_session_events(s.session_id) == []
    assert manager.delete_session(s.session_id) is False
    with pytest.raises(SessionNotFound):
        manager.update_session_state(s.session_id, {"a": 2})
    # still held until cleanup runs, then counted
    assert manager.get_session_metrics()["active_sessions"] == 1
    assert manager.cleanup_expired_sessions() == 1
    m = manager.get_session_metrics()
    assert m["active_sessions"] == 0 and m["expired_cleaned"] == 1 and m["deleted"] == 0


def test_expiry_boundary(manager, clock):
    s = manager.create_session("u")
    clock.advance(99.999)
    assert manager.get_session(s.session_id) is not None  # touched: expiry slides
    clock.advance(100)
    assert manager.get_session(s.session_id) is None  # expires_at <= now: gone


def test_sliding_expiry_on_get_and_update(manager, clock):
    s = manager.create_session("u")
    for _ in range(5):  # 5 x 80 s = 400 s > ttl, alive because every access slides
        clock.advance(80)
        manager.get_session_state(s.session_id)
    assert manager.get_session(s.session_id).expires_at == clock.now + 100
    for _ in range(3):
        clock.advance(80)
        manager.update_session_state(s.session_id, {"n": 1}, channel="api")
    snap = manager.get_session(s.session_id)
    assert snap.last_accessed == clock.now and snap.expires_at == clock.now + 100
    clock.advance(100)
    assert manager.get_session_state(s.session_id) == {}


def test_listing_does_not_slide_expiry(manager, clock):
    s = manager.create_session("u")
    clock.advance(60)
    assert len(manager.list_sessions()) == 1
    assert manager.get_session_events(s.session_id)
    clock.advance(41)
    assert manager.list_sessions() == []


def test_per_session_ttl_override(manager, clock):
    short = manager.create_session("u", ttl=10)
    long = manager.create_session("u", ttl=1000)
    default = manager.create_session("u")
    assert (short.ttl, long.ttl, default.ttl) == (10, 1000, 100)
    clock.advance(9)
    manager.get_session_state(short.session_id)  # slides by its own ttl
    assert manager.get_session(short.session_id).expires_at == clock.now + 10
    clock.advance(11)
    assert manager.get_session(short.session_id) is None
    clock.advance(90)
    assert manager.get_session(default.session_id) is None
    assert manager.get_session(long.session_id) is not None
    assert manager.cleanup_expired_sessions() == 2


# ----------------------------------------------------------------------------- cleanup thread


def test_cleanup_thread_removes_expired_sessions(clock):
    m = NexusSessionManager(cleanup_interval=0.05, session_ttl=10, clock=clock)
    try:
        thread = m._thread
        assert thread is not None and thread.name == "nexus-session-cleanup" and thread.daemon
        assert thread.is_alive()
        keep = m.create_session("u", ttl=1000)
        for _ in range(3):
            m.create_session("u")
        assert m.store.count() == 4
        clock.advance(11)
        assert wait_for(lambda: m.store.count() == 1), (
            "cleanup thread did not remove expired sessions"
        )
        metrics = m.get_session_metrics()
        assert metrics["expired_cleaned"] == 3 and metrics["active_sessions"] == 1
        assert m.get_session(keep.session_id) is not None
    finally:
        m.close()
    assert not thread.is_alive()


def test_cleanup_thread_survives_a_failing_store(clock, caplog):
    class Flaky(MemorySessionStore):
        calls = 0

        def delete_expired(self, now):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("boom")
            return super().delete_expired(now)

    store = Flaky()
    m = NexusSessionManager(cleanup_interval=0.05, session_ttl=10, clock=clock, store=store)
    try:
        m.create_session("u")
        clock.advance(11)
        with caplog.at_level(logging.ERROR, logger="nexus_lab.sessions.manager"):
            assert wait_for(lambda: store.count() == 0)
        assert Flaky.calls >= 2
        assert "session cleanup failed" in caplog.text
    finally:
        m.close()


def test_cleanup_interval_none_warns_and_runs_no_thread():
    before = {t.ident for t in threading.enumerate() if t.name == "nexus-session-cleanup"}
    with pytest.warns(UserWarning, match="cleanup_expired_sessions"):
        m = NexusSessionManager(cleanup_interval=None)
    try:
        assert m._thread is None
        after = {t.ident for t in threading.enumerate() if t.name == "nexus-session-cleanup"}
        assert after <= before
    finally:
        m.close()


def test_no_warning_with_an_interval():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NexusSessionManager(cleanup_interval=300).close()


@pytest.mark.parametrize("bad", [0, -1, -0.5, float("nan"), float("inf")])
def test_non_positive_cleanup_interval_is_a_value_error(bad):
    with pytest.raises(ValueError, match="cleanup_interval"):
        NexusSessionManager(cleanup_interval=bad)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"session_ttl": 0}, ValueError),
        ({"session_ttl": -1}, ValueError),
        ({"session_ttl": "7200"}, TypeError),
        ({"cleanup_interval": "300"}, TypeError),
        ({"max_state_bytes": 0}, ValueError),
        ({"max_events": -1}, ValueError),
        ({"store": "ftp://nope"}, ValueError),
    ],
)
def test_bad_manager_config(kwargs, exc):
    with pytest.raises(exc):
        NexusSessionManager(**kwargs)


def test_close_is_idempotent_and_with_statement():
    with NexusSessionManager(cleanup_interval=0.05) as m:
        thread = m._thread
        assert thread.is_alive()
    assert m.closed and not thread.is_alive()
    m.close()
    m.close()


def test_abandoned_manager_stops_its_thread():
    m = NexusSessionManager(cleanup_interval=0.05)
    thread = m._thread
    del m
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


# ----------------------------------------------------------------------------- state semantics


def test_update_merges_shallowly_and_returns_a_copy(manager):
    s = manager.create_session("u")
    r1 = manager.update_session_state(s.session_id, {"a": 1, "nested": {"x": 1}}, channel="api")
    assert r1 == {"a": 1, "nested": {"x": 1}}
    r2 = manager.update_session_state(s.session_id, {"b": 2, "nested": {"y": 2}}, channel="cli")
    assert r2 == {"a": 1, "b": 2, "nested": {"y": 2}}  # top-level keys replace, no deep merge
    r2["a"] = 99
    r2["nested"]["y"] = 99
    assert manager.get_session_state(s.session_id) == {"a": 1, "b": 2, "nested": {"y": 2}}


def test_get_returns_a_deep_copy(manager):
    s = manager.create_session("u")
    history = ["hello"]
    manager.update_session_state(s.session_id, {"history": history, "meta": {"n": 1}})
    history.append("mutated by caller after update")  # the caller's own object
    state = manager.get_session_state(s.session_id)
    state["history"].append("mutated by reader")
    state["meta"]["n"] = 42
    again = manager.get_session_state(s.session_id, channel="cli")
    assert again == {"history": ["hello"], "meta": {"n": 1}}
    assert again is not state and again["history"] is not state["history"]
    snap = manager.get_session(s.session_id)
    snap.state["history"].clear()
    snap.channels.append("evil")
    assert manager.get_session_state(s.session_id) == {"history": ["hello"], "meta": {"n": 1}}
    assert "evil" not in manager.get_session(s.session_id).channels


def test_writers_record_channel_and_time_per_key(manager, clock):
    s = manager.create_session("u")
    manager.update_session_state(s.session_id, {"a": 1, "b": 2}, channel="api")
    clock.advance(5)
    manager.update_session_state(s.session_id, {"b": 3}, channel="mcp")
    snap = manager.get_session(s.session_id)
    assert snap.writers == {"a": ("api", clock.now - 5), "b": ("mcp", clock.now)}
    assert snap.channels == ["api", "mcp"]


@pytest.mark.parametrize("bad", [["a", 1], None, "a=1", 42, {("a",): 1}.keys()])
def test_non_dict_updates_are_a_type_error(manager, bad):
    s = manager.create_session("u")
    with pytest.raises(TypeError, match="dict"):
        manager.update_session_state(s.session_id, bad)


@pytest.mark.parametrize(
    "bad_value",
    [{1, 2}, object(), float("nan"), float("inf"), b"bytes", {"deep": [1, {2, 3}]}],
    ids=["set", "object", "nan", "inf", "bytes", "nested-set"],
)
def test_non_json_state_is_rejected_and_state_kept(manager, bad_value):
    s = manager.create_session("u")
    manager.update_session_state(s.session_id, {"keep": [1, 2]}, channel="api")
    events_before = len(manager.get_session_events(s.session_id))
    with pytest.raises(SessionStateError, match="JSON") as info:
        manager.update_session_state(
            s.session_id, {"keep": "overwritten?", "bad": bad_value}, channel="cli"
        )
    assert isinstance(info.value, ValueError)
    assert manager.get_session_state(s.session_id) == {"keep": [1, 2]}
    assert len(manager.get_session_events(s.session_id)) == events_before
    assert "cli" not in manager.get_session(s.session_id).channels
    assert "cli" not in manager.get_session_metrics()["channel_activity"]


def test_circular_state_is_rejected(manager):
    s = manager.create_session("u")
    loop: list = []
    loop.append(loop)
    with pytest.raises(SessionStateError):
        manager.update_session_state(s.session_id, {"loop": loop})
    assert manager.get_session_state(s.session_id) == {}


def test_non_str_keys_are_rejected(manager):
    s = manager.create_session("u")
    with pytest.raises(SessionStateError, match="keys"):
        manager.update_session_state(s.session_id, {1: "a"})


def test_oversize_state_is_rejected_and_old_state_intact(clock):
    with NexusSessionManager(cleanup_interval=300, max_state_bytes=200, clock=clock) as m:
        s = m.create_session("u")
        m.update_session_state(s.session_id, {"summary": "short"})
        with pytest.raises(SessionStateError) as info:
            m.update_session_state(s.session_id, {"full_history": ["message"] * 100})
        msg = str(info.value)
        assert "200" in msg and "bytes" in msg and "max_state_bytes" in msg
        assert m.get_session_state(s.session_id) == {"summary": "short"}
        # the limit applies to the merged state, not to one update
        m.update_session_state(s.session_id, {"a": "x" * 100})
        with pytest.raises(SessionStateError):
            m.update_session_state(s.session_id, {"b": "y" * 100})
        assert set(m.get_session_state(s.session_id)) == {"summary", "a"}


def test_spec_good_state_fits_and_large_objects_do_not():
    with NexusSessionManager(cleanup_interval=300) as session_manager:
        session_id = session_manager.create_session("u").session_id
        session_manager.update_session_state(
            session_id,
            {"summary": "User asked about AI...", "message_count": 100},
            channel="api",
        )
        with pytest.raises(SessionStateError):
            session_manager.update_session_state(
                session_id,
                {"raw_embeddings": [[0.123456789] * 1536 for _ in range(10)]},
                channel="api",
            )
        assert session_manager.get_session_state(session_id)["message_count"] == 100


def test_bad_channel(manager):
    s = manager.create_session("u")
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="channel"):
            manager.update_session_state(s.session_id, {"a": 1}, channel=bad)
    with pytest.raises(ValueError, match="channel"):
        manager.get_session_state(s.session_id, channel="")


def test_unknown_session(manager):
    with pytest.raises(SessionNotFound) as info:
        manager.update_session_state("nope", {"a": 1})
    assert isinstance(info.value, KeyError)
    assert info.value.session_id == "nope"
    assert "nope" in str(info.value)
    with pytest.raises(KeyError):
        manager.update_session_state("nope", {"a": 1})
    assert manager.get_session_state("nope") == {}
    assert manager.get_session_state("nope", channel="cli") == {}
    assert manager.get_session("nope") is None
    assert manager.get_session_events("nope") == []
    assert manager.delete_session("nope") is False
    assert manager.get_session_metrics()["channel_activity"] == {}


# ----------------------------------------------------------------------------- events


def test_events_are_recorded(manager, clock):
    s = manager.create_session("u", channel="api")
    clock.advance(1)
    manager.update_session_state(s.session_id, {"q": 1, "r": 2}, channel="api")
    clock.advance(1)
    manager.get_session_state(s.session_id, channel="cli")
    manager.get_session_state(s.session_id)  # no channel: not logged
    events = manager.get_session_events(s.session_id)
    assert [(e.action, e.channel, e.keys) for e in events] == [
        ("create", "api", ()),
        ("update", "api", ("q", "r")),
        ("read", "cli", ()),
    ]
    assert [e.timestamp for e in events] == [clock.now - 2, clock.now - 1, clock.now]
    events[0].action = "tampered"
    assert manager.get_session_events(s.session_id)[0].action == "create"


def test_events_are_bounded(clock):
    with NexusSessionManager(cleanup_interval=300, max_events=5, clock=clock) as m:
        s = m.create_session("u")
        for i in range(20):
            m.update_session_state(s.session_id, {f"k{i}": i}, channel="api")
        events = m.get_session_events(s.session_id)
        assert len(events) == 5
        assert [e.keys for e in events] == [(f"k{i}",) for i in range(15, 20)]


def test_events_dropped_with_deleted_session(manager):
    s = manager.create_session("u")
    manager.update_session_state(s.session_id, {"a": 1})
    assert manager.delete_session(s.session_id) is True
    assert manager.get_session_events(s.session_id) == []


# ----------------------------------------------------------------------------- metrics, list, delete


def test_metrics_counters(manager, clock):
    a = manager.create_session("alice")
    b = manager.create_session("bob", ttl=10)
    c = manager.create_session("carol")
    manager.update_session_state(a.session_id, {"x": 1}, channel="api")
    manager.update_session_state(a.session_id, {"y": 1}, channel="api")
    manager.get_session_state(a.session_id, channel="cli")
    manager.get_session_state(c.session_id, channel="mcp")
    manager.get_session_state(c.session_id)
    assert manager.delete_session(c.session_id)
    clock.advance(11)
    assert manager.get_session_state(b.session_id) == {}
    assert manager.cleanup_expired_sessions() == 1
    assert manager.get_session_metrics() == {
        "active_sessions": 1,
        "total_created": 3,
        "expired_cleaned": 1,
        "deleted": 1,
        "channel_activity": {"api": 2, "cli": 1, "mcp": 1},
        "store": "memory",
    }


def test_metrics_never_scan_sessions(clock):
    class NoScan(MemorySessionStore):
        def list(self, user_id, now):
            raise AssertionError("get_session_metrics scanned the sessions")

        def delete_expired(self, now):
            raise AssertionError("get_session_metrics scanned the sessions")

    with NexusSessionManager(cleanup_interval=300, store=NoScan(), clock=clock) as m:
        for _ in range(50):
            m.create_session("u")
        assert m.get_session_metrics()["active_sessions"] == 50


def test_list_and_delete(manager, clock):
    a1 = manager.create_session("alice")
    clock.advance(1)
    b1 = manager.create_session("bob")
    clock.advance(1)
    a2 = manager.create_session("alice")
    assert [s.session_id for s in manager.list_sessions()] == [
        a1.session_id,
        b1.session_id,
        a2.session_id,
    ]
    assert [s.session_id for s in manager.list_sessions("alice")] == [a1.session_id, a2.session_id]
    assert manager.list_sessions("nobody") == []
    assert all(isinstance(s, Session) for s in manager.list_sessions())
    assert manager.delete_session(a1.session_id) is True
    assert manager.delete_session(a1.session_id) is False
    assert manager.get_session_state(a1.session_id) == {}
    assert [s.session_id for s in manager.list_sessions("alice")] == [a2.session_id]
    m = manager.get_session_metrics()
    assert m["deleted"] == 1 and m["active_sessions"] == 2


# ----------------------------------------------------------------------------- threads


def test_thread_concurrency_no_lost_updates():
    with NexusSessionManager(cleanup_interval=0.05, max_events=1000) as m:
        s = m.create_session("u")
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                barrier.wait()
                for i in range(200):
                    m.update_session_state(s.session_id, {f"t{t}-k{i}": i}, channel=f"ch{t}")
                    if i % 50 == 0:
                        m.get_session_state(s.session_id, channel=f"ch{t}")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        state = m.get_session_state(s.session_id)
        assert len(state) == 1600
        assert all(state[f"t{t}-k{i}"] == i for t in range(8) for i in range(200))
        metrics = m.get_session_metrics()
        assert metrics["channel_activity"] == {f"ch{t}": 204 for t in range(8)}
        assert len(m.get_session_events(s.session_id)) == 1000
        writers = m.get_session(s.session_id).writers
        assert all(writers[f"t{t}-k{i}"][0] == f"ch{t}" for t in range(8) for i in range(200))


def test_concurrent_creates_count_exactly():
    with NexusSessionManager(cleanup_interval=300) as m:

        def work() -> None:
            for _ in range(250):
                m.create_session("u")

        threads = [threading.Thread(target=work) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        metrics = m.get_session_metrics()
        assert metrics["total_created"] == metrics["active_sessions"] == 2000
        assert len(m.list_sessions("u")) == 2000


# ----------------------------------------------------------------------------- stores wiring


def test_default_store_is_memory_and_passed_store_stays_open(clock):
    class Tracking(MemorySessionStore):
        closed = False

        def close(self):
            Tracking.closed = True

    store = Tracking()
    with NexusSessionManager(cleanup_interval=300, store=store, clock=clock) as m:
        assert m.store is store and isinstance(store, SessionStore)
    assert Tracking.closed is False  # the caller owns a store it passed in
    with NexusSessionManager(cleanup_interval=300) as m2:
        assert isinstance(m2.store, MemorySessionStore)


def test_store_healthy_asks_the_store_and_never_raises(clock):
    class Pinging(MemorySessionStore):
        answer: object = True

        def ping(self):
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

    with NexusSessionManager(cleanup_interval=300, clock=clock) as m:
        assert not hasattr(m.store, "ping") and m.store_healthy() is True  # nothing to ask
    store = Pinging()
    with NexusSessionManager(cleanup_interval=300, store=store, clock=clock) as m:
        assert m.store_healthy() is True
        store.answer = False
        assert m.store_healthy() is False
        store.answer = ConnectionError("down")
        assert m.store_healthy() is False


def test_cleanup_thread_logs_an_unavailable_store_without_a_traceback(clock, caplog):
    from nexus_lab.errors import ServiceUnavailable

    second_round = threading.Event()  # set once the first round's failure has been logged

    class Down(MemorySessionStore):
        calls = 0

        def delete_expired(self, now):
            Down.calls += 1
            if Down.calls == 2:
                second_round.set()
            raise ServiceUnavailable("Redis session store at redis://h:1/0: delete_expired failed")

    with caplog.at_level(logging.WARNING, logger="nexus_lab.sessions.manager"):
        m = NexusSessionManager(cleanup_interval=0.05, clock=clock, store=Down())
    try:
        with caplog.at_level(logging.WARNING, logger="nexus_lab.sessions.manager"):
            assert second_round.wait(60)
        assert "session cleanup skipped" in caplog.text and "delete_expired failed" in caplog.text
        assert m._thread.is_alive()
        assert all(r.exc_info is None for r in caplog.records if "skipped" in r.getMessage())
    finally:
        m.close()


def test_two_managers_share_one_store(clock):
    store = MemorySessionStore()
    with (
        NexusSessionManager(cleanup_interval=300, store=store, clock=clock) as api,
        NexusSessionManager(cleanup_interval=300, store=store, clock=clock) as cli,
    ):
        s = api.create_session("u")
        api.update_session_state(s.session_id, {"q": "hi"}, channel="api")
        assert cli.get_session_state(s.session_id, channel="cli") == {"q": "hi"}
        assert cli.get_session_metrics()["channel_activity"] == {"api": 1, "cli": 1}


def test_generated_ids_never_look_like_a_command_line_option():
    # one in 64 token_urlsafe ids starts with "-", which argparse and click read as an option
    with NexusSessionManager(cleanup_interval=300) as m:
        ids = [m.create_session(user_id="u").session_id for _ in range(3000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == 3000 and all(len(i) == 22 for i in ids)


# ----------------------------------------------------------------------------- JSON codec

import enum  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from collections import OrderedDict  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402

from nexus_lab.sessions import models  # noqa: E402

ENCODERS = {"default": models.encode_json_bytes, "stdlib": models._encode_std}


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Score(float):
    pass


@dataclass
class Point:
    x: int = 1


def _nested(depth: int) -> list:
    root: list = []
    node = root
    for _ in range(depth - 1):
        node.append([])
        node = node[0]
    return root


_loop: list = []
_loop.append(_loop)


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"a": float("nan")}, "not JSON compliant"),
        ([float("inf")], "not JSON compliant"),
        ([Score("nan")], "not JSON compliant"),
        ({"a": "x\ud800"}, "lone surrogate"),
        ({"\udc00": 1}, "lone surrogate"),
        ({"a": {1: 2}}, "keys must be strings"),
        ({"a": {None: 2}}, "keys must be strings"),
        ({1.5: 2}, "keys must be strings"),
        ({"a": {1, 2}}, "not JSON serializable"),
        ({"a": b"bytes"}, "not JSON serializable"),
        ({"a": datetime(2026, 1, 1)}, "not JSON serializable"),
        ({"a": Point()}, "not JSON serializable"),
        ({"a": object()}, "not JSON serializable"),
        (_nested(255), "nested more than 254"),
        (_loop, "nested more than 254"),
    ],
    ids=[
        "nan", "inf", "float-subclass-nan", "surrogate", "surrogate-key", "int-key", "none-key",
        "float-key", "set", "bytes", "datetime", "dataclass", "object", "too-deep", "circular",
    ],
)
def test_codec_refuses_the_same_things_either_way(encoder, value, problem):
    with pytest.raises((TypeError, ValueError), match=problem):
        ENCODERS[encoder](value)


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": [1, 2.5, None, True, "é\n", -0.0, 1e16, 1e-7]}, None),
        ({"big": 2**64, "neg": -(2**63) - 1, "u64": 2**64 - 1}, None),
        ((1, "two"), [1, "two"]),
        (OrderedDict(a=1), {"a": 1}),
        ({"u": uuid.UUID(int=5)}, {"u": "00000000-0000-0000-0000-000000000005"}),
        ({"c": Color.RED, "l": Level.HIGH}, {"c": "red", "l": 3}),
        ({"s": Score(2.5)}, {"s": 2.5}),
        (_nested(254), _nested(254)),
        ({"text": "null", "n": None}, None),
    ],
    ids=["plain", "big-ints", "tuple", "ordered", "uuid", "enum", "float-sub", "depth-254", "null"],
)
def test_codec_accepts_the_same_things_either_way(encoder, value, expected):
    raw = ENCODERS[encoder](value)
    assert isinstance(raw, bytes)
    back = models.decode_json(raw.decode())
    assert back == (value if expected is None else expected)
    assert models.decode_json(models.encode_json(value)) == back


def test_codec_size_is_utf8_bytes_and_marks_big_ints():
    assert models.encode_json_bytes({"city": "Zürich"}) == '{"city":"Zürich"}'.encode()
    assert models.encode_json({"n": 2**70}).startswith(" ")  # read back exactly, not as a float
    assert models.encode_json({"n": 2**64 - 1}) == '{"n":18446744073709551615}'
    assert models.decode_json('{"a": "\\ud800"}') == {"a": "\ud800"}  # old text still reads


def test_merge_json_checks_only_what_it_merges():
    merged, text = models.merge_json('{"a":null,"b":[1]}', {"c": 2}, 100)
    assert merged == {"a": None, "b": [1], "c": 2} and text == '{"a":null,"b":[1],"c":2}'
    with pytest.raises(ValueError, match="not JSON compliant"):
        models.merge_json('{"a":null}', {"c": float("nan")}, 100)
    with pytest.raises(models.StateTooLarge) as info:
        models.merge_json("{}", {"c": "x" * 100}, 50)
    assert info.value.size > 100 and info.value.limit == 50


def test_sessions_work_the_same_without_orjson(tmp_path):
    """The stdlib fallback (orjson missing) keeps every rule, on a real SQLite file."""
    script = (
        "import sys; sys.modules['orjson'] = None\n"
        "from nexus_lab.sessions import NexusSessionManager, models\n"
        "from nexus_lab.errors import SessionStateError\n"
        "assert models._orjson is None\n"
        f"m = NexusSessionManager(cleanup_interval=60, store={str(tmp_path / 'f.db')!r})\n"
        "sid = m.create_session('u').session_id\n"
        "assert m.update_session_state(sid, {'a': 'é', 'big': 2**70}) == {'a': 'é', 'big': 2**70}\n"
        "for bad in ({'x': float('nan')}, {'x': '\\ud800'}, {'x': {1: 2}}):\n"
        "    try:\n"
        "        m.update_session_state(sid, bad)\n"
        "    except SessionStateError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(f'accepted {bad!r}')\n"
        "assert m.get_session_state(sid, touch=False) == {'a': 'é', 'big': 2**70}\n"
        "m.close()\n"
        "print('ok')\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
