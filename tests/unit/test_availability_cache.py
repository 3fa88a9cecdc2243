"""projections.availability_cache: the cache vouches only for what it was told (issue 20).

The end-to-end comparison with the read model is tests/integration/test_availability_cache.py;
here each rule of the invariant ("every entry is the read model at the cache's position")
is shown on its own, including the feeds' failure cases the integration test rarely meets
(a lost notification, a rebuilt generation, a poll without a feed).
"""

from __future__ import annotations

import json

import pytest

from projections.availability import PolicyTerms
from projections.availability_cache import (
    NOTIFY_PAYLOAD_MAX,
    AvailabilityCache,
    BatchChange,
    ForeignChange,
)
from projections.position_state import ProjectedPosition

TERMS = PolicyTerms()
SCOPE = "public/availability"


def _states(sku: str) -> list[ProjectedPosition]:
    return [ProjectedPosition(sku, "DC-1")]


def _fed(generation: int = 1, position: int = 10) -> AvailabilityCache:
    cache = AvailabilityCache(max_skus=100)
    cache.follow(generation, position)
    return cache


def _fill(cache: AvailabilityCache, sku: str, position: int, generation: int = 1) -> bool:
    return cache.fill(generation, position, sku, _states(sku), "web", TERMS)


def test_a_cache_without_a_feed_serves_nothing() -> None:
    cache = AvailabilityCache(max_skus=100)
    assert not _fill(cache, "A", 10)
    assert cache.lookup("A", "web", 0) is None
    assert not AvailabilityCache(max_skus=0).enabled


def test_a_read_at_the_announced_position_is_adopted_and_served_up_to_it() -> None:
    cache = _fed(position=10)
    assert not _fill(cache, "A", 9)  # older than what the feed announced
    assert _fill(cache, "A", 10)
    found = cache.lookup("A", "web", 10)
    assert found is not None and found.position == 10 and found.states[0].sku == "A"
    assert cache.lookup("A", "web", 11) is None  # min_position ahead of the cache
    assert cache.lookup("A", "b2b", 0) is None  # that channel's terms are not held
    assert not _fill(cache, "B", 11)  # another position than the cache's: dropped
    assert cache.lookup("B", "web", 0) is None


def test_a_batch_drops_the_skus_it_names_and_moves_the_position() -> None:
    cache = _fed(position=10)
    _fill(cache, "A", 10)
    _fill(cache, "B", 10)
    cache.apply(BatchChange(1, 10, 12, frozenset({"A"})))
    assert cache.position == 12
    assert cache.lookup("A", "web", 0) is None
    kept = cache.lookup("B", "web", 12)
    assert kept is not None and kept.position == 12
    cache.apply(BatchChange(1, 11, 12, frozenset({"B"})))  # already included: ignored
    assert cache.lookup("B", "web", 0) is not None
    cache.apply(BatchChange(1, 12, 13, None))  # a policy: everything goes, terms too
    assert cache.position == 13 and len(cache) == 0
    assert _fill(cache, "B", 13)


def test_a_batch_that_does_not_start_at_the_cache_position_empties_it() -> None:
    cache = _fed(position=10)
    _fill(cache, "A", 10)
    cache.apply(BatchChange(1, 11, 12, frozenset({"Z"})))  # 10 → 11 was never announced
    assert cache.position is None and cache.lookup("A", "web", 0) is None
    assert not _fill(cache, "A", 10)  # older than the batch that revealed the gap
    assert _fill(cache, "A", 12)
    assert cache.position == 12


def test_a_new_generation_empties_the_cache() -> None:
    cache = _fed(generation=1, position=10)
    _fill(cache, "A", 10)
    cache.apply(BatchChange(2, 0, 40, None))
    assert cache.position is None and len(cache) == 0
    assert not _fill(cache, "A", 10, generation=1)
    assert _fill(cache, "A", 40, generation=2)


def test_the_poll_empties_the_cache_when_a_notification_was_lost() -> None:
    cache = _fed(position=10)
    _fill(cache, "A", 10)
    cache._fed, cache._feed_names_skus = True, True  # as poll(feed=True) leaves it
    cache.check(1, 10)
    cache.check(1, 12)  # a batch the feed must announce before the next tick
    assert cache.lookup("A", "web", 0) is not None
    cache.apply(BatchChange(1, 10, 12, frozenset({"B"})))
    cache.check(1, 12)  # announced in time: kept
    assert cache.lookup("A", "web", 12) is not None
    cache.check(1, 14)
    cache.check(1, 14)  # 12 → 14 never came
    assert cache.position is None and len(cache) == 0


def test_without_a_feed_any_move_of_the_read_model_empties_the_cache() -> None:
    cache = AvailabilityCache(max_skus=100)
    cache._fed, cache._feed_names_skus = True, False  # as poll(feed=False) leaves it
    cache.check(1, 10)
    assert _fill(cache, "A", 10)
    cache.check(1, 10)
    assert cache.lookup("A", "web", 0) is not None
    cache.check(1, 11)
    assert cache.position is None and len(cache) == 0


def test_the_least_recently_used_sku_is_evicted() -> None:
    cache = AvailabilityCache(max_skus=2)
    cache.follow(1, 10)
    _fill(cache, "A", 10)
    _fill(cache, "B", 10)
    assert cache.lookup("A", "web", 0) is not None  # A is now the most recent
    _fill(cache, "C", 10)
    assert len(cache) == 2
    assert cache.lookup("B", "web", 0) is None
    assert cache.lookup("A", "web", 0) is not None


def test_payloads_round_trip_and_a_large_batch_names_no_skus() -> None:
    change = BatchChange(3, 10, 20, frozenset({"A", "B"}))
    assert BatchChange.from_payload(change.payload(SCOPE), SCOPE) == change
    many = frozenset(f"SKU-{n:06d}" for n in range(2_000))
    text = BatchChange(3, 10, 20, many).payload(SCOPE)
    assert len(text.encode()) < NOTIFY_PAYLOAD_MAX
    assert BatchChange.from_payload(text, SCOPE) == BatchChange(3, 10, 20, None)
    with pytest.raises(ForeignChange):
        BatchChange.from_payload(change.payload("other/availability"), SCOPE)
    with pytest.raises(ValueError):
        BatchChange.from_payload("", SCOPE)
    with pytest.raises(ValueError):
        BatchChange.from_payload(json.dumps({"n": SCOPE}), SCOPE)


def test_payloads_of_other_read_models_are_ignored_and_unreadable_ones_empty_the_cache() -> None:
    cache = _fed(position=10)
    _fill(cache, "A", 10)
    cache.apply_payload(BatchChange(1, 10, 11, frozenset({"A"})).payload("x/y"), SCOPE)
    assert cache.lookup("A", "web", 0) is not None and cache.position == 10
    cache.apply_payload("", SCOPE)
    assert cache.position is None and len(cache) == 0
