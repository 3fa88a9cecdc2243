"""NATS ingest: canonical JSON messages (SPEC §5) parsed and validated into domain movements."""
