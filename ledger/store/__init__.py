"""Event-store adapters: recorders that keep lookup indexes in the event transaction."""
