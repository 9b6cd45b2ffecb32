"""Notebook layer of nexus_lab: the ``%nexus`` magics, result objects, widgets.

Nothing here is imported by ``import nexus_lab``, and this package itself
imports nothing: IPython is loaded only by ``%load_ext nexus_lab`` (which
imports :mod:`nexus_lab.jupyter.magics`), ipywidgets only when a widget is
created.

Modules:

* :mod:`~nexus_lab.jupyter.magics` - the ``%nexus`` / ``%%nexus`` magics;
* :mod:`~nexus_lab.jupyter.results` - what the magics return (``CallResult``,
  ``PlatformStatus``, ``SessionTable``, ``MetricsSummary``, ``MetricsChart``):
  rich HTML in a notebook and a stable text ``repr`` without ids, ports or
  timings;
* :mod:`~nexus_lab.jupyter.widgets` - live views (channel status, sessions,
  metrics, a dashboard).

Example::

    %load_ext nexus_lab
    %nexus deploy agent --name assistant
    %nexus start
    r = %nexus call assistant query="What is AI?"
    r.response, r.session_id
"""
