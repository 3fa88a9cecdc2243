"""The console's pages: positions, a position's stock ledger (and its CSV), as-of balances
with a chart, and hash-chain verification. Each one reads the query string, calls the ledger
through the visit's client and renders a template; none keeps state between requests."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from inventory_ledger_client import InvalidArgument, LedgerError, PermissionDenied
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from entrypoints.console.app import InputError, Visit
from entrypoints.console.chart import Series, chart_geometry
from entrypoints.ledger_csv import COLUMNS as CSV_COLUMNS
from entrypoints.ledger_csv import write_ledger_csv
from entrypoints.ledger_fold import (
    AXES,
    BUCKETS,
    BalanceRow,
    InstantError,
    PositionFold,
    entry_time,
    entry_type_name,
    format_instant,
    parse_instant,
    running_balances,
)

T = TypeVar("T")

POSITION_BUCKETS = (*BUCKETS[:-1], "expired", "available")
POSITIONS_PAGE_SIZE = 50
CHANNELS_MAX = 12
AVAILABILITY_SKUS_MAX = 20
CALLS_IN_FLIGHT_MAX = 8
LEDGER_PAGE_SIZE_DEFAULT = 100
LEDGER_PAGE_SIZE_MAX = 1000
LEDGER_FETCH_PAGE_SIZE = 1000
# The running balance is folded from a position's first entry: at most this many entries.
LEDGER_FOLD_ENTRIES_MAX = 100_000
CHART_POINTS_DEFAULT = 24
CHART_POINTS_MAX = 200
CHART_STEPS_MAX = 2000  # entry instants drawn as steps, beyond the sampled points
# How long the console follows one VerifyLedger stream (the whole ledger may take long; a
# browser that goes away cancels it sooner).
VERIFY_TIMEOUT_SECONDS = 3600.0
# Verification is started only from the console's own pages (or a typed address).
VERIFY_FETCH_SITES = ("same-origin", "none")


# ---- input ---------------------------------------------------------------------------------


def _text(request: Request, name: str, *, required: bool = False, limit: int = 128) -> str:
    value = request.query_params.get(name, "").strip()
    if required and not value:
        raise InputError(f"{name} is required")
    if len(value) > limit:
        raise InputError(f"{name} is longer than {limit} characters")
    return value


def _instant(request: Request, name: str) -> dt.datetime | None:
    value = request.query_params.get(name, "").strip()
    if not value:
        return None
    try:
        return parse_instant(value, name)
    except InstantError as error:
        raise InputError(str(error)) from None


def _axis(request: Request) -> str:
    axis = request.query_params.get("axis", "recorded").strip().lower() or "recorded"
    if axis not in AXES:
        raise InputError(f"axis must be recorded or effective, not {axis!r}")
    return axis


def _whole(request: Request, name: str, default: int, low: int, high: int) -> int:
    value = request.query_params.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise InputError(f"{name} must be a whole number from {low} to {high}")
    return int(value)


def position_key(sku: str, location_id: str) -> str:
    """The ``data-position`` value of a position: ``SKU@LOCATION``."""
    return f"{sku}@{location_id}"


def stamp(value: Any) -> str:
    """A protobuf Timestamp (or None/unset) as RFC 3339 UTC text, '' when unset."""
    if value is None or (value.seconds == 0 and value.nanos == 0):
        return ""
    return format_instant(value.ToDatetime(tzinfo=dt.UTC))


async def _bounded(calls: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run calls at most :data:`CALLS_IN_FLIGHT_MAX` at a time, answers in order."""
    gate = asyncio.Semaphore(CALLS_IN_FLIGHT_MAX)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls)))


# ---- 1. positions --------------------------------------------------------------------------


