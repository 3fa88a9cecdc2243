"""Prometheus metrics: every metric the ledger's processes export, defined in one place.

Each process (``ledger serve``, ``ledger ingest``, ``ledger projections``, ``ledger dev``)
keeps its own :data:`REGISTRY` and serves it on ``--metrics-listen`` / ``LEDGER_METRICS_LISTEN``
(``HOST:PORT``; empty, the default, serves nothing) at ``/metrics``. docs/operations.md lists
every metric with what to alert on; keep it in step with this module.

Labels are bounded by the code, never by the data: no SKU, location, principal or message id
ever becomes a label value. Two labels name what operators configure, and are bounded by
:class:`BoundedValues`: ``channel`` (sales channels, :data:`CHANNELS`) and ``source``
(publishing systems, :data:`SOURCES`). Either takes the values listed in
``LEDGER_METRICS_CHANNELS`` / ``LEDGER_METRICS_SOURCES`` (``--metrics-channels`` /
``--metrics-sources``) or, unset, the first :data:`UNLISTED_VALUES_MAX` distinct values the
process sees; every other value is counted as :data:`OTHER`.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
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

# ---- bounded label values (channel, source) --------------------------------------------------

# The label value of every channel or source beyond the bounded set. Parentheses are not
# allowed in channel names or sources, so it never collides with a real one.
OTHER = "(other)"
# Of a dead letter whose source neither its payload nor its subject tells (its DLQ subject
# is inventory.dlq._invalid).
UNKNOWN_SOURCE = "(invalid)"
# Unlisted: how many distinct values a process gives their own label value before OTHER.
UNLISTED_VALUES_MAX = 20
_LISTABLE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class BoundedValues:
    """The label values a data-named label (``channel``, ``source``) may take: the operator's
    list (:meth:`configure`) or, without one, the first ``limit`` distinct values seen; any
    other value becomes :data:`OTHER`. Thread-safe (the writer thread and the event loop both
    count). ``on_admit`` is called once per admitted value (to export its series at 0)."""

    def __init__(self, what: str, limit: int = UNLISTED_VALUES_MAX) -> None:
        self.what = what
        self.limit = limit
        self._listed: frozenset[str] | None = None
        self._seen: set[str] = set()
        self._warned = False
        self._lock = threading.Lock()
        self._on_admit: list[Callable[[str], None]] = []

    def on_admit(self, callback: Callable[[str], None]) -> None:
        with self._lock:
            self._on_admit.append(callback)
            admitted = sorted(self._seen)
        for value in admitted:
            callback(value)

    def configure(self, values: Iterable[str] | None) -> None:
        """Only ``values`` (and OTHER) from now on; ``None``: the first ``limit`` seen."""
        listed = None if values is None else frozenset(values)
        with self._lock:
            self._listed = listed
            self._seen = set(listed or ())
            self._warned = False
            callbacks = list(self._on_admit)
        for value in sorted(listed or ()):
            for callback in callbacks:
                callback(value)

    def __call__(self, value: str) -> str:
        if value in self._seen:  # the hot path: a set lookup, no lock
            return value
        with self._lock:
            if value in self._seen:
                return value
            if self._listed is not None or len(self._seen) >= self.limit:
                if not self._warned and self._listed is None:
                    self._warned = True
                    log.warning(
                        "more than %d %ss seen: further ones are counted as %s in the metrics"
                        " (list them in LEDGER_METRICS_%sS)",
                        self.limit,
                        self.what,
                        OTHER,
                        self.what.upper(),
                    )
                return OTHER
            self._seen.add(value)
            callbacks = list(self._on_admit)
        for callback in callbacks:
            callback(value)
        return value


def parse_label_list(text: str, what: str) -> tuple[str, ...] | None:
    """``LEDGER_METRICS_CHANNELS`` / ``LEDGER_METRICS_SOURCES``: comma-separated values;
    empty or unset is ``None`` (the first :data:`UNLISTED_VALUES_MAX` seen)."""
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    for value in values:
        if not _LISTABLE.fullmatch(value):
            raise ConfigError(f"metrics {what} {value!r} is not a valid {what} name")
    return values or None


CHANNELS = BoundedValues("channel")
SOURCES = BoundedValues("source")


def configure_labels(channels: str = "", sources: str = "") -> None:
    """Apply ``LEDGER_METRICS_CHANNELS`` / ``LEDGER_METRICS_SOURCES`` (ConfigError if bad)."""
    CHANNELS.configure(parse_label_list(channels, "channel"))
    SOURCES.configure(parse_label_list(sources, "source"))


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
    "Reservation outcomes by channel: reserved (a Reserve committed), insufficient (a Reserve"
    " rejected with INSUFFICIENT_AVAILABILITY), committed, released, expired (recorded by the"
    " expiry sweeper); idempotent replays are not counted again. channel is the reservation's"
    f" channel if listed in LEDGER_METRICS_CHANNELS (unset: one of the first"
    f" {UNLISTED_VALUES_MAX} seen), else {OTHER}",
    ("outcome", "channel"),
    registry=REGISTRY,
)


def _reservation_series(channel: str) -> None:
    for outcome in RESERVATION_OUTCOMES:
        RESERVATIONS.labels(outcome, channel)


# Exported from startup on, at 0: every outcome of OTHER, and of each channel when admitted.
_reservation_series(OTHER)
CHANNELS.on_admit(_reservation_series)


def count_reservation(outcome: str, channel: str, count: int = 1) -> None:
    """One (or ``count``) reservation outcome(s) of ``channel`` (bounded by :data:`CHANNELS`)."""
    RESERVATIONS.labels(outcome, CHANNELS(channel)).inc(count)


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

# Write transactions and writer turns: a millisecond to a second.
WRITE_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
COMMIT_SECONDS = Histogram(
    "ledger_commit_seconds",
    "Duration of write transactions, committed or lost to a conflict: on PostgreSQL the"
    " events table lock is held for most of it, so its sum over replicas bounds one"
    " ledger's commit rate (docs/scaling.md)",
    buckets=WRITE_SECONDS_BUCKETS,
    registry=REGISTRY,
)
WRITE_CONFLICTS = Counter(
    "ledger_write_conflicts",
    "Write transactions lost to another process (a version or recorded_at conflict) and"
    " re-run; with the writer mutex (PostgreSQL) this stays at zero unless a writer runs"
    " without it",
    registry=REGISTRY,
)
WRITER_MUTEX_WAIT_SECONDS = Histogram(
    "ledger_writer_mutex_wait_seconds",
    "Time the writer waited for its turn (the other replicas' commits) before each commit",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
WRITER_TURN_SECONDS = Histogram(
    "ledger_writer_turn_seconds",
    "How long the writer held its turn (stamp, fast-forward, apply, commit) on PostgreSQL:"
    " the part of every write that is serial across replicas, so its sum over replicas"
    " bounds one ledger's commit rate (docs/scaling.md)",
    buckets=WRITE_SECONDS_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "ledger_commit_batch_commands",
    "Commands that shared one group-committed write transaction (batches of two or more)",
    buckets=(2, 4, 8, 16, 32, 64, 128, 256, 512),
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

# Movement-to-ledger lag: from 10 ms (a live message applied at once) to an hour (a backlog
# after an outage, or a bulk lane behind a long backfill).
LAG_BUCKETS = (
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
    300.0,
    900.0,
    3600.0,
)
# How old a movement is when recorded (occurred_at to commit): a minute to a week.
AGE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 7 * 86400.0)
MOVEMENT_VIAS = ("live", "bulk", "api")
MOVEMENT_LAG = Histogram(
    "ledger_movement_lag_seconds",
    "Movement-to-ledger lag of recorded movements, by source and way in (via): live/bulk,"
    " from JetStream storing the message in INVENTORY_MOVEMENTS (its stream timestamp) to the"
    " ingest bridge seeing the transaction that recorded it committed; api, from the"
    " RecordMovements call reaching the server to its commit. Duplicates and dead letters"
    " are not observed",
    ("source", "via"),
    buckets=LAG_BUCKETS,
    registry=REGISTRY,
)
MOVEMENT_AGE = Histogram(
    "ledger_movement_age_seconds",
    "How old a recorded movement was when its transaction committed (commit time minus the"
    " movement's occurred_at; movements without occurred_at are not observed; a future"
    " occurred_at counts as 0), by source and via: how late sources report",
    ("source", "via"),
    buckets=AGE_BUCKETS,
    registry=REGISTRY,
)


def observe_recorded(
    source: str, via: str, handed_over: float, occurred_at: datetime | None, committed: float
) -> None:
    """A recorded movement: ``handed_over`` and ``committed`` are Unix times (``time.time()``);
    negative spans (clocks of two hosts apart) count as 0."""
    label = SOURCES(source)
    MOVEMENT_LAG.labels(label, via).observe(max(0.0, committed - handed_over))
    if occurred_at is not None:
        MOVEMENT_AGE.labels(label, via).observe(max(0.0, committed - occurred_at.timestamp()))


DEAD_LETTERS = Counter(
    "ledger_dead_letters",
    "Dead letters the ingest bridge published to INVENTORY_DLQ (and terminated), by source"
    f" ({UNKNOWN_SOURCE} when neither payload nor subject names a valid one) and reason (the"
    " Ledger-Error-Reason header: BAD_JSON, WRONG_TYPE, MESSAGE_ID_REUSED, ...)",
    ("source", "reason"),
    registry=REGISTRY,
)


def count_dead_letter(source: str | None, reason: str) -> None:
    DEAD_LETTERS.labels(UNKNOWN_SOURCE if source is None else SOURCES(source), reason).inc()


# ---- ledger exceptions (ingest/exceptions.py) ------------------------------------------------

EXCEPTION_TYPES = ("NEGATIVE_BUCKET", "STALE_COUNT", "TRANSFER_SHORTAGE", "UNKNOWN_RESERVATION")
EXCEPTIONS_PUBLISHED = Counter(
    "ledger_exceptions_published",
    "Ledger exceptions (raised by the projection runner into the exceptions read model)"
    " published on inventory.exceptions.<type>, by type; copies the broker's duplicate window"
    " dropped are not counted",
    ("type",),
    registry=REGISTRY,
)
for _type in EXCEPTION_TYPES:
    EXCEPTIONS_PUBLISHED.labels(_type)

# ---- errors returned by the API (ledger/api/errors.py) ---------------------------------------

RPC_ERRORS = Counter(
    "ledger_rpc_errors",
    "Calls that ended with an error, by the google.rpc ErrorInfo reason the caller got"
    " (INVALID_ARGUMENT, INSUFFICIENT_AVAILABILITY, RESERVATION_NOT_FOUND, REQUEST_ID_REUSED,"
    " CONCURRENCY_CONFLICT, STORE_UNAVAILABLE, RATE_LIMITED, INTERNAL, ...)",
    ("reason",),
    registry=REGISTRY,
)

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
