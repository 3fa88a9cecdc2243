"""Strong reads from the service's position cache (issue 20) answer what a fresh replay
answers, across interleaved writes made in this process and by another one, and every
answer comes from one committed state (figures and holds agree)."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from inventory.ledger.v1 import (
    availability_pb2,
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
)

from ledger.domain.channel_policy import ChannelPolicy, channel_policy_id
from ledger.domain.errors import InsufficientAvailability
from ledger.domain.movements import Movement, MovementType
from ledger.domain.position import Position, position_id
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput, ReserveLine
from ledger.views import PositionView
from projections.availability import AvailabilityView, PolicyTerms, compute_availability
from projections.queries import ReadModelQueries
from projections.store import ReadModelStore
from testbed.server import LedgerProcess, stub

CTX = CallContext("strong-reads-test", "corr")
SKUS = ("S1", "S2")
LOCATIONS = ("L1", "L2", "L3")
_REPLAY = 2**31 - 1  # a version past any: the library rebuilds without its cache


def _replayed(service: LedgerService, aggregate_id: object) -> object | None:
    """The aggregate rebuilt from the store (newest snapshot and later events), no cache."""
    try:
        return service.app.repository.get(aggregate_id, version=_REPLAY)
    except Exception as error:  # AggregateNotFoundError: no events
        if type(error).__name__ != "AggregateNotFoundError":
            raise
        return None


def _fresh_view(service: LedgerService, sku: str, location: str) -> PositionView:
    position = _replayed(service, position_id(sku, location))
    if not isinstance(position, Position):
        return PositionView(sku=sku, location_id=location)
    return PositionView.of(position, service.clock(), include_holds=True)


def _fresh_availability(service: LedgerService, sku: str, channel: str) -> AvailabilityView:
    positions = [
        p
        for p in (_replayed(service, position_id(sku, loc)) for loc in LOCATIONS)
        if isinstance(p, Position)
    ]
    policy = _replayed(service, channel_policy_id(channel))
    terms = (
        PolicyTerms(
            list(policy.eligible_location_ids),
            policy.share_percent,
            policy.buffer,
            policy.max_publish,
        )
        if isinstance(policy, ChannelPolicy)
        else PolicyTerms()
    )
    return compute_availability(
        sku, channel, positions, terms, service.clock(), service.app.head_position()
    )


class Writes:
    """Random writes of every kind that changes a position's figures or holds."""

    def __init__(self, service: LedgerService, seed: int) -> None:
        self.service = service
        self.rng = random.Random(seed)
        self.n = 0
        self.open: list[str] = []  # reservations neither committed nor released
        self.done: dict[str, int] = {}  # writes made, by kind

    def step(self) -> None:
        self.n += 1
        rng, n = self.rng, self.n
        sku, location = rng.choice(SKUS), rng.choice(LOCATIONS)
        kind = rng.choice(["receipt", "receipt", "reserve", "reserve", "commit", "release"])
        kind = kind if kind in ("receipt", "reserve") or self.open else "receipt"
        self.done[kind] = self.done.get(kind, 0) + 1
        if kind == "receipt":
            qty = rng.randint(1, 5)
            self._move(Movement("t", f"m{n}", MovementType.RECEIPT, sku, location, qty=qty))
        elif kind == "reserve":
            request = ReserveInput(
                request_id=f"r{n}",
                channel=rng.choice(["web", "store"]),
                order_ref=f"o{n}",
                lines=(ReserveLine(sku, location, rng.randint(1, 3)),),
                ttl=timedelta(minutes=30),
            )
            with contextlib.suppress(InsufficientAvailability):  # a refusal writes nothing
                self.open.append(self.service.reserve(CTX, request).result().reservation_id)
        else:
            rid = self.open.pop(rng.randrange(len(self.open)))
            if kind == "commit":
                self.service.commit(CTX, f"c{n}", rid, "").result()
            else:
                self.service.release(CTX, f"x{n}", rid, "").result()
        if n % 7 == 0:
            self.service.set_channel_policy(CTX, f"p{n}", "web", ["L1", "L2"], 80, 1, 0).result()

    def _move(self, movement: Movement) -> None:
        self.service.record_movements(CTX, [movement]).result()


@pytest.fixture
def two_services(database_url: str) -> Iterator[tuple[LedgerService, LedgerService, str]]:
    """A writer and a reader over one store (two API replicas, in one process)."""
    writer, reader = LedgerService.open(database_url), LedgerService.open(database_url)
    try:
        yield writer, reader, database_url
    finally:
        writer.close()
        reader.close()


