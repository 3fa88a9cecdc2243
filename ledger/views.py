"""Read-side shapes the use cases return; the API layer turns them into protobuf messages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from ledger.domain import availability, lots
from ledger.domain.channel_policy import ChannelPolicy
from ledger.domain.hold_book import book_of
from ledger.domain.item_policy import ItemPolicy
from ledger.domain.position import Position
from ledger.domain.reservation import Reservation
from ledger.domain.serial_unit import SerialUnit


@dataclass(frozen=True)
class HoldView:
    reservation_id: str
    channel: str
    order_ref: str
    status: str
    qty: int
    shipped: int
    expires_at: datetime


@dataclass(frozen=True)
class LotView:
    """One lot's buckets at a position (LOT SKUs); ``available`` is its lot_available(now)."""

    lot_id: str
    expires_at: datetime | None = None
    on_hand: int = 0
    receiving: int = 0
    quarantine: int = 0
    damaged: int = 0
    in_transit_inbound: int = 0
    reserved: int = 0
    allocated: int = 0
    available: int = 0


@dataclass(frozen=True)
class PositionView:
    sku: str
    location_id: str
    on_hand: int = 0
    receiving: int = 0
    quarantine: int = 0
    damaged: int = 0
    in_transit_inbound: int = 0
    reserved: int = 0
    allocated: int = 0
    safety_stock: int = 0
    available: int = 0
    fences: dict[str, int] = field(default_factory=dict)
    version: int = 0
    updated_at: datetime | None = None
    holds: list[HoldView] = field(default_factory=list)
    # Set on policy answers only: the ledger position of the event the call wrote.
    ledger_position: int = 0
    # LOT SKUs: units of expired lots no longer promised, and each lot with a non-zero
    # bucket or hold, in lot_id order.
    expired: int = 0
    lots: list[LotView] = field(default_factory=list)

    @classmethod
    def of(cls, position: Position, now: datetime, *, include_holds: bool) -> PositionView:
        holds = []
        if include_holds:
            holds = [
                HoldView(
                    reservation_id=rid,
                    channel=h["channel"],
                    order_ref=h["order_ref"],
                    status=h["status"],
                    qty=h["qty"],
                    shipped=h["shipped"],
                    expires_at=h["expires_at"],
                )
                for rid, h in sorted(position.holds.items())
                if availability.hold_blocks(h, now)
            ]
        return cls(
            sku=position.sku,
            location_id=position.location_id,
            on_hand=position.on_hand,
            receiving=position.receiving,
            quarantine=position.quarantine,
            damaged=position.damaged,
            in_transit_inbound=position.in_transit_inbound,
            reserved=position.reserved(now),
            allocated=position.allocated(),
            safety_stock=position.safety_stock,
            available=position.available(now),
            fences=dict(position.fences),
            version=position.version,
            updated_at=position.updated_at,
            holds=holds,
            expired=lots.expired_quantity(position, now),
            lots=lot_views(position, now),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PositionView:
        return cls(
            **{
                **data,
                "holds": [HoldView(**h) for h in data.get("holds", [])],
                "lots": [LotView(**lot) for lot in data.get("lots", [])],
            }
        )


def lot_views(position: Any, now: datetime) -> list[LotView]:
    """The lots ``Position.lots[]`` reports: any non-zero bucket or hold, by lot_id."""
    book = book_of(position)
    found = []
    for lot_id, lot in sorted(lots.lots_of(position).items()):
        if not lots.is_visible(position, lot_id, now):
            continue
        found.append(
            LotView(
                lot_id=lot_id,
                expires_at=lot["expires_at"],
                on_hand=lot["on_hand"],
                receiving=lot["receiving"],
                quarantine=lot["quarantine"],
                damaged=lot["damaged"],
                in_transit_inbound=lot["in_transit_inbound"],
                reserved=book.lot_reserved(lot_id, now),
                allocated=book.lot_allocated(lot_id),
                available=lots.lot_available(position, lot_id, now),
            )
        )
    return found


@dataclass(frozen=True)
class LotHoldView:
    """The part of a reservation line bound to one lot (LOT SKUs)."""

    lot_id: str
    qty: int
    expires_at: datetime | None = None


@dataclass(frozen=True)
class ReservationLineView:
    sku: str
    location_id: str
    qty: int
    shipped: int
    lots: list[LotHoldView] = field(default_factory=list)


@dataclass(frozen=True)
class ReservationView:
    reservation_id: str
    channel: str
    order_ref: str
    status: str
    lines: list[ReservationLineView]
    expires_at: datetime
    created_at: datetime
    ledger_position: int = 0

    @classmethod
    def of(
        cls,
        reservation: Reservation,
        now: datetime,
        ledger_position: int = 0,
        expiry_of: Callable[[str, str], datetime | None] | None = None,
    ) -> ReservationView:
        """``expiry_of(sku, lot_id)``: a lot's ledger-wide expiry now, for lots bound while
        they had none (a later receipt may have stated one); without it, as bound."""

        def lot_view(sku: str, lot: dict[str, Any]) -> LotHoldView:
            expires_at = lot["expires_at"]
            if expires_at is None and expiry_of is not None:
                expires_at = expiry_of(sku, lot["lot_id"])
            return LotHoldView(lot["lot_id"], lot["qty"], expires_at)

        return cls(
            reservation_id=str(reservation.id),
            channel=reservation.channel,
            order_ref=reservation.order_ref,
            status=reservation.effective_status(now).value,
            lines=[
                ReservationLineView(
                    ln["sku"],
                    ln["location_id"],
                    ln["qty"],
                    ln["shipped"],
                    [lot_view(ln["sku"], lot) for lot in ln.get("lots", ())],
                )
                for ln in reservation.lines
            ],
            expires_at=reservation.expires_at,
            created_at=reservation.created_at,
            ledger_position=ledger_position,
        )

    def to_dict(self) -> dict[str, Any]:
        # What dataclasses.asdict gives, without its deep copies (every reservation's result
        # is remembered with its idempotency key, on the writer's turn; values are immutable).
        return {
            "reservation_id": self.reservation_id,
            "channel": self.channel,
            "order_ref": self.order_ref,
            "status": self.status,
            "lines": [_line_dict(ln) for ln in self.lines],
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "ledger_position": self.ledger_position,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReservationView:
        return cls(
            **{
                **data,
                "lines": [
                    ReservationLineView(
                        **{
                            **ln,
                            "lots": [LotHoldView(**lot) for lot in ln.get("lots", [])],
                        }
                    )
                    for ln in data["lines"]
                ],
            }
        )


def _line_dict(line: ReservationLineView) -> dict[str, Any]:
    return {
        "sku": line.sku,
        "location_id": line.location_id,
        "qty": line.qty,
        "shipped": line.shipped,
        "lots": [
            {"lot_id": lot.lot_id, "qty": lot.qty, "expires_at": lot.expires_at}
            for lot in line.lots
        ],
    }


@dataclass(frozen=True)
class MovementResultView:
    source: str
    message_id: str
    outcome: str  # "RECORDED" | "DUPLICATE" (ingest also: "REUSED", "INVALID")
    ledger_position: int
    # INVALID only: the field at fault and why (the dead letter's field and description).
    field: str = ""
    description: str = ""


@dataclass(frozen=True)
class ChannelPolicyView:
    channel: str
    eligible_location_ids: list[str]
    share_percent: int
    buffer: int
    max_publish: int
    version: int
    # Set on SetChannelPolicy answers: the ledger position of the event the call wrote.
    ledger_position: int = 0

    @classmethod
    def of(cls, policy: ChannelPolicy) -> ChannelPolicyView:
        return cls(
            policy.channel,
            list(policy.eligible_location_ids),
            policy.share_percent,
            policy.buffer,
            policy.max_publish,
            policy.version,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelPolicyView:
        return cls(**data)


@dataclass(frozen=True)
class ItemPolicyView:
    sku: str
    tracking: str = "NONE"
    version: int = 0
    # Set on SetItemPolicy answers: the ledger position of the event the call wrote.
    ledger_position: int = 0

    @classmethod
    def of(cls, policy: ItemPolicy) -> ItemPolicyView:
        # The aggregate's version counts its Created event too; the answer counts the sets.
        return cls(policy.sku, str(policy.tracking), policy.version - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemPolicyView:
        return cls(**data)


@dataclass(frozen=True)
class SerialStepView:
    """One step of a unit's history: the movement, and the unit's state after it."""

    type: str
    location_id: str
    bucket: str
    status: str
    order_ref: str
    source: str
    message_id: str
    occurred_at: datetime
    recorded_at: datetime


@dataclass(frozen=True)
class SerialUnitView:
    sku: str
    serial_number: str
    location_id: str
    bucket: str
    status: str  # IN_STOCK | IN_TRANSIT | SHIPPED | WRITTEN_OFF
    order_ref: str
    history: list[SerialStepView]

    @classmethod
    def of(cls, unit: SerialUnit) -> SerialUnitView:
        return cls(
            sku=unit.sku,
            serial_number=unit.serial_number,
            location_id=unit.location_id,
            bucket=unit.bucket,
            status=unit.status,
            order_ref=unit.order_ref,
            history=[SerialStepView(**step) for step in unit.history],
        )


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_after: Any | None
