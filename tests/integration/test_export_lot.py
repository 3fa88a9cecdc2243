"""``ledger export OUT --sku S --lot L [--as-of T]``: a lot's recall trace as export records
plus a closing ``{"lot": ...}`` line (docs/audit.md, "Lot export")."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ledger.domain.item_policy import Tracking
from ledger.domain.movements import Movement, MovementType
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput, ReserveLine

REPO = Path(__file__).resolve().parents[2]
VERIFIER = REPO / "tools" / "verify_ledger_export.py"
CTX = CallContext("test", correlation_id="corr-lot")
SKU, HERE, THERE = "LOT-EXP-1", "DC-1", "DC-2"
EXPIRES = datetime(2030, 6, 1, tzinfo=UTC)


def _move(mid: str, kind: MovementType, location_id: str = HERE, **fields: object) -> Movement:
    return Movement(
        source="wms", message_id=mid, type=kind, sku=SKU, location_id=location_id, **fields
    )


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "entrypoints.cli", "export", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _seed(service: LedgerService) -> tuple[str, datetime]:
    """L1 received, partly transferred, reserved, committed and shipped; L2 beside it."""
    service.set_item_policy(CTX, "pol-1", SKU, Tracking.LOT).result()
    service.record_movements(
        CTX,
        [
            _move("m1", MovementType.RECEIPT, qty=50, lot_id="L1", expires_at=EXPIRES),
            _move("m2", MovementType.RECEIPT, qty=9, lot_id="L2"),
            _move(
                "m3",
                MovementType.TRANSFER_DISPATCH,
                qty=20,
                lot_id="L1",
                transfer_id="T-1",
                to_location_id=THERE,
            ),
        ],
    ).result()
    middle = service.trace_lot(SKU, "L1").entries.items[-1].entry.recorded_at
    assert middle is not None
    reservation = service.reserve(
        CTX,
        ReserveInput(
            request_id="r-1",
            channel="web",
            order_ref="O-1",
            lines=(ReserveLine(SKU, HERE, 10),),
            ttl=timedelta(minutes=10),
        ),
    ).result()
    rid = reservation.reservation_id
    service.commit(CTX, "c-1", rid, "web").result()
    service.record_movements(
        CTX,
        [
            _move("m4", MovementType.SHIPMENT, qty=10, lot_id="L1", reservation_id=rid),
            _move("m5", MovementType.SHIPMENT, qty=2, lot_id="L2"),
        ],
    ).result()
    return rid, middle


def test_lot_export_through_the_cli(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    service = LedgerService.open(url)
    try:
        rid, middle = _seed(service)
        full = {e.hash: e.export_record() for e in service.ledger_entries(0, 10_000)}
    finally:
        service.close()  # the CLI is another process on the same SQLite file

    out = tmp_path / "lot.jsonl"
    done = _cli(str(out), "--sku", SKU, "--lot", "L1", "--database", url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"entries": 6, "locations": 2, "file": str(out)}
    *records, last = _lines(out)
    kinds = [(r["entry"]["type"], r["entry"]["location_id"]) for r in records]  # type: ignore[index]
    assert kinds == [
        ("receipt", HERE),
        ("transfer_dispatch", HERE),
        ("transfer_inbound", THERE),
        ("hold_placed", HERE),
        ("hold_committed", HERE),
        ("shipment", HERE),
    ] or kinds == [  # a transfer's two legs are one transaction: either may come first
        ("receipt", HERE),
        ("transfer_inbound", THERE),
        ("transfer_dispatch", HERE),
        ("hold_placed", HERE),
        ("hold_committed", HERE),
        ("shipment", HERE),
    ]
    # Every record is the full export's line for that entry, verbatim (matched by hash).
    assert records == [json.loads(json.dumps(full[r["hash"]])) for r in records]  # type: ignore[index]
    positions = [r["position"] for r in records]
    assert positions == sorted(positions)
    lot = last["lot"]
    assert lot["sku"] == SKU and lot["lot_id"] == "L1" and lot["as_of"] is None  # type: ignore[index]
    assert lot["order_refs"] == {rid: "O-1"}  # type: ignore[index]
    by_location = {loc["location_id"]: loc for loc in lot["locations"]}  # type: ignore[index]
    assert {
        k: (v["on_hand"], v["in_transit_inbound"], v["allocated"]) for k, v in by_location.items()
    } == {
        HERE: (20, 0, 0),
        THERE: (0, 20, 0),
    }
    assert by_location[HERE]["expires_at"] == "2030-06-01T00:00:00.000000Z"
    # Filtered chains have gaps: the verifier refuses the file; the full export is for that.
    assert (
        subprocess.run([sys.executable, str(VERIFIER), str(out)], capture_output=True).returncode
        == 1
    )

    # As of the dispatch: the first three entries, the buckets as then.
    then = tmp_path / "then.jsonl"
    done = _cli(
        str(then), "--sku", SKU, "--lot", "L1", "--as-of", middle.isoformat(), "--database", url
    )
    assert done.returncode == 0, done.stderr
    *early, summary = _lines(then)
    assert early == records[:3]
    assert summary["lot"]["as_of"] == middle.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # type: ignore[index]
    assert {loc["location_id"]: loc["on_hand"] for loc in summary["lot"]["locations"]} == {  # type: ignore[index]
        HERE: 30,
        THERE: 0,
    }


def test_lot_export_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    LedgerService.open(url).close()
    out = str(tmp_path / "o.jsonl")
    for args, says in (
        (["--lot", "L1"], "--sku"),
        (["--sku", SKU, "--location-id", HERE, "--lot", "L1"], "--location-id"),
        (["--sku", SKU, "--as-of", "2026-01-01T00:00:00Z"], "--lot"),
        (["--sku", SKU, "--lot", ""], "--lot"),
    ):
        done = _cli(out, *args, "--database", url)
        assert done.returncode == 2, (args, done.stderr)
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    # A malformed instant is argparse's to refuse, as for reconcile: usage, then the error line.
    done = _cli(out, "--sku", SKU, "--lot", "L1", "--as-of", "yesterday", "--database", url)
    assert done.returncode == 2 and "--as-of" in done.stderr.strip().splitlines()[-1]
    assert not Path(out).exists()
