"""A ledger written by the previous release (before lots) opens and answers as it did.

``tests/fixtures/compat/v1`` holds a SQLite ledger file, a plain-SQL dump of a PostgreSQL
database with the same history, and ``expected.json``: what ``ledger serve`` of that release
answered on each (GetPosition of every position, GetPositionAsOf on both axes and with
known_at, VerifyLedger, the head hashes). It was written once by ``tools.gen_compat_fixture``.

This fixture must NEVER be regenerated: it is the old release's data, and regenerating it with
newer code would only prove that the new code reads its own files. Every future change to the
store, the events or the hash chain must keep these tests passing (docs/operations.md,
"Upgrades"; docs/decisions.md).
"""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from testbed.server import LedgerProcess
from tools.gen_compat_fixture import SNAPSHOT_ROUNDS, answers, restore_postgres

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "compat" / "v1"


def expected(backend: str) -> dict[str, Any]:
    return json.loads((FIXTURE / "expected.json").read_text())[backend]


def served(database_url: str) -> dict[str, Any]:
    """The current code's answers, from a real ``ledger serve`` on the old data."""
    with LedgerProcess(database_url) as ledger:
        got = answers(ledger.channel())
        log = ledger.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log
    return got


def assert_same_answers(got: dict[str, Any], want: dict[str, Any]) -> None:
    # Part by part, so a failure names what changed.
    assert got["verify"] == want["verify"]
    assert want["verify"]["ok"] is True
    assert got["positions"] == want["positions"]
    assert got["as_of"] == want["as_of"]
    assert got["head"] == want["head"]
    assert got["position_heads"] == want["position_heads"]


def test_fixture_covers_a_snapshot() -> None:
    """The busy position crossed the snapshot interval, so reads start from an old snapshot."""
    with sqlite3.connect(FIXTURE / "ledger.db") as db:
        (snapshots,) = db.execute("SELECT count(*) FROM stored_snapshots").fetchone()
    assert snapshots >= 1
    busy = {p["sku"]: int(p["version"]) for p in expected("sqlite")["positions"]}["SKU-C"]
    assert busy == 2 * SNAPSHOT_ROUNDS + 1  # events past the snapshot must replay on top


def test_sqlite_file_of_the_previous_release(tmp_path: Path) -> None:
    database = tmp_path / "ledger.db"
    shutil.copy(FIXTURE / "ledger.db", database)  # serving may write; the fixture stays as is
    assert_same_answers(served(f"sqlite:///{database}"), expected("sqlite"))


@pytest.mark.postgres
def test_postgres_dump_of_the_previous_release(postgres_database_url: str) -> None:
    restore_postgres(
        postgres_database_url,
        gzip.decompress(FIXTURE.joinpath("postgres.sql.gz").read_bytes()).decode(),
    )
    assert_same_answers(served(postgres_database_url), expected("postgres"))
