"""The files in ``examples/`` as they ship (issue 17): each goes through the real CLI
(``ledger publish`` / ``import-snapshot`` / ``import-wms``, subprocesses) to the nats-server of a
live ``ledger dev``, with no invalid record, and its ingest bridge applies every one of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from inventory.ledger.v1 import position_pb2
from inventory.ledger.v1 import query_service_pb2 as qs
from inventory.ledger.v1 import query_service_pb2_grpc as qs_grpc

from testbed.server import LedgerProcess, dev_process

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# The commands of examples/README.md, run from the repository root.
COMMANDS = [
    ["publish", "examples/movements.jsonl"],
    ["import-snapshot", "examples/3pl-snapshot.csv", "--source", "3pl-acme",
     "--as-of", "2026-12-01T00:00:00Z"],
    ["import-wms", "examples/wms-export.jsonl", "--source", "wms-east"],
]  # fmt: skip

# (sku, location) -> (on_hand, receiving, quarantine, damaged, in_transit_inbound) once applied.
EXPECTED = {
    # 40 received - 10 sent to DC-WEST - 5 shipped - 3 held + 1 released; 2 of the held damaged
    ("EX-MUG", "DC-EAST"): (23, 0, 0, 2, 0),
    ("EX-MUG", "DC-WEST"): (9, 0, 0, 0, 0),  # 10 arrived, counted 9
    ("EX-TEE", "DC-EAST"): (23, 0, 0, 0, 0),  # 24 put away - 2 adjusted + 1 restocked
    ("EX-MUG", "3PL-ACME-1"): (120, 0, 0, 0, 0),
    ("EX-TEE", "3PL-ACME-1"): (36, 0, 0, 0, 0),
    ("EX-CAP", "3PL-ACME-1"): (0, 0, 0, 0, 0),
    # 48 put away - 6 picked - 1 adjusted - 2 held + 2 released - 12 sent - 1 damaged + 1 returned
    ("EX-CAP", "DC-NORTH"): (29, 0, 0, 1, 0),
    ("EX-CAP", "DC-SOUTH"): (12, 0, 0, 0, 0),
}
RECORDS = 12 + 3 + 10  # lines of the three files


def _figures(p: position_pb2.Position) -> tuple[int, ...]:
    return (p.on_hand, p.receiving, p.quarantine, p.damaged, p.in_transit_inbound)


def _cli(argv: list[str], nats_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEDGER_NATS_URL": nats_url}
    return subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", *argv],
        cwd=EXAMPLES.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _wait_for(dev: LedgerProcess, expected: dict, seconds: float = 30.0) -> dict:
    query = dev.stub(qs_grpc.InventoryQueryServiceStub)
    deadline = time.monotonic() + seconds
    while True:
        seen = {
            key: _figures(query.GetPosition(qs.GetPositionRequest(sku=key[0], location_id=key[1])))
            for key in expected
        }
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def test_every_example_is_accepted_as_it_is_and_applied(tmp_path: Path) -> None:
    dev, nats_url = dev_process(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "nats")
    with dev:
        published = 0
        for argv in COMMANDS:
            done = _cli(argv, nats_url)
            assert done.returncode == 0, (argv, done.stdout, done.stderr)
            report = json.loads(done.stdout)
            assert report["invalid"] == [], (argv, report)
            assert report["duplicates"] == 0, (argv, report)
            published += report["published"]
        assert published == RECORDS
        assert _wait_for(dev, EXPECTED) == EXPECTED
        dead = _cli(["dlq", "list"], nats_url)
        assert (dead.returncode, dead.stdout) == (0, ""), dead.stderr
        assert dev.stop() == 0, dev.log_text()
        log = dev.log_text()
    assert f"ingest stopped: {RECORDS} recorded" in log, log
    assert "Traceback" not in log and " ERROR " not in log, log
