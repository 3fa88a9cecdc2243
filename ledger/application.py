"""The event-sourced application: where the `eventsourcing` library is configured."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
    Recording,
)
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import ApplicationRecorder, EventStore

from ledger.domain.position import Position
from ledger.store.index_ops import EventRange, ReservationRow
from ledger.store.ledger_recorder import LedgerRecorder
from ledger.store.retries import limit_store_retries
from ledger.store.writer_mutex import NoWriterMutex, WriterMutex

log = logging.getLogger(__name__)

SNAPSHOT_INTERVAL = 200
READ_CACHE_SIZE = 10_000
TRANSCODER_TOPIC = "ledger.store.transcoder:LedgerTranscoder"


def starts_an_aggregate(event: Any) -> bool:
    """A snapshot, or the event that created the aggregate: either folds from nothing (the
    first row of a FROM_SNAPSHOT read)."""
    return isinstance(event, Snapshot) or event.originator_version == 1


def folded(events: Sequence[Any]) -> Any:
    """The aggregate ``events`` make when the first of them starts it (see above)."""
    aggregate = events[0].mutate(None)
    for event in events[1:]:
        event.mutate(aggregate)
    return aggregate


def _ledger_recorder(recorder: ApplicationRecorder) -> LedgerRecorder:
    """The recorder as the ledger's own (checked once here, not at every call)."""
    if not isinstance(recorder, LedgerRecorder):
        raise TypeError(f"{type(recorder).__name__} is not a ledger recorder (ledger.store)")
    return recorder


def _state_size(aggregate: Any) -> int:
    """Entries an aggregate's snapshot encodes beyond its fixed fields (a position's holds)."""
    holds = getattr(aggregate, "holds", None)
    return len(holds) if holds is not None else 0


