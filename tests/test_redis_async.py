"""The Redis store's awaitable twins (``aget``/``aupdate``/``acreate``/``adelete``) and the
limiter's ``acheck``, against real redis-server processes (no mocks).

The twins share the sync methods' scripts and algorithm (``_update_steps``); what differs is
the transport: one auto-pipelined connection per event loop. So these check that they behave
alike (results, errors, expiry, a mutate that raises, counters), that concurrent writers on
one loop, in threads and in another process lose nothing, and that the transport fails fast
and recovers by itself (killed, hung, absent server; a connection cut with a write in flight;
scripts flushed; a forked child). Waits are on conditions, never sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nexus_lab import deploy_with_sessions
from nexus_lab.errors import ServiceUnavailable, SessionNotFound
from nexus_lab.sessions import NexusSessionManager, SessionEvent, open_store
from nexus_lab.sessions.models import SessionRecord

redis = pytest.importorskip("redis")
from nexus_lab.platform.guard import acheck_rate  # noqa: E402
from nexus_lab.platform.redis_limiter import RedisTokenBucketLimiter  # noqa: E402
from nexus_lab.sessions.stores.redis import RedisSessionStore  # noqa: E402

pytestmark = pytest.mark.redis

REPO = Path(__file__).resolve().parents[1]


def record(sid: str, user: str = "u", now: float = 1000.0, ttl: float = 100.0) -> SessionRecord:
    return SessionRecord(sid, user, now, now, now + ttl, None, "{}", [], {}, "{}")


def _bump(state: dict[str, Any]) -> dict[str, Any]:
    return {"n": state.get("n", 0) + 1}


def _run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # a fresh loop each time: the store makes a client per loop


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - compared as data
        return ("error", (type(exc).__name__, str(exc)))


# ----------------------------------------------------------------------------- same behaviour


def _set_state(text: str, result: Any = None) -> Callable[[SessionRecord], Any]:
    def mutate(rec: SessionRecord) -> Any:
        rec.state_json = text
        rec.channels.append("api")
        rec.writers["k"] = ("api", 1001.0)
        return result

    return mutate


def _refuse(rec: SessionRecord) -> None:
    raise ValueError("refused before any change")


def _slide(to: float) -> Callable[[SessionRecord], None]:
    def mutate(rec: SessionRecord) -> None:
        rec.expires_at = to

    return mutate


def _script() -> list[tuple[str, tuple[Any, ...]]]:
    """One story told to each store: (method, args); ``update`` gets a mutate."""
    ev = SessionEvent(1001.0, "api", "update", ("k",))
    return [
        ("create", (record("s"), 1000.0, SessionEvent(1000.0, "api", "create", ()), {"c:x": 2})),
        ("create", (record("s", "other"), 1000.0)),  # a live session has the id
        ("get", ("s", 1000.0)),
        ("get", ("missing", 1000.0)),
        ("update", ("s", _set_state('{"a":1}', 7), 1001.0, ev, {"channel:api": 1})),
        ("get", ("s", 1001.0)),  # remembered as the next update's guess
        ("update", ("s", _refuse, 1001.0, ev, {"channel:api": 1})),  # refused on the guess
        ("update", ("s", _set_state('{"a":2}', "two"), 1002.0)),
        ("update", ("missing", _set_state("{}"), 1002.0)),
        ("update", ("s", _slide(1050.0), 1003.0)),  # expires at 1050 from now on
        ("get", ("s", 1050.0)),  # expired: invisible
        ("update", ("s", _set_state("{}"), 1050.0)),
        ("delete", ("s", 1050.0)),  # expired: not deleted
        ("create", (record("s", "bob", now=1060.0), 1060.0)),  # replaces the expired one
        ("get", ("s", 1060.0)),
        ("delete", ("s", 1061.0)),
        ("delete", ("s", 1061.0)),
        ("get", ("s", 1061.0)),
    ]


def _tell_sync(store: RedisSessionStore) -> list[tuple[str, Any]]:
    return [_outcome(lambda m=m, a=a: getattr(store, m)(*a)) for m, a in _script()]


async def _tell_async(store: RedisSessionStore) -> list[tuple[str, Any]]:
    out = []
    for method, args in _script():
        try:
            out.append(("ok", await getattr(store, "a" + method)(*args)))
        except Exception as exc:  # noqa: BLE001 - compared as data
            out.append(("error", (type(exc).__name__, str(exc))))
    return out


def test_the_twins_do_what_the_sync_methods_do(redis_server, redis_url):
    """The same story (create, read, update, refused mutate, unknown id, expiry, replacement,
    delete) told through the sync methods and through the twins, under two prefixes of one
    server: the same results and errors, the same records, events, counters and keys."""
    sync = RedisSessionStore(redis_url, key_prefix="sync:", max_events=10)
    aio = RedisSessionStore(redis_url, key_prefix="aio:", max_events=10)
    client = redis_server.client()
    try:
        assert aio.async_native is True
        told_sync = _tell_sync(sync)
        told_async = _run(_tell_async(aio))
        assert told_async == told_sync
        assert ("error", ("ValueError", "refused before any change")) in told_async
        assert told_async[4] == ("ok", 7) and told_async[7] == ("ok", "two")
        assert told_async[8][1][0] == "SessionNotFound" and told_async[11][1][0] == "SessionNotFound"
        assert aio.counters() == sync.counters() == {
            "total_created": 2, "c:x": 2, "channel:api": 1, "expired_cleaned": 1, "deleted": 1}
        for store in (sync, aio):  # what the story left: bob's session, then deleted
            assert store.count() == 0 and store.list(None, 1061.0) == []

        def layout(prefix: str) -> list[tuple[str, str]]:  # delete markers: one per delete
            keys = [k.removeprefix(prefix) for k in client.scan_iter(prefix + "*")]
            return sorted(("t:*" if k.startswith("t:") else k, client.type(prefix + k)) for k in keys)

        assert layout("aio:") == layout("sync:")
    finally:
        sync.close()
        aio.close()
        client.close()


def test_records_events_and_guesses_agree_with_the_sync_reads(redis_url):
    """Records written by the twins read back the same through the sync methods (and the
    reverse), events included; a record read by ``aget`` is a private copy."""
    store = open_store(redis_url, max_events=3)

    async def main() -> None:
        assert await store.acreate(record("a", "alice", ttl=500), 1000.0,
                                   SessionEvent(1000.0, "api", "create", ()))
        for i in range(5):
            await store.aupdate("a", _set_state(json.dumps({"i": i})), 1001.0 + i,
                                SessionEvent(1001.0 + i, "cli", "update", (f"k{i}",)),
                                {"channel:cli": 1})
        rec = await store.aget("a", 1010.0)
        assert rec == store.get("a", 1010.0)
        rec.channels.append("mine")  # a private copy: the store's guess is untouched
        rec.writers["x"] = ("mine", 0.0)
        assert "mine" not in (await store.aget("a", 1010.0)).channels
        store.update("a", _set_state('{"sync":1}'), 1011.0)  # written by the sync method
        assert (await store.aget("a", 1011.0)).state_json == '{"sync":1}'
        assert [e.keys for e in store.events("a", 1011.0)] == [("k2",), ("k3",), ("k4",)]
        assert store.counters()["channel:cli"] == 5
        assert await store.adelete("a", 1012.0) is True
        assert store.get("a", 1012.0) is None and store.events("a", 1012.0) == []

    try:
        _run(main())
    finally:
        store.close()


def test_a_mutate_that_raises_writes_nothing_even_on_a_stale_guess(redis_url):
    """``mutate`` raising on the remembered record is confirmed on a fresh read (another
    process may have changed it): here the fresh record lets it through; a mutate raising on
    the fresh record too writes nothing and raises."""
    a = NexusSessionManager(cleanup_interval=300, store=redis_url, max_state_bytes=120)
    b = NexusSessionManager(cleanup_interval=300, store=redis_url, max_state_bytes=120)
    try:
        sid = a.create_session("alice", session_id="s").session_id

        async def main() -> None:
            await a.aapply_session_update(sid, lambda s: {"big": "x" * 90}, channel="a")
            b.update_session_state(sid, {"big": "small"}, channel="b")  # a's guess is stale
            # too big on a's stale record, fits on the current one
            merged = await a.aapply_session_update(sid, lambda s: {"more": "y" * 50}, channel="a")
            assert merged == {"big": "small", "more": "y" * 50}
            with pytest.raises(ValueError, match="120"):  # too big on the fresh record too
                await a.aapply_session_update(sid, lambda s: {"huge": "z" * 200}, channel="a")
            with pytest.raises(TypeError):
                await a.aapply_session_update(sid, lambda s: ["not", "a", "dict"], channel="a")

        _run(main())
        assert b.get_session_state(sid, touch=False) == {"big": "small", "more": "y" * 50}
        assert b.get_session_metrics()["channel_activity"] == {"a": 2, "b": 1}  # refused: 0
    finally:
        a.close()
        b.close()


def test_ownership_and_the_manager_twins(redis_url):
    with NexusSessionManager(cleanup_interval=300, store=redis_url) as m:
        assert m.async_native is True

        async def main() -> None:
            session = await m.acreate_session("alice", channel="api")
            sid = session.session_id
            assert await m.aget_session(sid, channel="api", user_id="bob") is None
            mine = await m.aget_session(sid, channel="api", user_id="alice")
            assert mine is not None and mine.user_id == "alice"
            await m.aapply_session_update(sid, _bump, channel="api")
            assert (await m.aget_session(sid)).state == {"n": 1}
            assert await m.adelete_session(sid) is True
            assert await m.aget_session(sid) is None
            with pytest.raises(SessionNotFound):
                await m.aapply_session_update(sid, _bump, channel="api")

        _run(main())
        metrics = m.get_session_metrics()
        assert metrics["total_created"] == 1 and metrics["deleted"] == 1


def test_a_write_from_inside_mutate_is_refused_on_the_loop_too(redis_url):
    store = open_store(redis_url)

    async def main() -> None:
        await store.acreate(record("a", ttl=10_000), 1000.0)
        with pytest.raises(RuntimeError, match="inside a mutate"):
            await store.aupdate("a", lambda rec: store.update("a", lambda r: None, 1000.0), 1000.0)
        assert store.counters() == {"total_created": 1}
        assert await store.aupdate("a", lambda rec: store.get("a", 1000.0).user_id, 1000.0) == "u"

    try:
        _run(main())
    finally:
        store.close()


def test_a_loop_that_shuts_down_closes_its_connection(redis_server, redis_url):
    """``asyncio.run`` ends: the store's connection on that loop closes with it (not whenever
    the garbage collector finds the socket), and the next loop gets one of its own."""
    store = open_store(redis_url)
    probe = redis_server.client()

    async def main() -> Any:
        await store.acreate(record("a", ttl=10_000), 1000.0)
        client = store._loops.get()
        name = f"probe-{id(client)}"
        await client.call("CLIENT", "SETNAME", name)
        assert name in {c["name"] for c in probe.client_list()}
        return client, name

    try:
        client, name = _run(main())
        assert client._closed and client._conn is None
        deadline = time.monotonic() + 10  # Redis notices the close on its next event loop turn
        while name in {c["name"] for c in probe.client_list()}:
            assert time.monotonic() < deadline, "the connection outlived its loop"
        assert _run(store.aget("a", 1000.0)).user_id == "u"
    finally:
        store.close()
        probe.close()


def test_closed_store_refuses_the_twins(redis_url):
    store = open_store(redis_url)
    _run(store.aget("x", 1000.0))  # connected on that loop
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        _run(store.aget("x", 1000.0))
    with pytest.raises(RuntimeError, match="closed"):
        _run(store.aupdate("x", _bump, 1000.0))


# ----------------------------------------------------------------------------- concurrency

WORKER = textwrap.dedent(
    """
    import json, sys, threading
    from nexus_lab.sessions import NexusSessionManager

    url, sid, per = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seen, errors = [], []
    with NexusSessionManager(cleanup_interval=60, store=url) as m:
        m.get_session(sid, touch=False)  # connected before the start signal
        print("ready", flush=True)
        sys.stdin.readline()

        def work():
            try:
                for _ in range(per):
                    seen.append(m.apply_session_update(
                        sid, lambda s: {"n": s.get("n", 0) + 1}, channel="proc")["n"])
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(json.dumps({"seen": seen, "errors": errors}), flush=True)
    """
)


def test_200_tasks_threads_and_another_process_lose_no_update(redis_url):
    """200 concurrent ``aupdate``s of one session on one loop, while 4 threads of this process
    and 4 of another update it with the sync method: every increment lands exactly once."""
    tasks, per_task, per_thread, per_proc_thread = 200, 2, 40, 40
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with NexusSessionManager(cleanup_interval=300, store=redis_url) as m:
        sid = m.create_session("u").session_id
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url, sid, str(per_proc_thread)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env,
        )
        try:
            line = proc.stdout.readline()
            assert line.strip() == "ready", line + proc.stderr.read()
            seen: list[int] = []
            errors: list[BaseException] = []
            go = threading.Event()

            def thread_work() -> None:
                go.wait()
                try:
                    for _ in range(per_thread):
                        seen.append(m.apply_session_update(sid, _bump, channel="thread")["n"])
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=thread_work) for _ in range(4)]
            for t in threads:
                t.start()

            async def main() -> list[int]:
                async def one() -> list[int]:
                    return [(await m.aapply_session_update(sid, _bump, channel="loop"))["n"]
                            for _ in range(per_task)]

                proc.stdin.write("go\n")
                proc.stdin.flush()
                go.set()
                return [n for ns in await asyncio.gather(*(one() for _ in range(tasks))) for n in ns]

            seen_loop = _run(main())
            for t in threads:
                t.join()
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:  # pragma: no cover
                proc.kill()
                proc.wait()
        child = json.loads(out)
        assert errors == [] and child["errors"] == []
        total = tasks * per_task + 4 * per_thread + 4 * per_proc_thread
        assert sorted(seen_loop + seen + child["seen"]) == list(range(1, total + 1))
        assert m.get_session_state(sid, touch=False) == {"n": total}
        assert m.get_session_metrics()["channel_activity"] == {
            "loop": tasks * per_task, "thread": 4 * per_thread, "proc": 4 * per_proc_thread}


def test_concurrent_aexecute_through_the_platform_counts_every_turn(make_app, redis_url):
    """The production wiring: API keys, a Redis rate limit, monitoring, sessions in Redis and
    an async agent; 300 concurrent calls on one session from one loop (each taking its rate
    token first, as the HTTP guard does): the session's ``turns`` is 300, and the session
    steps ran on the loop (the store's pipelined client), not in worker threads."""
    app = make_app(enable_auth=True, api_keys={"key-1": "alice"}, rate_limit=10**6,
                   rate_limit_store=redis_url, enable_monitoring=True)
    manager = NexusSessionManager(cleanup_interval=300, store=redis_url)

    async def answer(query: str) -> dict:
        return {"response": query.upper()}

    deploy_with_sessions(answer, app, "answer", manager)
    sid = manager.create_session("alice").session_id
    calls = 300
    try:
        async def main() -> list[Any]:
            async def one(i: int) -> Any:
                headers = await acheck_rate(app, "alice")
                assert headers["X-RateLimit-Limit"] == str(10**6)
                return await app.aexecute("answer", {"query": f"q{i}"}, session_id=sid,
                                          principal="alice")

            results = await asyncio.gather(*(one(i) for i in range(calls)))
            assert manager.store._loops._clients  # the twins ran: a client for this loop
            return results

        results = _run(main())
        assert sorted(r.outputs["response"] for r in results) == sorted(
            f"Q{i}" for i in range(calls))
        state = manager.get_session(sid, touch=False).state
        assert state["turns"] == calls
        assert len(state["history"]) <= 10
        assert manager.get_session_metrics()["channel_activity"] == {"api": calls}
        with pytest.raises(SessionNotFound):  # another user's session stays invisible
            _run(app.aexecute("answer", {"query": "x"}, session_id=sid, principal="bob"))
    finally:
        manager.close()


# ----------------------------------------------------------------------------- failures


def _down_calls(store: RedisSessionStore) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "aget": lambda: store.aget("a", 1000.0),
        "aupdate": lambda: store.aupdate("a", lambda r: None, 1000.0),
        "acreate": lambda: store.acreate(record("new"), 1000.0),
        "adelete": lambda: store.adelete("a", 1000.0),
    }


