"""The storefront connector (clients/connectors/storefront) end to end, against a real ledger.

Goal (issue 7, must show 3): stock received through ``RecordMovements`` appears in the
storefront stand-in; an order reserves; cancelling releases; paying commits; the server is
restarted (cleanly, then by SIGKILL) mid-test and the storefront ends in sync with
``GetAvailability``, with exactly the expected reservations in the ledger.

Method: ``ledger serve`` on SQLite (projections in-process) on a fixed port, so the connector
can reconnect to the same address; the connector runs in-process and is driven only through
its shop's HTTP API, as a shop would drive it. Its reconciliation is set to once an hour, so
every value the shop shows after a restart came from re-watching, not from the safety net.
A second test runs the CLI (``python -m storefront_connector``) as a subprocess.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from inventory.ledger.v1 import (
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
    reservation_pb2,
    reservation_service_pb2,
    reservation_service_pb2_grpc,
)

from testbed.server import LedgerProcess

REPO = Path(__file__).resolve().parents[2]
CONNECTOR_SRC = REPO / "clients" / "connectors" / "storefront" / "src"
CLIENT_SRC = REPO / "clients" / "python" / "src"
# The connector and the typed client are packages of their own (pip install them); when they
# are not installed, import them from the tree.
for _module, _source in (
    ("storefront_connector", CONNECTOR_SRC),
    ("inventory_ledger_client", CLIENT_SRC),
):
    if importlib.util.find_spec(_module) is None:
        sys.path.insert(0, str(_source))

from storefront_connector import Settings, StorefrontConnector  # noqa: E402
from storefront_connector.ledger import StockLevel  # noqa: E402
from storefront_connector.orders import request_id  # noqa: E402
from storefront_connector.sync import StockBook  # noqa: E402

CHANNEL = "web"
SKUS = ("SKU-A", "SKU-B", "SKU-never")  # SKU-never gets no stock: the shop shows 0
LOCATION = "DC-EAST"
WAIT_SECONDS = 15.0


# ---- helpers ------------------------------------------------------------------------------------


def source_paths() -> list[str]:
    """Directories of this checkout that this process imports the two packages from."""
    found = []
    for module in ("storefront_connector", "inventory_ledger_client"):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, module
        root = Path(spec.origin).resolve().parents[1]
        if root.is_relative_to(REPO):
            found.append(str(root))
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


class Shop:
    """The stand-in shop's HTTP API, as a customer or the shop platform uses it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def stock(self) -> dict[str, int]:
        status, body = self.call("GET", "/stock")
        assert status == 200, body
        return body["stock"]

    def shows(self, **expected: int) -> Callable[[], bool]:
        return lambda: all(self.stock().get(sku) == qty for sku, qty in expected.items())

    def place(self, order_id: str, **lines: int) -> tuple[int, Any]:
        order = {"order_id": order_id, "lines": [{"sku": s, "qty": q} for s, q in lines.items()]}
        return self.call("POST", "/orders", order)


class Ledger:
    """The test's own view of the ledger (the warehouse recording stock, and the auditor)."""

    def __init__(self, process: LedgerProcess) -> None:
        self.process = process
        self._messages = 0
        self.last_position = 0

    def receive(self, sku: str, qty: int, *, via: LedgerProcess | None = None) -> None:
        self._messages += 1
        server = via or self.process
        answer = server.stub(movement_service_pb2_grpc.MovementServiceStub).RecordMovements(
            movement_service_pb2.RecordMovementsRequest(
                movements=[
                    movement_pb2.Movement(
                        message_id=f"receipt-{self._messages}",
                        source="test-wms",
                        type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
                        sku=sku,
                        location_id=LOCATION,
                        qty=qty,
                    )
                ]
            ),
            timeout=10,
        )
        assert answer.results[0].outcome == movement_service_pb2.MOVEMENT_OUTCOME_RECORDED
        self.last_position = max(self.last_position, answer.results[0].ledger_position)

    def channel_available(self, sku: str) -> int:
        query = self.process.stub(query_service_pb2_grpc.InventoryQueryServiceStub)
        return query.GetAvailability(
            query_service_pb2.GetAvailabilityRequest(
                sku=sku, channel=CHANNEL, min_position=self.last_position
            ),
            timeout=10,
        ).channel_available

    def reservations(self) -> list[reservation_pb2.Reservation]:
        stub = self.process.stub(reservation_service_pb2_grpc.ReservationServiceStub)
        return list(
            stub.ListReservations(
                reservation_service_pb2.ListReservationsRequest(channel=CHANNEL, page_size=1000),
                timeout=10,
            ).reservations
        )

    def statuses(self) -> dict[str, str]:
        return {r.order_ref: status_name(r) for r in self.reservations()}


