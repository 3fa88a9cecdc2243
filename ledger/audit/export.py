"""``ledger export``: the ledger, or one position, as JSON lines (docs/audit.md, export format);
or one lot's recall trace (``--lot``), for reading.

Streams page by page, so memory does not grow with the ledger. A whole-ledger export stops
at the head it saw when it started, so it ends on a busy ledger and is a gap-free prefix
1..head that ``tools/verify_ledger_export.py --whole-ledger`` accepts.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from ledger.application import InventoryLedger
from ledger.audit.entries import LedgerEntryView, entry_view, ledger_entries, position_entries
from ledger.domain.chain import format_time
from ledger.domain.position import position_id
from ledger.progress import QUIET, Progress, track


def export_ledger(
    service_or_app: Any,
    out_path: str | os.PathLike[str],
    sku: str | None = None,
    location_id: str | None = None,
    progress: Progress = QUIET,
) -> int:
    """Write the export to ``out_path``; returns the number of entries written.

    Give both ``sku`` and ``location_id`` for one position (in version order), or neither
    for the whole ledger (in ``position`` order). The file appears only when complete: it
    is written beside the target and renamed, so a failed export never leaves a truncated
    file that would pass for a shorter ledger. ``progress`` counts the entries written, out
    of the head for the whole ledger.
    """
    if (sku is None) != (location_id is None):
        raise ValueError("give both sku and location_id, or neither")
    app: InventoryLedger = getattr(service_or_app, "app", service_or_app)
    if sku is None:
        head = app.entry_head()[0]
        entries = track(_whole_ledger(app, head), progress, "export", head)
    else:
        entries = track(_one_position(app, sku, location_id or ""), progress, "export")
    target = Path(out_path)
    partial = target.with_name(target.name + ".partial")
    written = 0
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as out:
            for entry in entries:
                out.write(json.dumps(entry.export_record(), ensure_ascii=False, sort_keys=True))
                out.write("\n")
                written += 1
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return written


def export_lot(
    service: Any,
    out_path: str | os.PathLike[str],
    sku: str,
    lot_id: str,
    as_of: datetime | None = None,
) -> tuple[int, int]:
    """Write one lot's recall trace to ``out_path``: the entries naming the lot as export
    records (ledger order), then one line ``{"lot": {...}}`` with the lot's buckets per
    location and the order reference of each reservation named. Returns (entries, locations).

    The records are the full export's lines verbatim (so each can be matched by ``hash``), but
    the file leaves out every other entry of the chains: it is for reading; verify the full
    export (docs/audit.md). Written beside the target and renamed, like the full export.
    """
    found = service.trace_lot(sku, lot_id, as_of=as_of, page_size=sys.maxsize)
    entries = found.entries.items
    summary = {
        "lot": {
            "sku": sku,
            "lot_id": lot_id,
            "as_of": format_time(as_of),
            "entries": len(entries),
            "order_refs": {
                t.entry.data["reservation_id"]: t.order_ref
                for t in entries
                if t.entry.data.get("reservation_id")
            },
            "locations": [
                {
                    "location_id": location_id,
                    **{
                        k: format_time(v) if isinstance(v, datetime) else v
                        for k, v in asdict(lot).items()
                    },
                }
                for location_id, lot in found.locations
            ],
        }
    }
    lines = [t.entry.export_record() for t in entries] + [summary]
    _write_lines(Path(out_path), lines)
    return len(entries), len(found.locations)


def _write_lines(target: Path, records: Iterable[dict[str, Any]]) -> None:
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False, sort_keys=True))
                out.write("\n")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _whole_ledger(app: InventoryLedger, head: int) -> Iterator[LedgerEntryView]:
    if head == 0:
        return
    for entry in ledger_entries(app):
        yield entry
        if entry.position >= head:
            return


def _one_position(app: InventoryLedger, sku: str, location_id: str) -> Iterator[LedgerEntryView]:
    for row, event in position_entries(app, position_id(sku, location_id)):
        yield entry_view(row, event)
