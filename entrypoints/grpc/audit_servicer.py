"""AuditService: as-of replay, movement listings, the ledger stream, chain verification,
the recall trace of a lot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from inventory.ledger.v1 import audit_service_pb2, audit_service_pb2_grpc, position_pb2

from entrypoints.grpc import convert
from entrypoints.grpc.page_tokens import PageTokens, page_size_of
from entrypoints.grpc.rpc import server_stream, unary
from ledger import inputs
from ledger.audit.as_of import Axis
from ledger.audit.tail import LedgerTail
from ledger.audit.verify import VerifyProgress
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from ledger.views import LotView

STREAM_BATCH = 500
_AXES: dict[int, Axis] = {
    audit_service_pb2.AXIS_RECORDED: Axis.RECORDED,
    audit_service_pb2.AXIS_EFFECTIVE: Axis.EFFECTIVE,
}


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(self, service: LedgerService, page_tokens: PageTokens, tail: LedgerTail) -> None:
        self._service = service
        self._tokens = page_tokens
        self._tail = tail

    @unary
    async def GetPositionAsOf(
        self, request: audit_service_pb2.GetPositionAsOfRequest, ctx: CallContext
    ) -> position_pb2.Position:
        query = convert.validate_request(
            inputs.GetPositionAsOfModel,
            request,
            "sku location_id axis include_holds",
            {
                "as_of": convert.timestamp(request, "as_of"),
                "known_at": convert.timestamp(request, "known_at"),
            },
        )
        view = await asyncio.to_thread(
            self._service.position_as_of,
            query.sku,
            query.location_id,
            query.as_of,
            _AXES[query.axis],
            query.known_at,
            include_holds=query.include_holds,
        )
        return convert.position_message(view)

    @unary
    async def ListMovements(
        self, request: audit_service_pb2.ListMovementsRequest, ctx: CallContext
    ) -> audit_service_pb2.ListMovementsResponse:
        query = convert.validate_request(
            inputs.ListMovementsModel,
            request,
            "sku location_id axis page_size page_token",
            {"from": convert.timestamp(request, "from"), "to": convert.timestamp(request, "to")},
        )
        listing = {
            "m": "ListMovements",
            "sku": query.sku,
            "loc": query.location_id,
            "axis": query.axis,
            "from": query.from_.isoformat() if query.from_ else "",
            "to": query.to.isoformat() if query.to else "",
        }
        after = self._tokens.decode(query.page_token, listing) or [-(2**62), 0]
        page = await asyncio.to_thread(
            self._service.list_movements,
            query.sku,
            query.location_id,
            axis=_AXES[query.axis],
            start=query.from_,
            end=query.to,
            after=(int(after[0]), int(after[1])),
            page_size=page_size_of(query.page_size),
        )
        token = self._tokens.encode(listing, list(page.next_after)) if page.next_after else ""
        return audit_service_pb2.ListMovementsResponse(
            entries=[convert.ledger_entry_message(e) for e in page.items], next_page_token=token
        )

    @server_stream
    async def StreamLedger(
        self, request: audit_service_pb2.StreamLedgerRequest, ctx: CallContext
    ) -> AsyncGenerator[audit_service_pb2.LedgerEntry, None]:
        query = convert.validate_request(inputs.StreamLedgerModel, request, "from_position follow")
        after = query.from_position
        while True:
            entries = await asyncio.to_thread(self._service.ledger_entries, after, STREAM_BATCH)
            for entry in entries:
                yield convert.ledger_entry_message(entry)
            if entries:
                after = entries[-1].position
            if len(entries) == STREAM_BATCH:
                continue
            if not query.follow:
                return
            await self._tail.wait()

    @unary
    async def TraceLot(
        self, request: audit_service_pb2.TraceLotRequest, ctx: CallContext
    ) -> audit_service_pb2.TraceLotResponse:
        query = convert.validate_request(
            inputs.TraceLotModel,
            request,
            "sku lot_id page_size page_token",
            {"as_of": convert.timestamp(request, "as_of")},
        )
        listing = {
            "m": "TraceLot",
            "sku": query.sku,
            "lot": query.lot_id,
            "as_of": query.as_of.isoformat() if query.as_of else "",
        }
        after = self._tokens.decode(query.page_token, listing) or [0]
        trace = await asyncio.to_thread(
            self._service.trace_lot,
            query.sku,
            query.lot_id,
            as_of=query.as_of,
            after_position=int(after[0]),
            page_size=page_size_of(query.page_size),
        )
        page = trace.entries
        token = self._tokens.encode(listing, [page.next_after]) if page.next_after else ""
        entries = []
        for traced in page.items:
            message = convert.ledger_entry_message(traced.entry)
            message.order_ref = traced.order_ref
            entries.append(message)
        return audit_service_pb2.TraceLotResponse(
            entries=entries,
            locations=[_lot_location(location_id, lot) for location_id, lot in trace.locations],
            next_page_token=token,
        )

    @server_stream
    async def VerifyLedger(
        self, request: audit_service_pb2.VerifyLedgerRequest, ctx: CallContext
    ) -> AsyncGenerator[audit_service_pb2.VerifyLedgerProgress, None]:
        query = convert.validate_request(inputs.VerifyLedgerModel, request, "sku location_id")
        if query.sku:
            result = await asyncio.to_thread(
                self._service.verify_position, query.sku, query.location_id
            )
            yield _progress_message(result)
            return
        progress = self._service.verify_ledger()
        sentinel: Any = object()
        while True:
            step = await asyncio.to_thread(next, progress, sentinel)
            if step is sentinel:
                return
            yield _progress_message(step)


def _lot_location(location_id: str, lot: LotView) -> audit_service_pb2.LotLocation:
    return audit_service_pb2.LotLocation(
        location_id=location_id,
        buckets=position_pb2.LotBuckets(
            lot_id=lot.lot_id,
            expires_at=convert.to_timestamp(lot.expires_at),
            on_hand=lot.on_hand,
            receiving=lot.receiving,
            quarantine=lot.quarantine,
            damaged=lot.damaged,
            in_transit_inbound=lot.in_transit_inbound,
            reserved=lot.reserved,
            allocated=lot.allocated,
            available=lot.available,
        ),
    )


def _progress_message(progress: VerifyProgress) -> audit_service_pb2.VerifyLedgerProgress:
    return audit_service_pb2.VerifyLedgerProgress(
        positions_checked=progress.positions_checked,
        entries_checked=progress.entries_checked,
        broken_links=[
            audit_service_pb2.BrokenLink(
                sku=b.sku,
                location_id=b.location_id,
                version=b.version,
                position=b.position,
                reason=b.reason,
                detail=b.detail,
                expected_hash=b.expected_hash,
                stored_hash=b.stored_hash,
            )
            for b in progress.broken
        ],
        done=progress.done,
        ok=progress.done and progress.ok,
    )
