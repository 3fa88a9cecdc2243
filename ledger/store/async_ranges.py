"""The batch ranges read on an asyncio connection pool (PostgreSQL).

A strongly consistent read (GetPosition, ListPositions) needs one statement: the events of
its positions after the versions this process holds. Run on a thread (the library's
connections are blocking) it cost a thread-pool hop each way per call, a quarter to a
third of a call on the echo server; awaited on the event loop it costs neither. The pool
opens on first use in the loop that uses it and is closed by that loop's server at stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psycopg
from eventsourcing.persistence import OperationalError, StoredEvent
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ledger.store.index_ops import EventRange, stored_events

# Connections of one API process's pool: reads wait on the network, not on the loop.
MAX_CONNECTIONS = 4
# How long a read waits for a connection (the store down: UNAVAILABLE after this).
CONNECTION_WAIT_SECONDS = 5.0


class AsyncRangeReader:
    def __init__(
        self,
        conninfo: dict[str, Any],
        statement: bytes,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._conninfo = conninfo
        self._statement = statement
        self._max_connections = max_connections
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] | None = None
        self._opening = asyncio.Lock()

    async def select(self, ranges: Sequence[EventRange]) -> list[StoredEvent]:
        """What ``select_events_batch`` returns for ``ranges``, in one statement."""
        if not ranges:
            return []
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
            if self._pool is None:
                pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] = (
                    AsyncConnectionPool(
                        kwargs={**self._conninfo, "autocommit": True},
                        min_size=1,
                        max_size=self._max_connections,
                        timeout=CONNECTION_WAIT_SECONDS,
                        open=False,
                    )
                )
                await pool.open()
                self._pool = pool
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
