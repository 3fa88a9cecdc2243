"""Item tracking at the edges (issue 19): the shape rules of lot_id, expires_at and
serial_numbers in the shared input models, and the protobuf <-> domain conversion of the
tracking fields (requests in, lots and lot holds out). Whether a SKU's tracking wants the fields
is the writer's check, not tested here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from inventory.ledger.v1 import movement_pb2, reservation_service_pb2
from pydantic import ValidationError

from entrypoints.grpc import convert
from entrypoints.grpc.errors import InvalidRequest
from ledger.domain.movements import MovementType
from ledger.inputs import (
    OUT_OF_RANGE_TIMESTAMP,
    RecordMovementsModel,
    ReserveModel,
    field_violations,
    movement_of,
)
from ledger.views import LotHoldView, LotView, PositionView, ReservationLineView, ReservationView
from projections.queries import InTransitView

EXPIRY = datetime(2027, 1, 10, tzinfo=UTC)


def movement(**changes: Any) -> dict[str, Any]:
    return {
        "message_id": "m-1",
        "source": "wms",
        "type": "receipt",
        "sku": "YOG-1",
        "location_id": "DC-EAST",
        "qty": 3,
        **changes,
    }


def violations(**changes: Any) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as raised:
        RecordMovementsModel.model_validate({"movements": [movement(**changes)]})
    return field_violations(raised.value)


def test_lot_receipt_reaches_the_domain_with_its_expiry_in_utc() -> None:
    model = RecordMovementsModel.model_validate(
        {
            "movements": [
                movement(
                    lot_id="L7",
                    expires_at=datetime(2027, 1, 10, 2, 0, tzinfo=timezone(timedelta(hours=2))),
                )
            ]
        }
    )
    moved = movement_of(model.movements[0])
    assert (moved.lot_id, moved.expires_at, moved.serial_numbers) == ("L7", EXPIRY, ())
    assert moved.expires_at is not None and moved.expires_at.tzinfo is UTC


def test_serial_numbers_reach_the_domain_in_order() -> None:
    model = RecordMovementsModel.model_validate(
        {"movements": [movement(serial_numbers=["SN-3", "SN-1", "SN-2"])]}
    )
    moved = movement_of(model.movements[0])
    assert moved.serial_numbers == ("SN-3", "SN-1", "SN-2")
    assert moved.lot_id is None


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "return_receipt", "disposition": "quarantine", "lot_id": "L1",
         "expires_at": EXPIRY},
        {"type": "shipment", "lot_id": "L1"},
        {"type": "adjustment", "qty": None, "delta": -2, "reason": "r",
         "serial_numbers": ["a", "b"]},
        {"type": "adjustment", "qty": None, "delta": 1, "reason": "r", "serial_numbers": ["a"]},
        {"type": "cycle_count", "qty": None, "counted": 2, "serial_numbers": ["a", "b"]},
        {"type": "cycle_count", "qty": None, "counted": 0},
        {"type": "transfer_dispatch", "transfer_id": "T", "to_location_id": "B",
         "serial_numbers": ["a", "b", "c"]},
    ],
)  # fmt: skip
def test_valid_tracking_shapes_are_accepted(changes: dict[str, Any]) -> None:
    model = RecordMovementsModel.model_validate({"movements": [movement(**changes)]})
    assert model.movements[0].type == MovementType(changes["type"])


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"lot_id": "L" * 129}, "movements[0].lot_id"),
        ({"lot_id": "L\n1"}, "movements[0].lot_id"),
        ({"lot_id": "L\x851"}, "movements[0].lot_id"),
        ({"expires_at": EXPIRY}, "movements[0].expires_at"),  # without lot_id
        ({"type": "shipment", "lot_id": "L1", "expires_at": EXPIRY}, "movements[0].expires_at"),
        ({"type": "putaway", "lot_id": "L1", "expires_at": EXPIRY}, "movements[0].expires_at"),
        ({"lot_id": "L1", "expires_at": OUT_OF_RANGE_TIMESTAMP}, "movements[0].expires_at"),
        ({"serial_numbers": ["a", "", "c"]}, "movements[0].serial_numbers[1]"),
        ({"serial_numbers": ["a", "b", "c" * 129]}, "movements[0].serial_numbers[2]"),
        ({"serial_numbers": ["a", "b\x00", "c"]}, "movements[0].serial_numbers[1]"),
        ({"serial_numbers": ["a", "b", "a"]}, "movements[0].serial_numbers[2]"),
        ({"serial_numbers": ["a", "b"]}, "movements[0].serial_numbers"),
        ({"serial_numbers": ["a", "b", "c", "d"]}, "movements[0].serial_numbers"),
        ({"type": "adjustment", "qty": None, "delta": -2, "reason": "r",
          "serial_numbers": ["a"]}, "movements[0].serial_numbers"),
        ({"type": "cycle_count", "qty": None, "counted": 3, "serial_numbers": ["a"]},
         "movements[0].serial_numbers"),
        ({"lot_id": "L1", "serial_numbers": ["a", "b", "c"]}, "movements[0].serial_numbers"),
    ],
)  # fmt: skip
def test_tracking_shape_violations_name_their_field(changes: dict[str, Any], field: str) -> None:
    found = violations(**changes)
    assert field in [path for path, _ in found], found


def test_a_missing_quantity_is_reported_on_qty_not_on_the_serials() -> None:
    assert [path for path, _ in violations(qty=None, serial_numbers=["a"])] == ["movements[0].qty"]


# ---- gRPC requests in ----


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_proto_movement_tracking_fields_convert() -> None:
    proto = movement_pb2.Movement(
        message_id="m-1",
        source="wms",
        type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
        sku="YOG-1",
        location_id="DC-EAST",
        qty=2,
        lot_id="L7",
        expires_at=_stamp(EXPIRY),
    )
    model = convert.validate(RecordMovementsModel, {"movements": [convert.movement_values(proto)]})
    moved = movement_of(model.movements[0])
    assert (moved.lot_id, moved.expires_at, moved.serial_numbers) == ("L7", EXPIRY, ())

    serial = movement_pb2.Movement(
        message_id="m-2",
        source="wms",
        type=movement_pb2.MOVEMENT_TYPE_SHIPMENT,
        sku="PHONE-1",
        location_id="DC-EAST",
        qty=2,
        serial_numbers=["SN-1", "SN-2"],
    )
    model = convert.validate(RecordMovementsModel, {"movements": [convert.movement_values(serial)]})
    moved = movement_of(model.movements[0])
    # proto3 "" and an unset Timestamp are absent, not an empty lot.
    assert (moved.lot_id, moved.expires_at, moved.serial_numbers) == (None, None, ("SN-1", "SN-2"))


def test_proto_movement_with_an_unrepresentable_expiry_names_the_field() -> None:
    proto = movement_pb2.Movement(
        message_id="m-1",
        source="wms",
        type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
        sku="YOG-1",
        location_id="DC-EAST",
        qty=2,
        lot_id="L7",
        expires_at=timestamp_pb2.Timestamp(seconds=253_402_300_800),  # year 10000
    )
    with pytest.raises(InvalidRequest) as raised:
        convert.validate(RecordMovementsModel, {"movements": [convert.movement_values(proto)]})
    assert "movements[0].expires_at" in [path for path, _ in raised.value.violations]


def _reserve(**line: Any) -> dict[str, Any]:
    return {
        "request_id": "r-1",
        "channel": "web",
        "lines": [{"sku": "YOG-1", "location_id": "DC-EAST", "qty": 1, **line}],
    }


def test_reserve_line_lot_terms_are_optional_and_checked() -> None:
    model = ReserveModel.model_validate(_reserve(lot_id="L7", min_expires_at=EXPIRY))
    assert (model.lines[0].lot_id, model.lines[0].min_expires_at) == ("L7", EXPIRY)
    plain = ReserveModel.model_validate(_reserve())
    assert (plain.lines[0].lot_id, plain.lines[0].min_expires_at) == ("", None)
    for line, field in (
        ({"lot_id": "L" * 129}, "lines[0].lot_id"),
        ({"lot_id": "L\t7"}, "lines[0].lot_id"),
        ({"min_expires_at": OUT_OF_RANGE_TIMESTAMP}, "lines[0].min_expires_at"),
    ):
        with pytest.raises(ValidationError) as raised:
            ReserveModel.model_validate(_reserve(**line))
        assert field in [path for path, _ in field_violations(raised.value)], line


def test_reserve_line_proto_fields_exist_with_presence() -> None:
    line = reservation_service_pb2.ReserveLine(sku="S", qty=1)
    assert convert.timestamp(line, "min_expires_at") is None  # unset: no expiry floor
    line.min_expires_at.CopyFrom(_stamp(EXPIRY))
    assert convert.timestamp(line, "min_expires_at") == EXPIRY


# ---- responses out ----


def test_position_message_carries_expired_and_lots_in_order() -> None:
    view = PositionView(
        sku="YOG-1",
        location_id="DC-EAST",
        on_hand=60,
        available=10,
        expired=50,
        lots=[
            LotView("L9", None, on_hand=10, available=10),
            LotView("L7", EXPIRY, on_hand=50, reserved=0, available=0),
        ],
    )
    message = convert.position_message(view)
    assert message.expired == 50
    assert [lot.lot_id for lot in message.lots] == ["L9", "L7"]
    assert not message.lots[0].HasField("expires_at")  # never expires
    assert message.lots[1].expires_at.ToDatetime(tzinfo=UTC) == EXPIRY
    assert (message.lots[1].on_hand, message.lots[1].available) == (50, 0)
    assert (message.lots[0].on_hand, message.lots[0].available) == (10, 10)


def test_position_message_of_an_untracked_sku_has_no_lots() -> None:
    message = convert.position_message(PositionView(sku="S", location_id="L", on_hand=3))
    assert (message.expired, len(message.lots)) == (0, 0)


def test_reservation_message_carries_line_lots() -> None:
    view = ReservationView(
        reservation_id="r-1",
        channel="web",
        order_ref="O-1",
        status="ACTIVE",
        lines=[
            ReservationLineView(
                "YOG-1",
                "DC-EAST",
                5,
                0,
                lots=[LotHoldView("L7", 3, EXPIRY), LotHoldView("L9", 2, None)],
            ),
            ReservationLineView("S", "DC-EAST", 1, 0),
        ],
        expires_at=EXPIRY,
        created_at=EXPIRY - timedelta(days=1),
        ledger_position=4,
    )
    message = convert.reservation_message(view)
    lots = message.lines[0].lots
    assert [(lot.lot_id, lot.qty) for lot in lots] == [("L7", 3), ("L9", 2)]
    assert lots[0].expires_at.ToDatetime(tzinfo=UTC) == EXPIRY
    assert not lots[1].HasField("expires_at")
    assert len(message.lines[1].lots) == 0


def test_in_transit_message_carries_the_lot() -> None:
    view = InTransitView(
        transfer_id="T-5",
        sku="YOG-1",
        from_location_id="DC-EAST",
        to_location_id="STORE-9",
        dispatched=30,
        received=0,
        dispatched_at=EXPIRY - timedelta(days=30),
        expected_at=None,
        lot_id="L7",
    )
    assert convert.in_transit_message(view).lot_id == "L7"
