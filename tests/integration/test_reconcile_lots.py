"""``ledger reconcile`` with a lot-level snapshot (issue 19 must-show 5), SQLite and PostgreSQL.

A LOT SKU holds two lots at DC-1 as of T (a third lot at DC-1 the file leaves out, and a
receipt that occurs after T and so must not count); the file counts one lot over and one
short. The report must list one variance per (sku, location, lot) with the lot, the totals
over lots, the missing lot as NOT_COUNTED; posting must make the ledger equal the file per
lot at T, and a second reconcile must find nothing.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.audit.as_of import Axis
from ledger.audit.reconcile import (
    INVALID,
    SnapshotError,
    Status,
    count_message_id,
    read_snapshot,
    reconcile,
)
from ledger.domain.item_policy import Tracking
from ledger.domain.movements import Movement, MovementType
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext

T = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
CTX = CallContext("test")
EXPIRY = T + timedelta(days=90)


def _receipt(mid: str, sku: str, qty: int, at: datetime, lot: str | None = None) -> Movement:
    return Movement(
        source="seed",
        message_id=mid,
        type=MovementType.RECEIPT,
        sku=sku,
        location_id="DC-1",
        qty=qty,
        occurred_at=at,
        lot_id=lot,
        expires_at=EXPIRY if lot else None,
    )


@pytest.fixture
def seeded(database_url: str) -> Iterator[LedgerService]:
    service = LedgerService.open(database_url)
    try:
        service.set_item_policy(CTX, "ip-milk", "MILK", Tracking.LOT).result()
        before = T - timedelta(hours=2)
        service.record_movements(
            CTX,
            [
                _receipt("r1", "MILK", 10, before, "L-1"),
                _receipt("r2", "MILK", 5, before, "L-2"),
                _receipt("r3", "MILK", 4, before, "L-3"),  # not in the file
                _receipt("r4", "BOLT", 40, before),  # untracked, counted whole
                # Occurs after T: the balance at T does not hold it.
                _receipt("r5", "MILK", 100, T + timedelta(hours=1), "L-1"),
            ],
        ).result()
        yield service
    finally:
        service.close()


def _write(path: Path, rows: list[tuple[str, str, str, int]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(("sku", "location_id", "lot_id", "on_hand"))
        writer.writerows(rows)
    return path


def _lots_at(service: LedgerService, at: datetime) -> dict[str, int]:
    view = service.position_as_of("MILK", "DC-1", at, Axis.EFFECTIVE)
    return {lot.lot_id: lot.on_hand for lot in view.lots}


def test_lot_snapshot_reconciles_per_lot_and_posting_makes_the_ledger_equal_the_file(
    seeded: LedgerService, tmp_path: Path
) -> None:
    snapshot = _write(
        tmp_path / "lots.csv",
        [("MILK", "DC-1", "L-1", 13), ("MILK", "DC-1", "L-2", 3), ("BOLT", "DC-1", "", 40)],
    )
    assert _lots_at(seeded, T) == {"L-1": 10, "L-2": 5, "L-3": 4}
    head = seeded.ledger_head()

    result = reconcile(seeded, snapshot, T, post=True)

    assert result.lot_column and result.lines == 3 and result.matching == 1  # BOLT whole
    assert [(v.sku, v.lot_id, v.counted, v.ledger_on_hand, v.variance, v.status, v.line)
            for v in result.variances] == [
        ("MILK", "L-1", 13, 10, 3, Status.OVER, 2),
        ("MILK", "L-2", 3, 5, -2, Status.SHORT, 3),
    ]  # fmt: skip
    assert (result.units_over, result.units_short, result.net) == (3, 2, 1)
    assert [(v.sku, v.lot_id, v.ledger_on_hand, v.status) for v in result.not_counted] == [
        ("MILK", "L-3", 4, Status.NOT_COUNTED)
    ]
    assert (result.recorded, result.duplicates, result.invalid, result.exit_code) == (2, 0, 0, 1)

    # The report has a lot column (and only lot-level files do).
    assert result.report_dir is not None
    with (result.report_dir / "variances.csv").open(encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0][:4] == ["sku", "location_id", "lot_id", "counted"]
    assert [r[:7] for r in rows[1:]] == [
        ["MILK", "DC-1", "L-1", "13", "10", "3", "OVER"],
        ["MILK", "DC-1", "L-2", "3", "5", "-2", "SHORT"],
        ["MILK", "DC-1", "L-3", "", "4", "", "NOT_COUNTED"],
    ]
    summary = (result.report_dir / "summary.txt").read_text()
    assert "on_hand per lot" in summary
    assert re.search(r"posted +2 +cycle_count\(s\) recorded, 0 already", summary), summary

    # Posted counts name their lots; the ledger at T equals the file per lot, the lot left
    # out untouched.
    posted = [e for e in seeded.ledger_entries(head, 1000) if e.source == "reconcile"]
    assert sorted((e.type, e.data.get("lot_id"), e.data.get("counted")) for e in posted) == [
        ("cycle_count", "L-1", 13),
        ("cycle_count", "L-2", 3),
    ]
    assert {e.message_id for e in posted} == {
        count_message_id(T, "MILK", "DC-1", 13, "L-1"),
        count_message_id(T, "MILK", "DC-1", 3, "L-2"),
    }
    assert _lots_at(seeded, T) == {"L-1": 13, "L-2": 3, "L-3": 4}
    # On the effective axis the receipt after T still adds on top of the posted count.
    assert _lots_at(seeded, T + timedelta(hours=2)) == {"L-1": 113, "L-2": 3, "L-3": 4}

    again = reconcile(seeded, snapshot, T, post=True)
    assert (again.variances, again.matching, again.recorded, again.exit_code) == ([], 3, 0, 0)
    assert [v.lot_id for v in again.not_counted] == ["L-3"]


def test_counts_not_fitting_the_tracking_are_refused_on_post_and_the_rest_recorded(
    seeded: LedgerService, tmp_path: Path
) -> None:
    snapshot = _write(
        tmp_path / "mixed.csv",
        [
            ("MILK", "DC-1", "", 20),  # a LOT SKU counted whole
            ("BOLT", "DC-1", "B-1", 41),  # an untracked SKU counted by lot
            ("MILK", "DC-2", "L-9", 6),  # a lot new at another location
        ],
    )
    result = reconcile(seeded, snapshot, T, post=True)
    assert [(v.sku, v.location_id, v.lot_id, v.ledger_on_hand, v.post)
            for v in result.variances] == [
        ("MILK", "DC-1", None, 19, INVALID),
        ("BOLT", "DC-1", "B-1", 0, INVALID),
        ("MILK", "DC-2", "L-9", 0, "RECORDED"),
    ]  # fmt: skip
    # BOLT's stock is counted by nothing the ledger can take: reported as not counted.
    assert [(v.sku, v.lot_id, v.ledger_on_hand) for v in result.not_counted] == [("BOLT", None, 40)]
    assert (result.recorded, result.invalid) == (1, 2)
    assert result.report_dir is not None
    assert "2 refused" in (result.report_dir / "summary.txt").read_text()
    assert seeded.position_as_of("MILK", "DC-2", T, Axis.EFFECTIVE).on_hand == 6
    assert _lots_at(seeded, T) == {"L-1": 10, "L-2": 5, "L-3": 4}
    assert seeded.get_position("BOLT", "DC-1").on_hand == 40


def test_lot_column_rows_are_checked_and_a_repeated_lot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(
        b"LOT_ID,sku,location_id,on_hand\n"  # 1 (any order, any case)
        b"L-1,A,DC-1,5\n"  # 2
        b"L-2,A,DC-1,5\n"  # 3 another lot: fine
        b"L-1,A,DC-1,7\n"  # 4 duplicate of 2
        b",A,DC-1,7\n"  # 5 the whole position: fine
        b",A,DC-1,8\n"  # 6 duplicate of 5
        b'"a\x01",A,DC-1,1\n'  # 7 control character in the lot
        b"L-3,A,DC-1\n"  # 8 a field missing
    )
    with pytest.raises(SnapshotError) as caught:
        read_snapshot(path)
    problems = dict(caught.value.problems)
    assert sorted(problems) == [4, 6, 7, 8]
    assert "line 2" in problems[4] and "lot_id 'L-1'" in problems[4]
    assert "line 5" in problems[6] and "control characters" in problems[7]
    assert "expected 4 fields" in problems[8]
    good = path.with_name("good.csv")
    good.write_bytes(b"LOT_ID,sku,location_id,on_hand\nL-1,A,DC-1,5\n,A,DC-1,7\n")
    assert [(r.lot_id, r.counted) for r in read_snapshot(good)] == [("L-1", 5), (None, 7)]
