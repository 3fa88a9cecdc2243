"""The interpreter's thread switch interval for the long-running processes.

The writer thread spends its transaction waiting on PostgreSQL round trips with the GIL
released; each time a reply arrives it must take the GIL back from the event loop thread,
which is busy with gRPC work under load. CPython hands the GIL over only when the holder
has run for the switch interval (5 ms by default), so every round trip inside the
transaction (lock, insert, index rows, commit) cost up to 5 ms of waiting while the events
table lock was held: 38 ms transactions for 83 reservations, with PostgreSQL mostly idle.
A shorter interval (``LEDGER_GIL_SWITCH_MS``, default 0.25) makes the hand-over prompt; the
price is more frequent switches, a few per cent of CPU at most.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

from ledger.config import DEFAULT_GIL_SWITCH_MS, ConfigError

log = logging.getLogger(__name__)

DEFAULT_SWITCH_MS = DEFAULT_GIL_SWITCH_MS


def switch_ms_from_env(environ: Mapping[str, str]) -> float:
    text = environ.get("LEDGER_GIL_SWITCH_MS", "").strip()
    if not text:
        return DEFAULT_SWITCH_MS
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"LEDGER_GIL_SWITCH_MS must be a number of milliseconds like 0.25, not {text!r}"
        ) from None
    if not 0.01 <= value <= 100:
        raise ConfigError(f"LEDGER_GIL_SWITCH_MS must be between 0.01 and 100, not {value:g}")
    return value


def tune_switch_interval(milliseconds: float) -> float:
    """Set the switch interval for this process; returns it in milliseconds."""
    sys.setswitchinterval(milliseconds / 1000)
    log.debug("gil: switch interval %.3f ms", milliseconds)
    return milliseconds
