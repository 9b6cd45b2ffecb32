"""Sessions through the single execution path (in-process; the channels reuse it)."""

from __future__ import annotations

import threading

import pytest

from nexus_lab import (
    AIAssistant,
    Nexus,
    NexusSessionManager,
    SessionNotFound,
    deploy_multi_channel,
    deploy_with_sessions,
)


@pytest.fixture
def manager(tmp_path):
    m = NexusSessionManager(cleanup_interval=300, session_ttl=7200, store=f"sqlite:///{tmp_path}/s.db")
    yield m
    m.close()


def test_deploy_with_sessions_really_attaches_the_manager(manager):
    app = Nexus()
    deploy_with_sessions(AIAssistant(), app, "assistant", manager)
    assert app.get_deployment("assistant").session_manager is manager
    assert app.session_manager is manager  # adopted: /api/sessions sees the same sessions
    sid = manager.create_session(user_id="user-123").session_id
    app.invoke("assistant", {"query": "What is AI?"}, session_id=sid)
    out = app.invoke("assistant", {"query": "Tell me more"}, session_id=sid, channel="cli")
    assert "What is AI?" in out["response"]  # the agent saw the earlier turn
    state = manager.get_session_state(sid)
    assert state["turns"] == 2
    assert state["last_query"] == "Tell me more"
    assert state["last_response"] == out["response"]
    assert state["last_channel"] == "cli"
    assert [t["channel"] for t in state["history"]] == ["api", "cli"]


def test_a_call_without_session_starts_one(manager):
    app = Nexus()
    deploy_with_sessions(AIAssistant(), app, "assistant", manager)
    ex = app.execute("assistant", {"query": "hi"}, principal="alice")
    assert ex.session_id is not None
    assert manager.get_session(ex.session_id).user_id == "alice"


def test_session_of_another_principal_is_not_found(manager):
    app = Nexus()
    deploy_with_sessions(AIAssistant(), app, "assistant", manager)
    sid = manager.create_session(user_id="alice").session_id
    with pytest.raises(SessionNotFound):
        app.invoke("assistant", {"query": "hi"}, session_id=sid, principal="bob")
    assert manager.get_session_state(sid) == {}  # nothing written
    assert [e.action for e in manager.get_session_events(sid)] == ["create"]  # nor a read recorded
    assert manager.get_session(sid, user_id="bob") is None
    assert manager.get_session(sid, channel="mcp", user_id="alice").user_id == "alice"
    assert [e.channel for e in manager.get_session_events(sid)][-1] == "mcp"
    with pytest.raises(SessionNotFound):
        app.invoke("assistant", {"query": "hi"}, session_id="no-such-session")


def test_session_id_works_without_deploy_with_sessions():
    app = Nexus()
    deploy_multi_channel(AIAssistant(), app, "assistant")
    sid = app.session_manager.create_session(user_id="u").session_id
    app.invoke("assistant", {"query": "hi"}, session_id=sid)
    assert app.session_manager.get_session_state(sid)["turns"] == 1
    app.close()


def test_concurrent_calls_on_one_session_lose_no_turn(manager):
    app = Nexus()
    deploy_with_sessions(AIAssistant(), app, "assistant", manager)
    sid = manager.create_session(user_id="u").session_id
    errors: list[BaseException] = []

    def worker(channel: str) -> None:
        try:
            for i in range(15):
                app.invoke("assistant", {"query": f"{channel} {i}"}, session_id=sid, channel=channel)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(ch,)) for ch in ("api", "cli", "mcp") * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    state = manager.get_session_state(sid)
    assert state["turns"] == 90
    assert len(state["history"]) == 8


def test_apply_session_update_is_atomic_and_validated(manager):
    sid = manager.create_session(user_id="u").session_id
    manager.apply_session_update(sid, lambda s: {"n": s.get("n", 0) + 1})
    manager.apply_session_update(sid, lambda s: {"n": s.get("n", 0) + 1}, channel="mcp")
    assert manager.get_session_state(sid)["n"] == 2
    events = manager.get_session_events(sid)
    assert events[-1].channel == "mcp" and events[-1].keys == ("n",)
    with pytest.raises(TypeError, match="must return a dict"):
        manager.apply_session_update(sid, lambda s: 42)
    with pytest.raises(TypeError, match="callable"):
        manager.apply_session_update(sid, {"n": 3})
    assert manager.get_session_state(sid)["n"] == 2
