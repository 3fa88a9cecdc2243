"""The reconcile page: an uploaded count (CSV) against the ledger's effective balance at T,
through the gRPC API, and, after an explicit confirmation by a token with every scope
(``admin``), the variances posted as cycle counts (docs/console.md, docs/audit.md).

The file format, the comparison and the counts' ``message_id`` are those of ``ledger
reconcile`` (ledger/audit/reconcile.py), so a count posted from the console and the same
count posted by the CLI are one count: the second is a DUPLICATE.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import io
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from inventory_ledger_client import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    movement,
)
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from entrypoints.console.app import InputError, Visit
from entrypoints.ledger_fold import InstantError, format_instant, parse_instant

SOURCE = "reconcile"
HEADER = ("sku", "location_id", "on_hand")
LOT_COLUMN = "lot_id"
UPLOAD_BYTES_MAX = 2 * 1024 * 1024
ROWS_MAX = 2000
QUANTITY_MAX = 10**15
IDENTIFIER_LENGTH_MAX = 128
REASON_LENGTH_MAX = 256
POST_BATCH = 500
CALLS_IN_FLIGHT_MAX = 8
PENDING_KEY = "reconcile"
# Every scope of docs/security.md; `admin` implies them all, and only a token holding all of
# them may post (the ledger tells the console which scope a token lacks, never which it has).
SCOPES = ("query", "reserve", "record", "policy", "audit")


@dataclass(frozen=True)
class CountRow:
    line: int
    sku: str
    location_id: str
    counted: int
    lot_id: str | None


@dataclass
class Variance:
    sku: str
    location_id: str
    lot_id: str | None
    counted: int | None  # None: NOT_COUNTED
    ledger_on_hand: int
    status: str  # OVER, SHORT, NOT_COUNTED
    line: int = 0

    @property
    def variance(self) -> int | None:
        return None if self.counted is None else self.counted - self.ledger_on_hand

    def view(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "location_id": self.location_id,
            "lot_id": self.lot_id or "",
            "key": f"{self.sku}@{self.location_id}",
            "counted": "" if self.counted is None else self.counted,
            "ledger_on_hand": self.ledger_on_hand,
            "variance": "" if self.variance is None else self.variance,
            "status": self.status,
            "line": self.line or "",
        }


@dataclass
class Report:
    report_id: str
    name: str
    as_of: dt.datetime
    rows: int
    variances: list[Variance] = field(default_factory=list)
    not_counted: list[Variance] = field(default_factory=list)
    not_counted_note: str = ""

    @property
    def units_over(self) -> int:
        return sum(v.variance or 0 for v in self.variances if v.status == "OVER")

    @property
    def units_short(self) -> int:
        return -sum(v.variance or 0 for v in self.variances if v.status == "SHORT")


# ---- reading the file -------------------------------------------------------------------------


def read_counts(data: bytes) -> tuple[list[CountRow], list[tuple[int, str]]]:
    """The rows of a count file and its problems as (line, description)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return [], [(0, f"not UTF-8: {error.reason} at byte {error.start}")]
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        return [], [(0, "empty file: the header sku,location_id,on_hand[,lot_id] is missing")]
    names = [cell.strip().lower() for cell in lines[0]]
    columns = None
    for header in (HEADER, (*HEADER, LOT_COLUMN)):
        if sorted(names) == sorted(header):
            columns = {name: names.index(name) for name in header}
    if columns is None:
        return [], [(1, "the header must be sku,location_id,on_hand (and optionally lot_id)")]
    rows: list[CountRow] = []
    problems: list[tuple[int, str]] = []
    seen: dict[tuple[str, str, str | None], int] = {}
    for number, cells in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        problem, row = _row(number, cells, columns, seen)
        if problem:
            problems.append((number, problem))
        elif row is not None:
            rows.append(row)
    if len(rows) > ROWS_MAX:
        problems.append((0, f"more than {ROWS_MAX} rows; split the file"))
    return rows, problems


def _row(
    number: int,
    cells: list[str],
    columns: dict[str, int],
    seen: dict[tuple[str, str, str | None], int],
) -> tuple[str, CountRow | None]:
    if len(cells) != len(columns):
        return f"expected {len(columns)} fields, found {len(cells)}", None
    sku, location_id, on_hand = (cells[columns[name]] for name in HEADER)
    lot_id = (cells[columns[LOT_COLUMN]] or None) if LOT_COLUMN in columns else None
    for name, value in (("sku", sku), ("location_id", location_id), (LOT_COLUMN, lot_id)):
        if value is None:
            continue
        if not value or len(value) > IDENTIFIER_LENGTH_MAX or not value.isprintable():
            return f"{name} {value!r}: 1-{IDENTIFIER_LENGTH_MAX} printable characters", None
    first = seen.setdefault((sku, location_id, lot_id), number)
    if first != number:
        return f"duplicate of line {first}", None
    value = on_hand.strip(" ")
    if not value.isascii() or not value.isdigit():
        return f"on_hand must be a whole number of at least 0, not {on_hand!r}", None
    if int(value) > QUANTITY_MAX:
        return f"on_hand must be at most {QUANTITY_MAX}", None
    return "", CountRow(number, sku, location_id, int(value), lot_id)


