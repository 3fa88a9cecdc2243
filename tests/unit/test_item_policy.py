"""The item-tracking change rule and the ItemPolicy fold (contract §2, item tracking)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.item_policy import (
    ItemPolicy,
    Tracking,
    change_refused,
    holds_stock,
    item_policy_id,
)
from ledger.domain.position_state import PositionState

NOW = datetime(2026, 12, 1, tzinfo=UTC)
trackings = st.sampled_from(list(Tracking))
BUCKETS = ("on_hand", "receiving", "quarantine", "damaged", "in_transit_inbound")


@given(current=trackings, wanted=trackings, stocked=st.booleans())
def test_change_rule(current: Tracking, wanted: Tracking, stocked: bool) -> None:
    allowed = change_refused(current, wanted, stocked) is None
    expected = wanted == current or (current == Tracking.NONE and not stocked)
    assert allowed == expected


@given(bucket=st.sampled_from(BUCKETS), qty=st.integers(-(10**12), 10**12))
def test_any_nonzero_bucket_is_stock(bucket: str, qty: int) -> None:
    position = PositionState("S", "L")
    assert not holds_stock(position, NOW)
    setattr(position, bucket, qty)
    assert holds_stock(position, NOW) == (qty != 0)


@given(settings=st.lists(trackings, min_size=1, max_size=6))
def test_fold_keeps_the_last_set(settings: list[Tracking]) -> None:
    policy = ItemPolicy._create(ItemPolicy.Created, sku="S", recorded_at=NOW)
    assert (policy.id, policy.tracking) == (item_policy_id("S"), Tracking.NONE)
    for i, tracking in enumerate(settings):
        policy.trigger_event(
            ItemPolicy.Set,
            tracking=str(tracking),
            recorded_at=NOW,
            request_id=f"r{i}",
            correlation_id="c",
            actor="a",
        )
    assert policy.tracking == settings[-1]
    assert policy.version == len(settings) + 1


def test_policy_ids_are_per_sku() -> None:
    assert item_policy_id("S") == item_policy_id("S") != item_policy_id("T")
