"""Every request field of every RPC, malformed one at a time → INVALID_ARGUMENT naming that field.

Issue 6, must-show 3 (contract §4.5). The matrix is complete by construction: the cases are
generated from the proto descriptors — every service, every method, every field of its request
message, recursing into nested and repeated messages (``lines[0].qty``, ``movements[0].sku``) —
and each field is looked up in ``MALFORMED`` by (message full name, field name). A field that is
neither there nor in the commented allow-list ``NO_INVALID_VALUE`` becomes a failing case, so a
field added to a proto cannot escape the matrix.

Each case starts from a valid baseline request of its method (``BASELINES``, optionally adjusted
by a variant such as "the movement is an adjustment" for fields that only apply to one movement
type; ``test_baseline_is_accepted`` proves every baseline and variant succeeds), sets the one
malformed value, calls the RPC on one real ``ledger serve`` on SQLite shared by the module, and
expects ``INVALID_ARGUMENT`` whose ``google.rpc.BadRequest`` has a field violation whose ``field``
is that field's path (``sku``, ``lines[0].qty``, ``movements[0].occurred_at``, ``skus[1]``).
Server-streaming methods are read until the error arrives.
"""

from __future__ import annotations

import base64
import importlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, duration_pb2, message, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from inventory.ledger.v1 import (
    audit_service_pb2,
    availability_pb2,
    item_policy_pb2,
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
    query_service_pb2,
    reservation_service_pb2,
    reservation_service_pb2_grpc,
)

from ledger.domain import limits
from testbed.server import LedgerProcess, stub

PKG = "inventory.ledger.v1"
SERVICE_MODULES: tuple[ModuleType, ...] = (
    query_service_pb2,
    reservation_service_pb2,
    movement_service_pb2,
    policy_service_pb2,
    audit_service_pb2,
)
CALL_TIMEOUT = 10.0

SKU = "SKU-MATRIX"
LOC = "DC-MATRIX"
LOC_B = "DC-MATRIX-B"
MOVE_SKU = "SKU-MATRIX-MOVES"  # movement baselines write here, away from the reserved stock
# Tracked SKUs (item policy set by the `world` fixture) for the variants that carry lots or
# serial numbers: their baselines stay valid once the writer checks tracking against the SKU.
LOT_SKU = "SKU-MATRIX-LOT"
SERIAL_SKU = "SKU-MATRIX-SERIAL"
SEED_SERIAL = "SN-MATRIX-SEED"  # received by the `world` fixture, for GetSerial's baseline
CHANNEL = "web"
POLICY_CHANNEL = "matrix"