def _position_view(position: Any) -> dict[str, Any]:
    buckets = {bucket: int(getattr(position, bucket)) for bucket in POSITION_BUCKETS}
    holds = [
        {
            "reservation_id": hold.reservation_id,
            "channel": hold.channel,
            "order_ref": hold.order_ref,
            "status": "committed" if hold.status == 2 else "active",
            "qty": int(hold.qty),
            "shipped": int(hold.shipped),
            "expires_at": stamp(hold.expires_at) if hold.HasField("expires_at") else "",
        }
        for hold in position.holds
    ]
    return {
        "sku": position.sku,
        "location_id": position.location_id,
        "key": position_key(position.sku, position.location_id),
        "buckets": buckets,
        "fences": dict(sorted(position.fences.items())),
        "version": int(position.version),
        "updated_at": stamp(position.updated_at) if position.HasField("updated_at") else "",
        "holds": holds,
    }


def _channel_list(text: str) -> list[str]:
    channels = [part.strip() for part in text.replace(" ", ",").split(",") if part.strip()]
    return list(dict.fromkeys(channels))


async def positions(request: Request, visit: Visit) -> Response:
    """Positions of a SKU, of a location, or one position; buckets, holds, and each channel's
    availability at each of them."""
    sku = _text(request, "sku")
    location_id = _text(request, "location_id")
    page_token = _text(request, "page_token", limit=4096)
    default_channels = ",".join(visit.console.config.channels)
    channels_text = request.query_params.get("channels", default_channels)
    found: list[Any] = []
    next_token = ""
    if sku and location_id:
        found = [await visit.client.get_position(sku, location_id, include_holds=True)]
    elif sku or location_id:
        page = await visit.client.list_positions(
            sku=sku,
            location_id=location_id,
            include_holds=True,
            page_size=POSITIONS_PAGE_SIZE,
            page_token=page_token,
        )
        found, next_token = list(page.positions), page.next_page_token
    views = [_position_view(position) for position in found]
    channels = _channel_list(channels_text)
    for view in views:
        channels.extend(view["fences"])
        channels.extend(hold["channel"] for hold in view["holds"] if hold["channel"])
    channels = list(dict.fromkeys(channels))[:CHANNELS_MAX]
    availability = await _availability(visit, [view["sku"] for view in views], channels)
    for view in views:
        view["channels"] = {
            channel: _channel_cell(availability.get((view["sku"], channel)), view["location_id"])
            for channel in channels
        }
    return visit.console.render(
        request,
        visit.session,
        "positions.html",
        {
            "sku": sku,
            "location_id": location_id,
            "channels_text": channels_text,
            "channels": channels,
            "positions": views,
            "buckets": POSITION_BUCKETS,
            "searched": bool(sku or location_id),
            "next_page_token": next_token,
        },
    )


async def _availability(
    visit: Visit, skus: Sequence[str], channels: Sequence[str]
) -> dict[tuple[str, str], dict[str, Any]]:
    """(sku, channel) -> {"locations": {location: {available_to, eligible}}}, or
    {"refused": why} when the token may not act for the channel."""
    pairs = [
        (sku, channel)
        for sku in list(dict.fromkeys(skus))[:AVAILABILITY_SKUS_MAX]
        for channel in channels
    ]

    def call(sku: str, channel: str) -> Callable[[], Awaitable[dict[str, Any]]]:
        async def run() -> dict[str, Any]:
            try:
                answer = await visit.client.get_availability(sku, channel)
            except PermissionDenied as denied:
                if denied.reason == "CHANNEL_NOT_ALLOWED":
                    return {"refused": "not allowed"}
                raise
            except InvalidArgument:
                return {"refused": "invalid channel"}
            locations = {
                location.location_id: {
                    "available_to": int(location.available_to),
                    "eligible": bool(location.eligible),
                }
                for location in answer.locations
            }
            return {"locations": locations}

        return run

    answers = await _bounded(call(sku, channel) for sku, channel in pairs)
    return dict(zip(pairs, answers, strict=True))


def _channel_cell(answer: dict[str, Any] | None, location_id: str) -> dict[str, Any] | None:
    if answer is None:
        return None
    if "refused" in answer:
        return answer
    found: dict[str, Any] | None = answer["locations"].get(location_id)
    return found


