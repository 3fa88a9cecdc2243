"""``ledger audit as-of|history|verify``: scripted audits against a running ledger.

A client of the gRPC API (``AuditService`` through the Python client), never of the database:
it works against any replica and is held to the caller's token like any other client
(docs/audit.md, "ledger audit"). The running balance of ``history`` is the fold in
:mod:`entrypoints.ledger_fold`, shared with the console.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from entrypoints import ledger_fold
from entrypoints.ledger_csv import ledger_record, write_ledger_csv
from entrypoints.ledger_fold import BUCKETS, InstantError, format_instant, parse_instant
from entrypoints.remote import add_target_arguments, target_from_args, token_from_args

if TYPE_CHECKING:
    from inventory_ledger_client import LedgerClient, LedgerError

log = logging.getLogger("ledger")


class BadInput(ValueError):
    """Raised when the arguments cannot make a request (one line, exit 2)."""


# ListMovements pages of the largest size the server gives (limits.PAGE_SIZE_MAX).
HISTORY_PAGE_SIZE = 1000
VERIFY_TIMEOUT_SECONDS = 3600.0

# The refusals an operator fixes (exit 2, one line), like a bad flag.
_OPERATOR_CODES = (
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "INVALID_ARGUMENT",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "RESOURCE_EXHAUSTED",
)


def add_audit_parser(commands: argparse._SubParsersAction) -> None:
    """``ledger audit as-of|history|verify`` (docs/audit.md, "ledger audit")."""
    audit = commands.add_parser(
        "audit",
        help="as-of balances, a position's stock ledger and chain verification from a running"
        " ledger (gRPC, scope audit)",
        description="reads a running ledger through its gRPC API (any replica), with the"
        " token of --token-file or LEDGER_TOKEN. Times are RFC 3339 with a zone, e.g."
        " 2026-03-31T23:59:00Z.",
    )
    actions = audit.add_subparsers(dest="action", required=True)
    as_of = actions.add_parser(
        "as-of",
        help="a position's buckets at an instant (GetPositionAsOf)",
        description="recorded axis: what the ledger knew at --at; effective axis: what was"
        " true at --at by everything known now, or known by --known-at.",
    )
    _position_arguments(as_of, required=True)
    as_of.add_argument("--at", required=True, help="the instant (RFC 3339)")
    _axis_argument(as_of)
    as_of.add_argument("--known-at", help="effective axis only: what was known by then")
    as_of.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    history = actions.add_parser(
        "history",
        help="a position's ledger entries with the running balance of each bucket",
        description="every entry of the position (ListMovements, all pages) in the axis's"
        " order — ledger order on the recorded axis, (occurred_at, ledger order) on the"
        " effective one — with the balance after it; late (backdated) entries are marked."
        " --from/--to keep the rows with from <= time < to; balances still count everything"
        " before --from.",
    )
    _position_arguments(history, required=True)
    history.add_argument("--from", dest="start", help="first instant shown (RFC 3339)")
    history.add_argument("--to", dest="end", help="instant shown rows end before (RFC 3339)")
    _axis_argument(history)
    history.add_argument("--csv", action="store_true", help="CSV with a header instead of a table")
    history.add_argument(
        "--page-size", type=int, default=HISTORY_PAGE_SIZE, help=argparse.SUPPRESS
    )  # tests: several ListMovements pages from a short history
    verify = actions.add_parser(
        "verify",
        help="check the hash chains of one position or of the whole ledger (VerifyLedger)",
        description="progress on stderr, the result on stdout; exit 1 when a chain is broken.",
    )
    _position_arguments(verify, required=False)
    verify.add_argument("--json", action="store_true", help="the result as one JSON object")
    verify.add_argument(
        "--timeout",
        type=float,
        default=VERIFY_TIMEOUT_SECONDS,
        help=f"seconds the whole check may take (default {VERIFY_TIMEOUT_SECONDS:.0f})",
    )
    for command in (as_of, history, verify):
        add_target_arguments(command)
        command.add_argument("--log-level", default="WARNING")


def _position_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--sku", required=required, help="the position's SKU")
    parser.add_argument("--location-id", required=required, help="the position's location")


def _axis_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--axis", choices=ledger_fold.AXES, default="recorded", help="time axis (default recorded)"
    )


def run_audit(args: argparse.Namespace) -> int:
    """Run one ``ledger audit`` subcommand; a refusal or bad input is one line, exit 2."""
    from inventory_ledger_client import LedgerError

    target = target_from_args(args)  # ConfigError: one line, exit 2 (main)
    token = token_from_args(args)
    try:
        with target.client(token) as client:
            if args.action == "as-of":
                return _as_of(client, args, sys.stdout)
            if args.action == "history":
                return _history(client, args, sys.stdout)
            return _verify(client, args, sys.stdout, sys.stderr)
    except (InstantError, BadInput) as error:
        log.error("%s", error)
        return 2
    except LedgerError as error:
        if error.code.name not in _OPERATOR_CODES:
            raise
        log.error("%s", _refusal(error, target.target))
        return 2


def _refusal(error: LedgerError, target: str) -> str:
    message = " ".join(str(error.message).split())
    if error.code.name == "UNAVAILABLE":
        return f"ledger at {target} unavailable: {message}"
    return f"ledger at {target} refused {error.method}: {error.code.name}: {message}"


# ---- as-of --------------------------------------------------------------------------------


def _as_of(client: LedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    at = parse_instant(args.at, "--at")
    known_at = parse_instant(args.known_at, "--known-at") if args.known_at else None
    position = client.get_position_as_of(
        args.sku, args.location_id, at, axis=args.axis, known_at=known_at
    )
    figures = as_of_figures(position, args.axis, at, known_at)
    if args.json:
        out.write(json.dumps(figures) + "\n")
        return 0
    rows = [
        [name, _text(value)]
        for name, value in figures.items()
        if name not in ("fences", "lots") and value is not None
    ]
    rows += [[f"fence[{channel}]", str(qty)] for channel, qty in figures["fences"].items()]
    for lot in figures.get("lots", []):
        rows.append([f"lot[{lot['lot_id']}]", f"on_hand {lot['on_hand']}"])
    _write_table(out, ["field", "value"], rows)
    return 0


def as_of_figures(
    position: Any, axis: str, at: dt.datetime, known_at: dt.datetime | None
) -> dict[str, Any]:
    """The as-of answer as one JSON object: the query, then Position's fields by name."""
    figures: dict[str, Any] = {
        "sku": position.sku,
        "location_id": position.location_id,
        "axis": axis,
        "at": format_instant(at),
        "known_at": format_instant(known_at) if known_at else None,
    }
    figures.update({bucket: int(getattr(position, bucket)) for bucket in BUCKETS})
    figures["expired"] = int(position.expired)
    figures["fences"] = dict(sorted(position.fences.items()))
    figures["version"] = int(position.version)
    figures["updated_at"] = (
        format_instant(position.updated_at.ToDatetime(tzinfo=dt.UTC))
        if position.HasField("updated_at")
        else None
    )
    if position.lots:
        figures["lots"] = [
            {
                "lot_id": lot.lot_id,
                "expires_at": (
                    format_instant(lot.expires_at.ToDatetime(tzinfo=dt.UTC))
                    if lot.HasField("expires_at")
                    else None
                ),
                **{
                    bucket: int(getattr(lot, bucket))
                    for bucket in BUCKETS
                    if bucket not in ("safety_stock",)
                },
            }
            for lot in position.lots
        ]
    return figures


