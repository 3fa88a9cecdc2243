"""The reservation aggregate: an all-or-nothing hold across positions, with a lifecycle.

ACTIVE → COMMITTED → FULFILLED, ACTIVE|COMMITTED → RELEASED, ACTIVE → EXPIRED (contract §2).
Each line is mirrored by a hold on its position; the application writes both in one
transaction so they never disagree.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from ledger.domain.errors import IllegalTransition, ReservationNotFound
from ledger.domain.position import EventMeta


def parse_reservation_id(reservation_id: str) -> UUID:
    """A caller's reservation id; one that is not a UUID names no reservation."""
    try:
        return UUID(reservation_id)
    except ValueError:
        raise ReservationNotFound(reservation_id) from None


class ReservationStatus(StrEnum):
    ACTIVE = "ACTIVE"
    COMMITTED = "COMMITTED"
    FULFILLED = "FULFILLED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


class Reservation(Aggregate):
    class Event(Aggregate.Event):
        occurred_at: datetime
        recorded_at: datetime
        source: str
        message_id: str
        request_id: str
        correlation_id: str
        actor: str

        def apply(self, aggregate: Any) -> None:
            aggregate.updated_at = self.recorded_at

    class Created(Event, Aggregate.Created):
        channel: str
        order_ref: str
        lines: list[dict[str, Any]]
        expires_at: datetime

    def __init__(
        self,
        channel: str,
        order_ref: str,
        lines: list[dict[str, Any]],
        expires_at: datetime,
        occurred_at: datetime,
        recorded_at: datetime,
        source: str,
        message_id: str,
        request_id: str,
        correlation_id: str,
        actor: str,
    ) -> None:
        self.channel = channel
        self.order_ref = order_ref
        # Copy: events are immutable records, aggregate state is not.
        self.lines = [dict(line, shipped=0) for line in lines]
        self.expires_at = expires_at
        self.created_at = recorded_at
        self.updated_at = recorded_at
        self.status = ReservationStatus.ACTIVE.value

    @classmethod
    def create(
        cls,
        reservation_id: UUID,
        channel: str,
        order_ref: str,
        lines: list[dict[str, Any]],
        expires_at: datetime,
        meta: EventMeta,
    ) -> Reservation:
        """``lines``: ``[{"sku", "location_id", "qty"}]`` with locations already chosen, and
        for LOT SKUs ``"lots": [{"lot_id", "qty", "expires_at"}]`` already bound."""
        return cls._create(
            cls.Created,
            id=reservation_id,
            channel=channel,
            order_ref=order_ref,
            lines=[_line_fields(ln) for ln in lines],
            expires_at=expires_at,
            **meta.fields(),
        )

    class Committed(Event):
        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.status = ReservationStatus.COMMITTED.value

    class Released(Event):
        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.status = ReservationStatus.RELEASED.value

    class Expired(Event):
        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            aggregate.status = ReservationStatus.EXPIRED.value

    class LinesShipped(Event):
        """A shipment at one location consumed ``qty`` of this reservation's open quantity."""

        sku: str
        location_id: str
        qty: int

        def apply(self, aggregate: Any) -> None:
            super().apply(aggregate)
            remaining = self.qty
            for line in aggregate.lines:
                if line["sku"] != self.sku or line["location_id"] != self.location_id:
                    continue
                take = min(remaining, line["qty"] - line["shipped"])
                line["shipped"] += take
                remaining -= take
            if all(line["shipped"] >= line["qty"] for line in aggregate.lines):
                aggregate.status = ReservationStatus.FULFILLED.value

    # ---- queries ------------------------------------------------------------------------------

    def is_expired(self, now: datetime) -> bool:
        """ACTIVE past its expiry counts as expired even before the EXPIRED event exists."""
        return self.status == ReservationStatus.EXPIRED or (
            self.status == ReservationStatus.ACTIVE and now >= self.expires_at
        )

    def effective_status(self, now: datetime) -> ReservationStatus:
        if self.status == ReservationStatus.ACTIVE and now >= self.expires_at:
            return ReservationStatus.EXPIRED
        return ReservationStatus(self.status)

    def open_qty_at(self, sku: str, location_id: str) -> int:
        return sum(
            line["qty"] - line["shipped"]
            for line in self.lines
            if line["sku"] == sku and line["location_id"] == location_id
        )

    def positions(self) -> list[tuple[str, str]]:
        """Distinct (sku, location_id) pairs in a fixed order (sorted: stable lock order)."""
        return sorted({(line["sku"], line["location_id"]) for line in self.lines})

    # ---- commands -----------------------------------------------------------------------------

    def commit(self, now: datetime, meta: EventMeta) -> None:
        if self.effective_status(now) != ReservationStatus.ACTIVE:
            raise IllegalTransition(str(self.id), self.effective_status(now).value, "commit")
        self.trigger_event(self.Committed, **meta.fields())

    def release(self, now: datetime, meta: EventMeta) -> None:
        status = self.effective_status(now)
        if status not in (ReservationStatus.ACTIVE, ReservationStatus.COMMITTED):
            raise IllegalTransition(str(self.id), status.value, "release")
        self.trigger_event(self.Released, **meta.fields())

    def expire(self, now: datetime, meta: EventMeta) -> None:
        if not (self.status == ReservationStatus.ACTIVE and now >= self.expires_at):
            raise IllegalTransition(str(self.id), self.status, "expire")
        self.trigger_event(self.Expired, **meta.fields())

    def record_shipment(self, sku: str, location_id: str, qty: int, meta: EventMeta) -> None:
        self.trigger_event(
            self.LinesShipped, sku=sku, location_id=location_id, qty=qty, **meta.fields()
        )


def _line_fields(line: dict[str, Any]) -> dict[str, Any]:
    fields = {"sku": line["sku"], "location_id": line["location_id"], "qty": line["qty"]}
    if "lots" in line:  # LOT SKUs only: untracked lines are stored as before
        fields["lots"] = [dict(lot) for lot in line["lots"]]
    return fields
