"""A position's holds with running totals: availability in O(log n), not O(holds).

A hot position (one SKU-location, many concurrent callers) carries thousands of open holds;
summing them on every Reserve, every projection fold and every watch tick made each
reservation slower than the one before. The book is the holds mapping itself (a ``dict``
of reservation id -> hold, so snapshots, views and JSON see exactly what they saw before)
that also keeps, as holds are placed, committed, shipped against and removed:

* the open quantity of COMMITTED holds, in total and per channel;
* the open quantity of ACTIVE holds, in total and per channel, and their expiries in order.

An ACTIVE hold stops counting at its ``expires_at`` whether or not its expiry was recorded
yet, so ``reserved(now)`` is the ACTIVE total less the holds already due at ``now``: a
bisection plus the few due holds the expiry sweeper has not written down yet.

Only the book's methods may change a hold (the folds in ``ledger.domain.position`` do);
a plain dict of holds (a snapshot, a projection row) becomes a book on first use.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, NotRequired, Protocol, TypedDict

HOLD_ACTIVE = "ACTIVE"
HOLD_COMMITTED = "COMMITTED"


class Hold(TypedDict):
    """One reservation's hold on a position. A dict at run time: snapshots, projection rows
    and exports store exactly the mapping they always stored."""

    channel: str
    order_ref: str
    status: str  # HOLD_ACTIVE or HOLD_COMMITTED
    qty: int
    shipped: int
    expires_at: datetime
    # LOT SKUs only: lot_id -> open quantity bound to that lot, in binding (FEFO) order; the
    # claims add up to the hold's open quantity. Absent on untracked holds, whose stored
    # form is unchanged.
    lots: NotRequired[dict[str, int]]


def open_qty(hold: Hold) -> int:
    return int(hold["qty"]) - int(hold["shipped"])


def lot_claims(hold: Hold) -> dict[str, int]:
    return hold.get("lots") or {}


class HoldBook(dict[str, Hold]):
    def __init__(self, holds: Iterable[tuple[str, Hold]] | dict[str, Hold] = ()) -> None:
        super().__init__()
        self.committed_total = 0
        self.committed_by_channel: defaultdict[str, int] = defaultdict(int)
        self.active_total = 0
        self.active_by_channel: defaultdict[str, int] = defaultdict(int)
        # Lot claims of COMMITTED and of ACTIVE holds, per lot (LOT SKUs).
        self.committed_by_lot: defaultdict[str, int] = defaultdict(int)
        self.active_by_lot: defaultdict[str, int] = defaultdict(int)
        # (expires_at, reservation id) of every ACTIVE hold, in order.
        self._expiries: list[tuple[datetime, str]] = []
        items = holds.items() if isinstance(holds, dict) else holds
        for reservation_id, hold in items:
            self.place(reservation_id, hold)

    # ---- changes (the only ways a hold changes) -------------------------------------------

    def place(self, reservation_id: str, hold: Hold) -> None:
        dict.__setitem__(self, reservation_id, hold)
        self._count(reservation_id, hold, +1)

    def commit(self, reservation_id: str) -> None:
        hold = self.get(reservation_id)
        if hold is None:
            return
        self._count(reservation_id, hold, -1)
        hold["status"] = HOLD_COMMITTED
        self._count(reservation_id, hold, +1)

    def ship(self, reservation_id: str, qty: int) -> None:
        """``qty`` more of the hold shipped; a hold with nothing left open goes away."""
        hold = self[reservation_id]
        self._count(reservation_id, hold, -1)
        hold["shipped"] += qty
        if open_qty(hold) == 0:
            dict.__delitem__(self, reservation_id)
        else:
            self._count(reservation_id, hold, +1)

    def ship_lot(
        self, reservation_id: str, qty: int, lot_id: str, binding_key: Callable[[str], Any]
    ) -> None:
        """``qty`` more of a lot-bound hold shipped from ``lot_id``: the claim on that lot
        falls first, then the claims on the hold's other lots in binding order
        (``binding_key`` of a lot id: first expiry first, judged now, so neither the order
        claims were stored in nor an expiry stated after binding can change the result)."""
        hold = self[reservation_id]
        self._count(reservation_id, hold, -1)
        hold["shipped"] += qty
        claims = dict(lot_claims(hold))
        others = sorted((other for other in claims if other != lot_id), key=binding_key)
        remaining = qty
        for lot in [lot_id, *others]:
            take = min(remaining, claims.get(lot, 0))
            if take:
                claims[lot] -= take
                remaining -= take
        hold["lots"] = {lot: claim for lot, claim in claims.items() if claim > 0}
        if open_qty(hold) == 0:
            dict.__delitem__(self, reservation_id)
        else:
            self._count(reservation_id, hold, +1)

    def remove(self, reservation_id: str) -> None:
        hold = dict.pop(self, reservation_id, None)
        if hold is not None:
            self._count(reservation_id, hold, -1)

    def __setitem__(self, reservation_id: str, hold: Hold) -> None:
        self.remove(reservation_id)
        self.place(reservation_id, hold)

    def __delitem__(self, reservation_id: str) -> None:
        if reservation_id not in self:
            raise KeyError(reservation_id)
        self.remove(reservation_id)

    def pop(self, reservation_id: str, *default: Any) -> Any:
        if reservation_id in self:
            hold = self[reservation_id]
            self.remove(reservation_id)
            return hold
        if default:
            return default[0]
        raise KeyError(reservation_id)

    def _count(self, reservation_id: str, hold: Hold, sign: int) -> None:
        qty = sign * open_qty(hold)
        if hold["status"] == HOLD_COMMITTED:
            self.committed_total += qty
            self.committed_by_channel[hold["channel"]] += qty
            for lot, claim in lot_claims(hold).items():
                self.committed_by_lot[lot] += sign * claim
        elif hold["status"] == HOLD_ACTIVE:
            self.active_total += qty
            self.active_by_channel[hold["channel"]] += qty
            for lot, claim in lot_claims(hold).items():
                self.active_by_lot[lot] += sign * claim
            key = (hold["expires_at"], reservation_id)
            if sign > 0:
                bisect.insort(self._expiries, key)
            else:
                index = bisect.bisect_left(self._expiries, key)
                if index < len(self._expiries) and self._expiries[index] == key:
                    del self._expiries[index]

    # ---- figures ---------------------------------------------------------------------------

    def _due(self, now: datetime) -> list[Hold]:
        """ACTIVE holds whose expiry has passed at ``now`` (they no longer count)."""
        end = bisect.bisect_right(self._expiries, (now, "\U0010ffff"))
        return [self[rid] for _, rid in self._expiries[:end]]

    def reserved(self, now: datetime) -> int:
        return self.active_total - sum(open_qty(h) for h in self._due(now))

    def allocated(self) -> int:
        return self.committed_total

    def channel_demand(self, channel: str, now: datetime) -> int:
        due = sum(open_qty(h) for h in self._due(now) if h["channel"] == channel)
        return (
            self.committed_by_channel.get(channel, 0) + self.active_by_channel.get(channel, 0) - due
        )

    def lot_reserved(self, lot_id: str, now: datetime) -> int:
        """Claims on ``lot_id`` of ACTIVE holds not yet expired at ``now``."""
        due = sum(lot_claims(h).get(lot_id, 0) for h in self._due(now)) if self._expiries else 0
        return self.active_by_lot.get(lot_id, 0) - due

    def lot_allocated(self, lot_id: str) -> int:
        return self.committed_by_lot.get(lot_id, 0)

    def next_expiry_after(self, now: datetime) -> datetime | None:
        index = bisect.bisect_right(self._expiries, (now, "\U0010ffff"))
        return self._expiries[index][0] if index < len(self._expiries) else None

    # ---- copies and pickling keep the totals consistent -----------------------------------

    def __reduce__(self) -> Any:
        return (HoldBook, (dict(self),))


class HasHolds(Protocol):
    holds: dict[str, Hold]


def book_of(position: HasHolds) -> HoldBook:
    """The position's holds as a book, converting a plain dict (snapshot, projection row)
    in place on first use."""
    holds = position.holds
    if not isinstance(holds, HoldBook):
        holds = HoldBook(holds)
        position.holds = holds
    return holds
