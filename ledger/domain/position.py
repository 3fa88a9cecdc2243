"""The position aggregate: stock of one SKU at one location, folded from immutable events.

Every event's ``apply`` is a pure fold over the position's state attributes, so the same
code reconstructs the aggregate, feeds projections and replays history as of an instant.
Folds decide from state (never from flags computed at write time), which keeps them valid
whatever order a replay takes (contract §3 effective axis).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from ledger.domain import availability, chain
from ledger.domain.availability import HOLD_ACTIVE, inbound_outstanding
from ledger.domain.hold_book import Hold, book_of
from ledger.domain.inbound_transfers import inbound_key, inbound_transfer, prune_settled_transfers
from ledger.domain.lots import Lot, binding_key, lot_of
from ledger.domain.movements import Disposition, FromBucket, Movement, MovementType
from ledger.domain.position_state import PositionFigures, init_state, is_stale_count

# Event fields of item tracking. Set only on tracked SKUs' events: unset, they are removed
# from the event, so an untracked event's stored form and hashed body stay what they were
# before lots existed (and old events read them as None from the class defaults).
TRACKING_EVENT_FIELDS = (
    "lot_id",
    "lot_expires_at",
    "stated_expires_at",
    "serial_numbers",
    "serial_conflicts",
)

POSITION_NAMESPACE = UUID("6f1c1e6e-3f0b-4a51-9d43-5b9a4f7c2a10")


# Every call that names a position derives its id (a SHA-1 each): the hot ones are kept.
@lru_cache(maxsize=65_536)
def position_id(sku: str, location_id: str) -> UUID:
    """Deterministic id: the same SKU-location always maps to the same aggregate."""
    return uuid5(POSITION_NAMESPACE, f"{len(sku)}:{sku}|{location_id}")


@dataclass(frozen=True)
class EventMeta:
    """Provenance recorded on every event (contract §2 last paragraph)."""

    occurred_at: datetime
    recorded_at: datetime
    source: str
    message_id: str
    request_id: str
    correlation_id: str
    actor: str

    def fields(self) -> dict[str, Any]:
        return {
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at,
            "source": self.source,
            "message_id": self.message_id,
            "request_id": self.request_id,
            "correlation_id": self.correlation_id,
            "actor": self.actor,
        }


def _move(position: Any, lot: Lot | None, changes: dict[str, int]) -> None:
    """Change the position's buckets and, for a LOT SKU, the same buckets of the lot."""
    for bucket, delta in changes.items():
        setattr(position, bucket, getattr(position, bucket) + delta)
        if lot is not None:
            lot[bucket] += delta


def _check(condition: bool, message: str) -> None:
    # Explicit raise: `python -O` strips assert statements.
    if not condition:
        raise AssertionError(message)


