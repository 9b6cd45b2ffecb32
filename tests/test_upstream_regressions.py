"""Regression tests for upstream defects not covered by a channel's own tests.

(The others: returned identifiers that 404 -> test_cross_channel.py; use_cache
ignored and one cache shared by apps -> test_platform_core.py; deploy_with_sessions
wiring nothing -> test_platform_sessions.py; TTL, cleanup thread, locks and
shallow copies -> test_sessions.py; rate limit, monitoring, hidden response
cache -> test_http_api.py; auth fallback key -> test_platform_core.py and
test_mcp.py; a CLI that prints nothing -> test_cli.py.)
"""

from __future__ import annotations

import textwrap

from nexus_lab import Nexus


def test_auto_discovery_never_executes_files_in_the_working_directory(tmp_path, monkeypatch):
    marker = tmp_path / "executed.txt"
    for name in ("workflow_evil.py", "nexus_workflow.py", "app.py", "agents.py"):
        (tmp_path / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.chdir(tmp_path)
    app = Nexus(auto_discovery=True)
    assert not marker.exists()
    assert app.health_check()["status"] == "healthy"


def test_auto_discovery_loads_installed_entry_points(tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist = site / "nexus_plugin_demo-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nexus-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nexus_lab.deployments]\nshout = nexus_plugin_demo:shout\n")
    (site / "nexus_plugin_demo.py").write_text(textwrap.dedent('''
        def shout(text: str) -> dict:
            """Upper-case a text."""
            return {"text": text.upper()}
    '''))
    monkeypatch.syspath_prepend(str(site))
    app = Nexus(auto_discovery=True)
    assert app.invoke("shout", {"text": "hi"}) == {"text": "HI"}
    assert Nexus(auto_discovery=False).deployments == {}


def test_servers_bind_loopback_by_default():
    app = Nexus(api_port=0, mcp_port=0)
    assert app.host == "127.0.0.1"
    with app.running():
        for sock in [s for _, s in app._serving.group._servers]:
            assert sock.getsockname()[0] == "127.0.0.1"
        assert app.api_url.startswith("http://127.0.0.1:")
        assert app.mcp_url.startswith("http://127.0.0.1:")


def test_no_hidden_state_between_apps(tmp_path):
    # every app has its own registry, metrics and sessions
    a, b = Nexus(enable_monitoring=True), Nexus(enable_monitoring=True)

    def echo(text: str) -> dict:
        return {"text": text}

    a.register("echo", echo)
    assert "echo" not in b.deployments
    a.invoke("echo", {"text": "x"})
    assert "api" in a.metrics.get_summary() and b.metrics.get_summary() == {}
    assert a.session_manager is not b.session_manager
    a.close()
    b.close()