def test_no_server_every_twin_is_service_unavailable_naming_the_url(free_port):
    port = free_port()  # nothing listens there
    store = open_store(f"redis://:hunter2@127.0.0.1:{port}/3")

    async def main() -> None:
        for name, call in _down_calls(store).items():
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable) as info:
                await call()
            assert time.monotonic() - started < 5, name  # refused at once, not after retries
            msg = str(info.value)
            assert f"redis://***@127.0.0.1:{port}/3" in msg and "hunter2" not in msg, name
            assert "failed" in msg and info.value.http_status == 503, name
            assert info.value.headers == {"Retry-After": "1"}

    try:
        _run(main())
    finally:
        store.close()


def test_killed_mid_load_fails_fast_writes_whole_and_recovers_without_a_new_store(redis_factory):
    """kill -9 while 16 tasks update one session: each await ends in ServiceUnavailable (never
    a raw redis error, never the password) within a bound, nothing is half-written (AOF: each
    write is one script), and once Redis is back on its port the same store object serves."""
    server = redis_factory("--appendonly", "yes", "--appendfsync", "always", password="s3cret-pw")
    store = open_store(server.url)  # socket timeouts of 1 s
    m = NexusSessionManager(cleanup_interval=300, store=store)
    sid = m.create_session("u").session_id
    workers = 16

    async def load() -> tuple[list[int], list[tuple[BaseException, float]], float]:
        loop = asyncio.get_running_loop()
        acked: list[int] = []
        failures: list[tuple[BaseException, float]] = []
        enough = asyncio.Event()

        async def work() -> None:
            while True:
                try:
                    acked.append((await m.aapply_session_update(sid, _bump, channel="c"))["n"])
                except BaseException as exc:
                    failures.append((exc, loop.time()))
                    return
                if len(acked) >= 300:
                    enough.set()

        tasks = [asyncio.create_task(work()) for _ in range(workers)]
        await asyncio.wait_for(enough.wait(), 120)
        server.kill()  # mid-load: writes in flight on the pipelined connection
        killed = loop.time()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return acked, failures, killed

    acked, failures, killed = _run(load())
    assert len(failures) == workers
    for exc, when in failures:
        assert type(exc) is ServiceUnavailable, repr(exc)
        assert f"redis://***@127.0.0.1:{server.port}/0" in str(exc)
        assert "s3cret-pw" not in str(exc) and "update of session" in str(exc)
        assert when - killed < 5, f"a task learnt of the outage {when - killed:.1f} s late"

    async def while_down() -> None:
        for name, call in _down_calls(store).items():
            with pytest.raises(ServiceUnavailable):
                await call()
            assert name

    _run(while_down())
    server.start()  # the same port, the same AOF

    async def recover() -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while True:  # the condition: the same store object answers again
            try:
                return await m.aapply_session_update(sid, _bump, channel="c")
            except ServiceUnavailable:
                assert time.monotonic() < deadline, "the store did not recover within 5 s"

    state = _run(recover())
    # nothing half-written: the state and the channel counter moved together, write by write
    assert m.get_session_metrics()["channel_activity"] == {"c": state["n"]}
    assert len(set(acked)) == len(acked)  # no increment handed out twice
    # at most one write per task was applied without its caller hearing (the kill cut it)
    assert len(acked) + 1 <= state["n"] <= len(acked) + 1 + workers
    m.close()
    store.close()


