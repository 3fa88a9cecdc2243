"""Eventual GetAvailability from memory (issue 20): the availability cache answers exactly
what the read model answers at the same position, across a random history with holds and
lots that expire, channel policies and evictions.

A ``ledger serve --projections external`` takes the writes over gRPC. This test process
holds its own :class:`ReadModelQueries` on the same database, fed like a server's:

* ``sqlite`` — a projection runner in this process (the in-process feed: change listener);
* ``sqlite-external`` — ``ledger projections`` in another process, the poll alone;
* ``postgres`` — ``ledger projections`` in another process, its NOTIFY payloads and the poll.

Each answer of the cache is compared with the database path's answer computed with the same
``now`` (moved past hold and lot expiries) whenever both stand at the same position.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from inventory.ledger.v1 import item_policy_pb2, policy_service_pb2

from ledger.service import LedgerService
from projections.availability import AvailabilityView
from projections.commit_listener import CommitListener
from projections.queries import ReadModelQueries
from projections.runner import ProjectionRunner
from projections.store import ReadModelStore
from testbed.projections import ProjectionsProcess
from testbed.server import LedgerProcess
from tests.integration.test_grpc_ledger import Client, line, movement, ts

BACKENDS = ["sqlite", "sqlite-external", pytest.param("postgres", marks=pytest.mark.postgres)]
PLAIN = ["PLAIN-1", "PLAIN-2", "PLAIN-3"]
LOTTED = ["LOT-1", "LOT-2"]
LOCATIONS = ["DC-1", "DC-2", "DC-3"]
CHANNELS = ["web", "b2b"]
STEPS = 60
CACHE_SKUS = 4  # fewer than the 5 SKUs: evictions happen
ENV = {"LEDGER_EXPIRY_SWEEP_SECONDS": "3600"}  # holds stop counting by time, not by events


class Clock:
    """The reader's clock: both paths compute at the same, chosen ``now``."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@contextlib.contextmanager
def _reader(url: str, mode: str, clock: Clock) -> Iterator[ReadModelQueries]:
    service = LedgerService.open(url, clock=clock)
    store = ReadModelStore(url)
    runner = ProjectionRunner(service.app, store, poll_seconds=0.02) if mode == "sqlite" else None
    projections = ProjectionsProcess(url).start() if runner is None else None
    read = ReadModelQueries(service, store, runner, cache_skus=CACHE_SKUS)
    listener = None
    if mode == "postgres":
        listener = CommitListener(url, store.applied_channel, lambda: None, read.on_notify)
        listener.start()
    if runner is None:
        read.follow_read_model(notified=listener is not None)
    else:
        runner.start()
    try:
        yield read
    finally:
        read.cache.stop()
        if listener is not None:
            listener.stop()
        if runner is not None:
            runner.stop()
        if projections is not None:
            assert projections.stop() == 0, projections.log_text()
            projections.close()
        service.close()
        store.close()


@pytest.fixture(params=BACKENDS)
def setup(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Client, ReadModelQueries, Clock, str]]:
    mode = request.param
    if mode.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("postgres_database_url")
    server = LedgerProcess(url, env=ENV, extra_args=["--projections", "external"])
    server.start()
    clock = Clock()
    try:
        with _reader(url, mode, clock) as read:
            yield Client(server), read, clock, mode
        assert server.stop() == 0, server.log_text()
    finally:
        server.close()


def _write(client: Client, rng: random.Random, lot_expiry: dict[str, datetime]) -> None:
    """One random write; refusals (not enough stock, ...) are part of the history."""
    kind = rng.choice(["receipt", "receipt", "lot", "reserve", "reserve", "ship", "policy"])
    location = rng.choice(LOCATIONS)
    try:
        if kind == "receipt":
            client.record(movement("receipt", rng.choice(PLAIN), location, qty=rng.randint(1, 9)))
        elif kind == "lot":
            lot = rng.choice(sorted(lot_expiry))
            client.record(
                movement(
                    "receipt",
                    rng.choice(LOTTED),
                    location,
                    qty=rng.randint(1, 9),
                    lot_id=lot,
                    expires_at=ts(lot_expiry[lot]),
                )
            )
        elif kind == "reserve":
            client.reserve(
                line(rng.choice(PLAIN + LOTTED), rng.randint(1, 4)),
                channel=rng.choice(CHANNELS),
                ttl=duration_pb2.Duration(seconds=rng.randint(1, 4)),
                allow_split=True,
            )
        elif kind == "ship":
            client.record(movement("shipment", rng.choice(PLAIN), location, qty=rng.randint(1, 3)))
        else:
            client.policies.SetChannelPolicy(
                policy_service_pb2.SetChannelPolicyRequest(
                    request_id=f"pol-{rng.random()}",
                    channel="b2b",
                    eligible_location_ids=rng.sample(LOCATIONS, rng.randint(1, 3)),
                    share_percent=rng.choice([50, 80, 100]),
                    buffer=rng.randint(0, 3),
                ),
                timeout=10,
            )
    except grpc.RpcError as error:
        assert error.code() in (
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.INVALID_ARGUMENT,
        ), error


