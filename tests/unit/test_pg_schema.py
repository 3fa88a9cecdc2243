"""The ledger's PostgreSQL index tables (ledger/store/pg_schema.py). The statements are the
schema of databases in service, so this pins their text: a deliberate schema change updates
it together with a migration for existing databases (the creator skips relations that
exist, so a changed CREATE never reaches them)."""

from __future__ import annotations

import pytest

from ledger.store.pg_schema import LedgerTables, create_statements

# What the recorder rendered before the statements moved out of its __init__ (issue 18).
STORED_EVENTS_SCHEMA = [
    (
        'CREATE TABLE IF NOT EXISTS "public"."stored_position_index" (sku text COLLATE "C"'
        ' NOT NULL, location_id text COLLATE "C" NOT NULL, position_id uuid NOT NULL, PRIMARY'
        " KEY (sku, location_id))"
    ),
    (
        'CREATE INDEX IF NOT EXISTS "stored_position_index_by_location" ON'
        ' "public"."stored_position_index" (location_id, sku)'
    ),
    (
        'CREATE TABLE IF NOT EXISTS "public"."stored_reservation_index" (reservation_id text'
        ' COLLATE "C" PRIMARY KEY, channel text NOT NULL, order_ref text NOT NULL, status'
        " text NOT NULL, expires_at_us bigint NOT NULL, created_at_us bigint NOT NULL)"
    ),
    (
        'CREATE INDEX IF NOT EXISTS "stored_reservation_index_by_channel" ON'
        ' "public"."stored_reservation_index" (channel, created_at_us, reservation_id)'
    ),
    (
        'CREATE INDEX IF NOT EXISTS "stored_reservation_index_by_order" ON'
        ' "public"."stored_reservation_index" (channel, order_ref, created_at_us,'
        " reservation_id)"
    ),
    (
        'CREATE INDEX IF NOT EXISTS "stored_reservation_index_due" ON'
        ' "public"."stored_reservation_index" (status, expires_at_us)'
    ),
    (
        'CREATE INDEX IF NOT EXISTS "stored_position_index_by_id" ON'
        ' "public"."stored_position_index" (position_id)'
    ),
    (
        'CREATE TABLE IF NOT EXISTS "public"."stored_entry_index" (seq bigint PRIMARY KEY,'
        " notification_id bigint NOT NULL, position_id uuid NOT NULL, version integer NOT"
        " NULL, recorded_at_us bigint NOT NULL, occurred_at_us bigint NOT NULL,"
        " max_occurred_at_us bigint NOT NULL, late boolean NOT NULL, appended_after_us bigint"
        " NOT NULL, UNIQUE (position_id, version), CONSTRAINT recorded_at_never_decreases"
        " CHECK (recorded_at_us >= appended_after_us))"
    ),
    (
        'CREATE INDEX IF NOT EXISTS "stored_entry_index_recorded" ON'
        ' "public"."stored_entry_index" (position_id, recorded_at_us, version)'
    ),
    (
        'CREATE INDEX IF NOT EXISTS "stored_entry_index_occurred" ON'
        ' "public"."stored_entry_index" (position_id, occurred_at_us, version)'
    ),
    (
        'CREATE INDEX IF NOT EXISTS "stored_entry_index_in_order" ON'
        ' "public"."stored_entry_index" (position_id, max_occurred_at_us, version)'
    ),
    (
        'CREATE INDEX IF NOT EXISTS "stored_entry_index_late_occurred" ON'
        ' "public"."stored_entry_index" (position_id, occurred_at_us) WHERE late'
    ),
]


def test_the_statements_are_the_schema_of_databases_in_service() -> None:
    tables = LedgerTables("public", "stored_events")
    assert [s.as_string() for s in create_statements(tables)] == STORED_EVENTS_SCHEMA


@pytest.mark.parametrize(
    ("events_table", "prefix"),
    [("stored_events", "stored"), ("ledger_events", "ledger"), ("odd", "odd")],
)
def test_the_index_tables_are_named_after_the_events_table(events_table: str, prefix: str) -> None:
    tables = LedgerTables("tenant_a", events_table)
    assert [s.as_string() for s in create_statements(tables)] == [
        s.replace('"public"', '"tenant_a"').replace('"stored_', f'"{prefix}_')
        for s in STORED_EVENTS_SCHEMA
    ]
    assert tables.entries_name == f"{prefix}_entry_index"
    assert tables.events.as_string() == f'"{events_table}"'
