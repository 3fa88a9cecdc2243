"""``ledger export`` checked by the standalone verifier (docs/audit.md, export format)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.audit.export import export_ledger
from ledger.domain.movements import Movement, MovementType
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext

REPO = Path(__file__).resolve().parents[2]
VERIFIER = REPO / "tools" / "verify_ledger_export.py"
CTX = CallContext("test", correlation_id="corr-ü")
NOW = datetime.now(UTC)
SKU, HERE, THERE = 'SKU "ü", 1', "Lager-Ü", "DC-2"


def _verify(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(VERIFIER), str(path), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _move(mid: str, kind: MovementType, location_id: str = HERE, **fields: object) -> Movement:
    return Movement(
        source="wms", message_id=mid, type=kind, sku=SKU, location_id=location_id, **fields
    )


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'l.db'}"


@pytest.fixture
def service(url: str) -> Iterator[LedgerService]:
    service = LedgerService.open(url)
    try:
        yield service
    finally:
        service.close()


def _seed(service: LedgerService) -> None:
    earlier = NOW - timedelta(hours=3)
    movements = [
        _move("m1", MovementType.RECEIPT, qty=40, occurred_at=earlier),
        _move("m2", MovementType.SHIPMENT, qty=3),
        _move("m3", MovementType.ADJUSTMENT, delta=-2, reason="broken\tseal"),
        _move("m4", MovementType.TRANSFER_DISPATCH, qty=5, transfer_id="t-1", to_location_id=THERE),
        _move("m5", MovementType.CYCLE_COUNT, counted=29, reason="recount 日本"),
        _move("m6", MovementType.RECEIPT, qty=1, occurred_at=earlier),  # a late fact
    ]
    service.record_movements(CTX, movements).result()
    # More than one page of the ledger (entries are read 500 at a time).
    bulk = [
        Movement(
            source="bulk",
            message_id=f"b{i}",
            type=MovementType.RECEIPT,
            sku=f"S{i}",
            location_id="DC-9",
            qty=1,
        )
        for i in range(300)
    ]
    service.record_movements(CTX, bulk).result()


def test_whole_ledger_export_verifies(service: LedgerService, tmp_path: Path) -> None:
    _seed(service)
    out = tmp_path / "ledger.jsonl"
    written = export_ledger(service, out)
    assert written == service.ledger_head() > 500
    records = _lines(out)
    assert [r["position"] for r in records] == list(range(1, written + 1))
    assert not list(tmp_path.glob("*.partial"))
    count = next(r for r in records if r["entry"]["type"] == "cycle_count")  # type: ignore[index]
    assert count["entry"]["data"] == {"counted": 29, "reason": "recount 日本"}  # type: ignore[index]
    assert "日本" in out.read_text(encoding="utf-8")  # ensure_ascii=False

    done = _verify(out, "--whole-ledger")
    assert done.returncode == 0, done.stdout + done.stderr

    # The verifier is not a rubber stamp: an edited quantity breaks the chain.
    tampered = tmp_path / "tampered.jsonl"
    text = out.read_text(encoding="utf-8").replace('"counted": 29', '"counted": 30', 1)
    tampered.write_text(text, encoding="utf-8")
    assert _verify(tampered, "--whole-ledger").returncode == 1


def test_one_position_export_through_the_cli(url: str, tmp_path: Path) -> None:
    service = LedgerService.open(url)
    _seed(service)
    expected = [e.export_record() for e in service.ledger_entries(0, 10_000) if e.sku == SKU]
    expected_here = [r for r in expected if r["entry"]["location_id"] == HERE]
    service.close()  # the CLI is another process on the same SQLite file

    out = tmp_path / "position.jsonl"
    argv = [sys.executable, "-m", "entrypoints.cli", "export", str(out)]
    argv += ["--sku", SKU, "--location-id", HERE, "--database", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"entries": len(expected_here), "file": str(out)}
    records = _lines(out)
    assert records == json.loads(json.dumps(expected_here))
    assert [r["entry"]["version"] for r in records] == list(range(1, len(records) + 1))  # type: ignore[index]
    assert _verify(out).returncode == 0

    # The transfer's destination leg is another position.
    there = tmp_path / "there.jsonl"
    service = LedgerService.open(url)
    try:
        assert export_ledger(service, there, SKU, THERE) == 2
    finally:
        service.close()
    assert [r["entry"]["type"] for r in _lines(there)] == ["opened", "transfer_inbound"]  # type: ignore[index]


def test_empty_ledger_and_unknown_position(service: LedgerService, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    assert export_ledger(service.app, empty) == 0
    assert empty.read_text() == ""
    assert export_ledger(service, tmp_path / "none.jsonl", "nope", "nowhere") == 0
    with pytest.raises(ValueError, match="both"):
        export_ledger(service, tmp_path / "x.jsonl", sku="only")


def test_cli_refuses_half_a_position_and_a_missing_database(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "entrypoints.cli", "export", str(tmp_path / "o.jsonl")]
    missing = ["--database", f"sqlite:///{tmp_path / 'missing.db'}"]
    half = subprocess.run([*base, "--sku", "S", *missing], capture_output=True, text=True)
    assert half.returncode == 2 and "--location-id" in half.stderr
    gone = subprocess.run([*base, *missing], capture_output=True, text=True)
    assert gone.returncode == 2 and "no ledger database" in gone.stderr
    assert not (tmp_path / "missing.db").exists()
