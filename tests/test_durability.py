"""Durability: ``kill -9`` of ``nexus serve APP_REF --sessions sqlite:///...`` mid-traffic.

Several clients write to their own sessions over HTTP at once; when enough
writes have been acknowledged, the server is killed with SIGKILL (no shutdown,
no flush). A new server on the same file must hold every acknowledged write:
each created session exists, each session counted at least the turns it
acknowledged (at most one more: the call in flight when the server died may
have been written without its answer arriving), and its history ends with the
last acknowledged turn or that one unanswered call after it.

Real processes, the real console script; waits are on conditions (a line
printed, a count of answers reached, the process gone), never sleeps.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import httpx
import pytest

NEXUS = Path(sys.executable).parent / "nexus"

APP = """
    from nexus_lab import Nexus, NexusSessionManager, deploy_with_sessions

    def echo(query: str) -> dict:
        return {"response": query.upper()}

    app = Nexus()
    deploy_with_sessions(echo, app, "echo", NexusSessionManager(cleanup_interval=300))
"""

CLIENTS = 6
KILL_AFTER = 120  # acknowledged writes before the kill


def _serve(app_ref: str, db_url: str, cwd: Path) -> tuple[subprocess.Popen, str]:
    """Start ``nexus serve`` and return it with its API URL (read from its output)."""
    proc = subprocess.Popen(
        [str(NEXUS), "serve", app_ref, "--api-port", "0", "--mcp-port", "0",
         "--sessions", db_url, "--log-level", "warning"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # blocks until the server prints it (or exits)
        if line.startswith("API: "):
            return proc, line.split(": ", 1)[1].strip()
    proc.wait(30)
    raise AssertionError(f"nexus serve did not start: {proc.stderr.read() if proc.stderr else ''}")


def _close(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.mark.skipif(not NEXUS.exists(), reason="the nexus console script is not installed")
def test_every_acknowledged_write_survives_kill_9(tmp_path):
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    db_url = f"sqlite:///{tmp_path / 'sessions.db'}"
    proc, url = _serve("app.py:app", db_url, tmp_path)
    acked: dict[str, list[str]] = {}  # session id -> the queries answered 200, in order
    created: list[str] = []
    lock = threading.Lock()
    total = 0
    enough = threading.Event()

    def client(n: int) -> None:
        nonlocal total
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
            try:
                r = c.post("/api/sessions", json={"user_id": f"user-{n}"})
            except httpx.HTTPError:
                return
            if r.status_code != 201:
                return
            sid = r.json()["session_id"]
            with lock:
                created.append(sid)
                acked[sid] = []
            i = 0
            while True:  # until the server is gone
                query = f"w{n}-{i}"
                try:
                    r = c.post("/api/workflows/echo/execute",
                               json={"inputs": {"query": query}, "session_id": sid})
                except httpx.HTTPError:
                    return
                assert r.status_code == 200, r.text
                with lock:
                    acked[sid].append(query)
                    total += 1
                    if total >= KILL_AFTER:
                        enough.set()
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        assert enough.wait(120), f"only {total} writes acknowledged"
        proc.kill()  # SIGKILL: no shutdown hook, no flush, mid-write
        proc.wait(30)
        for t in threads:
            t.join(60)
    finally:
        _close(proc)
    assert proc.returncode == -9
    assert len(created) == CLIENTS and total >= KILL_AFTER

    proc, url = _serve("app.py:app", db_url, tmp_path)
    try:
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
            listed = {s["session_id"] for s in c.get("/api/sessions").json()["sessions"]}
            assert set(created) <= listed  # every acknowledged creation
            for sid, queries in acked.items():
                r = c.get(f"/api/sessions/{sid}")
                assert r.status_code == 200, r.text
                state = r.json()["state"]
                turns = state.get("turns", 0)
                # every answered write is there; at most the one in flight more
                assert len(queries) <= turns <= len(queries) + 1, (sid, len(queries), turns)
                if not queries:
                    continue
                history = [h["query"] for h in state["history"]]
                last = queries[-1]
                assert last in history[-2:], (last, history)
                if turns == len(queries):
                    assert state["last_query"] == last and history[-1] == last
                # the earlier answered turns kept in the history, in order
                kept = history[: history.index(last) + 1]
                assert kept == queries[-len(kept):]
            # and the server works on the recovered file
            sid = created[0]
            r = c.post("/api/workflows/echo/execute", json={"inputs": {"query": "after"}, "session_id": sid})
            assert r.status_code == 200
            assert c.get(f"/api/sessions/{sid}").json()["state"]["last_query"] == "after"
    finally:
        _close(proc)