class InventoryLedger(Application):
    """All ledger aggregates share one notification log (one global order)."""

    # Pinned: the PostgreSQL table names derive from it (ledger_events, ...).
    name = "Ledger"
    snapshotting_intervals = {Position: SNAPSHOT_INTERVAL}

    def __init__(self, env: dict[str, str]) -> None:
        if "PERSISTENCE_MODULE" not in env:
            raise ValueError("PERSISTENCE_MODULE must be set explicitly")
        defaults = {
            "AGGREGATE_CACHE_MAXSIZE": str(READ_CACHE_SIZE),
            "AGGREGATE_CACHE_FASTFORWARD": "y",
            # The library's JSON format, encoded in half the time (ledger.store.transcoder).
            "TRANSCODER_TOPIC": TRANSCODER_TOPIC,
        }
        super().__init__(env={**defaults, **env})
        self.ledger_recorder = _ledger_recorder(self.recorder)
        # Version of the newest snapshot this process took, by aggregate (bounded).
        self._snapshot_versions: dict[UUID, int] = {}

    def save_aggregates(self, aggregates: Sequence[Any], **kwargs: Any) -> list[Recording[UUID]]:
        """``save(*aggregates, **kwargs)`` for objects known to be aggregates: the library's
        ``save`` asks of every object whether it is an event or an aggregate with two
        runtime Protocol checks, which cost the writer's turn a tenth of its time. The steps
        after collecting are the library's own (record, snapshots, notify)."""
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        for aggregate in aggregates:
            processing_event.events.extend(aggregate.collect_events())
            processing_event.aggregates[aggregate.id] = aggregate
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # deprecated in the library; kept as save does
        return recordings

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        """Snapshots of the positions just saved, taken from the saved objects themselves.

        The library re-reads each aggregate at the snapshot's version (the last snapshot
        plus an interval of events, decoded and folded again) only to encode what the writer
        already holds. And a position's state grows with its open holds (a hot position
        carries thousands), so a snapshot every SNAPSHOT_INTERVAL events would cost O(holds)
        per interval: the cadence is stretched to one per ``max(interval, holds)`` events,
        which keeps snapshotting O(1) per event and a replay from the newest snapshot no
        longer than decoding the snapshot itself. Any version may carry a snapshot:
        readers take the newest at or before the version they want.
        """
        if self.snapshots is None:
            return
        first_new: dict[UUID, int] = {}
        for event in processing_event.events:
            first_new.setdefault(event.originator_id, event.originator_version)
        for aggregate in processing_event.aggregates.values():
            interval = self.snapshotting_intervals.get(type(aggregate))
            if interval is None:
                continue
            version = aggregate.version
            # Not snapshotted by this process yet (a restart, another replica's writes):
            # assume the last one at the interval's multiple before this save's events.
            before = first_new.get(aggregate.id, version) - 1
            last = self._snapshot_versions.get(aggregate.id, before - before % interval)
            if version - last < max(interval, _state_size(aggregate)):
                continue
            snapshot_class = getattr(type(aggregate), "Snapshot", type(self).snapshot_class)
            try:
                if snapshot_class is None:  # as the library's take_snapshot refuses it
                    raise AssertionError(f"no snapshot class for {type(aggregate).__name__}")
                self.snapshots.put([snapshot_class.take(aggregate)])
            except Exception:
                # The events are committed; a snapshot is only a shortcut for readers, and
                # failing to write one must not fail the write. It stays due: the next save
                # of this aggregate tries again.
                log.warning(
                    "snapshot of %s at version %d failed", aggregate.id, version, exc_info=True
                )
                self._snapshot_versions[aggregate.id] = last
                continue
            self._snapshot_versions[aggregate.id] = version
            if len(self._snapshot_versions) > READ_CACHE_SIZE:
                self._snapshot_versions.pop(next(iter(self._snapshot_versions)))

    def construct_recorder(self) -> ApplicationRecorder:
        recorder = super().construct_recorder()
        limit_store_retries(recorder)
        return recorder

    def construct_snapshot_store(self) -> EventStore[UUID]:
        store = super().construct_snapshot_store()
        limit_store_retries(store.recorder)
        return store

    def find(self, aggregate_id: UUID) -> Any | None:
        """The current aggregate, or None when it has no events."""
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    # Index lookups, answered by the ledger recorders (ledger.store.ledger_recorder).

    def events_batch(self, ranges: Sequence[EventRange]) -> list[Any]:
        """Domain events of many aggregates in one store read (see ``select_events_batch``)."""
        stored = self.ledger_recorder.select_events_batch(ranges)
        return [self.mapper.to_domain_event(event) for event in stored]

    def notification_id_of(self, aggregate_id: UUID, version: int) -> int | None:
        return self.ledger_recorder.notification_id_of(aggregate_id, version)

    def locations_of(self, sku: str) -> list[str]:
        rows = self.ledger_recorder.select_positions(
            sku=sku, location_id=None, after=("", ""), limit=100_000
        )
        return [location for _, location in rows]

    def select_positions(
        self, *, sku: str | None, location_id: str | None, after: tuple[str, str], limit: int
    ) -> list[tuple[str, str]]:
        return self.ledger_recorder.select_positions(
            sku=sku, location_id=location_id, after=after, limit=limit
        )

    def select_reservations(
        self, *, channel: str, order_ref: str | None, after: tuple[int, str], limit: int
    ) -> list[ReservationRow]:
        return self.ledger_recorder.select_reservations(
            channel=channel, order_ref=order_ref, after=after, limit=limit
        )

    def select_due_reservations(self, *, now_us: int, limit: int) -> list[str]:
        return self.ledger_recorder.select_due_reservations(now_us=now_us, limit=limit)

    def writer_mutex(self) -> WriterMutex:
        """Turn-taking between the writers of this ledger in different processes (a no-op
        where one process owns the store)."""
        make = getattr(self.recorder, "writer_mutex", None)
        return NoWriterMutex() if make is None else make()

    def commit_channel(self) -> str:
        """The PostgreSQL channel the events table NOTIFYs on each commit (the library's
        recorder names it); AttributeError on SQLite, which has none."""
        channel: str = getattr(self.recorder, "channel_name")  # noqa: B009 - PostgreSQL only
        return channel

    def entry_head(self) -> tuple[int, int]:
        """(seq, recorded_at_us) of the newest ledger entry."""
        return self.ledger_recorder.entry_head()

    def head_position(self) -> int:
        return self.recorder.max_notification_id() or 0
