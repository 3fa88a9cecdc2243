"""Protobuf ↔ domain: pull plain values out of requests, build messages from views."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2
from inventory.ledger.v1 import (
    audit_service_pb2,
    availability_pb2,
    channel_policy_pb2,
    item_policy_pb2,
    movement_pb2,
    movement_service_pb2,
    position_pb2,
    reservation_pb2,
    serial_pb2,
)
from pydantic import BaseModel, ValidationError

from entrypoints.grpc.errors import InvalidRequest
from ledger.audit.entries import LedgerEntryView
from ledger.domain import chain
from ledger.inputs import OUT_OF_RANGE_TIMESTAMP, field_violations
from ledger.views import (
    ChannelPolicyView,
    ItemPolicyView,
    MovementResultView,
    PositionView,
    ReservationView,
    SerialUnitView,
)
from projections.availability import AvailabilityView
from projections.position_state import LedgerExceptionRecord
from projections.queries import InTransitView
from projections.watch import AvailabilityChangeView

M = TypeVar("M", bound=BaseModel)

# google.protobuf.Duration's own range (about 10,000 years).
DURATION_SECONDS_MAX = 315_576_000_000


def validate(model: type[M], values: dict[str, Any]) -> M:
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise InvalidRequest(field_violations(error)) from None


def validate_request(
    model: type[M], request: Any, fields: str, values: dict[str, Any] | None = None
) -> M:
    """``model`` from the request's ``fields`` (space-separated names, the same in both) and
    the ``values`` converted by the caller (timestamps, repeated fields, ...)."""
    return validate(
        model, {**{name: getattr(request, name) for name in fields.split()}, **(values or {})}
    )


def _enum_value(enum_type: Any, number: int, prefix: str) -> str:
    """Proto enum number → the contract's lowercase name ("" for UNSPECIFIED or unknown numbers)."""
    try:
        name = enum_type.Name(number)
    except ValueError:
        return f"<unknown {number}>"
    return "" if name.endswith("_UNSPECIFIED") else name.removeprefix(prefix).lower()


def timestamp(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, field)
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        # Fails validation below, reported under the field's own path. The sentinel is not a
        # datetime on purpose (pydantic rejects it as one), hence the ignore.
        return OUT_OF_RANGE_TIMESTAMP  # type: ignore[return-value]


def duration(message: Any, field: str) -> timedelta | None:
    if not message.HasField(field):
        return None
    value: duration_pb2.Duration = getattr(message, field)
    mixed_signs = (value.seconds > 0 and value.nanos < 0) or (value.seconds < 0 and value.nanos > 0)
    if (
        mixed_signs
        or abs(value.nanos) >= 1_000_000_000
        or abs(value.seconds) > DURATION_SECONDS_MAX
    ):
        raise InvalidRequest([(field, "not a valid google.protobuf.Duration")])
    return timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def movement_values(m: movement_pb2.Movement) -> dict[str, Any]:
    values: dict[str, Any] = {
        "message_id": m.message_id,
        "source": m.source,
        "type": _enum_value(movement_pb2.MovementType, m.type, "MOVEMENT_TYPE_"),
        "sku": m.sku,
        "location_id": m.location_id,
        "uom": m.uom,
        "reservation_id": m.reservation_id,
        "transfer_id": m.transfer_id,
        "to_location_id": m.to_location_id,
        "reason": m.reason,
        "putaway_pending": m.putaway_pending,
        "final": m.final,
        "occurred_at": timestamp(m, "occurred_at"),
        "expected_at": timestamp(m, "expected_at"),
        # proto3 cannot tell "" or [] from unset: both mean absent, as on ingest.
        "lot_id": m.lot_id,
        "expires_at": timestamp(m, "expires_at"),
        "serial_numbers": list(m.serial_numbers),
    }
    for name in ("qty", "delta", "counted"):
        if m.HasField(name):
            values[name] = getattr(m, name)
    if m.disposition:
        values["disposition"] = _enum_value(movement_pb2.Disposition, m.disposition, "DISPOSITION_")
    if m.from_bucket:
        values["from_bucket"] = _enum_value(movement_pb2.FromBucket, m.from_bucket, "FROM_BUCKET_")
    return values


# ---- responses ----


