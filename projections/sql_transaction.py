"""The read models' database: one connection setup and one transaction wrapper for both
engines, which differ only in placeholder, connection and a few engine-specific statements.

SQLite keeps the read models in a file of their own beside the ledger's (the library's
SQLite tables have fixed names, so one file per component); PostgreSQL keeps them in the
ledger's database (and schema).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

from ledger.config import eventsourcing_env
from ledger.store.pg_ddl import advisory_key


class Transaction:
    """One open transaction: ``tx(sql, params) -> cursor`` with '%s' placeholders on both
    engines, ``tx.rows(sql, params)`` and ``tx.insert(table, columns, rows)``."""

    def __init__(self, cursor: Any, sqlite: bool) -> None:
        self._cursor = cursor
        self._sqlite = sqlite

    @property
    def cursor(self) -> Any:
        return self._cursor

    def __call__(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._sqlite:
            self._cursor.execute(sql.replace("%s", "?"), tuple(params))
        else:
            self._cursor.execute(sql, tuple(params), prepare=False)
        return self._cursor

    def insert(
        self,
        table: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
        on_conflict: str = "",
    ) -> None:
        """Insert ``rows`` (``columns``: name and PostgreSQL type) in one round trip:
        ``executemany`` on SQLite, one ``INSERT ... SELECT FROM unnest(arrays)`` on
        PostgreSQL (many times faster there than a pipelined executemany)."""
        if not rows:
            return
        names = ", ".join(name for name, _ in columns)
        if self._sqlite:
            marks = ", ".join("?" * len(columns))
            self._cursor.executemany(
                f"INSERT INTO {table} ({names}) VALUES ({marks}) {on_conflict}", rows
            )
            return
        # %b: arrays go in binary format (no quoting and escaping of JSON text).
        arrays = ", ".join(f"%b::{kind}[]" for _, kind in columns)
        self._cursor.execute(
            f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {on_conflict}",
            [list(column) for column in zip(*rows, strict=True)],
            prepare=False,
        )

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [
            tuple(row.values()) if isinstance(row, dict) else tuple(row)
            for row in self(sql, params).fetchall()
        ]


class ReadModelDatabase:
    """Where one prefix's read models live: the datastore, the schema, and names in it."""

    def __init__(self, database_url: str, prefix: str) -> None:
        self.prefix = prefix
        env = eventsourcing_env(database_url)
        if env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
            self.sqlite_path: str | None = projection_sqlite_path(env["SQLITE_DBNAME"])
            self.sqlite: SQLiteDatastore | None = SQLiteDatastore(
                self.sqlite_path, lock_timeout=int(env.get("SQLITE_LOCK_TIMEOUT", "10"))
            )
            self.postgres: PostgresDatastore | None = None
            self.schema = ""
            self.collate = ""
        else:
            self.sqlite_path = None
            self.sqlite = None
            self.schema = env["POSTGRES_SCHEMA"]
            self.postgres = PostgresDatastore(
                env["POSTGRES_DBNAME"],
                env["POSTGRES_HOST"],
                env["POSTGRES_PORT"],
                env["POSTGRES_USER"],
                env["POSTGRES_PASSWORD"],
                connect_timeout=float(env["POSTGRES_CONNECT_TIMEOUT"]),
                pool_size=2,
                max_overflow=4,
                schema=self.schema,
            )
            self.collate = 'COLLATE "C"'

    def close(self) -> None:
        if self.sqlite is not None:
            self.sqlite.close()
        if self.postgres is not None:
            self.postgres.close()

    @property
    def applied_channel(self) -> str:
        """PostgreSQL NOTIFY channel announcing each committed batch."""
        return f"{self.prefix}_applied"

    def qualify(self, name: str) -> str:
        if self.postgres is None:
            return name
        return '"{}".{}'.format(self.schema.replace('"', '""'), name)

    def lock_key(self, purpose: str) -> int:
        """A stable 64-bit advisory-lock key for this schema, prefix and purpose."""
        return advisory_key(self.schema, self.prefix, purpose)

    def in_clause(self, keys: Sequence[str]) -> tuple[str, list[Any]]:
        """``column {clause}`` matching any of ``keys``, and its parameters."""
        if self.postgres is not None:
            return "= ANY(%s)", [list(keys)]
        return f"IN ({', '.join(['%s'] * len(keys))})", list(keys)

    @contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[Transaction]:
        if self.sqlite is not None:
            with self.sqlite.transaction(commit=commit) as cursor:
                # The library's wrapper hides rowcount: use the raw cursor.
                yield Transaction(cursor.sqlite_cursor, sqlite=True)
        else:
            assert self.postgres is not None
            with self.postgres.transaction(commit=commit) as cursor:
                yield Transaction(cursor, sqlite=False)


def projection_sqlite_path(ledger_path: str) -> str:
    """``./ledger.db`` → ``./ledger.projections.db`` (one SQLite file per component)."""
    if ledger_path == ":memory:" or urlsplit(ledger_path).scheme == "file":
        raise ValueError("projections need a file-backed SQLite ledger")
    path = Path(ledger_path)
    return str(path.with_name(f"{path.stem}.projections{path.suffix or '.db'}"))


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_missing_table(error: BaseException) -> bool:
    return any(
        isinstance(e, psycopg.errors.UndefinedTable)
        or (isinstance(e, sqlite3.OperationalError) and "no such table" in str(e))
        for e in _causes(error)
    )


def is_busy(error: BaseException) -> bool:
    return any(
        (isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)))
        or isinstance(e, psycopg.errors.UniqueViolation)  # concurrent CREATE ... IF NOT EXISTS
        for e in _causes(error)
    )
