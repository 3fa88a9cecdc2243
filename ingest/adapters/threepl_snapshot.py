"""3PL inventory snapshot CSV -> one ``cycle_count`` message per row, on the bulk lane.

Expected columns (header row required; names case-insensitive, order free, other columns
ignored; ``columns`` maps a logical name to a different header)::

    warehouse,item,on_hand_qty,uom,snapshot_time
    DC-EAST,SKU-1,120,EA,2026-11-22T06:00:00Z

- ``warehouse`` -> ``location_id``, ``item`` -> ``sku``, ``on_hand_qty`` -> ``counted``
  (a whole number >= 0, in ``uom``);
- ``uom`` (optional column; empty = ``EA``) is passed through, the bridge converts it;
- ``snapshot_time`` (ISO-8601 with a time zone) -> ``occurred_at``; the column may be left out
  (or a cell empty) when the operator gives ``as_of`` for the file;
- ``lot`` (optional column) -> ``lot_id``: a lot-level snapshot (contract §2 "Lots, serials
  and expiry"), each row the count of one lot at one warehouse, which the ledger applies as
  a count of that lot only.

Cells are trimmed. One row per (item, warehouse, lot) (lot empty without the column): a file
at bin level must be summed first. A later row for a key already seen is an error for that
row, whether or not the first one was valid (the file is ambiguous about that count).

The adapter does not know which items are lot-tracked (only the ledger's item master does):
a row without a lot cell is sent as a count of the whole position, one with a lot cell as a
count of that lot, and the ledger dead-letters whichever does not fit the item's tracking
(``TRACKING_MISMATCH``, field ``lot_id``), the rest of the file applying.

``message_id`` = ``<source>-<snapshot time, UTC, compact>-<sha256(item, warehouse)[:16]>``,
or sha256(item, warehouse, lot) for a row with a lot cell (ids of rows without one, and so of
files without the column, are unchanged):
re-importing the same file yields the same ids with the same payloads, which the ledger
answers DUPLICATE (the broker already drops them within its 2-minute window); a new
snapshot has a new time and so new ids, and is recorded even if no count changed (it
re-asserts the stock at that time). A re-sent file with another quantity for the same
position and time keeps the id, so the ledger refuses it (``MESSAGE_ID_REUSED`` in the DLQ)
instead of silently replacing a count; a correction is a new snapshot with its own time.
The source is part of the id because the broker's dedupe window spans all sources.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, BinaryIO

from ingest.adapters.base import (
    AdapterError,
    CanonicalPayload,
    Record,
    check_source,
    identifier,
    integer,
    parse_timestamp,
    rfc3339,
)
from ingest.message import UOM_LENGTH_MAX
from ingest.streams import Lane

ITEM, WAREHOUSE, QTY, UOM, SNAPSHOT_TIME, LOT = (
    "item",
    "warehouse",
    "on_hand_qty",
    "uom",
    "snapshot_time",
    "lot",
)
COLUMNS = (WAREHOUSE, ITEM, QTY, UOM, SNAPSHOT_TIME, LOT)
# Key of a row's surplus cells in Record.data (never a logical column name).
OVERFLOW = "_overflow"
DIGEST_LENGTH = 16


def parse_column_mapping(pairs: list[str]) -> dict[str, str]:
    """``["item=SKU_CODE", ...]`` (the CLI's ``--column``) as ``{"item": "SKU_CODE"}``."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, header = pair.partition("=")
        name = name.strip().lower()
        if not sep or not header.strip() or name not in COLUMNS:
            raise ValueError(
                f"column mapping must be NAME=HEADER with NAME one of {', '.join(COLUMNS)},"
                f" not {pair!r}"
            )
        mapping[name] = header.strip()
    return mapping


def snapshot_message_id(
    source: str, snapshot_time: datetime, sku: str, location_id: str, lot_id: str | None = None
) -> str:
    """Deterministic id of one position's (or lot's) count in one snapshot (see the module
    docstring).

    At most 64 + 1 + 23 + 1 + 16 = 105 characters, inside the 128 of contract §2."""
    snapshot_time = snapshot_time.astimezone(UTC)  # one instant, one id, whatever the offset
    stamp = snapshot_time.strftime("%Y%m%dT%H%M%S")
    if snapshot_time.microsecond:
        stamp += f".{snapshot_time.microsecond:06d}"
    # JSON of the pair (triple with a lot): unambiguous whatever characters they hold.
    parts = [sku, location_id] if lot_id is None else [sku, location_id, lot_id]
    key = json.dumps(parts, ensure_ascii=False).encode()
    return f"{source}-{stamp}Z-{hashlib.sha256(key).hexdigest()[:DIGEST_LENGTH]}"


class ThreePLSnapshotAdapter:
    """One instance per file: it remembers the (position, lot) keys already seen."""

    lane = Lane.BULK
    ordered = False  # one message per position: order within the file does not matter

    def __init__(
        self,
        source: str,
        as_of: datetime | None = None,
        columns: Mapping[str, str] | None = None,
    ) -> None:
        self.source = check_source(source)
        if as_of is not None and as_of.utcoffset() is None:
            raise ValueError("as_of needs a time zone")
        self.as_of = None if as_of is None else as_of.astimezone(UTC)
        unknown = set(columns or {}) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown columns in mapping: {sorted(unknown)}")
        self.headers = {name: (columns or {}).get(name, name) for name in COLUMNS}
        self._seen: dict[tuple[str, str, str | None], int] = {}

    # ---- file -> rows ----

    def records(self, file: BinaryIO) -> Iterator[Record]:
        data = file.read()
        try:
            text = data.decode("utf-8-sig")  # spreadsheet exports often start with a BOM
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise AdapterError(line, "", "file is not UTF-8") from None
        # strict: broken quoting ends the import (row boundaries are no longer reliable)
        # rather than swallowing the rest of the file into one cell.
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        index: dict[str, int] | None = None
        width = 0
        previous = 0
        try:
            for row in reader:
                line, previous = previous + 1, reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if index is None:
                    index, width = self._header(row, line), len(row)
                    continue
                cells: dict[str, Any] = {
                    name: row[i] if i < len(row) else "" for name, i in index.items()
                }
                if len(row) > width:
                    cells[OVERFLOW] = row[width:]
                yield Record(line, cells)
        except csv.Error as error:  # e.g. a NUL byte or an unterminated quote
            raise AdapterError(reader.line_num, "", f"unreadable CSV: {error}") from None
        if index is None:
            raise AdapterError(1, "", "file has no header row")

    def _header(self, row: list[str], line: int) -> dict[str, int]:
        positions: dict[str, list[int]] = {}
        for i, cell in enumerate(row):
            positions.setdefault(cell.strip().lower(), []).append(i)
        index: dict[str, int] = {}
        for name, header in self.headers.items():
            found = positions.get(header.strip().lower(), [])
            if len(found) > 1:
                raise AdapterError(line, header, "column appears more than once in the header")
            if found:
                index[name] = found[0]
                self.headers[name] = row[found[0]].strip()  # errors name the file's spelling
        required = [ITEM, WAREHOUSE, QTY] + ([] if self.as_of else [SNAPSHOT_TIME])
        missing = [self.headers[name] for name in required if name not in index]
        if missing:
            hint = " (or give as_of / --as-of)" if SNAPSHOT_TIME in required else ""
            raise AdapterError(
                line, missing[0], f"header lacks column(s) {', '.join(missing)}{hint}"
            )
        return index

    # ---- row -> message ----

    def translate(self, record: Record) -> list[CanonicalPayload]:
        row: Mapping[str, Any] = record.data
        line = record.line
        if row.get(OVERFLOW):
            raise AdapterError(
                line, "", f"{len(row[OVERFLOW])} cell(s) more than the header (unquoted comma?)"
            )
        sku = identifier(row.get(ITEM, "").strip(), line, self.headers[ITEM])
        location = identifier(row.get(WAREHOUSE, "").strip(), line, self.headers[WAREHOUSE])
        lot_cell = row.get(LOT, "").strip()
        lot = identifier(lot_cell, line, self.headers[LOT]) if lot_cell else None
        first = self._seen.setdefault((sku, location, lot), line)
        if first != line:
            what = f"{sku!r} at {location!r}" + ("" if lot is None else f" lot {lot!r}")
            raise AdapterError(line, self.headers[ITEM], f"{what} already counted on line {first}")
        counted = integer(row.get(QTY, ""), line, self.headers[QTY], minimum=0)
        uom = row.get(UOM, "").strip()
        if len(uom) > UOM_LENGTH_MAX:
            raise AdapterError(line, self.headers[UOM], f"longer than {UOM_LENGTH_MAX} characters")
        cell = row.get(SNAPSHOT_TIME, "").strip()
        if cell:
            at = parse_timestamp(cell, line, self.headers[SNAPSHOT_TIME])
        elif self.as_of is not None:
            at = self.as_of
        else:
            raise AdapterError(line, self.headers[SNAPSHOT_TIME], "missing (and no as_of given)")
        message: CanonicalPayload = {
            "message_id": snapshot_message_id(self.source, at, sku, location, lot),
            "source": self.source,
            "type": "cycle_count",
            "sku": sku,
            "location_id": location,
            "counted": counted,
            "occurred_at": rfc3339(at),
        }
        if lot is not None:
            message["lot_id"] = lot
        if uom:
            message["uom"] = uom
        return [message]