def to_timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def position_message(view: PositionView) -> position_pb2.Position:
    return position_pb2.Position(
        sku=view.sku,
        location_id=view.location_id,
        on_hand=view.on_hand,
        receiving=view.receiving,
        quarantine=view.quarantine,
        damaged=view.damaged,
        in_transit_inbound=view.in_transit_inbound,
        reserved=view.reserved,
        allocated=view.allocated,
        safety_stock=view.safety_stock,
        available=view.available,
        fences=view.fences,
        version=view.version,
        updated_at=to_timestamp(view.updated_at),
        holds=[
            position_pb2.Hold(
                reservation_id=h.reservation_id,
                channel=h.channel,
                order_ref=h.order_ref,
                status=f"RESERVATION_STATUS_{h.status}",
                qty=h.qty,
                shipped=h.shipped,
                expires_at=to_timestamp(h.expires_at),
            )
            for h in view.holds
        ],
        ledger_position=view.ledger_position,
        expired=view.expired,
        lots=[
            position_pb2.LotBuckets(
                lot_id=lot.lot_id,
                expires_at=to_timestamp(lot.expires_at),
                on_hand=lot.on_hand,
                receiving=lot.receiving,
                quarantine=lot.quarantine,
                damaged=lot.damaged,
                in_transit_inbound=lot.in_transit_inbound,
                reserved=lot.reserved,
                allocated=lot.allocated,
                available=lot.available,
            )
            for lot in view.lots
        ],
    )


def reservation_message(view: ReservationView) -> reservation_pb2.Reservation:
    return reservation_pb2.Reservation(
        reservation_id=view.reservation_id,
        channel=view.channel,
        order_ref=view.order_ref,
        status=f"RESERVATION_STATUS_{view.status}",
        lines=[
            reservation_pb2.ReservationLine(
                sku=ln.sku,
                location_id=ln.location_id,
                qty=ln.qty,
                shipped=ln.shipped,
                lots=[
                    reservation_pb2.LotHold(
                        lot_id=lot.lot_id, qty=lot.qty, expires_at=to_timestamp(lot.expires_at)
                    )
                    for lot in ln.lots
                ],
            )
            for ln in view.lines
        ],
        expires_at=to_timestamp(view.expires_at),
        created_at=to_timestamp(view.created_at),
        ledger_position=view.ledger_position,
    )


def movement_result_message(view: MovementResultView) -> movement_service_pb2.MovementResult:
    return movement_service_pb2.MovementResult(
        source=view.source,
        message_id=view.message_id,
        outcome=f"MOVEMENT_OUTCOME_{view.outcome}",
        ledger_position=view.ledger_position,
    )


def channel_policy_message(view: ChannelPolicyView) -> channel_policy_pb2.ChannelPolicy:
    return channel_policy_pb2.ChannelPolicy(
        channel=view.channel,
        eligible_location_ids=view.eligible_location_ids,
        share_percent=view.share_percent,
        buffer=view.buffer,
        max_publish=view.max_publish,
        version=view.version,
        ledger_position=view.ledger_position,
    )


def item_tracking(number: int) -> str:
    """ItemTracking number -> "" (UNSPECIFIED), "none", "lot", "serial" or "<unknown n>"."""
    return _enum_value(item_policy_pb2.ItemTracking, number, "ITEM_TRACKING_")


def item_policy_message(view: ItemPolicyView) -> item_policy_pb2.ItemPolicy:
    return item_policy_pb2.ItemPolicy(
        sku=view.sku,
        tracking=f"ITEM_TRACKING_{view.tracking}",  # the enum value by its name
        version=view.version,
        ledger_position=view.ledger_position,
    )


def serial_unit_message(view: SerialUnitView) -> serial_pb2.SerialUnit:
    return serial_pb2.SerialUnit(
        sku=view.sku,
        serial_number=view.serial_number,
        location_id=view.location_id,
        bucket=view.bucket,
        status=f"SERIAL_STATUS_{view.status}",  # the enum value by its name
        order_ref=view.order_ref,
        history=[
            serial_pb2.SerialStep(
                type=step.type,
                location_id=step.location_id,
                bucket=step.bucket,
                status=f"SERIAL_STATUS_{step.status}",
                order_ref=step.order_ref,
                source=step.source,
                message_id=step.message_id,
                occurred_at=to_timestamp(step.occurred_at),
                recorded_at=to_timestamp(step.recorded_at),
            )
            for step in view.history
        ],
    )


