"""A unit of work: the aggregates one command (or, later, one batch) reads and writes.

Only the pipeline's writer thread creates units of work, so the aggregate cache below is
single-threaded by construction and commands on one aggregate never race inside a process.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Recording
from eventsourcing.domain import CanMutateAggregate

from ledger.application import InventoryLedger, folded, starts_an_aggregate
from ledger.domain.channel_policy import ChannelPolicy, channel_policy_id
from ledger.domain.idempotency import IdempotencyKey
from ledger.domain.item_policy import ItemPolicy, item_policy_id
from ledger.domain.lot_record import LotRecord, lot_record_id
from ledger.domain.position import EventMeta, Position, position_id
from ledger.domain.reservation import Reservation
from ledger.domain.serial_unit import SerialUnit, serial_unit_id
from ledger.store.index_ops import (
    FROM_SNAPSHOT,
    EntryIndexed,
    EventRange,
    IndexOp,
    PositionIndexed,
    by_aggregate,
    to_micros,
)

_ABSENT = object()  # cached: this aggregate had no events when last looked up


def _mutators(events: Iterable[Any]) -> Iterable[CanMutateAggregate[UUID]]:
    # The event store's type promises only the stored fields; every ledger event is an
    # aggregate event and can fold itself.
    return cast("Iterable[CanMutateAggregate[UUID]]", events)


_NO_LIMIT = 2**31 - 1


class AggregateCache:
    """LRU of aggregates owned by the writer thread, fast-forwarded on every first touch.

    Fast-forwarding (one indexed query) means reads are never stale by more than the
    transactions in flight elsewhere; those surface as IntegrityError on save and are retried.
    A batch fast-forwards everything its commands declared in one query (``prefetch``);
    aggregates found absent are remembered too, so a channel without a policy costs no read
    per command, and the same query would see one another replica created since.
    """

    def __init__(self, app: InventoryLedger, maxsize: int = 20_000) -> None:
        self._app = app
        self._maxsize = maxsize
        self._items: OrderedDict[UUID, Any] = OrderedDict()
        # Reservations and absent ids, oldest first: evicted before anything else. Every
        # Reserve adds one, so in a plain LRU a few seconds of reservations pushed every
        # position out, and the next turns paid to read them back (issue 20).
        self._churn: OrderedDict[UUID, None] = OrderedDict()
        # Brought up to date by this unit of work's prefetch: no per-load query.
        self._fresh: set[UUID] = set()
        # Set by ``trust``: every cached entry but the stale ones is current for this unit.
        self._trusted = False
        # Cached entries another writer has written since (see ``mark_stale``).
        self._stale: set[UUID] = set()

    def begin(self) -> None:
        """A new unit of work: nothing is fresh until fast-forwarded again."""
        self._fresh.clear()
        self._trusted = False

    def trust(self) -> None:
        """For this unit of work, every cached entry (an absent one too) is current but the
        stale ones: the writer knows what was committed since it last was (the pipeline's
        notification head). They need no read."""
        self._trusted = True

    def mark_stale(self, aggregate_ids: Iterable[UUID]) -> None:
        """These may have events the cache has not seen: fast-forward them before use."""
        self._stale.update(i for i in aggregate_ids if i in self._items)

    def __contains__(self, aggregate_id: object) -> bool:
        """Whether ``aggregate_id`` is cached as an aggregate (not as known absent)."""
        if not isinstance(aggregate_id, UUID):
            return False
        return self._items.get(aggregate_id, _ABSENT) is not _ABSENT

    def clear(self) -> None:
        self._items.clear()
        self._churn.clear()
        self._fresh.clear()
        self._stale.clear()

    def _current(self, aggregate_id: UUID) -> bool:
        if aggregate_id not in self._items:
            return False
        return aggregate_id in self._fresh or (self._trusted and aggregate_id not in self._stale)

    def prefetch(self, aggregate_ids: Iterable[UUID]) -> None:
        wanted, ranges = self.ranges_for(aggregate_ids)
        self.absorb(wanted, self._app.events_batch(ranges))

    def ranges_for(
        self,
        aggregate_ids: Iterable[UUID],
        *,
        trusting: bool = False,
        unsnapshotted: Container[UUID] = frozenset(),
    ) -> tuple[list[UUID], list[EventRange]]:
        """What a fast-forward must read: cached aggregates' newer events, the others
        whole. ``trusting``: planned for a unit that will be trusted, so cached entries not
        stale need nothing. ``unsnapshotted``: ids that have no snapshots to look for."""
        fresh = self._fresh
        if trusting:
            items, stale = self._items, self._stale
            wanted = [
                i
                for i in dict.fromkeys(aggregate_ids)
                if i not in fresh and (i not in items or i in stale)
            ]
        else:
            wanted = [i for i in dict.fromkeys(aggregate_ids) if i not in fresh]
        # An uncached aggregate is read whole (newest snapshot, then the events after it)
        # in the batch's one read: rebuilding each through the repository cost two round
        # trips apiece inside the writer's turn, which a cache churned by new reservations
        # turned into 285-390 ms turns (issue 20, the first open loop's collapse).
        # Each snapshot looked for is an index probe of its own in the statement (a batch of
        # new reservations' absent item policies made most of them).
        ranges = [
            (i, self._version(i), _NO_LIMIT)
            if i in self._items
            else (i, 0 if i in unsnapshotted else FROM_SNAPSHOT, _NO_LIMIT)
            for i in wanted
        ]
        return wanted, ranges

    def absorb(self, wanted: list[UUID], events: Iterable[Any]) -> None:
        """Fold the events read for ``ranges_for(wanted)`` into the cache."""
        for aggregate_id, its_events in by_aggregate(events).items():
            aggregate = self._items.get(aggregate_id)
            if aggregate is not None and aggregate is not _ABSENT:
                for event in its_events:
                    event.mutate(aggregate)
            elif starts_an_aggregate(its_events[0]):
                self._store(aggregate_id, folded(its_events), trim=False)
            else:
                # Planned against a cached entry that is gone since: rebuilt from the
                # store, from its snapshot if it has one.
                self._fetch(aggregate_id, trim=False)
        for aggregate_id in wanted:
            if aggregate_id not in self._items:
                self._store(aggregate_id, _ABSENT, trim=False)
            else:
                self._items.move_to_end(aggregate_id)
        self._fresh.update(wanted)
        self._stale.difference_update(wanted)
        # Only now: evicting while folding could drop an entry this read is about to fold
        # into (or have it stored as absent); one evicted here is simply read again on use.
        self._trim()

    def load(self, aggregate_id: UUID) -> Any | None:
        aggregate = self._items.get(aggregate_id)
        if self._current(aggregate_id):
            self._items.move_to_end(aggregate_id)
        elif aggregate is None or aggregate is _ABSENT:
            aggregate = self._fetch(aggregate_id)
        else:
            for event in _mutators(self._app.events.get(aggregate_id, gt=aggregate.version)):
                event.mutate(aggregate)
            self.put(aggregate)
            self._stale.discard(aggregate_id)
        return None if aggregate is _ABSENT else aggregate

    def _fetch(self, aggregate_id: UUID, *, trim: bool = True) -> Any:
        aggregate: Any
        try:
            aggregate = self._app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            aggregate = _ABSENT
        self._store(aggregate_id, aggregate, trim=trim)
        self._stale.discard(aggregate_id)
        return aggregate

    def _version(self, aggregate_id: UUID) -> int:
        aggregate = self._items[aggregate_id]
        return 0 if aggregate is _ABSENT else int(aggregate.version)

    def put(self, aggregate: Any) -> None:
        self._store(aggregate.id, aggregate)

    def _store(self, aggregate_id: UUID, aggregate: Any, *, trim: bool = True) -> None:
        self._items[aggregate_id] = aggregate
        self._items.move_to_end(aggregate_id)
        if aggregate is _ABSENT or isinstance(aggregate, Reservation):
            self._churn[aggregate_id] = None
            self._churn.move_to_end(aggregate_id)
        else:
            self._churn.pop(aggregate_id, None)
        if trim:
            self._trim()

    def _trim(self) -> None:
        """Back to the size bound: reservations and absent ids first while they are more
        than a tenth of it (so a working set of positions larger than the cache still
        turns over, least recently used first, instead of starving reservations)."""
        while len(self._items) > self._maxsize:
            if len(self._churn) > self._maxsize // 10:
                oldest, _ = self._churn.popitem(last=False)
                del self._items[oldest]
            else:
                oldest, _ = self._items.popitem(last=False)
                self._churn.pop(oldest, None)
            self._fresh.discard(oldest)
            self._stale.discard(oldest)

    def evict(self, aggregate_ids: Iterable[UUID]) -> None:
        for aggregate_id in aggregate_ids:
            self._items.pop(aggregate_id, None)
            self._churn.pop(aggregate_id, None)
            self._fresh.discard(aggregate_id)
            self._stale.discard(aggregate_id)


@dataclass(frozen=True)
class Reads:
    """What a command will read, declared so a batch can fetch it all at once."""

    keys: tuple[UUID, ...] = ()
    # Positions: the only aggregates with snapshots, read from the newest when not cached.
    positions: tuple[UUID, ...] = ()
    # The others (policies, reservations, lots, serial units): read from their first event
    # when not cached, without probing the snapshots for one.
    aggregates: tuple[UUID, ...] = ()


def declare_reads(command: Any, reads: Reads) -> Any:
    command.reads = reads
    return command


@dataclass(frozen=True)
class Prefetch:
    """A batch's reads planned before its turn: idempotency keys, the aggregates to bring
    up to date, and the store ranges (``(id, gt, lte)``) that read both."""

    keys: list[UUID]
    wanted: list[UUID]
    ranges: list[EventRange]
    # Every aggregate declared (``wanted`` may leave out cached ones: see ``trusting``).
    declared: list[UUID]
    unsnapshotted: frozenset[UUID] = frozenset()


T = TypeVar("T")
# A command's answer once its events are committed (bare ``Finisher``: any answer).
Finisher = Callable[[list[Recording]], T]
# A write: changes the unit of work, then answers with a finisher (run by the pipeline).
Command = Callable[["UnitOfWork"], Finisher[T]]


class PendingInThisCommit(Exception):
    """The command depends on a batch-mate's uncommitted result (the same request id):
    raised before it changes anything, so the pipeline runs it again in the next commit."""


# (aggregate id as hex, version): one stored event, JSON-friendly for idempotency results.
EventRef = tuple[str, int]
Mark = dict[UUID, int]


class UnitOfWork:
    def __init__(self, app: InventoryLedger, cache: AggregateCache, now: datetime) -> None:
        self.app = app
        self.now = now
        self._cache = cache
        self._seen: dict[UUID, Any] = {}
        # Each position's newest occurred_at when this unit first saw it (entry index rows).
        self._max_occurred_at: dict[UUID, datetime | None] = {}
        self._keys: dict[UUID, IdempotencyKey] = {}
        # Keys looked up for the whole batch at once (None: the key is new).
        self._stored_keys: dict[UUID, IdempotencyKey | None] = {}
        self.index_ops: list[IndexOp] = []
        # Each aggregate the current command touched, at the version it first found.
        self._touched: dict[UUID, int] = {}
        # Open marks (see mark): each notes what is touched after it, at the version found.
        self._marks: list[Mark] = []
        # The writer's turn transaction to commit in (ledger.store.writer_mutex.Turn).
        self.turn: Any = None
        cache.begin()

    def prefetch(self, reads: Iterable[Reads]) -> None:
        """One read for every idempotency key and one fast-forward for every aggregate the
        batch's commands declared, instead of a round trip per command."""
        plan = self.plan_prefetch(reads)
        if plan.ranges:
            self.absorb_prefetch(plan, self.app.events_batch(plan.ranges))

    def plan_prefetch(self, reads: Iterable[Reads], *, trusting: bool = False) -> Prefetch:
        """What ``prefetch`` reads, for a caller that reads it itself (the writer mutex reads
        it in the round trip that takes the turn): ranges of one store read for both a key's
        first event and each aggregate's newer events. ``trusting``: the cache will be
        trusted (``AggregateCache.trust``), so its current entries are not read."""
        key_ids: list[UUID] = []
        aggregate_ids: list[UUID] = []
        unsnapshotted: set[UUID] = set()
        for read in reads:
            key_ids.extend(read.keys)
            aggregate_ids.extend(read.positions)
            aggregate_ids.extend(read.aggregates)
            unsnapshotted.update(read.aggregates)
        keys = list(dict.fromkeys(key_ids))
        plain = frozenset(unsnapshotted)
        wanted, ranges = self._cache.ranges_for(
            aggregate_ids, trusting=trusting, unsnapshotted=plain
        )
        key_ranges: list[EventRange] = [(key_id, 0, 1) for key_id in keys]
        return Prefetch(keys, wanted, key_ranges + ranges, aggregate_ids, plain)

    def plan_rest(self, plan: Prefetch) -> Prefetch:
        """After ``plan`` was read and the cache trusted: what its declared aggregates still
        need (those found stale or dropped meanwhile)."""
        wanted, ranges = self._cache.ranges_for(
            plan.declared, trusting=True, unsnapshotted=plan.unsnapshotted
        )
        return Prefetch([], wanted, ranges, plan.declared, plan.unsnapshotted)

    def absorb_prefetch(self, plan: Prefetch, events: Iterable[Any]) -> None:
        """Take in the events read for ``plan.ranges`` (domain events)."""
        self._stored_keys.update(dict.fromkeys(plan.keys))
        key_set = set(plan.keys)
        others = []
        for event in events:
            if event.originator_id in key_set:
                self._stored_keys[event.originator_id] = event.mutate(None)
            else:
                others.append(event)
        self._cache.absorb(plan.wanted, others)

    def begin_command(self) -> None:
        """The next command starts: what it touches is noted afresh (marks, change_count)."""
        self._touched = {}
        self._marks = []

    def change_count(self) -> tuple[int, int, int]:
        """Grows whenever the current command changes anything this unit will save: compared
        before and after a rejected command to tell a clean rejection from a half-applied
        one. Only the aggregates the command touched are looked at."""
        changed = sum(self._seen[i].version != v for i, v in self._touched.items())
        return changed, len(self.index_ops), len(self._keys)

    @property
    def seen_ids(self) -> list[UUID]:
        return list(self._seen)

    # ---- which events a command wrote (for the ledger positions it reports) -------------------

    def mark(self) -> Mark:
        """Start noting what is touched from now on; pass to :meth:`written_since` after the
        changes. The mark fills as aggregates are fetched from this unit (each with its
        version then), so changes must be made to aggregates fetched after the mark, as
        every use case does. Copying the versions of everything the command had touched
        instead made RecordMovements quadratic: a mark per movement, each over all the
        aggregates of the movements before it."""
        mark: Mark = {}
        self._marks.append(mark)
        return mark

    def written_since(self, mark: Mark) -> list[EventRef]:
        """The newest event of each aggregate changed since ``mark`` (idempotency keys aside).

        Within one save an aggregate's events are contiguous and in version order, so the
        newest ones carry the greatest notification ids of what was written.
        """
        with contextlib.suppress(ValueError):
            self._marks.remove(mark)  # closed: touches no longer noted in it
        refs: list[EventRef] = []
        for aggregate_id, version_then in mark.items():
            version = self._seen[aggregate_id].version
            if version > version_then:
                refs.append((aggregate_id.hex, version))
        return refs

    def _touch(self, aggregate_id: UUID, version: int) -> None:
        # The version the current command first found (0: it created the aggregate).
        if aggregate_id not in self._touched:
            self._touched[aggregate_id] = version
        for mark in self._marks:
            mark.setdefault(aggregate_id, version)

    def _load(self, aggregate_id: UUID) -> Any | None:
        seen = self._seen.get(aggregate_id)
        if seen is not None:
            self._touch(aggregate_id, seen.version)
            return seen
        aggregate = self._cache.load(aggregate_id)
        if aggregate is not None:
            self._seen[aggregate_id] = aggregate
            self._touch(aggregate_id, aggregate.version)
            if isinstance(aggregate, Position):
                self._max_occurred_at[aggregate_id] = aggregate.max_occurred_at
        return aggregate

    # ---- aggregates --------------------------------------------------------------------------

    def find_position(self, sku: str, location_id: str) -> Position | None:
        return self._load(position_id(sku, location_id))

    def position(self, sku: str, location_id: str, meta: EventMeta) -> Position:
        """The position, opened (and indexed) in this unit of work if it has no events yet."""
        found = self.find_position(sku, location_id)
        if found is not None:
            return found
        opened = Position.open(sku, location_id, meta)
        self._seen[opened.id] = opened
        self._touch(opened.id, 0)
        self._cache.put(opened)
        self.index_ops.append(PositionIndexed(sku, location_id, str(opened.id)))
        return opened

    def reservation(self, reservation_id: UUID) -> Reservation | None:
        found = self._load(reservation_id)
        return found if isinstance(found, Reservation) else None

    def add(self, aggregate: Any) -> None:
        """Track an aggregate created by a command."""
        self._seen[aggregate.id] = aggregate
        self._touch(aggregate.id, 0)
        self._cache.put(aggregate)

    def channel_policy(self, channel: str) -> ChannelPolicy | None:
        found = self._load(channel_policy_id(channel))
        return found if isinstance(found, ChannelPolicy) else None

    def item_policy(self, sku: str) -> ItemPolicy | None:
        found = self._load(item_policy_id(sku))
        return found if isinstance(found, ItemPolicy) else None

    def lot_record(self, sku: str, lot_id: str) -> LotRecord | None:
        found = self._load(lot_record_id(sku, lot_id))
        return found if isinstance(found, LotRecord) else None

    def serial_unit(self, sku: str, serial_number: str) -> SerialUnit | None:
        found = self._load(serial_unit_id(sku, serial_number))
        return found if isinstance(found, SerialUnit) else None

    def locations_of(self, sku: str) -> list[str]:
        """Locations holding a position for ``sku``, including ones opened in this unit."""
        known = set(self.app.locations_of(sku))
        known.update(
            op.location_id
            for op in self.index_ops
            if isinstance(op, PositionIndexed) and op.sku == sku
        )
        return sorted(known)

    # ---- idempotency keys (read straight from the store; never cached) -------------------------

    def idempotency_key(self, key_id: UUID) -> IdempotencyKey | None:
        if key_id in self._keys:
            return self._keys[key_id]
        if key_id in self._stored_keys:
            return self._stored_keys[key_id]
        # A key never changes after its first event: one indexed read, and no cache
        # pollution (most lookups are misses for new keys).
        first = list(_mutators(self.app.events.get(key_id, lte=1)))
        return first[0].mutate(None) if first else None

    def remember(self, key: IdempotencyKey) -> None:
        self._keys[key.id] = key

    def is_pending_key(self, key_id: UUID) -> bool:
        """Whether the key was remembered in this unit (its events are in this commit)."""
        return key_id in self._keys

    # ---- commit ---------------------------------------------------------------------------------

    def commit(self) -> list[Recording]:
        """Save everything touched in one transaction; idempotency keys last, so a key's
        notification id is at least every other event's position in this commit (in the
        writer's turn transaction when ``turn`` is set)."""
        changed = [a for a in self._seen.values() if a.pending_events]
        if not changed and not self._keys:
            return []
        extra = {} if self.turn is None else {"turn": self.turn}
        return Recordings(
            self.app.save_aggregates(
                [*changed, *self._keys.values()],
                index_ops=self.index_ops,
                entries=self._entries(changed),
                **extra,
            )
        )

    def _entries(self, changed: list[Any]) -> list[EntryIndexed]:
        rows: list[EntryIndexed] = []
        for aggregate in changed:
            if not isinstance(aggregate, Position):
                continue
            latest = self._max_occurred_at.get(aggregate.id)
            # A position triggers only its own events (Position.Event and subclasses).
            for event in cast("list[Position.Event]", aggregate.pending_events):
                late = latest is not None and event.occurred_at < latest
                if latest is None or event.occurred_at > latest:
                    latest = event.occurred_at
                rows.append(
                    EntryIndexed(
                        position_id=aggregate.id,
                        version=event.originator_version,
                        recorded_at_us=to_micros(event.recorded_at),
                        occurred_at_us=to_micros(event.occurred_at),
                        max_occurred_at_us=to_micros(latest),
                        late=late,
                    )
                )
        return rows

    def discard(self, *, only_mutated: bool = False) -> None:
        """Forget aggregates this unit may have mutated without saving.

        After a failed save every touched aggregate is suspect (its pending events were
        collected); after a rejected command only those with pending events are.
        """
        if only_mutated:
            self._cache.evict(a.id for a in self._seen.values() if a.pending_events)
        else:
            self._cache.evict(self._seen)


