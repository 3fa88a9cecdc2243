"""RELIABILITY A7 and A9 against real nats-servers (issue 17).

A7, a batch slower than AckWait: two bridges, each with its own ``LedgerService`` over one
PostgreSQL (as two ``ledger ingest`` processes would be). The slow one reaches PostgreSQL
through a TCP proxy that is stalled before the batch arrives, so its commit waits on the
network like a database that answers late; it never reaches the server, so it holds neither
the writer mutex nor a lock. Without heartbeats (its ``heartbeat_seconds`` > AckWait) JetStream
redelivers the batch to the other bridge, which records it; the slow commit, once the proxy
resumes, finds every key recorded and answers DUPLICATE. With the default heartbeats
(``in_progress()`` every AckWait / 3) nothing is redelivered, however long the stall (the
bridge used to send them every 10 s whatever AckWait was: this variant failed at 2 s).

A9, broker crash: a nats-server of the test's own (``sync_interval: always``) is SIGKILLed
right after the K-th PubAck, with more publishes in flight, and restarted on the same port
and store dir; two bridges then drain it. Every acknowledged message must be in the stream and
in the ledger exactly once; a publish that got no PubAck may or may not have been stored
(the client resends its buffer after reconnecting), but is applied once at most. Once with
the bridges idle during the crash, once with them consuming (acks in flight are lost with the
server, so some deliveries come back: DUPLICATE).

Every test also checks the ledger: one entry per ``(source, message_id)``, gap-free
positions, ``verify_ledger`` ok and balances = the sums. (Not the catalogue's "a correlation
id on every event": ingested events carry none yet, see docs/ingest.md.)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import nats
import pytest

from ingest.bridge import IngestBridge, publish_movement
from ingest.streams import DURABLE, StreamNames, delete_topology, ensure_topology
from ledger.service import LedgerService
from testbed.nats import EmbeddedNats
from tests.integration.test_ingest import _prefix, _with_js
from tests.support.tcp_proxy import StallingProxy, postgres_upstream, postgres_url_through

ACK_WAIT_SECONDS = 2
SKU, LOCATION = "SKU-R", "DC-R"

Key = tuple[str, str]


def _receipt(index: int, qty: int | None = None) -> dict[str, Any]:
    return {
        "message_id": f"r-{index:05d}",
        "source": ("wms-east", "wms-west")[index % 2],
        "type": "receipt",
        "sku": SKU,
        "location_id": f"{LOCATION}-{index % 7}",
        "qty": qty if qty is not None else 1 + index % 9,
        "occurred_at": "2026-11-22T10:15:00Z",
    }


def _key(payload: dict[str, Any]) -> Key:
    return payload["source"], payload["message_id"]


def _assert_applied_once(service: LedgerService, payloads: Sequence[dict[str, Any]]) -> None:
    """The ledger holds exactly one entry for each payload and nothing else; it verifies."""
    entries = service.ledger_entries(0, 1_000_000)
    # A position's first movement is preceded by its "opened" entry (same message).
    applied = Counter((e.source, e.message_id) for e in entries if e.type == "receipt")
    assert {e.type for e in entries} == {"opened", "receipt"}
    doubled = {key: count for key, count in applied.items() if count > 1}
    assert not doubled, doubled
    assert set(applied) == {_key(p) for p in payloads}
    assert [entry.position for entry in entries] == list(range(1, len(entries) + 1))
    *_, report = service.verify_ledger()
    assert report.done and report.ok, report.broken
    expected: Counter[str] = Counter()
    for payload in payloads:
        expected[payload["location_id"]] += payload["qty"]
    for location, on_hand in expected.items():
        assert service.get_position(SKU, location).on_hand == on_hand, location


async def _wait_for(condition: Callable[[], bool], limit: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, f"{what}: not within {limit}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _settled(js: Any, names: StreamNames) -> Any:
    """Consumer info once nothing is pending or awaiting an ack."""
    deadline = time.monotonic() + 30
    while True:
        info = await js.consumer_info(names.movements_stream, DURABLE)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return info
        assert time.monotonic() < deadline, info
        await asyncio.sleep(0.05)


async def _stop(stop: asyncio.Event, tasks: Sequence[asyncio.Task[None]]) -> None:
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 15)


# ---- A7 ------------------------------------------------------------------------------------


@pytest.fixture
def stalling_postgres(postgres_database_url: str) -> Iterator[tuple[StallingProxy, str]]:
    """A proxy to the test's database and the ledger URL that goes through it."""
    proxy = StallingProxy(postgres_upstream(postgres_database_url))
    try:
        yield proxy, postgres_url_through(postgres_database_url, proxy.port)
    finally:
        proxy.close()


