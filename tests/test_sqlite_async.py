"""The SQLite store's native awaitable twins (``aget``, ``aupdate``, ``acreate``, ``adelete``).

They must behave exactly like the sync methods, lose no write under concurrency
(awaited and sync writers mixed), share group commits, never leave an await
hanging when the store closes, and serve ``Nexus.aexecute`` without the
platform's worker threads. Real SQLite files under tmp_path; each test drives
its own event loop with ``asyncio.run`` (no pytest-asyncio). Nothing waits by
sleeping: threads are synchronised with events, and coroutines yield to the
loop (``asyncio.sleep(0)``) only while polling a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nexus_lab import Nexus, NexusSessionManager, deploy_with_sessions
from nexus_lab.errors import SessionNotFound
from nexus_lab.sessions import SessionEvent, SQLiteSessionStore
from nexus_lab.sessions.models import SessionRecord

T = TypeVar("T")
NOW = 1000.0
STORE_THREADS = ("nexus-sqlite-writer", "nexus-sqlite-reader")


def record(sid: str, user: str = "u", now: float = NOW, ttl: float = 10_000.0) -> SessionRecord:
    return SessionRecord(sid, user, now, now, now + ttl, None, "{}", [], {}, "{}")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(STORE_THREADS)]


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Wait for a condition other threads bring about (a condition poll, not a sleep)."""
    deadline = time.monotonic() + 60
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        os.sched_yield()


async def until(predicate: Callable[[], bool], what: str) -> None:
    """The coroutine version: let the loop run other tasks until the condition holds."""
    deadline = time.monotonic() + 60
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0)


def bump(rec: SessionRecord) -> int:
    """mutate: add one to the state's counter ``n``; returns the new value."""
    state = json.loads(rec.state_json)
    state["n"] = state.get("n", 0) + 1
    rec.state_json = json.dumps(state)
    return state["n"]


def counter(store: SQLiteSessionStore, sid: str) -> int:
    return json.loads(store.get(sid, NOW).state_json).get("n", 0)


class Gate:
    """A sync write whose mutate blocks until released: it leads a batch and holds the write
    transaction open, so the writes queued meanwhile wait (deterministically) behind it."""

    def __init__(self, store: SQLiteSessionStore, sid: str) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.outcome: dict[str, object] = {}

        def blocker(rec: SessionRecord) -> str:
            self.entered.set()
            assert self.release.wait(60), "the test never released the gate"
            rec.state_json = '{"gate":1}'
            return "gate done"

        def write() -> None:
            try:
                self.outcome["result"] = store.update(sid, blocker, NOW)
            except BaseException as exc:  # pragma: no cover - asserted by the caller
                self.outcome["error"] = exc

        self.thread = threading.Thread(target=write)
        self.thread.start()
        assert self.entered.wait(60), "the gate write never started"

    def open(self) -> None:
        self.release.set()
        self.thread.join()


@pytest.fixture(params=["file", "memory"])
def store(request, tmp_path: Path):
    s = SQLiteSessionStore(tmp_path / "a.db" if request.param == "file" else ":memory:", max_events=10)
    yield s
    s.close()


# ---------------------------------------------------------------- same behaviour as sync


def test_the_store_says_its_twins_are_native(store):
    assert SQLiteSessionStore.async_native is True
    assert store.blocking is True  # the sync methods still block: they stay off event loops
    with NexusSessionManager(store=store, cleanup_interval=300) as manager:
        assert manager.async_native is True


def test_async_twins_behave_like_the_sync_methods(store):
    async def main() -> None:
        ev = SessionEvent(NOW, "api", "create", ())
        assert await store.acreate(record("a"), NOW, ev, {"channel:api": 1}) is True
        assert await store.acreate(record("a"), NOW) is False  # a live session has that id
        got = await store.aget("a", NOW)
        assert got is not None and got.session_id == "a" and got.user_id == "u"
        assert got.state_json == store.get("a", NOW).state_json
        assert await store.aget("missing", NOW) is None

        upd = SessionEvent(NOW, "api", "update", ("n",))
        assert await store.aupdate("a", bump, NOW, upd, {"channel:api": 1}) == 1
        assert await store.aupdate("a", bump, NOW) == 2
        assert counter(store, "a") == 2
        assert [e.action for e in store.events("a", NOW)] == ["create", "update"]
        assert store.counters() == {"total_created": 1, "channel:api": 2}

        with pytest.raises(SessionNotFound):
            await store.aupdate("missing", bump, NOW)
        assert await store.adelete("a", NOW) is True
        assert await store.adelete("a", NOW) is False
        assert await store.aget("a", NOW) is None
        assert store.counters()["deleted"] == 1
        assert store.count() == 0

    run(main())


