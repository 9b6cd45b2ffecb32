"""The README's notebook block and every ``python`` block of docs/jupyter.md run in a real
kernel, as written; and in that kernel an error is one line and server logs print nowhere.

A real ipykernel (jupyter_client, the venv's Python) rather than an InteractiveShell: what
is checked is what a notebook user sees - the kernel's stdout/stderr streams and error
messages, cell by cell.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ipykernel")
jupyter_client = pytest.importorskip("jupyter_client")

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT = 120.0

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(path: Path, languages: tuple[str, ...] = ("python", "ipython")) -> list[str]:
    """The fenced code blocks of a Markdown file in those languages, in order."""
    return [m.group(2) for m in _FENCE.finditer(path.read_text()) if m.group(1) in languages]


def readme_notebook_block() -> str:
    """The README's block between "In a notebook:" and the browser-test paragraph."""
    text = (ROOT / "README.md").read_text()
    section = text.split("In a notebook:", 1)[1].split("tests/test_browser.py", 1)[0]
    (block,) = [m.group(2) for m in _FENCE.finditer(section)]
    return block


_MAGIC = re.compile(r"^\s*(?:\w+\s*=\s*)?%")  # "%nexus ..." or "r = %nexus ..."


def uses_a_magic(block: str) -> bool:
    return any(_MAGIC.match(line) for line in block.splitlines())


class Kernel:
    """One ipykernel; :meth:`run` executes a cell and returns what a notebook would show."""

    def __init__(self) -> None:
        self.km, self.kc = jupyter_client.manager.start_new_kernel(
            kernel_name="python3", cwd=str(ROOT)
        )

    def run(self, code: str) -> dict[str, Any]:
        """Execute ``code``; its outputs, plus ``stray``: stream text the kernel sent during
        the cell under *another* cell (output of a background thread lands under the cell
        that started the thread - what a user would see appear under an old cell)."""
        out: dict[str, Any] = {"stdout": "", "stderr": "", "errors": [], "results": [], "stray": ""}
        msg_id = self.kc.execute(code)
        while True:
            msg = self.kc.get_iopub_msg(timeout=CELL_TIMEOUT)
            kind, content = msg["msg_type"], msg["content"]
            mine = msg["parent_header"].get("msg_id") == msg_id
            if kind == "stream":
                if mine:
                    out[content["name"]] += content["text"]
                else:
                    out["stray"] += content["text"]
            elif mine and kind == "error":
                out["errors"].append(content)
            elif mine and kind in ("execute_result", "display_data"):
                out["results"].append(content["data"])
            elif mine and kind == "status" and content["execution_state"] == "idle":
                break
        reply = self.kc.get_shell_msg(timeout=CELL_TIMEOUT)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=CELL_TIMEOUT)
        out["status"] = reply["content"]["status"]
        return out

    def close(self) -> None:
        try:
            self.run("%nexus stop")
        finally:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    if not Path(sys.executable).exists():  # pragma: no cover
        pytest.skip("no interpreter for the kernel")
    k = Kernel()
    yield k
    k.close()


def assert_clean(cell: str, out: dict[str, Any]) -> None:
    assert out["status"] == "ok", f"{cell!r} failed: {out['errors'] or out['stderr']}"
    assert out["errors"] == [] and out["stderr"] == "", f"{cell!r} printed: {out['stderr']!r}"
    assert out["stray"] == "", f"while {cell!r} ran, an earlier cell got: {out['stray']!r}"


def test_the_readme_notebook_block_runs_as_written(kernel: Kernel) -> None:
    block = readme_notebook_block()
    assert uses_a_magic(block) and "#" in block  # trailing comments included
    out = kernel.run(block)
    assert_clean(block, out)
    # the last line is the dashboard; the bench showed (then closed) its live view
    shown = [r.get("text/plain", "") for r in out["results"]]
    assert any("Dashboard(tabs=" in s for s in shown), shown


def test_every_python_block_of_the_jupyter_guide_runs_in_order(kernel: Kernel) -> None:
    blocks = code_blocks(ROOT / "docs" / "jupyter.md")
    assert sum(uses_a_magic(b) for b in blocks) >= 6
    for block in blocks:
        assert_clean(block, kernel.run(block))


def test_in_a_kernel_an_agent_error_is_one_line_and_server_logs_print_nowhere(kernel: Kernel) -> None:
    import httpx

    setup = (
        "%load_ext nexus_lab\n"
        "def flaky(n: int) -> dict:\n"
        "    return {'x': 1 / n}\n"
        "%nexus deploy flaky\n"
        "_ = %nexus start\n"
        "print(nexus_app.api_url)\n"
    )
    out = kernel.run(setup)
    assert_clean(setup, out)
    url = out["stdout"].strip()
    for channel in ("api", "mcp"):
        out = kernel.run(f"%nexus call flaky n=0 --channel {channel}")
        lines = out["stderr"].strip().splitlines()
        assert len(lines) == 1, out["stderr"]  # no traceback before the UsageError
        assert re.match(
            rf"UsageError: flaky via {channel}: ZeroDivisionError: division by zero "
            r"\[agent_error, error id [0-9a-f]+\]; traceback: %nexus last-error$",
            lines[0],
        ), lines[0]
        err = kernel.run("e = %nexus last-error\nprint(e.traceback.splitlines()[-1])")
        assert_clean("last-error", err)
        assert err["stdout"].strip() == "ZeroDivisionError: division by zero"
    # a failing request from outside the kernel: its traceback must not land under a cell
    answer = httpx.post(f"{url}/api/workflows/flaky/execute", json={"inputs": {"n": 0}}, trust_env=False)
    assert answer.status_code == 500
    error_id = answer.json()["error"]["error_id"]
    # (without the extension the record's traceback arrives here, under the cell that
    # started the servers: checked by the "stray" output of this probe)
    probe = "import sys; sys.stderr.flush(); sys.stdout.flush()\nt = %nexus logs --level ERROR\nprint([e.error_id for e in t])"
    out = kernel.run(probe)
    assert_clean(probe, out)
    assert error_id in out["stdout"]  # kept in the kernel (and in the dashboard's log pane)
