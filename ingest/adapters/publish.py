"""Run a source adapter over a file and publish what it produces (``ledger import-*``).

Every message is checked with the bridge's own :func:`~ingest.message.parse_message` before it
is published, so a record the bridge would dead-letter is reported here with its line instead.
Bad records are reported and skipped; the rest are published on the adapter's lane with
``Nats-Msg-Id`` = ``message_id``. Ids are deterministic, so an interrupted import (broker
unreachable mid-file) can simply be run again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.adapters.base import Adapter, AdapterError, CanonicalPayload
from ingest.bridge import canonical_json, publish_movement
from ingest.message import InvalidMessage, parse_message
from ingest.streams import Lane
from ingest.units import UnitTable
from ledger.progress import QUIET, Progress, track

# Unordered feeds (snapshots) keep this many publishes in flight instead of one round trip
# per message; ordered feeds publish one at a time so the stream keeps the file's order.
WINDOW = 256


@dataclass
class ImportReport:
    source: str
    lane: Lane
    records: int = 0  # non-blank records read
    published: int = 0
    duplicates: int = 0  # PubAck.duplicate: dropped by the broker's dedupe window
    invalid: list[AdapterError] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "lane": self.lane.value,
            "records": self.records,
            "published": self.published,
            "duplicates": self.duplicates,
            "invalid": [error.to_json() for error in self.invalid],
        }


def check_message(payload: CanonicalPayload, line: int, units: UnitTable | None) -> None:
    """Raise :class:`AdapterError` if the bridge would refuse ``payload``. Without a unit
    table an unknown unit is left to the bridge (whose table decides)."""
    try:
        parse_message(canonical_json(payload), units)
    except InvalidMessage as error:
        if not (error.reason_code == "UNKNOWN_UNIT" and units is None):
            raise AdapterError(
                line, error.field, f"{error.reason_code}: {error.description}"
            ) from None


async def publish_adapter(
    js: Any,
    adapter: Adapter,
    path: str | Path,
    prefix: str = "",
    units: UnitTable | None = None,
    progress: Progress = QUIET,
) -> ImportReport:
    """Publish what ``adapter`` makes of the file; ``progress`` counts records read (their
    number is not known before the file is parsed)."""
    report = ImportReport(adapter.source, adapter.lane)
    pending: list[CanonicalPayload] = []

    async def flush() -> None:
        if adapter.ordered:
            acks = [
                await publish_movement(js, payload, prefix, lane=adapter.lane)
                for payload in pending
            ]
        else:
            acks = await asyncio.gather(
                *(publish_movement(js, payload, prefix, lane=adapter.lane) for payload in pending)
            )
        pending.clear()
        for ack in acks:
            if ack.duplicate:
                report.duplicates += 1
            else:
                report.published += 1

    with Path(path).open("rb") as file:
        try:
            for record in track(adapter.records(file), progress, f"import {adapter.source}"):
                report.records += 1
                try:
                    payloads = adapter.translate(record)
                    for payload in payloads:
                        check_message(payload, record.line, units)
                except AdapterError as error:
                    report.invalid.append(error)
                    continue
                pending.extend(payloads)
                if adapter.ordered or len(pending) >= WINDOW:
                    await flush()
        except AdapterError as error:  # the rest of the file is unreadable
            report.invalid.append(error)
    await flush()
    return report
