"""The shop's order events, turned into ledger reservations.

* order **placed** → ``Reserve`` (all lines or none, any eligible location, split if needed,
  ``order_ref`` = the shop's order id, a TTL that covers checkout);
* order **paid** → ``Commit`` (reserved → allocated: it no longer expires);
* order **cancelled** → ``Release`` (ACTIVE or COMMITTED; nothing is held afterwards).

Every hook is idempotent, whoever repeats it: the ledger client retrying a lost response, the
shop redelivering a webhook, or the connector restarted halfway. The ``request_id`` of each
call is derived from the order (``uuid5`` of channel, order id and step), never drawn at
random, so a repeat is the *same* request and the ledger answers it once. The connector keeps
no state of its own: the ledger finds an order's reservation by ``order_ref``.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storefront_connector.ledger import Hold, LedgerGateway, RequestConflict, WrongState

log = logging.getLogger(__name__)

RESERVATION_TTL_SECONDS = 15 * 60
LINES_PER_ORDER_MAX = 100  # the ledger's limit per Reserve
# Fixed for this connector forever: changing it would change every request_id.
REQUEST_ID_NAMESPACE = uuid.UUID("6f1f8a57-4b7e-4f55-9d0a-3c1d2e9b7a10")
HOLDING = ("ACTIVE", "COMMITTED")
FINISHED = ("RELEASED", "EXPIRED")


@dataclass(frozen=True)
class OrderLine:
    sku: str
    qty: int


@dataclass(frozen=True)
class Order:
    order_id: str
    lines: tuple[OrderLine, ...]


class OrderProblem(Exception):
    """Raised when an order event cannot be carried out as asked (the shop should show it to
    a person: retrying will not help)."""


def request_id(channel: str, order_id: str, step: str) -> str:
    """The idempotency key of one step of one order: the same inputs, the same key."""
    return str(uuid.uuid5(REQUEST_ID_NAMESPACE, f"{channel}\x1f{order_id}\x1f{step}"))


class OrderHooks:
    """Call these from the shop's webhooks (or the stand-in's HTTP handler).

    Errors: :class:`~storefront_connector.ledger.OutOfStock` (nothing reserved: refuse the
    order), :class:`~storefront_connector.ledger.LedgerUnavailable` (try again later: answer the
    webhook 503 so the shop redelivers), :class:`OrderProblem`.
    """

    def __init__(
        self,
        ledger: LedgerGateway,
        channel: str,
        *,
        ttl_seconds: int = RESERVATION_TTL_SECONDS,
    ) -> None:
        self._ledger = ledger
        self._channel = channel
        self._ttl_seconds = ttl_seconds

    def placed(self, order: Order) -> Hold:
        """Reserve the order's lines; repeated, it returns the same reservation."""
        if not 1 <= len(order.lines) <= LINES_PER_ORDER_MAX:
            raise OrderProblem(f"an order has 1 to {LINES_PER_ORDER_MAX} lines")
        try:
            hold = self._ledger.reserve(
                request_id(self._channel, order.order_id, "reserve"),
                self._channel,
                order.order_id,
                [(line.sku, line.qty) for line in order.lines],
                self._ttl_seconds,
            )
        except RequestConflict:
            # The key was used with another payload: the order changed, or this connector
            # was restarted with another TTL. The reservation already made stands if it
            # holds the same quantities.
            hold = self._same_reservation(order)
        if hold.status in FINISHED:
            raise OrderProblem(
                f"order {order.order_id!r} was reserved before, and that reservation is "
                f"{hold.status}: place it again under a new order id"
            )
        log.info("order %s reserved as %s", order.order_id, hold.reservation_id)
        return hold

    def paid(self, order_id: str) -> Hold:
        """Commit the order's reservation; repeated, it changes nothing."""
        hold = self._current_hold(order_id)
        if hold is None:
            raise OrderProblem(f"order {order_id!r} holds no stock: it was never reserved")
        if hold.status != "ACTIVE":
            if hold.status in ("COMMITTED", "FULFILLED"):
                return hold  # paid before (a redelivered webhook)
            raise OrderProblem(
                f"order {order_id!r} cannot be paid: its reservation is {hold.status}"
            )
        try:
            committed = self._ledger.commit(
                request_id(self._channel, order_id, f"commit/{hold.reservation_id}"),
                self._channel,
                hold.reservation_id,
            )
        except WrongState as error:  # it expired between our read and the commit
            raise OrderProblem(
                f"order {order_id!r} cannot be paid: its reservation is {error.status}"
            ) from None
        log.info("order %s committed (%s)", order_id, hold.reservation_id)
        return committed

    def cancelled(self, order_id: str) -> Sequence[Hold]:
        """Release whatever the order still holds; repeated, it changes nothing."""
        released = []
        for hold in self._ledger.holds_of_order(self._channel, order_id):
            if hold.status in FINISHED:
                continue
            if hold.status not in HOLDING:  # FULFILLED: shipped, a return is another flow
                raise OrderProblem(f"order {order_id!r} was shipped; it needs a return instead")
            try:
                released.append(
                    self._ledger.release(
                        request_id(self._channel, order_id, f"release/{hold.reservation_id}"),
                        self._channel,
                        hold.reservation_id,
                    )
                )
            except WrongState as error:
                if error.status not in FINISHED:  # expired meanwhile: nothing held, fine
                    raise OrderProblem(f"order {order_id!r}: {error}") from None
            else:
                log.info("order %s released (%s)", order_id, hold.reservation_id)
        return released

    def _same_reservation(self, order: Order) -> Hold:
        wanted = _quantities((line.sku, line.qty) for line in order.lines)
        for hold in self._ledger.holds_of_order(self._channel, order.order_id):
            if _quantities((line.sku, line.qty) for line in hold.lines) == wanted:
                log.warning("order %s: kept its earlier reservation", order.order_id)
                return hold
        raise OrderProblem(f"order {order.order_id!r} was reserved before with other lines")

    def _current_hold(self, order_id: str) -> Hold | None:
        """The order's newest reservation (normally its only one)."""
        holds = self._ledger.holds_of_order(self._channel, order_id)
        live = [h for h in holds if h.status not in FINISHED]
        return (live or holds or [None])[-1]


def _quantities(lines: Iterable[tuple[str, int]]) -> Counter[str]:
    """Quantity per SKU (a reservation may split one order line over locations)."""
    total: Counter[str] = Counter()
    for sku, qty in lines:
        total[sku] += qty
    return total
