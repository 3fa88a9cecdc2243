"""The Prometheus endpoint after a scripted workload shows exactly that workload (issue 6).

``ledger serve`` (SQLite, in-process projections) and ``ledger ingest`` run as real processes
with ``/metrics`` on a free port (``127.0.0.1:0``; the address is read from the startup log).
Each test drives a known workload and then asserts the scraped counters equal it exactly:
RPC calls by (service, method, code), API errors by reason, reservations by outcome and
channel, events appended (against what the ledger itself stored, read independently from the
database and over StreamLedger), projection lag back to 0, ingest messages by lane and
outcome, dead letters by source and reason, and the movement lag and age by source (issue 8).

The last test runs the compose stack's three processes (``serve`` with external projections,
``projections``, ``ingest``) over PostgreSQL and NATS: the ingest lag starts at JetStream's
stream timestamp, a ledger exception is counted once when published, and every metric the
Grafana dashboard queries is scraped from at least one of the processes.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import os
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
from testbed.nats import delete_test_topology
from testbed.processes import terminate
from testbed.server import LedgerProcess, stub

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


def _receipt(
    sku: str, qty: int, occurred_at: datetime.datetime | None = None
) -> movement_pb2.Movement:
    movement = movement_pb2.Movement(
        type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
        sku=sku,
        location_id="DC-1",
        qty=qty,
        source="metrics-test",
        message_id=uuid.uuid4().hex,
    )
    if occurred_at is not None:
        movement.occurred_at.FromDatetime(occurred_at)
    return movement


def _reserve_request(
    qty: int, *, request_id: str | None = None, ttl_seconds: int = 0, channel: str = "web"
) -> reservation_service_pb2.ReserveRequest:
    request = reservation_service_pb2.ReserveRequest(
        request_id=uuid.uuid4().hex if request_id is None else request_id,
        channel=channel,
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


def _count_by(
    samples: dict[str, dict[Labels, float]], name: str, *keys: str
) -> dict[tuple[str, ...], float]:
    return by(samples.get(name, {}), *keys)


def _bucket(samples: dict[str, dict[Labels, float]], name: str, le: str, **labels: str) -> float:
    """The cumulative count of histogram ``name`` at bucket ``le``, summed over the series
    whose labels include ``labels``."""
    total = 0.0
    for series, value in samples.get(f"{name}_bucket", {}).items():
        named = dict(series)
        if named["le"] == le and all(named.get(k) == v for k, v in labels.items()):
            total += value
    return total


def test_scraped_counts_match_a_scripted_workload(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {
        "LEDGER_METRICS_LISTEN": "127.0.0.1:0",
        "LEDGER_EXPIRY_SWEEP_SECONDS": "0.2",
        # Only web is listed: the b2b reservations below are counted as (other).
        "LEDGER_METRICS_CHANNELS": "web",
    }
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

        # 3 RecordMovements of 4 receipts each (12 positions opened; the last 4 happened two
        # hours ago), the first again (4 duplicates), 1 empty (invalid).
        two_hours_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
        requests = [
            movement_service_pb2.RecordMovementsRequest(
                movements=[
                    _receipt(f"SKU-{i}-{j}", 10, two_hours_ago if i == 2 else None)
                    for j in range(4)
                ]
            )
            for i in range(3)
        ]
        for request in [*requests, requests[0]]:
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
        # Another channel, not listed in LEDGER_METRICS_CHANNELS: one reserved, one short.
        b2b = _reserve_request(1, channel="b2b")
        assert call("ReservationService", "Reserve", lambda: reservations.Reserve(b2b)) == (
            grpc.StatusCode.OK
        )
        b2b_short = _reserve_request(1_000, channel="b2b")
        assert (
            call("ReservationService", "Reserve", lambda: reservations.Reserve(b2b_short))
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

        outcomes = {
            ("reserved", "web"): 6,
            ("insufficient", "web"): 2,
            ("committed", "web"): 1,
            ("released", "web"): 1,
            ("expired", "web"): 1,
            ("reserved", "(other)"): 1,
            ("insufficient", "(other)"): 1,
        }

        def reservation_counts(
            samples: dict[str, dict[Labels, float]],
        ) -> dict[tuple[str, ...], float]:
            return by(samples["ledger_reservations_total"], "outcome", "channel")

        def settled(samples: dict[str, dict[Labels, float]]) -> bool:
            lag = samples.get("ledger_projection_lag_events", {})
            return reservation_counts(samples) == outcomes and list(lag.values()) == [0]

        # The sweeper records the expiry; the in-process projection catches up.
        samples = eventually(url, settled)
        assert reservation_counts(samples) == outcomes
        assert list(samples["ledger_projection_lag_events"].values()) == [0]
        # Listed channels and (other) are exported for every outcome, at 0 until counted.
        exported = {
            (dict(labels)["outcome"], dict(labels)["channel"])
            for labels in samples["ledger_reservations_total"]
        }
        assert exported == {
            (outcome, channel)
            for outcome in ("reserved", "insufficient", "committed", "released", "expired")
            for channel in ("web", "(other)")
        }

        # API errors by the reason the caller got: 1 empty RecordMovements and 2 Reserves
        # without request_id, 3 short Reserves, 1 unknown reservation.
        assert _count_by(samples, "ledger_rpc_errors_total", "reason") == {
            ("INVALID_ARGUMENT",): 3,
            ("INSUFFICIENT_AVAILABILITY",): 3,
            ("RESERVATION_NOT_FOUND",): 1,
        }
        # The 12 recorded movements, not the 4 duplicates, are in the api lag by source;
        # the 4 that carry occurred_at (two hours ago) are in the age histogram.
        lag = "ledger_movement_lag_seconds"
        assert _count_by(samples, f"{lag}_count", "source", "via") == {("metrics-test", "api"): 12}
        assert 0 < sum(samples[f"{lag}_sum"].values()) < 12 * 10
        age = "ledger_movement_age_seconds"
        assert _count_by(samples, f"{age}_count", "source", "via") == {("metrics-test", "api"): 4}
        assert _bucket(samples, age, "3600.0") == 0
        assert _bucket(samples, age, "14400.0") == 4

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
        # The workload's own arithmetic: 12 receipts and 12 positions opened, 7 reservations.
        assert appended["Position.Received"] == 12
        assert appended["Position.Opened"] == 12
        assert appended["Reservation.Created"] == 7
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
    command = [sys.executable, "-m", "entrypoints.cli", "ingest", "--nats", nats_url]
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
            # Poison: bad JSON, a wrong type, and a message id reused with another payload;
            # and garbage on a bulk subject that names no source (DLQ source "(invalid)").
            await js.publish(subject, b'{"message_id": "x-1", ')
            await publish_movement(js, {**_payload("x-2", 1), "qty": True}, names.prefix)
            reused = canonical_json(_payload("l-0", 99))
            await js.publish(subject, reused, headers={"Nats-Msg-Id": "reused-0"})
            await js.publish(f"{names.movements_root}.bulk.no.source", b"garbage")
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
            ("bulk", "dead_lettered"): 1,
        }

        def ingest_counts(samples: dict[str, dict[Labels, float]]) -> dict[tuple[str, ...], float]:
            return by(samples["ledger_ingest_messages_total"], "lane", "outcome")

        samples = eventually(url, lambda s: ingest_counts(s) == expected)
        assert ingest_counts(samples) == expected
        assert by(samples["ledger_ingest_store_failures_total"], "lane") == {}
        batches = by(samples["ledger_ingest_batch_seconds_count"], "lane")
        assert batches[("live",)] >= 3 and batches[("bulk",)] >= 1  # 14 live ones in fives
        # Dead letters by source and reason, as their Ledger-Error-Reason headers say.
        assert _count_by(samples, "ledger_dead_letters_total", "source", "reason") == {
            ("wms-east", "BAD_JSON"): 1,
            ("wms-east", "WRONG_TYPE"): 1,
            ("wms-east", "MESSAGE_ID_REUSED"): 1,
            ("(invalid)", "BAD_JSON"): 1,
        }
        # Every recorded message once in the lag and (all carry occurred_at) the age, by
        # source and lane; duplicates and dead letters are not observed.
        for name in ("ledger_movement_lag_seconds", "ledger_movement_age_seconds"):
            assert _count_by(samples, f"{name}_count", "source", "via") == {
                ("wms-east", "live"): live,
                ("wms-east", "bulk"): bulk,
            }, name
        appended = sum(samples["ledger_events_appended_total"].values())
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
    log = log_path.read_text()
    assert process.returncode == 0, log
    assert "Traceback" not in log, log
    assert f"stopped: {live + bulk} recorded, {duplicates} duplicates, 4 dead-lettered" in log
    app = InventoryLedger(eventsourcing_env(database))
    try:
        notes = app.recorder.select_notifications(start=1, limit=1_000_000)
    finally:
        app.close()
    assert appended == len(notes) > 0  # every event the bridge wrote, and only those


# ---- the stack: serve, projections and ingest over PostgreSQL and NATS ------------------------

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "ledger.json"
# Every metric of the ledger's processes starts with one of these (ledger/metrics/ and the
# prometheus-client collectors); `up` is Prometheus's own.
_METRIC_NAME = re.compile(r"\b(?:ledger|process|python)_[a-z0-9_]+\b")


def dashboard_metric_names() -> set[str]:
    """Every sample name the Grafana dashboard's queries select (``up`` left out)."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found = _METRIC_NAME.findall(target["expr"])
            assert found or re.search(r"\bup\{", target["expr"]), target["expr"]
            names.update(found)
    return names


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "entrypoints.cli", *argv],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )


