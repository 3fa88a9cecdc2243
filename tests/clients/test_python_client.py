"""The typed Python client (``clients/python``, issue 7): the API against a real ``ledger serve``
on SQLite, errors with their ``google.rpc`` details, bearer token and (m)TLS, and the retry
policy against a scripted in-process server (which codes are retried, that every attempt
repeats the request id and correlation id, back-off, RetryInfo, deadlines, stream resume).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from inventory.ledger.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    availability_pb2,
    item_policy_pb2,
    query_service_pb2_grpc,
    reservation_pb2,
    reservation_service_pb2_grpc,
    serial_pb2,
)
from inventory_ledger_client import (
    AlreadyExists,
    AsyncLedgerClient,
    CallInfo,
    DeadlineExceeded,
    FailedPrecondition,
    InsufficientAvailability,
    Internal,
    InvalidArgument,
    LedgerClient,
    LedgerError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    line,
    movement,
)
from inventory_ledger_client.errors import ERROR_CLASSES, parse_short_lines

from entrypoints.grpc.tokens import principal_entry
from testbed.server import LedgerProcess

CHANNEL = "web"
LOCATION = "DC-EAST"


def new_sku(prefix: str = "PC") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def receive(client: LedgerClient, sku: str, qty: int, location_id: str = LOCATION) -> None:
    [result] = client.record_movements(
        [movement("receipt", source="client-tests", sku=sku, location_id=location_id, qty=qty)]
    ).results
    assert result.outcome == 1  # RECORDED


@pytest.fixture
def client(ledger_server: LedgerProcess) -> Iterator[LedgerClient]:
    with LedgerClient(ledger_server.address) as ledger:
        yield ledger


# ---- against a real server ---------------------------------------------------------------------


def test_reserve_commit_release_sync(ledger_server: LedgerProcess) -> None:
    calls: list[CallInfo] = []
    with LedgerClient(ledger_server.address, on_call=calls.append) as ledger:
        sku = new_sku()
        receive(ledger, sku, 10)
        reservation = ledger.reserve(
            CHANNEL,
            [line(sku, 4, LOCATION)],
            order_ref="order-sync",
            ttl=dt.timedelta(minutes=5),
            correlation_id="checkout-sync-1",
        )
        assert reservation.status == reservation_pb2.RESERVATION_STATUS_ACTIVE
        assert [(lin.sku, lin.location_id, lin.qty) for lin in reservation.lines] == [
            (sku, LOCATION, 4)
        ]
        assert calls[-1].method == "ReservationService/Reserve"
        assert calls[-1].correlation_id == "checkout-sync-1"  # echoed by the server
        assert calls[-1].request_id and calls[-1].attempts == 1
        assert calls[-1].code == grpc.StatusCode.OK
        position = ledger.get_position(sku, LOCATION)
        assert (position.reserved, position.available) == (4, 6)

        committed = ledger.commit(reservation.reservation_id, channel=CHANNEL)
        assert committed.status == reservation_pb2.RESERVATION_STATUS_COMMITTED
        position = ledger.get_position(sku, LOCATION, include_holds=True)
        assert (position.reserved, position.allocated, position.available) == (0, 4, 6)
        assert [hold.reservation_id for hold in position.holds] == [reservation.reservation_id]

        released = ledger.release(reservation.reservation_id)
        assert released.status == reservation_pb2.RESERVATION_STATUS_RELEASED
        position = ledger.get_position(sku, LOCATION)
        assert (position.reserved, position.allocated, position.available) == (0, 0, 10)
        assert ledger.get_reservation(reservation.reservation_id).status == released.status
        listed = list(ledger.iter_reservations(CHANNEL, order_ref="order-sync", page_size=1))
        assert reservation.reservation_id in [r.reservation_id for r in listed]
        assert [p.sku for p in ledger.iter_positions(sku=sku)] == [sku]

        # The correlation id is stored on the events the call wrote.
        [placed, *_] = [
            entry
            for entry in ledger.stream_ledger()
            if entry.reservation_id == reservation.reservation_id
        ]
        assert placed.type == audit_service_pb2.ENTRY_TYPE_HOLD_PLACED
        assert placed.correlation_id == "checkout-sync-1"


def test_reserve_commit_release_async(ledger_server: LedgerProcess) -> None:
    async def scenario() -> None:
        async with AsyncLedgerClient(ledger_server.address) as ledger:
            sku = new_sku("PCA")
            await ledger.record_movements(
                [movement("receipt", source="client-tests", sku=sku, location_id=LOCATION, qty=8)]
            )
            reservation = await ledger.reserve(CHANNEL, [(sku, 3)], order_ref="order-async")
            assert reservation.lines[0].location_id == LOCATION  # the service chose it
            assert (await ledger.get_position(sku, LOCATION)).reserved == 3
            committed = await ledger.commit(reservation.reservation_id)
            assert committed.status == reservation_pb2.RESERVATION_STATUS_COMMITTED
            assert (await ledger.get_position(sku, LOCATION)).allocated == 3
            released = await ledger.release(reservation.reservation_id)
            assert released.status == reservation_pb2.RESERVATION_STATUS_RELEASED
            position = await ledger.get_position(sku, LOCATION)
            assert (position.reserved, position.allocated, position.available) == (0, 0, 8)
            found = [r async for r in ledger.iter_reservations(CHANNEL, order_ref="order-async")]
            assert [r.reservation_id for r in found] == [reservation.reservation_id]
            availability = await ledger.get_availability(sku, CHANNEL, consistency="strong")
            assert availability.channel_available == 8

            with pytest.raises(InsufficientAvailability) as caught:
                await ledger.reserve(CHANNEL, [(sku, LOCATION, 9)], correlation_id="async-short")
            assert caught.value.correlation_id == "async-short"
            [short] = caught.value.short_lines
            assert (short.sku, short.location_id, short.requested, short.available) == (
                sku,
                LOCATION,
                9,
                8,
            )
            with pytest.raises(NotFound):
                await ledger.get_reservation(str(uuid.uuid4()))
            stocked = await ledger.set_safety_stock(sku, LOCATION, 1)
            seen = await ledger.get_availability(sku, CHANNEL, min_position=stocked.ledger_position)
            assert seen.channel_available == 7

    asyncio.run(scenario())


def test_insufficient_availability_exposes_the_short_lines(client: LedgerClient) -> None:
    enough, short_here, short_anywhere = new_sku(), new_sku(), new_sku()
    receive(client, enough, 5)
    receive(client, short_here, 2)
    receive(client, short_anywhere, 1)
    with pytest.raises(InsufficientAvailability) as caught:
        client.reserve(
            CHANNEL,
            [(enough, LOCATION, 5), (short_here, LOCATION, 3), (short_anywhere, 4)],
            order_ref="order-short",
            correlation_id="short-lines-1",
        )
    error = caught.value
    assert isinstance(error, FailedPrecondition) and isinstance(error, LedgerError)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "INSUFFICIENT_AVAILABILITY" and error.domain == "inventory.ledger.v1"
    assert error.channel == CHANNEL
    assert error.correlation_id == "short-lines-1" and error.request_id
    short = [
        (s.line_index, s.sku, s.location_id, s.requested, s.available) for s in error.short_lines
    ]
    assert short == [(1, short_here, LOCATION, 3, 2), (2, short_anywhere, "", 4, 1)]
    assert [v.subject for v in error.violations] == ["lines[1]", "lines[2]"]
    assert not error.retryable
    # All or nothing: the line that was covered holds nothing either.
    assert client.get_position(enough, LOCATION).reserved == 0


def test_invalid_argument_names_the_field(client: LedgerClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.reserve(CHANNEL, [(new_sku(), LOCATION, 1), (new_sku(), LOCATION, 0)])
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "lines[1].qty" in error.fields
    assert error.field_violations[0].description
    assert error.metadata.get("field") == error.fields[0]
    with pytest.raises(InvalidArgument) as caught:
        client.reserve("Not A Channel!", [(new_sku(), 1)])
    assert caught.value.fields == ["channel"]


def test_tracking_fields_are_sent_and_checked(client: LedgerClient) -> None:
    """The helpers carry the lot and serial fields (issue 19); their shape is checked by the
    server and a violation names the entry."""
    expiry = dt.datetime(2027, 1, 10, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    built = line("YOG-1", 4, lot_id="L7", min_expires_at=expiry)
    assert (built.lot_id, built.min_expires_at.ToDatetime(tzinfo=dt.UTC)) == (
        "L7",
        dt.datetime(2027, 1, 10, tzinfo=dt.UTC),
    )
    assert not line("YOG-1", 4).HasField("min_expires_at")
    lot = movement(
        "receipt", source="client-tests", sku="YOG-1", location_id=LOCATION, qty=2,
        lot_id="L7", expires_at=expiry,
    )  # fmt: skip
    assert (lot.lot_id, lot.expires_at.ToDatetime(tzinfo=dt.UTC)) == (
        "L7",
        dt.datetime(2027, 1, 10, tzinfo=dt.UTC),
    )
    serial = movement(
        "receipt", source="client-tests", sku=new_sku("PCS"), location_id=LOCATION, qty=2,
        serial_numbers=["SN-1", "SN-1"],
    )  # fmt: skip
    assert list(serial.serial_numbers) == ["SN-1", "SN-1"]
    with pytest.raises(InvalidArgument) as caught:
        client.record_movements([serial])
    assert caught.value.fields == ["movements[0].serial_numbers[1]"]


def test_not_found_and_already_exists(client: LedgerClient) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(NotFound) as caught:
        client.get_reservation(missing)
    assert caught.value.resource_name == missing
    assert caught.value.resource_type == "inventory.ledger.v1.Reservation"
    with pytest.raises(NotFound):
        client.commit(missing)

    sku = new_sku()
    receive(client, sku, 5)
    request_id = str(uuid.uuid4())
    first = client.reserve(CHANNEL, [(sku, LOCATION, 1)], request_id=request_id)
    # The same key and payload: the first result, nothing new held.
    again = client.reserve(CHANNEL, [(sku, LOCATION, 1)], request_id=request_id)
    assert again.reservation_id == first.reservation_id
    assert client.get_position(sku, LOCATION).reserved == 1
    # The same key with another payload.
    with pytest.raises(AlreadyExists) as caught_again:
        client.reserve(CHANNEL, [(sku, LOCATION, 2)], request_id=request_id)
    assert caught_again.value.request_id == request_id


def test_watch_availability_streams_changes(ledger_server: LedgerProcess) -> None:
    sku = new_sku("PCW")
    with LedgerClient(ledger_server.address) as ledger:
        receive(ledger, sku, 6)
        ledger.get_availability(
            sku, CHANNEL, min_position=ledger.get_projection_status().head_position
        )
        changes: list[availability_pb2.AvailabilityChange] = []
        with ledger.watch_availability(CHANNEL, [sku], timeout=20) as watch:
            for change in watch:
                changes.append(change)
                if change.initial:
                    assert change.channel_available == 6
                    ledger.reserve(CHANNEL, [(sku, LOCATION, 2)])
                else:
                    watch.cancel()
            assert watch.correlation_id
        assert changes[-1].channel_available == 4
        assert changes[-1].previous_channel_available == 6


def test_watch_availability_async(ledger_server: LedgerProcess) -> None:
    sku = new_sku("PCWA")

    async def scenario() -> list[int]:
        async with AsyncLedgerClient(ledger_server.address) as ledger:
            await ledger.record_movements(
                [movement("receipt", source="client-tests", sku=sku, location_id=LOCATION, qty=3)]
            )
            seen: list[int] = []
            watch = ledger.watch_availability(CHANNEL, [sku], timeout=20)
            async for change in watch:  # 0 first if the projection has not seen the receipt
                seen.append(change.channel_available)
                if change.channel_available == 3 and 3 not in seen[:-1]:
                    await ledger.reserve(CHANNEL, [(sku, LOCATION, 1)])
                elif change.channel_available == 2:
                    watch.cancel()
            return seen

    assert asyncio.run(scenario())[-1] == 2


def test_policy_and_audit_calls(client: LedgerClient) -> None:
    sku = new_sku("PCP")
    receive(client, sku, 10)
    position = client.set_safety_stock(sku, LOCATION, 2)
    assert (position.safety_stock, position.available) == (2, 8)
    # Policy answers carry the ledger position of their write: read-your-writes (issue 17).
    seen = client.get_availability(sku, CHANNEL, min_position=position.ledger_position)
    assert seen.channel_available == 8
    position = client.set_channel_fence(sku, LOCATION, "b2b", 3)
    assert position.fences["b2b"] == 3
    seen = client.get_availability(sku, CHANNEL, min_position=position.ledger_position)
    assert seen.channel_available == 5
    channel = f"ch{uuid.uuid4().hex[:8]}"
    policy = client.set_channel_policy(channel, share_percent=50)
    assert (policy.channel, policy.share_percent) == (channel, 50)
    seen = client.get_availability(sku, channel, min_position=policy.ledger_position)
    assert seen.channel_available == 2  # floor((8 - b2b's fence 3) * 50 / 100)
    assert policy.ledger_position > position.ledger_position > 0
    now = dt.datetime.now(dt.UTC)
    past = client.get_position_as_of(sku, LOCATION, now, axis="recorded")
    assert past.on_hand == 10
    page = client.list_movements(sku, LOCATION, axis="effective", end=now + dt.timedelta(days=1))
    assert audit_service_pb2.ENTRY_TYPE_RECEIPT in [entry.type for entry in page.entries]
    [progress] = list(client.verify_ledger(sku=sku, location_id=LOCATION))
    assert progress.done and progress.ok
    with pytest.raises(ValueError, match="naive"):
        client.get_position_as_of(sku, LOCATION, dt.datetime(2026, 1, 1))


def test_item_policy_calls(client: LedgerClient) -> None:
    sku = new_sku("PCI")
    unknown = client.get_item_policy(sku)
    assert (unknown.sku, unknown.tracking, unknown.version) == (
        sku,
        item_policy_pb2.ITEM_TRACKING_NONE,
        0,
    )
    request_id = str(uuid.uuid4())
    policy = client.set_item_policy(sku, "lot", request_id=request_id)
    assert (policy.tracking, policy.version) == (item_policy_pb2.ITEM_TRACKING_LOT, 1)
    assert policy.ledger_position > 0
    assert client.set_item_policy(sku, "ITEM_TRACKING_LOT", request_id=request_id) == policy
    assert client.get_item_policy(sku).tracking == item_policy_pb2.ITEM_TRACKING_LOT
    with pytest.raises(FailedPrecondition) as caught:
        client.set_item_policy(sku, item_policy_pb2.ITEM_TRACKING_NONE)
    assert caught.value.reason == "ITEM_TRACKING_LOCKED"
    assert [v.subject for v in caught.value.violations] == [sku]

    stocked = new_sku("PCI")
    receive(client, stocked, 1)
    with pytest.raises(FailedPrecondition, match="holds no stock"):
        client.set_item_policy(stocked, "serial")


def test_item_policy_calls_async(ledger_server: LedgerProcess) -> None:
    async def scenario() -> tuple[int, int]:
        async with AsyncLedgerClient(ledger_server.address) as ledger:
            sku = new_sku("PCIA")
            await ledger.set_item_policy(sku, "serial")
            return (await ledger.get_item_policy(sku)).tracking, (
                await ledger.get_item_policy(new_sku("PCIA"))
            ).tracking

    assert asyncio.run(scenario()) == (
        item_policy_pb2.ITEM_TRACKING_SERIAL,
        item_policy_pb2.ITEM_TRACKING_NONE,
    )


def test_get_serial_calls(ledger_server: LedgerProcess) -> None:
    """get_serial answers a unit's status and history (issue 19), sync and async alike."""
    sku = new_sku("PCS")
    with LedgerClient(ledger_server.address) as client:
        client.set_item_policy(sku, "serial")
        client.record_movements(
            [movement("receipt", source="client-tests", sku=sku, location_id=LOCATION, qty=1,
                      serial_numbers=["SN-1"])]
        )  # fmt: skip
        unit = client.get_serial(sku, "SN-1")
        with pytest.raises(NotFound) as caught:
            client.get_serial(sku, "SN-2")
    assert (unit.status, unit.location_id, unit.bucket) == (
        serial_pb2.SERIAL_STATUS_IN_STOCK,
        LOCATION,
        "on_hand",
    )
    assert [step.type for step in unit.history] == ["receipt"]
    assert caught.value.reason == "SERIAL_NOT_FOUND"

    async def scenario() -> int:
        async with AsyncLedgerClient(ledger_server.address) as ledger:
            return (await ledger.get_serial(sku, "SN-1")).status

    assert asyncio.run(scenario()) == serial_pb2.SERIAL_STATUS_IN_STOCK


