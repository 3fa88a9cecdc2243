"""One serial-tracked unit (contract §2 "Serials"): where it is, and its history.

The serial index is one aggregate per (SKU, serial number), written in the same unit of work
as the movement that moves the unit. Two replicas receiving the same serial at once both
write its next version: one commit wins, the other conflicts and re-runs, and the re-run
sees the winner's state (so the second receipt is recorded as a SERIAL_CONFLICT).

What a movement does to a unit is the pure function :func:`serial_after`, so the rules can
be tested without a store. Each step's event records the unit's state after it (status,
location, bucket, order_ref) with the movement's type and provenance; the events are the
unit's history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from ledger.domain.movements import Disposition, FromBucket, Movement, MovementType

SERIAL_NAMESPACE = UUID("3c9e2b51-7d04-4e8a-b6f1-0a5d8c2e9f43")

# The destination bucket that counts a unit in transit towards it.
IN_TRANSIT_BUCKET = "in_transit_inbound"


class SerialStatus(StrEnum):
    IN_STOCK = "IN_STOCK"
    IN_TRANSIT = "IN_TRANSIT"
    SHIPPED = "SHIPPED"
    WRITTEN_OFF = "WRITTEN_OFF"


# Statuses in which a serial number is "in stock" for the one-unit-per-serial rule.
IN_STOCK_ANYWHERE = (SerialStatus.IN_STOCK, SerialStatus.IN_TRANSIT)


def serial_unit_id(sku: str, serial_number: str) -> UUID:
    return uuid5(SERIAL_NAMESPACE, f"{len(sku)}:{sku}|{serial_number}")


@dataclass(frozen=True)
class SerialState:
    """Where a unit is. ``location_id``: the location holding it (IN_STOCK), the one it
    travels to (IN_TRANSIT) or the one it left from (SHIPPED, WRITTEN_OFF). ``bucket``:
    its bucket there (IN_TRANSIT: the destination's in_transit_inbound; gone: empty)."""

    status: SerialStatus
    location_id: str
    bucket: str
    order_ref: str = ""


def serial_after(
    movement: Movement, current: SerialState | None, order_ref: str = ""
) -> SerialState | None:
    """The unit's state after ``movement`` lists it, or None when the index cannot accept
    the movement for this unit (a SERIAL_CONFLICT: the unit's entry stays as it was).

    ``current``: the unit's state before (None: never seen). ``order_ref``: a shipment's
    order, from the reservation it ships against. A state equal to ``current`` means the
    movement leaves the unit where it is (a cycle count listing a unit already here).
    """
    here = movement.location_id
    kind = movement.type

    def in_stock_here(bucket: str) -> bool:
        return (
            current is not None
            and current.status is SerialStatus.IN_STOCK
            and current.location_id == here
            and current.bucket == bucket
        )

    def arrive(bucket: str) -> SerialState | None:
        if current is not None and current.status in IN_STOCK_ANYWHERE:
            return None
        return SerialState(SerialStatus.IN_STOCK, here, bucket)

    def move(source: str, target: str) -> SerialState | None:
        return SerialState(SerialStatus.IN_STOCK, here, target) if in_stock_here(source) else None

    def leave(source: str, status: SerialStatus, ref: str = "") -> SerialState | None:
        return SerialState(status, here, "", ref) if in_stock_here(source) else None

    if kind is MovementType.RECEIPT:
        return arrive("receiving" if movement.putaway_pending else "on_hand")
    if kind is MovementType.RETURN_RECEIPT:
        disposition = movement.disposition or Disposition.RESTOCK
        return arrive(
            {Disposition.QUARANTINE: "quarantine", Disposition.DAMAGED: "damaged"}.get(
                disposition, "on_hand"
            )
        )
    if kind is MovementType.ADJUSTMENT:
        if (movement.delta or 0) > 0:
            return arrive("on_hand")
        # A unit taken out by a negative adjustment is written off (decisions.md).
        return leave("on_hand", SerialStatus.WRITTEN_OFF)
    if kind is MovementType.PUTAWAY:
        return move("receiving", "on_hand")
    if kind is MovementType.QUARANTINE:
        return move("on_hand", "quarantine")
    if kind is MovementType.QUARANTINE_RELEASE:
        return move("quarantine", "on_hand")
    if kind is MovementType.DAMAGE:
        source = "quarantine" if movement.from_bucket is FromBucket.QUARANTINE else "on_hand"
        return move(source, "damaged")
    if kind is MovementType.SHIPMENT:
        return leave("on_hand", SerialStatus.SHIPPED, order_ref)
    if kind is MovementType.WRITE_OFF:
        return leave("damaged", SerialStatus.WRITTEN_OFF)
    if kind is MovementType.TRANSFER_DISPATCH:
        if not in_stock_here("on_hand"):
            return None
        return SerialState(
            SerialStatus.IN_TRANSIT, movement.to_location_id or "", IN_TRANSIT_BUCKET
        )
    if kind is MovementType.TRANSFER_RECEIPT:
        if (
            current is None
            or current.status is not SerialStatus.IN_TRANSIT
            or current.location_id != here
        ):
            return None
        return SerialState(SerialStatus.IN_STOCK, here, "on_hand")
    if kind is MovementType.CYCLE_COUNT:
        # Counted here: a unit already in stock here stays where it is; one in stock
        # nowhere is found here (on_hand); one in stock elsewhere is a conflict.
        if current is not None and current.status is SerialStatus.IN_STOCK:
            return current if current.location_id == here else None
        return arrive("on_hand")
    raise AssertionError(f"unhandled movement type {kind}")  # pragma: no cover


class SerialUnit(Aggregate):
    class Created(Aggregate.Created):
        sku: str
        serial_number: str

    class Moved(Aggregate.Event):
        """One step of the unit's history: the movement and the unit's state after it."""

        movement_type: str
        status: str
        location_id: str
        bucket: str
        order_ref: str
        source: str
        message_id: str
        occurred_at: datetime
        recorded_at: datetime

        def apply(self, aggregate: Any) -> None:
            aggregate.status = self.status  # plain str: the state stays transcodable
            aggregate.location_id = self.location_id
            aggregate.bucket = self.bucket
            aggregate.order_ref = self.order_ref
            aggregate.history.append(
                {
                    "type": self.movement_type,
                    "status": self.status,
                    "location_id": self.location_id,
                    "bucket": self.bucket,
                    "order_ref": self.order_ref,
                    "source": self.source,
                    "message_id": self.message_id,
                    "occurred_at": self.occurred_at,
                    "recorded_at": self.recorded_at,
                }
            )

    @staticmethod
    def create_id(sku: str, serial_number: str) -> UUID:
        return serial_unit_id(sku, serial_number)

    def __init__(self, sku: str, serial_number: str) -> None:
        self.sku = sku
        self.serial_number = serial_number
        self.status = ""  # empty only before its first step
        self.location_id = ""
        self.bucket = ""
        self.order_ref = ""
        self.history: list[dict[str, Any]] = []

    @classmethod
    def first_seen(cls, sku: str, serial_number: str) -> SerialUnit:
        return cls._create(cls.Created, sku=sku, serial_number=serial_number)

    @property
    def state(self) -> SerialState | None:
        if not self.status:
            return None
        return SerialState(SerialStatus(self.status), self.location_id, self.bucket, self.order_ref)

    def step(
        self,
        movement_type: str,
        after: SerialState,
        *,
        source: str,
        message_id: str,
        occurred_at: datetime,
        recorded_at: datetime,
    ) -> None:
        self.trigger_event(
            self.Moved,
            movement_type=movement_type,
            status=after.status.value,
            location_id=after.location_id,
            bucket=after.bucket,
            order_ref=after.order_ref,
            source=source,
            message_id=message_id,
            occurred_at=occurred_at,
            recorded_at=recorded_at,
        )
