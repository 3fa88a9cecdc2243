"""Position snapshots (ledger.application): taken from the saved aggregate every
max(200, open holds) events, and a position loaded from one equals the position folded
from its whole history."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest

from ledger.application import SNAPSHOT_INTERVAL
from ledger.domain.movements import Movement, MovementType
from ledger.domain.position import position_id
from ledger.read_cache import ReadCache
from ledger.service import LedgerService
from ledger.unit_of_work import AggregateCache
from ledger.use_cases.context import CallContext
from tests.support.reservations import one_unit

CTX = CallContext("snapshot-test", "corr")
SKU, LOCATION = "SNAP", "DC"


@pytest.fixture
def service(database_url: str) -> Iterator[LedgerService]:
    service = LedgerService.open(database_url)
    yield service
    service.close()


def _snapshot_versions(service: LedgerService) -> list[int]:
    assert service.app.snapshots is not None
    return [s.originator_version for s in service.app.snapshots.get(position_id(SKU, LOCATION))]


def _receipts(service: LedgerService, count: int, per_call: int = 10) -> None:
    for first in range(0, count, per_call):
        service.record_movements(
            CTX,
            [
                Movement("snap", f"r-{n}", MovementType.RECEIPT, SKU, LOCATION, qty=1)
                for n in range(first, min(first + per_call, count))
            ],
        ).result()


def test_a_small_position_is_snapshotted_every_interval(service: LedgerService) -> None:
    # Version 1 opens the position; saves of 10 receipts end at versions 11, 21, ...
    _receipts(service, 2 * SNAPSHOT_INTERVAL + 50)
    assert _snapshot_versions(service) == [SNAPSHOT_INTERVAL + 1, 2 * SNAPSHOT_INTERVAL + 1]


def test_a_position_with_many_holds_is_snapshotted_less_often_and_loads_exactly(
    service: LedgerService,
) -> None:
    holds = 3 * SNAPSHOT_INTERVAL
    _receipts(service, holds)  # snapshots at 201, 401 and 601, while no hold is open
    futures = [
        service.reserve(CTX, one_unit(f"q-{n}", f"o-{n}", SKU, LOCATION)) for n in range(holds)
    ]
    for future in futures:
        future.result()
    versions = _snapshot_versions(service)
    assert versions[:3] == [201, 401, 601], versions
    # Then 600 holds: each snapshot waits for as many events as holds were open at it.
    after_receipts = versions[3:]
    assert after_receipts, versions
    previous = 601
    for version in after_receipts:
        holds_open = version - 1 - holds  # every event since the receipts placed a hold
        assert version - previous >= max(SNAPSHOT_INTERVAL, holds_open - 1), versions
        previous = version
    assert after_receipts[-1] - versions[len(versions) - len(after_receipts) - 1] > 200
    # A load from the newest snapshot (plus the events after it) is the whole history's fold.
    pid = position_id(SKU, LOCATION)
    loaded = service.app.repository.get(pid, version=service.app.repository.get(pid).version)
    assert loaded.version == 1 + 2 * holds
    assert len(loaded.holds) == holds
    assert service.get_position(SKU, LOCATION).reserved == holds


def test_a_snapshot_that_cannot_be_written_does_not_fail_the_write(
    service: LedgerService, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert service.app.snapshots is not None

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("snapshot store broken")

    monkeypatch.setattr(service.app.snapshots, "put", broken)
    _receipts(service, SNAPSHOT_INTERVAL + 20)  # a snapshot falls due, and fails
    monkeypatch.undo()
    assert service.get_position(SKU, LOCATION).on_hand == SNAPSHOT_INTERVAL + 20
    assert _snapshot_versions(service) == []
    _receipts_more = [
        Movement("snap", f"more-{n}", MovementType.RECEIPT, SKU, LOCATION, qty=1) for n in range(10)
    ]
    service.record_movements(CTX, _receipts_more).result()
    # Still due: the next save takes it.
    assert _snapshot_versions(service) == [SNAPSHOT_INTERVAL + 31]


def test_uncached_aggregates_are_read_whole_in_one_batch_read(
    service: LedgerService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's cache reads what it does not hold (its newest snapshot, then the events
    after it) in the batch's one store read: no repository read per aggregate, which under
    a cache churned by new reservations made the writer's turn collapse (issue 20)."""
    _receipts(service, SNAPSHOT_INTERVAL + 25)  # snapshotted at 201, 25 events after it
    others = [f"OTHER-{n}" for n in range(5)]
    service.record_movements(
        CTX, [Movement("snap", f"o-{s}", MovementType.RECEIPT, s, LOCATION, qty=3) for s in others]
    ).result()
    assert _snapshot_versions(service) == [SNAPSHOT_INTERVAL + 1]
    app = service.app
    ids = [position_id(SKU, LOCATION), *(position_id(s, LOCATION) for s in others)]
    never = position_id("NEVER-RECEIVED", LOCATION)
    expected: dict[UUID, Any] = {i: app.repository.get(i) for i in ids}

    repository_reads: list[object] = []
    original_get = app.repository.get

    def counting_get(*args: object, **kwargs: object) -> object:
        repository_reads.append(args)
        return original_get(*args, **kwargs)  # type: ignore[arg-type]

    batch_reads: list[int] = []
    original_batch = app.events_batch

    def counting_batch(ranges: list[tuple[object, int, int]]) -> list[object]:
        batch_reads.append(len(ranges))
        return original_batch(ranges)  # type: ignore[arg-type]

    monkeypatch.setattr(app.repository, "get", counting_get)
    monkeypatch.setattr(app, "events_batch", counting_batch)
    cache = AggregateCache(app)
    cache.prefetch([*ids, never])
    assert batch_reads == [len(ids) + 1]
    assert repository_reads == []
    for aggregate_id in ids:
        loaded = cache.load(aggregate_id)
        assert loaded is not None
        assert loaded.version == expected[aggregate_id].version
        assert vars(loaded) == vars(expected[aggregate_id])
    snapshotted: Any = cache.load(position_id(SKU, LOCATION))
    assert snapshotted.on_hand == SNAPSHOT_INTERVAL + 25
    assert cache.load(never) is None
    assert repository_reads == []  # all current after the batch read


def test_the_read_cache_reads_uncached_aggregates_whole_in_one_statement(
    service: LedgerService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STRONG reads of positions a process has not cached: one batch read, no repository
    rebuild (two more round trips each), and the same state the repository folds."""
    _receipts(service, SNAPSHOT_INTERVAL + 25)
    app = service.app
    pid = position_id(SKU, LOCATION)
    never = position_id("NEVER-RECEIVED", LOCATION)
    expected: Any = app.repository.get(pid)
    repository_reads: list[object] = []
    original_get = app.repository.get

    def counting_get(*args: object, **kwargs: object) -> object:
        repository_reads.append(args)
        return original_get(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(app.repository, "get", counting_get)
    found: Any
    found, absent = ReadCache(app).get_many([pid, never])
    assert repository_reads == []
    assert absent is None
    assert found.version == expected.version == SNAPSHOT_INTERVAL + 26
    assert found.on_hand == SNAPSHOT_INTERVAL + 25
    assert {k: v for k, v in vars(found).items()} == vars(expected)
