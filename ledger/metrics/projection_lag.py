"""The projection lag gauges, computed when ``/metrics`` is scraped rather than counted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# The subsystem's name, not the module's, as every metrics log line.
log = logging.getLogger("ledger.metrics")


class ProjectionStatus(Protocol):
    @property
    def head_position(self) -> int: ...

    @property
    def applied_position(self) -> int: ...


class ProjectionLagCollector(Collector):
    """``ledger_projection_lag_events`` and the two positions it is the difference of, read
    when scraped: ``status()`` returns a ``projections.queries.ProjectionStatusView`` (or
    anything with ``head_position`` and ``applied_position``) from two cheap queries, or one
    and the in-process runner's counter. A failing read exports nothing for
    the scrape (the absent series is itself alertable) instead of failing the whole scrape."""

    def __init__(self, status: Callable[[], ProjectionStatus]) -> None:
        self._status = status

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(0, 0))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            status = self._status()
            head, applied = status.head_position, status.applied_position
        except Exception as error:
            log.warning("projection lag not exported this scrape: %s", error)
            return iter(())
        return iter(self._families(head, applied))

    @staticmethod
    def _families(head: int, applied: int) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "ledger_projection_lag_events",
                "Ledger notifications written but not yet applied to the read models"
                " (head position minus applied position)",
                value=max(0, head - applied),
            ),
            GaugeMetricFamily(
                "ledger_head_position",
                "Position (notification id) of the newest ledger event",
                value=head,
            ),
            GaugeMetricFamily(
                "ledger_projection_applied_position",
                "Ledger position the active read-model generation has applied",
                value=applied,
            ),
        ]
