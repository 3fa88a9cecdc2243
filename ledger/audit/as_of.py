"""Balances as of an instant on both time axes of contract §3, without replaying all history.

RECORDED at T folds the position's versions with ``recorded_at <= T``. recorded_at never
decreases along the ledger, so that is a prefix 1..v: one index lookup, then the library
loads the newest snapshot at or before v and folds at most a snapshot interval of events.

EFFECTIVE at T, known at K, folds the events with ``occurred_at <= T`` and
``recorded_at <= K`` in ``(occurred_at, ledger order)`` — the *effective order*. The fold
starts from the latest of two points that are known to be a prefix of that order:

* a ledger prefix 1..p: while facts arrive in order the ledger order *is* the effective
  order, so p is found by index (versions whose running maximum of occurred_at is <= T)
  and loaded from a snapshot. A late fact (occurred before something already recorded)
  pulls p back to before its own version.
* an effective checkpoint: a copy of the effective fold taken every CHECKPOINT_EVERY
  events while answering earlier queries, valid as long as no fact recorded since lands
  before it.

From there only the events between the starting point and T are read, in effective order,
through the ``(position, occurred_at)`` index.
"""

from __future__ import annotations

import copy
import enum
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.application import InventoryLedger
from ledger.audit.entries import decode_event
from ledger.domain.position import Position, position_id
from ledger.domain.position_state import PositionState
from ledger.store.index_ops import to_micros
from ledger.views import PositionView

FOREVER_US = 2**62
CHECKPOINT_EVERY = 250
CHECKPOINTS_PER_POSITION = 400
POSITIONS_CACHED = 128
PAGE = 1000


class Axis(enum.Enum):
    RECORDED = "RECORDED"
    EFFECTIVE = "EFFECTIVE"


@dataclass(frozen=True)
class Checkpoint:
    """The effective fold of every entry ``<= cut`` (by (occurred_at_us, version)) among the
    position's versions 1..known_version."""

    cut: tuple[int, int]
    known_version: int
    folded_version: int  # highest version folded
    updated_at: datetime | None
    state: Any


@dataclass
class _Fold:
    state: Any
    cut: tuple[int, int]
    folded_version: int
    updated_at: datetime | None


