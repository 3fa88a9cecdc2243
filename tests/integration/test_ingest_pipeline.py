"""The bridge's one-batch pipeline (issue 20, ingest throughput) against a real nats-server
and a SQLite ledger: the next batch is fetched and parsed while the ledger commits the one
before, but reaches the ledger only once that one is settled; acks follow commits; when the
store fails, the batch waiting behind the failed one is nak-ed untried, and everything is
recorded exactly once in the end.

The ledger is the real one; ``_Gated`` only holds its ``record_movements`` calls until the
test opens the gate (or fails them, like an unreachable database) and notes what each held."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from typing import Any

from ingest.bridge import IngestBridge, publish_movement
from ingest.streams import DURABLE, StreamNames, delete_topology, ensure_topology
from ledger.domain.errors import StoreUnavailable
from ledger.service import LedgerService
from tests.integration.test_ingest import _prefix, _with_js

BATCH = 20
SKU, LOCATION = "SKU-PIPE", "DC-PIPE"


def _receipt(index: int) -> dict[str, Any]:
    return {
        "message_id": f"p-{index:05d}",
        "source": "wms-pipe",
        "type": "receipt",
        "sku": SKU,
        "location_id": LOCATION,
        "qty": 1 + index % 5,
        "occurred_at": "2026-11-22T10:15:00Z",
    }


class _Gated:
    """The service, with each ``record_movements`` call held on a gate (on a thread of its own,
    so the bridge's event loop runs on) and counted; ``fail`` makes the next held call raise
    StoreUnavailable instead of reaching the ledger."""

    def __init__(self, service: LedgerService) -> None:
        self.service = service
        self.gate = threading.Event()
        self.calls: list[list[str]] = []  # message ids of each call, in call order
        self.concurrent = 0
        self.most_concurrent = 0
        self.fail = 0
        self._lock = threading.Lock()

    def record_movements(self, ctx: Any, items: Any, **kwargs: Any) -> Future[Any]:
        items = list(items)
        with self._lock:
            self.calls.append([item.message_id for item in items])
            self.concurrent += 1
            self.most_concurrent = max(self.most_concurrent, self.concurrent)
            failing = self.fail > 0
            self.fail -= failing
        answer: Future[Any] = Future()

        def held() -> None:
            self.gate.wait(30)
            result: Any = None
            error: BaseException | None = None
            try:
                if failing:
                    raise StoreUnavailable("database unreachable (test)")
                result = self.service.record_movements(ctx, items, **kwargs).result()
            except BaseException as raised:
                error = raised
            with self._lock:  # done before the bridge hears of it
                self.concurrent -= 1
            if error is None:
                answer.set_result(result)
            else:
                answer.set_exception(error)

        threading.Thread(target=held, daemon=True).start()
        return answer


async def _until(condition: Any, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_next_batch_is_read_while_the_ledger_commits_but_applied_after(
    nats_url: str, sqlite_service: LedgerService
) -> None:
    names = StreamNames(_prefix())
    total = 3 * BATCH
    gated = _Gated(sqlite_service)

    async def scenario(_nc: Any, js: Any) -> tuple[int, int]:
        await ensure_topology(js, names)
        try:
            for index in range(total):
                await publish_movement(js, _receipt(index), names.prefix)
            bridge = IngestBridge(gated, js, names=names)
            stop = asyncio.Event()
            task = asyncio.create_task(bridge.run(stop, batch_size=BATCH))
            try:
                # The second batch is fetched and parsed while the first is held in the ledger...
                await _until(lambda: bridge.counters.batches == 2)
                await asyncio.sleep(0.2)
                assert len(gated.calls) == 1  # ...but not handed to it
                held = await js.consumer_info(names.movements_stream, DURABLE)
                assert bridge.processed == 0
                gated.gate.set()
                await _until(lambda: bridge.processed == total)
                settled = await js.consumer_info(names.movements_stream, DURABLE)
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
                await bridge.close()
            assert bridge.counters.store_failures == bridge.dead_lettered == 0
            return held.num_ack_pending, settled.num_pending
        finally:
            await delete_topology(js, names)

    unacked_while_held, pending_after = asyncio.run(_with_js(nats_url, scenario))
    assert unacked_while_held == 2 * BATCH  # nothing acked before its commit
    assert pending_after == 0
    assert gated.most_concurrent == 1  # one batch in the ledger at a time
    ids = [message_id for call in gated.calls for message_id in call]
    assert ids == [f"p-{index:05d}" for index in range(total)]  # in fetch order, each once
    assert [len(call) for call in gated.calls] == [BATCH] * 3
    expected = sum(_receipt(index)["qty"] for index in range(total))
    assert sqlite_service.get_position(SKU, LOCATION).on_hand == expected


def test_a_failed_batch_sends_back_the_one_waiting_behind_it_untried(
    nats_url: str, sqlite_service: LedgerService
) -> None:
    names = StreamNames(_prefix())
    total = 3 * BATCH
    gated = _Gated(sqlite_service)
    gated.fail = 1

    async def scenario(_nc: Any, js: Any) -> IngestBridge:
        await ensure_topology(js, names)
        try:
            for index in range(total):
                await publish_movement(js, _receipt(index), names.prefix)
            bridge = IngestBridge(gated, js, names=names, backoff_initial=0.3, backoff_max=1.0)
            stop = asyncio.Event()
            task = asyncio.create_task(bridge.run(stop, batch_size=BATCH))
            try:
                await _until(lambda: bridge.counters.batches == 2)  # one failing, one waiting
                gated.gate.set()
                await _until(lambda: bridge.processed == total)
                info = await js.consumer_info(names.movements_stream, DURABLE)
                assert info.num_ack_pending == info.num_pending == 0
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
                await bridge.close()
            return bridge
        finally:
            await delete_topology(js, names)

    bridge = asyncio.run(_with_js(nats_url, scenario))
    assert bridge.counters.store_failures == 1
    assert bridge.dead_lettered == 0 and bridge.duplicates == 0
    assert gated.calls[0] == [f"p-{index:05d}" for index in range(BATCH)]
    # The batch waiting behind the failed one was nak-ed untried, not applied after it:
    # both came back.
    assert bridge.redeliveries == 2 * BATCH
    ids = [message_id for call in gated.calls[1:] for message_id in call]
    assert sorted(ids) == [f"p-{index:05d}" for index in range(total)]  # each tried once more
    assert gated.most_concurrent == 1
    expected = sum(_receipt(index)["qty"] for index in range(total))
    assert sqlite_service.get_position(SKU, LOCATION).on_hand == expected


def test_delivery_count_and_time_read_off_the_ack_subject_match_nats_py(nats_url: str) -> None:
    """The bridge reads num_delivered and the stream timestamp off the ack subject itself
    (cheaper than Msg.metadata): same values, on a first delivery and on a redelivery."""
    from ingest.bridge import _delivery
    from ingest.streams import Lane, lane_durable

    names = StreamNames(_prefix())

    async def scenario(_nc: Any, js: Any) -> list[tuple[tuple[int, float], tuple[int, float]]]:
        await ensure_topology(js, names)
        try:
            for index in range(3):
                await publish_movement(js, _receipt(index), names.prefix)
            psub = await js.pull_subscribe(
                names.lane_filter(Lane.LIVE),
                durable=lane_durable(DURABLE, Lane.LIVE),
                stream=names.movements_stream,
            )
            seen = []
            first = await psub.fetch(3, timeout=5)
            for msg in first:
                await msg.nak()
            again = await psub.fetch(3, timeout=5)
            for msg in [*first, *again]:
                metadata = msg.metadata
                seen.append((_delivery(msg), (metadata.num_delivered, metadata.timestamp)))
            for msg in again:
                await msg.ack()
            return [(ours, (delivered, stamp.timestamp())) for ours, (delivered, stamp) in seen]
        finally:
            await delete_topology(js, names)

    seen = asyncio.run(_with_js(nats_url, scenario))
    assert [ours[0] for ours, _ in seen] == [1, 1, 1, 2, 2, 2]
    for (delivered, stamp), (their_delivered, their_stamp) in seen:
        assert delivered == their_delivered
        assert abs(stamp - their_stamp) < 1e-5  # theirs went through a datetime (µs)
        assert abs(stamp - time.time()) < 60
