"""JupyterLab in headless Chromium: run 01-quickstart.ipynb and check what a user sees.

Starts a real JupyterLab on 127.0.0.1 with a throw-away config, opens the
quickstart notebook in Debian's /usr/bin/chromium driven by Playwright (no
browser download), runs all cells, and asserts that the channel status widget
shows the API and MCP channels ``serving``, that the calls' answers appear and
that the widget follows the final ``%nexus stop``. A screenshot is saved under
``test-output/browser/``.

Written to hold on a slow, loaded machine:

* every wait is on a condition (port accepting connections, the server's REST
  API answering, a ready and idle kernel, the cells' execution counts, text in
  the page), with generous timeouts; nothing sleeps a fixed time;
* the live widget re-renders its HTML at any refresh, so nothing holds an
  element handle: assertions go through Playwright locators and auto-retrying
  ``expect(...)``, or ``page.wait_for_function`` on a condition that queries
  the DOM afresh at every poll; the screenshot step scrolls with JavaScript on
  a fresh query and is retried until the widget is in view;
* a cell that raises fails the test at once, with its traceback, instead of
  after a timeout.

Marked ``browser``; skipped with a reason when chromium or playwright is
missing, unless ``NEXUS_REQUIRE_BROWSER=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("NEXUS_CHROMIUM", "/usr/bin/chromium")
OUTPUT = ROOT / "test-output" / "browser"
NOTEBOOK = "01-quickstart.ipynb"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # a loaded machine must not make Chromium throttle the page's timers
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]

# Timeouts (ms for Playwright, s for the server). Generous: each one only bounds a
# wait on a condition, a fast machine never waits them out.
SERVER_START_S = 180
PAGE_LOAD_MS = 120_000
KERNEL_READY_MS = 180_000
RUN_CELLS_MS = 240_000
ASSERT_MS = 60_000
SCREENSHOT_S = 90

# --- page helpers, installed before JupyterLab's own scripts ------------------------
# Everything is looked up afresh at each call: no DOM node or widget is kept.
INIT_SCRIPT = """
window.__nexus = {
  // the notebook panel of our notebook (by path, not "the current widget")
  panel(name) {
    const app = window.jupyterapp;
    if (!app || !app.shell) return null;
    for (const w of app.shell.widgets('main')) {
      const path = w && w.context && w.context.path;
      if (path && (path === name || path.endsWith('/' + name)) && w.content && w.content.widgets) return w;
    }
    return null;
  },
  // a ready, idle, connected kernel whose widget comm target is registered
  kernelReady(name) {
    const p = this.panel(name);
    const ctx = p && p.sessionContext;
    const k = ctx && ctx.session && ctx.session.kernel;
    if (!(p && p.context.isReady && ctx.isReady && k)) return false;
    if (k.connectionStatus !== 'connected' || k.status !== 'idle') return false;
    // ipywidgets registers the 'jupyter.widget' comm target on the kernel connection
    // (a private field: when it is missing, do not depend on it)
    const reg = k._targetRegistry;
    return !reg || !!reg['jupyter.widget'];
  },
  source(cell) {
    const m = cell.model.sharedModel;
    return (m.getSource ? m.getSource() : m.source) || '';
  },
  // the index of the cell that stops the platform (the last one today)
  stopIndex(name) {
    const nb = this.panel(name).content;
    for (let i = nb.widgets.length - 1; i >= 0; i--) {
      const c = nb.widgets[i];
      if (c.model.type === 'code' && this.source(c).trim().startsWith('%nexus stop')) return i;
    }
    return nb.widgets.length - 1;
  },
  // run cell `index` (runAbove: every cell above it) on OUR panel, without awaiting
  run(name, index, runAbove) {
    const p = this.panel(name);
    const nb = p.content;
    window.jupyterapp.shell.activateById(p.id);
    nb.deselectAll();
    nb.activeCellIndex = index;
    const cmd = runAbove ? 'notebook:run-all-above' : 'notebook:run-cell';
    window.jupyterapp.commands.execute(cmd, {widgetId: p.id});
  },
  // the text of outputs that show a raised error (from the model, not the DOM)
  errors(name) {
    const p = this.panel(name);
    if (!p) return '';
    const found = [];
    p.content.widgets.forEach((c, i) => {
      if (c.model.type !== 'code') return;
      for (const out of c.model.outputs.toJSON()) {
        const text = [].concat(out.text || []).join('');
        if (out.output_type === 'error') {
          found.push(`cell ${i}: ${out.ename}: ${out.evalue}\\n` + [].concat(out.traceback || []).join('\\n'));
        } else if (out.output_type === 'stream' && out.name === 'stderr'
                   && (text.includes('Traceback') || text.includes('Error'))) {
          found.push(`cell ${i} (stderr): ${text}`);
        }
      }
    });
    // strip ANSI colours of IPython tracebacks
    return found.join('\\n----\\n').replace(/\\u001b\\[[0-9;]*m/g, '');
  },
  // code cells [from, to) all have an execution count, and the kernel is idle again
  executed(name, from, to) {
    const p = this.panel(name);
    const k = p && p.sessionContext.session && p.sessionContext.session.kernel;
    if (!k || k.status !== 'idle') return false;
    for (let i = from; i < to; i++) {
      const m = p.content.widgets[i].model;
      if (m.type === 'code' && this.source(p.content.widgets[i]).trim() && m.executionCount == null) return false;
    }
    return true;
  },
  // scroll the channel widget's output into the middle of the notebook; true when in view
  showWidget() {
    const row = document.querySelector('.jp-OutputArea tr.nexus-channel-api');
    if (!row) return false;
    const box = row.closest('.nexus-channel-status') || row.closest('table') || row;
    box.scrollIntoView({block: 'center', inline: 'nearest'});
    const r = box.getBoundingClientRect();
    const scroller = box.closest('.jp-WindowedPanel-outer');
    const v = scroller ? scroller.getBoundingClientRect()
                       : {top: 0, bottom: window.innerHeight, left: 0, right: window.innerWidth};
    return r.height > 0 && r.top >= v.top && r.bottom <= v.bottom && r.left >= v.left;
  },
};
"""


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("NEXUS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test required but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _poll_interval(proc: subprocess.Popen, seconds: float = 0.2) -> None:
    """Wait between two checks of a condition; returns at once when ``proc`` exits."""
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pass


def _wait_server(port: int, proc: subprocess.Popen, log: Path, timeout: float = SERVER_START_S) -> None:
    """Wait until the port accepts connections, then until the REST API and the kernel spec answer."""
    import httpx

    deadline = time.monotonic() + timeout

    def check_alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"jupyter lab not ready on port {port} after {timeout:.0f} s:\n{_tail(log)}")

    while True:  # 1. the port accepts connections
        check_alive()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            break
        except OSError:
            _poll_interval(proc)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10, trust_env=False) as client:
        while True:  # 2. the server answers, the page is served and our kernel is known
            check_alive()
            try:
                specs = client.get("/api/kernelspecs")
                if (client.get("/api/status").status_code == 200 and specs.status_code == 200
                        and "python3" in specs.json().get("kernelspecs", {})
                        and client.get(f"/lab/tree/{NOTEBOOK}").status_code == 200):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            _poll_interval(proc)


def _strip_outputs(path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")


def _wait(page, what: str, condition: str, arg=None, timeout: float = ASSERT_MS) -> None:
    """Wait until the JS ``condition(arg)`` is true, failing at once if a cell raised.

    The condition runs in the page every 100 ms and must query what it needs afresh.
    """
    script = f"""(arg) => {{
        const errors = window.__nexus.errors(arg.name);
        if (errors) return {{errors}};
        return ({condition})(arg) ? {{ok: true}} : false;
    }}"""
    try:
        result = page.wait_for_function(script, arg={"name": NOTEBOOK, **(arg or {})},
                                         timeout=timeout, polling=100).json_value()
    except Exception as exc:
        raise AssertionError(f"timed out after {timeout / 1000:.0f} s waiting for {what}") from exc
    if result.get("errors"):
        raise AssertionError(f"a cell raised while waiting for {what}:\n{result['errors']}")


def _screenshot_widget(page, path: Path, timeout: float = SCREENSHOT_S) -> None:
    """Scroll the channel widget into view and take the screenshot, retried as a whole.

    The widget may re-render at any moment: the scroll is done by JS on a fresh
    query at each poll, and once the screenshot is taken the widget must still be
    in view (queried afresh again), otherwise the step is repeated.
    """
    deadline = time.monotonic() + timeout
    while True:
        left_ms = max(1_000, (deadline - time.monotonic()) * 1000)
        _wait(page, "the channel widget to be scrolled into view",
              "() => window.__nexus.showWidget()", timeout=left_ms)
        page.screenshot(path=str(path), full_page=False)
        if page.evaluate("() => window.__nexus.showWidget()") and path.stat().st_size > 10_000:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"could not take a screenshot with the channel widget in view in {timeout} s")


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    _require(Path(CHROMIUM).exists(), f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:  # pragma: no cover
        _require(False, "playwright is not installed")
    base = tmp_path_factory.mktemp("jlab")
    root = base / "root"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    _strip_outputs(root / NOTEBOOK)  # everything asserted must come from this run
    cfg = base / "config"
    cfg.mkdir()
    (cfg / "jupyter_server_config.py").write_text(
        "from jupyterlab.galata import configure_jupyter_server\n"
        "configure_jupyter_server(c)\n"
        "c.ServerApp.ip = '127.0.0.1'\nc.ServerApp.port_retries = 0\n"
        f"c.ServerApp.root_dir = {str(root)!r}\nc.ServerApp.allow_root = True\n"
        f"c.LabApp.workspaces_dir = {str(base / 'workspaces')!r}\n"
        "c.ServerApp.open_browser = False\n"
    )
    # no "official Jupyter news?" pop-up: a user setting in a throw-away settings dir
    notification = base / "user-settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(cfg),
        JUPYTER_DATA_DIR=str(base / "data"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(base / "user-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
        JUPYTERLAB_GALATA_ROOT_DIR=str(root),
        PYTHONUNBUFFERED="1",
        # notebooks run `!nexus ...`: the kernel must find this venv's console script
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    # the kernel must be this interpreter (the project's venv)
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(base / "kprefix"), "--name", "python3"],
        check=True, capture_output=True, env=env,
    )
    env["JUPYTER_PATH"] = str(base / "kprefix" / "share" / "jupyter")
    log_path = base / "jupyterlab.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in teardown
    proc = None
    try:
        # a port that was free a moment ago may be taken by the time the server binds it:
        # then the server exits at once (port_retries=0) and we try another port
        for attempt in range(3):
            port = _free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
                 "--ip=127.0.0.1", "--port-retries=0"],
                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
            try:
                _wait_server(port, proc, log_path)
                break
            except RuntimeError:
                if attempt == 2 or "already in use" not in _tail(log_path):
                    raise
        yield {"url": f"http://127.0.0.1:{port}", "root": root, "log": log_path}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)
        log.close()


def test_quickstart_runs_in_jupyterlab(jupyterlab):
    from playwright.sync_api import expect, sync_playwright

    OUTPUT.mkdir(parents=True, exist_ok=True)
    console: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                                     timeout=PAGE_LOAD_MS)
        page = None
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(ASSERT_MS)
            page.set_default_navigation_timeout(PAGE_LOAD_MS)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.add_init_script(INIT_SCRIPT)
            page.goto(f"{jupyterlab['url']}/lab/tree/{NOTEBOOK}", wait_until="domcontentloaded")
            _wait(page, "JupyterLab to open the notebook",
                  "(a) => { const p = window.__nexus.panel(a.name); return p && p.context.isReady; }",
                  timeout=PAGE_LOAD_MS)
            # the idle indicator shows ~0.8 s before the kernel is usable: wait for a ready, idle kernel
            _wait(page, "a ready, idle kernel", "(a) => window.__nexus.kernelReady(a.name)",
                  timeout=KERNEL_READY_MS)
            stop = page.evaluate("(name) => window.__nexus.stopIndex(name)", NOTEBOOK)
            # run everything above the cell that stops the platform, without awaiting the promise
            page.evaluate("([name, i]) => window.__nexus.run(name, i, true)", [NOTEBOOK, stop])
            _wait(page, "the cells above the stop to run", "(a) => window.__nexus.executed(a.name, 0, a.stop)",
                  {"stop": stop}, timeout=RUN_CELLS_MS)

            output = page.locator(".jp-OutputArea")
            # the channel status widget: API and MCP rows say "serving" (fresh queries, auto-retried)
            for channel in ("api", "mcp"):
                expect(output.locator(f"tr.nexus-channel-{channel} .nexus-state").first).to_have_text(
                    "serving", timeout=ASSERT_MS)
            # a call's answer appears (the mock provider echoes the query)
            expect(output.locator(".nexus-call .nexus-response", has_text="You said: What is AI?").first
                   ).to_be_attached(timeout=ASSERT_MS)
            expect(output.filter(has_text="You said: And over MCP?").first).to_be_attached(timeout=ASSERT_MS)
            # no cell raised (read from the notebook model: no DOM node involved)
            assert page.evaluate("(name) => window.__nexus.errors(name)", NOTEBOOK) == ""

            _screenshot_widget(page, OUTPUT / "quickstart.png")
            assert (OUTPUT / "quickstart.png").stat().st_size > 10_000

            # the stop cell stops the platform: the live widget follows
            page.evaluate("([name, i]) => window.__nexus.run(name, i, false)", [NOTEBOOK, stop])
            _wait(page, "the stop cell to run", "(a) => window.__nexus.executed(a.name, a.stop, a.stop + 1)",
                  {"stop": stop}, timeout=RUN_CELLS_MS)
            expect(output.locator("tr.nexus-channel-api .nexus-state").first).to_have_text(
                "stopped", timeout=ASSERT_MS)
            assert page.evaluate("(name) => window.__nexus.errors(name)", NOTEBOOK) == ""
        except BaseException:
            # leave evidence for whoever reads the CI log
            try:
                (OUTPUT / "failure-outputs.txt").write_text(
                    "==== jupyterlab log (tail) ====\n" + _tail(jupyterlab["log"], 80)
                    + "\n==== browser console errors ====\n" + "\n".join(console[-50:]) + "\n"
                )
                if page is not None:
                    page.screenshot(path=str(OUTPUT / "failure.png"), full_page=True, timeout=30_000)
                    with open(OUTPUT / "failure-outputs.txt", "a", encoding="utf-8") as f:
                        f.write(
                            "==== dialogs ====\n"
                            + page.evaluate("() => Array.from(document.querySelectorAll('.jp-Dialog'))"
                                            ".map(e => e.innerText).join('\\n----\\n')")
                            + "\n==== outputs ====\n"
                            + page.evaluate("() => Array.from(document.querySelectorAll('.jp-OutputArea'))"
                                            ".map(e => e.textContent).join('\\n----\\n')")
                            + "\n==== widget HTML ====\n"
                            + page.evaluate("() => Array.from(document.querySelectorAll('.widget-html-content'))"
                                            ".map(e => e.innerHTML).join('\\n----\\n')")
                        )
            except Exception:  # noqa: BLE001 - best effort
                pass
            raise
        finally:
            browser.close()