@pytest.mark.postgres
@pytest.mark.parametrize("heartbeats", [False, True], ids=["without-heartbeats", "heartbeats"])
def test_a7_batch_slower_than_ack_wait_is_applied_once(
    nats_url: str,
    postgres_database_url: str,
    stalling_postgres: tuple[StallingProxy, str],
    monkeypatch: pytest.MonkeyPatch,
    heartbeats: bool,
) -> None:
    proxy, slow_url = stalling_postgres
    payloads = [_receipt(i) for i in range(5)]
    names = StreamNames(_prefix())
    slow_service = LedgerService.open(slow_url)
    fast_service = LedgerService.open(postgres_database_url)
    figures: dict[str, Any] = {}

    async def scenario(_nc: Any, js: Any) -> tuple[IngestBridge, IngestBridge, Any]:
        await ensure_topology(js, names, ack_wait_seconds=ACK_WAIT_SECONDS)
        # The default heartbeat (AckWait / 3) against none at all within the test.
        slow = IngestBridge(
            slow_service,
            js,
            names=names,
            heartbeat_seconds=None if heartbeats else 60.0,
            ack_wait_seconds=ACK_WAIT_SECONDS,
        )
        fast = IngestBridge(
            fast_service, js, names=names, fetch_timeout=0.5, ack_wait_seconds=ACK_WAIT_SECONDS
        )
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            for payload in payloads:
                await publish_movement(js, payload, names.prefix)
            proxy.stall()  # before the slow bridge has its batch: its commit cannot start
            stalled_at = time.monotonic()
            tasks.append(asyncio.create_task(slow.run(stop)))
            await _wait_for(lambda: slow.counters.batches == 1, 10, "slow bridge fetches")
            held = await js.consumer_info(names.movements_stream, DURABLE)
            assert held.num_ack_pending == len(payloads)  # one batch holds them all
            tasks.append(asyncio.create_task(fast.run(stop)))
            if heartbeats:  # stall three AckWaits: in_progress() keeps the batch with it
                await asyncio.sleep(3 * ACK_WAIT_SECONDS)
            else:
                figures["redelivered_after"] = await _wait_for(
                    lambda: fast.processed == len(payloads), 20, "redelivery applied"
                )
            figures["stalled"] = time.monotonic() - stalled_at
            proxy.resume()
            done = len(payloads)
            await _wait_for(lambda: slow.processed + slow.duplicates == done, 20, "slow commit")
            info = await _settled(js, names)
            dlq = await js.stream_info(names.dlq_stream)
            assert dlq.state.messages == 0  # a slow batch is never dead-lettered
            return slow, fast, info
        finally:
            proxy.resume()
            await _stop(stop, tasks)
            for bridge in (slow, fast):
                await bridge.close()
            await delete_topology(js, names)

    try:
        slow, fast, info = asyncio.run(_with_js(nats_url, scenario))
        assert slow.dead_lettered == fast.dead_lettered == 0
        assert slow.counters.store_failures == fast.counters.store_failures == 0
        redeliveries = info.delivered.consumer_seq - len(payloads)
        if heartbeats:
            assert redeliveries == 0
            assert fast.counters.batches == 0  # the other bridge never saw the batch
            assert slow.processed == len(payloads)
        else:
            assert redeliveries == len(payloads)  # each message once more, to the other bridge
            assert fast.redeliveries == fast.processed == len(payloads)
            assert (slow.processed, slow.duplicates) == (0, len(payloads))
        _assert_applied_once(fast_service, payloads)
        _assert_applied_once(slow_service, payloads)  # the slow replica reads the same ledger
    finally:
        slow_service.close()
        fast_service.close()
    print(
        f"\nA7 ({'with' if heartbeats else 'without'} heartbeats): AckWait {ACK_WAIT_SECONDS}s,"
        f" commit stalled {figures['stalled']:.1f}s, {redeliveries} redeliveries of"
        f" {len(payloads)} messages, {len(payloads)} ledger events"
    )


def test_an_empty_fetch_is_not_broker_trouble(nats_url: str, sqlite_service: LedgerService) -> None:
    """Regression: nats-py's fetch raises the builtin TimeoutError (not nats.errors') when its
    deadline runs out just as the server says "no messages"; the bridge took that for a broker
    failure, logged a warning and paused ``backoff_max`` (5 s) with work possibly waiting. Short
    fetches on an empty lane hit it about one time in thirty."""
    names = StreamNames(_prefix())

    async def scenario(_nc: Any, js: Any) -> list[int]:
        await ensure_topology(js, names)
        bridge = IngestBridge(sqlite_service, js, names=names)
        try:
            return [await bridge.run_once(timeout=timeout) for timeout in (0.01, 0.03) * 100]
        finally:
            await bridge.close()
            await delete_topology(js, names)

    assert set(asyncio.run(_with_js(nats_url, scenario))) == {0}


