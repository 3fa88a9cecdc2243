"""The writer's turn on PostgreSQL (issue 20): the batch's reads come with the lock, cached
aggregates are read only when another writer committed since this one's last commit, and
the commit runs in the lock's own transaction, so committing hands the turn on and a writer
that lost its lock cannot commit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from ledger.domain.errors import StoreUnavailable
from ledger.domain.item_policy import Tracking
from ledger.domain.movements import Movement, MovementType
from ledger.metrics.definitions import REGISTRY
from ledger.service import LedgerService
from ledger.unit_of_work import AggregateCache, UnitOfWork
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput, ReserveLine

pytestmark = pytest.mark.postgres
CTX = CallContext("writer-turn-test", "corr")


def _conflicts() -> float:
    return REGISTRY.get_sample_value("ledger_write_conflicts_total") or 0.0


def _reserve(request_id: str, qty: int = 1) -> ReserveInput:
    return ReserveInput(
        request_id=request_id,
        channel="web",
        order_ref=request_id,
        lines=(ReserveLine("SKU", "DC", qty),),
        ttl=timedelta(minutes=10),
    )


@pytest.fixture
def pair(
    replicas: tuple[LedgerService, LedgerService],
) -> Iterator[tuple[LedgerService, LedgerService]]:
    first, _ = replicas
    first.record_movements(
        CTX, [Movement("seed", "1", MovementType.RECEIPT, "SKU", "DC", qty=10)]
    ).result()
    yield replicas


def test_a_writer_that_lost_its_lock_mid_turn_commits_nothing(
    pair: tuple[LedgerService, LedgerService], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = pair
    real_commit = UnitOfWork.commit
    cut = iter([True])

    def session_dies_first(self: UnitOfWork) -> Any:
        if next(cut, False):
            # The turn's session ends after the batch was decided (a network cut, the server
            # killing an idle transaction): the lock is gone, and so must the commit be.
            mutex = first.pipeline._mutex
            mutex._connection.close()  # type: ignore[attr-defined]
        return real_commit(self)

    monkeypatch.setattr(UnitOfWork, "commit", session_dies_first)
    lost = first.reserve(CTX, _reserve("r-1", 4))
    assert isinstance(lost.exception(timeout=10), StoreUnavailable)
    # Nothing of it was written: the other writer sees all ten units free.
    assert second.get_position("SKU", "DC").reserved == 0
    assert second.reserve(CTX, _reserve("r-2", 6)).result(timeout=10).ledger_position > 0
    # The client's retry with the same request id is a first write, on a new session.
    retried = first.reserve(CTX, _reserve("r-1", 4)).result(timeout=10)
    assert retried.ledger_position > 0
    position = second.get_position("SKU", "DC")
    assert (position.on_hand, position.reserved) == (10, 10)


def test_a_conflict_in_the_turn_is_retried_on_fresh_state(
    pair: tuple[LedgerService, LedgerService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch decided on a stale aggregate fails its version check inside the turn's
    transaction (an IntegrityError there, not an outage): it is re-judged and commits once."""
    first, second = pair
    assert first.reserve(CTX, _reserve("warm", 1)).result(timeout=10).ledger_position > 0
    assert second.reserve(CTX, _reserve("other", 8)).result(timeout=10).ledger_position > 0
    real_mark_stale = AggregateCache.mark_stale
    stale = iter([True])

    def miss_changes_once(self: AggregateCache, aggregate_ids: Any) -> None:
        if next(stale, False):
            # The first writer does not learn that SKU/DC changed (as if the other writer
            # had not taken the mutex): it decides on its cached position, 9 units free.
            return
        real_mark_stale(self, aggregate_ids)

    monkeypatch.setattr(AggregateCache, "mark_stale", miss_changes_once)
    conflicts = _conflicts()
    outcome = first.reserve(CTX, _reserve("late", 2))
    # Re-judged on the position the other writer left: only one unit is free.
    assert type(outcome.exception(timeout=10)).__name__ == "InsufficientAvailability"
    assert _conflicts() == conflicts + 1
    assert first.reserve(CTX, _reserve("fits", 1)).result(timeout=10).ledger_position > 0
    position = second.get_position("SKU", "DC")
    assert (position.on_hand, position.reserved) == (10, 10)


def test_a_writer_sees_what_another_committed_since_its_own_last_commit(
    pair: tuple[LedgerService, LedgerService],
) -> None:
    """A writer skips reading its cached aggregates (absent ones too) only while nothing
    was committed since its own last commit; another writer's commits in between are read
    before it decides: no stale decision, no lost update, no conflict."""
    first, second = pair
    conflicts = _conflicts()
    # The first writer caches an absent item policy and position of NEW, and SKU/DC.
    missing = first.reserve(CTX, _reserve_of("NEW", "n-1", 1)).exception(timeout=10)
    assert type(missing).__name__ == "InsufficientAvailability"
    assert first.reserve(CTX, _reserve("a-1", 2)).result(timeout=10).ledger_position > 0
    # Turns of its own in a row read nothing of those, and still decide right.
    assert first.reserve(CTX, _reserve("a-2", 1)).result(timeout=10).ledger_position > 0
    # The other writer makes NEW lot-tracked and takes all but one unit of SKU.
    second.set_item_policy(CTX, "p-1", "NEW", Tracking.LOT).result(timeout=10)
    assert second.reserve(CTX, _reserve("b-1", 6)).result(timeout=10).ledger_position > 0
    # The first writer sees both.
    refused = first.record_movements(
        CTX, [Movement("erp", "m-1", MovementType.RECEIPT, "NEW", "DC", qty=5)]
    ).exception(timeout=10)
    assert type(refused).__name__ == "TrackingMismatch"
    short = first.reserve(CTX, _reserve("a-3", 2)).exception(timeout=10)
    assert type(short).__name__ == "InsufficientAvailability"
    assert first.reserve(CTX, _reserve("a-4", 1)).result(timeout=10).ledger_position > 0
    position = second.get_position("SKU", "DC")
    assert (position.on_hand, position.reserved) == (10, 10)
    assert _conflicts() == conflicts


def _reserve_of(sku: str, request_id: str, qty: int) -> ReserveInput:
    return ReserveInput(
        request_id=request_id,
        channel="web",
        order_ref=request_id,
        lines=(ReserveLine(sku, "DC", qty),),
        ttl=timedelta(minutes=10),
    )
