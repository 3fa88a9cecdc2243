"""Progress on long work (issue 17, docs/operations.md): every long command draws a progress
display with a count on a terminal stderr, and stays quiet (no redraws) on a pipe, with the
same stdout either way.

Each test runs the real command twice, once with stderr on a pseudo-terminal
(``tests.support.terminal``) and once with stderr on a pipe, on a SQLite ledger or a real
nats-server (streams under unique prefixes, deleted afterwards).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest

from ingest.bridge import HEADER_REASON, canonical_json
from ingest.streams import StreamNames, delete_topology, ensure_topology
from ledger.domain.movements import Movement, MovementType
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from tests.support.terminal import has_redraws, run_with_terminal_stderr, visible_text

REPO = Path(__file__).resolve().parents[2]
VERIFIER = REPO / "tools" / "verify_ledger_export.py"
CLI = [sys.executable, "-m", "entrypoints.cli"]
CTX = CallContext("test", correlation_id="progress")
POSITIONS = 240
SOURCE = "wms-east"


def _piped(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )


def _assert_drawn(done: subprocess.CompletedProcess[str], *patterns: str) -> str:
    """The terminal got a live display, and its text shows each pattern (a count)."""
    text = visible_text(done.stderr)
    assert has_redraws(done.stderr), done.stderr
    for pattern in patterns:
        assert re.search(pattern, text), f"{pattern!r} not in {text!r}"
    return text


def _assert_no_display(done: subprocess.CompletedProcess[str]) -> None:
    assert not has_redraws(done.stderr), repr(done.stderr)


def _seed(url: str) -> int:
    """POSITIONS receipts on as many positions; returns the ledger's entry head."""
    service = LedgerService.open(url)
    try:
        movements = [
            Movement(
                source="bulk",
                message_id=f"b{i}",
                type=MovementType.RECEIPT,
                sku=f"S{i}",
                location_id=f"DC-{i % 2}",
                qty=5,
            )
            for i in range(POSITIONS)
        ]
        service.record_movements(CTX, movements).result()
        return service.ledger_head()
    finally:
        service.close()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def test_export_and_the_offline_verifier(url: str, tmp_path: Path) -> None:
    head = _seed(url)
    out = tmp_path / "ledger.jsonl"
    argv = [*CLI, "export", str(out), "--database", url]
    on_terminal = run_with_terminal_stderr(argv)
    assert on_terminal.returncode == 0, on_terminal.stderr
    _assert_drawn(on_terminal, rf"export .*{head:,}/{head:,}")
    piped = _piped(argv)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""  # quiet: a short export logs nothing either
    assert on_terminal.stdout == piped.stdout
    assert json.loads(piped.stdout) == {"entries": head, "file": str(out)}

    # The standalone verifier draws its own (standard-library) line, on a terminal only.
    check = [sys.executable, str(VERIFIER), str(out), "--whole-ledger"]
    on_terminal = run_with_terminal_stderr(check)
    assert on_terminal.returncode == 0, on_terminal.stdout + on_terminal.stderr
    _assert_drawn(on_terminal, rf"verifying: {head:,} lines \(100%\)")
    piped = _piped(check)
    assert (piped.returncode, piped.stderr) == (0, "")
    assert on_terminal.stdout == piped.stdout
    assert piped.stdout.endswith(f"checked {head} entries in {POSITIONS} positions: OK\n")


def test_reconcile(url: str, tmp_path: Path) -> None:
    _seed(url)
    snapshot = tmp_path / "count.csv"
    rows = [f"S{i},DC-{i % 2},{5 if i % 10 else 4}" for i in range(POSITIONS)]
    snapshot.write_text("sku,location_id,on_hand\n" + "\n".join(rows) + "\n")
    argv = [*CLI, "reconcile", str(snapshot), "--database", url, "--report-dir"]
    argv += [str(tmp_path / "report"), "--as-of", datetime.now(UTC).isoformat()]
    on_terminal = run_with_terminal_stderr(argv)
    assert on_terminal.returncode == 1, on_terminal.stderr  # 1: variances found
    _assert_drawn(
        on_terminal,
        rf"read snapshot .*{POSITIONS}/{POSITIONS}",
        rf"compare .*{POSITIONS}/{POSITIONS}",
        r"uncounted \(locations\) .*2/2",
    )
    piped = _piped(argv)
    assert (piped.returncode, piped.stderr) == (1, "")
    assert on_terminal.stdout == piped.stdout
    assert re.search(r"^variances\s+24\b", piped.stdout, flags=re.MULTILINE), piped.stdout


def test_projections_rebuild(url: str) -> None:
    head = _seed(url)
    argv = [*CLI, "projections", "rebuild", "--database", url, "--batch-size", "50"]
    on_terminal = run_with_terminal_stderr(argv)
    assert on_terminal.returncode == 0, on_terminal.stderr
    # Counted in notifications (entries plus the positions' other events), all of them.
    text = _assert_drawn(on_terminal, r"rebuild read models .* 100% ([\d,]+)/\1 ")
    folded = re.findall(r"100% ([\d,]+)/", text)[-1]
    assert int(folded.replace(",", "")) > head
    # Logged while the display ran: printed above it, whole.
    assert re.search(r"INFO \S+ rebuilding read models into generation \d+", text), text
    piped = _piped(argv)
    assert piped.returncode == 0, piped.stderr
    _assert_no_display(piped)
    assert "rebuilt the read models" in piped.stderr
    assert on_terminal.stdout == piped.stdout == ""


