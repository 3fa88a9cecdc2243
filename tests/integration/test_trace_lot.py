"""AuditService.TraceLot against a real server (contract §2 "Recall trace", §4.4), on SQLite
and PostgreSQL: issue 19 must-show 3 and the worked example "Example: a recall"."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from inventory.ledger.v1 import audit_service_pb2, audit_service_pb2_grpc, item_policy_pb2

from testbed.server import LedgerProcess, stub
from tests.integration.test_audit_encoding import chain
from tests.integration.test_grpc_ledger import (
    RECORDED,
    Client,
    assert_invalid,
    failure,
    line,
    movement,
    ts,
)
from tests.integration.test_item_policy import set_policy

LOT = item_policy_pb2.ITEM_TRACKING_LOT
L1_EXPIRES = datetime(2030, 6, 1, tzinfo=UTC)
L2_EXPIRES = datetime(2030, 9, 1, tzinfo=UTC)  # later than L1: FEFO binds L1 first


@pytest.fixture
def client(ledger: LedgerProcess) -> Client:
    return Client(ledger)


def audit(client: Client) -> audit_service_pb2_grpc.AuditServiceStub:
    return stub(client.process, audit_service_pb2_grpc.AuditServiceStub)


def record(client: Client, kind: str, sku: str, location_id: str, **fields: Any) -> None:
    [result] = client.record(movement(kind, sku, location_id, **fields))
    assert result.outcome == RECORDED, result


def trace(client: Client, sku: str, lot_id: str, **fields: Any) -> Any:
    return audit(client).TraceLot(
        audit_service_pb2.TraceLotRequest(sku=sku, lot_id=lot_id, **fields), timeout=10
    )


def rows(response: Any) -> list[tuple[str, str, str, str]]:
    """(type, location, reservation-or-lot detail, order_ref) of each entry."""
    return [
        (
            audit_service_pb2.EntryType.Name(e.type).removeprefix("ENTRY_TYPE_").lower(),
            e.location_id,
            e.lot_id,
            e.order_ref,
        )
        for e in response.entries
    ]


def buckets(response: Any) -> dict[str, dict[str, Any]]:
    found = {}
    for location in response.locations:
        b = location.buckets
        found[location.location_id] = {
            "on_hand": b.on_hand,
            "receiving": b.receiving,
            "quarantine": b.quarantine,
            "damaged": b.damaged,
            "in_transit_inbound": b.in_transit_inbound,
            "reserved": b.reserved,
            "allocated": b.allocated,
            "available": b.available,
            "expires_at": b.expires_at.ToDatetime(tzinfo=UTC) if b.HasField("expires_at") else None,
        }
    return found


def lot_buckets(expires_at: datetime | None = L1_EXPIRES, **values: int) -> dict[str, Any]:
    names = ("on_hand", "receiving", "quarantine", "damaged", "in_transit_inbound")
    found: dict[str, Any] = {n: values.get(n, 0) for n in names}
    found.update({n: values.get(n, 0) for n in ("reserved", "allocated", "available")})
    found["expires_at"] = expires_at
    return found


def reserve_commit_ship(
    client: Client, sku: str, location_id: str, order_ref: str, qty: int, shipped: int
) -> str:
    reservation = client.reserve(line(sku, qty, location_id), order_ref=order_ref)
    assert [lot.lot_id for lot in reservation.lines[0].lots] == ["L1"]
    client.commit(reservation.reservation_id)
    record(
        client,
        "shipment",
        sku,
        location_id,
        qty=shipped,
        reservation_id=reservation.reservation_id,
        lot_id="L1",
    )
    return str(reservation.reservation_id)


def test_trace_lot_across_locations_orders_and_time(client: Client) -> None:
    sku, untracked = "REC-1", "REC-U"
    set_policy(client, "trace-policy", sku, LOT)
    record(client, "receipt", sku, "DC-1", qty=100, lot_id="L1", expires_at=ts(L1_EXPIRES))
    # Another lot and an untracked SKU at the same places must stay out of L1's trace.
    record(client, "receipt", sku, "DC-1", qty=40, lot_id="L2", expires_at=ts(L2_EXPIRES))
    record(client, "receipt", untracked, "DC-1", qty=5)
    record(
        client,
        "transfer_dispatch",
        sku,
        "DC-1",
        qty=30,
        lot_id="L1",
        transfer_id="T-1",
        to_location_id="DC-2",
    )
    record(client, "transfer_receipt", sku, "DC-2", qty=20, lot_id="L1", transfer_id="T-1")
    middle = trace(client, sku, "L1")
    as_of = middle.entries[-1].recorded_at

    r1 = reserve_commit_ship(client, sku, "DC-1", "O-1", 10, 10)
    r2 = reserve_commit_ship(client, sku, "DC-2", "O-2", 5, 5)
    r3 = reserve_commit_ship(client, sku, "DC-1", "O-3", 8, 5)
    released = client.reserve(line(sku, 2, "DC-2"), order_ref="O-5")
    client.release(released.reservation_id)
    record(client, "shipment", sku, "DC-1", qty=5, lot_id="L2")
    record(client, "shipment", untracked, "DC-1", qty=1)

    answer = trace(client, sku, "L1")
    assert rows(answer) == [
        ("receipt", "DC-1", "L1", ""),
        ("transfer_dispatch", "DC-1", "L1", ""),
        ("transfer_inbound", "DC-2", "L1", ""),
        ("transfer_receipt", "DC-2", "L1", ""),
        ("hold_placed", "DC-1", "", "O-1"),
        ("hold_committed", "DC-1", "", "O-1"),
        ("shipment", "DC-1", "L1", "O-1"),
        ("hold_placed", "DC-2", "", "O-2"),
        ("hold_committed", "DC-2", "", "O-2"),
        ("shipment", "DC-2", "L1", "O-2"),
        ("hold_placed", "DC-1", "", "O-3"),
        ("hold_committed", "DC-1", "", "O-3"),
        ("shipment", "DC-1", "L1", "O-3"),
        ("hold_placed", "DC-2", "", "O-5"),
        ("hold_released", "DC-2", "", "O-5"),
    ]
    positions = [e.position for e in answer.entries]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert [e.reservation_id for e in answer.entries[4:]] == [
        *[r1] * 3,
        *[r2] * 3,
        *[r3] * 3,
        *[released.reservation_id] * 2,
    ]
    assert [(lot.lot_id, lot.qty) for lot in answer.entries[4].lots] == [("L1", 10)]
    assert answer.entries[14].reason == "released"
    assert answer.entries[0].lot_expires_at.ToDatetime(tzinfo=UTC) == L1_EXPIRES
    assert "lot_id" in answer.entries[0].data_fields
    assert buckets(answer) == {
        "DC-1": lot_buckets(on_hand=55, allocated=3, available=52),
        "DC-2": lot_buckets(on_hand=15, in_transit_inbound=10, available=15),
    }
    assert answer.next_page_token == ""

    # As of the transfer receipt: the entries up to it, the buckets as the ledger knew then.
    then = trace(client, sku, "L1", as_of=as_of)
    assert rows(then) == rows(answer)[:4]
    assert buckets(then) == {
        "DC-1": lot_buckets(on_hand=70, available=70),
        "DC-2": lot_buckets(on_hand=20, in_transit_inbound=10, available=20),
    }
    before_anything = trace(client, sku, "L1", as_of=ts(datetime(2020, 1, 1, tzinfo=UTC)))
    assert (list(before_anything.entries), list(before_anything.locations)) == ([], [])

    # The other lot: its own receipt and shipment only.
    other = trace(client, sku, "L2")
    assert rows(other) == [("receipt", "DC-1", "L2", ""), ("shipment", "DC-1", "L2", "")]
    assert buckets(other) == {"DC-1": lot_buckets(L2_EXPIRES, on_hand=35, available=35)}
    # An untracked SKU, an unknown SKU or lot: an empty answer, not an error.
    for empty in (
        trace(client, untracked, "L1"),
        trace(client, "NOPE", "L1"),
        trace(client, sku, "L9"),
    ):
        assert (list(empty.entries), list(empty.locations), empty.next_page_token) == ([], [], "")

    # Paging: pages of 4 walk the same entries in the same order, buckets on every page.
    walked: list[Any] = []
    token = ""
    pages = 0
    while True:
        page = trace(client, sku, "L1", page_size=4, page_token=token)
        pages += 1
        walked.extend(page.entries)
        assert buckets(page) == buckets(answer)
        token = page.next_page_token
        if not token:
            break
    assert (pages, list(walked)) == (4, list(answer.entries))
    # A token belongs to its listing: another lot (or as_of) cannot use it.
    first = trace(client, sku, "L1", page_size=4)
    assert_invalid(
        failure(trace, client, sku, "L2", page_token=first.next_page_token), "page_token"
    )
    assert_invalid(failure(trace, client, sku, ""), "lot_id")
    assert_invalid(failure(trace, client, "", "L1"), "sku")
    assert_invalid(failure(trace, client, sku, "L1", page_size=-1), "page_size")


def test_the_recall_example_of_the_contract(client: Client) -> None:
    """docs/contract.md §2 "Example: a recall", step by step."""
    sku, lot = "YOG-1", "L7"
    fixed = datetime(2027, 1, 10, tzinfo=UTC)
    set_policy(client, "yog-policy", sku, LOT)
    record(client, "receipt", "YOG-1", "DC-EAST", qty=100, lot_id=lot, expires_at=ts(fixed))
    record(
        client,
        "transfer_dispatch",
        sku,
        "DC-EAST",
        qty=30,
        lot_id=lot,
        transfer_id="T-5",
        to_location_id="STORE-9",
    )
    reservation = client.reserve(line(sku, 20, "DC-EAST"), order_ref="O-1")
    client.commit(reservation.reservation_id)
    record(
        client,
        "shipment",
        sku,
        "DC-EAST",
        qty=20,
        lot_id=lot,
        reservation_id=reservation.reservation_id,
    )
    stated = datetime(2027, 2, 1, tzinfo=UTC)
    record(client, "receipt", sku, "STORE-9", qty=10, lot_id=lot, expires_at=ts(stated))

    answer = trace(client, sku, lot)
    assert [(t, loc, ref) for t, loc, _, ref in rows(answer)] == [
        ("receipt", "DC-EAST", ""),
        ("transfer_dispatch", "DC-EAST", ""),
        ("transfer_inbound", "STORE-9", ""),
        ("hold_placed", "DC-EAST", "O-1"),
        ("hold_committed", "DC-EAST", "O-1"),
        ("shipment", "DC-EAST", "O-1"),
        ("receipt", "STORE-9", ""),
    ]
    assert answer.entries[5].reservation_id == reservation.reservation_id
    # The conflicting receipt is kept with its stated expiry; the lot keeps 2027-01-10.
    assert answer.entries[6].stated_expires_at.ToDatetime(tzinfo=UTC) == stated
    found = buckets(answer)
    assert {
        loc: (b["on_hand"], b["in_transit_inbound"], b["reserved"], b["allocated"])
        for loc, b in found.items()
    } == {
        "DC-EAST": (50, 0, 0, 0),
        "STORE-9": (10, 30, 0, 0),
    }
    assert {b["expires_at"] for b in found.values()} == {fixed}


def test_a_fixed_expiry_is_traced_and_lot_entries_rebuild_from_the_stream(client: Client) -> None:
    """A lot seen without expiry, fixed by a later receipt elsewhere: the fan-out entry
    (lot_expiry_fixed) is part of the trace; every lot field hashes as docs/audit.md says."""
    sku = "REC-FIX"
    fixed = datetime(2031, 3, 1, tzinfo=UTC)
    set_policy(client, "fix-policy", sku, LOT)
    record(client, "receipt", sku, "DC-1", qty=4, lot_id="L3")
    record(client, "receipt", sku, "DC-2", qty=6, lot_id="L3", expires_at=ts(fixed))
    reservation = client.reserve(line(sku, 3, "DC-1"), order_ref="O-9")
    client.release(reservation.reservation_id)

    answer = trace(client, sku, "L3")
    found = rows(answer)
    assert found[0] == ("receipt", "DC-1", "L3", "")
    # The fan-out and the fixing receipt are one transaction: either may come first.
    assert sorted(found[1:3]) == [
        ("lot_expiry_fixed", "DC-1", "L3", ""),
        ("receipt", "DC-2", "L3", ""),
    ]
    assert found[3:] == [("hold_placed", "DC-1", "", "O-9"), ("hold_released", "DC-1", "", "O-9")]
    fix = next(e for e in answer.entries if e.type == audit_service_pb2.ENTRY_TYPE_LOT_EXPIRY_FIXED)
    assert fix.lot_expires_at.ToDatetime(tzinfo=UTC) == fixed
    assert {loc: b["expires_at"] for loc, b in buckets(answer).items()} == {
        "DC-1": fixed,
        "DC-2": fixed,
    }

    entries = list(audit(client).StreamLedger(audit_service_pb2.StreamLedgerRequest(), timeout=60))
    assert [e.hash for e in entries] == list(chain(entries))
