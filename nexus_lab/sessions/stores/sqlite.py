"""SQLite session store: sessions in one file, shared by threads and processes.

The embedded default for servers: no service to run, survives restarts, and
several processes (uvicorn workers, a CLI, a notebook) can share one file.

* WAL journal, ``synchronous=NORMAL`` by default: a write is acknowledged once
  its transaction committed to the WAL, so a process crash (even ``kill -9``)
  loses nothing acknowledged; a power cut may lose the last transactions.
  ``synchronous="FULL"`` also survives power loss, at one fsync per commit
  (which group commit shares among the writers waiting).
* **Group commit.** Writers of one store object do not take turns on the file
  lock: the first writer to arrive becomes the *leader*, takes every write
  waiting at that moment and runs them in ONE ``BEGIN IMMEDIATE ... COMMIT``;
  a write that fails undoes only itself, and its caller gets the exception
  (an update's one ``UPDATE`` is the last thing it does, after ``mutate``,
  and SQLite undoes a failed statement by itself; creates and deletes, which
  write several statements, each run inside their own ``SAVEPOINT``). Every caller is
  acknowledged only after the ``COMMIT`` returned. The leader then hands the
  role to the next waiting writer, so nobody leads for long. With one writer
  this is exactly one transaction per write. The sync methods start no thread.
* ``BEGIN IMMEDIATE`` takes the file's write lock before reading, so two
  processes updating one session never lose each other's keys; counters and
  the event log are written in the same transaction as the change.
* **Reads never queue behind writes.** ``get``, ``list``, ``events``,
  ``counters`` and ``count`` run on read connections from a small pool (one
  per concurrently reading thread); WAL readers see the last commit and do not
  wait for the writer. (``":memory:"`` is one connection, so there reads wait
  for a batch in flight: fine for tests and notebooks, one process only.)
* **Native awaitable twins** (``aget``, ``aupdate``, ``acreate``, ``adelete``;
  ``async_native = True``). An asyncio server awaits them on its event loop,
  and the loop itself never touches SQLite or a lock a batch holds: a call
  only creates a future and hands its work over (a ``SimpleQueue.put``, or an
  append under the queue's short lock). Two daemon threads of the store,
  started on the first awaited call, do the work: a *writer* thread that
  leads group commits whenever awaited writes wait and no thread leads (an
  awaiting coroutine cannot lead: leading blocks), and a *reader* thread
  that runs whatever reads are queued back to back on its own connection
  (one thread: more readers only trade the GIL). A batch wakes each loop at
  most once (one ``call_soon_threadsafe`` resolving all of its futures, or
  none if a wake-up is already pending), instead of one worker-thread hop
  per call. Sync and awaited writes share the queue and the batches. A
  cancelled ``aupdate``/``acreate``/``adelete`` does not withdraw its write:
  it was queued when the call started and commits (or fails) with its batch,
  exactly once; only its result is dropped. ``close()`` fails queued awaits
  with a ``RuntimeError`` (never leaves one hanging) and stops the threads.
* Fork safe: a forked child starts with fresh locks and opens its own
  connections; it never uses or closes the parent's, and starts its own
  threads on its first awaited call (the parent's do not exist in it).

Example::

    from nexus_lab.sessions import NexusSessionManager

    manager = NexusSessionManager(store="sqlite:///var/sessions.db")
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import weakref
from _thread import LockType, allocate_lock, get_ident
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from ...errors import ConfigError, SessionNotFound
from ..models import EventFields, SessionEvent, SessionRecord, decode_json, encode_json
from . import COUNTER_CREATED, COUNTER_DELETED, COUNTER_EXPIRED, SessionStore

__all__ = ["SQLiteSessionStore"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

_LIVE = "__live__"  # internal counter: records held, kept by create/delete/delete_expired
_TRIM_EVERY = 16  # trim a session's event rows every this many events
_MAX_IDLE_READERS = 64  # read connections kept open between reads (one per concurrent reader)
_SCHEMA_VERSION = 1  # PRAGMA user_version: 1 = texts with ints beyond 64 bits are marked
_SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")
_CLOSED = "SQLiteSessionStore is closed"
_FORKED_MEMORY = "a ':memory:' SQLite store cannot be used from a forked process"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS nexus_sessions (
        session_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_accessed REAL NOT NULL,
        expires_at REAL NOT NULL,
        ttl REAL,
        metadata TEXT NOT NULL,
        channels TEXT NOT NULL,
        writers TEXT NOT NULL,
        state TEXT NOT NULL,
        event_seq INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS nexus_sessions_expires ON nexus_sessions(expires_at)",
    "CREATE INDEX IF NOT EXISTS nexus_sessions_user ON nexus_sessions(user_id, created_at)",
    """CREATE TABLE IF NOT EXISTS nexus_session_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        ts REAL NOT NULL,
        channel TEXT,
        action TEXT NOT NULL,
        keys TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS nexus_session_events_sid ON nexus_session_events(session_id, id)",
    "CREATE TABLE IF NOT EXISTS nexus_session_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)

