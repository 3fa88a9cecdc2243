"""The connector's only door to the ledger: a narrow gateway over the typed client.

Everything else in the connector speaks in the terms defined here (:class:`StockLevel`,
:class:`Hold`, :class:`LedgerUnavailable`, ...), never in gRPC, protobuf or client classes, so
changing the client underneath, or standing in for the ledger in a unit test, touches this
file only.

The client (``inventory_ledger_client.LedgerClient``) does the hard parts: a deadline on every
call, retries of ``UNAVAILABLE``/``ABORTED`` with jittered back-off that repeat the *same*
``request_id`` (so the ledger applies a write once, however often it is sent), bearer token,
TLS, ``google.rpc`` error details unpacked into typed exceptions. The gateway picks its
settings for a long-running connector and maps its exceptions onto the few outcomes the
connector acts on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import inventory_ledger_client as client
from inventory.ledger.v1 import availability_pb2, reservation_pb2

log = logging.getLogger(__name__)

# One logical unary call (all its attempts) may take this long: long enough to ride out a
# server restart, short enough for a webhook caller to be answered.
CALL_BUDGET_SECONDS = 15.0
# Retry until the budget is spent, 0.1 s growing to 2 s between attempts (full jitter).
RETRY = client.RetryPolicy(max_attempts=None, initial_backoff=0.1, max_backoff=2.0)
# The channel's own reconnect back-off (gRPC's default grows to 120 s): keep it short, so a
# restarted server is noticed within about a second. Keepalive notices a silent network.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


# ---- what the rest of the connector sees ------------------------------------------------------


@dataclass(frozen=True)
class StockLevel:
    """``channel_available`` of one SKU as of ledger position ``projection_position``."""

    sku: str
    channel_available: int
    projection_position: int
    initial: bool = False  # one of the first values of a (re-)started watch


@dataclass(frozen=True)
class HoldLine:
    sku: str
    location_id: str
    qty: int


@dataclass(frozen=True)
class Hold:
    """A reservation as the connector needs it."""

    reservation_id: str
    order_ref: str
    status: str  # ACTIVE, COMMITTED, FULFILLED, RELEASED or EXPIRED
    lines: tuple[HoldLine, ...]


@dataclass(frozen=True)
class ShortLine:
    sku: str
    requested: int
    available: int | None  # None: the ledger's description could not be read


class LedgerError(Exception):
    """Base class of the errors the gateway raises."""


class LedgerUnavailable(LedgerError):
    """Raised when the ledger could not be reached, kept answering UNAVAILABLE/ABORTED, or
    asked the caller to slow down, within the call's budget. Transient: make the same call
    again later."""


class OutOfStock(LedgerError):
    """Raised when a reservation cannot be covered (nothing is held)."""

    def __init__(self, message: str, short_lines: Sequence[ShortLine]) -> None:
        super().__init__(message)
        self.short_lines = tuple(short_lines)


class WrongState(LedgerError):
    """Raised when a reservation cannot make the asked transition (it is ``status`` now)."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class HoldNotFound(LedgerError):
    """Raised when the ledger knows no such reservation for this channel."""


class RequestConflict(LedgerError):
    """Raised when a ``request_id`` comes back with a different payload (ALREADY_EXISTS)."""


