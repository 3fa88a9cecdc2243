"""The writer socket's client and server in one process, over a real SQLite ledger: what a
caller is promised when the writer is away, slow to answer, or replaced (issue 20)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from ledger.config import Settings
from ledger.domain.errors import StoreUnavailable
from ledger.pipeline import PipelineOverloaded
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from ledger.writer import client as writer_client
from ledger.writer.client import RemoteWriter
from ledger.writer.election import WriterAdvert
from ledger.writer.local import LocalWriter
from ledger.writer.server import WriterServer

KEY = b"k" * 32
CTX = CallContext("tester", time_remaining_seconds=10.0)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LedgerService]:
    from entrypoints import bootstrap

    opened = bootstrap.open_service(Settings(database_url=f"sqlite:///{tmp_path / 'l.db'}"))
    try:
        yield opened
    finally:
        opened.close()


class Seat:
    """What the API process's client reads: the advert of whoever holds the seat now."""

    def __init__(self) -> None:
        self.advert: WriterAdvert | None = None

    def hold(self, server: WriterServer) -> None:
        self.advert = WriterAdvert("127.0.0.1", server.port, KEY, 1)

    def __call__(self) -> WriterAdvert | None:
        return self.advert


def _server(service: LedgerService) -> WriterServer:
    assert isinstance(service.writer, LocalWriter)
    return WriterServer(service.writer, "127.0.0.1", 0, KEY)


def _safety_stock(service: LedgerService, sku: str) -> int:
    return service.get_position(sku, "DC-1").safety_stock


def _link_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("writer-link"))


def test_a_call_parked_while_no_writer_is_sent_once_one_is_reached_and_a_cancelled_one_never(
    service: LedgerService,
) -> None:
    seat = Seat()
    client = RemoteWriter(seat)
    try:
        kept = client.submit(CTX, "set_safety_stock", ("r-1", "SKU-A", "DC-1", 4), {})
        dropped = client.submit(CTX, "set_safety_stock", ("r-2", "SKU-B", "DC-1", 6), {})
        assert dropped.cancel()
        server = _server(service)
        seat.hold(server)
        assert kept.result(timeout=5).safety_stock == 4
        with pytest.raises(CancelledError):
            dropped.result(timeout=0)
        time.sleep(0.3)  # a cancelled call that had been sent would be applied by now
        assert (_safety_stock(service, "SKU-A"), _safety_stock(service, "SKU-B")) == (4, 0)
        server.drain()
        server.close()
    finally:
        client.close()


def test_a_parked_call_gives_up_within_its_deadline_when_no_writer_comes(
    service: LedgerService,
) -> None:
    client = RemoteWriter(Seat())
    try:
        began = time.monotonic()
        future = client.submit(
            CallContext("tester", time_remaining_seconds=0.5),
            "set_safety_stock",
            ("r-1", "SKU-A", "DC-1", 4),
            {},
        )
        with pytest.raises(StoreUnavailable):
            future.result(timeout=5)
        assert time.monotonic() - began < 2.0
    finally:
        client.close()
    assert _safety_stock(service, "SKU-A") == 0


def test_a_writer_address_that_never_answers_the_handshake_does_not_hang_calls() -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    port = silent.getsockname()[1]
    client = RemoteWriter(lambda: WriterAdvert("127.0.0.1", port, KEY, 1))
    try:
        future = client.submit(
            CallContext("tester", time_remaining_seconds=1.0),
            "set_safety_stock",
            ("r-1", "SKU-A", "DC-1", 4),
            {},
        )
        with pytest.raises(StoreUnavailable):
            future.result(timeout=5)
    finally:
        began = time.monotonic()
        client.close()
        assert time.monotonic() - began < 4.0
        silent.close()
        for sock in accepted:
            sock.close()


def test_a_writer_that_stops_disconnects_its_clients_and_no_threads_pile_up(
    service: LedgerService,
) -> None:
    seat = Seat()
    client = RemoteWriter(seat)
    try:
        for round_ in range(5):
            server = _server(service)
            seat.hold(server)
            assert client.wait_connected(5)
            done = client.submit(
                CTX, "set_safety_stock", (f"r-{round_}", "SKU-A", "DC-1", round_), {}
            )
            assert done.result(timeout=5).safety_stock == round_
            server.drain()
            server.close()
            seat.advert = None
            deadline = time.monotonic() + 2
            while client.wait_connected(0):  # the client sees the hang-up at once
                assert time.monotonic() < deadline, "still connected to a closed writer"
                time.sleep(0.02)
        time.sleep(0.2)
        assert _link_threads() <= 2  # at most one link's sender and receiver, winding down
    finally:
        client.close()


def test_a_call_the_writer_could_not_reach_in_time_is_refused_without_being_sent(
    service: LedgerService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's queue estimate rides on its answers; the API process refuses what would
    wait past its deadline (RESOURCE_EXHAUSTED) itself, and stops trusting the estimate once
    no fresher one came for a while (0.1 s), however large it was."""
    assert isinstance(service.writer, LocalWriter)
    monkeypatch.setattr(service.writer, "expected_wait", lambda: 30.0)
    # Trusted for 0.1 s in service; longer here, so a slow CI machine cannot age it first.
    monkeypatch.setattr(writer_client, "LOAD_FRESH_SECONDS", 0.5)
    server = _server(service)
    seat = Seat()
    seat.hold(server)
    client = RemoteWriter(seat)
    try:
        first = client.submit(CTX, "set_safety_stock", ("r-1", "SKU-A", "DC-1", 4), {})
        assert first.result(timeout=5).safety_stock == 4  # its answer said: 30 s deep
        short = CallContext("tester", time_remaining_seconds=0.2)
        with pytest.raises(PipelineOverloaded) as refused:
            client.submit(short, "set_safety_stock", ("r-2", "SKU-B", "DC-1", 6), {})
        assert refused.value.retry_after_seconds >= 0.05
        assert "ms deep" in str(refused.value)
        assert _safety_stock(service, "SKU-B") == 0  # the refused call never reached it
        time.sleep(0.6)  # no fresher word since: the same short call is sent
        later = client.submit(short, "set_safety_stock", ("r-3", "SKU-B", "DC-1", 5), {})
        assert later.result(timeout=5).safety_stock == 5
        server.drain()
        server.close()
    finally:
        client.close()
