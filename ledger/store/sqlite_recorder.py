"""SQLite application recorder with the ledger's index tables (embedded default)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor

from ledger.store.entry_queries import EntryQueries
from ledger.store.index_ops import (
    EntryIndexed,
    EntryRow,
    EventRange,
    IndexOp,
    PositionIndexed,
    ReservationIndexed,
    ReservationRow,
    entries_in_commit_order,
)
from ledger.store.ledger_recorder import LedgerRecorder

_CREATE = [
    "CREATE TABLE IF NOT EXISTS ledger_position_index ("
    " sku TEXT NOT NULL, location_id TEXT NOT NULL, position_id TEXT NOT NULL,"
    " PRIMARY KEY (sku, location_id))",
    "CREATE INDEX IF NOT EXISTS ledger_position_index_by_location"
    " ON ledger_position_index (location_id, sku)",
    "CREATE TABLE IF NOT EXISTS ledger_reservation_index ("
    " reservation_id TEXT PRIMARY KEY, channel TEXT NOT NULL, order_ref TEXT NOT NULL,"
    " status TEXT NOT NULL, expires_at_us INTEGER NOT NULL, created_at_us INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ledger_reservation_index_by_channel"
    " ON ledger_reservation_index (channel, created_at_us, reservation_id)",
    "CREATE INDEX IF NOT EXISTS ledger_reservation_index_by_order"
    " ON ledger_reservation_index (channel, order_ref, created_at_us, reservation_id)",
    "CREATE INDEX IF NOT EXISTS ledger_reservation_index_due"
    " ON ledger_reservation_index (status, expires_at_us)",
    "CREATE INDEX IF NOT EXISTS ledger_position_index_by_id ON ledger_position_index (position_id)",
    # Ledger entries: see LedgerPostgresRecorder for the meaning of each column.
    "CREATE TABLE IF NOT EXISTS ledger_entry_index ("
    " seq INTEGER PRIMARY KEY, notification_id INTEGER NOT NULL, position_id TEXT NOT NULL,"
    " version INTEGER NOT NULL, recorded_at_us INTEGER NOT NULL,"
    " occurred_at_us INTEGER NOT NULL, max_occurred_at_us INTEGER NOT NULL,"
    " late INTEGER NOT NULL, appended_after_us INTEGER NOT NULL,"
    " UNIQUE (position_id, version),"
    " CONSTRAINT recorded_at_never_decreases CHECK (recorded_at_us >= appended_after_us))",
    "CREATE INDEX IF NOT EXISTS ledger_entry_index_recorded"
    " ON ledger_entry_index (position_id, recorded_at_us, version)",
    "CREATE INDEX IF NOT EXISTS ledger_entry_index_occurred"
    " ON ledger_entry_index (position_id, occurred_at_us, version)",
    "CREATE INDEX IF NOT EXISTS ledger_entry_index_in_order"
    " ON ledger_entry_index (position_id, max_occurred_at_us, version)",
    # Late entries are rare: their own small index (see late_entries).
    "CREATE INDEX IF NOT EXISTS ledger_entry_index_late_occurred"
    " ON ledger_entry_index (position_id, occurred_at_us) WHERE late",
]

_SELECT_ENTRIES = (
    "SELECT x.seq, x.notification_id, x.position_id, x.version, x.recorded_at_us,"
    " x.occurred_at_us, p.sku, p.location_id, e.originator_version, e.topic, e.state"
    " FROM ledger_entry_index x JOIN {events} e ON e.rowid = x.notification_id"
    " JOIN ledger_position_index p ON p.position_id = x.position_id"
)


class LedgerSQLiteRecorder(EntryQueries, SQLiteApplicationRecorder):
    placeholder = "?"

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *_CREATE]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        for op in kwargs.get("index_ops", ()):
            _apply(c, op)
        entries: Sequence[EntryIndexed] = kwargs.get("entries", ())
        if entries and ids:
            _append_entries(c, stored_events, ids, entries)
        return ids

    # ---- lookups ----------------------------------------------------------------------------

    def select_events_batch(self, ranges: Sequence[EventRange]) -> list[StoredEvent]:
        """As the PostgreSQL recorder's, one indexed read per range: embedded SQLite has no
        round trip to save, so a loop is as fast as one statement."""
        events: list[StoredEvent] = []
        for originator_id, gt, lte in sorted(ranges):
            if gt < 0:  # FROM_SNAPSHOT: the newest snapshot, then the events after it
                snapshot = self._newest_snapshot(originator_id, lte)
                gt = 0 if snapshot is None else snapshot.originator_version
                if snapshot is not None:
                    events.append(snapshot)
            events.extend(self.select_events(originator_id, gt=gt, lte=lte))
        return events

    def _newest_snapshot(self, originator_id: UUID, lte: int) -> StoredEvent | None:
        # The library names each recorder's table "stored_" + purpose, in one database.
        table = self.events_table_name.removesuffix("_events") + "_snapshots"
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT originator_version, topic, state FROM {table}"
                " WHERE originator_id=? AND originator_version<=?"
                " ORDER BY originator_version DESC LIMIT 1",
                (originator_id.hex, lte),
            )
            row = c.fetchone()
        if row is None:
            return None
        return StoredEvent(
            originator_id=originator_id,
            originator_version=int(row[0]),
            topic=str(row[1]),
            state=bytes(row[2]),
        )

    def async_range_reader(self) -> None:
        """Embedded SQLite has no network wait to take off a thread."""
        return None

    def notification_id_of(self, originator_id: UUID, version: int) -> int | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT rowid FROM {self.events_table_name}"
                " WHERE originator_id=? AND originator_version=?",
                (originator_id.hex, version),
            )
            row = c.fetchone()
            return None if row is None else int(row[0])

    def select_positions(
        self, *, sku: str | None, location_id: str | None, after: tuple[str, str], limit: int
    ) -> list[tuple[str, str]]:
        with self.datastore.transaction(commit=False) as c:
            if sku is not None:
                c.execute(
                    "SELECT sku, location_id FROM ledger_position_index"
                    " WHERE sku=? AND location_id>? ORDER BY location_id LIMIT ?",
                    (sku, after[1], limit),
                )
            else:
                c.execute(
                    "SELECT sku, location_id FROM ledger_position_index"
                    " WHERE location_id=? AND sku>? ORDER BY sku LIMIT ?",
                    (location_id, after[0], limit),
                )
            return [(row[0], row[1]) for row in c.fetchall()]

    def select_reservations(
        self, *, channel: str, order_ref: str | None, after: tuple[int, str], limit: int
    ) -> list[ReservationRow]:
        sql = (
            "SELECT * FROM ledger_reservation_index"
            " WHERE channel=? AND (created_at_us, reservation_id) > (?, ?)"
        )
        params: list[Any] = [channel, after[0], after[1]]
        if order_ref is not None:
            sql += " AND order_ref=?"
            params.append(order_ref)
        sql += " ORDER BY created_at_us, reservation_id LIMIT ?"
        params.append(limit)
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, params)
            return [ReservationRow(*tuple(row)) for row in c.fetchall()]

    def select_due_reservations(self, *, now_us: int, limit: int) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT reservation_id FROM ledger_reservation_index"
                " WHERE status='ACTIVE' AND expires_at_us<=? ORDER BY expires_at_us LIMIT ?",
                (now_us, limit),
            )
            return [row[0] for row in c.fetchall()]

    # ---- ledger entries -------------------------------------------------------------------------

    def entry_head(self) -> tuple[int, int]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT seq, recorded_at_us FROM ledger_entry_index ORDER BY seq DESC LIMIT 1"
            )
            row = c.fetchone()
            return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def last_version_where(self, position_id: UUID, column: str, limit_us: int) -> int:
        if column not in ("recorded_at_us", "max_occurred_at_us"):
            raise ValueError(column)
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT version FROM ledger_entry_index WHERE position_id=? AND {column}<=?"
                f" ORDER BY {column} DESC, version DESC LIMIT 1",
                (str(position_id), limit_us),
            )
            row = c.fetchone()
            return 0 if row is None else int(row[0])

    def max_occurred_at_of(self, position_id: UUID, version: int) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT max_occurred_at_us FROM ledger_entry_index"
                " WHERE position_id=? AND version=?",
                (str(position_id), version),
            )
            row = c.fetchone()
            return 0 if row is None else int(row[0])

    def late_entries(
        self, position_id: UUID, *, occurred_by_us: int, recorded_by_us: int
    ) -> list[tuple[int, int]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                # INDEXED BY: the planner otherwise picks the full occurred_at index and reads
                # every entry of the position up to T to find the few late ones.
                "SELECT version, occurred_at_us FROM ledger_entry_index"
                " INDEXED BY ledger_entry_index_late_occurred WHERE position_id=?"
                " AND late AND occurred_at_us<=? AND recorded_at_us<=? ORDER BY version",
                (str(position_id), occurred_by_us, recorded_by_us),
            )
            return [(int(r[0]), int(r[1])) for r in c.fetchall()]

    def _position_param(self, position_id: UUID) -> str:
        return str(position_id)

    def _select_entries(self, where: str, params: Sequence[Any], order: str) -> list[EntryRow]:
        sql = _SELECT_ENTRIES.format(events=self.events_table_name)
        sql += f" WHERE {where} ORDER BY {order} LIMIT ?"
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, params)
            return [
                EntryRow(
                    seq=int(r[0]),
                    notification_id=int(r[1]),
                    position_id=UUID(r[2]),
                    version=int(r[3]),
                    recorded_at_us=int(r[4]),
                    occurred_at_us=int(r[5]),
                    sku=r[6],
                    location_id=r[7],
                    event_version=int(r[8]),
                    topic=r[9],
                    state=bytes(r[10]),
                )
                for r in c.fetchall()
            ]


def _append_entries(
    c: SQLiteCursor,
    stored_events: Sequence[StoredEvent],
    ids: Sequence[int],
    entries: Sequence[EntryIndexed],
) -> None:
    """Inside the write transaction (SQLite has one writer at a time): the next gap-free
    seq numbers, with the same recorded_at CHECK as on PostgreSQL."""
    rows = entries_in_commit_order(stored_events, ids, entries)
    c.execute("SELECT seq, recorded_at_us FROM ledger_entry_index ORDER BY seq DESC LIMIT 1")
    head = c.fetchone()
    seq, head_recorded_us = (0, 0) if head is None else (int(head[0]), int(head[1]))
    c.executemany(
        "INSERT INTO ledger_entry_index VALUES (?,?,?,?,?,?,?,?,?)",
        [
            (
                seq + n,
                nid,
                str(e.position_id),
                e.version,
                e.recorded_at_us,
                e.occurred_at_us,
                e.max_occurred_at_us,
                int(e.late),
                head_recorded_us,
            )
            for n, (nid, e) in enumerate(rows, start=1)
        ],
    )


def _apply(c: SQLiteCursor, op: IndexOp) -> None:
    if isinstance(op, PositionIndexed):
        c.execute(
            "INSERT OR IGNORE INTO ledger_position_index VALUES (?,?,?)",
            (op.sku, op.location_id, op.position_id),
        )
    elif isinstance(op, ReservationIndexed):
        c.execute(
            "INSERT INTO ledger_reservation_index VALUES (?,?,?,?,?,?)"
            " ON CONFLICT (reservation_id) DO UPDATE SET status=excluded.status",
            (
                op.reservation_id,
                op.channel,
                op.order_ref,
                op.status,
                op.expires_at_us,
                op.created_at_us,
            ),
        )
    else:  # pragma: no cover
        raise AssertionError(f"unknown index op {op!r}")


if TYPE_CHECKING:  # the type checker holds the recorder to the protocol, signatures included
    _conforms: type[LedgerRecorder] = LedgerSQLiteRecorder
