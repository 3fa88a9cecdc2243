"""A stale count of a SERIAL SKU changes nothing: not its quantities (STALE_COUNT) and not
the serial index either (decision recorded in docs/decisions.md)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.domain.errors import SerialNotFound
from ledger.domain.item_policy import Tracking
from ledger.domain.movements import Movement, MovementType
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext

START = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
CTX = CallContext("tester", "corr")


def test_a_stale_serial_count_leaves_the_index_alone() -> None:
    with tempfile.TemporaryDirectory() as directory:
        service = LedgerService.open(
            f"sqlite:///{Path(directory) / 'ledger.db'}", clock=lambda: START
        )
        try:
            service.set_item_policy(CTX, "serial-s", "S", Tracking.SERIAL).result()

            def count(message_id: str, at: datetime, serials: tuple[str, ...]) -> None:
                movement = Movement(
                    "wms",
                    message_id,
                    MovementType.CYCLE_COUNT,
                    "S",
                    "DC-1",
                    counted=len(serials),
                    occurred_at=at,
                    serial_numbers=serials,
                )
                [result] = service.record_movements(CTX, [movement]).result()
                assert result.outcome == "RECORDED"

            count("c-new", START - timedelta(hours=1), ("s1",))
            count("c-old", START - timedelta(hours=2), ("s2", "s3"))  # stale
            assert service.get_position("S", "DC-1").on_hand == 1
            assert service.get_serial("S", "s1").status == "IN_STOCK"
            for unit in ("s2", "s3"):
                with pytest.raises(SerialNotFound):
                    service.get_serial("S", unit)
        finally:
            service.close()
