"""The ledger-entry reads both recorders answer: one WHERE/ORDER builder for each read.

The SQL is the same on PostgreSQL and SQLite but for the parameter placeholder (``%s`` vs
``?``) and how a position id is bound (a UUID vs its text), so each recorder names those two
and its own ``_select_entries`` (the join and the row decoding differ)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from ledger.store.index_ops import EntryRow

_BETWEEN_COLUMNS = ("recorded_at_us", "occurred_at_us")


class EntryQueries:
    """Mixin: the protocol's select_*entries reads, built once for both dialects."""

    placeholder: str  # "%s" (psycopg) or "?" (sqlite3)

    def _select_entries(self, where: str, params: Sequence[Any], order: str) -> list[EntryRow]:
        raise NotImplementedError

    def _position_param(self, position_id: UUID) -> Any:
        raise NotImplementedError

    def select_entries(self, *, after_seq: int, limit: int) -> list[EntryRow]:
        """The global ledger in seq order."""
        p = self.placeholder
        return self._select_entries(f"x.seq > {p}", [after_seq, limit], "x.seq")

    def select_position_entries(
        self, position_id: UUID, *, after_version: int, limit: int, until_version: int = 0
    ) -> list[EntryRow]:
        """One position's entries in version order (up to ``until_version`` if set)."""
        p = self.placeholder
        where = f"x.position_id = {p} AND x.version > {p}"
        params: list[Any] = [self._position_param(position_id), after_version]
        if until_version:
            where += f" AND x.version <= {p}"
            params.append(until_version)
        return self._select_entries(where, [*params, limit], "x.version")

    def select_entries_between(
        self,
        position_id: UUID,
        *,
        column: str,
        from_us: int,
        to_us: int,
        after: tuple[int, int],
        limit: int,
    ) -> list[EntryRow]:
        """Entries with ``from_us <= column < to_us``, by (column, version), after the key."""
        if column not in _BETWEEN_COLUMNS:  # the column name is spliced into the SQL
            raise ValueError(column)
        p = self.placeholder
        where = (
            f"x.position_id = {p} AND x.{column} >= {p} AND x.{column} < {p}"
            f" AND (x.{column}, x.version) > ({p}, {p})"
        )
        key = self._position_param(position_id)
        params = [key, from_us, to_us, after[0], after[1], limit]
        return self._select_entries(where, params, f"x.{column}, x.version")

    def select_effective_entries(
        self,
        position_id: UUID,
        *,
        after: tuple[int, int],
        occurred_by_us: int,
        recorded_by_us: int,
        limit: int,
    ) -> list[EntryRow]:
        """Entries in effective order, (occurred_at_us, version) > ``after``, within bounds."""
        p = self.placeholder
        where = (
            f"x.position_id = {p} AND (x.occurred_at_us, x.version) > ({p}, {p})"
            f" AND x.occurred_at_us <= {p} AND x.recorded_at_us <= {p}"
        )
        key = self._position_param(position_id)
        params = [key, after[0], after[1], occurred_by_us, recorded_by_us, limit]
        return self._select_entries(where, params, "x.occurred_at_us, x.version")
