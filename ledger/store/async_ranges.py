"""The batch ranges read on an asyncio connection pool (PostgreSQL).

A strongly consistent read (GetPosition, ListPositions) needs one statement: the events of
its positions after the versions this process holds. Run on a thread (the library's
connections are blocking) it cost a thread-pool hop each way per call, a quarter to a
third of a call on the echo server; awaited on the event loop it costs neither. The pool
opens on first use in the loop that uses it and is closed by that loop's server at stop.

A read goes out at once while one of the pool's connections is free; when all are busy,
the reads that arrive meanwhile wait and go out together, as one statement, on the next
connection freed (group commit, for reads). Under load a statement answers many calls,
where one per call cost a fifth of a GetPosition's CPU in psycopg alone; unloaded, no read
waits for company. A read still sees everything committed before it started: its
statement is sent after that. Reads that want the same aggregate from different versions
cannot tell their rows apart in one statement (rows carry the aggregate, not the range):
the later one waits for the statement after.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import OperationalError, StoredEvent
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ledger.store.index_ops import EventRange, by_aggregate, stored_events

# Connections of one API process's pool: reads wait on the network, not on the loop.
MAX_CONNECTIONS = 4
# How long a read waits for a connection (the store down: UNAVAILABLE after this).
CONNECTION_WAIT_SECONDS = 5.0


class _Batch:
    """The reads one statement answers: at most one range per aggregate."""

    __slots__ = ("expiry", "ranges", "waiters")

    def __init__(self) -> None:
        self.ranges: dict[UUID, EventRange] = {}
        self.waiters: list[tuple[Sequence[EventRange], asyncio.Future[list[StoredEvent]]]] = []
        self.expiry: asyncio.TimerHandle | None = None

    def takes(self, ranges: Sequence[EventRange]) -> bool:
        return all(self.ranges.get(r[0], r) == r for r in ranges)

    def fail(self, error: BaseException) -> None:
        """Every waiter still waiting gets its own UNAVAILABLE error, caused by ``error``."""
        for _, answer in self.waiters:
            if not answer.done():
                text = str(error)
                failure = OperationalError(
                    text if isinstance(error, OperationalError) else f"position read: {text}"
                )
                failure.__cause__ = error
                answer.set_exception(failure)

    def answer(self, rows: Sequence[StoredEvent]) -> None:
        of_aggregate = by_aggregate(rows)
        for ranges, answer in self.waiters:
            if not answer.done():
                # In the statement's order: by aggregate, then version.
                mine = sorted(ranges, key=lambda r: r[0])
                answer.set_result([s for r in mine for s in of_aggregate.get(r[0], ())])


class AsyncRangeReader:
    def __init__(
        self,
        conninfo: dict[str, Any],
        statement: bytes,
        max_connections: int = MAX_CONNECTIONS,
        connection_wait: float = CONNECTION_WAIT_SECONDS,
    ) -> None:
        self._conninfo = conninfo
        self._statement = statement
        self._max_connections = max_connections
        self._connection_wait = connection_wait
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] | None = None
        self._opening = asyncio.Lock()
        self._closed = False
        self._in_flight = 0  # statements sent and not yet answered
        self._waiting: deque[_Batch] = deque()  # reads for when a connection is free
        self._sending: set[asyncio.Task[None]] = set()  # the waiting reads' statements

    async def select(self, ranges: Sequence[EventRange]) -> list[StoredEvent]:
        """What ``select_events_batch`` returns for ``ranges``, from a statement sent after
        this was called: at once while a connection is free, else shared with the reads
        waiting for the next one (UNAVAILABLE's error if none is free in time)."""
        if not ranges:
            return []
        if self._closed:
            raise OperationalError("position read: the reader is closed")
        overlapping = len({r[0] for r in ranges}) < len(ranges)  # rows of each not apart
        if overlapping or (self._in_flight < self._max_connections and not self._waiting):
            return await self._statement_now(ranges)
        batch = self._waiting[-1] if self._waiting and self._waiting[-1].takes(ranges) else None
        loop = asyncio.get_running_loop()
        if batch is None:
            batch = _Batch()
            # As a read waiting on the pool would: a stuck store is UNAVAILABLE, not a hang.
            batch.expiry = loop.call_later(self._connection_wait, self._expire, batch)
            self._waiting.append(batch)
        for event_range in ranges:
            batch.ranges[event_range[0]] = event_range
        answer: asyncio.Future[list[StoredEvent]] = loop.create_future()
        batch.waiters.append((ranges, answer))
        return await answer

    async def _statement_now(self, ranges: Sequence[EventRange]) -> list[StoredEvent]:
        self._in_flight += 1
        try:
            return await self._select(ranges)
        finally:
            self._in_flight -= 1
            self._send_waiting()

    def _expire(self, batch: _Batch) -> None:
        if batch in self._waiting:
            self._waiting.remove(batch)
            batch.fail(PoolTimeout(f"no connection free in {self._connection_wait:g} s"))

    def _send_waiting(self) -> None:
        """A connection is free: the oldest batch of waiting reads goes out on it."""
        while self._waiting and self._in_flight < self._max_connections and not self._closed:
            batch = self._waiting.popleft()
            if batch.expiry is not None:
                batch.expiry.cancel()
            if all(answer.done() for _, answer in batch.waiters):
                continue  # every caller gave up (deadlines) before it went out
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._answer(batch))
            self._sending.add(task)
            # Accounted here, not in the coroutine: a task cancelled before its first step
            # never runs its finally.
            task.add_done_callback(functools.partial(self._sent, batch))

    async def _answer(self, batch: _Batch) -> None:
        try:
            rows = await self._select(list(batch.ranges.values()))
        except Exception as error:
            batch.fail(error)
            return
        batch.answer(rows)

    def _sent(self, batch: _Batch, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if task.cancelled():
            batch.fail(ConnectionAbortedError("the read was cancelled (the server stopping)"))
        self._in_flight -= 1
        self._send_waiting()

    async def _select(self, ranges: Sequence[EventRange]) -> list[StoredEvent]:
        """One statement for ``ranges`` (one per aggregate)."""
        pool = await self._opened()
        params = ([r[0] for r in ranges], [r[1] for r in ranges], [r[2] for r in ranges])
        # A connection the server dropped (a restart, a failover) is only found out on use:
        # the read is tried again on another (the pool discards the broken one), up to
        # every pooled connection plus a new one, since a restart drops them all. A check
        # per checkout would cost a round trip per read.
        attempts = self._max_connections + 1
        for attempt in range(1, attempts + 1):
            try:
                async with pool.connection() as connection:
                    cursor = await connection.execute(self._statement, params, binary=True)
                    rows = await cursor.fetchall()
                break
            except psycopg.OperationalError as error:
                if attempt == attempts or isinstance(error, PoolTimeout):
                    raise OperationalError(f"position read: {error}") from error
            except (psycopg.Error, TimeoutError) as error:
                # As the library reports its own store errors: UNAVAILABLE to the caller.
                raise OperationalError(f"position read: {error}") from error
        return stored_events(rows)

    async def _opened(self) -> AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]]:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._closed:  # no new pool after close: nobody would close it
                raise OperationalError("position read: the reader is closed")
            if self._pool is None:
                pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] = (
                    AsyncConnectionPool(
                        kwargs={**self._conninfo, "autocommit": True},
                        min_size=1,
                        max_size=self._max_connections,
                        timeout=self._connection_wait,
                        open=False,
                    )
                )
                await pool.open()
                self._pool = pool
        return self._pool

    async def close(self) -> None:
        """Close the pool; reads still waiting for a connection, and any asked for later,
        get UNAVAILABLE's error."""
        self._closed = True
        while self._waiting:
            batch = self._waiting.popleft()
            if batch.expiry is not None:
                batch.expiry.cancel()
            batch.fail(ConnectionAbortedError("the reader closed"))
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
