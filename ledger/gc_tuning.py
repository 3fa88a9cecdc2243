"""Garbage-collector settings for the long-running processes (serve, ingest, projections).

The writer keeps thousands of aggregates cached, each a tree of dicts; CPython's default
thresholds (700, 10, 10) run a full collection over all of them every few seconds under
load, a pause of 100 ms and more on this hardware that lands in every call's latency.
Everything built at startup (imported modules, the gRPC server, pools) lives as long as
the process, so it is frozen out of the collector, and collections run less often
(``LEDGER_GC_THRESHOLDS``, default 20000,50,20: a full collection every ~20 M
allocations instead of every ~70 k). Reference cycles are rare in this code; they are
still collected, later.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping

from ledger.config import DEFAULT_GC_THRESHOLDS, ConfigError

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = DEFAULT_GC_THRESHOLDS


def thresholds_from_env(environ: Mapping[str, str]) -> tuple[int, int, int]:
    text = environ.get("LEDGER_GC_THRESHOLDS", "").strip()
    if not text:
        return DEFAULT_THRESHOLDS
    try:
        first, second, third = (int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"LEDGER_GC_THRESHOLDS must be three integers like 20000,50,20, not {text!r}"
        ) from None
    if first < 0 or second < 0 or third < 0:
        raise ConfigError("LEDGER_GC_THRESHOLDS must not be negative")
    return first, second, third


def tune_after_startup(thresholds: tuple[int, int, int]) -> tuple[int, int, int]:
    """Call once the process has built what it keeps for its whole life."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    log.debug("gc: %d objects frozen, thresholds %s", gc.get_freeze_count(), thresholds)
    return thresholds
