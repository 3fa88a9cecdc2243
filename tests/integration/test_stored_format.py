"""The ledger's transcoder (ledger.store.transcoder, issue 20) keeps stored format version 1,
the library's stdlib JSON: it reads the previous release's database and re-encodes every row
of it to the very bytes stored, and what it writes reads back, hash chains verified, with the
library's own JSONTranscoder (a rollback to the previous release).

The database is a copy of the compat fixture (tests/fixtures/compat/v1/ledger.db), written
by the release before lots with the stdlib encoder; it is never regenerated.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import JSONTranscoder, StoredEvent

from ledger.application import InventoryLedger
from ledger.audit.verify import VerifyProgress, verify_ledger
from ledger.config import eventsourcing_env
from ledger.domain.movements import Movement, MovementType
from ledger.domain.position import position_id
from ledger.service import LedgerService
from ledger.store.transcoder import LedgerTranscoder
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput, ReserveLine

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "compat" / "v1" / "ledger.db"
# The environment of an application that writes and reads with the library's stdlib encoder.
STOCK = {"TRANSCODER_TOPIC": "eventsourcing.persistence:JSONTranscoder"}
FIXTURE_ENTRIES = 247  # position events in the fixture (its expected.json, VerifyLedger)
POSITIONS = [("SKU-A", "DC-1"), ("SKU-C", "DC-1"), ("SKU-NEW", "DC-9")]


def _rows(database: Path, table: str) -> list[StoredEvent]:
    """Rows in the order written (events) or by aggregate and version (snapshots)."""
    order = "rowid" if table == "stored_events" else "originator_id, originator_version"
    with sqlite3.connect(database) as db:
        found = db.execute(
            f"SELECT originator_id, originator_version, topic, state FROM {table} ORDER BY {order}"
        ).fetchall()
    return [
        StoredEvent(UUID(str(oid)), version, topic, bytes(state))
        for oid, version, topic, state in found
    ]


def _report(app: InventoryLedger) -> VerifyProgress:
    *_, report = verify_ledger(app)
    return report


@pytest.fixture
def database(tmp_path: Path) -> Path:
    copy = tmp_path / "ledger.db"
    shutil.copy(FIXTURE, copy)  # opening may add indexes; the fixture stays as it is
    return copy


@pytest.fixture
def apps(database: Path) -> Iterator[tuple[InventoryLedger, InventoryLedger]]:
    env = eventsourcing_env(f"sqlite:///{database}")
    ours, stock = InventoryLedger(env), InventoryLedger({**env, **STOCK})
    assert type(ours.mapper.transcoder) is LedgerTranscoder
    assert type(stock.mapper.transcoder) is JSONTranscoder
    yield ours, stock
    ours.close()
    stock.close()


def test_previous_release_reads_and_rewrites_byte_for_byte(
    database: Path, apps: tuple[InventoryLedger, InventoryLedger]
) -> None:
    ours, stock = apps
    events, snapshots = _rows(database, "stored_events"), _rows(database, "stored_snapshots")
    assert len(events) > FIXTURE_ENTRIES and snapshots  # every aggregate kind, and a snapshot
    for row in events + snapshots:
        event = ours.mapper.to_domain_event(row)
        assert vars(event) == vars(stock.mapper.to_domain_event(row)), row
        assert ours.mapper.to_stored_event(event).state == row.state, row
    report = _report(ours)
    assert report.ok, report.broken
    assert report.entries_checked == FIXTURE_ENTRIES


def _write_more(app: InventoryLedger) -> None:
    """A receipt, a reservation and its commit on old positions (one past its snapshot) and
    a new one, written by this release."""
    now = datetime(2026, 6, 1, tzinfo=UTC)
    service = LedgerService(app, clock=lambda: now)
    ctx = CallContext("tester", "corr")
    receipts = [
        Movement(
            source="wms",
            message_id=f"fmt-{n}",
            type=MovementType.RECEIPT,
            sku=sku,
            location_id=location,
            qty=7,
        )
        for n, (sku, location) in enumerate(POSITIONS)
    ]
    assert [r.outcome for r in service.record_movements(ctx, receipts).result()] == [
        "RECORDED"
    ] * len(POSITIONS)
    lines = tuple(ReserveLine(sku, location, 2) for sku, location in POSITIONS)
    request = ReserveInput("fmt-reserve", "pos", "fmt-order", lines, timedelta(minutes=5))
    reservation = service.reserve(ctx, request).result()
    service.commit(ctx, "fmt-commit", reservation.reservation_id, "pos").result()
    service.pipeline.close()  # the app stays open for the comparison


def _state_of(app: InventoryLedger, sku: str, location: str) -> dict[str, Any]:
    position = app.repository.get(position_id(sku, location))
    return {k: v for k, v in vars(position).items() if k != "_pending_events"}


def test_previous_format_reads_what_this_release_writes(
    database: Path, apps: tuple[InventoryLedger, InventoryLedger]
) -> None:
    ours, stock = apps
    before = len(_rows(database, "stored_events"))
    _write_more(ours)
    new_rows = _rows(database, "stored_events")[before:]
    assert len(new_rows) >= 2 * len(POSITIONS) + 3  # position events, reservation, keys
    for row in new_rows:
        event = stock.mapper.to_domain_event(row)
        assert vars(event) == vars(ours.mapper.to_domain_event(row)), row
        assert stock.mapper.to_stored_event(event).state == row.state, row
    for sku, location in POSITIONS:
        assert _state_of(stock, sku, location) == _state_of(ours, sku, location)
    report = _report(stock)
    assert report.ok, report.broken
    # Receipts: Received on the two old positions, Opened + Received on the new one; then a
    # HoldPlaced and a HoldCommitted on each.
    assert report.entries_checked == FIXTURE_ENTRIES + 4 + 2 * len(POSITIONS)