def availability_message(view: AvailabilityView) -> availability_pb2.Availability:
    return availability_pb2.Availability(
        sku=view.sku,
        channel=view.channel,
        channel_available=view.channel_available,
        network_available=view.network_available,
        locations=[
            availability_pb2.LocationAvailability(
                location_id=f.location_id,
                available_to=f.available_to,
                eligible=f.eligible,
                projected_available=f.projected_available,
            )
            for f in view.locations
        ],
        projection_position=view.projection_position,
        projected_available=view.projected_available,
    )


def in_transit_message(view: InTransitView) -> availability_pb2.InTransitTransfer:
    return availability_pb2.InTransitTransfer(
        transfer_id=view.transfer_id,
        sku=view.sku,
        from_location_id=view.from_location_id,
        to_location_id=view.to_location_id,
        dispatched=view.dispatched,
        received=view.received,
        dispatched_at=to_timestamp(view.dispatched_at),
        expected_at=to_timestamp(view.expected_at),
        lot_id=view.lot_id,
    )


def exception_message(record: LedgerExceptionRecord) -> availability_pb2.LedgerException:
    return availability_pb2.LedgerException(
        ledger_position=record.ledger_position,
        type=f"EXCEPTION_TYPE_{record.type}",
        sku=record.sku,
        location_id=record.location_id,
        bucket=record.bucket,
        quantity=record.quantity,
        detail=record.detail,
        source=record.source,
        message_id=record.message_id,
        occurred_at=to_timestamp(record.occurred_at),
        recorded_at=to_timestamp(record.recorded_at),
    )


def change_message(change: AvailabilityChangeView) -> availability_pb2.AvailabilityChange:
    return availability_pb2.AvailabilityChange(
        sku=change.sku,
        channel=change.channel,
        channel_available=change.channel_available,
        previous_channel_available=change.previous_channel_available,
        projection_position=change.projection_position,
        changed_at=to_timestamp(change.changed_at),
        initial=change.initial,
    )


def ledger_entry_message(entry: LedgerEntryView) -> audit_service_pb2.LedgerEntry:
    data = entry.data
    disposition = data.get("disposition")
    from_bucket = data.get("from_bucket")
    return audit_service_pb2.LedgerEntry(
        position=entry.position,
        ledger_position=entry.ledger_position,
        sku=entry.sku,
        location_id=entry.location_id,
        version=entry.version,
        type="ENTRY_TYPE_" + entry.type.upper(),
        qty=data.get("qty") or 0,
        delta=data.get("delta") or 0,
        counted=data.get("counted") or 0,
        occurred_at=to_timestamp(entry.occurred_at),
        recorded_at=to_timestamp(entry.recorded_at),
        source=entry.source,
        message_id=entry.message_id,
        request_id=entry.request_id,
        correlation_id=entry.correlation_id,
        actor=entry.actor,
        hash=entry.hash,
        reservation_id=data.get("reservation_id") or "",
        transfer_id=data.get("transfer_id") or "",
        to_location_id=data.get("to_location_id") or "",
        from_location_id=data.get("from_location_id") or "",
        expected_at=to_timestamp(data.get("expected_at")),
        reason=data.get("reason") or "",
        disposition=("DISPOSITION_" + disposition.upper() if disposition else None),
        from_bucket=("FROM_BUCKET_" + from_bucket.upper() if from_bucket else None),
        putaway_pending=bool(data.get("putaway_pending")),
        final=bool(data.get("final")),
        channel=data.get("channel") or "",
        order_ref=data.get("order_ref") or "",
        expires_at=to_timestamp(data.get("expires_at")),
        null_fields=_null_fields(entry),
        data_fields=sorted(data),
        lot_id=data.get("lot_id") or "",
        serial_numbers=data.get("serial_numbers") or (),
        serial_conflicts=data.get("serial_conflicts") or (),
        lot_expires_at=to_timestamp(data.get("lot_expires_at")),
        stated_expires_at=to_timestamp(data.get("stated_expires_at")),
        lots=[
            audit_service_pb2.LedgerEntryLot(lot_id=lot_id, qty=qty)
            for lot_id, qty in data.get("lots") or ()
        ],
    )


def _null_fields(entry: LedgerEntryView) -> list[str]:
    """The hashed fields stored as null: proto3 strings cannot say null, and an auditor who
    rebuilds the hash from the stream must know null from "" (docs/audit.md)."""
    meta = {name: getattr(entry, name) for name in chain.META_FIELDS}
    return sorted(name for name, value in {**meta, **entry.data}.items() if value is None)
