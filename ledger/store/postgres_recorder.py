"""PostgreSQL application recorder with the ledger's index tables (production)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
from eventsourcing import persistence
from eventsourcing.persistence import ProgrammingError, StoredEvent
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
    PostgresRecorder,
)
from psycopg import Cursor
from psycopg.rows import DictRow, dict_row
from psycopg.sql import SQL, Composed, Identifier

from ledger.store.async_ranges import AsyncRangeReader
from ledger.store.entry_queries import EntryQueries
from ledger.store.index_ops import (
    EntryIndexed,
    EntryRow,
    EventRange,
    IndexOp,
    PositionIndexed,
    ReservationIndexed,
    ReservationRow,
)
from ledger.store.ledger_recorder import LedgerRecorder
from ledger.store.pg_ddl import advisory_key, run_missing_ddl
from ledger.store.pg_schema import LedgerTables, create_statements
from ledger.store.writer_mutex import PostgresWriterMutex, Turn

# The library's insert without its retry decorator (ledger.store.retries bounds retries).
_library_insert_events = inspect.unwrap(PostgresApplicationRecorder.insert_events)
# psycopg's errors as the library raises them (its datastore maps them the same way).
_LIBRARY_ERRORS: tuple[tuple[type[psycopg.Error], type[persistence.PersistenceError]], ...] = (
    (psycopg.IntegrityError, persistence.IntegrityError),
    (psycopg.InterfaceError, persistence.InterfaceError),
    (psycopg.OperationalError, persistence.OperationalError),
    (psycopg.DataError, persistence.DataError),
    (psycopg.InternalError, persistence.InternalError),
    (psycopg.ProgrammingError, persistence.ProgrammingError),
    (psycopg.NotSupportedError, persistence.NotSupportedError),
    (psycopg.DatabaseError, persistence.DatabaseError),
)


def _rendered(statement: Composed) -> bytes:
    """A statement rendered once: psycopg renders a composed one again on every execute."""
    return statement.as_bytes(None)


def _library_error(error: psycopg.Error) -> persistence.PersistenceError:
    for raised, mapped in _LIBRARY_ERRORS:
        if isinstance(error, raised):
            return mapped(str(error))
    return persistence.PersistenceError(str(error))


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


class LedgerPostgresRecorder(EntryQueries, SerialisedDDL, PostgresApplicationRecorder):
    placeholder = "%s"

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        tables = LedgerTables(self.datastore.schema, events_table_name)
        self._schema = Identifier(tables.schema)
        self._events = tables.events
        self._positions = tables.positions
        self._reservations = tables.reservations
        self._entries_name = tables.entries_name
        self._entries = tables.entries
        self._insert_columns_statement = _rendered(
            SQL(
                "WITH ev AS (INSERT INTO {s}.{t} (originator_id, originator_version, topic, state)"
                " SELECT * FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[])"
                " RETURNING notification_id)"
                " SELECT notification_id, (SELECT coalesce(max(notification_id), 0) FROM {s}.{t})"
                " AS before FROM ev ORDER BY notification_id"
            ).format(s=self._schema, t=self._events, id_type=SQL(self.datastore.originator_id_type))
        )
        # The newest ledger entry: read by entry_head and, under the lock, by the writer mutex.
        # The events and, when the commit has position events, their ledger entries in one
        # statement: numbering the entries after the events' RETURNING cost a round trip
        # per commit. The entries are numbered after the head in notification order, under
        # the events table lock the statement runs after, so seq stays gap-free and in commit
        # order; the CHECK on recorded_at fails the statement (IntegrityError) as a version
        # conflict does. ``entries`` counts the entry rows written, to catch any not joined.
        self._insert_with_entries_statement = _rendered(
            SQL(
                "WITH ev AS (INSERT INTO {s}.{t} (originator_id, originator_version, topic, state)"
                " SELECT * FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[])"
                " RETURNING notification_id, originator_id, originator_version),"
                " head AS (SELECT coalesce(max(seq), 0) AS seq, coalesce((SELECT recorded_at_us"
                " FROM {s}.{x} ORDER BY seq DESC LIMIT 1), 0) AS rec FROM {s}.{x}),"
                " en AS (INSERT INTO {s}.{x} (seq, notification_id, position_id, version,"
                " recorded_at_us, occurred_at_us, max_occurred_at_us, late, appended_after_us)"
                " SELECT head.seq + row_number() OVER (ORDER BY ev.notification_id),"
                " ev.notification_id, n.pid, n.ver, n.rec, n.occ, n.maxocc, n.late, head.rec"
                " FROM unnest(%b::uuid[], %b::integer[], %b::bigint[], %b::bigint[], %b::bigint[],"
                " %b::boolean[]) AS n(pid, ver, rec, occ, maxocc, late)"
                " JOIN ev ON ev.originator_id = n.pid AND ev.originator_version = n.ver"
                " CROSS JOIN head RETURNING 1)"
                " SELECT notification_id, (SELECT count(*) FROM en) AS entries,"
                " (SELECT coalesce(max(notification_id), 0) FROM {s}.{t}) AS before"
                " FROM ev ORDER BY notification_id"
            ).format(
                s=self._schema,
                t=self._events,
                x=self._entries,
                id_type=SQL(self.datastore.originator_id_type),
            )
        )
        self._head_statement = _rendered(
            SQL("SELECT seq, recorded_at_us FROM {s}.{t} ORDER BY seq DESC LIMIT 1").format(
                s=self._schema, t=self._entries
            )
        )
        # A range whose gt is FROM_SNAPSHOT (negative) reads the aggregate's newest snapshot
        # and the events after it: a batch's uncached aggregates in this one statement,
        # instead of two round trips each through the library's repository.
        self._select_ranges_statement = _rendered(
            SQL(
                "SELECT r.id AS originator_id, x.originator_version, x.topic, x.state"
                " FROM unnest(%b::uuid[], %b::integer[], %b::integer[]) AS r(id, gt, lte)"
                " LEFT JOIN LATERAL (SELECT originator_version, topic, state FROM {s}.{n}"
                " WHERE r.gt < 0 AND originator_id = r.id AND originator_version <= r.lte"
                " ORDER BY originator_version DESC LIMIT 1) AS snap ON true"
                # Lateral, so each range is an index lookup: as a join the planner hashed
                # the whole events table once the batch held a few hundred ranges.
                " CROSS JOIN LATERAL (SELECT snap.originator_version, snap.topic, snap.state"
                " WHERE snap.originator_version IS NOT NULL"
                " UNION ALL SELECT e.originator_version, e.topic, e.state FROM {s}.{t} e"
                " WHERE e.originator_id = r.id"
                " AND e.originator_version > coalesce(snap.originator_version, greatest(r.gt, 0))"
                " AND e.originator_version <= r.lte) AS x"
                " ORDER BY r.id, x.originator_version"
            ).format(s=self._schema, t=self._events, n=tables.snapshots)
        )
        # Read by the writer mutex with the lock: whether anything was committed since the
        # writer's own last commit, and which aggregates (ledger.pipeline, "synced").
        self._max_notification_statement = _rendered(
            SQL("SELECT coalesce(max(notification_id), 0) FROM {s}.{t}").format(
                s=self._schema, t=self._events
            )
        )
        self._changed_statement = _rendered(
            SQL(
                "SELECT DISTINCT originator_id FROM {s}.{t}"
                " WHERE notification_id > %s AND notification_id <= %s LIMIT %s"
            ).format(s=self._schema, t=self._events)
        )
        # A commit in the writer's turn (insert_events(turn=...)): its own statements.
        self._lock_events_statement = _rendered(
            SQL("LOCK TABLE {s}.{t} IN EXCLUSIVE MODE").format(s=self._schema, t=self._events)
        )
        self._notify_statement = _rendered(
            SQL("NOTIFY {c}").format(c=Identifier(self.channel_name))
        )
        self._index_positions_statement = _rendered(
            SQL(
                "INSERT INTO {s}.{t} SELECT * FROM unnest(%s::text[], %s::text[], %s::uuid[])"
                " ON CONFLICT DO NOTHING"
            ).format(s=self._schema, t=self._positions)
        )
        self._index_reservations_statement = _rendered(
            SQL(
                "INSERT INTO {s}.{t} SELECT * FROM unnest(%s::text[], %s::text[],"
                " %s::text[], %s::text[], %s::bigint[], %s::bigint[])"
                " ON CONFLICT (reservation_id) DO UPDATE SET status = EXCLUDED.status"
            ).format(s=self._schema, t=self._reservations)
        )
        self.sql_create_statements.extend(create_statements(tables))

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """The library's insert, or with ``turn`` (ledger.store.writer_mutex.Turn) the same
        statements in the writer's turn transaction, committed with one round trip: the
        index rows, the table lock, the notify, the events with their entries, COMMIT."""
        turn: Turn | None = kwargs.get("turn")
        if turn is None:
            ids: Sequence[int] | None = _library_insert_events(self, stored_events, **kwargs)
            return ids
        if turn.failed is not None:
            raise turn.failed  # a retry: the turn's transaction is gone with its connection
        connection = turn.connection
        try:
            with connection.cursor(row_factory=dict_row) as curs:
                self._insert_events(curs, stored_events, **kwargs)
            with connection.cursor(row_factory=dict_row) as curs:
                # No SET LOCAL lock_timeout: the turn's session bounds lock waits itself.
                curs.execute(self._lock_events_statement)
                curs.execute(self._notify_statement)
                self._insert_rows(curs, stored_events, **kwargs)
                connection.commit()  # sends COMMIT and syncs: every result arrives now
                rows = self._fetch_rows(curs, stored_events, **kwargs)
        except psycopg.Error as error:
            raise turn.fail(_library_error(error)) from error
        turn.head_before = int(rows[0]["before"]) if rows else None
        return [row["notification_id"] for row in rows]

    def _fetch_ids_after_insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # Runs after the event INSERT (which wrote the entries too) and its sync.
        return [row["notification_id"] for row in self._fetch_rows(curs, stored_events, **kwargs)]

    def _fetch_rows(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> list[DictRow]:
        """The insert's rows, checked: one per event, and every entry written. ``before``
        is the greatest notification id before this commit (the statement's snapshot,
        taken under the table lock)."""
        rows = curs.fetchall()
        entries: Sequence[EntryIndexed] = kwargs.get("entries", ())
        if len(rows) != len(stored_events) or (entries and int(rows[0]["entries"]) != len(entries)):
            raise ProgrammingError(
                f"recorded {len(rows)} of {len(stored_events)} events"
                f" ({rows[0]['entries'] if entries and rows else 0} of {len(entries)} entries)"
            )
        return rows

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # The library's hook, run in the same pipelined transaction *before* the event rows.
        # Written after them, a version conflict on the event INSERT surfaced in psycopg's
        # pipeline as PipelineAborted on these statements (an OperationalError, so callers
        # got UNAVAILABLE instead of a retried conflict); written first, the INSERT is the
        # last statement before the sync and its UniqueViolation arrives as IntegrityError.
        # No deadlock: the index rows are only taken before the events table lock, never
        # while holding it. prepare=False: psycopg (3.3.9) records a statement that reached
        # its prepare threshold in an aborted pipeline as prepared, and the next use fails
        # with 'prepared statement "_pg3_N" does not exist'.
        super()._insert_events(curs, stored_events, **kwargs)
        positions, reservations = _split(kwargs.get("index_ops", ()))
        # One statement per table for the whole commit, not one per command.
        if positions:
            curs.execute(
                self._index_positions_statement,
                (
                    [op.sku for op in positions],
                    [op.location_id for op in positions],
                    [UUID(op.position_id) for op in positions],
                ),
                prepare=False,
            )
        if reservations:
            curs.execute(
                self._index_reservations_statement,
                (
                    [op.reservation_id for op in reservations],
                    [op.channel for op in reservations],
                    [op.order_ref for op in reservations],
                    [op.status for op in reservations],
                    [op.expires_at_us for op in reservations],
                    [op.created_at_us for op in reservations],
                ),
                prepare=False,
            )

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # The library's steps (lock the table for commit-ordered ids, notify, insert), but
        # the rows go as four binary (%b) column arrays instead of one array of composites in
        # text form, whose per-field escaping was the writer's largest cost under the lock.
        self._lock_table(curs)
        self._notify_channel(curs)
        self._insert_rows(curs, stored_events, **kwargs)

    def _insert_rows(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        """The events and, when there are any, their ledger entries (one statement)."""
        events = (
            [e.originator_id for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )
        entries: Sequence[EntryIndexed] = kwargs.get("entries", ())
        if not entries:
            curs.execute(self._insert_columns_statement, events)
            return
        curs.execute(
            self._insert_with_entries_statement,
            (
                *events,
                [e.position_id for e in entries],
                [e.version for e in entries],
                [e.recorded_at_us for e in entries],
                [e.occurred_at_us for e in entries],
                [e.max_occurred_at_us for e in entries],
                [e.late for e in entries],
            ),
            prepare=False,
        )

    # ---- lookups ----------------------------------------------------------------------------

    def select_events_batch(self, ranges: Sequence[EventRange]) -> list[StoredEvent]:
        """Events of many aggregates in one query: those of each ``(id, gt, lte)``, ordered
        by aggregate and version (the writer's per-batch fast-forward and key lookups); for
        a ``gt`` of FROM_SNAPSHOT, the newest snapshot first and the events after it."""
        if not ranges:
            return []
        # One statement outside a transaction block (the library's pooled connections are
        # in autocommit): its own snapshot, and a single round trip instead of BEGIN,
        # SELECT, ROLLBACK and the DEALLOCATE ALL psycopg sends after a rollback (it forgets
        # prepared statements then) -- four round trips on the writer's turn.
        with self.datastore.get_connection() as conn:
            was_autocommit = conn.autocommit
            conn.autocommit = True
            try:
                with conn.cursor() as curs:
                    curs.execute(
                        self._select_ranges_statement,
                        ([r[0] for r in ranges], [r[1] for r in ranges], [r[2] for r in ranges]),
                        binary=True,
                    )  # arrays in and bytea out without text escaping
                    rows = curs.fetchall()
            finally:
                conn.autocommit = was_autocommit
        return [
            StoredEvent(
                originator_id=row["originator_id"],
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
            )
            for row in rows
        ]

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

    # ---- ledger entries -------------------------------------------------------------------------

    def _conninfo(self) -> dict[str, Any]:
        """This store's connection arguments (credentials included), rows as tuples."""
        kwargs = self.datastore.pool.kwargs or {}
        if callable(kwargs):  # psycopg_pool also takes a function returning them
            kwargs = kwargs()
        return {k: v for k, v in kwargs.items() if k != "row_factory"}

    def async_range_reader(self) -> AsyncRangeReader:
        """``select_events_batch`` for an event loop (ledger.store.async_ranges)."""
        return AsyncRangeReader(self._conninfo(), self._select_ranges_statement)

    def writer_mutex(self) -> PostgresWriterMutex:
        """The writers' turn-taking lock of this ledger (ledger.store.writer_mutex), on a
        connection of its own with this store's credentials."""
        return PostgresWriterMutex(
            self._conninfo(),
            self.datastore.schema,
            self._entries_name,
            self._head_statement,
            self._select_ranges_statement,
            self._max_notification_statement,
            self._changed_statement,
        )

    def entry_head(self) -> tuple[int, int]:
        """(seq, recorded_at_us) of the newest entry; (0, 0) for an empty ledger."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._head_statement)
            row = curs.fetchone()
            return (0, 0) if row is None else (int(row["seq"]), int(row["recorded_at_us"]))

    def last_version_where(self, position_id: UUID, column: str, limit_us: int) -> int:
        """The greatest version whose ``column`` (recorded_at_us or max_occurred_at_us, both
        non-decreasing with version) is at most ``limit_us``; 0 if none."""
        if column not in ("recorded_at_us", "max_occurred_at_us"):
            raise ValueError(column)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT version FROM {s}.{t} WHERE position_id = %s AND {c} <= %s"
                    " ORDER BY {c} DESC, version DESC LIMIT 1"
                ).format(s=self._schema, t=self._entries, c=Identifier(column)),
                (position_id, limit_us),
            )
            row = curs.fetchone()
            return 0 if row is None else int(row["version"])

    def max_occurred_at_of(self, position_id: UUID, version: int) -> int:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT max_occurred_at_us FROM {s}.{t} WHERE position_id = %s AND version = %s"
                ).format(s=self._schema, t=self._entries),
                (position_id, version),
            )
            row = curs.fetchone()
            return 0 if row is None else int(row["max_occurred_at_us"])

    def late_entries(
        self, position_id: UUID, *, occurred_by_us: int, recorded_by_us: int
    ) -> list[tuple[int, int]]:
        """(version, occurred_at_us) of the position's late entries within both bounds."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT version, occurred_at_us FROM {s}.{t} WHERE position_id = %s AND late"
                    # `+ 0`: no index on recorded_at may tempt the planner away from the
                    # partial index of late entries.
                    " AND occurred_at_us <= %s AND recorded_at_us + 0 <= %s ORDER BY version"
                ).format(s=self._schema, t=self._entries),
                (position_id, occurred_by_us, recorded_by_us),
            )
            return [(int(r["version"]), int(r["occurred_at_us"])) for r in curs.fetchall()]

    def _position_param(self, position_id: UUID) -> UUID:
        return position_id

    def _select_entries(self, where: str, params: Sequence[Any], order: str) -> list[EntryRow]:
        query = SQL(
            "SELECT x.seq, x.notification_id, x.position_id, x.version, x.recorded_at_us,"
            " x.occurred_at_us, p.sku, p.location_id, e.originator_version, e.topic, e.state"
            " FROM {s}.{x} x JOIN {s}.{e} e ON e.notification_id = x.notification_id"
            " JOIN {s}.{p} p ON p.position_id = x.position_id"
            " WHERE " + where + " ORDER BY " + order + " LIMIT %s"
        ).format(s=self._schema, x=self._entries, e=self._events, p=self._positions)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query, params)
            return [
                EntryRow(
                    seq=int(r["seq"]),
                    notification_id=int(r["notification_id"]),
                    position_id=r["position_id"],
                    version=int(r["version"]),
                    recorded_at_us=int(r["recorded_at_us"]),
                    occurred_at_us=int(r["occurred_at_us"]),
                    sku=r["sku"],
                    location_id=r["location_id"],
                    event_version=int(r["originator_version"]),
                    topic=r["topic"],
                    state=bytes(r["state"]),
                )
                for r in curs.fetchall()
            ]


class LedgerPostgresFactory(PostgresFactory):
    """PERSISTENCE_MODULE for PostgreSQL: the library's factory with our recorders."""

    aggregate_recorder_class = LedgerSnapshotRecorder
    application_recorder_class = LedgerPostgresRecorder


def _split(ops: Sequence[IndexOp]) -> tuple[list[PositionIndexed], list[ReservationIndexed]]:
    """Each table's rows, one per key (a reservation's last status wins): one INSERT may not
    touch a row twice under ON CONFLICT DO UPDATE."""
    positions: dict[tuple[str, str], PositionIndexed] = {}
    reservations: dict[str, ReservationIndexed] = {}
    for op in ops:
        if isinstance(op, PositionIndexed):
            positions.setdefault((op.sku, op.location_id), op)
        elif isinstance(op, ReservationIndexed):
            reservations[op.reservation_id] = op
        else:  # pragma: no cover
            raise AssertionError(f"unknown index op {op!r}")
    return list(positions.values()), list(reservations.values())


if TYPE_CHECKING:  # the type checker holds the recorder to the protocol, signatures included
    _conforms: type[LedgerRecorder] = LedgerPostgresRecorder
