"""A position's holds are stored as they always were: a snapshot written before ``Hold``
became a typed record (a TypedDict, still a plain dict at run time) loads, folds on, and
encodes to the same bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
from eventsourcing.persistence import StoredEvent

from ledger.application import InventoryLedger
from ledger.config import eventsourcing_env
from ledger.domain.hold_book import HoldBook, book_of
from ledger.domain.position import Position

# Stored state of a snapshot taken by the code before the change (commit da5ba1a): position
# S@L at version 3, on_hand 5, one ACTIVE hold of 2 for reservation 7d9b90ff-...
OLD_SNAPSHOT = (
    b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-12-06T15:16:50.293412+00:00"},"topi'
    b'c":"ledger.domain.position:Position","state":{"_created_on":{"_type_":"datetime_iso","_d'
    b'ata_":"2026-12-06T15:16:50.289453+00:00"},"_modified_on":{"_type_":"datetime_iso","_data'
    b'_":"2026-12-06T15:16:50.292188+00:00"},"sku":"S","location_id":"L","on_hand":5,"receivin'
    b'g":0,"quarantine":0,"damaged":0,"in_transit_inbound":0,"safety_stock":0,"fences":{},"hol'
    b'ds":{"7d9b90ff-b96e-4d4f-8f2e-a22434c5353f":{"channel":"web","order_ref":"o1","status":"'
    b'ACTIVE","qty":2,"shipped":0,"expires_at":{"_type_":"datetime_iso","_data_":"2026-01-02T0'
    b'3:14:05+00:00"}}},"inbound":{},"last_count_at":null,"updated_at":{"_type_":"datetime_iso'
    b'","_data_":"2026-01-02T03:04:05+00:00"},"last_hash":"8fa0c0513bb3ce660a5aadb340b1d33b467'
    b'59559d2f1ba2cfda1630a64201e9c","max_occurred_at":{"_type_":"datetime_iso","_data_":"2026'
    b'-01-02T03:04:05+00:00"}}}'
)
POSITION_ID = UUID("277b4bc9-c47b-5f14-9d09-154fa1ca3ba2")
RESERVATION_ID = "7d9b90ff-b96e-4d4f-8f2e-a22434c5353f"
NOW = datetime(2026, 1, 2, 3, 5, tzinfo=UTC)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[InventoryLedger]:
    app = InventoryLedger(eventsourcing_env(f"sqlite:///{tmp_path / 'ledger.db'}"))
    yield app
    app.close()


def _load(app: InventoryLedger) -> Position:
    assert app.snapshots is not None
    stored = StoredEvent(POSITION_ID, 3, "eventsourcing.domain:Snapshot", OLD_SNAPSHOT)
    position = app.snapshots.mapper.to_domain_event(stored).mutate(None)
    assert isinstance(position, Position)
    return position


def test_an_old_snapshot_with_a_hold_loads_and_folds_on(app: InventoryLedger) -> None:
    position = _load(app)
    assert position.holds == {
        RESERVATION_ID: {
            "channel": "web",
            "order_ref": "o1",
            "status": "ACTIVE",
            "qty": 2,
            "shipped": 0,
            "expires_at": datetime(2026, 1, 2, 3, 14, 5, tzinfo=UTC),
        }
    }
    assert (position.reserved(NOW), position.available(NOW)) == (2, 3)
    book_of(position).commit(RESERVATION_ID)
    assert isinstance(position.holds, HoldBook)
    assert (position.reserved(NOW), position.allocated(), position.available(NOW)) == (0, 2, 3)


def test_an_old_snapshot_encodes_to_the_same_bytes(app: InventoryLedger) -> None:
    assert app.snapshots is not None
    position = _load(app)
    book_of(position)  # holds as the folds keep them: a HoldBook, not the plain dict loaded
    again = app.snapshots.mapper.to_stored_event(Position.Snapshot.take(position)).state
    # Only the snapshot's own timestamp (when it was taken) differs.
    assert again.split(b',"topic":', 1)[1] == OLD_SNAPSHOT.split(b',"topic":', 1)[1]
    assert json.loads(again)["state"] == json.loads(OLD_SNAPSHOT)["state"]
