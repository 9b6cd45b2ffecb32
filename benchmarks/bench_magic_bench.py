"""``%nexus bench`` against ``wrk``: throughput on the same deployment, same concurrency, same run.

One platform is served in this process, as in a notebook kernel (``Nexus`` on
127.0.0.1, free ports, ``app.start(block=False)``), with one deployment,
``assistant`` = ``AIAssistant`` on the offline mock provider. Then, in
interleaved rounds (so that drift on a shared machine hits both alike):

1. **wrk** - ``wrk -t1 -c C -d D`` POSTing ``{"inputs": {"query": "hi"}}`` to
   ``/api/workflows/assistant/execute`` (a separate process, C code);
2. **%nexus bench** - the real magic in an ``InteractiveShell`` whose
   ``nexus_app`` is the platform: ``%nexus bench assistant --duration D -c C
   --input query=hi``, live view included (in a plain shell it is drawn but
   shown as text);
3. once, for the record, ``run_bench(..., engine="client")``: the same load
   with every request made by ``AsyncNexusClient`` (httpx) - what the magic
   would reach if it used the client for the load itself.

Printed: requests/s and p50/p99 of each, the median over ``--rounds`` rounds,
and the ratio ours / wrk (target: >= 0.75, i.e. within 25%; printed, never
fails the run). The platform runs in this process, as in a notebook; the load
of ``%nexus bench`` comes from a child process of it (its own GIL), like wrk's
from wrk - on a 2-core machine both share the cores with the server.

    python benchmarks/bench_magic_bench.py                  # 3 rounds x 5 s, 32 connections
    python benchmarks/bench_magic_bench.py --rounds 5 --duration 10 --connections 8
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET = 0.75
WRK = shutil.which("wrk") or "/usr/bin/wrk"
LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.body = '{"inputs":{"query":"hi"}}'
"""


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s|m|h)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}[unit]


def run_wrk(url: str, connections: int, duration: float, lua: str) -> dict[str, float]:
    out = subprocess.run(
        [WRK, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", lua, url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # the percentile lines of --latency ("    50%    2.33ms"), not a "+/- Stdev" cell like "95.50%"
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "errors": float(non2xx.group(1)) if non2xx else 0.0}


def shell_for(app: Any) -> Any:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=cfg)
    shell.run_line_magic("load_ext", "nexus_lab")
    shell.user_ns["nexus_app"] = app
    return shell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c, %%nexus bench -c")
    args = parser.parse_args()
    if not os.path.exists(WRK):
        sys.exit(f"wrk not found at {WRK}: apt-get install wrk")

    from nexus_lab import AIAssistant, Nexus, deploy_multi_channel
    from nexus_lab.jupyter.bench import run_bench

    app = Nexus(auto_discovery=False, api_port=0, mcp_port=0, enable_monitoring=True)
    deploy_multi_channel(AIAssistant(), app, "assistant")
    app.start(block=False)
    shell = shell_for(app)
    url = f"{app.api_url}/api/workflows/assistant/execute"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA)
        lua = f.name
    c, d = args.connections, args.duration
    line = f"bench assistant --duration {d:g} -c {c} --input query=hi"
    wrk_runs: list[dict[str, float]] = []
    ours: list[Any] = []
    try:
        run_wrk(url, c, 1.0, lua)  # warm-up (not counted): connections, worker threads
        shell.run_line_magic("nexus", "bench assistant -n 200 -c 8 --input query=hi --quiet")
        print(f"platform: AIAssistant (mock) served in this process; concurrency {c}, {d:g} s per run")
        print(f"{'round':>5}  {'wrk req/s':>10}  {'%nexus bench req/s':>19}  {'ratio':>6}")
        for i in range(args.rounds):
            first_wrk = i % 2 == 0  # alternate the order between rounds
            if first_wrk:
                wrk_runs.append(run_wrk(url, c, d, lua))
            result = shell.run_line_magic("nexus", line)
            ours.append(result)
            if not first_wrk:
                wrk_runs.append(run_wrk(url, c, d, lua))
            print(f"{i + 1:>5}  {wrk_runs[-1]['rps']:>10.0f}  {result.rps:>19.0f}  "
                  f"{result.rps / wrk_runs[-1]['rps']:>6.2f}")
        client = run_bench(app, "assistant", {"query": "hi"}, duration=d, concurrency=c, engine="client")
    finally:
        shell.run_line_magic("unload_ext", "nexus_lab")
        app.close()
        os.unlink(lua)

    w_rps = statistics.median(r["rps"] for r in wrk_runs)
    o_rps = statistics.median(r.rps for r in ours)
    ratios = [o.rps / w["rps"] for o, w in zip(ours, wrk_runs, strict=True)]
    print()
    print(f"{'':<34}{'req/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'errors':>6}")
    print(f"{'wrk -t1 (median of rounds)':<34}{w_rps:>8.0f}  "
          f"{statistics.median(r['p50'] for r in wrk_runs):>7.2f}  "
          f"{statistics.median(r['p99'] for r in wrk_runs):>7.2f}  "
          f"{sum(r['errors'] for r in wrk_runs):>6.0f}")
    print(f"{'%nexus bench (median of rounds)':<34}{o_rps:>8.0f}  "
          f"{statistics.median(r.p50_ms for r in ours):>7.2f}  "
          f"{statistics.median(r.p99_ms for r in ours):>7.2f}  {sum(r.errors for r in ours):>6}")
    print(f"{'run_bench engine=client (httpx)':<34}{client.rps:>8.0f}  {client.p50_ms:>7.2f}  "
          f"{client.p99_ms:>7.2f}  {client.errors:>6}")
    ratio = statistics.median(ratios)
    verdict = "OK" if ratio >= TARGET else "BELOW TARGET"
    print(f"\n%nexus bench / wrk throughput: {ratio:.2f}x (median of per-round ratios; "
          f"target >= {TARGET:.2f}x) {verdict}")


if __name__ == "__main__":
    main()
