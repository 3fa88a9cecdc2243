"""Loading the rows a batch continues and committing the batch with its tracking position.

Writes are fenced twice, in the same transaction as the rows they write:

* by the generation's tracking row: a batch commits only if the tracking position is still
  the one the batch started from, so no stretch of the log is ever applied twice;
* for runners that follow the served generation, by the ``<prefix>_active`` row: the commit
  starts with a no-op update of that row *conditional on it still naming the runner's
  generation*. That update takes the row lock (PostgreSQL) or the database write lock
  (SQLite), so a commit and a generation flip — which locks the same row first — are
  serialised: a follower can never commit into a generation that has been retired.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from projections.availability_cache import BatchChange, scope_of
from projections.generations import Generations, GenerationTables
from projections.position_state import LedgerExceptionRecord
from projections.rows import ItemRow, PolicyRow, PositionRow
from projections.sql_transaction import ReadModelDatabase, Transaction, is_missing_table

IN_CHUNK = 5_000  # keys per IN (...) list on SQLite (its variable limit is 32,766)

_POSITION_COLUMNS = [
    ("position_id", "text"),
    ("sku", "text"),
    ("location_id", "text"),
    ("state", "text"),
]
_POLICY_COLUMNS = [("policy_id", "text"), ("channel", "text"), ("terms", "text")]
_ITEM_COLUMNS = [
    ("item_id", "text"),
    ("sku", "text"),
    ("tracking", "text"),
    ("version", "bigint"),
    ("ledger_position", "bigint"),
]
_EXCEPTION_COLUMNS = [
    ("ledger_position", "bigint"),
    ("seq", "integer"),
    ("type", "text"),
    ("sku", "text"),
    ("location_id", "text"),
    ("bucket", "text"),
    ("quantity", "bigint"),
    ("detail", "text"),
    ("source", "text"),
    ("message_id", "text"),
    ("occurred_at", "text"),
    ("recorded_at", "text"),
]


class TrackingConflict(Exception):
    """Raised when another runner moved the tracking position first."""


class GenerationChanged(TrackingConflict):
    """Raised when a follower's generation is no longer the active one (a rebuild swapped
    in another): re-read the active generation and continue from its tracking position."""


@dataclass(frozen=True)
class BatchRows:
    """The rows one batch writes and the stretch of the log it covers."""

    from_position: int
    to_position: int
    positions: list[PositionRow]
    policies: list[PolicyRow]
    exceptions: list[LedgerExceptionRecord]
    items: list[ItemRow] = field(default_factory=list)


class BatchWriter:
    """Loads and commits batches of one prefix's read models."""

    def __init__(self, db: ReadModelDatabase, generations: Generations) -> None:
        self.db = db
        self.generations = generations

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
        try:
            with self.db.transaction(commit=False) as tx:
                if require_active and self.generations.active(tx) != generation:
                    raise GenerationChanged(f"generation {generation} is no longer active")
                tables = self.generations.tables(generation)
                return self.load_in(tx, tables, position_ids, policy_ids)
        except GenerationChanged:
            raise
        except Exception as error:
            if require_active and is_missing_table(error):
                raise GenerationChanged(f"generation {generation} was dropped") from error
            raise

    def load_in(
        self,
        tx: Transaction,
        tables: GenerationTables,
        position_ids: Collection[str],
        policy_ids: Collection[str],
    ) -> tuple[dict[str, PositionRow], dict[str, PolicyRow]]:
        positions: dict[str, PositionRow] = {}
        policies: dict[str, PolicyRow] = {}
        for chunk in _chunks(sorted(position_ids)):
            clause, params = self.db.in_clause(chunk)
            for row in tx.rows(
                "SELECT position_id, sku, location_id, state"
                f" FROM {tables.positions} WHERE position_id {clause}",
                params,
            ):
                positions[row[0]] = PositionRow(*row)
        for chunk in _chunks(sorted(policy_ids)):
            clause, params = self.db.in_clause(chunk)
            for row in tx.rows(
                f"SELECT policy_id, channel, terms FROM {tables.policies} WHERE policy_id {clause}",
                params,
            ):
                policies[row[0]] = PolicyRow(*row)
        return positions, policies

    def commit(self, batch: BatchRows, generation: int | None, require_active: bool) -> None:
        """Apply ``batch`` and move ``generation``'s tracking position atomically (default:
        the active generation). ``require_active`` (followers): GenerationChanged unless
        ``generation`` is still the active one."""
        with self.db.transaction() as tx:
            if generation is None:
                self.generations.lock_active(tx)
                generation = self.generations.active(tx)
            elif require_active and not self.generations.lock_active(tx, generation):
                raise GenerationChanged(f"generation {generation} is no longer active")
            self.write(tx, self.generations.tables(generation), batch)

    def write(self, tx: Transaction, tables: GenerationTables, batch: BatchRows) -> None:
        """Move the tracking position (fenced on where the batch started), then the rows."""
        moved = tx(
            f"UPDATE {tables.tracking} SET position = %s WHERE name = %s AND position = %s",
            (batch.to_position, self.db.prefix, batch.from_position),
        )
        if moved.rowcount != 1:
            raise TrackingConflict(f"{tables.base}: tracking is no longer at {batch.from_position}")
        if self.db.postgres is not None:
            # Delivered at commit: API replicas that LISTEN wake at once instead of polling,
            # and learn which SKUs the batch changed (their availability caches drop those).
            change = BatchChange(
                tables.generation,
                batch.from_position,
                batch.to_position,
                None if batch.policies else frozenset(r.sku for r in batch.positions),
            )
            scope = scope_of(self.db.schema, self.db.prefix)
            tx("SELECT pg_notify(%s, %s)", (self.db.applied_channel, change.payload(scope)))
        tx.insert(
            tables.positions,
            _POSITION_COLUMNS,
            [(r.position_id, r.sku, r.location_id, r.state_json) for r in batch.positions],
            "ON CONFLICT (position_id) DO UPDATE SET state = excluded.state",
        )
        tx.insert(
            tables.policies,
            _POLICY_COLUMNS,
            [(p.policy_id, p.channel, p.terms_json) for p in batch.policies],
            "ON CONFLICT (policy_id) DO UPDATE SET terms = excluded.terms",
        )
        tx.insert(tables.exceptions, _EXCEPTION_COLUMNS, _exception_rows(batch.exceptions))
        _write_items(tx, tables, batch.items)

    @contextmanager
    def activation(self, generation: int) -> Iterator[Activation]:
        """One transaction that locks the active row, lets the caller load and commit a last
        batch into ``generation``, and then makes ``generation`` the active one."""
        with self.db.transaction() as tx:
            self.generations.lock_active(tx)
            previous = self.generations.active(tx)
            yield Activation(self, tx, self.generations.tables(generation), previous)
            self.generations.make_active(tx, generation)


