"""Raw figures of this machine, measured in the same run as the service:

* ``grpc_echo``           — a grpc.aio unary echo server driven like the service is;
* ``pg_txn_per_call``     — 2-row transactions, one commit each, over several pipelined
                            connections (what one transaction per call could reach);
* ``pg_group_commit``     — one writer, 100 two-row reservations per commit (what a group
                            commit writer could reach);
* ``jetstream_fetch_ack`` — pre-published messages pulled in batches of 500 and acked.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg

from tools.bench.driver import WorkerPool, merge
from tools.bench.procs import LoggedProcess
from tools.bench.profile import Profile
from tools.bench.progress import progress
from tools.bench.sampling import sampler
from tools.bench.stats import latency_summary, prefixed, rate

PAYLOAD = os.urandom(200)  # about an event's size


def grpc_echo(profile: Profile, pool: WorkerPool) -> dict[str, Any]:
    echo = LoggedProcess("echo", ["-m", "tools.bench.echo"], r"echo listening on (?P<port>\d+)")
    port = echo.start()["port"]
    try:
        workers = min(profile.workers, profile.echo_in_flight)
        job = {
            "kind": "echo",
            "params": {"size": 64},
            "targets": [f"127.0.0.1:{port}"],
            "channels": 2,
            "mode": "closed",
            "concurrency": profile.echo_in_flight // workers,
            "warmup": profile.warmup,
            "seconds": profile.seconds,
            "timeout": profile.call_timeout,
            "tag": "echo",
        }
        sampling, during = sampler(lambda: {"server": [echo.pid], "loadgen": pool.pids})
        figure = merge(pool.run([job] * workers, during))
    finally:
        echo.close()
    return {
        **figure,
        **sampling.summary(),
        "unit": "calls/s",
        "in_flight": profile.echo_in_flight,
    }


# ---- PostgreSQL ----------------------------------------------------------------------------


async def _timed(
    loops: Sequence[Callable[[], Awaitable[int]]], warmup: float, seconds: float
) -> tuple[int, list[float], float]:
    """Run every loop body over and over until the window closes; returns (units done in
    the window, latencies in ms of the bodies completed in it, window seconds)."""
    begin = time.perf_counter()
    measure_from, measure_to = begin + warmup, begin + warmup + seconds
    done = 0
    latencies: list[float] = []

    async def run(body: Callable[[], Awaitable[int]]) -> None:
        nonlocal done
        while True:
            started = time.perf_counter()
            if started >= measure_to:
                return
            units = await body()
            finished = time.perf_counter()
            if measure_from <= finished <= measure_to:
                done += units
                latencies.append((finished - started) * 1e3)

    await asyncio.gather(*(run(body) for body in loops))
    return done, latencies, seconds


async def pg_txn_per_call(url: str, profile: Profile) -> dict[str, Any]:
    table = f"bench_raw_txn_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute(
            f"CREATE TABLE {table} (id uuid PRIMARY KEY, position text NOT NULL,"
            " qty bigint NOT NULL, payload bytea NOT NULL)"
        )
    connections = [
        await psycopg.AsyncConnection.connect(url) for _ in range(profile.pg_connections)
    ]
    insert = f"INSERT INTO {table} VALUES (%s, %s, %s, %s)"

    def body_for(conn: psycopg.AsyncConnection[Any]) -> Callable[[], Awaitable[int]]:
        async def body() -> int:
            # Pipeline mode: BEGIN, both INSERTs and COMMIT leave in one round trip.
            async with conn.pipeline(), conn.transaction():
                await conn.execute(insert, (uuid.uuid4(), "P-1", 1, PAYLOAD))
                await conn.execute(insert, (uuid.uuid4(), "P-2", 1, PAYLOAD))
            return 1

        return body

    try:
        done, latencies, window = await _timed(
            [body_for(conn) for conn in connections], profile.warmup, profile.seconds
        )
    finally:
        for conn in connections:
            await conn.close()
        await _drop(url, table)
    return {
        "rate": rate(done, window),
        "unit": "txns/s",
        "ok": done,
        **latency_summary(latencies),
        "seconds": window,
        "connections": profile.pg_connections,
        "rows_per_txn": 2,
    }


async def pg_group_commit(url: str, profile: Profile) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    reservations, holds = f"bench_raw_res_{suffix}", f"bench_raw_hold_{suffix}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute(
            f"CREATE TABLE {reservations} (id uuid PRIMARY KEY, channel text NOT NULL,"
            " payload bytea NOT NULL)"
        )
        await admin.execute(
            f"CREATE TABLE {holds} (id uuid PRIMARY KEY, reservation_id uuid NOT NULL,"
            " position text NOT NULL, qty bigint NOT NULL, payload bytea NOT NULL)"
        )
    size = profile.group_commit_size
    conn = await psycopg.AsyncConnection.connect(url)

    async def body() -> int:
        ids = [uuid.uuid4() for _ in range(size)]
        async with conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO {reservations} VALUES (%s, %s, %s)",
                [(rid, "web", PAYLOAD) for rid in ids],
            )
            await cur.executemany(
                f"INSERT INTO {holds} VALUES (%s, %s, %s, %s, %s)",
                [(uuid.uuid4(), rid, f"P-{i}", 1, PAYLOAD) for i, rid in enumerate(ids)],
            )
        return size

    try:
        done, latencies, window = await _timed([body], profile.warmup, profile.seconds)
    finally:
        await conn.close()
        await _drop(url, reservations, holds)
    return {
        "rate": rate(done, window),
        "unit": "reservations/s",
        "ok": done,
        **prefixed(latency_summary(latencies), "commit"),
        "seconds": window,
        "reservations_per_commit": size,
        "rows_per_reservation": 2,
    }


async def _drop(url: str, *tables: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        for table in tables:
            await admin.execute(f"DROP TABLE IF EXISTS {table}")


# ---- JetStream -----------------------------------------------------------------------------


async def publish_all(js: Any, subject_of: Callable[[int], str], bodies: Sequence[bytes],
                      headers_of: Callable[[int], dict[str, str]] | None = None,
                      stream: str | None = None) -> None:  # fmt: skip
    """Publish every body, a thousand acknowledged publishes in flight at a time."""
    for start in range(0, len(bodies), 1000):
        await asyncio.gather(
            *(
                js.publish(
                    subject_of(i),
                    bodies[i],
                    stream=stream,
                    headers=headers_of(i) if headers_of is not None else None,
                )
                for i in range(start, min(len(bodies), start + 1000))
            )
        )


async def jetstream_fetch_ack(
    url: str, profile: Profile, bodies: Sequence[bytes]
) -> dict[str, Any]:
    import nats
    from nats.js.api import StorageType, StreamConfig

    token = uuid.uuid4().hex[:10]
    stream, root = f"BENCHJS_{token}", f"benchjs.{token}"
    nc = await nats.connect(url, name="ledger-bench-jetstream")
    js = nc.jetstream()
    try:
        await js.add_stream(
            StreamConfig(name=stream, subjects=[f"{root}.>"], storage=StorageType.FILE)
        )
        progress(f"  publishing {len(bodies):,} messages to {stream}")
        await publish_all(js, lambda _i: f"{root}.bench", bodies, stream=stream)
        psub = await js.pull_subscribe(f"{root}.>", durable="bench", stream=stream)
        began = time.perf_counter()
        got = 0
        batches: list[float] = []
        while got < len(bodies):
            started = time.perf_counter()
            messages = await psub.fetch(500, timeout=10)
            for message in messages:
                await message.ack()
            got += len(messages)
            batches.append((time.perf_counter() - started) * 1e3)
        await nc.flush()
        # Done when the server has every ack, the same end point as the ingest figure.
        while (await js.consumer_info(stream, "bench")).num_ack_pending:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - began
    finally:
        try:
            await js.delete_stream(stream)
        finally:
            await nc.close()
    return {
        "rate": rate(got, elapsed),
        "unit": "messages/s",
        "ok": got,
        "seconds": round(elapsed, 3),
        "fetch_batch": 500,
        **prefixed(latency_summary(batches), "batch"),
    }
