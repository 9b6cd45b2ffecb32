"""The Redis session store against real redis-server processes (no mocks).

The contract tests shared by every store run on Redis through ``STORE_KINDS`` in
test_session_stores.py; these are Redis' own: URLs, key layout and Redis TTLs,
listing without KEYS/SCAN, two processes writing one session, outages (server
killed mid-use, hung, absent), exactly-once writes when a reply is lost, and
what each persistence setting keeps across a crash.

Servers come from conftest.py: ``redis_url`` (the shared server, flushed per
test) and ``redis_factory`` (a server of the test's own, which it may kill,
pause and restart). Waits are on conditions (a log line, a pub/sub message, a
pipe), never sleeps.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nexus_lab.errors import ConfigError, ServiceUnavailable, SessionNotFound
from nexus_lab.sessions import NexusSessionManager, SessionEvent, open_store
from nexus_lab.sessions.models import SessionRecord

redis = pytest.importorskip("redis")
from nexus_lab.sessions.stores.redis import _TRIM_SLACK, RedisSessionStore, redact_url  # noqa: E402

pytestmark = pytest.mark.redis

REPO = Path(__file__).resolve().parents[1]


def record(sid: str, user: str = "u", now: float = 1000.0, ttl: float = 100.0) -> SessionRecord:
    return SessionRecord(sid, user, now, now, now + ttl, None, "{}", [], {}, "{}")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _keys(client: Any) -> set[str]:
    # the test may scan; the store may not (see test_listing_runs_no_keys_or_scan)
    return set(client.scan_iter("*"))


def _bump(state: dict[str, Any]) -> dict[str, Any]:
    return {"n": state.get("n", 0) + 1}


# ----------------------------------------------------------------------------- URLs, wiring


def test_urls_prefix_unix_socket_and_redaction(redis_factory, tmp_path):
    sock = tmp_path / "r.sock"
    server = redis_factory("--unixsocket", str(sock), "--unixsocketperm", "700", password="pw-xyz")
    tcp = open_store(server.url + "?prefix=app1:", max_events=7)
    unix = open_store(f"unix://{sock}?db=0&password=pw-xyz&prefix=app1:")
    other = open_store(server.url)  # default prefix nexus:
    try:
        assert isinstance(tcp, RedisSessionStore) and tcp.max_events == 7
        assert tcp.key_prefix == unix.key_prefix == "app1:" and other.key_prefix == "nexus:"
        assert "pw-xyz" not in repr(tcp) and "pw-xyz" not in repr(unix)
        assert repr(tcp).startswith(f"RedisSessionStore('redis://***@127.0.0.1:{server.port}/0")
        assert tcp.create(record("a"), 1000.0)
        assert unix.get("a", 1000.0).user_id == "u"  # the same keys, over the socket
        assert other.get("a", 1000.0) is None and other.count() == 0  # another prefix
        assert all(k.startswith("app1:") for k in _keys(server.client()))
    finally:
        for s in (tcp, unix, other):
            s.close()


def test_rediss_and_bad_urls():
    tls = open_store("rediss://:secret@cache.example:6380/1")  # no connection until used
    try:
        assert tls._client.connection_pool.connection_class is redis.SSLConnection
        assert tls.url == "rediss://***@cache.example:6380/1"
    finally:
        tls.close()
    with pytest.raises(ConfigError, match="Bad Redis URL") as info:
        open_store("redis://:secret@host:notaport/0")
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigError, match="redis://host:port/db"):
        RedisSessionStore("http://localhost:6379")
    assert redact_url("redis://h:1/0?password=p&db=2") == "redis://h:1/0?password=***&db=2"


def test_manager_over_a_redis_url_closes_what_it_opened(redis_url):
    with NexusSessionManager(cleanup_interval=300, store=redis_url) as m:
        assert m.blocking is True and m.store_healthy() is True
        sid = m.create_session("alice", metadata={"plan": "pro"}).session_id
        m.update_session_state(sid, {"q": "hi"}, channel="api")
        assert m.get_session_state(sid, channel="cli") == {"q": "hi"}
        metrics = m.get_session_metrics()
        assert metrics["store"] == "redis" and metrics["active_sessions"] == 1
        assert metrics["channel_activity"] == {"api": 1, "cli": 1}
        store = m.store
    with pytest.raises(RuntimeError, match="closed"):
        store.count()
    assert store.ping() is False
    with NexusSessionManager(cleanup_interval=300, store=redis_url) as again:  # shared state
        assert again.get_session(sid, touch=False).metadata == {"plan": "pro"}


# ----------------------------------------------------------------------------- layout, TTLs


def test_key_layout_redis_ttls_and_capped_events(redis_server, redis_url):
    client = redis_server.client()
    store = open_store(redis_url, max_events=5)
    try:
        store.create(record("a", "alice", ttl=100.0), 1000.0, SessionEvent(1000.0, "api", "create", ()))
        for i in range(12):
            store.update(
                "a",
                lambda rec, i=i: setattr(rec, "expires_at", 1100.0 + i),
                1000.0 + i,
                SessionEvent(1000.0 + i, "api", "update", (f"k{i}",)),
                {"channel:api": 1},
            )
        assert _keys(client) == {"nexus:s:a", "nexus:e:a", "nexus:u:alice", "nexus:x", "nexus:n"}
        assert client.type("nexus:s:a") == "hash" and client.type("nexus:e:a") == "list"
        assert client.type("nexus:u:alice") == "zset" and client.type("nexus:x") == "zset"
        assert client.llen("nexus:e:a") == 13  # trimmed only once 16 over max_events
        assert [e.keys for e in store.events("a", 1011.0)] == [(f"k{i}",) for i in range(7, 12)]
        # the expiry index follows the slide as a lower bound, lagging by at most a quarter
        # of the TTL (here 100 s: 25 s) so that most updates skip its ZADD
        assert 1111.0 - 25.0 <= client.zscore("nexus:x", "a") <= 1111.0
        assert client.hget("nexus:s:a", "xi") == repr(client.zscore("nexus:x", "a"))
        # the session's keys carry a Redis TTL: remaining life (100 s) + expiry_grace (60 s)
        for key in ("nexus:s:a", "nexus:e:a", "nexus:u:alice"):
            assert 150_000 < client.pttl(key) <= 160_001, key
        assert client.pttl("nexus:x") == client.pttl("nexus:n") == -1  # indexes and counters stay
        assert client.hget("nexus:n", "channel:api") == "12"
        store.update("a", lambda rec: setattr(rec, "expires_at", 1140.0), 1012.0)
        assert client.zscore("nexus:x", "a") == 1140.0  # lagged by more than 25 s: moved
        for i in range(12, 21):  # the 22nd event is one over 5 + 16: back to the last 5
            store.update("a", lambda rec: None, 1012.0, (1012.0, "api", "update", (f"k{i}",)))
        assert client.llen("nexus:e:a") == 5
        assert [e.keys for e in store.events("a", 1012.0)] == [(f"k{i}",) for i in range(16, 21)]
    finally:
        store.close()
        client.close()


def test_a_lagging_expiry_index_still_lists_and_cleans_up_exactly(redis_server, redis_url):
    """An update that leaves the index entry behind its record's expires_at (within the
    lag) does not hide the session from list(None), and delete_expired neither removes a
    live session its entry calls expired nor misses one that expired."""
    client = redis_server.client()
    store = open_store(redis_url)
    try:
        store.create(record("a", "alice", ttl=100.0), 1000.0)  # expires at 1100, indexed so
        store.create(record("b", "bob", ttl=100.0), 1000.0)
        store.update("a", lambda rec: setattr(rec, "expires_at", 1110.0), 1010.0)
        assert client.zscore("nexus:x", "a") == 1100.0  # lagging by 10 s, within 25 s
        assert [r.session_id for r in store.list(None, 1105.0)] == ["a"]  # b expired
        assert store.delete_expired(1105.0) == 1  # b only; a's early entry repaired
        assert client.zscore("nexus:x", "a") == 1110.0 and client.exists("nexus:s:a")
        assert store.get("a", 1105.0) is not None and store.get("b", 1105.0) is None
        assert store.delete_expired(1111.0) == 1 and store.list(None, 1111.0) == []
        assert store.counters()["expired_cleaned"] == 2
    finally:
        store.close()
        client.close()


def test_redis_ttls_are_renewed_once_the_slide_passes_the_lag_and_always_outlive_it(
    redis_server, redis_url
):
    """Keys' Redis TTLs (expires_at - now + grace) move with the index: not on a slide
    within the lag (min(60 s, a quarter of expires_at - now, half the 60 s grace): 30 s
    here), at once beyond it; an event list made on the way gets a TTL too."""
    client = redis_server.client()
    store = open_store(redis_url, max_events=5)
    keys = ("nexus:s:a", "nexus:e:a", "nexus:u:alice")
    try:
        store.create(record("a", "alice", ttl=100.0), 1000.0, (1000.0, None, "create", ()))
        assert all(150_000 < client.pttl(k) <= 160_001 for k in keys)  # 100 s + 60 s grace
        store.update("a", lambda rec: setattr(rec, "expires_at", 1120.0), 1000.0)
        assert all(client.pttl(k) <= 160_001 for k in keys)  # slid 20 s: not renewed
        store.update("a", lambda rec: setattr(rec, "expires_at", 1130.0), 1000.0)
        assert all(client.pttl(k) <= 160_001 for k in keys)  # 30 s: not yet
        store.update("a", lambda rec: setattr(rec, "expires_at", 1135.0), 1000.0)
        assert all(185_000 < client.pttl(k) <= 195_001 for k in keys)  # 35 s: renewed
        client.delete("nexus:e:a")
        store.update("a", lambda rec: None, 1000.0, (1000.0, "api", "update", ("k",)))
        assert client.llen("nexus:e:a") == 1 and 0 < client.pttl("nexus:e:a") <= 195_001
    finally:
        store.close()
        client.close()


def test_redis_reclaims_expired_sessions_by_itself(redis_factory):
    """With the real clock, an abandoned session's keys expire in Redis without any cleanup
    (we wait for the server's own 'expired' notifications); the indexes then heal."""
    server = redis_factory("--notify-keyspace-events", "Ex")
    client = server.client()
    pubsub = client.pubsub()
    pubsub.psubscribe("__keyevent@0__:expired")
    assert pubsub.get_message(timeout=30)["type"] == "psubscribe"
    store = RedisSessionStore(server.url, expiry_grace=0.2)
    with NexusSessionManager(cleanup_interval=300, store=store, session_ttl=600) as m:
        short = m.create_session("alice", ttl=0.3, channel="api").session_id
        m.update_session_state(short, {"big": "x" * 1000}, channel="api")
        keep = m.create_session("alice").session_id
        gone = {f"nexus:s:{short}", f"nexus:e:{short}"}
        expired: set[str] = set()
        deadline = time.monotonic() + 60
        while not gone <= expired:  # blocks on the subscription, no polling
            assert time.monotonic() < deadline, f"Redis did not expire {gone - expired}"
            msg = pubsub.get_message(timeout=deadline - time.monotonic())
            if msg and msg["type"] == "pmessage":
                expired.add(msg["data"])
        assert client.exists(f"nexus:s:{keep}") == 1
        # the user's index still lists the reclaimed id until read; the read prunes it
        assert set(client.zrange("nexus:u:alice", 0, -1)) == {short, keep}
        assert [s.session_id for s in m.list_sessions("alice")] == [keep]
        assert client.zrange("nexus:u:alice", 0, -1) == [keep]
        # still counted until cleanup, which finds it in the expiry index and counts it
        assert m.get_session_metrics()["active_sessions"] == 2
        assert m.cleanup_expired_sessions() == 1
        metrics = m.get_session_metrics()
        assert metrics["active_sessions"] == 1 and metrics["expired_cleaned"] == 1
    pubsub.close()
    client.close()
    store.close()


def test_listing_runs_no_keys_or_scan(redis_server, redis_url):
    client = redis_server.client()
    store = open_store(redis_url)
    try:
        for i in range(30):
            store.create(record(f"s{i}", f"user{i % 3}", now=1000.0 + i, ttl=50.0), 1000.0 + i)
        client.config_resetstat()
        assert [r.session_id for r in store.list("user1", 1060.0)] == ["s13", "s16", "s19", "s22", "s25", "s28"]
        assert len(store.list(None, 1060.0)) == 19  # s11..s29 (expires_at = 1050 + i)
        assert store.delete_expired(1060.0) == 11
        assert store.count() == 19 and store.list("user0", 1060.0)[0].session_id == "s12"
        stats = client.info("commandstats")  # counts commands run inside scripts too
        ran = {name.removeprefix("cmdstat_") for name in stats}
        assert "keys" not in ran and "scan" not in ran, ran
        assert "zrange" in ran and "evalsha" in ran  # what listing and cleanup do use
    finally:
        store.close()
        client.close()


def test_prefixes_share_a_server_without_meeting(redis_url):
    a = RedisSessionStore(redis_url, key_prefix="appA:")
    b = RedisSessionStore(redis_url, key_prefix="appB:")
    try:
        a.create(record("same-id", "u", ttl=10), 1000.0)
        b.create(record("same-id", "u", ttl=100), 1000.0)
        a.incr("x", 5)
        assert a.counters() == {"total_created": 1, "x": 5} and b.counters() == {"total_created": 1}
        assert a.delete_expired(1050.0) == 1
        assert a.count() == 0 and b.count() == 1 and b.get("same-id", 1050.0) is not None
        assert [r.session_id for r in b.list("u", 1050.0)] == ["same-id"]
    finally:
        a.close()
        b.close()


def _calls(client: Any) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}


