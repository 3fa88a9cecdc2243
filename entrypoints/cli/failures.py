"""Failures to exit statuses: the one line of a failure the operator can fix (exit 2), and the
SIGTERM that arrives before the event loop handles it."""

from __future__ import annotations

import logging

from ledger.config import ConfigError
from ledger.logs import one_line

log = logging.getLogger("ledger")


class StopNow(BaseException):
    """SIGTERM before the event loop handles it: unwinds like Ctrl-C."""


def stop_now(_signum: int, _frame: object) -> None:
    raise StopNow


def known_failure(error: BaseException) -> str | None:
    """The one line for a failure the operator can fix (exit 2), or None for a bug."""
    from ledger.local_nats import NatsNotFound
    from ledger.nats_connect import NatsUnreachable
    from ledger.preflight import DatabaseUnreachable
    from ledger.store.retries import store_unavailable

    if isinstance(error, (NatsNotFound, DatabaseUnreachable, NatsUnreachable)):
        return str(error)  # before ConfigError: the first two are ConfigErrors with their own line
    if isinstance(error, ConfigError):
        return f"configuration error: {error}"
    if store_unavailable(error):
        return f"database unavailable: {one_line(error)}"
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return f"{error.strerror or one_line(error)}{where}"
    return None
