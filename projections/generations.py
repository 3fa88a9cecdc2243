"""Generations of the read-model tables and the one-row table that names the served one.

The read models live in a *generation* of tables, ``<prefix>_g<N>_tracking``,
``_positions``, ``_policies`` and ``_exceptions``; the one-row table ``<prefix>_active``
names the generation that is served. Every read resolves the active generation inside its
own transaction, so a rebuild can build generation N+1 beside the live one and swap it in
with a single-row update: readers see generation N or N+1, never a half-built one.
"""

from __future__ import annotations

import fcntl
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ledger.store.pg_ddl import run_missing_ddl
from projections.sql_transaction import ReadModelDatabase, Transaction, is_busy

FIRST_GENERATION = 1
INIT_ATTEMPTS = 5
GENERATION_TABLES = ("tracking", "positions", "policies", "exceptions", "items")

_CONTROL_TABLE = (
    "CREATE TABLE IF NOT EXISTS {active} (name TEXT PRIMARY KEY,"
    " generation BIGINT NOT NULL, last_generation BIGINT NOT NULL)"
)

_GENERATION_DDL = [
    "CREATE TABLE IF NOT EXISTS {tracking} (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {positions} (position_id TEXT PRIMARY KEY,"
    " sku TEXT {c} NOT NULL, location_id TEXT {c} NOT NULL, state TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS {g}_positions_by_sku ON {positions} (sku, location_id)",
    "CREATE INDEX IF NOT EXISTS {g}_positions_by_location ON {positions} (location_id, sku)",
    "CREATE TABLE IF NOT EXISTS {policies} (policy_id TEXT PRIMARY KEY,"
    " channel TEXT NOT NULL, terms TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS {g}_policies_by_channel ON {policies} (channel)",
    "CREATE TABLE IF NOT EXISTS {exceptions} (ledger_position BIGINT NOT NULL,"
    " seq INTEGER NOT NULL, type TEXT NOT NULL, sku TEXT {c} NOT NULL,"
    " location_id TEXT {c} NOT NULL, bucket TEXT NOT NULL, quantity BIGINT NOT NULL,"
    " detail TEXT NOT NULL, source TEXT NOT NULL, message_id TEXT NOT NULL,"
    " occurred_at TEXT NOT NULL, recorded_at TEXT NOT NULL,"
    " PRIMARY KEY (ledger_position, seq))",
    # The item master: one row per SKU with an ItemPolicy (keyed by the aggregate id, since
    # its Set events do not repeat the SKU); a SKU without a row is tracked NONE.
    "CREATE TABLE IF NOT EXISTS {items} (item_id TEXT PRIMARY KEY, sku TEXT {c} NOT NULL,"
    " tracking TEXT NOT NULL, version BIGINT NOT NULL, ledger_position BIGINT NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS {g}_items_by_sku ON {items} (sku)",
]


class RebuildInProgress(Exception):
    """Raised when another rebuild of the same read models holds the rebuild lock."""


class GenerationTables:
    """Table names of one generation, and its tracking position."""

    def __init__(self, db: ReadModelDatabase, generation: int) -> None:
        self.generation = generation
        self.prefix = db.prefix
        self.base = f"{db.prefix}_g{generation}"
        self.tracking = db.qualify(f"{self.base}_tracking")
        self.positions = db.qualify(f"{self.base}_positions")
        self.policies = db.qualify(f"{self.base}_policies")
        self.exceptions = db.qualify(f"{self.base}_exceptions")
        self.items = db.qualify(f"{self.base}_items")

    def ddl(self, collate: str) -> list[str]:
        return [
            statement.format(
                tracking=self.tracking,
                positions=self.positions,
                policies=self.policies,
                exceptions=self.exceptions,
                items=self.items,
                g=self.base,
                c=collate,
            )
            for statement in _GENERATION_DDL
        ]

    def applied_position(self, tx: Transaction) -> int:
        """The last ledger position applied to this generation."""
        rows = tx.rows(f"SELECT position FROM {self.tracking} WHERE name = %s", (self.prefix,))
        return int(rows[0][0]) if rows else 0


