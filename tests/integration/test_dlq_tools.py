"""DLQ operator tools and the JSONL publisher against a real nats-server (contract §5).

Each test isolates itself with a unique stream prefix and deletes its streams afterwards; the
bridge runs in-process on a SQLite ledger.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats

from ingest.bridge import HEADER_REASON, IngestBridge, canonical_json, publish_movement
from ingest.dlq import list_dead_letters, replay, show
from ingest.publish import publish_file
from ingest.streams import DURABLE, StreamNames, delete_topology, ensure_topology
from ledger.service import LedgerService

SOURCE = "wms-east"


def _prefix() -> str:
    return f"T_{uuid.uuid4().hex[:12]}"


async def _with_js(url: str, body: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    nc = await nats.connect(url)
    try:
        return await body(nc, nc.jetstream())
    finally:
        await nc.drain()


async def _settle(bridge: IngestBridge, js: Any, names: StreamNames) -> None:
    """Run the bridge until the consumer has nothing pending or unacknowledged."""
    for _ in range(100):
        await bridge.run_once(100)
        info = await js.consumer_info(names.movements_stream, DURABLE)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"bridge did not settle: {bridge.counters}")


def test_dead_letter_is_listed_replayed_once_and_deleted(nats_url: str, tmp_path: Path) -> None:
    service = LedgerService.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    names = StreamNames(_prefix())
    bad = {
        "message_id": "d-1",
        "source": SOURCE,
        "type": "receipt",
        "sku": "SKU-D",
        "location_id": "DC-D",
        "qty": 4,
        "uom": "PALLET",
    }
    fixed = canonical_json({**bad, "uom": "EA"})

    async def scenario(_nc: Any, js: Any) -> IngestBridge:
        await ensure_topology(js, names)
        try:
            await publish_movement(js, bad, names.prefix)
            bridge = IngestBridge(service, js, names=names)
            await _settle(bridge, js, names)
            assert bridge.dead_lettered == 1

            entries = await list_dead_letters(js, names.prefix)
            assert len(entries) == 1
            entry = entries[0]
            assert entry.reason == "UNKNOWN_UNIT"
            assert entry.field == "uom"
            assert entry.original_subject == names.movement_subject(SOURCE)
            assert entry.original_msg_id == "d-1"
            assert entry.received_at
            assert await list_dead_letters(js, names.prefix, source=SOURCE) == entries
            assert await list_dead_letters(js, names.prefix, source="other") == []
            shown, payload = await show(js, names.prefix, entry.sequence)
            assert shown == entry
            assert payload == canonical_json(bad)

            # The CLI prints the same entry as a JSON line.
            command = [sys.executable, "-m", "entrypoints.cli", "dlq", "list"]
            command += ["--nats", nats_url, "--prefix", names.prefix]
            listed = await asyncio.to_thread(
                subprocess.run,
                command,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert listed.returncode == 0, listed.stderr
            lines = listed.stdout.splitlines()
            assert len(lines) == 1, listed.stdout
            assert json.loads(lines[0]) == entry.to_json()

            # Replay with the operator's fix: applied exactly once, DLQ emptied.
            result = await replay(js, names.prefix, entry.sequence, fixed)
            assert result.msg_id == f"replay-{entry.sequence}-d-1"
            assert not result.duplicate
            assert (await js.stream_info(names.dlq_stream)).state.messages == 0
            assert await list_dead_letters(js, names.prefix) == []
            await _settle(bridge, js, names)
            assert (bridge.processed, bridge.duplicates, bridge.dead_lettered) == (1, 0, 1)
            assert service.get_position("SKU-D", "DC-D").on_hand == 4

            # The same fix dead-lettered again and replayed: the ledger says DUPLICATE.
            ack = await js.publish(
                names.dlq_subject(SOURCE),
                canonical_json(bad),
                headers={
                    HEADER_REASON: "UNKNOWN_UNIT",
                    "Ledger-Original-Subject": names.movement_subject(SOURCE),
                    "Ledger-Original-Msg-Id": "d-1",
                },
                stream=names.dlq_stream,
            )
            again = await replay(js, names.prefix, ack.seq, fixed)
            assert again.msg_id != result.msg_id
            assert (await js.stream_info(names.dlq_stream)).state.messages == 0
            await _settle(bridge, js, names)
            assert (bridge.processed, bridge.duplicates, bridge.dead_lettered) == (1, 1, 1)
            assert service.get_position("SKU-D", "DC-D").on_hand == 4
            await bridge.close()
            return bridge
        finally:
            await delete_topology(js, names)

    try:
        asyncio.run(_with_js(nats_url, scenario))
    finally:
        service.close()


def test_publish_file_skips_bad_lines_and_reports_them(nats_url: str, tmp_path: Path) -> None:
    names = StreamNames(_prefix())
    base = {"source": SOURCE, "type": "receipt", "sku": "SKU-F", "location_id": "DC-F"}
    path = tmp_path / "movements.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({**base, "message_id": "f-1", "qty": 1}),
                json.dumps({**base, "message_id": "f-2", "qty": "two"}),  # line 2: bad
                "",
                json.dumps({**base, "message_id": "f-3", "qty": 3}),
                json.dumps({**base, "message_id": "f-1", "qty": 1}),  # broker duplicate
            ]
        )
        + "\n"
    )

    async def scenario(_nc: Any, js: Any) -> Any:
        await ensure_topology(js, names)
        try:
            report = await publish_file(js, path, names.prefix)
            stream = await js.stream_info(names.movements_stream)
            assert stream.state.messages == 2
            return report
        finally:
            await delete_topology(js, names)

    report = asyncio.run(_with_js(nats_url, scenario))
    assert (report.published, report.duplicates) == (2, 1)
    assert [line for line, _ in report.invalid] == [2]
    assert "qty" in report.invalid[0][1]
