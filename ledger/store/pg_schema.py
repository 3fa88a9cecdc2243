"""The ledger's own PostgreSQL tables, created beside the library's events table.

Three index tables, named after the events table (``stored_events`` -> ``stored_*``):
positions by (sku, location), reservations by channel and order, and the ledger entries
(the position events with a gap-free ``seq`` and their time axes). The statements are the
schema of databases already in service: a changed text is a new schema, so existing
databases keep the old one (the creator skips relations that exist, see
ledger.store.pg_ddl) and need a migration instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.sql import SQL, Composed, Identifier


@dataclass(frozen=True)
class LedgerTables:
    """The names of one ledger's tables in PostgreSQL."""

    schema: str
    events_table_name: str

    @property
    def prefix(self) -> str:
        return self.events_table_name.removesuffix("_events")

    @property
    def events(self) -> Identifier:
        return Identifier(self.events_table_name)

    @property
    def snapshots(self) -> Identifier:
        # The library names each recorder's table prefix + "_" + purpose.
        return Identifier(f"{self.prefix}_snapshots")

    @property
    def positions(self) -> Identifier:
        return Identifier(f"{self.prefix}_position_index")

    @property
    def reservations(self) -> Identifier:
        return Identifier(f"{self.prefix}_reservation_index")

    @property
    def entries_name(self) -> str:
        return f"{self.prefix}_entry_index"

    @property
    def entries(self) -> Identifier:
        return Identifier(self.entries_name)


POSITION_INDEX_TABLE = SQL(
    'CREATE TABLE IF NOT EXISTS {s}.{t} (sku text COLLATE "C" NOT NULL,'
    ' location_id text COLLATE "C" NOT NULL, position_id uuid NOT NULL,'
    " PRIMARY KEY (sku, location_id))"
)

RESERVATION_INDEX_TABLE = SQL(
    "CREATE TABLE IF NOT EXISTS {s}.{t}"
    ' (reservation_id text COLLATE "C" PRIMARY KEY,'
    " channel text NOT NULL, order_ref text NOT NULL, status text NOT NULL,"
    " expires_at_us bigint NOT NULL, created_at_us bigint NOT NULL)"
)

# The ledger entries (position events): gap-free `seq` in commit order, the time axes per
# position, and the CHECK that keeps recorded_at from ever going backwards along seq,
# whichever replica wrote (see LedgerPostgresRecorder._append_entries).
ENTRY_INDEX_TABLE = SQL(
    "CREATE TABLE IF NOT EXISTS {s}.{t} (seq bigint PRIMARY KEY,"
    " notification_id bigint NOT NULL, position_id uuid NOT NULL,"
    " version integer NOT NULL, recorded_at_us bigint NOT NULL,"
    " occurred_at_us bigint NOT NULL, max_occurred_at_us bigint NOT NULL,"
    " late boolean NOT NULL, appended_after_us bigint NOT NULL,"
    " UNIQUE (position_id, version),"
    " CONSTRAINT recorded_at_never_decreases"
    " CHECK (recorded_at_us >= appended_after_us))"
)


def create_statements(tables: LedgerTables) -> list[Composed]:
    """Every CREATE for the index tables, each table before its indexes. The order is the
    one databases were built in (position_index_by_id came after the reservations)."""
    positions, reservations, entries = tables.positions, tables.reservations, tables.entries
    return [
        _table(tables, POSITION_INDEX_TABLE, positions),
        _index(tables, positions, "position_index_by_location", "location_id, sku"),
        _table(tables, RESERVATION_INDEX_TABLE, reservations),
        _index(
            tables,
            reservations,
            "reservation_index_by_channel",
            "channel, created_at_us, reservation_id",
        ),
        _index(
            tables,
            reservations,
            "reservation_index_by_order",
            "channel, order_ref, created_at_us, reservation_id",
        ),
        _index(tables, reservations, "reservation_index_due", "status, expires_at_us"),
        _index(tables, positions, "position_index_by_id", "position_id"),
        _table(tables, ENTRY_INDEX_TABLE, entries),
        _index(tables, entries, "entry_index_recorded", "position_id, recorded_at_us, version"),
        _index(tables, entries, "entry_index_occurred", "position_id, occurred_at_us, version"),
        _index(tables, entries, "entry_index_in_order", "position_id, max_occurred_at_us, version"),
        # Late entries are rare: their own small index keeps the effective axis from reading
        # a position's whole occurred_at range to find them.
        _index(
            tables,
            entries,
            "entry_index_late_occurred",
            "position_id, occurred_at_us",
            where=" WHERE late",
        ),
    ]


def _table(tables: LedgerTables, create: SQL, table: Identifier) -> Composed:
    return create.format(s=Identifier(tables.schema), t=table)


def _index(
    tables: LedgerTables, table: Identifier, name: str, columns: str, where: str = ""
) -> Composed:
    """CREATE INDEX ``<prefix>_<name>`` on ``table`` (columns and an optional WHERE)."""
    return SQL("CREATE INDEX IF NOT EXISTS {i} ON {s}.{t} (" + columns + ")" + where).format(
        i=Identifier(f"{tables.prefix}_{name}"), s=Identifier(tables.schema), t=table
    )
