"""PostgreSQL application recorder with the ledger's index tables (production)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
    PostgresRecorder,
)
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from ledger.store.index_ops import IndexOp, PositionIndexed, ReservationIndexed, ReservationRow
from ledger.store.pg_ddl import advisory_key, run_missing_ddl


class SerialisedDDL(PostgresRecorder):
    """create_table for recorders constructed by every process, most of them next to running
    writers: one transaction, creators queued on an advisory lock, and only missing relations
    created (see ledger.store.pg_ddl)."""

    def create_table(self) -> None:
        with self.datastore.transaction(commit=True) as curs:
            run_missing_ddl(
                curs,
                [statement.as_string() for statement in self.sql_create_statements],
                schema=self.datastore.schema,
                lock_key=advisory_key(self.datastore.schema, "ledger-ddl"),
            )
        self.datastore.register_type_adapters()


class LedgerSnapshotRecorder(SerialisedDDL, PostgresAggregateRecorder):
    pass


class LedgerPostgresRecorder(SerialisedDDL, PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(self.datastore.schema)
        prefix = events_table_name.removesuffix("_events")
        self._positions = Identifier(f"{prefix}_position_index")
        self._reservations = Identifier(f"{prefix}_reservation_index")
        self._schema = schema
        self.sql_create_statements.extend(
            [
                SQL(
                    'CREATE TABLE IF NOT EXISTS {s}.{t} (sku text COLLATE "C" NOT NULL,'
                    ' location_id text COLLATE "C" NOT NULL, position_id uuid NOT NULL,'
                    " PRIMARY KEY (sku, location_id))"
                ).format(s=schema, t=self._positions),
                SQL("CREATE INDEX IF NOT EXISTS {i} ON {s}.{t} (location_id, sku)").format(
                    i=Identifier(f"{prefix}_position_index_by_location"),
                    s=schema,
                    t=self._positions,
                ),
                SQL(
                    "CREATE TABLE IF NOT EXISTS {s}.{t}"
                    ' (reservation_id text COLLATE "C" PRIMARY KEY,'
                    " channel text NOT NULL, order_ref text NOT NULL, status text NOT NULL,"
                    " expires_at_us bigint NOT NULL, created_at_us bigint NOT NULL)"
                ).format(s=schema, t=self._reservations),
                SQL(
                    "CREATE INDEX IF NOT EXISTS {i}"
                    " ON {s}.{t} (channel, created_at_us, reservation_id)"
                ).format(
                    i=Identifier(f"{prefix}_reservation_index_by_channel"),
                    s=schema,
                    t=self._reservations,
                ),
                SQL(
                    "CREATE INDEX IF NOT EXISTS {i}"
                    " ON {s}.{t} (channel, order_ref, created_at_us, reservation_id)"
                ).format(
                    i=Identifier(f"{prefix}_reservation_index_by_order"),
                    s=schema,
                    t=self._reservations,
                ),
                SQL("CREATE INDEX IF NOT EXISTS {i} ON {s}.{t} (status, expires_at_us)").format(
                    i=Identifier(f"{prefix}_reservation_index_due"),
                    s=schema,
                    t=self._reservations,
                ),
            ]
        )

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # The library's hook, run in the same pipelined transaction *before* the event rows.
        # Written after them, a version conflict on the event INSERT surfaced in psycopg's
        # pipeline as PipelineAborted on these statements (an OperationalError, so callers
        # got UNAVAILABLE instead of a retried conflict); written first, the INSERT is the
        # last statement before the sync and its UniqueViolation arrives as IntegrityError.
        # No deadlock: the index rows are only taken before the events table lock, never
        # while holding it. prepare=False in _apply: psycopg (3.3.9) records a statement
        # that reached its prepare threshold in an aborted pipeline as prepared, and the next
        # use fails with 'prepared statement "_pg3_N" does not exist'.
        super()._insert_events(curs, stored_events, **kwargs)
        for op in kwargs.get("index_ops", ()):
            self._apply(curs, op)

    def _apply(self, curs: Cursor[DictRow], op: IndexOp) -> None:
        if isinstance(op, PositionIndexed):
            curs.execute(
                SQL("INSERT INTO {s}.{t} VALUES (%s, %s, %s) ON CONFLICT DO NOTHING").format(
                    s=self._schema, t=self._positions
                ),
                (op.sku, op.location_id, op.position_id),
                prepare=False,  # never prepared: see the note in _insert_stored_events
            )
        elif isinstance(op, ReservationIndexed):
            curs.execute(
                SQL(
                    "INSERT INTO {s}.{t} VALUES (%s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (reservation_id) DO UPDATE SET status = EXCLUDED.status"
                ).format(s=self._schema, t=self._reservations),
                (
                    op.reservation_id,
                    op.channel,
                    op.order_ref,
                    op.status,
                    op.expires_at_us,
                    op.created_at_us,
                ),
                prepare=False,
            )
        else:  # pragma: no cover
            raise AssertionError(f"unknown index op {op!r}")

    # ---- lookups ----------------------------------------------------------------------------

    def notification_id_of(self, originator_id: UUID, version: int) -> int | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT notification_id FROM {s}.{t}"
                    " WHERE originator_id = %s AND originator_version = %s"
                ).format(s=self._schema, t=Identifier(self.events_table_name)),
                (originator_id, version),
            )
            row = curs.fetchone()
            return None if row is None else int(row["notification_id"])

    def select_positions(
        self, *, sku: str | None, location_id: str | None, after: tuple[str, str], limit: int
    ) -> list[tuple[str, str]]:
        with self.datastore.transaction(commit=False) as curs:
            if sku is not None:
                curs.execute(
                    SQL(
                        "SELECT sku, location_id FROM {s}.{t} WHERE sku = %s AND location_id > %s"
                        " ORDER BY location_id LIMIT %s"
                    ).format(s=self._schema, t=self._positions),
                    (sku, after[1], limit),
                )
            else:
                curs.execute(
                    SQL(
                        "SELECT sku, location_id FROM {s}.{t} WHERE location_id = %s AND sku > %s"
                        " ORDER BY sku LIMIT %s"
                    ).format(s=self._schema, t=self._positions),
                    (location_id, after[0], limit),
                )
            return [(row["sku"], row["location_id"]) for row in curs.fetchall()]

    def select_reservations(
        self, *, channel: str, order_ref: str | None, after: tuple[int, str], limit: int
    ) -> list[ReservationRow]:
        query = "SELECT * FROM {s}.{t} WHERE channel = %s"
        query += " AND (created_at_us, reservation_id) > (%s, %s)"
        params: list[Any] = [channel, after[0], after[1]]
        if order_ref is not None:
            query += " AND order_ref = %s"
            params.append(order_ref)
        query += " ORDER BY created_at_us, reservation_id LIMIT %s"
        params.append(limit)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(SQL(query).format(s=self._schema, t=self._reservations), params)
            return [
                ReservationRow(
                    row["reservation_id"],
                    row["channel"],
                    row["order_ref"],
                    row["status"],
                    row["expires_at_us"],
                    row["created_at_us"],
                )
                for row in curs.fetchall()
            ]

    def select_due_reservations(self, *, now_us: int, limit: int) -> list[str]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT reservation_id FROM {s}.{t} WHERE status = 'ACTIVE'"
                    " AND expires_at_us <= %s ORDER BY expires_at_us LIMIT %s"
                ).format(s=self._schema, t=self._reservations),
                (now_us, limit),
            )
            return [row["reservation_id"] for row in curs.fetchall()]


class LedgerPostgresFactory(PostgresFactory):
    """PERSISTENCE_MODULE for PostgreSQL: the library's factory with our recorders."""

    aggregate_recorder_class = LedgerSnapshotRecorder
    application_recorder_class = LedgerPostgresRecorder
