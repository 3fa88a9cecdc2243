"""Request messages of every method, built the same way for the sync and asyncio clients."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

from inventory.ledger.v1 import (
    audit_service_pb2,
    availability_pb2,
    item_policy_pb2,
    movement_pb2,
    movement_service_pb2,
    policy_service_pb2,
    query_service_pb2,
    reservation_service_pb2,
)

from inventory_ledger_client._core import duration, enum_value, timestamp

LineSpec = reservation_service_pb2.ReserveLine | tuple[str, int] | tuple[str, str, int]


def line(
    sku: str,
    qty: int,
    location_id: str = "",
    *,
    lot_id: str = "",
    min_expires_at: dt.datetime | None = None,
) -> reservation_service_pb2.ReserveLine:
    """One reservation line; an empty ``location_id`` lets the service choose.

    LOT SKUs: ``lot_id`` binds exactly that lot, ``min_expires_at`` (timezone-aware) only lots
    expiring strictly after it; without them the earliest-expiring lots are taken.
    """
    return reservation_service_pb2.ReserveLine(
        sku=sku,
        location_id=location_id,
        qty=qty,
        lot_id=lot_id,
        min_expires_at=timestamp(min_expires_at),
    )


def _line(spec: LineSpec) -> reservation_service_pb2.ReserveLine:
    if isinstance(spec, reservation_service_pb2.ReserveLine):
        return spec
    if len(spec) == 2:
        sku, qty = spec
        return line(sku, qty)
    sku, location_id, qty = spec
    return line(sku, qty, location_id)


def movement(
    type: int | str,
    *,
    source: str,
    sku: str,
    location_id: str,
    message_id: str | None = None,
    occurred_at: dt.datetime | None = None,
    expected_at: dt.datetime | None = None,
    expires_at: dt.datetime | None = None,
    **fields: Any,
) -> movement_pb2.Movement:
    """A ``Movement``: ``movement("receipt", source="wms-east", sku=..., location_id=..., qty=12)``.

    ``type`` is ``"receipt"``, ``"MOVEMENT_TYPE_RECEIPT"`` or the enum number. Without
    ``message_id`` a UUID is used: the message is idempotent on ``(source, message_id)``, so pass
    the id of the fact in your own system when the same fact may be sent twice.
    ``disposition`` and ``from_bucket`` take names too (``disposition="restock"``).
    Tracked SKUs: ``lot_id="L7"`` (with ``expires_at`` on a receipt or return) or
    ``serial_numbers=[...]``, one per unit.
    """
    if "disposition" in fields and isinstance(fields["disposition"], str):
        fields["disposition"] = enum_value(
            fields["disposition"], "DISPOSITION_", movement_pb2.Disposition
        )
    if "from_bucket" in fields and isinstance(fields["from_bucket"], str):
        fields["from_bucket"] = enum_value(
            fields["from_bucket"], "FROM_BUCKET_", movement_pb2.FromBucket
        )
    return movement_pb2.Movement(
        type=enum_value(type, "MOVEMENT_TYPE_", movement_pb2.MovementType),
        source=source,
        sku=sku,
        location_id=location_id,
        message_id=message_id or uuid.uuid4().hex,
        occurred_at=timestamp(occurred_at),
        expected_at=timestamp(expected_at),
        expires_at=timestamp(expires_at),
        **fields,
    )


# ---- ReservationService ----------------------------------------------------------------------


def reserve(
    request_id: str,
    channel: str,
    lines: Iterable[LineSpec],
    *,
    order_ref: str,
    ttl: float | dt.timedelta | None,
    allow_split: bool,
) -> reservation_service_pb2.ReserveRequest:
    return reservation_service_pb2.ReserveRequest(
        request_id=request_id,
        channel=channel,
        order_ref=order_ref,
        lines=[_line(spec) for spec in lines],
        ttl=duration(ttl),
        allow_split=allow_split,
    )


def get_reservation(
    reservation_id: str, channel: str
) -> reservation_service_pb2.GetReservationRequest:
    return reservation_service_pb2.GetReservationRequest(
        reservation_id=reservation_id, channel=channel
    )


def commit(
    request_id: str, reservation_id: str, channel: str
) -> reservation_service_pb2.CommitRequest:
    return reservation_service_pb2.CommitRequest(
        request_id=request_id, reservation_id=reservation_id, channel=channel
    )


def release(
    request_id: str, reservation_id: str, channel: str
) -> reservation_service_pb2.ReleaseRequest:
    return reservation_service_pb2.ReleaseRequest(
        request_id=request_id, reservation_id=reservation_id, channel=channel
    )


def list_reservations(
    channel: str, order_ref: str, page_size: int, page_token: str
) -> reservation_service_pb2.ListReservationsRequest:
    return reservation_service_pb2.ListReservationsRequest(
        channel=channel, order_ref=order_ref, page_size=page_size, page_token=page_token
    )


# ---- InventoryQueryService -------------------------------------------------------------------


def get_position(
    sku: str, location_id: str, include_holds: bool
) -> query_service_pb2.GetPositionRequest:
    return query_service_pb2.GetPositionRequest(
        sku=sku, location_id=location_id, include_holds=include_holds
    )


def get_serial(sku: str, serial_number: str) -> query_service_pb2.GetSerialRequest:
    return query_service_pb2.GetSerialRequest(sku=sku, serial_number=serial_number)


def list_positions(
    sku: str, location_id: str, include_holds: bool, page_size: int, page_token: str
) -> query_service_pb2.ListPositionsRequest:
    return query_service_pb2.ListPositionsRequest(
        sku=sku,
        location_id=location_id,
        include_holds=include_holds,
        page_size=page_size,
        page_token=page_token,
    )


def get_availability(
    sku: str,
    channel: str,
    consistency: int | str,
    min_position: int,
    horizon: dt.datetime | None,
) -> query_service_pb2.GetAvailabilityRequest:
    return query_service_pb2.GetAvailabilityRequest(
        sku=sku,
        channel=channel,
        consistency=enum_value(consistency, "CONSISTENCY_", availability_pb2.Consistency),
        min_position=min_position,
        horizon=timestamp(horizon),
    )


def watch_availability(
    channel: str, skus: Iterable[str]
) -> query_service_pb2.WatchAvailabilityRequest:
    return query_service_pb2.WatchAvailabilityRequest(channel=channel, skus=list(skus))


def list_in_transit(
    sku: str, to_location_id: str, page_size: int, page_token: str
) -> query_service_pb2.ListInTransitRequest:
    return query_service_pb2.ListInTransitRequest(
        sku=sku, to_location_id=to_location_id, page_size=page_size, page_token=page_token
    )


def list_exceptions(
    type: int | str,
    sku: str,
    location_id: str,
    page_size: int,
    page_token: str,
    expiring_within: float | dt.timedelta | None = None,
) -> query_service_pb2.ListExceptionsRequest:
    return query_service_pb2.ListExceptionsRequest(
        type=enum_value(type, "EXCEPTION_TYPE_", availability_pb2.ExceptionType),
        sku=sku,
        location_id=location_id,
        page_size=page_size,
        page_token=page_token,
        expiring_within=duration(expiring_within),
    )


# ---- MovementService / PolicyService ---------------------------------------------------------


def record_movements(
    movements: Iterable[movement_pb2.Movement],
) -> movement_service_pb2.RecordMovementsRequest:
    return movement_service_pb2.RecordMovementsRequest(movements=list(movements))


def set_safety_stock(
    request_id: str, sku: str, location_id: str, qty: int
) -> policy_service_pb2.SetSafetyStockRequest:
    return policy_service_pb2.SetSafetyStockRequest(
        request_id=request_id, sku=sku, location_id=location_id, qty=qty
    )


def set_channel_fence(
    request_id: str, sku: str, location_id: str, channel: str, qty: int
) -> policy_service_pb2.SetChannelFenceRequest:
    return policy_service_pb2.SetChannelFenceRequest(
        request_id=request_id, sku=sku, location_id=location_id, channel=channel, qty=qty
    )


def set_channel_policy(
    request_id: str,
    channel: str,
    eligible_location_ids: Iterable[str],
    share_percent: int,
    buffer: int,
    max_publish: int,
) -> policy_service_pb2.SetChannelPolicyRequest:
    return policy_service_pb2.SetChannelPolicyRequest(
        request_id=request_id,
        channel=channel,
        eligible_location_ids=list(eligible_location_ids),
        share_percent=share_percent,
        buffer=buffer,
        max_publish=max_publish,
    )


def set_item_policy(
    request_id: str, sku: str, tracking: int | str
) -> policy_service_pb2.SetItemPolicyRequest:
    return policy_service_pb2.SetItemPolicyRequest(
        request_id=request_id,
        sku=sku,
        tracking=enum_value(tracking, "ITEM_TRACKING_", item_policy_pb2.ItemTracking),
    )


def get_item_policy(sku: str) -> policy_service_pb2.GetItemPolicyRequest:
    return policy_service_pb2.GetItemPolicyRequest(sku=sku)


# ---- AuditService ----------------------------------------------------------------------------


def get_position_as_of(
    sku: str,
    location_id: str,
    as_of: dt.datetime,
    axis: int | str,
    known_at: dt.datetime | None,
    include_holds: bool,
) -> audit_service_pb2.GetPositionAsOfRequest:
    return audit_service_pb2.GetPositionAsOfRequest(
        sku=sku,
        location_id=location_id,
        as_of=timestamp(as_of),
        axis=enum_value(axis, "AXIS_", audit_service_pb2.Axis),
        known_at=timestamp(known_at),
        include_holds=include_holds,
    )


def list_movements(
    sku: str,
    location_id: str,
    axis: int | str,
    start: dt.datetime | None,
    end: dt.datetime | None,
    page_size: int,
    page_token: str,
) -> audit_service_pb2.ListMovementsRequest:
    request = audit_service_pb2.ListMovementsRequest(
        sku=sku,
        location_id=location_id,
        axis=enum_value(axis, "AXIS_", audit_service_pb2.Axis),
        page_size=page_size,
        page_token=page_token,
    )
    # ``from`` is a Python keyword: set the window through the message API.
    start_at, end_at = timestamp(start), timestamp(end)
    if start_at is not None:
        getattr(request, "from").CopyFrom(start_at)
    if end_at is not None:
        request.to.CopyFrom(end_at)
    return request


def trace_lot(
    sku: str, lot_id: str, as_of: dt.datetime | None, page_size: int, page_token: str
) -> audit_service_pb2.TraceLotRequest:
    return audit_service_pb2.TraceLotRequest(
        sku=sku,
        lot_id=lot_id,
        as_of=timestamp(as_of),
        page_size=page_size,
        page_token=page_token,
    )


def stream_ledger(from_position: int, follow: bool) -> audit_service_pb2.StreamLedgerRequest:
    return audit_service_pb2.StreamLedgerRequest(from_position=from_position, follow=follow)


def resume_ledger(
    request: audit_service_pb2.StreamLedgerRequest, entry: audit_service_pb2.LedgerEntry
) -> audit_service_pb2.StreamLedgerRequest:
    """The request that continues a ledger stream after ``entry`` (positions have no gaps)."""
    return audit_service_pb2.StreamLedgerRequest(
        from_position=entry.position, follow=request.follow
    )


def verify_ledger(sku: str, location_id: str) -> audit_service_pb2.VerifyLedgerRequest:
    return audit_service_pb2.VerifyLedgerRequest(sku=sku, location_id=location_id)
