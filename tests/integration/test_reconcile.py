"""``ledger reconcile`` (docs/audit.md, Reconciliation) on the embedded SQLite ledger.

The 10,000-line test seeds one ledger and runs the CLI once (``--post``, a subprocess) and
the library once more: the report lists exactly the injected variances, the first post
records each once, the second finds nothing and posts nothing.
"""

from __future__ import annotations

import csv
import random
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.audit.as_of import Axis
from ledger.audit.entries import LedgerEntryView
from ledger.audit.reconcile import (
    SnapshotError,
    Status,
    Variance,
    count_message_id,
    count_reason,
    read_snapshot,
    reconcile,
)
from ledger.domain import limits
from ledger.domain.movements import Movement, MovementType
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext

# T in the past of the real clock: the CLI subprocess runs on it and refuses a future T.
T = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
CTX = CallContext("test")
POSITIONS = 10_000
LOCATIONS = 20
BATCH = 500
# Identifiers that need CSV quoting, or are not ASCII.
SPECIAL_SKUS = {0: 'SKU "quoted", with comma', 1: "Größe-ß-日本-😀", 2: "line;semi'single"}


def _sku(i: int) -> str:
    return SPECIAL_SKUS.get(i, f"SKU-{i:05d}")


def _location(i: int) -> str:
    return "Lager-Ü" if i % LOCATIONS == 0 else f"DC-{i % LOCATIONS:02d}"


def _base(i: int) -> int:
    return 10 + i % 90


def _movement(mid: str, kind: MovementType, i: int, at: datetime, **fields: int) -> Movement:
    return Movement(
        source="seed",
        message_id=mid,
        type=kind,
        sku=_sku(i),
        location_id=_location(i),
        occurred_at=at,
        **fields,
    )


def _record(service: LedgerService, movements: Iterable[Movement]) -> None:
    batch: list[Movement] = []
    for movement in movements:
        batch.append(movement)
        if len(batch) == BATCH:
            service.record_movements(CTX, batch).result()
            batch = []
    if batch:
        service.record_movements(CTX, batch).result()


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'l.db'}"