def test_strong_reads_equal_a_fresh_replay_across_interleaved_writes(
    two_services: tuple[LedgerService, LedgerService, str],
) -> None:
    writer, reader, url = two_services
    store = ReadModelStore(url)
    try:
        queries = {s: ReadModelQueries(s, store) for s in (writer, reader)}
        writes = Writes(writer, seed=20)
        for _ in range(120):
            writes.step()
            sku = writes.rng.choice(SKUS)
            for service in (writer, reader):  # the writer's own process, and a replica
                for location in LOCATIONS:
                    fresh = _fresh_view(reader, sku, location)
                    got = service.get_position(sku, location, include_holds=True)
                    assert got == fresh, (service is writer, sku, location)
                page = service.list_positions(
                    sku=sku, location_id=None, after=("", ""), page_size=10, include_holds=True
                )
                assert page.items == [
                    _fresh_view(reader, sku, v.location_id) for v in page.items
                ] and len(page.items) == len({v.location_id for v in page.items})
                for channel in ("web", "store"):
                    strong = queries[service].availability(sku, channel, strong=True)
                    assert strong == _fresh_availability(reader, sku, channel)
        # Some of every kind happened, or the comparison proved little.
        assert set(writes.done) == {"receipt", "reserve", "commit", "release"}
        assert reader.get_position("S1", "L1", include_holds=True).version > 5
    finally:
        store.close()


def test_a_read_racing_writes_sees_one_committed_state(
    two_services: tuple[LedgerService, LedgerService, str],
) -> None:
    """Readers on the pool's threads while the writer changes the same positions: each
    answer is the replay of the version it reports (never a mixture), and a thread never
    sees a position go back to an older version."""
    writer, reader, _ = two_services
    writes = Writes(writer, seed=7)
    stop = threading.Event()
    failures: list[BaseException] = []
    checked = [0]

    def read() -> None:
        last: dict[tuple[str, str], int] = {}
        try:
            while not stop.is_set():
                for sku in SKUS:
                    for location in LOCATIONS:
                        checked[0] += _check_one(reader, sku, location, last)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(80):
            writes.step()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not failures, failures[0]
    assert checked[0] > 20


def _check_one(
    reader: LedgerService, sku: str, location: str, last: dict[tuple[str, str], int]
) -> int:
    view = reader.get_position(sku, location, include_holds=True)
    assert view.version >= last.get((sku, location), 0)
    last[(sku, location)] = view.version
    if not view.version:
        return 0
    at = reader.app.repository.get(position_id(sku, location), version=view.version)
    assert view == PositionView.of(at, reader.clock(), include_holds=True)
    # The holds listed add up to the figures reported with them.
    assert view.reserved == sum(h.qty - h.shipped for h in view.holds if h.status == "ACTIVE")
    return 1


def _receipt(sku: str, n: int, qty: int) -> movement_pb2.Movement:
    return movement_pb2.Movement(
        source="replica",
        message_id=f"{sku}-{n}",
        type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
        sku=sku,
        location_id="DC",
        qty=qty,
    )


@pytest.mark.postgres
def test_strong_reads_through_one_server_see_writes_through_another_at_once(
    postgres_database_url: str,
) -> None:
    """Two ``ledger serve`` on one PostgreSQL: each write acknowledged by one is in the very
    next GetPosition and STRONG GetAvailability answered by the other, whose cache already
    held the position at an older version."""
    with (
        LedgerProcess(postgres_database_url) as first,
        LedgerProcess(postgres_database_url) as second,
    ):
        movements = stub(first, movement_service_pb2_grpc.MovementServiceStub)
        queries = stub(second, query_service_pb2_grpc.InventoryQueryServiceStub)
        total = version = 0
        for n in range(25):
            qty = n % 4 + 1
            movements.RecordMovements(
                movement_service_pb2.RecordMovementsRequest(movements=[_receipt("X", n, qty)]),
                timeout=30,
            )
            total += qty
            position = queries.GetPosition(
                query_service_pb2.GetPositionRequest(sku="X", location_id="DC"), timeout=30
            )
            assert position.on_hand == total and position.version > version
            version = position.version
            availability = queries.GetAvailability(
                query_service_pb2.GetAvailabilityRequest(
                    sku="X", channel="web", consistency=availability_pb2.CONSISTENCY_STRONG
                ),
                timeout=30,
            )
            assert availability.network_available == total


def test_a_published_aggregate_is_never_changed_and_an_unchanged_one_never_copied(
    two_services: tuple[LedgerService, LedgerService, str],
) -> None:
    writer, reader, _ = two_services
    receipt = Movement("t", "first", MovementType.RECEIPT, "S1", "L1", qty=3)
    writer.record_movements(CTX, [receipt]).result()
    pid = position_id("S1", "L1")
    before = reader.reads.get(pid)
    assert isinstance(before, Position) and reader.reads.get(pid) is before  # no copy
    version, on_hand = before.version, before.on_hand
    more = Movement("t", "more", MovementType.RECEIPT, "S1", "L1", qty=2)
    writer.record_movements(CTX, [more]).result()
    after = reader.reads.get(pid)
    # A reader still holding ``before`` (building its answer) sees it as it was.
    assert (before.version, before.on_hand) == (version, on_hand)
    assert isinstance(after, Position) and (after.on_hand, after.version > version) == (5, True)
