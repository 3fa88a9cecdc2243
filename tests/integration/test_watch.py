"""WatchAvailability end to end: each change of channel_available, once, in order.

The server tests run against real processes in three set-ups:

* ``sqlite`` — ``ledger serve`` with the in-process projection runner (the watch follows the
  runner's batches);
* ``sqlite-external`` and ``postgres`` — ``ledger projections`` as a separate process and
  ``ledger serve --projections external`` (the watch polls the read model: the cross-process
  path of PostgreSQL deployments and API replicas).

The expiry sweeper is slowed to once an hour, so a value that rises when a hold expires is
known to come from the watch's timer, not from an EXPIRED event. At the end of the file,
tests of ``projections.watch.WatchHub`` itself (overflow, limits) need no server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2
from inventory.ledger.v1 import (
    availability_pb2,
    policy_service_pb2,
    query_service_pb2,
    query_service_pb2_grpc,
)

from entrypoints.grpc.rpc import _stream_status_for
from projections.position_state import ProjectedPosition
from projections.runner import ALL_SKUS
from projections.store import PositionRow
from projections.watch import (
    TooManyWatchers,
    WatchClosed,
    WatchHub,
    WatchOverflow,
)
from testbed.projections import ProjectionsProcess
from testbed.server import LedgerProcess
from tests.integration.test_grpc_ledger import (
    Client,
    assert_invalid,
    failure,
    line,
    movement,
    status_details,
)

ENV = {"LEDGER_EXPIRY_SWEEP_SECONDS": "3600"}
WAIT_SECONDS = 10.0
QUIET_SECONDS = 0.6  # > the poll interval (50 ms) + the external runner's poll (200 ms)
BACKENDS = ["sqlite", "sqlite-external", pytest.param("postgres", marks=pytest.mark.postgres)]


# ---- fixtures -----------------------------------------------------------------------------------


def _assert_clean(log: str) -> None:
    assert "Traceback" not in log and " ERROR " not in log, log


@contextlib.contextmanager
def _serving(url: str, external: bool) -> Iterator[LedgerProcess]:
    projections = ProjectionsProcess(url, env=ENV).start() if external else None
    ledger = LedgerProcess(
        url, env=ENV, extra_args=["--projections", "external" if external else "in-process"]
    )
    try:
        ledger.start()
        yield ledger
        if ledger.running:
            assert ledger.stop() == 0, ledger.log_text()
            assert "stopped" in ledger.log_text(), ledger.log_text()
        _assert_clean(ledger.log_text(all_runs=True))
        if projections is not None:
            assert projections.stop() == 0, projections.log_text()
            _assert_clean(projections.log_text())
    finally:
        ledger.close()
        if projections is not None:
            projections.close()


@pytest.fixture(params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerProcess]:
    if request.param.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("postgres_database_url")
    with _serving(url, external=request.param != "sqlite") as ledger:
        yield ledger


@pytest.fixture
def sqlite_served(tmp_path: Path) -> Iterator[LedgerProcess]:
    with _serving(f"sqlite:///{tmp_path / 'ledger.db'}", external=False) as ledger:
        yield ledger


@pytest.fixture
def client(served: LedgerProcess) -> Client:
    return Client(served)


class Watch:
    """One WatchAvailability stream, read on a thread into a queue."""

    def __init__(
        self,
        query: query_service_pb2_grpc.InventoryQueryServiceStub,
        channel: str,
        skus: list[str],
        metadata: Any = None,
    ) -> None:
        self.call = query.WatchAvailability(
            query_service_pb2.WatchAvailabilityRequest(channel=channel, skus=skus),
            metadata=metadata,
        )
        self.channel = channel
        self.seen: list[availability_pb2.AvailabilityChange] = []
        self._queue: queue.Queue[availability_pb2.AvailabilityChange] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for change in self.call:
                self._queue.put(change)
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.done.set()

    def next(self, timeout: float = WAIT_SECONDS) -> availability_pb2.AvailabilityChange:
        try:
            change = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no change within {timeout} s; so far {[_brief(c) for c in self.seen]};"
                f" stream error {self.error}"
            ) from None
        assert change.channel == self.channel
        if self.seen:
            assert change.projection_position >= max(c.projection_position for c in self.seen)
        self.seen.append(change)
        return change

    def expect(
        self, sku: str, value: int, *, after_position: int = 0
    ) -> availability_pb2.AvailabilityChange:
        change = self.next()
        assert (change.sku, change.channel_available, change.initial) == (sku, value, False), (
            _brief(change),
            [_brief(c) for c in self.seen],
        )
        assert change.projection_position >= after_position
        return change

    def expect_quiet(self, seconds: float = QUIET_SECONDS) -> None:
        time.sleep(seconds)
        assert self._queue.empty(), [_brief(c) for c in list(self._queue.queue)]

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(5)


def _brief(change: availability_pb2.AvailabilityChange) -> tuple[str, int, int, bool]:
    return (
        change.sku,
        change.previous_channel_available,
        change.channel_available,
        change.initial,
    )


def settle(client: Client) -> int:
    """Wait until the read models have applied everything recorded; returns that position."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        status = client.query.GetProjectionStatus(
            query_service_pb2.GetProjectionStatusRequest(), timeout=5
        )
        if status.applied_position >= status.head_position:
            return status.head_position
        assert time.monotonic() < deadline, status
        time.sleep(0.02)


