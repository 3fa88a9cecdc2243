"""One writer at a time per ledger, across API replicas and ingest bridges (PostgreSQL).

Without it, replicas writing at once lose to each other in two ways: a batch stamped with
its recorded_at before another replica committed a later one fails the entry index's
recorded_at CHECK, and a batch built on a cached position another replica has since
written fails its version check. Both cost a re-run of the whole batch; on one hot
position with two replicas almost every batch lost (75 reservations/s against 529 with one
replica). The commits are serial anyway (every insert locks the events table), so the
writers take turns from *before* they stamp the time and read their aggregates to after
they commit: under the mutex the head they read is the head they commit after, and their
fast-forwarded aggregates are current, so neither conflict can happen. Only the writer
thread's short critical section is serial; gRPC handling, validation and replies, most of a
replica's CPU, still run in parallel on every replica.

The mutex is a transaction-scoped advisory lock on a dedicated connection, so it is
released when the holder commits, dies, or stalls past ``idle_in_transaction_session_timeout``
(a hung replica cannot block the others for longer than that), and waiting for it is
bounded by ``lock_timeout`` (then the batch fails with UNAVAILABLE and clients retry with
the same request id).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol
from uuid import UUID

import psycopg
import psycopg.errors
from eventsourcing.persistence import OperationalError, StoredEvent
from psycopg.sql import Composed

from ledger.metrics.definitions import WRITER_MUTEX_WAIT_SECONDS, WRITER_TURN_SECONDS
from ledger.store.index_ops import EventRange, stored_events
from ledger.store.pg_ddl import advisory_key

log = logging.getLogger(__name__)

# Waiting for another writer's turn; a turn is one group commit (tens of milliseconds).
WAIT_SECONDS_MAX = 10
# A holder silent this long inside its turn is presumed hung and cut off by the server.
HOLD_SECONDS_MAX = 30


class WriterMutex(Protocol):
    # Whether the turn reports the notification head (``notification_head``, PostgreSQL).
    tracks_notifications: bool

    def hold(
        self, ranges: Sequence[EventRange] = ()
    ) -> contextlib.AbstractContextManager[int | None]:
        """Hold the writer's turn; yields the ledger head's recorded_at (µs) read under it,
        or None where there is no mutex (a single-process store). Where it can, the mutex
        also reads the events of ``ranges`` under the lock, in the same round trip (see
        ``prefetched``)."""
        ...

    def prefetched(self) -> list[StoredEvent] | None:
        """Within ``hold(ranges)``: the events of ``ranges`` read after the lock was taken,
        ordered by aggregate and version; None if this mutex read nothing (the caller reads
        them itself)."""
        ...

    def turn(self) -> Turn | None:
        """Within ``hold``: the turn's own transaction for the commit to run in (the
        recorder's ``insert_events(turn=...)``), or None (commit as usual)."""
        ...

    def notification_head(self) -> int | None:
        """Within ``hold``: the greatest notification id committed, read with the lock."""
        ...

    def changed_since(self, after: int, upto: int, limit: int) -> list[UUID] | None:
        """Within ``hold``: the aggregates with events in ``(after, upto]`` (notification
        ids), or None when there are more than ``limit``."""
        ...

    def close(self) -> None: ...


class Turn:
    """The held turn's open transaction, for the batch's commit to run in.

    Committing there ends the transaction and the lock with it: handing the turn on costs
    no round trip of its own, and a writer whose session (and so its lock) is gone cannot
    commit, where a commit on another connection could race the next holder. Any failure
    closes the connection (the server rolls back and releases the lock); ``failed`` keeps
    the error for a second attempt, which must not run on a turn already lost.
    """

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection
        self.failed: Exception | None = None
        # Set by the commit: the greatest notification id before it (read under the lock).
        self.head_before: int | None = None

    def fail(self, error: Exception) -> Exception:
        self.failed = error
        with contextlib.suppress(psycopg.Error):
            self.connection.close()
        return error


class NoWriterMutex:
    """SQLite: one process owns the file and its writer is the only one."""

    tracks_notifications = False

    @contextlib.contextmanager
    def hold(self, ranges: Sequence[EventRange] = ()) -> Iterator[int | None]:
        yield None

    def prefetched(self) -> list[StoredEvent] | None:
        return None

    def turn(self) -> Turn | None:
        return None

    def notification_head(self) -> int | None:
        return None

    def changed_since(self, after: int, upto: int, limit: int) -> list[UUID] | None:
        return None

    def close(self) -> None:
        pass