class Recordings(list[Recording]):
    """One commit's recordings, with each event's notification id looked up by
    (aggregate, version): every command of a batch asks, so the index is built once."""

    _index: dict[tuple[UUID, int], int] | None = None

    def notification_id(self, originator_id: UUID, version: int) -> int | None:
        if self._index is None:
            self._index = {
                (r.domain_event.originator_id, r.domain_event.originator_version): (
                    r.notification.id
                )
                for r in self
            }
        return self._index.get((originator_id, version))


def position_of(recordings: list[Recording], refs: list[EventRef]) -> int:
    """The global ledger position of the last of ``refs`` (events written in this commit)."""
    indexed = recordings if isinstance(recordings, Recordings) else Recordings(recordings)
    positions = [indexed.notification_id(UUID(hex_id), version) for hex_id, version in refs]
    found = [p for p in positions if p is not None]
    if not found or len(found) != len(set(refs)):
        raise AssertionError(f"events {refs} were not all recorded")
    return max(found)


def recorded_position(app: InventoryLedger, refs: list[EventRef]) -> int:
    """The same figure for events written by an earlier commit (idempotent replays)."""
    positions = [app.notification_id_of(UUID(hex_id), version) for hex_id, version in refs]
    return max((p for p in positions if p is not None), default=0)
