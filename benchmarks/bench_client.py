"""NexusClient overhead: ``client.run`` over HTTP vs a raw persistent httpx POST, same run.

One platform (``Nexus`` on 127.0.0.1, ports 0, ``app.start(block=False)``)
serves one deployment, ``assistant`` = ``AIAssistant`` with the mock LLM (a
sync agent: it runs in the platform's worker thread), no sessions, no auth.
Client and server share this process and its cores.

Measured, per call, with ``time.perf_counter`` around the whole call (request
built, sent on a kept-alive connection, answer received and JSON-decoded):

1. **raw** - a persistent ``httpx.Client(base_url=api_url, trust_env=False)``:
   ``client.post("/api/workflows/assistant/execute", json={"inputs": {"query": q}}).json()``
   (the floor: the same request with no client logic around it);
2. **client** - ``NexusClient(api_url).run("assistant", {"query": q})`` (channel
   ``api``): the same POST plus input checks, status/error mapping and the
   ``RunResult``;
3. **mcp** - the same ``NexusClient``'s ``run(..., channel="mcp")``: one
   ``tools/call`` on its kept MCP session (streamable HTTP, the SDK client on
   the client's background loop thread, so a cross-thread hand-off per call);
4. **magic** (when IPython is installed) - ``%nexus call assistant query=q``
   from an ``InteractiveShell`` whose ``nexus_app`` is the platform: argument
   parsing plus the magics' ``AsyncNexusClient`` on their own loop thread (``api`` channel).

Each round runs ``--calls`` raw and client calls *interleaved one by one*
(the order alternates between rounds), then ``--mcp-calls`` MCP calls and
``--calls`` magic calls; a round's figure is its p50. The printed figure is
the median over ``--rounds`` rounds of those p50s, and the ratio is the
median of the per-round ratios client p50 / raw p50 (target: <= 1.2x;
printed, never fails the run). Warm-up calls (not counted) open every
connection and the MCP session first.

    python benchmarks/bench_client.py                 # 7 rounds x 300 calls
    python benchmarks/bench_client.py --rounds 11 --calls 500
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET = 1.2


def p50(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def magic_shell(app: Any) -> Any:
    try:
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config
    except ImportError:
        return None
    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=cfg)
    shell.run_line_magic("load_ext", "nexus_lab")
    shell.user_ns["nexus_app"] = app
    return shell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds (median of their p50s)")
    parser.add_argument("--calls", type=int, default=300, help="raw + client calls per round")
    parser.add_argument("--mcp-calls", type=int, default=100, help="MCP calls per round")
    parser.add_argument("--warmup", type=int, default=50, help="uncounted calls first")
    args = parser.parse_args(argv)

    import httpx

    from nexus_lab import AIAssistant, Nexus, NexusClient, deploy_multi_channel

    app = Nexus(auto_discovery=False, api_port=0, mcp_port=0)
    deploy_multi_channel(AIAssistant(config={"llm_provider": "mock", "model": "m"}), app, "assistant")
    app.start(block=False)
    path = "/api/workflows/assistant/execute"
    shell = None
    try:
        raw = httpx.Client(base_url=app.api_url, trust_env=False, timeout=30)
        client = NexusClient(app.api_url, timeout=30)
        shell = magic_shell(app)

        def call_raw(q: str) -> float:
            t = time.perf_counter()
            body = raw.post(path, json={"inputs": {"query": q}}).json()
            elapsed = time.perf_counter() - t
            assert body["outputs"]["response"].endswith(q), body
            return elapsed

        def call_client(q: str) -> float:
            t = time.perf_counter()
            result = client.run("assistant", {"query": q})
            elapsed = time.perf_counter() - t
            assert result.response.endswith(q), result
            return elapsed

        def call_mcp(q: str) -> float:
            t = time.perf_counter()
            result = client.run("assistant", {"query": q}, channel="mcp")
            elapsed = time.perf_counter() - t
            assert result.response.endswith(q), result
            return elapsed

        def call_magic(q: str) -> float:
            t = time.perf_counter()
            result = shell.run_line_magic("nexus", f"call assistant query={q}")
            elapsed = time.perf_counter() - t
            assert result.response.endswith(q) and result.transport == "http", result
            return elapsed

        for i in range(args.warmup):
            call_raw(f"w{i}")
            call_client(f"w{i}")
            call_mcp(f"w{i}")
            if shell is not None:
                call_magic(f"w{i}")

        rows: list[dict[str, float]] = []
        for r in range(args.rounds):
            raw_t: list[float] = []
            cli_t: list[float] = []
            first, second = (call_raw, call_client) if r % 2 == 0 else (call_client, call_raw)
            for i in range(args.calls):
                a = first(f"q{i}")
                b = second(f"q{i}")
                if first is call_raw:
                    raw_t.append(a)
                    cli_t.append(b)
                else:
                    cli_t.append(a)
                    raw_t.append(b)
            mcp_t = [call_mcp(f"m{i}") for i in range(args.mcp_calls)]
            row = {"raw": p50(raw_t), "client": p50(cli_t), "mcp": p50(mcp_t)}
            row["ratio"] = row["client"] / row["raw"]
            if shell is not None:
                row["magic"] = p50([call_magic(f"k{i}") for i in range(args.calls)])
            rows.append(row)
            extra = f"  magic {row['magic']:.3f}" if "magic" in row else ""
            print(
                f"round {r + 1}: raw {row['raw']:.3f} ms  client {row['client']:.3f} ms  "
                f"ratio {row['ratio']:.3f}x  mcp {row['mcp']:.3f} ms{extra}"
            )
        raw.close()
        client.close()
    finally:
        if shell is not None:
            shell.run_line_magic("unload_ext", "nexus_lab")
        app.close()

    def med(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    ratio = med("ratio")
    print()
    print(f"p50 over {args.rounds} rounds (median of round p50s), mock AIAssistant, loopback:")
    print(f"  raw httpx.Client POST          {med('raw'):7.3f} ms")
    print(f"  NexusClient.run (api)          {med('client'):7.3f} ms")
    print(
        f"  ratio client / raw             {ratio:7.3f}x   target <= {TARGET}x: "
        + ("met" if ratio <= TARGET else "NOT met")
    )
    print(f"  NexusClient.run (mcp)          {med('mcp'):7.3f} ms")
    if rows and "magic" in rows[0]:
        print(f"  %nexus call (api)              {med('magic'):7.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