_COLUMNS = "session_id, user_id, created_at, last_accessed, expires_at, ttl, metadata, channels, writers, state"
_INCR = (
    "INSERT INTO nexus_session_counters(name, value) VALUES (?, ?) "
    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)
_GET = f"SELECT {_COLUMNS} FROM nexus_sessions WHERE session_id = ? AND expires_at > ?"
_GET_FOR_UPDATE = f"SELECT {_COLUMNS}, event_seq FROM nexus_sessions WHERE session_id = ?"
_PUT = (
    "UPDATE nexus_sessions SET last_accessed = ?, expires_at = ?, ttl = ?, metadata = ?, "
    "channels = ?, writers = ?, state = ?, event_seq = ? WHERE session_id = ?"
)
_LOG = "INSERT INTO nexus_session_events(session_id, ts, channel, action, keys) VALUES (?, ?, ?, ?, ?)"
_EVENTS = (
    "SELECT ts, channel, action, keys FROM (SELECT id, ts, channel, action, keys "
    "FROM nexus_session_events WHERE session_id = ? AND EXISTS "
    "(SELECT 1 FROM nexus_sessions WHERE session_id = ? AND expires_at > ?) "
    "ORDER BY id DESC LIMIT ?) ORDER BY id"
)
# Text an older version wrote may hold ints beyond 64 bits unmarked; any run of 19+ digits
# could be one, so such rows get the marker (a leading space) once, when a file is opened.
_LONG_DIGITS = "*" + "[0-9]" * 19 + "*"


def _log_row(session_id: str, event: EventFields) -> tuple[Any, ...]:
    """``_LOG``'s parameters for one event (its keys as JSON)."""
    ts, channel, action, keys = event
    return (session_id, ts, channel, action, encode_json(keys))


def _record(row: tuple) -> SessionRecord:
    return SessionRecord(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        decode_json(row[7]),
        {k: (v[0], v[1]) for k, v in decode_json(row[8]).items()},  # JSON has no tuples
        row[9],
    )


def _fresh(exc: BaseException) -> Exception:
    """A new exception like ``exc`` for each caller of a failed batch (one object raised in
    several threads would mix their tracebacks)."""
    if isinstance(exc, Exception):
        try:
            new = type(exc)(*exc.args)
        except Exception:
            new = RuntimeError(str(exc))
    else:  # KeyboardInterrupt & co. in the leading thread: the others get a plain error
        new = RuntimeError(
            f"the batch holding this write was interrupted ({type(exc).__name__}) before "
            "its commit; nothing was written"
        )
    new.__cause__ = exc
    return new


class _Op:
    """One write waiting for, or taken into, a group commit.

    ``fn(conn, op)`` runs inside the batch's transaction. An update leaves its
    event row, trim and counter increments in ``log``/``trim``/``incr``: the
    batch writes them for all its updates at once (one ``executemany`` each)
    once they succeeded, instead of two or three statements per write.
    ``barrier`` ops (create, delete, delete_expired) delete or count rows
    themselves, so what the updates before them left is written first.

    A sync caller's op has a ``done`` lock its thread waits on (and may be
    promoted to lead). An awaited op has instead the ``fut`` its coroutine
    awaits, and the ``box`` of its loop: it is never promoted (a coroutine cannot
    lead), and is resolved through the box once its batch committed.
    """

    __slots__ = (
        "fn", "barrier", "result", "error", "lead", "done", "log", "trim", "incr", "box", "fut"
    )

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection, _Op], Any],
        barrier: bool,
        box: _Outbox | None = None,
        fut: asyncio.Future | None = None,
    ) -> None:
        self.fn = fn
        self.barrier = barrier
        self.result: Any = None
        self.error: BaseException | None = None
        self.lead = False  # set when the caller is handed the leader role instead of a result
        self.log: tuple | None = None
        self.trim: str | None = None
        self.incr: Mapping[str, int] | None = None
        self.box = box
        self.fut = fut
        self.done: LockType | None = None
        if fut is None:
            self.done = allocate_lock()  # held until acknowledged (or its caller promoted)
            self.done.acquire()

    def outcome(self) -> Any:
        err = self.error
        if err is not None:
            self.error = None  # no reference cycle through the traceback
            raise err
        return self.result


