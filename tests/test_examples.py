"""The example app serves what its docstring says, through the real console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEXUS = str(Path(sys.executable).parent / "nexus")


def test_example_app_serves_both_deployments(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ENVIRONMENT", None)
    proc = subprocess.Popen(
        [NEXUS, "serve", f"{ROOT}/examples/assistant_app.py:app", "--api-port", "0", "--mcp-port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("API:"):
                url = line.split()[1]
                break
        assert url, "nexus serve printed no API line"
        listed = subprocess.run([NEXUS, "list", "--url", url, "--json"], capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0, listed.stderr
        assert sorted(d["name"] for d in json.loads(listed.stdout)["workflows"]) == ["add", "assistant"]
        added = subprocess.run(
            [NEXUS, "run", "add", "--input", "a=2", "--input", "b=3.5", "--url", url, "--json"],
            capture_output=True, text=True, timeout=30,
        )
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["outputs"] == {"sum": 5.5}
        assert (tmp_path / ".nexus" / "example-sessions.db").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def test_readme_quickstart_runs_as_written(tmp_path):
    import re

    block = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)[0]
    script = tmp_path / "quickstart.py"
    script.write_text(block + "\nprint('answer:', app.invoke('assistant', {'query': 'ok?'}, session_id=session.session_id))\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "You said: ok?" in done.stdout
    assert (tmp_path / ".nexus" / "sessions.db").exists()


def test_readme_client_block_runs_against_a_served_app(make_app):
    """The README's NexusClient block, as written, with the served app's URL in place of :8000."""
    import re

    from nexus_lab import AIAssistant, NexusSessionManager, deploy_with_sessions

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    (block,) = [b for b in blocks if "NexusClient(" in b]
    app = make_app()
    manager = NexusSessionManager(cleanup_interval=300)
    deploy_with_sessions(AIAssistant(), app, "assistant", manager)
    with app.running():
        namespace: dict = {}
        exec(compile(block.replace("http://127.0.0.1:8000", app.api_url), "README.md", "exec"), namespace)
    assert "turn 2" in manager.get_session_state(namespace["result"].session_id)["last_response"]
    manager.close()
