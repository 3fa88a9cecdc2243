"""The write path: one command pipeline per process.

A single writer thread takes commands from a bounded queue, applies each to cached
aggregates inside a unit of work and commits once. Serialising in-process means the only
optimistic-concurrency conflicts left are with other processes; those are retried a bounded
number of times with jitter. Group commit (several commands per transaction) slots in here
without touching the domain: commands already validate before they mutate.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from typing import Any, TypeVar

from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError

from ledger.application import InventoryLedger
from ledger.domain.errors import ConcurrencyConflict, StoreUnavailable
from ledger.domain.limits import CONFLICT_RETRIES_MAX
from ledger.metrics import count_appended
from ledger.store.index_ops import from_micros
from ledger.unit_of_work import AggregateCache, Finisher, UnitOfWork

log = logging.getLogger(__name__)

T = TypeVar("T")
Command = Callable[[UnitOfWork], Finisher]

QUEUE_DEPTH_MAX = 10_000
_STOP = object()


class PipelineOverloaded(Exception):
    """Raised when the command queue is full (back-pressure: RESOURCE_EXHAUSTED)."""


class CommandPipeline:
    def __init__(
        self,
        app: InventoryLedger,
        clock: Callable[[], datetime],
        *,
        conflict_retries: int = CONFLICT_RETRIES_MAX,
    ) -> None:
        self._app = app
        self._clock = clock
        self._cache = AggregateCache(app)
        self._conflict_retries = conflict_retries
        # recorded_at never goes backwards along the ledger (SPEC §3 recorded axis): each
        # command's time is at least the newest recorded_at this writer has seen committed.
        # Other replicas' commits raise it through the entry index CHECK (see _execute).
        self._floor = from_micros(0)
        self._raise_floor()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH_MAX)
        self._commit_listeners: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Called on the writer thread after every commit that wrote events (keep it cheap)."""
        self._commit_listeners.append(listener)

    def submit(self, command: Command) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            self._queue.put_nowait((command, future))
        except queue.Full:
            raise PipelineOverloaded("write queue is full") from None
        return future

    def execute(self, command: Command) -> Any:
        """Submit and wait (for synchronous callers: CLI, tools, tests)."""
        return self.submit(command).result()

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            command, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = self._execute(command)
            except BaseException as error:
                future.set_exception(error)
            else:
                future.set_result(result)

    def _execute(self, command: Command) -> Any:
        for attempt in range(1, self._conflict_retries + 1):
            uow = UnitOfWork(self._app, self._cache, max(self._clock(), self._floor))
            try:
                finish = command(uow)
            except (OperationalError, InterfaceError) as error:
                uow.discard(only_mutated=True)
                raise StoreUnavailable(str(error)) from error
            except BaseException:
                uow.discard(only_mutated=True)
                raise
            try:
                recordings = uow.commit()
            except IntegrityError:
                # Another process wrote one of our aggregates first, or committed a later
                # recorded_at than our clock's: reload, raise the floor, and try again.
                uow.discard()
                self._raise_floor()
                time.sleep(random.uniform(0, 0.002 * attempt))
                continue
            except (OperationalError, InterfaceError) as error:
                uow.discard()
                raise StoreUnavailable(str(error)) from error
            except BaseException:
                uow.discard()
                raise
            if recordings:
                self._floor = max(self._floor, uow.now)
                count_appended(recordings)
                for listener in self._commit_listeners:
                    listener()
            return finish(recordings)
        raise ConcurrencyConflict(self._conflict_retries)

    def _raise_floor(self) -> None:
        try:
            head = from_micros(self._app.entry_head()[1])
        except (OperationalError, InterfaceError):
            return  # the retry's commit will report the outage
        self._floor = max(self._floor, head)