def record(client: Client, kind: str, sku: str, location_id: str = "DC-1", **fields: Any) -> int:
    [result] = client.record(movement(kind, sku, location_id, **fields))
    return result.ledger_position


def availability(client: Client, sku: str, channel: str = "web") -> availability_pb2.Availability:
    return client.query.GetAvailability(
        query_service_pb2.GetAvailabilityRequest(sku=sku, channel=channel), timeout=5
    )


def assert_chained(seen: list[availability_pb2.AvailabilityChange]) -> None:
    """Per SKU: previous_channel_available is the value sent before, no value twice in a row,
    positions never go back."""
    last: dict[str, availability_pb2.AvailabilityChange] = {}
    for change in seen:
        before = last.get(change.sku)
        if before is None:
            assert change.initial and change.previous_channel_available == 0, _brief(change)
        else:
            assert not change.initial
            assert change.previous_channel_available == before.channel_available
            assert change.channel_available != before.channel_available
            assert change.projection_position >= before.projection_position
        last[change.sku] = change


# ---- through the server ------------------------------------------------------------------------


def test_each_change_once_in_order(client: Client) -> None:
    a, b, c = "W-A", 'W-B/"quoted" ✓', "W-UNWATCHED"
    record(client, "receipt", a, qty=10)
    record(client, "receipt", c, qty=4)
    settled_at = settle(client)

    watch = Watch(client.query, "web", [a, b, a], metadata=[("x-correlation-id", "watch-corr-1")])
    try:
        initial = [watch.next(), watch.next()]
        assert [_brief(m) for m in initial] == [(a, 0, 10, True), (b, 0, 0, True)]
        assert all(m.projection_position >= settled_at for m in initial)
        assert dict(watch.call.initial_metadata())["x-correlation-id"] == "watch-corr-1"

        position = record(client, "receipt", b, qty=5)
        watch.expect(b, 5, after_position=position)
        record(client, "receipt", c, qty=7)  # unwatched: nothing
        first = client.reserve(line(a, 3, "DC-1"))
        watch.expect(a, 7, after_position=first.ledger_position)
        second = client.reserve(line(a, 2, "DC-1"))
        watch.expect(a, 5, after_position=second.ledger_position)
        released = client.release(second.reservation_id)
        watch.expect(a, 7, after_position=released.ledger_position)
        client.commit(first.reservation_id)  # reserved → allocated: the same 7, nothing sent
        # Shipping the committed 3 lowers on_hand and allocated alike: still 7, nothing sent.
        record(client, "shipment", a, qty=3, reservation_id=first.reservation_id)
        position = record(client, "shipment", a, qty=2)
        watch.expect(a, 5, after_position=position)
        position = record(client, "receipt", b, qty=1)
        watch.expect(b, 6, after_position=position)
        other = client.reserve(line(b, 6, "DC-1"), channel="b2b")  # another channel's hold
        watch.expect(b, 0, after_position=other.ledger_position)
        watch.expect_quiet()
    finally:
        watch.close()

    assert [_brief(m) for m in watch.seen] == [
        (a, 0, 10, True),
        (b, 0, 0, True),
        (b, 0, 5, False),
        (a, 10, 7, False),
        (a, 7, 5, False),
        (a, 5, 7, False),
        (a, 7, 5, False),
        (b, 5, 6, False),
        (b, 6, 0, False),
    ]
    assert_chained(watch.seen)
    settle(client)
    assert availability(client, a).channel_available == 5
    assert availability(client, b).channel_available == 0


