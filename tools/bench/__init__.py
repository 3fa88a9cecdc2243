"""``python -m tools.bench``: the service measured at this machine's limit, next to raw
baselines of the same machine (issue 8).

One command starts everything it needs (embedded PostgreSQL, nats-server, two ``ledger
serve`` processes, ``ledger projections``, ``ledger ingest``, a gRPC echo server and the
load-generator processes), measures, prints a table and writes JSON. Modules, one job each:

* ``profile``    — run settings (full and ``--quick``);
* ``infra``      — PostgreSQL and NATS for the run;
* ``service``    — the ledger's processes and the seeding of stock;
* ``loadgen``    — the load-generator worker process (grpc.aio, pre-serialised requests);
* ``driver``     — the parent's side of the workers: jobs out, merged results back;
* ``payloads``   — the serialised requests the workers send;
* ``echo``       — the baseline gRPC echo server (a process of its own);
* ``baselines``  — raw gRPC, PostgreSQL and JetStream figures;
* ``figures``    — the service's figures (Reserve matrix, open loop, movements, reads);
* ``ingest_run`` — JetStream → ``ledger ingest`` → ledger throughput;
* ``sampling``   — CPU use and projection lag during a run;
* ``stats``      — percentiles and rates;
* ``report``     — ratios to the baselines, the table and the JSON document.
"""
