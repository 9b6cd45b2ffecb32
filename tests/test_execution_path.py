"""One execution path: ``execute`` and ``aexecute`` agree, and the method that runs is the one
the user wrote, on every channel.

* A table of cases (good input, bad input, unknown deployment, a channel the
  deployment is not on, an ad-hoc channel such as ``notebook``, an unknown or
  foreign session, an agent that raises, an agent that returns NaN) runs
  through both ``execute`` and ``aexecute``; the outcome (outputs or error
  type and message) must be the same.
* A subclass of ``AIAssistant`` that overrides ``process`` with an extra input
  gives the same answer through ``invoke``, the HTTP API, the ``nexus`` CLI (a
  subprocess) and MCP (the SDK client over streamable HTTP).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_lab import AIAssistant, NexusSessionManager, deploy_multi_channel, deploy_with_sessions
from nexus_lab.errors import NexusError
from nexus_lab.platform.deployment import resolve_methods

NEXUS = str(Path(sys.executable).parent / "nexus")


class Toned(AIAssistant):
    """An assistant with a tone: overrides process() and adds an input."""

    def process(self, query: str, tone: str = "plain", session_state: dict | None = None) -> dict:
        return {"response": f"[{tone}] {query}", "turns_seen": (session_state or {}).get("turns", 0)}


class AsyncOverride(AIAssistant):
    """Writes aprocess below AIAssistant's process: the async one is what runs."""

    async def aprocess(self, query: str, session_state: dict | None = None) -> dict:
        return {"response": f"async:{query}"}


class Twin:
    def process(self, query: str) -> dict:
        return {"response": f"twin:{query}"}

    async def aprocess(self, query: str) -> dict:
        return {"response": f"twin:{query}"}


def _boom(query: str) -> dict:
    raise RuntimeError("kaput")


def _nan(query: str) -> dict:
    return {"score": float("nan"), "response": query}


def _outcome(fn) -> tuple[str, Any]:
    try:
        execution = fn()
    except NexusError as exc:
        text = str(exc)
        if getattr(exc, "error_id", None):
            text = text.replace(exc.error_id, "<id>")
        return ("error", (type(exc).__name__, text))
    except Exception as exc:  # noqa: BLE001 - compared as data
        return ("error", (type(exc).__name__, str(exc)))
    return ("ok", (execution.outputs, execution.channel, execution.session_id is not None))


def test_resolve_methods_follows_what_the_user_wrote() -> None:
    sync_fn, async_fn = resolve_methods(Toned())
    assert sync_fn.__func__ is Toned.process and async_fn is None
    sync_fn, async_fn = resolve_methods(AsyncOverride())
    assert sync_fn is None and async_fn.__func__ is AsyncOverride.aprocess
    sync_fn, async_fn = resolve_methods(AIAssistant())  # a twin: both, same level
    assert sync_fn.__func__ is AIAssistant.process and async_fn.__func__ is AIAssistant.aprocess
    sync_fn, async_fn = resolve_methods(Twin())
    assert sync_fn is not None and async_fn is not None


CASES = [
    ("ok", "assistant", {"query": "hi"}, {}),
    ("ok on notebook", "assistant", {"query": "hi"}, {"channel": "notebook"}),
    ("ok on cli", "assistant", {"query": "hi"}, {"channel": "cli"}),
    ("coerced", "toned", {"query": "hi", "tone": "warm"}, {"coerce_strings": True}),
    ("missing input", "assistant", {}, {}),
    ("wrong type", "assistant", {"query": 5}, {}),
    ("unknown field", "assistant", {"query": "q", "nope": 1}, {}),
    ("unknown deployment", "nobody", {"query": "hi"}, {}),
    ("not on channel", "apionly", {"query": "hi"}, {"channel": "mcp"}),
    ("unknown session", "assistant", {"query": "hi"}, {"session_id": "missing"}),
    ("foreign session", "assistant", {"query": "hi"}, {"session_id": "SID", "principal": "bob"}),
    ("own session", "assistant", {"query": "hi"}, {"session_id": "SID", "principal": "alice"}),
    ("agent raises", "boom", {"query": "hi"}, {}),
    ("agent returns NaN", "nan", {"query": "hi"}, {}),
    ("async override", "asyncover", {"query": "hi"}, {}),
    ("twin", "twin", {"query": "hi"}, {}),
    ("sessions deployment", "withsessions", {"query": "hi"}, {"principal": "alice"}),
]


