"""The requests the load generator sends, serialised once up front.

Workers call methods with bytes in and bytes out (no per-call protobuf work on the client),
so the client side stays cheap; only the calls whose outcome matters for a check carry a
quantity (``qty_of``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from inventory.ledger.v1 import (
    audit_service_pb2,
    movement_pb2,
    movement_service_pb2,
    query_service_pb2,
    reservation_service_pb2,
)

ECHO_METHOD = "/bench.Echo/Echo"


def _path(module: Any, service: str, method: str) -> str:
    full = module.DESCRIPTOR.services_by_name[service].methods_by_name[method].full_name
    package_service, name = full.rsplit(".", 1)
    return f"/{package_service}/{name}"


RESERVE = _path(reservation_service_pb2, "ReservationService", "Reserve")
RECORD_MOVEMENTS = _path(movement_service_pb2, "MovementService", "RecordMovements")
GET_POSITION = _path(query_service_pb2, "InventoryQueryService", "GetPosition")
GET_POSITION_AS_OF = _path(audit_service_pb2, "AuditService", "GetPositionAsOf")
GET_AVAILABILITY = _path(query_service_pb2, "InventoryQueryService", "GetAvailability")


@dataclass(frozen=True)
class Payloads:
    method: str
    build: Callable[[int], bytes]  # request number -> serialised request
    qty_of: Callable[[int], int]  # units the request asks for (Reserve), else 0
    reusable: bool  # reads: the same few requests may be sent again and again
    distinct: int  # how many different requests there are when reusable


def payloads(kind: str, params: dict[str, Any], tag: str) -> Payloads:
    """``tag`` makes request and message ids unique per job and worker."""
    maker = _MAKERS.get(kind)
    if maker is None:
        raise ValueError(f"unknown load kind {kind!r}")
    return maker(params, tag)


def _reserve(params: dict[str, Any], tag: str) -> Payloads:
    skus: list[str] = params["skus"]
    quantities: list[int] = params.get("qty", [1])
    location = params["location"]
    ttl = duration_pb2.Duration(seconds=int(params.get("ttl_seconds", 600)))
    channel = params.get("channel", "web")

    def qty_of(i: int) -> int:
        return quantities[i % len(quantities)]

    def build(i: int) -> bytes:
        return reservation_service_pb2.ReserveRequest(
            request_id=f"{tag}-{i}",
            channel=channel,
            order_ref=f"o-{tag}-{i}",
            lines=[
                reservation_service_pb2.ReserveLine(
                    sku=skus[i % len(skus)], location_id=location, qty=qty_of(i)
                )
            ],
            ttl=ttl,
        ).SerializeToString()

    return Payloads(RESERVE, build, qty_of, reusable=False, distinct=0)


def _record(params: dict[str, Any], tag: str) -> Payloads:
    skus: list[str] = params["skus"]
    per_call = int(params.get("per_call", 1))
    location = params["location"]
    qty = int(params.get("qty", 1))
    source = params.get("source", "bench")

    def build(i: int) -> bytes:
        first = i * per_call
        return movement_service_pb2.RecordMovementsRequest(
            movements=[
                movement_pb2.Movement(
                    message_id=f"{tag}-{first + k}",
                    source=source,
                    type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
                    sku=skus[(first + k) % len(skus)],
                    location_id=location,
                    qty=qty,
                )
                for k in range(per_call)
            ]
        ).SerializeToString()

    return Payloads(RECORD_MOVEMENTS, build, lambda _i: 0, reusable=False, distinct=0)


def _get_position(params: dict[str, Any], tag: str) -> Payloads:
    skus: list[str] = params["skus"]
    location = params["location"]

    def build(i: int) -> bytes:
        return query_service_pb2.GetPositionRequest(
            sku=skus[i % len(skus)], location_id=location
        ).SerializeToString()

    return Payloads(GET_POSITION, build, lambda _i: 0, reusable=True, distinct=len(skus))


def _as_of(params: dict[str, Any], tag: str) -> Payloads:
    skus: list[str] = params["skus"]
    location = params["location"]
    as_of = timestamp_pb2.Timestamp()
    as_of.FromNanoseconds(time.time_ns())  # "now": the whole history of the position
    axis = audit_service_pb2.Axis.Value(params.get("axis", "AXIS_RECORDED"))

    def build(i: int) -> bytes:
        return audit_service_pb2.GetPositionAsOfRequest(
            sku=skus[i % len(skus)], location_id=location, as_of=as_of, axis=axis
        ).SerializeToString()

    return Payloads(GET_POSITION_AS_OF, build, lambda _i: 0, reusable=True, distinct=len(skus))


def _availability(params: dict[str, Any], tag: str) -> Payloads:
    """GetAvailability of each SKU for ``channel``; ``consistency`` names the enum value
    (default ``CONSISTENCY_EVENTUAL``: the read model)."""
    skus: list[str] = params["skus"]
    channel = params.get("channel", "web")
    consistency: str = params.get("consistency", "CONSISTENCY_EVENTUAL")

    def build(i: int) -> bytes:
        return query_service_pb2.GetAvailabilityRequest(
            sku=skus[i % len(skus)], channel=channel, consistency=consistency
        ).SerializeToString()

    return Payloads(GET_AVAILABILITY, build, lambda _i: 0, reusable=True, distinct=len(skus))


def _echo(params: dict[str, Any], tag: str) -> Payloads:
    body = b"x" * int(params.get("size", 64))
    return Payloads(ECHO_METHOD, lambda _i: body, lambda _i: 0, reusable=True, distinct=1)


_MAKERS: dict[str, Callable[[dict[str, Any], str], Payloads]] = {
    "reserve": _reserve,
    "record": _record,
    "get_position": _get_position,
    "as_of": _as_of,
    "availability": _availability,
    "echo": _echo,
}
