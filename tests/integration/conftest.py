"""Integration fixtures: a real ``ledger serve`` process per test, on SQLite and PostgreSQL.

``database_url`` is parametrized over both backends, so every test that uses ``ledger``
runs twice (ids ``[sqlite]`` / ``[postgres]``).  The PostgreSQL fixture is only requested
for the ``postgres`` parameter, so ``-k sqlite`` runs never start a PostgreSQL server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoints import bootstrap
from ledger.config import Settings
from ledger.service import LedgerService
from testbed.nats import EmbeddedNats
from testbed.postgres import EmbeddedPostgres
from testbed.server import LedgerProcess


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("postgres_database_url")


@pytest.fixture
def replicas(postgres_database_url: str) -> Iterator[tuple[LedgerService, LedgerService]]:
    """Two writers over one PostgreSQL, as two API replicas would be (in one process)."""
    settings = Settings(database_url=postgres_database_url)
    first, second = bootstrap.open_service(settings), bootstrap.open_service(settings)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


@pytest.fixture
def ledger(database_url: str) -> Iterator[LedgerProcess]:
    process = LedgerProcess(database_url)
    process.start()
    try:
        yield process
        if process.running:
            # SIGTERM must drain and exit cleanly; nothing may have crashed meanwhile.
            assert process.stop() == 0, process.log_text()
            assert "stopped" in process.log_text(), process.log_text()
        log = process.log_text(all_runs=True)
        assert "Traceback" not in log and " ERROR " not in log, log
    finally:
        process.close()


@pytest.fixture
def sqlite_service(tmp_path: Path) -> Iterator[LedgerService]:
    """An in-process ``LedgerService`` on a fresh SQLite file (ingest and adapter tests)."""
    service = bootstrap.open_service(Settings(database_url=f"sqlite:///{tmp_path / 'ledger.db'}"))
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, so stopping it disturbs no other test. Tests restart
    it from worker threads that exit before the test ends: no death signal tied to a thread."""
    server = EmbeddedPostgres(die_with_parent=False)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def own_nats() -> Iterator[EmbeddedNats]:
    """A nats-server of this test's own: the test may stop, kill and restart it."""
    server = EmbeddedNats().start()
    try:
        yield server
    finally:
        server.cleanup()
