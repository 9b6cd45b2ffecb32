"""Session stores: the SessionStore contract, open_store, and SQLite across threads and processes.

The contract tests run on every store kind of ``STORE_KINDS``: memory, SQLite
(file and ``:memory:``) and Redis (a real redis-server started by the
``redis_server`` fixture of conftest.py; Redis' own tests are in
test_redis_store.py). SQLite tests use real files under tmp_path; the
cross-process tests start real Python processes with subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nexus_lab.errors import InputValidationError, SessionNotFound, SessionStateError
from nexus_lab.sessions import (
    MemorySessionStore,
    NexusSessionManager,
    SessionEvent,
    SessionStore,
    SQLiteSessionStore,
    open_store,
)
from nexus_lab.sessions.models import SessionRecord

REPO = Path(__file__).resolve().parents[1]


def record(sid: str, user: str = "u", now: float = 1000.0, ttl: float = 100.0) -> SessionRecord:
    return SessionRecord(sid, user, now, now, now + ttl, None, "{}", [], {}, "{}")


# Every store kind the contract tests run on.
STORE_KINDS = ["memory", "sqlite-file", "sqlite-memory", "redis"]


def make_store(
    kind: str, tmp_path: Path, max_events: int = 10, redis_url: str | None = None
) -> SessionStore:
    if kind == "memory":
        return MemorySessionStore(max_events=max_events)
    if kind == "sqlite-file":
        return SQLiteSessionStore(tmp_path / "s.db", max_events=max_events)
    if kind == "sqlite-memory":
        return SQLiteSessionStore(":memory:", max_events=max_events)
    if kind == "redis":
        assert redis_url is not None, "the redis kind needs the redis_url fixture"
        return open_store(redis_url, max_events=max_events)
    raise ValueError(kind)


def _kind_param(kind: str):
    return pytest.param(kind, marks=pytest.mark.redis) if kind == "redis" else kind


@pytest.fixture(params=[_kind_param(k) for k in STORE_KINDS])
def store(request, tmp_path):
    # the redis_url fixture (a flushed database) only for the redis kind: the other kinds
    # must run, and not skip, on a machine without redis-server
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    s = make_store(request.param, tmp_path, redis_url=url)
    yield s
    s.close()


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def manager(store, clock):
    """A manager over each store kind (the store stays the fixture's to close)."""
    with NexusSessionManager(cleanup_interval=300, session_ttl=100, store=store, clock=clock) as m:
        yield m


def wait_until(predicate, what: str) -> None:
    """Wait for a condition another thread brings about, yielding the CPU (no sleeps)."""
    deadline = time.monotonic() + 60
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        os.sched_yield()


# ----------------------------------------------------------------------------- contract


def test_store_create_get_count(store):
    ev = SessionEvent(1000.0, "api", "create", ())
    assert store.create(record("a"), 1000.0, ev, {"channel:api": 1}) is True
    assert store.create(record("a", user="other"), 1000.0) is False  # live duplicate
    got = store.get("a", 1000.0)
    assert got is not None and got.user_id == "u" and got.state_json == "{}"
    assert store.get("missing", 1000.0) is None
    assert store.count() == 1
    assert store.counters() == {"total_created": 1, "channel:api": 1}
    assert store.events("a", 1000.0) == [ev]


def test_store_get_returns_a_snapshot(store):
    store.create(record("a"), 1000.0)
    snap = store.get("a", 1000.0)
    snap.channels.append("x")
    snap.writers["k"] = ("x", 1.0)
    snap.state_json = '{"hacked":1}'
    fresh = store.get("a", 1000.0)
    assert fresh.channels == [] and fresh.writers == {} and fresh.state_json == "{}"


def test_store_update_is_atomic_and_returns_mutate_result(store):
    store.create(record("a"), 1000.0)

    def mutate(rec):
        rec.state_json = '{"x":1}'
        rec.channels.append("api")
        rec.writers["x"] = ("api", 1001.0)
        rec.expires_at = 1201.0
        return "result"

    ev = SessionEvent(1001.0, "api", "update", ("x",))
    assert store.update("a", mutate, 1001.0, ev, {"channel:api": 1}) == "result"
    rec = store.get("a", 1001.0)
    assert rec.state_json == '{"x":1}' and rec.channels == ["api"] and rec.expires_at == 1201.0
    assert list(rec.writers["x"]) == ["api", 1001.0]
    assert store.events("a", 1001.0) == [ev]
    assert store.counters()["channel:api"] == 1


def test_store_update_that_raises_writes_nothing(store):
    store.create(record("a"), 1000.0)

    def boom(rec):
        raise ValueError("abort")

    with pytest.raises(ValueError, match="abort"):
        store.update(
            "a", boom, 1001.0, SessionEvent(1001.0, "api", "update", ("x",)), {"channel:api": 1}
        )
    assert store.get("a", 1001.0).state_json == "{}"
    assert store.events("a", 1001.0) == []
    assert "channel:api" not in store.counters()


def test_store_update_missing_or_expired_raises(store):
    store.create(record("a", ttl=10), 1000.0)
    with pytest.raises(SessionNotFound):
        store.update("missing", lambda r: None, 1000.0)
    with pytest.raises(SessionNotFound):
        store.update("a", lambda r: None, 1010.0)  # expires_at <= now


def test_store_expired_records_are_invisible(store):
    store.create(record("a", ttl=10), 1000.0, SessionEvent(1000.0, None, "create", ()))
    store.create(record("b", ttl=100), 1000.0)
    assert store.get("a", 1010.0) is None
    assert [r.session_id for r in store.list(None, 1010.0)] == ["b"]
    assert store.events("a", 1010.0) == []
    assert store.delete("a", 1010.0) is False
    assert store.count() == 2  # held until delete_expired
    assert store.delete_expired(1010.0) == 1
    assert store.count() == 1
    assert store.counters()["expired_cleaned"] == 1
    assert store.delete_expired(1010.0) == 0


def test_store_create_replaces_an_expired_record(store):
    store.create(record("a", ttl=10), 1000.0)
    assert store.create(record("a", user="new", now=1020.0), 1020.0) is True
    assert store.get("a", 1020.0).user_id == "new"
    assert store.count() == 1
    assert store.counters() == {"total_created": 2, "expired_cleaned": 1}


def test_store_list_by_user_and_order(store):
    store.create(record("a1", "alice", now=1000.0), 1000.0)
    store.create(record("b1", "bob", now=1001.0), 1001.0)
    store.create(record("a2", "alice", now=1002.0), 1002.0)
    assert [r.session_id for r in store.list(None, 1002.0)] == ["a1", "b1", "a2"]
    assert [r.session_id for r in store.list("alice", 1002.0)] == ["a1", "a2"]
    assert store.list("carol", 1002.0) == []


def test_store_delete(store):
    store.create(record("a"), 1000.0, SessionEvent(1000.0, None, "create", ()))
    assert store.delete("a", 1000.0) is True
    assert store.delete("a", 1000.0) is False
    assert store.get("a", 1000.0) is None and store.events("a", 1000.0) == []
    assert store.count() == 0 and store.counters()["deleted"] == 1
    # the id is free again, with an empty log
    store.create(record("a"), 1000.0)
    assert store.events("a", 1000.0) == []


def test_store_events_bounded_and_ordered(store):
    store.create(record("a", ttl=10_000), 1000.0)
    for i in range(45):
        # the fields as the manager passes them (a tuple, or a list it fills in), or an event
        fields = (1000.0 + i, "api", "update", (f"k{i}",))
        event = (fields, list(fields), SessionEvent(*fields))[i % 3]
        store.update("a", lambda r: None, 1000.0 + i, event)
    events = store.events("a", 1100.0)
    assert [e.keys for e in events] == [(f"k{i}",) for i in range(35, 45)]
    assert [e.timestamp for e in events] == [1000.0 + i for i in range(35, 45)]
    assert all(isinstance(e, SessionEvent) and e.channel == "api" for e in events)


def test_store_incr_and_counters(store):
    store.incr("custom")
    store.incr("custom", 4)
    store.incr("other", -2)
    assert store.counters() == {"custom": 5, "other": -2}


def test_store_close_is_idempotent(store):
    store.close()
    store.close()


# ----------------------------------------------------------------------------- open_store


def test_open_store_memory_variants():
    for spec in (None, "memory://", "memory"):
        s = open_store(spec)
        assert isinstance(s, MemorySessionStore) and s.name == "memory"
    existing = MemorySessionStore()
    assert open_store(existing) is existing


def test_open_store_sqlite_variants(tmp_path, monkeypatch):
    nested = tmp_path / "a" / "b" / "sessions.db"
    s = open_store(f"sqlite:///{nested}")  # absolute path: four slashes
    assert isinstance(s, SQLiteSessionStore) and s.name == "sqlite"
    assert nested.exists() and Path(s.path) == nested
    s.close()
    mem = open_store("sqlite:///:memory:")
    assert mem.in_memory and mem.path == ":memory:"
    mem.close()
    p = open_store(tmp_path / "p.db")
    assert Path(p.path) == tmp_path / "p.db"
    p.close()
    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///rel/dir/r.db")  # three slashes: relative
    assert (tmp_path / "rel" / "dir" / "r.db").exists()
    rel.close()
    plain = open_store("plain.sqlite3")
    assert (tmp_path / "plain.sqlite3").exists()
    plain.close()
    assert open_store("x.db", max_events=7).max_events == 7


@pytest.mark.parametrize(
    "bad", ["ftp://host/x", "postgres://db", "sessions.txt", "sqlite:relative.db"]
)
def test_open_store_unknown_is_a_value_error_naming_supported(bad):
    with pytest.raises(ValueError) as info:
        open_store(bad)
    if not bad.startswith("sqlite:"):
        assert "sqlite:///" in str(info.value) and "memory" in str(info.value)


def test_open_store_wrong_type():
    with pytest.raises(TypeError):
        open_store(42)


def test_open_store_redis_explains_the_extra_only_without_redis_py():
    """Without redis-py, a redis:// store is a ConfigError naming the extra (in a child
    process where ``import redis`` fails); with it, open_store builds the store."""
    script = (
        "import sys; sys.modules['redis'] = None\n"  # as if redis-py were not installed
        "from nexus_lab.errors import ConfigError\n"
        "from nexus_lab.sessions import open_store\n"
        "try:\n"
        "    open_store('redis://localhost:6379/0')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "pip install 'nexus-lab[redis]'" in out.stdout and "not installed" in out.stdout
    if importlib.util.find_spec("redis") is not None:  # here: no error, and no connection yet
        store = open_store("redis://localhost:1/0", max_events=7)
        assert store.name == "redis" and store.max_events == 7
        store.close()


def test_manager_accepts_store_urls_and_paths(tmp_path):
    for spec in (f"sqlite:///{tmp_path / 'm1.db'}", tmp_path / "m2.db", str(tmp_path / "m3.db")):
        with NexusSessionManager(cleanup_interval=300, store=spec) as m:
            assert m.get_session_metrics()["store"] == "sqlite"
            store = m.store
        with pytest.raises(RuntimeError, match="closed"):  # the manager closed the store it opened
            store.count()


# ----------------------------------------------------------------------------- SQLite specifics


def test_sqlite_pragmas(tmp_path):
    path = tmp_path / "p.db"
    s = SQLiteSessionStore(path, timeout=7)
    try:
        conn = s._wconn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 7000
        other = sqlite3.connect(path)
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent
        other.close()
    finally:
        s.close()


def test_sqlite_event_rows_are_trimmed(tmp_path):
    s = SQLiteSessionStore(tmp_path / "e.db", max_events=5)
    try:
        s.create(record("a", ttl=10_000), 1000.0)
        for i in range(100):
            s.update("a", lambda r: None, 1000.0, SessionEvent(1000.0, "api", "update", (str(i),)))
        rows = s._wconn.execute("SELECT count(*) FROM nexus_session_events").fetchone()[0]
        assert rows <= 5 + 16
        assert [e.keys for e in s.events("a", 1000.0)] == [(str(i),) for i in range(95, 100)]
        s.delete_expired(20_000.0)
        assert s._wconn.execute("SELECT count(*) FROM nexus_session_events").fetchone()[0] == 0
    finally:
        s.close()


def test_sqlite_state_survives_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'persist.db'}"
    with NexusSessionManager(cleanup_interval=300, store=url) as m:
        s = m.create_session("user-123", metadata={"plan": "pro"})
        m.update_session_state(
            s.session_id, {"query": "What is AI?", "nested": [1, [2]]}, channel="api"
        )
    with NexusSessionManager(cleanup_interval=300, store=url) as m2:
        assert m2.get_session_state(s.session_id, channel="cli") == {
            "query": "What is AI?",
            "nested": [1, [2]],
        }
        snap = m2.get_session(s.session_id)
        assert snap.user_id == "user-123" and snap.metadata == {"plan": "pro"}
        assert snap.channels == ["api", "cli"] and snap.writers["query"][0] == "api"
        metrics = m2.get_session_metrics()
        assert metrics["total_created"] == 1 and metrics["channel_activity"] == {"api": 1, "cli": 1}
        assert [e.action for e in m2.get_session_events(s.session_id)] == [
            "create",
            "update",
            "read",
        ]


def test_sqlite_manager_behaviour(tmp_path):
    """The manager-level rules hold on SQLite too: TTL, validation, deep copies, metrics."""

    class Clock:
        now = 5000.0

        def __call__(self):
            return self.now

    clock = Clock()
    with NexusSessionManager(
        cleanup_interval=300,
        session_ttl=50,
        store=tmp_path / "b.db",
        max_state_bytes=300,
        clock=clock,
    ) as m:
        s = m.create_session("u")
        m.update_session_state(s.session_id, {"items": [1, 2]}, channel="api")
        got = m.get_session_state(s.session_id)
        got["items"].append(3)
        assert m.get_session_state(s.session_id) == {"items": [1, 2]}
        with pytest.raises(ValueError):
            m.update_session_state(s.session_id, {"big": "x" * 400})
        with pytest.raises(ValueError):
            m.update_session_state(s.session_id, {"bad": {1}})
        assert m.get_session_state(s.session_id) == {"items": [1, 2]}
        clock.now += 49
        assert m.get_session_state(s.session_id) == {"items": [1, 2]}  # slid
        clock.now += 50
        assert m.get_session_state(s.session_id) == {}
        with pytest.raises(SessionNotFound):
            m.update_session_state(s.session_id, {"a": 1})
        assert m.list_sessions() == []
        assert m.cleanup_expired_sessions() == 1
        metrics = m.get_session_metrics()
        assert metrics["active_sessions"] == 0 and metrics["expired_cleaned"] == 1
        assert metrics["store"] == "sqlite"


@pytest.mark.parametrize("kind", ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_thread_concurrency_on_each_store(kind, tmp_path, request):
    store = {
        "memory": lambda: None,
        "sqlite": lambda: f"sqlite:///{tmp_path / 't.db'}",
        "redis": lambda: request.getfixturevalue("redis_url"),
    }[kind]()
    with NexusSessionManager(cleanup_interval=0.05, store=store) as m:
        s = m.create_session("u")
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                barrier.wait()
                for i in range(200):
                    m.update_session_state(s.session_id, {f"t{t}-{i}": i}, channel=f"c{t}")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        state = m.get_session_state(s.session_id)
        assert len(state) == 1600 and state["t7-199"] == 199
        assert m.get_session_metrics()["channel_activity"] == {f"c{t}": 200 for t in range(8)}
        assert m.get_session_metrics()["total_created"] == 1


# ----------------------------------------------------------------------------- processes

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from nexus_lab.sessions import NexusSessionManager

    db, sid, name, n, ready, go = sys.argv[1:7]
    with NexusSessionManager(cleanup_interval=60, store=db) as m:
        open(ready, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                sys.exit("no go signal")
            time.sleep(0.001)
        for i in range(int(n)):
            m.update_session_state(sid, {f"{name}-{i}": i}, channel=name)
    print(json.dumps({"done": int(n)}))
    """
)

READER = textwrap.dedent(
    """
    import json, sys
    from nexus_lab.sessions import NexusSessionManager

    db, sid, mode = sys.argv[1:4]
    with NexusSessionManager(cleanup_interval=60, store=db) as m:
        if mode == "read":
            print(json.dumps({"state": m.get_session_state(sid, channel="proc"),
                              "metrics": m.get_session_metrics()}))
        else:
            s = m.create_session("from-child", metadata={"pid": 1})
            m.update_session_state(s.session_id, {"written_by": "child", "nested": {"a": [1]}}, channel="mcp")
            print(json.dumps({"sid": s.session_id}))
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_two_processes_update_one_session_without_losing_updates(tmp_path):
    db = str(tmp_path / "shared.db")
    n = 300
    with NexusSessionManager(cleanup_interval=300, store=db) as m:
        sid = m.create_session("u").session_id
        go = tmp_path / "go"
        procs = []
        for name in ("p0", "p1"):
            ready = tmp_path / f"ready-{name}"
            procs.append(
                (
                    ready,
                    subprocess.Popen(
                        [sys.executable, "-c", WORKER, db, sid, name, str(n), str(ready), str(go)],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        env=_env(),
                    ),
                )
            )
        deadline = time.monotonic() + 60
        while not all(r.exists() for r, _ in procs):
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for _, p in procs), [p.communicate() for _, p in procs]
            time.sleep(0.01)
        go.touch()  # both start writing at once
        for _, p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            assert json.loads(out) == {"done": n}
        state = m.get_session_state(sid)
        expected = {f"{name}-{i}": i for name in ("p0", "p1") for i in range(n)}
        assert state == expected
        metrics = m.get_session_metrics()
        assert metrics["channel_activity"] == {"p0": n, "p1": n}
        writers = m.get_session(sid).writers
        assert writers["p0-0"][0] == "p0" and writers["p1-0"][0] == "p1"


def test_a_second_process_reads_what_the_first_wrote(tmp_path):
    db = str(tmp_path / "handoff.db")
    with NexusSessionManager(cleanup_interval=300, store=db) as m:
        s = m.create_session("user-123")
        m.update_session_state(
            s.session_id, {"query": "What is AI?", "list": [1, 2]}, channel="api"
        )
        out = subprocess.run(
            [sys.executable, "-c", READER, db, s.session_id, "read"],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=120,
            check=True,
        ).stdout
        seen = json.loads(out)
        assert seen["state"] == {"query": "What is AI?", "list": [1, 2]}
        assert seen["metrics"]["channel_activity"] == {"api": 1, "proc": 1}
        assert seen["metrics"]["active_sessions"] == 1
        # and the other way round: a child writes, this process reads
        out = subprocess.run(
            [sys.executable, "-c", READER, db, "-", "write"],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=120,
            check=True,
        ).stdout
        child_sid = json.loads(out)["sid"]
        assert m.get_session_state(child_sid, channel="cli") == {
            "written_by": "child",
            "nested": {"a": [1]},
        }
        snap = m.get_session(child_sid)
        assert snap.user_id == "from-child" and snap.metadata == {"pid": 1}
        assert snap.channels == ["mcp", "cli"]
        assert m.get_session_metrics()["total_created"] == 2
        # the read by the other process slid this session's expiry and logged its channel
        assert m.get_session(s.session_id).channels == ["api", "proc"]


# ----------------------------------------------------------------------------- pure reads


def _file_version(store: SessionStore) -> tuple[int, int] | None:
    """(PRAGMA data_version seen by an outside connection, the store's total_changes), or None.

    data_version changes when any other connection commits to the file, so an unchanged value
    means nothing was written, not even a no-op transaction that only touched a row.
    """
    if not isinstance(store, SQLiteSessionStore) or store.in_memory:
        return None
    outside = sqlite3.connect(store.path)
    try:
        version = outside.execute("PRAGMA data_version").fetchone()[0]
        # the outside connection's own read transaction must see a committed file: read a row
        outside.execute("SELECT count(*) FROM nexus_sessions").fetchone()
        return version, store._wconn.total_changes
    finally:
        outside.close()


def _redis_changes(store: SessionStore) -> int | None:
    """Writes the Redis server applied since it started (``rdb_changes_since_last_save``
    grows with every write and never with a read: the fixture's server never saves), or None."""
    if store.name != "redis":
        return None
    return store._client.info("persistence")["rdb_changes_since_last_save"]


def test_store_blocking_flag(store, manager):
    assert store.blocking is (not isinstance(store, MemorySessionStore))
    assert manager.blocking is store.blocking
    assert MemorySessionStore.blocking is False and SQLiteSessionStore.blocking is True
    assert SessionStore.blocking is True  # the safe default for a store that talks to I/O


def test_read_without_touch_writes_nothing(store, manager, clock):
    sid = manager.create_session("alice", channel="api").session_id
    manager.update_session_state(sid, {"q": "hi", "n": 1}, channel="api")
    clock.now += 40
    before = (
        store.get(sid, clock.now),
        manager.get_session_events(sid),
        store.counters(),
        store.count(),
    )
    version = _file_version(store)
    redis_changes = _redis_changes(store)
    outside = None
    if version is not None:  # a connection that stays open across the reads, as another
        outside = sqlite3.connect(store.path)  # process would; data_version is per connection
        outside_version = outside.execute("PRAGMA data_version").fetchone()[0]

    snap = manager.get_session(sid, channel="cli", user_id="alice", touch=False)
    assert snap is not None and snap.state == {"q": "hi", "n": 1} and snap.channels == ["api"]
    assert snap.expires_at == before[0].expires_at  # not slid
    assert manager.get_session(sid, touch=False).user_id == "alice"
    assert manager.get_session(sid, channel="mcp", user_id="bob", touch=False) is None
    assert manager.get_session_state(sid, channel="cli", touch=False) == {"q": "hi", "n": 1}
    assert manager.get_session_state("missing", touch=False) == {}
    assert manager.get_session("missing", touch=False) is None
    # and a touching read of another user's session touches nothing either
    assert manager.get_session(sid, channel="mcp", user_id="bob") is None

    after = (
        store.get(sid, clock.now),
        manager.get_session_events(sid),
        store.counters(),
        store.count(),
    )
    assert after[0].expires_at == before[0].expires_at
    assert after[0].last_accessed == before[0].last_accessed
    assert after[0].channels == before[0].channels == ["api"]
    assert after[1] == before[1]  # no read event
    assert after[2] == before[2] and "channel:cli" not in after[2]
    assert after[3] == before[3]
    if version is not None:
        assert _file_version(store) == version  # no commit, no change on the store's connection
        assert outside.execute("PRAGMA data_version").fetchone()[0] == outside_version
        outside.close()
    if redis_changes is not None:
        assert _redis_changes(store) == redis_changes  # no write reached Redis
    # the pure read's session expires on its old schedule: nothing slid it
    clock.now += 60
    assert manager.get_session(sid, touch=False) is None


def test_platform_pair_read_then_update_slides_and_records_once(store, manager, clock):
    sid = manager.create_session("alice").session_id
    clock.now += 50
    session = manager.get_session(sid, channel="mcp", user_id="alice", touch=False)
    assert session is not None and session.expires_at == clock.now + 50  # not slid by the read
    manager.apply_session_update(sid, lambda s: {"turns": s.get("turns", 0) + 1}, channel="mcp")
    snap = manager.get_session(sid, touch=False)
    assert snap.expires_at == clock.now + 100 and snap.last_accessed == clock.now  # slid
    assert snap.channels == ["mcp"] and snap.state == {"turns": 1}
    assert [(e.action, e.channel) for e in manager.get_session_events(sid)] == [
        ("create", None),
        ("update", "mcp"),
    ]
    assert manager.get_session_metrics()["channel_activity"] == {"mcp": 1}


# ----------------------------------------------------------------------------- concurrency


def test_64_threads_lose_no_update(store, manager):
    sid = manager.create_session("u").session_id
    threads, per = 64, 15
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []
    seen: list[int] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for _ in range(per):
                state = manager.apply_session_update(
                    sid, lambda s: {"n": s.get("n", 0) + 1}, channel=f"c{t % 4}"
                )
                seen.append(state["n"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    total = threads * per
    assert manager.get_session_state(sid, touch=False) == {"n": total}
    assert sorted(seen) == list(range(1, total + 1))  # every caller saw its own increment
    assert manager.get_session_metrics()["channel_activity"] == {f"c{i}": total // 4 for i in range(4)}


_GATES: list[threading.Event] = []


@pytest.fixture(autouse=True)
def _release_gates():
    yield
    while _GATES:  # a failed assertion must not leave a gate thread blocked
        _GATES.pop().set()


def _gate(store: SQLiteSessionStore, sid: str):
    """Start a write whose mutate blocks until released: the leader of a batch, holding the
    write transaction open. Returns (thread, release event, outcome dict)."""
    entered, release = threading.Event(), threading.Event()
    _GATES.append(release)
    outcome: dict[str, object] = {}

    def blocker(rec: SessionRecord) -> str:
        entered.set()
        assert release.wait(60), "the test never released the gate"
        rec.state_json = '{"gate":1}'
        return "gate done"

    def run() -> None:
        try:
            outcome["result"] = store.update(sid, blocker, 1000.0, None, {"gate": 1})
        except BaseException as exc:  # pragma: no cover - asserted by the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(60), "the gate write never started"
    return thread, release, outcome


def test_sqlite_reads_do_not_wait_for_a_write_in_flight(tmp_path):
    store = SQLiteSessionStore(tmp_path / "r.db")
    try:
        store.create(record("gate", ttl=10_000), 1000.0)
        store.create(record("a", ttl=10_000), 1000.0, SessionEvent(1000.0, "api", "create", ()))
        thread, release, outcome = _gate(store, "gate")
        # the write transaction is open (BEGIN IMMEDIATE taken, mutate running): reads go on,
        # on their own connections, and see the last commit
        assert store.get("gate", 1000.0).state_json == "{}"
        assert [r.session_id for r in store.list(None, 1000.0)] == ["a", "gate"]
        assert store.events("a", 1000.0)[0].action == "create"
        assert store.counters() == {"total_created": 2}
        assert store.count() == 2
        release.set()
        thread.join()
        assert outcome == {"result": "gate done"}
        assert store.get("gate", 1000.0).state_json == '{"gate":1}'
        assert store.counters()["gate"] == 1
    finally:
        store.close()


def _updates_behind_a_gate(
    store: SQLiteSessionStore, n: int, *, boom: int | None = None,
    when_queued: Callable[[], object] = lambda: None,
) -> tuple[dict[int, object], dict[str, object]]:
    """Updates of sessions ``s0``..``s{n-1}`` queued behind a gate write, then released to
    run as one group commit: update ``i`` stores ``{"i": i}`` with an event and ``{"op": 1}``
    (``i == boom`` raises ``ValueError("boom i")`` in its mutate). ``when_queued`` runs once
    all n wait. Returns each update's result (or exception) and the gate's outcome."""
    thread, release, gate_outcome = _gate(store, "gate")
    results: dict[int, object] = {}

    def write(i: int) -> None:
        def mutate(rec: SessionRecord) -> int:
            if i == boom:
                raise ValueError(f"boom {i}")
            rec.state_json = json.dumps({"i": i})
            return i

        try:
            results[i] = store.update(
                f"s{i}", mutate, 1000.0, SessionEvent(1000.0, "api", "update", ("i",)), {"op": 1}
            )
        except Exception as exc:
            results[i] = exc

    writers = [threading.Thread(target=write, args=(i,)) for i in range(n)]
    for w in writers:
        w.start()
    wait_until(lambda: len(store._queue) == n, f"{n} writers queued behind the gate")
    when_queued()
    release.set()
    thread.join()
    for w in writers:
        w.join()
    return results, gate_outcome


def test_sqlite_group_commit_an_update_whose_statement_fails_undoes_only_itself(tmp_path):
    """An update's UPDATE that SQLite refuses (a trigger's RAISE(ABORT) here) fails that
    write alone: the others of its group commit, their events and counters are stored."""
    store = SQLiteSessionStore(tmp_path / "t.db")
    try:
        store.create(record("gate", ttl=10_000), 1000.0)
        for i in range(6):
            store.create(record(f"s{i}", ttl=10_000), 1000.0)
        with sqlite3.connect(tmp_path / "t.db") as db:
            db.execute("CREATE TRIGGER refuse_s2 BEFORE UPDATE ON nexus_sessions "
                       "WHEN NEW.session_id = 's2' BEGIN SELECT RAISE(ABORT, 'refused s2'); END")
        results, _ = _updates_behind_a_gate(store, 6)
        assert isinstance(results[2], sqlite3.IntegrityError) and "refused s2" in str(results[2])
        assert {i: results[i] for i in range(6) if i != 2} == {i: i for i in range(6) if i != 2}
        for i in range(6):
            assert store.get(f"s{i}", 1000.0).state_json == ("{}" if i == 2 else json.dumps({"i": i}))
            assert len(store.events(f"s{i}", 1000.0)) == (0 if i == 2 else 1)
        assert store.counters()["op"] == 5
    finally:
        store.close()


def test_sqlite_group_commit_one_failing_op_rolls_back_alone(tmp_path):
    store = SQLiteSessionStore(tmp_path / "g.db")
    statements: list[str] = []
    try:
        store.create(record("gate", ttl=10_000), 1000.0)
        for i in range(8):
            store.create(record(f"s{i}", ttl=10_000), 1000.0)
        results, gate_outcome = _updates_behind_a_gate(
            store, 8, boom=3, when_queued=lambda: store._wconn.set_trace_callback(statements.append)
        )
        assert gate_outcome == {"result": "gate done"}
        assert isinstance(results[3], ValueError) and str(results[3]) == "boom 3"
        assert {i: results[i] for i in range(8) if i != 3} == {i: i for i in range(8) if i != 3}
        for i in range(8):
            got = store.get(f"s{i}", 1000.0).state_json
            assert got == ("{}" if i == 3 else json.dumps({"i": i}))
            assert len(store.events(f"s{i}", 1000.0)) == (0 if i == 3 else 1)
        assert store.counters()["op"] == 7
        # the 8 writes went into one transaction, which the failing one did not undo
        begins = [n for n, sql in enumerate(statements) if sql == "BEGIN IMMEDIATE"]
        assert len(begins) == 1, statements
        batch = statements[begins[0] :]
        assert batch[-1] == "COMMIT" and not any(sql.startswith("ROLLBACK") for sql in batch)
        assert sum(sql.startswith("UPDATE nexus_sessions") for sql in batch) == 7, batch
    finally:
        store.close()


def test_sqlite_close_with_writes_in_flight(tmp_path):
    path = tmp_path / "c.db"
    threads_before = set(threading.enumerate())
    store = SQLiteSessionStore(path)
    store.create(record("gate", ttl=10_000), 1000.0)
    for i in range(4):
        store.create(record(f"s{i}", ttl=10_000), 1000.0)
    thread, release, gate_outcome = _gate(store, "gate")
    results: dict[int, object] = {}

    def write(i: int) -> None:
        def mutate(rec: SessionRecord) -> None:
            rec.state_json = '{"late":true}'

        try:
            results[i] = store.update(f"s{i}", mutate, 1000.0)
        except Exception as exc:
            results[i] = exc

    writers = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for w in writers:
        w.start()
    wait_until(lambda: len(store._queue) == 4, "4 writers queued behind the gate")
    closer = threading.Thread(target=store.close)
    closer.start()
    wait_until(lambda: store._closed, "close() to start")
    for w in writers:  # queued writes fail at once, clearly; close() waits for the batch
        w.join()
    assert all(
        isinstance(r, RuntimeError) and "closed" in str(r) and "nothing was written" in str(r)
        for r in results.values()
    ), results
    assert closer.is_alive()  # still waiting for the write in flight
    release.set()
    thread.join()
    closer.join()
    assert gate_outcome == {"result": "gate done"}  # the batch in flight committed
    with pytest.raises(RuntimeError, match="closed"):
        store.update("gate", lambda r: None, 1000.0)
    with pytest.raises(RuntimeError, match="closed"):
        store.get("gate", 1000.0)
    store.close()  # idempotent
    assert set(threading.enumerate()) == threads_before  # the store started no thread
    again = SQLiteSessionStore(path)
    try:
        assert again.get("gate", 1000.0).state_json == '{"gate":1}'
        assert all(again.get(f"s{i}", 1000.0).state_json == "{}" for i in range(4))
    finally:
        again.close()


def test_sqlite_close_from_inside_a_write_commits_that_write(tmp_path):
    store = SQLiteSessionStore(tmp_path / "x.db")
    store.create(record("a", ttl=10_000), 1000.0)

    def mutate(rec: SessionRecord) -> str:
        store.close()  # e.g. a shutdown hook running on the writing thread
        rec.state_json = '{"last":1}'
        return "ok"

    assert store.update("a", mutate, 1000.0) == "ok"
    with pytest.raises(RuntimeError, match="closed"):
        store.count()
    again = SQLiteSessionStore(tmp_path / "x.db")
    try:
        assert again.get("a", 1000.0).state_json == '{"last":1}'
    finally:
        again.close()


def test_sqlite_write_from_inside_mutate_is_refused(tmp_path):
    store = SQLiteSessionStore(tmp_path / "n.db")
    try:
        store.create(record("a", ttl=10_000), 1000.0)
        with pytest.raises(RuntimeError, match="inside a mutate"):
            store.update("a", lambda rec: store.incr("x"), 1000.0)
        assert store.counters() == {"total_created": 1}
        store.incr("x")  # the store still works
        assert store.counters()["x"] == 1
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sqlite_forked_child_opens_its_own_connections(tmp_path):
    store = SQLiteSessionStore(tmp_path / "f.db")
    try:
        store.create(record("a", ttl=10_000), 1000.0)
        assert store.get("a", 1000.0) is not None  # the parent has a read connection pooled
        pid = os.fork()
        if pid == 0:  # the child: must not touch the parent's connections or locks
            code = 1
            try:
                store.update("a", lambda rec: setattr(rec, "state_json", '{"child":1}'), 1000.0)
                if store.get("a", 1000.0).state_json == '{"child":1}':
                    code = 0
                store.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.get("a", 1000.0).state_json == '{"child":1}'  # parent reads the child's write
        store.update("a", lambda rec: setattr(rec, "state_json", '{"parent":1}'), 1000.0)
        assert store.get("a", 1000.0).state_json == '{"parent":1}'
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sqlite_memory_store_refuses_a_forked_child():
    store = SQLiteSessionStore(":memory:")
    try:
        store.create(record("a"), 1000.0)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                try:
                    store.get("a", 1000.0)
                except RuntimeError as exc:
                    code = 0 if "forked" in str(exc) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.get("a", 1000.0) is not None
    finally:
        store.close()


KILLED_WRITER = textwrap.dedent(
    """
    import sys, threading
    from nexus_lab.sessions import NexusSessionManager

    db, sid = sys.argv[1:3]
    manager = NexusSessionManager(cleanup_interval=60, store=db)
    lock = threading.Lock()

    def work():
        while True:
            n = manager.apply_session_update(
                sid, lambda s: {"n": s.get("n", 0) + 1}, channel="child")["n"]
            with lock:  # printed only once acknowledged, i.e. after its COMMIT returned
                sys.stdout.write(f"{n}\\n")
                sys.stdout.flush()

    for _ in range(4):
        threading.Thread(target=work, daemon=True).start()
    threading.Event().wait()
    """
)


def test_sqlite_kill_9_loses_no_acknowledged_write(tmp_path):
    db = str(tmp_path / "k.db")
    with NexusSessionManager(cleanup_interval=300, store=db) as m:
        sid = m.create_session("u").session_id
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, db, sid],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    acked: list[int] = []
    try:
        for line in child.stdout:  # blocks on the pipe until the child acknowledges writes
            acked.append(int(line))
            if len(acked) >= 300:
                break
        assert len(acked) >= 300, child.stderr.read()
        child.kill()  # SIGKILL: no cleanup, no close(), mid-batch
        rest, _ = child.communicate(timeout=60)
        acked += [int(x) for x in rest.split()]  # printed before the kill: acknowledged too
    finally:
        if child.poll() is None:  # pragma: no cover
            child.kill()
            child.wait()
    assert child.returncode == -9
    assert len(set(acked)) == len(acked)  # no increment was lost and handed out twice
    with NexusSessionManager(cleanup_interval=300, store=db) as m:
        n = m.get_session_state(sid, touch=False)["n"]
        assert n >= max(acked)  # every acknowledged write survived the kill
        # the counter and the channel count were committed together, write by write
        assert m.get_session_metrics()["channel_activity"] == {"child": n}
        assert m.store._wconn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sqlite_marks_big_ints_written_by_older_versions(tmp_path):
    path = tmp_path / "legacy.db"
    SQLiteSessionStore(path).close()  # the schema
    big = 2**70
    legacy = sqlite3.connect(path)  # what the previous version wrote: stdlib JSON, unmarked
    legacy.execute(
        "INSERT INTO nexus_sessions VALUES (?, 'u', 1, 1, 1e12, NULL, ?, '[]', '{}', ?, 0)",
        ("old", json.dumps({"id": big}), json.dumps({"big": big, "small": 1})),
    )
    legacy.execute("PRAGMA user_version = 0")
    legacy.commit()
    legacy.close()
    with NexusSessionManager(cleanup_interval=300, store=path) as m:
        snap = m.get_session("old", touch=False)
        assert snap.state == {"big": big, "small": 1} and isinstance(snap.state["big"], int)
        assert snap.metadata == {"id": big}
        m.update_session_state("old", {"small": 2})  # still exact after a rewrite
        assert m.get_session_state("old", touch=False) == {"big": big, "small": 2}


# ----------------------------------------------------------------------------- what is refused


@pytest.mark.parametrize(
    ("updates", "problem"),
    [
        ({"a": "ok \ud800"}, "surrogate"),
        ({"\udfff": 1}, "surrogate"),
        ({"deep": [{"x": "\ud83d"}]}, "surrogate"),
        ({"a": float("nan")}, "JSON"),
        ({"a": [1.0, float("inf")]}, "JSON"),
        ({"a": {"b": float("-inf")}}, "JSON"),
        ({"a": {1: "int key"}}, "keys must be strings"),
    ],
    ids=["value", "key", "nested", "nan", "inf", "nested-inf", "nested-int-key"],
)
def test_unstorable_state_is_refused_and_nothing_stored(store, manager, updates, problem):
    sid = manager.create_session("u").session_id
    manager.update_session_state(sid, {"keep": [1, None]}, channel="api")
    before = (store.get(sid, manager._clock()), manager.get_session_events(sid), store.counters())
    with pytest.raises(SessionStateError, match=problem):
        manager.update_session_state(sid, {"keep": "overwritten?", **updates}, channel="cli")
    with pytest.raises(SessionStateError, match=problem):
        manager.apply_session_update(sid, lambda s: updates, channel="cli")
    after = (store.get(sid, manager._clock()), manager.get_session_events(sid), store.counters())
    assert after[0].state_json == before[0].state_json and after[0].channels == ["api"]
    assert after[1] == before[1] and after[2] == before[2]
    assert manager.get_session_state(sid, touch=False) == {"keep": [1, None]}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"user_id": "bad \ud800"}, "user_id"),
        ({"session_id": "id-\udfff"}, "session_id"),
        ({"metadata": {"note": "\ud800"}}, "metadata"),
        ({"metadata": {"n": float("nan")}}, "metadata"),
        ({"metadata": {"nested": {2: "x"}}}, "metadata"),
    ],
    ids=["user-surrogate", "sid-surrogate", "meta-surrogate", "meta-nan", "meta-int-key"],
)
def test_unstorable_create_is_refused_and_nothing_stored(store, manager, kwargs, field):
    args = {"user_id": "u", **kwargs}
    with pytest.raises(InputValidationError) as info:
        manager.create_session(**args)
    assert info.value.field == field
    if "\ud800" in repr(kwargs) or "\udfff" in repr(kwargs):
        assert "surrogate" in str(info.value)
    assert store.count() == 0 and store.counters() == {}


