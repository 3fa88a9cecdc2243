"""Reads of the served read models: each resolves the active generation in its own
transaction, and reads everything it returns from that one generation and snapshot."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, TypeVar

from ledger.domain.item_policy import Tracking
from projections.batch_writes import IN_CHUNK
from projections.generations import Generations, GenerationTables
from projections.position_state import LedgerExceptionRecord
from projections.rows import PolicyRow, PositionRow, ReadModelRows
from projections.sql_transaction import ReadModelDatabase, Transaction, is_missing_table

READ_ATTEMPTS = 3  # a read that raced a generation drop re-resolves the active generation
T = TypeVar("T")

_EXCEPTION_COLUMNS = (
    "ledger_position, seq, type, sku, location_id, bucket, quantity, detail,"
    " source, message_id, occurred_at, recorded_at"
)


class ReadQueries:
    """The queries the API and the watch hub serve from the read models."""

    def __init__(self, db: ReadModelDatabase, generations: Generations) -> None:
        self.db = db
        self.generations = generations

    def read(self, body: Callable[[Transaction, GenerationTables], T]) -> T:
        """Run ``body`` in a read transaction against the active generation."""
        for attempt in range(READ_ATTEMPTS):
            try:
                with self.db.transaction(commit=False) as tx:
                    if self.db.postgres is not None:
                        # One snapshot for every statement of the read: the tracking position
                        # and the rows must agree (under READ COMMITTED a batch committing
                        # between them gave rows newer than the position reported with them).
                        tx("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    return body(tx, self.generations.tables(self.generations.active(tx)))
            except Exception as error:
                # The generation was retired and dropped between resolving and reading it.
                if attempt + 1 == READ_ATTEMPTS or not is_missing_table(error):
                    raise
        raise AssertionError("unreachable")

    def tracking(self) -> tuple[int, int]:
        """The active generation and its tracking position, read together."""
        return self.read(lambda tx, t: (t.generation, t.applied_position(tx)))

    def position(self, position_id: str) -> PositionRow | None:
        rows = self.read(
            lambda tx, t: tx.rows(
                "SELECT position_id, sku, location_id, state"
                f" FROM {t.positions} WHERE position_id = %s",
                (position_id,),
            )
        )
        return PositionRow(*rows[0]) if rows else None

    def policy(self, policy_id: str) -> PolicyRow | None:
        rows = self.read(
            lambda tx, t: tx.rows(
                f"SELECT policy_id, channel, terms FROM {t.policies} WHERE policy_id = %s",
                (policy_id,),
            )
        )
        return PolicyRow(*rows[0]) if rows else None

    def positions_of_sku(self, sku: str) -> tuple[int, list[PositionRow]]:
        """Every position of ``sku`` and the tracking position, from one snapshot."""
        return self.read(lambda tx, t: (t.applied_position(tx), _positions_of_sku(tx, t, sku)))

    def availability_inputs(
        self, sku: str, channel: str
    ) -> tuple[int, int, list[PositionRow], str | None]:
        """Generation, tracking position, positions of ``sku`` and ``channel``'s policy
        terms, from one generation in one transaction."""

        def body(
            tx: Transaction, t: GenerationTables
        ) -> tuple[int, int, list[PositionRow], str | None]:
            applied = t.applied_position(tx)
            rows = _positions_of_sku(tx, t, sku)
            terms = tx.rows(f"SELECT terms FROM {t.policies} WHERE channel = %s", (channel,))
            return t.generation, applied, rows, terms[0][0] if terms else None

        return self.read(body)

    def positions_at_location(self, location_id: str) -> list[PositionRow]:
        rows = self.read(
            lambda tx, t: tx.rows(
                "SELECT position_id, sku, location_id, state"
                f" FROM {t.positions} WHERE location_id = %s ORDER BY sku",
                (location_id,),
            )
        )
        return [PositionRow(*row) for row in rows]

    def policy_terms(self, channel: str) -> str | None:
        rows = self.read(
            lambda tx, t: tx.rows(f"SELECT terms FROM {t.policies} WHERE channel = %s", (channel,))
        )
        return rows[0][0] if rows else None

    def tracking_of(self, skus: Collection[str]) -> dict[str, Tracking]:
        """Each SKU's item tracking, in one read; a SKU without an item policy is NONE."""
        answer = dict.fromkeys(skus, Tracking.NONE)
        if not answer:
            return answer

        def body(tx: Transaction, t: GenerationTables) -> list[tuple[Any, ...]]:
            found: list[tuple[Any, ...]] = []
            for chunk in _chunks(sorted(answer)):
                clause, params = self.db.in_clause(chunk)
                found += tx.rows(f"SELECT sku, tracking FROM {t.items} WHERE sku {clause}", params)
            return found

        answer.update((sku, Tracking(tracking)) for sku, tracking in self.read(body))
        return answer

    def exceptions(
        self,
        *,
        exception_type: str | None,
        sku: str | None,
        location_id: str | None,
        after: tuple[int, int],
        limit: int,
    ) -> list[LedgerExceptionRecord]:
        where = "(ledger_position, seq) > (%s, %s)"
        params: list[Any] = [after[0], after[1]]
        for column, value in (
            ("type", exception_type),
            ("sku", sku),
            ("location_id", location_id),
        ):
            if value:
                where += f" AND {column} = %s"
                params.append(value)
        params.append(limit)
        rows = self.read(
            lambda tx, t: tx.rows(
                f"SELECT {_EXCEPTION_COLUMNS} FROM {t.exceptions}"
                f" WHERE {where} ORDER BY ledger_position, seq LIMIT %s",
                params,
            )
        )
        return [_exception_record(row) for row in rows]

    def lot_positions(
        self, *, sku: str | None, location_id: str | None
    ) -> tuple[int, list[PositionRow]]:
        """The tracking position and the positions holding lots (optionally of one SKU and
        one location), from one snapshot. A row's state names "lots" only when it has some:
        the LIKE skips the untracked rows without parsing them (a stray match is parsed and
        found lot-less by the caller)."""
        where = "state LIKE %s"
        params: list[Any] = ['%"lots"%']
        for column, value in (("sku", sku), ("location_id", location_id)):
            if value:
                where += f" AND {column} = %s"
                params.append(value)

        def body(tx: Transaction, t: GenerationTables) -> tuple[int, list[PositionRow]]:
            rows = tx.rows(
                f"SELECT position_id, sku, location_id, state FROM {t.positions} WHERE {where}",
                params,
            )
            return t.applied_position(tx), [PositionRow(*row) for row in rows]

        return self.read(body)

    def rows(self, generation: int | None = None) -> ReadModelRows:
        """Every row of ``generation`` (default: the active one), in key order."""
        if generation is None:
            return self.read(_all_rows)
        with self.db.transaction(commit=False) as tx:
            return _all_rows(tx, self.generations.tables(generation))


