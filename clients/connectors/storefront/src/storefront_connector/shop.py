"""The stand-in shop: the part a real connector replaces.

It plays both sides a real shop platform has:

* its **inventory API** — :meth:`StandInShop.publish_stock` is what the sync calls to set the
  stock the shop shows (a real adapter would call the platform's "set inventory level" API
  here and raise :class:`~storefront_connector.sync.ShopUnavailable` on 5xx/timeouts);
* its **order webhooks** — the HTTP handler below receives order events and calls
  :class:`~storefront_connector.orders.OrderHooks` (a real adapter parses the platform's
  webhook payload, checks its signature, and answers 2xx only once the hook succeeded, so the
  platform redelivers anything else).

HTTP API (JSON; stdlib ``http.server`` on a thread):

====================================  ==========================================================
``GET  /stock``                       ``{"channel", "stock": {sku: n}}``: what the shop shows
``GET  /stock/{sku}``                 ``{"sku", "available"}`` (404 before the first value)
``POST /orders``                      ``{"order_id", "lines": [{"sku", "qty"}]}`` → 201 reserved,
                                      200 repeated, 409 out of stock, 503 retry later
``POST /orders/{id}/pay``             → 200 committed
``POST /orders/{id}/cancel``          → 200 released
``GET  /orders/{id}``                 the order as the shop knows it
``GET  /health``                      200 when watching and the shop shows the ledger's values,
                                      503 otherwise
====================================  ==========================================================

Order ids travel in paths: keep them to ``[A-Za-z0-9._-]`` (checked), 1-128 characters.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from storefront_connector.ledger import (
    LedgerError,
    LedgerUnavailable,
    OutOfStock,
    RequestConflict,
)
from storefront_connector.orders import Order, OrderHooks, OrderLine, OrderProblem
from storefront_connector.sync import ShopUnavailable

log = logging.getLogger(__name__)

ORDER_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
BODY_BYTES_MAX = 64 * 1024
RETRY_AFTER_SECONDS = 1


@dataclass
class ShopOrder:
    order_id: str
    lines: list[dict[str, Any]]
    status: str = "placed"  # placed → paid; placed|paid → cancelled; refused: out of stock
    reservation_id: str = ""

    def view(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "lines": self.lines,
            "status": self.status,
            "reservation_id": self.reservation_id,
        }


class StandInShop:
    """Published stock and orders in memory, behind a local HTTP endpoint."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._lock = threading.Lock()
        self._stock: dict[str, int] = {}
        self._orders: dict[str, ShopOrder] = {}
        self.accepting_updates = True  # False: publish_stock fails, as a shop outage would
        self.publishes = 0  # how many updates the shop took (coalescing shows here)

    # ---- the shop's inventory API (called by the sync) ------------------------------------------

    def publish_stock(self, sku: str, available: int) -> None:
        if not self.accepting_updates:
            raise ShopUnavailable("the shop refuses inventory updates (outage)")
        with self._lock:
            self._stock[sku] = available
            self.publishes += 1
        log.info("shop: %s now shows %d", sku, available)

    def stock(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stock)

    # ---- orders (the shop's side of the webhooks) -----------------------------------------------

    def order(self, order_id: str) -> ShopOrder | None:
        with self._lock:
            return self._orders.get(order_id)

    def remember(self, order: ShopOrder) -> ShopOrder:
        """Keep a new order, or return the one already kept under its id."""
        with self._lock:
            return self._orders.setdefault(order.order_id, order)


# ---- HTTP ------------------------------------------------------------------------------------


class _Reply(Exception):
    def __init__(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", ""))
        self.status = status
        self.body = body


def _refusal(error: LedgerError) -> _Reply:
    """The webhook's answer for a failed hook: 503 asks the shop to redeliver."""
    if isinstance(error, LedgerUnavailable):
        return _Reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "ledger_unavailable"})
    if isinstance(error, OutOfStock):
        short = [
            {"sku": s.sku, "requested": s.requested, "available": s.available}
            for s in error.short_lines
        ]
        return _Reply(HTTPStatus.CONFLICT, {"error": "out_of_stock", "short_lines": short})
    if isinstance(error, RequestConflict):
        return _Reply(
            HTTPStatus.CONFLICT,
            {"error": "order_changed", "detail": "this order id was reserved with other lines"},
        )
    return _Reply(HTTPStatus.BAD_GATEWAY, {"error": "ledger_refused", "detail": str(error)})