def test_mutate_raising_writes_nothing_and_propagates(store):
    store.create(record("a"), NOW)

    def broken(rec: SessionRecord) -> None:
        rec.state_json = '{"half":1}'
        raise ValueError("boom")

    def stop(rec: SessionRecord) -> None:
        raise StopIteration  # cannot travel through a future as itself

    async def main() -> None:
        with pytest.raises(ValueError, match="boom"):
            await store.aupdate("a", broken, NOW, SessionEvent(NOW, "api", "update", ()), {"x": 1})
        with pytest.raises(RuntimeError, match="StopIteration"):
            await store.aupdate("a", stop, NOW)
        # the store goes on: the next write commits
        assert await store.aupdate("a", bump, NOW) == 1

    run(main())
    assert counter(store, "a") == 1
    assert store.events("a", NOW) == []
    assert "x" not in store.counters()


def test_expired_sessions_are_invisible_to_the_twins(store):
    store.create(record("old", now=NOW, ttl=10.0), NOW)

    async def main() -> None:
        later = NOW + 11
        assert await store.aget("old", NOW + 5) is not None
        assert await store.aget("old", later) is None
        with pytest.raises(SessionNotFound):
            await store.aupdate("old", bump, later)
        assert await store.adelete("old", later) is False
        # an expired record with the id is replaced, counted as expired_cleaned
        assert await store.acreate(record("old", now=later), later) is True
        assert (await store.aget("old", later)).created_at == later

    run(main())
    assert store.counters()["expired_cleaned"] == 1
    assert store.count() == 1


# ---------------------------------------------------------------- concurrency


def test_200_concurrent_aupdates_lose_nothing(store):
    store.create(record("a"), NOW)

    async def main() -> list[int]:
        return await asyncio.gather(*(store.aupdate("a", bump, NOW) for _ in range(200)))

    results = run(main())
    assert sorted(results) == list(range(1, 201))  # each saw the one before it
    assert counter(store, "a") == 200


def test_awaited_and_sync_writers_mixed_lose_nothing(store):
    store.create(record("a"), NOW)
    go = threading.Event()
    errors: list[BaseException] = []

    def sync_writer() -> None:
        try:
            assert go.wait(60)
            for _ in range(50):
                store.update("a", bump, NOW)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sync_writer) for _ in range(4)]
    for t in threads:
        t.start()

    async def main() -> None:
        tasks = [asyncio.ensure_future(store.aupdate("a", bump, NOW)) for _ in range(200)]
        go.set()  # the threads start writing while the awaited writes are queued and run
        await asyncio.gather(*tasks)
        await asyncio.gather(*(store.aupdate("a", bump, NOW) for _ in range(100)))

    run(main())
    for t in threads:
        t.join()
    assert not errors
    assert counter(store, "a") == 200 + 100 + 4 * 50


def test_two_event_loops_at_once_each_get_their_own_results(tmp_path):
    store = SQLiteSessionStore(tmp_path / "l.db")
    try:
        store.create(record("a"), NOW)
        store.create(record("b"), NOW)
        results: dict[str, list[int]] = {}

        def loop_thread(sid: str) -> None:
            async def main() -> list[int]:
                return await asyncio.gather(*(store.aupdate(sid, bump, NOW) for _ in range(100)))

            results[sid] = asyncio.run(main())

        threads = [threading.Thread(target=loop_thread, args=(sid,)) for sid in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results["a"]) == sorted(results["b"]) == list(range(1, 101))
        assert counter(store, "a") == counter(store, "b") == 100
    finally:
        store.close()


