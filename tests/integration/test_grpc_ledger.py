"""End-to-end through the gRPC API, against a real ``ledger serve`` process.

Every test runs twice, once on SQLite and once on PostgreSQL (``database_url`` in
conftest.py), with the same assertions: the acceptance item "the same integration tests run
against both SQLite and PostgreSQL through the gRPC API".  Each test gets a fresh server
and an empty database, so quantities are asserted exactly.
"""

from __future__ import annotations

import itertools
import time
import unicodedata
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from inventory.ledger.v1 import (
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
    reservation_pb2,
    reservation_service_pb2,
    reservation_service_pb2_grpc,
)

from testbed.server import LedgerProcess, stub

DOMAIN = "inventory.ledger.v1"
SOURCE = "it-wms"
LEDGER_SERVICES = {
    "inventory.ledger.v1.InventoryQueryService",
    "inventory.ledger.v1.ReservationService",
    "inventory.ledger.v1.MovementService",
    "inventory.ledger.v1.PolicyService",
    "inventory.ledger.v1.AuditService",
}
BUCKETS = (
    "on_hand",
    "receiving",
    "quarantine",
    "damaged",
    "in_transit_inbound",
    "reserved",
    "allocated",
    "safety_stock",
    "available",
)

ACTIVE = reservation_pb2.RESERVATION_STATUS_ACTIVE
COMMITTED = reservation_pb2.RESERVATION_STATUS_COMMITTED
FULFILLED = reservation_pb2.RESERVATION_STATUS_FULFILLED
RELEASED = reservation_pb2.RESERVATION_STATUS_RELEASED
EXPIRED = reservation_pb2.RESERVATION_STATUS_EXPIRED
RECORDED = movement_service_pb2.MOVEMENT_OUTCOME_RECORDED
DUPLICATE = movement_service_pb2.MOVEMENT_OUTCOME_DUPLICATE

_ids = itertools.count(1)


def _next_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def expect(**buckets: int) -> dict[str, int]:
    """The full bucket dict: everything not named is 0."""
    unknown = set(buckets) - set(BUCKETS)
    assert not unknown, unknown
    return {name: buckets.get(name, 0) for name in BUCKETS}


