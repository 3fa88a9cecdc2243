"""InventoryQueryService: strongly consistent position reads."""

from __future__ import annotations

import asyncio

from inventory.ledger.v1 import position_pb2, query_service_pb2, query_service_pb2_grpc

from ledger.api import convert, validation
from ledger.api.page_tokens import PageTokens, page_size_of
from ledger.api.rpc import unary
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext


class QueryServicer(query_service_pb2_grpc.InventoryQueryServiceServicer):
    def __init__(self, service: LedgerService, page_tokens: PageTokens) -> None:
        self._service = service
        self._tokens = page_tokens

    @unary
    async def GetPosition(
        self, request: query_service_pb2.GetPositionRequest, ctx: CallContext
    ) -> position_pb2.Position:
        query = convert.validate(
            validation.GetPositionModel,
            {
                "sku": request.sku,
                "location_id": request.location_id,
                "include_holds": request.include_holds,
            },
        )
        view = await asyncio.to_thread(
            self._service.get_position,
            query.sku,
            query.location_id,
            include_holds=query.include_holds,
        )
        return convert.position_message(view)

    @unary
    async def ListPositions(
        self, request: query_service_pb2.ListPositionsRequest, ctx: CallContext
    ) -> query_service_pb2.ListPositionsResponse:
        query = convert.validate(
            validation.ListPositionsModel,
            {
                "sku": request.sku,
                "location_id": request.location_id,
                "page_size": request.page_size,
                "page_token": request.page_token,
                "include_holds": request.include_holds,
            },
        )
        listing = {"m": "ListPositions", "sku": query.sku, "loc": query.location_id}
        after = self._tokens.decode(query.page_token, listing) or ["", ""]
        page = await asyncio.to_thread(
            self._service.list_positions,
            sku=query.sku or None,
            location_id=query.location_id or None,
            after=(after[0], after[1]),
            page_size=page_size_of(query.page_size),
            include_holds=query.include_holds,
        )
        token = self._tokens.encode(listing, list(page.next_after)) if page.next_after else ""
        return query_service_pb2.ListPositionsResponse(
            positions=[convert.position_message(v) for v in page.items], next_page_token=token
        )
