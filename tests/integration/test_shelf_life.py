"""Shelf life (issue 19 must-show 4): a lot expiring at T is promised before T and not after,
by STRONG and EVENTUAL GetAvailability, GetPosition and WatchAvailability — and the watcher
is told at T with nothing written.

Real servers in the three set-ups of test_watch (in-process runner on SQLite, external
runner on SQLite, PostgreSQL), the expiry sweeper slowed to once an hour as there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from inventory.ledger.v1 import (
    availability_pb2,
    item_policy_pb2,
    policy_service_pb2,
    query_service_pb2,
    reservation_service_pb2,
)

from tests.integration.test_grpc_ledger import Client, line, movement
from tests.integration.test_watch import BACKENDS, Watch, _brief, _serving, settle

LEAD = timedelta(seconds=4)  # time to record, settle and read everything before T


@pytest.fixture(params=BACKENDS)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    if request.param.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("postgres_database_url")
    with _serving(url, external=request.param != "sqlite") as ledger:
        yield Client(ledger)


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _availability(client: Client, sku: str, *, strong: bool) -> int:
    consistency = (
        availability_pb2.CONSISTENCY_STRONG if strong else availability_pb2.CONSISTENCY_EVENTUAL
    )
    answer = client.query.GetAvailability(
        query_service_pb2.GetAvailabilityRequest(sku=sku, channel="web", consistency=consistency),
        timeout=5,
    )
    return answer.channel_available


def _lot_sku(client: Client, sku: str) -> None:
    client.policies.SetItemPolicy(
        policy_service_pb2.SetItemPolicyRequest(
            request_id=f"lot-{sku}", sku=sku, tracking=item_policy_pb2.ITEM_TRACKING_LOT
        ),
        timeout=5,
    )


def _wait_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def test_a_lot_is_promised_until_it_expires_and_not_after(client: Client) -> None:
    sku = "SHELF-1"
    _lot_sku(client, sku)
    expires = datetime.now(UTC).replace(microsecond=0) + LEAD
    client.record(
        movement("receipt", sku, "DC-1", qty=5, lot_id="YOG-A", expires_at=_stamp(expires)),
        movement("receipt", sku, "DC-1", qty=3, lot_id="YOG-B"),  # never expires
    )
    head = settle(client)
    watch = Watch(client.query, "web", [sku])
    try:
        assert _brief(watch.next()) == (sku, 0, 8, True)
        # Before T: the expiring lot is promised everywhere.
        assert _availability(client, sku, strong=True) == 8
        assert _availability(client, sku, strong=False) == 8
        position = client.query.GetPosition(
            query_service_pb2.GetPositionRequest(sku=sku, location_id="DC-1"), timeout=5
        )
        assert (position.available, position.expired) == (8, 0)
        assert [(lot.lot_id, lot.available) for lot in position.lots] == [
            ("YOG-A", 5),
            ("YOG-B", 3),
        ]
        assert datetime.now(UTC) < expires, "the lead time was too short for this machine"

        # At T, with nothing written, the watcher is told and every read agrees.
        dropped = watch.expect(sku, 3)
        assert dropped.projection_position == head
        assert dropped.changed_at.ToDatetime(tzinfo=UTC) >= expires
        assert dropped.changed_at.ToDatetime(tzinfo=UTC) < expires + timedelta(seconds=2)
        assert settle(client) == head
        assert _availability(client, sku, strong=True) == 3
        assert _availability(client, sku, strong=False) == 3
        position = client.query.GetPosition(
            query_service_pb2.GetPositionRequest(sku=sku, location_id="DC-1"), timeout=5
        )
        assert (position.on_hand, position.available, position.expired) == (8, 3, 5)
        assert [(lot.lot_id, lot.available) for lot in position.lots] == [
            ("YOG-A", 0),
            ("YOG-B", 3),
        ]
        # And nothing binds the expired lot any more.
        reservation = client.reserve(line(sku, 3, "DC-1"))
        assert [(lot.lot_id, lot.qty) for lot in reservation.lines[0].lots] == [("YOG-B", 3)]
        watch.expect(sku, 0, after_position=reservation.ledger_position)
    finally:
        watch.close()


def test_min_expires_at_skips_lots_expiring_too_soon(client: Client) -> None:
    sku = "SHELF-2"
    _lot_sku(client, sku)
    now = datetime.now(UTC).replace(microsecond=0)
    soon, later = now + timedelta(days=2), now + timedelta(days=30)
    client.record(
        movement("receipt", sku, "DC-1", qty=4, lot_id="SOON", expires_at=_stamp(soon)),
        movement("receipt", sku, "DC-1", qty=4, lot_id="LATER", expires_at=_stamp(later)),
    )
    # FEFO without a floor: the sooner lot first.
    first = client.reserve(line(sku, 5, "DC-1"))
    assert [(lot.lot_id, lot.qty) for lot in first.lines[0].lots] == [("SOON", 4), ("LATER", 1)]
    # A floor of a week: only LATER qualifies, and it has 3 left.
    floor = reservation_line_with_floor(sku, 3, now + timedelta(days=7))
    second = client.reserve(floor)
    assert [(lot.lot_id, lot.qty) for lot in second.lines[0].lots] == [("LATER", 3)]
    assert [lot.expires_at.ToDatetime(tzinfo=UTC) for lot in second.lines[0].lots] == [later]


def reservation_line_with_floor(
    sku: str, qty: int, floor: datetime
) -> reservation_service_pb2.ReserveLine:
    request_line = line(sku, qty, "DC-1")
    request_line.min_expires_at.CopyFrom(_stamp(floor))
    return request_line
