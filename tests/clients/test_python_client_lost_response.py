"""Issue 7, must show 4: a ``Reserve`` whose response is lost (the connection drops after the
server committed) is retried by the client and reserves exactly once.

Method: the client talks to the real ``ledger serve`` through a TCP proxy in this test that
reads the server's HTTP/2 frames. Armed, it closes both sockets when the first DATA frame of a
stream arrives from the server, instead of forwarding it. A unary response's DATA frame
(its message) is written only after the handler returned, so at that moment the reservation
is committed while the client has not seen it: the client gets ``UNAVAILABLE``, retries on a
new connection with the same ``request_id``, and the ledger answers with the recorded result.
The ledger's own figures (``ListReservations``, ``GetPosition`` with holds, the entries in
``StreamLedger``) then show one reservation holding the quantity once; its access log shows
two successful ``Reserve`` calls with the one correlation id (the lost answer and the replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from typing import Any

import grpc
import pytest
from inventory.ledger.v1 import audit_service_pb2
from inventory_ledger_client import (
    AsyncLedgerClient,
    CallInfo,
    LedgerClient,
    RetryPolicy,
    movement,
)

from testbed.server import LedgerProcess

CHANNEL = "web"
LOCATION = "DC-EAST"
HTTP2_DATA = 0x0
FRAME_HEADER = 9


class LosingProxy:
    """A TCP proxy that, when armed, loses the next response message (once per arm)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._armed = False
        self.dropped = 0
        self.connections = 0
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        with self._lock:
            self._armed = True

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client), daemon=True).start()

    def _forward(self, source: socket.socket, target: socket.socket) -> None:
        """Client → server, verbatim."""
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(target)

    def _answers(self, server: socket.socket, client: socket.socket) -> None:
        """Server → client, frame by frame (the server side sends no preface, only frames)."""
        buffer = b""
        try:
            while data := server.recv(65536):
                buffer += data
                while len(buffer) >= FRAME_HEADER:
                    length = int.from_bytes(buffer[:3], "big")
                    if len(buffer) < FRAME_HEADER + length:
                        break
                    frame, buffer = buffer[: FRAME_HEADER + length], buffer[FRAME_HEADER + length :]
                    stream_id = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
                    if frame[3] == HTTP2_DATA and stream_id and length and self._take_arm():
                        _close(server)  # the response message is lost with the connection
                        _close(client)
                        return
                    client.sendall(frame)
        except OSError:
            pass
        _close(server)
        _close(client)

    def _take_arm(self) -> bool:
        with self._lock:
            if not self._armed:
                return False
            self._armed = False
            self.dropped += 1
            return True


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def proxy(ledger_server: LedgerProcess) -> Any:
    losing = LosingProxy(ledger_server.address)
    try:
        yield losing
    finally:
        losing.close()


def run_scenario(variant: str, proxy: LosingProxy, sku: str, order_ref: str, cid: str) -> Any:
    """Reserve 3 (response lost), then commit (response lost too), through the proxy."""
    calls: list[CallInfo] = []
    retry = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=0.5)
    address = proxy.address
    if variant == "sync":
        with LedgerClient(address, retry=retry, on_call=calls.append) as client:
            client.get_position(sku, LOCATION)  # the connection is up before the drop
            proxy.arm()
            reservation = client.reserve(
                CHANNEL, [(sku, LOCATION, 3)], order_ref=order_ref, correlation_id=cid
            )
            proxy.arm()
            committed = client.commit(reservation.reservation_id, correlation_id=cid + "-commit")
    else:

        async def scenario() -> Any:
            async with AsyncLedgerClient(address, retry=retry, on_call=calls.append) as client:
                await client.get_position(sku, LOCATION)
                proxy.arm()
                reservation = await client.reserve(
                    CHANNEL, [(sku, LOCATION, 3)], order_ref=order_ref, correlation_id=cid
                )
                proxy.arm()
                committed = await client.commit(
                    reservation.reservation_id, correlation_id=cid + "-commit"
                )
                return reservation, committed

        reservation, committed = asyncio.run(scenario())
    return reservation, committed, calls


@pytest.mark.parametrize("variant", ["sync", "async"])
def test_a_lost_reserve_response_is_retried_and_reserves_exactly_once(
    ledger_server: LedgerProcess, proxy: LosingProxy, variant: str
) -> None:
    sku = f"LOST-{uuid.uuid4().hex[:10]}"
    order_ref = f"order-{uuid.uuid4().hex[:8]}"
    cid = f"lost-{uuid.uuid4().hex[:12]}"
    with LedgerClient(ledger_server.address) as direct:
        direct.record_movements(
            [movement("receipt", source="lost-test", sku=sku, location_id=LOCATION, qty=10)]
        )
        reservation, committed, calls = run_scenario(variant, proxy, sku, order_ref, cid)

        # Both responses were lost once, and each call took a second attempt on a new connection.
        assert proxy.dropped == 2 and proxy.connections >= 2
        [reserve_call] = [c for c in calls if c.method == "ReservationService/Reserve"]
        [commit_call] = [c for c in calls if c.method == "ReservationService/Commit"]
        assert reserve_call.code == commit_call.code == grpc.StatusCode.OK
        assert reserve_call.attempts >= 2 and commit_call.attempts >= 2
        assert reserve_call.correlation_id == cid
        # The server had answered the first attempt (OK) before the connection dropped.
        # (Access lines are written by a listener thread a moment after the answer.)
        line = f"ReservationService/Reserve OK principal=anonymous correlation_id={cid} "
        deadline = time.monotonic() + 10
        while ledger_server.log_text().count(line) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ledger_server.log_text().count(line) == 2

        # Exactly one reservation for the order, holding the quantity once.
        listed = direct.list_reservations(CHANNEL, order_ref=order_ref).reservations
        assert [r.reservation_id for r in listed] == [reservation.reservation_id]
        assert committed.reservation_id == reservation.reservation_id
        position = direct.get_position(sku, LOCATION, include_holds=True)
        assert (position.reserved, position.allocated, position.available) == (0, 3, 7)
        assert [(h.reservation_id, h.qty) for h in position.holds] == [
            (reservation.reservation_id, 3)
        ]
        kinds = [
            entry.type
            for entry in direct.stream_ledger()
            if entry.reservation_id == reservation.reservation_id
        ]
        assert kinds == [
            audit_service_pb2.ENTRY_TYPE_HOLD_PLACED,
            audit_service_pb2.ENTRY_TYPE_HOLD_COMMITTED,
        ]