def test_hung_server_times_out_then_recovers(redis_factory):
    server = redis_factory()
    store = RedisSessionStore(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)

    async def main() -> None:
        await store.acreate(record("a", ttl=10_000), 1000.0)
        server.pause()  # SIGSTOP: connections are accepted, nothing answers
        try:
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable, match="Timeout") as info:
                await store.aget("a", 1000.0)
            assert "read of session 'a' failed" in str(info.value)
            with pytest.raises(ServiceUnavailable, match="may or may not have been applied"):
                await store.aupdate("a", lambda r: None, 1000.0)
            assert time.monotonic() - started < 10  # bounded by the socket timeouts
        finally:
            server.resume()
        assert (await store.aget("a", 1000.0)).user_id == "u"

    try:
        _run(main())
    finally:
        server.resume()
        store.close()


def test_a_write_whose_reply_is_lost_is_applied_once(redis_server, redis_url):
    """The pipelined connection is cut after a script reached Redis: the twin sends it again
    on a new connection, and the token makes the repeat a no-op that reports success."""
    from test_redis_store import ReplyDropper

    proxy = ReplyDropper(redis_server.port)
    store = open_store(f"redis://127.0.0.1:{proxy.port}/0")
    m = NexusSessionManager(cleanup_interval=300, store=store)

    async def main() -> None:
        warm = (await m.acreate_session("u", session_id="warm-up")).session_id
        await m.aapply_session_update(warm, _bump, channel="api")  # every script cached
        await m.adelete_session(warm)
        proxy.armed = b"EVALSHA"
        sid = (await m.acreate_session("u", session_id="once", channel="api")).session_id
        proxy.armed = b"EVALSHA"
        assert await m.aapply_session_update(sid, _bump, channel="api") == {"n": 1}
        proxy.armed = b"EVALSHA"
        assert await m.adelete_session(sid) is True  # the retry reports what the first did
        assert proxy.dropped == 3

    try:
        _run(main())
        counters = store.counters()
        assert counters["total_created"] == 2 and counters["deleted"] == 2
        assert counters["channel:api"] == 3 and store.count() == 0
    finally:
        m.close()
        store.close()
        proxy.close()


