"""Source adapters end to end against a real nats-server (contract §5, docs/adapters.md):
file -> ``ledger import-*`` (a subprocess) -> JetStream -> bridge -> SQLite ledger.

Each test isolates itself with a unique stream prefix and deletes its streams afterwards; the
bridge runs in-process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import nats

from ingest.bridge import IngestBridge, publish_movement
from ingest.streams import (
    DURABLE,
    Lane,
    StreamNames,
    delete_topology,
    ensure_topology,
    lane_durable,
)
from ledger.service import LedgerService

SNAPSHOT_SOURCE = "3pl-acme"
WMS_SOURCE = "wms-east"
UNITS = {"units": {"CASE": 12}}


def _prefix() -> str:
    return f"T_{uuid.uuid4().hex[:12]}"


def _import(command: str, path: Path, source: str, nats_url: str, prefix: str, *extra: str):
    """Run ``ledger <command>``; returns (exit code, JSON report, stderr)."""
    argv = [sys.executable, "-m", "entrypoints.cli", command, str(path), "--source", source]
    argv += ["--nats", nats_url, "--prefix", prefix, *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout), done.stderr


async def _apply(sqlite_service: LedgerService, js: Any, names: StreamNames, units: Any = None):
    """Run a bridge until both lanes have nothing pending or unacknowledged."""
    from ingest.units import UnitTable

    bridge = IngestBridge(
        sqlite_service, js, names=names, units=UnitTable.from_dict(units) if units else None
    )
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop, batch_size=50))
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
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await bridge.close()
    return bridge


async def _connect(url: str) -> tuple[Any, Any]:
    nc = await nats.connect(url)
    return nc, nc.jetstream()


def test_snapshot_import_sets_on_hand_and_a_reimport_records_nothing(
    nats_url: str, sqlite_service: LedgerService, tmp_path: Path
) -> None:
    counts = {(f"SKU-{i}", f"DC-{i % 3}"): (i * 7) % 40 for i in range(30)}  # zeros included
    lines = ["Warehouse,Item,Description,On_Hand_Qty,UOM"]
    lines += [f'{loc},{sku},"Widget, size {i}",{qty},EA' for i, ((sku, loc), qty) in
              enumerate(counts.items())]  # fmt: skip
    lines.insert(5, "DC-0,SKU-BAD,broken,-4,EA")  # line 6: skipped, reported
    lines.append("DC-1,SKU-CASE,cases,2,CASE")  # converted by the bridge's unit table
    path = tmp_path / "acme-snapshot.csv"
    path.write_text("\n".join(lines) + "\n")
    as_of = ("--as-of", "2026-11-22T06:00:00+01:00")
    names = StreamNames(_prefix())
    again = StreamNames(_prefix())  # a re-import after the broker's dedupe window

    async def scenario() -> dict[str, Any]:
        nc, js = await _connect(nats_url)
        try:
            for n in (names, again):
                await ensure_topology(js, n)
            # Stock known before the snapshot: the count replaces it.
            await publish_movement(
                js,
                {"message_id": "r-1", "source": WMS_SOURCE, "type": "receipt", "sku": "SKU-1",
                 "location_id": "DC-1", "qty": 500, "occurred_at": "2026-11-21T12:00:00Z"},
                names.prefix,
            )  # fmt: skip
            code, report, stderr = await asyncio.to_thread(
                _import, "import-snapshot", path, SNAPSHOT_SOURCE, nats_url, names.prefix, *as_of
            )
            assert code == 1, stderr  # one row was invalid
            assert "line 6" in stderr
            assert report == {
                "source": SNAPSHOT_SOURCE,
                "lane": "bulk",
                "records": 32,
                "published": 31,
                "duplicates": 0,
                "invalid": [
                    {"line": 6, "field": "On_Hand_Qty", "error": "must be at least 0, not -4"}
                ],
            }
            # The counts travelled on the bulk lane, the receipt on the live one.
            bulk = await js.consumer_info(names.movements_stream, lane_durable(DURABLE, Lane.BULK))
            assert bulk.num_pending == 31
            first = await _apply(sqlite_service, js, names, UNITS)
            assert (first.processed, first.duplicates, first.dead_lettered) == (32, 0, 0)
            head = sqlite_service.head_position()

            # The same file again, inside the broker's window: dropped there.
            code, report, _ = await asyncio.to_thread(
                _import, "import-snapshot", path, SNAPSHOT_SOURCE, nats_url, names.prefix, *as_of
            )
            assert (code, report["published"], report["duplicates"]) == (1, 0, 31)
            # ...and after it (a fresh stream): the ledger answers DUPLICATE for every row.
            code, report, _ = await asyncio.to_thread(
                _import, "import-snapshot", path, SNAPSHOT_SOURCE, nats_url, again.prefix, *as_of
            )
            assert (code, report["published"], report["duplicates"]) == (1, 31, 0)
            second = await _apply(sqlite_service, js, again, UNITS)
            assert (second.processed, second.duplicates, second.dead_lettered) == (0, 31, 0)
            assert sqlite_service.head_position() == head  # nothing new recorded

            # The next day's snapshot is new, even where no count changed.
            code, report, _ = await asyncio.to_thread(
                _import, "import-snapshot", path, SNAPSHOT_SOURCE, nats_url, again.prefix,
                "--as-of", "2026-11-23T06:00:00Z",
            )  # fmt: skip
            assert report["published"] == 31
            third = await _apply(sqlite_service, js, again, UNITS)
            assert (third.processed, third.duplicates) == (31, 0)
            return report
        finally:
            for n in (names, again):
                await delete_topology(js, n)
            await nc.drain()

    asyncio.run(scenario())
    for (sku, location), qty in counts.items():
        view = sqlite_service.get_position(sku, location)
        assert view.on_hand == qty, (sku, location, view)
    assert sqlite_service.get_position("SKU-CASE", "DC-1").on_hand == 24
    assert sqlite_service.get_position("SKU-BAD", "DC-0").version == 0  # never recorded


def _txn(txn_id: str, txn_type: str, qty: int, site: str = "DC-EAST", **extra: Any) -> str:
    record = {"txn_id": txn_id, "txn_type": txn_type, "item": "SKU-W", "site": site,
              "qty": qty, "uom": "EA", "ts": f"2026-11-22T08:{int(txn_id[2:]):02d}:00Z",
              "user": "picker-7", **extra}  # fmt: skip
    return json.dumps(record)


def test_wms_export_lands_in_the_expected_buckets(
    nats_url: str, sqlite_service: LedgerService, tmp_path: Path
) -> None:
    lines = [
        _txn("T-01", "RECV", 100),
        _txn("T-02", "PUTAWAY", 60),
        _txn("T-03", "PICK", 5, order_ref="SO-1"),
        _txn("T-04", "ADJ", -2, reason="cycle variance"),
        _txn("T-05", "QC_HOLD", 4),
        '{"txn_id": "T-06", "txn_type": "MOVE_BIN", "item": "SKU-W"}',  # line 6: unknown type
        _txn("T-07", "QC_RELEASE", 1),
        _txn("T-08", "DAMAGE", 2),
        _txn("T-09", "XFER_OUT", 10, to_site="DC-WEST", order_ref="TO-1"),
        _txn("T-10", "XFER_IN", 10, site="DC-WEST", order_ref="TO-1"),
        _txn("T-11", "RETURN", 3, disposition="DAMAGED"),
        _txn("T-12", "RETURN", 2, disposition="RESTOCK"),
        _txn("T-13", "XFER_OUT", 5, to_site="DC-WEST", order_ref="TO-2"),
    ]
    path = tmp_path / "wms-export.jsonl"
    path.write_text("\n".join(lines) + "\n")
    names = StreamNames(_prefix())

    async def scenario() -> IngestBridge:
        nc, js = await _connect(nats_url)
        try:
            await ensure_topology(js, names)
            code, report, stderr = await asyncio.to_thread(
                _import, "import-wms", path, WMS_SOURCE, nats_url, names.prefix
            )
            assert code == 1, stderr
            assert (report["lane"], report["published"], report["duplicates"]) == ("live", 12, 0)
            assert [(e["line"], e["field"]) for e in report["invalid"]] == [(6, "txn_type")]
            live = await js.consumer_info(names.movements_stream, DURABLE)
            assert live.num_pending == 12
            return await _apply(sqlite_service, js, names)
        finally:
            await delete_topology(js, names)
            await nc.drain()

    bridge = asyncio.run(scenario())
    assert (bridge.processed, bridge.dead_lettered) == (12, 0)
    east = sqlite_service.get_position("SKU-W", "DC-EAST")
    west = sqlite_service.get_position("SKU-W", "DC-WEST")
    # on_hand: 60 put away - 5 picked - 2 adjusted - 4 held + 1 released - 2 damaged
    #          - 10 and 5 sent + 2 restocked = 35
    assert (east.on_hand, east.receiving, east.quarantine, east.damaged) == (35, 40, 3, 5)
    assert (west.on_hand, west.in_transit_inbound) == (10, 5)
