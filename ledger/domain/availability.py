"""Pure availability arithmetic of contract §2, over any object with a position's state attributes.

Kept free of the event store so the aggregate, projections and as-of replays share one formula.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from ledger.domain import lots
from ledger.domain.hold_book import HOLD_ACTIVE, HOLD_COMMITTED, Hold, book_of, open_qty

__all__ = ["HOLD_ACTIVE", "HOLD_COMMITTED"]


class PositionState(Protocol):
    on_hand: int
    safety_stock: int
    fences: dict[str, int]
    holds: dict[str, Hold]


class InboundState(PositionState, Protocol):
    inbound: dict[str, dict[str, Any]]  # transfer_id -> {dispatched, received, closed, ...}


hold_open_qty = open_qty


def hold_blocks(hold: Hold, now: datetime) -> bool:
    """A hold counts against stock while COMMITTED, or while ACTIVE and not yet expired."""
    if hold["status"] == HOLD_COMMITTED:
        return True
    return hold["status"] == HOLD_ACTIVE and now < hold["expires_at"]


# The sums over holds come from the position's HoldBook (running totals, not a scan).


def reserved(position: PositionState, now: datetime) -> int:
    """Open quantity of ACTIVE holds not yet expired at ``now``."""
    return book_of(position).reserved(now)


def allocated(position: PositionState) -> int:
    """Open quantity of COMMITTED holds."""
    return book_of(position).allocated()


def available(position: PositionState, now: datetime) -> int:
    """ATP: on_hand - reserved - allocated - safety_stock (may be negative). For a LOT SKU:
    Σ lot_available - safety_stock, so expired lots stop counting (ledger.domain.lots)."""
    if lots.is_lot_tracked(position):
        return lots.lots_available(position, now) - position.safety_stock
    return position.on_hand - reserved(position, now) - allocated(position) - position.safety_stock


def channel_demand(position: PositionState, channel: str, now: datetime) -> int:
    """Open quantity of ``channel``'s holds that still block stock at ``now``."""
    return book_of(position).channel_demand(channel, now)


def unused_fences(position: PositionState, now: datetime) -> dict[str, int]:
    return {
        channel: max(0, fence - channel_demand(position, channel, now))
        for channel, fence in position.fences.items()
    }


def available_to(
    position: PositionState, channel: str, now: datetime, base: int | None = None
) -> int:
    """What ``channel`` may still reserve: ATP less the other channels' unused ring-fences.

    ``base`` replaces ATP (dated ATP passes its projection); fences and holds are unchanged,
    so they still take their share of it.
    """
    others = sum(qty for c, qty in unused_fences(position, now).items() if c != channel)
    atp = available(position, now) if base is None else base
    return max(0, atp - others)


def fence_raise_allowed(
    position: PositionState, channel: str, new_fence: int, now: datetime
) -> tuple[bool, int]:
    """Whether setting ``fence[channel] = new_fence`` keeps Σ unused_fence ≤ max(0, available).

    Lowering a fence is always allowed. Returns (allowed, Σ unused_fence after the change).
    """
    unused = unused_fences(position, now)
    unused[channel] = max(0, new_fence - channel_demand(position, channel, now))
    total = sum(unused.values())
    lowering = new_fence <= position.fences.get(channel, 0)
    return lowering or total <= max(0, available(position, now)), total


# ---- dated ATP (contract §4.1 `horizon`) --------------------------------------------------------


def inbound_outstanding(transfer: dict[str, Any]) -> int:
    """Units of one inbound transfer still in transit (0 once closed by a final receipt)."""
    if transfer["closed"]:
        return 0
    return max(0, transfer["dispatched"] - transfer["received"])


def inbound_due(position: InboundState, horizon: datetime) -> int:
    """Inbound quantity still in transit whose ETA is at or before ``horizon``; a transfer
    without ``expected_at`` never counts."""
    return sum(inbound_due_by_lot(position, horizon).values())


def inbound_due_by_lot(position: InboundState, horizon: datetime) -> dict[str, int]:
    """:func:`inbound_due` per lot (untracked transfers under the empty lot id)."""
    due: dict[str, int] = {}
    for t in position.inbound.values():
        if t["expected_at"] is not None and t["expected_at"] <= horizon:
            lot_id = t.get("lot_id", "")
            due[lot_id] = due.get(lot_id, 0) + inbound_outstanding(t)
    return due


def projected_available_to(
    position: InboundState, channel: str, now: datetime, horizon: datetime
) -> int:
    """``available_to(channel)`` as if every inbound transfer due by ``horizon`` had arrived.

    The units due join ``on_hand`` before ATP is taken, so a safety-stock shortfall or
    oversold holds absorb them first (available -2, 4 due -> 2, not 4). Holds are judged
    at ``now``: the horizon projects arrivals, not releases.
    """
    if lots.is_lot_tracked(position):
        due = inbound_due_by_lot(position, horizon)
        base = lots.projected_lots_available(position, now, due, horizon) - position.safety_stock
    else:
        base = available(position, now) + inbound_due(position, horizon)
    return available_to(position, channel, now, base)


def next_change_after(position: PositionState, now: datetime) -> datetime | None:
    """The next instant availability changes with no event: a hold or a lot expiring."""
    moments = [
        moment
        for moment in (
            book_of(position).next_expiry_after(now),
            lots.next_expiry_after(position, now),
        )
        if moment is not None
    ]
    return min(moments, default=None)
