"""An independent reference model of contract §2, written straight from the table and formulas.

It deliberately imports nothing from ``ledger``: it is the auditor the property-based tests
compare the real ledger against, so it must not share (and silently agree with) its code.
Plain dictionaries and small dataclasses, no persistence, no events: every operation
changes the state directly, the way the contract table reads.

Modelling decisions (each one matches the contract in the orders the contract describes):

* Transfers are kept per destination position and ``transfer_id`` as
  ``{dispatched, received, closed}``; ``outstanding = 0 if closed else
  max(0, dispatched - received)`` and ``in_transit_inbound = Σ outstanding``. This equals
  the contract's "dispatch: += qty; receipt: -= min(qty, outstanding); final: the remainder
  leaves" whenever dispatches precede receipts. It also fixes the documented decision for a
  receipt that arrives before any dispatch of its transfer (outstanding 0 then, and the
  early receipt is netted against the later dispatch). Further dispatches on the same
  transfer (shipping it in waves) agree with the contract too. An over-received transfer nets a
  further dispatch against the surplus (in transit = dispatched - received, never split-
  dependent), and a dispatch after ``final=true`` starts a new leg under the same id.
  (The ledger forgets settled transfers 30 days after their last event; histories here
  stay well inside that.)
* A shipment against a reservation consumes open quantity only while that reservation
  holds stock (ACTIVE and unexpired, or COMMITTED); an expired, released or fulfilled
  reservation has nothing left to consume, and the lifecycle has no EXPIRED → FULFILLED.
* A transfer's ETA is the ``expected_at`` of its latest dispatch (a dispatch without one
  clears it); dated ATP counts a transfer's outstanding quantity when that ETA is set and
  at or before the horizon.
* Line-level ``shipped`` is compared per position (the contract says how much the open quantity
  at P falls, not how it is spread over several lines at the same P).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

ACTIVE = "ACTIVE"
COMMITTED = "COMMITTED"
FULFILLED = "FULFILLED"
RELEASED = "RELEASED"
EXPIRED = "EXPIRED"

# Exception types of contract §5 the model can tell apart (recorded, never refused).
NEGATIVE_BUCKET = "NEGATIVE_BUCKET"
STALE_COUNT = "STALE_COUNT"
TRANSFER_SHORTAGE = "TRANSFER_SHORTAGE"
UNKNOWN_RESERVATION = "UNKNOWN_RESERVATION"

Key = tuple[str, str]  # (sku, location_id)


@dataclass
class TransferModel:
    dispatched: int = 0
    received: int = 0
    closed: bool = False
    expected_at: datetime | None = None

    @property
    def outstanding(self) -> int:
        if self.closed:
            return 0
        return max(0, self.dispatched - self.received)


@dataclass
class PositionModel:
    on_hand: int = 0
    receiving: int = 0
    quarantine: int = 0
    damaged: int = 0
    safety_stock: int = 0
    fences: dict[str, int] = field(default_factory=dict)
    last_count_at: datetime | None = None
    inbound: dict[str, TransferModel] = field(default_factory=dict)

    @property
    def in_transit_inbound(self) -> int:
        return sum(t.outstanding for t in self.inbound.values())


@dataclass
class ReservationModel:
    channel: str
    lines: list[tuple[str, str, int]]
    expires_at: datetime
    status: str = ACTIVE
    shipped: dict[Key, int] = field(default_factory=dict)

    @property
    def held(self) -> dict[Key, int]:
        """Quantity per position: the sum of the lines there."""
        out: dict[Key, int] = {}
        for sku, loc, qty in self.lines:
            out[(sku, loc)] = out.get((sku, loc), 0) + qty
        return out

    def open_at(self, key: Key) -> int:
        return self.held.get(key, 0) - self.shipped.get(key, 0)

    def status_at(self, now: datetime) -> str:
        if self.status == ACTIVE and now >= self.expires_at:
            return EXPIRED
        return self.status

    def reserves(self, now: datetime) -> bool:
        """Counts in ``reserved``: ACTIVE and ``now < expires_at``."""
        return self.status == ACTIVE and now < self.expires_at

    def allocates(self) -> bool:
        return self.status == COMMITTED

    def holds_stock(self, now: datetime) -> bool:
        return self.reserves(now) or self.allocates()


class ReferenceLedger:
    def __init__(self) -> None:
        self.positions: dict[Key, PositionModel] = {}
        self.reservations: dict[str, ReservationModel] = {}
        self.eligible: dict[str, list[str]] = {}  # channel -> eligible locations ([] = all)

    def pos(self, sku: str, location_id: str) -> PositionModel:
        return self.positions.setdefault((sku, location_id), PositionModel())

    # ---- derived figures (contract §2 "Derived") ---------------------------------------------

    def reserved(self, key: Key, now: datetime) -> int:
        return sum(r.open_at(key) for r in self.reservations.values() if r.reserves(now))

    def allocated(self, key: Key) -> int:
        return sum(r.open_at(key) for r in self.reservations.values() if r.allocates())

    def available(self, key: Key, now: datetime) -> int:
        p = self.positions.get(key, PositionModel())
        return p.on_hand - self.reserved(key, now) - self.allocated(key) - p.safety_stock

    def demand(self, key: Key, channel: str, now: datetime) -> int:
        return sum(
            r.open_at(key)
            for r in self.reservations.values()
            if r.channel == channel and r.holds_stock(now)
        )

    def unused_fences(
        self, key: Key, now: datetime, fences: dict[str, int] | None = None
    ) -> dict[str, int]:
        if fences is None:
            fences = self.positions.get(key, PositionModel()).fences
        return {c: max(0, f - self.demand(key, c, now)) for c, f in fences.items()}

    def available_to(self, key: Key, channel: str, now: datetime) -> int:
        others = sum(u for c, u in self.unused_fences(key, now).items() if c != channel)
        return max(0, self.available(key, now) - others)

    def projected_available_to(
        self, key: Key, channel: str, now: datetime, horizon: datetime
    ) -> int:
        """Dated ATP (contract §4.1): ``available_to`` as if the transfers due by ``horizon`` had
        arrived, i.e. with their outstanding units counted in ``on_hand``."""
        p = self.positions.get(key, PositionModel())
        due = sum(
            t.outstanding
            for t in p.inbound.values()
            if t.expected_at is not None and t.expected_at <= horizon
        )
        others = sum(u for c, u in self.unused_fences(key, now).items() if c != channel)
        return max(0, self.available(key, now) + due - others)

    def projected_channel_available(
        self, sku: str, channel: str, now: datetime, horizon: datetime
    ) -> int:
        """contract §4.3 over the dated figures (model policies: 100 %, no buffer, no cap)."""
        return sum(
            self.projected_available_to((s, loc), channel, now, horizon)
            for s, loc in self.positions
            if s == sku and self.is_eligible(channel, loc)
        )

    def buckets(self, key: Key, now: datetime) -> dict[str, object]:
        p = self.positions.get(key, PositionModel())
        return {
            "on_hand": p.on_hand,
            "receiving": p.receiving,
            "quarantine": p.quarantine,
            "damaged": p.damaged,
            "in_transit_inbound": p.in_transit_inbound,
            "reserved": self.reserved(key, now),
            "allocated": self.allocated(key),
            "safety_stock": p.safety_stock,
            "available": self.available(key, now),
            "fences": {c: q for c, q in p.fences.items() if q},
        }

    # ---- facts (contract §2 movement table) --------------------------------------------------

    def apply_movement(
        self,
        kind: str,
        sku: str,
        location_id: str,
        *,
        now: datetime,
        qty: int = 0,
        delta: int = 0,
        counted: int = 0,
        occurred_at: datetime | None = None,
        reservation_id: str | None = None,
        transfer_id: str | None = None,
        to_location_id: str | None = None,
        expected_at: datetime | None = None,
        putaway_pending: bool = False,
        final: bool = False,
        disposition: str = "restock",
        from_bucket: str = "on_hand",
    ) -> list[str]:
        """Apply one fact; returns the exception types it raises (it is always recorded)."""
        p = self.pos(sku, location_id)
        exceptions: list[str] = []
        touched = [p]
        if kind == "receipt":
            if putaway_pending:
                p.receiving += qty
            else:
                p.on_hand += qty
        elif kind == "putaway":
            p.receiving -= qty
            p.on_hand += qty
        elif kind == "shipment":
            p.on_hand -= qty
            if reservation_id:
                exceptions += self._ship_against(reservation_id, (sku, location_id), qty, now)
        elif kind == "adjustment":
            p.on_hand += delta
        elif kind == "cycle_count":
            at = occurred_at or now
            if p.last_count_at is not None and at < p.last_count_at:
                exceptions.append(STALE_COUNT)
            else:
                p.on_hand = counted
                p.last_count_at = at
        elif kind == "quarantine":
            p.on_hand -= qty
            p.quarantine += qty
        elif kind == "quarantine_release":
            p.quarantine -= qty
            p.on_hand += qty
        elif kind == "damage":
            if from_bucket == "quarantine":
                p.quarantine -= qty
            else:
                p.on_hand -= qty
            p.damaged += qty
        elif kind == "write_off":
            p.damaged -= qty
        elif kind == "transfer_dispatch":
            if transfer_id is None or to_location_id is None:
                raise ValueError("transfer_dispatch needs transfer_id and to_location_id")
            p.on_hand -= qty
            destination = self.pos(sku, to_location_id)
            transfer = destination.inbound.get(transfer_id)
            if transfer is None or transfer.closed:
                # After final=true a dispatch under the same id starts a new leg.
                transfer = destination.inbound[transfer_id] = TransferModel()
            transfer.dispatched += qty
            transfer.expected_at = expected_at
            touched.append(destination)
        elif kind == "transfer_receipt":
            if transfer_id is None:
                raise ValueError("transfer_receipt needs transfer_id")
            transfer = p.inbound.setdefault(transfer_id, TransferModel())
            transfer.received += qty
            p.on_hand += qty
            if final:
                if transfer.outstanding > 0:
                    exceptions.append(TRANSFER_SHORTAGE)
                transfer.closed = True
        elif kind == "return_receipt":
            if disposition == "quarantine":
                p.quarantine += qty
            elif disposition == "damaged":
                p.damaged += qty
            else:
                p.on_hand += qty
        else:
            raise ValueError(f"unknown movement type {kind!r}")
        for position in touched:
            buckets = (position.on_hand, position.receiving, position.quarantine, position.damaged)
            if min(buckets) < 0:
                exceptions.append(NEGATIVE_BUCKET)
        return exceptions

    def _ship_against(self, reservation_id: str, key: Key, qty: int, now: datetime) -> list[str]:
        reservation = self.reservations.get(reservation_id)
        if reservation is None:
            return [UNKNOWN_RESERVATION]
        if not reservation.holds_stock(now):
            return []
        take = min(qty, reservation.open_at(key))
        if take <= 0:
            return []
        reservation.shipped[key] = reservation.shipped.get(key, 0) + take
        if all(reservation.open_at(k) == 0 for k in reservation.held):
            reservation.status = FULFILLED
        return []

    # ---- policies ----------------------------------------------------------------------------

    def set_safety_stock(self, sku: str, location_id: str, qty: int) -> None:
        if qty < 0:
            raise ValueError("safety stock must be ≥ 0")
        self.pos(sku, location_id).safety_stock = qty

    def fence_allowed(
        self, sku: str, location_id: str, channel: str, qty: int, now: datetime
    ) -> bool:
        """Lowering is always allowed; a raise iff Σ unused_fence after it ≤ max(0, available)."""
        key = (sku, location_id)
        current = self.positions.get(key, PositionModel()).fences.get(channel, 0)
        if qty <= current:
            return True
        fences = dict(self.positions.get(key, PositionModel()).fences)
        fences[channel] = qty
        total = sum(self.unused_fences(key, now, fences).values())
        return total <= max(0, self.available(key, now))

    def set_channel_fence(
        self, sku: str, location_id: str, channel: str, qty: int, now: datetime
    ) -> bool:
        """Returns False (and changes nothing) when the raise is refused."""
        if qty < 0:
            raise ValueError("fence must be ≥ 0")
        if not self.fence_allowed(sku, location_id, channel, qty, now):
            return False
        self.pos(sku, location_id).fences[channel] = qty
        return True

    def set_channel_policy(self, channel: str, eligible_location_ids: list[str]) -> None:
        self.eligible[channel] = list(eligible_location_ids)

    def is_eligible(self, channel: str, location_id: str) -> bool:
        eligible = self.eligible.get(channel, [])
        return not eligible or location_id in eligible

    # ---- reservations ------------------------------------------------------------------------

    def reserve_allowed(
        self, channel: str, lines: list[tuple[str, str, int]], now: datetime
    ) -> bool:
        """All or nothing: per position, Σ qty of the request's lines ≤ available_to(channel)."""
        wanted: dict[Key, int] = {}
        for sku, loc, qty in lines:
            wanted[(sku, loc)] = wanted.get((sku, loc), 0) + qty
        for key, qty in wanted.items():
            free = self.available_to(key, channel, now) if self.is_eligible(channel, key[1]) else 0
            if qty > free:
                return False
        return True

    def reserve(
        self,
        reservation_id: str,
        channel: str,
        lines: list[tuple[str, str, int]],
        now: datetime,
        ttl: timedelta,
    ) -> bool:
        if not self.reserve_allowed(channel, lines, now):
            return False
        self.reservations[reservation_id] = ReservationModel(channel, list(lines), now + ttl)
        return True

    def commit(self, reservation_id: str, now: datetime) -> bool:
        """ACTIVE (and ``now < expires_at``) → COMMITTED; False when illegal."""
        reservation = self.reservations[reservation_id]
        if reservation.status_at(now) != ACTIVE:
            return False
        reservation.status = COMMITTED
        return True

    def release(self, reservation_id: str, now: datetime) -> bool:
        """ACTIVE (unexpired) | COMMITTED → RELEASED; False when illegal."""
        reservation = self.reservations[reservation_id]
        if reservation.status_at(now) not in (ACTIVE, COMMITTED):
            return False
        reservation.status = RELEASED
        return True

    def expire_due(self, now: datetime) -> set[str]:
        """Write EXPIRED down for every ACTIVE reservation past expiry (changes no figure)."""
        due = {
            rid
            for rid, r in self.reservations.items()
            if r.status == ACTIVE and now >= r.expires_at
        }
        for rid in due:
            self.reservations[rid].status = EXPIRED
        return due
