"""An independent reference model of contract §2 "Lots, serials and expiry" for LOT SKUs.

Like ``tests.model.reference`` (which it extends) it imports nothing from ``ledger``: it is
the auditor ``tests/unit/test_lot_model.py`` compares the real ledger against. Untracked
SKUs keep the parent model's rules unchanged; a SKU marked with :meth:`set_lot_tracked`
keeps every bucket per lot and is read through the lot formulas.

Modelling decisions (the contract plus the readings of issue 19 the ledger implements):

* Per-lot buckets ``on_hand``, ``receiving``, ``quarantine``, ``damaged`` and
  ``in_transit_inbound`` (transfer legs kept per ``(transfer_id, lot_id)`` at the
  destination, with the parent model's netting rules per leg, and each leg's ETA the
  ``expected_at`` of its latest dispatch). Per-lot ``reserved``/``allocated`` come from
  the holds' claims on the lot; the position's buckets are sums over its lots.
* A lot's expiry is fixed ledger-wide by the first receipt or return_receipt stating one
  (LOT_EXPIRY_CONFLICT for a later different value) and applies at once to its units
  everywhere; never stated, never expires. Expired at ``t`` iff ``expires_at <= t``.
* ``x = on_hand - reserved - allocated`` per lot; ``lot_available = x`` if ``x < 0`` else
  ``0`` when expired, else ``x``. ``available = Σ lot_available - safety_stock``;
  ``expired = Σ max(0, x)`` over expired lots. ``lots[]`` lists lots with a non-zero
  bucket (holds show up as non-zero ``reserved``/``allocated``).
* Dated ATP at ``H``: per lot ``x_H = on_hand + due_H - reserved(now) - allocated``,
  contributing ``x_H`` if negative, else 0 if expired at ``H``, else ``x_H``; then
  ``- safety_stock``; then the fences as for any SKU.
* Reserving: eligible lots are unexpired at ``now`` with ``lot_available`` (less what earlier
  lines of the same request took of that lot) above 0 and, with ``min_expires_at``, an
  expiry of None or strictly later. Without ``lot_id`` they are taken in FEFO order
  (expiry ascending, None last, then lot_id); with ``lot_id`` that lot must cover the line
  alone. The line must also fit ``available_to(channel)`` less what earlier lines took at
  the position. An empty ``location_id`` ranks the locations by
  ``min(that headroom, the lots' headroom)`` (greatest first, ties by location_id) and then
  follows the ledger's usual choice rule (one location, or a split with ``allow_split``).
* A reservation line reports the lots bound when it was placed (``qty`` = bound quantity,
  like the line's own ``qty``); the hold keeps a running claim per lot, which a shipment
  draws down: first on the shipped lot, then the other lots in binding order.
* A hold on a lot that later expires keeps counting in that lot's reserved/allocated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tests.model.reference import (
    FULFILLED,
    NEGATIVE_BUCKET,
    STALE_COUNT,
    TRANSFER_SHORTAGE,
    UNKNOWN_RESERVATION,
    Key,
    PositionModel,
    ReferenceLedger,
    ReservationModel,
    TransferModel,
)

LOT_EXPIRY_CONFLICT = "LOT_EXPIRY_CONFLICT"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class LotBuckets:
    """One lot's physical buckets at one position."""

    on_hand: int = 0
    receiving: int = 0
    quarantine: int = 0
    damaged: int = 0
    last_count_at: datetime | None = None
    inbound: dict[str, TransferModel] = field(default_factory=dict)  # transfer_id -> leg

    @property
    def in_transit_inbound(self) -> int:
        return sum(t.outstanding for t in self.inbound.values())


@dataclass(frozen=True)
class Line:
    """A reserve request line (``location_id`` "" lets the ledger choose)."""

    sku: str
    location_id: str
    qty: int
    min_expires_at: datetime | None = None
    lot_id: str | None = None


