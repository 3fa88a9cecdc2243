"""InventoryQueryService: positions from the ledger, availability from the read models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import datetime, timedelta

from inventory.ledger.v1 import (
    availability_pb2,
    position_pb2,
    query_service_pb2,
    query_service_pb2_grpc,
    serial_pb2,
)

from entrypoints.grpc import convert
from entrypoints.grpc.page_tokens import PageTokens, page_size_of
from entrypoints.grpc.rpc import server_stream, unary
from ledger import inputs
from ledger.service import LedgerService
from ledger.store.async_ranges import AsyncRangeReader
from ledger.use_cases.context import CallContext
from projections.queries import ReadModelQueries
from projections.watch import WatchHub

DEFAULT_WAIT_SECONDS = 5.0
EXCEPTION_TYPE_PREFIX = "EXCEPTION_TYPE_"


class QueryServicer(query_service_pb2_grpc.InventoryQueryServiceServicer):
    def __init__(
        self,
        service: LedgerService,
        read_models: ReadModelQueries,
        page_tokens: PageTokens,
        watch_hub: WatchHub | None = None,
        position_reads: AsyncRangeReader | None = None,
    ) -> None:
        self._service = service
        self._read = read_models
        self._tokens = page_tokens
        # Without a hub (started by entrypoints.grpc.server.start_server) one is made on first use.
        self._watch = watch_hub
        # PostgreSQL: GetPosition's one statement awaited on the loop (no thread-pool hop).
        self._position_reads = position_reads

    @unary
    async def GetPosition(
        self, request: query_service_pb2.GetPositionRequest, ctx: CallContext
    ) -> position_pb2.Position:
        query = convert.validate_request(
            inputs.GetPositionModel, request, "sku location_id include_holds"
        )
        if self._position_reads is not None:
            view = await self._service.get_position_async(
                query.sku,
                query.location_id,
                self._position_reads.select,
                include_holds=query.include_holds,
            )
        else:
            view = await asyncio.to_thread(
                self._service.get_position,
                query.sku,
                query.location_id,
                include_holds=query.include_holds,
            )
        return convert.position_message(view)

    @unary
    async def GetSerial(
        self, request: query_service_pb2.GetSerialRequest, ctx: CallContext
    ) -> serial_pb2.SerialUnit:
        query = convert.validate_request(inputs.GetSerialModel, request, "sku serial_number")
        view = await asyncio.to_thread(self._service.get_serial, query.sku, query.serial_number)
        return convert.serial_unit_message(view)

    @unary
    async def ListPositions(
        self, request: query_service_pb2.ListPositionsRequest, ctx: CallContext
    ) -> query_service_pb2.ListPositionsResponse:
        query = convert.validate_request(
            inputs.ListPositionsModel, request, "sku location_id page_size page_token include_holds"
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

    @unary
    async def GetAvailability(
        self, request: query_service_pb2.GetAvailabilityRequest, ctx: CallContext
    ) -> availability_pb2.Availability:
        query = convert.validate_request(
            inputs.GetAvailabilityModel,
            request,
            "sku channel consistency min_position",
            {"horizon": convert.timestamp(request, "horizon")},
        )
        strong = query.consistency == availability_pb2.CONSISTENCY_STRONG
        # Eventual: from the in-memory cache on the loop when it is at min_position or later.
        view = (
            None
            if strong
            else self._read.cached_availability(
                query.sku, query.channel, min_position=query.min_position, horizon=query.horizon
            )
        )
        if view is None:
            view = await asyncio.to_thread(
                self._read.availability,
                query.sku,
                query.channel,
                strong=strong,
                min_position=query.min_position,
                horizon=query.horizon,
                timeout=ctx.time_remaining_seconds or DEFAULT_WAIT_SECONDS,
            )
        return convert.availability_message(view)

    @server_stream
    async def WatchAvailability(
        self, request: query_service_pb2.WatchAvailabilityRequest, ctx: CallContext
    ) -> AsyncGenerator[availability_pb2.AvailabilityChange, None]:
        query = convert.validate(
            inputs.WatchAvailabilityModel,
            {"channel": request.channel, "skus": list(request.skus)},
        )
        hub = self._watch_hub()
        watcher = hub.new_watcher(query.channel, query.unique_skus)
        try:
            for change in await asyncio.to_thread(hub.subscribe, watcher):
                yield convert.change_message(change)
            while True:
                yield convert.change_message(await watcher.next())
        finally:
            hub.unsubscribe(watcher)

    def _watch_hub(self) -> WatchHub:
        if self._watch is None:
            self._watch = WatchHub(self._read.store, self._service.clock, runner=self._read.runner)
            self._watch.start(asyncio.get_running_loop())
        return self._watch

    @unary
    async def ListInTransit(
        self, request: query_service_pb2.ListInTransitRequest, ctx: CallContext
    ) -> query_service_pb2.ListInTransitResponse:
        query = convert.validate_request(
            inputs.ListInTransitModel, request, "sku to_location_id page_size page_token"
        )
        listing = {"m": "ListInTransit", "sku": query.sku, "to": query.to_location_id}
        after = self._tokens.decode(query.page_token, listing)
        transfers = await asyncio.to_thread(
            self._read.in_transit,
            sku=query.sku or None,
            to_location_id=query.to_location_id or None,
        )
        keys = [[t.to_location_id, t.sku, t.transfer_id] for t in transfers]
        start = keys.index(after) + 1 if after in keys else 0
        size = page_size_of(query.page_size)
        page = transfers[start : start + size]
        more = start + size < len(transfers)
        token = self._tokens.encode(listing, keys[start + size - 1]) if more else ""
        return query_service_pb2.ListInTransitResponse(
            transfers=[convert.in_transit_message(t) for t in page], next_page_token=token
        )

    @unary
    async def ListExceptions(
        self, request: query_service_pb2.ListExceptionsRequest, ctx: CallContext
    ) -> query_service_pb2.ListExceptionsResponse:
        type_name = (
            availability_pb2.ExceptionType.Name(request.type)
            if request.type in (availability_pb2.ExceptionType.values())
            else f"<unknown {request.type}>"
        )
        query = convert.validate_request(
            inputs.ListExceptionsModel,
            request,
            "sku location_id page_size page_token",
            {
                "type": "" if request.type == 0 else type_name.removeprefix(EXCEPTION_TYPE_PREFIX),
                "expiring_within": convert.duration(request, "expiring_within"),
            },
        )
        if query.expiring_within is not None:
            return await self._expiring_lots(query, query.expiring_within)
        listing = {"m": "ListExceptions", "t": query.type, "s": query.sku, "l": query.location_id}
        after = self._tokens.decode(query.page_token, listing) or [0, -1]
        size = page_size_of(query.page_size)
        found = await asyncio.to_thread(
            self._read.exceptions,
            exception_type=query.type or None,
            sku=query.sku or None,
            location_id=query.location_id or None,
            after=(int(after[0]), int(after[1])),
            limit=size + 1,
        )
        token = self._tokens.encode(listing, list(found[size - 1][0])) if len(found) > size else ""
        return query_service_pb2.ListExceptionsResponse(
            exceptions=[convert.exception_message(record) for _, record in found[:size]],
            next_page_token=token,
        )

    async def _expiring_lots(
        self, query: inputs.ListExceptionsModel, within: timedelta
    ) -> query_service_pb2.ListExceptionsResponse:
        """ListExceptions with ``expiring_within``: the lots expiring soon, computed now."""
        listing = {
            "m": "ListExceptions",
            "w": within.total_seconds(),
            "s": query.sku,
            "l": query.location_id,
        }
        after = self._tokens.decode(query.page_token, listing)
        size = page_size_of(query.page_size)
        found = await asyncio.to_thread(
            self._read.expiring_lots,
            within=within,
            sku=query.sku or None,
            location_id=query.location_id or None,
            after=(
                (datetime.fromisoformat(after[0]), after[1], after[2], after[3]) if after else None
            ),
            limit=size + 1,
        )
        token = ""
        if len(found) > size:
            expires_at, sku, location_id, lot_id = found[size - 1][0]
            token = self._tokens.encode(listing, [expires_at.isoformat(), sku, location_id, lot_id])
        return query_service_pb2.ListExceptionsResponse(
            exceptions=[convert.exception_message(record) for _, record in found[:size]],
            next_page_token=token,
        )

    @unary
    async def GetProjectionStatus(
        self, request: query_service_pb2.GetProjectionStatusRequest, ctx: CallContext
    ) -> availability_pb2.ProjectionStatus:
        status = await asyncio.to_thread(self._read.status)
        return availability_pb2.ProjectionStatus(
            head_position=status.head_position,
            applied_position=status.applied_position,
            lag=status.lag,
        )