def test_trace_lot_calls(ledger_server: LedgerProcess) -> None:
    """trace_lot pages a lot's recall trace (issue 19), sync and async alike."""
    sku = new_sku("PCL")
    with LedgerClient(ledger_server.address) as client:
        client.set_item_policy(sku, "lot")
        for kind, qty in (("receipt", 5), ("shipment", 2)):
            client.record_movements(
                [movement(kind, source="client-tests", sku=sku, location_id=LOCATION, qty=qty,
                          lot_id="L1")]
            )  # fmt: skip
        first = client.trace_lot(sku, "L1", page_size=1)
        second = client.trace_lot(sku, "L1", page_size=1, page_token=first.next_page_token)
    assert [e.type for e in (*first.entries, *second.entries)] == [
        audit_service_pb2.ENTRY_TYPE_RECEIPT,
        audit_service_pb2.ENTRY_TYPE_SHIPMENT,
    ]
    assert second.next_page_token == ""
    assert [(loc.location_id, loc.buckets.on_hand) for loc in first.locations] == [(LOCATION, 3)]

    async def scenario() -> tuple[int, int]:
        async with AsyncLedgerClient(ledger_server.address) as ledger:
            whole = await ledger.trace_lot(sku, "L1")
            before = await ledger.trace_lot(sku, "L1", as_of=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
            return len(whole.entries), len(before.entries)

    assert asyncio.run(scenario()) == (2, 0)


# ---- token and TLS -------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: trustme.CA
    client_ca: trustme.CA
    directory: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("client-pki")
    ca, client_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    (directory / "server.pem").write_bytes(b"".join(b.bytes() for b in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    client_ca.cert_pem.write_to_path(str(directory / "clients.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client = client_ca.issue_cert("storefront.example")
    (directory / "client.pem").write_bytes(b"".join(b.bytes() for b in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(directory / "client.key"))
    return Pki(ca, client_ca, directory)


def test_bearer_token_over_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "principals": [
                    principal_entry("ops", "tok-ops", ["admin"], rate_per_second=0),
                    principal_entry("web-shop", "tok-web", ["query", "reserve"], ["web"]),
                ]
            }
        )
    )
    d = pki.directory
    process = LedgerProcess(
        f"sqlite:///{tmp_path / 'ledger.db'}",
        extra_args=[
            *("--token-file", str(tokens)),
            *("--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key")),
            *("--tls-client-ca", str(d / "clients.pem")),
        ],
        credentials=grpc.ssl_channel_credentials(
            root_certificates=(d / "ca.pem").read_bytes(),
            private_key=(d / "client.key").read_bytes(),
            certificate_chain=(d / "client.pem").read_bytes(),
        ),
    )
    tls = {
        "root_certificates": d / "ca.pem",  # a path; PEM bytes work too
        "private_key": d / "client.key",
        "certificate_chain": (d / "client.pem").read_bytes(),
    }
    sku = new_sku("PCT")
    with process:
        with LedgerClient(process.address, token="tok-ops", **tls) as ops:
            receive(ops, sku, 4)
        rotating = iter(["tok-web"] * 100)
        with LedgerClient(process.address, token=lambda: next(rotating), **tls) as shop:
            reservation = shop.reserve("web", [(sku, LOCATION, 1)])
            assert shop.get_position(sku, LOCATION).reserved == 1
            with pytest.raises(PermissionDenied) as caught:
                shop.reserve("marketplace", [(sku, LOCATION, 1)])
            assert caught.value.reason == "CHANNEL_NOT_ALLOWED"
            assert caught.value.metadata["principal"] == "web-shop"
            with pytest.raises(PermissionDenied) as caught:
                receive(shop, sku, 1)
            assert caught.value.reason == "MISSING_SCOPE"
            shop.release(reservation.reservation_id)
        with LedgerClient(process.address, **tls) as anonymous:
            with pytest.raises(Unauthenticated) as caught_auth:
                anonymous.get_position(sku, LOCATION)
            assert caught_auth.value.reason == "UNAUTHENTICATED"
        # Without a client certificate the handshake fails: UNAVAILABLE, retried, then raised.
        calls: list[CallInfo] = []
        with LedgerClient(
            process.address,
            token="tok-ops",
            root_certificates=d / "ca.pem",
            retry=RetryPolicy(max_attempts=2, initial_backoff=0.01),
            on_call=calls.append,
        ) as no_cert:
            with pytest.raises(Unavailable) as caught_tls:
                no_cert.get_position(sku, LOCATION, timeout=5)
            assert caught_tls.value.attempts == 2 and calls[-1].attempts == 2
        # Plaintext against the TLS port fails the same way.
        plain = LedgerClient(process.address, token="tok-ops", retry=RetryPolicy.no_retries())
        with plain, pytest.raises(Unavailable):
            plain.get_position(sku, LOCATION, timeout=5)
        assert process.stop() == 0, process.log_text()


# ---- retry policy against a scripted in-process server -------------------------------------------


@dataclass
class Attempt:
    method: str
    request: Any
    correlation_id: str | None
    authorization: str | None


Failure = tuple[grpc.StatusCode, str, list[Any]]


def packed(*details: Any) -> list[any_pb2.Any]:
    out = []
    for detail in details:
        container = any_pb2.Any()
        container.Pack(detail)
        out.append(container)
    return out


def abort(context: grpc.ServicerContext, failure: Failure) -> None:
    code, message, details = failure
    context.abort_with_status(
        rpc_status.to_status(
            status_pb2.Status(code=code.value[0], message=message, details=packed(*details))
        )
    )


@dataclass
class Script:
    """Failures to answer before succeeding, and every attempt seen."""

    failures: list[Failure] = field(default_factory=list)
    delay: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        correlation_id = metadata.get("x-correlation-id")
        context.send_initial_metadata((("x-correlation-id", correlation_id or "server-made"),))
        with self.lock:
            self.attempts.append(
                Attempt(method, request, correlation_id, metadata.get("authorization"))
            )
            failure = self.failures.pop(0) if self.failures else None
        if self.delay:
            time.sleep(self.delay)
        if failure is not None:
            abort(context, failure)


class ScriptedReservations(reservation_service_pb2_grpc.ReservationServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Reserve(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.script.attempt("Reserve", request, context)
        return reservation_pb2.Reservation(
            reservation_id="r-" + request.request_id, channel=request.channel
        )

    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.script.attempt("Commit", request, context)
        return reservation_pb2.Reservation(reservation_id=request.reservation_id)


class ScriptedStreams(
    query_service_pb2_grpc.InventoryQueryServiceServicer,
    audit_service_pb2_grpc.AuditServiceServicer,
):
    """WatchAvailability and StreamLedger that break (UNAVAILABLE) after some messages."""

    def __init__(self, script: Script, break_after: list[int]) -> None:
        self.script = script
        self.break_after = break_after  # per call: messages before breaking (-1: never)

    def _breaks(self) -> int:
        with self.script.lock:
            return self.break_after.pop(0) if self.break_after else -1

    def WatchAvailability(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.script.attempt("WatchAvailability", request, context)
        breaks = self._breaks()
        for index, value in enumerate([5, 4, 3]):
            if index == breaks:
                abort(context, (grpc.StatusCode.UNAVAILABLE, "going away", []))
            yield availability_pb2.AvailabilityChange(
                sku=request.skus[0], channel_available=value, initial=index == 0
            )

    def StreamLedger(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.script.attempt("StreamLedger", request, context)
        breaks = self._breaks()
        for sent, position in enumerate(range(request.from_position + 1, 7)):
            if sent == breaks:
                abort(context, (grpc.StatusCode.UNAVAILABLE, "going away", []))
            yield audit_service_pb2.LedgerEntry(position=position)


@pytest.fixture
def scripted() -> Iterator[tuple[str, Script, ScriptedStreams]]:
    script = Script()
    streams = ScriptedStreams(script, [])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    reservation_service_pb2_grpc.add_ReservationServiceServicer_to_server(
        ScriptedReservations(script), server
    )
    query_service_pb2_grpc.add_InventoryQueryServiceServicer_to_server(streams, server)
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(streams, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", script, streams
    finally:
        server.stop(None)


FAST = RetryPolicy(max_attempts=5, initial_backoff=0.001, max_backoff=0.01)


def test_unavailable_and_aborted_are_retried_with_one_request_id(scripted: Any) -> None:
    address, script, _ = scripted
    script.failures = [
        (grpc.StatusCode.UNAVAILABLE, "store down", []),
        (grpc.StatusCode.ABORTED, "conflict", []),
        (grpc.StatusCode.UNAVAILABLE, "store down", []),
    ]
    calls: list[CallInfo] = []
    with LedgerClient(address, token="secret", retry=FAST, on_call=calls.append) as client:
        reservation = client.reserve(CHANNEL, [("SKU-R", 1)])
    assert len(script.attempts) == 4
    request_ids = {attempt.request.request_id for attempt in script.attempts}
    assert len(request_ids) == 1 and uuid.UUID(request_ids.pop())  # one generated UUID
    assert reservation.reservation_id == "r-" + script.attempts[0].request.request_id
    correlation_ids = {attempt.correlation_id for attempt in script.attempts}
    assert len(correlation_ids) == 1 and None not in correlation_ids
    assert {attempt.authorization for attempt in script.attempts} == {"Bearer secret"}
    [info] = calls
    assert (info.attempts, info.code, info.request_id) == (
        4,
        grpc.StatusCode.OK,
        script.attempts[0].request.request_id,
    )
    assert info.correlation_id == script.attempts[0].correlation_id


def test_async_retries_repeat_the_request_id_and_correlation_id(scripted: Any) -> None:
    address, script, _ = scripted
    script.failures = [(grpc.StatusCode.UNAVAILABLE, "down", [])] * 2

    async def scenario() -> Any:
        async with AsyncLedgerClient(address, retry=FAST) as client:
            return await client.commit("res-1", request_id="commit-key", correlation_id="c-1")

    assert asyncio.run(scenario()).reservation_id == "res-1"
    assert [(a.request.request_id, a.correlation_id) for a in script.attempts] == [
        ("commit-key", "c-1")
    ] * 3


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNIMPLEMENTED,
    ],
)
def test_other_codes_are_not_retried(scripted: Any, code: grpc.StatusCode) -> None:
    address, script, _ = scripted
    script.failures = [(code, "no", [])] * 3
    with LedgerClient(address, retry=FAST) as client, pytest.raises(LedgerError) as caught:
        client.reserve(CHANNEL, [("SKU-R", 1)])
    assert len(script.attempts) == 1
    assert type(caught.value) is ERROR_CLASSES[code]
    assert caught.value.code == code and caught.value.attempts == 1
    assert isinstance(caught.value.__cause__, grpc.RpcError)


def test_gives_up_after_max_attempts(scripted: Any) -> None:
    address, script, _ = scripted
    script.failures = [(grpc.StatusCode.ABORTED, "conflict", [])] * 10
    client = LedgerClient(address, retry=RetryPolicy(max_attempts=3, initial_backoff=0.001))
    with client, pytest.raises(LedgerError) as caught:
        client.reserve(CHANNEL, [("SKU-R", 1)])
    assert caught.value.code == grpc.StatusCode.ABORTED and caught.value.attempts == 3
    assert len(script.attempts) == 3


def test_retry_info_is_honoured_within_the_deadline(scripted: Any) -> None:
    address, script, _ = scripted
    wait = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=300_000_000))
    script.failures = [(grpc.StatusCode.UNAVAILABLE, "store down", [wait])]
    with LedgerClient(address, retry=FAST) as client:
        began = time.monotonic()
        client.reserve(CHANNEL, [("SKU-R", 1)])
        assert time.monotonic() - began >= 0.3
        assert len(script.attempts) == 2
        # A server asking for more time than the deadline leaves: no retry, the error is raised.
        script.attempts.clear()
        later = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=5))
        script.failures = [(grpc.StatusCode.UNAVAILABLE, "store down", [later])]
        began = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            client.reserve(CHANNEL, [("SKU-R", 1)], timeout=2)
        assert time.monotonic() - began < 2
        assert caught.value.retry_after == 5.0
        assert len(script.attempts) == 1


def test_the_deadline_bounds_all_attempts(scripted: Any) -> None:
    address, script, _ = scripted
    script.failures = [(grpc.StatusCode.UNAVAILABLE, "down", [])] * 1000
    forever = RetryPolicy(max_attempts=None, initial_backoff=0.01, max_backoff=0.02)
    with LedgerClient(address, retry=forever, timeout=0.5) as client:
        began = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            client.reserve(CHANNEL, [("SKU-R", 1)])
        assert time.monotonic() - began < 2.0
    assert caught.value.attempts == len(script.attempts) > 3
    # A slow server: DEADLINE_EXCEEDED, not retried.
    script.failures, script.delay = [], 0.5
    script.attempts.clear()
    with LedgerClient(address, retry=FAST) as client, pytest.raises(DeadlineExceeded):
        client.reserve(CHANNEL, [("SKU-R", 1)], timeout=0.1)
    assert len(script.attempts) == 1


def test_error_details_are_unpacked(scripted: Any) -> None:
    address, script, _ = scripted
    info = error_details_pb2.ErrorInfo(
        reason="RATE_LIMITED", domain="inventory.ledger.v1", metadata={"principal": "web-shop"}
    )
    wait = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2))
    script.failures = [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", [info, wait]),
        (grpc.StatusCode.INTERNAL, "internal error; quote correlation id c-9", []),
    ]
    with LedgerClient(address, retry=FAST) as client:
        with pytest.raises(ResourceExhausted) as caught:
            client.reserve(CHANNEL, [("SKU-R", 1)], correlation_id="c-8")
        error = caught.value
        assert (error.reason, error.metadata, error.retry_after) == (
            "RATE_LIMITED",
            {"principal": "web-shop"},
            2.0,
        )
        assert error.correlation_id == "c-8" and error.method == "ReservationService/Reserve"
        assert "RESOURCE_EXHAUSTED [RATE_LIMITED]: slow down" in str(error)
        with pytest.raises(Internal) as caught_internal:
            client.reserve(CHANNEL, [("SKU-R", 1)], correlation_id="c-9")
        assert caught_internal.value.reason == "" and caught_internal.value.details == []
        with pytest.raises(ValueError, match="correlation id"):
            client.reserve(CHANNEL, [("SKU-R", 1)], correlation_id="has spaces")


