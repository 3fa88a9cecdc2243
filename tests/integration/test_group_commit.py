"""Group commit (issue 8): commands queued together share one transaction, each keeping its
own outcome. A long linger makes the grouping deterministic enough to observe."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from ledger.config import GroupCommit
from ledger.domain.errors import InsufficientAvailability
from ledger.domain.movements import Movement, MovementType
from ledger.metrics.definitions import REGISTRY
from ledger.pipeline import PipelineOverloaded
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput, ReserveLine

CTX = CallContext("group-commit-test")


def _batches() -> tuple[float, float]:
    count = REGISTRY.get_sample_value("ledger_commit_batch_commands_count") or 0.0
    total = REGISTRY.get_sample_value("ledger_commit_batch_commands_sum") or 0.0
    return count, total


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LedgerService]:
    # LEDGER_GROUP_COMMIT_LINGER_MS=50, as the entrypoints read it
    group_commit = GroupCommit.from_env({"LEDGER_GROUP_COMMIT_LINGER_MS": "50"})
    service = LedgerService.open(f"sqlite:///{tmp_path / 'l.db'}", group_commit=group_commit)
    service.record_movements(
        CTX, [Movement("seed", "r1", MovementType.RECEIPT, "SKU", "L1", qty=20)]
    ).result()
    yield service
    service.close()


def _reserve(request_id: str, qty: int = 1) -> ReserveInput:
    return ReserveInput(
        request_id=request_id,
        channel="web",
        order_ref=f"o-{request_id}",
        lines=(ReserveLine("SKU", "L1", qty),),
        ttl=timedelta(minutes=10),
    )


def test_a_batch_commits_once_and_a_short_reservation_fails_alone(service: LedgerService):
    count_before, commands_before = _batches()
    futures = [service.reserve(CTX, _reserve(f"req-{i}")) for i in range(30)]
    outcomes = [f.exception() or f.result() for f in futures]

    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(won) == 20  # exactly the stock: no oversell inside a batch
    assert all(isinstance(o, InsufficientAvailability) for o in lost) and len(lost) == 10
    # Order is kept: the first 20 submitted are the ones that got stock.
    assert [not isinstance(o, BaseException) for o in outcomes] == [True] * 20 + [False] * 10
    positions = [o.ledger_position for o in won]
    assert len(set(positions)) == 20 and positions == sorted(positions)

    count_after, commands_after = _batches()
    assert count_after > count_before  # at least one shared commit ...
    assert commands_after - commands_before >= 20  # ... carrying the successful reservations
    view = service.get_position("SKU", "L1")
    assert view.reserved == 20 and view.available == 0


def test_the_same_request_id_twice_in_one_batch_gets_one_reservation(service: LedgerService):
    first = service.reserve(CTX, _reserve("twice"))
    second = service.reserve(CTX, _reserve("twice"))
    a, b = first.result(), second.result()
    assert a.reservation_id == b.reservation_id
    assert a.ledger_position == b.ledger_position > 0
    assert service.get_position("SKU", "L1").reserved == 1


@pytest.mark.postgres
def test_a_batch_sees_what_another_replica_wrote_since_it_cached_it(
    replicas: tuple[LedgerService, LedgerService],
) -> None:
    """The writer caches aggregates, and remembers ones that did not exist (a channel with no
    policy); the batch's one fast-forward query must still see another replica's writes."""
    first, second = replicas
    first.record_movements(
        CTX, [Movement("seed", "pf-1", MovementType.RECEIPT, "PF", "L1", qty=5)]
    ).result()
    # Cached by the first replica: the position (5 on hand) and "web" having no policy.
    first.reserve(CTX, _reserve_of("pf-a", "PF", 1)).result()
    # The second replica takes stock and restricts the channel to another location.
    second.reserve(CTX, _reserve_of("pf-b", "PF", 3)).result()
    second.set_channel_policy(CTX, "pf-policy", "web", ["L2"], 100, 0, 0).result()
    # Without the policy, 1 would still be free; with it, L1 is not eligible for "web".
    with pytest.raises(InsufficientAvailability):
        first.reserve(CTX, _reserve_of("pf-c", "PF", 1)).result()
    assert first.get_position("PF", "L1").reserved == 4


def _reserve_of(request_id: str, sku: str, qty: int) -> ReserveInput:
    return ReserveInput(
        request_id=request_id,
        channel="web",
        order_ref=f"o-{request_id}",
        lines=(ReserveLine(sku, "L1", qty),),
        ttl=timedelta(minutes=10),
    )


def test_a_write_that_cannot_be_reached_before_its_deadline_is_refused_up_front(
    service: LedgerService,
) -> None:
    """Admission control: with a queue the writer needs longer to reach than the caller has
    left, the call is refused at once (RESOURCE_EXHAUSTED) instead of timing out later
    while its command may still be applied."""
    pipeline = service.pipeline
    release = threading.Event()

    def slow(_: object) -> object:
        release.wait(5)
        return lambda recordings: None

    # Teach the writer what a command costs here (a 0.2 s batch of one).
    pipeline.submit(lambda _: (time.sleep(0.2), lambda recordings: None)[1]).result()
    blocker = pipeline.submit(slow)
    time.sleep(0.2)  # past the 50 ms linger: the writer is inside the blocker's batch
    queued = [service.reserve(CTX, _reserve(f"queued-{i}")) for i in range(3)]
    assert pipeline.expected_wait() > 0.1
    with pytest.raises(PipelineOverloaded) as refused:
        service.reserve(replace(CTX, time_remaining_seconds=0.1), _reserve("late"))
    assert refused.value.retry_after_seconds >= pipeline.expected_wait() > 0.1
    # Without a deadline, or with time enough, the same call is queued.
    patient = service.reserve(replace(CTX, time_remaining_seconds=30.0), _reserve("patient"))
    release.set()
    blocker.result(5)
    assert all(f.result(5).reservation_id for f in [*queued, patient])
    assert service.get_position("SKU", "L1").reserved == 4  # "late" was never applied


def test_a_commit_that_fails_fails_its_batch_and_the_writer_carries_on(
    service: LedgerService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that raises (not a conflict, not the store going away) fails every command
    of its batch with that error; the writer thread survives and the next batch commits.
    (A regression: the batch's futures were unpacked wrongly on this path, the writer
    thread died, and every later write waited forever.)"""
    from ledger.unit_of_work import UnitOfWork

    real_commit = UnitOfWork.commit
    failures = iter([RuntimeError("disk on fire")])

    def failing_once(self: UnitOfWork) -> object:
        error = next(failures, None)
        if error is not None:
            raise error
        return real_commit(self)

    monkeypatch.setattr(UnitOfWork, "commit", failing_once)
    futures = [service.reserve(CTX, _reserve(f"boom-{i}")) for i in range(3)]
    errors = [f.exception(timeout=10) for f in futures]
    assert all(isinstance(e, RuntimeError) for e in errors), errors
    assert service.get_position("SKU", "L1").reserved == 0  # nothing of it applied
    # The writer is alive: the same requests, retried, commit.
    retried = [service.reserve(CTX, _reserve(f"boom-{i}")) for i in range(3)]
    assert [f.result(timeout=10).ledger_position > 0 for f in retried] == [True] * 3
    assert service.get_position("SKU", "L1").reserved == 3


def test_an_unexpected_error_in_the_writer_fails_the_batch_not_the_writer(
    service: LedgerService, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = service.pipeline
    real = pipeline._execute_batch
    calls = iter([True])

    def broken_once(items: list) -> list:
        if next(calls, False):
            raise AssertionError("a bug in the writer")
        return real(items)

    monkeypatch.setattr(pipeline, "_execute_batch", broken_once)
    lost = service.reserve(CTX, _reserve("bug-1"))
    assert isinstance(lost.exception(timeout=10), AssertionError)
    assert service.reserve(CTX, _reserve("bug-2")).result(timeout=10).ledger_position > 0
