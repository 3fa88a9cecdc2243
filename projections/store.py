"""Read-model tables and their tracking position, written together in one transaction.

SQLite keeps them in a file of their own beside the ledger's (the library's SQLite tables
have fixed names, so one file per component); PostgreSQL keeps them in the ledger's
database (and schema).

Generations. The read models live in a *generation* of tables, ``<prefix>_g<N>_tracking``,
``_positions``, ``_policies`` and ``_exceptions``; the one-row table ``<prefix>_active``
names the generation that is served. Every read resolves the active generation inside its
own transaction, so a rebuild can build generation N+1 beside the live one and swap it in
with a single-row update: readers see generation N or N+1, never a half-built one.

Writes are fenced twice, in the same transaction as the rows they write:

* by the generation's tracking row: a batch commits only if the tracking position is still
  the one the batch started from, so no stretch of the log is ever applied twice;
* for runners that follow the served generation, by the ``<prefix>_active`` row: the commit
  starts with a no-op update of that row *conditional on it still naming the runner's
  generation*. That update takes the row lock (PostgreSQL) or the database write lock
  (SQLite), so a commit and a generation flip — which locks the same row first — are
  serialised: a follower can never commit into a generation that has been retired.
"""

from __future__ import annotations

import fcntl
import re
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

from ledger.config import eventsourcing_env
from ledger.store.pg_ddl import advisory_key, run_missing_ddl
from projections.position_state import LedgerExceptionRecord

PROJECTION_NAME = "availability"
FIRST_GENERATION = 1
READ_ATTEMPTS = 3  # a read that raced a generation drop re-resolves the active generation
INIT_ATTEMPTS = 5
IN_CHUNK = 5_000  # keys per IN (...) list on SQLite (its variable limit is 32,766)
GENERATION_TABLES = ("tracking", "positions", "policies", "exceptions")

_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,39}")
T = TypeVar("T")


class TrackingConflict(Exception):
    """Raised when another runner moved the tracking position first."""


class GenerationChanged(TrackingConflict):
    """Raised when a follower's generation is no longer the active one (a rebuild swapped
    in another): re-read the active generation and continue from its tracking position."""


class RebuildInProgress(Exception):
    """Raised when another rebuild of the same read models holds the rebuild lock."""


@dataclass(frozen=True)
class PositionRow:
    position_id: str
    sku: str
    location_id: str
    state_json: str


@dataclass(frozen=True)
class PolicyRow:
    policy_id: str
    channel: str
    terms_json: str


@dataclass(frozen=True)
class ReadModelRows:
    """Every row of one generation, in key order (comparisons, tests, benchmarks)."""

    generation: int
    position: int
    positions: list[tuple[Any, ...]]
    policies: list[tuple[Any, ...]]
    exceptions: list[tuple[Any, ...]]


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
]


_POSITION_COLUMNS = [
    ("position_id", "text"),
    ("sku", "text"),
    ("location_id", "text"),
    ("state", "text"),
]
_POLICY_COLUMNS = [("policy_id", "text"), ("channel", "text"), ("terms", "text")]
_EXCEPTION_COLUMNS = [
    ("ledger_position", "bigint"),
    ("seq", "integer"),
    ("type", "text"),
    ("sku", "text"),
    ("location_id", "text"),
    ("bucket", "text"),
    ("quantity", "bigint"),
    ("detail", "text"),
    ("source", "text"),
    ("message_id", "text"),
    ("occurred_at", "text"),
    ("recorded_at", "text"),
]


class _Tx:
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


class _Tables:
    """Table names of one generation."""

    def __init__(self, store: ReadModelStore, generation: int) -> None:
        self.generation = generation
        self.base = f"{store.prefix}_g{generation}"
        qualify = store._qualify
        self.tracking = qualify(f"{self.base}_tracking")
        self.positions = qualify(f"{self.base}_positions")
        self.policies = qualify(f"{self.base}_policies")
        self.exceptions = qualify(f"{self.base}_exceptions")

    def ddl(self, collate: str) -> list[str]:
        return [
            statement.format(
                tracking=self.tracking,
                positions=self.positions,
                policies=self.policies,
                exceptions=self.exceptions,
                g=self.base,
                c=collate,
            )
            for statement in _GENERATION_DDL
        ]


