"""Tests for the PostgreSQL test support (testbed/postgres.py, tests/conftest.py)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from testbed.postgres import EmbeddedPostgres, replace_dbname

pytestmark = pytest.mark.postgres


def test_fixture_database_is_fresh_and_usable(postgres_database_url):
    assert postgres_database_url.startswith("postgresql://")
    with psycopg.connect(postgres_database_url) as conn:
        dbname = conn.execute("SELECT current_database()").fetchone()[0]
        assert conninfo_to_dict(postgres_database_url)["dbname"] == dbname
        assert dbname.startswith("t_")
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE items (sku text PRIMARY KEY, qty int NOT NULL)")
        conn.execute("INSERT INTO items VALUES ('A-1', 3), ('B-2', 5)")
        conn.commit()
    with psycopg.connect(postgres_database_url) as conn:
        rows = conn.execute("SELECT sku, qty FROM items ORDER BY sku").fetchall()
    assert rows == [("A-1", 3), ("B-2", 5)]


def test_fixture_databases_are_isolated_and_dropped(postgres_server, postgres_database_url):
    name = conninfo_to_dict(postgres_database_url)["dbname"]
    other = postgres_server.create_database(f"{name}_x")
    try:
        assert other != postgres_database_url
        with psycopg.connect(other, autocommit=True) as lingering:
            lingering.execute("CREATE TABLE only_here (x int)")
            with psycopg.connect(postgres_database_url) as conn:
                assert conn.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
            # A connection still open must not block the drop (DROP ... WITH (FORCE)).
            postgres_server.drop_database(f"{name}_x")
    finally:
        postgres_server.drop_database(f"{name}_x")  # IF EXISTS: idempotent
    with psycopg.connect(postgres_server.dsn()) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", [f"{name}_x"]
        ).fetchone()
    assert found == (0,)


def test_stop_start_keeps_committed_data():
    with EmbeddedPostgres() as pg:
        url = pg.create_database("durable")
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, body text)")
            conn.execute("INSERT INTO events (body) SELECT 'e' || g FROM generate_series(1, 100) g")
        port = pg.port
        pg.stop()
        assert not pg.running
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
        pg.start()
        assert pg.port == port and pg.dsn("durable") == url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*), max(body) FROM events").fetchone() == (
                100,
                "e99",
            )
            assert conn.execute("SHOW fsync").fetchone() == ("on",)


def test_kill_breaks_connections_and_restart_recovers():
    with EmbeddedPostgres() as pg:
        url = pg.create_database("crashy")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")  # committed before the crash
        survivor = psycopg.connect(url, autocommit=True)
        try:
            pg.kill()
            assert not pg.running
            with pytest.raises(psycopg.OperationalError):
                survivor.execute("SELECT 1")
        finally:
            survivor.close()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)

        pg.restart()  # crash recovery replays the WAL
        assert pg.running
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
            conn.execute("INSERT INTO t VALUES (2)")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    assert not pg.running
    assert pg.base_dir is None


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:p@h:5433/x?sslmode=disable", "postgresql://u:p@h:5433/y?sslmode=disable"),
        ("postgres://u@h/x", "postgresql://u@h/y"),
        ("host=h port=5433 user=u dbname=x", "postgresql:///y?host=h&port=5433&user=u"),
    ],
)
def test_replace_dbname(dsn, expected):
    result = replace_dbname(dsn, "y")
    assert result.startswith("postgresql://")
    assert conninfo_to_dict(result) == conninfo_to_dict(expected)
