"""The item-master read model (issue 19): each SKU's tracking, folded from the item-policy
events by the projection runner and rebuilt by ``ledger projections rebuild``, on SQLite
and PostgreSQL.

Method: a real service records item policies (one SKU set LOT, one set NONE and later, in a
batch of its own, SERIAL, so the fold updates a row stored by an earlier batch); a runner
applies them; ``tracking_of`` must answer as GetItemPolicy does, with NONE for an unknown
SKU, in one call. Then a real rebuild from position 0 must serve the same rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.domain.item_policy import Tracking
from ledger.domain.movements import Movement, MovementType
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from projections.queries import ReadModelQueries
from projections.runner import ProjectionRunner
from projections.store import ReadModelStore
from tests.integration.test_projection_rebuild import cli_rebuild

CTX = CallContext("item-master-test", "corr")


@pytest.fixture
def projected(database_url: str) -> Iterator[tuple[LedgerService, ReadModelStore]]:
    service = LedgerService.open(database_url)
    store = ReadModelStore(database_url)
    try:
        yield service, store
    finally:
        service.close()
        store.close()


def test_tracking_follows_item_policies_and_survives_rebuild(
    projected: tuple[LedgerService, ReadModelStore], database_url: str
) -> None:
    service, store = projected
    runner = ProjectionRunner(service.app, store)
    queries = ReadModelQueries(service, store, runner)
    skus = ["LOT-1", "SER-1", "PLAIN-1", "UNKNOWN-1"]

    lot = service.set_item_policy(CTX, "ip-lot", "LOT-1", Tracking.LOT).result()
    service.set_item_policy(CTX, "ip-none", "SER-1", Tracking.NONE).result()
    receipt = Movement("t", "m-1", MovementType.RECEIPT, "PLAIN-1", "DC-1", qty=5)
    service.record_movements(CTX, [receipt]).result()
    assert queries.tracking_of(skus) == dict.fromkeys(skus, Tracking.NONE)  # not applied yet

    runner.catch_up()
    assert queries.tracking_of(skus, min_position=lot.ledger_position) == {
        "LOT-1": Tracking.LOT,
        "SER-1": Tracking.NONE,
        "PLAIN-1": Tracking.NONE,
        "UNKNOWN-1": Tracking.NONE,
    }

    # SER-1's row is stored; this batch holds only its Set, which carries no SKU.
    serial = service.set_item_policy(CTX, "ip-serial", "SER-1", Tracking.SERIAL).result()
    runner.catch_up()
    assert queries.tracking_of(["SER-1", "LOT-1"]) == {
        "SER-1": Tracking.SERIAL,
        "LOT-1": Tracking.LOT,
    }
    assert queries.tracking_of([]) == {}
    before = store.rows()
    assert [row[1:] for row in sorted(before.items, key=lambda r: r[1])] == [
        ("LOT-1", "LOT", lot.version, lot.ledger_position),
        ("SER-1", "SERIAL", serial.version, serial.ledger_position),
    ]
    assert serial.version == 2  # NONE, then SERIAL: as GetItemPolicy counts

    rebuilt = cli_rebuild(database_url)
    assert rebuilt.returncode == 0, rebuilt.stderr
    after = store.rows()
    assert after.generation > before.generation
    assert after.items == before.items
    assert queries.tracking_of(skus) == {
        "LOT-1": Tracking.LOT,
        "SER-1": Tracking.SERIAL,
        "PLAIN-1": Tracking.NONE,
        "UNKNOWN-1": Tracking.NONE,
    }
