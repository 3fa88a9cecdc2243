"""Writers in different processes take turns (ledger.store.writer_mutex): two writers over
one PostgreSQL racing for one hot position lose no batch to a conflict, oversell nothing,
and a writer waiting for its turn gets it as soon as the holder commits or dies."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from ledger.application import InventoryLedger
from ledger.config import eventsourcing_env
from ledger.domain.errors import InsufficientAvailability
from ledger.domain.movements import Movement, MovementType
from ledger.metrics.definitions import REGISTRY
from ledger.service import LedgerService
from ledger.store.writer_mutex import PostgresWriterMutex
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput, ReserveLine

pytestmark = pytest.mark.postgres
CTX = CallContext("writer-mutex-test", "corr")
STOCK = 60


def _conflicts() -> float:
    return REGISTRY.get_sample_value("ledger_write_conflicts_total") or 0.0


def _reserve(request_id: str) -> ReserveInput:
    return ReserveInput(
        request_id=request_id,
        channel="web",
        order_ref=request_id,
        lines=(ReserveLine("HOT", "DC", 1),),
        ttl=timedelta(minutes=10),
    )


def test_two_writers_on_one_hot_position_lose_nothing_to_conflicts(
    replicas: tuple[LedgerService, LedgerService],
) -> None:
    first, second = replicas
    first.record_movements(
        CTX, [Movement("seed", "hot", MovementType.RECEIPT, "HOT", "DC", qty=STOCK)]
    ).result()
    conflicts_before = _conflicts()
    outcomes: list[object] = []
    lock = threading.Lock()

    def client(service: LedgerService, name: str) -> None:
        # Many calls in flight per writer, so both group-commit and race each other.
        futures = [service.reserve(CTX, _reserve(f"{name}-{n}")) for n in range(50)]
        results = [f.exception() or f.result() for f in futures]
        with lock:
            outcomes.extend(results)

    threads = [
        threading.Thread(target=client, args=(service, f"{label}{t}"))
        for label, service in (("a", first), ("b", second))
        for t in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(outcomes) == 200
    assert len(won) == STOCK  # every unit, once: no oversell, no unit left unsold
    assert all(isinstance(error, InsufficientAvailability) for error in lost), lost[:3]
    position = second.get_position("HOT", "DC")
    assert (position.on_hand, position.reserved) == (STOCK, STOCK)
    # Turn-taking: no batch of either writer was lost to the other and re-run.
    assert _conflicts() == conflicts_before


def _mutex(url: str) -> PostgresWriterMutex:
    app = InventoryLedger(eventsourcing_env(url))
    try:
        return app.writer_mutex()  # type: ignore[return-value]
    finally:
        app.close()


def test_a_waiting_writer_gets_its_turn_when_the_holder_commits_or_dies(
    postgres_database_url: str,
) -> None:
    holder, waiter = _mutex(postgres_database_url), _mutex(postgres_database_url)
    got_turn = threading.Event()

    def wait_for_turn() -> None:
        with waiter.hold():
            got_turn.set()

    try:
        # The holder finishes its turn: the waiter goes next.
        with holder.hold():
            thread = threading.Thread(target=wait_for_turn)
            thread.start()
            assert not got_turn.wait(0.5), "two writers held the turn at once"
        assert got_turn.wait(10)
        thread.join(10)

        # The holder's session dies mid-turn (a killed replica): the server ends its
        # transaction, and the lock with it.
        got_turn.clear()
        turn = holder.hold()
        turn.__enter__()
        thread = threading.Thread(target=wait_for_turn)
        thread.start()
        assert not got_turn.wait(0.5)
        holder._connection.close()  # type: ignore[union-attr]  # what a crash does
        assert got_turn.wait(10)
        thread.join(10)
        turn.__exit__(None, None, None)
        # And the dead holder reconnects for its next turn.
        started = time.monotonic()
        with holder.hold() as head:
            assert head is not None and head >= 0
        assert time.monotonic() - started < 5
    finally:
        holder.close()
        waiter.close()