class _Outbox:
    """Results of awaited calls, finished by the store's threads, for one event loop.

    A store thread appends ``(future, error, result)`` and wakes the loop only
    if no wake-up is pending: one ``call_soon_threadsafe`` (a write to the
    loop's self-pipe) delivers every result finished until the loop gets to
    it, so a batch wakes the loop at most once, and under load several
    batches share one wake-up. No lock: ``pending`` is cleared before the
    drain takes the items, so an item appended while a wake-up is pending is
    always taken by that drain; two threads waking at once may schedule one
    drain too many, which finds nothing to do. A cancelled await is skipped.
    """

    __slots__ = ("loop", "items", "pending", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)  # the outbox lives as long as its loop, not longer
        self.items: deque[tuple[asyncio.Future, BaseException | None, Any]] = deque()
        self.pending = False

    def wake(self) -> None:  # a store thread (or close())
        if self.pending:
            return
        self.pending = True
        loop = self.loop()
        try:
            if loop is None:
                raise RuntimeError("the loop is gone")
            loop.call_soon_threadsafe(self.drain)
        except RuntimeError:  # the loop is closed: nobody awaits these any more
            self.items.clear()
            self.pending = False

    def drain(self) -> None:  # the event loop
        self.pending = False
        items = self.items
        while items:
            fut, err, result = items.popleft()
            if fut.done():
                continue
            if err is None:
                fut.set_result(result)
                continue
            try:
                fut.set_exception(err)
            except TypeError:  # StopIteration & co. cannot travel through a future
                new = RuntimeError(f"{type(err).__name__} raised in a session store call")
                new.__cause__ = err
                fut.set_exception(new)


_OUTBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Outbox] = (
    weakref.WeakKeyDictionary()
)
_OUTBOXES_LOCK = threading.Lock()


def _outbox(loop: asyncio.AbstractEventLoop) -> _Outbox:
    """The outbox of ``loop`` (one per loop, shared by every store)."""
    box = _OUTBOXES.get(loop)
    if box is None:
        with _OUTBOXES_LOCK:
            box = _OUTBOXES.get(loop)
            if box is None:
                box = _OUTBOXES[loop] = _Outbox(loop)
    return box


def _writer_main(ref: weakref.ref[SQLiteSessionStore], wake: SimpleQueue) -> None:
    """The store's writer thread: leads one group commit per token put in ``wake``.

    A token means the lead was handed to this thread (see ``_pass_lead``), so
    exactly one ``_lead`` runs per token; ``None`` stops it (close, or the store
    was garbage collected). It holds the store only while it leads.
    """
    while wake.get() is not None:
        store = ref()
        if store is None:
            return
        try:
            store._lead(None)
        except BaseException:  # _lead passed the lead on and failed the batch's callers
            logger.exception("the SQLite store's writer thread caught an error; it goes on")
        del store


def _reader_main(ref: weakref.ref[SQLiteSessionStore], reads: SimpleQueue) -> None:
    """The store's reader thread: runs every queued ``aget`` back to back, then wakes each
    awaiting loop once with all of its results. ``None`` in ``reads`` stops it."""
    conn: sqlite3.Connection | None = None
    get, get_nowait = reads.get, reads.get_nowait
    try:
        while True:
            items = [get()]
            try:
                while True:
                    items.append(get_nowait())
            except Empty:
                pass
            store = ref()
            if store is None:
                return
            stop = False
            boxes: set[_Outbox] = set()
            for item in items:
                if item is None:
                    stop = True  # close(): what was queued with it still gets its error
                    continue
                session_id, now, box, fut = item
                if fut.cancelled():
                    continue
                result = err = None
                try:
                    if store._closed:
                        raise RuntimeError(_CLOSED)
                    if store.in_memory:  # one connection: the writer's (waits for a batch)
                        row = store._fetchone(_GET, (session_id, now))
                    else:
                        if conn is None:
                            conn = store._rconn = store._open_reader()
                        row = conn.execute(_GET, (session_id, now)).fetchone()
                    if row is not None:
                        result = _record(row)
                except Exception as exc:
                    err = exc
                box.items.append((fut, err, result))
                boxes.add(box)
            del store
            for box in boxes:
                box.wake()
            if stop:
                return
    finally:
        if conn is not None:
            conn.close()


