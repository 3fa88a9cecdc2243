"""Read-model tables and their tracking position, written together in one transaction.

SQLite keeps them in a file of their own beside the ledger's (the library's SQLite tables
have fixed names, so one file per component); PostgreSQL keeps them in the ledger's
database. Writes are fenced by the tracking row: a batch commits only if the tracking
position is still the one the batch started from, so two runners can never both apply it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

from ledger.config import eventsourcing_env
from projections.position_state import LedgerExceptionRecord

PROJECTION_NAME = "availability"


class TrackingConflict(Exception):
    """Raised when another runner moved the tracking position first."""


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


_TABLES = [
    "CREATE TABLE IF NOT EXISTS {p}_tracking (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {p}_positions (position_id TEXT PRIMARY KEY,"
    " sku TEXT {c} NOT NULL, location_id TEXT {c} NOT NULL, state TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS {p}_positions_by_sku ON {p}_positions (sku, location_id)",
    "CREATE INDEX IF NOT EXISTS {p}_positions_by_location ON {p}_positions (location_id, sku)",
    "CREATE TABLE IF NOT EXISTS {p}_policies (policy_id TEXT PRIMARY KEY,"
    " channel TEXT NOT NULL, terms TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS {p}_policies_by_channel ON {p}_policies (channel)",
    "CREATE TABLE IF NOT EXISTS {p}_exceptions (ledger_position BIGINT NOT NULL,"
    " seq INTEGER NOT NULL, type TEXT NOT NULL, sku TEXT {c} NOT NULL,"
    " location_id TEXT {c} NOT NULL, bucket TEXT NOT NULL, quantity BIGINT NOT NULL,"
    " detail TEXT NOT NULL, source TEXT NOT NULL, message_id TEXT NOT NULL,"
    " occurred_at TEXT NOT NULL, recorded_at TEXT NOT NULL,"
    " PRIMARY KEY (ledger_position, seq))",
]


class ReadModelStore:
    """One implementation for both engines: they differ in placeholder and connection."""

    def __init__(self, database_url: str, prefix: str = PROJECTION_NAME) -> None:
        self.prefix = prefix
        env = eventsourcing_env(database_url)
        if env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
            self._sqlite = SQLiteDatastore(projection_sqlite_path(env["SQLITE_DBNAME"]))
            self._postgres: PostgresDatastore | None = None
            collate = ""
        else:
            self._sqlite = None
            self._postgres = PostgresDatastore(
                env["POSTGRES_DBNAME"],
                env["POSTGRES_HOST"],
                env["POSTGRES_PORT"],
                env["POSTGRES_USER"],
                env["POSTGRES_PASSWORD"],
                connect_timeout=float(env["POSTGRES_CONNECT_TIMEOUT"]),
                pool_size=2,
                max_overflow=4,
                schema=env["POSTGRES_SCHEMA"],
            )
            collate = 'COLLATE "C"'
        with self._transaction() as run:
            for statement in _TABLES:
                run(statement.format(p=prefix, c=collate))
            run(
                f"INSERT INTO {prefix}_tracking (name, position) VALUES (%s, 0)"
                " ON CONFLICT (name) DO NOTHING",
                (prefix,),
            )

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._postgres is not None:
            self._postgres.close()

    @contextmanager
    def _transaction(self, *, commit: bool = True) -> Iterator[Any]:
        """Yields ``run(sql, params) -> cursor`` inside one transaction ('%s' placeholders)."""
        if self._sqlite is not None:
            with self._sqlite.transaction(commit=commit) as cursor:
                raw = cursor.sqlite_cursor  # the library's wrapper hides rowcount

                def run_sqlite(sql: str, params: Sequence[Any] = ()) -> Any:
                    raw.execute(sql.replace("%s", "?"), tuple(params))
                    return raw

                yield run_sqlite
        else:
            assert self._postgres is not None
            with self._postgres.transaction(commit=commit) as cursor:

                def run_postgres(sql: str, params: Sequence[Any] = ()) -> Any:
                    cursor.execute(sql, tuple(params), prepare=False)
                    return cursor

                yield run_postgres

    @staticmethod
    def _rows(cursor: Any) -> list[tuple[Any, ...]]:
        return [
            tuple(row.values()) if isinstance(row, dict) else tuple(row)
            for row in cursor.fetchall()
        ]

    # ---- writes ---------------------------------------------------------------------------------

    def commit_batch(
        self,
        *,
        from_position: int,
        to_position: int,
        positions: list[PositionRow],
        policies: list[PolicyRow],
        exceptions: list[LedgerExceptionRecord],
    ) -> None:
        """Apply a batch and move tracking ``from_position → to_position`` atomically."""
        p = self.prefix
        with self._transaction() as run:
            moved = run(
                f"UPDATE {p}_tracking SET position = %s WHERE name = %s AND position = %s",
                (to_position, p, from_position),
            )
            if moved.rowcount != 1:
                raise TrackingConflict(f"tracking is no longer at {from_position}")
            for row in positions:
                run(
                    f"INSERT INTO {p}_positions VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (position_id) DO UPDATE SET state = excluded.state",
                    (row.position_id, row.sku, row.location_id, row.state_json),
                )
            for policy in policies:
                run(
                    f"INSERT INTO {p}_policies VALUES (%s, %s, %s)"
                    " ON CONFLICT (policy_id) DO UPDATE SET terms = excluded.terms",
                    (policy.policy_id, policy.channel, policy.terms_json),
                )
            for seq, e in enumerate(exceptions):
                run(
                    f"INSERT INTO {p}_exceptions VALUES"
                    " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
                    ),
                )

    # ---- reads ----------------------------------------------------------------------------------

    def applied_position(self) -> int:
        with self._transaction(commit=False) as run:
            rows = self._rows(
                run(f"SELECT position FROM {self.prefix}_tracking WHERE name = %s", (self.prefix,))
            )
            return int(rows[0][0]) if rows else 0

    def position(self, position_id: str) -> PositionRow | None:
        with self._transaction(commit=False) as run:
            rows = self._rows(
                run(f"SELECT * FROM {self.prefix}_positions WHERE position_id = %s", (position_id,))
            )
        return PositionRow(*rows[0]) if rows else None

    def policy(self, policy_id: str) -> PolicyRow | None:
        with self._transaction(commit=False) as run:
            rows = self._rows(
                run(f"SELECT * FROM {self.prefix}_policies WHERE policy_id = %s", (policy_id,))
            )
        return PolicyRow(*rows[0]) if rows else None

    def positions_of_sku(self, sku: str) -> tuple[int, list[PositionRow]]:
        """Every position of ``sku`` and the tracking position, read consistently."""
        p = self.prefix
        with self._transaction(commit=False) as run:
            tracking = self._rows(run(f"SELECT position FROM {p}_tracking WHERE name = %s", (p,)))
            rows = self._rows(
                run(f"SELECT * FROM {p}_positions WHERE sku = %s ORDER BY location_id", (sku,))
            )
        return int(tracking[0][0]) if tracking else 0, [PositionRow(*row) for row in rows]

    def positions_at_location(self, location_id: str) -> list[PositionRow]:
        with self._transaction(commit=False) as run:
            rows = self._rows(
                run(
                    f"SELECT * FROM {self.prefix}_positions WHERE location_id = %s ORDER BY sku",
                    (location_id,),
                )
            )
        return [PositionRow(*row) for row in rows]

    def policy_terms(self, channel: str) -> str | None:
        with self._transaction(commit=False) as run:
            rows = self._rows(
                run(f"SELECT terms FROM {self.prefix}_policies WHERE channel = %s", (channel,))
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
        sql = f"SELECT * FROM {self.prefix}_exceptions WHERE (ledger_position, seq) > (%s, %s)"
        params: list[Any] = [after[0], after[1]]
        for column, value in (
            ("type", exception_type),
            ("sku", sku),
            ("location_id", location_id),
        ):
            if value:
                sql += f" AND {column} = %s"
                params.append(value)
        sql += " ORDER BY ledger_position, seq LIMIT %s"
        params.append(limit)
        with self._transaction(commit=False) as run:
            rows = self._rows(run(sql, params))
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


def projection_sqlite_path(ledger_path: str) -> str:
    """``./ledger.db`` → ``./ledger.projections.db`` (one SQLite file per component)."""
    if ledger_path == ":memory:" or urlsplit(ledger_path).scheme == "file":
        raise ValueError("projections need a file-backed SQLite ledger")
    path = Path(ledger_path)
    return str(path.with_name(f"{path.stem}.projections{path.suffix or '.db'}"))