def test_a_burst_of_writes_is_delivered_in_order_never_backwards(client: Client) -> None:
    sku, writes = "W-BURST", 40
    watch = Watch(client.query, "web", [sku, "W-IDLE"])
    try:
        assert {_brief(watch.next()), _brief(watch.next())} == {
            (sku, 0, 0, True),
            ("W-IDLE", 0, 0, True),
        }
        for _ in range(writes):  # back to back: batches may fold several writes together
            record(client, "receipt", sku, qty=1)
        while watch.next().channel_available != writes:
            pass
        watch.expect_quiet()
    finally:
        watch.close()
    values = [m.channel_available for m in watch.seen if m.sku == sku]
    assert values == sorted(set(values)), values  # strictly rising: in order, no repeats
    assert values[-1] == writes
    assert_chained(watch.seen)


def test_an_expiring_hold_raises_the_value_without_any_event(client: Client) -> None:
    sku = "W-TTL"
    record(client, "receipt", sku, qty=10)
    settle(client)
    watch = Watch(client.query, "web", [sku])
    try:
        assert _brief(watch.next()) == (sku, 0, 10, True)
        reservation = client.reserve(line(sku, 4, "DC-1"), ttl=duration_pb2.Duration(seconds=1))
        held = watch.expect(sku, 6, after_position=reservation.ledger_position)
        head = settle(client)
        expires_at = reservation.expires_at.ToDatetime(tzinfo=UTC)
        risen = watch.expect(sku, 10)
        # Nothing was recorded meanwhile: the timer, not an event, brought the value back.
        assert risen.projection_position == held.projection_position == head
        assert settle(client) == head
        assert risen.changed_at.ToDatetime(tzinfo=UTC) >= expires_at
        assert risen.changed_at.ToDatetime(tzinfo=UTC) < expires_at + timedelta(seconds=2)
        watch.expect_quiet()
    finally:
        watch.close()
    assert_chained(watch.seen)


def test_channel_policy_changes_are_reflected(client: Client) -> None:
    a, b = "W-POL-A", "W-POL-B"
    record(client, "receipt", a, "DC-1", qty=10)
    record(client, "receipt", a, "DC-2", qty=6)
    record(client, "receipt", b, "DC-1", qty=3)
    settle(client)
    web = Watch(client.query, "web", [a, b])
    b2b = Watch(client.query, "b2b", [a])
    try:
        assert {_brief(web.next()), _brief(web.next())} == {(a, 0, 16, True), (b, 0, 3, True)}
        assert _brief(b2b.next()) == (a, 0, 16, True)

        def set_policy(**terms: Any) -> None:
            client.policies.SetChannelPolicy(
                policy_service_pb2.SetChannelPolicyRequest(
                    request_id=f"policy-{time.monotonic_ns()}", channel="web", **terms
                ),
                timeout=10,
            )

        set_policy(share_percent=50)  # floor(16 / 2) = 8, floor(3 / 2) = 1
        assert {_brief(web.next()), _brief(web.next())} == {(a, 16, 8, False), (b, 3, 1, False)}
        set_policy(eligible_location_ids=["DC-1"], buffer=2)  # 10 - 2 = 8, 3 - 2 = 1: no change
        set_policy(eligible_location_ids=["DC-1"], max_publish=5)  # min(10, 5), 3
        assert {_brief(web.next()), _brief(web.next())} == {(a, 8, 5, False), (b, 1, 3, False)}
        # DC-2 is not eligible for web: b2b sees the receipt, web does not.
        position = record(client, "receipt", a, "DC-2", qty=4)
        assert _brief(b2b.expect(a, 20, after_position=position)) == (a, 16, 20, False)
        web.expect_quiet()
        b2b.expect_quiet(0)
    finally:
        web.close()
        b2b.close()
    assert_chained(web.seen)
    assert_chained(b2b.seen)
    assert availability(client, a).channel_available == 5