class ShopServer:
    """Serves a :class:`StandInShop` and routes its order events to :class:`OrderHooks`."""

    def __init__(
        self,
        shop: StandInShop,
        hooks: OrderHooks,
        health: Callable[[], dict[str, Any]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.shop = shop
        self.hooks = hooks
        self.health = health
        self._http = ThreadingHTTPServer((host, port), self._handler_class())
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="storefront-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join(5.0)

    # ---- routes ------------------------------------------------------------------------------

    def route(self, method: str, path: str, body: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        parts = [unquote(p) for p in path.split("?", 1)[0].strip("/").split("/")]
        match method, parts:
            case "GET", ["stock"]:
                return HTTPStatus.OK, {"channel": self.shop.channel, "stock": self.shop.stock()}
            case "GET", ["stock", sku]:
                stock = self.shop.stock()
                if sku not in stock:
                    return HTTPStatus.NOT_FOUND, {"error": "unknown_sku"}
                return HTTPStatus.OK, {"sku": sku, "available": stock[sku]}
            case "GET", ["health"]:
                report = self.health()
                ok = report.get("watching") and report.get("in_sync")
                return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE), report
            case "POST", ["orders"]:
                return self.place(body)
            case "GET", ["orders", order_id]:
                order = self.shop.order(order_id)
                if order is None:
                    return HTTPStatus.NOT_FOUND, {"error": "unknown_order"}
                return HTTPStatus.OK, order.view()
            case "POST", ["orders", order_id, "pay"]:
                return self.pay(self._known(order_id))
            case "POST", ["orders", order_id, "cancel"]:
                return self.cancel(self._known(order_id))
        return HTTPStatus.NOT_FOUND, {"error": "no_such_route"}

    def place(self, body: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        order = _parse_order(body)
        kept = self.shop.remember(
            ShopOrder(order.order_id, [{"sku": li.sku, "qty": li.qty} for li in order.lines])
        )
        if kept.status == "cancelled":
            return HTTPStatus.CONFLICT, {"error": "order_cancelled", **kept.view()}
        # A repeat (the shop redelivering the webhook) calls the hook again: it is idempotent,
        # and it is how a repeat after a 503 or a connector restart gets done.
        try:
            hold = self.hooks.placed(order)
        except OutOfStock as error:
            kept.status = "refused"  # a later repeat tries again (stock may have come in)
            raise _refusal(error) from None
        except LedgerError as error:
            raise _refusal(error) from None
        new = not kept.reservation_id
        kept.reservation_id = hold.reservation_id
        if kept.status == "refused":
            kept.status = "placed"
        return (HTTPStatus.CREATED if new else HTTPStatus.OK), kept.view()

    def pay(self, order: ShopOrder) -> tuple[HTTPStatus, Any]:
        if order.status in ("cancelled", "refused"):
            return HTTPStatus.CONFLICT, {"error": f"order_{order.status}", **order.view()}
        try:
            self.hooks.paid(order.order_id)
        except LedgerError as error:
            raise _refusal(error) from None
        order.status = "paid"
        return HTTPStatus.OK, order.view()

    def cancel(self, order: ShopOrder) -> tuple[HTTPStatus, Any]:
        try:
            self.hooks.cancelled(order.order_id)
        except LedgerError as error:
            raise _refusal(error) from None
        order.status = "cancelled"
        return HTTPStatus.OK, order.view()

    def _known(self, order_id: str) -> ShopOrder:
        order = self.shop.order(order_id)
        if order is None:
            raise _Reply(HTTPStatus.NOT_FOUND, {"error": "unknown_order"})
        return order

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def _serve(self, method: str) -> None:
                try:
                    status, body = server.route(method, self.path, self._body())
                except _Reply as reply:
                    status, body = reply.status, reply.body
                except OrderProblem as problem:
                    status, body = (
                        HTTPStatus.CONFLICT,
                        {"error": "order_problem", "detail": str(problem)},
                    )
                except Exception:
                    log.exception("shop: %s %s failed", method, self.path)
                    status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == HTTPStatus.SERVICE_UNAVAILABLE:
                    self.send_header("Retry-After", str(RETRY_AFTER_SECONDS))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                if length > BODY_BYTES_MAX:
                    raise _Reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "too_large"})
                if length == 0:
                    return {}
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    raise _Reply(HTTPStatus.BAD_REQUEST, {"error": "not_json"}) from None
                if not isinstance(body, dict):
                    raise _Reply(HTTPStatus.BAD_REQUEST, {"error": "not_an_object"})
                return body

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("shop http: " + format, *args)

        return Handler


def _parse_order(body: dict[str, Any]) -> Order:
    order_id = body.get("order_id")
    if not isinstance(order_id, str) or not ORDER_ID.match(order_id):
        raise _Reply(
            HTTPStatus.BAD_REQUEST, {"error": "bad_order_id", "detail": "[A-Za-z0-9._-]{1,128}"}
        )
    lines = body.get("lines")
    if not isinstance(lines, list) or not lines:
        raise _Reply(HTTPStatus.BAD_REQUEST, {"error": "bad_lines"})
    parsed = []
    for line in lines:
        sku = line.get("sku") if isinstance(line, dict) else None
        qty = line.get("qty") if isinstance(line, dict) else None
        if not isinstance(sku, str) or not sku or type(qty) is not int or qty < 1:
            raise _Reply(HTTPStatus.BAD_REQUEST, {"error": "bad_line", "line": line})
        parsed.append(OrderLine(sku, qty))
    return Order(order_id, tuple(parsed))
