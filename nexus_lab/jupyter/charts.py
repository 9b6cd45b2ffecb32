"""Latency charts drawn with matplotlib's Agg canvas (no pyplot, no GUI).

What the charts show, and why:

* **what the caller waits, per channel** - the categories ``api``, ``cli`` and
  ``mcp`` of ``app.metrics``: from the request reaching the platform to the
  response ready. That is the figure a user recognises (a call that took
  35 ms shows ~35 ms), drawn as a solid line per channel;
* **the agent's own time** beside it - ``agent:api``, ``agent:cli``,
  ``agent:mcp``: a dashed line of the same colour, so the gap between the two
  is what the platform and the channel add;
* never ``workflow:NAME`` next to the channels: it is the per-deployment copy
  of the caller figure (the same calls again), kept in the table only;
* **a scale one outlier cannot flatten** - the latency axis stops at the 99th
  percentile of what is drawn (nearest rank, rounded down, so with 20 samples
  the single slowest one is off-scale); slower samples are drawn as ``^``
  marks on the top edge and the chart says how many and the slowest value.
  The histogram uses the same range.

:class:`LatencyChart` owns one ``Figure`` with two axes (latency over time,
and its distribution) and reuses its lines with ``set_data`` on every redraw;
:meth:`LatencyChart.render` returns PNG bytes, which
:class:`~nexus_lab.jupyter.widgets.MetricsDashboard` and ``%nexus bench`` put
into a ``widgets.Image``. Agg figures not registered with pyplot are safe to
draw from a background thread and need no front-end extension.

Example::

    from nexus_lab.jupyter.charts import LatencyChart

    chart = LatencyChart()
    png = chart.render(app.metrics)         # bytes starting with b"\\x89PNG"
    open("latency.png", "wb").write(png)
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["LatencyChart", "figure_png", "chart_categories", "agent_category", "clip_limit", "svg_latency"]

_COLORS = (
    "#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2",
    "#db2777", "#4b5563", "#65a30d", "#dc2626", "#7c3aed",
)

_CHANNELS = ("api", "cli", "mcp")
AGENT_PREFIX = "agent:"


def chart_categories(categories: Iterable[str]) -> list[str]:
    """The categories worth a line of their own: channels first, then the user's own.

    The per-deployment ``workflow:NAME`` and the agents' ``agent:CHANNEL``
    categories repeat the same calls, so they get no line of their own when
    channels were recorded (the agent's time is drawn *with* its channel, see
    :func:`agent_category`).

    >>> chart_categories(["workflow:a", "mcp", "api", "agent:api", "deployment"])
    ['api', 'mcp', 'deployment']
    """
    categories = list(categories)
    channels = [c for c in _CHANNELS if c in categories]
    others = [c for c in categories if c not in _CHANNELS]
    if channels:
        others = [c for c in others if not c.startswith(("workflow:", AGENT_PREFIX))]
    return channels + others


def agent_category(channel: str, categories: Iterable[str]) -> str | None:
    """``agent:CHANNEL`` when it was recorded for a channel, else None.

    >>> agent_category("api", ["api", "agent:api"]), agent_category("deployment", ["deployment"])
    ('agent:api', None)
    """
    name = AGENT_PREFIX + channel
    return name if channel in _CHANNELS and name in categories else None


def clip_limit(values: Sequence[float]) -> float | None:
    """The top of a latency axis that one outlier cannot flatten, or None (no clipping).

    The 99th percentile by nearest rank, rounded down: with fewer than 100
    samples that still leaves the single slowest out. None when there are
    fewer than 5 values or nothing is above it.

    >>> clip_limit([1.0] * 19 + [50.0])
    1.0
    >>> clip_limit([1.0, 2.0, 3.0]) is None
    True
    """
    n = len(values)
    if n < 5:
        return None
    ordered = sorted(values)
    top = ordered[math.floor(0.99 * (n - 1))]
    return top if ordered[-1] > top else None


def figure_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes on the Agg canvas.

    One draw, fast zlib level: about 3x cheaper than ``savefig`` with a layout
    engine, which matters at a few frames per second.
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    buf = io.BytesIO()
    canvas.print_png(buf, pil_kwargs={"compress_level": 1})
    return buf.getvalue()


def _fmt_ms(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"


Rows = Sequence[tuple[float, float, bool]]


class LatencyChart:
    """Latency per channel over time plus its distribution, in milliseconds.

    Args:
        figsize: inches (width, height).
        dpi: resolution of the PNG.
        max_lines: at most this many caller categories are drawn (the first
            ones recorded); the table of the dashboard still lists all.
        title: the time axes' title.
    """

    def __init__(self, figsize: tuple[float, float] = (10.0, 3.4), dpi: float = 90,
                 max_lines: int = 10,
                 title: str = "what callers waited (solid) - the agent's own time (dashed)",
                 x_from: str = "latest") -> None:
        if x_from not in ("latest", "first"):
            raise ValueError(f"x_from must be 'latest' or 'first', got {x_from!r}")
        self.x_from = x_from
        self.dpi = dpi
        self.max_lines = max_lines
        # Fixed margins instead of a layout engine (which draws everything twice).
        self.figure = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.ax_time, self.ax_hist = self.figure.subplots(1, 2, width_ratios=(3, 2))
        self.figure.subplots_adjust(left=0.06, right=0.985, bottom=0.15, top=0.78, wspace=0.16)
        # titles on the figure's top line; the legend rows sit between them and the axes,
        # never on the lines
        self.figure.text(0.06, 0.985, title, fontsize=9, va="top")
        self.ax_time.set_xlabel("seconds (0 = latest sample)" if x_from == "latest" else "seconds since the start")
        self.ax_time.set_ylabel("ms")
        self.ax_time.grid(True, alpha=0.3)
        self._lines: dict[str, Any] = {}
        (self._error_marks,) = self.ax_time.plot(
            [], [], linestyle="none", marker="x", color="#b91c1c", label="failed", zorder=5
        )
        (self._clipped_marks,) = self.ax_time.plot(
            [], [], linestyle="none", marker="^", color="#6b7280", markersize=5,
            label="above p99 (off-scale)", zorder=5, clip_on=False,
        )
        self._empty_text = self.ax_time.text(
            0.5, 0.5, "no samples yet", transform=self.ax_time.transAxes,
            ha="center", va="center", color="#6b7280",
        )
        self._clip_text = self.ax_time.text(
            0.99, 0.03, "", transform=self.ax_time.transAxes, ha="right", va="bottom",
            fontsize=7.5, color="#374151", zorder=6,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5},
        )
        #: The top of the latency axis of the last update (None: not clipped).
        self.clipped_at: float | None = None
        #: How many drawn samples were above it.
        self.clipped = 0
        self._style_hist()

    def _style_hist(self) -> None:
        ax = self.ax_hist
        ax.set_title("distribution of what callers waited", fontsize=9)
        ax.set_xlabel("ms")
        ax.set_ylabel("samples")
        ax.grid(True, alpha=0.3)

    def _line(self, category: str, color: str | None = None) -> Any:
        line = self._lines.get(category)
        if line is None:
            agent = category.startswith(AGENT_PREFIX)
            if color is None:
                color = _COLORS[sum(1 for c in self._lines if not c.startswith(AGENT_PREFIX)) % len(_COLORS)]
            label = f"{category[len(AGENT_PREFIX):]}: agent's own" if agent else category
            (line,) = self.ax_time.plot([], [], marker=".", markersize=3,
                                        linewidth=0.9 if agent else 1.1,
                                        linestyle="--" if agent else "-",
                                        alpha=0.8 if agent else 1.0,
                                        color=color, label=label)
            self._lines[category] = line
        return line

    def update(self, samples: Mapping[str, Rows]) -> None:
        """Redraw from ``{category: [(timestamp, duration_s, ok), ...]}``.

        ``agent:CHANNEL`` entries are drawn dashed in their channel's colour;
        the others (callers) solid, at most ``max_lines`` of them.
        """
        callers = [c for c in samples if not c.startswith(AGENT_PREFIX) and samples[c]]
        callers = callers[: self.max_lines]
        agents = {c: a for c in callers if (a := AGENT_PREFIX + c) in samples and samples[a]}
        shown = callers + list(agents.values())
        if self.x_from == "latest":
            origin = max((samples[c][-1][0] for c in shown), default=0.0)
        else:
            origin = min((samples[c][0][0] for c in shown), default=0.0)
        for category, line in self._lines.items():
            if category not in shown:
                line.set_data([], [])
        err_x: list[float] = []
        err_y: list[float] = []
        drawn: list[float] = []
        series: dict[str, tuple[list[float], list[float]]] = {}
        for category in callers:
            rows = samples[category]
            xs = [ts - origin for ts, _, _ in rows]
            ys = [d * 1000.0 for _, d, _ in rows]
            series[category] = (xs, ys)
            drawn += ys
            for x, y, (_, _, ok) in zip(xs, ys, rows, strict=True):
                if not ok:
                    err_x.append(x)
                    err_y.append(y)
        for agent in agents.values():
            rows = samples[agent]
            series[agent] = ([ts - origin for ts, _, _ in rows], [d * 1000.0 for _, d, _ in rows])
        top = clip_limit(drawn)
        ceiling = top * 1.06 if top is not None else None
        clip_x: list[float] = []
        clip_y: list[float] = []
        for category in shown:
            xs, ys = series[category]
            color = None
            if category.startswith(AGENT_PREFIX):
                color = self._line(category[len(AGENT_PREFIX):]).get_color()
            line = self._line(category, color)
            if ceiling is not None:
                for x, y in zip(xs, ys, strict=True):
                    if y > ceiling:
                        clip_x.append(x)
                        clip_y.append(ceiling)
            line.set_data(xs, ys)
            line.set_marker("." if len(xs) <= 200 else "")  # markers are costly to draw
        self._error_marks.set_data(err_x, [min(y, ceiling) if ceiling else y for y in err_y])
        self._clipped_marks.set_data(clip_x, clip_y)
        self._empty_text.set_visible(not shown)
        self.clipped_at = top
        self.clipped = sum(1 for y in drawn if top is not None and y > top)
        ax = self.ax_time
        if shown:
            ax.relim()
            ax.autoscale(True)
            ax.autoscale_view()
            if ceiling is not None:
                ax.set_ylim(0, ceiling)
                self._clip_text.set_text(
                    f"axis clipped at p99 = {_fmt_ms(top)}: {self.clipped} slower "
                    f"(max {_fmt_ms(max(drawn))}) drawn as ^"
                )
            else:
                ax.set_ylim(bottom=0)
                self._clip_text.set_text("")
            handles = [self._lines[c] for c in shown]
            if err_x:
                handles.append(self._error_marks)
            ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=7,
                      frameon=False, ncol=min(len(handles), 4), borderaxespad=0.2,
                      handlelength=1.6, columnspacing=1.0)
        else:
            if ax.get_legend() is not None:
                ax.get_legend().remove()
            self._clip_text.set_text("")
            ax.set_xlim(*((-60, 0) if self.x_from == "latest" else (0, 10)))
            ax.set_ylim(0, 10)
        self._draw_hist(callers, series, top)

    def _draw_hist(self, callers: list[str], series: dict[str, tuple[list[float], list[float]]],
                   top: float | None) -> None:
        # Rebuilt each time (bars cannot be re-binned in place); cheap for a window.
        hist = self.ax_hist
        hist.cla()
        self._style_hist()
        values = [y for c in callers for y in series[c][1]]
        if not values:
            hist.set_xlim(0, 10)
            return
        lo = min(values)
        hi = top if top is not None else max(values)
        if hi <= lo:
            hi = lo + 1e-3
        bins = [lo + (hi - lo) * i / 30 for i in range(31)]
        for category in callers:
            hist.hist([min(y, hi) for y in series[category][1]], bins=bins, histtype="step",
                      color=self._lines[category].get_color(), label=category)
        if top is not None:
            off = sum(1 for v in values if v > top)
            hist.text(0.98, 0.95, f"{off} slower in the last bin", transform=hist.transAxes,
                      ha="right", va="top", fontsize=8, color="#666")

    def render(self, metrics: Any = None) -> bytes:
        """PNG bytes of the chart; with ``metrics`` (a ``PerformanceMetrics``), update from it first.

        Channels (``api``, ``cli``, ``mcp``) are drawn with their
        ``agent:CHANNEL`` time; ``workflow:NAME`` categories are left out when
        channels exist (they repeat the same calls).
        """
        if metrics is not None:
            categories = metrics.categories()
            samples: dict[str, Any] = {}
            for category in chart_categories(categories):
                wanted = [category]
                agent = agent_category(category, categories)
                if agent is not None:
                    wanted.append(agent)
                for name in wanted:
                    try:
                        samples[name] = metrics.samples(name)
                    except KeyError:  # reset between the two calls
                        continue
            self.update(samples)
        return figure_png(self.figure)


def svg_latency(samples: Sequence[tuple[float, float, bool]], *, width: int = 640, height: int = 170,
                max_points: int = 1500) -> str:
    """A light SVG scatter of ``[(t_seconds, latency_s, ok)]`` for live views.

    A few milliseconds a frame where a matplotlib frame costs tens to a
    hundred: a live view drawn while a load runs in the same process takes
    the GIL from that load, so the live chart must be cheap (the final chart
    is a :class:`LatencyChart`). Same rules: clipped at p99 (slower samples
    marked on the top edge, and said so), failures in red.

    >>> svg_latency([(0.0, 0.001, True), (0.1, 0.002, False)]).startswith("<svg")
    True
    """
    if not samples:
        return (f"<svg class='nexus-live-chart' width='{width}' height='{height}'>"
                f"<text x='{width // 2}' y='{height // 2}' text-anchor='middle' fill='#6b7280' "
                "font-size='12'>no samples yet</text></svg>")
    step = max(1, len(samples) // max_points)
    pts = samples[::step]
    ys = [s[1] * 1000.0 for s in pts]
    top = clip_limit(ys)
    ceiling = (top if top is not None else max(ys)) * 1.06 or 1.0
    span = max(s[0] for s in pts) or 1.0
    left, right, upper, lower = 48, 8, 8, 20
    w, h = width - left - right, height - upper - lower
    ok_path: list[str] = []
    err_path: list[str] = []
    off_path: list[str] = []
    for (t, _, ok), y in zip(pts, ys, strict=True):
        px = left + w * t / span
        if y > ceiling:
            off_path.append(f"M{px:.1f},{upper + 4:.1f}l-2.5,4h5z")
            continue
        py = upper + h * (1.0 - y / ceiling)
        (ok_path if ok else err_path).append(f"M{px:.1f},{py:.1f}h1.6")
    note = ""
    if top is not None:
        slower = sum(1 for s in samples if s[1] * 1000.0 > top)
        note = (f"<text x='{width - right}' y='{height - 4}' text-anchor='end' font-size='10' fill='#374151'>"
                f"clipped at p99 = {_fmt_ms(top)}: {slower} slower drawn as &#9650;</text>")
    return (
        f"<svg class='nexus-live-chart' width='{width}' height='{height}' "
        "style='font-family:sans-serif'>"
        f"<rect x='{left}' y='{upper}' width='{w}' height='{h}' fill='none' stroke='#d1d5db'/>"
        f"<text x='{left - 4}' y='{upper + 9}' text-anchor='end' font-size='10'>{_fmt_ms(ceiling)}</text>"
        f"<text x='{left - 4}' y='{upper + h}' text-anchor='end' font-size='10'>0</text>"
        f"<text x='{left}' y='{height - 4}' font-size='10' fill='#374151'>0 s</text>"
        f"<text x='{left + w // 2}' y='{height - 4}' text-anchor='middle' font-size='10' fill='#374151'>"
        f"{span:.1f} s since the start</text>"
        f"<path d='{''.join(ok_path)}' stroke='#2563eb' stroke-width='2' fill='none'/>"
        f"<path d='{''.join(err_path)}' stroke='#b91c1c' stroke-width='2' fill='none'/>"
        f"<path d='{''.join(off_path)}' fill='#6b7280'/>{note}</svg>"
    )
