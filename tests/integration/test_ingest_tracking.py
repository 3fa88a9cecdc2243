"""Ingest of tracked SKUs (issue 19 must-show 5) against a real nats-server and a real ledger.

Canonical messages carrying lot (and serial) fields apply; a message that does not fit its
SKU's item tracking (a LOT SKU's without ``lot_id``, an untracked SKU's with one, a SERIAL
SKU's without ``serial_numbers``) is dead-lettered with ``TRACKING_MISMATCH`` and its field,
applies nothing, and does not hold up the rest of its batch; replaying it fixed (``ledger dlq
replay --payload-file``) applies it once. A lot-level 3PL snapshot counts per lot through the
same path. Each test isolates itself with a unique stream prefix and deletes its streams.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import nats

from ingest.adapters.publish import publish_adapter
from ingest.adapters.threepl_snapshot import ThreePLSnapshotAdapter, snapshot_message_id
from ingest.bridge import IngestBridge, canonical_json, publish_movement
from ingest.dlq import list_dead_letters, replay
from ingest.streams import (
    DURABLE,
    Lane,
    StreamNames,
    delete_topology,
    ensure_topology,
    lane_durable,
)
from ledger.domain.item_policy import Tracking
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext

CTX = CallContext("test")
SOURCE = "wms-east"
EXPIRY = "2027-01-31T00:00:00Z"
AT = "2026-11-22T10:00:00Z"


def _names() -> StreamNames:
    return StreamNames(f"T_{uuid.uuid4().hex[:12]}")


async def _with_js(url: str, body: Callable[[Any], Awaitable[Any]]) -> Any:
    nc = await nats.connect(url)
    try:
        return await body(nc.jetstream())
    finally:
        await nc.drain()


async def _settle(bridge: IngestBridge, js: Any, names: StreamNames) -> None:
    """Run the bridge until both lanes have nothing pending or unacknowledged."""
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop, batch_size=100))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, bridge.counters
            assert not task.done(), task
            infos = [
                await js.consumer_info(names.movements_stream, lane_durable(DURABLE, lane))
                for lane in Lane
            ]
            if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                return
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def _receipt(message_id: str, sku: str, qty: int, **fields: Any) -> dict[str, Any]:
    payload = {"message_id": message_id, "source": SOURCE, "type": "receipt", "sku": sku,
               "location_id": "DC-1", "qty": qty, "occurred_at": AT}  # fmt: skip
    return payload | fields


def _lots(service: LedgerService, sku: str, location_id: str = "DC-1") -> dict[str, int]:
    return {lot.lot_id: lot.on_hand for lot in service.get_position(sku, location_id).lots}


def _dlq_cli(nats_url: str, names: StreamNames, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "entrypoints.cli", "dlq", *args]
    command += ["--nats", nats_url, "--prefix", names.prefix]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_messages_not_fitting_the_tracking_are_dead_lettered_and_the_batch_applies(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    service = LedgerService.open(database_url)
    service.set_item_policy(CTX, "ip-milk", "MILK", Tracking.LOT).result()
    service.set_item_policy(CTX, "ip-phone", "PHONE", Tracking.SERIAL).result()
    names = _names()
    lot_receipt = _receipt("t-1", "MILK", 10, lot_id="L-1", expires_at=EXPIRY)
    plain = _receipt("t-2", "BOLT", 40)
    serials = _receipt("t-3", "PHONE", 2, serial_numbers=["S-1", "S-2"])
    lot_count = {"message_id": "t-4", "source": SOURCE, "type": "cycle_count", "sku": "MILK",
                 "location_id": "DC-1", "counted": 4, "lot_id": "L-2"}  # fmt: skip
    no_lot = _receipt("t-5", "MILK", 5)  # LOT SKU, no lot_id
    lot_on_untracked = _receipt("t-6", "BOLT", 3, lot_id="B-1")
    no_serials = _receipt("t-7", "PHONE", 1)
    poison = {"t-5": "lot_id", "t-6": "lot_id", "t-7": "serial_numbers"}

    async def scenario(js: Any) -> None:
        await ensure_topology(js, names)
        try:
            batch = [lot_receipt, no_lot, plain, lot_on_untracked, serials, no_serials, lot_count]
            for payload in batch:
                await publish_movement(js, payload, names.prefix)
            bridge = IngestBridge(service, js, names=names)
            assert await bridge.run_once(100) == len(batch)  # one batch holds them all
            await _settle(bridge, js, names)
            assert (bridge.processed, bridge.duplicates, bridge.dead_lettered) == (4, 0, 3)

            entries = await list_dead_letters(js, names.prefix)
            assert {(e.original_msg_id, e.reason, e.field) for e in entries} == {
                (mid, "TRACKING_MISMATCH", field) for mid, field in poison.items()
            }
            assert all(e.description for e in entries)
            # Nothing of the poison applied, the rest of the batch did.
            assert _lots(service, "MILK") == {"L-1": 10, "L-2": 4}
            milk = service.get_position("MILK", "DC-1")
            assert milk.on_hand == 14
            assert [str(lot.expires_at.date()) for lot in milk.lots if lot.lot_id == "L-1"] == [
                "2027-01-31"
            ]
            bolt = service.get_position("BOLT", "DC-1")
            assert (bolt.on_hand, bolt.lots) == (40, [])
            assert service.get_position("PHONE", "DC-1").on_hand == 2
            assert service.get_serial("PHONE", "S-1").location_id == "DC-1"

            # The operator fixes the LOT SKU's receipt (names the lot) and replays it with
            # the CLI: applied once, gone from the DLQ.
            by_id = {e.original_msg_id: e for e in entries}
            fixed = tmp_path / "fixed.json"
            fixed.write_bytes(canonical_json({**no_lot, "lot_id": "L-1"}))
            seq = str(by_id["t-5"].sequence)
            done = await asyncio.to_thread(
                _dlq_cli, nats_url, names, "replay", seq, "--payload-file", str(fixed)
            )
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["duplicate"] is False
            # ... and the untracked SKU's without its lot, with the library.
            await replay(
                js,
                names.prefix,
                by_id["t-6"].sequence,
                canonical_json(plain | {"message_id": "t-6", "qty": 3}),
            )
            await _settle(bridge, js, names)
            assert (bridge.processed, bridge.duplicates, bridge.dead_lettered) == (6, 0, 3)
            assert _lots(service, "MILK") == {"L-1": 15, "L-2": 4}
            assert service.get_position("BOLT", "DC-1").on_hand == 43
            remaining = await list_dead_letters(js, names.prefix)
            assert [e.original_msg_id for e in remaining] == ["t-7"]

            # The same dead letter cannot be replayed twice, and the fixed payload sent
            # again is a DUPLICATE: still applied once.
            again = await asyncio.to_thread(
                _dlq_cli, nats_url, names, "replay", seq, "--payload-file", str(fixed)
            )
            assert again.returncode == 1, again.stderr
            await js.publish(
                names.movement_subject(SOURCE),
                fixed.read_bytes(),
                headers={"Nats-Msg-Id": "t-5-again"},
                stream=names.movements_stream,
            )
            await _settle(bridge, js, names)
            assert (bridge.processed, bridge.duplicates, bridge.dead_lettered) == (6, 1, 3)
            assert _lots(service, "MILK") == {"L-1": 15, "L-2": 4}
            await bridge.close()
        finally:
            await delete_topology(js, names)

    try:
        asyncio.run(_with_js(nats_url, scenario))
    finally:
        service.close()


def test_a_lot_level_snapshot_counts_each_lot_and_a_lotless_row_is_dead_lettered(
    nats_url: str, sqlite_service: LedgerService, tmp_path: Path
) -> None:
    service = sqlite_service
    service.set_item_policy(CTX, "ip-milk", "MILK", Tracking.LOT).result()
    names = _names()
    path = tmp_path / "lots.csv"
    path.write_text(
        "warehouse,item,lot,on_hand_qty\n"
        "DC-1,MILK,L-1,7\n"  # 10 before: short
        "DC-1,MILK,L-2,9\n"  # 4 before: over
        "DC-1,MILK,,20\n"  # a LOT SKU counted whole: the ledger refuses it
        "DC-1,BOLT,,41\n"  # untracked, whole: applies
    )
    at = "2026-11-22T12:00:00+00:00"

    async def scenario(js: Any) -> None:
        await ensure_topology(js, names)
        try:
            for payload in (
                _receipt("s-1", "MILK", 10, lot_id="L-1"),
                _receipt("s-2", "MILK", 4, lot_id="L-2"),
                _receipt("s-3", "MILK", 6, lot_id="L-3"),  # not in the file: left alone
                _receipt("s-4", "BOLT", 40),
            ):
                await publish_movement(js, payload, names.prefix)
            adapter = ThreePLSnapshotAdapter("3pl-acme", as_of=datetime.fromisoformat(at))
            report = await publish_adapter(js, adapter, path, names.prefix)
            assert (report.published, report.invalid) == (4, [])
            bridge = IngestBridge(service, js, names=names)
            await _settle(bridge, js, names)
            assert (bridge.processed, bridge.dead_lettered) == (7, 1)
            [entry] = await list_dead_letters(js, names.prefix)
            assert (entry.reason, entry.field) == ("TRACKING_MISMATCH", "lot_id")
            assert entry.original_msg_id == snapshot_message_id(
                "3pl-acme", datetime.fromisoformat(at), "MILK", "DC-1"
            )
            await bridge.close()
        finally:
            await delete_topology(js, names)

    asyncio.run(_with_js(nats_url, scenario))
    assert _lots(service, "MILK") == {"L-1": 7, "L-2": 9, "L-3": 6}
    assert service.get_position("MILK", "DC-1").on_hand == 22
    assert service.get_position("BOLT", "DC-1").on_hand == 41
