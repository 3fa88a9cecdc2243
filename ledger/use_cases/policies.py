"""Policies: safety stock, channel fences, channel publishing policy, item tracking
(contract §2, §4.3)."""

from __future__ import annotations

from ledger.domain import availability
from ledger.domain.channel_policy import ChannelPolicy
from ledger.domain.errors import FenceExceedsAvailable, ItemTrackingLocked
from ledger.domain.item_policy import ItemPolicy, Tracking, change_refused, holds_stock
from ledger.unit_of_work import Command, Finisher, UnitOfWork
from ledger.use_cases.context import CallContext
from ledger.use_cases.idempotent import previous_result, replayed, request_key, written
from ledger.views import ChannelPolicyView, ItemPolicyView, PositionView


def set_safety_stock(
    ctx: CallContext, request_id: str, sku: str, location_id: str, qty: int
) -> Command[PositionView]:
    key = request_key(
        ctx, request_id, "SetSafetyStock", {"sku": sku, "location_id": location_id, "qty": qty}
    )

    def command(uow: UnitOfWork) -> Finisher:
        stored = previous_result(uow, key)
        if stored is not None:
            return replayed(stored, PositionView.from_dict)
        mark = uow.mark()
        meta = ctx.meta(uow.now, request_id=request_id)
        position = uow.position(sku, location_id, meta)
        position.set_safety_stock(qty, meta)
        return written(uow, key, PositionView.of(position, uow.now, include_holds=False), mark)

    return command


def set_channel_fence(
    ctx: CallContext, request_id: str, sku: str, location_id: str, channel: str, qty: int
) -> Command[PositionView]:
    payload = {"sku": sku, "location_id": location_id, "channel": channel, "qty": qty}
    key = request_key(ctx, request_id, "SetChannelFence", payload)

    def command(uow: UnitOfWork) -> Finisher:
        stored = previous_result(uow, key)
        if stored is not None:
            return replayed(stored, PositionView.from_dict)
        mark = uow.mark()
        meta = ctx.meta(uow.now, request_id=request_id)
        position = uow.position(sku, location_id, meta)
        allowed, total = availability.fence_raise_allowed(position, channel, qty, uow.now)
        if not allowed:
            raise FenceExceedsAvailable(
                sku, location_id, channel, qty, total, position.available(uow.now)
            )
        position.set_channel_fence(channel, qty, meta)
        return written(uow, key, PositionView.of(position, uow.now, include_holds=False), mark)

    return command


def set_channel_policy(
    ctx: CallContext,
    request_id: str,
    channel: str,
    eligible_location_ids: list[str],
    share_percent: int,
    buffer: int,
    max_publish: int,
) -> Command[ChannelPolicyView]:
    payload = {
        "channel": channel,
        "eligible_location_ids": eligible_location_ids,
        "share_percent": share_percent,
        "buffer": buffer,
        "max_publish": max_publish,
    }
    key = request_key(ctx, request_id, "SetChannelPolicy", payload)

    def command(uow: UnitOfWork) -> Finisher:
        stored = previous_result(uow, key)
        if stored is not None:
            return replayed(stored, ChannelPolicyView.from_dict)
        mark = uow.mark()
        policy = uow.channel_policy(channel)
        if policy is None:
            policy = ChannelPolicy._create(
                ChannelPolicy.Created, channel=channel, recorded_at=uow.now
            )
            uow.add(policy)
        policy.trigger_event(
            ChannelPolicy.Set,
            eligible_location_ids=list(eligible_location_ids),
            share_percent=share_percent,
            buffer=buffer,
            max_publish=max_publish,
            recorded_at=uow.now,
            request_id=request_id,
            correlation_id=ctx.correlation_id,
            actor=ctx.principal,
        )
        return written(uow, key, ChannelPolicyView.of(policy), mark)

    return command


def _sku_holds_stock(uow: UnitOfWork, sku: str) -> bool:
    for location_id in uow.locations_of(sku):
        position = uow.find_position(sku, location_id)
        if position is not None and holds_stock(position, uow.now):
            return True
    return False


def set_item_policy(
    ctx: CallContext, request_id: str, sku: str, tracking: Tracking
) -> Command[ItemPolicyView]:
    key = request_key(ctx, request_id, "SetItemPolicy", {"sku": sku, "tracking": str(tracking)})

    def command(uow: UnitOfWork) -> Finisher:
        stored = previous_result(uow, key)
        if stored is not None:
            return replayed(stored, ItemPolicyView.from_dict)
        mark = uow.mark()
        policy = uow.item_policy(sku)
        current = policy.tracking if policy is not None else Tracking.NONE
        # Only a change away from NONE needs the stock check (reads every position of the SKU).
        stocked = current == Tracking.NONE != tracking and _sku_holds_stock(uow, sku)
        why = change_refused(current, tracking, stocked)
        if why is not None:
            raise ItemTrackingLocked(sku, str(current), str(tracking), why)
        if policy is None:
            policy = ItemPolicy._create(ItemPolicy.Created, sku=sku, recorded_at=uow.now)
            uow.add(policy)
        policy.trigger_event(
            ItemPolicy.Set,
            tracking=str(tracking),
            recorded_at=uow.now,
            request_id=request_id,
            correlation_id=ctx.correlation_id,
            actor=ctx.principal,
        )
        return written(uow, key, ItemPolicyView.of(policy), mark)

    return command


__all__ = ["set_channel_fence", "set_channel_policy", "set_item_policy", "set_safety_stock"]
