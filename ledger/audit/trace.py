"""The recall trace of one lot (contract §2 "Recall trace", §4.4 ``TraceLot``).

Every entry of the SKU's positions that names the lot, in ledger order: movements carrying
the lot (both legs of a transfer), holds placed bound to it, the commits and releases
(released or expired) of those holds, and the lot's ``lot_expiry_fixed`` entries. Then the
lot's buckets at each location.

There is no index by lot: a trace reads every entry of the SKU's positions (the positions
index gives them), so its cost grows with the SKU's history, not the ledger's. Paging is
by global ``position``; every page re-reads the SKU's entries and recomputes the buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.application import InventoryLedger
from ledger.audit.as_of import AsOfReader, Axis
from ledger.audit.entries import LedgerEntryView, entry_view, position_entries
from ledger.domain.errors import ReservationNotFound
from ledger.domain.position import Position, position_id
from ledger.domain.reservation import Reservation, parse_reservation_id
from ledger.store.index_ops import to_micros
from ledger.views import LotView, Page, PositionView

# Entries that refer to a hold by its reservation id alone.
_HOLD_FOLLOW_UPS = ("hold_committed", "hold_released")


@dataclass(frozen=True)
class TracedEntry:
    """A ledger entry of the trace; ``order_ref`` is the reservation's order reference for
    any entry with a reservation id (hold_placed stores it, the others borrow it from the
    reservation: informative, not part of the hashed entry)."""

    entry: LedgerEntryView
    order_ref: str = ""


@dataclass(frozen=True)
class LotTrace:
    entries: Page[TracedEntry]  # next_after: the global position of the page's last entry
    locations: list[tuple[str, LotView]]  # by location_id, where the lot is visible


def _names_lot(entry: LedgerEntryView, lot_id: str, bound: set[str]) -> bool:
    data = entry.data
    if data.get("lot_id") == lot_id:
        return True
    if entry.type == "hold_placed":
        lots = data.get("lots") or ()
        if any(str(lot) == lot_id for lot, _ in lots):
            bound.add(str(data["reservation_id"]))
            return True
        return False
    return entry.type in _HOLD_FOLLOW_UPS and data.get("reservation_id") in bound


def _position_trace(
    app: InventoryLedger,
    sku: str,
    location_id: str,
    lot_id: str,
    recorded_by_us: int | None,
    order_refs: dict[str, str],
) -> list[LedgerEntryView]:
    """The position's entries naming the lot, in version order. Records every hold's order
    reference in ``order_refs`` on the way (hold_placed precedes its follow-ups)."""
    found: list[LedgerEntryView] = []
    bound: set[str] = set()  # reservations whose hold here is bound to the lot
    for row, event in position_entries(app, position_id(sku, location_id)):
        # recorded_at never decreases along the ledger, so nothing later qualifies either.
        if recorded_by_us is not None and row.recorded_at_us > recorded_by_us:
            break
        entry = entry_view(row, event)
        if entry.type == "hold_placed":
            order_refs.setdefault(str(entry.data["reservation_id"]), entry.data["order_ref"])
        if _names_lot(entry, lot_id, bound):
            found.append(entry)
    return found


def _order_ref(app: InventoryLedger, entry: LedgerEntryView, order_refs: dict[str, str]) -> str:
    reservation_id = entry.data.get("reservation_id")
    if not reservation_id:
        return ""
    if reservation_id not in order_refs:
        # A shipment against a reservation whose hold is elsewhere: ask the reservation.
        try:
            reservation = app.find(parse_reservation_id(reservation_id))
        except ReservationNotFound:
            reservation = None
        order_refs[reservation_id] = (
            reservation.order_ref if isinstance(reservation, Reservation) else ""
        )
    return order_refs[reservation_id]


def trace_lot(
    app: InventoryLedger,
    as_of_reader: AsOfReader,
    sku: str,
    lot_id: str,
    *,
    now: datetime,
    as_of: datetime | None = None,
    after_position: int = 0,
    page_size: int = 100,
) -> LotTrace:
    """One page of the trace: entries with ``position > after_position``. With ``as_of``,
    only entries recorded by then, and the buckets as the ledger knew them then (recorded
    axis, holds judged at ``as_of``); else the buckets now (``now``), strongly consistent."""
    recorded_by_us = to_micros(as_of) if as_of is not None else None
    entries: list[LedgerEntryView] = []
    order_refs: dict[str, str] = {}
    locations: list[tuple[str, LotView]] = []
    for location_id in sorted(app.locations_of(sku)):
        entries.extend(_position_trace(app, sku, location_id, lot_id, recorded_by_us, order_refs))
        view = _position_view(app, as_of_reader, sku, location_id, now, as_of)
        lot = next((lot for lot in view.lots if lot.lot_id == lot_id), None)
        if lot is not None:
            locations.append((location_id, lot))
    entries.sort(key=lambda e: e.position)
    after = [e for e in entries if e.position > after_position]
    page = after[:page_size]
    items = [TracedEntry(e, _order_ref(app, e, order_refs)) for e in page]
    next_after = page[-1].position if len(after) > page_size else None
    return LotTrace(Page(items, next_after), locations)


def _position_view(
    app: InventoryLedger,
    as_of_reader: AsOfReader,
    sku: str,
    location_id: str,
    now: datetime,
    as_of: datetime | None,
) -> PositionView:
    if as_of is not None:
        return as_of_reader.position_as_of(sku, location_id, as_of, Axis.RECORDED)
    position: Any = app.find(position_id(sku, location_id))
    if not isinstance(position, Position):
        return PositionView(sku=sku, location_id=location_id)
    return PositionView.of(position, now, include_holds=False)
