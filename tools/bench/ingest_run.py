"""Ingest throughput: canonical movement messages pre-published to the ingest subject, then
``ledger ingest`` applies the backlog; timed from the moment it is consuming until the
server has every ack (acks follow commits, so every message is durable in the ledger), then
checked against the ledger's positions."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from tools.bench.baselines import publish_all
from tools.bench.procs import LoggedProcess
from tools.bench.profile import Profile
from tools.bench.progress import progress
from tools.bench.sampling import CpuSample
from tools.bench.service import LOCATION, Cluster
from tools.bench.stats import rate

SOURCE = "benchwms"


def messages(count: int, skus: list[str], run: str) -> list[dict[str, Any]]:
    """Receipts of 1 spread over ``skus`` (contract §5 canonical form)."""
    occurred_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return [
        {
            "message_id": f"{run}-{i}",
            "source": SOURCE,
            "type": "receipt",
            "sku": skus[i % len(skus)],
            "location_id": LOCATION,
            "qty": 1,
            "occurred_at": occurred_at,
        }
        for i in range(count)
    ]


def bodies(payloads: list[dict[str, Any]]) -> list[bytes]:
    from ingest.bridge import canonical_json

    return [canonical_json(payload) for payload in payloads]


async def _prepare(nats_url: str, prefix: str, payloads: list[dict[str, Any]]) -> None:
    import nats

    from ingest.streams import StreamNames, ensure_topology

    names = StreamNames(prefix)
    nc = await nats.connect(nats_url, name="ledger-bench-publish")
    try:
        js = nc.jetstream()
        await ensure_topology(js, names)  # what `ledger ingest` would create, idempotent
        source_subject = names.movement_subject(SOURCE)
        encoded = bodies(payloads)
        await publish_all(
            js,
            lambda _i: source_subject,
            encoded,
            headers_of=lambda i: {"Nats-Msg-Id": str(payloads[i]["message_id"])},
            stream=names.movements_stream,
        )
    finally:
        await nc.close()


async def _acked(nats_url: str, prefix: str, total: int, timeout: float) -> float:
    """Poll the durable consumer until every message is acknowledged; returns when."""
    import nats

    from ingest.streams import DURABLE, StreamNames

    names = StreamNames(prefix)
    nc = await nats.connect(nats_url, name="ledger-bench-watch")
    try:
        js = nc.jetstream()
        deadline = time.perf_counter() + timeout
        while True:
            info = await js.consumer_info(names.movements_stream, DURABLE)
            settled = info.num_pending == 0 and info.num_ack_pending == 0
            if settled and info.delivered.stream_seq >= total:
                return time.perf_counter()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"ingest: {info.num_pending + info.num_ack_pending} left")
            await asyncio.sleep(0.01)
    finally:
        await nc.close()


async def _cleanup(nats_url: str, prefix: str) -> None:
    import nats

    from ingest.streams import StreamNames, delete_topology

    nc = await nats.connect(nats_url, name="ledger-bench-cleanup")
    try:
        await delete_topology(nc.jetstream(), StreamNames(prefix))
    finally:
        await nc.close()


def ingest(cluster: Cluster, nats_url: str, profile: Profile, skus: list[str]) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    prefix = f"bench{run}"  # isolated streams: the NATS server may be shared (tests)
    payloads = messages(profile.ingest_messages, skus, run)
    before = sum(cluster.position(sku).on_hand for sku in skus)
    progress(f"ingest: publishing {len(payloads):,} movement messages")
    asyncio.run(_prepare(nats_url, prefix, payloads))
    process = LoggedProcess(
        "ingest",
        [
            "-m", "entrypoints.cli", "ingest",
            "--nats", nats_url,
            "--database", cluster.database_url,
            "--batch-size", str(profile.ingest_batch),
            "--prefix", prefix,
        ],
        r"ingest from ",
    )  # fmt: skip
    try:
        process.start()
        began = time.perf_counter()  # consuming from here on
        # servers: with --writer process the bridge's writes are applied by a serve's writer
        # child (counted in cpu_cores.server_trees).
        groups = {
            "ingest": [process.pid],
            "projections": [cluster.projections_pid or 0],
            "servers": cluster.server_pids,
        }
        cpu = CpuSample(groups)
        cpu.start()
        timeout = 60.0 + profile.ingest_messages / 50
        finished = asyncio.run(_acked(nats_url, prefix, len(payloads), timeout))
        cpu.stop()
    finally:
        process.close()
        asyncio.run(_cleanup(nats_url, prefix))
    elapsed = finished - began
    after = sum(cluster.position(sku).on_hand for sku in skus)
    durable = after - before == len(payloads)
    return {
        "rate": rate(len(payloads), elapsed),
        "unit": "messages/s",
        "ok": len(payloads),
        "seconds": round(elapsed, 3),
        "batch_size": profile.ingest_batch,
        "positions": len(skus),
        "durable_in_ledger": durable,  # every receipt is on the positions
        "cpu_cores": cpu.result,
    }
