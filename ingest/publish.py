"""Publish a JSONL file of canonical movement messages (contract §5), one per line, each with
``Nats-Msg-Id`` = its ``message_id``. Invalid lines are reported and skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.bridge import publish_movement
from ingest.message import InvalidMessage, decode_json, parse_message
from ingest.units import UnitTable
from ledger.progress import QUIET, Progress, track


@dataclass
class PublishReport:
    published: int = 0
    duplicates: int = 0  # PubAck.duplicate: dropped by the broker's dedupe window
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line number, error)

    def to_json(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "duplicates": self.duplicates,
            "invalid": [{"line": line, "error": error} for line, error in self.invalid],
        }


def _check(raw: bytes, units: UnitTable | None) -> dict[str, Any]:
    """The decoded message, or :class:`InvalidMessage`. Without a unit table an unknown unit
    is left to the bridge (whose table decides)."""
    try:
        parse_message(raw, units)
    except InvalidMessage as error:
        if not (error.reason_code == "UNKNOWN_UNIT" and units is None):
            raise
    value = decode_json(raw)
    assert isinstance(value, dict)  # parse_message accepted it
    return value


def count_lines(path: str | Path) -> int:
    """Lines in the file, the last one counted even without its newline (a fast pass in
    blocks: the total that gives the progress display its ETA)."""
    lines, last = 0, b"\n"
    with Path(path).open("rb") as file:
        while block := file.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines if last == b"\n" else lines + 1


async def publish_file(
    js: Any,
    path: str | Path,
    prefix: str = "",
    units: UnitTable | None = None,
    progress: Progress = QUIET,
) -> PublishReport:
    """Publish every valid line; ``progress`` counts lines (blank and invalid ones too)."""
    report = PublishReport()
    total = count_lines(path)
    with Path(path).open("rb") as lines:
        numbered = enumerate(track(lines, progress, "publish", total), start=1)
        for number, line in numbered:
            raw = line.strip()
            if not raw:
                continue
            try:
                payload = _check(raw, units)
            except InvalidMessage as error:
                report.invalid.append((number, str(error)))
                continue
            ack = await publish_movement(js, payload, prefix)
            if ack.duplicate:
                report.duplicates += 1
            else:
                report.published += 1
    return report