def status_name(reservation: reservation_pb2.Reservation) -> str:
    return reservation_pb2.ReservationStatus.Name(reservation.status).removeprefix(
        "RESERVATION_STATUS_"
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LedgerProcess]:
    process = LedgerProcess(
        f"sqlite:///{tmp_path / 'ledger.db'}", listen=f"127.0.0.1:{free_port()}"
    ).start()
    try:
        yield process
        log = process.log_text(all_runs=True)
        assert "Traceback" not in log, log
    finally:
        process.close()


# ---- end to end ---------------------------------------------------------------------------------


def test_storefront_follows_the_ledger_through_orders_and_restarts(ledger: LedgerProcess) -> None:
    warehouse = Ledger(ledger)
    settings = Settings(
        ledger_target=ledger.address,
        channel=CHANNEL,
        skus=SKUS,
        reconcile_seconds=3600,  # the watch alone must keep the shop in sync
        reservation_ttl_seconds=600,
    )
    with StorefrontConnector(settings) as connector:
        shop = Shop(connector.shop_url)
        wait_for("the initial values", shop.shows(**{"SKU-A": 0, "SKU-B": 0, "SKU-never": 0}))

        # Stock received at the warehouse appears in the shop.
        warehouse.receive("SKU-A", 10)
        wait_for("SKU-A = 10 after the receipt", shop.shows(**{"SKU-A": 10}))

        # An order reserves; the shop redelivering the webhook reserves nothing more.
        status, placed = shop.place("order-1", **{"SKU-A": 3})
        assert status == 201, placed
        wait_for("SKU-A = 7 after reserving 3", shop.shows(**{"SKU-A": 7}))
        status, again = shop.place("order-1", **{"SKU-A": 3})
        assert (status, again["reservation_id"]) == (200, placed["reservation_id"]), again

        # Cancelling releases (twice: the second changes nothing).
        for _ in range(2):
            status, body = shop.call("POST", "/orders/order-1/cancel")
            assert (status, body["status"]) == (200, "cancelled"), body
        wait_for("SKU-A = 10 after the release", shop.shows(**{"SKU-A": 10}))

        # Another order reserves and is paid: committed (the stock stays promised, so the shop
        # still shows 6); a repeated payment webhook is harmless.
        assert shop.place("order-2", **{"SKU-A": 4})[0] == 201
        wait_for("SKU-A = 6 after reserving 4", shop.shows(**{"SKU-A": 6}))
        for _ in range(2):
            status, body = shop.call("POST", "/orders/order-2/pay")
            assert (status, body["status"]) == (200, "paid"), body
        assert warehouse.statuses() == {"order-1": "RELEASED", "order-2": "COMMITTED"}

        # More than is available: refused, nothing held.
        status, body = shop.place("order-3", **{"SKU-A": 100, "SKU-B": 1})
        assert (status, body["error"]) == (409, "out_of_stock"), body
        assert body["short_lines"] == [
            {"sku": "SKU-A", "requested": 100, "available": 6},
            {"sku": "SKU-B", "requested": 1, "available": 0},
        ]

        # The shop is down for a while: its updates wait and go out when it is back.
        connector.shop.accepting_updates = False
        warehouse.receive("SKU-B", 2)
        warehouse.receive("SKU-B", 3)
        wait_for("the book to hold SKU-B = 5", lambda: connector.sync.book.due() == {"SKU-B": 5})
        assert shop.stock()["SKU-B"] == 0
        connector.shop.accepting_updates = True
        wait_for("SKU-B = 5 once the shop is back", shop.shows(**{"SKU-B": 5}))

        # Clean restart (SIGTERM ends the watch with UNAVAILABLE); stock recorded the moment
        # the new server is up reaches the shop, through the re-watch's initial values or its
        # first change, whichever the timing gives (the crash below pins the first case down).
        watches = connector.sync.watches_started
        ledger.restart()
        warehouse.receive("SKU-A", 5)
        wait_for("SKU-A = 11 after the restart", shop.shows(**{"SKU-A": 11}))
        assert connector.sync.watches_started > watches

        # Crash: SIGKILL. An order placed while the server is down waits in the connector's
        # retries (same request_id every attempt) and is reserved once, after the restart.
        watches = connector.sync.watches_started
        ledger.kill()
        outcome: list[tuple[int, Any]] = []
        placing = threading.Thread(
            target=lambda: outcome.append(shop.place("order-4", **{"SKU-A": 2}))
        )
        placing.start()
        wait_for("the watch to notice the crash", lambda: not connector.sync.watching.is_set())
        assert shop.call("GET", "/health")[0] == 503
        # Stock recorded while the connector cannot be watching (through a server on another
        # address, on the same database): only the re-watch's initial values can bring it.
        with LedgerProcess(ledger.database_url) as elsewhere:
            warehouse.receive("SKU-B", 1, via=elsewhere)
        ledger.start()
        placing.join(WAIT_SECONDS)
        assert outcome and outcome[0][0] == 201, outcome
        wait_for("the watch to resume", connector.sync.watching.is_set)
        assert connector.sync.watches_started > watches

        # The shop ends in sync with GetAvailability for every watched SKU.
        expected = {"SKU-A": 10 + 5 - 4 - 2, "SKU-B": 6, "SKU-never": 0}
        wait_for("the shop to show the final stock", shop.shows(**expected))
        assert {sku: warehouse.channel_available(sku) for sku in SKUS} == expected
        wait_for("the connector to report in sync", connector.sync.in_sync)
        assert connector.sync.reconciliations == 0  # it was the watch, not the safety net
        health_status, health = shop.call("GET", "/health")
        assert health_status == 200 and health["in_sync"], health

    # The connector keeps no state of its own: restarted (with another reservation TTL, so
    # the Reserve payload differs), it answers the shop's redelivered webhook with the
    # reservation it made before, and commits it on payment.
    order_4 = outcome[0][1]["reservation_id"]
    with StorefrontConnector(dataclasses.replace(settings, reservation_ttl_seconds=900)) as again:
        shop = Shop(again.shop_url)
        status, body = shop.place("order-4", **{"SKU-A": 2})
        assert (status, body["reservation_id"]) == (201, order_4), body
        assert shop.call("POST", "/orders/order-4/pay")[0] == 200
        wait_for("the restarted connector's shop", shop.shows(**expected))

    # Exactly the expected reservations: one per reserved order, none from retries.
    held = [
        (r.order_ref, status_name(r), sum(li.qty for li in r.lines))
        for r in warehouse.reservations()
    ]
    assert sorted(held) == [
        ("order-1", "RELEASED", 3),
        ("order-2", "COMMITTED", 4),
        ("order-4", "COMMITTED", 2),
    ]


