"""NATS ingest: canonical JSON messages (contract §5) parsed and validated into domain movements."""