def _chunks(keys: list[str]) -> list[list[str]]:
    return [keys[start : start + IN_CHUNK] for start in range(0, len(keys), IN_CHUNK)]


def _positions_of_sku(tx: Transaction, t: GenerationTables, sku: str) -> list[PositionRow]:
    rows = tx.rows(
        "SELECT position_id, sku, location_id, state"
        f" FROM {t.positions} WHERE sku = %s ORDER BY location_id",
        (sku,),
    )
    return [PositionRow(*row) for row in rows]


def _all_rows(tx: Transaction, t: GenerationTables) -> ReadModelRows:
    return ReadModelRows(
        generation=t.generation,
        position=t.applied_position(tx),
        positions=tx.rows(
            f"SELECT position_id, sku, location_id, state FROM {t.positions} ORDER BY position_id"
        ),
        policies=tx.rows(f"SELECT policy_id, channel, terms FROM {t.policies} ORDER BY policy_id"),
        exceptions=tx.rows(
            f"SELECT {_EXCEPTION_COLUMNS} FROM {t.exceptions} ORDER BY ledger_position, seq"
        ),
        items=tx.rows(
            f"SELECT item_id, sku, tracking, version, ledger_position FROM {t.items}"
            " ORDER BY item_id"
        ),
    )


def _exception_record(row: tuple[Any, ...]) -> LedgerExceptionRecord:
    return LedgerExceptionRecord(
        ledger_position=int(row[0]),
        type=row[2],
        sku=row[3],
        location_id=row[4],
        bucket=row[5],
        quantity=int(row[6]),
        detail=row[7],
        source=row[8],
        message_id=row[9],
        occurred_at=datetime.fromisoformat(row[10]),
        recorded_at=datetime.fromisoformat(row[11]),
        seq=int(row[1]),
    )