def _stop(process: subprocess.Popen[bytes], log_path: Path) -> None:
    terminate(process, 20)
    log = log_path.read_text()
    assert process.returncode == 0, log
    assert "Traceback" not in log, log


@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_stack_exports_every_dashboard_metric(
    nats_url: str, postgres_database_url: str, tmp_path: Path
) -> None:
    database = postgres_database_url
    names = StreamNames(f"T_{uuid.uuid4().hex[:12]}")
    wanted = dashboard_metric_names()
    new_figures = {
        "ledger_movement_lag_seconds_bucket",
        "ledger_movement_age_seconds_bucket",
        "ledger_dead_letters_total",
        "ledger_exceptions_published_total",
        "ledger_rpc_errors_total",
        "ledger_reservations_total",
    }
    assert new_figures <= wanted and len(wanted) > 15, sorted(wanted)
    two_hours_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    occurred_at = two_hours_ago.isoformat().replace("+00:00", "Z")
    waited = 1.5  # the first messages wait this long in JetStream before ingest starts

    def movement(message_id: str, kind: str, qty: int) -> dict[str, Any]:
        return {
            "message_id": message_id,
            "source": "wms-stack",
            "type": kind,
            "sku": "SKU-S",
            "location_id": "DC-S",
            "qty": qty,
            "occurred_at": occurred_at,
        }

    env = {
        "LEDGER_METRICS_LISTEN": "127.0.0.1:0",
        "LEDGER_PROJECTIONS": "external",
        "LEDGER_METRICS_CHANNELS": "web",
        "LEDGER_METRICS_SOURCES": "wms-stack",
    }
    projections_log, ingest_log = tmp_path / "projections.log", tmp_path / "ingest.log"
    running: list[tuple[subprocess.Popen[bytes], Path]] = []
    with LedgerProcess(database, env=env) as api:
        try:
            api_url = metrics_url(api.log_text)
            projections = _spawn(
                ["projections", "run", "--database", database, "--metrics-listen", "127.0.0.1:0"],
                projections_log,
            )
            running.append((projections, projections_log))
            projections_url = metrics_url(projections_log.read_text, 30)

            async def before_ingest() -> None:
                nc = await nats.connect(nats_url)
                try:
                    js = nc.jetstream()
                    await ensure_topology(js, names)
                    for i in range(3):
                        await publish_movement(js, movement(f"r-{i}", "receipt", 5), names.prefix)
                finally:
                    await nc.drain()

            asyncio.run(before_ingest())
            time.sleep(waited)
            ingest_argv = ["ingest", "--nats", nats_url, "--database", database]
            ingest_argv += ["--prefix", names.prefix, "--metrics-listen", "127.0.0.1:0"]
            ingest_argv += ["--metrics-sources", "wms-stack"]
            ingest = _spawn(ingest_argv, ingest_log)
            running.append((ingest, ingest_log))
            ingest_url = metrics_url(ingest_log.read_text, 30)

            async def with_ingest() -> None:
                nc = await nats.connect(nats_url)
                js = nc.jetstream()
                try:
                    await _drained(js, names, ingest)
                    # 15 received, 20 shipped: on_hand -5, a NEGATIVE_BUCKET exception.
                    await publish_movement(js, movement("s-1", "shipment", 20), names.prefix)
                    await js.publish(names.movement_subject("wms-stack"), b"{")  # poison
                    await _drained(js, names, ingest)
                finally:
                    await nc.drain()

            asyncio.run(with_ingest())

            # The API: a movement from a source not listed (its source label is "(other)"),
            # a short Reserve on web, a Reserve on an unlisted channel, an invalid request.
            movements = stub(api, movement_service_pb2_grpc.MovementServiceStub)
            reservations = stub(api, reservation_service_pb2_grpc.ReservationServiceStub)
            receipt = _receipt("SKU-API", 3)
            receipt.location_id = "DC-S"
            movements.RecordMovements(
                movement_service_pb2.RecordMovementsRequest(movements=[receipt]), timeout=10
            )

            def reserve(sku: str, channel: str, request_id: str | None = None) -> Any:
                request = _reserve_request(1, request_id=request_id, channel=channel)
                request.lines[0].sku, request.lines[0].location_id = sku, "DC-S"
                return _code_of(lambda: reservations.Reserve(request, timeout=10))

            assert reserve("SKU-S", "web") == grpc.StatusCode.FAILED_PRECONDITION
            assert reserve("SKU-API", "b2b") == grpc.StatusCode.OK
            assert reserve("SKU-API", "web", request_id="") == grpc.StatusCode.INVALID_ARGUMENT

            # The ingest process: the lag starts at JetStream's stream timestamp, so the
            # three messages published before it started waited at least `waited`.
            def ingest_settled(samples: dict[str, dict[Labels, float]]) -> bool:
                published = _count_by(samples, "ledger_exceptions_published_total", "type")
                return published == {("NEGATIVE_BUCKET",): 1}

            ingest_samples = eventually(ingest_url, ingest_settled)
            assert _count_by(ingest_samples, "ledger_exceptions_published_total", "type") == {
                ("NEGATIVE_BUCKET",): 1
            }
            # Every exception type of the contract has its zero series from the start.
            types = (
                "NEGATIVE_BUCKET",
                "STALE_COUNT",
                "TRANSFER_SHORTAGE",
                "UNKNOWN_RESERVATION",
                "LOT_EXPIRY_CONFLICT",
                "SERIAL_CONFLICT",
            )
            assert set(ingest_samples["ledger_exceptions_published_total"]) == {
                frozenset({("type", t)}) for t in types
            }
            lag, age = "ledger_movement_lag_seconds", "ledger_movement_age_seconds"
            for name in (lag, age):
                assert _count_by(ingest_samples, f"{name}_count", "source", "via") == {
                    ("wms-stack", "live"): 4
                }, name
            assert _bucket(ingest_samples, lag, "1.0") <= 1  # only the shipment may be quick
            assert sum(ingest_samples[f"{lag}_sum"].values()) >= 3 * waited
            assert _bucket(ingest_samples, age, "3600.0") == 0  # all happened 2 h ago
            assert _bucket(ingest_samples, age, "14400.0") == 4
            assert _count_by(ingest_samples, "ledger_dead_letters_total", "source", "reason") == {
                ("wms-stack", "BAD_JSON"): 1
            }

            # The API replica.
            api_samples = scrape(api_url)
            assert _count_by(api_samples, "ledger_rpc_errors_total", "reason") == {
                ("INSUFFICIENT_AVAILABILITY",): 1,
                ("INVALID_ARGUMENT",): 1,
            }
            assert _count_by(api_samples, "ledger_reservations_total", "outcome", "channel") == {
                ("insufficient", "web"): 1,
                ("reserved", "(other)"): 1,
            }
            assert _count_by(api_samples, f"{lag}_count", "source", "via") == {
                ("(other)", "api"): 1
            }

            # Every metric the dashboard queries is exported by at least one process.
            exported: set[str] = set()
            for url in (api_url, projections_url, ingest_url):
                exported |= {name for name, series in scrape(url).items() if series}
            missing = wanted - exported
            assert not missing, f"the dashboard queries metrics no process exports: {missing}"
        finally:
            for process, log_path in reversed(running):
                _stop(process, log_path)

            delete_test_topology(nats_url, names)
