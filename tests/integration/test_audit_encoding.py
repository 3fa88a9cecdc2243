"""An auditor rebuilds every hash from StreamLedger with docs/audit.md alone (issue 17).

Method: a real ``ledger serve`` (SQLite and PostgreSQL) records entries of every shape the
encoding table distinguishes: request_id and message_id empty or set, a hold with and without
an order_ref, a shipment with and without a reservation, a transfer with and without an ETA,
enum data, and U+2028 inside strings. :func:`rebuild` follows the documented rules ("From
StreamLedger") and imports nothing from the service; every hash of the stream must come out of
it, and each rebuilt object must equal the export's ``entry``. The export holds a raw U+2028,
so it must be split on ``\\n`` only. A second test stores a shipment's reservation_id as ``""``
and as null in-process (no API writes ``""``, older writers might have) and checks that the
stream tells the two apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2
from inventory.ledger.v1 import audit_service_pb2, audit_service_pb2_grpc, policy_service_pb2

from entrypoints.grpc import convert
from ledger.domain.movements import Movement, MovementType
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from testbed.server import LedgerProcess, stub
from tests.integration.test_audit import _export_and_verify
from tests.integration.test_grpc_ledger import Client, line, movement, ts

LINE_SEPARATOR = "\u2028"
META = ("source", "message_id", "request_id", "correlation_id", "actor")
ENUM_PREFIXES = {"disposition": "DISPOSITION_", "from_bucket": "FROM_BUCKET_"}

# --------------------------------------------------------------------------- docs/audit.md


def _time(stamp: timestamp_pb2.Timestamp) -> str:
    moment = datetime.fromtimestamp(stamp.seconds, UTC) + timedelta(
        microseconds=stamp.nanos // 1000
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rebuild(entry: audit_service_pb2.LedgerEntry) -> dict[str, Any]:
    """The hashed object of a StreamLedger entry, by the documented rules only."""
    nulls = set(entry.null_fields)

    def value(name: str) -> Any:
        if name in nulls:
            return None
        raw = getattr(entry, name)
        if isinstance(raw, timestamp_pb2.Timestamp):
            return _time(raw)
        if name in ENUM_PREFIXES:
            enum = entry.DESCRIPTOR.fields_by_name[name].enum_type
            return enum.values_by_number[raw].name.removeprefix(ENUM_PREFIXES[name]).lower()
        if name == "lots":
            return [[lot.lot_id, lot.qty] for lot in raw]
        if entry.DESCRIPTOR.fields_by_name[name].is_repeated:
            return list(raw)  # serial_numbers, serial_conflicts: arrays of strings
        return raw

    kind = audit_service_pb2.EntryType.Name(entry.type).removeprefix("ENTRY_TYPE_").lower()
    return {
        "type": kind,
        "sku": entry.sku,
        "location_id": entry.location_id,
        "version": entry.version,
        "occurred_at": value("occurred_at"),
        "recorded_at": value("recorded_at"),
        **{name: value(name) for name in META},
        "data": {name: value(name) for name in entry.data_fields},
    }


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain(entries: Iterable[audit_service_pb2.LedgerEntry]) -> Iterator[str]:
    """hash_n = SHA-256(raw hash_{n-1} of the same position ‖ canonical_n); 32 zero bytes first."""
    last: dict[tuple[str, str], bytes] = {}
    for entry in entries:
        key = (entry.sku, entry.location_id)
        digest = hashlib.sha256(last.get(key, bytes(32)) + canonical(rebuild(entry))).digest()
        last[key] = digest
        yield digest.hex()


# --------------------------------------------------------------------------- the ledger


def _write_every_shape(client: Client) -> dict[str, str]:
    """Entries of each shape the encoding table distinguishes; returns the reservation ids."""
    sku, here, there = "S-ENC", "A", "B"
    client.receive(sku, here, 30)
    client.record(movement("shipment", sku, here, qty=1))
    plain = client.reserve(line(sku, 2, here))  # no order_ref
    tagged = client.reserve(line(sku, 3, here), order_ref=f"order{LINE_SEPARATOR}7")
    client.commit(tagged.reservation_id)
    client.record(
        movement("shipment", sku, here, qty=3, reservation_id=tagged.reservation_id),
        movement("adjustment", sku, here, delta=-1, reason=f"found{LINE_SEPARATOR}broken"),
        movement("cycle_count", sku, here, counted=20),
        movement("transfer_dispatch", sku, here, qty=1, transfer_id="T-1", to_location_id=there),
        movement(
            "transfer_dispatch",
            sku,
            here,
            qty=1,
            transfer_id="T-2",
            to_location_id=there,
            expected_at=ts(datetime(2030, 1, 2, 3, 4, 5, 678901, UTC)),
        ),
        movement("damage", sku, here, qty=1),
        movement("return_receipt", sku, here, qty=1, disposition=2),  # DISPOSITION_QUARANTINE
    )
    client.release(plain.reservation_id)
    client.policies.SetSafetyStock(
        policy_service_pb2.SetSafetyStockRequest(
            request_id="enc-ss", sku=sku, location_id=here, qty=2
        ),
        timeout=10,
    )
    return {"plain": plain.reservation_id, "tagged": tagged.reservation_id}


def test_every_hash_is_rebuilt_from_the_stream_by_the_documented_rules(
    ledger: LedgerProcess, database_url: str, tmp_path: Path
) -> None:
    reservations = _write_every_shape(Client(ledger))
    audit = stub(ledger, audit_service_pb2_grpc.AuditServiceStub)
    entries = list(audit.StreamLedger(audit_service_pb2.StreamLedgerRequest(), timeout=60))
    assert len(entries) == 18
    assert [entry.hash for entry in entries] == list(chain(entries))

    bodies = [rebuild(entry) for entry in entries]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for body in bodies:
        by_type.setdefault(body["type"], []).append(body)
    # Movements: request_id "" (a stored empty string, not null); API writes: message_id "".
    assert {(b["request_id"], b["message_id"] != "") for b in by_type["receipt"]} == {("", True)}
    [safety] = by_type["safety_stock_set"]
    assert (safety["request_id"], safety["message_id"]) == ("enc-ss", "")
    # A shipment without a reservation: null; with one: its id.
    shipments = [b["data"]["reservation_id"] for b in by_type["shipment"]]
    assert shipments == [None, reservations["tagged"]]
    # A hold without an order_ref: ""; with one: verbatim, U+2028 included.
    assert [b["data"]["order_ref"] for b in by_type["hold_placed"]] == [
        "",
        f"order{LINE_SEPARATOR}7",
    ]
    assert [b["data"]["expected_at"] for b in by_type["transfer_dispatch"]] == [
        None,
        "2030-01-02T03:04:05.678901Z",
    ]
    assert by_type["cycle_count"][0]["data"] == {"counted": 20, "reason": ""}
    assert by_type["return_receipt"][0]["data"]["disposition"] == "quarantine"
    assert by_type["damage"][0]["data"]["from_bucket"] == "on_hand"
    assert by_type["hold_released"][0]["data"]["reason"] == "released"

    # The export: the same objects and hashes, one per line when split on "\n" only.
    assert _export_and_verify(database_url, tmp_path)["ok"]
    raw = (tmp_path / "ledger.jsonl").read_bytes()
    assert LINE_SEPARATOR.encode() in raw  # written raw, not as \u2028
    lines = raw.split(b"\n")
    assert lines.pop() == b""
    assert len(raw.decode().splitlines()) > len(lines)  # what splitlines() would get wrong
    records = [json.loads(text) for text in lines]
    assert [r["entry"] for r in records] == bodies
    assert [r["hash"] for r in records] == [entry.hash for entry in entries]


def test_stream_tells_a_stored_empty_string_from_null(sqlite_service: LedgerService) -> None:
    """A shipment's reservation_id stored as "" and as None hash differently; the stream's
    null_fields says which, so both hashes are rebuilt."""
    ctx = CallContext("auditor-test", correlation_id="c-1")

    def shipment(message_id: str, reservation_id: str | None) -> Movement:
        return Movement(
            source="wms",
            message_id=message_id,
            type=MovementType.SHIPMENT,
            sku="S-NULL",
            location_id="A",
            qty=1,
            reservation_id=reservation_id,
        )

    sqlite_service.record_movements(ctx, [shipment("m-1", ""), shipment("m-2", None)]).result()
    entries = [convert.ledger_entry_message(view) for view in sqlite_service.ledger_entries(0, 10)]
    assert [entry.type for entry in entries] == [
        audit_service_pb2.ENTRY_TYPE_OPENED,
        audit_service_pb2.ENTRY_TYPE_SHIPMENT,
        audit_service_pb2.ENTRY_TYPE_SHIPMENT,
    ]
    assert [list(entry.null_fields) for entry in entries[1:]] == [[], ["reservation_id"]]
    assert [rebuild(entry)["data"]["reservation_id"] for entry in entries[1:]] == ["", None]
    assert [entry.hash for entry in entries] == list(chain(entries))