class PostgresWriterMutex:
    tracks_notifications = True

    def __init__(
        self,
        conninfo: dict[str, Any],
        schema: str,
        entries_table: str,
        head_sql: Composed | bytes,
        ranges_sql: Composed | bytes | None = None,
        notifications_sql: Composed | bytes | None = None,
        changed_sql: Composed | bytes | None = None,
    ) -> None:
        """``head_sql`` selects (seq, recorded_at_us) of the newest ledger entry;
        ``ranges_sql`` the events of ``(id, gt, lte)`` ranges given as three arrays
        (``LedgerPostgresRecorder.select_events_batch``'s statement)."""
        self._conninfo = conninfo
        self._key = advisory_key(schema, entries_table, "ledger-writer")
        self._head_sql = head_sql
        self._ranges_sql = ranges_sql
        # The greatest notification id, and the aggregates with events in a range of them.
        self._notifications_sql = notifications_sql
        self._changed_sql = changed_sql
        self._notification_head: int | None = None
        self.tracks_notifications = notifications_sql is not None and changed_sql is not None
        self._prefetched: list[StoredEvent] | None = None
        self._turn: Turn | None = None
        self._connection: psycopg.Connection[tuple[Any, ...]] | None = None
        self._pipeline_mode: contextlib.AbstractContextManager[psycopg.Pipeline] | None = None
        self._lock = threading.Lock()  # one writer thread per process; cheap insurance

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.Connection.connect(
                **self._conninfo,
                # Never prepared: the same statements every turn, and nothing to redo.
                prepare_threshold=None,
                options=(
                    f"-c lock_timeout={WAIT_SECONDS_MAX * 1000}"
                    f" -c idle_in_transaction_session_timeout={HOLD_SECONDS_MAX * 1000}"
                ),
            )
            # In pipeline mode for its whole life: taking the turn is one round trip (its
            # statements flushed together) and the commit that ends it one more; entering
            # and leaving the mode per turn cost a Sync round trip each time.
            self._pipeline_mode = self._connection.pipeline()
            self._pipeline_mode.__enter__()
        return self._connection

    @contextlib.contextmanager
    def hold(self, ranges: Sequence[EventRange] = ()) -> Iterator[int | None]:
        with self._lock:
            began = time.perf_counter()
            head = self._acquire(ranges)
            acquired = time.perf_counter()
            WRITER_MUTEX_WAIT_SECONDS.observe(acquired - began)
            try:
                yield head
            finally:
                self._prefetched = None
                self._turn = None
                self._notification_head = None
                self._release()
                WRITER_TURN_SECONDS.observe(time.perf_counter() - acquired)

    def prefetched(self) -> list[StoredEvent] | None:
        return self._prefetched

    def turn(self) -> Turn | None:
        return self._turn

    def notification_head(self) -> int | None:
        return self._notification_head

    def changed_since(self, after: int, upto: int, limit: int) -> list[UUID] | None:
        if self._connection is None or self._changed_sql is None:
            raise OperationalError("writer mutex: not held")
        try:
            with self._connection.cursor() as cursor:
                cursor.execute(self._changed_sql, (after, upto, limit + 1))
                ids = [row[0] for row in cursor.fetchall()]
        except psycopg.Error as error:
            self._discard()
            raise OperationalError(f"writer mutex: {error}") from error
        return None if len(ids) > limit else ids

    def _acquire(self, ranges: Sequence[EventRange]) -> int:
        # A connection the server dropped (a restart, a failover) is only found out on use:
        # one more try on a fresh connection, as the store's own statements get.
        for attempt in (1, 2):
            reused = self._connection is not None
            try:
                connection = self._connect()
                # One round trip: the lock, then the head and the batch's reads, each in a
                # snapshot taken after it (the prefetch used to be a round trip of its own).
                ranges_sql, notifications_sql = self._ranges_sql, self._notifications_sql
                read = bool(ranges) and ranges_sql is not None
                rows: list[tuple[Any, ...]] = []
                with connection.cursor() as cursor, connection.cursor() as notifications:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (self._key,))
                    cursor.execute(self._head_sql)
                    if self.tracks_notifications and notifications_sql is not None:
                        notifications.execute(notifications_sql)
                    if read and ranges_sql is not None:
                        with connection.cursor(binary=True) as reader:
                            reader.execute(
                                ranges_sql,
                                (
                                    [r[0] for r in ranges],
                                    [r[1] for r in ranges],
                                    [r[2] for r in ranges],
                                ),
                            )
                            rows = reader.fetchall()
                    row = cursor.fetchone()
                    counted = notifications.fetchone() if self.tracks_notifications else None
            except psycopg.Error as error:
                self._discard()
                if (
                    attempt == 1
                    and reused
                    and not isinstance(error, psycopg.errors.LockNotAvailable)
                ):
                    continue
                log.warning("writer mutex unavailable: %s", error)
                raise OperationalError(f"writer mutex: {error}") from error
            self._prefetched = stored_events(rows) if read else None
            self._turn = Turn(connection)
            self._notification_head = None if counted is None else int(counted[0])
            return 0 if row is None else int(row[1])
        raise AssertionError("unreachable")

    def _release(self) -> None:
        try:
            # Ends the transaction, and with it the lock; nothing to send when the batch's
            # commit already ended it (Turn).
            if self._connection is not None and not self._connection.closed:
                self._connection.commit()
        except psycopg.Error:
            self._discard()  # a closed session holds no lock either

    def _discard(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
        self._connection = None
        self._pipeline_mode = None

    def close(self) -> None:
        with self._lock:
            self._discard()