# ---- comparing ----------------------------------------------------------------------------


async def _bounded(calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    gate = asyncio.Semaphore(CALLS_IN_FLIGHT_MAX)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls)))


def _on_hand(position: Any, lot_id: str | None) -> int:
    if lot_id is None:
        return int(position.on_hand)
    return next((int(lot.on_hand) for lot in position.lots if lot.lot_id == lot_id), 0)


async def compare(visit: Visit, report: Report, rows: list[CountRow]) -> None:
    """Each row against on_hand of the effective balance at T (the lot's for a lot row)."""
    as_of = report.as_of
    positions = sorted({(row.sku, row.location_id) for row in rows})

    def call(sku: str, location_id: str) -> Callable[[], Awaitable[Any]]:
        return lambda: visit.client.get_position_as_of(sku, location_id, as_of, axis="effective")

    answers = await _bounded([call(sku, location_id) for sku, location_id in positions])
    at = dict(zip(positions, answers, strict=True))
    for row in rows:
        on_hand = _on_hand(at[(row.sku, row.location_id)], row.lot_id)
        if row.counted != on_hand:
            status = "OVER" if row.counted > on_hand else "SHORT"
            report.variances.append(
                Variance(
                    row.sku, row.location_id, row.lot_id, row.counted, on_hand, status, row.line
                )
            )
    await _not_counted(visit, report, rows, at)


async def _not_counted(
    visit: Visit, report: Report, rows: list[CountRow], at: dict[tuple[str, str], Any]
) -> None:
    """Positions (or lots) with stock at T at a counted location that the file leaves out.
    Listing a location's positions needs the `query` scope; without it this part is skipped
    and the page says so."""
    lot_file = any(row.lot_id is not None for row in rows)
    counted = {(row.sku, row.location_id, row.lot_id) for row in rows}
    try:
        candidates: list[tuple[str, str]] = []
        for location_id in sorted({row.location_id for row in rows}):
            async for position in visit.client.iter_positions(
                location_id=location_id, page_size=1000
            ):
                candidates.append((position.sku, position.location_id))
    except PermissionDenied as denied:
        report.not_counted_note = (
            f"Uncounted positions were not looked for: the token lacks the "
            f"“{denied.metadata.get('scope', '')}” scope."
        )
        return
    unknown = [pair for pair in candidates if pair not in at]

    def call(sku: str, location_id: str) -> Callable[[], Awaitable[Any]]:
        return lambda: visit.client.get_position_as_of(
            sku, location_id, report.as_of, axis="effective"
        )

    answers = await _bounded([call(sku, location_id) for sku, location_id in unknown])
    at = {**at, **dict(zip(unknown, answers, strict=True))}
    for sku, location_id in candidates:
        position = at[(sku, location_id)]
        if lot_file and len(position.lots):
            for lot in position.lots:
                if lot.on_hand and (sku, location_id, lot.lot_id) not in counted:
                    report.not_counted.append(
                        Variance(
                            sku, location_id, lot.lot_id, None, int(lot.on_hand), "NOT_COUNTED"
                        )
                    )
        elif position.on_hand and not any((sku, location_id) == (s, loc) for s, loc, _ in counted):
            report.not_counted.append(
                Variance(sku, location_id, None, None, int(position.on_hand), "NOT_COUNTED")
            )


# ---- posting --------------------------------------------------------------------------------


def count_message_id(
    as_of: dt.datetime, sku: str, location_id: str, counted: int, lot_id: str | None
) -> str:
    """The id ``ledger reconcile --post`` gives the same count (ledger/audit/reconcile.py)."""
    utc = as_of.astimezone(dt.UTC)
    parts: list[Any] = [utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), sku, location_id, counted]
    if lot_id is not None:
        parts.append(lot_id)
    key = json.dumps(parts, ensure_ascii=False)
    return "reconcile-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def count_reason(name: str, as_of: dt.datetime, variance: Variance) -> str:
    utc = as_of.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    tail = (
        f" as of {utc}: counted {variance.counted},"
        f" ledger {variance.ledger_on_hand}, variance {variance.variance:+d}"
    )
    name = "".join("?" if not c.isprintable() else c for c in name)
    room = REASON_LENGTH_MAX - len("reconcile ") - len(tail)
    if len(name) > room:
        name = name[: max(0, room - 1)] + "…"
    return f"reconcile {name}{tail}"