def test_the_platform_pair_costs_two_round_trips(redis_server, redis_url):
    """A pure read, then the update: the update's first guess is the record just read, so it
    is one script call (no second HGETALL); a further update by this process is one too."""
    client = redis_server.client()
    with NexusSessionManager(cleanup_interval=300, store=redis_url) as m:
        sid = m.create_session("alice").session_id
        client.config_resetstat()
        assert m.get_session(sid, channel="api", user_id="alice", touch=False) is not None
        m.apply_session_update(sid, _bump, channel="api")
        m.apply_session_update(sid, _bump, channel="api")
        calls = _calls(client)
        assert calls["hgetall"] == 1 and calls["evalsha"] == 2, calls
        assert m.get_session_state(sid, touch=False) == {"n": 2}
    client.close()


def test_a_stale_guess_is_harmless(redis_url):
    """Two store objects (as two processes): each one's remembered record goes stale when
    the other writes; the version check catches it, and an error mutate raises on a stale
    record (over the size limit, another user) is not the answer until a fresh read agrees."""
    a = NexusSessionManager(cleanup_interval=300, store=redis_url, max_state_bytes=120)
    b = NexusSessionManager(cleanup_interval=300, store=redis_url, max_state_bytes=120)
    try:
        sid = a.create_session("alice", session_id="s").session_id
        a.update_session_state(sid, {"big": "x" * 90}, channel="a")  # a remembers it
        b.update_session_state(sid, {"big": "small"}, channel="b")  # a's record is now stale
        # on a's stale record this would be over 120 bytes; on the real one it fits
        assert a.update_session_state(sid, {"more": "y" * 50}, channel="a") == {
            "big": "small",
            "more": "y" * 50,
        }
        for _ in range(5):  # alternating writers: each update starts from a stale guess
            a.apply_session_update(sid, _bump, channel="a")
            b.apply_session_update(sid, _bump, channel="b")
        assert b.get_session_state(sid, touch=False)["n"] == 10
        # the id re-created for another user: a's remembered record says alice
        assert b.delete_session(sid) and b.create_session("bob", session_id="s")
        assert a.get_session(sid, channel="a", user_id="bob") is not None  # touching read
        assert a.get_session(sid, channel="a", user_id="alice") is None
        counters = a.store.counters()
        assert counters["channel:a"] == 1 + 1 + 5 + 1 and counters["channel:b"] == 1 + 5
    finally:
        a.close()
        b.close()


