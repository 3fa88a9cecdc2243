"""Index rows written in the same transaction as the events that justify them.

The event store stays the source of truth; these rows only make lookups (positions of a SKU,
reservations of a channel, reservations due to expire) cheap without a projection lag.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


def to_micros(moment: datetime) -> int:
    """Integer microseconds since the epoch: orders correctly in SQL, unlike ISO text."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


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


@dataclass(frozen=True)
class ReservationRow:
    reservation_id: str
    channel: str
    order_ref: str
    status: str
    expires_at_us: int
    created_at_us: int
