"""`ledger ingest` SIGKILL-ed repeatedly mid-run, then restarted: nothing lost, nothing twice.

The real CLI runs as a subprocess against a real nats-server and a PostgreSQL ledger. It is
killed (SIGKILL, no chance to ack or clean up) 6 times at seeded random moments while it is
consuming, so kills land before a batch commits, during the commit and between the commit
and the acks. After a last clean run the ledger must equal the reference sums of the unique
messages: nothing lost, nothing doubled.

Kill-phase messages that were delivered but never acked are redelivered by JetStream only
after the consumer's ``ack_wait``, so the final drain takes about that long: the test sets
it to 5 s (LEDGER_INGEST_ACK_WAIT_SECONDS, inherited by the ingest processes).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ingest.bridge import canonical_json, publish_movement
from ingest.streams import DURABLE, StreamNames, delete_topology, ensure_topology
from ledger.service import LedgerService
from tests.integration.test_ingest import _effect, _movement, _prefix, _with_js

UNIQUE = 2_700
DUPLICATES = 300  # 10 %, each with a new Nats-Msg-Id: the ledger itself must dedupe
KILLS = 6
ACK_WAIT_SECONDS = 5
SEED = 20261124


def _ingest(nats_url: str, database: str, prefix: str, batch: int, log: Path) -> Any:
    command = [sys.executable, "-m", "entrypoints.cli", "ingest", "--nats", nats_url]
    command += ["--database", database, "--prefix", prefix, "--batch-size", str(batch)]
    with log.open("wb") as log_file:
        return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)


def _recorded_keys(database: str) -> int:
    with psycopg.connect(database) as db:
        row = db.execute(
            "SELECT count(*) FROM ledger_events WHERE topic LIKE '%IdempotencyKey.Created'"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.postgres
@pytest.mark.slow
def test_sigkilled_ingest_restarts_to_the_same_ledger(
    nats_url: str, postgres_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGER_INGEST_ACK_WAIT_SECONDS", str(ACK_WAIT_SECONDS))
    rng = random.Random(SEED)
    positions = [(f"SKU-{i}", f"DC-{j}") for i in range(10) for j in range(10)]
    unique = [_movement(rng, i, *positions[i % len(positions)]) for i in range(UNIQUE)]
    messages = [(m, False) for m in unique] + [(m, True) for m in rng.sample(unique, DUPLICATES)]
    rng.shuffle(messages)
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for payload in unique:
        expected[payload["sku"], payload["location_id"]] += _effect(payload)
    names = StreamNames(_prefix())
    database = postgres_database_url
    processes: list[Any] = []
    kill_log: list[tuple[int, float, int, int]] = []  # batch, delay, ack_pending, keys in db

    async def publish(js: Any, share: list[tuple[dict[str, Any], bool]]) -> None:
        for payload, retry in share:
            if retry:
                await js.publish(
                    names.movement_subject(payload["source"]),
                    canonical_json(payload),
                    stream=names.movements_stream,
                    headers={"Nats-Msg-Id": f"{payload['message_id']}-retry"},
                )
            else:
                await publish_movement(js, payload, names.prefix)

    async def consumer(js: Any) -> Any:
        return await js.consumer_info(names.movements_stream, DURABLE)

    async def scenario(_nc: Any, js: Any) -> dict[str, Any]:
        await ensure_topology(js, names, ack_wait_seconds=ACK_WAIT_SECONDS)
        try:
            await asyncio.gather(*(publish(js, messages[k::6]) for k in range(6)))
            stream = await js.stream_info(names.movements_stream)
            assert stream.state.messages == UNIQUE + DUPLICATES
            started = time.monotonic()
            for run in range(KILLS):
                before = (await consumer(js)).delivered.consumer_seq
                batch = rng.randint(20, 50)
                delay = rng.uniform(0.05, 0.5)
                process = _ingest(
                    nats_url, database, names.prefix, batch, tmp_path / f"kill-{run}.log"
                )
                processes.append(process)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:  # kill while it is consuming
                    info = await consumer(js)
                    if info.delivered.consumer_seq > before or info.num_pending == 0:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError((tmp_path / f"kill-{run}.log").read_text())
                await asyncio.sleep(delay)
                process.send_signal(signal.SIGKILL)
                process.wait(10)
                info = await consumer(js)
                keys = await asyncio.to_thread(_recorded_keys, database)
                kill_log.append((batch, delay, info.num_ack_pending, keys))
            kill_phase = time.monotonic() - started

            final_log = tmp_path / "final.log"
            process = _ingest(nats_url, database, names.prefix, rng.randint(20, 50), final_log)
            processes.append(process)
            deadline = time.monotonic() + 50
            while True:
                info = await consumer(js)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                assert time.monotonic() < deadline, (info, final_log.read_text())
                assert process.poll() is None, final_log.read_text()
                await asyncio.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0, final_log.read_text()
            dlq = await js.stream_info(names.dlq_stream)
            return {
                "info": info,
                "dlq": dlq.state.messages,
                "kill_phase": kill_phase,
                "total": time.monotonic() - started,
                "log": final_log.read_text(),
            }
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            await delete_topology(js, names)

    result = asyncio.run(_with_js(nats_url, scenario))
    info, log = result["info"], result["log"]
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    assert result["dlq"] == 0
    assert len(kill_log) == KILLS
    assert _recorded_keys(database) == UNIQUE  # one key per unique movement: none doubled
    service = LedgerService.open(database)
    try:
        for sku, location in positions:
            on_hand = service.get_position(sku, location).on_hand
            assert on_hand == expected[sku, location], (sku, location)
    finally:
        service.close()
    # Every delivery bumps consumer_seq: beyond one per message, they are redeliveries of
    # messages a killed process had fetched but not acked (num_redelivered only counts the
    # ones still pending, 0 once drained).
    redeliveries = info.delivered.consumer_seq - (UNIQUE + DUPLICATES)
    assert redeliveries > 0
    stopped = next(line for line in log.splitlines() if "stopped:" in line)
    print(
        f"\ningest kill: {KILLS} SIGKILLs, {UNIQUE + DUPLICATES} messages ({UNIQUE} unique)"
        f"\n  per kill (batch, delay s, ack pending, keys in db): {kill_log}"
        f"\n  consumer: {info.delivered.consumer_seq} deliveries, {redeliveries} redeliveries;"
        f" final run {stopped.split('stopped:', 1)[1].strip()}"
        f"\n  kill phase {result['kill_phase']:.1f}s, total {result['total']:.1f}s"
    )
