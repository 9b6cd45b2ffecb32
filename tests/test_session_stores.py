"""Session stores: the SessionStore contract, open_store, and SQLite across threads and processes.

SQLite tests use real files under tmp_path; the cross-process tests start
real Python processes with subprocess.
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
from pathlib import Path

import pytest

from nexus_lab.errors import SessionNotFound
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


@pytest.fixture(params=["memory", "sqlite-file", "sqlite-memory"])
def store(request, tmp_path):
    if request.param == "memory":
        s: SessionStore = MemorySessionStore(max_events=10)
    elif request.param == "sqlite-file":
        s = SQLiteSessionStore(tmp_path / "s.db", max_events=10)
    else:
        s = SQLiteSessionStore(":memory:", max_events=10)
    yield s
    s.close()


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
        store.update(
            "a", lambda r: None, 1000.0 + i, SessionEvent(1000.0 + i, "api", "update", (f"k{i}",))
        )
    events = store.events("a", 1100.0)
    assert [e.keys for e in events] == [(f"k{i}",) for i in range(35, 45)]
    assert all(isinstance(e, SessionEvent) for e in events)


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


@pytest.mark.skipif(
    importlib.util.find_spec("nexus_lab.sessions.stores.redis") is not None,
    reason="the Redis store exists now; its own tests cover it",
)
def test_open_store_redis_explains_the_extra():
    with pytest.raises(ValueError, match=r"nexus-lab\[redis\]"):
        open_store("redis://localhost:6379/0")


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


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_thread_concurrency_on_each_store(kind, tmp_path):
    store = None if kind == "memory" else f"sqlite:///{tmp_path / 't.db'}"
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