def ts(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


NOW = datetime.now(UTC).replace(microsecond=0)
UNSET = object()  # as a malformed value: clear the field (a required message left out)


# ---- the table ------------------------------------------------------------------------------

Variant = Callable[[Any], None]  # adjusts a method's baseline request in place


@dataclass(frozen=True)
class Bad:
    """One malformed value of one field.

    ``at`` is appended to the field's path for the expected violation (``"[0]"``: the first
    element of a repeated field); ``base`` turns the method's baseline into the valid request
    the field applies to (e.g. a movement of the type that uses ``delta``).
    """

    label: str
    value: Any
    at: str = ""
    base: Variant | None = None


def _movement(request: movement_service_pb2.RecordMovementsRequest) -> movement_pb2.Movement:
    return request.movements[0]


def shipment(request: movement_service_pb2.RecordMovementsRequest) -> None:
    m = _movement(request)
    m.type = movement_pb2.MOVEMENT_TYPE_SHIPMENT
    m.reservation_id = "res-matrix"


def adjustment(request: movement_service_pb2.RecordMovementsRequest) -> None:
    m = _movement(request)
    m.type = movement_pb2.MOVEMENT_TYPE_ADJUSTMENT
    m.ClearField("qty")
    m.delta = -2
    m.reason = "matrix correction"


def cycle_count(request: movement_service_pb2.RecordMovementsRequest) -> None:
    m = _movement(request)
    m.type = movement_pb2.MOVEMENT_TYPE_CYCLE_COUNT
    m.ClearField("qty")
    m.counted = 7


def transfer_dispatch(request: movement_service_pb2.RecordMovementsRequest) -> None:
    m = _movement(request)
    m.type = movement_pb2.MOVEMENT_TYPE_TRANSFER_DISPATCH
    m.transfer_id = f"T-{uuid.uuid4().hex[:8]}"
    m.to_location_id = LOC_B
    m.expected_at.CopyFrom(ts(NOW + timedelta(days=2)))


def transfer_receipt(request: movement_service_pb2.RecordMovementsRequest) -> None:
    m = _movement(request)
    m.type = movement_pb2.MOVEMENT_TYPE_TRANSFER_RECEIPT
    m.transfer_id = f"T-{uuid.uuid4().hex[:8]}"


def return_receipt(request: movement_service_pb2.RecordMovementsRequest) -> None:
    m = _movement(request)
    m.type = movement_pb2.MOVEMENT_TYPE_RETURN_RECEIPT
    m.disposition = movement_pb2.DISPOSITION_RESTOCK


def damage(request: movement_service_pb2.RecordMovementsRequest) -> None:
    m = _movement(request)
    m.type = movement_pb2.MOVEMENT_TYPE_DAMAGE
    m.from_bucket = movement_pb2.FROM_BUCKET_QUARANTINE


def lot_receipt(request: movement_service_pb2.RecordMovementsRequest) -> None:
    m = _movement(request)
    m.sku = LOT_SKU
    m.lot_id = "LOT-MATRIX"
    m.expires_at.CopyFrom(ts(NOW + timedelta(days=90)))


def lot_shipment(request: movement_service_pb2.RecordMovementsRequest) -> None:
    lot_receipt(request)
    m = _movement(request)
    m.type = movement_pb2.MOVEMENT_TYPE_SHIPMENT
    m.ClearField("expires_at")


def _serials(count: int) -> list[str]:
    # Fresh per call: a baseline is recorded, and a serial is in stock at most once.
    return [f"SN-{uuid.uuid4().hex[:12]}" for _ in range(count)]


def serial_receipt(request: movement_service_pb2.RecordMovementsRequest) -> None:
    m = _movement(request)
    m.sku = SERIAL_SKU
    m.serial_numbers.extend(_serials(m.qty))


def serial_adjustment(request: movement_service_pb2.RecordMovementsRequest) -> None:
    adjustment(request)
    m = _movement(request)
    m.sku = SERIAL_SKU
    m.delta = 2  # units coming in: no serial has to be in stock already
    m.serial_numbers.extend(_serials(2))


def serial_cycle_count(request: movement_service_pb2.RecordMovementsRequest) -> None:
    cycle_count(request)
    m = _movement(request)
    m.sku = SERIAL_SKU
    m.serial_numbers.extend(_serials(m.counted))


def recorded_axis(request: audit_service_pb2.GetPositionAsOfRequest) -> None:
    request.axis = audit_service_pb2.AXIS_RECORDED
    request.ClearField("known_at")


LONG = "x" * 129  # one over the 128-character identifier limit
CONTROL_VALUES = (
    Bad("nul", "a\x00b"),
    Bad("newline", "SKU\n1"),
    Bad("del", "SKU\x7f"),
    Bad("c1-control", "SKU\x851"),
)
OPTIONAL_IDENTIFIER = (
    Bad("129-chars", LONG),
    Bad("129-code-points", "é" * 129),
    *CONTROL_VALUES,
)
IDENTIFIER = (Bad("empty", ""), *OPTIONAL_IDENTIFIER)
REQUEST_ID = IDENTIFIER
OPTIONAL_CHANNEL = (
    Bad("uppercase", "Web"),
    Bad("65-chars", "a" * 65),
    Bad("dot", "web.shop"),
    Bad("space", "web shop"),
    Bad("non-ascii", "wéb"),
)
CHANNEL_VALUES = (Bad("empty", ""), *OPTIONAL_CHANNEL)
SOURCE_VALUES = (
    Bad("empty", ""),
    Bad("space", "wms east"),
    Bad("dot", "wms.east"),  # would split the NATS subject
    Bad("wildcard", "wms*"),
    Bad("65-chars", "w" * 65),
)
QTY = (Bad("zero", 0), Bad("negative", -1), Bad("over-max", limits.QUANTITY_MAX + 1))
NON_NEGATIVE = (Bad("negative", -1), Bad("over-max", limits.QUANTITY_MAX + 1))
PAGE_SIZE = (Bad("negative", -1), Bad("int32-min", -(2**31)))
PAGE_TOKEN = (
    Bad("garbage", "not a token!"),
    Bad("forged", base64.urlsafe_b64encode(b"\0" * 16 + b'{"a": [], "l": {}}').decode()),
    Bad("non-ascii", "tökén"),
)
TIMESTAMP = (
    Bad("after-9999", timestamp_pb2.Timestamp(seconds=253_402_300_800)),
    Bad("before-year-1", timestamp_pb2.Timestamp(seconds=-62_135_596_801)),
    Bad("negative-nanos", timestamp_pb2.Timestamp(seconds=0, nanos=-1)),
    Bad("nanos-overflow", timestamp_pb2.Timestamp(seconds=0, nanos=1_000_000_000)),
)
UNKNOWN_ENUM = (Bad("unknown-999", 999), Bad("negative", -1))


def expiring_window(request: query_service_pb2.ListExceptionsRequest) -> None:
    request.type = availability_pb2.EXCEPTION_TYPE_LOT_EXPIRING
    request.expiring_within.CopyFrom(duration_pb2.Duration(seconds=86_400))


# serial_numbers of a 3-unit serial receipt with one bad entry (the baseline's qty is 3).
SERIAL_ENTRIES = (
    Bad("empty-entry", ["SN-a", "", "SN-c"], at="[1]", base=serial_receipt),
    Bad("129-char-entry", ["SN-a", "SN-b", LONG], at="[2]", base=serial_receipt),
    *(
        Bad(f"{b.label}-entry", ["SN-a", b.value, "SN-c"], at="[1]", base=serial_receipt)
        for b in CONTROL_VALUES
    ),
    Bad("duplicate-entry", ["SN-a", "SN-b", "SN-a"], at="[2]", base=serial_receipt),
)
REQUIRED_ENUM = (Bad("unspecified", 0), *UNKNOWN_ENUM)


def _repeated_identifiers(count_max: int, first: str) -> tuple[Bad, ...]:
    return (
        Bad("empty-entry", [""], at="[0]"),
        Bad("129-char-entry", [LONG], at="[0]"),
        Bad("control-entry", [first, "a\nb"], at="[1]"),
        Bad(f"{count_max + 1}-entries", [f"E-{i}" for i in range(count_max + 1)]),
    )


def _movements(count: int) -> list[movement_pb2.Movement]:
    one = movement_pb2.Movement(
        message_id="m-many",
        source="matrix",
        type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
        sku=MOVE_SKU,
        location_id=LOC,
        qty=1,
    )
    return [one] * count


def _lines(count: int) -> list[reservation_service_pb2.ReserveLine]:
    return [reservation_service_pb2.ReserveLine(sku=SKU, location_id=LOC, qty=1)] * count


# (message full name, field name) -> malformed values, each expected to be named by path.
MALFORMED: dict[str, dict[str, tuple[Bad, ...]]] = {
    # ---- InventoryQueryService
    f"{PKG}.GetPositionRequest": {"sku": IDENTIFIER, "location_id": IDENTIFIER},
    f"{PKG}.GetSerialRequest": {"sku": IDENTIFIER, "serial_number": IDENTIFIER},
    f"{PKG}.ListPositionsRequest": {
        # Baseline filters by sku; empty is then "no filter at all".
        "sku": (Bad("empty-without-location", ""), *OPTIONAL_IDENTIFIER),
        "location_id": OPTIONAL_IDENTIFIER,
        "page_size": PAGE_SIZE,
        "page_token": PAGE_TOKEN,
    },
    f"{PKG}.GetAvailabilityRequest": {
        "sku": IDENTIFIER,
        "channel": CHANNEL_VALUES,
        "consistency": UNKNOWN_ENUM,
        "min_position": (Bad("negative", -1),),
        "horizon": TIMESTAMP,
    },
    f"{PKG}.WatchAvailabilityRequest": {
        "channel": CHANNEL_VALUES,
        "skus": (Bad("none", []), *_repeated_identifiers(1000, SKU)),
    },
    f"{PKG}.ListInTransitRequest": {
        "sku": (Bad("empty-without-destination", ""), *OPTIONAL_IDENTIFIER),
        "to_location_id": OPTIONAL_IDENTIFIER,
        "page_size": PAGE_SIZE,
        "page_token": PAGE_TOKEN,
    },
    f"{PKG}.ListExceptionsRequest": {
        "type": (
            *UNKNOWN_ENUM,
            # The expiring-lots listing answers LOT_EXPIRING only.
            Bad(
                "recorded-type-with-window",
                availability_pb2.EXCEPTION_TYPE_NEGATIVE_BUCKET,
                base=expiring_window,
            ),
        ),
        "sku": OPTIONAL_IDENTIFIER,
        "location_id": OPTIONAL_IDENTIFIER,
        "page_size": PAGE_SIZE,
        "page_token": PAGE_TOKEN,
        "expiring_within": (
            Bad("zero", duration_pb2.Duration()),
            Bad("negative", duration_pb2.Duration(seconds=-60)),
        ),
    },
    # ---- ReservationService
    f"{PKG}.ReserveRequest": {
        "request_id": REQUEST_ID,
        "channel": CHANNEL_VALUES,
        "order_ref": (Bad("129-chars", LONG), *CONTROL_VALUES),
        "lines": (Bad("none", []), Bad("101-lines", _lines(101))),
        "ttl": (
            Bad("zero", duration_pb2.Duration()),
            Bad("negative", duration_pb2.Duration(seconds=-5)),
            Bad("half-second", duration_pb2.Duration(nanos=500_000_000)),
            Bad("31-days", duration_pb2.Duration(seconds=31 * 86_400)),
            Bad("mixed-signs", duration_pb2.Duration(seconds=60, nanos=-1)),
            Bad("nanos-overflow", duration_pb2.Duration(seconds=60, nanos=1_000_000_000)),
            Bad("beyond-duration-range", duration_pb2.Duration(seconds=315_576_000_001)),
        ),
    },
    f"{PKG}.ReserveLine": {
        "sku": IDENTIFIER,
        "location_id": OPTIONAL_IDENTIFIER,  # empty: the service chooses
        "qty": QTY,
        "min_expires_at": TIMESTAMP,
        "lot_id": OPTIONAL_IDENTIFIER,  # empty: no lot named
    },
    f"{PKG}.GetReservationRequest": {"reservation_id": IDENTIFIER, "channel": OPTIONAL_CHANNEL},
    f"{PKG}.CommitRequest": {
        "request_id": REQUEST_ID,
        "reservation_id": IDENTIFIER,
        "channel": OPTIONAL_CHANNEL,
    },
    f"{PKG}.ReleaseRequest": {
        "request_id": REQUEST_ID,
        "reservation_id": IDENTIFIER,
        "channel": OPTIONAL_CHANNEL,
    },
    f"{PKG}.ListReservationsRequest": {
        "channel": CHANNEL_VALUES,
        "order_ref": (Bad("129-chars", LONG), *CONTROL_VALUES),
        "page_size": PAGE_SIZE,
        "page_token": PAGE_TOKEN,
    },
    # ---- MovementService
    f"{PKG}.RecordMovementsRequest": {
        "movements": (Bad("none", []), Bad("501-movements", _movements(501))),
    },
    f"{PKG}.Movement": {
        "message_id": IDENTIFIER,
        "source": SOURCE_VALUES,
        "type": REQUIRED_ENUM,
        "sku": IDENTIFIER,
        "location_id": IDENTIFIER,
        "qty": (
            *QTY,
            Bad("missing-on-receipt", UNSET),
            Bad("on-adjustment", 3, base=adjustment),
            Bad("on-cycle-count", 3, base=cycle_count),
        ),
        "uom": (Bad("case-unit", "CS"), Bad("lowercase", "ea"), Bad("nul", "E\x00A")),
        "occurred_at": TIMESTAMP,
        "reservation_id": (
            *(Bad(b.label, b.value, base=shipment) for b in OPTIONAL_IDENTIFIER),
            Bad("on-receipt", "res-1"),
        ),
        "transfer_id": (
            Bad("empty-on-transfer-receipt", "", base=transfer_receipt),
            *(Bad(b.label, b.value, base=transfer_receipt) for b in OPTIONAL_IDENTIFIER),
            Bad("on-receipt", "T-1"),
        ),
        "to_location_id": (
            Bad("empty-on-dispatch", "", base=transfer_dispatch),
            Bad("same-as-location", LOC, base=transfer_dispatch),
            *(Bad(b.label, b.value, base=transfer_dispatch) for b in OPTIONAL_IDENTIFIER),
            Bad("on-receipt", LOC_B),
        ),
        "delta": (
            Bad("zero", 0, base=adjustment),
            Bad("missing-on-adjustment", UNSET, base=adjustment),
            Bad("over-max", limits.QUANTITY_MAX + 1, base=adjustment),
            Bad("under-min", -limits.QUANTITY_MAX - 1, base=adjustment),
            Bad("on-receipt", 5),
        ),
        "counted": (
            Bad("negative", -1, base=cycle_count),
            Bad("missing-on-cycle-count", UNSET, base=cycle_count),
            Bad("over-max", limits.QUANTITY_MAX + 1, base=cycle_count),
            Bad("on-receipt", 5),
        ),
        "reason": (
            Bad("257-chars", "r" * 257),
            *CONTROL_VALUES,
            Bad("missing-on-adjustment", "", base=adjustment),
        ),
        "disposition": (
            Bad("missing-on-return", 0, base=return_receipt),
            *(Bad(b.label, b.value, base=return_receipt) for b in UNKNOWN_ENUM),
            Bad("on-receipt", movement_pb2.DISPOSITION_RESTOCK),
        ),
        "expected_at": (
            *(Bad(b.label, b.value, base=transfer_dispatch) for b in TIMESTAMP),
            Bad("on-receipt", ts(NOW + timedelta(days=1))),
        ),
        "putaway_pending": (Bad("on-shipment", True, base=shipment),),
        "final": (Bad("on-receipt", True),),
        "from_bucket": (
            *(Bad(b.label, b.value, base=damage) for b in UNKNOWN_ENUM),
            Bad("on-receipt", movement_pb2.FROM_BUCKET_QUARANTINE),
        ),
        # Tracking fields: shape rules only (which SKU needs them is the writer's check).
        "lot_id": tuple(Bad(b.label, b.value, base=lot_receipt) for b in OPTIONAL_IDENTIFIER),
        "expires_at": (
            *(Bad(b.label, b.value, base=lot_receipt) for b in TIMESTAMP),
            Bad("without-lot-id", ts(NOW + timedelta(days=90))),
            Bad("on-shipment", ts(NOW + timedelta(days=90)), base=lot_shipment),
        ),
        "serial_numbers": (
            *SERIAL_ENTRIES,
            Bad("fewer-than-qty", ["SN-a", "SN-b"], base=serial_receipt),
            Bad("more-than-qty", ["SN-a", "SN-b", "SN-c", "SN-d"], base=serial_receipt),
            Bad("not-abs-delta", ["SN-a"], base=serial_adjustment),
            Bad("not-counted", ["SN-a"], base=serial_cycle_count),
            Bad("with-lot-id", ["SN-a", "SN-b", "SN-c"], base=lot_receipt),
        ),
    },
    # ---- PolicyService
    f"{PKG}.SetSafetyStockRequest": {
        "request_id": REQUEST_ID,
        "sku": IDENTIFIER,
        "location_id": IDENTIFIER,
        "qty": NON_NEGATIVE,
    },
    f"{PKG}.SetChannelFenceRequest": {
        "request_id": REQUEST_ID,
        "sku": IDENTIFIER,
        "location_id": IDENTIFIER,
        "channel": CHANNEL_VALUES,
        "qty": NON_NEGATIVE,
    },
    f"{PKG}.SetChannelPolicyRequest": {
        "request_id": REQUEST_ID,
        "channel": CHANNEL_VALUES,
        "eligible_location_ids": _repeated_identifiers(limits.ELIGIBLE_LOCATIONS_MAX, LOC),
        "share_percent": (Bad("101", 101), Bad("negative", -1)),
        "buffer": NON_NEGATIVE,
        "max_publish": NON_NEGATIVE,
    },
    f"{PKG}.SetItemPolicyRequest": {
        "request_id": REQUEST_ID,
        "sku": IDENTIFIER,
        "tracking": UNKNOWN_ENUM,  # UNSPECIFIED is valid: it means NONE
    },
    f"{PKG}.GetItemPolicyRequest": {"sku": IDENTIFIER},
    # ---- AuditService
    f"{PKG}.GetPositionAsOfRequest": {
        "sku": IDENTIFIER,
        "location_id": IDENTIFIER,
        "as_of": (Bad("unset", UNSET), *TIMESTAMP),
        "axis": REQUIRED_ENUM,
        "known_at": (*TIMESTAMP, Bad("with-recorded-axis", ts(NOW), base=recorded_axis)),
    },
    f"{PKG}.ListMovementsRequest": {
        "sku": IDENTIFIER,
        "location_id": IDENTIFIER,
        "from": TIMESTAMP,
        "to": (*TIMESTAMP, Bad("before-from", ts(datetime(2019, 1, 1, tzinfo=UTC)))),
        "axis": REQUIRED_ENUM,
        "page_size": PAGE_SIZE,
        "page_token": PAGE_TOKEN,
    },
    f"{PKG}.StreamLedgerRequest": {"from_position": (Bad("negative", -1),)},
    f"{PKG}.VerifyLedgerRequest": {
        # One position needs both; the baseline gives both, so dropping one is malformed.
        "sku": (Bad("empty-with-location", ""), *OPTIONAL_IDENTIFIER),
        "location_id": (Bad("empty-with-sku", ""), *OPTIONAL_IDENTIFIER),
    },
    f"{PKG}.TraceLotRequest": {
        "sku": IDENTIFIER,
        "lot_id": IDENTIFIER,
        "as_of": TIMESTAMP,
        "page_size": PAGE_SIZE,
        "page_token": PAGE_TOKEN,
    },
}

# Fields that have no malformed value on the wire: every value they can carry is a valid request.
NO_INVALID_VALUE: dict[tuple[str, str], str] = {
    (f"{PKG}.GetPositionRequest", "include_holds"): "bool flag: holds or not, both valid",
    (f"{PKG}.ListPositionsRequest", "include_holds"): "bool flag: holds or not, both valid",
    (f"{PKG}.ReserveRequest", "allow_split"): (
        "bool flag: with an explicit location_id there is simply nothing to split"
    ),
    (f"{PKG}.GetPositionAsOfRequest", "include_holds"): "bool flag: holds or not, both valid",
    (f"{PKG}.StreamLedgerRequest", "follow"): "bool flag: tail live or stop at the head",
}


# ---- valid baselines, one per method ----------------------------------------------------------


@dataclass(frozen=True)
class World:
    """State the module's server is seeded with."""

    commit_id: str  # an ACTIVE reservation for Commit's baseline
    release_id: str  # an ACTIVE reservation for Release's baseline


def _fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _baseline_movement() -> movement_pb2.Movement:
    return movement_pb2.Movement(
        message_id=_fresh("m"),
        source="matrix",
        type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
        sku=MOVE_SKU,
        location_id=LOC,
        qty=3,
        uom="EA",
        occurred_at=ts(NOW - timedelta(hours=1)),
        reason="matrix receipt",
    )


def _record(*movements: movement_pb2.Movement) -> movement_service_pb2.RecordMovementsRequest:
    return movement_service_pb2.RecordMovementsRequest(movements=list(movements))


def _q(name: str) -> str:
    return f"{PKG}.InventoryQueryService.{name}"


def _r(name: str) -> str:
    return f"{PKG}.ReservationService.{name}"


def _a(name: str) -> str:
    return f"{PKG}.AuditService.{name}"


def _p(name: str) -> str:
    return f"{PKG}.PolicyService.{name}"


BASELINES: dict[str, Callable[[World], message.Message]] = {
    _q("GetPosition"): lambda w: query_service_pb2.GetPositionRequest(
        sku=SKU, location_id=LOC, include_holds=True
    ),
    _q("ListPositions"): lambda w: query_service_pb2.ListPositionsRequest(
        sku=SKU, page_size=10, include_holds=True
    ),
    _q("GetAvailability"): lambda w: query_service_pb2.GetAvailabilityRequest(
        sku=SKU,
        channel=CHANNEL,
        consistency=availability_pb2.CONSISTENCY_STRONG,
        min_position=1,
        horizon=ts(NOW + timedelta(days=1)),
    ),
    _q("WatchAvailability"): lambda w: query_service_pb2.WatchAvailabilityRequest(
        channel=CHANNEL, skus=[SKU, MOVE_SKU]
    ),
    _q("ListInTransit"): lambda w: query_service_pb2.ListInTransitRequest(sku=SKU, page_size=10),
    _q("ListExceptions"): lambda w: query_service_pb2.ListExceptionsRequest(
        type=availability_pb2.EXCEPTION_TYPE_NEGATIVE_BUCKET, sku=SKU, location_id=LOC, page_size=10
    ),
    _q("GetProjectionStatus"): lambda w: query_service_pb2.GetProjectionStatusRequest(),
    _q("GetSerial"): lambda w: query_service_pb2.GetSerialRequest(
        sku=SERIAL_SKU, serial_number=SEED_SERIAL
    ),
    _r("Reserve"): lambda w: reservation_service_pb2.ReserveRequest(
        request_id=_fresh("reserve"),
        channel=CHANNEL,
        order_ref="o-matrix",
        lines=_lines(1),
        ttl=duration_pb2.Duration(seconds=600),
        allow_split=False,
    ),
    _r("GetReservation"): lambda w: reservation_service_pb2.GetReservationRequest(
        reservation_id=w.commit_id, channel=CHANNEL
    ),
    _r("Commit"): lambda w: reservation_service_pb2.CommitRequest(
        request_id=_fresh("commit"), reservation_id=w.commit_id, channel=CHANNEL
    ),
    _r("Release"): lambda w: reservation_service_pb2.ReleaseRequest(
        request_id=_fresh("release"), reservation_id=w.release_id, channel=CHANNEL
    ),
    _r("ListReservations"): lambda w: reservation_service_pb2.ListReservationsRequest(
        channel=CHANNEL, order_ref="o-matrix", page_size=10
    ),
    f"{PKG}.MovementService.RecordMovements": lambda w: _record(_baseline_movement()),
    _p("SetSafetyStock"): lambda w: policy_service_pb2.SetSafetyStockRequest(
        request_id=_fresh("safety"), sku=SKU, location_id=LOC, qty=2
    ),
    _p("SetChannelFence"): lambda w: policy_service_pb2.SetChannelFenceRequest(
        request_id=_fresh("fence"), sku=SKU, location_id=LOC, channel=POLICY_CHANNEL, qty=1
    ),
    _p("SetChannelPolicy"): lambda w: policy_service_pb2.SetChannelPolicyRequest(
        request_id=_fresh("policy"),
        channel=POLICY_CHANNEL,
        eligible_location_ids=[LOC, LOC_B],
        share_percent=50,
        buffer=1,
        max_publish=100,
    ),
    # A SKU that never holds stock: setting LOT again is always allowed.
    _p("SetItemPolicy"): lambda w: policy_service_pb2.SetItemPolicyRequest(
        request_id=_fresh("item"), sku=f"{SKU}-ITEM", tracking=item_policy_pb2.ITEM_TRACKING_LOT
    ),
    _p("GetItemPolicy"): lambda w: policy_service_pb2.GetItemPolicyRequest(sku=SKU),
    _a("GetPositionAsOf"): lambda w: audit_service_pb2.GetPositionAsOfRequest(
        sku=SKU,
        location_id=LOC,
        as_of=ts(NOW),
        axis=audit_service_pb2.AXIS_EFFECTIVE,
        known_at=ts(NOW),
        include_holds=True,
    ),
    _a("ListMovements"): lambda w: audit_service_pb2.ListMovementsRequest(
        sku=SKU,
        location_id=LOC,
        axis=audit_service_pb2.AXIS_RECORDED,
        page_size=10,
        **{"from": ts(datetime(2020, 1, 1, tzinfo=UTC)), "to": ts(NOW + timedelta(days=1))},
    ),
    _a("StreamLedger"): lambda w: audit_service_pb2.StreamLedgerRequest(
        from_position=1, follow=True
    ),
    _a("VerifyLedger"): lambda w: audit_service_pb2.VerifyLedgerRequest(sku=SKU, location_id=LOC),
    _a("TraceLot"): lambda w: audit_service_pb2.TraceLotRequest(
        sku=SKU, lot_id="L-MATRIX", as_of=ts(NOW), page_size=10
    ),
}


# ---- generating the cases from the descriptors -------------------------------------------------


def _services() -> Iterator[descriptor.ServiceDescriptor]:
    for module in SERVICE_MODULES:
        yield from module.DESCRIPTOR.services_by_name.values()


def _methods() -> Iterator[tuple[descriptor.ServiceDescriptor, descriptor.MethodDescriptor]]:
    for service in _services():
        for method in service.methods:
            yield service, method


Step = tuple[str, int | None]  # (field name, index into a repeated field or None)


def _fields(
    message_type: descriptor.Descriptor, prefix: str = "", steps: tuple[Step, ...] = ()
) -> Iterator[tuple[tuple[Step, ...], descriptor.FieldDescriptor, str]]:
    """(steps to the containing message, field, field path) of every field, depth first.

    Well-known types (Timestamp, Duration) are leaves: their malformed values are whole messages.
    """
    for field in message_type.fields:
        path = f"{prefix}{field.name}"
        yield steps, field, path
        nested = field.message_type
        if nested is None or nested.full_name.startswith("google.protobuf."):
            continue
        if field.is_repeated:
            yield from _fields(nested, f"{path}[0].", (*steps, (field.name, 0)))
        else:
            yield from _fields(nested, f"{path}.", (*steps, (field.name, None)))


@dataclass(frozen=True)
class Case:
    service: descriptor.ServiceDescriptor
    method: descriptor.MethodDescriptor
    steps: tuple[Step, ...]
    field: descriptor.FieldDescriptor
    path: str
    bad: Bad | None  # None: the field has no table entry (the case fails)

    @property
    def expected_path(self) -> str:
        assert self.bad is not None
        return self.path + self.bad.at


def _cases() -> Iterator[Any]:
    for service, method in _methods():
        for steps, field, path in _fields(method.input_type):
            key = (field.containing_type.full_name, field.name)
            bads = MALFORMED.get(key[0], {}).get(key[1])
            base_id = f"{service.name}.{method.name}:{path}"
            if bads is None:
                if key not in NO_INVALID_VALUE:
                    yield pytest.param(
                        Case(service, method, steps, field, path, None), id=f"{base_id}=NO-ENTRY"
                    )
                continue
            for bad in bads:
                case = Case(service, method, steps, field, path, bad)
                yield pytest.param(case, id=f"{base_id}{bad.at}={bad.label}")


CASES = list(_cases())


def _baseline_variants() -> Iterator[Any]:
    for service, method in _methods():
        seen: list[Variant | None] = [None]
        for steps, field, _path in _fields(method.input_type):
            del steps
            for bad in MALFORMED.get(field.containing_type.full_name, {}).get(field.name, ()):
                if bad.base not in seen:
                    seen.append(bad.base)
        for variant in seen:
            suffix = f"+{variant.__name__}" if variant else ""
            yield pytest.param(method, variant, id=f"{service.name}.{method.name}{suffix}")


# ---- calling the server --------------------------------------------------------------------


def _stub(server: LedgerProcess, service: descriptor.ServiceDescriptor) -> Any:
    module = importlib.import_module(
        service.file.name.removesuffix(".proto").replace("/", ".") + "_pb2_grpc"
    )
    return stub(server, getattr(module, f"{service.name}Stub"))


def _request(method: descriptor.MethodDescriptor, world: World, variant: Variant | None) -> Any:
    build = BASELINES.get(method.full_name)
    if build is None:
        pytest.fail(f"no baseline request for {method.full_name}; add one to BASELINES")
    request = build(world)
    assert request.DESCRIPTOR is method.input_type, (request.DESCRIPTOR.full_name,)
    if variant is not None:
        variant(request)
    return request


def _set(container: Any, field: descriptor.FieldDescriptor, value: Any) -> None:
    if value is UNSET:
        container.ClearField(field.name)
    elif field.is_repeated:
        target = getattr(container, field.name)
        del target[:]
        target.extend(value)
    elif field.message_type is not None:
        getattr(container, field.name).CopyFrom(value)
    else:
        setattr(container, field.name, value)


def _call(server: LedgerProcess, service: Any, method: Any, request: Any) -> Any:
    """The response (for a stream: its first message, then the stream is cancelled)."""
    rpc = getattr(_stub(server, service), method.name)
    if not method.server_streaming:
        return rpc(request, timeout=CALL_TIMEOUT)
    stream = rpc(request, timeout=CALL_TIMEOUT)
    try:
        return next(stream)
    finally:
        stream.cancel()


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerProcess]:
    """One ``ledger serve`` on SQLite for every case of the module."""
    process = LedgerProcess(f"sqlite:///{tmp_path_factory.mktemp('matrix') / 'ledger.db'}")
    process.start()
    try:
        yield process
        log = process.log_text(all_runs=True)
        assert "Traceback" not in log and " ERROR " not in log, log
    finally:
        process.close()


