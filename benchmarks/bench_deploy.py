"""Cold vs cached `deploy_multi_channel`, measured in one run.

Cold = a deploy with `use_cache=False` (the schema is compiled from the
agent's signature); cached = a redeploy of the same agent config and name.
The first deploy in a process also pays pydantic's import; it is shown apart.
Targets (ARCHITECTURE.md): cold < 5 ms, cached >= 10x faster than cold.

    python benchmarks/bench_deploy.py --n 2000
"""

from __future__ import annotations

import argparse
import statistics
import time

from nexus_lab import AIAssistant, Nexus, deploy_multi_channel


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    app = Nexus(auto_discovery=False)
    agent = AIAssistant(config={"llm_provider": "mock", "model": "gpt-4"})

    t = time.perf_counter()
    deploy_multi_channel(agent, app, "first")
    first = time.perf_counter() - t

    cold = timed(lambda: deploy_multi_channel(agent, app, "assistant", use_cache=False), args.n)
    deploy_multi_channel(agent, app, "assistant")
    cached = timed(lambda: deploy_multi_channel(agent, app, "assistant"), args.n)
    c50, k50 = statistics.median(cold), statistics.median(cached)
    print(f"first deploy in process (imports pydantic): {first * 1000:8.3f} ms")
    print(f"cold deploy (use_cache=False), median:       {c50 * 1000:8.3f} ms   (target < 5 ms; upstream 21-32 ms)")
    print(f"cached redeploy, median:                     {k50 * 1000:8.3f} ms   (upstream 18-22 ms)")
    print(f"cached speed-up: {c50 / k50:.1f}x   (target >= 10x; upstream ~1.2x)")
    print(f"cache: {app.deploy_cache_info()}")


if __name__ == "__main__":
    main()
