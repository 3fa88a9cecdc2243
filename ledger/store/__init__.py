"""Event-store adapters: recorders that keep the ledger's lookup indexes in the event transaction."""
