"""Regressions found in review: what a call's ``ledger_position`` points at, shipments against
expired holds, and malformed Durations. Same two backends as the rest of tests/integration."""

from __future__ import annotations

import time

import psycopg
import pytest
from google.protobuf import duration_pb2
from inventory.ledger.v1 import policy_service_pb2

from testbed.server import LedgerProcess
from tests.integration.test_grpc_ledger import (
    ACTIVE,
    DUPLICATE,
    EXPIRED,
    RECORDED,
    Client,
    assert_invalid,
    expect,
    failure,
    line,
    movement,
)


def _topics_by_position(database_url: str) -> dict[int, str]:
    """Notification id → event topic, read straight from the store."""
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
            return dict(db.execute("SELECT rowid, topic FROM stored_events"))
    with psycopg.connect(database_url) as db:
        return dict(db.execute("SELECT notification_id, topic FROM ledger_events").fetchall())


@pytest.fixture
def client(ledger: LedgerProcess) -> Client:
    return Client(ledger)


def test_ledger_position_is_the_calls_own_last_event(client: Client, database_url: str) -> None:
    """Goal: ledger_position names the last *domain* event a call wrote (not bookkeeping),
    also when the answer is a replay. Method: read the stored topics at the reported ids."""
    receipt = movement("receipt", "S-POS", "A", qty=5)
    dispatch = movement(
        "transfer_dispatch", "S-POS", "A", qty=2, transfer_id="T-1", to_location_id="B"
    )
    first = client.record(receipt, dispatch)
    assert [r.outcome for r in first] == [RECORDED, RECORDED]
    reservation = client.reserve(line("S-POS", 1, "A"), request_id="pos-req-1")

    topics = _topics_by_position(database_url)
    assert topics[first[0].ledger_position].endswith("Position.Received")
    # The dispatch's last event is the destination leg, written after the source leg.
    assert topics[first[1].ledger_position].endswith("Position.TransferInbound")
    assert topics[reservation.ledger_position].endswith("Reservation.Created")
    assert topics[reservation.ledger_position - 1].endswith("Position.HoldPlaced")

    again = client.record(receipt, dispatch)
    assert [(r.outcome, r.ledger_position) for r in again] == [
        (DUPLICATE, first[0].ledger_position),
        (DUPLICATE, first[1].ledger_position),
    ]
    replay = client.reserve(line("S-POS", 1, "A"), request_id="pos-req-1")
    assert replay == reservation


def test_policy_answers_name_the_event_they_wrote(client: Client, database_url: str) -> None:
    """Goal: PolicyService answers carry the ledger position of the event the call wrote, a
    replay the original one, and reads carry 0 (issue 17). Method: stored topics at the ids."""
    safety = policy_service_pb2.SetSafetyStockRequest(
        request_id="pos-ss", sku="S-PP", location_id="A", qty=1
    )
    stocked = client.policies.SetSafetyStock(safety, timeout=10)
    fenced = client.policies.SetChannelFence(
        policy_service_pb2.SetChannelFenceRequest(
            request_id="pos-fence", sku="S-PP", location_id="A", channel="web", qty=0
        ),
        timeout=10,
    )
    policy = policy_service_pb2.SetChannelPolicyRequest(request_id="pos-pol", channel="web")
    published = client.policies.SetChannelPolicy(policy, timeout=10)

    topics = _topics_by_position(database_url)
    assert topics[stocked.ledger_position].endswith("Position.SafetyStockSet")
    assert topics[fenced.ledger_position].endswith("Position.ChannelFenceSet")
    assert topics[published.ledger_position].endswith("ChannelPolicy.Set")
    assert client.policies.SetSafetyStock(safety, timeout=10) == stocked
    assert client.policies.SetChannelPolicy(policy, timeout=10) == published
    assert client.position("S-PP", "A").ledger_position == 0


def test_shipment_does_not_consume_an_expired_hold(client: Client) -> None:
    """Goal: a hold stops existing for shipments at expires_at, whether or not the sweeper
    has run. Method: 1 s TTL, wait past it, ship against the reservation."""
    client.receive("S-EXP", "A", 5)
    reservation = client.reserve(
        line("S-EXP", 2, "A"), ttl=duration_pb2.Duration(seconds=1), order_ref="o"
    )
    assert reservation.status == ACTIVE
    time.sleep(1.2)
    [shipped] = client.record(
        movement("shipment", "S-EXP", "A", qty=2, reservation_id=reservation.reservation_id)
    )
    assert shipped.outcome == RECORDED
    assert client.get_reservation(reservation.reservation_id).status == EXPIRED
    assert client.buckets("S-EXP", "A") == expect(on_hand=3, available=3)


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(5, -1), (-5, 1), (5, 1_000_000_000), (400_000_000_000, 0)],
)
def test_malformed_ttl_is_invalid(client: Client, seconds: int, nanos: int) -> None:
    client.receive("S-TTL", "A", 5)
    error = failure(
        client.reserve,
        line("S-TTL", 1, "A"),
        ttl=duration_pb2.Duration(seconds=seconds, nanos=nanos),
    )
    assert_invalid(error, "ttl")
    assert client.buckets("S-TTL", "A") == expect(on_hand=5, available=5)