def test_awaited_writes_share_group_commits(tmp_path):
    store = SQLiteSessionStore(tmp_path / "g.db")
    try:
        store.create(record("gate"), NOW)
        for i in range(50):
            store.create(record(f"s{i}"), NOW)
        statements: list[str] = []

        async def main() -> None:
            gate = Gate(store, "gate")  # leads, transaction open: the awaited writes queue
            tasks = [asyncio.ensure_future(store.aupdate(f"s{i}", bump, NOW)) for i in range(50)]
            await until(lambda: len(store._queue) == 50, "50 awaited writes queued")
            store._wconn.set_trace_callback(statements.append)
            # the gate's thread commits, then hands the lead to the store's writer thread, which
            # takes all 50 waiting in one transaction (this loop is not blocked meanwhile)
            await asyncio.get_running_loop().run_in_executor(None, gate.open)
            assert await asyncio.gather(*tasks) == [1] * 50
            assert gate.outcome == {"result": "gate done"}

        run(main())
        begins = [n for n, sql in enumerate(statements) if sql == "BEGIN IMMEDIATE"]
        assert len(begins) == 1, statements  # the gate's BEGIN came before the trace was set
        batch = statements[begins[0] :]
        assert batch[-1] == "COMMIT" and batch.count("COMMIT") == 1
        assert sum(sql.startswith("UPDATE nexus_sessions") for sql in batch) == 50, batch

        # without a gate too: many awaited writes at once take fewer transactions than writes
        statements.clear()
        store._wconn.set_trace_callback(statements.append)

        async def burst() -> None:
            await asyncio.gather(*(store.aupdate(f"s{i % 50}", bump, NOW) for i in range(200)))

        run(burst())
        assert statements.count("COMMIT") < 100, statements.count("COMMIT")
        assert sum(counter(store, f"s{i}") for i in range(50)) == 50 + 200
    finally:
        store.close()


def test_a_cancelled_await_still_commits_its_write_once(tmp_path):
    store = SQLiteSessionStore(tmp_path / "x.db")
    try:
        store.create(record("gate"), NOW)
        store.create(record("a"), NOW)

        async def main() -> None:
            gate = Gate(store, "gate")
            task = asyncio.ensure_future(store.aupdate("a", bump, NOW))
            await until(lambda: len(store._queue) == 1, "the write queued")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.get_running_loop().run_in_executor(None, gate.open)
            # a later write queues behind it: once it is acknowledged, the cancelled one ran
            assert await store.aupdate("a", bump, NOW) == 2

        run(main())
        assert counter(store, "a") == 2
    finally:
        store.close()


# ---------------------------------------------------------------- threads and close


def test_threads_start_on_first_await_and_end_at_close(tmp_path):
    assert store_threads() == []
    store = SQLiteSessionStore(tmp_path / "t.db")
    store.create(record("a"), NOW)
    store.update("a", bump, NOW)
    assert store.get("a", NOW) is not None
    assert store_threads() == []  # the sync methods start none

    async def main() -> None:
        assert (await store.aget("a", NOW)).session_id == "a"
        assert await store.aupdate("a", bump, NOW) == 2

    run(main())
    started = store_threads()
    assert sorted(t.name.split(":")[0] for t in started) == sorted(STORE_THREADS)
    assert all(t.daemon for t in started)
    store.close()
    wait_until(lambda: not store_threads(), "the store's threads to end")
    with pytest.raises(RuntimeError, match="closed"):
        run(store.aget("a", NOW))
    with pytest.raises(RuntimeError, match="closed"):
        run(store.aupdate("a", bump, NOW))
    assert store_threads() == []  # a closed store starts none again


def test_close_fails_queued_awaited_writes_and_never_hangs(store):
    store.create(record("gate"), NOW)
    store.create(record("a"), NOW)

    async def main() -> None:
        assert await store.aget("a", NOW) is not None  # the reader thread runs
        gate = Gate(store, "gate")
        writes = [asyncio.ensure_future(store.aupdate("a", bump, NOW)) for _ in range(10)]
        await until(lambda: len(store._queue) == 10, "10 awaited writes queued")
        # (a ':memory:' store reads on the write connection: this read waits behind the gate)
        read = asyncio.ensure_future(store.aget("a", NOW))
        await asyncio.sleep(0)  # one turn of the loop: the read is queued
        closer = threading.Thread(target=store.close)
        closer.start()  # it waits for the gate's batch to commit
        # the queued writes fail at once, before the gate commits
        outcomes = await asyncio.wait_for(
            asyncio.gather(*writes, return_exceptions=True), timeout=60
        )
        assert all(
            isinstance(r, RuntimeError) and "nothing was written" in str(r) for r in outcomes
        ), outcomes
        assert closer.is_alive()
        await asyncio.get_running_loop().run_in_executor(None, gate.open)
        await asyncio.get_running_loop().run_in_executor(None, closer.join)
        assert gate.outcome == {"result": "gate done"}
        # the read ran before close, or fails with the closed error; it never hangs
        (got,) = await asyncio.wait_for(asyncio.gather(read, return_exceptions=True), timeout=60)
        if isinstance(got, BaseException):
            assert isinstance(got, RuntimeError) and "closed" in str(got), got
        else:
            assert got.session_id == "a"

    run(main())
    wait_until(lambda: not store_threads(), "the store's threads to end")


