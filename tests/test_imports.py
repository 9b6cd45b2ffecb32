"""`import nexus_lab` stays light: heavy modules load only where they are used."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["IPython", "ipywidgets", "matplotlib", "pandas", "numpy", "uvicorn", "mcp", "starlette",
         "httpx", "openai", "redis", "pydantic"]


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_nexus_lab_loads_no_heavy_module():
    loaded = _modules_after("import nexus_lab; nexus_lab.NEXUS_AVAILABLE")
    assert not [m for m in HEAVY if m in loaded]


def test_core_objects_do_not_pull_servers_or_jupyter():
    loaded = _modules_after(
        "from nexus_lab import Nexus, AIAssistant, deploy_multi_channel, PerformanceMetrics, NexusSessionManager\n"
        "app = Nexus(); deploy_multi_channel(AIAssistant(), app, 'a'); app.invoke('a', {'query': 'q'})"
    )
    assert not [m for m in ["IPython", "ipywidgets", "matplotlib", "pandas", "uvicorn", "mcp", "starlette"] if m in loaded]


def test_unknown_attribute_is_an_attribute_error():
    out = subprocess.run(
        [sys.executable, "-c", "import nexus_lab\ntry:\n nexus_lab.nope\nexcept AttributeError as e: print(e)"],
        capture_output=True, text=True, check=True,
    )
    assert "has no attribute 'nope'" in out.stdout