def test_cancelling_ends_only_that_stream(served: LedgerProcess, client: Client) -> None:
    sku = "W-CANCEL"
    own_channel = grpc.insecure_channel(served.address)  # outlives served.stop()
    query = query_service_pb2_grpc.InventoryQueryServiceStub(own_channel)
    watches = [Watch(query, "web", [sku]) for _ in range(3)]
    for watch in watches:
        assert _brief(watch.next()) == (sku, 0, 0, True)
    watches[0].close()
    watches[1].close()
    assert watches[0].error is not None and watches[0].error.code() == grpc.StatusCode.CANCELLED
    record(client, "receipt", sku, qty=2)
    watches[2].expect(sku, 2)
    # Shutting down ends the remaining stream at once (UNAVAILABLE: watch again elsewhere).
    began = time.monotonic()
    assert served.stop() == 0, served.log_text()
    assert time.monotonic() - began < 4.0  # well within the 5 s grace
    assert watches[2].done.wait(5)
    assert watches[2].error is not None
    assert watches[2].error.code() == grpc.StatusCode.UNAVAILABLE, watches[2].error
    assert status_details(watches[2].error)["ErrorInfo"].reason == "WATCH_CLOSED"
    own_channel.close()
    _assert_clean(served.log_text())


def test_watch_arguments_are_validated(sqlite_served: LedgerProcess) -> None:
    client = Client(sqlite_served)

    def watch_error(channel: str, skus: list[str]) -> grpc.RpcError:
        return failure(
            lambda: list(
                client.query.WatchAvailability(
                    query_service_pb2.WatchAvailabilityRequest(channel=channel, skus=skus),
                    timeout=5,
                    metadata=[("x-correlation-id", "watch-bad-1")],
                )
            )
        )

    error = watch_error("Web!", ["A"])
    assert_invalid(error, "channel")
    assert dict(error.initial_metadata())["x-correlation-id"] == "watch-bad-1"
    assert_invalid(watch_error("", ["A"]), "channel")
    assert_invalid(watch_error("x" * 65, ["A"]), "channel")
    assert_invalid(watch_error("web", []), "skus")
    assert_invalid(watch_error("web", ["A", "B", "C", "bad\x07sku"]), "skus[3]")
    assert_invalid(watch_error("web", ["A", ""]), "skus[1]")
    assert_invalid(watch_error("web", ["x" * 129]), "skus[0]")
    assert_invalid(watch_error("web", [f"S-{i}" for i in range(1001)]), "skus")

    # 1000 entries (the maximum); a repeated SKU is watched (and reported) once.
    skus = [f"S-{i}" for i in range(998)]
    call = client.query.WatchAvailability(
        query_service_pb2.WatchAvailabilityRequest(channel="web", skus=[*skus, "S-7", "S-0"])
    )
    initial = [next(call) for _ in skus]
    assert [m.sku for m in initial] == skus
    assert all(m.initial and m.channel_available == 0 for m in initial)
    record(client, "receipt", "S-7", qty=3)
    change = next(call)
    assert (change.sku, change.channel_available, change.initial) == ("S-7", 3, False)
    call.cancel()


# ---- the hub on its own -------------------------------------------------------------------------


class FakeReadModel:
    """One location per SKU, on_hand settable; the applied position counts writes."""

    def __init__(self) -> None:
        self.position = 0
        self.on_hand: dict[str, int] = {}

    def set(self, sku: str, on_hand: int) -> None:
        self.position += 1
        self.on_hand[sku] = on_hand

    def applied_position(self) -> int:
        return self.position

    def positions_of_sku(self, sku: str) -> tuple[int, list[PositionRow]]:
        if sku not in self.on_hand:
            return self.position, []
        state = ProjectedPosition(sku, "DC-1")
        state.on_hand = self.on_hand[sku]
        return self.position, [PositionRow(f"id-{sku}", sku, "DC-1", state.to_json())]

    def policy_terms(self, channel: str) -> str | None:
        return json.dumps({"share_percent": 50}) if channel == "half" else None


class FakeRunner:
    def __init__(self) -> None:
        self.listeners: list[Any] = []

    def add_batch_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def batch(self, skus: set[str], position: int) -> None:
        for listener in self.listeners:
            listener(skus, position)


def _clock() -> datetime:
    return datetime.now(UTC)


