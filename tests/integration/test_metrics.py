"""The Prometheus endpoint after a scripted workload shows exactly that workload (issue 6).

``ledger serve`` (SQLite, in-process projections) and ``ledger ingest`` run as real processes
with ``/metrics`` on a free port (``127.0.0.1:0``; the address is read from the startup log).
Each test drives a known workload and then asserts the scraped counters equal it exactly:
RPC calls by (service, method, code), reservations by outcome, events appended (against what
the ledger itself stored, read independently from the database and over StreamLedger),
projection lag back to 0, and ingest messages by lane and outcome.
"""

from __future__ import annotations

import asyncio
import collections
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.protobuf import duration_pb2
from inventory.ledger.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
    reservation_service_pb2,
    reservation_service_pb2_grpc,
)
from prometheus_client.parser import text_string_to_metric_families

from ingest.bridge import canonical_json, publish_movement
from ingest.streams import DURABLE, Lane, StreamNames, delete_topology, ensure_topology
from ledger.application import InventoryLedger
from ledger.config import eventsourcing_env
from tests.support.server import LedgerProcess, stub

pytestmark = pytest.mark.timeout(60)

_METRICS_URL = re.compile(r"metrics on (?P<url>http://\S+/metrics)")
V1 = "inventory.ledger.v1"
Labels = frozenset[tuple[str, str]]


# ---- scraping ---------------------------------------------------------------------------------


def metrics_url(log_text: Callable[[], str], deadline_seconds: float = 10.0) -> str:
    deadline = time.monotonic() + deadline_seconds
    while True:
        match = _METRICS_URL.search(log_text())
        if match:
            return match["url"]
        assert time.monotonic() < deadline, f"no metrics address logged:\n{log_text()}"
        time.sleep(0.05)


def scrape(url: str) -> dict[str, dict[Labels, float]]:
    """Sample name → {labels → value}."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    samples: dict[str, dict[Labels, float]] = collections.defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][frozenset(sample.labels.items())] = sample.value
    return samples


def by(samples: dict[Labels, float], *keys: str) -> dict[tuple[str, ...], float]:
    """{(label values in ``keys`` order): value}, dropping zero series."""
    out = {}
    for labels, value in samples.items():
        if value:
            named = dict(labels)
            out[tuple(named[key] for key in keys)] = value
    return out


def eventually(url: str, check: Callable[[dict[str, dict[Labels, float]]], bool]) -> Any:
    """Scrape until ``check`` holds (server-side effects land just after the client's reply:
    a stream is observed when it ends, the sweeper runs on its own clock); returns the last
    scrape either way, so the caller's exact assertions report what differed."""
    deadline = time.monotonic() + 15
    while True:
        samples = scrape(url)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


# ---- the API workload -------------------------------------------------------------------------


def _receipt(sku: str, qty: int) -> movement_pb2.Movement:
    return movement_pb2.Movement(
        type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
        sku=sku,
        location_id="DC-1",
        qty=qty,
        source="metrics-test",
        message_id=uuid.uuid4().hex,
    )


def _reserve_request(
    qty: int, *, request_id: str | None = None, ttl_seconds: int = 0
) -> reservation_service_pb2.ReserveRequest:
    request = reservation_service_pb2.ReserveRequest(
        request_id=uuid.uuid4().hex if request_id is None else request_id,
        channel="web",
        order_ref="order-1",
        lines=[reservation_service_pb2.ReserveLine(sku="SKU-0-0", location_id="DC-1", qty=qty)],
    )
    if ttl_seconds:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl_seconds))
    return request


