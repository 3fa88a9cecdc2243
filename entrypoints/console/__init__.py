"""``ledger console``: the auditor's web console, a client of the gRPC API (docs/console.md).

It imports the Python client and the edge helpers (``entrypoints.remote``,
``entrypoints.ledger_fold``), never the ledger's store, service, projections or ingest
(an import contract in ``.importlinter`` checks that).
"""
