"""``Position.lots[]`` lists a lot with a non-zero bucket or a hold that still holds: a hold
past its expiry holds nothing, whether or not the sweeper has recorded EXPIRED yet (found
by the lot model machine: the lot stayed listed, all zeros, until the sweep)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.domain.item_policy import Tracking
from ledger.domain.movements import Movement, MovementType
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput, ReserveLine

START = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
CTX = CallContext("tester", "corr")


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def ledger() -> Iterator[tuple[LedgerService, Clock]]:
    clock = Clock()
    with tempfile.TemporaryDirectory() as directory:
        service = LedgerService.open(f"sqlite:///{Path(directory) / 'ledger.db'}", clock=clock)
        try:
            service.set_item_policy(CTX, "lot-k", "K", Tracking.LOT).result()
            yield service, clock
        finally:
            service.close()


def _record(service: LedgerService, message_id: str, kind: MovementType, qty: int) -> None:
    movement = Movement("wms", message_id, kind, "K", "DC-1", qty=qty, lot_id="x1")
    [result] = service.record_movements(CTX, [movement]).result()
    assert result.outcome == "RECORDED"


def test_a_lot_held_only_by_an_expired_hold_is_not_listed(
    ledger: tuple[LedgerService, Clock],
) -> None:
    service, clock = ledger
    _record(service, "m1", MovementType.RECEIPT, 5)
    service.reserve(
        CTX, ReserveInput("r1", "web", "O-1", (ReserveLine("K", "DC-1", 5),), timedelta(seconds=1))
    ).result()
    _record(service, "m2", MovementType.SHIPMENT, 5)  # without the reservation: hold stays
    held = service.get_position("K", "DC-1")
    assert [(lot.lot_id, lot.on_hand, lot.reserved) for lot in held.lots] == [("x1", 0, 5)]

    clock.now = START + timedelta(seconds=1)  # the hold's expiry; nothing swept yet
    assert service.get_position("K", "DC-1").lots == []
    assert service.expire_due_reservations() != []
    assert service.get_position("K", "DC-1").lots == []