_STORES: weakref.WeakSet[SQLiteSessionStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class SQLiteSessionStore(SessionStore):
    """Sessions in a SQLite file (or ``":memory:"``), safe across threads and processes.

    ``path`` is a file path (parent directories are created) or ``":memory:"``.
    ``timeout`` is how long a writer waits for another process (seconds).
    ``synchronous`` is ``"NORMAL"`` (default: survives process crashes) or
    ``"FULL"``/``"EXTRA"`` (survives power loss too).

    Example::

        store = SQLiteSessionStore("data/sessions.db")
        with NexusSessionManager(store=store) as manager:
            sid = manager.create_session(user_id="u1").session_id
        # another process: NexusSessionManager(store="sqlite:///data/sessions.db")
        store.close()
    """

    name = "sqlite"
    blocking = True  # commits wait on the file (and on other processes): keep off event loops
    async_native = True  # the a* twins hand their work to the store's own threads

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        max_events: int = 100,
        timeout: float = 30.0,
        synchronous: str = "NORMAL",
    ) -> None:
        sync = str(synchronous).upper()
        if sync not in _SYNCHRONOUS:
            raise ConfigError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}",
                field="synchronous",
            )
        self.synchronous = sync
        self.max_events = max_events
        self.timeout = float(timeout)
        raw = os.fspath(path)
        self.in_memory = raw in (":memory:", "")
        if self.in_memory:
            self.path = ":memory:"
        else:
            p = Path(raw).expanduser()
            p.parent.mkdir(parents=True, exist_ok=True)
            self.path = str(p)
        self._closed = False
        self._forked_memory = False
        self._init_runtime()
        self._orphans: list[sqlite3.Connection] = []
        self._wconn: sqlite3.Connection | None = self._connect_writer()
        _STORES.add(self)

    def _init_runtime(self) -> None:
        self._qlock = threading.Lock()  # guards _queue, _leading, _leader, _closed changes
        self._wlock = threading.RLock()  # held while a batch runs on the write connection
        self._queue: list[_Op] = []
        self._leading = False  # a leader runs, or a waiting writer was promoted to lead
        self._leader: int | None = None  # thread id of the leader while it runs a batch
        self._last_batch = 0  # size of the last batch: how many writers to expect back
        self._qasync = 0  # how many ops in _queue are awaited ones (no thread waits on them)
        self._idle: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        # the threads of the awaitable twins, started on first use (see _start_thread)
        self._tlock = threading.Lock()  # guards starting them against close()
        self._wake: SimpleQueue = SimpleQueue()  # tokens: the lead is the writer thread's
        self._reads: SimpleQueue = SimpleQueue()  # (session_id, now, outbox, future) of aget
        self._wthread: threading.Thread | None = None
        self._rthread: threading.Thread | None = None
        self._rconn: sqlite3.Connection | None = None  # the reader thread's connection

    # -- connections
    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        conn = self._open()
        try:
            if not self.in_memory:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                conn.execute(
                    "INSERT OR IGNORE INTO nexus_session_counters(name, value) VALUES (?, 0)",
                    (_LIVE,),
                )
                if conn.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:
                    for col in ("state", "metadata"):
                        conn.execute(
                            f"UPDATE nexus_sessions SET {col} = ' ' || {col} "
                            f"WHERE {col} GLOB ? AND substr({col}, 1, 1) <> ' '",
                            (_LONG_DIGITS,),
                        )
                    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _after_fork(self) -> None:
        """In a forked child: fresh locks and queues; the parent's connections are kept
        referenced (never used, never closed: closing would touch the parent's locks). The
        parent's threads do not exist here: the first awaited call starts the child's own."""
        self._orphans.extend(c for c in (self._wconn, self._rconn, *self._idle) if c is not None)
        self._wconn = None
        self._forked_memory = self.in_memory
        self._init_runtime()

    # The pool is a plain list: pop() and append() are atomic, so a read takes no lock here.
    # close() sets _closed and then drains the list; a connection appended after the drain
    # is found by the second look at _closed and closed by whoever holds it last.
    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(_CLOSED)
        try:
            return self._idle.pop()
        except IndexError:
            pass
        return self._open_reader()

    def _open_reader(self) -> sqlite3.Connection:
        conn = self._open()
        conn.execute("PRAGMA query_only = 1")
        return conn

    def _release(self, conn: sqlite3.Connection) -> None:
        idle = self._idle
        if not self._closed and len(idle) < _MAX_IDLE_READERS:
            idle.append(conn)
            if not self._closed:
                return
            try:  # close() may have drained the list before our append
                idle.remove(conn)
            except ValueError:  # another reader took it; its release closes it
                return
        conn.close()

    def _check_memory(self) -> sqlite3.Connection:
        if self._forked_memory:
            raise RuntimeError(_FORKED_MEMORY)
        conn = self._wconn
        if conn is None:
            raise RuntimeError(_CLOSED)
        return conn

    def _fetchone(self, sql: str, params: tuple) -> Any:
        if self.in_memory:  # one connection: wait for a batch in flight
            with self._wlock:
                return self._check_memory().execute(sql, params).fetchone()
        conn = self._reader()
        try:
            return conn.execute(sql, params).fetchone()
        finally:
            self._release(conn)

    def _fetchall(self, sql: str, params: tuple) -> list[Any]:
        if self.in_memory:
            with self._wlock:
                return self._check_memory().execute(sql, params).fetchall()
        conn = self._reader()
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            self._release(conn)

    # -- group commit
    def _submit(self, fn: Callable[[sqlite3.Connection, _Op], T], barrier: bool = True) -> T:
        """Run ``fn(conn, op)`` inside a group-committed transaction; return its result once
        the transaction committed, or raise what ``fn`` raised (its writes rolled back)."""
        op = _Op(fn, barrier)
        with self._qlock:
            if self._closed:
                raise RuntimeError(_CLOSED)
            if self._leader == get_ident():
                raise RuntimeError(
                    "a SQLiteSessionStore write was called from inside a mutate function; "
                    "mutate must only change the record it is given"
                )
            self._queue.append(op)
            follow = self._leading
            self._leading = True
        if follow:
            op.done.acquire()  # until acknowledged, or promoted to lead
            if not op.lead:
                return op.outcome()
        self._lead(op)
        return op.outcome()

    def _lead(self, own: _Op | None) -> None:
        """Run one batch as the leader: the caller's own op (``own``), or, from the
        writer thread (``own`` None), for awaited ops; then pass the lead on."""
        batch: list[_Op] = []
        promoted: _Op | None = None
        writer = own is None
        try:
            try:
                self._wlock.acquire()
            except BaseException:  # interrupted while waiting: pass the role on, lead nothing
                with self._qlock:
                    if own is not None and own in self._queue:
                        self._queue.remove(own)
                        own.error = RuntimeError("interrupted before the write ran")
                    promoted = self._pass_lead(writer)
                raise
            try:
                # Writers acknowledged by the last batch come back at about the same time; a
                # leader that took the queue at once would often commit alone and leave them
                # all to the next transaction. So, after a batch of n, wait (yielding the GIL
                # and the CPU, at most n times) for up to n writers before taking the queue.
                # One writer alone never waits: its last batch was 1. The writer thread does
                # not wait: awaited callers come back only after their loop ran them, and
                # meanwhile the loop goes on queuing others.
                expect = self._last_batch
                if expect > 1 and not writer:
                    queue_len = self._queue.__len__
                    for _ in range(expect):
                        if queue_len() >= expect or self._closed:
                            break
                        os.sched_yield()
                with self._qlock:
                    batch, self._queue = self._queue, []
                    self._last_batch = len(batch) - self._qasync  # threads to expect back
                    self._qasync = 0
                    self._leader = get_ident()
                if batch:
                    self._run(batch)
            finally:
                if self._closed:  # close() came meanwhile (maybe from a mutate): it left us this
                    self._close_writer()
                with self._qlock:
                    self._leader = None
                    promoted = self._pass_lead(writer)
                self._wlock.release()
        finally:
            boxes: set[_Outbox] = set()
            for op in batch:
                box = op.box
                if box is not None:  # awaited: resolved on its loop, one wake-up per loop
                    err, op.error = op.error, None
                    box.items.append((op.fut, err, op.result))  # type: ignore[arg-type]
                    boxes.add(box)
                elif op is not own:
                    op.done.release()  # type: ignore[union-attr]  # acknowledged (or failed)
            for box in boxes:
                box.wake()
            if promoted is not None:
                promoted.done.release()  # type: ignore[union-attr]

    def _pass_lead(self, writer: bool = False) -> _Op | None:
        """With _qlock held: hand the lead on when ops wait, else end the leading.

        Returns the sync op whose thread is promoted (the caller releases its
        ``done``). An awaited op is never promoted: no thread waits on it. When
        only awaited ops wait, or the writer thread led this batch (it just
        goes on: no hand-over), the writer thread gets a token to lead the next.
        """
        queue = self._queue
        if queue:
            if not writer and len(queue) > self._qasync:
                for nxt in queue:
                    if nxt.fut is None:
                        nxt.lead = True
                        return nxt
            self._wake.put(True)  # _leading stays True: the writer thread leads
            return None
        self._leading = False
        return None

    def _run(self, batch: list[_Op]) -> None:
        """One transaction for the whole batch (with _wlock held). Never raises an
        ``Exception``: each op gets its result or its error."""
        conn = self._wconn
        try:
            if conn is None:
                if self._forked_memory:
                    raise RuntimeError(_FORKED_MEMORY)
                if self._closed:
                    raise RuntimeError(_CLOSED)
                conn = self._wconn = self._connect_writer()  # first write in a forked child
            conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            for op in batch:
                op.error = _fresh(exc)
            return
        ok = 0
        logs: list[tuple] = []  # what the successful updates left to write (see _Op)
        trims: list[str] = []
        counts: dict[str, int] = {}
        try:
            if len(batch) == 1:  # alone: the transaction is its savepoint
                op = batch[0]
                try:
                    op.result = op.fn(conn, op)
                    ok = 1
                    self._collect(op, logs, trims, counts)
                except Exception as exc:
                    op.error = exc
            else:
                for op in batch:
                    if not op.barrier:
                        # update/incr: at most one statement, their last step, so a failing one
                        # wrote nothing (see _update_op): no savepoint, two statements saved
                        try:
                            op.result = op.fn(conn, op)
                        except Exception as exc:
                            op.error = exc
                            if not conn.in_transaction:  # SQLite rolled everything back
                                raise
                        else:
                            ok += 1
                            self._collect(op, logs, trims, counts)
                        continue
                    if logs or counts:
                        self._flush(conn, logs, trims, counts)
                    conn.execute("SAVEPOINT nexus_op")
                    try:
                        op.result = op.fn(conn, op)
                    except Exception as exc:
                        op.error = exc
                        if not conn.in_transaction:  # SQLite rolled everything back (I/O, full)
                            raise
                        conn.execute("ROLLBACK TO nexus_op")
                    else:
                        ok += 1
                        self._collect(op, logs, trims, counts)
                    conn.execute("RELEASE nexus_op")
            if ok:
                if logs or counts:
                    self._flush(conn, logs, trims, counts)
                conn.execute("COMMIT")
            elif conn.in_transaction:  # (an I/O error may have rolled it back already)
                conn.execute("ROLLBACK")
        except BaseException as exc:
            # nothing of this batch was committed: ops that had succeeded (or not run) fail too
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except Exception:
                    pass
            for op in batch:
                if op.error is None or op.error is exc:
                    op.result = None
                    op.error = _fresh(exc)
            if not isinstance(exc, Exception):
                raise

    # -- the awaitable twins' threads
    def _start_writer(self) -> SimpleQueue:
        """Start the writer thread if it is not running (first awaited write, or the first
        in a forked child); return the queue its tokens go to."""
        return self._start_thread("_wthread", _writer_main, self._wake, "writer")

    def _start_reader(self) -> SimpleQueue:
        """Start the reader thread if it is not running; return the queue reads go to."""
        return self._start_thread("_rthread", _reader_main, self._reads, "reader")

    def _start_thread(
        self, attr: str, target: Callable[..., None], queue: SimpleQueue, role: str
    ) -> SimpleQueue:
        """Start the store thread kept in ``attr`` (``target(weakref, queue)``) unless it
        runs; ``None`` put in ``queue`` stops it, also when the store is collected unclosed."""
        with self._tlock:
            if self._closed:
                raise RuntimeError(_CLOSED)
            if getattr(self, attr) is None:
                t = threading.Thread(
                    target=target,
                    args=(weakref.ref(self), queue),
                    name=f"nexus-sqlite-{role}:{os.path.basename(self.path)}",
                    daemon=True,
                )
                t.start()
                weakref.finalize(self, queue.put, None)  # stops it if never closed
                setattr(self, attr, t)
            return queue

    async def _asubmit(self, fn: Callable[[sqlite3.Connection, _Op], T], barrier: bool = True) -> T:
        """:meth:`_submit` for a coroutine: queue the op with a future of this loop; the writer
        thread leads if no thread does. The loop only takes ``_qlock`` (never held across
        SQLite) and puts a token: it never waits for a batch."""
        wake = self._wake if self._wthread is not None else self._start_writer()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        op = _Op(fn, barrier, _outbox(loop), fut)
        with self._qlock:
            if self._closed:
                raise RuntimeError(_CLOSED)
            self._queue.append(op)
            self._qasync += 1
            if not self._leading:
                self._leading = True
                wake.put(True)
        return await fut

    def _close_writer(self) -> None:
        conn, self._wconn = self._wconn, None
        if conn is not None:
            conn.close()

    # -- helpers run inside a write transaction
    @staticmethod
    def _apply_incr(conn: sqlite3.Connection, incr: Mapping[str, int]) -> None:
        for item in incr.items():
            conn.execute(_INCR, item)

    @staticmethod
    def _collect(op: _Op, logs: list[tuple], trims: list[str], counts: dict[str, int]) -> None:
        if op.log is not None:
            logs.append(op.log)
            if op.trim is not None:
                trims.append(op.trim)
        if op.incr:
            for name, n in op.incr.items():
                counts[name] = counts.get(name, 0) + n

    def _flush(
        self, conn: sqlite3.Connection, logs: list[tuple], trims: list[str], counts: dict[str, int]
    ) -> None:
        """Write what the batch's updates left: event rows, trims, counter sums."""
        if logs:
            conn.executemany(_LOG, logs)
            logs.clear()
        for sid in trims:  # after the inserts: keep the newest max_events
            self._trim(conn, sid)
        trims.clear()
        if counts:
            conn.executemany(_INCR, list(counts.items()))
            counts.clear()

    def _log(
        self, conn: sqlite3.Connection, session_id: str, event: EventFields, seq: int
    ) -> None:
        conn.execute(_LOG, _log_row(session_id, event))
        if seq % _TRIM_EVERY == 0:
            self._trim(conn, session_id)

    def _trim(self, conn: sqlite3.Connection, session_id: str) -> None:
        if self.max_events <= 0:
            conn.execute("DELETE FROM nexus_session_events WHERE session_id = ?", (session_id,))
            return
        conn.execute(
            "DELETE FROM nexus_session_events WHERE session_id = ? AND id < ("
            "SELECT min(id) FROM (SELECT id FROM nexus_session_events WHERE session_id = ? "
            "ORDER BY id DESC LIMIT ?))",
            (session_id, session_id, self.max_events),
        )

    # -- SessionStore: writes (group-committed); each builds its op once for both twins
    def create(
        self,
        record: SessionRecord,
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> bool:
        return self._submit(self._create_op(record, now, event, incr))

    async def acreate(
        self,
        record: SessionRecord,
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> bool:
        """:meth:`create`, committed by the writer thread's batch (see the module docs)."""
        return await self._asubmit(self._create_op(record, now, event, incr))

    def _create_op(
        self,
        record: SessionRecord,
        now: float,
        event: EventFields | None,
        incr: Mapping[str, int] | None,
    ) -> Callable[[sqlite3.Connection, _Op], bool]:
        sid = record.session_id
        seq = 1 if event is not None else 0
        row = (  # encoded before queuing: less work inside the shared transaction
            sid,
            record.user_id,
            record.created_at,
            record.last_accessed,
            record.expires_at,
            record.ttl,
            record.metadata_json,
            encode_json(record.channels),
            encode_json(record.writers),
            record.state_json,
            seq,
        )

        def op(conn: sqlite3.Connection, _: _Op) -> bool:
            old = conn.execute(
                "SELECT expires_at FROM nexus_sessions WHERE session_id = ?", (sid,)
            ).fetchone()
            if old is not None:
                if old[0] > now:
                    return False
                conn.execute("DELETE FROM nexus_sessions WHERE session_id = ?", (sid,))
                conn.execute("DELETE FROM nexus_session_events WHERE session_id = ?", (sid,))
                conn.execute(_INCR, (COUNTER_EXPIRED, 1))
                conn.execute(_INCR, (_LIVE, -1))
            conn.execute(
                f"INSERT INTO nexus_sessions({_COLUMNS}, event_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            if event is not None:
                self._log(conn, sid, event, seq)
            conn.execute(_INCR, (COUNTER_CREATED, 1))
            conn.execute(_INCR, (_LIVE, 1))
            if incr:
                self._apply_incr(conn, incr)
            return True

        return op

    def update(
        self,
        session_id: str,
        mutate: Callable[[SessionRecord], T],
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> T:
        return self._submit(self._update_op(session_id, mutate, now, event, incr), barrier=False)

    async def aupdate(
        self,
        session_id: str,
        mutate: Callable[[SessionRecord], T],
        now: float,
        event: EventFields | None = None,
        incr: Mapping[str, int] | None = None,
    ) -> T:
        """:meth:`update`, committed by the writer thread's batch: ``mutate`` runs there.

        Cancelling the await does not withdraw the write (see the module docs)."""
        return await self._asubmit(
            self._update_op(session_id, mutate, now, event, incr), barrier=False
        )

    def _update_op(
        self,
        session_id: str,
        mutate: Callable[[SessionRecord], T],
        now: float,
        event: EventFields | None,
        incr: Mapping[str, int] | None,
    ) -> Callable[[sqlite3.Connection, _Op], T]:
        def op(conn: sqlite3.Connection, me: _Op) -> T:
            row = conn.execute(_GET_FOR_UPDATE, (session_id,)).fetchone()
            if row is None or row[4] <= now:
                raise SessionNotFound(session_id)
            rec = _record(row)
            result = mutate(rec)
            seq = row[10] + (1 if event is not None else 0)
            params = (
                rec.last_accessed,
                rec.expires_at,
                rec.ttl,
                rec.metadata_json,
                encode_json(rec.channels),
                encode_json(rec.writers),
                rec.state_json,
                seq,
                session_id,
            )
            if event is not None:  # written by the batch, with the other updates' events
                me.log = _log_row(session_id, event)  # after mutate: apply_session_update sets keys
                if seq % _TRIM_EVERY == 0:
                    me.trim = session_id
            me.incr = incr
            # the op's only write, and the last thing in it that can fail: an update that
            # raises has written nothing (SQLite undoes a failed statement by itself), so it
            # needs no savepoint of its own in a group commit
            conn.execute(_PUT, params)
            return result

        return op

    def delete(self, session_id: str, now: float) -> bool:
        return self._submit(self._delete_op(session_id, now))

    async def adelete(self, session_id: str, now: float) -> bool:
        """:meth:`delete`, committed by the writer thread's batch."""
        return await self._asubmit(self._delete_op(session_id, now))

    def _delete_op(self, session_id: str, now: float) -> Callable[[sqlite3.Connection, _Op], bool]:
        def op(conn: sqlite3.Connection, _: _Op) -> bool:
            cur = conn.execute(
                "DELETE FROM nexus_sessions WHERE session_id = ? AND expires_at > ?",
                (session_id, now),
            )
            if cur.rowcount != 1:
                return False
            conn.execute("DELETE FROM nexus_session_events WHERE session_id = ?", (session_id,))
            conn.execute(_INCR, (COUNTER_DELETED, 1))
            conn.execute(_INCR, (_LIVE, -1))
            return True

        return op

    def delete_expired(self, now: float) -> int:
        def op(conn: sqlite3.Connection, _: _Op) -> int:
            conn.execute(
                "DELETE FROM nexus_session_events WHERE session_id IN "
                "(SELECT session_id FROM nexus_sessions WHERE expires_at <= ?)",
                (now,),
            )
            n = conn.execute("DELETE FROM nexus_sessions WHERE expires_at <= ?", (now,)).rowcount
            if n:
                conn.execute(_INCR, (COUNTER_EXPIRED, n))
                conn.execute(_INCR, (_LIVE, -n))
            return n

        return self._submit(op)

    def incr(self, counter: str, n: int = 1) -> None:
        def op(conn: sqlite3.Connection, me: _Op) -> None:
            me.incr = {counter: n}  # summed with the batch's other increments

        self._submit(op, barrier=False)

    # -- SessionStore: reads (own connections, never behind a write)
    def get(self, session_id: str, now: float) -> SessionRecord | None:
        row = self._fetchone(_GET, (session_id, now))
        return None if row is None else _record(row)

    async def aget(self, session_id: str, now: float) -> SessionRecord | None:
        """:meth:`get` on the store's reader thread, batched with the other reads queued."""
        if self._closed:
            raise RuntimeError(_CLOSED)
        reads = self._reads if self._rthread is not None else self._start_reader()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        reads.put((session_id, now, _outbox(loop), fut))
        if self._closed and not fut.done():
            # close() may have stopped the reader before our put: never leave the await hanging
            fut.set_exception(RuntimeError(_CLOSED))
        return await fut

    def list(self, user_id: str | None, now: float) -> list[SessionRecord]:
        if user_id is None:
            rows = self._fetchall(
                f"SELECT {_COLUMNS} FROM nexus_sessions WHERE expires_at > ? "
                "ORDER BY created_at, session_id",
                (now,),
            )
        else:
            rows = self._fetchall(
                f"SELECT {_COLUMNS} FROM nexus_sessions WHERE user_id = ? AND expires_at > ? "
                "ORDER BY created_at, session_id",
                (user_id, now),
            )
        return [_record(r) for r in rows]

    def events(self, session_id: str, now: float) -> list[SessionEvent]:
        if self.max_events <= 0:
            return []
        # one statement, so the liveness check and the rows come from one snapshot
        rows = self._fetchall(_EVENTS, (session_id, session_id, now, self.max_events))
        return [SessionEvent(r[0], r[1], r[2], tuple(decode_json(r[3]))) for r in rows]

    def counters(self) -> dict[str, int]:
        rows = self._fetchall("SELECT name, value FROM nexus_session_counters", ())
        return {name: value for name, value in rows if name != _LIVE}

    def count(self) -> int:
        row = self._fetchone("SELECT value FROM nexus_session_counters WHERE name = ?", (_LIVE,))
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the store (idempotent). Later calls raise ``RuntimeError``.

        A batch being committed finishes (its writers are acknowledged);
        writes still queued behind it fail with a ``RuntimeError`` saying
        nothing was written, awaited ones included, and queued ``aget`` calls
        fail with the closed error. The writer and reader threads (if awaited
        calls started them) are stopped and joined, unless ``close`` is called
        from inside a ``mutate`` (then they end once that batch is done).
        """
        with self._qlock:
            if self._closed:
                return
            self._closed = True
            pending, self._queue = self._queue, []
            self._qasync = 0
            leader = self._leader
        boxes: set[_Outbox] = set()
        for op in pending:
            op.error = RuntimeError(
                "SQLiteSessionStore was closed before this write ran; nothing was written"
            )
            if op.box is not None:
                op.box.items.append((op.fut, op.error, None))  # type: ignore[arg-type]
                boxes.add(op.box)
            elif not op.lead:  # a promoted op's caller is awake already and finds its error
                op.done.release()  # type: ignore[union-attr]
        for box in boxes:
            box.wake()
        inside = leader == get_ident()  # called from a mutate: the leader closes after its batch
        if not inside:
            with self._wlock:  # waits for a batch in flight to commit
                self._close_writer()
        with self._tlock:  # a thread being started now is in these (see _start_thread)
            threads = [t for t in (self._wthread, self._rthread) if t is not None]
            if self._wthread is not None:
                self._wake.put(None)
            if self._rthread is not None:
                self._reads.put(None)
        idle = self._idle
        while idle:
            try:
                idle.pop().close()
            except IndexError:  # a reader took the last one meanwhile; it closes it
                break
        if not inside:
            me = threading.current_thread()
            for t in threads:
                if t is not me:
                    t.join(self.timeout)  # they only finish what they hold: never this long

    def __repr__(self) -> str:
        return f"SQLiteSessionStore({self.path!r}, max_events={self.max_events})"