async def missing_scope(visit: Visit) -> str | None:
    """The first scope the session's token lacks, found with calls that change nothing (each
    is refused by validation once the scope check has passed); None: it holds them all."""
    client = visit.client
    probes: dict[str, Callable[[], Awaitable[Any]]] = {
        "query": lambda: client.get_projection_status(),
        "audit": lambda: client.get_position_as_of("", "", dt.datetime.now(dt.UTC)),
        "policy": lambda: client.get_item_policy(""),
        "reserve": lambda: client.get_reservation(""),
        "record": lambda: client.record_movements([]),
    }
    for scope in SCOPES:
        try:
            await probes[scope]()
        except PermissionDenied as denied:
            if denied.reason == "MISSING_SCOPE":
                return denied.metadata.get("scope", scope)
            raise
        except (InvalidArgument, NotFound):
            pass  # past the scope check: the request itself was refused, as intended
    return None


async def post(visit: Visit, report: Report) -> dict[str, int]:
    outcomes = {"recorded": 0, "duplicate": 0}
    movements = [
        movement(
            "cycle_count",
            source=SOURCE,
            sku=v.sku,
            location_id=v.location_id,
            message_id=count_message_id(
                report.as_of, v.sku, v.location_id, v.counted or 0, v.lot_id
            ),
            counted=v.counted or 0,
            occurred_at=report.as_of,
            reason=count_reason(report.name, report.as_of, v),
            lot_id=v.lot_id or "",
        )
        for v in report.variances
    ]
    correlation_id = f"console-reconcile-{report.report_id[:16]}"
    for start in range(0, len(movements), POST_BATCH):
        answer = await visit.client.record_movements(
            movements[start : start + POST_BATCH], correlation_id=correlation_id
        )
        for result in answer.results:
            outcomes["recorded" if result.outcome == 1 else "duplicate"] += 1
    return outcomes


# ---- the pages ------------------------------------------------------------------------------


def _report_context(report: Report) -> dict[str, Any]:
    return {
        "report": report,
        "as_of_text": format_instant(report.as_of),
        "variances": [v.view() for v in report.variances],
        "not_counted": [v.view() for v in report.not_counted],
    }


async def reconcile_form(request: Request, visit: Visit) -> Response:
    return visit.console.render(
        request, visit.session, "reconcile.html", {"report": None, "problems": []}
    )


async def reconcile_upload(request: Request, visit: Visit) -> Response:
    """POST (CSRF-checked): compare the uploaded counts; keep the report in the session for
    the confirmation step."""
    form = await request.form()  # parsed by form_page: at most one file, a few fields
    upload = form.get("counts")
    as_of_text = str(form.get("as_of") or "").strip()
    try:
        as_of = parse_instant(as_of_text, "as_of")
    except (InstantError, IndexError):
        raise InputError("as_of must be an RFC 3339 time such as 2026-03-31T23:59:00Z") from None
    if as_of > dt.datetime.now(dt.UTC):
        raise InputError("as_of is in the future: a count dated later would override facts")
    if not isinstance(upload, UploadFile):
        raise InputError("choose a count file (CSV) to upload")
    data = await upload.read(UPLOAD_BYTES_MAX + 1)
    if len(data) > UPLOAD_BYTES_MAX:
        raise InputError(f"the file is larger than {UPLOAD_BYTES_MAX} bytes")
    rows, problems = read_counts(data)
    context: dict[str, Any] = {"report": None, "problems": problems, "may_post": False}
    if not problems:
        report = Report(
            secrets.token_urlsafe(16), upload.filename or "upload.csv", as_of, len(rows)
        )
        await compare(visit, report, rows)
        visit.console.pending(visit.session)[PENDING_KEY] = report
        context.update(_report_context(report))
        context["may_post"] = bool(report.variances) and await missing_scope(visit) is None
    status_code = 400 if problems else 200
    return visit.console.render(
        request, visit.session, "reconcile.html", context, status_code=status_code
    )


async def reconcile_post(request: Request, visit: Visit) -> Response:
    """POST (CSRF-checked): post the session's pending report once it is confirmed."""
    form = await request.form()
    pending = visit.console.pending(visit.session)
    report = pending.get(PENDING_KEY)
    if not isinstance(report, Report) or form.get("report_id") != report.report_id:
        raise InputError("no such report is waiting to be posted; upload the counts again")
    if form.get("confirm") != "yes":
        raise InputError("tick the confirmation to post the counts; nothing was posted")
    # Taken before the first await: of two confirmations at once, one finds it gone (400).
    del pending[PENDING_KEY]
    try:
        scope = await missing_scope(visit)
    except BaseException:
        pending.setdefault(PENDING_KEY, report)
        raise
    if scope is not None:
        pending.setdefault(PENDING_KEY, report)  # not posted: it may still be, by an admin
        return visit.console.error_page(
            request,
            visit.session,
            403,
            "Not allowed",
            f"Posting counts needs the “admin” scope; your token lacks “{scope}”. Nothing "
            "was posted.",
            missing_scope="admin",
        )
    outcomes = await post(visit, report)
    context = {**_report_context(report), "posted": outcomes, "problems": []}
    return visit.console.render(request, visit.session, "reconcile.html", context)
