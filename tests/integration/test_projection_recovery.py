"""Crash recovery of the projection process (acceptance item of issue 3):

    the runner killed with SIGKILL at random points during a 5,000-event run and restarted
    converges to read models identical to an uninterrupted run (compared row by row).

Method, on SQLite and on PostgreSQL: a ``ledger serve --projections external`` process
takes ~5,000 ledger events (RecordMovements in requests of 50 movements of every type —
shipments that drive buckets negative, stale counts, short transfers, shipments against
unknown reservations, so every kind of exception appears — plus reservations, safety
stock, fences and channel policies), written by a thread. Meanwhile a separate
``python -m entrypoints.cli projections --batch-size N`` process (N of 1-13, drawn per start)
follows the ledger and is SIGKILLed at seeded random points — once it has applied a
random share of its backlog, so the kill lands amid batches and commits — and restarted,
again and again, until the writes are done, at least ``MIN_KILLS`` kills happened (most
with work pending) and the killed processes got through most of the log. Then it is
started once more, catches up and is stopped. The reference is an uninterrupted run of the same
runner into a fresh table prefix, in the test process; then the read models are also
rebuilt (a new generation from position 0). All three must hold the same rows — every
position state, policy and exception, row by row, exactly — and the same tracking position
(the ledger head).

On SQLite the ledger file is written by the API process only; the projections process just
reads it (WAL allows concurrent readers) and writes its own ``ledger.projections.db``.

``PROJECTION_RECOVERY_SEED`` replays a given schedule.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from inventory.ledger.v1 import (
    movement_pb2,
    policy_service_pb2,
    query_service_pb2,
)

from ledger.application import InventoryLedger
from ledger.config import eventsourcing_env
from projections.position_state import (
    NEGATIVE_BUCKET,
    STALE_COUNT,
    TRANSFER_SHORTAGE,
    UNKNOWN_RESERVATION,
)
from projections.rebuild import rebuild
from projections.runner import ProjectionRunner
from projections.store import ReadModelRows, ReadModelStore
from testbed.server import LedgerProcess
from tests.integration.test_grpc_ledger import Client, line, movement, ts

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("PROJECTION_RECOVERY_SEED", "20261124"))
EVENTS = 5_000  # ledger events (notifications) to write
MOVEMENTS_PER_REQUEST = 50
# Small batches, a different size per life: kills land between and inside commits, and
# batch boundaries move around (the rows must not depend on them).
PROJECTOR_BATCHES = (1, 2, 3, 5, 8, 13)
KILLED_SHARE = 0.9  # kill until the killed lives got through this share of the log,
KILL_BUDGET_SECONDS = 30.0  # unless this machine is too slow for that
WRITE_SECONDS = 6.0  # the writes are paced over this long, so kills land during them
MIN_KILLS = 8
SKUS = [f"SKU-{n:02d}" for n in range(24)]
LOCATIONS = ["DC-1", "DC-2", "STORE-3", "STORE-4"]
CHANNELS = ["web", "market", "b2b"]
START_TIMEOUT = 30.0
CATCH_UP_TIMEOUT = 60.0


# ---- the projections process ----------------------------------------------------------------


class Projector:
    """``python -m entrypoints.cli projections`` as a subprocess that can be SIGKILLed."""

    def __init__(self, database_url: str, log_path: Path) -> None:
        self.database_url = database_url
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self, batch_size: int = PROJECTOR_BATCHES[-1]) -> None:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "entrypoints.cli",
                    "projections",
                    "--database",
                    self.database_url,
                    "--batch-size",
                    str(batch_size),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def wait_following(self) -> None:
        """Until the process logged that it follows the ledger (its runner is running)."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while "projections following" not in self.log()[self._offset :]:
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.01)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=10) == -signal.SIGKILL

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# ---- the workload -----------------------------------------------------------------------------


