"""The platform core, in-process: registry, deploy functions, caching, invoke, health."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

import nexus_lab
from nexus_lab import (
    AgentExecutionError,
    AIAssistant,
    ConfigError,
    DeploymentExists,
    DeploymentNotFound,
    InputValidationError,
    Nexus,
    deploy_as_api,
    deploy_as_cli,
    deploy_as_mcp,
    deploy_multi_channel,
)


@dataclass
class AssistantConfig:
    llm_provider: str = "mock"
    model: str = "gpt-4"
    temperature: float = 0.7
    max_tokens: int = 2000


@pytest.fixture
def app():
    a = Nexus(auto_discovery=False)
    yield a
    a.close()


@pytest.fixture
def agent():
    return AIAssistant(config=AssistantConfig())


def test_multi_channel_returns_identifiers_and_one_deployment(app, agent):
    channels = deploy_multi_channel(agent, app, "assistant")
    assert channels == {
        "api": "/api/workflows/assistant/execute",
        "cli": "nexus run assistant",
        "mcp": "assistant",
    }
    assert list(app.deployments) == ["assistant"]
    assert app.get_deployment("assistant").channels == {"api", "cli", "mcp"}
    assert "<table" in channels._repr_html_()


def test_single_channel_deploys_merge_into_one_deployment(app, agent):
    assert deploy_as_api(agent, app, "assistant") == "/api/workflows/assistant/execute"
    assert app.get_deployment("assistant").channels == {"api"}
    assert deploy_as_cli(agent, app, "assistant") == "nexus run assistant"
    assert deploy_as_mcp(agent, app, "assistant") == "assistant"
    assert app.get_deployment("assistant").channels == {"api", "cli", "mcp"}
    assert len(app.deployments) == 1
    with pytest.raises(DeploymentNotFound, match="on channel 'mcp'"):
        other = Nexus()
        deploy_as_api(agent, other, "x")
        other.get_deployment("x", "mcp")


def test_health_is_healthy_right_after_deploy(app, agent):
    deploy_multi_channel(agent, app, "assistant")
    health = app.health_check()
    assert health["status"] == "healthy"
    assert health["deployments"] == ["assistant"]
    assert {c: s["state"] for c, s in health["channels"].items()} == {
        "api": "registered", "cli": "registered", "mcp": "registered",
    }


def test_invoke_runs_the_agent_with_validated_inputs(app, agent):
    deploy_multi_channel(agent, app, "assistant")
    out = app.invoke("assistant", {"query": "What is AI?"})
    assert out == agent.process(query="What is AI?")
    with pytest.raises(InputValidationError, match="missing required input 'query'"):
        app.invoke("assistant", {})
    with pytest.raises(DeploymentNotFound, match="no deployment named 'nope'"):
        app.invoke("nope", {"query": "x"})


def test_plain_typed_function_is_deployable(app):
    def add(a: int, b: int = 2) -> int:
        """Add two numbers."""
        return a + b

    deploy_multi_channel(add, app, "add")
    assert app.invoke("add", {"a": 3}) == {"result": 5}
    assert app.get_deployment("add").description == "Add two numbers."
    assert app.get_deployment("add").kind == "function"


def test_agent_errors_become_agent_execution_error_with_id(app):
    def boom(x: int) -> dict:
        raise RuntimeError("secret internals")

    deploy_multi_channel(boom, app, "boom")
    with pytest.raises(AgentExecutionError) as info:
        app.invoke("boom", {"x": 1})
    assert info.value.error_id in str(info.value)
    assert "secret internals" not in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_register_rejects_bad_names_and_duplicates(app, agent):
    app.register("ok.name-1_x", agent)
    with pytest.raises(DeploymentExists, match="already exists"):
        app.register("ok.name-1_x", agent)
    for bad in ["", "has space", "slash/name", "x" * 200, None]:
        with pytest.raises(ValueError, match="invalid deployment name"):
            app.register(bad, agent)
    # deploy functions replace on purpose
    deploy_multi_channel(agent, app, "ok.name-1_x")


def test_deploy_rejects_none_agent_and_non_app(app, agent):
    with pytest.raises(ValueError, match="Agent cannot be None"):
        deploy_multi_channel(None, app, "x")
    with pytest.raises(TypeError, match="Invalid Nexus app"):
        deploy_multi_channel(agent, object(), "x")
    with pytest.raises(TypeError, match="cannot deploy"):
        deploy_multi_channel(42, app, "x")


def test_cache_is_per_app_and_use_cache_false_is_honoured(agent):
    a, b = Nexus(), Nexus()
    deploy_multi_channel(agent, a, "assistant")
    deploy_multi_channel(agent, a, "assistant")
    assert a.deploy_cache_info()["hits"] == 1
    deploy_multi_channel(agent, b, "assistant")
    assert b.deploy_cache_info() == {"hits": 0, "misses": 1, "size": 1, "maxsize": 128}
    deploy_multi_channel(agent, a, "assistant", use_cache=False)
    assert a.deploy_cache_info()["hits"] == 1 and a.deploy_cache_info()["misses"] == 2
    with pytest.raises(TypeError, match="use_cache"):
        deploy_multi_channel(agent, a, "assistant", use_cache="no")


def test_cache_key_follows_config_and_class(app):
    deploy_multi_channel(AIAssistant(config={"model": "a"}), app, "assistant")
    deploy_multi_channel(AIAssistant(config={"model": "b"}), app, "assistant")
    assert app.deploy_cache_info()["hits"] == 0
    # a cached redeploy binds the NEW agent instance
    fresh = AIAssistant(config={"model": "b"})
    deploy_multi_channel(fresh, app, "assistant")
    assert app.deploy_cache_info()["hits"] == 1
    assert app.get_deployment("assistant").target is fresh


def test_redefined_function_never_reuses_a_stale_schema(app):
    def tool(a: int) -> int:
        return a

    deploy_multi_channel(tool, app, "tool")

    def tool(a: int, b: int) -> int:  # noqa: F811 - a notebook cell redefines it
        return a + b

    deploy_multi_channel(tool, app, "tool")
    assert app.get_deployment("tool").schema.names == ["a", "b"]


def test_cache_is_bounded():
    app = Nexus(deploy_cache_size=4)
    for i in range(10):
        deploy_multi_channel(AIAssistant(config={"model": f"m{i}"}), app, "assistant")
    assert app.deploy_cache_info()["size"] == 4


def test_spec_performance_testing_sample(app, agent):
    # Testing Strategies > Performance Testing, as written
    start = time.time()
    channels = deploy_multi_channel(agent, app, "perf_test")
    duration = time.time() - start
    assert duration < 2.0, f"Deployment took {duration:.2f}s (target: <2s)"
    assert channels["api"] == "/api/workflows/perf_test/execute"


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "100"])
def test_rate_limit_is_validated_at_construction(bad):
    with pytest.raises(ConfigError, match="rate_limit"):
        Nexus(rate_limit=bad)


def test_auth_needs_a_key_and_has_no_fallback(monkeypatch):
    monkeypatch.delenv("NEXUS_API_KEYS", raising=False)
    with pytest.raises(ConfigError, match="no built-in fallback key"):
        Nexus(enable_auth=True)
    monkeypatch.setenv("NEXUS_API_KEYS", "k1:alice,k2:bob")
    app = Nexus(enable_auth=True)
    assert app.auth.users == ["alice", "bob"]
    assert app.auth.authenticate("Bearer k1") == "alice"
    assert "k1" not in repr(app.auth)


@pytest.mark.parametrize("kwargs", [{"api_port": -1}, {"mcp_port": 70000}, {"api_port": "80"}, {"host": ""}])
def test_bad_ports_and_host(kwargs):
    with pytest.raises(ConfigError):
        Nexus(**kwargs)


def test_flags_are_stored_and_reported():
    app = Nexus(enable_monitoring=True, rate_limit=100, api_keys={"k": "u"}, enable_auth=True)
    health = app.health_check()
    assert health["monitoring"] is True and health["rate_limit"] == 100 and health["auth"] is True
    assert app.host == "127.0.0.1"


def test_monitoring_records_only_when_enabled(agent):
    on, off = Nexus(enable_monitoring=True), Nexus()
    for app in (on, off):
        deploy_multi_channel(agent, app, "assistant")
        app.invoke("assistant", {"query": "hi"}, channel="cli")
    assert on.metrics.get_summary()["cli"]["count"] == 1
    assert on.metrics.get_summary()["workflow:assistant"]["count"] == 1
    assert off.metrics.get_summary() == {}


def test_nexus_available_reflects_server_extras():
    assert nexus_lab.NEXUS_AVAILABLE is True


def test_spec_optional_dependency_pattern(agent):
    # Architecture Patterns > Optional Dependency Pattern, with imports read as nexus_lab
    from nexus_lab import NEXUS_AVAILABLE

    if NEXUS_AVAILABLE:
        from nexus_lab import Nexus, deploy_multi_channel

        app = Nexus(auto_discovery=False)
        channels = deploy_multi_channel(agent, app, "assistant")
    else:  # pragma: no cover
        agent.process(query="...")
        channels = None
    assert channels["mcp"] == "assistant"


def test_an_unknown_provider_is_refused_at_deploy_time():
    from nexus_lab import AIAssistant, ConfigError, Nexus, deploy_multi_channel

    app = Nexus()
    with pytest.raises(ConfigError, match="opnai.*available: .*mock.*openai") as info:
        deploy_multi_channel(AIAssistant(config={"llm_provider": "opnai"}), app, "a")
    assert info.value.field == "llm_provider"
    assert "a" not in app.deployments


def test_a_changed_description_is_a_new_cache_entry():
    from nexus_lab import AIAssistant, Nexus, deploy_multi_channel

    app = Nexus()
    one, two = AIAssistant(), AIAssistant()
    one.tool_description = "Answers questions"
    two.tool_description = "Writes poems"
    deploy_multi_channel(one, app, "a")
    assert app.deployments["a"].description == "Answers questions"
    deploy_multi_channel(two, app, "a")
    assert app.deployments["a"].description == "Writes poems"
    one.tool_description = "Answers questions, briefly"
    deploy_multi_channel(one, app, "a")
    assert app.deployments["a"].description == "Answers questions, briefly"
    deploy_multi_channel(one, app, "a")  # unchanged: a cache hit
    assert app.deploy_cache_info()["hits"] >= 1