# ---- history ------------------------------------------------------------------------------


def _history(client: LedgerClient, args: argparse.Namespace, out: TextIO) -> int:
    start = parse_instant(args.start, "--from") if args.start else None
    end = parse_instant(args.end, "--to") if args.end else None
    if start is not None and end is not None and not start < end:
        raise BadInput(f"--from {args.start} is not before --to {args.end}")
    # Every entry: a window's balances count everything before it, and whether an entry is
    # late depends on entries earlier in ledger order, which may lie after the window.
    entries = list(
        list_all_movements(client, args.sku, args.location_id, args.axis, args.page_size)
    )
    rows = [
        row
        for row in ledger_fold.running_balances(entries, args.axis)
        if _inside(ledger_fold.entry_time(row.entry, args.axis), start, end)
    ]
    records = [ledger_record(row) for row in rows]
    if args.csv:
        write_ledger_csv(out, records)  # the console's /ledger.csv columns and cell rule
        return 0
    columns = ["position", "version", "recorded_at", "occurred_at", "type", "change", "late"]
    table = [
        [
            str(record["position"]),
            str(record["version"]),
            record["recorded_at"],
            record["occurred_at"],
            record["type"],
            _change(record),
            "late" if record["late"] else ("stale" if record["stale_count"] else ""),
            *(str(record[bucket]) for bucket in BUCKETS),
        ]
        for record in records
    ]
    _write_table(out, [*columns, *BUCKETS], table)
    return 0


