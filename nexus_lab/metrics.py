"""Performance metrics: per-category latency statistics with bounded memory.

``PerformanceMetrics`` keeps, for every category (``"api"``, ``"cli"``,
``"mcp"``, ``"deployment"``, ``"session_sync"`` or any name of your own):

* exact running figures over *all* samples: count, sum, min, max, errors;
* a bounded window (``deque(maxlen=window)``) of the most recent
  ``(timestamp, duration_seconds, ok)`` samples, used for the median / p95 /
  p99 and for live charts.

Memory is therefore O(categories x window) whatever the traffic. Percentiles use
linear interpolation between closest ranks, the same as
``statistics.quantiles(method="inclusive")`` and numpy's default
``np.percentile``.

Every mutation bumps ``version`` so that widgets can poll it cheaply and redraw
only when something changed.

Example::

    from nexus_lab.metrics import PerformanceMetrics, PerformanceMonitor

    metrics = PerformanceMetrics()
    with PerformanceMonitor(metrics, "api"):
        agent.process(query="...")
    summary = metrics.get_summary()
    if summary["api"]["mean"] > 0.5:
        logger.warning("API latency exceeds 500ms")
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["PerformanceMetrics", "PerformanceMonitor", "percentile"]

F = TypeVar("F", bound=Callable[..., Any])

Sample = tuple[float, float, bool]
"""One windowed sample: ``(timestamp, duration_seconds, ok)``."""

_SUMMARY_KEYS = ("count", "mean", "median", "p95", "p99", "min", "max", "errors")


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, linear interpolation.

    Identical to numpy's default ``np.percentile`` and to
    ``statistics.quantiles(method="inclusive")``.

    Example::

        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of an empty sequence")
    if n == 1:
        return float(sorted_values[0])
    pos = (n - 1) * (q / 100.0)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    a, b = sorted_values[lo], sorted_values[hi]
    return float(a + (b - a) * frac)


def _check_category(category: object) -> str:
    if not isinstance(category, str):
        raise ValueError(
            f"metric category must be a non-empty string, got {type(category).__name__}"
        )
    if not category.strip():
        raise ValueError("metric category must be a non-empty string")
    return category


@dataclass
class _CategoryStats:
    window: int
    count: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    errors: int = 0
    samples: deque[Sample] = field(init=False)

    def __post_init__(self) -> None:
        self.samples = deque(maxlen=self.window)

    def add(self, ts: float, duration: float, ok: bool) -> None:
        self.count += 1
        self.total += duration
        if duration < self.min:
            self.min = duration
        if duration > self.max:
            self.max = duration
        if not ok:
            self.errors += 1
        self.samples.append((ts, duration, ok))

    def summary(self) -> dict[str, float | int]:
        durations = sorted(d for _, d, _ in self.samples)
        return {
            "count": self.count,
            "mean": self.total / self.count,
            "median": percentile(durations, 50),
            "p95": percentile(durations, 95),
            "p99": percentile(durations, 99),
            "min": self.min,
            "max": self.max,
            "errors": self.errors,
        }


class PerformanceMetrics:
    """Thread-safe latency statistics per category, with bounded memory.

    Args:
        window: how many recent samples each category keeps for percentiles
            and charts (count/mean/min/max/errors stay exact over all samples).

    Example::

        metrics = PerformanceMetrics(window=1000)
        metrics.record("api", 0.012)
        metrics.record("my_step", 0.3, success=False)
        metrics.get_summary("api")["p95"]      # seconds
        metrics.to_dataframe()                 # one row per windowed sample
    """

    def __init__(self, window: int = 1000) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        self.window = window
        self._lock = threading.Lock()
        self._stats: dict[str, _CategoryStats] = {}
        self._version = 0

    # -- recording -----------------------------------------------------------------
    def record(
        self,
        category: str,
        duration_seconds: float,
        *,
        success: bool = True,
        timestamp: float | None = None,
    ) -> None:
        """Record one sample of ``duration_seconds`` in ``category``.

        Any non-empty category string is accepted. ``timestamp`` defaults to
        ``time.time()``. A negative, NaN or infinite duration raises ValueError.

        Example::

            metrics.record("cli", 0.05)
            metrics.record("api", 1.2, success=False)
        """
        _check_category(category)
        if isinstance(duration_seconds, bool):
            raise ValueError("duration_seconds must be a number of seconds, got bool")
        try:
            duration = float(duration_seconds)
        except (TypeError, ValueError):
            raise ValueError(
                f"duration_seconds must be a number of seconds, got {duration_seconds!r}"
            ) from None
        if not math.isfinite(duration) or duration < 0:
            raise ValueError(
                f"duration_seconds must be a finite number >= 0, got {duration_seconds!r}"
            )
        if timestamp is None:
            ts = time.time()
        else:
            try:
                ts = float(timestamp)
            except (TypeError, ValueError):
                raise ValueError(f"timestamp must be a number, got {timestamp!r}") from None
        ok = bool(success)
        with self._lock:
            stats = self._stats.get(category)
            if stats is None:
                stats = self._stats[category] = _CategoryStats(self.window)
            stats.add(ts, duration, ok)
            self._version += 1

    def record_samples(self, samples: tuple[tuple[str, float], ...], success: bool) -> None:
        """Record several already-checked samples at once (one lock, one timestamp).

        The platform's hot path: durations come from ``time.perf_counter``
        differences, so the checks of :meth:`record` would only cost time.
        """
        ts = time.time()
        with self._lock:
            stats_of = self._stats
            for category, duration in samples:
                stats = stats_of.get(category)
                if stats is None:
                    stats = stats_of[category] = _CategoryStats(self.window)
                stats.add(ts, duration, success)
            self._version += 1

    def monitor(self, category: str) -> PerformanceMonitor:
        """A ``PerformanceMonitor`` recording into this object.

        Example::

            with metrics.monitor("api"):
                agent.process(query="hi")
        """
        return PerformanceMonitor(self, category)

    def reset(self, category: str | None = None) -> None:
        """Forget every category, or only ``category`` (KeyError if unknown).

        Example::

            metrics.reset("api")
            metrics.reset()
        """
        with self._lock:
            if category is None:
                self._stats.clear()
            else:
                if category not in self._stats:
                    raise KeyError(self._unknown(category))
                del self._stats[category]
            self._version += 1

    # -- reading -------------------------------------------------------------------
    @property
    def version(self) -> int:
        """An integer that increases on every ``record`` and ``reset``."""
        return self._version

    def categories(self) -> list[str]:
        """Known categories, in first-recorded order."""
        with self._lock:
            return list(self._stats)

    def __contains__(self, category: object) -> bool:
        with self._lock:
            return category in self._stats

    def _unknown(self, category: str) -> str:
        known = ", ".join(repr(c) for c in self._stats) or "none yet"
        return f"no metrics recorded for category {category!r} (known: {known})"

    def get_summary(
        self, category: str | None = None
    ) -> dict[str, dict[str, float | int]] | dict[str, float | int]:
        """Statistics in seconds: ``count, mean, median, p95, p99, min, max, errors``.

        Without an argument, ``{category: stats}`` for every category; with one,
        that category's stats (KeyError if nothing was recorded for it).
        count/mean/min/max/errors cover all samples, median/p95/p99 the window.

        Example::

            metrics.get_summary()["api"]["mean"]
            metrics.get_summary("api")["p99"]
        """
        with self._lock:
            if category is not None:
                stats = self._stats.get(category)
                if stats is None:
                    raise KeyError(self._unknown(category))
                return stats.summary()
            return {name: s.summary() for name, s in self._stats.items()}

    def samples(self, category: str) -> list[Sample]:
        """A copy of the windowed ``(timestamp, duration_seconds, ok)`` samples.

        Example::

            xs = [ts for ts, _, _ in metrics.samples("api")]
        """
        with self._lock:
            stats = self._stats.get(category)
            if stats is None:
                raise KeyError(self._unknown(category))
            return list(stats.samples)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per windowed sample: ``category, timestamp, duration_s, ok``.

        ``timestamp`` is seconds since the epoch (``time.time()``), a float;
        ``pd.to_datetime(df.timestamp, unit="s")`` turns it into datetimes.
        Needs pandas (imported here, not at module import).

        Example::

            df = metrics.to_dataframe()
            df.groupby("category").duration_s.describe()
        """
        import pandas as pd

        with self._lock:
            rows = [(name, ts, d, ok) for name, s in self._stats.items() for ts, d, ok in s.samples]
        df = pd.DataFrame(rows, columns=["category", "timestamp", "duration_s", "ok"])
        return df.astype(
            {"category": "object", "timestamp": "float64", "duration_s": "float64", "ok": "bool"}
        )

    def summary_dataframe(self) -> pd.DataFrame:
        """One row per category: ``category`` plus the ``get_summary`` columns (seconds).

        Example::

            metrics.summary_dataframe().set_index("category")
        """
        import pandas as pd

        summary = self.get_summary()
        rows = [{"category": name, **stats} for name, stats in summary.items()]
        return pd.DataFrame(rows, columns=["category", *_SUMMARY_KEYS])

    # -- display -------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"PerformanceMetrics(categories={self.categories()!r})"

    def _repr_html_(self) -> str:
        from .render import metrics_table_html

        return metrics_table_html(self.get_summary())


