"""Read-model tables and their tracking position, written together in one transaction.

:class:`ReadModelStore` is the one object the runner, the API and the tools hold; it puts
together the pieces, each in a module of its own:

* :mod:`projections.sql_transaction` — the database of both engines and one transaction
  wrapper with '%s' placeholders on both;
* :mod:`projections.generations` — generations of tables and the row naming the served one;
* :mod:`projections.batch_writes` — loading and committing batches, fenced by the tracking
  position and the active generation;
* :mod:`projections.read_queries` — reads of the served generation.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from ledger.domain.item_policy import Tracking
from projections.batch_writes import (
    Activation,
    BatchRows,
    BatchWriter,
    GenerationChanged,
    TrackingConflict,
)
from projections.generations import Generations, RebuildInProgress
from projections.position_state import LedgerExceptionRecord
from projections.read_queries import ReadQueries
from projections.rows import ItemRow, PolicyRow, PositionRow, ReadModelRows
from projections.sql_transaction import ReadModelDatabase

# The store's API: these are the types its methods take, return and raise.
__all__ = [
    "PROJECTION_NAME",
    "Activation",
    "GenerationChanged",
    "PolicyRow",
    "PositionRow",
    "ReadModelRows",
    "ReadModelStore",
    "RebuildInProgress",
    "TrackingConflict",
]

PROJECTION_NAME = "availability"

_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,39}")


class ReadModelStore:
    """One implementation for both engines: they differ in placeholder and connection."""

    def __init__(self, database_url: str, prefix: str = PROJECTION_NAME) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"read-model prefix must match {_PREFIX.pattern}: {prefix!r}")
        self.prefix = prefix
        self._db = ReadModelDatabase(database_url, prefix)
        self.sqlite_path = self._db.sqlite_path
        self.schema = self._db.schema
        self._generations = Generations(self._db)
        self._writer = BatchWriter(self._db, self._generations)
        self._queries = ReadQueries(self._db, self._generations)
        self._generations.initialise()

    def close(self) -> None:
        self._db.close()

    @property
    def applied_channel(self) -> str:
        """PostgreSQL NOTIFY channel announcing each committed batch."""
        return self._db.applied_channel

    # ---- generations --------------------------------------------------------------------------

    def active_generation(self) -> int:
        with self._db.transaction(commit=False) as tx:
            return self._generations.active(tx)

    def tracking(self) -> tuple[int, int]:
        """The active generation and its tracking position, read together."""
        return self._queries.tracking()

    def generations(self) -> list[int]:
        """Generations whose tables exist (the active one, and any being built or left
        behind by a rebuild that died)."""
        return self._generations.existing()

    def new_generation(self) -> int:
        """Allocate the next generation number and create its (empty) tables."""
        return self._generations.allocate()

    def drop_generation(self, generation: int) -> None:
        """Drop a generation's tables; never the active one."""
        if generation == self.active_generation():
            raise ValueError(f"generation {generation} is active")
        self._generations.drop_tables(generation)

    @contextmanager
    def rebuild_lock(self) -> Iterator[None]:
        """Only one rebuild at a time: an advisory lock (PostgreSQL) or a file lock (SQLite)."""
        with self._generations.rebuild_lock():
            yield

    @contextmanager
    def activation(self, generation: int) -> Iterator[Activation]:
        """One transaction that locks the active row, lets the caller load and commit a last
        batch into ``generation``, and then makes ``generation`` the active one.

        While it runs, followers of the old generation cannot commit (they wait on the same
        lock, then find the generation changed), so the old generation's position is fixed
        and the caller can catch up past it before the flip."""
        with self._writer.activation(generation) as activation:
            yield activation

    # ---- writes ---------------------------------------------------------------------------------

    def load(
        self,
        generation: int,
        position_ids: Collection[str],
        policy_ids: Collection[str],
        *,
        require_active: bool = True,
    ) -> tuple[dict[str, PositionRow], dict[str, PolicyRow]]:
        """The stored rows of these positions and policies in ``generation`` (one
        transaction). With ``require_active``: GenerationChanged if it is not active."""
        return self._writer.load(
            generation, position_ids, policy_ids, require_active=require_active
        )

    def commit_batch(
        self,
        *,
        from_position: int,
        to_position: int,
        positions: list[PositionRow],
        policies: list[PolicyRow],
        exceptions: list[LedgerExceptionRecord],
        items: list[ItemRow] | None = None,
        generation: int | None = None,
        require_active: bool = True,
    ) -> None:
        """Apply a batch and move ``generation``'s tracking ``from_position → to_position``
        atomically (default: the active generation).

        ``require_active`` (followers): fail with GenerationChanged unless ``generation`` is
        still the active one; a rebuild writes its generation before it is active."""
        batch = BatchRows(from_position, to_position, positions, policies, exceptions, items or [])
        self._writer.commit(batch, generation, require_active)

    # ---- reads (the active generation, resolved per read) ---------------------------------------

    def applied_position(self, generation: int | None = None) -> int:
        if generation is None:
            return self.tracking()[1]
        with self._db.transaction(commit=False) as tx:
            return self._generations.tables(generation).applied_position(tx)

    def position(self, position_id: str) -> PositionRow | None:
        return self._queries.position(position_id)

    def policy(self, policy_id: str) -> PolicyRow | None:
        return self._queries.policy(policy_id)

    def positions_of_sku(self, sku: str) -> tuple[int, list[PositionRow]]:
        """Every position of ``sku`` and the tracking position, from one snapshot."""
        return self._queries.positions_of_sku(sku)

    def availability_inputs(
        self, sku: str, channel: str
    ) -> tuple[int, int, list[PositionRow], str | None]:
        """Generation, tracking position, positions of ``sku`` and ``channel``'s policy
        terms, from one generation in one transaction."""
        return self._queries.availability_inputs(sku, channel)

    def positions_at_location(self, location_id: str) -> list[PositionRow]:
        return self._queries.positions_at_location(location_id)

    def policy_terms(self, channel: str) -> str | None:
        return self._queries.policy_terms(channel)

    def tracking_of(self, skus: Collection[str]) -> dict[str, Tracking]:
        """Each SKU's item tracking (``NONE`` when it has no item policy), one query."""
        return self._queries.tracking_of(skus)

    def exceptions(
        self,
        *,
        exception_type: str | None,
        sku: str | None,
        location_id: str | None,
        after: tuple[int, int],
        limit: int,
    ) -> list[LedgerExceptionRecord]:
        return self._queries.exceptions(
            exception_type=exception_type,
            sku=sku,
            location_id=location_id,
            after=after,
            limit=limit,
        )

    def lot_positions(
        self, *, sku: str | None, location_id: str | None
    ) -> tuple[int, list[PositionRow]]:
        """The tracking position and the positions holding lots, from one snapshot."""
        return self._queries.lot_positions(sku=sku, location_id=location_id)

    def rows(self, generation: int | None = None) -> ReadModelRows:
        """Every row of ``generation`` (default: the active one), in key order."""
        return self._queries.rows(generation)
