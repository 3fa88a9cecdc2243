"""Ingest lanes and exception publishing against a real nats-server (issue 4).

- Bulk feeds travel on ``inventory.movements.bulk.<source>`` with their own durable consumer;
  the bridge serves the live lane first, so a backlog of bulk messages never delays a live
  one by more than a bulk batch.
- Exceptions raised by the projection are published on ``inventory.exceptions.<type>``, once
  each, and a restarted publisher resumes after the last one published.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import nats

from ingest.bridge import IngestBridge, canonical_json, publish_movement
from ingest.exceptions import HEADER_KEY, ExceptionPublisher
from ingest.message import parse_message
from ingest.streams import Lane, StreamNames, delete_topology, ensure_topology, lane_durable
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from projections.runner import ProjectionRunner
from projections.store import ReadModelStore

BULK_SKU, LIVE_SKU, LOCATION = "SKU-BULK", "SKU-LIVE", "DC-1"


def _receipt(message_id: str, sku: str, source: str, qty: int = 1) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "source": source,
        "type": "receipt",
        "sku": sku,
        "location_id": LOCATION,
        "qty": qty,
        "occurred_at": "2026-11-22T10:15:00Z",
    }


def _ledger_positions(sqlite_service: LedgerService, payloads: list[dict[str, Any]]) -> list[int]:
    """Each message's ledger position: re-recording answers DUPLICATE with the original."""
    movements = [parse_message(canonical_json(p)) for p in payloads]
    results = sqlite_service.record_movements(CallContext("test"), movements).result(30)
    assert {r.outcome for r in results} == {"DUPLICATE"}
    return [r.ledger_position for r in results]


async def _publish_all(js: Any, names: StreamNames, payloads: list[dict[str, Any]], lane: Lane):
    await asyncio.gather(
        *(publish_movement(js, payload, names.prefix, lane=lane) for payload in payloads)
    )


def test_subjects_of_the_two_lanes() -> None:
    names = StreamNames()
    assert names.movement_subject("wms-east") == "inventory.movements.wms-east"
    assert names.movement_subject("3pl", Lane.BULK) == "inventory.movements.bulk.3pl"
    # A source called "bulk" stays on the live lane: one token fewer than any bulk subject.
    assert names.movement_subject("bulk") == "inventory.movements.bulk"
    assert names.source_of_subject("inventory.movements.bulk") == "bulk"
    assert names.source_of_subject("inventory.movements.bulk.3pl") == "3pl"
    assert names.source_of_subject("inventory.dlq.x") is None
    assert lane_durable("ledger-ingest", Lane.BULK) == "ledger-ingest-bulk"