def test_backoff_is_full_jitter_capped_and_floored_by_retry_info() -> None:
    top = RetryPolicy(initial_backoff=0.05, max_backoff=0.3, multiplier=2.0, random=lambda: 1.0)
    assert [top.backoff(n) for n in range(1, 6)] == pytest.approx([0.05, 0.1, 0.2, 0.3, 0.3])
    bottom = RetryPolicy(random=lambda: 0.0)
    assert bottom.backoff(3) == 0.0
    assert bottom.backoff(3, retry_after=1.5) == 1.5
    assert RetryPolicy(random=lambda: 0.0, honour_retry_info=False).backoff(1, 1.5) == 0.0
    assert RetryPolicy(max_attempts=3).allows_another(2)
    assert not RetryPolicy(max_attempts=3).allows_another(3)
    assert RetryPolicy(max_attempts=None).allows_another(10**6)
    assert RetryPolicy.retryable(grpc.StatusCode.UNAVAILABLE)
    assert RetryPolicy.retryable(grpc.StatusCode.ABORTED)
    assert not RetryPolicy.retryable(grpc.StatusCode.RESOURCE_EXHAUSTED)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_short_lines_fall_back_to_the_request() -> None:
    from inventory_ledger_client.errors import PreconditionViolation

    request = type("Request", (), {"lines": [line("A", 1, "L1"), line("B", 7)]})()
    parsed = parse_short_lines(
        [
            PreconditionViolation("INSUFFICIENT_AVAILABILITY", "lines[1]", "something else"),
            PreconditionViolation("RESERVATION_STATUS", "r-1", "not this kind"),
        ],
        request,
    )
    assert [(s.line_index, s.sku, s.location_id, s.requested, s.available) for s in parsed] == [
        (1, "B", "", 7, None)
    ]


