"""The ledger under test: ``ledger serve`` processes sharing one PostgreSQL database, a
``ledger projections`` process keeping the read models (as in production on PostgreSQL),
and the stock the figures reserve from."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from inventory.ledger.v1 import (
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
    position_pb2,
    query_service_pb2,
    query_service_pb2_grpc,
)

from ledger.domain.limits import MOVEMENTS_PER_REQUEST_MAX
from testbed.projections import ProjectionsProcess
from testbed.server import LedgerProcess
from tools.bench.progress import progress

LOCATION = "BENCH-DC"
SOURCE = "bench-seed"
CALL_TIMEOUT_SECONDS = 120.0
_METRICS = re.compile(r"metrics on (?P<url>http://\S+)")


class Cluster:
    """``processes`` API servers (open mode on loopback and no tokens, as in the tests) and
    one projections process, all on ``database_url``."""

    def __init__(
        self, database_url: str, processes: int, writer: str = "thread", api_processes: int = 1
    ) -> None:
        self.database_url = database_url
        # Projections run in their own process on PostgreSQL ("auto"); say so explicitly.
        self.servers = [
            LedgerProcess(
                database_url,
                env={"LEDGER_PROJECTIONS": "external"},
                # Commits and batch sizes per figure come from here (sampling.Metrics).
                extra_args=[
                    "--metrics-listen",
                    "127.0.0.1:0",
                    "--writer",
                    writer,
                    "--api-processes",
                    str(api_processes),
                ],
            )
            for _ in range(processes)
        ]
        self.metrics_urls: list[str] = []
        self.projections = ProjectionsProcess(database_url)
        self._channel: grpc.Channel | None = None

    def start(self) -> Cluster:
        # One after the other: the first creates the tables.
        for index, server in enumerate(self.servers):
            server.start()
            took = server.start_seconds or 0.0
            progress(f"ledger serve #{index + 1} on {server.address} ({took:.1f} s)")
            # With --writer process the writer child logs its own endpoint too; it may
            # still be starting (a standby's), so its commits are found when it takes over.
            self.metrics_urls.append(" ".join(self._metrics_of(server)))
        self.projections.start()
        progress("ledger projections following the ledger")
        return self

    @staticmethod
    def _metrics_of(server: LedgerProcess) -> list[str]:
        deadline = time.monotonic() + 10
        while True:
            urls = [found["url"] for found in _METRICS.finditer(server.log_text())]
            expected = (
                2 if "--writer" in server.extra_args and "process" in server.extra_args else 1
            )
            if len(urls) >= expected or time.monotonic() > deadline:
                return urls
            time.sleep(0.05)

    @property
    def addresses(self) -> list[str]:
        return [server.address for server in self.servers]

    @property
    def server_pids(self) -> list[int]:
        return [server.process.pid for server in self.servers if server.process is not None]

    @property
    def projections_pid(self) -> int | None:
        process = self.projections.process
        return process.pid if process is not None else None

    def channel(self) -> grpc.Channel:
        """The orchestrator's own channel to the first server (seeding, checks, sampling)."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.addresses[0])
        return self._channel

    def movements(self) -> movement_service_pb2_grpc.MovementServiceStub:
        return movement_service_pb2_grpc.MovementServiceStub(self.channel())

    def queries(self) -> query_service_pb2_grpc.InventoryQueryServiceStub:
        return query_service_pb2_grpc.InventoryQueryServiceStub(self.channel())

    def position(self, sku: str, location: str = LOCATION) -> position_pb2.Position:
        return self.queries().GetPosition(
            query_service_pb2.GetPositionRequest(sku=sku, location_id=location),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        # Side by side: each drains its in-flight calls for up to the grace period.
        stoppers = [
            threading.Thread(target=process.close) for process in [self.projections, *self.servers]
        ]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()

    def server_logs(self) -> list[str]:
        return [server.log_text() for server in self.servers]


def receive(cluster: Cluster, stock: Sequence[tuple[str, int]]) -> None:
    """One receipt per ``(sku, qty)``, in requests of the most movements allowed."""
    run = uuid.uuid4().hex[:8]
    stub = cluster.movements()
    for start in range(0, len(stock), MOVEMENTS_PER_REQUEST_MAX):
        chunk = stock[start : start + MOVEMENTS_PER_REQUEST_MAX]
        response = stub.RecordMovements(
            movement_service_pb2.RecordMovementsRequest(
                movements=[
                    movement_pb2.Movement(
                        message_id=f"seed-{run}-{start + k}",
                        source=SOURCE,
                        type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
                        sku=sku,
                        location_id=LOCATION,
                        qty=qty,
                    )
                    for k, (sku, qty) in enumerate(chunk)
                ]
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        recorded = sum(
            r.outcome == movement_service_pb2.MOVEMENT_OUTCOME_RECORDED for r in response.results
        )
        if recorded != len(chunk):
            raise RuntimeError(f"seeding: {recorded} of {len(chunk)} receipts recorded")


@dataclass
class Layout:
    """Which SKUs (all at ``LOCATION``) each figure uses; every figure gets fresh ones, so
    one run's holds never slow another's position down."""

    distinct: list[str]
    hot: dict[str, str] = field(default_factory=dict)  # figure key -> its one SKU
    record: list[str] = field(default_factory=list)
    ingest: list[str] = field(default_factory=list)

    @classmethod
    def make(cls, positions: int, hot_keys: Sequence[str], record_positions: int) -> Layout:
        return cls(
            distinct=[f"D-{i:05d}" for i in range(positions)],
            hot={key: f"HOT-{key}" for key in hot_keys},
            record=[f"R-{i:05d}" for i in range(record_positions)],
            ingest=[f"I-{i:03d}" for i in range(64)],
        )
