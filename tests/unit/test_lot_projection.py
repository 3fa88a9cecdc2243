"""The projection folds lots exactly like the ledger, also from a reloaded row (found in
review): a hold's lot claims come back from JSON in another order, and a lot's first count
is not judged against the position's untracked counts."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.domain.hold_book import Hold, HoldBook
from ledger.domain.item_policy import Tracking
from ledger.domain.movements import Movement, MovementType
from ledger.domain.position import position_id
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from projections.position_state import STALE_COUNT, ProjectedPosition

START = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
CTX = CallContext("tester", "corr")


def test_ship_lot_draws_other_claims_in_expiry_order_not_stored_order() -> None:
    hold: Hold = {
        "channel": "web",
        "order_ref": "O-1",
        "status": "COMMITTED",
        "qty": 10,
        "shipped": 0,
        "expires_at": START,
        "lots": {"A": 5, "Z": 5},  # as a row sorted by key gives them back
    }
    book = HoldBook({"r1": hold})
    expiry = {"Z": START + timedelta(days=1), "A": START + timedelta(days=2), "M": None}
    book.ship_lot("r1", 3, "M", lambda lot: (expiry[lot] is None, expiry[lot], lot))
    assert book["r1"].get("lots") == {"A": 5, "Z": 2}  # Z expires first: drawn first
    assert (book.lot_allocated("Z"), book.lot_allocated("A")) == (2, 5)


@pytest.fixture
def service() -> Iterator[LedgerService]:
    with tempfile.TemporaryDirectory() as directory:
        ledger = LedgerService.open(
            f"sqlite:///{Path(directory) / 'ledger.db'}", clock=lambda: START
        )
        try:
            yield ledger
        finally:
            ledger.close()


def _count(
    service: LedgerService, message_id: str, counted: int, at: datetime, lot_id: str | None = None
) -> None:
    movement = Movement(
        "wms",
        message_id,
        MovementType.CYCLE_COUNT,
        "K",
        "DC-1",
        counted=counted,
        occurred_at=at,
        lot_id=lot_id,
    )
    [result] = service.record_movements(CTX, [movement]).result()
    assert result.outcome == "RECORDED"


def test_a_lots_first_count_is_not_stale_against_untracked_counts(service: LedgerService) -> None:
    _count(service, "c1", 0, START + timedelta(hours=2))  # untracked, then converted
    service.set_item_policy(CTX, "lot-k", "K", Tracking.LOT).result()
    _count(service, "c2", 3, START + timedelta(hours=1), lot_id="L")  # earlier instant
    assert service.get_position("K", "DC-1").on_hand == 3

    projected = ProjectedPosition("K", "DC-1")
    found = []
    for event in service.app.events.get(position_id("K", "DC-1")):
        found.extend(projected.fold(event, 1))
    assert [e.type for e in found if e.type == STALE_COUNT] == []
    assert projected.on_hand == 3