def _compare(
    read: ReadModelQueries, clock: Clock, rng: random.Random, counts: dict[str, int]
) -> None:
    """Every SKU in every channel (shuffled, so the LRU keeps some), at a ``now`` up to 8 s
    ahead (past TTLs and lot expiries): the cache's answer, then the database's (which fills
    the cache for the next round)."""
    pairs = [(sku, channel) for sku in PLAIN + LOTTED for channel in CHANNELS]
    rng.shuffle(pairs)
    for sku, channel in pairs:
        clock.now = datetime.now(UTC) + timedelta(seconds=rng.uniform(0, 8))
        horizon = rng.choice([None, clock.now + timedelta(days=2)])
        cached = read.cached_availability(sku, channel, horizon=horizon)
        from_db = read.availability(sku, channel, horizon=horizon)
        if cached is not None:
            counts["hits"] += 1
            # Never ahead of what the read model has applied.
            assert cached.projection_position <= from_db.projection_position
            if cached.projection_position == from_db.projection_position:
                assert cached == from_db, (cached, from_db)
                counts["equal"] += 1
        # A position the cache has not reached is never answered from it.
        ahead = (read.cache.position or 0) + 1
        assert read.cached_availability(sku, channel, min_position=ahead) is None


def _settled(read: ReadModelQueries, client: Client) -> int:
    """Wait until the read model applied everything and the cache stands there too."""
    deadline = time.monotonic() + 15
    head = read.service.app.head_position()
    while True:
        applied = read.store.applied_position()
        if applied >= head:
            read.availability(PLAIN[0], "web")  # a read at the head lets the cache adopt it
            if read.cache.position == applied:
                return applied
        assert time.monotonic() < deadline, (head, applied, read.cache.position)
        time.sleep(0.05)


def test_cached_answers_equal_the_read_model_at_the_same_position(
    setup: tuple[Client, ReadModelQueries, Clock, str],
) -> None:
    client, read, clock, mode = setup
    rng = random.Random(f"availability-cache-{mode}")
    for sku in LOTTED:
        client.policies.SetItemPolicy(
            policy_service_pb2.SetItemPolicyRequest(
                request_id=f"lot-{sku}", sku=sku, tracking=item_policy_pb2.ITEM_TRACKING_LOT
            ),
            timeout=10,
        )
    start = datetime.now(UTC).replace(microsecond=0)
    lot_expiry = {
        "SOON": start + timedelta(seconds=3),
        "LATER": start + timedelta(seconds=7),
        "YEAR": start + timedelta(days=365),
    }
    counts = {"hits": 0, "equal": 0}
    for step in range(STEPS):
        _write(client, rng, lot_expiry)
        if step % 3 == 2:
            _compare(read, clock, rng, counts)
    # At rest: every SKU and channel is answered from memory, equal to the database path,
    # at a series of instants across the expiries.
    applied = _settled(read, client)
    for offset in (0, 2, 4, 8, 3600):
        clock.now = datetime.now(UTC) + timedelta(seconds=offset)
        for sku in PLAIN + LOTTED:
            for channel in CHANNELS:
                from_db = read.availability(sku, channel)
                cached = read.cached_availability(sku, channel)
                assert cached is not None, (sku, channel, read.cache.position, applied)
                assert cached == from_db
                counts["equal"] += 1
    assert isinstance(from_db, AvailabilityView)
    # The history did go through the cache, not only the final comparison.
    assert counts["hits"] > STEPS // 3, counts
    assert counts["equal"] > STEPS, counts
    assert read.cache.position == applied
    assert len(read.cache) <= CACHE_SKUS
