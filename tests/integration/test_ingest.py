"""JetStream ingest bridge against a real nats-server (contract §5): batches, acks, DLQ, outages.

Every test isolates itself on the shared server with a unique stream prefix and deletes its
streams afterwards. The bridge runs in-process (``asyncio.run`` inside the test).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from ingest.bridge import (
    HEADER_DESCRIPTION,
    HEADER_FIELD,
    HEADER_REASON,
    HEADER_SUBJECT,
    IngestBridge,
    canonical_json,
    publish_movement,
)
from ingest.streams import DURABLE, StreamNames, delete_topology, ensure_topology
from ledger.service import LedgerService
from testbed.postgres import EmbeddedPostgres

SOURCES = ("wms-east", "wms-west")


def _prefix() -> str:
    return f"T_{uuid.uuid4().hex[:12]}"


def _movement(rng: random.Random, index: int, sku: str, location: str) -> dict[str, Any]:
    kind = rng.choice(("receipt", "receipt", "shipment", "adjustment"))
    payload: dict[str, Any] = {
        "message_id": f"m-{index:06d}",
        "source": SOURCES[index % 2],
        "type": kind,
        "sku": sku,
        "location_id": location,
        "occurred_at": "2026-11-22T10:15:00Z",
    }
    if kind == "receipt":
        payload["qty"] = rng.randint(1, 50)
    elif kind == "shipment":
        payload["qty"] = rng.randint(1, 20)
    else:
        payload["delta"] = rng.choice([-1, 1]) * rng.randint(1, 10)
        payload["reason"] = "cycle correction"
    return payload


def _effect(payload: dict[str, Any]) -> int:
    if payload["type"] == "receipt":
        return payload["qty"]
    if payload["type"] == "shipment":
        return -payload["qty"]
    return payload["delta"]


_MOVEMENT_EVENTS = ("Position.Received", "Position.Shipped", "Position.Adjusted")


def _event_count(service: LedgerService) -> int:
    """Movement events in the ledger (receipts, shipments, adjustments: what _movement makes),
    read from the notification log; also checks one idempotency key per movement event."""
    notes = service.app.recorder.select_notifications(start=1, limit=1_000_000)
    movements = sum(note.topic.endswith(_MOVEMENT_EVENTS) for note in notes)
    keys = sum(note.topic.endswith("IdempotencyKey.Created") for note in notes)
    assert keys == movements, (keys, movements)
    return movements


async def _with_js(url: str, body: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    nc = await nats.connect(url)
    try:
        return await body(nc, nc.jetstream())
    finally:
        await nc.drain()


async def _drain(
    bridge: IngestBridge, js: Any, names: StreamNames, done: Callable[[], bool], limit: float
) -> float:
    """Run the bridge until ``done()`` and the consumer has nothing pending; returns seconds."""
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(bridge.run(stop, batch_size=100))
    try:
        while time.monotonic() - started < limit:
            if task.done():
                task.result()
            info = await js.consumer_info(names.movements_stream, DURABLE)
            if done() and info.num_pending == 0 and info.num_ack_pending == 0:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise AssertionError(f"not drained within {limit}s: {bridge.counters}")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("postgres_database_url")


@pytest.fixture
def service(ledger_url: str) -> Iterator[LedgerService]:
    svc = LedgerService.open(ledger_url)
    try:
        yield svc
    finally:
        svc.close()


def test_shuffled_duplicated_stream_applies_each_message_once(
    nats_url: str, service: LedgerService
) -> None:
    rng = random.Random(4)
    skus = [f"SKU-{i}" for i in range(20)]
    locations = [f"DC-{i}" for i in range(10)]
    positions = [(sku, loc) for sku in skus for loc in locations]  # 200 positions
    unique = [_movement(rng, i, *positions[i % 200]) for i in range(9_000)]
    duplicates = rng.sample(unique, 1_000)  # 10 %: 10,000 messages in all
    messages = [(m, False) for m in unique]
    # Half the duplicates carry the same Nats-Msg-Id (the broker's window drops them), half
    # another one (a retry outside the window): those reach the ledger, which must dedupe.
    messages += [(m, i % 2 == 0) for i, m in enumerate(duplicates)]
    rng.shuffle(messages)
    reaching_ledger = len(unique) + len(duplicates) // 2
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for payload in unique:
        expected[payload["sku"], payload["location_id"]] += _effect(payload)
    names = StreamNames(_prefix())

    async def publisher(url: str, share: list[tuple[dict[str, Any], bool]]) -> None:
        async def body(_nc: Any, js: Any) -> None:
            for payload, new_msg_id in share:
                if new_msg_id:
                    await js.publish(
                        names.movement_subject(payload["source"]),
                        canonical_json(payload),
                        stream=names.movements_stream,
                        headers={"Nats-Msg-Id": f"{payload['message_id']}-retry"},
                    )
                else:
                    await publish_movement(js, payload, names.prefix)

        await _with_js(url, body)

    async def scenario(_nc: Any, js: Any) -> tuple[IngestBridge, float]:
        await ensure_topology(js, names)
        await ensure_topology(js, names)  # idempotent
        try:
            await asyncio.gather(
                publisher(nats_url, messages[0::2]), publisher(nats_url, messages[1::2])
            )
            stream = await js.stream_info(names.movements_stream)
            # 500 same-id duplicates dropped by the broker's window
            assert stream.state.messages == reaching_ledger
            bridge = IngestBridge(service, js, names=names)
            seconds = await _drain(
                bridge,
                js,
                names,
                lambda: bridge.processed + bridge.duplicates == reaching_ledger,
                120,
            )
            dlq = await js.stream_info(names.dlq_stream)
            assert dlq.state.messages == 0
            await bridge.close()
            return bridge, seconds
        finally:
            await delete_topology(js, names)

    bridge, seconds = asyncio.run(_with_js(nats_url, scenario))
    assert bridge.processed == len(unique)  # one RECORDED per unique (source, message_id)
    assert bridge.duplicates == len(duplicates) // 2
    assert bridge.dead_lettered == 0
    assert _event_count(service) == len(unique)  # ledger events = unique messages
    for sku, location in positions:
        view = service.get_position(sku, location)
        assert view.on_hand == expected[sku, location], (sku, location)
    print(
        f"\ningest: {bridge.processed + bridge.duplicates} messages applied in {seconds:.2f}s"
        f" ({(bridge.processed + bridge.duplicates) / seconds:.0f} msg/s,"
        f" {bridge.counters.batches} batches)"
    )


def test_poison_messages_go_to_the_dlq_once_and_neighbours_apply(
    nats_url: str, tmp_path: Path
) -> None:
    service = LedgerService.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    names = StreamNames(_prefix())
    base = {"source": "wms-east", "sku": "SKU-P", "location_id": "DC-P", "type": "receipt"}
    good_1 = {**base, "message_id": "p-1", "qty": 5}
    good_2 = {**base, "message_id": "p-2", "qty": 7}
    schema = {**base, "message_id": "p-3", "qty": True}
    unit = {**base, "message_id": "p-4", "qty": 2, "uom": "PALLET"}
    reused = {**good_1, "qty": 9}
    subject = names.movement_subject("wms-east")
    bad_json = b'{"message_id": "p-5", "source": "wms-east", '
    poison = {
        "BAD_JSON": bad_json,
        "WRONG_TYPE": canonical_json(schema),
        "UNKNOWN_UNIT": canonical_json(unit),
        "MESSAGE_ID_REUSED": canonical_json(reused),
    }

    async def scenario(_nc: Any, js: Any) -> IngestBridge:
        await ensure_topology(js, names)
        try:
            await publish_movement(js, good_1, names.prefix)
            await js.publish(subject, bad_json, headers={"X-Trace": "t-1"})
            await publish_movement(js, schema, names.prefix)
            await publish_movement(js, unit, names.prefix)
            # Same key, other payload, outside the broker's window (another Nats-Msg-Id).
            await js.publish(subject, canonical_json(reused), headers={"Nats-Msg-Id": "r-1"})
            await publish_movement(js, good_2, names.prefix)
            bridge = IngestBridge(service, js, names=names)
            assert await bridge.run_once(100) == 6  # one batch holds them all
            assert await bridge.run_once(100) == 0  # nothing redelivered
            info = await js.consumer_info(names.movements_stream, DURABLE)
            for _ in range(40):
                if info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.05)
                info = await js.consumer_info(names.movements_stream, DURABLE)
            assert info.num_pending == 0
            assert info.num_ack_pending == 0
            assert info.num_redelivered == 0
            dlq = await js.stream_info(names.dlq_stream)
            assert dlq.state.messages == 4
            found = {}
            for seq in range(1, 5):
                stored = await js.get_msg(names.dlq_stream, seq)
                reason = stored.headers[HEADER_REASON]
                assert reason not in found, f"{reason} dead-lettered twice"
                found[reason] = stored
                assert stored.subject == names.dlq_subject("wms-east")
                assert stored.headers[HEADER_SUBJECT] == subject
                assert stored.headers[HEADER_DESCRIPTION]
            assert set(found) == set(poison)
            for reason, payload in poison.items():
                assert found[reason].data == payload, reason
            assert found["BAD_JSON"].headers["X-Trace"] == "t-1"  # original headers kept
            assert found["WRONG_TYPE"].headers[HEADER_FIELD] == "qty"
            assert found["UNKNOWN_UNIT"].headers[HEADER_FIELD] == "uom"
            await bridge.close()
            return bridge
        finally:
            await delete_topology(js, names)

    try:
        bridge = asyncio.run(_with_js(nats_url, scenario))
        assert (bridge.processed, bridge.duplicates, bridge.dead_lettered) == (2, 0, 4)
        assert service.get_position("SKU-P", "DC-P").on_hand == 12  # neighbours applied
    finally:
        service.close()


@pytest.mark.postgres
def test_database_outage_naks_with_backoff_and_loses_nothing(
    nats_url: str, own_postgres: EmbeddedPostgres
) -> None:
    url = own_postgres.create_database("ingest_outage")
    service = LedgerService.open(url)
    names = StreamNames(_prefix())
    rng = random.Random(6)
    total = 3_000
    payloads = [_movement(rng, i, f"SKU-{i % 5}", "DC-OUT") for i in range(total)]
    expected: dict[str, int] = defaultdict(int)
    for payload in payloads:
        expected[payload["sku"]] += _effect(payload)

    async def scenario(_nc: Any, js: Any) -> IngestBridge:
        await ensure_topology(js, names)
        try:
            for payload in payloads:
                await publish_movement(js, payload, names.prefix)
            bridge = IngestBridge(service, js, names=names, backoff_initial=0.2, backoff_max=1.0)
            stop = asyncio.Event()
            # Small batches, so the run is still going when the database goes away.
            task = asyncio.create_task(bridge.run(stop, batch_size=20))
            try:
                deadline = time.monotonic() + 60
                while bridge.processed < 300:
                    assert time.monotonic() < deadline and not task.done()
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(own_postgres.stop)  # mid-run
                applied_at_outage = bridge.processed
                await asyncio.sleep(4)
                assert bridge.counters.store_failures >= 2, bridge.counters
                assert bridge.processed - applied_at_outage <= 20  # one batch in flight at most
                assert bridge.dead_lettered == 0
                await asyncio.to_thread(own_postgres.start)
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
            await _drain(
                bridge, js, names, lambda: bridge.processed + bridge.duplicates >= total, 90
            )
            assert bridge.redeliveries > 0
            dlq = await js.stream_info(names.dlq_stream)
            assert dlq.state.messages == 0  # a transient failure never dead-letters
            await bridge.close()
            return bridge
        finally:
            await delete_topology(js, names)

    try:
        bridge = asyncio.run(_with_js(nats_url, scenario))
    finally:
        service.close()
    # A batch whose commit reached the database just as it went down looks failed to the
    # bridge (the outcome was lost with the connection) and comes back as DUPLICATE: at
    # most the one batch in flight. The event count below proves nothing was doubled.
    assert bridge.processed + bridge.duplicates == total
    assert bridge.duplicates <= 20
    assert bridge.dead_lettered == 0
    fresh = LedgerService.open(url)
    try:
        assert _event_count(fresh) == total  # nothing lost, nothing doubled
        for sku, on_hand in expected.items():
            assert fresh.get_position(sku, "DC-OUT").on_hand == on_hand
    finally:
        fresh.close()


def test_cli_ingest_applies_and_stops_on_sigterm(nats_url: str, tmp_path: Path) -> None:
    names = StreamNames(_prefix())
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    log_path = tmp_path / "ingest.log"
    payloads = [
        {"message_id": f"c-{i}", "source": "wms-east", "type": "receipt", "sku": "SKU-C"}
        | {"location_id": "DC-C", "qty": i + 1}
        for i in range(3)
    ]
    command = [sys.executable, "-m", "entrypoints.cli", "ingest", "--nats", nats_url]
    command += ["--database", database, "--prefix", names.prefix, "--batch-size", "10"]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:

        async def scenario(_nc: Any, js: Any) -> None:
            await ensure_topology(js, names)  # binds to whatever the process creates
            try:
                for payload in payloads:
                    await publish_movement(js, payload, names.prefix)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    info = await js.consumer_info(names.movements_stream, DURABLE)
                    if info.num_pending == 0 and info.num_ack_pending == 0:
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(log_path.read_text())
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(15)
                await delete_topology(js, names)

        asyncio.run(_with_js(nats_url, scenario))
        log = log_path.read_text()
        assert process.returncode == 0, log
        assert "stopped: 3 recorded, 0 duplicates, 0 dead-lettered" in log, log
        assert "Traceback" not in log, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
