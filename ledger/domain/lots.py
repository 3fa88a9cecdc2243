"""Lots inside a position (contract §2 "Lots, serials and expiry"): per-lot buckets, lazy
expiry and first-expiry-first-out order, as pure functions over a position's state.

A LOT SKU's position keeps ``position.lots``: lot_id -> a plain dict of the lot's buckets,
its ``expires_at`` (the ledger-wide expiry, once stated) and the newest applied count. The
position's own buckets stay the sums over its lots (the folds change both), so every figure
that does not look at lots keeps working. Holds bound to lots carry per-lot claims
(``ledger.domain.hold_book``), which give each lot its reserved and allocated quantity.

Expiry is judged when asked, like holds: nothing is written when a lot expires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Protocol

from ledger.domain.hold_book import Hold, book_of

LOT_BUCKETS = ("on_hand", "receiving", "quarantine", "damaged", "in_transit_inbound")


# A lot's record: the buckets of LOT_BUCKETS, ``expires_at`` (datetime or None) and
# ``last_count_at`` (datetime or None). A plain dict: rows and snapshots store it as is.
Lot = dict[str, Any]


class HasLots(Protocol):
    holds: dict[str, Hold]


def lots_of(position: Any) -> dict[str, Lot]:
    """The position's lots; a state read from before lots existed has none."""
    lots: dict[str, Lot] | None = getattr(position, "lots", None)
    if lots is None:
        lots = {}
        position.lots = lots
    return lots


def lot_of(position: Any, lot_id: str) -> Lot:
    """The lot's record at the position, created empty on first mention."""
    lots = lots_of(position)
    lot = lots.get(lot_id)
    if lot is None:
        lot = {bucket: 0 for bucket in LOT_BUCKETS}
        lot["expires_at"] = None
        lot["last_count_at"] = None
        lots[lot_id] = lot
    return lot


def is_lot_tracked(position: Any) -> bool:
    return bool(getattr(position, "lots", None))


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now


def fefo_key(lot_id: str, expires_at: datetime | None) -> tuple[bool, datetime | None, str]:
    """Binding order: earliest expiry first, lots that never expire last, ties by lot_id."""
    return (expires_at is None, expires_at, lot_id)


def binding_key(position: Any) -> Callable[[str], tuple[bool, datetime | None, str]]:
    """Sort key of the position's lot ids in binding order (:func:`fefo_key`)."""
    known = lots_of(position)

    def key(lot_id: str) -> tuple[bool, datetime | None, str]:
        lot = known.get(lot_id)
        return fefo_key(lot_id, lot["expires_at"] if lot is not None else None)

    return key


def lot_free(position: Any, lot_id: str, now: datetime, extra_on_hand: int = 0) -> int:
    """x = on_hand - reserved - allocated of one lot (``extra_on_hand``: inbound counted as
    arrived, for dated ATP)."""
    lot = lots_of(position)[lot_id]
    book = book_of(position)
    return (
        lot["on_hand"] + extra_on_hand - book.lot_reserved(lot_id, now) - book.lot_allocated(lot_id)
    )


def lot_available(position: Any, lot_id: str, now: datetime) -> int:
    """A shortfall always counts; otherwise an expired lot promises nothing."""
    free = lot_free(position, lot_id, now)
    if free < 0:
        return free
    return 0 if is_expired(lots_of(position)[lot_id]["expires_at"], now) else free


def lots_available(position: Any, now: datetime) -> int:
    """Σ lot_available over the position's lots (its ATP before safety stock)."""
    return sum(lot_available(position, lot_id, now) for lot_id in lots_of(position))


def expired_quantity(position: Any, now: datetime) -> int:
    """Units of expired lots that would otherwise be free (``Position.expired``)."""
    return sum(
        max(0, lot_free(position, lot_id, now))
        for lot_id, lot in lots_of(position).items()
        if is_expired(lot["expires_at"], now)
    )


def projected_lots_available(
    position: Any, now: datetime, due: dict[str, int], horizon: datetime
) -> int:
    """Σ per lot of x with the lot's inbound ``due`` by the horizon counted as arrived, an
    expiry judged at the horizon (holds still at ``now``)."""
    total = 0
    for lot_id, lot in lots_of(position).items():
        free = lot_free(position, lot_id, now, due.get(lot_id, 0))
        if free >= 0 and is_expired(lot["expires_at"], horizon):
            free = 0
        total += free
    return total


def eligible_lots(
    position: Any, now: datetime, min_expires_at: datetime | None
) -> list[tuple[str, int]]:
    """(lot_id, lot_available) of the lots a reservation line may bind, in FEFO order: not
    expired, something available, and expiring strictly after ``min_expires_at`` (a lot
    that never expires always qualifies)."""
    found = []
    for lot_id, lot in lots_of(position).items():
        expires_at = lot["expires_at"]
        if is_expired(expires_at, now):
            continue
        if min_expires_at is not None and expires_at is not None and expires_at <= min_expires_at:
            continue
        free = lot_available(position, lot_id, now)
        if free > 0:
            found.append((lot_id, free))
    return sorted(
        found, key=lambda pair: fefo_key(pair[0], lots_of(position)[pair[0]]["expires_at"])
    )


def is_visible(position: Any, lot_id: str, now: datetime) -> bool:
    """Whether ``lots[]`` reports the lot at ``now``: a non-zero bucket or a hold on it that
    still holds (an ACTIVE hold past its expiry holds nothing, swept or not)."""
    lot = lots_of(position)[lot_id]
    book = book_of(position)
    return (
        any(lot[bucket] for bucket in LOT_BUCKETS)
        or book.lot_reserved(lot_id, now) != 0
        or book.lot_allocated(lot_id) != 0
    )


def next_expiry_after(position: Any, now: datetime) -> datetime | None:
    """The next instant one of the position's lots expires (availability changes then)."""
    upcoming: Iterable[datetime] = (
        lot["expires_at"]
        for lot in lots_of(position).values()
        if lot["expires_at"] is not None and lot["expires_at"] > now
    )
    return min(upcoming, default=None)
