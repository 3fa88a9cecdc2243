"""Follows the ledger's notification log in order and keeps the read models exactly once.

Each batch — up to ``batch_max`` notifications — is folded in memory and committed with its
tracking position in one transaction (see :class:`projections.store.ReadModelStore`); a
crash anywhere loses at most the uncommitted batch, which the next start folds again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from eventsourcing.persistence import Notification

from ledger.application import InventoryLedger
from ledger.domain.channel_policy import ChannelPolicy
from ledger.domain.position import Position
from projections.availability import PolicyTerms
from projections.position_state import LedgerExceptionRecord, ProjectedPosition
from projections.store import PolicyRow, PositionRow, ReadModelStore, TrackingConflict

log = logging.getLogger(__name__)

BATCH_MAX = 500
POLL_SECONDS = 0.2
# Stands for "every SKU" in the changed set passed to batch listeners.
ALL_SKUS = "\x00all"  # has a control character, so it is never a real SKU
_POSITION_TOPIC = f"{Position.__module__}:{Position.__qualname__}."
_POLICY_TOPIC = f"{ChannelPolicy.__module__}:{ChannelPolicy.__qualname__}."


class ProjectionRunner:
    def __init__(
        self,
        app: InventoryLedger,
        store: ReadModelStore,
        *,
        batch_max: int = BATCH_MAX,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.app = app
        self.store = store
        self.batch_max = batch_max
        self.poll_seconds = poll_seconds
        self._applied = store.applied_position()
        self._changed = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batch_listeners: list[Callable[[set[str], int], None]] = []

    @property
    def applied_position(self) -> int:
        return self._applied

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
        (on the runner's thread: keep it cheap, hand work to your own thread or loop)."""
        self._batch_listeners.append(listener)

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
        while not self._stop.is_set():
            try:
                consumed = self.run_once()
            except TrackingConflict:
                # Another runner applied this stretch: continue from where it got to.
                self._applied = self.store.applied_position()
                continue
            except Exception:  # keep following; the batch is retried
                log.exception("projection batch failed; retrying")
                self._stop.wait(1.0)
                continue
            if consumed < self.batch_max:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    # ---- one batch ------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Fold and commit the next batch; returns how many notifications it consumed."""
        start = self._applied
        notes = self.app.recorder.select_notifications(
            start=start, limit=self.batch_max, inclusive_of_start=False
        )
        if not notes:
            return 0
        batch = _Batch(self.store)
        for note in notes:
            batch.add(self.app, note)
        self.store.commit_batch(
            from_position=start,
            to_position=notes[-1].id,
            positions=batch.position_rows(),
            policies=batch.policy_rows(),
            exceptions=batch.exceptions,
        )
        with self._changed:
            self._applied = notes[-1].id
            self._changed.notify_all()
        changed_skus = {p.sku for p in batch.positions.values()}
        if batch.policies:
            changed_skus.add(ALL_SKUS)  # a channel policy touches every SKU
        for listener in self._batch_listeners:
            listener(changed_skus, notes[-1].id)
        return len(notes)

    def catch_up(self) -> None:
        """Apply everything recorded so far (tools, tests, rebuilds)."""
        while self.run_once() == self.batch_max:
            pass


class _Batch:
    """The in-memory side of one batch: folded states, policies and exceptions."""

    def __init__(self, store: ReadModelStore) -> None:
        self.store = store
        self.positions: dict[str, ProjectedPosition] = {}
        self.policies: dict[str, tuple[str, PolicyTerms]] = {}
        self.exceptions: list[LedgerExceptionRecord] = []

    def add(self, app: InventoryLedger, note: Notification) -> None:
        if note.topic.startswith(_POSITION_TOPIC):
            event = app.mapper.to_domain_event(note)
            position = self._position(event)
            self.exceptions.extend(position.fold(event, note.id))
        elif note.topic.startswith(_POLICY_TOPIC):
            event = app.mapper.to_domain_event(note)
            self._policy(event)

    def _position(self, event: Any) -> ProjectedPosition:
        key = event.originator_id.hex
        if key not in self.positions:
            if isinstance(event, Position.Opened):
                self.positions[key] = ProjectedPosition(event.sku, event.location_id)
            else:
                row = self.store.position(key)
                if row is None:
                    raise AssertionError(f"position {key} has events but no Opened")
                self.positions[key] = ProjectedPosition.from_json(
                    row.sku, row.location_id, row.state_json
                )
        return self.positions[key]

    def _policy(self, event: Any) -> None:
        key = event.originator_id.hex
        if isinstance(event, ChannelPolicy.Created):
            self.policies[key] = (event.channel, PolicyTerms())
            return
        if key not in self.policies:
            row = self.store.policy(key)
            if row is None:
                raise AssertionError(f"channel policy {key} has events but no Created")
            self.policies[key] = (row.channel, PolicyTerms(**json.loads(row.terms_json)))
        channel = self.policies[key][0]
        self.policies[key] = (
            channel,
            PolicyTerms(
                eligible_location_ids=list(event.eligible_location_ids),
                share_percent=event.share_percent,
                buffer=event.buffer,
                max_publish=event.max_publish,
            ),
        )

    def position_rows(self) -> list[PositionRow]:
        return [
            PositionRow(key, p.sku, p.location_id, p.to_json()) for key, p in self.positions.items()
        ]

    def policy_rows(self) -> list[PolicyRow]:
        return [
            PolicyRow(key, channel, json.dumps(asdict(terms), sort_keys=True))
            for key, (channel, terms) in self.policies.items()
        ]
