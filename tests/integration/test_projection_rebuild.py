"""``ledger projections rebuild`` while the service is serving, on SQLite and PostgreSQL.

Goal (issue 3, rebuild): the read models are rebuilt from ledger position 0 into a new
generation and swapped in without ever serving a half-built model, while writes and reads
go on; the running projection (in the API process on SQLite, a separate ``ledger
projections`` process on PostgreSQL) switches to the new generation by itself.

Method: 8 SKUs are stocked at 3 locations (1,000 each) and ~4,000 further events are
written, so that the rebuild has work to do. Then, while two reader threads call
GetAvailability for the stocked SKUs in a loop and a writer keeps adding receipts (of the
stocked SKUs, so their availability can only grow, and of others), the rebuild runs as a
real ``python -m entrypoints.cli projections rebuild`` process in small batches. Checks:

* no read during the rebuild saw less than the initial stock of a stocked SKU (a reader
  of a half-built generation would see 0 or a partial sum), and each reader's
  ``projection_position`` never went backwards (the swap catches up past the old
  generation's position before it flips);
* afterwards the projection follows the new generation, and its rows equal an
  incrementally built reference, row by row; only the new generation's tables remain;
* a second rebuild is idempotent (same rows, next generation), and a rebuild refuses to
  start while another holds the rebuild lock.

Also a smoke run of ``tools/bench_rebuild.py`` on a small SQLite ledger.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from inventory.ledger.v1 import policy_service_pb2, query_service_pb2

from ledger.application import InventoryLedger
from ledger.config import eventsourcing_env
from projections.runner import ProjectionRunner
from projections.store import ReadModelRows, ReadModelStore
from testbed.server import LedgerProcess
from tests.integration.test_grpc_ledger import Client, movement
from tests.integration.test_projection_recovery import Projector, assert_same_rows

pytestmark = pytest.mark.slow

STOCKED = [f"STOCKED-{n}" for n in range(8)]
LOCATIONS = ["DC-1", "DC-2", "DC-3"]
INITIAL = 1_000  # per stocked position
FILL_EVENTS = 4_000
REBUILD_BATCH = 50  # small batches: the rebuild takes long enough to be read through
CLI_TIMEOUT = 120.0


@dataclass(frozen=True)
class Sample:
    at: float
    sku: str
    position: int
    channel_available: int
    network_available: int


@dataclass
class Served:
    client: Client
    server: LedgerProcess
    projector: Projector | None  # PostgreSQL: the separate projections process
    database_url: str

    def head(self) -> int:
        return self.client.query.GetProjectionStatus(
            query_service_pb2.GetProjectionStatusRequest(), timeout=10
        ).head_position

    def availability(self, sku: str, min_position: int = 0) -> query_service_pb2.Availability:
        return self.client.query.GetAvailability(
            query_service_pb2.GetAvailabilityRequest(
                sku=sku, channel="web", min_position=min_position
            ),
            timeout=30,
        )

    def follower_log(self) -> str:
        return (
            self.projector.log()
            if self.projector is not None
            else self.server.log_text(all_runs=True)
        )


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[Served]:
    projector = None
    if database_url.startswith("postgresql"):
        projector = Projector(database_url, tmp_path / "projections.log")
        projector.start(500)
        projector.wait_following()
    server = LedgerProcess(database_url, extra_args=["--projections", "auto"])
    server.start()
    try:
        yield Served(Client(server), server, projector, database_url)
        assert server.stop() == 0, server.log_text()
        if projector is not None:
            assert projector.stop() == 0, projector.log()
        for log in (server.log_text(all_runs=True), projector.log() if projector else ""):
            assert "Traceback" not in log and " ERROR " not in log, log
    finally:
        server.close()
        if projector is not None:
            projector.close()


def cli_rebuild(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "entrypoints.cli",
            "projections",
            "rebuild",
            "--database",
            database_url,
            "--batch-size",
            str(REBUILD_BATCH),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def reference_rows(database_url: str) -> ReadModelRows:
    """The same read models built incrementally, uninterrupted, into fresh tables."""
    app = InventoryLedger(eventsourcing_env(database_url))
    store = ReadModelStore(database_url, prefix="reference")
    try:
        ProjectionRunner(app, store).catch_up()
        return store.rows()
    finally:
        store.close()
        app.close()


def fill(client: Client, events: int) -> None:
    """Receipts, shipments and transfers of SKUs nobody reads, 500 movements a request."""
    written = 0
    batch = 0
    while written < events:
        batch += 1
        items = []
        for n in range(500):
            sku, location = f"FILL-{n % 97}", LOCATIONS[n % 3]
            if n % 5 == 0:
                items.append(
                    movement(
                        "transfer_dispatch",
                        sku,
                        location,
                        qty=2,
                        transfer_id=f"T-{batch}-{n}",
                        to_location_id=LOCATIONS[(n + 1) % 3],
                    )
                )
            elif n % 3 == 0:
                items.append(movement("shipment", sku, location, qty=3))
            else:
                items.append(movement("receipt", sku, location, qty=5))
        client.record(*items)
        written += 600  # transfers write two position events


def test_rebuild_while_serving_never_serves_a_partial_generation(served: Served) -> None:
    client = served.client
    client.policies.SetChannelPolicy(
        policy_service_pb2.SetChannelPolicyRequest(request_id="policy-web", channel="web"),
        timeout=10,
    )
    client.record(
        *(
            movement("receipt", sku, location, qty=INITIAL)
            for sku in STOCKED
            for location in LOCATIONS
        )
    )
    fill(client, FILL_EVENTS)
    head = served.head()
    for sku in STOCKED:
        assert served.availability(sku, min_position=head).channel_available == 3 * INITIAL
    before = ReadModelStore(served.database_url)
    try:
        generation_before = before.active_generation()
    finally:
        before.close()

    stop = threading.Event()
    samples: list[list[Sample]] = [[], []]
    failures: list[BaseException] = []

    def read(into: list[Sample]) -> None:
        try:
            n = 0
            while not stop.is_set():
                sku = STOCKED[n % len(STOCKED)]
                n += 1
                seen = served.availability(sku)
                into.append(
                    Sample(
                        time.monotonic(),
                        sku,
                        seen.projection_position,
                        seen.channel_available,
                        seen.network_available,
                    )
                )
        except BaseException as error:
            failures.append(error)

    def write() -> None:
        try:
            n = 0
            while not stop.is_set():
                n += 1
                client.record(
                    movement("receipt", STOCKED[n % len(STOCKED)], LOCATIONS[n % 3], qty=1),
                    *(movement("receipt", f"LIVE-{n % 13}", "DC-1", qty=1) for _ in range(20)),
                )
                time.sleep(0.02)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=read, args=(into,)) for into in samples]
    threads.append(threading.Thread(target=write))
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        rebuild_began = time.monotonic()
        result = cli_rebuild(served.database_url)
        rebuild_ended = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not failures, failures
    assert result.returncode == 0, result.stderr
    assert "rebuilt the read models" in result.stderr, result.stderr

    during = [s for reader in samples for s in reader if rebuild_began <= s.at <= rebuild_ended]
    assert len(during) >= 20, f"only {len(during)} reads during the rebuild"
    for reader in samples:
        for sample in reader:
            assert sample.channel_available >= 3 * INITIAL, sample
            assert sample.network_available >= 3 * INITIAL, sample
        positions = [s.position for s in reader]
        assert positions == sorted(positions), "projection_position went backwards"

    # The projection follows the new generation and converges to the reference.
    head = served.head()
    for sku in STOCKED:
        assert served.availability(sku, min_position=head).channel_available > 3 * INITIAL
    deadline = time.monotonic() + 10
    while f"now follows generation {generation_before + 1}" not in served.follower_log():
        assert time.monotonic() < deadline, served.follower_log()
        time.sleep(0.05)
    store = ReadModelStore(served.database_url)
    try:
        rebuilt = store.rows()
        assert rebuilt.generation == generation_before + 1
        assert rebuilt.position == head
        assert store.generations() == [rebuilt.generation]
        reference = reference_rows(served.database_url)
        assert_same_rows(rebuilt, reference, "rebuilt and followed vs incremental")

        # Idempotent: once more, with nothing new in the ledger.
        again = cli_rebuild(served.database_url)
        assert again.returncode == 0, again.stderr
        twice = store.rows()
        assert twice.generation == rebuilt.generation + 1
        assert_same_rows(twice, rebuilt, "second rebuild vs first")
        assert store.generations() == [twice.generation]

        # One rebuild at a time.
        with store.rebuild_lock():
            refused = cli_rebuild(served.database_url)
        assert refused.returncode == 1, refused.stderr
        assert "another rebuild" in refused.stderr
        assert store.active_generation() == twice.generation
    finally:
        store.close()
    print(
        f"\n{served.database_url.split(':')[0]}: {len(during)} reads during a"
        f" {rebuild_ended - rebuild_began:.2f} s rebuild (CLI process included),"
        f" head {head}, {len(rebuilt.positions)} positions"
    )


def test_rebuild_benchmark_runs_and_compares(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """tools/bench_rebuild.py end to end on a small SQLite ledger (no timing assertions)."""
    from tools.bench_rebuild import main

    out = tmp_path / "bench.json"
    assert main(["--events", "1500", "--rounds", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rebuilt rows identical to incremental: yes" in printed
    result = json.loads(out.read_text())
    assert result["identical"] and result["notifications"] >= 1500
    assert set(result["stages"]) == {
        "raw select",
        "select + decode",
        f"rebuild (batch {result['batch_size']})",
        "incremental (batch 500)",
    }
    assert all(stage["events_per_second"] > 0 for stage in result["stages"].values())
