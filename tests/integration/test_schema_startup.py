"""A process starting next to running writers takes no table lock for its schema DDL.

Regression: CI saw `ledger projections` die with "deadlock detected" in the library's
create_table while `ledger serve` wrote (CREATE INDEX IF NOT EXISTS locks its table even
when the index exists). Here a writer holds its transaction open on every ledger and
read-model table; a second process's start-up must still complete, and must run no DDL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from ledger.application import InventoryLedger
from ledger.config import eventsourcing_env
from ledger.store.pg_ddl import created_relation
from projections.store import ReadModelStore

_STARTUP_SECONDS = 20


def _start_in_thread(target: object) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()  # type: ignore[operator]
        except BaseException as error:  # reported by the test
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


@pytest.fixture
def initialised(postgres_database_url: str) -> Iterator[str]:
    InventoryLedger(eventsourcing_env(postgres_database_url)).close()
    ReadModelStore(postgres_database_url).close()
    yield postgres_database_url


@pytest.mark.postgres
def test_startup_beside_an_open_write_transaction_takes_no_table_lock(initialised: str) -> None:
    with psycopg.connect(initialised) as writer:
        tables = [
            row[0]
            for row in writer.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        ]
        assert "ledger_events" in tables and "ledger_position_index" in tables
        # ROW EXCLUSIVE on every table, as a writer mid-transaction holds (SHARE, which
        # CREATE INDEX takes, conflicts with it).
        for table in tables:
            writer.execute(f'LOCK TABLE "{table}" IN ROW EXCLUSIVE MODE')

        def start_up() -> None:
            InventoryLedger(eventsourcing_env(initialised)).close()
            ReadModelStore(initialised).close()

        thread, errors = _start_in_thread(start_up)
        thread.join(_STARTUP_SECONDS)
        blocked = thread.is_alive()
        writer.rollback()
    thread.join(_STARTUP_SECONDS)
    assert not blocked, "start-up waited on a writer's table locks"
    assert errors == []


@pytest.mark.postgres
def test_a_fresh_database_is_created_once_by_racing_processes(
    postgres_database_url: str,
) -> None:
    starts = [
        _start_in_thread(lambda: InventoryLedger(eventsourcing_env(postgres_database_url)).close())
        for _ in range(4)
    ] + [_start_in_thread(lambda: ReadModelStore(postgres_database_url).close()) for _ in range(4)]
    for thread, errors in starts:
        thread.join(60)
        assert not thread.is_alive() and errors == []
    with psycopg.connect(postgres_database_url) as db:
        assert db.execute("SELECT to_regclass('public.ledger_events')").fetchone() != (None,)


@pytest.mark.parametrize(
    ("statement", "relation"),
    [
        ('CREATE TABLE IF NOT EXISTS "s"."t" (a int)', '"s"."t"'),
        ("CREATE INDEX IF NOT EXISTS t_by_a ON s.t (a)", '"public".t_by_a'),
        ('create unique index if not exists "i" on t (a)', '"public"."i"'),
        ("CREATE TABLE t (a int)", '"public".t'),
        ('CREATE TYPE "public"."row_t" AS (a int)', '"public"."row_t"'),
        ("CREATE OR REPLACE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql", None),
    ],
)
def test_created_relation_names_what_a_statement_creates(
    statement: str, relation: str | None
) -> None:
    assert created_relation(statement, "public") == relation