def test_a_write_from_inside_mutate_is_refused(redis_url):
    store = open_store(redis_url)
    try:
        store.create(record("a", ttl=10_000), 1000.0)
        with pytest.raises(RuntimeError, match="inside a mutate"):
            store.update("a", lambda rec: store.update("a", lambda r: None, 1000.0), 1000.0)
        with pytest.raises(RuntimeError, match="inside a mutate"):
            store.update("a", lambda rec: store.incr("x"), 1000.0)
        assert store.counters() == {"total_created": 1}
        # reads are fine (they take no lock), and the store still works afterwards
        assert store.update("a", lambda rec: store.get("a", 1000.0).user_id, 1000.0) == "u"
        store.incr("x")
        assert store.counters()["x"] == 1
    finally:
        store.close()


# ----------------------------------------------------------------------------- concurrency

WORKER = textwrap.dedent(
    """
    import json, sys, threading
    from nexus_lab.sessions import NexusSessionManager

    url, sid, name, per = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    seen, errors = [], []
    with NexusSessionManager(cleanup_interval=60, store=url) as m:
        m.get_session(sid, touch=False)  # connected before the start signal
        print("ready", flush=True)
        sys.stdin.readline()  # the parent's go: both processes start together

        def work():
            try:
                for _ in range(per):
                    state = m.apply_session_update(
                        sid, lambda s: {"n": s.get("n", 0) + 1}, channel=name)
                    seen.append(state["n"])
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(json.dumps({"seen": seen, "errors": errors}), flush=True)
    """
)


