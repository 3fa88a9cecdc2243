"""A position's state: its buckets, holds and inbound transfers as plain attributes, the
figures derived from them (contract §2), and the zero state both the aggregate
(ledger.domain.position.Position) and plain replays (as-of reads, projections) start from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ledger.domain import availability, chain
from ledger.domain.hold_book import Hold, HoldBook
from ledger.domain.lots import Lot, lots_of


class PositionFigures:
    """A position's state attributes (set by :func:`init_state`, changed only by the folds)
    and the figures of contract §2 derived from them."""

    # Declarations only (no class attributes): the aggregate and the plain replays alike.
    on_hand: int
    receiving: int
    quarantine: int
    damaged: int
    in_transit_inbound: int
    safety_stock: int
    fences: dict[str, int]
    holds: dict[str, Hold]  # a HoldBook once used; a plain dict fresh from a snapshot or row
    inbound: dict[str, dict[str, Any]]  # transfer_id -> {dispatched, received, closed, ...}
    lots: dict[str, Lot]
    last_count_at: datetime | None
    updated_at: datetime | None
    last_hash: str
    max_occurred_at: datetime | None

    def reserved(self, now: datetime) -> int:
        return availability.reserved(self, now)

    def allocated(self) -> int:
        return availability.allocated(self)

    def available(self, now: datetime) -> int:
        return availability.available(self, now)

    def available_to(self, channel: str, now: datetime) -> int:
        return availability.available_to(self, channel, now)

    def projected_available_to(self, channel: str, now: datetime, horizon: datetime) -> int:
        return availability.projected_available_to(self, channel, now, horizon)


class PositionState(PositionFigures):
    """A position's state without the event-store machinery: what replays (projections,
    as-of reads) fold events onto with each event's ``apply``."""

    def __init__(self, sku: str, location_id: str) -> None:
        self.sku = sku
        self.location_id = location_id
        self.version = 0
        init_state(self)


def init_state(target: Any) -> None:
    """Zero buckets; shared by the aggregate and by plain replays (as-of, projections)."""
    target.on_hand = 0
    target.receiving = 0
    target.quarantine = 0
    target.damaged = 0
    target.in_transit_inbound = 0
    target.safety_stock = 0
    target.fences = {}
    target.holds = HoldBook()
    target.inbound = {}
    target.lots = {}  # LOT SKUs: lot_id -> the lot's buckets (ledger.domain.lots)
    target.last_count_at = None
    target.updated_at = None
    target.last_hash = chain.GENESIS
    # Newest occurred_at folded so far: an event older than this is a late fact.
    target.max_occurred_at = None


def is_stale_count(position: Any, occurred_at: datetime, lot_id: str | None = None) -> bool:
    """A count older than the newest applied count changes nothing (STALE_COUNT); a lot
    count is judged against the newest count of the same lot only (a lot never counted
    here has none, whatever the position's untracked counts were)."""
    if lot_id is None:
        last = position.last_count_at
    else:
        lot = lots_of(position).get(lot_id)
        last = lot["last_count_at"] if lot is not None else None
    return last is not None and occurred_at < last
