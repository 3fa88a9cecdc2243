"""WatchAvailability (contract §4.1): read-model changes turned into per-watcher streams.

A *watcher* is one ``WatchAvailability`` call: a channel, a set of SKUs and a bounded
``asyncio.Queue``. The :class:`WatchHub` remembers, per watcher and SKU, the last
``channel_available`` it handed over and emits an :class:`AvailabilityChangeView` only when
the value actually changes. A new watcher first gets the current value of every SKU
(``initial=True``, ``previous_channel_available=0``).

Triggers (each recomputes only the SKUs someone watches):

* **In-process runner** (SQLite, ``--projections in-process``): a batch listener on the
  :class:`~projections.runner.ProjectionRunner`. It runs on the runner's thread right after a
  batch committed and *before* the next batch is folded, so the read model it reads is exactly
  the batch boundary: no boundary is skipped. Only watched SKUs the batch changed are
  recomputed (``ALL_SKUS``, a channel policy changed: every watched SKU).
* **Cross-process** (PostgreSQL, API replicas, ``--projections external``): no runner in this
  process, so a hub thread polls the read model's applied position every ``poll_seconds``
  (50 ms) and recomputes every watched SKU when it moved. Batches the projection process
  commits within one poll interval are observed together: the watcher gets the newest value,
  never an older one after it (see "Guarantee").
* **Time**: an ACTIVE hold stops counting at ``expires_at`` without any event (contract §2), so
  ``channel_available`` can change while the ledger stands still. For every watched SKU the hub
  keeps the earliest future ``expires_at`` of its ACTIVE holds and recomputes the SKU when that
  moment passes (a heap; the hub thread sleeps until the earliest one).

Guarantee ("in order, none skipped"): every recomputation runs under one lock, reads the read
model's committed state and takes ``now`` inside that lock, and hands its results to the event
loop with one ``call_soon_threadsafe`` (callbacks run in FIFO order). Hence, per watcher and
SKU, messages are in ledger order, ``projection_position`` never decreases, no value is sent
twice in a row, and each distinct value the read model held at a batch boundary the hub
observed (every batch in-process; every poll cross-process) is delivered.

Nothing runs on the event loop but queue puts: recomputations happen on the runner's thread,
the hub's thread, or (initial values) a worker thread via ``asyncio.to_thread``.

Limits: ``max_watchers`` per process (beyond: :class:`TooManyWatchers`, RESOURCE_EXHAUSTED);
each queue holds ``max(queue_min, queue_per_sku * SKUs)`` messages — a watcher that falls that
far behind is ended with :class:`WatchOverflow` (RESOURCE_EXHAUSTED) instead of growing memory.
The number of SKUs per watch (1-1000) is validated at the edge.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ledger.domain import availability
from projections.availability import PolicyTerms, compute_availability
from projections.position_state import ProjectedPosition
from projections.runner import ALL_SKUS
from projections.store import PositionRow

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05
IDLE_SECONDS = 1.0  # longest sleep of the hub thread (drains departed watchers)
RETRY_SECONDS = 1.0  # after a failed recomputation (e.g. the database is down)
EXPIRY_SLACK_SECONDS = 0.002  # wake just after expires_at, so `now < expires_at` is false
MAX_WATCHERS = 10_000
QUEUE_MIN = 256
QUEUE_PER_SKU = 2


class ReadModel(Protocol):
    """What the hub reads (``projections.store.ReadModelStore`` has it)."""

    def applied_position(self) -> int: ...
    def positions_of_sku(self, sku: str) -> tuple[int, list[PositionRow]]: ...
    def policy_terms(self, channel: str) -> str | None: ...


class BatchSource(Protocol):
    """An in-process runner (``projections.runner.ProjectionRunner``)."""

    def add_batch_listener(self, listener: Callable[[set[str], int], None]) -> None: ...


class WatchError(Exception):
    reason = "WATCH_ERROR"


class WatchOverflow(WatchError):
    """The watcher fell too far behind; its stream ends (RESOURCE_EXHAUSTED)."""

    reason = "WATCH_QUEUE_FULL"


class TooManyWatchers(WatchError):
    """The process already serves ``max_watchers`` watches (RESOURCE_EXHAUSTED)."""

    reason = "TOO_MANY_WATCHERS"


class WatchClosed(WatchError):
    """The server is shutting down; watch again (on another replica) (UNAVAILABLE)."""

    reason = "WATCH_CLOSED"


@dataclass(frozen=True)
class AvailabilityChangeView:
    sku: str
    channel: str
    channel_available: int
    previous_channel_available: int
    projection_position: int
    changed_at: datetime
    initial: bool = False


class Watcher:
    """One watch. Create it on the event loop; read it with :meth:`next` on the loop."""

    def __init__(self, channel: str, skus: Iterable[str], maxsize: int) -> None:
        self.channel = channel
        self.skus = tuple(dict.fromkeys(skus))
        self.queue: asyncio.Queue[AvailabilityChangeView | None] = asyncio.Queue(maxsize)
        self.last: dict[str, int] = {}  # last value handed over, per SKU (hub lock only)
        self.error: WatchError | None = None  # set on the loop; ends the stream
        self.ended = False  # unsubscribed: the hub stops computing for it

    async def next(self) -> AvailabilityChangeView:
        """The next change; raises the watcher's error once it has one."""
        while True:
            if self.error is not None:
                raise self.error
            item = await self.queue.get()
            if self.error is not None:
                raise self.error
            if item is not None:
                return item

    def end(self, error: WatchError) -> None:
        """End the stream with ``error`` (event loop only)."""
        if self.error is None:
            self.error = error
        # Wakes a waiting reader; when full, the reader is not waiting and sees the error next.
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)