def test_two_processes_of_8_threads_lose_no_update(redis_url):
    per = 40
    with NexusSessionManager(cleanup_interval=300, store=redis_url) as m:
        sid = m.create_session("u").session_id
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, redis_url, sid, name, str(per)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(),
            )
            for name in ("p0", "p1")
        ]
        try:
            for p in procs:  # blocks until each child is connected and waiting
                line = p.stdout.readline()
                assert line.strip() == "ready", line + p.stderr.read()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            results = []
            for p in procs:
                out, err = p.communicate(timeout=120)
                assert p.returncode == 0, err
                results.append(json.loads(out))
        finally:
            for p in procs:
                if p.poll() is None:  # pragma: no cover
                    p.kill()
                    p.wait()
        assert [r["errors"] for r in results] == [[], []]
        total = 2 * 8 * per
        seen = sorted(n for r in results for n in r["seen"])
        assert seen == list(range(1, total + 1))  # every caller saw its own increment, once
        assert m.get_session_state(sid, touch=False) == {"n": total}
        metrics = m.get_session_metrics()
        assert metrics["channel_activity"] == {"p0": 8 * per, "p1": 8 * per}


def test_mixed_concurrent_writes_keep_counters_and_keys_consistent(redis_server, redis_url):
    """Creates, deletes, updates (some refused), counters and reads from 16 threads: the
    counters agree with the keys, and no event list outlives its session."""
    store = open_store(redis_url, max_events=5)
    m = NexusSessionManager(cleanup_interval=300, store=store, max_events=5)
    ids = [m.create_session("u", session_id=f"s{i}").session_id for i in range(10)]
    applied: list[int] = []
    errors: list[BaseException] = []

    def work(t: int) -> None:
        rng = random.Random(t)
        try:
            for _ in range(50):
                sid, r = rng.choice(ids), rng.random()
                try:
                    if r < 0.55:
                        m.apply_session_update(sid, _bump, channel="c")
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

    workers = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    client = redis_server.client()
    try:
        assert not errors
        keys = _keys(client)
        live = {k.removeprefix("nexus:s:") for k in keys if k.startswith("nexus:s:")}
        logs = {k.removeprefix("nexus:e:") for k in keys if k.startswith("nexus:e:")}
        counters = store.counters()
        assert logs <= live  # no orphan event list
        assert store.count() == len(live) == client.zcard("nexus:u:u")
        assert counters["total_created"] - counters.get("deleted", 0) == len(live)
        assert counters.get("channel:c", 0) == len(applied)  # refused updates counted nothing
        assert all(client.llen(f"nexus:e:{sid}") <= 5 + _TRIM_SLACK for sid in live)
    finally:
        client.close()
        m.close()
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_uses_its_own_connections(redis_url):
    store = open_store(redis_url)
    try:
        store.create(record("a", ttl=10_000), 1000.0)
        assert store.get("a", 1000.0) is not None  # the parent has a pooled connection
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                store.update("a", lambda rec: setattr(rec, "state_json", '{"child":1}'), 1000.0)
                code = 0 if store.get("a", 1000.0).state_json == '{"child":1}' else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.get("a", 1000.0).state_json == '{"child":1}'
        store.update("a", lambda rec: setattr(rec, "state_json", '{"parent":1}'), 1000.0)
        assert store.get("a", 1000.0).state_json == '{"parent":1}'
    finally:
        store.close()