def _write_csv(path: Path, rows: Iterable[tuple[str, str, int | str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(("sku", "location_id", "on_hand"))
        writer.writerows(rows)
    return path


def _report_rows(directory: Path) -> set[tuple[str, ...]]:
    with (directory / "variances.csv").open(encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        return {
            (
                r["sku"],
                r["location_id"],
                r["counted"],
                r["ledger_on_hand"],
                r["variance"],
                r["status"],
            )
            for r in reader
        }


def _summary_numbers(text: str) -> dict[str, int]:
    return {
        name: int(value)
        for name, value in re.findall(r"^([a-z ]+?)\s+([+-]?\d+)\b", text, flags=re.MULTILINE)
    }


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "reconcile", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _reconcile_entries(service: LedgerService, after: int) -> Iterator[LedgerEntryView]:
    for entry in service.ledger_entries(after, 100_000):
        if entry.type == "cycle_count" and entry.source == "reconcile":
            yield entry


def test_ten_thousand_lines_find_exactly_the_injected_variances_and_post_once(
    tmp_path: Path,
) -> None:
    before_t = T - timedelta(days=2)
    after_t = T + timedelta(hours=1)
    service = LedgerService.open(_url(tmp_path))
    # Stock before T everywhere; one position (index POSITIONS) gets stock only after T.
    _record(
        service,
        (
            _movement(f"r{i}", MovementType.RECEIPT, i, before_t, qty=_base(i))
            for i in range(POSITIONS)
        ),
    )
    _record(service, [_movement("late-stock", MovementType.RECEIPT, POSITIONS, after_t, qty=9)])
    # After T: must not change the comparison at T.
    moved_after = [100, 101, 102, 103]
    _record(
        service,
        [
            _movement(f"ship-after-{i}", MovementType.SHIPMENT, i, after_t, qty=7)
            for i in moved_after
        ]
        + [
            _movement(f"recv-after-{i}", MovementType.RECEIPT, i, after_t, qty=50)
            for i in moved_after
        ],
    )
    # Late facts: recorded after the post-T movements of the same positions, occurred before
    # T. They must count: the snapshot saw these shipments leave.
    late = [100, 200, 201]
    _record(
        service,
        [
            _movement(f"late-{i}", MovementType.SHIPMENT, i, T - timedelta(hours=1), qty=5)
            for i in late
        ],
    )

    def ledger_at_t(i: int) -> int:
        return _base(i) - (5 if i in late else 0)

    # 36 seeded positions with a wrong count (both kinds), including the odd identifiers,
    # plus one position the ledger has never seen. Index POSITIONS - 1 is left out.
    rng = random.Random(37)
    chosen = [0, 1, 2, 200, *rng.sample(range(300, POSITIONS - 1), 32)]
    counted = {i: ledger_at_t(i) for i in range(POSITIONS - 1)}
    for n, i in enumerate(chosen):
        shift = rng.randint(1, 40)
        counted[i] = ledger_at_t(i) + shift if n % 2 else max(0, ledger_at_t(i) - shift)
        if counted[i] == ledger_at_t(i):
            counted[i] += 1
    rows: list[tuple[str, str, int | str]] = [
        (_sku(i), _location(i), counted[i]) for i in range(POSITIONS - 1)
    ]
    rows.insert(5000, ("SKU-NEW", "DC-03", 12))
    snapshot = _write_csv(tmp_path / "snapshot.csv", rows)
    assert len(rows) == POSITIONS

    expected = {
        (
            _sku(i),
            _location(i),
            str(counted[i]),
            str(ledger_at_t(i)),
            str(counted[i] - ledger_at_t(i)),
            (Status.OVER if counted[i] > ledger_at_t(i) else Status.SHORT).value,
        )
        for i in chosen
    } | {("SKU-NEW", "DC-03", "12", "0", "12", "OVER")}
    assert len(expected) == 37
    assert {r[5] for r in expected} == {"OVER", "SHORT"}
    not_counted = (
        _sku(POSITIONS - 1),
        _location(POSITIONS - 1),
        "",
        str(_base(POSITIONS - 1)),
        "",
        "NOT_COUNTED",
    )
    deltas = [int(r[4]) for r in expected]
    head = service.ledger_head()
    service.close()  # the CLI is another process on the same SQLite file

    report = tmp_path / "first"
    done = _cli(
        str(snapshot),
        "--as-of",
        T.isoformat(),
        "--post",
        "--report-dir",
        str(report),
        "--database",
        _url(tmp_path),
    )
    assert done.returncode == 1, done.stderr
    assert _report_rows(report) == expected | {not_counted}
    summary = (report / "summary.txt").read_text(encoding="utf-8")
    assert done.stdout == summary
    numbers = _summary_numbers(summary)
    assert numbers["lines compared"] == POSITIONS
    assert numbers["matching"] == POSITIONS - 37
    assert numbers["variances"] == 37
    assert numbers["units over"] == sum(d for d in deltas if d > 0)
    assert numbers["units short"] == -sum(d for d in deltas if d < 0)
    assert numbers["net"] == sum(deltas)
    assert numbers["not counted"] == 1
    assert numbers["posted"] == 37

    service = LedgerService.open(_url(tmp_path))
    try:
        posted = list(_reconcile_entries(service, head))
        assert len(posted) == 37
        assert {(e.sku, e.location_id, str(e.data["counted"])) for e in posted} == {
            r[:3] for r in expected
        }
        assert all(e.occurred_at == T for e in posted)
        assert all(e.data["reason"].startswith("reconcile snapshot.csv as of ") for e in posted)
        for i in chosen[:5]:
            at_t = service.position_as_of(_sku(i), _location(i), T, Axis.EFFECTIVE)
            assert at_t.on_hand == counted[i]
        head_after_post = service.ledger_head()

        again = reconcile(service, snapshot, T, post=True, report_dir=tmp_path / "second")
        assert (again.lines, again.matching, len(again.variances)) == (POSITIONS, POSITIONS, 0)
        assert (again.recorded, again.duplicates, again.exit_code) == (0, 0, 0)
        assert [v.sku for v in again.not_counted] == [_sku(POSITIONS - 1)]
        assert service.ledger_head() == head_after_post
        assert len(list(_reconcile_entries(service, head))) == 37
    finally:
        service.close()


@pytest.fixture
def small(tmp_path: Path) -> Iterator[LedgerService]:
    service = LedgerService.open(_url(tmp_path))
    _record(
        service,
        [
            _movement(f"r{i}", MovementType.RECEIPT, i, T - timedelta(days=1), qty=_base(i))
            for i in range(3, 8)
        ],
    )
    try:
        yield service
    finally:
        service.close()


def test_a_newer_count_at_t_does_not_make_the_same_count_post_twice(
    small: LedgerService, tmp_path: Path
) -> None:
    snapshot = _write_csv(tmp_path / "s.csv", [(_sku(3), _location(3), 99)])
    first = reconcile(small, snapshot, T, post=True)
    assert (first.recorded, first.duplicates) == (1, 0)
    # Another source counts the same position at the same T, recorded later: it wins at T.
    recount = _movement("recount", MovementType.CYCLE_COUNT, 3, T, counted=40)
    small.record_movements(CTX, [recount]).result()
    second = reconcile(small, snapshot, T, post=True)
    assert [(v.counted, v.ledger_on_hand, v.post) for v in second.variances] == [
        (99, 40, "DUPLICATE")
    ]
    assert (second.recorded, second.duplicates, second.exit_code) == (0, 1, 1)
    assert len(list(_reconcile_entries(small, 0))) == 1


def test_bad_rows_are_refused_with_their_line_numbers_and_nothing_is_posted(
    small: LedgerService, tmp_path: Path
) -> None:
    snapshot = tmp_path / "bad.csv"
    snapshot.write_bytes(
        b"sku,location_id,on_hand\n"  # 1
        b"A,L1,5\n"  # 2
        b"B,L1,-3\n"  # 3 negative
        b"C,L1,1.5\n"  # 4 not a whole number
        b"A,L1,7\n"  # 5 duplicate of 2
        b"D,L1\n"  # 6 a field missing
        b'"E, with comma",L1,abc\n'  # 7 not a number
        b",L1,3\n"  # 8 empty sku
        b'"two\n'  # 9 (the record spans lines 9-10)
        b'lines",L1,2\n'  # 10
        b"F,L1,4\n"  # 11 fine
        b"G,L1,\n"  # 12 empty count
        b"\xff,L1,1\n"  # 13 not UTF-8 (stops the scan)
    )
    with pytest.raises(SnapshotError) as caught:
        read_snapshot(snapshot)
    assert [line for line, _ in caught.value.problems] == [3, 4, 5, 6, 7, 8, 9, 12, 13]
    texts = dict(caught.value.problems)
    assert "negative" in texts[3] and "whole number" in texts[4] and "line 2" in texts[5]
    assert "control characters" in texts[9] and "UTF-8" in texts[13]

    head = small.ledger_head()
    small.close()
    done = _cli(str(snapshot), "--as-of", T.isoformat(), "--post", "--database", _url(tmp_path))
    assert done.returncode == 2, done.stderr
    for line in (3, 4, 5, 6, 7, 8, 9, 12, 13):
        assert f"line {line}: " in done.stderr
    assert done.stdout == ""
    assert not list(tmp_path.glob("bad-reconcile-*"))
    reopened = LedgerService.open(_url(tmp_path))
    try:
        assert reopened.ledger_head() == head
    finally:
        reopened.close()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "line 1: empty file"),
        ("sku,location,on_hand\nA,L,1\n", "line 1: header must be"),
        ('sku,location_id,on_hand\n"A,L,1\n', "malformed CSV"),
    ],
)
def test_unusable_files(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "s.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SnapshotError) as caught:
        read_snapshot(path)
    assert problem in str(caught.value)


def test_header_in_any_order_with_a_bom_and_identifiers_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_bytes('\ufeffon_hand,SKU,location_id\r\n7, a b ,"x,""y"""\r\n'.encode())
    [row] = read_snapshot(path)
    assert (row.line, row.sku, row.location_id, row.counted) == (2, " a b ", 'x,"y"', 7)


def test_t_in_the_future_is_refused(small: LedgerService, tmp_path: Path) -> None:
    snapshot = _write_csv(tmp_path / "s.csv", [(_sku(3), _location(3), 1)])
    with pytest.raises(SnapshotError, match="in the future"):
        reconcile(small, snapshot, datetime.now(UTC) + timedelta(hours=1), post=True)
    assert not list(_reconcile_entries(small, 0))


def test_default_report_dir_and_exit_code_without_variances(
    small: LedgerService, tmp_path: Path
) -> None:
    snapshot = _write_csv(
        tmp_path / "count.csv", [(_sku(i), _location(i), _base(i)) for i in range(3, 8)]
    )
    result = reconcile(small, snapshot, T.replace(microsecond=250))
    stamp = T.strftime("%Y%m%dT%H%M%S") + ".000250Z"
    assert result.report_dir == tmp_path / f"count-reconcile-{stamp}"
    assert (result.matching, result.exit_code, result.not_counted) == (5, 0, [])
    assert _report_rows(result.report_dir) == set()
    assert _summary_numbers((result.report_dir / "summary.txt").read_text())["matching"] == 5


def test_message_id_and_reason_are_bounded_and_deterministic() -> None:
    a = count_message_id(T, "s", "l", 5)
    assert a == count_message_id(T.astimezone(), "s", "l", 5)
    assert a != count_message_id(T, "s", "l", 6)
    assert len(a) <= limits.MESSAGE_ID_LENGTH_MAX
    reason = count_reason("n\n" * 400, T, Variance("s", "l", 3, 1, Status.OVER))
    assert len(reason) <= limits.REASON_LENGTH_MAX
    assert "\n" not in reason and reason.endswith("counted 3, ledger 1, variance +2")