def test_a_stream_is_retried_before_its_first_message_only(scripted: Any) -> None:
    address, script, streams = scripted
    # Broken before any message: retried invisibly.
    streams.break_after = [0, -1]
    with LedgerClient(address, retry=FAST) as client:
        assert [c.channel_available for c in client.watch_availability(CHANNEL, ["S"])] == [5, 4, 3]
        assert len(script.attempts) == 2
        # Broken after a message, without reconnect: the error reaches the caller.
        streams.break_after = [1]
        received = []
        with pytest.raises(Unavailable):
            for change in client.watch_availability(CHANNEL, ["S"]):
                received.append(change.channel_available)
        assert received == [5]


def test_reconnecting_streams_resume(scripted: Any) -> None:
    address, script, streams = scripted
    streams.break_after = [1, 0, 2]  # WatchAvailability: one message, then nothing, then two
    with LedgerClient(address, retry=FAST) as client:
        watch = client.watch_availability(CHANNEL, ["S"], reconnect=FAST)
        seen = [(c.channel_available, c.initial) for c in watch]
        # The watch starts again with current values each time (initial=True).
        assert seen == [(5, True), (5, True), (4, False), (5, True), (4, False), (3, False)]
        # StreamLedger resumes after the last entry received: nothing lost, nothing repeated.
        script.attempts.clear()
        streams.break_after = [2, 3]
        entries = [e.position for e in client.stream_ledger(0, reconnect=True)]
        assert entries == [1, 2, 3, 4, 5, 6]
        assert [a.request.from_position for a in script.attempts] == [0, 2, 5]
        assert len({a.correlation_id for a in script.attempts}) == 1


def test_async_reconnecting_stream(scripted: Any) -> None:
    address, script, streams = scripted
    streams.break_after = [2, 3]

    async def scenario() -> list[int]:
        async with AsyncLedgerClient(address, retry=FAST) as client:
            return [e.position async for e in client.stream_ledger(0, reconnect=FAST)]

    assert asyncio.run(scenario()) == [1, 2, 3, 4, 5, 6]
    assert [a.request.from_position for a in script.attempts] == [0, 2, 5]