class Workload:
    """Seeded random traffic through the API of one server: every movement type, in
    requests of ``MOVEMENTS_PER_REQUEST``, with policies and reservations in between."""

    def __init__(self, client: Client, rng: random.Random) -> None:
        self.client = client
        self.rng = rng
        self.transfers: list[tuple[str, str, str, int]] = []  # id, sku, destination, qty
        self.reservations: list[tuple[str, str, str]] = []  # id, sku, location
        self.head = 0
        self.requests = 0

    def run(self, target: int, stop: threading.Event) -> None:
        began = time.monotonic()
        while self.head < target and not stop.is_set():
            # Paced: about WRITE_SECONDS for the whole run.
            time.sleep(max(0.0, began + WRITE_SECONDS * self.head / target - time.monotonic()))
            self.requests += 1
            results = self.client.record(*(self.movement() for _ in range(MOVEMENTS_PER_REQUEST)))
            self.head = max(self.head, *(r.ledger_position for r in results))
            self.policies()

    def movement(self) -> movement_pb2.Movement:
        rng = self.rng
        sku, location = rng.choice(SKUS), rng.choice(LOCATIONS)
        kind = rng.choices(
            [
                "receipt",
                "shipment",
                "adjustment",
                "cycle_count",
                "quarantine",
                "release",
                "damage",
                "write_off",
                "dispatch",
                "transfer_receipt",
                "return",
                "putaway",
            ],
            weights=[20, 18, 6, 5, 4, 3, 4, 3, 8, 8, 4, 4],
        )[0]
        if kind == "receipt":
            return movement(
                "receipt", sku, location, qty=rng.randint(1, 40), putaway_pending=rng.random() < 0.2
            )
        if kind == "putaway":
            return movement("putaway", sku, location, qty=rng.randint(1, 10))
        if kind == "shipment":
            fields: dict[str, Any] = {"qty": rng.randint(1, 30)}  # often more than on hand
            if self.reservations and rng.random() < 0.3:
                reservation_id, sku, location = rng.choice(self.reservations)
                fields["reservation_id"] = reservation_id
            elif rng.random() < 0.1:
                fields["reservation_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            return movement("shipment", sku, location, **fields)
        if kind == "adjustment":
            delta = rng.choice([-1, 1]) * rng.randint(1, 15)
            return movement("adjustment", sku, location, delta=delta, reason="recount")
        if kind == "cycle_count":
            # Some counts are dated before the newest count: STALE_COUNT.
            occurred = datetime.now(UTC) - timedelta(hours=rng.choice([0, 0, 0, 48]))
            return movement(
                "cycle_count", sku, location, counted=rng.randint(0, 50), occurred_at=ts(occurred)
            )
        if kind == "quarantine":
            return movement("quarantine", sku, location, qty=rng.randint(1, 8))
        if kind == "release":
            return movement("quarantine_release", sku, location, qty=rng.randint(1, 8))
        if kind == "damage":
            bucket = rng.choice(
                [movement_pb2.FROM_BUCKET_UNSPECIFIED, movement_pb2.FROM_BUCKET_QUARANTINE]
            )
            return movement("damage", sku, location, qty=rng.randint(1, 5), from_bucket=bucket)
        if kind == "write_off":
            return movement("write_off", sku, location, qty=rng.randint(1, 5))
        if kind == "dispatch" or (kind == "transfer_receipt" and not self.transfers):
            destination = rng.choice([loc for loc in LOCATIONS if loc != location])
            transfer_id = f"T-{rng.getrandbits(48):012x}"
            qty = rng.randint(1, 20)
            self.transfers.append((transfer_id, sku, destination, qty))
            return movement(
                "transfer_dispatch",
                sku,
                location,
                qty=qty,
                transfer_id=transfer_id,
                to_location_id=destination,
                expected_at=ts(datetime.now(UTC) + timedelta(days=rng.randint(0, 5))),
            )
        if kind == "transfer_receipt":
            transfer_id, sku, destination, qty = self.transfers.pop(
                rng.randrange(len(self.transfers))
            )
            received = rng.randint(max(1, qty - 5), qty)  # final and short: TRANSFER_SHORTAGE
            return movement(
                "transfer_receipt",
                sku,
                destination,
                qty=received,
                transfer_id=transfer_id,
                final=rng.random() < 0.7,
            )
        disposition = rng.choice(
            [
                movement_pb2.DISPOSITION_RESTOCK,
                movement_pb2.DISPOSITION_QUARANTINE,
                movement_pb2.DISPOSITION_DAMAGED,
            ]
        )
        return movement(
            "return_receipt", sku, location, qty=rng.randint(1, 6), disposition=disposition
        )

    def policies(self) -> None:
        """Between movement requests: policies, fences and reservations (some refused)."""
        rng, client = self.rng, self.client
        sku, location, channel = rng.choice(SKUS), rng.choice(LOCATIONS), rng.choice(CHANNELS)
        request_id = f"req-{rng.getrandbits(64):016x}"
        try:
            choice = rng.random()
            if choice < 0.25:
                client.policies.SetSafetyStock(
                    policy_service_pb2.SetSafetyStockRequest(
                        request_id=request_id, sku=sku, location_id=location, qty=rng.randint(0, 5)
                    ),
                    timeout=10,
                )
            elif choice < 0.45:
                client.policies.SetChannelFence(
                    policy_service_pb2.SetChannelFenceRequest(
                        request_id=request_id,
                        sku=sku,
                        location_id=location,
                        channel=channel,
                        qty=rng.randint(0, 4),
                    ),
                    timeout=10,
                )
            elif choice < 0.6:
                client.policies.SetChannelPolicy(
                    policy_service_pb2.SetChannelPolicyRequest(
                        request_id=request_id,
                        channel=channel,
                        eligible_location_ids=rng.sample(LOCATIONS, rng.randint(0, 3)),
                        share_percent=rng.choice([0, 50, 80, 100]),
                        buffer=rng.randint(0, 3),
                        max_publish=rng.choice([0, 0, 25]),
                    ),
                    timeout=10,
                )
            else:
                reservation = client.reserve(
                    line(sku, rng.randint(1, 4), location),
                    channel=channel,
                    request_id=request_id,
                    ttl=duration_pb2.Duration(seconds=3600),  # nothing expires during the test
                )
                self.reservations.append((reservation.reservation_id, sku, location))
                if rng.random() < 0.4:
                    client.commit(reservation.reservation_id, channel=channel)
                elif rng.random() < 0.2:
                    client.release(reservation.reservation_id, channel=channel)
        except grpc.RpcError as error:
            # Refusals are part of the workload (insufficient availability, fences).
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error


# ---- comparison -------------------------------------------------------------------------------


def assert_same_rows(actual: ReadModelRows, expected: ReadModelRows, what: str) -> None:
    assert actual.position == expected.position, f"{what}: tracking position"
    for table in ("positions", "policies", "exceptions"):
        got, want = getattr(actual, table), getattr(expected, table)
        for index, (row, expected_row) in enumerate(zip(got, want, strict=False)):
            assert row == expected_row, f"{what}: {table} row {index} differs"
        assert len(got) == len(want), f"{what}: {table} has {len(got)} rows, not {len(want)}"


@dataclass(frozen=True)
class Life:
    """One run of the projections process, from start to SIGKILL."""

    started_at: int  # tracking position when it started
    killed_at: int  # tracking position after the kill
    head: int  # the ledger head just after the kill


def kill_after(projector: Projector, store: ReadModelStore, head: int, rng: random.Random) -> None:
    """SIGKILL the projector at a random point of its backlog (once it applied a random
    share of it), or after a random time when it has (almost) nothing to do."""
    applied = store.applied_position()
    if head - applied > 1:
        target = applied + rng.randint(1, head - applied - 1)
        limit = time.monotonic() + 10  # a stuck projector: the comparison will tell
        while store.applied_position() < target and time.monotonic() < limit:
            time.sleep(0.002)
    else:
        time.sleep(rng.uniform(0.05, 0.6))
    projector.kill()


def head_of(client: Client) -> int:
    return client.query.GetProjectionStatus(
        query_service_pb2.GetProjectionStatusRequest(), timeout=10
    ).head_position


# ---- the test ---------------------------------------------------------------------------------


@pytest.fixture
def projector(database_url: str, tmp_path: Path) -> Iterator[Projector]:
    process = Projector(database_url, tmp_path / "projections.log")
    try:
        yield process
    finally:
        process.close()


def test_sigkilled_projection_converges_to_an_uninterrupted_run(
    database_url: str, projector: Projector
) -> None:
    rng = random.Random(SEED)
    began = time.monotonic()
    server = LedgerProcess(database_url, extra_args=["--projections", "external"])
    server.start()
    try:
        client = Client(server)
        store = ReadModelStore(database_url)  # the test's view of the projection's tables
        workload = Workload(client, random.Random(rng.getrandbits(64)))
        stop = threading.Event()
        failures: list[BaseException] = []

        def write() -> None:
            try:
                workload.run(EVENTS, stop)
            except BaseException as error:  # surfaced below
                failures.append(error)

        writer = threading.Thread(target=write, name="writer")
        writer.start()
        lives: list[Life] = []
        try:
            while not failures and (
                writer.is_alive()
                or len(lives) < MIN_KILLS
                or (
                    store.applied_position() < KILLED_SHARE * head_of(client)
                    and time.monotonic() - began < KILL_BUDGET_SECONDS
                )
            ):
                time.sleep(rng.uniform(0.0, 0.6))  # a backlog builds while none runs
                started_at = store.applied_position()
                projector.start(rng.choice(PROJECTOR_BATCHES))
                projector.wait_following()
                kill_after(projector, store, head_of(client), rng)
                lives.append(Life(started_at, store.applied_position(), head_of(client)))
                assert time.monotonic() - began < 2 * KILL_BUDGET_SECONDS, "kill cycles hang"
        finally:
            stop.set()
            writer.join(60)
        assert not failures, failures
        assert workload.head >= EVENTS
        # Quiesce the ledger: the head is fixed from here on.
        assert server.stop() == 0, server.log_text()
        server_log = server.log_text(all_runs=True)
        assert "Traceback" not in server_log and " ERROR " not in server_log, server_log

        app = InventoryLedger(eventsourcing_env(database_url))
        try:
            head = app.head_position()
            # The last life: catch up and stop cleanly.
            projector.start()
            projector.wait_following()
            deadline = time.monotonic() + CATCH_UP_TIMEOUT
            while store.applied_position() < head:
                assert time.monotonic() < deadline, projector.log()
                time.sleep(0.05)
            assert projector.stop() == 0, projector.log()
            log = projector.log()
            assert "Traceback" not in log and " ERROR " not in log, log

            # The kills landed while there was work to do, and each life made progress.
            mid_run = [life for life in lives if 0 < life.killed_at < life.head]
            assert len(mid_run) >= MIN_KILLS // 2, lives
            assert sum(life.killed_at > life.started_at for life in lives) >= MIN_KILLS // 2

            recovered = store.rows()
            assert recovered.position == head

            # Reference: one uninterrupted run of the same runner into fresh tables.
            reference_store = ReadModelStore(database_url, prefix="reference")
            try:
                ProjectionRunner(app, reference_store, batch_max=500).catch_up()
                reference = reference_store.rows()
            finally:
                reference_store.close()
            assert_same_rows(recovered, reference, "recovered vs uninterrupted")

            # The workload exercised what it should.
            assert len(reference.positions) >= len(SKUS) * len(LOCATIONS) // 2
            assert reference.policies
            kinds = {row[2] for row in reference.exceptions}
            assert {NEGATIVE_BUCKET, STALE_COUNT, TRANSFER_SHORTAGE, UNKNOWN_RESERVATION} <= kinds

            # And a rebuild from position 0 reproduces the same rows in a new generation.
            report = rebuild(app, store)
            assert report.previous == recovered.generation
            rebuilt = store.rows()
            assert rebuilt.generation == report.generation != recovered.generation
            assert_same_rows(rebuilt, reference, "rebuilt vs uninterrupted")
            assert store.generations() == [report.generation]
        finally:
            app.close()
            store.close()
        print(
            f"\n{database_url.split(':')[0]}: head {head}, {len(lives)} kills"
            f" ({len(mid_run)} with work pending), positions at kill"
            f" {[life.killed_at for life in lives]}, {len(reference.positions)} positions,"
            f" {len(reference.exceptions)} exceptions, {time.monotonic() - began:.1f} s"
        )
    finally:
        server.close()