class WatchHub:
    def __init__(
        self,
        store: ReadModel,
        clock: Callable[[], datetime],
        *,
        runner: BatchSource | None = None,
        poll_seconds: float = POLL_SECONDS,
        max_watchers: int = MAX_WATCHERS,
        queue_min: int = QUEUE_MIN,
        queue_per_sku: int = QUEUE_PER_SKU,
    ) -> None:
        self._store = store
        self._clock = clock
        self._runner = runner
        self.poll_seconds = poll_seconds
        self.max_watchers = max_watchers
        self.queue_min = queue_min
        self.queue_per_sku = queue_per_sku
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # every recomputation and registry change
        self._watchers: set[Watcher] = set()
        self._by_key: dict[tuple[str, str], set[Watcher]] = {}  # (channel, sku) → watchers
        self._channels_of: dict[str, set[str]] = {}  # sku → channels watching it
        self._leaving: collections.deque[Watcher] = collections.deque()
        self._expiry: dict[str, datetime] = {}  # sku → earliest future expires_at
        self._expiry_heap: list[tuple[datetime, str]] = []
        self._seen = -1  # poll mode: applied position of the last full recomputation
        self._dirty = False  # a recomputation failed: recompute everything next tick
        self._closed = False
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def mode(self) -> str:
        return "in-process" if self._runner is not None else "poll"

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._runner is not None:
            self._runner.add_batch_listener(self.on_batch)
        self._thread = threading.Thread(target=self._run, name="watch-hub", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """End every stream with :class:`WatchClosed` and stop the hub's thread."""
        self._closed = True
        self._stopping.set()
        self._wake.set()
        for watcher in await asyncio.to_thread(self._snapshot):
            watcher.end(WatchClosed("the server is shutting down; watch again"))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)

    def _snapshot(self) -> list[Watcher]:
        with self._lock:
            return list(self._watchers)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    # ---- watchers -------------------------------------------------------------------------------

    def new_watcher(self, channel: str, skus: Iterable[str]) -> Watcher:
        unique = list(dict.fromkeys(skus))
        return Watcher(channel, unique, max(self.queue_min, self.queue_per_sku * len(unique)))

    def subscribe(self, watcher: Watcher) -> list[AvailabilityChangeView]:
        """Register ``watcher``; returns its initial values. Blocking: call off the loop."""
        with self._lock:
            self._drain_leaving()
            if self._closed:
                raise WatchClosed("the server is shutting down; watch again")
            if watcher.ended:  # the caller went away while we waited for the lock
                return []
            if len(self._watchers) >= self.max_watchers:
                raise TooManyWatchers(
                    f"this server already serves {self.max_watchers} watches; retry later"
                )
            self._register(watcher)
            try:
                now = self._clock()
                terms: dict[str, PolicyTerms] = {}
                initial = []
                for sku in watcher.skus:
                    applied, states = self._read(sku)
                    self._schedule_expiry(sku, states, now)
                    value = self._value(sku, watcher.channel, states, terms, now, applied)
                    watcher.last[sku] = value
                    initial.append(
                        AvailabilityChangeView(
                            sku, watcher.channel, value, 0, applied, now, initial=True
                        )
                    )
            except BaseException:
                self._unregister(watcher)
                raise
        self._wake.set()  # the thread may need to wake earlier (a new expiry) or poll
        return initial

    def unsubscribe(self, watcher: Watcher) -> None:
        """Forget ``watcher`` (any thread; never blocks)."""
        if not watcher.ended:
            watcher.ended = True
            self._leaving.append(watcher)

    def _register(self, watcher: Watcher) -> None:
        self._watchers.add(watcher)
        for sku in watcher.skus:
            self._by_key.setdefault((watcher.channel, sku), set()).add(watcher)
            self._channels_of.setdefault(sku, set()).add(watcher.channel)

    def _unregister(self, watcher: Watcher) -> None:
        if watcher not in self._watchers:
            return
        self._watchers.discard(watcher)
        for sku in watcher.skus:
            key = (watcher.channel, sku)
            others = self._by_key.get(key)
            if others is None:
                continue
            others.discard(watcher)
            if others:
                continue
            del self._by_key[key]
            channels = self._channels_of.get(sku, set())
            channels.discard(watcher.channel)
            if not channels:
                self._channels_of.pop(sku, None)
                self._expiry.pop(sku, None)  # its heap entry goes stale

    def _drain_leaving(self) -> None:
        while self._leaving:
            self._unregister(self._leaving.popleft())

    # ---- triggers -------------------------------------------------------------------------------

    def on_batch(self, changed_skus: set[str], applied_position: int) -> None:
        """Runner batch listener (runner thread, after the commit, before the next batch)."""
        if self._closed:
            return
        try:
            with self._lock:
                self._drain_leaving()
                if ALL_SKUS in changed_skus:
                    skus = set(self._channels_of)
                else:
                    skus = changed_skus & self._channels_of.keys()
                if skus:
                    self._compute(skus)
        except Exception as error:
            # Never fail the runner's batch; the hub thread recomputes everything instead.
            log.warning("watch: recomputation after batch %d failed: %s", applied_position, error)
            self._dirty = True
            self._wake.set()

    def wake(self) -> None:
        """The read model moved (e.g. a NOTIFY from the projection process): look now."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._sleep_seconds())
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._tick()
            except Exception as error:
                log.warning("watch: recomputation failed (%s); retrying", error)
                self._dirty = True
                self._stopping.wait(RETRY_SECONDS)

    def _sleep_seconds(self) -> float:
        with self._lock:
            wait = IDLE_SECONDS
            if self._by_key and (self._runner is None or self._dirty):
                wait = self.poll_seconds
            while self._expiry_heap:
                at, sku = self._expiry_heap[0]
                if self._expiry.get(sku) == at:
                    until = (at - self._clock()).total_seconds() + EXPIRY_SLACK_SECONDS
                    return max(0.0, min(wait, until))
                heapq.heappop(self._expiry_heap)  # stale
            return wait

    def _tick(self) -> None:
        with self._lock:
            self._drain_leaving()
            if not self._by_key:
                self._dirty = False
                return
            full = self._dirty
            applied: int | None = None
            if self._runner is None:  # cross-process: has the projection moved?
                applied = self._store.applied_position()
                full = full or applied != self._seen  # != : a rebuild may swap generations
            skus = set(self._channels_of) if full else set()
            skus |= self._due(self._clock())
            if skus:
                self._compute(skus)
            self._dirty = False
            if full and applied is not None:
                self._seen = applied

    # ---- recomputation (hub lock held) ----------------------------------------------------------

    def _compute(self, skus: set[str]) -> None:
        now = self._clock()
        terms: dict[str, PolicyTerms] = {}
        outbox: list[tuple[Watcher, AvailabilityChangeView]] = []
        for sku in sorted(skus):
            channels = self._channels_of.get(sku)
            if not channels:
                continue
            applied, states = self._read(sku)
            self._schedule_expiry(sku, states, now)
            for channel in sorted(channels):
                value = self._value(sku, channel, states, terms, now, applied)
                for watcher in self._by_key.get((channel, sku), ()):
                    last = watcher.last.get(sku)
                    if watcher.ended or last is None or last == value:
                        continue
                    watcher.last[sku] = value
                    outbox.append(
                        (watcher, AvailabilityChangeView(sku, channel, value, last, applied, now))
                    )
        if outbox:
            self._post(outbox)

    def _read(self, sku: str) -> tuple[int, list[ProjectedPosition]]:
        applied, rows = self._store.positions_of_sku(sku)
        return applied, [
            ProjectedPosition.from_json(r.sku, r.location_id, r.state_json) for r in rows
        ]

    def _value(
        self,
        sku: str,
        channel: str,
        states: list[ProjectedPosition],
        terms: dict[str, PolicyTerms],
        now: datetime,
        applied: int,
    ) -> int:
        if channel not in terms:
            found = self._store.policy_terms(channel)
            terms[channel] = PolicyTerms(**json.loads(found)) if found else PolicyTerms()
        view = compute_availability(sku, channel, states, terms[channel], now, applied)
        return view.channel_available

    def _schedule_expiry(self, sku: str, states: list[ProjectedPosition], now: datetime) -> None:
        upcoming = [
            expiry
            for state in states
            if (expiry := availability.next_change_after(state, now)) is not None
        ]
        if not upcoming:
            self._expiry.pop(sku, None)
            return
        at = min(upcoming)
        if self._expiry.get(sku) != at:
            self._expiry[sku] = at
            heapq.heappush(self._expiry_heap, (at, sku))
            self._wake.set()

    def _due(self, now: datetime) -> set[str]:
        due = set()
        while self._expiry_heap and self._expiry_heap[0][0] <= now:
            at, sku = heapq.heappop(self._expiry_heap)
            if self._expiry.get(sku) == at:
                del self._expiry[sku]  # rescheduled by the recomputation
                due.add(sku)
        return due

    # ---- hand-over to the event loop ------------------------------------------------------------

    def _post(self, outbox: list[tuple[Watcher, AvailabilityChangeView]]) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is gone
            self._loop.call_soon_threadsafe(self._deliver, outbox)

    def _deliver(self, outbox: list[tuple[Watcher, AvailabilityChangeView]]) -> None:
        for watcher, change in outbox:
            if watcher.error is not None:
                continue
            try:
                watcher.queue.put_nowait(change)
            except asyncio.QueueFull:
                watcher.end(
                    WatchOverflow(
                        f"the watcher fell more than {watcher.queue.maxsize} changes behind"
                    )
                )
                self.unsubscribe(watcher)