def test_close_on_the_loop_with_awaited_writes_in_flight_loses_or_doubles_nothing(tmp_path):
    path = tmp_path / "c.db"
    store = SQLiteSessionStore(path)
    store.create(record("a"), NOW)

    async def main() -> list[object]:
        tasks = [asyncio.ensure_future(store.aupdate("a", bump, NOW)) for _ in range(100)]
        await asyncio.sleep(0)  # all 100 queue; some batches may run
        store.close()  # on the loop: waits only for a batch in flight
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)

    outcomes = run(main())
    done = [r for r in outcomes if isinstance(r, int)]
    failed = [r for r in outcomes if not isinstance(r, int)]
    assert all(isinstance(r, RuntimeError) and "closed" in str(r) for r in failed), failed
    assert sorted(done) == list(range(1, len(done) + 1))
    again = SQLiteSessionStore(path)
    try:  # exactly the acknowledged writes are in the file
        assert counter(again, "a") == len(done)
    finally:
        again.close()
    wait_until(lambda: not store_threads(), "the store's threads to end")


def test_close_from_inside_an_awaited_write_commits_that_write(tmp_path):
    store = SQLiteSessionStore(tmp_path / "i.db")
    store.create(record("a"), NOW)

    def closing(rec: SessionRecord) -> str:
        store.close()  # e.g. a shutdown hook, run on the store's writer thread
        rec.state_json = '{"last":1}'
        return "ok"

    async def main() -> None:
        assert await store.aupdate("a", closing, NOW) == "ok"
        with pytest.raises(RuntimeError, match="closed"):
            await store.aget("a", NOW)

    run(main())
    wait_until(lambda: not store_threads(), "the store's threads to end")
    again = SQLiteSessionStore(tmp_path / "i.db")
    try:
        assert again.get("a", NOW).state_json == '{"last":1}'
    finally:
        again.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_threads(tmp_path):
    store = SQLiteSessionStore(tmp_path / "f.db")
    try:
        store.create(record("a"), NOW)

        async def twice() -> int:
            assert (await store.aget("a", NOW)).session_id == "a"
            return await store.aupdate("a", bump, NOW)

        assert run(twice()) == 1  # the parent's threads run
        pid = os.fork()
        if pid == 0:  # the child: the parent's threads do not exist here
            code = 1
            try:
                if run(twice()) == 2 and len(store_threads()) == 2:
                    code = 0
                store.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert run(twice()) == 3  # the parent's threads still serve it, and see the child's write
    finally:
        store.close()


# ---------------------------------------------------------------- through the platform


def test_aexecute_with_a_sqlite_session_per_call_loses_no_turn(tmp_path):
    manager = NexusSessionManager(
        cleanup_interval=300, session_ttl=3600, store=f"sqlite:///{tmp_path}/p.db"
    )
    app = Nexus(api_port=0, mcp_port=0)
    try:

        async def echo(query: str) -> dict:
            return {"response": query}

        deploy_with_sessions(echo, app, "assistant", manager)
        assert manager.async_native
        sids = [manager.create_session(user_id="u").session_id for _ in range(4)]

        async def main() -> list[Any]:
            calls = [
                app.aexecute("assistant", {"query": f"q{i}"}, session_id=sids[i % 4])
                for i in range(200)
            ]
            # and calls without a session: each creates one with its write (acreate)
            calls += [app.aexecute("assistant", {"query": f"new{i}"}) for i in range(20)]
            return await asyncio.gather(*calls)

        results = run(main())
        assert all(r.outputs["response"].startswith(("q", "new")) for r in results)
        for sid in sids:
            assert manager.get_session_state(sid)["turns"] == 50
        created = {r.session_id for r in results[200:]}
        assert len(created) == 20 and not created & set(sids)
        assert all(manager.get_session_state(s)["turns"] == 1 for s in created)
        # the store steps ran on the store's threads, not the platform's worker pool
        assert app._executor is None
        assert len(store_threads()) == 2
    finally:
        app.close()
        manager.close()
    wait_until(lambda: not store_threads(), "the store's threads to end")


def test_the_reader_connection_is_read_only(tmp_path):
    """The reader thread's connection refuses writes (query_only), like the pooled ones."""
    store = SQLiteSessionStore(tmp_path / "r.db")
    try:
        store.create(record("a"), NOW)
        assert run(store.aget("a", NOW)) is not None
        wait_until(lambda: store._rconn is not None, "the reader connection")
        with pytest.raises(sqlite3.OperationalError):
            store._rconn.execute("DELETE FROM nexus_sessions")
    finally:
        store.close()
