"""ReservationService: all-or-nothing holds with expiry."""

from __future__ import annotations

import asyncio

from inventory.ledger.v1 import (
    reservation_pb2,
    reservation_service_pb2,
    reservation_service_pb2_grpc,
)

from entrypoints.grpc import convert
from entrypoints.grpc.page_tokens import PageTokens, page_size_of
from entrypoints.grpc.rpc import settled, unary
from ledger import inputs
from ledger.domain.errors import ReservationNotFound
from ledger.domain.limits import RESERVATION_TTL_DEFAULT
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput, ReserveLine


class ReservationServicer(reservation_service_pb2_grpc.ReservationServiceServicer):
    def __init__(self, service: LedgerService, page_tokens: PageTokens) -> None:
        self._service = service
        self._tokens = page_tokens

    @unary
    async def Reserve(
        self, request: reservation_service_pb2.ReserveRequest, ctx: CallContext
    ) -> reservation_pb2.Reservation:
        model = convert.validate_request(
            inputs.ReserveModel,
            request,
            "request_id channel order_ref allow_split",
            {
                "lines": [
                    {
                        "sku": ln.sku,
                        "location_id": ln.location_id,
                        "qty": ln.qty,
                        "min_expires_at": convert.timestamp(ln, "min_expires_at"),
                        "lot_id": ln.lot_id,  # "" (unset) means no lot named
                    }
                    for ln in request.lines
                ],
                "ttl": convert.duration(request, "ttl"),
            },
        )
        command = ReserveInput(
            request_id=model.request_id,
            channel=model.channel,
            order_ref=model.order_ref,
            lines=tuple(
                ReserveLine(
                    ln.sku,
                    ln.location_id,
                    ln.qty,
                    min_expires_at=ln.min_expires_at,
                    lot_id=ln.lot_id or None,
                )
                for ln in model.lines
            ),
            ttl=model.ttl or RESERVATION_TTL_DEFAULT,
            allow_split=model.allow_split,
        )
        view = await settled(self._service.reserve(ctx, command))
        return convert.reservation_message(view)

    @unary
    async def GetReservation(
        self, request: reservation_service_pb2.GetReservationRequest, ctx: CallContext
    ) -> reservation_pb2.Reservation:
        model = convert.validate_request(
            inputs.GetReservationModel, request, "reservation_id channel"
        )
        view = await asyncio.to_thread(
            self._service.get_reservation, model.reservation_id, model.channel
        )
        if not ctx.may_act_for(view.channel):
            raise ReservationNotFound(model.reservation_id)  # existence is not leaked
        return convert.reservation_message(view)

    @unary
    async def Commit(
        self, request: reservation_service_pb2.CommitRequest, ctx: CallContext
    ) -> reservation_pb2.Reservation:
        model = self._action(request)
        view = await settled(
            self._service.commit(ctx, model.request_id, model.reservation_id, model.channel)
        )
        return convert.reservation_message(view)

    @unary
    async def Release(
        self, request: reservation_service_pb2.ReleaseRequest, ctx: CallContext
    ) -> reservation_pb2.Reservation:
        model = self._action(request)
        view = await settled(
            self._service.release(ctx, model.request_id, model.reservation_id, model.channel)
        )
        return convert.reservation_message(view)

    @unary
    async def ListReservations(
        self, request: reservation_service_pb2.ListReservationsRequest, ctx: CallContext
    ) -> reservation_service_pb2.ListReservationsResponse:
        model = convert.validate_request(
            inputs.ListReservationsModel, request, "channel order_ref page_size page_token"
        )
        listing = {"m": "ListReservations", "channel": model.channel, "order": model.order_ref}
        after = self._tokens.decode(model.page_token, listing) or [-1, ""]
        page = await asyncio.to_thread(
            self._service.list_reservations,
            channel=model.channel,
            order_ref=model.order_ref or None,
            after=(int(after[0]), str(after[1])),
            page_size=page_size_of(model.page_size),
        )
        token = self._tokens.encode(listing, list(page.next_after)) if page.next_after else ""
        return reservation_service_pb2.ListReservationsResponse(
            reservations=[convert.reservation_message(v) for v in page.items],
            next_page_token=token,
        )

    @staticmethod
    def _action(
        request: reservation_service_pb2.CommitRequest | reservation_service_pb2.ReleaseRequest,
    ) -> inputs.ReservationActionModel:
        return convert.validate_request(
            inputs.ReservationActionModel, request, "request_id reservation_id channel"
        )
