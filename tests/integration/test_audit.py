"""AuditService end to end against a real ``ledger serve`` (SQLite and PostgreSQL).

Late facts on the two time axes, tamper evidence (a stored row edited behind the service's
back is named by VerifyLedger and by the standalone verifier of an export), and
StreamLedger(follow) under concurrent writers.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import timestamp_pb2
from inventory.ledger.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
)

from testbed.server import LedgerProcess, stub

ROOT = Path(__file__).resolve().parents[2]
RECORDED = audit_service_pb2.AXIS_RECORDED
EFFECTIVE = audit_service_pb2.AXIS_EFFECTIVE


def _ts(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _record(ledger: LedgerProcess, *movements: movement_pb2.Movement) -> None:
    movements_stub = stub(ledger, movement_service_pb2_grpc.MovementServiceStub)
    movements_stub.RecordMovements(
        movement_service_pb2.RecordMovementsRequest(movements=list(movements)), timeout=30
    )


def _movement(kind: int, sku: str, location_id: str, **fields: Any) -> movement_pb2.Movement:
    occurred = fields.pop("occurred_at", None)
    message = movement_pb2.Movement(
        source="audit-it",
        message_id=uuid.uuid4().hex,
        type=kind,
        sku=sku,
        location_id=location_id,
        **fields,
    )
    if occurred is not None:
        message.occurred_at.CopyFrom(_ts(occurred))
    return message


def _on_hand(audit: Any, sku: str, location_id: str, at: datetime, axis: int) -> int:
    request = audit_service_pb2.GetPositionAsOfRequest(
        sku=sku, location_id=location_id, as_of=_ts(at), axis=axis
    )
    return audit.GetPositionAsOf(request, timeout=10).on_hand


def test_late_shipment_changes_yesterday_effective_but_not_recorded(ledger: LedgerProcess) -> None:
    audit = stub(ledger, audit_service_pb2_grpc.AuditServiceStub)
    now = datetime.now(UTC)
    yesterday = now - timedelta(days=1)
    _record(
        ledger,
        _movement(
            movement_pb2.MOVEMENT_TYPE_RECEIPT,
            "SKU-A",
            "DC",
            qty=40,
            occurred_at=now - timedelta(days=2),
        ),
    )
    time.sleep(0.05)
    between = datetime.now(UTC)  # after the receipt was recorded, before the shipment
    time.sleep(0.05)
    before = {
        axis: _on_hand(audit, "SKU-A", "DC", at, axis)
        for axis in (RECORDED, EFFECTIVE)
        for at in (yesterday,)
    }
    assert before == {RECORDED: 0, EFFECTIVE: 40}  # nothing was recorded yet yesterday

    # Recorded today, occurred yesterday (one hour before the instant we ask about).
    _record(
        ledger,
        _movement(
            movement_pb2.MOVEMENT_TYPE_SHIPMENT,
            "SKU-A",
            "DC",
            qty=15,
            occurred_at=yesterday - timedelta(hours=1),
        ),
    )
    assert _on_hand(audit, "SKU-A", "DC", yesterday, EFFECTIVE) == 25  # changed
    assert _on_hand(audit, "SKU-A", "DC", yesterday, RECORDED) == 0  # unchanged
    # What the ledger knew a moment ago versus what we know now about that moment.
    assert _on_hand(audit, "SKU-A", "DC", between, RECORDED) == 40
    assert _on_hand(audit, "SKU-A", "DC", between, EFFECTIVE) == 25
    known_then = audit_service_pb2.GetPositionAsOfRequest(
        sku="SKU-A", location_id="DC", as_of=_ts(yesterday), axis=EFFECTIVE, known_at=_ts(between)
    )
    assert audit.GetPositionAsOf(known_then, timeout=10).on_hand == 40  # bitemporal

    listing = audit.ListMovements(
        audit_service_pb2.ListMovementsRequest(
            sku="SKU-A", location_id="DC", axis=EFFECTIVE, to=_ts(yesterday)
        ),
        timeout=10,
    )
    assert [e.type for e in listing.entries] == [
        audit_service_pb2.ENTRY_TYPE_OPENED,
        audit_service_pb2.ENTRY_TYPE_RECEIPT,
        audit_service_pb2.ENTRY_TYPE_SHIPMENT,
    ]
    assert listing.entries[2].qty == 15


def _tamper(database_url: str, sql_sqlite: str, sql_postgres: str) -> int:
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            changed = conn.execute(sql_sqlite).rowcount
        return changed
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(sql_postgres).rowcount


def _verify(audit: Any, **position: str) -> audit_service_pb2.VerifyLedgerProgress:
    messages = list(
        audit.VerifyLedger(audit_service_pb2.VerifyLedgerRequest(**position), timeout=60)
    )
    assert messages and messages[-1].done
    return messages[-1]


def _export_and_verify(database_url: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "ledger.jsonl"
    subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "export", str(out), "--database", database_url],
        check=True,
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "verify_ledger_export.py"),
            str(out),
            "--whole-ledger",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    report = json.loads(result.stdout)
    assert result.returncode == (0 if report["ok"] else 1)
    return report


def _seed_for_tampering(ledger: LedgerProcess) -> None:
    for sku in ("SKU-T", "SKU-U"):
        _record(
            ledger,
            *[_movement(movement_pb2.MOVEMENT_TYPE_RECEIPT, sku, "DC", qty=q) for q in (5, 7, 9)],
        )


@pytest.mark.parametrize("tampering", ["quantity", "order"])
def test_tampered_row_is_named_by_verify_and_by_the_standalone_verifier(
    ledger: LedgerProcess, tmp_path: Path, tampering: str
) -> None:
    audit = stub(ledger, audit_service_pb2_grpc.AuditServiceStub)
    _seed_for_tampering(ledger)
    clean = _verify(audit)
    assert clean.ok and clean.entries_checked == 8 and clean.positions_checked == 2
    assert _export_and_verify(ledger.database_url, tmp_path)["ok"]

    # SKU-T's version 3 is its receipt of 7 units (1 opened, 2 receipt 5, 3 receipt 7).
    position_of = _position_sql(ledger.database_url, "SKU-T")
    if tampering == "quantity":
        changed = _tamper(
            ledger.database_url,
            "UPDATE stored_events SET state = CAST(replace(CAST(state AS TEXT), '\"qty\":7',"
            " '\"qty\":70') AS BLOB)"
            f" WHERE originator_id = ({position_of}) AND originator_version = 3",
            "UPDATE ledger_events SET state = convert_to(replace(convert_from(state, 'UTF8'),"
            " '\"qty\":7', '\"qty\":70'), 'UTF8')"
            f" WHERE originator_id = ({position_of}) AND originator_version = 3",
        )
    else:  # swap versions 3 and 4 of SKU-T's events (each row keeps its content)
        changed = _swap_versions(ledger.database_url, position_of)
    assert changed == (2 if tampering == "order" else 1)

    whole = _verify(audit)
    assert not whole.ok
    assert [(b.sku, b.location_id, b.version) for b in whole.broken_links] == [("SKU-T", "DC", 3)]
    assert whole.broken_links[0].reason in ("HASH_MISMATCH", "VERSION_GAP")
    one = _verify(audit, sku="SKU-T", location_id="DC")
    assert [(b.sku, b.version, b.reason) for b in one.broken_links] == [
        ("SKU-T", 3, whole.broken_links[0].reason)
    ]
    assert _verify(audit, sku="SKU-U", location_id="DC").ok

    report = _export_and_verify(ledger.database_url, tmp_path)
    assert not report["ok"]
    named = {(p["sku"], p["location_id"]) for p in report["problems"]}
    assert named == {("SKU-T", "DC")}
    first = min(report["problems"], key=lambda p: p["line"])
    assert first["reason"] in ("HASH_MISMATCH", "VERSION_GAP")
    assert 3 in (first.get("version"), _expected_version(first))


def _expected_version(problem: dict[str, Any]) -> int | None:
    detail = str(problem.get("detail", ""))
    return 3 if "expected version 3 " in detail else None


def _position_sql(database_url: str, sku: str) -> str:
    # The position's aggregate id, from the ledger's own position index.
    if database_url.startswith("sqlite"):
        # SQLite stores originator ids as 32 hex digits, the index as the dashed form.
        return (
            "SELECT replace(position_id, '-', '') FROM ledger_position_index"
            f" WHERE sku = '{sku}' AND location_id = 'DC'"
        )
    return (
        f"SELECT position_id FROM ledger_position_index WHERE sku = '{sku}' AND location_id = 'DC'"
    )


def _swap_versions(database_url: str, position_of: str) -> int:
    """Swap versions 3 and 4 through a free version number (the key is unique)."""
    table = "stored_events" if database_url.startswith("sqlite") else "ledger_events"
    moved = 0
    for old, new in ((3, 1_000_000), (4, 3), (1_000_000, 4)):
        sql = (
            f"UPDATE {table} SET originator_version = {new}"
            f" WHERE originator_id = ({position_of}) AND originator_version = {old}"
        )
        moved += _tamper(database_url, sql, sql)
    return moved - 1  # the parked row moved twice


def test_stream_ledger_follow_delivers_every_entry_once_in_order_under_concurrent_writers(
    ledger: LedgerProcess,
) -> None:
    writers, per_writer = 4, 25
    expected = writers * per_writer * 2  # each receipt opens its own position: 2 entries
    audit = stub(ledger, audit_service_pb2_grpc.AuditServiceStub)
    received: list[audit_service_pb2.LedgerEntry] = []
    stream = audit.StreamLedger(audit_service_pb2.StreamLedgerRequest(follow=True), timeout=120)
    done = threading.Event()

    def follow() -> None:
        try:
            for entry in stream:
                received.append(entry)
                if len(received) >= expected:
                    break
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                raise
        finally:
            done.set()

    follower = threading.Thread(target=follow)
    follower.start()
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            for n in range(per_writer):
                _record(
                    ledger,
                    _movement(movement_pb2.MOVEMENT_TYPE_RECEIPT, f"W{writer}-{n}", "DC", qty=1),
                )
        except BaseException as error:  # surfaced below
            failures.append(error)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert done.wait(60), f"follower saw {len(received)} of {expected}"
    stream.cancel()
    follower.join(10)

    full = list(audit.StreamLedger(audit_service_pb2.StreamLedgerRequest(), timeout=60))
    assert [e.position for e in full] == list(range(1, expected + 1))  # gap-free
    assert [(e.position, e.hash) for e in received] == [(e.position, e.hash) for e in full]
    recorded = [e.recorded_at.ToDatetime() for e in full]
    assert recorded == sorted(recorded)
    # Resuming from a position delivers exactly the rest.
    tail = list(
        audit.StreamLedger(
            audit_service_pb2.StreamLedgerRequest(from_position=expected - 5), timeout=60
        )
    )
    assert [e.position for e in tail] == list(range(expected - 4, expected + 1))