class Generations:
    """The ``<prefix>_active`` control row and the creation and removal of generations."""

    def __init__(self, db: ReadModelDatabase) -> None:
        self.db = db
        self.active_table = db.qualify(f"{db.prefix}_active")

    def tables(self, generation: int) -> GenerationTables:
        return GenerationTables(self.db, generation)

    def initialise(self) -> None:
        """Create the control table and the active generation's tables (idempotent; safe
        when several processes start at once)."""
        for attempt in range(INIT_ATTEMPTS):
            try:
                with self.db.transaction() as tx:
                    if self.db.postgres is not None:
                        tx("SELECT pg_advisory_xact_lock(%s)", (self.db.lock_key("schema"),))
                    tx(_CONTROL_TABLE.format(active=self.active_table))
                    tx(
                        f"INSERT INTO {self.active_table} (name, generation, last_generation)"
                        " VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING",
                        (self.db.prefix, FIRST_GENERATION, FIRST_GENERATION),
                    )
                    self.create(tx, self.active(tx))
                return
            except Exception as error:  # another process initialising the SQLite file
                if attempt + 1 == INIT_ATTEMPTS or not is_busy(error):
                    raise
                time.sleep(0.05 * (attempt + 1))

    def create(self, tx: Transaction, generation: int) -> GenerationTables:
        """Create ``generation``'s tables (those missing) and its tracking row at 0."""
        tables = self.tables(generation)
        if self.db.postgres is not None:
            # Only missing relations: an API replica starting beside a running projections
            # process must not take table locks the runner's writes wait on (see pg_ddl).
            run_missing_ddl(
                tx.cursor,
                tables.ddl(self.db.collate),
                schema=self.db.schema,
                lock_key=self.db.lock_key("schema"),
            )
        else:
            for statement in tables.ddl(self.db.collate):
                tx(statement)
        tx(
            f"INSERT INTO {tables.tracking} (name, position) VALUES (%s, 0)"
            " ON CONFLICT (name) DO NOTHING",
            (self.db.prefix,),
        )
        return tables

    def active(self, tx: Transaction) -> int:
        rows = tx.rows(
            f"SELECT generation FROM {self.active_table} WHERE name = %s", (self.db.prefix,)
        )
        return int(rows[0][0])

    def lock_active(self, tx: Transaction, generation: int | None = None) -> bool:
        """Take the ``<prefix>_active`` row lock (PostgreSQL) / the write lock (SQLite) with a
        no-op update; with ``generation``, only if it is still the active one."""
        sql = f"UPDATE {self.active_table} SET generation = generation WHERE name = %s"
        params: tuple[Any, ...] = (self.db.prefix,)
        if generation is not None:
            sql += " AND generation = %s"
            params += (generation,)
        return bool(tx(sql, params).rowcount == 1)

    def make_active(self, tx: Transaction, generation: int) -> None:
        tx(
            f"UPDATE {self.active_table} SET generation = %s WHERE name = %s",
            (generation, self.db.prefix),
        )

    def existing(self) -> list[int]:
        """Generations whose tables exist (the active one, and any being built or left
        behind by a rebuild that died)."""
        pattern = re.compile(re.escape(self.db.prefix) + r"_g(\d+)_tracking")
        with self.db.transaction(commit=False) as tx:
            if self.db.postgres is not None:
                names = tx.rows(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.db.schema,)
                )
            else:
                names = tx.rows("SELECT name FROM sqlite_master WHERE type = 'table'")
        found = (pattern.fullmatch(str(name)) for (name,) in names)
        return sorted(int(match[1]) for match in found if match)

    def allocate(self) -> int:
        """Allocate the next generation number and create its (empty) tables."""
        with self.db.transaction() as tx:
            tx(
                f"UPDATE {self.active_table} SET last_generation = last_generation + 1"
                " WHERE name = %s",
                (self.db.prefix,),
            )
            rows = tx.rows(
                f"SELECT last_generation FROM {self.active_table} WHERE name = %s",
                (self.db.prefix,),
            )
            generation = int(rows[0][0])
            self.create(tx, generation)
        return generation

    def drop_tables(self, generation: int) -> None:
        """Drop a generation's tables. One table per transaction, so the drop never holds
        one table's lock while waiting for another's (no deadlock with readers that have
        not yet noticed the switch)."""
        tables = self.tables(generation)
        names = (tables.positions, tables.policies, tables.exceptions, tables.items)
        for name in (*names, tables.tracking):
            with self.db.transaction() as tx:
                tx(f"DROP TABLE IF EXISTS {name}")

    @contextmanager
    def rebuild_lock(self) -> Iterator[None]:
        """Only one rebuild at a time: an advisory lock (PostgreSQL) or a file lock (SQLite)."""
        if self.db.postgres is not None:
            with self._advisory_rebuild_lock():
                yield
            return
        assert self.db.sqlite_path is not None
        with open(f"{self.db.sqlite_path}.{self.db.prefix}.rebuild-lock", "a+b") as lock_file:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise RebuildInProgress(
                    f"another rebuild of {self.db.prefix} is running"
                ) from error
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def _advisory_rebuild_lock(self) -> Iterator[None]:
        assert self.db.postgres is not None
        key = self.db.lock_key("rebuild")
        with self.db.postgres.get_connection() as conn:  # autocommit: a session lock
            row = conn.execute("SELECT pg_try_advisory_lock(%s) AS locked", (key,)).fetchone()
            if not row or not row["locked"]:
                raise RebuildInProgress(f"another rebuild of {self.db.prefix} is running")
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
