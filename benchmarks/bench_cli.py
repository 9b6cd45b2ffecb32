"""Start-up and round-trip wall time of the ``nexus`` CLI, against baselines in one run.

Median wall time of N fresh processes (after one warm-up run each) for:

* ``python -c pass``              the interpreter's own start (baseline)
* ``python -c "import httpx"``    the HTTP client the CLI uses (baseline)
* ``nexus --help``                the installed console script
* ``nexus run assistant --query hi``  a real call to a platform started in this process

Target (ARCHITECTURE.md): ``nexus --help`` and ``nexus run`` under 0.5 s
(upstream Kaizen-Nexus: 3.5-4.7 s). The ratio column is the median over the
target; "over python" is what the command adds to a bare interpreter.

    python benchmarks/bench_cli.py --runs 10
    python benchmarks/bench_cli.py --check     # exit 1 if a target is missed
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 0.5


def wall(cmd: list[str], runs: int, env: dict[str, str]) -> float:
    """Median seconds of ``runs`` executions of ``cmd`` (one warm-up run first)."""
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(
            cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def nexus_script() -> str:
    local = Path(sys.executable).parent / "nexus"
    if local.exists():
        return str(local)
    found = shutil.which("nexus")
    if not found:
        sys.exit("the `nexus` console script is not installed (pip install -e .)")
    return found


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=10, help="runs per command (median)")
    ap.add_argument(
        "--check", action="store_true", help="exit 1 if a CLI command misses the target"
    )
    args = ap.parse_args()

    from nexus_lab import AIAssistant, Nexus, deploy_multi_channel

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    py, nexus = sys.executable, nexus_script()
    app = Nexus(auto_discovery=False, api_port=0, mcp_port=0)
    deploy_multi_channel(AIAssistant(config={"llm_provider": "mock"}), app, "assistant")
    rows: list[tuple[str, float, bool]] = []
    with app.running():
        url = app.api_url
        rows.append(("python -c pass", wall([py, "-c", "pass"], args.runs, env), False))
        rows.append(
            ('python -c "import httpx"', wall([py, "-c", "import httpx"], args.runs, env), False)
        )
        rows.append(("nexus --help", wall([nexus, "--help"], args.runs, env), True))
        rows.append(
            (
                "nexus run assistant --query hi",
                wall([nexus, "run", "assistant", "--query", "hi", "--url", url], args.runs, env),
                True,
            )
        )

    base = rows[0][1]
    print(f"median wall time of {args.runs} runs each (after a warm-up); target {TARGET_S:.1f} s")
    print(f"{'command':<34} {'median':>9} {'over python':>12} {'/ target':>9}")
    missed = False
    for label, secs, is_cli in rows:
        ratio = secs / TARGET_S
        mark = ""
        if is_cli:
            ok = secs < TARGET_S
            missed |= not ok
            mark = "  ok" if ok else "  OVER TARGET"
        print(
            f"{label:<34} {secs * 1000:7.1f} ms {(secs - base) * 1000:+9.1f} ms {ratio:8.2f}x{mark}"
        )
    print("upstream Kaizen-Nexus `nexus --help` / `nexus run` start: 3.5-4.7 s (ARCHITECTURE.md)")
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
