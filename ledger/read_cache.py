"""Committed aggregates for strongly consistent reads, shared by the reader threads.

A STRONG read must see every event committed before it started. The library's repository
cache gives that with a fast-forward query per aggregate, then deep-copies the cached
aggregate for every read (4-7 % of a GetPosition's CPU) because its callers may mutate what
they get. Readers never mutate, so here the cached aggregates are published copy-on-write:
an aggregate handed out is never changed again, a fast-forward that finds new events folds
them into a copy and publishes the copy, and a read of an unchanged aggregate copies
nothing. Every read still costs one indexed statement (the events newer than the cached
versions of all the aggregates it wants), which is what keeps it strong: it runs after the
read started, so it sees everything committed before.

The writer's own cache (``ledger.unit_of_work.AggregateCache``) is not shared: it holds
aggregates mid-command, mutated in place before their commit (and evicted when a command is
rejected), so a reader could see uncommitted state.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from copy import deepcopy
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import StoredEvent

from ledger.application import (
    READ_CACHE_SIZE,
    InventoryLedger,
    folded,
    starts_an_aggregate,
)
from ledger.domain.hold_book import book_of
from ledger.domain.lots import lots_of
from ledger.domain.position import Position
from ledger.store.index_ops import FROM_SNAPSHOT, EventRange, by_aggregate

_NO_LIMIT = 2**31 - 1


class _Entry:
    """One cached aggregate; ``lock`` serialises publishing a newer copy of it."""

    __slots__ = ("aggregate", "lock")

    def __init__(self, aggregate: Any) -> None:
        self.aggregate = aggregate
        self.lock = threading.Lock()


def _frozen(aggregate: Any) -> Any:
    """Finish what a position's read methods would otherwise do in place on first use
    (a snapshot's plain dict of holds becomes a book, a pre-lots state gets its lots), so a
    published aggregate is never written to by a reader."""
    if isinstance(aggregate, Position):
        book_of(aggregate)
        lots_of(aggregate)
    return aggregate


class ReadCache:
    """LRU of committed aggregates (at most ``maxsize``), safe for concurrent readers.

    What :meth:`get_many` returns must be treated as immutable: it is shared with every
    other reader of the same aggregate.
    """

    def __init__(self, app: InventoryLedger, maxsize: int = READ_CACHE_SIZE) -> None:
        self._app = app
        self._maxsize = maxsize
        self._items: OrderedDict[UUID, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # the dict and its order only; never held over I/O

    def get(self, aggregate_id: UUID) -> Any | None:
        """The aggregate as committed when the call started (or later); None if it has no
        events."""
        return self.get_many([aggregate_id])[0]

    def get_many(self, aggregate_ids: Sequence[UUID]) -> list[Any | None]:
        """Each aggregate (None where it has none) from one statement's snapshot of the
        store: aggregates read together are mutually consistent (plus a rebuild of each one
        not cached yet, which sees at least as much)."""
        entries, ranges = self._plan(aggregate_ids)
        return self._settle(aggregate_ids, entries, by_aggregate(self._app.events_batch(ranges)))

    async def get_many_async(
        self,
        aggregate_ids: Sequence[UUID],
        select: Callable[[Sequence[EventRange]], Awaitable[list[StoredEvent]]],
    ) -> list[Any | None]:
        """``get_many`` with its one statement awaited (``select``: the store's ranges read
        on an asyncio connection), so an event loop serves the read without a thread-pool
        hop. The rare rebuild through the repository (blocking) goes to a thread."""
        entries, ranges = self._plan(aggregate_ids)
        to_domain = self._app.mapper.to_domain_event
        newer = by_aggregate(to_domain(stored) for stored in await select(ranges))
        if any(entries[i] is None and not starts_an_aggregate(e[0]) for i, e in newer.items()):
            # An uncached aggregate its rows do not start: rebuilt, blocking (see _settle).
            return await asyncio.to_thread(self.get_many, aggregate_ids)
        return self._settle(aggregate_ids, entries, newer)

    def _plan(
        self, aggregate_ids: Sequence[UUID]
    ) -> tuple[dict[UUID, _Entry | None], list[EventRange]]:
        wanted = list(dict.fromkeys(aggregate_ids))
        with self._lock:
            entries = {i: self._items.get(i) for i in wanted}
            for i, entry in entries.items():
                if entry is not None:
                    self._items.move_to_end(i)
        # Cached: the events after its version. Not cached: all of it, from its newest
        # snapshot, in the same statement (a rebuild through the repository afterwards cost
        # two more round trips per aggregate).
        ranges: list[EventRange] = [
            (i, int(entry.aggregate.version), _NO_LIMIT)
            if entry is not None
            else (i, FROM_SNAPSHOT, _NO_LIMIT)
            for i, entry in entries.items()
        ]
        return entries, ranges

    def _settle(
        self,
        aggregate_ids: Sequence[UUID],
        entries: dict[UUID, _Entry | None],
        newer: dict[UUID, list[Any]],
    ) -> list[Any | None]:
        found: dict[UUID, Any | None] = {}
        for i, entry in entries.items():
            its_events = newer.get(i, [])
            if entry is not None:
                found[i] = self._fast_forward(entry, its_events)
            elif its_events and starts_an_aggregate(its_events[0]):
                found[i] = self._cached(i, _frozen(folded(its_events)))
            elif its_events:
                found[i] = self._rebuild(i)
            else:
                found[i] = None  # absent aggregates are not cached: a miss costs no more
        return [found[i] for i in aggregate_ids]

    def _fast_forward(self, entry: _Entry, events: Iterable[Any]) -> Any:
        with entry.lock:
            current = entry.aggregate
            # Another reader may have published some or all of them meanwhile.
            new = [e for e in events if e.originator_version > current.version]
            if new:
                copy = deepcopy(current)
                for event in new:
                    event.mutate(copy)  # checks the versions follow on
                entry.aggregate = current = _frozen(copy)
            return current

    def _rebuild(self, aggregate_id: UUID) -> Any | None:
        """From its newest snapshot and later events, read after the batch's statement."""
        try:
            # ``version`` bypasses the library's cache (and its deepcopy): a plain rebuild.
            aggregate: Any = self._app.repository.get(aggregate_id, version=_NO_LIMIT)
        except AggregateNotFoundError:
            return None
        return self._cached(aggregate_id, _frozen(aggregate))

    def _cached(self, aggregate_id: UUID, aggregate: Any) -> Any:
        """Cache a rebuilt aggregate, unless a concurrent reader cached a newer one first."""
        with self._lock:
            entry = self._items.get(aggregate_id)
            if entry is None:
                self._items[aggregate_id] = _Entry(aggregate)
                while len(self._items) > self._maxsize:
                    self._items.popitem(last=False)
                return aggregate
        # A concurrent reader cached it first: keep whichever is newer.
        with entry.lock:
            if aggregate.version > entry.aggregate.version:
                entry.aggregate = aggregate
            return entry.aggregate