class Position(Aggregate, PositionFigures):
    """Buckets of contract §2 for one ``(sku, location_id)``; reservations live here as holds."""

    class Event(Aggregate.Event):
        occurred_at: datetime
        recorded_at: datetime
        source: str
        message_id: str
        request_id: str
        correlation_id: str
        actor: str
        # Chain link (ledger.domain.chain): set by trigger_event, never by callers.
        hash: str
        # LOT SKUs: the lot moved, its ledger-wide expiry when known at write time, and a
        # receipt's stated expiry when it differs from that (LOT_EXPIRY_CONFLICT).
        lot_id: str | None = field(default=None, kw_only=True)
        lot_expires_at: datetime | None = field(default=None, kw_only=True)
        stated_expires_at: datetime | None = field(default=None, kw_only=True)
        # SERIAL SKUs: the units moved, and those of them the serial index could not accept
        # (SERIAL_CONFLICT: recorded all the same, the unit's index entry left as it was).
        serial_numbers: list[str] | None = field(default=None, kw_only=True)
        serial_conflicts: list[str] | None = field(default=None, kw_only=True)

        def __post_init__(self) -> None:
            super().__post_init__()
            for name in TRACKING_EVENT_FIELDS:
                if getattr(self, name) is None:
                    object.__delattr__(self, name)

        def apply(self, aggregate: Any) -> None:
            aggregate.updated_at = self.recorded_at
            aggregate.last_hash = self.hash
            latest = aggregate.max_occurred_at
            if latest is None or self.occurred_at > latest:
                aggregate.max_occurred_at = self.occurred_at

        def lot(self, aggregate: Any) -> Lot | None:
            """The named lot's record at the position (LOT SKUs), its expiry brought in."""
            if self.lot_id is None:
                return None
            lot = lot_of(aggregate, self.lot_id)
            if self.lot_expires_at is not None:
                lot["expires_at"] = self.lot_expires_at
            return lot

    class Opened(Event, Aggregate.Created):
        sku: str
        location_id: str

    @staticmethod
    def create_id(sku: str, location_id: str) -> UUID:
        return position_id(sku, location_id)

    def __init__(
        self,
        sku: str,
        location_id: str,
        occurred_at: datetime,
        recorded_at: datetime,
        source: str,
        message_id: str,
        request_id: str,
        correlation_id: str,
        actor: str,
        hash: str,
    ) -> None:
        self.sku = sku
        self.location_id = location_id
        init_state(self)
        self.updated_at = recorded_at

    @classmethod
    def open(cls, sku: str, location_id: str, meta: EventMeta) -> Position:
        fields = meta.fields()
        body = chain.entry_body(chain.entry_type_of(cls.Opened), sku, location_id, 1, fields)
        return cls._create(
            cls.Opened,
            sku=sku,
            location_id=location_id,
            hash=chain.link(chain.GENESIS, body),
            **fields,
        )

    def trigger_event(self, event_class: Any, **kwargs: Any) -> None:
        # Every event links to the previous one of this position. Versions conflict across
        # processes (IntegrityError, then a reload), so the chain can never fork.
        body = chain.entry_body(
            chain.entry_type_of(event_class), self.sku, self.location_id, self.version + 1, kwargs
        )
        super().trigger_event(event_class, hash=chain.link(self.last_hash, body), **kwargs)

    # ---- facts -----------------------------------------------------------------------------

    class Received(Event):
        qty: int
        putaway_pending: bool

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            bucket = "receiving" if self.putaway_pending else "on_hand"
            _move(aggregate, self.lot(aggregate), {bucket: self.qty})

    class PutAway(Event):
        qty: int

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            _move(aggregate, self.lot(aggregate), {"receiving": -self.qty, "on_hand": self.qty})

    class Shipped(Event):
        qty: int
        reservation_id: str | None

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            _move(aggregate, self.lot(aggregate), {"on_hand": -self.qty})
            reservation_id = self.reservation_id
            hold = aggregate.holds.get(reservation_id) if reservation_id else None
            # An expired ACTIVE hold no longer holds anything: the shipment cannot consume it.
            if (
                reservation_id
                and hold is not None
                and availability.hold_blocks(hold, self.recorded_at)
            ):
                # Fully shipped, the hold goes away.
                take = min(self.qty, availability.hold_open_qty(hold))
                if "lots" in hold and self.lot_id is not None:
                    book_of(aggregate).ship_lot(
                        reservation_id, take, self.lot_id, binding_key(aggregate)
                    )
                else:
                    book_of(aggregate).ship(reservation_id, take)

    class Adjusted(Event):
        delta: int
        reason: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            _move(aggregate, self.lot(aggregate), {"on_hand": self.delta})

    class Counted(Event):
        counted: int
        # Why the count was taken (e.g. a reconciliation). Entries recorded before the field
        # existed have no ``reason`` attribute at all, so their hashed ``data`` is unchanged.
        reason: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            lot = self.lot(aggregate)
            if is_stale_count(aggregate, self.occurred_at, self.lot_id):
                return
            if lot is None:
                aggregate.on_hand = self.counted
                aggregate.last_count_at = self.occurred_at
                return
            # A lot count sets that lot alone; the position keeps the sum of its lots.
            aggregate.on_hand += self.counted - lot["on_hand"]
            lot["on_hand"] = self.counted
            lot["last_count_at"] = self.occurred_at

    class Quarantined(Event):
        qty: int

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            _move(aggregate, self.lot(aggregate), {"on_hand": -self.qty, "quarantine": self.qty})

    class QuarantineReleased(Event):
        qty: int

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            _move(aggregate, self.lot(aggregate), {"quarantine": -self.qty, "on_hand": self.qty})

    class Damaged(Event):
        qty: int
        from_bucket: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            source = "quarantine" if self.from_bucket == FromBucket.QUARANTINE else "on_hand"
            _move(aggregate, self.lot(aggregate), {source: -self.qty, "damaged": self.qty})

    class WrittenOff(Event):
        qty: int

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            _move(aggregate, self.lot(aggregate), {"damaged": -self.qty})

    class TransferDispatched(Event):
        """Source leg: stock leaves on_hand towards ``to_location_id``."""

        qty: int
        transfer_id: str
        to_location_id: str
        expected_at: datetime | None

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            _move(aggregate, self.lot(aggregate), {"on_hand": -self.qty})

    class TransferInbound(Event):
        """Destination leg of a dispatch, written in the same transaction as the source leg."""

        qty: int
        transfer_id: str
        from_location_id: str
        expected_at: datetime | None

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            lot = self.lot(aggregate)
            key = inbound_key(self.transfer_id, self.lot_id)
            previous = aggregate.inbound.get(key)
            if previous is not None and previous["closed"]:
                # A dispatch after `final=true` starts a new leg under the same id.
                del aggregate.inbound[key]
            transfer = inbound_transfer(aggregate, self.transfer_id, self.lot_id)
            before = inbound_outstanding(transfer)
            transfer["dispatched"] += self.qty
            transfer["from_location_id"] = self.from_location_id
            transfer["expected_at"] = self.expected_at
            transfer["dispatched_at"] = transfer["dispatched_at"] or self.occurred_at
            transfer["last_at"] = self.recorded_at
            _move(aggregate, lot, {"in_transit_inbound": inbound_outstanding(transfer) - before})
            prune_settled_transfers(aggregate, self.recorded_at)

    class TransferReceived(Event):
        qty: int
        transfer_id: str
        final: bool

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            lot = self.lot(aggregate)
            transfer = inbound_transfer(aggregate, self.transfer_id, self.lot_id)
            before = inbound_outstanding(transfer)
            transfer["received"] += self.qty
            if self.final:
                transfer["closed"] = True
            transfer["last_at"] = self.recorded_at
            in_transit = inbound_outstanding(transfer) - before
            _move(aggregate, lot, {"in_transit_inbound": in_transit, "on_hand": self.qty})
            prune_settled_transfers(aggregate, self.recorded_at)

    class ReturnReceived(Event):
        qty: int
        disposition: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            if self.disposition == Disposition.QUARANTINE:
                bucket = "quarantine"
            elif self.disposition == Disposition.DAMAGED:
                bucket = "damaged"
            else:
                bucket = "on_hand"
            _move(aggregate, self.lot(aggregate), {bucket: self.qty})

    class LotExpiryFixed(Event):
        """A lot this position holds got its ledger-wide expiry from a receipt elsewhere
        (``lot_id``, ``lot_expires_at``): its units here expire with it."""

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            self.lot(aggregate)

    # ---- policies ---------------------------------------------------------------------------

    class SafetyStockSet(Event):
        qty: int

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.safety_stock = self.qty

    class ChannelFenceSet(Event):
        channel: str
        qty: int

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            if self.qty == 0:
                aggregate.fences.pop(self.channel, None)
            else:
                aggregate.fences[self.channel] = self.qty

    # ---- holds (the position side of reservations) -----------------------------------------

    class HoldPlaced(Event):
        reservation_id: str
        channel: str
        order_ref: str
        qty: int
        expires_at: datetime
        # LOT SKUs: [[lot_id, qty], ...] the hold is bound to, in binding (FEFO) order.
        lots: list[list[Any]] | None = field(default=None, kw_only=True)

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.lots is None:
                object.__delattr__(self, "lots")

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            _check(self.reservation_id not in aggregate.holds, "hold placed twice")
            hold: Hold = {
                "channel": self.channel,
                "order_ref": self.order_ref,
                "status": HOLD_ACTIVE,
                "qty": self.qty,
                "shipped": 0,
                "expires_at": self.expires_at,
            }
            if self.lots is not None:
                hold["lots"] = {str(lot_id): int(qty) for lot_id, qty in self.lots}
            book_of(aggregate).place(self.reservation_id, hold)

    class HoldCommitted(Event):
        reservation_id: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            book_of(aggregate).commit(self.reservation_id)

    class HoldReleased(Event):
        """The hold stops counting: released by the caller, or expired (``reason``)."""

        reservation_id: str
        reason: str

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            book_of(aggregate).remove(self.reservation_id)

    # ---- commands (validate first, then trigger: a rejected command changes nothing) -------

    def record(
        self,
        movement: Movement,
        meta: EventMeta,
        lot_expires_at: datetime | None = None,
        *,
        serial_conflicts: list[str] | None = None,
    ) -> None:
        """Record a fact at this position. Facts are never refused for lack of stock.

        ``lot_expires_at``: the lot's ledger-wide expiry as the writer knows it (LOT SKUs).
        ``serial_conflicts``: listed units the serial index could not accept (SERIAL SKUs).
        """
        kind = movement.type
        qty = movement.qty or 0
        fields = {**meta.fields(), **tracking_fields(movement, lot_expires_at)}
        if serial_conflicts:
            fields["serial_conflicts"] = list(serial_conflicts)
        if kind is MovementType.RECEIPT:
            self.trigger_event(
                self.Received, qty=qty, putaway_pending=movement.putaway_pending, **fields
            )
        elif kind is MovementType.PUTAWAY:
            self.trigger_event(self.PutAway, qty=qty, **fields)
        elif kind is MovementType.SHIPMENT:
            self.trigger_event(
                self.Shipped, qty=qty, reservation_id=movement.reservation_id, **fields
            )
        elif kind is MovementType.ADJUSTMENT:
            self.trigger_event(
                self.Adjusted, delta=movement.delta, reason=movement.reason or "", **fields
            )
        elif kind is MovementType.CYCLE_COUNT:
            self.trigger_event(
                self.Counted,
                counted=movement.counted,
                reason=movement.reason or "",
                **fields,
            )
        elif kind is MovementType.QUARANTINE:
            self.trigger_event(self.Quarantined, qty=qty, **fields)
        elif kind is MovementType.QUARANTINE_RELEASE:
            self.trigger_event(self.QuarantineReleased, qty=qty, **fields)
        elif kind is MovementType.DAMAGE:
            from_bucket = (movement.from_bucket or FromBucket.ON_HAND).value
            self.trigger_event(self.Damaged, qty=qty, from_bucket=from_bucket, **fields)
        elif kind is MovementType.WRITE_OFF:
            self.trigger_event(self.WrittenOff, qty=qty, **fields)
        elif kind is MovementType.TRANSFER_DISPATCH:
            self.trigger_event(
                self.TransferDispatched,
                qty=qty,
                transfer_id=movement.transfer_id,
                to_location_id=movement.to_location_id,
                expected_at=movement.expected_at,
                **fields,
            )
        elif kind is MovementType.TRANSFER_RECEIPT:
            self.trigger_event(
                self.TransferReceived,
                qty=qty,
                transfer_id=movement.transfer_id,
                final=movement.final,
                **fields,
            )
        elif kind is MovementType.RETURN_RECEIPT:
            disposition = (movement.disposition or Disposition.RESTOCK).value
            self.trigger_event(self.ReturnReceived, qty=qty, disposition=disposition, **fields)
        else:  # pragma: no cover - MovementType is closed
            raise AssertionError(f"unhandled movement type {kind}")

    def record_inbound_transfer(
        self, movement: Movement, meta: EventMeta, lot_expires_at: datetime | None = None
    ) -> None:
        """The destination leg of ``transfer_dispatch`` (this position is the destination)."""
        _check(movement.type is MovementType.TRANSFER_DISPATCH, "not a dispatch")
        self.trigger_event(
            self.TransferInbound,
            qty=movement.qty,
            transfer_id=movement.transfer_id,
            from_location_id=movement.location_id,
            expected_at=movement.expected_at,
            **meta.fields(),
            **tracking_fields(movement, lot_expires_at),
        )

    def fix_lot_expiry(self, lot_id: str, expires_at: datetime, meta: EventMeta) -> None:
        """The lot's expiry was fixed by a receipt at another location."""
        self.trigger_event(
            self.LotExpiryFixed, lot_id=lot_id, lot_expires_at=expires_at, **meta.fields()
        )

    def set_safety_stock(self, qty: int, meta: EventMeta) -> None:
        _check(qty >= 0, "safety stock must not be negative")
        self.trigger_event(self.SafetyStockSet, qty=qty, **meta.fields())

    def set_channel_fence(self, channel: str, qty: int, meta: EventMeta) -> None:
        """Caller checks :func:`availability.fence_raise_allowed` first."""
        _check(qty >= 0, "fence must not be negative")
        self.trigger_event(self.ChannelFenceSet, channel=channel, qty=qty, **meta.fields())

    def place_hold(
        self,
        reservation_id: str,
        channel: str,
        order_ref: str,
        qty: int,
        expires_at: datetime,
        meta: EventMeta,
        lots: list[tuple[str, int]] | None = None,
    ) -> None:
        """Caller checks ``qty <= available_to(channel)`` across all lines first, and for a
        LOT SKU binds the lots (``lots``, in binding order, adding up to ``qty``)."""
        _check(qty > 0, "hold quantity must be positive")
        extra: dict[str, Any] = {}
        if lots is not None:
            _check(sum(q for _, q in lots) == qty, "lot claims must add up to the hold")
            extra["lots"] = [[lot_id, q] for lot_id, q in lots]
        self.trigger_event(
            self.HoldPlaced,
            reservation_id=reservation_id,
            channel=channel,
            order_ref=order_ref,
            qty=qty,
            expires_at=expires_at,
            **meta.fields(),
            **extra,
        )

    def commit_hold(self, reservation_id: str, meta: EventMeta) -> None:
        self.trigger_event(self.HoldCommitted, reservation_id=reservation_id, **meta.fields())

    def release_hold(self, reservation_id: str, reason: str, meta: EventMeta) -> None:
        self.trigger_event(
            self.HoldReleased, reservation_id=reservation_id, reason=reason, **meta.fields()
        )


def tracking_fields(movement: Movement, lot_expires_at: datetime | None) -> dict[str, Any]:
    """The tracking fields a movement's event carries (none for an untracked SKU)."""
    fields: dict[str, Any] = {}
    if movement.lot_id is not None:
        fields["lot_id"] = movement.lot_id
        if lot_expires_at is not None:
            fields["lot_expires_at"] = lot_expires_at
        stated = movement.expires_at
        if stated is not None and stated != lot_expires_at:
            fields["stated_expires_at"] = stated
    if movement.serial_numbers:
        fields["serial_numbers"] = list(movement.serial_numbers)
    return fields
