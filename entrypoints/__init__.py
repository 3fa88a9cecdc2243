"""The edges that start the ledger: the gRPC server (``entrypoints.grpc``) and the ``ledger``
command line (``entrypoints.cli``). They depend on the core and its edges (``ledger``,
``projections``, ``ingest``); nothing there imports them (docs/architecture.md)."""