class PerformanceMonitor:
    """Time a block or a function and record it in a ``PerformanceMetrics``.

    Works as a context manager (``with`` / ``async with``) and as a decorator
    of sync and async functions. Uses ``time.perf_counter``; a block that
    raises is recorded with ``success=False`` and the exception propagates.
    ``elapsed`` holds the last measured duration in seconds.

    Example::

        with PerformanceMonitor(metrics, "deployment") as mon:
            deploy_multi_channel(agent, app, "assistant")
        print(mon.elapsed)

        @PerformanceMonitor(metrics, "api")
        async def handler(query: str) -> str: ...
    """

    def __init__(self, metrics: PerformanceMetrics, category: str) -> None:
        if not isinstance(metrics, PerformanceMetrics):
            raise ValueError(f"metrics must be a PerformanceMetrics, got {type(metrics).__name__}")
        self.metrics = metrics
        self.category = _check_category(category)
        self.elapsed: float | None = None
        self._starts: list[float] = []

    def __repr__(self) -> str:
        return f"PerformanceMonitor(category={self.category!r})"

    # -- context manager -----------------------------------------------------------
    def __enter__(self) -> PerformanceMonitor:
        self._starts.append(time.perf_counter())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        elapsed = time.perf_counter() - self._starts.pop()
        self.elapsed = elapsed
        self.metrics.record(self.category, elapsed, success=exc_type is None)
        return False

    async def __aenter__(self) -> PerformanceMonitor:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self.__exit__(exc_type, exc, tb)

    # -- decorator -----------------------------------------------------------------
    def __call__(self, func: F) -> F:
        """Decorate ``func`` so that every call is timed (each call independently)."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                ok = False
                try:
                    result = await func(*args, **kwargs)
                    ok = True
                    return result
                finally:
                    self._finish(start, ok)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            ok = False
            try:
                result = func(*args, **kwargs)
                ok = True
                return result
            finally:
                self._finish(start, ok)

        return wrapper  # type: ignore[return-value]

    def _finish(self, start: float, ok: bool) -> None:
        elapsed = time.perf_counter() - start
        self.elapsed = elapsed
        self.metrics.record(self.category, elapsed, success=ok)
