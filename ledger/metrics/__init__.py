"""Prometheus metrics: every metric the ledger's processes export, and the endpoint serving them.

Each process (``ledger serve``, ``ledger ingest``, ``ledger projections``, ``ledger dev``)
keeps its own registry and serves it on ``--metrics-listen`` / ``LEDGER_METRICS_LISTEN`` at
``/metrics``. One job per module:

- :mod:`ledger.metrics.labels`: the bounded values of the ``channel`` and ``source`` labels;
- :mod:`ledger.metrics.definitions`: the registry, what is measured, and the counting helpers;
- :mod:`ledger.metrics.projection_lag`: the projection lag gauges, read at scrape time;
- :mod:`ledger.metrics.endpoint`: the HTTP server.
"""
