"""PolicyService.SetItemPolicy / GetItemPolicy against a real server (contract §2 item
tracking, §4.3), on SQLite and PostgreSQL."""

from __future__ import annotations

import grpc
import pytest
from inventory.ledger.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    item_policy_pb2,
    policy_service_pb2,
    query_service_pb2,
)

from testbed.projections import ProjectionsProcess
from testbed.server import LedgerProcess, stub
from tests.integration.test_grpc_ledger import (
    DOMAIN,
    RECORDED,
    Client,
    assert_invalid,
    failure,
    movement,
    status_details,
)

NONE = item_policy_pb2.ITEM_TRACKING_NONE
LOT = item_policy_pb2.ITEM_TRACKING_LOT
SERIAL = item_policy_pb2.ITEM_TRACKING_SERIAL


@pytest.fixture
def client(ledger: LedgerProcess) -> Client:
    return Client(ledger)


def set_policy(
    client: Client, request_id: str, sku: str, tracking: int
) -> item_policy_pb2.ItemPolicy:
    return client.policies.SetItemPolicy(
        policy_service_pb2.SetItemPolicyRequest(request_id=request_id, sku=sku, tracking=tracking),
        timeout=10,
    )


def get_policy(client: Client, sku: str) -> item_policy_pb2.ItemPolicy:
    return client.policies.GetItemPolicy(
        policy_service_pb2.GetItemPolicyRequest(sku=sku), timeout=10
    )


def assert_locked(error: grpc.RpcError, sku: str, tracking: str, requested: str) -> None:
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (error.code(), error.details())
    details = status_details(error)
    info = details["ErrorInfo"]
    assert (info.reason, info.domain) == ("ITEM_TRACKING_LOCKED", DOMAIN)
    assert dict(info.metadata) == {"sku": sku, "tracking": tracking, "requested": requested}
    assert [v.subject for v in details["PreconditionFailure"].violations] == [sku]


def record(client: Client, kind: str, sku: str, location_id: str, **fields: object) -> None:
    [result] = client.record(movement(kind, sku, location_id, **fields))
    assert result.outcome == RECORDED


def test_set_get_and_idempotent_replay(client: Client) -> None:
    sku = "SKU-IP-1"
    unknown = get_policy(client, sku)
    assert (unknown.sku, unknown.tracking, unknown.version, unknown.ledger_position) == (
        sku,
        NONE,
        0,
        0,
    )

    first = set_policy(client, "ip-1", sku, LOT)
    assert (first.sku, first.tracking, first.version) == (sku, LOT, 1)
    assert first.ledger_position > 0
    read = get_policy(client, sku)
    assert (read.tracking, read.version, read.ledger_position) == (LOT, 1, 0)

    # Same key, same payload: the first answer, nothing written.
    assert set_policy(client, "ip-1", sku, LOT) == first
    assert get_policy(client, sku).version == 1
    # Same key, other payload: ALREADY_EXISTS.
    reused = failure(set_policy, client, "ip-1", sku, SERIAL)
    assert reused.code() == grpc.StatusCode.ALREADY_EXISTS
    # Setting the tracking it has is allowed (and written) even with stock (a LOT SKU's
    # receipt names its lot).
    record(client, "receipt", sku, "DC-1", qty=3, lot_id="L-1")
    again = set_policy(client, "ip-2", sku, LOT)
    assert (again.tracking, again.version) == (LOT, 2)
    assert again.ledger_position > first.ledger_position

    # UNSPECIFIED means NONE; a SKU of its own is untouched by another's policy.
    other = set_policy(client, "ip-3", "SKU-IP-1b", item_policy_pb2.ITEM_TRACKING_UNSPECIFIED)
    assert other.tracking == NONE
    assert get_policy(client, sku).tracking == LOT


def test_tracking_leaves_none_only_without_stock(client: Client) -> None:
    sku = "SKU-IP-2"
    record(client, "receipt", sku, "DC-1", qty=4)
    assert_locked(failure(set_policy, client, "ip-10", sku, LOT), sku, "NONE", "LOT")

    # Stock in transit (and nowhere on hand) still counts.
    record(
        client, "transfer_dispatch", sku, "DC-1", qty=4, transfer_id="T-IP", to_location_id="DC-2"
    )
    assert client.buckets(sku, "DC-1")["on_hand"] == 0
    assert_locked(failure(set_policy, client, "ip-11", sku, SERIAL), sku, "NONE", "SERIAL")

    # A refused request is not remembered: the same key succeeds once the stock is gone.
    record(client, "transfer_receipt", sku, "DC-2", qty=4, transfer_id="T-IP", final=True)
    record(client, "shipment", sku, "DC-2", qty=4)
    assert client.buckets(sku, "DC-2")["on_hand"] == 0
    assert set_policy(client, "ip-11", sku, SERIAL).tracking == SERIAL
    assert get_policy(client, sku).tracking == SERIAL

    # SERIAL (or LOT) is never left, stock or not.
    assert_locked(failure(set_policy, client, "ip-12", sku, NONE), sku, "SERIAL", "NONE")
    assert_locked(failure(set_policy, client, "ip-13", sku, LOT), sku, "SERIAL", "LOT")
    assert get_policy(client, sku).tracking == SERIAL


def test_oversold_sku_counts_as_holding_stock(client: Client) -> None:
    sku = "SKU-IP-3"
    record(client, "shipment", sku, "DC-1", qty=2)  # facts are never refused: on_hand -2
    assert_locked(failure(set_policy, client, "ip-20", sku, LOT), sku, "NONE", "LOT")
    record(client, "receipt", sku, "DC-1", qty=2)
    assert set_policy(client, "ip-20", sku, LOT).tracking == LOT


def test_bad_input_names_the_field(client: Client) -> None:
    assert_invalid(failure(set_policy, client, "ip-30", "", LOT), "sku")
    assert_invalid(failure(set_policy, client, "", "SKU-IP-4", LOT), "request_id")
    assert_invalid(failure(set_policy, client, "ip-31", "SKU-IP-4", 99), "tracking")
    assert_invalid(failure(get_policy, client, ""), "sku")
    assert get_policy(client, "SKU-IP-4").version == 0  # nothing was written


def test_policy_events_pass_the_projection_and_the_audit(
    ledger: LedgerProcess, client: Client, database_url: str
) -> None:
    """Item-policy events sit in the global ledger beside the positions' events: the
    projection reads past them and the hash chain of the positions still verifies."""
    # On PostgreSQL `ledger serve` leaves the projections to their own process.
    external = database_url.startswith("postgresql")
    projections = ProjectionsProcess(database_url).start() if external else None
    try:
        sku = "SKU-IP-5"
        record(client, "receipt", sku, "DC-1", qty=2)
        record(client, "shipment", sku, "DC-1", qty=2)
        written = set_policy(client, "ip-40", sku, LOT)
        seen = client.query.GetAvailability(
            query_service_pb2.GetAvailabilityRequest(
                sku=sku, channel="web", min_position=written.ledger_position
            ),
            timeout=20,
        )
        assert seen.projection_position >= written.ledger_position
        assert seen.channel_available == 0
        audit = stub(ledger, audit_service_pb2_grpc.AuditServiceStub)
        progress = list(audit.VerifyLedger(audit_service_pb2.VerifyLedgerRequest(), timeout=60))
        assert progress[-1].done and progress[-1].ok
    finally:
        if projections is not None:
            assert projections.stop() == 0, projections.log_text()
            assert "Traceback" not in projections.log_text(), projections.log_text()
