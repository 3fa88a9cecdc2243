"""The write path: one command pipeline per process.

A single writer thread takes commands from a bounded queue, applies each to cached
aggregates inside a unit of work and commits once. Serialising in-process means the only
optimistic-concurrency conflicts left are with other processes; those are retried a bounded
number of times with jitter. Group commit: commands queued within a short linger share one
unit of work and one transaction, each keeping its own outcome (commands validate before they
mutate, so a rejected one leaves its batch-mates' changes intact). A conflict re-judges the
batch's commands one by one on reloaded state, each with its own retries.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from datetime import datetime, timedelta
from typing import Any, TypeVar

from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError

from ledger.application import InventoryLedger
from ledger.config import DEFAULT_GROUP_COMMIT_LINGER_MS, DEFAULT_GROUP_COMMIT_MAX
from ledger.domain.errors import ConcurrencyConflict, StoreUnavailable
from ledger.domain.limits import CONFLICT_RETRIES_MAX
from ledger.metrics.definitions import BATCH_SIZE, COMMIT_SECONDS, WRITE_CONFLICTS, count_appended
from ledger.store.index_ops import from_micros
from ledger.store.writer_mutex import WriterMutex
from ledger.unit_of_work import (
    AggregateCache,
    Command,
    Finisher,
    PendingInThisCommit,
    Prefetch,
    Reads,
    UnitOfWork,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE_DEPTH_MAX = 10_000
# Group commit: how long the writer waits for batch-mates, and how many share a commit
# (the settings' defaults: ledger.config.GroupCommit).
DEFAULT_LINGER_SECONDS = DEFAULT_GROUP_COMMIT_LINGER_MS / 1000
DEFAULT_BATCH_MAX = DEFAULT_GROUP_COMMIT_MAX
# Whole-batch attempts after conflicts with other replicas, before one by one.
BATCH_CONFLICT_RETRIES = 5
# Aggregates another writer may have written since this one's last commit, looked up one by
# one; past that the whole cache is dropped instead.
CHANGED_MAX = 10_000
_CONFLICT = object()
_STOP = object()


class PipelineOverloaded(Exception):
    """Back-pressure (RESOURCE_EXHAUSTED): the queue is full, or the writer could not reach
    the command before the caller's deadline. Refusing at once, with a retry delay, beats
    queueing work whose caller will have given up (a timeout that may still apply it)."""

    def __init__(self, message: str, retry_after_seconds: float = 0.1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


def admit(wait: float, time_remaining: float) -> None:
    """Refuse (PipelineOverloaded) a command that would wait ``wait`` seconds for the writer
    with only ``time_remaining`` before its caller's deadline: the writer's own admission,
    and an API process's on the writer's last estimate."""
    if wait > time_remaining:
        raise PipelineOverloaded(
            f"the write queue is about {wait * 1000:.0f} ms deep, longer than the"
            f" {max(time_remaining, 0) * 1000:.0f} ms left before this call's deadline",
            retry_after_seconds=min(max(wait, 0.05), 5.0),
        )


# Weight of the newest batch in the writer's running cost estimate.
_COST_SMOOTHING = 0.2


def _started(future: Future[Any]) -> bool:
    """Mark the future running (once), unless its caller already cancelled it."""
    if future.running():
        return True
    try:
        return future.set_running_or_notify_cancel()
    except RuntimeError:  # cancelled, and its waiters were told on an earlier pass
        return False


class CommandPipeline:
    def __init__(
        self,
        app: InventoryLedger,
        clock: Callable[[], datetime],
        *,
        conflict_retries: int = CONFLICT_RETRIES_MAX,
        linger_seconds: float = DEFAULT_LINGER_SECONDS,
        batch_max: int = DEFAULT_BATCH_MAX,
        mutex: WriterMutex | None = None,
    ) -> None:
        self._app = app
        # Writers in other processes take turns with this one (ledger.store.writer_mutex).
        self._mutex = app.writer_mutex() if mutex is None else mutex
        self._clock = clock
        self._cache = AggregateCache(app)
        # The notification head right after this writer's last commit, while its whole cache
        # (absent entries too) is known current at it: a turn whose head is still this one
        # reads nothing for the cached aggregates. None: not known (start, after a failure),
        # or a store whose mutex does not report heads (SQLite), where every turn reads.
        self._synced: int | None = None
        self._conflict_retries = conflict_retries
        self._linger = linger_seconds
        self._batch_max = batch_max
        # recorded_at never goes backwards along the ledger (contract §3 recorded axis): each
        # command's time is at least the newest recorded_at this writer has seen committed.
        # Other replicas' commits raise it through the entry index CHECK (see _execute).
        self._floor = from_micros(0)
        self._lead = timedelta(0)
        self._raise_floor()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH_MAX)
        self._commit_listeners: list[Callable[[], None]] = []
        # Running cost of the writer's work (admission control: see expected_wait).
        self._seconds_per_command = 0.0
        self._seconds_per_batch = 0.0
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Called on the writer thread after every commit that wrote events (keep it cheap)."""
        self._commit_listeners.append(listener)

    def submit(self, command: Command[T], *, time_remaining: float | None = None) -> Future[T]:
        """Queue ``command``. With ``time_remaining`` (the caller's deadline, in seconds) a
        command that would wait longer than that is refused up front."""
        if time_remaining is not None:
            self._admit(time_remaining)
        future: Future[Any] = Future()
        try:
            self._queue.put_nowait((command, future))
        except queue.Full:
            raise PipelineOverloaded("write queue is full") from None
        return future

    def expected_wait(self) -> float:
        """Seconds a command queued now would wait for its answer: the queue ahead of it at
        the recent cost per command, plus one batch (the one it will be part of)."""
        queued = self._queue.qsize()
        if queued == 0:
            return 0.0
        return (queued + 1) * self._seconds_per_command + self._seconds_per_batch

    def _admit(self, time_remaining: float) -> None:
        admit(self.expected_wait(), time_remaining)

    def _measured(self, commands: int, seconds: float) -> None:
        if commands <= 0:
            return
        per_command = seconds / commands
        if self._seconds_per_batch == 0.0:
            self._seconds_per_command, self._seconds_per_batch = per_command, seconds
            return
        a = _COST_SMOOTHING
        self._seconds_per_command += a * (per_command - self._seconds_per_command)
        self._seconds_per_batch += a * (seconds - self._seconds_per_batch)

    def execute(self, command: Command[T]) -> T:
        """Submit and wait (for synchronous callers: CLI, tools, tests)."""
        return self.submit(command).result()

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._mutex.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stopping = self._gather(batch)
            began, size = time.perf_counter(), len(batch)
            try:
                while batch:
                    batch = self._execute_batch(batch)
            except BaseException as error:  # a bug: fail this batch, never the writer
                log.exception("writer: a batch failed unexpectedly; its commands get the error")
                for _, future in batch:
                    if not future.done():
                        with contextlib.suppress(InvalidStateError):
                            future.set_exception(error)
            self._measured(size, time.perf_counter() - began)

    def _gather(self, batch: list[Any]) -> bool:
        """Group commit: take what is queued, waiting up to the linger for more, up to the
        batch limit. Returns whether a stop request was met (after this batch)."""
        deadline = time.monotonic() + self._linger
        while len(batch) < self._batch_max:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    return False
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _execute_batch(self, items: list[tuple[Command, Future[Any]]]) -> list[Any]:
        """Apply every command in order to one unit of work and commit once; each command
        keeps its own outcome. Returns the commands deferred to the next commit."""
        if len(items) == 1:
            command, future = items[0]
            if _started(future):
                self._settle(future, lambda: self._execute(command))
            return []
        for attempt in range(1, BATCH_CONFLICT_RETRIES + 1):
            outcome = self._try_batch(items)
            if outcome is not _CONFLICT:
                return outcome
            # Another replica wrote one of these aggregates (or a later recorded_at) first:
            # the whole batch is re-judged on reloaded state, so a conflict costs one more
            # transaction instead of one per command.
            self._back_off(attempt)
        return self._one_by_one(items)

    def _try_batch(self, items: list[tuple[Command, Future[Any]]]) -> Any:
        # The reads are planned before the turn (only this thread touches the cache), so
        # the mutex can read them in the round trip that takes it.
        uow, plan = self._plan(
            [c.reads for c, f in items if hasattr(c, "reads") and not f.cancelled()]
        )
        try:
            with self._mutex.hold(plan.ranges) as head_us:
                self._adopt_head(head_us)
                uow.now = self._now()
                outcome = self._apply_batch(items, uow, plan)
        except (OperationalError, InterfaceError):
            return self._one_by_one(items)  # the mutex's store is down: each reports it
        if outcome is _CONFLICT or isinstance(outcome, list):
            return outcome
        # Answers are built after the turn is handed on: only the commit needs the mutex.
        return outcome()

    def _apply_batch(
        self, items: list[tuple[Command, Future[Any]]], uow: UnitOfWork, plan: Prefetch
    ) -> Any:
        """Apply and commit under the writer's turn. Returns _CONFLICT, the deferred
        commands (when nothing needs answering outside the turn), or a callable that
        answers every command and returns the deferred ones."""
        applied: list[tuple[Future[Any], Finisher]] = []
        rejected: list[tuple[Future[Any], BaseException]] = []
        deferred: list[tuple[Command, Future[Any]]] = []
        try:
            self._absorb(uow, plan)
        except (OperationalError, InterfaceError):
            return lambda: self._one_by_one(items)
        for command, future in items:
            # Started only now: a caller whose deadline passed while the command waited in
            # this batch has cancelled it, and it must not be applied late.
            if not _started(future):
                continue
            uow.begin_command()
            before = uow.change_count()
            try:
                applied.append((future, command(uow)))
            except PendingInThisCommit:
                deferred.append((command, future))
            except (OperationalError, InterfaceError):
                uow.discard()
                return lambda: self._one_by_one(items)
            except BaseException as error:
                if uow.change_count() != before:
                    # Half-applied (a bug, not a rejection): nothing of this batch is
                    # trusted; each command runs again on its own against fresh state.
                    uow.discard()
                    return lambda: self._one_by_one(items)
                rejected.append((future, error))
        try:
            recordings = self._commit_or_conflict(uow)
        except BaseException as error:
            for future, _ in [*applied, *rejected]:
                future.set_exception(error)
            return deferred
        if recordings is _CONFLICT:
            return _CONFLICT
        self._committed(uow, recordings)

        def answer() -> list[Any]:
            BATCH_SIZE.observe(len(applied))
            for future, finish in applied:
                self._settle(future, functools.partial(finish, recordings))
            for future, error in rejected:
                future.set_exception(error)
            return deferred

        return answer

    def _one_by_one(self, items: list[tuple[Command, Future[Any]]]) -> list[Any]:
        for command, future in items:
            if _started(future):
                self._settle(future, functools.partial(self._execute, command))
        return []

    @staticmethod
    def _settle(future: Future[Any], run: Callable[[], Any]) -> None:
        try:
            result = run()
        except BaseException as error:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _committed(self, uow: UnitOfWork, recordings: list[Any]) -> None:
        if recordings:
            if self._synced is not None:
                # The commit followed the head the cache was brought to (checked in the
                # commit itself, under the table lock): the cache, which holds what it
                # wrote, is current at its last event. Anything else committed in between
                # (a writer outside the mutex) makes it start from the store again.
                before = uow.turn.head_before if uow.turn is not None else None
                self._synced = (
                    max(r.notification.id for r in recordings) if before == self._synced else None
                )
            self._floor = max(self._floor, uow.now)
            count_appended(recordings)
            for listener in self._commit_listeners:
                listener()

    def _execute(self, command: Command) -> Any:
        reads: list[Reads] = [command.reads] if hasattr(command, "reads") else []
        for attempt in range(1, self._conflict_retries + 1):
            uow, plan = self._plan(reads)
            try:
                with self._mutex.hold(plan.ranges) as head_us:
                    self._adopt_head(head_us)
                    uow.now = self._now()
                    outcome = self._apply_one(command, uow, plan)
            except (OperationalError, InterfaceError) as error:
                raise StoreUnavailable(str(error)) from error
            if outcome is not _CONFLICT:
                finish, recordings = outcome
                return finish(recordings)
            # Another process wrote one of our aggregates first, or committed a later
            # recorded_at than our clock's: reload, raise the floor, and try again.
            self._back_off(attempt)
        raise ConcurrencyConflict(self._conflict_retries)

    def _apply_one(self, command: Command, uow: UnitOfWork, plan: Prefetch) -> Any:
        """One command in its own transaction: (finish, recordings), or _CONFLICT."""
        try:
            self._absorb(uow, plan)
            finish = command(uow)
        except (OperationalError, InterfaceError) as error:
            uow.discard(only_mutated=True)
            raise StoreUnavailable(str(error)) from error
        except BaseException:
            uow.discard(only_mutated=True)
            raise
        recordings = self._commit_or_conflict(uow)
        if recordings is _CONFLICT:
            return _CONFLICT
        self._committed(uow, recordings)
        return finish, recordings

    def _plan(self, reads: list[Reads]) -> tuple[UnitOfWork, Prefetch]:
        """A unit of work and its reads, planned before the turn (only this thread touches
        the cache) so the mutex can read them in the round trip that takes it."""
        tracked = self._mutex.tracks_notifications
        if tracked and self._synced is None:
            # Nothing cached is known current: start from the store, and the head read
            # with the lock is where this writer is synced from.
            self._cache.clear()
        uow = UnitOfWork(self._app, self._cache, self._now())
        return uow, uow.plan_prefetch(reads, trusting=tracked)

    def _absorb(self, uow: UnitOfWork, plan: Prefetch) -> None:
        """Under the turn: take in the planned reads, as the mutex read them with the lock
        or, where it reads nothing (SQLite), read now; then, where the mutex reports the
        notification head, bring the cache to it and trust it."""
        if plan.ranges:
            stored = self._mutex.prefetched()
            if stored is None:
                uow.absorb_prefetch(plan, self._app.events_batch(plan.ranges))
            else:
                to_domain = self._app.mapper.to_domain_event
                uow.absorb_prefetch(plan, [to_domain(event) for event in stored])
        head = self._mutex.notification_head()
        if head is None:
            return
        if self._synced is not None and head != self._synced:
            # Another writer committed since this one last did (an ingest bridge, a CLI
            # tool, another replica): what it wrote is fast-forwarded before use.
            changed = self._mutex.changed_since(self._synced, head, CHANGED_MAX)
            if changed is None:
                self._cache.clear()
            else:
                self._cache.mark_stale(changed)
        self._synced = head
        self._cache.trust()
        rest = uow.plan_rest(plan)
        if rest.ranges:
            uow.absorb_prefetch(rest, self._app.events_batch(rest.ranges))

    def _commit_or_conflict(self, uow: UnitOfWork) -> Any:
        """Commit the unit: its recordings, or _CONFLICT when another process won. On any
        failure the unit is discarded; a store outage is raised as StoreUnavailable."""
        try:
            return self._commit(uow)
        except IntegrityError:
            WRITE_CONFLICTS.inc()
            self._unsync(uow)
            return _CONFLICT
        except (OperationalError, InterfaceError) as error:
            self._unsync(uow)
            raise StoreUnavailable(str(error)) from error
        except BaseException:
            self._unsync(uow)
            raise

    def _unsync(self, uow: UnitOfWork) -> None:
        """A failed commit: its aggregates are suspect, and whether it (or anything else)
        reached the store is unknown, so the next turn starts from the store."""
        uow.discard()
        self._synced = None

    def _commit(self, uow: UnitOfWork) -> list[Any]:
        with COMMIT_SECONDS.time():
            # In the turn's own transaction where the mutex has one: the commit hands the
            # turn on (ledger.store.writer_mutex.Turn).
            uow.turn = self._mutex.turn()
            return uow.commit()

    def _now(self) -> datetime:
        return max(self._clock() + self._lead, self._floor)

    def _back_off(self, attempt: int) -> None:
        # Jitter first, then read the head: a floor read before sleeping is already stale.
        time.sleep(random.uniform(0, 0.002 * attempt))
        self._raise_floor()

    def _adopt_head(self, head_us: int | None) -> None:
        """Under the writer's turn: the head read with the mutex is the one this commit
        follows, so stamping at least its recorded_at cannot fail the CHECK."""
        if head_us is not None:
            self._lift_to(from_micros(head_us))

    def _lift_to(self, head: datetime) -> None:
        self._floor = max(self._floor, head)
        self._lead = max(self._lead, head - self._clock())

    def _raise_floor(self) -> None:
        """Lift this writer to the ledger's time: the floor to the head's recorded_at, and
        the lead by how far the head is ahead of this clock, so a replica whose clock lags
        keeps stamping the ledger's time as it advances instead of the last head it read
        (which every commit of a punctual replica would overtake again)."""
        try:
            head = from_micros(self._app.entry_head()[1])
        except (OperationalError, InterfaceError):
            return  # the retry's commit will report the outage
        self._lift_to(head)
