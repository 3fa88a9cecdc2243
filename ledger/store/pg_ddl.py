"""Idempotent PostgreSQL DDL that never takes a lock it does not need.

`CREATE INDEX IF NOT EXISTS` takes a SHARE lock on its table *before* it finds the index
already there, and a DDL transaction keeps every lock it took until it ends. A process
starting next to running writers (a projections runner, an API replica, an ingest bridge)
could then hold one table's lock while waiting for another's that a writer holds, and
PostgreSQL broke the tie by killing one of them ("deadlock detected", seen in CI). So a
statement runs only when the relation it creates is missing, and creators queue on one
advisory lock, which makes the existence check race-free among them (and replaces the
library's CREATE TYPE dance, whose DuplicateObject guard misses the UniqueViolation that two
processes creating the type at once get).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from psycopg import Cursor
from psycopg.rows import DictRow

_CREATES_RELATION = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|TYPE)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r'((?:"[^"]+"|[A-Za-z_][\w$]*)(?:\.(?:"[^"]+"|[A-Za-z_][\w$]*))?)',
    re.IGNORECASE,
)


def advisory_key(*parts: str) -> int:
    """A stable signed 64-bit advisory-lock key for what `parts` name."""
    digest = hashlib.sha256(".".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def created_relation(statement: str, schema: str) -> str | None:
    """The schema-qualified name of the table, index or composite type `statement` creates
    (all three live in pg_class), or None for anything else (such statements always run)."""
    match = _CREATES_RELATION.match(statement)
    if match is None:
        return None
    name = match.group(1)
    # Index names cannot be qualified: an index lives in its table's schema.
    return name if "." in name else f'"{schema}".{name}'


def run_missing_ddl(
    cursor: Cursor[DictRow], statements: Iterable[str], *, schema: str, lock_key: int
) -> int:
    """In the cursor's transaction: take the creators' lock, then run each statement whose
    relation does not exist yet. Returns how many statements ran."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,), prepare=False)
    ran = 0
    for statement in statements:
        relation = created_relation(statement, schema)
        if relation is not None:
            cursor.execute(
                "SELECT to_regclass(%s) IS NOT NULL AS present", (relation,), prepare=False
            )
            row = cursor.fetchone()
            if row is not None and row["present"]:
                continue
        cursor.execute(statement, prepare=False)  # trusted DDL
        ran += 1
    return ran
