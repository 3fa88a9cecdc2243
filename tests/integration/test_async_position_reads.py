"""GetPosition's store read awaited on the event loop (PostgreSQL): the same positions as
the threaded read, cached or not, and a store outage reported as the threaded read reports
it (UNAVAILABLE), not as an internal error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import psycopg
import pytest
from eventsourcing.persistence import OperationalError, StoredEvent

from ledger.domain.movements import Movement, MovementType
from ledger.domain.position import position_id
from ledger.read_cache import ReadCache
from ledger.service import LedgerService
from ledger.store.async_ranges import AsyncRangeReader
from ledger.store.index_ops import FROM_SNAPSHOT, EventRange
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
    reader = AsyncRangeReader(conninfo, b"SELECT 1", connection_wait=1.0)

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


def _rows(events: list[StoredEvent]) -> list[tuple[object, int, str]]:
    return [(e.originator_id, e.originator_version, e.topic) for e in events]


def test_reads_that_wait_for_a_connection_share_a_statement_and_get_their_own_rows(
    service: LedgerService,
) -> None:
    """While every connection is busy, the reads asked for go out together on the next one
    freed; a read that wants an aggregate from another version than a read already waiting
    goes in the statement after; a caller that gives up does not take the others' answers
    with it."""
    service.record_movements(
        CTX, [Movement("a", f"r-share-{s}", MovementType.RECEIPT, s, "DC", qty=50) for s in SKUS]
    ).result()
    for n in range(6):
        _reserve(service, n)
    pooled, reader = _one_connection_reader(service)
    first, second, third = (position_id(s, "DC") for s in SKUS[:3])
    everything = 2**31 - 1
    asks: list[list[EventRange]] = [
        [(first, 0, everything)],
        [(second, FROM_SNAPSHOT, everything), (third, 0, everything)],
        [(first, 0, everything)],  # the same range again: the same statement
        [(first, 2, everything)],  # another range of an aggregate waiting: the next one
        [(position_id("NEVER-RECEIVED", "DC"), 0, everything)],
    ]
    statements: list[list[EventRange]] = []
    select_one = reader._select

    async def counted(ranges: Sequence[EventRange]) -> list[StoredEvent]:
        statements.append(list(ranges))
        return await select_one(ranges)

    async def scenario() -> None:
        try:
            alone = [await select_one(ranges) for ranges in asks]  # one statement each
            reader._select = counted  # type: ignore[method-assign]
            busy = asyncio.ensure_future(reader.select([(second, 0, everything)]))
            await asyncio.sleep(0)  # it holds the one connection
            gave_up = asyncio.ensure_future(reader.select([(third, 0, everything)]))
            together = asyncio.gather(*(reader.select(ranges) for ranges in asks))
            await asyncio.sleep(0)  # all asked for, none sent yet
            gave_up.cancel()
            shared = await together
            assert [_rows(s) for s in shared] == [_rows(a) for a in alone]
            assert len(shared[3]) == len(shared[0]) - 2 > 0 and shared[4] == []
            assert len(await busy) > 0
            # The busy read; three aggregates (the one given up on included); the other
            # range of the first aggregate with the read asked for after it.
            assert [len(s) for s in statements] == [1, 3, 2], statements
            assert gave_up.cancelled()
            # Unloaded, a read goes out at once, on its own.
            assert _rows(await reader.select(asks[0])) == _rows(alone[0])
            assert len(statements) == 4
        finally:
            await reader.close()
            await pooled.close()

    asyncio.run(scenario())


def _one_connection_reader(
    service: LedgerService, connection_wait: float = 20.0
) -> tuple[AsyncRangeReader, AsyncRangeReader]:
    pooled = service.app.ledger_recorder.async_range_reader()
    assert isinstance(pooled, AsyncRangeReader)
    reader = AsyncRangeReader(
        pooled._conninfo, pooled._statement, max_connections=1, connection_wait=connection_wait
    )
    return pooled, reader


def test_reads_still_waiting_when_the_reader_closes_fail_as_unavailable(
    service: LedgerService,
) -> None:
    service.record_movements(
        CTX, [Movement("a", "r-close", MovementType.RECEIPT, SKUS[0], "DC", qty=5)]
    ).result()
    pooled, reader = _one_connection_reader(service)
    wanted: list[EventRange] = [(position_id(SKUS[0], "DC"), 0, 2**31 - 1)]

    async def scenario() -> None:
        assert await reader.select(wanted)  # the pool is open
        busy = asyncio.ensure_future(reader.select(wanted))
        await asyncio.sleep(0)  # it holds the one connection
        waiting = asyncio.ensure_future(reader.select(wanted))
        await asyncio.sleep(0)
        assert reader._waiting, "the second read should be waiting for the connection"
        await reader.close()
        with pytest.raises(OperationalError, match="the reader closed"):
            await asyncio.wait_for(waiting, timeout=20)
        await asyncio.gather(busy, return_exceptions=True)
        with pytest.raises(OperationalError, match="is closed"):
            await reader.select(wanted)
        assert reader._pool is None  # nothing reopened it
        await pooled.close()

    asyncio.run(scenario())


def test_reads_waiting_behind_a_stuck_statement_are_unavailable_not_hung(
    service: LedgerService, postgres_database_url: str
) -> None:
    """A statement blocked (here behind an exclusive lock on the events table): the reads
    queued behind it fail as a read waiting on the pool would, and the blocked one still
    gets its answer once the lock goes."""
    service.record_movements(
        CTX, [Movement("a", "r-stuck", MovementType.RECEIPT, SKUS[0], "DC", qty=5)]
    ).result()
    pooled, reader = _one_connection_reader(service, connection_wait=0.5)
    wanted: list[EventRange] = [(position_id(SKUS[0], "DC"), 0, 2**31 - 1)]

    async def scenario() -> None:
        try:
            expected = len(await reader.select(wanted))  # the pool is open
            assert expected > 0
            with psycopg.connect(postgres_database_url) as locker:
                locker.execute("LOCK TABLE ledger_events IN ACCESS EXCLUSIVE MODE")
                blocked = asyncio.ensure_future(reader.select(wanted))
                await asyncio.sleep(0.2)
                assert not blocked.done()
                with pytest.raises(OperationalError, match=r"no connection free in 0\.5 s"):
                    await asyncio.wait_for(reader.select(wanted), timeout=20)
                locker.rollback()
            assert len(await asyncio.wait_for(blocked, timeout=20)) == expected
            assert reader._in_flight == 0 and not reader._waiting
            assert len(await reader.select(wanted)) == expected  # and the reader still reads
        finally:
            await reader.close()
            await pooled.close()

    asyncio.run(scenario())
