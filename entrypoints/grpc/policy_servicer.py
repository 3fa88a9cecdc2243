"""PolicyService: safety stock, channel fences, channel publishing policy, item tracking."""

from __future__ import annotations

import asyncio

from inventory.ledger.v1 import (
    channel_policy_pb2,
    item_policy_pb2,
    policy_service_pb2,
    policy_service_pb2_grpc,
    position_pb2,
)

from entrypoints.grpc import convert
from entrypoints.grpc.rpc import settled, unary
from ledger import inputs
from ledger.domain.item_policy import Tracking
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext


class PolicyServicer(policy_service_pb2_grpc.PolicyServiceServicer):
    def __init__(self, service: LedgerService) -> None:
        self._service = service

    @unary
    async def SetSafetyStock(
        self, request: policy_service_pb2.SetSafetyStockRequest, ctx: CallContext
    ) -> position_pb2.Position:
        model = convert.validate_request(
            inputs.SetSafetyStockModel, request, "request_id sku location_id qty"
        )
        view = await settled(
            self._service.set_safety_stock(
                ctx, model.request_id, model.sku, model.location_id, model.qty
            )
        )
        return convert.position_message(view)

    @unary
    async def SetChannelFence(
        self, request: policy_service_pb2.SetChannelFenceRequest, ctx: CallContext
    ) -> position_pb2.Position:
        model = convert.validate_request(
            inputs.SetChannelFenceModel, request, "request_id sku location_id channel qty"
        )
        view = await settled(
            self._service.set_channel_fence(
                ctx, model.request_id, model.sku, model.location_id, model.channel, model.qty
            )
        )
        return convert.position_message(view)

    @unary
    async def SetChannelPolicy(
        self, request: policy_service_pb2.SetChannelPolicyRequest, ctx: CallContext
    ) -> channel_policy_pb2.ChannelPolicy:
        model = convert.validate_request(
            inputs.SetChannelPolicyModel,
            request,
            "request_id channel share_percent buffer max_publish",
            {"eligible_location_ids": list(request.eligible_location_ids)},
        )
        view = await settled(
            self._service.set_channel_policy(
                ctx,
                model.request_id,
                model.channel,
                sorted(set(model.eligible_location_ids)),
                model.share_percent or 100,
                model.buffer,
                model.max_publish,
            )
        )
        return convert.channel_policy_message(view)

    @unary
    async def SetItemPolicy(
        self, request: policy_service_pb2.SetItemPolicyRequest, ctx: CallContext
    ) -> item_policy_pb2.ItemPolicy:
        model = convert.validate_request(
            inputs.SetItemPolicyModel,
            request,
            "request_id sku",
            {"tracking": convert.item_tracking(request.tracking)},
        )
        tracking = Tracking((model.tracking or "none").upper())
        view = await settled(
            self._service.set_item_policy(ctx, model.request_id, model.sku, tracking)
        )
        return convert.item_policy_message(view)

    @unary
    async def GetItemPolicy(
        self, request: policy_service_pb2.GetItemPolicyRequest, ctx: CallContext
    ) -> item_policy_pb2.ItemPolicy:
        model = convert.validate_request(inputs.GetItemPolicyModel, request, "sku")
        view = await asyncio.to_thread(self._service.get_item_policy, model.sku)
        return convert.item_policy_message(view)
