"""Follows the ledger's notification log in order and keeps the read models exactly once.

Each batch — up to ``batch_max`` notifications — is folded in memory and committed with its
tracking position in one transaction (see :class:`projections.store.ReadModelStore`); a
crash anywhere loses at most the uncommitted batch, which the next start folds again.

A runner normally *follows* the active generation of the read models: when a rebuild swaps
in a new generation, its next load or commit fails with ``GenerationChanged`` and it
continues from the new generation's tracking position. A rebuild
(:func:`projections.rebuild.rebuild`) pins a runner to a new generation, catches it up from
ledger position 0 and then :meth:`~ProjectionRunner.activate` s it. Folding one batch in
memory is :mod:`projections.batch_fold`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ledger.application import InventoryLedger
from ledger.logs import one_line, retry_delay
from ledger.store.retries import store_unavailable
from projections.availability_cache import BatchChange
from projections.batch_fold import FoldedBatch, StateCache
from projections.store import ReadModelStore, TrackingConflict

log = logging.getLogger(__name__)

# How often the runner logs its lag, and from which lag on that is a warning.
LAG_LOG_SECONDS = 60.0
LAG_WARNING_EVENTS = 10_000
BATCH_MAX = 500
POLL_SECONDS = 0.2
# How often an idle follower checks whether a rebuild swapped generations.
GENERATION_CHECK_SECONDS = 1.0
# Stands for "every SKU" in the changed set passed to batch listeners.
ALL_SKUS = "\x00all"  # has a control character, so it is never a real SKU


class ProjectionRunner:
    def __init__(
        self,
        app: InventoryLedger,
        store: ReadModelStore,
        *,
        batch_max: int = BATCH_MAX,
        poll_seconds: float = POLL_SECONDS,
        generation: int | None = None,
    ) -> None:
        """``generation=None`` (the default) follows the active generation; a number pins
        the runner to that generation (a rebuild's, written while it is not yet active)."""
        self.app = app
        self.store = store
        self.batch_max = batch_max
        self.poll_seconds = poll_seconds
        self._follow = generation is None
        if generation is None:
            self._generation, self._applied = store.tracking()
        else:
            self._generation, self._applied = generation, store.applied_position(generation)
        self.notifications_read = 0  # counted over the runner's life (rebuild statistics)
        self._cache = StateCache()
        self._changed = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batch_listeners: list[Callable[[set[str], int], None]] = []
        self._change_listeners: list[Callable[[BatchChange], None]] = []

    @property
    def applied_position(self) -> int:
        return self._applied

    @property
    def generation(self) -> int:
        """The read-model generation this runner writes."""
        return self._generation

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="projection-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def add_batch_listener(self, listener: Callable[[set[str], int], None]) -> None:
        """Called after each committed batch with the SKUs it changed and the new position
        (on the runner's thread: keep it cheap, hand work to your own thread or loop).
        After a switch to a rebuilt generation it is called with ``{ALL_SKUS}``."""
        self._batch_listeners.append(listener)

    def add_change_listener(self, listener: Callable[[BatchChange], None]) -> None:
        """Called like a batch listener with each move of the tracking position as a
        :class:`BatchChange`: every committed batch, and (``skus=None``) every stretch the
        runner skipped because another runner or a rebuild applied it."""
        self._change_listeners.append(listener)

    def wake(self) -> None:
        """New events were committed (called in-process after each write)."""
        self._wake.set()

    def wait_for(self, position: int, timeout: float) -> bool:
        """Block until ``position`` is applied or ``timeout`` passes; True when applied."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._applied < position:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._changed.wait(min(remaining, self.poll_seconds))
        return True

    def _loop(self) -> None:
        checked = time.monotonic()
        reported = time.monotonic()
        failures = 0  # in a row, for the back-off
        while not self._stop.is_set():
            if time.monotonic() - reported >= LAG_LOG_SECONDS:
                reported = time.monotonic()
                self._log_lag()
            try:
                consumed = self.run_once()
            except TrackingConflict:
                # Another runner applied this stretch, or a rebuild swapped generations:
                # continue from where the active generation got to.
                self._resync_or_wait()
                continue
            except Exception as error:  # keep following; the batch is retried
                failures += 1
                self._report_failure(error, failures)
                self._stop.wait(retry_delay(failures))
                continue
            failures = 0
            if consumed < self.batch_max:
                if self._follow and time.monotonic() - checked >= GENERATION_CHECK_SECONDS:
                    checked = time.monotonic()
                    if self._generation_moved():
                        self._resync_or_wait()
                        continue
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    @staticmethod
    def _report_failure(error: Exception, failures: int) -> None:
        """A store that is away is one line per attempt; anything else keeps its traceback."""
        line = "projection batch failed: %s (attempt %d); retrying in %.1f s"
        args = (one_line(error), failures, retry_delay(failures))
        if store_unavailable(error):
            log.warning(line, *args)
        else:
            log.exception(line, *args)

    def _log_lag(self) -> None:
        """Operators see lag in the log too (GetProjectionStatus serves it over gRPC)."""
        try:
            head = self.app.recorder.max_notification_id() or 0
        except Exception as error:  # the batch loop reports store trouble itself
            log.warning("projection lag unknown: %s", error)
            return
        lag = max(0, head - self._applied)
        level = logging.WARNING if lag > LAG_WARNING_EVENTS else logging.INFO
        log.log(level, "projection lag %d (head %d, applied %d)", lag, head, self._applied)

    def _generation_moved(self) -> bool:
        try:
            return self.store.active_generation() != self._generation
        except Exception:
            log.exception("could not read the active read-model generation")
            return False

    def _resync_or_wait(self) -> None:
        try:
            self._resync()
        except Exception:
            log.exception("could not re-read the projection's tracking position; retrying")
            self._stop.wait(1.0)

    def _resync(self) -> None:
        """Re-read the generation to write and its tracking position."""
        if self._follow:
            generation, position = self.store.tracking()
        else:
            generation, position = self._generation, self.store.applied_position(self._generation)
        switched = generation != self._generation
        previous = self._applied
        self._cache.clear()
        with self._changed:
            self._generation, self._applied = generation, position
            self._changed.notify_all()
        if switched or position != previous:
            # Rows this runner did not write: listeners cannot know which SKUs they touch.
            self._notify_change(BatchChange(generation, previous, position, None))
        if switched:
            log.info("projection now follows generation %d at position %d", generation, position)
            # Rows were rebuilt, and positions may have been applied by the rebuild: tell
            # listeners that anything may have changed.
            self._notify({ALL_SKUS}, position)

    def _notify_change(self, change: BatchChange) -> None:
        for listener in self._change_listeners:
            try:
                listener(change)
            except Exception:
                log.exception("projection change listener failed")

    def _notify(self, changed_skus: set[str], position: int) -> None:
        for listener in self._batch_listeners:
            try:
                listener(changed_skus, position)
            except Exception:
                log.exception("projection batch listener failed")

    # ---- one batch ------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Fold and commit the next batch; returns how many notifications it consumed.

        Raises TrackingConflict (GenerationChanged for a follower whose generation was
        swapped out) when the batch could not be committed; :meth:`catch_up` and the
        background loop re-read the tracking position and go on."""
        generation, start = self._generation, self._applied
        notes = self.app.recorder.select_notifications(
            start=start, limit=self.batch_max, inclusive_of_start=False
        )
        if not notes:
            return 0
        self.notifications_read += len(notes)
        batch = FoldedBatch(self._cache)
        try:
            batch.add_all(
                self.app,
                notes,
                lambda positions, policies: self.store.load(
                    generation, positions, policies, require_active=self._follow
                ),
            )
            self.store.commit_batch(
                generation=generation,
                require_active=self._follow,
                from_position=start,
                to_position=notes[-1].id,
                positions=batch.position_rows(),
                policies=batch.policy_rows(),
                exceptions=batch.exceptions,
                items=batch.item_rows(),
            )
        except BaseException:
            self._cache.clear()  # the batch folded into cached states: they are now ahead
            raise
        self._cache.keep(batch)
        with self._changed:
            self._applied = notes[-1].id
            self._changed.notify_all()
        changed_skus = {p.sku for p in batch.positions.values()}
        self._notify_change(
            BatchChange(
                generation,
                start,
                notes[-1].id,
                None if batch.policies else frozenset(changed_skus),
            )
        )
        if batch.policies:
            changed_skus.add(ALL_SKUS)  # a channel policy touches every SKU
        self._notify(changed_skus, notes[-1].id)
        return len(notes)

    def catch_up(self) -> None:
        """Apply everything recorded so far (tools, tests, rebuilds)."""
        while True:
            try:
                if self.run_once() < self.batch_max:
                    return
            except TrackingConflict:
                self._resync()

    def activate(self) -> tuple[int, int]:
        """Fold everything up to the ledger head into this (pinned, not yet active)
        generation and make it the active one, in one transaction. Returns the generation
        served before and the position the new one starts at."""
        if self._follow:
            raise RuntimeError("only a runner pinned to a generation can activate it")
        try:
            return self._activate_in_transaction()
        except BaseException:
            self._cache.clear()
            raise

    def _activate_in_transaction(self) -> tuple[int, int]:
        with self.store.activation(self._generation) as activation:
            # Followers of the old generation are locked out from here on, so its position
            # is fixed; the head read now is at or past it, so the flip never goes back.
            start = activation.applied_position()
            head = self.app.head_position()
            if start != self._applied:
                self._cache.clear()
            batch = FoldedBatch(self._cache)
            position = start
            while position < head:
                notes = self.app.recorder.select_notifications(
                    start=position, limit=self.batch_max, stop=head, inclusive_of_start=False
                )
                if not notes:
                    break
                self.notifications_read += len(notes)
                batch.add_all(self.app, notes, activation.load)
                position = notes[-1].id
            activation.commit_batch(
                from_position=start,
                to_position=position,
                positions=batch.position_rows(),
                policies=batch.policy_rows(),
                exceptions=batch.exceptions,
                items=batch.item_rows(),
            )
        self._cache.clear()  # the generation is active now; followers take it from here
        with self._changed:
            self._applied = position
            self._changed.notify_all()
        return activation.previous, position
