"""Import time of `nexus_lab` against the interpreter's own start, in one run.

Prints the median wall time of N fresh interpreters for: `python -c pass`
(baseline), `import nexus_lab`, and the upstream package when installed
(`kaizen.integrations.nexus`). Target: `import nexus_lab` under 0.3 s.

    python benchmarks/bench_import.py --runs 10
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time


def wall(code: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    base = wall("pass", args.runs)
    ours = wall("import nexus_lab", args.runs)
    rows = [("python -c pass (baseline)", base), ("import nexus_lab", ours)]
    if importlib.util.find_spec("kaizen") is not None:
        rows.append(("import kaizen.integrations.nexus (upstream)", wall("import kaizen.integrations.nexus", args.runs)))
    else:
        print("upstream kaizen not installed; the README's upstream figure is 3.0-4.6 s")
    for name, t in rows:
        print(f"{name:<48} {t * 1000:8.1f} ms")
    print(f"nexus_lab import cost over bare interpreter: {(ours - base) * 1000:.1f} ms "
          f"(target total < 300 ms: {'met' if ours < 0.3 else 'MISSED'})")
    if len(rows) > 2:
        print(f"upstream / ours: {rows[2][1] / ours:.1f}x")


if __name__ == "__main__":
    main()