# ---- A9 ------------------------------------------------------------------------------------

A9_MESSAGES = 2_000
A9_KILL_AFTER = 1_500  # PubAcks before the SIGKILL; the other publishers are mid-publish
A9_PUBLISHERS = 8
A9_ACK_WAIT_SECONDS = 5


@pytest.mark.parametrize("consuming", [False, True], ids=["bridges-idle", "bridges-consuming"])
def test_a9_broker_killed_after_pubacks_loses_and_doubles_nothing(
    own_nats: EmbeddedNats,
    sqlite_service: LedgerService,
    monkeypatch: pytest.MonkeyPatch,
    consuming: bool,
) -> None:
    payloads = [_receipt(i) for i in range(A9_MESSAGES)]
    names = StreamNames(_prefix())
    acked: list[dict[str, Any]] = []
    in_doubt: list[dict[str, Any]] = []  # publish raised: stored or not, nobody knows
    figures: dict[str, Any] = {}

    async def publisher(js: Any, share: Sequence[dict[str, Any]]) -> None:
        for payload in share:
            try:
                await publish_movement(js, payload, names.prefix, timeout=1.0)
            except Exception:
                in_doubt.append(payload)
                return
            acked.append(payload)
            if len(acked) == A9_KILL_AFTER:
                own_nats.kill()  # at once, from the loop: no other PubAck gets in between

    async def scenario() -> tuple[list[IngestBridge], int]:
        nc = await nats.connect(own_nats.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
        js = nc.jetstream()
        # Deliveries whose acks died with the server come back after AckWait: 5 s, not 30.
        await ensure_topology(js, names, ack_wait_seconds=A9_ACK_WAIT_SECONDS)
        bridges = [
            IngestBridge(
                sqlite_service,
                js,
                names=names,
                backoff_max=0.5,
                ack_wait_seconds=A9_ACK_WAIT_SECONDS,
            )
            for _ in "ab"
        ]
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            if consuming:
                tasks = [asyncio.create_task(b.run(stop, batch_size=50)) for b in bridges]
            shares = [payloads[k::A9_PUBLISHERS] for k in range(A9_PUBLISHERS)]
            await asyncio.gather(*(publisher(js, share) for share in shares))
            # PubAcks already in the client's socket buffer at the kill are read after it.
            assert not own_nats.running and len(acked) >= A9_KILL_AFTER
            figures["applied_at_kill"] = sum(b.processed for b in bridges)
            own_nats.start()  # same port, same store dir
            restarted = time.monotonic()
            await nc.flush(timeout=10)  # reconnected (and the client's buffer resent)
            stream = await js.stream_info(names.movements_stream)
            if not consuming:
                tasks = [asyncio.create_task(b.run(stop, batch_size=50)) for b in bridges]
            present = stream.state.messages
            await _wait_for(
                lambda: sum(b.processed for b in bridges) >= len(acked), 40, "bridges drain"
            )
            await _settled(js, names)
            figures["drain"] = time.monotonic() - restarted
            dlq = await js.stream_info(names.dlq_stream)
            assert dlq.state.messages == 0
            return bridges, present
        finally:
            if not own_nats.running:  # failed before the restart: cleanup needs the server
                own_nats.start()
            await _stop(stop, tasks)
            for bridge in bridges:
                await bridge.close()
            await delete_topology(js, names)
            await nc.close()

    bridges, present = asyncio.run(scenario())
    acked_keys = {_key(p) for p in acked}
    entries = sqlite_service.ledger_entries(0, 1_000_000)
    applied = {(entry.source, entry.message_id) for entry in entries if entry.type == "receipt"}
    assert acked_keys <= applied  # nothing acknowledged is lost
    assert applied <= acked_keys | {_key(p) for p in in_doubt}  # nothing invented
    assert present >= len(acked)
    _assert_applied_once(sqlite_service, [p for p in payloads if _key(p) in applied])
    processed = sum(b.processed for b in bridges)
    duplicates = sum(b.duplicates for b in bridges)
    assert processed == len(applied)  # each applied message RECORDED once, by one bridge
    assert sum(b.dead_lettered for b in bridges) == 0
    if not consuming:
        assert figures["applied_at_kill"] == 0 and duplicates == 0
    print(
        f"\nA9 (bridges {'consuming' if consuming else 'idle'}): SIGKILL after"
        f" {len(acked)} PubAcks ({len(in_doubt)} publishes in doubt); stream after restart"
        f" {present} messages; ledger {len(applied)} events ({len(applied) - len(acked)} of"
        f" the in-doubt); {figures['applied_at_kill']} applied before the kill;"
        f" {duplicates} deliveries answered DUPLICATE"
        f" ({sum(b.redeliveries for b in bridges)} with num_delivered > 1);"
        f" drained {figures['drain']:.1f}s after the restart"
    )
