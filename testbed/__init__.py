"""Throwaway infrastructure shared by the tests and the benchmarks (tools/): embedded
PostgreSQL, nats-server and Prometheus, ``ledger`` process launchers, port and process
helpers. Run from a checkout; not installed into site-packages. It may import the ledger's
packages; they never import it."""
