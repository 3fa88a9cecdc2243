"""ListExceptions with ``expiring_within`` (issue 19): the lots expiring soon that still hold
stock, computed at call time from the read model, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2
from inventory.ledger.v1 import availability_pb2, item_policy_pb2, policy_service_pb2
from inventory.ledger.v1 import query_service_pb2 as q

from tests.integration.test_grpc_ledger import (
    RECORDED,
    Client,
    assert_invalid,
    failure,
    movement,
)
from tests.integration.test_read_models_api import availability, served  # noqa: F401

SKU, OTHER = "EXP-1", "EXP-2"


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _window(delta: timedelta) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(delta.total_seconds()))


def _lot_skus(client: Client, *skus: str) -> None:
    for sku in skus:
        client.policies.SetItemPolicy(
            policy_service_pb2.SetItemPolicyRequest(
                request_id=f"lot-{sku}", sku=sku, tracking=item_policy_pb2.ITEM_TRACKING_LOT
            ),
            timeout=5,
        )


def _listed(client: Client, **fields: object) -> list[tuple[str, str, str, int]]:
    """(sku, location, detail's lot id, quantity) of every entry, after checking its type."""
    answer = client.query.ListExceptions(q.ListExceptionsRequest(**fields), timeout=10)
    assert not answer.next_page_token
    assert {e.type for e in answer.exceptions} <= {availability_pb2.EXCEPTION_TYPE_LOT_EXPIRING}
    return [(e.sku, e.location_id, e.detail.split()[1], e.quantity) for e in answer.exceptions]


def test_lots_expiring_within_a_window_are_listed(served: Client) -> None:  # noqa: F811
    now = datetime.now(UTC).replace(microsecond=0)
    hour, days3, days4 = now + timedelta(hours=1), now + timedelta(days=3), now + timedelta(days=4)
    _lot_skus(served, SKU, OTHER)
    results = served.record(
        movement("receipt", SKU, "DC-1", qty=5, lot_id="L-1H", expires_at=_stamp(hour)),
        # Still being put away: counted as stock, reported in the detail.
        movement(
            "receipt",
            SKU,
            "DC-1",
            qty=2,
            lot_id="L-1H",
            expires_at=_stamp(hour),
            putaway_pending=True,
        ),
        movement("receipt", SKU, "DC-1", qty=4, lot_id="L-3D", expires_at=_stamp(days3)),
        movement("receipt", SKU, "DC-2", qty=1, lot_id="L-3D", expires_at=_stamp(days3)),
        movement("receipt", SKU, "DC-1", qty=3, lot_id="L-NEVER"),
        movement(
            "receipt",
            SKU,
            "DC-1",
            qty=6,
            lot_id="L-OLD",
            expires_at=_stamp(now - timedelta(hours=1)),
        ),
        # Only damaged stock left: not listed.
        movement("receipt", SKU, "DC-2", qty=2, lot_id="L-DMG", expires_at=_stamp(hour)),
        movement("damage", SKU, "DC-2", qty=2, lot_id="L-DMG"),
        # Sold out: not listed.
        movement("receipt", OTHER, "DC-1", qty=1, lot_id="M-GONE", expires_at=_stamp(hour)),
        movement("shipment", OTHER, "DC-1", qty=1, lot_id="M-GONE"),
        movement("receipt", OTHER, "DC-1", qty=7, lot_id="M-4D", expires_at=_stamp(days4)),
    )
    assert {r.outcome for r in results} == {RECORDED}, results
    head = max(r.ledger_position for r in results)
    availability(served, SKU, min_position=head)

    two_days = served.query.ListExceptions(
        q.ListExceptionsRequest(expiring_within=_window(timedelta(days=2))), timeout=10
    )
    assert len(two_days.exceptions) == 1
    first = two_days.exceptions[0]
    assert (first.type, first.sku, first.location_id, first.bucket, first.quantity) == (
        availability_pb2.EXCEPTION_TYPE_LOT_EXPIRING,
        SKU,
        "DC-1",
        "on_hand",
        5,
    )
    assert first.detail == f"lot L-1H expires {hour.isoformat()}; receiving 2"
    assert first.occurred_at.ToDatetime(tzinfo=UTC) == hour
    assert first.ledger_position >= head

    five_days = [
        (SKU, "DC-1", "L-1H", 5),
        (SKU, "DC-1", "L-3D", 4),
        (SKU, "DC-2", "L-3D", 1),
        (OTHER, "DC-1", "M-4D", 7),
    ]
    assert _listed(served, expiring_within=_window(timedelta(days=5))) == five_days
    # Filters, and `type` LOT_EXPIRING is accepted with the window.
    assert _listed(
        served,
        expiring_within=_window(timedelta(days=5)),
        sku=SKU,
        location_id="DC-2",
        type=availability_pb2.EXCEPTION_TYPE_LOT_EXPIRING,
    ) == [(SKU, "DC-2", "L-3D", 1)]
    assert _listed(served, expiring_within=_window(timedelta(days=5)), location_id="DC-1") == [
        five_days[0],
        five_days[1],
        five_days[3],
    ]
    # Not recorded: the plain listing has none of them.
    assert _listed(served, type=availability_pb2.EXCEPTION_TYPE_LOT_EXPIRING) == []

    # Paging by (expiry, sku, location, lot); the token is bound to the window.
    request = q.ListExceptionsRequest(expiring_within=_window(timedelta(days=5)), page_size=3)
    pages = served.list_all(served.query.ListExceptions, request, "exceptions")
    assert [len(page) for page in pages] == [3, 1]
    assert [(e.sku, e.location_id, e.detail.split()[1], e.quantity) for p in pages for e in p] == (
        five_days
    )
    request.page_token = ""  # list_all left the last page's token in it
    token = served.query.ListExceptions(request, timeout=10).next_page_token
    assert token
    assert_invalid(
        failure(
            served.query.ListExceptions,
            q.ListExceptionsRequest(
                expiring_within=_window(timedelta(days=6)), page_size=3, page_token=token
            ),
        ),
        "page_token",
    )
    assert_invalid(
        failure(
            served.query.ListExceptions,
            q.ListExceptionsRequest(
                type=availability_pb2.EXCEPTION_TYPE_STALE_COUNT, page_token=token
            ),
        ),
        "page_token",
    )