class Activation:
    """The open transaction of :meth:`ReadModelStore.activation`."""

    def __init__(
        self, writer: BatchWriter, tx: Transaction, tables: GenerationTables, previous: int
    ) -> None:
        self._writer = writer
        self._tx = tx
        self._tables = tables
        self.generation = tables.generation
        self.previous = previous  # the generation served until this transaction commits

    def applied_position(self) -> int:
        return self._tables.applied_position(self._tx)

    def load(
        self, position_ids: Collection[str], policy_ids: Collection[str]
    ) -> tuple[dict[str, PositionRow], dict[str, PolicyRow]]:
        return self._writer.load_in(self._tx, self._tables, position_ids, policy_ids)

    def commit_batch(
        self,
        *,
        from_position: int,
        to_position: int,
        positions: list[PositionRow],
        policies: list[PolicyRow],
        exceptions: list[LedgerExceptionRecord],
        items: list[ItemRow] | None = None,
    ) -> None:
        batch = BatchRows(from_position, to_position, positions, policies, exceptions, items or [])
        self._writer.write(self._tx, self._tables, batch)


def _write_items(tx: Transaction, tables: GenerationTables, items: Sequence[ItemRow]) -> None:
    """Rows created in the batch are upserted; a Set of an earlier-created item updates its
    row by id (the Set event does not carry the SKU)."""
    tx.insert(
        tables.items,
        _ITEM_COLUMNS,
        [(i.item_id, i.sku, i.tracking, i.version, i.ledger_position) for i in items if i.sku],
        "ON CONFLICT (item_id) DO UPDATE SET tracking = excluded.tracking,"
        " version = excluded.version, ledger_position = excluded.ledger_position",
    )
    for item in items:
        if item.sku is None:
            tx(
                f"UPDATE {tables.items} SET tracking = %s, version = %s, ledger_position = %s"
                " WHERE item_id = %s",
                (item.tracking, item.version, item.ledger_position, item.item_id),
            )


def _exception_rows(exceptions: Iterable[LedgerExceptionRecord]) -> list[tuple[object, ...]]:
    return [
        (
            e.ledger_position,
            seq,
            e.type,
            e.sku,
            e.location_id,
            e.bucket,
            e.quantity,
            e.detail,
            e.source,
            e.message_id,
            e.occurred_at.isoformat(),
            e.recorded_at.isoformat(),
        )
        for e, seq in _numbered(exceptions)
    ]


def _numbered(
    exceptions: Iterable[LedgerExceptionRecord],
) -> Iterator[tuple[LedgerExceptionRecord, int]]:
    """Number exceptions within their ledger position (event), not within the batch, so the
    keys do not depend on where batches happen to start: a rebuild reproduces them."""
    seen: dict[int, int] = {}
    for record in exceptions:
        seq = seen.get(record.ledger_position, 0)
        seen[record.ledger_position] = seq + 1
        yield record, seq


def _chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(keys), IN_CHUNK):
        yield keys[start : start + IN_CHUNK]
