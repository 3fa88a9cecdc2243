"""GetPosition's store read awaited on the event loop (PostgreSQL): the same positions as
the threaded read, cached or not, and a store outage reported as the threaded read reports
it (UNAVAILABLE), not as an internal error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psycopg
import pytest
from eventsourcing.persistence import OperationalError

from ledger.domain.movements import Movement, MovementType
from ledger.domain.position import position_id
from ledger.read_cache import ReadCache
from ledger.service import LedgerService
from ledger.store.async_ranges import AsyncRangeReader
from ledger.use_cases.context import CallContext
from tests.support.reservations import one_unit

CTX = CallContext("async-reads", "corr")
SKUS = [f"ASYNC-{n}" for n in range(4)]


@pytest.fixture
def service(postgres_database_url: str) -> Iterator[LedgerService]:
    service = LedgerService.open(postgres_database_url)
    yield service
    service.close()


def _reserve(service: LedgerService, n: int) -> None:
    service.reserve(CTX, one_unit(f"q-{n}", f"o-{n}", SKUS[n % 2], "DC")).result()


def test_awaited_reads_equal_threaded_reads_cached_or_not(service: LedgerService) -> None:
    service.record_movements(
        CTX, [Movement("a", f"r-{s}", MovementType.RECEIPT, s, "DC", qty=50) for s in SKUS[:3]]
    ).result()
    for n in range(6):
        _reserve(service, n)
    reader = service.app.ledger_recorder.async_range_reader()
    assert isinstance(reader, AsyncRangeReader)
    ids = [position_id(s, "DC") for s in SKUS]  # SKUS[3] was never received: absent

    async def scenario() -> None:
        try:
            awaited = ReadCache(service.app)
            first = await awaited.get_many_async(ids, reader.select)  # nothing cached
            threaded = ReadCache(service.app).get_many(ids)
            assert [vars(a) if a else a for a in first] == [vars(t) if t else t for t in threaded]
            assert first[3] is None
            assert first[0].reserved(service.clock()) == 3
            for n in range(6, 9):  # newer events: the cached ones are fast-forwarded
                _reserve(service, n)
            again = await awaited.get_many_async(ids, reader.select)
            fresh = ReadCache(service.app).get_many(ids)
            assert [vars(a) if a else a for a in again] == [vars(f) if f else f for f in fresh]
            assert again[1].reserved(service.clock()) == 4
            view = await service.get_position_async(SKUS[0], "DC", reader.select)
            assert view == service.get_position(SKUS[0], "DC")
        finally:
            await reader.close()

    asyncio.run(scenario())


def test_an_unreachable_store_is_an_operational_error(service: LedgerService) -> None:
    conninfo = {"host": "127.0.0.1", "port": 1, "dbname": "none", "connect_timeout": 1}
    reader = AsyncRangeReader(conninfo, b"SELECT 1")

    async def scenario() -> None:
        try:
            with pytest.raises(OperationalError):
                await asyncio.wait_for(reader.select([(position_id("X", "DC"), 0, 1)]), timeout=20)
        finally:
            await reader.close()

    asyncio.run(scenario())


def test_a_connection_the_server_dropped_is_replaced_not_reported(
    service: LedgerService, postgres_database_url: str
) -> None:
    """After a PostgreSQL restart or an idle session killed, the pool's connection is dead
    until used: that read is retried once on a new connection, not failed UNAVAILABLE."""
    service.record_movements(
        CTX, [Movement("a", "r-drop", MovementType.RECEIPT, SKUS[0], "DC", qty=5)]
    ).result()
    reader = service.app.ledger_recorder.async_range_reader()
    assert isinstance(reader, AsyncRangeReader)
    pid = position_id(SKUS[0], "DC")

    async def scenario() -> None:
        try:
            assert len(await reader.select([(pid, 0, 1)])) == 1
            with psycopg.connect(postgres_database_url, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchone()
            assert killed is not None and killed[0] >= 1
            assert len(await reader.select([(pid, 0, 1)])) == 1
        finally:
            await reader.close()

    asyncio.run(scenario())
