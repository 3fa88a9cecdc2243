"""Wake ledger followers (StreamLedger with follow) when entries are committed.

Signals come from this process's writer (commit listener on the pipeline) and, on
PostgreSQL, from NOTIFY on the events table (other replicas, ingest). A follower also
re-reads after POLL_SECONDS without a signal, so a lost notification (or another process
writing a SQLite file) delays delivery, never loses an entry: entries are read by
position from the store, the signal only says "look again".
"""

from __future__ import annotations

import asyncio

POLL_SECONDS = 0.5


class LedgerTail:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._changed = asyncio.Event()

    def wake(self) -> None:
        """Thread-safe: called from the writer thread or the NOTIFY listener."""
        loop, changed = self._loop, self._changed
        if loop is None or changed is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(changed.set)

    async def wait(self, timeout: float = POLL_SECONDS) -> None:
        """Until the next signal or the poll interval, whichever comes first."""
        changed = self._changed
        if changed is None:
            await asyncio.sleep(timeout)
            return
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return
        finally:
            # Every waiter re-reads from its own position, so clearing after waking is safe:
            # a commit racing this clear is still found by that read.
            changed.clear()