class ReadModelStore:
    """One implementation for both engines: they differ in placeholder and connection."""

    def __init__(self, database_url: str, prefix: str = PROJECTION_NAME) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"read-model prefix must match {_PREFIX.pattern}: {prefix!r}")
        self.prefix = prefix
        env = eventsourcing_env(database_url)
        if env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
            self.sqlite_path: str | None = projection_sqlite_path(env["SQLITE_DBNAME"])
            self._sqlite: SQLiteDatastore | None = SQLiteDatastore(
                self.sqlite_path, lock_timeout=int(env.get("SQLITE_LOCK_TIMEOUT", "10"))
            )
            self._postgres: PostgresDatastore | None = None
            self.schema = ""
            self._collate = ""
        else:
            self.sqlite_path = None
            self._sqlite = None
            self.schema = env["POSTGRES_SCHEMA"]
            self._postgres = PostgresDatastore(
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
            self._collate = 'COLLATE "C"'
        self._active_table = self._qualify(f"{prefix}_active")
        self._initialise()

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._postgres is not None:
            self._postgres.close()

    # ---- plumbing -----------------------------------------------------------------------------

    def _qualify(self, name: str) -> str:
        if self._postgres is None:
            return name
        return '"{}".{}'.format(self.schema.replace('"', '""'), name)

    @contextmanager
    def _transaction(self, *, commit: bool = True) -> Iterator[_Tx]:
        if self._sqlite is not None:
            with self._sqlite.transaction(commit=commit) as cursor:
                # The library's wrapper hides rowcount: use the raw cursor.
                yield _Tx(cursor.sqlite_cursor, sqlite=True)
        else:
            assert self._postgres is not None
            with self._postgres.transaction(commit=commit) as cursor:
                yield _Tx(cursor, sqlite=False)

    def _lock_key(self, purpose: str) -> int:
        """A stable 64-bit advisory-lock key for this schema, prefix and purpose."""
        return advisory_key(self.schema, self.prefix, purpose)

    def _initialise(self) -> None:
        """Create the control table and the active generation's tables (idempotent; safe
        when several processes start at once)."""
        for attempt in range(INIT_ATTEMPTS):
            try:
                with self._transaction() as tx:
                    if self._postgres is not None:
                        tx("SELECT pg_advisory_xact_lock(%s)", (self._lock_key("schema"),))
                    tx(_CONTROL_TABLE.format(active=self._active_table))
                    tx(
                        f"INSERT INTO {self._active_table} (name, generation, last_generation)"
                        " VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING",
                        (self.prefix, FIRST_GENERATION, FIRST_GENERATION),
                    )
                    self._create_generation(tx, self._active(tx))
                return
            except Exception as error:  # another process initialising the SQLite file
                if attempt + 1 == INIT_ATTEMPTS or not _is_busy(error):
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _create_generation(self, tx: _Tx, generation: int) -> _Tables:
        tables = _Tables(self, generation)
        if self._postgres is not None:
            # Only missing relations: an API replica starting beside a running projections
            # process must not take table locks the runner's writes wait on (see pg_ddl).
            run_missing_ddl(
                tx.cursor,
                tables.ddl(self._collate),
                schema=self.schema,
                lock_key=self._lock_key("schema"),
            )
        else:
            for statement in tables.ddl(self._collate):
                tx(statement)
        tx(
            f"INSERT INTO {tables.tracking} (name, position) VALUES (%s, 0)"
            " ON CONFLICT (name) DO NOTHING",
            (self.prefix,),
        )
        return tables

    def _active(self, tx: _Tx) -> int:
        rows = tx.rows(
            f"SELECT generation FROM {self._active_table} WHERE name = %s", (self.prefix,)
        )
        return int(rows[0][0])

    def _lock_active(self, tx: _Tx, generation: int | None = None) -> bool:
        """Take the ``<prefix>_active`` row lock (PostgreSQL) / the write lock (SQLite) with a
        no-op update; with ``generation``, only if it is still the active one."""
        sql = f"UPDATE {self._active_table} SET generation = generation WHERE name = %s"
        params: tuple[Any, ...] = (self.prefix,)
        if generation is not None:
            sql += " AND generation = %s"
            params += (generation,)
        return bool(tx(sql, params).rowcount == 1)

    def _read(self, body: Callable[[_Tx, _Tables], T]) -> T:
        """Run ``body`` in a read transaction against the active generation."""
        for attempt in range(READ_ATTEMPTS):
            try:
                with self._transaction(commit=False) as tx:
                    if self._postgres is not None:
                        # One snapshot for every statement of the read: the tracking position
                        # and the rows must agree (under READ COMMITTED a batch committing
                        # between them gave rows newer than the position reported with them).
                        tx("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    return body(tx, _Tables(self, self._active(tx)))
            except Exception as error:
                # The generation was retired and dropped between resolving and reading it.
                if attempt + 1 == READ_ATTEMPTS or not _is_missing_table(error):
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _tracking(tx: _Tx, tables: _Tables, prefix: str) -> int:
        rows = tx.rows(f"SELECT position FROM {tables.tracking} WHERE name = %s", (prefix,))
        return int(rows[0][0]) if rows else 0

    def _in(self, keys: Sequence[str]) -> tuple[str, list[Any]]:
        if self._postgres is not None:
            return "= ANY(%s)", [list(keys)]
        return f"IN ({', '.join(['%s'] * len(keys))})", list(keys)

    # ---- generations --------------------------------------------------------------------------

    def active_generation(self) -> int:
        with self._transaction(commit=False) as tx:
            return self._active(tx)

    def tracking(self) -> tuple[int, int]:
        """The active generation and its tracking position, read together."""
        return self._read(lambda tx, t: (t.generation, self._tracking(tx, t, self.prefix)))

    def generations(self) -> list[int]:
        """Generations whose tables exist (the active one, and any being built or left
        behind by a rebuild that died)."""
        pattern = re.compile(re.escape(self.prefix) + r"_g(\d+)_tracking")
        with self._transaction(commit=False) as tx:
            if self._postgres is not None:
                names = tx.rows(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.schema,)
                )
            else:
                names = tx.rows("SELECT name FROM sqlite_master WHERE type = 'table'")
        found = (pattern.fullmatch(str(name)) for (name,) in names)
        return sorted(int(match[1]) for match in found if match)

    def new_generation(self) -> int:
        """Allocate the next generation number and create its (empty) tables."""
        with self._transaction() as tx:
            tx(
                f"UPDATE {self._active_table} SET last_generation = last_generation + 1"
                " WHERE name = %s",
                (self.prefix,),
            )
            rows = tx.rows(
                f"SELECT last_generation FROM {self._active_table} WHERE name = %s",
                (self.prefix,),
            )
            generation = int(rows[0][0])
            self._create_generation(tx, generation)
        return generation

    def drop_generation(self, generation: int) -> None:
        """Drop a generation's tables; never the active one. One table per transaction, so
        the drop never holds one table's lock while waiting for another's (no deadlock with
        readers that have not yet noticed the switch)."""
        if generation == self.active_generation():
            raise ValueError(f"generation {generation} is active")
        tables = _Tables(self, generation)
        for name in (tables.positions, tables.policies, tables.exceptions, tables.tracking):
            with self._transaction() as tx:
                tx(f"DROP TABLE IF EXISTS {name}")

    @contextmanager
    def rebuild_lock(self) -> Iterator[None]:
        """Only one rebuild at a time: an advisory lock (PostgreSQL) or a file lock (SQLite)."""
        if self._postgres is not None:
            key = self._lock_key("rebuild")
            with self._postgres.get_connection() as conn:  # autocommit: a session lock
                row = conn.execute("SELECT pg_try_advisory_lock(%s) AS locked", (key,)).fetchone()
                if not row or not row["locked"]:
                    raise RebuildInProgress(f"another rebuild of {self.prefix} is running")
                try:
                    yield
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            return
        assert self.sqlite_path is not None
        with open(f"{self.sqlite_path}.{self.prefix}.rebuild-lock", "a+b") as lock_file:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise RebuildInProgress(f"another rebuild of {self.prefix} is running") from error
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def activation(self, generation: int) -> Iterator[Activation]:
        """One transaction that locks the active row, lets the caller load and commit a last
        batch into ``generation``, and then makes ``generation`` the active one.

        While it runs, followers of the old generation cannot commit (they wait on the same
        lock, then find the generation changed), so the old generation's position is fixed
        and the caller can catch up past it before the flip."""
        with self._transaction() as tx:
            self._lock_active(tx)
            activation = Activation(self, tx, generation, previous=self._active(tx))
            yield activation
            tx(
                f"UPDATE {self._active_table} SET generation = %s WHERE name = %s",
                (generation, self.prefix),
            )

    # ---- writes ---------------------------------------------------------------------------------

    def load(
        self,
        generation: int,
        position_ids: Collection[str],
        policy_ids: Collection[str],
        *,
        require_active: bool = True,
    ) -> tuple[dict[str, PositionRow], dict[str, PolicyRow]]:
        """The stored rows of these positions and policies in ``generation`` (one
        transaction). With ``require_active``: GenerationChanged if it is not active."""
        try:
            with self._transaction(commit=False) as tx:
                if require_active and self._active(tx) != generation:
                    raise GenerationChanged(f"generation {generation} is no longer active")
                return self._load(tx, _Tables(self, generation), position_ids, policy_ids)
        except GenerationChanged:
            raise
        except Exception as error:
            if require_active and _is_missing_table(error):
                raise GenerationChanged(f"generation {generation} was dropped") from error
            raise

    def _load(
        self,
        tx: _Tx,
        tables: _Tables,
        position_ids: Collection[str],
        policy_ids: Collection[str],
    ) -> tuple[dict[str, PositionRow], dict[str, PolicyRow]]:
        positions: dict[str, PositionRow] = {}
        policies: dict[str, PolicyRow] = {}
        for chunk in _chunks(sorted(position_ids)):
            clause, params = self._in(chunk)
            for row in tx.rows(
                "SELECT position_id, sku, location_id, state"
                f" FROM {tables.positions} WHERE position_id {clause}",
                params,
            ):
                positions[row[0]] = PositionRow(*row)
        for chunk in _chunks(sorted(policy_ids)):
            clause, params = self._in(chunk)
            for row in tx.rows(
                f"SELECT policy_id, channel, terms FROM {tables.policies} WHERE policy_id {clause}",
                params,
            ):
                policies[row[0]] = PolicyRow(*row)
        return positions, policies

    @property
    def applied_channel(self) -> str:
        """PostgreSQL NOTIFY channel announcing each committed batch."""
        return f"{self.prefix}_applied"

    def commit_batch(
        self,
        *,
        from_position: int,
        to_position: int,
        positions: list[PositionRow],
        policies: list[PolicyRow],
        exceptions: list[LedgerExceptionRecord],
        generation: int | None = None,
        require_active: bool = True,
    ) -> None:
        """Apply a batch and move ``generation``'s tracking ``from_position → to_position``
        atomically (default: the active generation).

        ``require_active`` (followers): fail with GenerationChanged unless ``generation`` is
        still the active one; a rebuild writes its generation before it is active."""
        with self._transaction() as tx:
            if generation is None:
                self._lock_active(tx)
                generation = self._active(tx)
            elif require_active and not self._lock_active(tx, generation):
                raise GenerationChanged(f"generation {generation} is no longer active")
            self._write(
                tx,
                _Tables(self, generation),
                from_position,
                to_position,
                positions,
                policies,
                exceptions,
            )

    def _write(
        self,
        tx: _Tx,
        tables: _Tables,
        from_position: int,
        to_position: int,
        positions: list[PositionRow],
        policies: list[PolicyRow],
        exceptions: list[LedgerExceptionRecord],
    ) -> None:
        moved = tx(
            f"UPDATE {tables.tracking} SET position = %s WHERE name = %s AND position = %s",
            (to_position, self.prefix, from_position),
        )
        if moved.rowcount != 1:
            raise TrackingConflict(f"{tables.base}: tracking is no longer at {from_position}")
        if self._postgres is not None:
            # Delivered at commit: API replicas that LISTEN wake at once instead of polling.
            tx(f'NOTIFY "{self.applied_channel}"')
        tx.insert(
            tables.positions,
            _POSITION_COLUMNS,
            [(r.position_id, r.sku, r.location_id, r.state_json) for r in positions],
            "ON CONFLICT (position_id) DO UPDATE SET state = excluded.state",
        )
        tx.insert(
            tables.policies,
            _POLICY_COLUMNS,
            [(p.policy_id, p.channel, p.terms_json) for p in policies],
            "ON CONFLICT (policy_id) DO UPDATE SET terms = excluded.terms",
        )
        tx.insert(
            tables.exceptions,
            _EXCEPTION_COLUMNS,
            [
                (
                    e.ledger_position,
                    seq,
                    e.type,
                    e.sku,
                    e.location_id,
                    e.bucket,
                    e.quantity,
                    e.detail,
                    e.source,
                    e.message_id,
                    e.occurred_at.isoformat(),
                    e.recorded_at.isoformat(),
                )
                for e, seq in _numbered(exceptions)
            ],
        )

    # ---- reads (the active generation, resolved per read) ---------------------------------------

    def applied_position(self, generation: int | None = None) -> int:
        if generation is None:
            return self.tracking()[1]
        with self._transaction(commit=False) as tx:
            return self._tracking(tx, _Tables(self, generation), self.prefix)

    def position(self, position_id: str) -> PositionRow | None:
        rows = self._read(
            lambda tx, t: tx.rows(
                "SELECT position_id, sku, location_id, state"
                f" FROM {t.positions} WHERE position_id = %s",
                (position_id,),
            )
        )
        return PositionRow(*rows[0]) if rows else None

    def policy(self, policy_id: str) -> PolicyRow | None:
        rows = self._read(
            lambda tx, t: tx.rows(
                f"SELECT policy_id, channel, terms FROM {t.policies} WHERE policy_id = %s",
                (policy_id,),
            )
        )
        return PolicyRow(*rows[0]) if rows else None

    def _positions_of_sku(self, tx: _Tx, t: _Tables, sku: str) -> list[PositionRow]:
        rows = tx.rows(
            "SELECT position_id, sku, location_id, state"
            f" FROM {t.positions} WHERE sku = %s ORDER BY location_id",
            (sku,),
        )
        return [PositionRow(*row) for row in rows]

    def positions_of_sku(self, sku: str) -> tuple[int, list[PositionRow]]:
        """Every position of ``sku`` and the tracking position, from one snapshot."""
        return self._read(
            lambda tx, t: (self._tracking(tx, t, self.prefix), self._positions_of_sku(tx, t, sku))
        )

    def availability_inputs(
        self, sku: str, channel: str
    ) -> tuple[int, list[PositionRow], str | None]:
        """Tracking position, positions of ``sku`` and ``channel``'s policy terms, from one
        generation in one transaction."""

        def body(tx: _Tx, t: _Tables) -> tuple[int, list[PositionRow], str | None]:
            applied = self._tracking(tx, t, self.prefix)
            rows = self._positions_of_sku(tx, t, sku)
            terms = tx.rows(f"SELECT terms FROM {t.policies} WHERE channel = %s", (channel,))
            return applied, rows, terms[0][0] if terms else None

        return self._read(body)

    def positions_at_location(self, location_id: str) -> list[PositionRow]:
        rows = self._read(
            lambda tx, t: tx.rows(
                "SELECT position_id, sku, location_id, state"
                f" FROM {t.positions} WHERE location_id = %s ORDER BY sku",
                (location_id,),
            )
        )
        return [PositionRow(*row) for row in rows]

    def policy_terms(self, channel: str) -> str | None:
        rows = self._read(
            lambda tx, t: tx.rows(f"SELECT terms FROM {t.policies} WHERE channel = %s", (channel,))
        )
        return rows[0][0] if rows else None

    def exceptions(
        self,
        *,
        exception_type: str | None,
        sku: str | None,
        location_id: str | None,
        after: tuple[int, int],
        limit: int,
    ) -> list[LedgerExceptionRecord]:
        where = "(ledger_position, seq) > (%s, %s)"
        params: list[Any] = [after[0], after[1]]
        for column, value in (
            ("type", exception_type),
            ("sku", sku),
            ("location_id", location_id),
        ):
            if value:
                where += f" AND {column} = %s"
                params.append(value)
        params.append(limit)
        rows = self._read(
            lambda tx, t: tx.rows(
                "SELECT ledger_position, seq, type, sku, location_id, bucket, quantity, detail,"
                f" source, message_id, occurred_at, recorded_at FROM {t.exceptions}"
                f" WHERE {where} ORDER BY ledger_position, seq LIMIT %s",
                params,
            )
        )
        return [
            LedgerExceptionRecord(
                ledger_position=int(row[0]),
                type=row[2],
                sku=row[3],
                location_id=row[4],
                bucket=row[5],
                quantity=int(row[6]),
                detail=row[7],
                source=row[8],
                message_id=row[9],
                occurred_at=datetime.fromisoformat(row[10]),
                recorded_at=datetime.fromisoformat(row[11]),
                seq=int(row[1]),
            )
            for row in rows
        ]

    def rows(self, generation: int | None = None) -> ReadModelRows:
        """Every row of ``generation`` (default: the active one), in key order."""

        def body(tx: _Tx, t: _Tables) -> ReadModelRows:
            return ReadModelRows(
                generation=t.generation,
                position=self._tracking(tx, t, self.prefix),
                positions=tx.rows(
                    "SELECT position_id, sku, location_id, state"
                    f" FROM {t.positions} ORDER BY position_id"
                ),
                policies=tx.rows(
                    f"SELECT policy_id, channel, terms FROM {t.policies} ORDER BY policy_id"
                ),
                exceptions=tx.rows(
                    "SELECT ledger_position, seq, type, sku, location_id, bucket, quantity,"
                    " detail, source, message_id, occurred_at, recorded_at"
                    f" FROM {t.exceptions} ORDER BY ledger_position, seq"
                ),
            )

        if generation is None:
            return self._read(body)
        with self._transaction(commit=False) as tx:
            return body(tx, _Tables(self, generation))


class Activation:
    """The open transaction of :meth:`ReadModelStore.activation`."""

    def __init__(self, store: ReadModelStore, tx: _Tx, generation: int, previous: int) -> None:
        self._store = store
        self._tx = tx
        self._tables = _Tables(store, generation)
        self.generation = generation
        self.previous = previous  # the generation served until this transaction commits

    def applied_position(self) -> int:
        return self._store._tracking(self._tx, self._tables, self._store.prefix)

    def load(
        self, position_ids: Collection[str], policy_ids: Collection[str]
    ) -> tuple[dict[str, PositionRow], dict[str, PolicyRow]]:
        return self._store._load(self._tx, self._tables, position_ids, policy_ids)

    def commit_batch(
        self,
        *,
        from_position: int,
        to_position: int,
        positions: list[PositionRow],
        policies: list[PolicyRow],
        exceptions: list[LedgerExceptionRecord],
    ) -> None:
        self._store._write(
            self._tx, self._tables, from_position, to_position, positions, policies, exceptions
        )


def _numbered(
    exceptions: Iterable[LedgerExceptionRecord],
) -> Iterator[tuple[LedgerExceptionRecord, int]]:
    """Number exceptions within their ledger position (event), not within the batch, so the
    keys do not depend on where batches happen to start: a rebuild reproduces them."""
    seen: dict[int, int] = {}
    for record in exceptions:
        seq = seen.get(record.ledger_position, 0)
        seen[record.ledger_position] = seq + 1
        yield record, seq


def _chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(keys), IN_CHUNK):
        yield keys[start : start + IN_CHUNK]


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_missing_table(error: BaseException) -> bool:
    return any(
        isinstance(e, psycopg.errors.UndefinedTable)
        or (isinstance(e, sqlite3.OperationalError) and "no such table" in str(e))
        for e in _causes(error)
    )


def _is_busy(error: BaseException) -> bool:
    return any(
        (isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)))
        or isinstance(e, psycopg.errors.UniqueViolation)  # concurrent CREATE ... IF NOT EXISTS
        for e in _causes(error)
    )


def projection_sqlite_path(ledger_path: str) -> str:
    """``./ledger.db`` → ``./ledger.projections.db`` (one SQLite file per component)."""
    if ledger_path == ":memory:" or urlsplit(ledger_path).scheme == "file":
        raise ValueError("projections need a file-backed SQLite ledger")
    path = Path(ledger_path)
    return str(path.with_name(f"{path.stem}.projections{path.suffix or '.db'}"))
