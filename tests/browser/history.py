"""The scripted history the browser tests and the screenshots read, written through the gRPC
API (the Python client) against a real ``ledger serve``, and an independent fold of ledger
entries to check the console's running balances with.

The main position ``SKU-AUDIT @ DC-1`` gets receipts, a put-away, reservations (one committed
and shipped, one left active), a quarantine, a safety stock and two facts recorded late with
an earlier ``occurred_at`` (a shipment and an adjustment), so the recorded and effective axes
disagree. Recorded instants (``checkpoints``) are whole seconds taken between the steps, so a
form that takes seconds can name them exactly; effective instants are whole minutes on the
three days before today.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from inventory.ledger.v1 import audit_service_pb2
from inventory_ledger_client import LedgerClient, movement

SKU = "SKU-AUDIT"
LOCATION = "DC-1"
SOURCE = "wms-browser"
CHANNEL = "web"
BUCKETS = (
    "on_hand",
    "receiving",
    "quarantine",
    "damaged",
    "in_transit_inbound",
    "reserved",
    "allocated",
    "safety_stock",
)


@dataclass
class History:
    sku: str
    location_id: str
    # Whole seconds between steps on the recorded axis, in order.
    checkpoints: list[dt.datetime]
    # Whole minutes on the effective axis, chosen around the backdated facts.
    effective_instants: list[dt.datetime]
    # (as_of, known_at) pairs for the bitemporal question.
    known_at_pairs: list[tuple[dt.datetime, dt.datetime]]
    other_positions: list[tuple[str, str]]
    reservation_ids: dict[str, str] = field(default_factory=dict)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC)


def _next_whole_second() -> dt.datetime:
    """Sleep past the next whole second and return it: every entry written before this call
    is recorded before it, every entry written after it is recorded after it."""
    now = dt.datetime.now(dt.UTC)
    boundary = now.replace(microsecond=0) + dt.timedelta(seconds=1)
    time.sleep((boundary - now).total_seconds() + 0.02)
    return boundary


def write_history(client: LedgerClient) -> History:
    """Write the scripted history (takes about six seconds: one checkpoint per step)."""
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day1, day2 = today - dt.timedelta(days=3), today - dt.timedelta(days=2)

    def fact(kind: str, message_id: str, when: dt.datetime | None = None, **fields: Any) -> Any:
        return movement(
            kind,
            source=SOURCE,
            sku=fields.pop("sku", SKU),
            location_id=fields.pop("location_id", LOCATION),
            message_id=message_id,
            occurred_at=when,
            **fields,
        )

    def record(*movements: Any) -> None:
        answer = client.record_movements(list(movements))
        outcomes = [result.outcome for result in answer.results]
        assert all(outcome == 1 for outcome in outcomes), answer  # MOVEMENT_OUTCOME_RECORDED

    checkpoints: list[dt.datetime] = []
    reservations: dict[str, str] = {}
    # 1. The opening receipt, three days ago.
    record(fact("receipt", "grn-1", day1 + dt.timedelta(hours=8), qty=120))
    # Other positions, so the positions page lists more than one.
    record(
        fact("receipt", "grn-2", day1 + dt.timedelta(hours=9), location_id="DC-2", qty=15),
        fact("receipt", "grn-3", day1 + dt.timedelta(hours=9), sku="SKU-OTHER", qty=8),
    )
    checkpoints.append(_next_whole_second())
    # 2. A receipt waiting at the dock, put away two hours later.
    record(fact("receipt", "grn-4", day2 + dt.timedelta(hours=9), qty=40, putaway_pending=True))
    record(fact("putaway", "pa-4", day2 + dt.timedelta(hours=11), qty=40))
    checkpoints.append(_next_whole_second())
    # 3. An order reserved, committed and shipped against its reservation (now).
    shipped = client.reserve(CHANNEL, [(SKU, LOCATION, 30)], order_ref="order-1001", ttl=7200)
    reservations["shipped"] = shipped.reservation_id
    client.commit(shipped.reservation_id)
    record(fact("shipment", "dn-1001", qty=30, reservation_id=shipped.reservation_id))
    checkpoints.append(_next_whole_second())
    # 4. Late: a shipment of three days ago whose delivery note arrives only now.
    record(fact("shipment", "dn-0999", day1 + dt.timedelta(hours=15), qty=25))
    checkpoints.append(_next_whole_second())
    # 5. Late: an adjustment of two days ago; a quarantine and a safety stock now.
    record(
        fact(
            "adjustment",
            "adj-77",
            day2 + dt.timedelta(hours=10),
            delta=-7,
            reason="damaged in handling, found at recount",
        )
    )
    record(fact("quarantine", "qc-5", qty=5, reason="supplier recall check"))
    client.set_safety_stock(SKU, LOCATION, 10)
    checkpoints.append(_next_whole_second())
    # 6. A reservation left active (two hours to live), and one released.
    held = client.reserve(CHANNEL, [(SKU, LOCATION, 12)], order_ref="order-1002", ttl=7200)
    reservations["active"] = held.reservation_id
    released = client.reserve(CHANNEL, [(SKU, LOCATION, 3)], order_ref="order-1003", ttl=7200)
    client.release(released.reservation_id)
    reservations["released"] = released.reservation_id
    checkpoints.append(_next_whole_second())

    effective_instants = [
        day1 + dt.timedelta(hours=12),  # the receipt only
        day1 + dt.timedelta(hours=18),  # after the late shipment (known from step 4 on)
        day2 + dt.timedelta(hours=10, minutes=30),  # at the dock; after the late adjustment
        day2 + dt.timedelta(hours=12),  # put away
        checkpoints[-1],  # everything, holds included
    ]
    known_at_pairs = [
        (effective_instants[1], checkpoints[2]),  # before the late shipment was known
        (effective_instants[1], checkpoints[3]),  # just after
        (effective_instants[2], checkpoints[0]),  # before the dock receipt was known
        (effective_instants[3], checkpoints[3]),  # before the late adjustment was known
        (checkpoints[-1], checkpoints[4]),  # before the last reservations
    ]
    return History(
        sku=SKU,
        location_id=LOCATION,
        checkpoints=checkpoints,
        effective_instants=effective_instants,
        known_at_pairs=known_at_pairs,
        other_positions=[(SKU, "DC-2"), ("SKU-OTHER", LOCATION)],
        reservation_ids=reservations,
    )


def list_all_movements(
    client: LedgerClient,
    sku: str,
    location_id: str,
    *,
    axis: str = "recorded",
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> list[audit_service_pb2.LedgerEntry]:
    """Every entry ``ListMovements`` answers for the position, page after page."""
    entries: list[Any] = []
    token = ""
    while True:
        page = client.list_movements(
            sku, location_id, axis=axis, start=start, end=end, page_size=100, page_token=token
        )
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries


def _entry_type(entry: Any) -> str:
    name = audit_service_pb2.EntryType.Name(entry.type)
    return name.removeprefix("ENTRY_TYPE_").lower()


def running_balances(entries: Iterable[Any]) -> list[dict[str, int]]:
    """The buckets after each entry, folded in the order given (contract §2), for the entry
    types the scripted history writes; any other type fails loudly rather than guess.

    Holds count while they hold: the history's reservations live two hours, longer than any
    test, so no expiry is judged here."""
    balance = dict.fromkeys(BUCKETS, 0)
    open_holds: dict[str, tuple[str, int]] = {}  # reservation id -> (bucket, open qty)
    rows = []
    for entry in entries:
        kind = _entry_type(entry)
        if kind == "opened":
            pass
        elif kind == "receipt":
            balance["receiving" if entry.putaway_pending else "on_hand"] += entry.qty
        elif kind == "putaway":
            balance["receiving"] -= entry.qty
            balance["on_hand"] += entry.qty
        elif kind == "shipment":
            balance["on_hand"] -= entry.qty
            if entry.reservation_id in open_holds:
                bucket, open_qty = open_holds[entry.reservation_id]
                taken = min(entry.qty, open_qty)
                balance[bucket] -= taken
                open_holds[entry.reservation_id] = (bucket, open_qty - taken)
        elif kind == "adjustment":
            balance["on_hand"] += entry.delta
        elif kind == "quarantine":
            balance["on_hand"] -= entry.qty
            balance["quarantine"] += entry.qty
        elif kind == "safety_stock_set":
            balance["safety_stock"] = entry.qty
        elif kind == "hold_placed":
            balance["reserved"] += entry.qty
            open_holds[entry.reservation_id] = ("reserved", entry.qty)
        elif kind == "hold_committed":
            _bucket, open_qty = open_holds[entry.reservation_id]
            balance["reserved"] -= open_qty
            balance["allocated"] += open_qty
            open_holds[entry.reservation_id] = ("allocated", open_qty)
        elif kind == "hold_released":
            bucket, open_qty = open_holds.pop(entry.reservation_id)
            balance[bucket] -= open_qty
        else:
            raise AssertionError(f"the reference fold does not know entry type {kind!r}")
        row = dict(balance)
        promised = balance["reserved"] + balance["allocated"] + balance["safety_stock"]
        row["available"] = balance["on_hand"] - promised
        rows.append(row)
    return rows
