"""SQLite application recorder with the ledger's index tables (embedded default)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor

from ledger.store.index_ops import IndexOp, PositionIndexed, ReservationIndexed, ReservationRow

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
]


class LedgerSQLiteRecorder(SQLiteApplicationRecorder):
    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *_CREATE]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        for op in kwargs.get("index_ops", ()):
            _apply(c, op)
        return ids

    # ---- lookups ----------------------------------------------------------------------------

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