def _inside(time: dt.datetime, start: dt.datetime | None, end: dt.datetime | None) -> bool:
    return (start is None or start <= time) and (end is None or time < end)


def list_all_movements(
    client: LedgerClient, sku: str, location_id: str, axis: str, page_size: int = HISTORY_PAGE_SIZE
) -> Iterator[Any]:
    """Every entry of the position in ``axis`` order, all pages."""
    token = ""
    while True:
        page = client.list_movements(
            sku, location_id, axis=axis, page_size=page_size, page_token=token
        )
        yield from page.entries
        token = page.next_page_token
        if not token:
            return


def _change(record: dict[str, Any]) -> str:
    if record["type"] == "adjustment":
        return f"{record['delta']:+d}"
    if record["type"] == "cycle_count":
        return f"={record['counted']}"
    return str(record["qty"]) if record["qty"] else ""


# ---- verify -------------------------------------------------------------------------------


def _verify(client: LedgerClient, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if (args.sku is None) != (args.location_id is None):
        raise BadInput("give both --sku and --location-id, or neither (the whole ledger)")
    broken: list[dict[str, Any]] = []
    last: Any = None
    stream = client.verify_ledger(
        sku=args.sku or "", location_id=args.location_id or "", timeout=args.timeout
    )
    with stream:
        for progress in stream:
            last = progress
            broken.extend(_broken_link(link) for link in progress.broken_links)
            if not progress.done:
                err.write(
                    f"verified {progress.positions_checked} positions,"
                    f" {progress.entries_checked} entries\n"
                )
                err.flush()
    if last is None or not last.done:
        raise RuntimeError("VerifyLedger ended without its final message")
    ok = bool(last.ok) and not broken
    result = {
        "ok": ok,
        "positions_checked": int(last.positions_checked),
        "entries_checked": int(last.entries_checked),
        "broken_links": broken,
    }
    if args.json:
        out.write(json.dumps(result) + "\n")
    elif ok:
        out.write(
            f"ok: {result['positions_checked']} positions, {result['entries_checked']} entries,"
            " every chain intact\n"
        )
    else:
        out.write(f"BROKEN: {len(broken)} position(s) with a broken chain\n")
        columns = ["sku", "location_id", "version", "position", "reason", "detail"]
        _write_table(out, columns, [[str(link[c]) for c in columns] for link in broken])
    return 0 if ok else 1


def _broken_link(link: Any) -> dict[str, Any]:
    return {
        "sku": link.sku,
        "location_id": link.location_id,
        "version": int(link.version),
        "position": int(link.position),
        "reason": link.reason,
        "detail": link.detail,
        "expected_hash": link.expected_hash,
        "stored_hash": link.stored_hash,
    }


# ---- output -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _write_table(out: TextIO, header: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(padded).rstrip()

    out.write(line(header) + "\n")
    for row in rows:
        out.write(line(row) + "\n")


def _is_number(text: str) -> bool:
    return text.lstrip("+-=").isdigit() or text == ""
