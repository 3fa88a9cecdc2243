"""``ledger reconcile``: an external count against the ledger's effective balance at T.

The snapshot is a CSV with the header ``sku,location_id,on_hand`` (any column order): one
row per position, identifiers verbatim (quote those holding commas, quotes or line breaks),
``on_hand`` a whole number >= 0. The whole file is checked before anything is compared or
posted, so a bad file changes nothing.

A lot-level snapshot adds the column ``lot_id`` (contract §2 "Lots, serials and expiry"): one
row per (sku, location_id, lot_id), compared with the lot's ``on_hand`` in the position's
effective balance at T (a lot the ledger does not hold there counts 0) and posted as a
``cycle_count`` naming the lot. A row with an empty ``lot_id`` cell counts the whole position
as without the column. The ledger's lots with stock at T at a counted position (or, for an
uncounted position, at a counted location) that the file does not list are NOT_COUNTED per
lot. The report gains a ``lot_id`` column only for such files. Whether a row fits its SKU's
tracking is the writer's call: a posted count that does not (a LOT SKU's count without a lot,
an untracked SKU's with one) is refused and reported ``post=INVALID``, the others recorded.

Each row is compared with ``on_hand`` of the position's EFFECTIVE balance at T (contract §3):
facts that occurred by T count even if recorded later; facts that occurred after T do not.
Ledger positions at the snapshot's locations that the snapshot leaves out and that hold
stock at T are reported as NOT_COUNTED and never posted (docs/audit.md, Reconciliation).

``post=True`` records each variance as a ``cycle_count`` at T with a ``reason``. Its
``message_id`` is derived from (T, sku, location_id, counted) only, so posting the same
count again is answered DUPLICATE (or, when the reason text differs because the ledger
moved meanwhile, REUSED) and records nothing: both mean "already in the ledger". A lot's
count adds its ``lot_id`` to that key.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import TypeAdapter, ValidationError

from ledger.audit.as_of import Axis
from ledger.domain import limits
from ledger.domain.chain import format_time
from ledger.domain.movements import Movement, MovementType
from ledger.inputs import Identifier
from ledger.progress import QUIET, Progress, track
from ledger.use_cases.context import CallContext
from ledger.use_cases.movements import RECORDED

SOURCE = "reconcile"
HEADER = ("sku", "location_id", "on_hand")
LOT_COLUMN = "lot_id"  # optional: a lot-level snapshot
INVALID = "INVALID"  # post outcome of a count that does not fit the SKU's item tracking
POST_BATCH = 500
LIST_PAGE = 1000
REPORT_COLUMNS = (
    "sku",
    "location_id",
    "counted",
    "ledger_on_hand",
    "variance",
    "status",
    "line",
    "post",
)
_WHOLE_NUMBER = re.compile(r"[0-9]+", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_identifier: TypeAdapter[str] = TypeAdapter(Identifier)


class Status(StrEnum):
    OVER = "OVER"  # counted more than the ledger holds
    SHORT = "SHORT"  # counted less
    NOT_COUNTED = "NOT_COUNTED"  # on the ledger at a counted location, missing from the file


class SnapshotError(ValueError):
    """The input cannot be used; ``problems`` are (line number, description) pairs, line 0
    for a problem of the whole file or of the arguments."""

    def __init__(self, path: Path, problems: Sequence[tuple[int, str]]) -> None:
        self.path = path
        self.problems = list(problems)
        first = "; ".join(self.describe()[:3])
        more = f" (and {len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        super().__init__(f"{path}: {first}{more}")

    def describe(self) -> list[str]:
        return [f"line {line}: {text}" if line else text for line, text in self.problems]


@dataclass(frozen=True)
class SnapshotRow:
    line: int
    sku: str
    location_id: str
    counted: int
    lot_id: str | None = None  # lot-level snapshots: the lot counted (None: the position)


@dataclass(frozen=True)
class Snapshot:
    rows: list[SnapshotRow]
    lot_column: bool  # the file had the lot_id column


@dataclass
class Variance:
    sku: str
    location_id: str
    counted: int | None  # None for NOT_COUNTED
    ledger_on_hand: int
    status: Status
    line: int | None = None
    post: str = ""  # RECORDED, DUPLICATE or INVALID once posted
    lot_id: str | None = None  # the lot of a lot-level row (None: the whole position)

    @property
    def variance(self) -> int | None:
        return None if self.counted is None else self.counted - self.ledger_on_hand


@dataclass
class ReconcileResult:
    snapshot: Path
    as_of: datetime
    lines: int = 0
    matching: int = 0
    variances: list[Variance] = field(default_factory=list)
    not_counted: list[Variance] = field(default_factory=list)
    posted: bool = False
    recorded: int = 0
    duplicates: int = 0
    invalid: int = 0  # posts refused: the count does not fit the SKU's item tracking
    report_dir: Path | None = None
    lot_column: bool = False  # the snapshot had the lot_id column: compared per lot

    @property
    def units_over(self) -> int:
        return sum(v.variance or 0 for v in self.variances if v.status is Status.OVER)

    @property
    def units_short(self) -> int:
        return -sum(v.variance or 0 for v in self.variances if v.status is Status.SHORT)

    @property
    def net(self) -> int:
        return self.units_over - self.units_short

    @property
    def exit_code(self) -> int:
        """0 without variances, 1 with (posted or not). NOT_COUNTED alone is not a variance."""
        return 1 if self.variances else 0


# ---- the snapshot file ----


def read_snapshot(path: str | Path, progress: Progress = QUIET) -> list[SnapshotRow]:
    """Every row of the file, or SnapshotError listing every bad line."""
    return read_snapshot_file(path, progress).rows


def read_snapshot_file(path: str | Path, progress: Progress = QUIET) -> Snapshot:
    """The rows and whether the file is lot-level, or SnapshotError listing every bad line."""
    path = Path(path)
    rows: list[SnapshotRow] = []
    problems: list[tuple[int, str]] = []
    lot_column = [False]
    try:
        with path.open("rb") as file:
            for item in track(_parse(file, lot_column), progress, "read snapshot"):
                if isinstance(item, SnapshotRow):
                    rows.append(item)
                else:
                    problems.append(item)
    except OSError as error:
        raise SnapshotError(path, [(0, f"cannot read the file: {error}")]) from None
    if problems:
        raise SnapshotError(path, problems)
    return Snapshot(rows, lot_column[0])


class _NotUtf8(Exception):
    def __init__(self, line: int, error: UnicodeDecodeError) -> None:
        super().__init__(f"not UTF-8: {error.reason} at byte {error.start}")
        self.line = line


def _text_lines(file: BinaryIO) -> Iterator[str]:
    """Decoded line by line, so an encoding error is reported at its own line."""
    for number, raw in enumerate(file, 1):
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)  # spreadsheet exports often start so
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _NotUtf8(number, error) from None


def _parse(
    file: BinaryIO, lot_column: list[bool] | None = None
) -> Iterator[SnapshotRow | tuple[int, str]]:
    """Rows and (line, problem) pairs; ``lot_column[0]`` is set once the header has one."""
    reader = csv.reader(_text_lines(file), strict=True)
    seen: dict[tuple[str, str, str | None], int] = {}
    columns: dict[str, int] | None = None
    line = 1  # first physical line of the record being read (quoted cells may span lines)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            yield (reader.line_num, f"malformed CSV: {error}")
            return  # the reader cannot resynchronise after broken quoting
        except _NotUtf8 as error:
            yield (error.line, str(error))
            return
        start, line = line, reader.line_num + 1
        if not cells:
            continue  # a blank line
        if columns is None:
            columns = _header(cells)
            if columns is None:
                yield (
                    start,
                    f"header must be {','.join(HEADER)} (any order; {LOT_COLUMN} may be added),"
                    f" not {cells!r}",
                )
                return
            if lot_column is not None:
                lot_column[0] = LOT_COLUMN in columns
            continue
        yield from _row(start, cells, columns, seen)
    if columns is None:
        yield (1, f"empty file: expected the header {','.join(HEADER)}")


def _header(cells: list[str]) -> dict[str, int] | None:
    names = [cell.strip().lower() for cell in cells]
    for header in (HEADER, (*HEADER, LOT_COLUMN)):
        if sorted(names) == sorted(header):
            return {name: names.index(name) for name in header}
    return None


def _row(
    line: int,
    cells: list[str],
    columns: dict[str, int],
    seen: dict[tuple[str, str, str | None], int],
) -> Iterator[SnapshotRow | tuple[int, str]]:
    if len(cells) != len(columns):
        yield (
            line,
            f"expected {len(columns)} fields, found {len(cells)}"
            " (quote identifiers that contain commas)",
        )
        return
    sku, location_id, on_hand = (cells[columns[name]] for name in HEADER)
    # An empty lot cell: the row counts the whole position, as in a file without the column.
    lot_id = cells[columns[LOT_COLUMN]] or None if LOT_COLUMN in columns else None
    problem = _identifier_problem("sku", sku) or _identifier_problem("location_id", location_id)
    if problem is None and lot_id is not None:
        problem = _identifier_problem(LOT_COLUMN, lot_id)
    if problem:
        yield (line, problem)
        return
    # A second row for a position (or lot) is an error even if the first was bad: the file
    # is ambiguous about that count either way.
    first = seen.setdefault((sku, location_id, lot_id), line)
    if first != line:
        lot = "" if lot_id is None else f", {LOT_COLUMN} {lot_id!r}"
        yield (
            line,
            f"duplicate of line {first} (sku {sku!r}, location_id {location_id!r}{lot})",
        )
        return
    problem = _count_problem(on_hand)
    if problem:
        yield (line, problem)
        return
    yield SnapshotRow(line, sku, location_id, int(on_hand), lot_id)


def _identifier_problem(name: str, value: str) -> str | None:
    # The API's own identifier rule: what it would refuse must not reach the ledger here.
    try:
        _identifier.validate_python(value)
    except ValidationError as error:
        message = error.errors()[0]["msg"].removeprefix("Value error, ")
        return f"{name} {value!r}: {message}"
    return None


def _count_problem(text: str) -> str | None:
    value = text.strip(" ")
    if value.startswith("-") and _WHOLE_NUMBER.fullmatch(value[1:]):
        return f"on_hand must not be negative, not {text!r}"
    if not _WHOLE_NUMBER.fullmatch(value):
        return f"on_hand must be a whole number, not {text!r}"
    if int(value) > limits.QUANTITY_MAX:
        return f"on_hand must be at most {limits.QUANTITY_MAX}, not {value}"
    return None


# ---- comparison ----


def reconcile(
    service: Any,
    snapshot: str | Path,
    as_of: datetime,
    *,
    post: bool = False,
    report_dir: str | Path | None = None,
    batch_size: int = POST_BATCH,
    progress: Progress = QUIET,
) -> ReconcileResult:
    """Compare, optionally post, and write the report. Raises SnapshotError for a bad file
    or a T in the future (nothing is compared or posted then). ``progress`` sees one phase
    per step: reading, comparing rows, looking for uncounted positions, posting."""
    snapshot = Path(snapshot)
    if as_of.utcoffset() is None:
        raise ValueError("as_of needs a time zone")
    as_of = as_of.astimezone(UTC)
    if as_of > service.clock():
        # A count dated in the future would override every fact recorded until then.
        raise SnapshotError(snapshot, [(0, f"--as-of {format_time(as_of)} is in the future")])
    read = read_snapshot_file(snapshot, progress)
    rows = read.rows
    result = ReconcileResult(
        snapshot=snapshot, as_of=as_of, lines=len(rows), lot_column=read.lot_column
    )
    _compare(service, track(rows, progress, "compare", len(rows)), result)
    if read.lot_column:
        result.not_counted = _lots_not_counted(service, rows, as_of, progress)
    else:
        result.not_counted = _not_counted(service, rows, as_of, progress)
    if post:
        _post(service, result, batch_size, progress)
    result.report_dir = Path(report_dir) if report_dir else default_report_dir(snapshot, as_of)
    write_report(result, result.report_dir)
    return result


def _ledger_on_hand(service: Any, sku: str, location_id: str, as_of: datetime) -> int:
    return int(service.position_as_of(sku, location_id, as_of, Axis.EFFECTIVE).on_hand)


def _lot_on_hand(service: Any, sku: str, location_id: str, as_of: datetime) -> dict[str, int]:
    """on_hand of each lot at the position in its effective balance at T (lots with nothing
    at all are left out, i.e. 0)."""
    view = service.position_as_of(sku, location_id, as_of, Axis.EFFECTIVE)
    return {lot.lot_id: int(lot.on_hand) for lot in view.lots}


def _compare(service: Any, rows: Iterable[SnapshotRow], result: ReconcileResult) -> None:
    # The lots of the last position read: a lot-level file lists a position's lots together.
    lots_key: tuple[str, str] | None = None
    lots: dict[str, int] = {}
    for row in rows:
        if row.lot_id is None:
            on_hand = _ledger_on_hand(service, row.sku, row.location_id, result.as_of)
        else:
            if lots_key != (row.sku, row.location_id):
                lots_key = (row.sku, row.location_id)
                lots = _lot_on_hand(service, row.sku, row.location_id, result.as_of)
            on_hand = lots.get(row.lot_id, 0)
        if row.counted == on_hand:
            result.matching += 1
            continue
        status = Status.OVER if row.counted > on_hand else Status.SHORT
        result.variances.append(
            Variance(
                row.sku, row.location_id, row.counted, on_hand, status, row.line, lot_id=row.lot_id
            )
        )


def _not_counted(
    service: Any, rows: Sequence[SnapshotRow], as_of: datetime, progress: Progress = QUIET
) -> list[Variance]:
    """Positions at the snapshot's locations that it leaves out and that hold stock at T.

    Only the snapshot's own locations: a count of one warehouse says nothing about another.
    """
    counted = {(row.sku, row.location_id) for row in rows}
    found: list[Variance] = []
    locations = sorted({row.location_id for row in rows})
    for location_id in track(locations, progress, "uncounted (locations)", len(locations)):
        for sku in _skus_at(service, location_id):
            if (sku, location_id) in counted:
                continue
            on_hand = _ledger_on_hand(service, sku, location_id, as_of)
            if on_hand != 0:
                found.append(Variance(sku, location_id, None, on_hand, Status.NOT_COUNTED))
    return found


def _lots_not_counted(
    service: Any, rows: Sequence[SnapshotRow], as_of: datetime, progress: Progress = QUIET
) -> list[Variance]:
    """A lot-level file's NOT_COUNTED: at each of its locations, the lots with stock at T that
    it does not list (of positions it counts by lot or not at all), and positions without
    lots it leaves out, as in :func:`_not_counted`. A position counted whole covers its lots.
    """
    whole = {(row.sku, row.location_id) for row in rows if row.lot_id is None}
    listed = {(row.sku, row.location_id, row.lot_id) for row in rows if row.lot_id is not None}
    found: list[Variance] = []
    locations = sorted({row.location_id for row in rows})
    for location_id in track(locations, progress, "uncounted (locations)", len(locations)):
        for sku in _skus_at(service, location_id):
            if (sku, location_id) in whole:
                continue
            view = service.position_as_of(sku, location_id, as_of, Axis.EFFECTIVE)
            if not view.lots:
                # Untracked (even if the file named lots for it): its stock is not counted.
                if int(view.on_hand) != 0:
                    found.append(
                        Variance(sku, location_id, None, int(view.on_hand), Status.NOT_COUNTED)
                    )
                continue
            for lot in view.lots:
                if lot.on_hand != 0 and (sku, location_id, lot.lot_id) not in listed:
                    found.append(
                        Variance(
                            sku,
                            location_id,
                            None,
                            int(lot.on_hand),
                            Status.NOT_COUNTED,
                            lot_id=lot.lot_id,
                        )
                    )
    return found


def _skus_at(service: Any, location_id: str) -> Iterator[str]:
    after = ("", "")
    while True:
        keys = service.app.select_positions(
            sku=None, location_id=location_id, after=after, limit=LIST_PAGE
        )
        for sku, _ in keys:
            yield sku
        if len(keys) < LIST_PAGE:
            return
        after = keys[-1]


# ---- posting ----


def count_message_id(
    as_of: datetime, sku: str, location_id: str, counted: int, lot_id: str | None = None
) -> str:
    """The same count of the same position (or lot) at the same T always gets the same id."""
    parts: list[Any] = [format_time(as_of), sku, location_id, counted]
    if lot_id is not None:  # position counts keep the ids they always had
        parts.append(lot_id)
    key = json.dumps(parts, ensure_ascii=False)
    return "reconcile-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def count_reason(snapshot_name: str, as_of: datetime, variance: Variance) -> str:
    """A readable note on the entry; bounded and free of control characters (API rules)."""
    tail = (
        f" as of {format_time(as_of)}: counted {variance.counted},"
        f" ledger {variance.ledger_on_hand}, variance {variance.variance:+d}"
    )
    name = _CONTROL.sub("?", snapshot_name)
    room = limits.REASON_LENGTH_MAX - len("reconcile ") - len(tail)
    if len(name) > room:
        name = name[: max(0, room - 1)] + "…"
    return f"reconcile {name}{tail}"


def _post(
    service: Any, result: ReconcileResult, batch_size: int, progress: Progress = QUIET
) -> None:
    result.posted = True
    ctx = CallContext(SOURCE, correlation_id=f"reconcile-{uuid.uuid4().hex[:16]}")
    variances = result.variances
    progress.phase("post", len(variances))
    for start in range(0, len(variances), batch_size):
        batch = variances[start : start + batch_size]
        movements = [_count_movement(result, variance) for variance in batch]
        # reject_reused=False: a REUSED id is this very count posted with another note.
        outcomes = service.record_movements(ctx, movements, reject_reused=False).result()
        for variance, outcome in zip(batch, outcomes, strict=True):
            if outcome.outcome == RECORDED:
                variance.post = RECORDED
                result.recorded += 1
            elif outcome.outcome == INVALID:
                # The count does not fit the SKU's tracking (e.g. a LOT SKU counted whole).
                variance.post = INVALID
                result.invalid += 1
            else:
                variance.post = "DUPLICATE"
                result.duplicates += 1
        progress.advance(len(batch))


def _count_movement(result: ReconcileResult, variance: Variance) -> Movement:
    counted = variance.counted if variance.counted is not None else 0
    return Movement(
        source=SOURCE,
        message_id=count_message_id(
            result.as_of, variance.sku, variance.location_id, counted, variance.lot_id
        ),
        type=MovementType.CYCLE_COUNT,
        sku=variance.sku,
        location_id=variance.location_id,
        counted=counted,
        lot_id=variance.lot_id,
        occurred_at=result.as_of,
        reason=count_reason(result.snapshot.name, result.as_of, variance),
    )


# ---- the report ----


def default_report_dir(snapshot: Path, as_of: datetime) -> Path:
    """``<snapshot dir>/<stem>-reconcile-<T compact, UTC>``."""
    moment = as_of.astimezone(UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%S")
    if moment.microsecond:
        stamp += f".{moment.microsecond:06d}"
    return snapshot.parent / f"{snapshot.stem}-reconcile-{stamp}Z"


def write_report(result: ReconcileResult, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "variances.csv").open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        columns = list(REPORT_COLUMNS)
        if result.lot_column:
            columns.insert(2, LOT_COLUMN)
        writer.writerow(columns)
        for v in [*result.variances, *result.not_counted]:
            lot = [v.lot_id or ""] if result.lot_column else []
            writer.writerow(
                [
                    v.sku,
                    v.location_id,
                    *lot,
                    "" if v.counted is None else v.counted,
                    v.ledger_on_hand,
                    "" if v.variance is None else v.variance,
                    v.status.value,
                    "" if v.line is None else v.line,
                    v.post,
                ]
            )
    (directory / "summary.txt").write_text(summary_text(result), encoding="utf-8")


def summary_text(result: ReconcileResult) -> str:
    over = sum(1 for v in result.variances if v.status is Status.OVER)
    short = len(result.variances) - over
    uncounted_units = sum(v.ledger_on_hand for v in result.not_counted)
    lines = [
        f"Reconciliation of {result.snapshot.name} as of {format_time(result.as_of)}"
        f" (effective balance, on_hand{' per lot' if result.lot_column else ''})",
        f"lines compared   {result.lines:>12}",
        f"matching         {result.matching:>12}",
        f"variances        {len(result.variances):>12}  ({over} over, {short} short)",
        f"units over       {result.units_over:>12}",
        f"units short      {result.units_short:>12}",
        f"net              {result.net:>+12}  (counted minus ledger)",
        f"not counted      {len(result.not_counted):>12}  (ledger positions at these"
        f" locations missing from the snapshot, {uncounted_units} units; never posted)",
    ]
    if result.posted:
        lines.append(
            f"posted           {result.recorded:>12}  cycle_count(s) recorded,"
            f" {result.duplicates} already in the ledger"
            + (
                f", {result.invalid} refused (not fitting the SKU's lot/serial tracking)"
                if result.invalid
                else ""
            )
        )
    else:
        lines.append("posted                      -  (run with --post to record the variances)")
    if result.report_dir is not None:
        lines.append(f"report           {result.report_dir}")
    return "\n".join(lines) + "\n"