# ----------------------------------------------------------------------------- outages


def _every_call(store: RedisSessionStore) -> dict[str, Callable[[], Any]]:
    return {
        "create": lambda: store.create(record("new"), 1000.0),
        "get": lambda: store.get("a", 1000.0),
        "update": lambda: store.update("a", lambda r: None, 1000.0),
        "delete": lambda: store.delete("a", 1000.0),
        "list": lambda: store.list(None, 1000.0),
        "list_user": lambda: store.list("u", 1000.0),
        "events": lambda: store.events("a", 1000.0),
        "delete_expired": lambda: store.delete_expired(1000.0),
        "incr": lambda: store.incr("x"),
        "counters": store.counters,
        "count": store.count,
    }


def test_no_server_every_call_is_service_unavailable_naming_the_url(free_port):
    port = free_port()  # nothing listens there
    store = open_store(f"redis://:hunter2@127.0.0.1:{port}/3")
    try:
        assert store.ping() is False
        for name, call in _every_call(store).items():
            with pytest.raises(ServiceUnavailable) as info:
                call()
            msg = str(info.value)
            assert f"redis://***@127.0.0.1:{port}/3" in msg and "hunter2" not in msg, name
            assert "failed" in msg and info.value.http_status == 503, name
            assert info.value.headers == {"Retry-After": "1"}
        with NexusSessionManager(cleanup_interval=300, store=store) as m:  # builds lazily
            assert m.store_healthy() is False
            with pytest.raises(ServiceUnavailable):
                m.create_session("u")
    finally:
        store.close()


