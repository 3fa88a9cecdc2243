"""What the ledger's processes measure: the registry and every metric in it, by the code that
counts it (its section heading names the module), with the helpers that count.

docs/operations.md lists every metric with what to alert on; keep it in step with this module.
Names, labels, buckets and help texts are an interface: the dashboard
(deploy/grafana/dashboards/ledger.json) and the alerts (deploy/prometheus/alerts.yml) query them.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ledger.metrics.labels import CHANNELS, OTHER, SOURCES, UNKNOWN_SOURCE, UNLISTED_VALUES_MAX

# No *_created series: they double the output and no alert here uses them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# ---- gRPC (entrypoints/grpc/metrics_interceptor.py) ----------------------------------------------

# The steps from 10 ms to a minute that the RPC and lag histograms share.
_TEN_MS_TO_A_MINUTE = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# From 0.5 ms (a cached read) to a minute (a long StreamLedger / VerifyLedger stream).
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, *_TEN_MS_TO_A_MINUTE)

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
LAG_BUCKETS = (*_TEN_MS_TO_A_MINUTE, 300.0, 900.0, 3600.0)
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


def observe_recorded_batch(
    via: str, committed: float, recorded: Iterable[tuple[str, float, datetime | None]]
) -> None:
    """:func:`observe_recorded` for the ``(source, handed_over, occurred_at)`` of movements
    committed together (an ingest batch): each source's label children looked up once."""
    children: dict[str, tuple[Any, Any]] = {}
    for source, handed_over, occurred_at in recorded:
        pair = children.get(source)
        if pair is None:
            label = SOURCES(source)
            pair = children[source] = (
                MOVEMENT_LAG.labels(label, via),
                MOVEMENT_AGE.labels(label, via),
            )
        pair[0].observe(max(0.0, committed - handed_over))
        if occurred_at is not None:
            pair[1].observe(max(0.0, committed - occurred_at.timestamp()))


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

EXCEPTION_TYPES = (
    "NEGATIVE_BUCKET",
    "STALE_COUNT",
    "TRANSFER_SHORTAGE",
    "UNKNOWN_RESERVATION",
    "LOT_EXPIRY_CONFLICT",
    "SERIAL_CONFLICT",
)
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

# ---- errors returned by the API (entrypoints/grpc/errors.py) -------------------------------------

RPC_ERRORS = Counter(
    "ledger_rpc_errors",
    "Calls that ended with an error, by the google.rpc ErrorInfo reason the caller got"
    " (INVALID_ARGUMENT, INSUFFICIENT_AVAILABILITY, RESERVATION_NOT_FOUND, REQUEST_ID_REUSED,"
    " CONCURRENCY_CONFLICT, STORE_UNAVAILABLE, RATE_LIMITED, INTERNAL, ...)",
    ("reason",),
    registry=REGISTRY,
)
