"""HoldBook's running totals equal a plain scan over the holds, whatever the sequence of
placements, commits, shipments and removals, at any instant (before, between and after
the expiries), and survive copying and a snapshot's round trip through a plain dict."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain.hold_book import HOLD_ACTIVE, HOLD_COMMITTED, HoldBook, book_of, open_qty

BASE = datetime(2026, 1, 1, tzinfo=UTC)
CHANNELS = ("web", "store", "marketplace")

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("place"),
            st.integers(0, 15),  # reservation number
            st.sampled_from(CHANNELS),
            st.integers(1, 9),  # qty
            st.integers(0, 20),  # expiry, minutes after BASE
        ),
        st.tuples(st.just("commit"), st.integers(0, 15)),
        st.tuples(st.just("ship"), st.integers(0, 15), st.integers(1, 9)),
        st.tuples(st.just("remove"), st.integers(0, 15)),
    ),
    max_size=60,
)


def _blocks(hold: dict, now: datetime) -> bool:
    if hold["status"] == HOLD_COMMITTED:
        return True
    return hold["status"] == HOLD_ACTIVE and now < hold["expires_at"]


def _apply(book: HoldBook, reference: dict[str, dict], operation: tuple) -> None:
    kind, number, *rest = operation
    rid = f"r-{number:02d}"
    if kind == "place":
        if rid in reference:
            return
        channel, qty, minutes = rest
        hold = {
            "channel": channel,
            "order_ref": "o",
            "status": HOLD_ACTIVE,
            "qty": qty,
            "shipped": 0,
            "expires_at": BASE + timedelta(minutes=minutes),
        }
        book.place(rid, dict(hold))
        reference[rid] = hold
    elif kind == "commit":
        book.commit(rid)
        if rid in reference:
            reference[rid]["status"] = HOLD_COMMITTED
    elif kind == "ship":
        if rid not in reference:
            return
        take = min(rest[0], open_qty(reference[rid]))
        book.ship(rid, take)
        reference[rid]["shipped"] += take
        if open_qty(reference[rid]) == 0:
            del reference[rid]
    else:
        book.remove(rid)
        reference.pop(rid, None)


def _check(book: HoldBook, reference: dict[str, dict]) -> None:
    assert dict(book) == reference
    for minutes in range(-1, 22):
        now = BASE + timedelta(minutes=minutes, seconds=30 * (minutes % 2))
        reserved = sum(
            open_qty(h)
            for h in reference.values()
            if h["status"] == HOLD_ACTIVE and now < h["expires_at"]
        )
        assert book.reserved(now) == reserved
        for channel in CHANNELS:
            demand = sum(
                open_qty(h)
                for h in reference.values()
                if h["channel"] == channel and _blocks(h, now)
            )
            assert book.channel_demand(channel, now) == demand
        upcoming = [
            h["expires_at"]
            for h in reference.values()
            if h["status"] == HOLD_ACTIVE and h["expires_at"] > now
        ]
        assert book.next_expiry_after(now) == (min(upcoming) if upcoming else None)
    allocated = sum(open_qty(h) for h in reference.values() if h["status"] == HOLD_COMMITTED)
    assert book.allocated() == allocated


@settings(max_examples=300, deadline=None)
@given(operations)
def test_totals_equal_a_scan_of_the_holds(ops: list[tuple]) -> None:
    book, reference = HoldBook(), {}
    for operation in ops:
        _apply(book, reference, operation)
    _check(book, reference)
    # A deep copy (the repository cache) and a snapshot's plain dict rebuild the totals.
    _check(copy.deepcopy(book), reference)
    restored = json.loads(json.dumps(book, default=lambda d: d.isoformat()))
    for hold in restored.values():
        hold["expires_at"] = datetime.fromisoformat(hold["expires_at"])

    class Snapshot:
        holds = restored

    _check(book_of(Snapshot), reference)
    assert isinstance(Snapshot.holds, HoldBook)
