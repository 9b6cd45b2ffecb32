"""Tests of nexus_lab.metrics: PerformanceMetrics and PerformanceMonitor."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import statistics
import threading

import pytest

from nexus_lab.metrics import PerformanceMetrics, PerformanceMonitor, percentile

logger = logging.getLogger(__name__)


class _StubAgent:
    def process(self, **inputs: str) -> dict:
        return {"response": inputs.get("query", "")}


def deploy_multi_channel(agent: object, app: object, name: str) -> dict:
    return {"api": f"/workflows/{name}", "cli": f"nexus run {name}", "mcp": name}


def test_spec_sample_monitor_performance(caplog: pytest.LogCaptureFixture) -> None:
    agent, app = _StubAgent(), object()

    metrics = PerformanceMetrics()

    # Monitor deployments
    with PerformanceMonitor(metrics, "deployment"):
        deploy_multi_channel(agent, app, "assistant")

    # Monitor API calls
    with PerformanceMonitor(metrics, "api"):
        result = agent.process(query="...")

    # Analyze periodically
    summary = metrics.get_summary()
    if summary["api"]["mean"] > 0.5:
        logger.warning("API latency exceeds 500ms")

    assert result == {"response": "..."}
    assert set(summary) == {"deployment", "api"}
    for stats in summary.values():
        assert set(stats) == {"count", "mean", "median", "p95", "p99", "min", "max", "errors"}
        assert stats["count"] == 1 and stats["errors"] == 0
        assert stats["min"] == stats["max"] == stats["mean"] == stats["median"] >= 0


@pytest.mark.parametrize(
    "category", ["api", "cli", "mcp", "deployment", "session_sync", "my own step", "Ω"]
)
def test_any_category_accepted(category: str) -> None:
    metrics = PerformanceMetrics()
    metrics.record(category, 0.25)
    assert metrics.categories() == [category]
    assert metrics.get_summary(category)["count"] == 1
    assert category in metrics


@pytest.mark.parametrize("bad", ["", "   ", None, 3, b"api"])
def test_bad_category_rejected(bad: object) -> None:
    metrics = PerformanceMetrics()
    with pytest.raises(ValueError, match="category"):
        metrics.record(bad, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="category"):
        PerformanceMonitor(metrics, bad)  # type: ignore[arg-type]
    assert metrics.categories() == []


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf, "fast", None, True])
def test_bad_duration_rejected(bad: object) -> None:
    metrics = PerformanceMetrics()
    with pytest.raises(ValueError, match="duration"):
        metrics.record("api", bad)  # type: ignore[arg-type]
    assert metrics.version == 0


def test_bad_window_rejected() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="window"):
            PerformanceMetrics(window=bad)  # type: ignore[arg-type]


def test_percentiles_match_statistics_and_numpy() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(1234)
    for n in (2, 3, 7, 100, 999):
        data = [rng.expovariate(20.0) for _ in range(n)]
        metrics = PerformanceMetrics(window=1000)
        for d in data:
            metrics.record("api", d)
        s = metrics.get_summary("api")
        q = statistics.quantiles(data, n=100, method="inclusive")
        assert s["median"] == pytest.approx(statistics.median(data), rel=1e-12)
        assert s["median"] == pytest.approx(q[49], rel=1e-12)
        assert s["p95"] == pytest.approx(q[94], rel=1e-12)
        assert s["p99"] == pytest.approx(q[98], rel=1e-12)
        for key, p in (("median", 50), ("p95", 95), ("p99", 99)):
            assert s[key] == pytest.approx(float(np.percentile(data, p)), rel=1e-12)
        assert s["mean"] == pytest.approx(statistics.fmean(data), rel=1e-12)
        assert s["min"] == min(data) and s["max"] == max(data)
        assert s["count"] == n


def test_percentile_helper_edges() -> None:
    assert percentile([4.0], 99) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_window_is_bounded_but_totals_exact() -> None:
    window = 100
    metrics = PerformanceMetrics(window=window)
    rng = random.Random(7)
    data = [rng.uniform(0.001, 2.0) for _ in range(10 * window)]
    for i, d in enumerate(data):
        metrics.record("api", d, success=i % 10 != 0, timestamp=1000.0 + i)
    s = metrics.get_summary("api")
    assert s["count"] == 10 * window
    assert s["errors"] == window
    assert s["min"] == min(data) and s["max"] == max(data)
    assert s["mean"] == pytest.approx(sum(data) / len(data), rel=1e-9)
    samples = metrics.samples("api")
    assert len(samples) == window
    assert [d for _, d, _ in samples] == data[-window:]
    assert samples[0][0] == 1000.0 + 9 * window
    recent = sorted(data[-window:])
    assert s["median"] == pytest.approx(statistics.median(recent))
    assert s["p99"] == pytest.approx(statistics.quantiles(recent, n=100, method="inclusive")[98])
    # memory per category is the window, not the history
    assert len(metrics._stats["api"].samples) == window


def test_samples_is_a_copy() -> None:
    metrics = PerformanceMetrics()
    metrics.record("api", 0.1, timestamp=5.0)
    got = metrics.samples("api")
    assert got == [(5.0, 0.1, True)]
    got.clear()
    assert len(metrics.samples("api")) == 1


def test_thread_safety_exact_count_and_sum() -> None:
    metrics = PerformanceMetrics(window=50)
    n_threads, per_thread = 8, 1000
    barrier = threading.Barrier(n_threads)

    def worker(k: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            metrics.record("api", 0.001 * (k + 1), success=i % 2 == 0)
            metrics.record(f"t{k}", 1.0)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = metrics.get_summary("api")
    assert s["count"] == n_threads * per_thread
    assert s["errors"] == n_threads * per_thread // 2
    expected_sum = sum(0.001 * (k + 1) * per_thread for k in range(n_threads))
    assert s["mean"] * s["count"] == pytest.approx(expected_sum, rel=1e-9)
    assert s["min"] == pytest.approx(0.001) and s["max"] == pytest.approx(0.008)
    for k in range(n_threads):
        assert metrics.get_summary(f"t{k}")["count"] == per_thread
    assert metrics.version == 2 * n_threads * per_thread


def test_monitor_context_manager() -> None:
    metrics = PerformanceMetrics()
    with PerformanceMonitor(metrics, "cli") as mon:
        assert isinstance(mon, PerformanceMonitor)
        sum(range(1000))
    assert mon.elapsed is not None and mon.elapsed >= 0
    s = metrics.get_summary("cli")
    assert s["count"] == 1 and s["errors"] == 0
    assert s["max"] == mon.elapsed


def test_monitor_records_failure_and_propagates() -> None:
    metrics = PerformanceMetrics()
    mon = PerformanceMonitor(metrics, "api")
    with pytest.raises(ZeroDivisionError):
        with mon:
            1 / 0  # noqa: B018
    s = metrics.get_summary("api")
    assert s["count"] == 1 and s["errors"] == 1
    assert metrics.samples("api")[0][2] is False


def test_monitor_exit_returns_false() -> None:
    metrics = PerformanceMetrics()
    mon = PerformanceMonitor(metrics, "api")
    mon.__enter__()
    assert mon.__exit__(ValueError, ValueError("x"), None) is False
    assert metrics.get_summary("api")["errors"] == 1


def test_monitor_nested_reuse() -> None:
    metrics = PerformanceMetrics()
    mon = PerformanceMonitor(metrics, "api")
    with mon:
        with mon:
            pass
    assert metrics.get_summary("api")["count"] == 2


def test_monitor_decorator_sync() -> None:
    metrics = PerformanceMetrics()
    mon = PerformanceMonitor(metrics, "api")

    @mon
    def handler(x: int, *, y: int = 1) -> int:
        """Adds."""
        if x < 0:
            raise ValueError("negative")
        return x + y

    assert handler.__name__ == "handler" and handler.__doc__ == "Adds."
    assert handler(2, y=3) == 5
    assert handler(1) == 2
    with pytest.raises(ValueError, match="negative"):
        handler(-1)
    s = metrics.get_summary("api")
    assert s["count"] == 3 and s["errors"] == 1
    assert mon.elapsed is not None


def test_monitor_decorator_async() -> None:
    metrics = PerformanceMetrics()

    @PerformanceMonitor(metrics, "mcp")
    async def tool(x: int) -> int:
        await asyncio.sleep(0)
        if x == 0:
            raise RuntimeError("boom")
        return x * 2

    assert asyncio.iscoroutinefunction(tool)
    assert tool.__name__ == "tool"

    async def main() -> None:
        assert await tool(3) == 6
        results = await asyncio.gather(tool(1), tool(2), tool(0), return_exceptions=True)
        assert results[:2] == [2, 4] and isinstance(results[2], RuntimeError)

    asyncio.run(main())
    s = metrics.get_summary("mcp")
    assert s["count"] == 4 and s["errors"] == 1


def test_monitor_async_with() -> None:
    metrics = PerformanceMetrics()

    async def main() -> None:
        async with metrics.monitor("session_sync"):
            await asyncio.sleep(0)
        with pytest.raises(KeyError):
            async with metrics.monitor("session_sync"):
                raise KeyError("x")

    asyncio.run(main())
    s = metrics.get_summary("session_sync")
    assert s["count"] == 2 and s["errors"] == 1


def test_unknown_category_keyerror() -> None:
    metrics = PerformanceMetrics()
    metrics.record("api", 0.1)
    with pytest.raises(KeyError, match="nope.*known: 'api'"):
        metrics.get_summary("nope")
    with pytest.raises(KeyError, match="nope"):
        metrics.samples("nope")
    with pytest.raises(KeyError, match="nope"):
        metrics.reset("nope")


def test_reset_and_version() -> None:
    metrics = PerformanceMetrics()
    assert metrics.version == 0 and metrics.get_summary() == {}
    metrics.record("api", 0.1)
    metrics.record("cli", 0.2)
    v = metrics.version
    assert v == 2
    metrics.reset("api")
    assert metrics.version > v
    assert metrics.categories() == ["cli"]
    v = metrics.version
    metrics.reset()
    assert metrics.version > v
    assert metrics.categories() == [] and metrics.get_summary() == {}
    metrics.record("api", 0.3)
    assert metrics.get_summary("api")["count"] == 1


def test_to_dataframe() -> None:
    pytest.importorskip("pandas")
    metrics = PerformanceMetrics(window=5)
    empty = metrics.to_dataframe()
    assert list(empty.columns) == ["category", "timestamp", "duration_s", "ok"]
    assert len(empty) == 0
    for i in range(8):
        metrics.record("api", 0.01 * i, success=i != 7, timestamp=float(i))
    metrics.record("cli", 0.5)
    df = metrics.to_dataframe()
    assert list(df.columns) == ["category", "timestamp", "duration_s", "ok"]
    assert len(df) == 5 + 1
    api = df[df.category == "api"]
    assert list(api.timestamp) == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert list(api.ok) == [True, True, True, True, False]
    summary = metrics.summary_dataframe()
    assert list(summary.category) == ["api", "cli"]
    assert list(summary.columns) == [
        "category",
        "count",
        "mean",
        "median",
        "p95",
        "p99",
        "min",
        "max",
        "errors",
    ]
    assert list(summary["count"]) == [8, 1]


def test_repr_and_html() -> None:
    metrics = PerformanceMetrics()
    assert repr(metrics) == "PerformanceMetrics(categories=[])"
    assert "no samples" in metrics._repr_html_()
    metrics.record("api", 0.0125)
    metrics.record("<cli>", 0.002)
    assert repr(metrics) == "PerformanceMetrics(categories=['api', '<cli>'])"
    out = metrics._repr_html_()
    assert "<table" in out and "12.50" in out and "p95 ms" in out
    assert "&lt;cli&gt;" in out and "<cli>" not in out
    assert repr(PerformanceMonitor(metrics, "api")) == "PerformanceMonitor(category='api')"


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, nexus_lab.metrics; "
        "print(any(m in sys.modules for m in ('pandas', 'numpy', 'openai', 'httpx')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