def test_unstorable_channel_is_refused(store, manager):
    sid = manager.create_session("u").session_id
    with pytest.raises(ValueError, match="surrogate"):
        manager.update_session_state(sid, {"a": 1}, channel="api\ud800")
    with pytest.raises(ValueError, match="surrogate"):
        manager.get_session(sid, channel="\udfff")
    assert manager.get_session_state(sid, touch=False) == {}
    assert store.counters() == {"total_created": 1}


def test_big_ints_round_trip_exactly(store, manager):
    sid = manager.create_session("u", metadata={"id": 2**80}).session_id
    big = {"pos": 2**64, "neg": -(2**63) - 1, "edge": 2**64 - 1, "list": [10**30]}
    assert manager.update_session_state(sid, big) == big
    manager.update_session_state(sid, {"other": "x"})  # merging keeps them exact
    got = manager.get_session(sid, touch=False)
    assert got.state == {**big, "other": "x"} and got.metadata == {"id": 2**80}
    assert all(isinstance(got.state[k], int) for k in ("pos", "neg", "edge"))


def test_sqlite_mixed_concurrent_writes_stay_consistent(tmp_path):
    """Creates, deletes, updates (some refused), counters and reads from 24 threads: the
    batches' deferred event rows and counter sums never outlive a deleted session, and the
    counters agree with the rows."""
    import random

    store = SQLiteSessionStore(tmp_path / "mix.db", max_events=5)
    m = NexusSessionManager(cleanup_interval=300, store=store, max_events=5)
    ids = [m.create_session("u", session_id=f"s{i}").session_id for i in range(12)]
    applied: list[int] = []
    errors: list[BaseException] = []

    def work(t: int) -> None:
        rng = random.Random(t)
        try:
            for _ in range(60):
                sid, r = rng.choice(ids), rng.random()
                try:
                    if r < 0.55:
                        m.apply_session_update(sid, lambda s: {"n": s.get("n", 0) + 1}, channel="c")
                        applied.append(1)
                    elif r < 0.65:
                        m.delete_session(sid)
                    elif r < 0.75:
                        m.create_session("u", session_id=sid)
                    elif r < 0.85:
                        m.get_session(sid, touch=False)
                        m.get_session_events(sid)
                    elif r < 0.95:
                        store.incr("x")
                    else:
                        m.update_session_state(sid, {"bad": float("nan")}, channel="c")
                except (SessionNotFound, ValueError):
                    pass  # deleted meanwhile / id taken / NaN refused
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(24)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    try:
        assert not errors
        conn = store._wconn
        orphans = conn.execute(
            "SELECT count(*) FROM nexus_session_events "
            "WHERE session_id NOT IN (SELECT session_id FROM nexus_sessions)"
        ).fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM nexus_sessions").fetchone()[0]
        counters = store.counters()
        assert orphans == 0
        assert store.count() == rows
        assert counters["total_created"] - counters.get("deleted", 0) == rows
        assert counters.get("channel:c", 0) == len(applied)  # refused updates counted nothing
        assert all(len(store.events(sid, time.time())) <= 5 for sid in ids)
    finally:
        m.close()
        store.close()
