"""Rebuilding the read models from ledger position 0 beside the served ones.

:func:`rebuild` builds a new generation with a runner pinned to it, then catches up the last
events and makes it active in one transaction (``ReadModelStore.activation``); followers
switch to it by themselves.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ledger.application import InventoryLedger
from ledger.progress import QUIET, Progress
from projections.runner import ProjectionRunner
from projections.store import ReadModelStore

# The runner's logger, as before the split: operators filter rebuild lines by it.
log = logging.getLogger("projections.runner")

REBUILD_BATCH_MAX = 10_000


@dataclass(frozen=True)
class RebuildReport:
    generation: int  # now active
    previous: int  # served before, dropped
    position: int  # ledger position the new generation had applied when it went live
    notifications: int  # notifications read by the rebuild
    build_seconds: float  # from position 0 to (nearly) the head, beside the live generation
    activate_seconds: float  # the last events and the flip, in one transaction
    seconds: float  # everything, including dropping the previous generation

    @property
    def notifications_per_second(self) -> float:
        return self.notifications / self.seconds if self.seconds > 0 else 0.0


def rebuild(
    app: InventoryLedger,
    store: ReadModelStore,
    *,
    batch_max: int = REBUILD_BATCH_MAX,
    keep_previous: bool = False,
    progress: Progress = QUIET,
) -> RebuildReport:
    """Rebuild the read models from ledger position 0 into a new generation and swap it in.

    Readers keep being served the current generation until the swap, which happens in one
    transaction together with the last few events. Followers (in-process or a
    ``ledger projections`` process) switch to the new generation by themselves. Only one
    rebuild runs at a time (RebuildInProgress otherwise); tables of a rebuild that died
    are dropped first. ``progress`` follows the ledger position folded so far, out of the
    head when the rebuild began."""
    began = time.monotonic()
    with store.rebuild_lock():
        active = store.active_generation()
        for abandoned in store.generations():
            if abandoned != active:
                log.info("dropping generation %d left behind by an earlier rebuild", abandoned)
                store.drop_generation(abandoned)
        generation = store.new_generation()
        log.info("rebuilding read models into generation %d (serving %d)", generation, active)
        builder = ProjectionRunner(app, store, batch_max=batch_max, generation=generation)
        builder.add_batch_listener(_PositionProgress(progress, app.head_position()))
        builder.catch_up()
        built = time.monotonic()
        previous, position = builder.activate()
        activated = time.monotonic()
        log.info(
            "generation %d is active at position %d (generation %d retired)",
            generation,
            position,
            previous,
        )
        if not keep_previous and previous != generation:
            store.drop_generation(previous)
    return RebuildReport(
        generation=generation,
        previous=previous,
        position=position,
        notifications=builder.notifications_read,
        build_seconds=built - began,
        activate_seconds=activated - built,
        seconds=time.monotonic() - began,
    )


class _PositionProgress:
    """A batch listener advancing ``progress`` by the positions each batch covered
    (notification ids may skip numbers, so the count is of positions, as the head is)."""

    def __init__(self, progress: Progress, head: int) -> None:
        self.progress = progress
        self.position = 0
        progress.phase("rebuild read models", head)

    def __call__(self, _changed_skus: set[str], position: int) -> None:
        if position > self.position:
            self.progress.advance(position - self.position)
            self.position = position
