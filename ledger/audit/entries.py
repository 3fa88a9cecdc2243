"""Ledger entries as auditors see them: a position event plus its place in the ledger."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventsourcing.persistence import StoredEvent

from ledger.application import InventoryLedger
from ledger.domain import chain
from ledger.store.index_ops import EntryRow

PAGE = 500


@dataclass(frozen=True)
class LedgerEntryView:
    position: int  # gap-free entry sequence
    ledger_position: int  # notification id (what min_position and Reservation report)
    sku: str
    location_id: str
    version: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime | None = None
    recorded_at: datetime | None = None
    source: str = ""
    message_id: str = ""
    request_id: str = ""
    correlation_id: str = ""
    actor: str = ""
    hash: str = ""

    def body(self) -> dict[str, Any]:
        """The hashed object (docs/audit.md), rebuilt from what is stored."""
        return chain.entry_body(
            self.type,
            self.sku,
            self.location_id,
            self.version,
            {
                **self.data,
                "occurred_at": self.occurred_at,
                "recorded_at": self.recorded_at,
                "source": self.source,
                "message_id": self.message_id,
                "request_id": self.request_id,
                "correlation_id": self.correlation_id,
                "actor": self.actor,
            },
        )

    def export_record(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "ledger_position": self.ledger_position,
            "entry": self.body(),
            "hash": self.hash,
        }


def decode_event(app: InventoryLedger, row: EntryRow) -> Any:
    stored = StoredEvent(row.position_id, row.event_version, row.topic, row.state)
    return app.mapper.to_domain_event(stored)


def entry_view(row: EntryRow, event: Any) -> LedgerEntryView:
    fields = vars(event)
    body = chain.entry_body(
        chain.entry_type_of(type(event)), row.sku, row.location_id, row.event_version, fields
    )
    return LedgerEntryView(
        position=row.seq,
        ledger_position=row.notification_id,
        sku=row.sku,
        location_id=row.location_id,
        version=row.event_version,
        type=body["type"],
        data={k: fields[k] for k in body["data"]},
        occurred_at=fields["occurred_at"],
        recorded_at=fields["recorded_at"],
        source=fields["source"],
        message_id=fields["message_id"],
        request_id=fields["request_id"],
        correlation_id=fields["correlation_id"],
        actor=fields["actor"],
        hash=fields["hash"],
    )


def ledger_rows(
    app: InventoryLedger, *, after_position: int = 0, limit: int | None = None
) -> Iterator[EntryRow]:
    """The global ledger's stored rows from ``after_position`` on, in order, read in pages
    (undecoded: verification must survive rows that no longer decode)."""
    remaining = limit
    while remaining is None or remaining > 0:
        page = PAGE if remaining is None else min(PAGE, remaining)
        rows = app.ledger_recorder.select_entries(after_seq=after_position, limit=page)
        yield from rows
        if len(rows) < page:
            return
        after_position = rows[-1].seq
        if remaining is not None:
            remaining -= len(rows)


def position_rows(
    app: InventoryLedger, position_id: Any, *, after_version: int = 0, until_version: int = 0
) -> Iterator[EntryRow]:
    """One position's stored rows in version order, read in pages (undecoded)."""
    while True:
        rows = app.ledger_recorder.select_position_entries(
            position_id, after_version=after_version, limit=PAGE, until_version=until_version
        )
        yield from rows
        if len(rows) < PAGE:
            return
        after_version = rows[-1].version


def ledger_entries(
    app: InventoryLedger, *, after_position: int = 0, limit: int | None = None
) -> Iterator[LedgerEntryView]:
    """The global ledger from ``after_position`` on, in order."""
    for row in ledger_rows(app, after_position=after_position, limit=limit):
        yield entry_view(row, decode_event(app, row))


def position_entries(
    app: InventoryLedger, position_id: Any, *, after_version: int = 0, until_version: int = 0
) -> Iterator[tuple[EntryRow, Any]]:
    """One position's (row, event) pairs in version order."""
    for row in position_rows(
        app, position_id, after_version=after_version, until_version=until_version
    ):
        yield row, decode_event(app, row)
