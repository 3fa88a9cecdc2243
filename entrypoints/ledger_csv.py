"""A position's stock ledger as CSV: one set of columns, one boolean spelling and one cell
rule for ``ledger audit history --csv`` and the console's ``/ledger.csv`` (docs/audit.md,
docs/console.md).

A text cell starting like a spreadsheet formula (``= + - @``, tab, carriage return) gets a
leading ``'``, so a spreadsheet shows it instead of running it; numbers keep their sign.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from entrypoints.ledger_fold import BUCKETS, BalanceRow, entry_time, entry_type_name, format_instant

# Entry fields copied as they are (text), in column order.
PROVENANCE = (
    "source",
    "message_id",
    "request_id",
    "correlation_id",
    "actor",
    "reservation_id",
    "transfer_id",
    "lot_id",
    "reason",
)
COLUMNS = (
    "position",
    "ledger_position",
    "version",
    "type",
    "qty",
    "delta",
    "counted",
    "occurred_at",
    "recorded_at",
    "late",
    "stale_count",
    *PROVENANCE,
    *BUCKETS,
)
TEXT_COLUMNS = frozenset(("type", "occurred_at", "recorded_at", *PROVENANCE))
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any, *, text: bool) -> str:
    """One cell: booleans ``true``/``false``; a ``text`` cell starting like a formula gets a
    leading ``'``."""
    shown = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if text and shown[:1] in FORMULA_STARTS:
        return "'" + shown
    return shown


def ledger_record(row: BalanceRow) -> dict[str, Any]:
    """One CSV row of a folded entry: its fields, then the balance after it (by COLUMNS)."""
    entry = row.entry
    record: dict[str, Any] = {
        "position": int(entry.position),
        "ledger_position": int(entry.ledger_position),
        "version": int(entry.version),
        "type": entry_type_name(entry),
        "qty": int(entry.qty),
        "delta": int(entry.delta),
        "counted": int(entry.counted),
        "occurred_at": format_instant(entry_time(entry, "effective")),
        "recorded_at": format_instant(entry_time(entry, "recorded")),
        "late": row.late,
        "stale_count": row.stale_count,
    }
    for name in PROVENANCE:
        record[name] = getattr(entry, name)
    record.update(row.balance.as_dict())
    return record


def write_ledger_csv(out: TextIO, records: Iterable[Mapping[str, Any]]) -> None:
    """The header and one line per record (CRLF line ends, as RFC 4180)."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for record in records:
        writer.writerow([csv_cell(record[name], text=name in TEXT_COLUMNS) for name in COLUMNS])


def ledger_csv_text(records: Iterable[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    write_ledger_csv(out, records)
    return out.getvalue()
