"""Issue 20: the writer in a process of its own (docs/decisions.md "The writer's own core").

Two API processes (``ledger serve --writer external``) write through the one ``ledger
writer`` that holds the ledger's seat, a second ``ledger writer`` waits as a standby. Under
load from both API processes the holder is killed (SIGKILL): the standby takes the seat, the
API processes reconnect, and clients that were told UNAVAILABLE retry with the same request
id. Afterwards every acknowledged write is in the ledger exactly once, no write conflict was
counted by either writer, and the figures add up.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import psutil
import pytest
from inventory.ledger.v1 import (
    movement_service_pb2,
    movement_service_pb2_grpc,
    reservation_service_pb2,
)

from entrypoints.cli.writer import WRITER_PRIORITY_BOOST
from testbed.server import LedgerProcess
from testbed.writer import HOLDS_SEAT, WriterProcess
from tests.integration.test_grpc_ledger import DUPLICATE, RECORDED, Client, line, movement
from tests.integration.test_metrics import metrics_url, scrape

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(240)]

SKUS = [f"SKU-W{i}" for i in range(8)]
STOCK = 10_000
T = TypeVar("T")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _conflicts(writer: WriterProcess) -> float:
    samples = scrape(metrics_url(writer.log_text))
    return sum(samples.get("ledger_write_conflicts_total", {}).values())


def _events(writer: WriterProcess) -> float:
    samples = scrape(metrics_url(writer.log_text))
    return sum(samples.get("ledger_events_appended_total", {}).values())


@pytest.fixture
def writers(postgres_database_url: str) -> Iterator[tuple[WriterProcess, WriterProcess]]:
    first = WriterProcess(postgres_database_url).start()
    second = WriterProcess(postgres_database_url).start(standby=True)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


class Load:
    """Reserve and receive through one API process until stopped; every call retried with
    its request id / message id until it is answered."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name
        self.reserved: dict[str, tuple[str, str, int]] = {}  # request id -> (id, sku, qty)
        self.received: dict[str, tuple[str, int]] = {}  # message id -> (sku, qty)
        self.retried = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _until_answered(self, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + 60
        while True:
            try:
                return call()
            except grpc.RpcError as error:
                if error.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise
                self.retried += 1
                time.sleep(0.05)

    def _reserve(self, request_id: str, sku: str, qty: int) -> Any:
        return self.client.reservations.Reserve(
            reservation_service_pb2.ReserveRequest(
                request_id=request_id, channel="web", lines=[line(sku, qty, "DC-1")]
            ),
            timeout=5,
        )

    def _receive(self, message_id: str, sku: str) -> Any:
        receipt = movement("receipt", sku, "DC-1", qty=2, message_id=message_id)
        [result] = self.client.record(receipt)
        return result

    def _run(self) -> None:
        try:
            n = 0
            while not self.stop.is_set():
                n += 1
                sku = SKUS[n % len(SKUS)]
                request_id, qty = f"{self.name}-r{n}", 1 + n % 3
                reservation = self._until_answered(
                    functools.partial(self._reserve, request_id, sku, qty)
                )
                self.reserved[request_id] = (reservation.reservation_id, sku, qty)
                message_id = f"{self.name}-m{n}"
                result = self._until_answered(functools.partial(self._receive, message_id, sku))
                # DUPLICATE: the first attempt was applied before its answer was lost.
                assert result.outcome in (RECORDED, DUPLICATE), result
                self.received[message_id] = (sku, 2)
        except BaseException as error:  # reported by the test
            self.error = error

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        self.thread.join(90)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def test_two_api_processes_write_through_one_writer_and_survive_its_death(
    postgres_database_url: str, writers: tuple[WriterProcess, WriterProcess]
) -> None:
    holder, standby = writers
    external = ["--writer", "external"]
    with (
        LedgerProcess(postgres_database_url, extra_args=external) as first,
        LedgerProcess(postgres_database_url, extra_args=external) as second,
    ):
        for process in (first, second):
            assert "writing through the writer process" in process.log_text()
        seed = Client(first)
        for sku in SKUS:
            seed.receive(sku, "DC-1", STOCK)
        loads = [Load(Client(first), "a"), Load(Client(second), "b")]
        for load in loads:
            load.start()
        time.sleep(3)
        # Both API processes' writes so far went through the holder, without a conflict.
        assert _events(holder) > 0
        assert _conflicts(holder) == 0
        before_kill = sum(len(load.reserved) for load in loads)
        assert before_kill > 0 and all(load.reserved for load in loads)
        holder.kill()
        standby.wait_for(HOLDS_SEAT, timeout=30)
        time.sleep(3)
        for load in loads:
            load.join()
        after = sum(len(load.reserved) for load in loads)
        assert after > before_kill, "no write was acknowledged after the takeover"
        assert _conflicts(standby) == 0
        assert _events(standby) > 0

        # Every acknowledged write exactly once: each request id's reservation exists, the
        # ledger holds no reservation nobody was told about, and the buckets add up.
        acked = {rid: held for load in loads for rid, held in load.reserved.items()}
        ids = [reservation_id for reservation_id, _, _ in acked.values()]
        assert len(set(ids)) == len(ids)
        listed = seed.list_all(
            seed.reservations.ListReservations,
            reservation_service_pb2.ListReservationsRequest(channel="web", page_size=1000),
            "reservations",
        )
        assert sorted(r.reservation_id for page in listed for r in page) == sorted(ids)
        received = {mid: got for load in loads for mid, got in load.received.items()}
        for sku in SKUS:
            buckets = seed.buckets(sku, "DC-1")
            reserved = sum(qty for _, s, qty in acked.values() if s == sku)
            on_hand = STOCK + sum(qty for s, qty in received.values() if s == sku)
            assert (buckets["reserved"], buckets["on_hand"]) == (reserved, on_hand), sku
        # Retrying an acknowledged request id answers the first reservation, writes nothing.
        request_id, (reservation_id, sku, qty) = next(iter(acked.items()))
        again = seed.reservations.Reserve(
            reservation_service_pb2.ReserveRequest(
                request_id=request_id, channel="web", lines=[line(sku, qty, "DC-1")]
            ),
            timeout=5,
        )
        assert again.reservation_id == reservation_id
        assert seed.buckets(sku, "DC-1")["reserved"] == sum(
            q for _, s, q in acked.values() if s == sku
        )
        print(
            f"acknowledged {len(acked)} reservations and {len(received)} receipts,"
            f" {before_kill} before the kill; {sum(load.retried for load in loads)} retries"
        )


def test_serve_with_its_own_writer_process(postgres_database_url: str) -> None:
    """``--writer process``: serve starts a writer child; a second serve's child waits as a
    standby and its API process writes through the first one's writer."""
    own = ["--writer", "process"]
    with (
        LedgerProcess(postgres_database_url, extra_args=own) as first,
        LedgerProcess(postgres_database_url, extra_args=own) as second,
    ):
        Client(first).receive("SKU-P", "DC-1", 5)
        Client(second).receive("SKU-P", "DC-1", 7)
        assert Client(second).buckets("SKU-P", "DC-1")["on_hand"] == 12
        # The writer runs ahead of the API processes it serves (when allowed to: root).
        (writer,) = psutil.Process(first.process.pid).children()
        boost = WRITER_PRIORITY_BOOST if os.geteuid() == 0 else 0
        assert writer.nice() == psutil.Process(first.process.pid).nice() - boost
        # The second child may still be starting: the holder's address was already there.
        deadline = time.monotonic() + 20
        while "standby: another writer holds the seat" not in second.log_text():
            assert time.monotonic() < deadline, second.log_text()
            time.sleep(0.05)
        assert first.stop() == 0
        # The survivor's standby child takes over; its API process writes through it.
        deadline = time.monotonic() + 30
        while True:
            try:
                Client(second).receive("SKU-P", "DC-1", 1)
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                assert time.monotonic() < deadline, second.log_text()
                time.sleep(0.1)
        assert Client(second).buckets("SKU-P", "DC-1")["on_hand"] == 13


def _serving_processes(root_pid: int, port: int) -> dict[int, int]:
    """Established connections on ``port`` per process of the ``ledger serve`` tree."""
    root = psutil.Process(root_pid)
    counts: dict[int, int] = {}
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            for connection in process.net_connections(kind="tcp"):
                if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port:
                    counts[process.pid] = counts.get(process.pid, 0) + 1
    return counts


def test_api_processes_share_the_port_and_write_through_one_writer(
    postgres_database_url: str,
) -> None:
    """``--api-processes 2``: two gRPC processes answer on one port (connections spread by
    the kernel), both write through the one writer; a dead API process stops the serve."""
    flags = ["--writer", "process", "--api-processes", "2"]
    with LedgerProcess(postgres_database_url, extra_args=flags) as served:
        deadline = time.monotonic() + 20
        while served.log_text().count("ledger listening on") < 2:
            assert time.monotonic() < deadline, served.log_text()
            time.sleep(0.05)
        channels = [
            grpc.insecure_channel(served.address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(16)
        ]
        try:
            for n, channel in enumerate(channels):
                stub = movement_service_pb2_grpc.MovementServiceStub(channel)
                stub.RecordMovements(
                    movement_service_pb2.RecordMovementsRequest(
                        movements=[movement("receipt", "SKU-A", "DC-1", qty=1, message_id=f"m{n}")]
                    ),
                    timeout=10,
                )
            assert served.process is not None
            counts = _serving_processes(served.process.pid, served.port or 0)
            assert len(counts) == 2 and all(counts.values()), counts
        finally:
            for channel in channels:
                channel.close()
        assert Client(served).buckets("SKU-A", "DC-1")["on_hand"] == 16
        # One API process killed: the serve stops (exit 1) rather than run half-sized.
        assert served.process is not None
        root = psutil.Process(served.process.pid)
        workers = [
            child for child in root.children() if "--api-worker" in " ".join(child.cmdline())
        ]
        assert len(workers) == 1
        workers[0].kill()
        assert served.process.wait(20) == 1
        assert "exited with status" in served.log_text()


def test_api_processes_need_a_writer_process(postgres_database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "serve", "--database", postgres_database_url,
         "--listen", "127.0.0.1:0", "--api-processes", "2"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--api-processes above 1 needs --writer process or external" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