def _code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_scraped_counts_match_a_scripted_workload(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {"LEDGER_METRICS_LISTEN": "127.0.0.1:0", "LEDGER_EXPIRY_SWEEP_SECONDS": "0.2"}
    with LedgerProcess(database, env=env) as ledger:
        url = metrics_url(ledger.log_text)
        movements = stub(ledger, movement_service_pb2_grpc.MovementServiceStub)
        reservations = stub(ledger, reservation_service_pb2_grpc.ReservationServiceStub)
        query = stub(ledger, query_service_pb2_grpc.InventoryQueryServiceStub)
        audit = stub(ledger, audit_service_pb2_grpc.AuditServiceStub)
        expected: collections.Counter[tuple[str, str, str]] = collections.Counter()

        def call(service: str, method: str, invoke: Callable[[], Any]) -> grpc.StatusCode:
            code = _code_of(invoke)
            expected[(f"{V1}.{service}", method, code.name)] += 1
            return code

        # 3 RecordMovements of 4 receipts each (12 positions opened), 1 empty (invalid).
        for i in range(3):
            request = movement_service_pb2.RecordMovementsRequest(
                movements=[_receipt(f"SKU-{i}-{j}", 10) for j in range(4)]
            )
            code = call(
                "MovementService",
                "RecordMovements",
                lambda r=request: movements.RecordMovements(r, timeout=10),
            )
            assert code == grpc.StatusCode.OK
        empty = movement_service_pb2.RecordMovementsRequest()
        assert (
            call("MovementService", "RecordMovements", lambda: movements.RecordMovements(empty))
            == grpc.StatusCode.INVALID_ARGUMENT
        )

        # 5 reservations (one with a 1 s ttl, left to expire), 2 short, 2 invalid, 1 replay.
        reserved = []
        for ttl in (0, 0, 0, 0, 1):
            request = _reserve_request(1, ttl_seconds=ttl)
            reserved.append(reservations.Reserve(request, timeout=10))
            expected[(f"{V1}.ReservationService", "Reserve", "OK")] += 1
        replay = _reserve_request(1, request_id="replayed-once")
        for _ in range(2):  # the second is an idempotent replay: a call, not a reservation
            assert (
                call("ReservationService", "Reserve", lambda: reservations.Reserve(replay))
                == grpc.StatusCode.OK
            )
        for _ in range(2):
            short = _reserve_request(1_000)
            assert (
                call("ReservationService", "Reserve", lambda r=short: reservations.Reserve(r))
                == grpc.StatusCode.FAILED_PRECONDITION
            )
        for _ in range(2):
            bad = _reserve_request(1, request_id="")
            assert (
                call("ReservationService", "Reserve", lambda r=bad: reservations.Reserve(r))
                == grpc.StatusCode.INVALID_ARGUMENT
            )
        commit = reservation_service_pb2.CommitRequest(
            request_id="c-1", reservation_id=reserved[0].reservation_id, channel="web"
        )
        release = reservation_service_pb2.ReleaseRequest(
            request_id="r-1", reservation_id=reserved[1].reservation_id, channel="web"
        )
        assert call("ReservationService", "Commit", lambda: reservations.Commit(commit)) == (
            grpc.StatusCode.OK
        )
        assert call("ReservationService", "Release", lambda: reservations.Release(release)) == (
            grpc.StatusCode.OK
        )
        missing = reservation_service_pb2.GetReservationRequest(reservation_id=str(uuid.uuid4()))
        assert (
            call(
                "ReservationService",
                "GetReservation",
                lambda: reservations.GetReservation(missing),
            )
            == grpc.StatusCode.NOT_FOUND
        )

        outcomes = {"reserved": 6, "insufficient": 2, "committed": 1, "released": 1, "expired": 1}

        def settled(samples: dict[str, dict[Labels, float]]) -> bool:
            lag = samples.get("ledger_projection_lag_events", {})
            return by(samples["ledger_reservations_total"], "outcome") == {
                (k,): v for k, v in outcomes.items()
            } and list(lag.values()) == [0]

        # The sweeper records the expiry; the in-process projection catches up.
        samples = eventually(url, settled)
        assert by(samples["ledger_reservations_total"], "outcome") == {
            (outcome,): count for outcome, count in outcomes.items()
        }
        assert list(samples["ledger_projection_lag_events"].values()) == [0]

        # What the ledger stored, three independent ways: its head, its entries, its rows.
        status = query.GetProjectionStatus(query_service_pb2.GetProjectionStatusRequest())
        expected[(f"{V1}.InventoryQueryService", "GetProjectionStatus", "OK")] += 1
        entries = list(audit.StreamLedger(audit_service_pb2.StreamLedgerRequest(), timeout=10))
        expected[(f"{V1}.AuditService", "StreamLedger", "OK")] += 1
        app = InventoryLedger(eventsourcing_env(database))
        try:
            notes = app.recorder.select_notifications(start=1, limit=1_000_000)
        finally:
            app.close()
        stored = collections.Counter(note.topic.rsplit(":", 1)[1] for note in notes)

        # A watch the client cancels ends CANCELLED (observed when the stream ends).
        watch = query.WatchAvailability(
            query_service_pb2.WatchAvailabilityRequest(channel="web", skus=["SKU-0-0"])
        )
        next(watch)
        watch.cancel()
        expected[(f"{V1}.InventoryQueryService", "WatchAvailability", "CANCELLED")] += 1

        def rpc_counts(samples: dict[str, dict[Labels, float]]) -> dict[tuple[str, ...], float]:
            counts = by(samples["ledger_rpc_duration_seconds_count"], "service", "method", "code")
            return {key: n for key, n in counts.items() if key[0].startswith(V1)}  # no health

        samples = eventually(url, lambda s: rpc_counts(s) == dict(expected))
        assert rpc_counts(samples) == dict(expected)
        in_flight = by(samples["ledger_rpc_in_flight"], "service", "method")
        assert {k: v for k, v in in_flight.items() if k[0].startswith(V1)} == {}

        appended_by = by(samples["ledger_events_appended_total"], "event")
        appended = {event: n for (event,), n in appended_by.items()}
        assert appended == dict(stored)
        assert sum(appended.values()) == len(notes) == status.head_position
        assert status.applied_position == status.head_position
        positions = sum(n for event, n in appended.items() if event.startswith("Position."))
        assert positions == len(entries)
        # The workload's own arithmetic: 12 receipts and 12 positions opened, 6 reservations.
        assert appended["Position.Received"] == 12
        assert appended["Position.Opened"] == 12
        assert appended["Reservation.Created"] == 6
        assert appended["Reservation.Expired"] == 1
        head = samples["ledger_head_position"]
        assert list(head.values()) == [status.head_position]
        assert sum(samples["ledger_commits_total"].values()) > 0
    log = ledger.log_text()
    assert "Traceback" not in log, log


# ---- ingest -----------------------------------------------------------------------------------


def _payload(message_id: str, qty: int, sku: str = "SKU-I") -> dict[str, Any]:
    return {
        "message_id": message_id,
        "source": "wms-east",
        "type": "receipt",
        "sku": sku,
        "location_id": "DC-I",
        "qty": qty,
        "occurred_at": "2026-11-22T10:15:00Z",
    }


async def _drained(js: Any, names: StreamNames, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "ledger ingest exited"
        pending = 0
        for durable in (DURABLE, f"{DURABLE}-bulk"):
            info = await js.consumer_info(names.movements_stream, durable)
            pending += info.num_pending + info.num_ack_pending
        if pending == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("ingest did not drain its consumers")


def test_ingest_counters_match_what_was_published(nats_url: str, tmp_path: Path) -> None:
    names = StreamNames(f"T_{uuid.uuid4().hex[:12]}")
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    log_path = tmp_path / "ingest.log"
    live, bulk, duplicates = 7, 3, 4
    command = [sys.executable, "-m", "ledger.cli", "ingest", "--nats", nats_url]
    command += ["--database", database, "--prefix", names.prefix, "--batch-size", "5"]
    command += ["--metrics-listen", "127.0.0.1:0"]

    async def publish_and_drain(process: subprocess.Popen[bytes]) -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        try:
            await ensure_topology(js, names)  # binds to what the process creates
            subject = names.movement_subject("wms-east")
            for i in range(live):
                await publish_movement(js, _payload(f"l-{i}", i + 1), names.prefix)
            for i in range(bulk):
                payload = _payload(f"b-{i}", 1, sku=f"SKU-B{i}")
                await publish_movement(js, payload, names.prefix, lane=Lane.BULK)
            # Redelivered by a publisher (other Nats-Msg-Id, so the broker lets them through):
            # the ledger's dedupe answers DUPLICATE.
            for i in range(duplicates):
                raw = canonical_json(_payload(f"l-{i}", i + 1))
                await js.publish(subject, raw, headers={"Nats-Msg-Id": f"again-{i}"})
            # Poison: bad JSON, a wrong type, and a message id reused with another payload.
            await js.publish(subject, b'{"message_id": "x-1", ')
            await publish_movement(js, {**_payload("x-2", 1), "qty": True}, names.prefix)
            reused = canonical_json(_payload("l-0", 99))
            await js.publish(subject, reused, headers={"Nats-Msg-Id": "reused-0"})
            await _drained(js, names, process)
        finally:
            await delete_topology(js, names)
            await nc.drain()

    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        url = metrics_url(log_path.read_text)
        asyncio.run(publish_and_drain(process))
        expected = {
            ("live", "processed"): live,
            ("bulk", "processed"): bulk,
            ("live", "duplicate"): duplicates,
            ("live", "dead_lettered"): 3,
        }

        def ingest_counts(samples: dict[str, dict[Labels, float]]) -> dict[tuple[str, ...], float]:
            return by(samples["ledger_ingest_messages_total"], "lane", "outcome")

        samples = eventually(url, lambda s: ingest_counts(s) == expected)
        assert ingest_counts(samples) == expected
        assert by(samples["ledger_ingest_store_failures_total"], "lane") == {}
        batches = by(samples["ledger_ingest_batch_seconds_count"], "lane")
        assert batches[("live",)] >= 3 and batches[("bulk",)] >= 1  # 14 live ones in fives
        appended = sum(samples["ledger_events_appended_total"].values())
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
    log = log_path.read_text()
    assert process.returncode == 0, log
    assert "Traceback" not in log, log
    assert f"stopped: {live + bulk} recorded, {duplicates} duplicates, 3 dead-lettered" in log
    app = InventoryLedger(eventsourcing_env(database))
    try:
        notes = app.recorder.select_notifications(start=1, limit=1_000_000)
    finally:
        app.close()
    assert appended == len(notes) > 0  # every event the bridge wrote, and only those
