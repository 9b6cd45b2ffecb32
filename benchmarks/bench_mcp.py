"""MCP ``tools/call`` latency: nexus_lab's MCP server vs a bare SDK ``MCPServer``, one run.

Both are served the same way - ``streamable_http_app(json_response=True,
stateless_http=True)`` under uvicorn (``lifespan="on"``, no access log) on a
loopback socket, each on its own event-loop thread - and called sequentially
by the official SDK ``Client`` over streamable HTTP:

* **ours**: ``build_mcp_app(app)`` (what ``Nexus.start`` serves) with an echo
  agent deployed by ``deploy_multi_channel`` - registry lookup, input
  validation, ``Nexus.aexecute`` (worker thread for a sync agent), the guard;
* **ours+auth**: the same with ``enable_auth`` and a (never reached) rate limit;
* **Nexus.start**: ours again, served by the platform itself (``app.start``,
  its own sockets and uvicorn settings, the API server idle on the same loop);
* **bare**: ``MCPServer`` with an ``@server.tool()`` echo function (a sync
  function too, so the SDK also runs it in a worker thread).

Calls alternate between the servers one by one, so drift hits all alike.
Target (ARCHITECTURE.md): ours p50 within 1.5x of bare. ``--inproc`` adds the
in-process ``Client(server)`` path (no HTTP), which isolates the tool layer.

    python benchmarks/bench_mcp.py                 # 300 calls each
    python benchmarks/bench_mcp.py --calls 1000 --inproc
    python benchmarks/bench_mcp.py --check         # exit 1 if the target is missed
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import threading
import time

TARGET_RATIO = 1.5


class Echo:
    """Echo the text back."""

    def process(self, text: str) -> dict:
        return {"text": text}


def ours_app(**kwargs):
    from nexus_lab import Nexus, deploy_multi_channel

    app = Nexus(api_port=0, mcp_port=0, **kwargs)
    deploy_multi_channel(Echo(), app, "echo")
    return app


def build_ours(*, auth: bool):
    from nexus_lab.platform.mcp import build_mcp_app, build_mcp_server

    kwargs = (
        {"enable_auth": True, "api_keys": {"bench-key": "bench"}, "rate_limit": 10**9}
        if auth
        else {}
    )
    app = ours_app(**kwargs)
    return build_mcp_app(app), build_mcp_server(app)


def build_bare():
    from mcp.server import MCPServer

    server = MCPServer("bare", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    return server.streamable_http_app(
        json_response=True, stateless_http=True, host="127.0.0.1"
    ), server


class Served:
    """An ASGI app under uvicorn on 127.0.0.1:<free port>, in its own loop thread."""

    def __init__(self, asgi) -> None:
        import socket

        import uvicorn

        # IPPROTO_TCP matters: asyncio/uvloop set TCP_NODELAY on accepted sockets only
        # when the listening socket says it is TCP; without it every response waits
        # ~40 ms for a delayed ACK (Nagle). The "ours (Nexus.start)" row serves through
        # the platform's own bind_socket and so shows whether it gets this right.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(2048)
        self.sock.setblocking(False)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/mcp"
        config = uvicorn.Config(
            asgi, lifespan="on", log_level="warning", access_log=False, server_header=False
        )
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@contextlib.asynccontextmanager
async def http_client(url: str, key: str | None):
    from mcp import Client

    if key is None:
        async with Client(url) as client:
            yield client
        return
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


async def timed_calls(client, n: int, out: list[float]) -> None:
    for i in range(n):
        t = time.perf_counter()
        r = await client.call_tool("echo", {"text": f"hello {i}"})
        out.append(time.perf_counter() - t)
        if r.is_error:
            raise RuntimeError(f"tool error: {r.content}")


async def measure(targets: dict[str, tuple[object, str | None]], calls: int, warmup: int):
    """``targets``: label -> (url or in-process server, api key). Returns label -> seconds list."""
    from mcp import Client

    results: dict[str, list[float]] = {label: [] for label in targets}
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for label, (target, key) in targets.items():
            if isinstance(target, str):
                clients[label] = await stack.enter_async_context(http_client(target, key))
            else:
                clients[label] = await stack.enter_async_context(Client(target))
        for client in clients.values():
            await timed_calls(client, warmup, [])
        for _ in range(calls):  # one call each in turn: drift and warm-up hit all alike
            for label, client in clients.items():
                await timed_calls(client, 1, results[label])
    return results


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def report(title: str, results: dict[str, list[float]], base: str) -> float:
    print(f"\n{title}")
    print(
        f"{'server':<12} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'calls/s':>8} {'p50 ratio':>10}"
    )
    base_p50 = pct(results[base], 50)
    for label, values in results.items():
        p50 = pct(values, 50)
        print(
            f"{label:<12} {len(values):>6} {p50 * 1e3:>8.3f} {pct(values, 99) * 1e3:>8.3f} "
            f"{statistics.fmean(values) * 1e3:>8.3f} {len(values) / sum(values):>8.0f} {p50 / base_p50:>9.2f}x"
        )
    return pct(results["ours"], 50) / base_p50


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--calls", type=int, default=300, help="timed calls per server (default 300)"
    )
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--inproc", action="store_true", help="also measure in-process Client(server)"
    )
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 unless ours p50 <= {TARGET_RATIO}x bare"
    )
    args = parser.parse_args(argv)
    if args.calls < 1 or args.calls > 100_000:
        parser.error("--calls must be between 1 and 100000")

    if not logging.getLogger().handlers:  # keep the SDK's basicConfig (INFO logs) out of the timing
        logging.getLogger().addHandler(logging.NullHandler())
    ours_asgi, ours_server = build_ours(auth=False)
    auth_asgi, _ = build_ours(auth=True)
    bare_asgi, bare_server = build_bare()
    served = {"ours": Served(ours_asgi), "ours+auth": Served(auth_asgi), "bare": Served(bare_asgi)}
    platform = ours_app()
    try:
        platform.start(block=False)
        targets = {
            "ours": (served["ours"].url, None),
            "ours+auth": (served["ours+auth"].url, "bench-key"),
            "bare": (served["bare"].url, None),
        }
        results = asyncio.run(measure(targets, args.calls, args.warmup))
        # Apart, so a slow platform socket (idle gaps) cannot disturb the comparison above.
        n = min(args.calls, 100)
        results.update(asyncio.run(measure({"Nexus.start": (platform.mcp_url, None)}, n, 5)))
    finally:
        platform.close()
        for s in served.values():
            s.stop()

    print(
        f"MCP tools/call, streamable HTTP (json_response, stateless), SDK Client, sequential, "
        f"python {sys.version.split()[0]}"
    )
    ratio = report("over HTTP (loopback):", results, "bare")
    if args.inproc:
        inproc = asyncio.run(
            measure(
                {"ours": (ours_server, None), "bare": (bare_server, None)}, args.calls, args.warmup
            )
        )
        report("in-process Client(server):", inproc, "bare")
    ok = ratio <= TARGET_RATIO
    print(
        f"\nours / bare p50 over HTTP = {ratio:.2f}x (target <= {TARGET_RATIO}x): {'OK' if ok else 'MISSED'}"
    )
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