def test_killed_mid_use_then_restarted_same_store_works_again(redis_factory):
    """kill -9 while 4 threads update: each gets ServiceUnavailable (never a raw redis error,
    never the password), nothing is half-written (AOF: the scripts are atomic), and the same
    store object works again once Redis is back on the same port."""
    server = redis_factory("--appendonly", "yes", "--appendfsync", "everysec", password="s3cret-pw")
    store = open_store(server.url)
    m = NexusSessionManager(cleanup_interval=300, store=store)
    sid = m.create_session("u").session_id
    acked: list[int] = []
    failures: list[BaseException] = []
    enough = threading.Event()

    def work() -> None:
        while True:
            try:
                acked.append(m.apply_session_update(sid, _bump, channel="c")["n"])
            except BaseException as exc:
                failures.append(exc)
                return
            if len(acked) >= 200:
                enough.set()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    assert enough.wait(120), "the writers made no progress"
    server.kill()  # mid-use: writes in flight
    for t in threads:
        t.join()
    assert len(failures) == 4
    for exc in failures:
        assert type(exc) is ServiceUnavailable, repr(exc)
        assert f"redis://***@127.0.0.1:{server.port}/0" in str(exc)
        assert "s3cret-pw" not in str(exc) and "update of session" in str(exc)
    assert store.ping() is False and m.store_healthy() is False
    for call in _every_call(store).values():
        with pytest.raises(ServiceUnavailable):
            call()

    server.start()  # the same port, the same AOF
    deadline = time.monotonic() + 5
    while True:  # the condition: the same store object answers again
        try:
            state = m.apply_session_update(sid, _bump, channel="c")
            break
        except ServiceUnavailable:
            assert time.monotonic() < deadline, "the store did not recover within 5 s"
    assert store.ping() is True and m.store_healthy() is True
    # nothing half-written: the state and the channel counter moved together, write by write
    assert m.get_session_metrics()["channel_activity"] == {"c": state["n"]}
    assert len(set(acked)) == len(acked)  # no increment handed out twice
    # at most one write per thread was applied without its caller hearing (the kill cut the
    # reply). (That every acknowledged write survived is test_what_a_crash_keeps' question.)
    assert state["n"] <= len(acked) + 1 + len(threads)
    m.close()
    store.close()


