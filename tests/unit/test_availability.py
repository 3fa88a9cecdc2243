"""Example-based checks of ``ledger.domain.availability`` (contract §2 "Derived"), table-driven."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain import availability
from ledger.domain.availability import HOLD_ACTIVE, HOLD_COMMITTED

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MICRO = timedelta(microseconds=1)


@dataclass
class State:
    on_hand: int = 0
    safety_stock: int = 0
    fences: dict[str, int] = field(default_factory=dict)
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)
    inbound: dict[str, dict[str, Any]] = field(default_factory=dict)


def hold(
    channel: str = "web",
    qty: int = 1,
    *,
    status: str = HOLD_ACTIVE,
    shipped: int = 0,
    expires_at: datetime = T,
) -> dict[str, Any]:
    return {
        "channel": channel,
        "order_ref": "o",
        "status": status,
        "qty": qty,
        "shipped": shipped,
        "expires_at": expires_at,
    }


def state(
    on_hand: int = 0,
    safety: int = 0,
    fences: dict[str, int] | None = None,
    *holds_: dict[str, Any],
) -> State:
    return State(on_hand, safety, dict(fences or {}), {f"r{i}": h for i, h in enumerate(holds_)})


# ---- expiry boundary: an ACTIVE hold blocks while now < expires_at ------------------------------

EXPIRY_CASES = [
    # (now, status, expected reserved, expected allocated, expected available)
    pytest.param(T - timedelta(minutes=1), HOLD_ACTIVE, 4, 0, 6, id="active-well-before"),
    pytest.param(T - MICRO, HOLD_ACTIVE, 4, 0, 6, id="active-1us-before-expiry-blocks"),
    pytest.param(T, HOLD_ACTIVE, 0, 0, 10, id="active-at-expiry-does-not-block"),
    pytest.param(T + MICRO, HOLD_ACTIVE, 0, 0, 10, id="active-after-expiry"),
    pytest.param(T - MICRO, HOLD_COMMITTED, 0, 4, 6, id="committed-before-expiry"),
    pytest.param(T, HOLD_COMMITTED, 0, 4, 6, id="committed-ignores-expiry"),
    pytest.param(T + timedelta(days=1), HOLD_COMMITTED, 0, 4, 6, id="committed-long-after"),
]


@pytest.mark.parametrize(("now", "status", "reserved", "allocated", "available"), EXPIRY_CASES)
def test_expiry_boundary(
    now: datetime, status: str, reserved: int, allocated: int, available: int
) -> None:
    s = state(10, 0, None, hold("web", 4, status=status, expires_at=T))
    assert availability.reserved(s, now) == reserved
    assert availability.allocated(s) == allocated
    assert availability.available(s, now) == available
    assert availability.hold_blocks(s.holds["r0"], now) is (reserved + allocated > 0)
    assert availability.available_to(s, "market", now) == available


# ---- available = on_hand - reserved - allocated - safety_stock ----------------------------------

AVAILABLE_CASES = [
    # (state, expected available at T - 1 min)
    pytest.param(state(0), 0, id="empty"),
    pytest.param(state(10, 3), 7, id="safety-stock"),
    pytest.param(state(2, 5), -3, id="may-go-negative"),
    pytest.param(state(-4), -4, id="negative-on-hand"),
    pytest.param(
        state(10, 1, None, hold("web", 3), hold("market", 2, status=HOLD_COMMITTED)),
        4,
        id="reserved-and-allocated",
    ),
    pytest.param(state(10, 0, None, hold("web", 5, shipped=2)), 7, id="shipped-part-not-held"),
    pytest.param(state(10, 0, None, hold("web", 5, shipped=5)), 10, id="fully-shipped"),
    pytest.param(
        state(10, 0, None, hold("web", 5, expires_at=T - timedelta(hours=1))),
        10,
        id="expired-hold-ignored",
    ),
]


@pytest.mark.parametrize(("s", "expected"), AVAILABLE_CASES)
def test_available(s: State, expected: int) -> None:
    now = T - timedelta(minutes=1)
    assert availability.available(s, now) == expected
    assert availability.available_to(s, "web", now) == max(0, expected)


# ---- fences: available_to(c) = max(0, available - Σ_{c' ≠ c} unused_fence[c']) -------------------

FENCE_CASES = [
    # (state, {channel: expected available_to}, {channel: expected unused fence})
    pytest.param(state(10), {"web": 10, "market": 10, "b2b": 10}, {}, id="no-fences"),
    pytest.param(
        state(10, 0, {"web": 4}),
        {"web": 10, "market": 6, "b2b": 6},
        {"web": 4},
        id="one-fence-hides-from-others",
    ),
    pytest.param(
        state(10, 0, {"web": 4, "market": 3}),
        {"web": 7, "market": 6, "b2b": 3},
        {"web": 4, "market": 3},
        id="two-fences",
    ),
    pytest.param(
        state(10, 0, {"web": 4}, hold("web", 3)),
        {"web": 7, "market": 6, "b2b": 6},
        {"web": 1},
        id="own-demand-uses-fence",
    ),
    pytest.param(
        state(10, 0, {"web": 4}, hold("web", 6, status=HOLD_COMMITTED)),
        {"web": 4, "market": 4, "b2b": 4},
        {"web": 0},
        id="demand-beyond-fence",
    ),
    pytest.param(
        state(10, 0, {"web": 4}, hold("market", 3)),
        {"web": 7, "market": 3, "b2b": 3},
        {"web": 4},
        id="other-channel-demand-does-not-use-fence",
    ),
    pytest.param(
        state(10, 0, {"web": 4}, hold("web", 3, expires_at=T - MICRO)),
        {"web": 10, "market": 6, "b2b": 6},
        {"web": 4},
        id="expired-hold-is-no-demand",
    ),
    pytest.param(
        state(3, 0, {"web": 5}),
        {"web": 3, "market": 0, "b2b": 0},
        {"web": 5},
        id="clamped-at-zero",
    ),
    pytest.param(
        state(2, 5, {"web": 1}),
        {"web": 0, "market": 0},
        {"web": 1},
        id="negative-available",
    ),
]


@pytest.mark.parametrize(("s", "expected_to", "expected_unused"), FENCE_CASES)
def test_fences(s: State, expected_to: dict[str, int], expected_unused: dict[str, int]) -> None:
    now = T - timedelta(minutes=1) if any(h["expires_at"] == T for h in s.holds.values()) else T
    assert availability.unused_fences(s, now) == expected_unused
    for channel, expected in expected_to.items():
        assert availability.available_to(s, channel, now) == expected, channel


# ---- raising a fence: allowed iff Σ unused_fence after it ≤ max(0, available); lowering always --

RAISE_CASES = [
    # (state, channel, new fence, allowed, Σ unused after)
    pytest.param(state(10), "web", 10, True, 10, id="up-to-available"),
    pytest.param(state(10), "web", 11, False, 11, id="beyond-available"),
    pytest.param(state(10, 0, {"market": 6}), "web", 4, True, 10, id="two-fences-fill-it"),
    pytest.param(state(10, 0, {"market": 6}), "web", 5, False, 11, id="two-fences-too-much"),
    pytest.param(
        state(10, 0, None, hold("web", 4)), "web", 10, True, 6, id="own-demand-counts-toward-fence"
    ),
    pytest.param(
        state(10, 0, None, hold("market", 4)), "web", 7, False, 7, id="others-demand-reduces-room"
    ),
    pytest.param(state(10, 0, {"web": 12}), "web", 11, True, 11, id="lowering-while-over"),
    pytest.param(state(10, 0, {"web": 12}), "web", 12, True, 12, id="unchanged-while-over"),
    pytest.param(state(10, 0, {"web": 12}), "web", 0, True, 0, id="clearing"),
    pytest.param(state(2, 5), "web", 1, False, 1, id="negative-available-refuses-raise"),
    pytest.param(
        state(2, 5, None, hold("web", 3, status=HOLD_COMMITTED)),
        "web",
        3,
        True,
        0,
        id="negative-available-fence-covered-by-demand",
    ),
]


@pytest.mark.parametrize(("s", "channel", "qty", "allowed", "total"), RAISE_CASES)
def test_fence_raise_allowed(s: State, channel: str, qty: int, allowed: bool, total: int) -> None:
    now = T - timedelta(minutes=1)
    assert availability.fence_raise_allowed(s, channel, qty, now) == (allowed, total)


def test_hold_open_qty() -> None:
    assert availability.hold_open_qty(hold(qty=5, shipped=2)) == 3
    assert availability.hold_open_qty(hold(qty=5, shipped=5)) == 0


# ---- dated ATP: available_to with the inbound due by the horizon added to on_hand ---------------


def transfer(
    dispatched: int, eta: datetime | None, *, received: int = 0, closed: bool = False
) -> dict[str, Any]:
    return {"dispatched": dispatched, "received": received, "closed": closed, "expected_at": eta}


def dated(s: State, *transfers: dict[str, Any]) -> State:
    s.inbound = {f"T{i}": t for i, t in enumerate(transfers)}
    return s


HORIZON = T + timedelta(days=1)

DATED_CASES = [
    # (state with inbound, channel, expected projected_available_to at HORIZON)
    pytest.param(dated(state(0, 2), transfer(4, T)), "web", 2, id="safety-shortfall-absorbs-due"),
    pytest.param(dated(state(0, 0), transfer(4, T)), "web", 4, id="due-arrives"),
    pytest.param(dated(state(0, 2), transfer(4, HORIZON)), "web", 2, id="eta-at-horizon-counts"),
    pytest.param(
        dated(state(0, 2), transfer(4, HORIZON + MICRO)), "web", 0, id="eta-after-horizon"
    ),
    pytest.param(dated(state(5, 0), transfer(4, None)), "web", 5, id="no-eta-never-counts"),
    pytest.param(
        dated(state(0, 0), transfer(5, T, received=2)), "web", 3, id="partly-received-counts-rest"
    ),
    pytest.param(
        dated(state(0, 0), transfer(5, T, received=2, closed=True)), "web", 0, id="closed-transfer"
    ),
    pytest.param(
        dated(state(0, 0, {"market": 3}), transfer(4, T)), "web", 1, id="other-fence-takes-share"
    ),
    pytest.param(
        dated(state(0, 0, {"market": 3}), transfer(4, T)), "market", 4, id="own-fence-no-cost"
    ),
    pytest.param(
        dated(state(2, 0, None, hold("web", 5, status=HOLD_COMMITTED)), transfer(4, T)),
        "web",
        1,
        id="oversold-holds-absorb-due",
    ),
    pytest.param(
        dated(state(0, 0), transfer(3, T), transfer(2, T + timedelta(hours=2)), transfer(9, None)),
        "web",
        5,
        id="several-transfers",
    ),
]


@pytest.mark.parametrize(("s", "channel", "expected"), DATED_CASES)
def test_projected_available_to(s: State, channel: str, expected: int) -> None:
    now = T - timedelta(minutes=1)
    assert availability.projected_available_to(s, channel, now, HORIZON) == expected


holds_st = st.lists(
    st.builds(
        hold,
        st.sampled_from(["web", "market"]),
        st.integers(1, 10),
        status=st.sampled_from([HOLD_ACTIVE, HOLD_COMMITTED]),
        expires_at=st.sampled_from([T - MICRO, T + timedelta(hours=1)]),
    ),
    max_size=4,
)
transfers_st = st.lists(
    st.builds(
        transfer,
        st.integers(1, 10),
        st.one_of(st.none(), st.integers(0, 72).map(lambda h: T + timedelta(hours=h))),
        received=st.integers(0, 12),
        closed=st.booleans(),
    ),
    max_size=4,
)
states_st = st.builds(
    lambda on_hand, safety, fences, holds_, transfers: dated(
        state(on_hand, safety, fences, *holds_), *transfers
    ),
    st.integers(-10, 20),
    st.integers(0, 5),
    st.dictionaries(st.sampled_from(["web", "market", "b2b"]), st.integers(0, 8), max_size=3),
    holds_st,
    transfers_st,
)


@given(
    s=states_st,
    channel=st.sampled_from(["web", "market", "b2b"]),
    hours=st.integers(-1, 80),
    later=st.integers(0, 24),
)
def test_dated_atp_properties(s: State, channel: str, hours: int, later: int) -> None:
    """Dated ATP is ``available_to`` with the units due added to on_hand (restated here by
    copying the state), never below today's figure, never more than the units due above it,
    and never smaller at a later horizon."""
    now = T
    horizon = T + timedelta(hours=hours)
    projected = availability.projected_available_to(s, channel, now, horizon)
    due = sum(
        0 if t["closed"] else max(0, t["dispatched"] - t["received"])
        for t in s.inbound.values()
        if t["expected_at"] is not None and t["expected_at"] <= horizon
    )
    arrived = State(s.on_hand + due, s.safety_stock, dict(s.fences), dict(s.holds))
    assert projected == availability.available_to(arrived, channel, now)
    today = availability.available_to(s, channel, now)
    assert today <= projected <= today + due
    later_horizon = horizon + timedelta(hours=later)
    assert availability.projected_available_to(s, channel, now, later_horizon) >= projected
