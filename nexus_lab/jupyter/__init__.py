"""Notebook layer of nexus_lab: the ``%nexus`` magics, result objects, widgets.

Nothing here is imported by ``import nexus_lab``, and this package itself
imports nothing: IPython is loaded only by ``%load_ext nexus_lab`` (which
imports :mod:`nexus_lab.jupyter.magics`), ipywidgets only when a widget is
created.

Modules:

* :mod:`~nexus_lab.jupyter.magics` - the ``%nexus`` / ``%%nexus`` magics: a
  router into :mod:`~nexus_lab.jupyter.commands` (one small module per
  concern: platform, call, bench, views);
* :mod:`~nexus_lab.jupyter.parsing` - reading a magic line like a shell line
  (comments, quotes), argparse with ``did you mean``;
* :mod:`~nexus_lab.jupyter.completion` - TAB completion inside ``%nexus``;
* :mod:`~nexus_lab.jupyter.results` - what the magics return (``CallResult``,
  ``CallError``, ``PlatformStatus``, ``SessionTable``, ``MetricsSummary``,
  ``MetricsChart``, ``LogTable``): rich HTML and a stable text ``repr``;
* :mod:`~nexus_lab.jupyter.bench` - ``run_bench`` / ``BenchResult``, the load
  behind ``%nexus bench``;
* :mod:`~nexus_lab.jupyter.logs` - the server-side log records, kept in the
  kernel instead of printed under a random cell;
* :mod:`~nexus_lab.jupyter.widgets` - live views (channel status, sessions,
  metrics, server log, a dashboard) on one shared refresh thread
  (:mod:`~nexus_lab.jupyter._refresh`); :mod:`~nexus_lab.jupyter.charts` draws
  their latency charts.

Example::

    %load_ext nexus_lab
    %nexus deploy agent --name assistant
    %nexus start
    r = %nexus call assistant query="What is AI?"
    r.response, r.session_id
    %nexus bench assistant -n 200 --input query=hi
"""
