"""The ``ledger`` command: ``entrypoints.cli.main:main`` is the console script."""
