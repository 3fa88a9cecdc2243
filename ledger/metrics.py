"""Prometheus metrics: every metric the ledger's processes export, defined in one place.

Each process (``ledger serve``, ``ledger ingest``, ``ledger projections``, ``ledger dev``)
keeps its own :data:`REGISTRY` and serves it on ``--metrics-listen`` / ``LEDGER_METRICS_LISTEN``
(``HOST:PORT``; empty, the default, serves nothing) at ``/metrics``. docs/operations.md lists
every metric with what to alert on; keep it in step with this module.

Labels are bounded by the code, never by the data: no SKU, location, channel, principal or
message id ever becomes a label value.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ledger.config import ConfigError

log = logging.getLogger(__name__)

# No *_created series: they double the output and no alert here uses them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# ---- gRPC (ledger/api/metrics_interceptor.py) ------------------------------------------------

# From 0.5 ms (a cached read) to a minute (a long StreamLedger / VerifyLedger stream).
RPC_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

RPC_DURATION = Histogram(
    "ledger_rpc_duration_seconds",
    "Time from the call reaching the server to its final status, by RPC and status code"
    " (its _count is the number of calls; streams are observed when they end)",
    ("service", "method", "code"),
    buckets=RPC_BUCKETS,
    registry=REGISTRY,
)
RPC_IN_FLIGHT = Gauge(
    "ledger_rpc_in_flight",
    "Calls being handled now (open streams included)",
    ("service", "method"),
    registry=REGISTRY,
)

# ---- reservations (ledger/use_cases/reservations.py) -----------------------------------------

RESERVATION_OUTCOMES = ("reserved", "insufficient", "committed", "released", "expired")
RESERVATIONS = Counter(
    "ledger_reservations",
    "Reservation outcomes: reserved (a Reserve committed), insufficient (a Reserve rejected"
    " with INSUFFICIENT_AVAILABILITY), committed, released, expired (recorded by the expiry"
    " sweeper); idempotent replays are not counted again",
    ("outcome",),
    registry=REGISTRY,
)
for _outcome in RESERVATION_OUTCOMES:
    RESERVATIONS.labels(_outcome)

# ---- the write path (ledger/pipeline.py) -----------------------------------------------------

EVENTS_APPENDED = Counter(
    "ledger_events_appended",
    "Events this process committed to the ledger, by event type (e.g. Position.Received,"
    " Reservation.Created, IdempotencyKey.Created); the sum over types is the number of"
    " ledger notifications written",
    ("event",),
    registry=REGISTRY,
)
COMMITS = Counter(
    "ledger_commits",
    "Write transactions this process committed that appended at least one event",
    registry=REGISTRY,
)


def count_appended(recordings: Iterable[Any]) -> None:
    """Count a committed transaction's recordings (eventsourcing ``Recording`` objects)."""
    by_type = collections.Counter(type(r.domain_event).__qualname__ for r in recordings)
    if not by_type:
        return
    COMMITS.inc()
    for event, count in by_type.items():
        EVENTS_APPENDED.labels(event).inc(count)


# ---- ingest (ingest/bridge.py) ---------------------------------------------------------------

INGEST_LANES = ("live", "bulk")
INGEST_OUTCOMES = ("processed", "duplicate", "dead_lettered")
INGEST_MESSAGES = Counter(
    "ledger_ingest_messages",
    "Movement messages the ingest bridge finished with, by lane and outcome: processed"
    " (recorded in the ledger), duplicate (already recorded: acknowledged, nothing written),"
    " dead_lettered (published to the DLQ and terminated)",
    ("lane", "outcome"),
    registry=REGISTRY,
)
INGEST_REDELIVERIES = Counter(
    "ledger_ingest_redeliveries",
    "Messages fetched that JetStream had delivered before (after a nak, a crash or an ack timeout)",
    ("lane",),
    registry=REGISTRY,
)
INGEST_STORE_FAILURES = Counter(
    "ledger_ingest_store_failures",
    "Batches nak-ed for redelivery because the ledger's database failed (nothing committed)",
    ("lane",),
    registry=REGISTRY,
)
INGEST_BATCH_SECONDS = Histogram(
    "ledger_ingest_batch_seconds",
    "Time to handle one fetched batch: parse, dead-letter, commit and acknowledge",
    ("lane",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
for _lane in INGEST_LANES:
    for _outcome in INGEST_OUTCOMES:
        INGEST_MESSAGES.labels(_lane, _outcome)
    INGEST_REDELIVERIES.labels(_lane)
    INGEST_STORE_FAILURES.labels(_lane)

# ---- projections (computed at scrape time) ---------------------------------------------------


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


# ---- the HTTP endpoint -----------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6; port 0 picks a free one) → (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"metrics listen address must be HOST:PORT, not {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


@dataclass
class MetricsEndpoint:
    """The running ``/metrics`` HTTP server (a daemon thread) and what it registered."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread
    _collectors: list[Collector]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        for collector in self._collectors:
            REGISTRY.unregister(collector)


def start_endpoint(
    listen: str, *, projection_status: Callable[[], ProjectionStatus] | None = None
) -> MetricsEndpoint | None:
    """Serve :data:`REGISTRY` at ``http://HOST:PORT/metrics``; ``None`` when ``listen`` is
    empty. With ``projection_status`` the projection lag gauges are exported too. Logs
    ``metrics on http://HOST:PORT/metrics`` (the real port when PORT was 0)."""
    if not listen:
        return None
    host, port = parse_listen(listen)
    collectors: list[Collector] = []
    if projection_status is not None:
        collector = ProjectionLagCollector(projection_status)
        REGISTRY.register(collector)
        collectors.append(collector)
    try:
        server, thread = start_http_server(port, host, registry=REGISTRY)
    except BaseException as error:
        for collector in collectors:
            REGISTRY.unregister(collector)
        if isinstance(error, OSError):
            raise ConfigError(f"cannot serve metrics on {listen}: {error}") from error
        raise
    endpoint = MetricsEndpoint(host, int(server.server_port), server, thread, collectors)
    log.info("metrics on %s", endpoint.url)
    return endpoint