@pytest.fixture(scope="module")
def world(server: LedgerProcess) -> World:
    policies = stub(server, policy_service_pb2_grpc.PolicyServiceStub)
    for sku, tracking in (
        (LOT_SKU, item_policy_pb2.ITEM_TRACKING_LOT),
        (SERIAL_SKU, item_policy_pb2.ITEM_TRACKING_SERIAL),
    ):
        policies.SetItemPolicy(
            policy_service_pb2.SetItemPolicyRequest(
                request_id=_fresh("seed-item"), sku=sku, tracking=tracking
            ),
            timeout=CALL_TIMEOUT,
        )
    movements = stub(server, movement_service_pb2_grpc.MovementServiceStub)
    movements.RecordMovements(
        movement_service_pb2.RecordMovementsRequest(
            movements=[
                movement_pb2.Movement(
                    message_id="seed-1",
                    source="matrix",
                    type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
                    sku=SKU,
                    location_id=LOC,
                    qty=1000,
                ),
                movement_pb2.Movement(
                    message_id="seed-serial",
                    source="matrix",
                    type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
                    sku=SERIAL_SKU,
                    location_id=LOC,
                    qty=1,
                    serial_numbers=[SEED_SERIAL],
                ),
            ]
        ),
        timeout=CALL_TIMEOUT,
    )
    reservations = stub(server, reservation_service_pb2_grpc.ReservationServiceStub)

    def reserve() -> str:
        return reservations.Reserve(
            reservation_service_pb2.ReserveRequest(
                request_id=_fresh("seed"), channel=CHANNEL, lines=_lines(1)
            ),
            timeout=CALL_TIMEOUT,
        ).reservation_id

    return World(commit_id=reserve(), release_id=reserve())