def test_hub_sends_changes_only_and_ends_an_overflowing_watcher() -> None:
    async def scenario() -> None:
        store, runner = FakeReadModel(), FakeRunner()
        hub = WatchHub(store, _clock, runner=runner, queue_min=3, queue_per_sku=1)
        hub.start(asyncio.get_running_loop())
        try:
            store.set("A", 5)
            fast = hub.new_watcher("web", ["A", "B", "A"])
            half = hub.new_watcher("half", ["A"])
            slow = hub.new_watcher("web", ["A"])
            assert fast.skus == ("A", "B")
            initial = await asyncio.to_thread(hub.subscribe, fast)
            assert [(c.sku, c.channel_available, c.initial) for c in initial] == [
                ("A", 5, True),
                ("B", 0, True),
            ]
            assert [c.channel_available for c in await asyncio.to_thread(hub.subscribe, half)] == [
                2
            ]
            await asyncio.to_thread(hub.subscribe, slow)
            assert hub.watcher_count == 3

            changes = []
            for value in (6, 6, 7, 8, 9):
                store.set("A", value)
                runner.batch({"A", "Z"}, store.position)
                if value != 6 or not changes:
                    changes.append(await asyncio.wait_for(fast.next(), 5))
            assert fast.queue.empty()
            # The repeated 6 is no change; positions are the batches'.
            assert [
                (c.sku, c.previous_channel_available, c.channel_available) for c in changes
            ] == [
                ("A", 5, 6),
                ("A", 6, 7),
                ("A", 7, 8),
                ("A", 8, 9),
            ]
            assert [c.projection_position for c in changes] == [2, 4, 5, 6]
            store.set("B", 1)
            runner.batch({ALL_SKUS}, store.position)
            change = await asyncio.wait_for(fast.next(), 5)
            assert (change.sku, change.previous_channel_available, change.channel_available) == (
                "B",
                0,
                1,
            )
            # 50 %: 5, 6, 6, 7, 8, 9 publish 2, 3, 3, 3, 4, 4: two changes.
            halves = [(await asyncio.wait_for(half.next(), 5)).channel_available for _ in range(2)]
            assert halves == [3, 4]
            assert half.queue.empty()
            # `slow` never read: 4 changes into a queue of 3 end its stream.
            with pytest.raises(WatchOverflow):
                await asyncio.wait_for(slow.next(), 5)
            await asyncio.sleep(0.05)
            await asyncio.to_thread(hub.subscribe, hub.new_watcher("web", ["C"]))
            assert hub.watcher_count == 3  # `slow` was dropped
        finally:
            await hub.close()
        with pytest.raises(WatchClosed):
            await asyncio.wait_for(fast.next(), 5)

    asyncio.run(scenario())


def test_hub_bounds_watchers_and_polls_without_a_runner() -> None:
    async def scenario() -> None:
        store = FakeReadModel()
        hub = WatchHub(store, _clock, max_watchers=2, poll_seconds=0.01)
        hub.start(asyncio.get_running_loop())
        try:
            first, second = hub.new_watcher("web", ["A"]), hub.new_watcher("web", ["A"])
            await asyncio.to_thread(hub.subscribe, first)
            await asyncio.to_thread(hub.subscribe, second)
            with pytest.raises(TooManyWatchers):
                await asyncio.to_thread(hub.subscribe, hub.new_watcher("web", ["B"]))
            hub.unsubscribe(second)
            await asyncio.to_thread(hub.subscribe, hub.new_watcher("web", ["B"]))

            for value in (1, 2, 3):  # no runner: the hub notices the applied position move
                store.set("A", value)
                change = await asyncio.wait_for(first.next(), 5)
                assert (change.channel_available, change.projection_position) == (
                    value,
                    store.position,
                )
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_watch_failures_map_to_statuses() -> None:
    overflow = _stream_status_for(WatchOverflow("behind"), "c-1")
    assert overflow.code == code_pb2.RESOURCE_EXHAUSTED
    assert _stream_status_for(TooManyWatchers("full"), "c-1").code == code_pb2.RESOURCE_EXHAUSTED
    assert _stream_status_for(WatchClosed("bye"), "c-1").code == code_pb2.UNAVAILABLE
    assert _stream_status_for(ValueError("boom"), "c-1").code == code_pb2.INTERNAL
