"""The read-model RPCs through a real server on both backends: read-your-writes with
``min_position``, dated ATP, open transfers, exceptions and projection lag.

SQLite runs the projection in the API process (the embedded default). PostgreSQL runs it
the production way: a separate ``ledger projections`` process beside ``--projections
external`` API servers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from inventory.ledger.v1 import availability_pb2, policy_service_pb2, query_service_pb2

from testbed.projections import ProjectionsProcess
from testbed.server import LedgerProcess
from tests.integration.test_grpc_ledger import Client, assert_invalid, failure, line, movement


def _ts(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@pytest.fixture
def served(database_url: str) -> Iterator[Client]:
    """An API server plus, on PostgreSQL, a separate projections process."""
    with contextlib.ExitStack() as stack:
        if database_url.startswith("postgresql"):
            projections = stack.enter_context(ProjectionsProcess(database_url))
            stack.callback(lambda: assert_clean_exit(projections))
        ledger = stack.enter_context(
            LedgerProcess(database_url, extra_args=["--projections", "auto"])
        )
        yield Client(ledger)


def assert_clean_exit(projections: ProjectionsProcess) -> None:
    assert projections.stop() == 0, projections.log_text()


def availability(client: Client, sku: str, channel: str = "web", **fields: object) -> object:
    return client.query.GetAvailability(
        query_service_pb2.GetAvailabilityRequest(sku=sku, channel=channel, **fields), timeout=10
    )


def test_min_position_reads_your_writes(served: Client) -> None:
    """Goal: right after a write that returned position P, GetAvailability(min_position=P)
    reflects it. Method: 15 reservations of 1 unit, each read back at once."""
    served.receive("S-RYW", "A", 20)
    for taken in range(1, 16):
        reservation = served.reserve(line("S-RYW", 1, "A"))
        seen = availability(served, "S-RYW", min_position=reservation.ledger_position)
        assert seen.channel_available == 20 - taken
        assert seen.projection_position >= reservation.ledger_position
    strong = availability(served, "S-RYW", consistency=availability_pb2.CONSISTENCY_STRONG)
    assert strong.channel_available == 5


def test_policy_answers_read_your_writes(served: Client) -> None:
    """Goal: each PolicyService answer's ledger_position, passed as min_position, shows that
    policy in GetAvailability at once (issue 17). Method: safety stock, a fence for another
    channel and a channel policy on one SKU, each read back with its own position."""
    served.receive("S-POL", "A", 20)
    stock = served.policies.SetSafetyStock(
        policy_service_pb2.SetSafetyStockRequest(
            request_id="pol-ss", sku="S-POL", location_id="A", qty=4
        ),
        timeout=10,
    )
    assert availability(served, "S-POL", min_position=stock.ledger_position).channel_available == 16
    fence = served.policies.SetChannelFence(
        policy_service_pb2.SetChannelFenceRequest(
            request_id="pol-fence", sku="S-POL", location_id="A", channel="market", qty=6
        ),
        timeout=10,
    )
    assert fence.ledger_position > stock.ledger_position
    assert availability(served, "S-POL", min_position=fence.ledger_position).channel_available == 10
    policy = served.policies.SetChannelPolicy(
        policy_service_pb2.SetChannelPolicyRequest(
            request_id="pol-web", channel="web", share_percent=50, buffer=1
        ),
        timeout=10,
    )
    assert policy.ledger_position > fence.ledger_position
    seen = availability(served, "S-POL", min_position=policy.ledger_position)
    assert seen.channel_available == 4  # floor(10 * 50 / 100) - 1
    assert seen.projection_position >= policy.ledger_position


def test_min_position_beyond_the_ledger_times_out(served: Client) -> None:
    served.receive("S-FUT", "A", 1)
    error = failure(
        served.query.GetAvailability,
        query_service_pb2.GetAvailabilityRequest(sku="S-FUT", channel="web", min_position=10**9),
        timeout=1.0,
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_in_transit_and_dated_atp(served: Client) -> None:
    now = datetime.now(UTC)
    eta = now + timedelta(hours=6)
    served.receive("S-TR", "A", 10)
    [result] = served.record(
        movement(
            "transfer_dispatch",
            "S-TR",
            "A",
            qty=4,
            transfer_id="T-9",
            to_location_id="B",
            expected_at=_ts(eta),
        )
    )
    before = availability(
        served, "S-TR", min_position=result.ledger_position, horizon=_ts(eta - timedelta(hours=1))
    )
    after = availability(served, "S-TR", horizon=_ts(eta + timedelta(hours=1)))
    assert (before.channel_available, before.projected_available) == (6, 6)
    assert (after.channel_available, after.projected_available) == (6, 10)
    by_sku = served.query.ListInTransit(query_service_pb2.ListInTransitRequest(sku="S-TR"))
    by_target = served.query.ListInTransit(
        query_service_pb2.ListInTransitRequest(to_location_id="B")
    )
    for response in (by_sku, by_target):
        [transfer] = response.transfers
        assert (transfer.transfer_id, transfer.from_location_id, transfer.to_location_id) == (
            "T-9",
            "A",
            "B",
        )
        assert (transfer.dispatched, transfer.received) == (4, 0)
        eta_seen = transfer.expected_at.ToDatetime(tzinfo=UTC)
        assert abs(eta_seen - eta) < timedelta(milliseconds=1)
    [received] = served.record(movement("transfer_receipt", "S-TR", "B", qty=4, transfer_id="T-9"))
    availability(served, "S-TR", min_position=received.ledger_position)
    assert not served.query.ListInTransit(
        query_service_pb2.ListInTransitRequest(sku="S-TR")
    ).transfers


def test_exceptions_are_listed_and_filtered(served: Client) -> None:
    now = datetime.now(UTC)
    served.receive("S-EX", "A", 2)
    results = served.record(
        movement("shipment", "S-EX", "A", qty=5),  # on_hand 2 → -3
        movement("cycle_count", "S-EX", "A", counted=7, occurred_at=_ts(now)),
        movement("cycle_count", "S-EX", "A", counted=1, occurred_at=_ts(now - timedelta(days=1))),
        movement("shipment", "S-EX", "A", qty=1, reservation_id="no-such-reservation"),
        movement("transfer_dispatch", "S-EX", "A", qty=3, transfer_id="T-X", to_location_id="B"),
        movement("transfer_receipt", "S-EX", "B", qty=1, transfer_id="T-X", final=True),
    )
    availability(served, "S-EX", min_position=max(r.ledger_position for r in results))
    listed = served.query.ListExceptions(query_service_pb2.ListExceptionsRequest(sku="S-EX"))
    kinds = [
        (availability_pb2.ExceptionType.Name(e.type).removeprefix("EXCEPTION_TYPE_"), e.location_id)
        for e in listed.exceptions
    ]
    assert kinds == [
        ("NEGATIVE_BUCKET", "A"),
        ("STALE_COUNT", "A"),
        ("UNKNOWN_RESERVATION", "A"),
        ("TRANSFER_SHORTAGE", "B"),
    ]
    assert listed.exceptions[0].quantity == -3 and listed.exceptions[0].bucket == "on_hand"
    assert listed.exceptions[3].quantity == 2
    only = served.query.ListExceptions(
        query_service_pb2.ListExceptionsRequest(
            type=availability_pb2.EXCEPTION_TYPE_STALE_COUNT, sku="S-EX"
        )
    )
    assert [e.ledger_position for e in only.exceptions] == [listed.exceptions[1].ledger_position]
    pages = served.list_all(
        served.query.ListExceptions,
        query_service_pb2.ListExceptionsRequest(sku="S-EX", page_size=1),
        "exceptions",
    )
    assert [e for page in pages for e in page] == list(listed.exceptions)


def test_projection_status_and_bad_requests(served: Client) -> None:
    served.receive("S-ST", "A", 1)
    deadline = time.monotonic() + 10
    while True:
        status = served.query.GetProjectionStatus(query_service_pb2.GetProjectionStatusRequest())
        if status.lag == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status.lag == 0 and status.applied_position == status.head_position > 0
    assert_invalid(failure(availability, served, "S-ST", channel="Web"), "channel")
    assert_invalid(failure(availability, served, "", channel="web"), "sku")
    assert_invalid(
        failure(
            served.query.ListInTransit,
            query_service_pb2.ListInTransitRequest(sku="x", to_location_id="y"),
        ),
        "sku",
    )
    assert_invalid(
        failure(
            served.query.ListExceptions,
            query_service_pb2.ListExceptionsRequest(page_token="forged"),
        ),
        "page_token",
    )
