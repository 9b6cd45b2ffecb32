"""Latency charts drawn with matplotlib's Agg canvas (no pyplot, no GUI).

:class:`LatencyChart` owns one ``Figure`` with two axes: latency over time, one
line per category (reused with ``set_data`` on every redraw), and the latency
distribution (a step histogram per category). :meth:`LatencyChart.render`
returns PNG bytes, which :class:`~nexus_lab.jupyter.widgets.MetricsDashboard`
puts into a ``widgets.Image``. Agg figures that are not registered with pyplot
are safe to draw from a background thread and need no front-end extension.

Example::

    from nexus_lab.jupyter.charts import LatencyChart

    chart = LatencyChart()
    png = chart.render(app.metrics)         # bytes starting with b"\\x89PNG"
    open("latency.png", "wb").write(png)
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["LatencyChart", "figure_png"]

_COLORS = (
    "#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2",
    "#db2777", "#4b5563", "#65a30d", "#dc2626", "#7c3aed",
)


_CHANNELS = ("api", "cli", "mcp")


def chart_categories(categories: list[str]) -> list[str]:
    """The categories worth a line: channels first, then the user's own; the
    per-deployment ``workflow:NAME`` and the agents' own ``agent:CHANNEL`` ones
    (which repeat the same calls) only when no channel was recorded.

    >>> chart_categories(["workflow:a", "mcp", "api", "agent:api", "deployment"])
    ['api', 'mcp', 'deployment']
    """
    channels = [c for c in _CHANNELS if c in categories]
    others = [c for c in categories if c not in _CHANNELS]
    if channels:
        others = [c for c in others if not c.startswith(("workflow:", "agent:"))]
    return channels + others


def figure_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes on the Agg canvas.

    One draw, fast zlib level: about 3x cheaper than ``savefig`` with a layout
    engine, which matters at a few frames per second.
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    buf = io.BytesIO()
    canvas.print_png(buf, pil_kwargs={"compress_level": 1})
    return buf.getvalue()


class LatencyChart:
    """Latency per category over time plus its distribution, in milliseconds.

    Args:
        figsize: inches (width, height).
        dpi: resolution of the PNG.
        max_lines: at most this many categories are drawn (the first ones
            recorded); the table of the dashboard still lists all.
    """

    def __init__(self, figsize: tuple[float, float] = (10.0, 3.4), dpi: float = 90,
                 max_lines: int = 10) -> None:
        self.dpi = dpi
        self.max_lines = max_lines
        # Fixed margins instead of a layout engine (which draws everything twice).
        self.figure = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.ax_time, self.ax_hist = self.figure.subplots(1, 2, width_ratios=(3, 2))
        self.figure.subplots_adjust(left=0.06, right=0.985, bottom=0.15, top=0.9, wspace=0.16)
        self.ax_time.set_title("latency over time", fontsize=10)
        self.ax_time.set_xlabel("seconds (0 = latest sample)")
        self.ax_time.set_ylabel("ms")
        self.ax_time.grid(True, alpha=0.3)
        self._lines: dict[str, Any] = {}
        (self._error_marks,) = self.ax_time.plot(
            [], [], linestyle="none", marker="x", color="#b91c1c", label="failed", zorder=5
        )
        self._empty_text = self.ax_time.text(
            0.5, 0.5, "no samples yet", transform=self.ax_time.transAxes,
            ha="center", va="center", color="#6b7280",
        )
        self._style_hist()

    def _style_hist(self) -> None:
        ax = self.ax_hist
        ax.set_title("distribution", fontsize=10)
        ax.set_xlabel("ms")
        ax.set_ylabel("samples")
        ax.grid(True, alpha=0.3)

    def _line(self, category: str) -> Any:
        line = self._lines.get(category)
        if line is None:
            color = _COLORS[len(self._lines) % len(_COLORS)]
            (line,) = self.ax_time.plot([], [], marker=".", markersize=3, linewidth=1,
                                        color=color, label=category)
            self._lines[category] = line
        return line

    def update(self, samples: dict[str, list[tuple[float, float, bool]]]) -> None:
        """Redraw from ``{category: [(timestamp, duration_s, ok), ...]}``."""
        shown = {c: s for c, s in list(samples.items())[: self.max_lines] if s}
        latest = max((s[-1][0] for s in shown.values()), default=0.0)
        err_x: list[float] = []
        err_y: list[float] = []
        for category, line in self._lines.items():
            if category not in shown:
                line.set_data([], [])
        for category, rows in shown.items():
            xs = [ts - latest for ts, _, _ in rows]
            ys = [d * 1000.0 for _, d, _ in rows]
            line = self._line(category)
            line.set_data(xs, ys)
            line.set_marker("." if len(rows) <= 200 else "")  # markers are costly to draw
            for x, y, (_, _, ok) in zip(xs, ys, rows, strict=True):
                if not ok:
                    err_x.append(x)
                    err_y.append(y)
        self._error_marks.set_data(err_x, err_y)
        self._empty_text.set_visible(not shown)
        ax = self.ax_time
        if shown:
            ax.relim()
            ax.autoscale(True)
            ax.autoscale_view()
            ax.set_ylim(bottom=0)
            handles = [self._lines[c] for c in shown]
            if err_x:
                handles.append(self._error_marks)
            ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=False)
        else:
            if ax.get_legend() is not None:
                ax.get_legend().remove()
            ax.set_xlim(-60, 0)
            ax.set_ylim(0, 10)
        # The histogram is rebuilt (bars cannot be re-binned in place); cheap for a window.
        hist = self.ax_hist
        hist.cla()
        self._style_hist()
        if shown:
            values = sorted(d * 1000.0 for rows in shown.values() for _, d, _ in rows)
            lo = values[0]
            # bins up to the 99th percentile: one slow outlier must not squash the rest
            hi = values[min(len(values) - 1, int(len(values) * 0.99))]
            if hi <= lo:
                hi = lo + 1e-3
            bins = [lo + (hi - lo) * i / 30 for i in range(31)]
            for category, rows in shown.items():
                hist.hist([d * 1000.0 for _, d, _ in rows], bins=bins, histtype="step",
                          color=self._lines[category].get_color(), label=category)
            off = sum(1 for v in values if v > hi)
            if off:
                hist.text(0.98, 0.95, f"{off} slower off-scale", transform=hist.transAxes,
                          ha="right", va="top", fontsize=8, color="#666")
        else:
            hist.set_xlim(0, 10)

    def render(self, metrics: Any = None) -> bytes:
        """PNG bytes of the chart; with ``metrics``, update from it first.

        When channel categories (``api``, ``cli``, ``mcp``) exist, the chart
        shows them (plus your own categories) and leaves out the per-deployment
        ``workflow:NAME`` ones, which repeat the same calls.
        """
        if metrics is not None:
            samples = {}
            for category in chart_categories(metrics.categories()):
                try:
                    samples[category] = metrics.samples(category)
                except KeyError:  # reset between the two calls
                    continue
            self.update(samples)
        return figure_png(self.figure)
