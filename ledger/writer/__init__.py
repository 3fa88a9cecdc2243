"""The ledger's writer, in the API process or in a process of its own.

``local`` runs the command pipeline on a thread of the calling process (SQLite, tools, tests,
and ``ledger serve --writer thread``). ``server`` is ``ledger writer``: the pipeline in a
process of its own, elected among candidates by a PostgreSQL advisory lock (``election``)
and reached by API processes through ``client`` over a local socket (``wire``). Commands
cross the socket as a use-case name and its arguments (``use_cases``), never as code.
"""
