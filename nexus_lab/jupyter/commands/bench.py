"""``%nexus bench``: a bounded load on a served deployment, with a live progress bar and chart.

Thin over :func:`nexus_lab.jupyter.bench.run_bench` (which refuses servers
that are not on loopback, runs the api/cli load in a process of its own, and
leaves no process, thread or connection behind).

Example::

    r = %nexus bench assistant -n 500 -c 16 --input query="hello there"
    r.rps, r.p95_ms, r.error_counts
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from IPython.core.error import UsageError

from ...errors import ConfigError, NexusError
from ..parsing import API_KEY_ENV, parse_inputs, text_inputs
from .call import describe_error

__all__ = ["bench"]


def bench(m: Any, args: argparse.Namespace, cell: Any = None) -> Any:
    """Run the load; return the :class:`~nexus_lab.jupyter.bench.BenchResult`."""
    from ..bench import BenchError, run_bench

    app = m.app(args.app)
    if not app.is_running:
        raise UsageError(f"%nexus bench: the platform is not serving: run %nexus start first to load {args.name!r}")
    inputs = parse_inputs(args.input, text_inputs(app, args.name))
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    view = None if args.quiet else _progress_view(args)
    try:
        return run_bench(
            app, args.name, inputs, requests=args.requests, concurrency=args.concurrency,
            duration=args.duration, channel=args.channel, api_key=api_key, timeout=args.timeout,
            progress=view.update if view is not None else None,
        )
    except (ConfigError, BenchError) as exc:  # a bad argument, or the load generator failed
        raise UsageError(f"%nexus bench: {exc}") from None
    except NexusError as exc:  # the first call (not counted) failed: nothing was loaded
        info = describe_error(exc, args.name, args.channel, "bench", api_key, logs=m.logs, app=app)
        m.last_error = info
        raise UsageError(info.line(f"%nexus bench {args.name} via {args.channel}")) from None
    finally:
        if view is not None:
            view.close()  # the result shows the final chart; the live one goes (like tqdm leave=False)


def _progress_view(args: argparse.Namespace) -> Any:
    try:
        from IPython.display import display

        from ..widgets import BenchProgress
    except ImportError:  # no ipywidgets: no live view, the result is the same
        return None
    view = BenchProgress(args.name, args.channel, total=args.requests, duration=args.duration)
    display(view)
    return view
