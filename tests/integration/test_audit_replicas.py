"""Several writers over one PostgreSQL: the ledger order stays gap-free and recorded_at
never goes backwards along it, even when a replica's clock lags; a follower on one
replica sees the other replica's writes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from inventory.ledger.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
)

from ledger.audit.as_of import Axis
from ledger.domain.movements import Movement, MovementType
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from testbed.server import LedgerProcess, stub

pytestmark = pytest.mark.postgres
CTX = CallContext("replica-test", "corr")


class SkewedClock:
    def __init__(self, skew: timedelta) -> None:
        self.skew = skew

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.skew


@pytest.fixture
def two_writers(postgres_database_url: str) -> Iterator[tuple[LedgerService, LedgerService]]:
    ahead = LedgerService.open(postgres_database_url, SkewedClock(timedelta(0)))
    behind = LedgerService.open(postgres_database_url, SkewedClock(timedelta(seconds=-5)))
    try:
        yield ahead, behind
    finally:
        ahead.close()
        behind.close()


def _receipt(sku: str, n: int) -> Movement:
    return Movement(
        "replica", f"{sku}-{n}-{uuid.uuid4().hex[:6]}", MovementType.RECEIPT, sku, "DC", qty=1
    )


def test_recorded_at_never_decreases_along_the_ledger_with_a_lagging_replica(
    two_writers: tuple[LedgerService, LedgerService], postgres_database_url: str
) -> None:
    ahead, behind = two_writers
    failures: list[BaseException] = []
    rounds = 40
    # Deterministic first: the lagging writer commits right after the other one, so its
    # clock (five seconds behind) is older than the ledger's head and must be lifted.
    ahead.record_movements(CTX, [_receipt("FIRST-A", 0)]).result()
    behind.record_movements(CTX, [_receipt("FIRST-B", 0)]).result()

    def write(service: LedgerService, name: str) -> None:
        try:
            for n in range(rounds):
                # A shared hot position (version conflicts) and one of the writer's own.
                service.record_movements(CTX, [_receipt("HOT", n), _receipt(name, n)]).result()
        except BaseException as error:
            failures.append(error)

    threads = [
        threading.Thread(target=write, args=(ahead, "A")),
        threading.Thread(target=write, args=(behind, "B")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures

    with psycopg.connect(postgres_database_url) as conn:
        rows = conn.execute(
            "SELECT seq, recorded_at_us FROM ledger_entry_index ORDER BY seq"
        ).fetchall()
        first = dict(
            conn.execute(
                "SELECT p.sku, max(x.recorded_at_us) FROM ledger_entry_index x"
                " JOIN ledger_position_index p ON p.position_id = x.position_id"
                " WHERE p.sku LIKE 'FIRST-%' GROUP BY p.sku"
            ).fetchall()
        )
    # 2 first receipts (2 entries each), then 2 writers x 40 rounds x 2 receipts plus the
    # three concurrently written positions' opening entries.
    assert [seq for seq, _ in rows] == list(range(1, 4 + 2 * rounds * 2 + 3 + 1))
    recorded = [us for _, us in rows]
    assert recorded == sorted(recorded)
    assert (
        ahead.position_as_of(
            "HOT", "DC", datetime.now(UTC) + timedelta(seconds=1), Axis.RECORDED
        ).on_hand
        == 2 * rounds
    )
    # The lagging replica's entries were lifted to the ledger's time, not refused.
    assert behind.get_position("B", "DC").on_hand == rounds
    # Its clock said five seconds earlier; its entry carries the ledger's time instead.
    assert first["FIRST-B"] >= first["FIRST-A"]


def test_follower_on_one_replica_sees_writes_of_another(postgres_database_url: str) -> None:
    with (
        LedgerProcess(postgres_database_url) as first,
        LedgerProcess(postgres_database_url) as second,
    ):
        audit = stub(first, audit_service_pb2_grpc.AuditServiceStub)
        stream = audit.StreamLedger(audit_service_pb2.StreamLedgerRequest(follow=True), timeout=60)
        writer = stub(second, movement_service_pb2_grpc.MovementServiceStub)
        writer.RecordMovements(
            movement_service_pb2.RecordMovementsRequest(
                movements=[
                    movement_pb2.Movement(
                        source="replica",
                        message_id=f"r-{n}",
                        type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
                        sku=f"R{n}",
                        location_id="DC",
                        qty=1,
                    )
                    for n in range(3)
                ]
            ),
            timeout=30,
        )
        seen = []
        for entry in stream:
            seen.append((entry.position, entry.sku))
            if len(seen) == 6:
                break
        stream.cancel()
        assert [p for p, _ in seen] == [1, 2, 3, 4, 5, 6]
        assert {s for _, s in seen} == {"R0", "R1", "R2"}
