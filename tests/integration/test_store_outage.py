"""The database goes away under a running server: calls answer UNAVAILABLE (the one code
clients retry), health stays up, and once the database is back the same request ids settle
every call exactly once."""

from __future__ import annotations

import grpc
import pytest

from testbed.postgres import EmbeddedPostgres
from testbed.server import LedgerProcess
from tests.integration.test_grpc_ledger import (
    RECORDED,
    Client,
    expect,
    failure,
    line,
    movement,
    status_details,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_database_outage_gives_unavailable_then_recovers(own_postgres: EmbeddedPostgres) -> None:
    url = own_postgres.create_database("outage")
    with LedgerProcess(url) as ledger:
        client = Client(ledger)
        client.receive("S-OUT", "A", 10)

        own_postgres.kill()
        reserve_error = failure(client.reserve, line("S-OUT", 3, "A"), request_id="out-1")
        assert reserve_error.code() == grpc.StatusCode.UNAVAILABLE, reserve_error.details()
        details = status_details(reserve_error)
        assert details["ErrorInfo"].reason == "STORE_UNAVAILABLE"
        assert "RetryInfo" in details
        read_error = failure(client.position, "S-OUT", "A")
        assert read_error.code() == grpc.StatusCode.UNAVAILABLE, read_error.details()
        receipt = movement("receipt", "S-OUT", "A", qty=5, message_id="out-receipt")
        write_error = failure(client.record, receipt)
        assert write_error.code() == grpc.StatusCode.UNAVAILABLE

        own_postgres.restart()
        # Retrying with the same keys applies each call once.
        first = client.reserve(line("S-OUT", 3, "A"), request_id="out-1")
        again = client.reserve(line("S-OUT", 3, "A"), request_id="out-1")
        assert first == again
        assert [r.outcome for r in client.record(receipt)] == [RECORDED]
        assert client.buckets("S-OUT", "A") == expect(on_hand=15, reserved=3, available=12)
        log = ledger.log_text()
        assert "Traceback" not in log, log