# ---- 2. stock ledger -----------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerQuery:
    """The stock-ledger page's parameters (the CSV link carries the same)."""

    sku: str
    location_id: str
    axis: str
    start: dt.datetime | None
    end: dt.datetime | None
    page: int
    page_size: int
    through: int | None  # entries with a global position above this are left out

    def params(self, **changes: Any) -> dict[str, str]:
        values = {
            "sku": self.sku,
            "location_id": self.location_id,
            "axis": self.axis,
            "from": format_instant(self.start),
            "to": format_instant(self.end),
            "page": str(self.page),
            "page_size": str(self.page_size),
            "through": "" if self.through is None else str(self.through),
        }
        values.update({key: str(value) for key, value in changes.items()})
        return {key: value for key, value in values.items() if value}


def _ledger_query(request: Request) -> LedgerQuery:
    through = request.query_params.get("through", "").strip()
    if through and not through.isdigit():
        raise InputError("through must be a ledger position (a whole number)")
    return LedgerQuery(
        sku=_text(request, "sku"),
        location_id=_text(request, "location_id"),
        axis=_axis(request),
        start=_instant(request, "from"),
        end=_instant(request, "to"),
        page=_whole(request, "page", 1, 1, 10**9),
        page_size=_whole(request, "page_size", LEDGER_PAGE_SIZE_DEFAULT, 1, LEDGER_PAGE_SIZE_MAX),
        through=int(through) if through else None,
    )


@dataclass(frozen=True)
class LedgerRows:
    """The rows of one page of the stock ledger and what the page says about them."""

    rows: list[BalanceRow]
    through: int
    window_rows: int  # rows in the whole window (every page)
    pages: int