@dataclass(frozen=True)
class PlacedLine:
    """A line as placed: its location and, for a LOT SKU, the lots bound (FEFO order)."""

    sku: str
    location_id: str
    qty: int
    lots: tuple[tuple[str, int], ...] = ()


@dataclass
class LotReservation(ReservationModel):
    placed: list[PlacedLine] = field(default_factory=list)
    # Running claim of the hold at each LOT position: lot_id -> qty, in binding order.
    claims: dict[Key, dict[str, int]] = field(default_factory=dict)


def fefo_key(expires_at: datetime | None, lot_id: str) -> tuple[bool, datetime, str]:
    """Expiry ascending, lots without one after all others, then lot_id."""
    return (expires_at is None, expires_at or _EPOCH, lot_id)


class LotReferenceLedger(ReferenceLedger):
    def __init__(self) -> None:
        super().__init__()
        self.tracked: set[str] = set()
        self.expiry: dict[tuple[str, str], datetime] = {}  # (sku, lot_id) -> fixed expiry
        self.lot_state: dict[tuple[str, str, str], LotBuckets] = {}  # (sku, loc, lot)

    # ---- lots and their expiry -------------------------------------------------------------

    def set_lot_tracked(self, sku: str) -> None:
        self.tracked.add(sku)

    def is_lot(self, sku: str) -> bool:
        return sku in self.tracked

    def lot(self, sku: str, location_id: str, lot_id: str) -> LotBuckets:
        self.pos(sku, location_id)  # the position exists once a lot of it moved
        return self.lot_state.setdefault((sku, location_id, lot_id), LotBuckets())

    def expires_at(self, sku: str, lot_id: str) -> datetime | None:
        return self.expiry.get((sku, lot_id))

    def lot_expired(self, sku: str, lot_id: str, at: datetime) -> bool:
        expires = self.expires_at(sku, lot_id)
        return expires is not None and expires <= at

    def lots_at(self, key: Key) -> list[str]:
        """Every lot the position has state or claims for, by lot_id."""
        found = {lot for s, loc, lot in self.lot_state if (s, loc) == key}
        for r in self.reservations.values():
            if isinstance(r, LotReservation):
                found.update(r.claims.get(key, {}))
        return sorted(found)

    def _claim(self, r: ReservationModel, key: Key, lot_id: str) -> int:
        if not isinstance(r, LotReservation):
            return 0
        return r.claims.get(key, {}).get(lot_id, 0)

    def lot_reserved(self, key: Key, lot_id: str, now: datetime) -> int:
        return sum(
            self._claim(r, key, lot_id) for r in self.reservations.values() if r.reserves(now)
        )

    def lot_allocated(self, key: Key, lot_id: str) -> int:
        return sum(self._claim(r, key, lot_id) for r in self.reservations.values() if r.allocates())

    def _buckets_of(self, key: Key, lot_id: str) -> LotBuckets:
        return self.lot_state.get((key[0], key[1], lot_id), LotBuckets())

    def lot_x(self, key: Key, lot_id: str, now: datetime) -> int:
        on_hand = self._buckets_of(key, lot_id).on_hand
        return on_hand - self.lot_reserved(key, lot_id, now) - self.lot_allocated(key, lot_id)

    def lot_available(self, key: Key, lot_id: str, now: datetime) -> int:
        x = self.lot_x(key, lot_id, now)
        if x < 0:
            return x
        return 0 if self.lot_expired(key[0], lot_id, now) else x

    # ---- derived figures ---------------------------------------------------------------------

    def available(self, key: Key, now: datetime) -> int:
        if not self.is_lot(key[0]):
            return super().available(key, now)
        p = self.positions.get(key, PositionModel())
        total = sum(self.lot_available(key, lot, now) for lot in self.lots_at(key))
        return total - p.safety_stock

    def expired(self, key: Key, now: datetime) -> int:
        if not self.is_lot(key[0]):
            return 0
        return sum(
            max(0, self.lot_x(key, lot, now))
            for lot in self.lots_at(key)
            if self.lot_expired(key[0], lot, now)
        )

    def _due(self, buckets: LotBuckets, horizon: datetime) -> int:
        return sum(
            t.outstanding
            for t in buckets.inbound.values()
            if t.expected_at is not None and t.expected_at <= horizon
        )

    def projected_available_to(
        self, key: Key, channel: str, now: datetime, horizon: datetime
    ) -> int:
        if not self.is_lot(key[0]):
            return super().projected_available_to(key, channel, now, horizon)
        p = self.positions.get(key, PositionModel())
        total = 0
        for lot in self.lots_at(key):
            x_h = self.lot_x(key, lot, now) + self._due(self._buckets_of(key, lot), horizon)
            if x_h < 0 or not self.lot_expired(key[0], lot, horizon):
                total += x_h
        others = sum(u for c, u in self.unused_fences(key, now).items() if c != channel)
        return max(0, total - p.safety_stock - others)

    def lot_views(self, key: Key, now: datetime) -> list[dict[str, object]]:
        """``Position.lots[]``: each lot with a non-zero bucket, by lot_id."""
        if not self.is_lot(key[0]):
            return []
        out = []
        for lot in self.lots_at(key):
            b = self._buckets_of(key, lot)
            row: dict[str, object] = {
                "lot_id": lot,
                "expires_at": self.expires_at(key[0], lot),
                "on_hand": b.on_hand,
                "receiving": b.receiving,
                "quarantine": b.quarantine,
                "damaged": b.damaged,
                "in_transit_inbound": b.in_transit_inbound,
                "reserved": self.lot_reserved(key, lot, now),
                "allocated": self.lot_allocated(key, lot),
            }
            if any(v != 0 for k, v in row.items() if k not in ("lot_id", "expires_at")):
                row["available"] = self.lot_available(key, lot, now)
                out.append(row)
        return out

    def buckets(self, key: Key, now: datetime) -> dict[str, object]:
        out = super().buckets(key, now)
        out["expired"] = self.expired(key, now)
        if self.is_lot(key[0]):
            states = [self._buckets_of(key, lot) for lot in self.lots_at(key)]
            for name in ("on_hand", "receiving", "quarantine", "damaged", "in_transit_inbound"):
                out[name] = sum(getattr(b, name) for b in states)
            out["available"] = self.available(key, now)
        return out

    # ---- facts of a LOT SKU --------------------------------------------------------------------

    def apply_lot_movement(
        self,
        kind: str,
        sku: str,
        location_id: str,
        lot_id: str,
        *,
        now: datetime,
        qty: int = 0,
        delta: int = 0,
        counted: int = 0,
        occurred_at: datetime | None = None,
        expires_at: datetime | None = None,
        reservation_id: str | None = None,
        transfer_id: str | None = None,
        to_location_id: str | None = None,
        expected_at: datetime | None = None,
        putaway_pending: bool = False,
        final: bool = False,
        disposition: str = "restock",
        from_bucket: str = "on_hand",
    ) -> list[str]:
        """Apply one fact naming ``lot_id``; returns the exception types it raises."""
        assert self.is_lot(sku), sku
        b = self.lot(sku, location_id, lot_id)
        exceptions: list[str] = []
        touched = [b]
        if kind in ("receipt", "return_receipt") and expires_at is not None:
            fixed = self.expiry.get((sku, lot_id))
            if fixed is None:
                self.expiry[(sku, lot_id)] = expires_at
            elif fixed != expires_at:
                exceptions.append(LOT_EXPIRY_CONFLICT)
        if kind == "receipt":
            if putaway_pending:
                b.receiving += qty
            else:
                b.on_hand += qty
        elif kind == "putaway":
            b.receiving -= qty
            b.on_hand += qty
        elif kind == "shipment":
            b.on_hand -= qty
            if reservation_id:
                exceptions += self._ship_lot(reservation_id, (sku, location_id), lot_id, qty, now)
        elif kind == "adjustment":
            b.on_hand += delta
        elif kind == "cycle_count":
            at = occurred_at or now
            if b.last_count_at is not None and at < b.last_count_at:
                exceptions.append(STALE_COUNT)
            else:
                b.on_hand = counted
                b.last_count_at = at
        elif kind == "quarantine":
            b.on_hand -= qty
            b.quarantine += qty
        elif kind == "quarantine_release":
            b.quarantine -= qty
            b.on_hand += qty
        elif kind == "damage":
            if from_bucket == "quarantine":
                b.quarantine -= qty
            else:
                b.on_hand -= qty
            b.damaged += qty
        elif kind == "write_off":
            b.damaged -= qty
        elif kind == "transfer_dispatch":
            if transfer_id is None or to_location_id is None:
                raise ValueError("transfer_dispatch needs transfer_id and to_location_id")
            b.on_hand -= qty
            destination = self.lot(sku, to_location_id, lot_id)
            leg = destination.inbound.get(transfer_id)
            if leg is None or leg.closed:
                leg = destination.inbound[transfer_id] = TransferModel()
            leg.dispatched += qty
            leg.expected_at = expected_at
            touched.append(destination)
        elif kind == "transfer_receipt":
            if transfer_id is None:
                raise ValueError("transfer_receipt needs transfer_id")
            leg = b.inbound.setdefault(transfer_id, TransferModel())
            leg.received += qty
            b.on_hand += qty
            if final:
                if leg.outstanding > 0:
                    exceptions.append(TRANSFER_SHORTAGE)
                leg.closed = True
        elif kind == "return_receipt":
            if disposition == "quarantine":
                b.quarantine += qty
            elif disposition == "damaged":
                b.damaged += qty
            else:
                b.on_hand += qty
        else:
            raise ValueError(f"unknown movement type {kind!r}")
        for t in touched:
            if min(t.on_hand, t.receiving, t.quarantine, t.damaged) < 0:
                exceptions.append(NEGATIVE_BUCKET)
        return exceptions

    def _ship_lot(
        self, reservation_id: str, key: Key, lot_id: str, qty: int, now: datetime
    ) -> list[str]:
        reservation = self.reservations.get(reservation_id)
        if reservation is None:
            return [UNKNOWN_RESERVATION]
        if not reservation.holds_stock(now):
            return []
        take = min(qty, reservation.open_at(key))
        if take <= 0:
            return []
        assert isinstance(reservation, LotReservation)
        claims = reservation.claims[key]
        # The shipped lot first, then the others in binding order judged now: earliest
        # expiry first, lots that never expire last, ties by lot id.
        others = sorted(
            (lot for lot in claims if lot != lot_id),
            key=lambda lot: (
                self.expires_at(key[0], lot) is None,
                self.expires_at(key[0], lot) or now,
                lot,
            ),
        )
        order = ([lot_id] if lot_id in claims else []) + others
        remaining = take
        for lot in order:
            part = min(claims[lot], remaining)
            claims[lot] -= part
            remaining -= part
        assert remaining == 0, (claims, take)
        reservation.shipped[key] = reservation.shipped.get(key, 0) + take
        if all(reservation.open_at(k) == 0 for k in reservation.held):
            reservation.status = FULFILLED
        return []

    # ---- reservations with lots ----------------------------------------------------------------

    def lot_eligible(
        self, sku: str, lot_id: str, now: datetime, min_expires_at: datetime | None
    ) -> bool:
        """The expiry tests of a line (lot_available is checked by the caller)."""
        if self.lot_expired(sku, lot_id, now):
            return False
        expires = self.expires_at(sku, lot_id)
        return min_expires_at is None or expires is None or expires > min_expires_at

    def plan(
        self,
        channel: str,
        lines: list[Line],
        now: datetime,
        allow_split: bool = False,
        locations: tuple[str, ...] = (),
    ) -> list[PlacedLine] | None:
        """The placed lines of a Reserve request, or None when it is refused (all or nothing).

        ``locations``: where an empty ``location_id`` may look (the ledger looks at every
        position of the SKU; one without any stock has no headroom either way).
        """
        taken_pos: dict[Key, int] = {}
        taken_lot: dict[tuple[Key, str], int] = {}

        def lot_free(key: Key, lot: str, line: Line) -> int:
            if not self.lot_eligible(key[0], lot, now, line.min_expires_at):
                return 0
            return max(0, self.lot_available(key, lot, now) - taken_lot.get((key, lot), 0))

        def eligible_lots(key: Key, line: Line) -> list[tuple[str, int]]:
            if line.lot_id is not None:
                names = [line.lot_id]
            else:
                names = sorted(
                    self.lots_at(key), key=lambda lot: fefo_key(self.expires_at(key[0], lot), lot)
                )
            return [(lot, f) for lot in names if (f := lot_free(key, lot, line)) > 0]

        def headroom(key: Key, line: Line) -> int:
            if not self.is_eligible(channel, key[1]):
                return 0
            free = max(0, self.available_to(key, channel, now) - taken_pos.get(key, 0))
            if not self.is_lot(key[0]):
                return free
            return min(free, sum(f for _, f in eligible_lots(key, line)))

        def take(key: Key, line: Line, qty: int) -> PlacedLine:
            taken_pos[key] = taken_pos.get(key, 0) + qty
            bound: list[tuple[str, int]] = []
            if self.is_lot(key[0]):
                remaining = qty
                for lot, free in eligible_lots(key, line):
                    part = min(free, remaining)
                    bound.append((lot, part))
                    taken_lot[(key, lot)] = taken_lot.get((key, lot), 0) + part
                    remaining -= part
                    if remaining == 0:
                        break
                assert remaining == 0
            return PlacedLine(key[0], key[1], qty, tuple(bound))

        placed: list[PlacedLine] = []
        refused = False
        for line in lines:
            if line.location_id:
                key = (line.sku, line.location_id)
                if line.qty > headroom(key, line):
                    refused = True
                    continue
                placed.append(take(key, line, line.qty))
                continue
            ranked = sorted(
                ((headroom((line.sku, loc), line), loc) for loc in locations),
                key=lambda pair: (-pair[0], pair[1]),
            )
            ranked = [(free, loc) for free, loc in ranked if free > 0]
            if ranked and ranked[0][0] >= line.qty:
                placed.append(take((line.sku, ranked[0][1]), line, line.qty))
                continue
            if not allow_split or sum(free for free, _ in ranked) < line.qty:
                refused = True
                continue
            remaining = line.qty
            for free, loc in ranked:
                part = min(free, remaining)
                placed.append(take((line.sku, loc), line, part))
                remaining -= part
                if remaining == 0:
                    break
        return None if refused else placed

    def place(
        self,
        reservation_id: str,
        channel: str,
        placed: list[PlacedLine],
        now: datetime,
        ttl: timedelta,
    ) -> LotReservation:
        claims: dict[Key, dict[str, int]] = {}
        for part in placed:
            held = claims.setdefault((part.sku, part.location_id), {})
            for lot, qty in part.lots:
                held[lot] = held.get(lot, 0) + qty
        # One hold per position: its claims in binding (FEFO, at placement) order.
        for key, held in claims.items():
            claims[key] = dict(
                sorted(held.items(), key=lambda kv: fefo_key(self.expires_at(key[0], kv[0]), kv[0]))
            )
        reservation = LotReservation(
            channel,
            [(p.sku, p.location_id, p.qty) for p in placed],
            now + ttl,
            placed=list(placed),
            claims={k: v for k, v in claims.items() if v},
        )
        self.reservations[reservation_id] = reservation
        return reservation