# ---- NATS commands ----------------------------------------------------------------------


@pytest.fixture
def two_prefixes(nats_url: str) -> Iterator[tuple[StreamNames, StreamNames]]:
    """Two isolated topologies: the terminal run and the piped run publish to their own."""
    pair = (StreamNames(_prefix()), StreamNames(_prefix()))
    _with_js(nats_url, lambda js: asyncio.gather(*(ensure_topology(js, n) for n in pair)))
    try:
        yield pair
    finally:
        _with_js(nats_url, lambda js: asyncio.gather(*(delete_topology(js, n) for n in pair)))


def test_publish(nats_url: str, two_prefixes: tuple[StreamNames, ...], tmp_path: Path) -> None:
    base = {"source": SOURCE, "type": "receipt", "location_id": "DC-P", "qty": 1}
    lines = [json.dumps({**base, "message_id": f"p-{i}", "sku": f"S{i}"}) for i in range(60)]
    path = tmp_path / "movements.jsonl"
    path.write_text("\n".join(lines) + "\n")
    runs = []
    for names, run in zip(two_prefixes, (run_with_terminal_stderr, _piped), strict=True):
        runs.append(run([*CLI, "publish", str(path), "--nats", nats_url, "--prefix", names.prefix]))
    on_terminal, piped = runs
    assert on_terminal.returncode == 0, on_terminal.stderr
    _assert_drawn(on_terminal, r"publish .*60/60")
    assert (piped.returncode, piped.stderr) == (0, "")
    assert on_terminal.stdout == piped.stdout
    assert json.loads(piped.stdout) == {"published": 60, "duplicates": 0, "invalid": []}


def test_import_snapshot(
    nats_url: str, two_prefixes: tuple[StreamNames, ...], tmp_path: Path
) -> None:
    lines = ["Warehouse,Item,Description,On_Hand_Qty,UOM"]
    lines += [f"DC-1,SKU-{i},widget,{i},EA" for i in range(45)]
    path = tmp_path / "acme.csv"
    path.write_text("\n".join(lines) + "\n")
    runs = []
    for names, run in zip(two_prefixes, (run_with_terminal_stderr, _piped), strict=True):
        argv = [*CLI, "import-snapshot", str(path), "--source", "3pl-acme"]
        argv += ["--as-of", "2026-11-22T06:00:00Z", "--nats", nats_url, "--prefix", names.prefix]
        runs.append(run(argv))
    on_terminal, piped = runs
    assert on_terminal.returncode == 0, on_terminal.stderr
    _assert_drawn(on_terminal, r"import 3pl-acme .*45/45")
    assert (piped.returncode, piped.stderr) == (0, "")
    assert on_terminal.stdout == piped.stdout
    assert json.loads(piped.stdout)["published"] == 45


def test_dlq_replay(nats_url: str, two_prefixes: tuple[StreamNames, ...]) -> None:
    names = two_prefixes[0]
    payload = canonical_json(
        {"message_id": "d-1", "source": SOURCE, "type": "receipt", "sku": "S", "location_id": "L"}
    )

    async def dead_letters(js: Any) -> list[int]:
        headers = {
            HEADER_REASON: "UNKNOWN_UNIT",
            "Ledger-Original-Subject": names.movement_subject(SOURCE),
            "Ledger-Original-Msg-Id": "d-1",
        }
        acks = [
            await js.publish(
                names.dlq_subject(SOURCE), payload, headers=headers, stream=names.dlq_stream
            )
            for _ in range(2)
        ]
        return [int(ack.seq) for ack in acks]

    first, second = _with_js(nats_url, dead_letters)
    replay = [*CLI, "dlq", "replay", "--nats", nats_url, "--prefix", names.prefix]
    on_terminal = run_with_terminal_stderr([*replay, str(first)])
    assert on_terminal.returncode == 0, on_terminal.stderr
    _assert_drawn(on_terminal, rf"replay dead letter {first} .*1/1")
    piped = _piped([*replay, str(second)])
    assert (piped.returncode, piped.stderr) == (0, "")
    results = [json.loads(done.stdout) for done in (on_terminal, piped)]
    assert [r["sequence"] for r in results] == [first, second]
    assert {r["subject"] for r in results} == {names.movement_subject(SOURCE)}


def _prefix() -> str:
    return f"T_{uuid.uuid4().hex[:12]}"


def _with_js(url: str, body: Any) -> Any:
    async def run() -> Any:
        nc = await nats.connect(url)
        try:
            return await body(nc.jetstream())
        finally:
            await nc.drain()

    return asyncio.run(run())
