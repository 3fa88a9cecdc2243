"""The writer's aggregate cache keeps its working set while reservations churn through it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.domain.movements import Movement, MovementType
from ledger.domain.position import position_id
from ledger.service import LedgerService
from ledger.store.index_ops import FROM_SNAPSHOT
from ledger.unit_of_work import AggregateCache
from ledger.use_cases.context import CallContext
from tests.support.reservations import one_unit, reserved_id

CTX = CallContext("cache-test", "corr")
LOCATION = "DC"


@pytest.fixture
def service(database_url: str) -> Iterator[LedgerService]:
    service = LedgerService.open(database_url)
    yield service
    service.close()


def test_reservations_are_evicted_before_positions(service: LedgerService) -> None:
    skus = [f"KEEP-{n}" for n in range(3)]
    service.record_movements(
        CTX, [Movement("c", f"r-{s}", MovementType.RECEIPT, s, LOCATION, qty=100) for s in skus]
    ).result()
    reservation_ids = [
        reserved_id(service, CTX, one_unit(f"q-{n}", f"o-{n}", skus[n % 3], LOCATION))
        for n in range(20)
    ]
    positions = [position_id(s, LOCATION) for s in skus]
    cache = AggregateCache(service.app, maxsize=8)
    cache.prefetch(positions)
    assert all(p in cache for p in positions)
    # 20 reservations read after the positions, through a cache of 8 entries.
    for reservation_id in reservation_ids:
        cache.prefetch([reservation_id])
    assert all(p in cache for p in positions), "a position was evicted before a reservation"
    assert sum(r in cache for r in reservation_ids) == 5  # the newest ones
    assert reservation_ids[-1] in cache


def test_a_full_cache_never_loses_what_a_batch_read_is_folding(service: LedgerService) -> None:
    """Eviction waits until a batch read is folded: evicting while folding dropped a
    reservation the batch had just read (then cached as absent: NOT_FOUND for a live one)
    or left it marked current but gone (KeyError on use)."""
    skus = [f"FULL-{n}" for n in range(3)]
    service.record_movements(
        CTX, [Movement("c", f"r-{s}", MovementType.RECEIPT, s, LOCATION, qty=100) for s in skus]
    ).result()
    first, second = (
        reserved_id(service, CTX, one_unit(f"full-{n}", f"o-{n}", skus[n], LOCATION))
        for n in range(2)
    )
    cache = AggregateCache(service.app, maxsize=4)
    cache.prefetch([position_id(s, LOCATION) for s in skus])
    cache.prefetch([first])  # full: three positions and the oldest reservation
    cache.begin()
    cache.prefetch([first, second])  # one batch: the cached one and one read now
    for reservation_id in (first, second):
        loaded = cache.load(reservation_id)
        assert loaded is not None, "a live reservation was cached as absent"
        assert loaded.id == reservation_id


def test_aggregates_without_snapshots_are_read_whole_without_looking_for_one(
    service: LedgerService,
) -> None:
    """Only positions are snapshotted: a reservation (or a policy) not cached is read from
    its first event, without a snapshot probe, into the same state."""
    service.record_movements(
        CTX, [Movement("c", "r-plain", MovementType.RECEIPT, "PLAIN", LOCATION, qty=10)]
    ).result()
    reservation = reserved_id(service, CTX, one_unit("plain-1", "o-plain", "PLAIN", LOCATION))
    position = position_id("PLAIN", LOCATION)
    plain, probing = AggregateCache(service.app), AggregateCache(service.app)
    wanted, ranges = plain.ranges_for([position, reservation], unsnapshotted={reservation})
    assert ranges == [(position, FROM_SNAPSHOT, 2**31 - 1), (reservation, 0, 2**31 - 1)]
    plain.absorb(wanted, service.app.events_batch(ranges))
    probing.prefetch([position, reservation])  # every uncached id from its newest snapshot
    for aggregate_id in (position, reservation):
        assert vars(plain.load(aggregate_id)) == vars(probing.load(aggregate_id))
    # Cached, it is read from its version on, listed or not.
    plain.begin()
    assert plain.ranges_for([reservation], unsnapshotted={reservation})[1] == [
        (reservation, plain.load(reservation).version, 2**31 - 1)
    ]
