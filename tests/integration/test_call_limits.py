"""Deadlines and message sizes (issue 6, contract §4.5): work stops when the caller's deadline
passes, a write still queued then is never applied, and a message over the size limit is
refused by gRPC itself with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from inventory.ledger.v1 import (
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
)

from entrypoints.grpc.errors import DeadlineExceeded
from entrypoints.grpc.rpc import _within_deadline, settled
from ledger.service import LedgerService
from testbed.server import LedgerProcess, stub
from tests.integration.test_grpc_ledger import Client, failure, movement, status_details


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LedgerProcess]:
    with LedgerProcess(
        f"sqlite:///{tmp_path / 'ledger.db'}", extra_args=["--log-format", "json"]
    ) as process:
        yield process
        assert process.stop() == 0, process.log_text()
        assert "Traceback" not in process.log_text(), process.log_text()


def test_a_message_over_the_size_limit_is_resource_exhausted(server: LedgerProcess) -> None:
    movements = stub(server, movement_service_pb2_grpc.MovementServiceStub)
    note = "x" * 1000
    big = movement_service_pb2.RecordMovementsRequest(
        movements=[
            movement_pb2.Movement(
                type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
                sku="SKU-BIG",
                location_id="DC-1",
                qty=1,
                source="it-size",
                message_id=f"m-{i}",
                reason=note,
            )
            for i in range(4500)  # ~4.6 MB > the 4 MiB default
        ]
    )
    assert big.ByteSize() > 4 * 1024 * 1024
    with pytest.raises(grpc.RpcError) as caught:
        movements.RecordMovements(big, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Nothing of it was applied, and the server is fine.
    query = stub(server, query_service_pb2_grpc.InventoryQueryServiceStub)
    position = query.GetPosition(
        query_service_pb2.GetPositionRequest(sku="SKU-BIG", location_id="DC-1"), timeout=10
    )
    assert position.on_hand == 0


def test_a_call_past_its_deadline_is_deadline_exceeded_and_logged(server: LedgerProcess) -> None:
    query = stub(server, query_service_pb2_grpc.InventoryQueryServiceStub)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        # Waits for a ledger position that will never come: only the deadline ends it.
        query.GetAvailability(
            query_service_pb2.GetAvailabilityRequest(
                sku="SKU-D", channel="web", min_position=10**12
            ),
            metadata=[("x-correlation-id", "slow-1")],
            timeout=0.5,
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3

    def logged() -> list[dict[str, object]]:
        lines = [json.loads(t) for t in server.log_text().splitlines() if t.startswith("{")]
        return [x for x in lines if x.get("correlation_id") == "slow-1" and "code" in x]

    deadline = time.monotonic() + 5
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.05)
    [line] = logged()
    assert line["code"] == "DEADLINE_EXCEEDED"
    assert 300 < float(line["duration_ms"]) < 3000  # type: ignore[arg-type]


def test_a_write_still_queued_when_the_deadline_passes_is_never_applied(tmp_path: Path) -> None:
    service = LedgerService.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    release, applied = threading.Event(), threading.Event()

    def blocker(uow: object) -> object:
        release.wait(10)  # holds the single writer thread: the next command has to queue
        return lambda recordings: None

    def late_write(uow: object) -> object:
        applied.set()
        return lambda recordings: None

    try:
        held = service.pipeline.submit(blocker)

        async def call() -> None:
            await _within_deadline(settled(service.pipeline.submit(late_write)), 0.2)

        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            asyncio.run(call())
        assert time.monotonic() - started < 2
        release.set()
        held.result(10)
        # The writer goes on with later commands; the late one was skipped, not run late.
        service.pipeline.execute(lambda uow: lambda recordings: None)
        assert not applied.is_set()
    finally:
        release.set()
        service.close()


def test_past_the_calls_in_flight_limit_a_call_is_refused_at_once_and_not_applied(
    tmp_path: Path,
) -> None:
    """Load shedding (entrypoints.grpc.load_shedding): with the server at its limit of calls in
    flight, a new call gets RESOURCE_EXHAUSTED / SERVER_OVERLOADED with a RetryInfo at once,
    nothing of it is applied, and once the crowd has gone the same call succeeds."""
    with LedgerProcess(
        f"sqlite:///{tmp_path / 'ledger.db'}", env={"LEDGER_MAX_CALLS_IN_FLIGHT": "2"}
    ) as server:
        client = Client(server)
        # Two calls that hold their slots until their deadline: they wait for a ledger
        # position that never comes.
        waiting = [
            client.query.GetAvailability.future(
                query_service_pb2.GetAvailabilityRequest(
                    sku="SKU-W", channel="web", min_position=10**12
                ),
                timeout=2.0,
            )
            for _ in range(2)
        ]
        time.sleep(0.5)
        receipt = movement("receipt", "SKU-SHED", "DC-1", qty=4, message_id="shed-1")
        started = time.monotonic()
        refused = failure(client.record, receipt)
        assert time.monotonic() - started < 1.0  # refused, not queued
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = status_details(refused)
        assert details["ErrorInfo"].reason == "SERVER_OVERLOADED"
        assert "RetryInfo" in details
        for call in waiting:
            with pytest.raises(grpc.RpcError):
                call.result()
        assert client.position("SKU-SHED", "DC-1").on_hand == 0  # the refused call wrote nothing
        client.record(receipt)
        assert client.position("SKU-SHED", "DC-1").on_hand == 4
