"""The serial index's rules (contract §2 "Serials"), as pure functions and folds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ledger.domain.movements import Disposition, FromBucket, Movement, MovementType
from ledger.domain.position import EventMeta, Position
from ledger.domain.serial_unit import (
    SerialState,
    SerialStatus,
    SerialUnit,
    serial_after,
    serial_unit_id,
)
from projections.position_state import SERIAL_CONFLICT, ProjectedPosition

NOW = datetime(2026, 12, 1, tzinfo=UTC)
IN, TRANSIT, SHIPPED, OFF = (
    SerialStatus.IN_STOCK,
    SerialStatus.IN_TRANSIT,
    SerialStatus.SHIPPED,
    SerialStatus.WRITTEN_OFF,
)


def mv(kind: str, location: str = "DC", **fields: Any) -> Movement:
    fields.setdefault("serial_numbers", ("S1",))
    return Movement("t", "m", MovementType(kind), "SKU", location, **fields)


def at(status: SerialStatus, location: str = "DC", bucket: str = "on_hand") -> SerialState:
    return SerialState(status, location, bucket if status is IN else "")


ARRIVALS = [
    (mv("receipt", qty=1), "on_hand"),
    (mv("receipt", qty=1, putaway_pending=True), "receiving"),
    (mv("return_receipt", qty=1), "on_hand"),
    (mv("return_receipt", qty=1, disposition=Disposition.QUARANTINE), "quarantine"),
    (mv("return_receipt", qty=1, disposition=Disposition.DAMAGED), "damaged"),
    (mv("adjustment", delta=1), "on_hand"),
    (mv("cycle_count", counted=1), "on_hand"),
]


@pytest.mark.parametrize(("movement", "bucket"), ARRIVALS)
def test_arrivals_take_a_unit_not_in_stock_into_their_bucket(
    movement: Movement, bucket: str
) -> None:
    for before in (None, at(SHIPPED, "X"), at(OFF, "X")):
        assert serial_after(movement, before) == SerialState(IN, "DC", bucket)


@pytest.mark.parametrize(("movement", "bucket"), ARRIVALS[:-1])
def test_arriving_a_unit_in_stock_anywhere_conflicts(movement: Movement, bucket: str) -> None:
    for before in (at(IN, "DC"), at(IN, "X", "quarantine"), SerialState(TRANSIT, "DC", "x")):
        assert serial_after(movement, before) is None


MOVES = [
    (mv("putaway", qty=1), "receiving", "on_hand"),
    (mv("quarantine", qty=1), "on_hand", "quarantine"),
    (mv("quarantine_release", qty=1), "quarantine", "on_hand"),
    (mv("damage", qty=1), "on_hand", "damaged"),
    (mv("damage", qty=1, from_bucket=FromBucket.QUARANTINE), "quarantine", "damaged"),
]


@pytest.mark.parametrize(("movement", "source", "target"), MOVES)
def test_moves_within_a_position_need_the_unit_here_in_the_source_bucket(
    movement: Movement, source: str, target: str
) -> None:
    assert serial_after(movement, at(IN, "DC", source)) == SerialState(IN, "DC", target)
    others = {"on_hand", "receiving", "quarantine", "damaged"} - {source}
    for before in [
        None,
        at(IN, "X", source),
        at(SHIPPED),
        at(OFF),
        SerialState(TRANSIT, "DC", "in_transit_inbound"),
        *(at(IN, "DC", b) for b in others),
    ]:
        assert serial_after(movement, before) is None, before


def test_leaving_stock() -> None:
    shipped = serial_after(mv("shipment", qty=1), at(IN), "ORDER-7")
    assert shipped == SerialState(SHIPPED, "DC", "", "ORDER-7")
    assert serial_after(mv("write_off", qty=1), at(IN, bucket="damaged")) == at(OFF)
    # A negative adjustment writes the unit off (decisions.md).
    assert serial_after(mv("adjustment", delta=-1), at(IN)) == at(OFF)
    assert serial_after(mv("shipment", qty=1), at(IN, bucket="quarantine")) is None
    assert serial_after(mv("write_off", qty=1), at(IN)) is None
    assert serial_after(mv("adjustment", delta=-1), at(IN, "X")) is None
    assert serial_after(mv("shipment", qty=1), None) is None
    assert serial_after(mv("shipment", qty=1), at(SHIPPED)) is None


def test_transfer_takes_the_unit_in_transit_towards_the_destination_only() -> None:
    dispatch = mv("transfer_dispatch", qty=1, transfer_id="T", to_location_id="ST")
    travelling = serial_after(dispatch, at(IN))
    assert travelling == SerialState(TRANSIT, "ST", "in_transit_inbound")
    assert serial_after(dispatch, at(IN, bucket="quarantine")) is None
    receipt = mv("transfer_receipt", "ST", qty=1, transfer_id="T")
    assert serial_after(receipt, travelling) == SerialState(IN, "ST", "on_hand")
    # Received at another location, or never dispatched: conflicts.
    assert serial_after(mv("transfer_receipt", "OTHER", qty=1, transfer_id="T"), travelling) is None
    assert serial_after(receipt, at(IN, "ST")) is None
    assert serial_after(receipt, None) is None


def test_cycle_count_keeps_units_here_finds_lost_ones_and_refuses_units_elsewhere() -> None:
    count = mv("cycle_count", counted=1)
    here = at(IN, "DC", "quarantine")
    assert serial_after(count, here) == here  # unchanged: no step
    assert serial_after(count, at(IN, "X")) is None
    # In transit is in stock too, even towards here: the transfer receipt takes it in.
    assert serial_after(count, SerialState(TRANSIT, "DC", "in_transit_inbound")) is None
    assert serial_after(count, at(SHIPPED, "X")) == at(IN)


def test_serial_unit_folds_its_steps_into_state_and_history() -> None:
    unit = SerialUnit.first_seen("SKU", "S1")
    assert unit.id == serial_unit_id("SKU", "S1") != serial_unit_id("SKU", "S2")
    assert serial_unit_id("A|B", "C") != serial_unit_id("A", "B|C")
    assert unit.state is None
    for kind, after in [
        ("receipt", at(IN)),
        ("shipment", SerialState(SHIPPED, "DC", "", "O-1")),
    ]:
        unit.step(kind, after, source="s", message_id=kind, occurred_at=NOW, recorded_at=NOW)
    assert unit.state == SerialState(SHIPPED, "DC", "", "O-1")
    assert [(h["type"], h["status"], h["order_ref"]) for h in unit.history] == [
        ("receipt", "IN_STOCK", ""),
        ("shipment", "SHIPPED", "O-1"),
    ]
    assert unit.version == 3


def _meta(message_id: str) -> EventMeta:
    return EventMeta(NOW, NOW, "s", message_id, "", "", "")


def test_conflicts_are_recorded_on_the_event_and_raised_by_the_projection() -> None:
    position = Position.open("SKU", "DC", _meta("open"))
    position.record(mv("receipt", qty=2, serial_numbers=("S1", "S2")), _meta("r1"))
    position.record(
        mv("receipt", qty=2, serial_numbers=("S1", "S3")), _meta("r2"), serial_conflicts=["S1"]
    )
    opened, plain, conflicted = position.collect_events()
    # Unset, the field is not on the event at all (stored and hashed as before).
    assert "serial_conflicts" not in vars(plain)
    assert conflicted.serial_conflicts == ["S1"]
    assert position.on_hand == 4  # the fact's quantities move all the same

    projected = ProjectedPosition("SKU", "DC")
    raised = [projected.fold(e, n) for n, e in enumerate([opened, plain, conflicted], 1)]
    assert raised[:2] == [[], []]
    [exception] = raised[2]
    assert (exception.type, exception.quantity, exception.message_id) == (SERIAL_CONFLICT, 1, "r2")
    assert "S1" in exception.detail