class LedgerRefused(LedgerError):
    """Raised for every other refusal (bad input, credentials, permissions, a server bug):
    the same call will not do better."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class WatchStream:
    """One ``WatchAvailability`` stream: iterate it for :class:`StockLevel` values. It ends by
    raising :class:`LedgerUnavailable` (server gone or shutting down, stream overflow, even a
    clean end: a watch has no natural end) or :class:`LedgerRefused`; after :meth:`cancel`
    (from any thread) it simply stops."""

    def __init__(self, stream: client.LedgerStream[availability_pb2.AvailabilityChange]) -> None:
        self._stream = stream
        self._cancelled = False

    def __iter__(self) -> Iterator[StockLevel]:
        try:
            for change in self._stream:
                yield StockLevel(
                    change.sku,
                    change.channel_available,
                    change.projection_position,
                    initial=change.initial,
                )
        except client.LedgerError as error:
            if not self._cancelled:
                raise _translate(error) from error
        if not self._cancelled:
            raise LedgerUnavailable("the watch stream ended")

    def cancel(self) -> None:
        self._cancelled = True
        self._stream.cancel()


# ---- the gateway --------------------------------------------------------------------------------


class LedgerGateway:
    """The ledger as the connector uses it. Thread-safe (one client, one channel, shared)."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        call_budget_seconds: float = CALL_BUDGET_SECONDS,
    ) -> None:
        self._client = client.LedgerClient(
            target,
            token=token,
            root_certificates=root_certificates,
            timeout=call_budget_seconds,
            retry=RETRY,
            # While the server restarts, an attempt waits for the channel to reconnect (within
            # the budget) instead of failing at once.
            wait_for_ready=True,
            options=CHANNEL_OPTIONS,
        )

    def close(self) -> None:
        self._client.close()

    # ---- reads --------------------------------------------------------------------------------

    def watch(self, channel: str, skus: Sequence[str]) -> WatchStream:
        """Start watching; the first value of each SKU (``initial=True``) is its current one.
        The caller re-watches when the stream ends (:mod:`storefront_connector.sync`)."""
        return WatchStream(self._client.watch_availability(channel, skus))

    def availability(self, channel: str, sku: str) -> StockLevel:
        try:
            answer = self._client.get_availability(sku, channel)
        except client.LedgerError as error:
            raise _translate(error) from error
        return StockLevel(sku, answer.channel_available, answer.projection_position)

    def holds_of_order(self, channel: str, order_ref: str) -> list[Hold]:
        """Every reservation the channel made for ``order_ref``, oldest first."""
        try:
            return [_hold(r) for r in self._client.iter_reservations(channel, order_ref=order_ref)]
        except client.LedgerError as error:
            raise _translate(error) from error

    # ---- writes (each idempotent on its request_id) -------------------------------------------

    def reserve(
        self,
        request_id: str,
        channel: str,
        order_ref: str,
        lines: Sequence[tuple[str, int]],
        ttl_seconds: int,
    ) -> Hold:
        """Reserve ``(sku, qty)`` lines at any eligible location, split if need be."""
        try:
            reservation = self._client.reserve(
                channel,
                lines,
                order_ref=order_ref,
                ttl=ttl_seconds,
                allow_split=True,
                request_id=request_id,
            )
        except client.LedgerError as error:
            raise _translate(error) from error
        return _hold(reservation)

    def commit(self, request_id: str, channel: str, reservation_id: str) -> Hold:
        try:
            reservation = self._client.commit(
                reservation_id, channel=channel, request_id=request_id
            )
        except client.LedgerError as error:
            raise _translate(error) from error
        return _hold(reservation)

    def release(self, request_id: str, channel: str, reservation_id: str) -> Hold:
        try:
            reservation = self._client.release(
                reservation_id, channel=channel, request_id=request_id
            )
        except client.LedgerError as error:
            raise _translate(error) from error
        return _hold(reservation)


def _hold(reservation: reservation_pb2.Reservation) -> Hold:
    status = reservation_pb2.ReservationStatus.Name(reservation.status)
    return Hold(
        reservation_id=reservation.reservation_id,
        order_ref=reservation.order_ref,
        status=status.removeprefix("RESERVATION_STATUS_"),
        lines=tuple(HoldLine(li.sku, li.location_id, li.qty) for li in reservation.lines),
    )


def _translate(error: client.LedgerError) -> LedgerError:
    """The gateway's error for a failed call of the client."""
    message = str(error)
    if isinstance(
        error,
        client.Unavailable | client.Aborted | client.DeadlineExceeded | client.ResourceExhausted,
    ):
        # Retried until the budget ran out, or (RESOURCE_EXHAUSTED: a rate limit, too many
        # watchers, a watch that fell behind) the ledger asks for later, not never.
        return LedgerUnavailable(message)
    if isinstance(error, client.InsufficientAvailability):
        short = [ShortLine(s.sku, s.requested, s.available) for s in error.short_lines]
        return OutOfStock(message, short)
    if isinstance(error, client.FailedPrecondition) and "status" in error.metadata:
        return WrongState(message, error.metadata["status"])
    if isinstance(error, client.NotFound):
        return HoldNotFound(message)
    if isinstance(error, client.AlreadyExists):
        return RequestConflict(message)
    return LedgerRefused(message, error.code.name)
