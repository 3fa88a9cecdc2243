"""The asyncio client: :class:`AsyncLedgerClient` (``grpc.aio``).

    from inventory_ledger_client import AsyncLedgerClient, InsufficientAvailability

    async with AsyncLedgerClient("127.0.0.1:50051", token=TOKEN) as ledger:
        try:
            reservation = await ledger.reserve("web", [("SKU-1", "DC-EAST", 2)], order_ref="o-42")
        except InsufficientAvailability as short:
            print(short.short_lines)
        await ledger.commit(reservation.reservation_id)

Results are the generated protobuf messages (``inventory.ledger.v1``); failures raise
:class:`~inventory_ledger_client.errors.LedgerError` subclasses. Every call has a deadline
(``timeout``, default 10 s, the budget of all its attempts), a correlation id (given or
generated, the same on every attempt) and, for writes, a ``request_id`` (given or a new
UUID4, the same on every attempt). ``UNAVAILABLE`` and ``ABORTED`` are retried with jittered
exponential back-off (:mod:`~inventory_ledger_client.retry`).

Create (or enter) the client inside the event loop that uses it.

The sync twin of this module is generated from it (``python -m tools.gen_sync_client``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterable

from inventory.ledger.v1 import (
    availability_pb2,
    channel_policy_pb2,
    item_policy_pb2,
    movement_pb2,
    movement_service_pb2,
    position_pb2,
    query_service_pb2,
    reservation_pb2,
    reservation_service_pb2,
    serial_pb2,
)

from inventory_ledger_client import _requests as build
from inventory_ledger_client._aio_audit import AsyncAuditCalls
from inventory_ledger_client._aio_stream import AsyncLedgerStream
from inventory_ledger_client._core import new_request_id
from inventory_ledger_client.retry import RetryPolicy

__all__ = ["AsyncLedgerClient", "AsyncLedgerStream"]


class AsyncLedgerClient(AsyncAuditCalls):
    """Asyncio ledger client (one per event loop and target).

    Args:
        target: ``host:port`` of the ledger (ignored with ``channel``).
        token: bearer token, sent as ``authorization: Bearer <token>``; a callable is asked
            on every attempt (token rotation).
        tls: use TLS with the system's root certificates (implied by any certificate option).
        root_certificates: CA bundle (PEM bytes, PEM text or a file path) to trust.
        private_key, certificate_chain: the client certificate for mutual TLS.
        server_name: TLS name to verify when it differs from ``target``'s host.
        credentials: ready ``grpc.ChannelCredentials`` (instead of the TLS options).
        channel: an existing ``grpc.aio.Channel`` to use (the client does not close it).
        timeout: default deadline of unary calls, in seconds (per call: ``timeout=``).
        stream_timeout: default deadline of finite streams (``stream_ledger(follow=False)``,
            ``verify_ledger``); live subscriptions have none unless given one.
        retry: the :class:`RetryPolicy` of unary calls and stream starts.
        wait_for_ready: let attempts wait for the channel to connect (within the deadline)
            instead of failing fast with ``UNAVAILABLE`` while it is down.
        metadata: extra metadata sent on every call.
        options: extra gRPC channel options.
        on_call: called with a :class:`CallInfo` after every logical call (logs, metrics).
    """

    # ---- ReservationService ------------------------------------------------------------------

    async def reserve(
        self,
        channel: str,
        lines: Iterable[build.LineSpec],
        *,
        order_ref: str = "",
        ttl: float | dt.timedelta | None = None,
        allow_split: bool = False,
        request_id: str | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> reservation_pb2.Reservation:
        """Reserve every line or none. ``lines``: ``ReserveLine`` messages (:func:`line` builds
        them, with a LOT SKU's ``lot_id`` / ``min_expires_at``), ``(sku, qty)`` (the service
        picks the location) or ``(sku, location_id, qty)``. ``ttl`` in seconds or a
        ``timedelta`` (server default 15 min). Raises :class:`InsufficientAvailability`."""
        request = build.reserve(
            request_id or new_request_id(),
            channel,
            lines,
            order_ref=order_ref,
            ttl=ttl,
            allow_split=allow_split,
        )
        return await self._unary(
            "ReservationService/Reserve",
            self._reservations.Reserve,
            request,
            correlation_id,
            timeout,
        )

    async def get_reservation(
        self,
        reservation_id: str,
        *,
        channel: str = "",
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> reservation_pb2.Reservation:
        return await self._unary(
            "ReservationService/GetReservation",
            self._reservations.GetReservation,
            build.get_reservation(reservation_id, channel),
            correlation_id,
            timeout,
        )

    async def commit(
        self,
        reservation_id: str,
        *,
        channel: str = "",
        request_id: str | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> reservation_pb2.Reservation:
        """ACTIVE → COMMITTED: the quantity moves from reserved to allocated."""
        return await self._unary(
            "ReservationService/Commit",
            self._reservations.Commit,
            build.commit(request_id or new_request_id(), reservation_id, channel),
            correlation_id,
            timeout,
        )

    async def release(
        self,
        reservation_id: str,
        *,
        channel: str = "",
        request_id: str | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> reservation_pb2.Reservation:
        """Release an ACTIVE or COMMITTED reservation; it holds nothing afterwards."""
        return await self._unary(
            "ReservationService/Release",
            self._reservations.Release,
            build.release(request_id or new_request_id(), reservation_id, channel),
            correlation_id,
            timeout,
        )

    async def list_reservations(
        self,
        channel: str,
        *,
        order_ref: str = "",
        page_size: int = 0,
        page_token: str = "",
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> reservation_service_pb2.ListReservationsResponse:
        """One page; :meth:`iter_reservations` walks every page."""
        return await self._unary(
            "ReservationService/ListReservations",
            self._reservations.ListReservations,
            build.list_reservations(channel, order_ref, page_size, page_token),
            correlation_id,
            timeout,
        )

    async def iter_reservations(
        self, channel: str, *, order_ref: str = "", page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[reservation_pb2.Reservation]:
        token = ""
        while True:
            page = await self.list_reservations(
                channel, order_ref=order_ref, page_size=page_size, page_token=token, timeout=timeout
            )
            for reservation in page.reservations:
                yield reservation
            token = page.next_page_token
            if not token:
                return

    # ---- InventoryQueryService ---------------------------------------------------------------

    async def get_position(
        self,
        sku: str,
        location_id: str,
        *,
        include_holds: bool = False,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> position_pb2.Position:
        """Strongly consistent; an unknown position is all zeros, version 0."""
        return await self._unary(
            "InventoryQueryService/GetPosition",
            self._query.GetPosition,
            build.get_position(sku, location_id, include_holds),
            correlation_id,
            timeout,
        )

    async def get_serial(
        self,
        sku: str,
        serial_number: str,
        *,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> serial_pb2.SerialUnit:
        """Where one unit of a SERIAL SKU is, and its history (strongly consistent); a
        serial never seen raises ``NotFound`` (reason ``SERIAL_NOT_FOUND``)."""
        return await self._unary(
            "InventoryQueryService/GetSerial",
            self._query.GetSerial,
            build.get_serial(sku, serial_number),
            correlation_id,
            timeout,
        )

    async def list_positions(
        self,
        *,
        sku: str = "",
        location_id: str = "",
        include_holds: bool = False,
        page_size: int = 0,
        page_token: str = "",
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> query_service_pb2.ListPositionsResponse:
        """One page of one SKU's (``sku=``) or one location's (``location_id=``) positions."""
        return await self._unary(
            "InventoryQueryService/ListPositions",
            self._query.ListPositions,
            build.list_positions(sku, location_id, include_holds, page_size, page_token),
            correlation_id,
            timeout,
        )

    async def iter_positions(
        self,
        *,
        sku: str = "",
        location_id: str = "",
        include_holds: bool = False,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[position_pb2.Position]:
        token = ""
        while True:
            page = await self.list_positions(
                sku=sku,
                location_id=location_id,
                include_holds=include_holds,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
            )
            for position in page.positions:
                yield position
            token = page.next_page_token
            if not token:
                return

    async def get_availability(
        self,
        sku: str,
        channel: str,
        *,
        consistency: int | str = 0,
        min_position: int = 0,
        horizon: dt.datetime | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> availability_pb2.Availability:
        """Channel availability from the read model (``consistency="strong"``: the ledger);
        ``min_position`` (e.g. a reservation's ``ledger_position``) waits for the projection."""
        return await self._unary(
            "InventoryQueryService/GetAvailability",
            self._query.GetAvailability,
            build.get_availability(sku, channel, consistency, min_position, horizon),
            correlation_id,
            timeout,
        )

    def watch_availability(
        self,
        channel: str,
        skus: Iterable[str],
        *,
        reconnect: bool | RetryPolicy = False,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> AsyncLedgerStream[availability_pb2.AvailabilityChange]:
        """Each change of ``channel_available`` for ``skus``, starting with current values
        (``initial=True``). No deadline unless ``timeout``; ``reconnect=True`` re-opens the watch
        after ``UNAVAILABLE``/``ABORTED`` (e.g. a server restart) until cancelled."""
        return self._stream(
            "InventoryQueryService/WatchAvailability",
            self._query.WatchAvailability,
            build.watch_availability(channel, skus),
            correlation_id=correlation_id,
            timeout=timeout,
            reconnect=reconnect,
        )

    async def list_in_transit(
        self,
        *,
        sku: str = "",
        to_location_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> query_service_pb2.ListInTransitResponse:
        return await self._unary(
            "InventoryQueryService/ListInTransit",
            self._query.ListInTransit,
            build.list_in_transit(sku, to_location_id, page_size, page_token),
            correlation_id,
            timeout,
        )

    async def list_exceptions(
        self,
        *,
        type: int | str = 0,
        sku: str = "",
        location_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        expiring_within: float | dt.timedelta | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> query_service_pb2.ListExceptionsResponse:
        """``expiring_within`` (seconds or a timedelta): list the lots expiring within it
        (EXCEPTION_TYPE_LOT_EXPIRING, computed now) instead of the recorded exceptions."""
        return await self._unary(
            "InventoryQueryService/ListExceptions",
            self._query.ListExceptions,
            build.list_exceptions(type, sku, location_id, page_size, page_token, expiring_within),
            correlation_id,
            timeout,
        )

    async def get_projection_status(
        self, *, correlation_id: str | None = None, timeout: float | None = None
    ) -> availability_pb2.ProjectionStatus:
        return await self._unary(
            "InventoryQueryService/GetProjectionStatus",
            self._query.GetProjectionStatus,
            query_service_pb2.GetProjectionStatusRequest(),
            correlation_id,
            timeout,
        )

    # ---- MovementService ---------------------------------------------------------------------

    async def record_movements(
        self,
        movements: Iterable[movement_pb2.Movement],
        *,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> movement_service_pb2.RecordMovementsResponse:
        """Record movements (idempotent on each ``(source, message_id)``: retries are safe);
        the response says ``RECORDED`` or ``DUPLICATE`` per movement."""
        return await self._unary(
            "MovementService/RecordMovements",
            self._movements.RecordMovements,
            build.record_movements(movements),
            correlation_id,
            timeout,
        )

    # ---- PolicyService -----------------------------------------------------------------------

    async def set_safety_stock(
        self,
        sku: str,
        location_id: str,
        qty: int,
        *,
        request_id: str | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> position_pb2.Position:
        """The position afterwards; its ``ledger_position`` is what ``get_availability``
        takes as ``min_position`` to read the write back."""
        return await self._unary(
            "PolicyService/SetSafetyStock",
            self._policy.SetSafetyStock,
            build.set_safety_stock(request_id or new_request_id(), sku, location_id, qty),
            correlation_id,
            timeout,
        )

    async def set_channel_fence(
        self,
        sku: str,
        location_id: str,
        channel: str,
        qty: int,
        *,
        request_id: str | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> position_pb2.Position:
        """The position afterwards (``FailedPrecondition`` when a raise does not fit); its
        ``ledger_position`` is what ``get_availability`` takes as ``min_position``."""
        return await self._unary(
            "PolicyService/SetChannelFence",
            self._policy.SetChannelFence,
            build.set_channel_fence(request_id or new_request_id(), sku, location_id, channel, qty),
            correlation_id,
            timeout,
        )

    async def set_channel_policy(
        self,
        channel: str,
        *,
        eligible_location_ids: Iterable[str] = (),
        share_percent: int = 0,
        buffer: int = 0,
        max_publish: int = 0,
        request_id: str | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> channel_policy_pb2.ChannelPolicy:
        """``share_percent`` 0 means the default (100); ``max_publish`` 0 means no cap. The
        answer's ``ledger_position`` is what ``get_availability`` takes as ``min_position``."""
        return await self._unary(
            "PolicyService/SetChannelPolicy",
            self._policy.SetChannelPolicy,
            build.set_channel_policy(
                request_id or new_request_id(),
                channel,
                eligible_location_ids,
                share_percent,
                buffer,
                max_publish,
            ),
            correlation_id,
            timeout,
        )

    async def set_item_policy(
        self,
        sku: str,
        tracking: int | str,
        *,
        request_id: str | None = None,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> item_policy_pb2.ItemPolicy:
        """``tracking`` is ``"none"``, ``"lot"``, ``"serial"`` (or the enum value). Leaving
        NONE while the SKU holds stock, or leaving LOT/SERIAL, raises ``FailedPrecondition``
        (reason ``ITEM_TRACKING_LOCKED``)."""
        return await self._unary(
            "PolicyService/SetItemPolicy",
            self._policy.SetItemPolicy,
            build.set_item_policy(request_id or new_request_id(), sku, tracking),
            correlation_id,
            timeout,
        )

    async def get_item_policy(
        self,
        sku: str,
        *,
        correlation_id: str | None = None,
        timeout: float | None = None,
    ) -> item_policy_pb2.ItemPolicy:
        """Strongly consistent; an unknown SKU is tracked NONE, version 0."""
        return await self._unary(
            "PolicyService/GetItemPolicy",
            self._policy.GetItemPolicy,
            build.get_item_policy(sku),
            correlation_id,
            timeout,
        )