# ---- tests ------------------------------------------------------------------------------------


def test_tables_match_the_protos() -> None:
    """No stale entries: every table key and baseline names something the protos define."""
    fields = {
        (field.containing_type.full_name, field.name)
        for _, method in _methods()
        for _, field, _ in _fields(method.input_type)
    }
    tabled = {(name, field) for name, entries in MALFORMED.items() for field in entries}
    assert tabled - fields == set(), "MALFORMED names fields no request has"
    assert set(NO_INVALID_VALUE) - fields == set(), "NO_INVALID_VALUE names fields no request has"
    assert tabled & set(NO_INVALID_VALUE) == set(), "a field is both malformable and allow-listed"
    assert all(NO_INVALID_VALUE.values()), "every allow-listed field says why"
    methods = {method.full_name for _, method in _methods()}
    assert set(BASELINES) == methods
    assert all(bads for entries in MALFORMED.values() for bads in entries.values())


@pytest.mark.parametrize(("method", "variant"), list(_baseline_variants()))
def test_baseline_is_accepted(
    server: LedgerProcess,
    world: World,
    method: descriptor.MethodDescriptor,
    variant: Variant | None,
) -> None:
    """Each baseline (and each variant a case starts from) is a request the server accepts."""
    request = _request(method, world, variant)
    try:
        _call(server, method.containing_service, method, request)
    except grpc.RpcError as error:
        pytest.fail(f"baseline refused: {error.code()}: {error.details()}")


@pytest.mark.parametrize("case", CASES)
def test_malformed_field_is_named(server: LedgerProcess, world: World, case: Case) -> None:
    if case.bad is None:
        pytest.fail(
            f"{case.field.containing_type.full_name}.{case.field.name} ({case.path}) has no "
            "malformed value in MALFORMED and is not allow-listed in NO_INVALID_VALUE"
        )
    request = _request(case.method, world, case.bad.base)
    container = request
    for name, index in case.steps:
        container = getattr(container, name)
        if index is not None:
            container = container[index]
    _set(container, case.field, case.bad.value)

    with pytest.raises(grpc.RpcError) as raised:
        _call(server, case.service, case.method, request)
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.Status: {error.details()}"
    violations: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [v.field for v in bad_request.field_violations]
    assert case.expected_path in violations, (case.expected_path, violations, error.details())