def ts(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def movement(kind: str, sku: str, location_id: str, **fields: Any) -> movement_pb2.Movement:
    fields.setdefault("message_id", _next_id("msg"))
    fields.setdefault("source", SOURCE)
    return movement_pb2.Movement(
        type=movement_pb2.MovementType.Value(f"MOVEMENT_TYPE_{kind.upper()}"),
        sku=sku,
        location_id=location_id,
        **fields,
    )


def line(sku: str, qty: int, location_id: str = "") -> reservation_service_pb2.ReserveLine:
    return reservation_service_pb2.ReserveLine(sku=sku, location_id=location_id, qty=qty)


class Client:
    """Thin typed helpers over the four ledger stubs of one ``LedgerProcess``."""

    def __init__(self, process: LedgerProcess) -> None:
        self.process = process

    # Stubs are rebuilt on each access so they follow ``process.restart()``.
    @property
    def query(self) -> query_service_pb2_grpc.InventoryQueryServiceStub:
        return stub(self.process, query_service_pb2_grpc.InventoryQueryServiceStub)

    @property
    def reservations(self) -> reservation_service_pb2_grpc.ReservationServiceStub:
        return stub(self.process, reservation_service_pb2_grpc.ReservationServiceStub)

    @property
    def movements(self) -> movement_service_pb2_grpc.MovementServiceStub:
        return stub(self.process, movement_service_pb2_grpc.MovementServiceStub)

    @property
    def policies(self) -> policy_service_pb2_grpc.PolicyServiceStub:
        return stub(self.process, policy_service_pb2_grpc.PolicyServiceStub)

    def record(self, *items: movement_pb2.Movement) -> list[movement_service_pb2.MovementResult]:
        response = self.movements.RecordMovements(
            movement_service_pb2.RecordMovementsRequest(movements=list(items)), timeout=10
        )
        return list(response.results)

    def receive(self, sku: str, location_id: str, qty: int) -> None:
        [result] = self.record(movement("receipt", sku, location_id, qty=qty))
        assert result.outcome == RECORDED

    def position(self, sku: str, location_id: str, **kwargs: Any) -> Any:
        return self.query.GetPosition(
            query_service_pb2.GetPositionRequest(sku=sku, location_id=location_id, **kwargs),
            timeout=10,
        )

    def buckets(self, sku: str, location_id: str) -> dict[str, int]:
        position = self.position(sku, location_id)
        assert (position.sku, position.location_id) == (sku, location_id)
        return {name: getattr(position, name) for name in BUCKETS}

    def reserve(
        self,
        *lines: reservation_service_pb2.ReserveLine,
        channel: str = "web",
        request_id: str | None = None,
        **kwargs: Any,
    ) -> reservation_pb2.Reservation:
        return self.reservations.Reserve(
            reservation_service_pb2.ReserveRequest(
                request_id=request_id or _next_id("req"), channel=channel, lines=lines, **kwargs
            ),
            timeout=10,
        )

    def get_reservation(
        self, reservation_id: str, channel: str = ""
    ) -> reservation_pb2.Reservation:
        return self.reservations.GetReservation(
            reservation_service_pb2.GetReservationRequest(
                reservation_id=reservation_id, channel=channel
            ),
            timeout=10,
        )

    def commit(self, reservation_id: str, **kwargs: Any) -> reservation_pb2.Reservation:
        kwargs.setdefault("request_id", _next_id("commit"))
        return self.reservations.Commit(
            reservation_service_pb2.CommitRequest(reservation_id=reservation_id, **kwargs),
            timeout=10,
        )

    def release(self, reservation_id: str, **kwargs: Any) -> reservation_pb2.Reservation:
        kwargs.setdefault("request_id", _next_id("release"))
        return self.reservations.Release(
            reservation_service_pb2.ReleaseRequest(reservation_id=reservation_id, **kwargs),
            timeout=10,
        )

    def list_all(self, method: Callable[..., Any], request: Any, field: str) -> list[list[Any]]:
        """Walk ``next_page_token`` to the end; returns the items page by page."""
        pages: list[list[Any]] = []
        while True:
            response = method(request, timeout=10)
            pages.append(list(getattr(response, field)))
            if not response.next_page_token:
                return pages
            assert len(pages) < 50, "paging does not terminate"
            request.page_token = response.next_page_token


def without_position(reservation: reservation_pb2.Reservation) -> reservation_pb2.Reservation:
    copy = reservation_pb2.Reservation()
    copy.CopyFrom(reservation)
    copy.ClearField("ledger_position")
    return copy


@pytest.fixture
def client(ledger: LedgerProcess) -> Client:
    return Client(ledger)


# ---- error inspection ---------------------------------------------------------------------------


def failure(call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def status_details(error: grpc.RpcError) -> dict[str, Any]:
    """google.rpc details of a failed call, by message name."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.Status on {error.code()}: {error.details()}"
    assert status.code == error.code().value[0]
    found: dict[str, Any] = {}
    for detail in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.ResourceInfo,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found


def assert_invalid(error: grpc.RpcError, field: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    details = status_details(error)
    fields = [v.field for v in details["BadRequest"].field_violations]
    assert field in fields, (field, fields, error.details())
    assert details["ErrorInfo"].domain == DOMAIN


def assert_insufficient(error: grpc.RpcError, *short_lines: int) -> None:
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (error.code(), error.details())
    details = status_details(error)
    info = details["ErrorInfo"]
    assert (info.reason, info.domain) == ("INSUFFICIENT_AVAILABILITY", DOMAIN)
    subjects = [v.subject for v in details["PreconditionFailure"].violations]
    assert subjects == [f"lines[{i}]" for i in short_lines]


# ---- service surface ----------------------------------------------------------------------------


def test_health_reflection_and_correlation_id(ledger: LedgerProcess, client: Client) -> None:
    health = stub(ledger, health_pb2_grpc.HealthStub)
    for name in ("", *sorted(LEDGER_SERVICES)):
        answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, name

    reflection = stub(ledger, reflection_pb2_grpc.ServerReflectionStub)
    [answer] = list(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {n for n in names if n.startswith("inventory.ledger.v1.")} == LEDGER_SERVICES
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    # Reflection serves the descriptors too, not just names.
    [answer] = list(
        reflection.ServerReflectionInfo(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="inventory.ledger.v1.ReservationService"
                    )
                ]
            ),
            timeout=5,
        )
    )
    assert answer.file_descriptor_response.file_descriptor_proto

    # x-correlation-id is echoed in the initial metadata, on success and on failure.
    request = query_service_pb2.GetPositionRequest(sku="SKU-C", location_id="DC-1")
    position, call = client.query.GetPosition.with_call(
        request, metadata=[("x-correlation-id", "it-corr-42")], timeout=5
    )
    assert dict(call.initial_metadata())["x-correlation-id"] == "it-corr-42"
    assert (position.on_hand, position.version, position.available) == (0, 0, 0)
    error = failure(
        client.query.GetPosition,
        query_service_pb2.GetPositionRequest(sku="", location_id="DC-1"),
        metadata=[("x-correlation-id", "it-corr-43")],
        timeout=5,
    )
    assert dict(error.initial_metadata())["x-correlation-id"] == "it-corr-43"
    _, call = client.query.GetPosition.with_call(request, timeout=5)
    generated = dict(call.initial_metadata())["x-correlation-id"]
    assert generated and generated not in ("it-corr-42", "it-corr-43")


# ---- movements ----------------------------------------------------------------------------------


def test_movement_narrative(client: Client) -> None:
    sku, a, b = "SKU-N", "DC-A", "DC-B"
    assert client.buckets(sku, a) == expect()
    assert client.position(sku, a).version == 0
    versions = [0]

    def step(kind: str, location_id: str = a, **fields: Any) -> None:
        [result] = client.record(movement(kind, sku, location_id, **fields))
        assert result.outcome == RECORDED
        assert result.ledger_position > 0

    def check(location_id: str = a, **buckets: int) -> None:
        assert client.buckets(sku, location_id) == expect(**buckets)

    def check_a(**buckets: int) -> None:
        check(a, **buckets)
        version = client.position(sku, a).version
        assert version > versions[-1]
        versions.append(version)

    now = datetime.now(UTC)
    step("receipt", qty=10)
    check_a(on_hand=10, available=10)
    step("receipt", qty=4, putaway_pending=True)
    check_a(on_hand=10, receiving=4, available=10)
    step("putaway", qty=4)
    check_a(on_hand=14, available=14)
    step("shipment", qty=3)
    check_a(on_hand=11, available=11)
    step("adjustment", delta=-1, reason="broken seal")
    check_a(on_hand=10, available=10)
    step("adjustment", delta=2, reason="found behind rack")
    check_a(on_hand=12, available=12)
    step("cycle_count", counted=9, occurred_at=ts(now - timedelta(minutes=10)))
    check_a(on_hand=9, available=9)
    # An older count is recorded (the position's version moves) but changes nothing.
    step("cycle_count", counted=50, occurred_at=ts(now - timedelta(minutes=20)))
    check_a(on_hand=9, available=9)
    step("quarantine", qty=3)
    check_a(on_hand=6, quarantine=3, available=6)
    step("quarantine_release", qty=1)
    check_a(on_hand=7, quarantine=2, available=7)
    step("damage", qty=2)
    check_a(on_hand=5, quarantine=2, damaged=2, available=5)
    step("damage", qty=1, from_bucket=movement_pb2.FROM_BUCKET_QUARANTINE)
    check_a(on_hand=5, quarantine=1, damaged=3, available=5)
    step("damage", qty=1, from_bucket=movement_pb2.FROM_BUCKET_ON_HAND)
    check_a(on_hand=4, quarantine=1, damaged=4, available=4)
    step("write_off", qty=3)
    check_a(on_hand=4, quarantine=1, damaged=1, available=4)

    # Transfer: both legs visible at once, from one RecordMovements call.
    step(
        "transfer_dispatch",
        qty=3,
        transfer_id="T-1",
        to_location_id=b,
        expected_at=ts(now + timedelta(days=2)),
    )
    check_a(on_hand=1, quarantine=1, damaged=1, available=1)
    check(b, in_transit_inbound=3)
    step("transfer_receipt", b, qty=1, transfer_id="T-1")
    check(b, on_hand=1, in_transit_inbound=2, available=1)
    # Final receipt one short: the shortage leaves in-transit (TRANSFER_SHORTAGE).
    step("transfer_receipt", b, qty=1, transfer_id="T-1", final=True)
    check(b, on_hand=2, available=2)
    check(a, on_hand=1, quarantine=1, damaged=1, available=1)

    # Returns, one per disposition.
    step("return_receipt", qty=5, disposition=movement_pb2.DISPOSITION_RESTOCK)
    check_a(on_hand=6, quarantine=1, damaged=1, available=6)
    step("return_receipt", qty=2, disposition=movement_pb2.DISPOSITION_QUARANTINE)
    check_a(on_hand=6, quarantine=3, damaged=1, available=6)
    step("return_receipt", qty=4, disposition=movement_pb2.DISPOSITION_DAMAGED)
    check_a(on_hand=6, quarantine=3, damaged=5, available=6)

    # Facts are never refused: a shipment larger than on_hand drives it negative.
    step("shipment", qty=8)
    check_a(on_hand=-2, quarantine=3, damaged=5, available=-2)

    # Several movements in one request, across positions, in request order.
    results = client.record(
        movement("receipt", sku, a, qty=2),
        movement("receipt", sku, b, qty=7, putaway_pending=True),
        movement("putaway", sku, b, qty=7),
    )
    assert [r.outcome for r in results] == [RECORDED] * 3
    positions = [r.ledger_position for r in results]
    assert positions == sorted(positions) and len(set(positions)) == 3
    check(a, on_hand=0, quarantine=3, damaged=5, available=0)
    check(b, on_hand=9, available=9)


# ---- reservations -------------------------------------------------------------------------------


def test_reserve_location_choice_split_and_all_or_nothing(client: Client) -> None:
    sku = "SKU-R"
    for location_id, qty in (("DC-A", 5), ("DC-B", 8), ("DC-C", 8)):
        client.receive(sku, location_id, qty)

    explicit = client.reserve(line(sku, 2, "DC-A"), order_ref="o-explicit")
    assert explicit.status == ACTIVE
    assert [(ln.sku, ln.location_id, ln.qty, ln.shipped) for ln in explicit.lines] == [
        (sku, "DC-A", 2, 0)
    ]
    assert explicit.ledger_position > 0
    assert client.buckets(sku, "DC-A") == expect(on_hand=5, reserved=2, available=3)

    # Empty location: greatest available_to; DC-B and DC-C tie at 8 -> smallest id, DC-B.
    chosen = client.reserve(line(sku, 3))
    assert [(ln.location_id, ln.qty) for ln in chosen.lines] == [("DC-B", 3)]
    # Now A=3, B=5, C=8: DC-C is the greatest.
    chosen = client.reserve(line(sku, 4))
    assert [(ln.location_id, ln.qty) for ln in chosen.lines] == [("DC-C", 4)]
    # A=3, B=5, C=4. No single location covers 10 ...
    error = failure(client.reserve, line(sku, 10))
    assert_insufficient(error, 0)
    # ... but split over locations it fits, greedily, greatest first.
    split = client.reserve(line(sku, 10), allow_split=True)
    assert [(ln.location_id, ln.qty) for ln in split.lines] == [
        ("DC-B", 5),
        ("DC-C", 4),
        ("DC-A", 1),
    ]
    assert client.buckets(sku, "DC-A") == expect(on_hand=5, reserved=3, available=2)
    assert client.buckets(sku, "DC-B") == expect(on_hand=8, reserved=8, available=0)
    assert client.buckets(sku, "DC-C") == expect(on_hand=8, reserved=8, available=0)
    assert_insufficient(failure(client.reserve, line(sku, 3), allow_split=True), 0)

    # All or nothing: line 3 of 3 is short, so nothing at all is held.
    for other, qty in (("SKU-X", 5), ("SKU-Y", 5), ("SKU-Z", 4)):
        client.receive(other, "DC-A", qty)
    error = failure(
        client.reserve,
        line("SKU-X", 1, "DC-A"),
        line("SKU-Y", 2, "DC-A"),
        line("SKU-Z", 5, "DC-A"),
    )
    assert_insufficient(error, 2)
    for other, qty in (("SKU-X", 5), ("SKU-Y", 5), ("SKU-Z", 4)):
        assert client.buckets(other, "DC-A") == expect(on_hand=qty, available=qty)

    # Two lines on the same position count together.
    assert_insufficient(
        failure(client.reserve, line("SKU-X", 3, "DC-A"), line("SKU-X", 3, "DC-A")), 1
    )
    assert client.buckets("SKU-X", "DC-A") == expect(on_hand=5, available=5)
    both = client.reserve(line("SKU-X", 2, "DC-A"), line("SKU-X", 3, "DC-A"))
    assert [(ln.location_id, ln.qty) for ln in both.lines] == [("DC-A", 2), ("DC-A", 3)]
    assert client.buckets("SKU-X", "DC-A") == expect(on_hand=5, reserved=5, available=0)
    # Same for service-chosen locations within one request.
    assert_insufficient(failure(client.reserve, line("SKU-Y", 3), line("SKU-Y", 3)), 1)
    # An unknown SKU is simply unavailable.
    assert_insufficient(failure(client.reserve, line("SKU-NONE", 1)), 0)
    assert_insufficient(failure(client.reserve, line("SKU-NONE", 1, "DC-A")), 0)


def test_reservation_lifecycle(client: Client) -> None:
    sku, loc = "SKU-L", "DC-A"
    client.receive(sku, loc, 10)

    held = client.reserve(line(sku, 4, loc), order_ref="o-1")
    assert (held.channel, held.order_ref, held.status) == ("web", "o-1", ACTIVE)
    ttl = held.expires_at.ToDatetime() - held.created_at.ToDatetime()
    assert ttl == timedelta(minutes=15)  # the default
    assert without_position(client.get_reservation(held.reservation_id)) == without_position(held)
    assert client.buckets(sku, loc) == expect(on_hand=10, reserved=4, available=6)
    holds = client.position(sku, loc, include_holds=True).holds
    assert [
        (h.reservation_id, h.channel, h.order_ref, h.status, h.qty, h.shipped) for h in holds
    ] == [(held.reservation_id, "web", "o-1", ACTIVE, 4, 0)]

    committed = client.commit(held.reservation_id)
    assert committed.status == COMMITTED
    assert committed.ledger_position > held.ledger_position
    assert client.buckets(sku, loc) == expect(on_hand=10, allocated=4, available=6)

    # Shipping against the reservation consumes the allocation, then fulfils it.
    client.record(movement("shipment", sku, loc, qty=3, reservation_id=held.reservation_id))
    assert client.buckets(sku, loc) == expect(on_hand=7, allocated=1, available=6)
    partly = client.get_reservation(held.reservation_id)
    assert partly.status == COMMITTED
    assert [(ln.qty, ln.shipped) for ln in partly.lines] == [(4, 3)]
    client.record(movement("shipment", sku, loc, qty=1, reservation_id=held.reservation_id))
    assert client.buckets(sku, loc) == expect(on_hand=6, available=6)
    done = client.get_reservation(held.reservation_id)
    assert done.status == FULFILLED
    assert [(ln.qty, ln.shipped) for ln in done.lines] == [(4, 4)]
    assert client.position(sku, loc, include_holds=True).holds == []
    error = failure(client.release, held.reservation_id)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    # Shipping against an ACTIVE (uncommitted) reservation consumes reserved.
    active = client.reserve(line(sku, 2, loc))
    client.record(movement("shipment", sku, loc, qty=2, reservation_id=active.reservation_id))
    assert client.buckets(sku, loc) == expect(on_hand=4, available=4)
    assert client.get_reservation(active.reservation_id).status == FULFILLED

    # Release: ACTIVE and COMMITTED holds go back to available.
    released = client.release(client.reserve(line(sku, 3, loc)).reservation_id)
    assert released.status == RELEASED
    assert client.buckets(sku, loc) == expect(on_hand=4, available=4)
    again = client.reserve(line(sku, 3, loc))
    client.commit(again.reservation_id)
    assert client.buckets(sku, loc) == expect(on_hand=4, allocated=3, available=1)
    assert client.release(again.reservation_id).status == RELEASED
    assert client.buckets(sku, loc) == expect(on_hand=4, available=4)
    assert (
        failure(client.commit, again.reservation_id).code() == grpc.StatusCode.FAILED_PRECONDITION
    )

    # Unknown ids and other channels' reservations are NOT_FOUND.
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        error = failure(client.get_reservation, unknown)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert status_details(error)["ErrorInfo"].domain == DOMAIN
        assert failure(client.commit, unknown).code() == grpc.StatusCode.NOT_FOUND
    web = client.reserve(line(sku, 1, loc))
    assert client.get_reservation(web.reservation_id, "web").reservation_id == web.reservation_id
    assert failure(client.get_reservation, web.reservation_id, "market").code() == (
        grpc.StatusCode.NOT_FOUND
    )
    assert failure(client.commit, web.reservation_id, channel="market").code() == (
        grpc.StatusCode.NOT_FOUND
    )
    assert failure(client.release, web.reservation_id, channel="market").code() == (
        grpc.StatusCode.NOT_FOUND
    )
    assert client.get_reservation(web.reservation_id).status == ACTIVE
    assert client.buckets(sku, loc) == expect(on_hand=4, reserved=1, available=3)


def test_reservation_expiry(ledger: LedgerProcess, client: Client) -> None:
    sku, loc = "SKU-E", "DC-A"
    # No sweeper for now: expiry must take effect without any event being written.
    ledger.env["LEDGER_EXPIRY_SWEEP_SECONDS"] = "3600"
    ledger.restart()
    client.receive(sku, loc, 5)
    held = client.reserve(
        line(sku, 5, loc), order_ref="o-exp", ttl=duration_pb2.Duration(seconds=1)
    )
    assert held.expires_at.ToDatetime() - held.created_at.ToDatetime() == timedelta(seconds=1)
    assert client.buckets(sku, loc) == expect(on_hand=5, reserved=5)
    assert_insufficient(failure(client.reserve, line(sku, 1, loc)), 0)
    version = client.position(sku, loc).version

    time.sleep(1.2)
    assert client.buckets(sku, loc) == expect(on_hand=5, available=5)
    assert client.position(sku, loc).version == version  # no event
    assert client.position(sku, loc, include_holds=True).holds == []
    assert client.get_reservation(held.reservation_id).status == EXPIRED
    error = failure(client.commit, held.reservation_id)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_details(error)["ErrorInfo"].domain == DOMAIN
    assert (
        failure(client.release, held.reservation_id).code() == grpc.StatusCode.FAILED_PRECONDITION
    )

    # With the sweeper running, the expiry is recorded on the position.
    ledger.env["LEDGER_EXPIRY_SWEEP_SECONDS"] = "0.2"
    ledger.restart()
    deadline = time.monotonic() + 10
    while client.position(sku, loc).version == version:
        assert time.monotonic() < deadline, "the expiry sweeper recorded nothing"
        time.sleep(0.1)
    assert client.position(sku, loc).version == version + 1
    assert client.buckets(sku, loc) == expect(on_hand=5, available=5)
    listed = client.reservations.ListReservations(
        reservation_service_pb2.ListReservationsRequest(channel="web"), timeout=10
    ).reservations
    assert [(r.reservation_id, r.status) for r in listed] == [(held.reservation_id, EXPIRED)]
    # The expired units can be reserved again.
    assert client.reserve(line(sku, 5, loc)).status == ACTIVE


# ---- policies -----------------------------------------------------------------------------------


def test_safety_stock_fences_and_channel_policy(client: Client) -> None:
    sku, a, b = "SKU-F", "DC-A", "DC-B"
    client.receive(sku, a, 10)

    position = client.policies.SetSafetyStock(
        policy_service_pb2.SetSafetyStockRequest(request_id="ss-1", sku=sku, location_id=a, qty=2),
        timeout=10,
    )
    assert (position.safety_stock, position.available) == (2, 8)
    assert client.buckets(sku, a) == expect(on_hand=10, safety_stock=2, available=8)

    def fence(channel: str, qty: int) -> Any:
        return client.policies.SetChannelFence(
            policy_service_pb2.SetChannelFenceRequest(
                request_id=_next_id("fence"), sku=sku, location_id=a, channel=channel, qty=qty
            ),
            timeout=10,
        )

    assert dict(fence("market", 3).fences) == {"market": 3}
    assert client.buckets(sku, a) == expect(on_hand=10, safety_stock=2, available=8)
    # web sees 8 - 3 = 5.
    assert_insufficient(failure(client.reserve, line(sku, 6, a), channel="web"), 0)
    assert_insufficient(failure(client.reserve, line(sku, 6), channel="web"), 0)
    web = client.reserve(line(sku, 5), channel="web")
    assert [(ln.location_id, ln.qty) for ln in web.lines] == [(a, 5)]
    assert_insufficient(failure(client.reserve, line(sku, 1, a), channel="web"), 0)
    # The ring-fenced units are still there for market.
    client.reserve(line(sku, 3, a), channel="market")
    assert client.buckets(sku, a) == expect(on_hand=10, safety_stock=2, reserved=8, available=0)
    assert_insufficient(failure(client.reserve, line(sku, 1, a), channel="market"), 0)

    # A fence cannot be raised beyond what is available; lowering is always allowed.
    error = failure(fence, "market", 5)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = status_details(error)["ErrorInfo"]
    assert (info.reason, info.domain) == ("FENCE_EXCEEDS_AVAILABLE", DOMAIN)
    assert failure(fence, "b2b", 1).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(client.position(sku, a).fences) == {"market": 3}
    assert dict(fence("market", 0).fences) == {}

    # Channel policy: eligible locations restrict the service's choice.
    client.receive(sku, b, 4)
    policy = client.policies.SetChannelPolicy(
        policy_service_pb2.SetChannelPolicyRequest(
            request_id="pol-1", channel="b2b", eligible_location_ids=[b]
        ),
        timeout=10,
    )
    assert (policy.channel, list(policy.eligible_location_ids), policy.share_percent) == (
        "b2b",
        [b],
        100,
    )
    client.receive(sku, a, 20)  # DC-A now has far more available than DC-B
    chosen = client.reserve(line(sku, 2), channel="b2b")
    assert [(ln.location_id, ln.qty) for ln in chosen.lines] == [(b, 2)]
    assert_insufficient(failure(client.reserve, line(sku, 1, a), channel="b2b"), 0)
    assert_insufficient(failure(client.reserve, line(sku, 3), channel="b2b"), 0)
    # Other channels are unaffected.
    other = client.reserve(line(sku, 2), channel="web")
    assert [(ln.location_id, ln.qty) for ln in other.lines] == [(a, 2)]


# ---- listings -----------------------------------------------------------------------------------


def test_listings_and_page_tokens(client: Client) -> None:
    for sku, location_id, qty in (
        ("SKU-P", "L2", 2),
        ("SKU-P", "L1", 1),
        ("SKU-P", "L3", 3),
        ("SKU-Q", "L2", 4),
        ("SKU-O", "L9", 9),
    ):
        client.receive(sku, location_id, qty)

    by_sku = client.list_all(
        client.query.ListPositions,
        query_service_pb2.ListPositionsRequest(sku="SKU-P", page_size=1),
        "positions",
    )
    assert [[(p.sku, p.location_id, p.on_hand) for p in page] for page in by_sku] == [
        [("SKU-P", "L1", 1)],
        [("SKU-P", "L2", 2)],
        [("SKU-P", "L3", 3)],
    ]
    by_location = client.list_all(
        client.query.ListPositions,
        query_service_pb2.ListPositionsRequest(location_id="L2", page_size=1),
        "positions",
    )
    assert [[(p.sku, p.on_hand) for p in page] for page in by_location] == [
        [("SKU-P", 2)],
        [("SKU-Q", 4)],
    ]
    whole = client.query.ListPositions(
        query_service_pb2.ListPositionsRequest(sku="SKU-P"), timeout=10
    )
    assert [p.location_id for p in whole.positions] == ["L1", "L2", "L3"]
    assert whole.next_page_token == ""
    assert (
        client.query.ListPositions(
            query_service_pb2.ListPositionsRequest(sku="SKU-NONE"), timeout=10
        ).positions
        == []
    )

    first = client.query.ListPositions(
        query_service_pb2.ListPositionsRequest(sku="SKU-P", page_size=1), timeout=10
    )
    token = first.next_page_token
    assert token
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad, request in (
        (flipped, query_service_pb2.ListPositionsRequest(sku="SKU-P", page_size=1)),
        ("garbage!", query_service_pb2.ListPositionsRequest(sku="SKU-P", page_size=1)),
        # A genuine token, but for another listing.
        (token, query_service_pb2.ListPositionsRequest(sku="SKU-Q", page_size=1)),
        (token, query_service_pb2.ListPositionsRequest(location_id="L2", page_size=1)),
    ):
        request.page_token = bad
        assert_invalid(failure(client.query.ListPositions, request, timeout=10), "page_token")
    # Neither or both filters.
    assert_invalid(
        failure(client.query.ListPositions, query_service_pb2.ListPositionsRequest(), timeout=10),
        "sku",
    )

    # Reservations by channel and order_ref.
    client.receive("SKU-S", "L1", 100)
    made = [
        client.reserve(line("SKU-S", 1, "L1"), channel=channel, order_ref=order_ref).reservation_id
        for channel, order_ref in (
            ("web", "o-1"),
            ("web", "o-2"),
            ("web", "o-1"),
            ("market", "o-1"),
        )
    ]
    web_o1, web_o2, web_o1_again, market_o1 = made

    def listed(**kwargs: Any) -> list[list[str]]:
        pages = client.list_all(
            client.reservations.ListReservations,
            reservation_service_pb2.ListReservationsRequest(**kwargs),
            "reservations",
        )
        return [[r.reservation_id for r in page] for page in pages]

    web_pages = listed(channel="web", page_size=1)
    assert [len(page) for page in web_pages] == [1, 1, 1]
    web_ids = [rid for page in web_pages for rid in page]
    assert sorted(web_ids) == sorted([web_o1, web_o2, web_o1_again])
    assert listed(channel="web") == [web_ids]  # same order unpaged
    o1 = [rid for page in listed(channel="web", order_ref="o-1") for rid in page]
    assert sorted(o1) == sorted([web_o1, web_o1_again])
    assert listed(channel="web", order_ref="o-2") == [[web_o2]]
    assert listed(channel="market") == [[market_o1]]
    assert listed(channel="b2b") == [[]]
    for r in client.reservations.ListReservations(
        reservation_service_pb2.ListReservationsRequest(channel="web", order_ref="o-1"),
        timeout=10,
    ).reservations:
        assert (r.channel, r.order_ref, r.status) == ("web", "o-1", ACTIVE)
        assert [(ln.sku, ln.location_id, ln.qty) for ln in r.lines] == [("SKU-S", "L1", 1)]
    request = reservation_service_pb2.ListReservationsRequest(channel="web", page_size=1)
    token = client.reservations.ListReservations(request, timeout=10).next_page_token
    request = reservation_service_pb2.ListReservationsRequest(
        channel="market", page_size=1, page_token=token
    )
    assert_invalid(failure(client.reservations.ListReservations, request, timeout=10), "page_token")


# ---- idempotency --------------------------------------------------------------------------------


def test_idempotency_survives_restart(ledger: LedgerProcess, client: Client) -> None:
    sku, loc = "SKU-I", "DC-A"
    receipt = movement("receipt", sku, loc, qty=10, message_id="rcv-1")
    [first] = client.record(receipt)
    assert first.outcome == RECORDED
    [again] = client.record(receipt)
    assert (again.outcome, again.ledger_position) == (DUPLICATE, first.ledger_position)
    assert (again.source, again.message_id) == (SOURCE, "rcv-1")
    # In one request together with a new movement: only the new one is applied.
    dup, new = client.record(receipt, movement("receipt", sku, loc, qty=1, message_id="rcv-2"))
    assert (dup.outcome, dup.ledger_position) == (DUPLICATE, first.ledger_position)
    assert new.outcome == RECORDED and new.ledger_position > first.ledger_position
    assert client.buckets(sku, loc) == expect(on_hand=11, available=11)
    # The same (source, message_id) with another payload.
    changed = movement("receipt", sku, loc, qty=11, message_id="rcv-1")
    assert failure(client.record, changed).code() == grpc.StatusCode.ALREADY_EXISTS
    # Another source may use the same message_id.
    [other] = client.record(movement("receipt", sku, loc, qty=1, message_id="rcv-1", source="erp"))
    assert other.outcome == RECORDED
    assert client.buckets(sku, loc) == expect(on_hand=12, available=12)

    reserved = client.reserve(line(sku, 3, loc), request_id="req-1", order_ref="o-1")
    retried = client.reserve(line(sku, 3, loc), request_id="req-1", order_ref="o-1")
    assert retried == reserved
    assert client.buckets(sku, loc) == expect(on_hand=12, reserved=3, available=9)
    error = failure(client.reserve, line(sku, 4, loc), request_id="req-1", order_ref="o-1")
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert status_details(error)["ErrorInfo"].domain == DOMAIN
    assert (
        failure(client.reserve, line(sku, 3, loc), request_id="req-1", channel="market").code()
        == grpc.StatusCode.ALREADY_EXISTS
    )
    # A request that failed is not remembered: its key can be retried later.
    assert_insufficient(failure(client.reserve, line(sku, 20, loc), request_id="req-short"), 0)

    committed = client.commit(reserved.reservation_id, request_id="commit-1")
    assert client.commit(reserved.reservation_id, request_id="commit-1") == committed
    safety = policy_service_pb2.SetSafetyStockRequest(
        request_id="ss-1", sku=sku, location_id=loc, qty=1
    )
    stocked = client.policies.SetSafetyStock(safety, timeout=10)
    assert client.policies.SetSafetyStock(safety, timeout=10) == stocked
    before = client.buckets(sku, loc)
    assert before == expect(on_hand=12, allocated=3, safety_stock=1, available=8)
    version = client.position(sku, loc).version

    ledger.restart()

    assert client.reserve(line(sku, 3, loc), request_id="req-1", order_ref="o-1") == reserved
    assert client.commit(reserved.reservation_id, request_id="commit-1") == committed
    assert client.policies.SetSafetyStock(safety, timeout=10) == stocked
    [after] = client.record(receipt)
    assert (after.outcome, after.ledger_position) == (DUPLICATE, first.ledger_position)
    assert failure(client.record, changed).code() == grpc.StatusCode.ALREADY_EXISTS
    assert (
        failure(client.reserve, line(sku, 4, loc), request_id="req-1", order_ref="o-1").code()
        == grpc.StatusCode.ALREADY_EXISTS
    )
    assert client.buckets(sku, loc) == before
    assert client.position(sku, loc).version == version

    assert_insufficient(failure(client.reserve, line(sku, 20, loc), request_id="req-short"), 0)
    client.receive(sku, loc, 20)
    late = client.reserve(line(sku, 20, loc), request_id="req-short")
    assert late.status == ACTIVE
    assert client.buckets(sku, loc) == expect(
        on_hand=32, reserved=20, allocated=3, safety_stock=1, available=8
    )
    assert client.reserve(line(sku, 20, loc), request_id="req-short") == late


# ---- hostile input ------------------------------------------------------------------------------

NFC_E = unicodedata.normalize("NFC", "e\u0301")  # "é", one code point
NFD_E = unicodedata.normalize("NFD", "\u00e9")  # "e" + combining acute, two code points
LONG_MULTIBYTE = "\U0001f4e6ü日" * 42 + "\U0001f4e6ü"  # 128 code points, 1-4 bytes each
HOSTILE = [
    "'; DROP TABLE stored_events;--",
    "../../x",
    "%s%n",
    "{{7*7}}",
    "SKU/1",
    "\U0001f4e6\U0001f525",
    "\u202eevil",
    NFC_E,
    NFD_E,
    LONG_MULTIBYTE,
    'quote"back\\slash',
    " padded ",
]


def test_hostile_identifiers_round_trip(client: Client) -> None:
    assert len(LONG_MULTIBYTE) == 128 and len(LONG_MULTIBYTE.encode()) > 128 * 2
    assert NFC_E != NFD_E and (len(NFC_E), len(NFD_E)) == (1, 2)
    loc, sku = "LOC-H", "SKU-H"
    # Quantities differ per identifier, so a mix-up (e.g. NFC/NFD folded together) shows.
    client.record(
        *(movement("receipt", name, loc, qty=i + 1) for i, name in enumerate(HOSTILE)),
        *(movement("receipt", sku, name, qty=i + 1) for i, name in enumerate(HOSTILE)),
    )
    for i, name in enumerate(HOSTILE):
        position = client.position(name, loc)
        assert (position.sku, position.location_id, position.on_hand) == (name, loc, i + 1)
        position = client.position(sku, name)
        assert (position.sku, position.location_id, position.on_hand) == (sku, name, i + 1)

    # Both backends order identifiers by code point (UTF-8 byte order), page by page.
    by_code_point = sorted(range(len(HOSTILE)), key=lambda i: HOSTILE[i])
    for request, key in (
        (query_service_pb2.ListPositionsRequest(location_id=loc, page_size=1), "sku"),
        (query_service_pb2.ListPositionsRequest(sku=sku, page_size=1), "location_id"),
    ):
        pages = client.list_all(client.query.ListPositions, request, "positions")
        assert [[(getattr(p, key), p.on_hand) for p in page] for page in pages] == [
            [(HOSTILE[i], i + 1)] for i in by_code_point
        ]
    unpaged = client.query.ListPositions(
        query_service_pb2.ListPositionsRequest(location_id=loc), timeout=10
    )
    assert [(p.sku, p.location_id, p.on_hand) for p in unpaged.positions] == [
        (HOSTILE[i], loc, i + 1) for i in by_code_point
    ]

    # Reservations carry them verbatim, as order_ref too.
    order_ref = HOSTILE[0]
    held = client.reserve(
        *(line(name, 1, loc) for name in HOSTILE), order_ref=order_ref, channel="web"
    )
    expected_lines = [(name, loc, 1) for name in HOSTILE]
    assert [(ln.sku, ln.location_id, ln.qty) for ln in held.lines] == expected_lines
    fetched = client.get_reservation(held.reservation_id)
    assert [(ln.sku, ln.location_id, ln.qty) for ln in fetched.lines] == expected_lines
    assert fetched.order_ref == order_ref
    listed_reservations = client.reservations.ListReservations(
        reservation_service_pb2.ListReservationsRequest(channel="web", order_ref=order_ref),
        timeout=10,
    ).reservations
    assert [r.reservation_id for r in listed_reservations] == [held.reservation_id]
    for i, name in enumerate(HOSTILE):
        assert client.buckets(name, loc) == expect(on_hand=i + 1, reserved=1, available=i)
    # Service-chosen location: the greatest available is the last hostile location.
    chosen = client.reserve(line(sku, len(HOSTILE)))
    assert [(ln.location_id, ln.qty) for ln in chosen.lines] == [(HOSTILE[-1], len(HOSTILE))]
    holds = client.position(sku, HOSTILE[-1], include_holds=True).holds
    assert [h.reservation_id for h in holds] == [chosen.reservation_id]
    # The SQL-looking identifier did not drop anything.
    assert client.buckets(sku, loc) == expect()
    assert client.buckets(HOSTILE[0], loc) == expect(on_hand=1, reserved=1)


def test_invalid_arguments_name_the_field(client: Client) -> None:
    client.receive("SKU-V", "DC-A", 5)
    long_id = "x" * 129
    long_multibyte = LONG_MULTIBYTE + "ü"  # 129 code points
    cases: list[tuple[movement_pb2.Movement, str]] = [
        (movement("receipt", "", "DC-A", qty=1), "movements[0].sku"),
        (movement("receipt", long_id, "DC-A", qty=1), "movements[0].sku"),
        (movement("receipt", long_multibyte, "DC-A", qty=1), "movements[0].sku"),
        (movement("receipt", "SKU\n1", "DC-A", qty=1), "movements[0].sku"),
        (movement("receipt", "SKU-V", "", qty=1), "movements[0].location_id"),
        (movement("receipt", "SKU-V", long_id, qty=1), "movements[0].location_id"),
        (movement("receipt", "SKU-V", "DC-A", qty=0), "movements[0].qty"),
        (movement("receipt", "SKU-V", "DC-A", qty=-3), "movements[0].qty"),
        (movement("shipment", "SKU-V", "DC-A"), "movements[0].qty"),
        (movement("adjustment", "SKU-V", "DC-A", delta=0, reason="x"), "movements[0].delta"),
        (movement("adjustment", "SKU-V", "DC-A", delta=2), "movements[0].reason"),
        (movement("cycle_count", "SKU-V", "DC-A", counted=-1), "movements[0].counted"),
        (movement("receipt", "SKU-V", "DC-A", qty=1, source="wms east"), "movements[0].source"),
        (movement("receipt", "SKU-V", "DC-A", qty=1, message_id=""), "movements[0].message_id"),
        (
            movement("transfer_dispatch", "SKU-V", "DC-A", qty=1, transfer_id="T"),
            "movements[0].to_location_id",
        ),
        (movement("return_receipt", "SKU-V", "DC-A", qty=1), "movements[0].disposition"),
    ]
    for type_number in (0, 99):
        bad = movement("receipt", "SKU-V", "DC-A", qty=1)
        bad.type = type_number  # type: ignore[assignment]
        cases.append((bad, "movements[0].type"))
    for bad, field in cases:
        error = failure(
            client.movements.RecordMovements,
            movement_service_pb2.RecordMovementsRequest(movements=[bad]),
            timeout=10,
        )
        assert_invalid(error, field)
    # One bad movement fails the whole request: the good one before it is not applied.
    error = failure(
        client.record,
        movement("receipt", "SKU-V", "DC-A", qty=1),
        movement("receipt", "SKU-V", "DC-A", qty=0),
    )
    assert_invalid(error, "movements[1].qty")
    assert_invalid(failure(client.record), "movements")
    assert client.buckets("SKU-V", "DC-A") == expect(on_hand=5, available=5)

    reserve_cases: list[tuple[dict[str, Any], str]] = [
        ({"lines": [line("SKU-V", 0, "DC-A")]}, "lines[0].qty"),
        ({"lines": [line("SKU-V", -1, "DC-A")]}, "lines[0].qty"),
        ({"lines": [line("", 1, "DC-A")]}, "lines[0].sku"),
        ({"lines": [line(long_id, 1, "DC-A")]}, "lines[0].sku"),
        ({"lines": [line("SKU-V", 1, long_id)]}, "lines[0].location_id"),
        ({"lines": [line("SKU-V", 1, "DC-A"), line("SKU-V", 0)]}, "lines[1].qty"),
        ({"lines": [line("SKU-V", 1, "DC-A")], "channel": "Web"}, "channel"),
        ({"lines": [line("SKU-V", 1, "DC-A")], "channel": ""}, "channel"),
        ({"lines": [line("SKU-V", 1, "DC-A")], "ttl": duration_pb2.Duration()}, "ttl"),
        (
            {"lines": [line("SKU-V", 1, "DC-A")], "ttl": duration_pb2.Duration(seconds=-5)},
            "ttl",
        ),
        ({"lines": [line("SKU-V", 1, "DC-A")], "request_id": ""}, "request_id"),
        ({"lines": []}, "lines"),
    ]
    for fields, field in reserve_cases:
        request = {"request_id": _next_id("bad"), "channel": "web", **fields}
        error = failure(
            client.reservations.Reserve,
            reservation_service_pb2.ReserveRequest(**request),
            timeout=10,
        )
        assert_invalid(error, field)
    assert client.buckets("SKU-V", "DC-A") == expect(on_hand=5, available=5)

    assert_invalid(failure(client.position, "", "DC-A"), "sku")
    assert_invalid(failure(client.position, "SKU-V", long_id), "location_id")
    assert_invalid(failure(client.get_reservation, "", ""), "reservation_id")
    assert_invalid(failure(client.get_reservation, str(uuid.uuid4()), "Web"), "channel")
    assert_invalid(
        failure(
            client.policies.SetSafetyStock,
            policy_service_pb2.SetSafetyStockRequest(
                request_id="ss", sku="SKU-V", location_id="DC-A", qty=-1
            ),
            timeout=10,
        ),
        "qty",
    )
    assert_invalid(
        failure(
            client.policies.SetChannelFence,
            policy_service_pb2.SetChannelFenceRequest(
                request_id="f", sku="SKU-V", location_id="DC-A", channel="Market", qty=1
            ),
            timeout=10,
        ),
        "channel",
    )
    assert_invalid(
        failure(
            client.policies.SetChannelPolicy,
            policy_service_pb2.SetChannelPolicyRequest(
                request_id="p", channel="web", share_percent=101
            ),
            timeout=10,
        ),
        "share_percent",
    )


def test_hundreds_of_bad_movements_are_invalid_argument_not_a_metadata_overflow(
    client: Client,
) -> None:
    """500 malformed adjustments (one bad field each): the status lists the first violations
    and counts the rest, small enough for the client's 16 KiB metadata limit (before, the
    client saw RESOURCE_EXHAUSTED "received metadata size exceeds hard limit")."""
    bad = [movement("adjustment", "SKU-MANY", "DC-1", qty=1) for _ in range(500)]
    error = failure(client.record, *bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "and 495 more" in error.details()
    violations = status_details(error)["BadRequest"].field_violations
    assert len(violations) == 50
    assert [v.field.split(".")[0] for v in violations] == [f"movements[{i}]" for i in range(50)]
    assert client.buckets("SKU-MANY", "DC-1")["on_hand"] == 0