class AsOfReader:
    """Answers as-of queries; keeps effective checkpoints per position (in memory, bounded).

    Thread-safe: gRPC handlers call it from worker threads.
    """

    def __init__(self, app: InventoryLedger, *, checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        self._app = app
        self._checkpoint_every = checkpoint_every
        self._recorder = app.ledger_recorder
        self._lock = threading.Lock()
        self._checkpoints: OrderedDict[UUID, list[Checkpoint]] = OrderedDict()

    def position_as_of(
        self,
        sku: str,
        location_id: str,
        as_of: datetime,
        axis: Axis,
        known_at: datetime | None = None,
        *,
        include_holds: bool = False,
    ) -> PositionView:
        """The position as of ``as_of``, holds judged with ``now = as_of`` (contract §2 rule)."""
        pid = position_id(sku, location_id)
        at_us = to_micros(as_of)
        if axis is Axis.RECORDED:
            version = self._recorder.last_version_where(pid, "recorded_at_us", at_us)
            state = self._load(pid, sku, location_id, version)
            return _view(state, as_of, include_holds, version, state.updated_at)
        fold = self._effective(pid, sku, location_id, at_us, known_at)
        return _view(fold.state, as_of, include_holds, fold.folded_version, fold.updated_at)

    # ---- effective axis ---------------------------------------------------------------------

    def _effective(
        self, pid: UUID, sku: str, location_id: str, at_us: int, known_at: datetime | None
    ) -> _Fold:
        recorder = self._recorder
        known_us = FOREVER_US if known_at is None else to_micros(known_at)
        known_version = recorder.last_version_where(pid, "recorded_at_us", known_us)
        late = recorder.late_entries(pid, occurred_by_us=at_us, recorded_by_us=known_us)
        prefix = self._ledger_prefix(pid, at_us, known_version, late)
        start = self._best_checkpoint(pid, at_us, known_version, late)
        if start is None or start.cut <= (prefix[1], prefix[0]):
            state = self._load(pid, sku, location_id, prefix[0])
            fold = _Fold(state, (prefix[1], prefix[0]), prefix[0], state.updated_at)
        else:
            fold = _Fold(
                copy.deepcopy(start.state), start.cut, start.folded_version, start.updated_at
            )
        # Checkpoints only from folds that know everything recorded so far: a fold limited
        # by known_at in the past would be wrong for later queries.
        # Without known_at, known_version already is the head: no second lookup.
        head_version = known_version if known_at is None else self._head_version(pid)
        cacheable = known_version == head_version
        taken: list[Checkpoint] = []
        folded = 0
        while True:
            rows = recorder.select_effective_entries(
                pid, after=fold.cut, occurred_by_us=at_us, recorded_by_us=known_us, limit=PAGE
            )
            for row in rows:
                event = decode_event(self._app, row)
                event.apply(fold.state)
                fold.cut = (row.occurred_at_us, row.version)
                fold.folded_version = max(fold.folded_version, row.version)
                if fold.updated_at is None or event.recorded_at > fold.updated_at:
                    fold.updated_at = event.recorded_at
                folded += 1
                if cacheable and folded % self._checkpoint_every == 0:
                    taken.append(
                        Checkpoint(
                            fold.cut,
                            known_version,
                            fold.folded_version,
                            fold.updated_at,
                            copy.deepcopy(fold.state),
                        )
                    )
            if len(rows) < PAGE:
                break
        if taken:
            self._remember(pid, taken)
        return fold

    def _ledger_prefix(
        self, pid: UUID, at_us: int, known_version: int, late: list[tuple[int, int]]
    ) -> tuple[int, int]:
        """(p, max_occurred_at_us of p): the longest ledger prefix that is also a prefix of
        this query's effective order."""
        recorder = self._recorder
        start = min(recorder.last_version_where(pid, "max_occurred_at_us", at_us), known_version)
        # A late entry inside the prefix is folded out of effective order: stop before it.
        inside = [version for version, _ in late if version <= start]
        if inside:
            start = min(inside) - 1
        # Late entries after the prefix must not belong before its end.
        while start > 0:
            later = [occurred for version, occurred in late if version > start]
            if not later:
                break
            candidate = recorder.last_version_where(pid, "max_occurred_at_us", min(later))
            if candidate >= start:
                break
            start = candidate
        if start == 0:
            return (0, -1)
        return (start, recorder.max_occurred_at_of(pid, start))

    def _best_checkpoint(
        self, pid: UUID, at_us: int, known_version: int, late: list[tuple[int, int]]
    ) -> Checkpoint | None:
        with self._lock:
            checkpoints = list(self._checkpoints.get(pid, ()))
            if checkpoints:
                self._checkpoints.move_to_end(pid)
        best = None
        for checkpoint in checkpoints:
            if checkpoint.cut[0] > at_us or checkpoint.known_version > known_version:
                continue
            # Invalid if a fact recorded after it (and known now) belongs before its cut.
            if any(
                checkpoint.known_version < version and occurred < checkpoint.cut[0]
                for version, occurred in late
            ):
                continue
            if best is None or checkpoint.cut > best.cut:
                best = checkpoint
        return best

    def _remember(self, pid: UUID, taken: list[Checkpoint]) -> None:
        with self._lock:
            kept = self._checkpoints.get(pid, [])
            merged = {c.cut: c for c in kept}
            merged.update({c.cut: c for c in taken})
            ordered = sorted(merged.values(), key=lambda c: c.cut)
            while len(ordered) > CHECKPOINTS_PER_POSITION:
                ordered = ordered[::2]  # thin evenly: coarser spacing, same coverage
            self._checkpoints[pid] = ordered
            self._checkpoints.move_to_end(pid)
            while len(self._checkpoints) > POSITIONS_CACHED:
                self._checkpoints.popitem(last=False)

    def _head_version(self, pid: UUID) -> int:
        return self._recorder.last_version_where(pid, "recorded_at_us", FOREVER_US)

    # ---- loading -------------------------------------------------------------------------------

    def _load(self, pid: UUID, sku: str, location_id: str, version: int) -> Any:
        if version == 0:
            return PositionState(sku, location_id)
        # Given a version the repository bypasses its cache: a fresh aggregate, folded from
        # the newest snapshot at or before that version.
        position: object = self._app.repository.get(pid, version=version)
        if not isinstance(position, Position):  # pragma: no cover - ids are position ids
            raise AssertionError(f"{pid} is not a position")
        return position


def _view(
    state: Any, now: datetime, include_holds: bool, version: int, updated_at: datetime | None
) -> PositionView:
    view = PositionView.of(state, now, include_holds=include_holds)
    return replace(view, version=version, updated_at=updated_at)