def test_the_cli_runs_a_connector_until_sigterm(ledger: LedgerProcess) -> None:
    warehouse = Ledger(ledger)
    warehouse.receive("SKU-A", 4)
    environment = {
        **os.environ,
        # The CLI imports the packages from where this process found them.
        "PYTHONPATH": os.pathsep.join([*source_paths(), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "storefront_connector",
            "--ledger",
            ledger.address,
            "--channel",
            CHANNEL,
            "--skus",
            "SKU-A,SKU-B",
            "--shop-port",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        for text in process.stderr:
            lines.append(text)
            found = re.search(r"shop listening on (http://\S+)", text)
            if found:
                break
        else:
            raise AssertionError("".join(lines))
        shop = Shop(found[1])
        wait_for("SKU-A = 4 in the CLI's shop", shop.shows(**{"SKU-A": 4, "SKU-B": 0}))
        assert shop.place("cli-order", **{"SKU-A": 1})[0] == 201
        wait_for("SKU-A = 3 after the order", shop.shows(**{"SKU-A": 3}))
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


# ---- pieces without a server --------------------------------------------------------------------


def test_request_ids_are_derived_from_the_order_not_drawn() -> None:
    first = request_id(CHANNEL, "order-1", "reserve")
    assert first == request_id(CHANNEL, "order-1", "reserve")  # a repeat is the same request
    assert (
        len(
            {
                first,
                request_id(CHANNEL, "order-2", "reserve"),
                request_id("b2b", "order-1", "reserve"),
                request_id(CHANNEL, "order-1", "commit/r"),
            }
        )
        == 4
    )


def test_the_book_never_takes_an_older_value_except_from_a_fresh_watch() -> None:
    book = StockBook(["S"])
    assert book.observe(StockLevel("S", 5, projection_position=10))
    assert not book.observe(StockLevel("S", 9, projection_position=8))  # a slow read: ignored
    assert book.due() == {"S": 5}
    book.published("S", 5)
    assert book.due() == {}
    assert book.observe(StockLevel("S", 7, projection_position=10))  # same position: expiry
    assert book.observe(StockLevel("S", 2, projection_position=3, initial=True), fresh_watch=True)
    assert book.due() == {"S": 2}