@pytest.fixture
def app(make_app):
    app = make_app(enable_monitoring=True)
    deploy_multi_channel(AIAssistant(), app, "assistant")
    deploy_multi_channel(Toned(), app, "toned")
    deploy_multi_channel(_boom, app, "boom")
    deploy_multi_channel(_nan, app, "nan")
    deploy_multi_channel(AsyncOverride(), app, "asyncover")
    deploy_multi_channel(Twin(), app, "twin")
    from nexus_lab import deploy_as_api

    deploy_as_api(AIAssistant(), app, "apionly")
    mgr = NexusSessionManager(cleanup_interval=300)
    deploy_with_sessions(Toned(), app, "withsessions", mgr)
    yield app
    mgr.close()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_execute_and_aexecute_agree(app, case) -> None:
    _, name, inputs, kwargs = case

    def fresh_session() -> None:  # both paths start from the same state
        app.session_manager.delete_session("SID")
        app.session_manager.create_session("alice", session_id="SID")

    fresh_session()
    sync = _outcome(lambda: app.execute(name, dict(inputs), **kwargs))

    async def run():
        return await app.aexecute(name, dict(inputs), **kwargs)

    fresh_session()
    asynced = _outcome(lambda: asyncio.run(run()))
    assert sync == asynced
    if case[0].startswith(("ok", "coerced", "own", "async", "twin", "sessions")):
        assert sync[0] == "ok", sync
    else:
        assert sync[0] == "error", sync


def test_bad_output_is_named_and_the_latency_covers_the_whole_call(app) -> None:
    with pytest.raises(NexusError, match="output 'score'"):
        app.execute("nan", {"query": "x"})
    execution = app.execute("assistant", {"query": "hi"})
    assert 0 < execution.agent_time_ms <= execution.execution_time_ms
    body = json.loads(execution.json_body)
    assert body["outputs"] == execution.outputs
    summary = app.metrics.get_summary()
    assert summary["agent:api"]["count"] == summary["api"]["count"]
    assert summary["api"]["errors"] >= 1  # the NaN call counts as a failure


def test_started_is_when_the_request_arrived(app) -> None:
    import time

    earlier = time.perf_counter() - 0.5  # a request that waited half a second before the agent
    execution = app.execute("assistant", {"query": "hi"}, started=earlier)
    assert execution.execution_time_ms >= 500
    assert execution.agent_time_ms < 500


async def _mcp_call(url: str, tool: str, args: dict) -> Any:
    from mcp import Client

    async with Client(url) as client:
        return await client.call_tool(tool, args)


def test_a_subclass_override_gives_one_answer_on_every_channel(make_app, tmp_path) -> None:
    app = make_app()
    channels = deploy_with_sessions(
        Toned(), app, "toned",
        NexusSessionManager(cleanup_interval=300, store=f"sqlite:///{tmp_path}/s.db"),
    )
    inputs = {"query": "hello", "tone": "warm"}
    local = app.invoke("toned", inputs)
    assert local["response"] == "[warm] hello"
    with app.running():
        r = httpx.post(app.api_url + channels["api"], json={"inputs": inputs}, timeout=30)
        assert r.status_code == 200, r.text
        api = r.json()["outputs"]
        done = subprocess.run(
            [NEXUS, "run", "toned", "--query", "hello", "--input", "tone=warm",
             "--url", app.api_url, "--json"],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        cli = json.loads(done.stdout)["outputs"]
        result = asyncio.run(_mcp_call(app.mcp_url, channels["mcp"], inputs))
        assert not result.is_error, result
        mcp = result.structured_content["outputs"]
    assert local == api == cli == mcp
    app.session_manager.close()


def test_async_agents_that_suspend_finish_under_the_deadline(make_app) -> None:
    """The deadline is armed only once an agent suspends; it must then continue it faithfully."""

    async def waits(query: str) -> dict:
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_soon(fut.set_result, query.upper())
        got = await fut
        await asyncio.sleep(0.01)
        return {"response": got}

    async def fails_later(query: str) -> dict:
        await asyncio.sleep(0)
        raise ValueError("late failure")

    app = make_app(execution_timeout=5)
    deploy_multi_channel(waits, app, "waits")
    deploy_multi_channel(fails_later, app, "fails")

    async def run():
        ok = await app.aexecute("waits", {"query": "hi"})
        with pytest.raises(NexusError, match="ValueError"):
            await app.aexecute("fails", {"query": "hi"})
        return ok

    assert asyncio.run(run()).outputs == {"response": "HI"}