def test_hung_server_fails_fast_then_recovers(redis_factory):
    server = redis_factory()
    store = RedisSessionStore(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        store.create(record("a", ttl=10_000), 1000.0)
        server.pause()  # SIGSTOP: connections are accepted, nothing answers
        with pytest.raises(ServiceUnavailable, match="Timeout") as info:
            store.get("a", 1000.0)
        assert "read of session 'a' failed" in str(info.value)
        with pytest.raises(ServiceUnavailable, match="may or may not have been applied"):
            store.update("a", lambda r: None, 1000.0)
        assert store.ping() is False
        server.resume()
        assert store.get("a", 1000.0).user_id == "u"
        assert store.ping() is True
    finally:
        server.resume()
        store.close()


# ----------------------------------------------------------------------------- lost replies


class ReplyDropper:
    """A TCP proxy to Redis that, when armed, lets a command matching ``armed`` reach the
    server and then closes the client's connection instead of passing the reply on: the
    command ran, its caller never heard. redis-py then reconnects and sends it again."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.armed: bytes | None = None
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        drop_reply = False
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [])
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        return
                    if self.armed is not None and self.armed in data:
                        self.armed = None
                        drop_reply = True
                    server.sendall(data)
                if server in ready:
                    data = server.recv(65536)
                    if not data:
                        return
                    if drop_reply:  # the command ran; its reply is lost with the connection
                        self.dropped += 1
                        return
                    client.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def test_a_write_whose_reply_is_lost_is_applied_once(redis_server, redis_url):
    proxy = ReplyDropper(redis_server.port)
    store = open_store(f"redis://127.0.0.1:{proxy.port}/0")
    m = NexusSessionManager(cleanup_interval=300, store=store)
    try:
        # every script once, so that the server knows them: an armed EVALSHA must run, not
        # come back NOSCRIPT (which redis-py answers by loading the script and sending again)
        warm = m.create_session("u", session_id="warm-up").session_id
        m.apply_session_update(warm, _bump, channel="api")
        store.incr("custom", 0)
        m.delete_session(warm)
        store.delete_expired(0.0)
        client = redis_server.client()
        client.flushdb()  # the scripts stay cached; the data and counters go
        client.close()
        proxy.armed = b"EVALSHA"  # the create script
        sid = m.create_session("u", session_id="once", channel="api").session_id
        proxy.armed = b"EVALSHA"  # the update's commit script
        assert m.apply_session_update(sid, _bump, channel="api") == {"n": 1}
        proxy.armed = b"EVALSHA"
        store.incr("custom", 3)
        assert proxy.dropped == 3
        assert m.get_session_state(sid, touch=False) == {"n": 1}
        assert [e.action for e in m.get_session_events(sid)] == ["create", "update"]
        assert store.counters() == {"total_created": 1, "channel:api": 2, "custom": 3}
        proxy.armed = b"EVALSHA"
        assert m.delete_session(sid) is True  # the retry reports what the first attempt did
        assert proxy.dropped == 4
        assert store.counters()["deleted"] == 1 and store.count() == 0
    finally:
        m.close()
        store.close()
        proxy.close()


# ----------------------------------------------------------------------------- persistence


def _fill(store: RedisSessionStore) -> dict[str, Any]:
    with NexusSessionManager(cleanup_interval=300, store=store) as m:
        sids = [m.create_session(f"user{i % 2}", metadata={"i": i}).session_id for i in range(10)]
        for i, sid in enumerate(sids):
            m.update_session_state(sid, {"i": i, "text": "é" * i}, channel="api")
        return {
            "sessions": {s.session_id: s.to_dict() for s in m.list_sessions()},
            "events": {sid: [e.to_dict() for e in m.get_session_events(sid)] for sid in sids},
            "metrics": m.get_session_metrics(),
        }


@pytest.mark.parametrize(
    ("args", "survives"),
    [
        (("--appendonly", "yes", "--appendfsync", "everysec"), True),
        ((), False),  # the fixture's defaults: --save "" --appendonly no
    ],
    ids=["aof-everysec", "no-persistence"],
)
def test_what_a_crash_keeps(redis_factory, args, survives):
    server = redis_factory(*args)
    store = open_store(server.url)
    before = _fill(store)
    client = server.client()
    if survives:
        # Acknowledged writes are in the AOF file (the OS's cache) once Redis wrote its buffer,
        # which it does before replying unless an fsync stalls; wait for that condition.
        while client.info("persistence")["aof_buffer_length"] != 0:
            os.sched_yield()
    client.close()
    server.kill()  # kill -9: a crash, nothing flushed on the way out
    server.start()
    with NexusSessionManager(cleanup_interval=300, store=store) as m:
        sessions = {s.session_id: s.to_dict() for s in m.list_sessions()}
        if survives:
            assert sessions == before["sessions"]
            events = {sid: [e.to_dict() for e in m.get_session_events(sid)] for sid in sessions}
            assert events == before["events"]
            assert m.get_session_metrics() == before["metrics"]
            assert len(m.list_sessions("user0")) == 5
        else:
            assert sessions == {} and m.get_session_metrics()["total_created"] == 0
    store.close()