def test_scripts_flushed_or_lost_in_a_restart_are_sent_again(redis_server, redis_url):
    store = open_store(redis_url)

    async def main() -> None:
        await store.acreate(record("a", ttl=10_000), 1000.0)
        await store.aupdate("a", _set_state('{"x":1}'), 1000.0)
        redis_server.client().script_flush()
        await store.aupdate("a", _set_state('{"x":2}'), 1000.0)  # NOSCRIPT, then EVAL
        assert await store.adelete("a", 1000.0) is True

    try:
        _run(main())
        assert store.counters() == {"total_created": 1, "deleted": 1}
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_connects_on_its_own(redis_url):
    store = open_store(redis_url)
    limiter = RedisTokenBucketLimiter(1000, redis_url)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(store.acreate(record("a", ttl=10_000), 1000.0))
        loop.run_until_complete(limiter.acheck("p"))  # the parent is connected on `loop`
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # nothing of the parent's: no client, so the child's loop connects anew
                fresh = not store._loops._clients and not limiter._loops._clients

                async def child() -> str:
                    await limiter.acheck("p")
                    await store.aupdate("a", _set_state('{"child":1}'), 1000.0)
                    return (await store.aget("a", 1000.0)).state_json

                code = 0 if fresh and asyncio.run(child()) == '{"child":1}' else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # the parent's connection is still its own and still works
        rec = loop.run_until_complete(store.aget("a", 1000.0))
        assert rec.state_json == '{"child":1}'
        assert loop.run_until_complete(limiter.acheck("p")).allowed
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())  # closes the loop's clients
        loop.close()
        store.close()
        limiter.close()


# ----------------------------------------------------------------------------- the limiter


def test_the_limiter_on_the_loop_fails_closed_fast_and_recovers(redis_factory):
    server = redis_factory(password="s3cret-pass")
    limiter = RedisTokenBucketLimiter(5, server.url, timeout=1.0)

    async def burst() -> list[bool]:
        return [(await limiter.acheck("dave")).allowed for _ in range(6)]

    try:
        assert _run(burst()) == [True] * 5 + [False]
        port = server.port
        server.kill()

        async def down() -> None:
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable) as info:
                await limiter.acheck("dave")
            assert time.monotonic() - started < 5
            assert "s3cret-pass" not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)

        _run(down())
        server.start()  # the same port, kept by the process object

        async def back() -> bool:
            deadline = time.monotonic() + 5
            while True:
                try:
                    return (await limiter.acheck("erin")).allowed
                except ServiceUnavailable:
                    assert time.monotonic() < deadline, "the limiter did not recover within 5 s"

        assert _run(back()) is True
    finally:
        limiter.close()