async def ledger_rows(visit: Visit, query: LedgerQuery) -> LedgerRows:
    """The position's entries (ListMovements order on the axis) folded from the first, then
    the window and page cut out: so each row's balance is the position's after that entry,
    whatever the window starts at. Whether an entry is late depends on every entry before it
    in ledger order: on the recorded axis those all lie before the window's end (recorded_at
    never decreases along the ledger); on the effective axis they may lie after it, so there
    every entry is fetched and the end is cut afterwards, as ``ledger audit history`` does.
    The fold runs off the event loop (100,000 entries take most of a second)."""
    end = query.end if query.axis == "recorded" else None
    entries = await entries_before(visit, query.sku, query.location_id, query.axis, end)
    through = query.through
    if through is None:
        through = max((int(entry.position) for entry in entries), default=0)
    else:
        entries = [entry for entry in entries if entry.position <= through]
    window = await asyncio.to_thread(_folded_window, entries, query)
    first = (query.page - 1) * query.page_size
    pages = max(1, -(-len(window) // query.page_size))
    return LedgerRows(window[first : first + query.page_size], through, len(window), pages)


def _folded_window(entries: list[Any], query: LedgerQuery) -> list[BalanceRow]:
    """The running balances of ``entries``, then the rows inside the window."""
    return [
        row
        for row in running_balances(entries, query.axis)
        if (query.start is None or entry_time(row.entry, query.axis) >= query.start)
        and (query.end is None or entry_time(row.entry, query.axis) < query.end)
    ]


async def entries_before(
    visit: Visit, sku: str, location_id: str, axis: str, end: dt.datetime | None
) -> list[Any]:
    """The position's entries with time < ``end`` on ``axis`` (all: None), ListMovements
    order, at most :data:`LEDGER_FOLD_ENTRIES_MAX`."""
    entries: list[Any] = []
    token = ""
    while True:
        page = await visit.client.list_movements(
            sku,
            location_id,
            axis=axis,
            end=end,
            page_size=LEDGER_FETCH_PAGE_SIZE,
            page_token=token,
        )
        entries.extend(page.entries)
        if len(entries) > LEDGER_FOLD_ENTRIES_MAX:
            raise InputError(
                f"the position has more than {LEDGER_FOLD_ENTRIES_MAX} entries to fold; "
                "use `ledger audit history`"
            )
        token = page.next_page_token
        if not token:
            return entries


def _row_view(row: BalanceRow) -> dict[str, Any]:
    entry = row.entry
    return {
        "position": int(entry.position),
        "ledger_position": int(entry.ledger_position),
        "version": int(entry.version),
        "type": entry_type_name(entry),
        "qty": int(entry.qty),
        "delta": int(entry.delta),
        "counted": int(entry.counted),
        "occurred_at": stamp(entry.occurred_at),
        "recorded_at": stamp(entry.recorded_at),
        "source": entry.source,
        "message_id": entry.message_id,
        "request_id": entry.request_id,
        "correlation_id": entry.correlation_id,
        "actor": entry.actor,
        "reservation_id": entry.reservation_id,
        "transfer_id": entry.transfer_id,
        "lot_id": entry.lot_id,
        "reason": entry.reason,
        "late": row.late,
        "stale_count": row.stale_count,
        "balance": row.balance.as_dict(),
        "details": _entry_details(entry),
    }


def _entry_details(entry: Any) -> list[tuple[str, str]]:
    """Every other field the entry has set, as (name, text), for the details disclosure."""
    shown = (set(CSV_COLUMNS) - {"ledger_position"}) | {"sku", "location_id"}
    details = []
    for descriptor, value in entry.ListFields():
        if descriptor.name in shown:
            continue
        items = list(value) if descriptor.is_repeated else [value]
        text = ", ".join(_field_text(descriptor, item) for item in items)
        details.append((descriptor.name, text))
    return details


def _field_text(descriptor: Any, value: Any) -> str:
    if descriptor.message_type is not None and descriptor.message_type.name == "Timestamp":
        return stamp(value)
    if descriptor.message_type is not None:  # LedgerEntryLot
        return " ".join(f"{field.name}={item}" for field, item in value.ListFields())
    if descriptor.enum_type is not None:
        return str(descriptor.enum_type.values_by_number[value].name)
    return str(value)


async def stock_ledger(request: Request, visit: Visit) -> Response:
    query = _ledger_query(request)
    result: LedgerRows | None = None
    if query.sku and query.location_id:
        result = await ledger_rows(visit, query)
    elif query.sku or query.location_id:
        raise InputError("give both sku and location_id")
    pinned = query if result is None else replace(query, through=result.through)
    return visit.console.render(
        request,
        visit.session,
        "ledger.html",
        {
            "query": query,
            "from_text": format_instant(query.start),
            "to_text": format_instant(query.end),
            "key": position_key(query.sku, query.location_id),
            "result": result,
            "rows": [_row_view(row) for row in result.rows] if result else [],
            "buckets": BUCKETS,
            "csv_params": pinned.params(),
            "previous_params": pinned.params(page=query.page - 1) if query.page > 1 else None,
            "next_params": (
                pinned.params(page=query.page + 1)
                if result is not None and query.page < result.pages
                else None
            ),
        },
    )


def ledger_csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """The rows' CSV: the columns and cells of ``ledger audit history --csv``
    (entrypoints.ledger_csv)."""
    out = io.StringIO()
    write_ledger_csv(out, ({**row, **row["balance"]} for row in rows))
    return out.getvalue()


async def stock_ledger_csv(request: Request, visit: Visit) -> Response:
    """The rows the stock-ledger page with the same parameters shows (``through`` pins them)."""
    query = _ledger_query(request)
    if not (query.sku and query.location_id):
        raise InputError("give both sku and location_id")
    result = await ledger_rows(visit, query)
    name = f"ledger-{query.sku}-{query.location_id}-{query.axis}-p{query.page}.csv"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Response(
        ledger_csv_text([_row_view(row) for row in result.rows]),
        media_type="text/csv; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="{safe}"',
            "cache-control": "no-store",
        },
    )


# ---- 3. as-of ------------------------------------------------------------------------------


async def as_of(request: Request, visit: Visit) -> Response:
    sku = _text(request, "sku")
    location_id = _text(request, "location_id")
    axis = _axis(request)
    at = _instant(request, "at")
    known_at = _instant(request, "known_at")
    chart_from = _instant(request, "chart_from")
    chart_to = _instant(request, "chart_to")
    points = _whole(request, "points", CHART_POINTS_DEFAULT, 2, CHART_POINTS_MAX)
    context: dict[str, Any] = {
        "sku": sku,
        "location_id": location_id,
        "axis": axis,
        "at_text": request.query_params.get("at", "").strip(),
        "known_at_text": format_instant(known_at),
        "chart_from_text": format_instant(chart_from),
        "chart_to_text": format_instant(chart_to),
        "points": points,
        "key": position_key(sku, location_id),
        "position": None,
        "chart": None,
        "buckets": POSITION_BUCKETS,
    }
    if sku and location_id:
        at = at or dt.datetime.now(dt.UTC)
        context["at_text"] = format_instant(at)
        position = await visit.client.get_position_as_of(
            sku, location_id, at, axis=axis, known_at=known_at, include_holds=True
        )
        context["position"] = _position_view(position)
        start, end = await _chart_window(visit, sku, location_id, at, chart_from, chart_to)
        context["chart"] = await _chart(visit, sku, location_id, start, end, points, at, known_at)
    elif sku or location_id:
        raise InputError("give both sku and location_id")
    return visit.console.render(request, visit.session, "as_of.html", context)


async def _chart_window(
    visit: Visit,
    sku: str,
    location_id: str,
    at: dt.datetime,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> tuple[dt.datetime, dt.datetime]:
    """The chart's window: as given, else from the position's first entry (on either axis) to
    the as-of instant."""
    end = end or at
    if start is None:
        firsts: list[dt.datetime] = []
        for axis in AXES:
            page = await visit.client.list_movements(sku, location_id, axis=axis, page_size=1)
            firsts.extend(entry_time(entry, axis) for entry in page.entries)
        start = min(firsts) if firsts else end - dt.timedelta(days=1)
    if start >= end:
        start = end - dt.timedelta(days=1)
    return start, end


async def _chart(
    visit: Visit,
    sku: str,
    location_id: str,
    start: dt.datetime,
    end: dt.datetime,
    points: int,
    at: dt.datetime,
    known_at: dt.datetime | None,
) -> dict[str, Any]:
    """on_hand and available across the window on both axes (the effective one with
    ``known_at`` when given): the position's entries fetched once per axis and folded
    (entrypoints.ledger_fold, which answers what GetPositionAsOf answers at any instant),
    evaluated at ``points`` evenly spaced instants (the dots) and at every entry inside the
    window (the steps)."""
    step = (end - start) / (points - 1)
    samples = [start + step * index for index in range(points)]
    series = []
    for axis in AXES:
        entries = await entries_before(
            visit, sku, location_id, axis, end + dt.timedelta(microseconds=1)
        )
        if axis == "effective" and known_at is not None:
            entries = [e for e in entries if entry_time(e, "recorded") <= known_at]
        changes = {entry_time(e, axis) for e in entries if start < entry_time(e, axis) < end}
        instants = sorted(set(samples) | set(sorted(changes)[:CHART_STEPS_MAX]))
        balances = await asyncio.to_thread(balances_at, entries, axis, instants)
        for bucket in ("on_hand", "available"):
            values = [(t, int(getattr(b, bucket))) for t, b in zip(instants, balances, strict=True)]
            series.append(Series(axis=axis, bucket=bucket, values=values))
    return chart_geometry(series, start, end, marker=at, dots_at=set(samples))


def balances_at(entries: Sequence[Any], axis: str, instants: Sequence[dt.datetime]) -> list[Any]:
    """The position at each of ``instants`` (ascending): the entries with a time on ``axis``
    up to it folded in ListMovements order, holds judged at that instant."""
    fold = PositionFold()
    balances = []
    index = 0
    for instant in instants:
        while index < len(entries) and entry_time(entries[index], axis) <= instant:
            fold.apply(entries[index])
            index += 1
        balances.append(fold.balance(instant))
    return balances


# ---- 4. verify -----------------------------------------------------------------------------


def _verify_target(request: Request) -> tuple[str, str]:
    sku = _text(request, "sku")
    location_id = _text(request, "location_id")
    if bool(sku) != bool(location_id):
        raise InputError("give both sku and location_id for one position, or neither")
    return sku, location_id


async def verify_form(request: Request, visit: Visit) -> Response:
    sku = _text(request, "sku")
    location_id = _text(request, "location_id")
    return visit.console.render(
        request,
        visit.session,
        "verify.html",
        {"sku": sku, "location_id": location_id, "result": None},
    )


def _progress_view(progress: Any) -> dict[str, Any]:
    return {
        "positions_checked": int(progress.positions_checked),
        "entries_checked": int(progress.entries_checked),
        "done": bool(progress.done),
        "ok": bool(progress.ok),
        "broken_links": [
            {
                "key": position_key(link.sku, link.location_id),
                "sku": link.sku,
                "location_id": link.location_id,
                "version": int(link.version),
                "position": int(link.position),
                "reason": link.reason,
                "detail": link.detail,
                "expected_hash": link.expected_hash,
                "stored_hash": link.stored_hash,
            }
            for link in progress.broken_links
        ],
    }


def _cross_site(request: Request, visit: Visit) -> Response | None:
    """A 403 page when another site's page asks to start a verification (an image or an
    EventSource pointing here: with open mode on loopback no cookie would be needed); None
    when the request comes from the console itself, a typed address or a browser that does
    not say (``Sec-Fetch-Site``)."""
    site = request.headers.get("sec-fetch-site")
    if site is None or site in VERIFY_FETCH_SITES:
        return None
    return visit.console.error_page(
        request,
        visit.session,
        403,
        "Not started",
        "A verification is started from the console's own verify page; this request came "
        f"from another site ({site}). Nothing was started.",
    )


async def _until_disconnected(request: Request, stream: Any) -> None:
    """Cancel ``stream`` (the VerifyLedger call) once the browser goes away."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    stream.cancel()


def _verify_stream(visit: Visit, sku: str, location_id: str) -> Any:
    return visit.client.verify_ledger(
        sku=sku, location_id=location_id, timeout=VERIFY_TIMEOUT_SECONDS
    )


async def verify_run(request: Request, visit: Visit) -> Response:
    """Without script: run the verification to its end, then show the result."""
    refused = _cross_site(request, visit)
    if refused is not None:
        return refused
    sku, location_id = _verify_target(request)
    last: Any = None
    stream = _verify_stream(visit, sku, location_id)
    watcher = asyncio.create_task(_until_disconnected(request, stream))
    try:
        async for progress in stream:
            last = progress
    finally:
        watcher.cancel()
        await stream.aclose()
    if last is None or not last.done:
        return Response(status_code=204)  # the browser went away: nobody reads a page
    return visit.console.render(
        request,
        visit.session,
        "verify.html",
        {
            "sku": sku,
            "location_id": location_id,
            "result": _progress_view(last) if last is not None else None,
        },
    )


async def verify_events(request: Request, visit: Visit) -> Response:
    """Server-sent events: ``progress`` while the ledger verifies, then ``result`` with the
    result block rendered as on :func:`verify_run`'s page (static/verify.js shows them)."""
    refused = _cross_site(request, visit)
    if refused is not None:
        return refused
    sku, location_id = _verify_target(request)
    stream = _verify_stream(visit, sku, location_id)
    template = visit.console.templates.get_template("verify_result.html")

    async def events() -> AsyncIterator[str]:
        watcher = asyncio.create_task(_until_disconnected(request, stream))
        try:
            async for progress in stream:
                view = _progress_view(progress)
                if view["done"]:
                    html = template.render(result=view)
                    yield _event("result", {"html": html, **view})
                    return
                yield _event("progress", view)
        except LedgerError as error:
            yield _event("failure", {"message": str(error)})
        finally:
            stream.cancel()  # before any await: this may run in a cancelled scope
            watcher.cancel()
            await stream.aclose()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
