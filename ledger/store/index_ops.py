"""Index rows written in the same transaction as the events that justify them.

The event store stays the source of truth; these rows only make lookups (positions of a SKU,
reservations of a channel, reservations due to expire) cheap without a projection lag.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent


def to_micros(moment: datetime) -> int:
    """Integer microseconds since the epoch: orders correctly in SQL, unlike ISO text."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


@dataclass(frozen=True)
class PositionIndexed:
    sku: str
    location_id: str
    position_id: str


@dataclass(frozen=True)
class ReservationIndexed:
    reservation_id: str
    channel: str
    order_ref: str
    status: str
    expires_at_us: int
    created_at_us: int


IndexOp = PositionIndexed | ReservationIndexed
# (aggregate id, after version, up to version): a slice of one aggregate's events.
EventRange = tuple[UUID, int, int]


def by_aggregate(events: Iterable[Any]) -> dict[UUID, list[Any]]:
    """Events read in one statement (stored or domain), by aggregate (each aggregate's in
    version order)."""
    grouped: dict[UUID, list[Any]] = {}
    for event in events:
        grouped.setdefault(event.originator_id, []).append(event)
    return grouped


def stored_events(rows: Sequence[Sequence[Any]]) -> list[StoredEvent]:
    """Rows of the ranges statement, (originator_id, originator_version, topic, state) as
    tuples, as the library's stored events."""
    return [
        StoredEvent(originator_id=r[0], originator_version=r[1], topic=r[2], state=bytes(r[3]))
        for r in rows
    ]


# "After version" of a range that reads a whole aggregate: its newest snapshot, if it has
# one, then the events after it (what the library's repository reads, for many at once).
FROM_SNAPSHOT = -1


@dataclass(frozen=True)
class EntryIndexed:
    """One ledger entry (position event) for the entry index, written under the events
    table lock with the next gap-free ``seq``. ``max_occurred_at_us`` is the running maximum
    of ``occurred_at`` over the position's versions 1..version; ``late`` marks an entry whose
    ``occurred_at`` is before that maximum of the versions before it (an out-of-order fact).
    """

    position_id: UUID
    version: int
    recorded_at_us: int
    occurred_at_us: int
    max_occurred_at_us: int
    late: bool


def entries_in_commit_order(
    stored_events: Sequence[StoredEvent], ids: Sequence[int], entries: Sequence[EntryIndexed]
) -> list[tuple[int, EntryIndexed]]:
    """(notification id, entry) pairs in notification order: the order ``seq`` follows.
    ``ids`` are the notification ids of ``stored_events``, in the same order."""
    notification = {
        (e.originator_id, e.originator_version): n for e, n in zip(stored_events, ids, strict=True)
    }
    return sorted((notification[(e.position_id, e.version)], e) for e in entries)


@dataclass(frozen=True)
class EntryRow:
    """An entry index row joined with its stored event and its position's identity."""

    seq: int
    notification_id: int
    position_id: UUID
    version: int
    recorded_at_us: int
    occurred_at_us: int
    sku: str
    location_id: str
    event_version: int  # the stored event's own version (differs only if tampered with)
    topic: str
    state: bytes


@dataclass(frozen=True)
class ReservationRow:
    reservation_id: str
    channel: str
    order_ref: str
    status: str
    expires_at_us: int
    created_at_us: int
