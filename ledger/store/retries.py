"""Fail fast when the database is gone.

The library retries every statement 10 times, 0.2 s apart, and each attempt may wait the
whole connect timeout for a pooled connection: a dead PostgreSQL then stalls a call for
tens of seconds. Two attempts are enough to replace a broken pooled connection; past that
the caller should get UNAVAILABLE quickly and retry with its idempotency key.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
import types
from collections.abc import Callable
from typing import Any

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError

# The database is away (refused, timed out, connection broken), as the library wraps it or as
# psycopg raises it outside the library (pre-flight checks, the projections' own connections).
STORE_UNAVAILABLE = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)

STORE_ATTEMPTS_MAX = 2
_RETRIED_METHODS = (
    "insert_events",
    "select_events",
    "select_events_batch",
    "select_notifications",
    "max_notification_id",
)


def store_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database could not be reached (retry later, exit 2)."""
    return isinstance(error, STORE_UNAVAILABLE)


def _bounded(method: Callable[..., Any]) -> Callable[..., Any]:
    unwrapped = inspect.unwrap(method)

    @functools.wraps(unwrapped)
    def attempt(*args: Any, **kwargs: Any) -> Any:
        for number in range(1, STORE_ATTEMPTS_MAX + 1):
            try:
                return unwrapped(*args, **kwargs)
            except (InterfaceError, OperationalError):
                if number == STORE_ATTEMPTS_MAX:
                    raise
                time.sleep(0.05)
                _drop_broken_connections(args[0] if args else None)
        raise AssertionError("unreachable")

    return attempt


def _drop_broken_connections(recorder: object) -> None:
    """After a database restart every idle pooled connection is dead, and each is found out
    only when used: test them all now, so the retry gets a live one."""
    pool = getattr(getattr(recorder, "datastore", None), "pool", None)
    check = getattr(pool, "check", None)
    if check is not None:
        with contextlib.suppress(Exception):
            check()


def limit_store_retries(recorder: object) -> None:
    """Replace the library's retry loop on ``recorder``'s statements with ours."""
    for name in _RETRIED_METHODS:
        method = getattr(type(recorder), name, None)
        if method is not None:
            setattr(recorder, name, types.MethodType(_bounded(method), recorder))
