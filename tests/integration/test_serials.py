"""Serial-tracked units end to end through gRPC (contract §2 "Serials", §4.1 GetSerial), on
SQLite and PostgreSQL; and the replica race on one serial (issue 19, must-show 2)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from inventory.ledger.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    availability_pb2,
    item_policy_pb2,
    policy_service_pb2,
    query_service_pb2,
    serial_pb2,
)

from testbed.projections import ProjectionsProcess
from testbed.server import LedgerProcess, stub
from tests.integration.test_audit_encoding import chain
from tests.integration.test_grpc_ledger import (
    DOMAIN,
    RECORDED,
    Client,
    failure,
    line,
    movement,
    status_details,
)

IN_STOCK = serial_pb2.SERIAL_STATUS_IN_STOCK
IN_TRANSIT = serial_pb2.SERIAL_STATUS_IN_TRANSIT
SHIPPED = serial_pb2.SERIAL_STATUS_SHIPPED
WRITTEN_OFF = serial_pb2.SERIAL_STATUS_WRITTEN_OFF
SERIAL_CONFLICT = availability_pb2.EXCEPTION_TYPE_SERIAL_CONFLICT


@pytest.fixture
def client(ledger: LedgerProcess) -> Client:
    return Client(ledger)


def serial_sku(client: Client, sku: str) -> None:
    client.policies.SetItemPolicy(
        policy_service_pb2.SetItemPolicyRequest(
            request_id=f"pol-{sku}", sku=sku, tracking=item_policy_pb2.ITEM_TRACKING_SERIAL
        ),
        timeout=10,
    )


def record(
    client: Client, kind: str, sku: str, location_id: str, *serials: str, **fields: Any
) -> int:
    [result] = client.record(
        movement(kind, sku, location_id, serial_numbers=list(serials), **fields)
    )
    assert result.outcome == RECORDED
    return int(result.ledger_position)


def get_serial(client: Client, sku: str, serial_number: str) -> serial_pb2.SerialUnit:
    return client.query.GetSerial(
        query_service_pb2.GetSerialRequest(sku=sku, serial_number=serial_number), timeout=10
    )


def where(unit: serial_pb2.SerialUnit) -> tuple[int, str, str, str]:
    return unit.status, unit.location_id, unit.bucket, unit.order_ref


@contextmanager
def projections_for(database_url: str) -> Iterator[None]:
    """On PostgreSQL `ledger serve` leaves the projections to their own process."""
    process = (
        ProjectionsProcess(database_url).start() if database_url.startswith("postgresql") else None
    )
    try:
        yield
    finally:
        if process is not None:
            assert process.stop() == 0, process.log_text()
            assert "Traceback" not in process.log_text(), process.log_text()


def conflicts(client: Client, sku: str, min_position: int) -> list[Any]:
    """SERIAL_CONFLICT exceptions of ``sku`` once the projection applied ``min_position``."""
    client.query.GetAvailability(
        query_service_pb2.GetAvailabilityRequest(sku=sku, channel="web", min_position=min_position),
        timeout=30,
    )
    found: list[Any] = []
    token = ""
    while True:
        page = client.query.ListExceptions(
            query_service_pb2.ListExceptionsRequest(
                type=SERIAL_CONFLICT, sku=sku, page_size=1000, page_token=token
            ),
            timeout=10,
        )
        found.extend(page.exceptions)
        token = page.next_page_token
        if not token:
            return found


def test_units_are_received_moved_shipped_transferred_and_written_off(client: Client) -> None:
    sku = "SER-LIFE"
    serial_sku(client, sku)
    record(client, "receipt", sku, "DC", "A", "B", "C", qty=3, putaway_pending=True)
    assert where(get_serial(client, sku, "A")) == (IN_STOCK, "DC", "receiving", "")
    record(client, "putaway", sku, "DC", "A", "B", "C", qty=3)
    assert where(get_serial(client, sku, "B")) == (IN_STOCK, "DC", "on_hand", "")

    # Shipped against a reservation: the unit carries the reservation's order.
    reservation = client.reserve(line(sku, 1, "DC"), order_ref="ORDER-1")
    record(client, "shipment", sku, "DC", "A", qty=1, reservation_id=reservation.reservation_id)
    assert where(get_serial(client, sku, "A")) == (SHIPPED, "DC", "", "ORDER-1")

    record(
        client, "transfer_dispatch", sku, "DC", "B", qty=1, transfer_id="T-1", to_location_id="ST"
    )
    assert where(get_serial(client, sku, "B")) == (IN_TRANSIT, "ST", "in_transit_inbound", "")
    record(client, "transfer_receipt", sku, "ST", "B", qty=1, transfer_id="T-1", final=True)
    assert where(get_serial(client, sku, "B")) == (IN_STOCK, "ST", "on_hand", "")
    record(client, "adjustment", sku, "ST", "B", delta=-1, reason="lost")
    assert where(get_serial(client, sku, "B")) == (WRITTEN_OFF, "ST", "", "")

    record(client, "quarantine", sku, "DC", "C", qty=1)
    record(client, "damage", sku, "DC", "C", qty=1, from_bucket="FROM_BUCKET_QUARANTINE")
    assert where(get_serial(client, sku, "C")) == (IN_STOCK, "DC", "damaged", "")
    record(client, "write_off", sku, "DC", "C", qty=1)
    assert where(get_serial(client, sku, "C")) == (WRITTEN_OFF, "DC", "", "")

    # A shipped unit may come back.
    record(client, "return_receipt", sku, "DC", "A", qty=1, disposition="DISPOSITION_QUARANTINE")
    unit = get_serial(client, sku, "A")
    assert (unit.sku, unit.serial_number) == (sku, "A")
    assert where(unit) == (IN_STOCK, "DC", "quarantine", "")
    assert [(h.type, h.status, h.location_id, h.bucket, h.order_ref) for h in unit.history] == [
        ("receipt", IN_STOCK, "DC", "receiving", ""),
        ("putaway", IN_STOCK, "DC", "on_hand", ""),
        ("shipment", SHIPPED, "DC", "", "ORDER-1"),
        ("return_receipt", IN_STOCK, "DC", "quarantine", ""),
    ]
    assert all(h.source and h.message_id for h in unit.history)
    assert all(h.recorded_at.ToDatetime() >= h.occurred_at.ToDatetime() for h in unit.history)
    assert client.buckets(sku, "DC")["on_hand"] == 0
    assert client.buckets(sku, "DC")["quarantine"] == 1


def test_a_serial_never_seen_is_not_found(client: Client) -> None:
    serial_sku(client, "SER-NF")
    error = failure(get_serial, client, "SER-NF", "NOPE")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = status_details(error)["ErrorInfo"]
    assert (info.reason, info.domain) == ("SERIAL_NOT_FOUND", DOMAIN)
    assert dict(info.metadata) == {"sku": "SER-NF", "serialNumber": "NOPE"}
    error = failure(get_serial, client, "SER-NF", "")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_conflicting_fact_is_recorded_and_raised_and_the_index_keeps_its_entry(
    client: Client, database_url: str
) -> None:
    sku = "SER-CONFLICT"
    serial_sku(client, sku)
    with projections_for(database_url):
        record(client, "receipt", sku, "DC", "X", qty=1)
        # X is already in stock at DC; Y is new: the fact is recorded, its quantity moves.
        record(client, "receipt", sku, "DC2", "X", "Y", qty=2)
        # Z was never received: shipping it conflicts too (and leaves it unknown).
        last = record(client, "shipment", sku, "DC2", "Z", qty=1)
        assert client.buckets(sku, "DC2")["on_hand"] == 1
        x = get_serial(client, sku, "X")
        assert where(x) == (IN_STOCK, "DC", "on_hand", "")
        assert len(x.history) == 1
        assert where(get_serial(client, sku, "Y")) == (IN_STOCK, "DC2", "on_hand", "")
        assert failure(get_serial, client, sku, "Z").code() == grpc.StatusCode.NOT_FOUND
        raised = conflicts(client, sku, last)
        assert [(e.location_id, e.quantity) for e in raised] == [("DC2", 1), ("DC2", 1)]
        assert "X" in raised[0].detail and "Y" not in raised[0].detail
        assert "Z" in raised[1].detail
        # The conflicts are hashed with the entry: the stream carries them, and an auditor
        # rebuilds every hash from the stream alone (docs/audit.md).
        audit = stub(client.process, audit_service_pb2_grpc.AuditServiceStub)
        stream = audit.StreamLedger(audit_service_pb2.StreamLedgerRequest(), timeout=30)
        entries = [e for e in stream if e.sku == sku]
        assert [list(e.serial_conflicts) for e in entries if e.serial_conflicts] == [["X"], ["Z"]]
        assert list(chain(entries)) == [e.hash for e in entries]


@pytest.mark.postgres
def test_the_same_serial_received_at_once_through_two_replicas_is_in_stock_once(
    postgres_database_url: str,
) -> None:
    """Must-show 2: 64 rounds, each receiving one new serial at two locations through two
    `ledger serve` processes at the same instant. The serial index admits exactly one; the
    other receipt is recorded with SERIAL_CONFLICT; GetSerial agrees with the ledger."""
    sku, rounds = "SER-RACE", 64
    with (
        LedgerProcess(postgres_database_url) as first,
        LedgerProcess(postgres_database_url) as second,
        projections_for(postgres_database_url),
    ):
        clients = {"L1": Client(first), "L2": Client(second)}
        serial_sku(clients["L1"], sku)
        positions: list[int] = []
        failures: list[BaseException] = []
        barrier = threading.Barrier(2)

        def receive(location: str, serial: str) -> None:
            try:
                barrier.wait(10)
                positions.append(record(clients[location], "receipt", sku, location, serial, qty=1))
            except BaseException as error:
                failures.append(error)

        for n in range(rounds):
            threads = [
                threading.Thread(target=receive, args=(location, f"SN-{n}")) for location in clients
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert not failures, failures

        holder: dict[str, str] = {}
        for n in range(rounds):
            unit = get_serial(clients["L1"], sku, f"SN-{n}")
            assert unit.status == IN_STOCK and unit.bucket == "on_hand"
            assert [h.type for h in unit.history] == ["receipt"]
            holder[f"SN-{n}"] = unit.location_id
        assert set(holder.values()) <= {"L1", "L2"}

        raised = conflicts(clients["L2"], sku, max(positions))
        conflicted = sorted(
            (e.location_id, serial)
            for e in raised
            for serial in holder
            if e.detail.endswith(f" {serial}")
        )
        # Each serial conflicted exactly once, at the location that does not hold it.
        assert len(raised) == rounds
        assert conflicted == sorted(
            ("L2" if at == "L1" else "L1", serial) for serial, at in holder.items()
        )
        # Both receipts moved their quantity: each location's on_hand is the serials it
        # holds plus the receipts that conflicted there.
        for location, client in clients.items():
            on_hand = client.buckets(sku, location)["on_hand"]
            assert on_hand == rounds
            held = sum(1 for at in holder.values() if at == location)
            assert on_hand == held + sum(1 for at, _ in conflicted if at == location)
