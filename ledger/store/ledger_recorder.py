"""What the ledger asks of its event store beyond the library's ``ApplicationRecorder``.

Both recorders (``LedgerSQLiteRecorder``, ``LedgerPostgresRecorder``) keep lookup indexes in
the event transaction and answer these reads from them; the application checks once, when it
starts, that its recorder is one of them, so callers need no attribute guesses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from ledger.store.index_ops import EntryRow, EventRange, ReservationRow

if TYPE_CHECKING:
    from ledger.store.async_ranges import AsyncRangeReader


@runtime_checkable
class LedgerRecorder(Protocol):
    # ---- events and positions ------------------------------------------------------------

    def select_events_batch(self, ranges: Sequence[EventRange]) -> list[StoredEvent]: ...

    def async_range_reader(self) -> AsyncRangeReader | None: ...

    def notification_id_of(self, originator_id: UUID, version: int) -> int | None: ...

    def max_notification_id(self) -> int | None: ...

    def select_positions(
        self, *, sku: str | None, location_id: str | None, after: tuple[str, str], limit: int
    ) -> list[tuple[str, str]]: ...

    def select_reservations(
        self, *, channel: str, order_ref: str | None, after: tuple[int, str], limit: int
    ) -> list[ReservationRow]: ...

    def select_due_reservations(self, *, now_us: int, limit: int) -> list[str]: ...

    # ---- ledger entries ------------------------------------------------------------------

    def entry_head(self) -> tuple[int, int]: ...

    def last_version_where(self, position_id: UUID, column: str, limit_us: int) -> int: ...

    def max_occurred_at_of(self, position_id: UUID, version: int) -> int: ...

    def late_entries(
        self, position_id: UUID, *, occurred_by_us: int, recorded_by_us: int
    ) -> list[tuple[int, int]]: ...

    def select_entries(self, *, after_seq: int, limit: int) -> list[EntryRow]: ...

    def select_position_entries(
        self, position_id: UUID, *, after_version: int, limit: int, until_version: int = 0
    ) -> list[EntryRow]: ...

    def select_entries_between(
        self,
        position_id: UUID,
        *,
        column: str,
        from_us: int,
        to_us: int,
        after: tuple[int, int],
        limit: int,
    ) -> list[EntryRow]: ...

    def select_effective_entries(
        self,
        position_id: UUID,
        *,
        after: tuple[int, int],
        occurred_by_us: int,
        recorded_by_us: int,
        limit: int,
    ) -> list[EntryRow]: ...