def test_live_messages_overtake_a_bulk_backlog(
    nats_url: str, sqlite_service: LedgerService
) -> None:
    names = StreamNames(f"T_{uuid.uuid4().hex[:12]}")
    backlog = [_receipt(f"b-{i:05d}", BULK_SKU, "snapshot") for i in range(4000)]
    waiting_live = [_receipt(f"l-{i:03d}", LIVE_SKU, "wms") for i in range(30)]
    late_live = [_receipt(f"k-{i:03d}", LIVE_SKU, "wms") for i in range(20)]

    async def scenario() -> int:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        try:
            await ensure_topology(js, names)
            # A bulk backlog and some live messages are waiting when the bridge starts.
            await _publish_all(js, names, backlog, Lane.BULK)
            await _publish_all(js, names, waiting_live, Lane.LIVE)
            bridge = IngestBridge(sqlite_service, js, names=names)
            stop = asyncio.Event()
            task = asyncio.create_task(bridge.run(stop, batch_size=100))
            try:
                deadline = time.monotonic() + 60
                while sqlite_service.get_position(BULK_SKU, LOCATION).on_hand < 500:
                    assert time.monotonic() < deadline and not task.done()
                    await asyncio.sleep(0.01)
                # Mid-backlog, more live messages arrive: they must not wait for the backlog.
                await _publish_all(js, names, late_live, Lane.LIVE)
                live_total = len(waiting_live) + len(late_live)
                while sqlite_service.get_position(LIVE_SKU, LOCATION).on_hand < live_total:
                    assert time.monotonic() < deadline and not task.done()
                    await asyncio.sleep(0.001)
                bulk_left = len(backlog) - sqlite_service.get_position(BULK_SKU, LOCATION).on_hand
                while sqlite_service.get_position(BULK_SKU, LOCATION).on_hand < len(backlog):
                    assert time.monotonic() < deadline and not task.done()
                    await asyncio.sleep(0.05)
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
                await bridge.close()
            for lane in Lane:
                info = await js.consumer_info(
                    names.movements_stream, lane_durable("ledger-ingest", lane)
                )
                assert info.num_pending == 0 and info.num_ack_pending == 0
            assert bridge.processed == len(backlog) + live_total
            return bulk_left
        finally:
            await delete_topology(js, names)
            await nc.drain()

    bulk_left = asyncio.run(scenario())
    # The late live messages were applied while most of the backlog was still queued...
    assert bulk_left > 1000, bulk_left
    # ...and the waiting ones before any bulk message at all.
    live_positions = _ledger_positions(sqlite_service, waiting_live)
    bulk_positions = _ledger_positions(sqlite_service, backlog)
    assert max(live_positions) < min(bulk_positions)
    print(f"\nlanes: late live messages applied with {bulk_left} bulk messages still queued")


def test_exceptions_are_published_once_and_resumed_after_a_restart(
    nats_url: str, sqlite_service: LedgerService, tmp_path: Path
) -> None:
    names = StreamNames(f"T_{uuid.uuid4().hex[:12]}")
    store = ReadModelStore(f"sqlite:///{tmp_path / 'ledger.db'}")
    runner = ProjectionRunner(sqlite_service.app, store)
    sqlite_service.pipeline.add_commit_listener(runner.wake)
    runner.start()

    def ship(message_id: str, qty: int) -> int:
        payload = {**_receipt(message_id, "SKU-X", "wms", qty), "type": "shipment"}
        results = sqlite_service.record_movements(
            CallContext("test"), [parse_message(canonical_json(payload))]
        ).result(30)
        assert runner.wait_for(results[0].ledger_position, 30)
        return results[0].ledger_position

    async def collect(js: Any) -> list[Any]:
        info = await js.stream_info(names.exceptions_stream)
        return [
            await js.get_msg(names.exceptions_stream, seq)
            for seq in range(1, info.state.last_seq + 1)
        ]

    async def scenario() -> tuple[list[Any], list[int]]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        try:
            await ensure_topology(js, names)
            first = [ship("s-1", 3), ship("s-2", 2)]  # on_hand -3, then -5: two exceptions
            publisher = ExceptionPublisher(store, js, names=names)
            assert await publisher.publish_pending() == 2
            assert await publisher.publish_pending() == 0
            restarted = ExceptionPublisher(store, js, names=names)
            assert await restarted.publish_pending() == 0  # resumes from the stream's tail
            later = ship("s-3", 1)
            assert await restarted.publish_pending() == 1
            return await collect(js), [*first, later]
        finally:
            await delete_topology(js, names)
            await nc.drain()

    try:
        messages, positions = asyncio.run(scenario())
    finally:
        runner.stop()
        store.close()
    assert [m.subject for m in messages] == [names.exception_subject("NEGATIVE_BUCKET")] * 3
    bodies = [json.loads(m.data) for m in messages]
    assert [b["ledger_position"] for b in bodies] == positions
    assert [b["quantity"] for b in bodies] == [-3, -5, -6]
    assert {b["sku"] for b in bodies} == {"SKU-X"} and {b["bucket"] for b in bodies} == {"on_hand"}
    assert [m.headers[HEADER_KEY] for m in messages] == [f"{p}:0" for p in positions]
