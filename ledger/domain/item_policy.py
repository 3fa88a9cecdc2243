"""Item policy (contract §2, item tracking): how a SKU is tracked, ledger-wide.

One aggregate per SKU, keyed by uuid5 of the SKU like the channel policy. The rule for
changing it is a pure function so the unit tests can drive it without a store.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

ITEM_NAMESPACE = UUID("6f0c1d7e-3b7a-4f55-9a9e-2d4c1b8e5f01")


class Tracking(StrEnum):
    NONE = "NONE"
    LOT = "LOT"
    SERIAL = "SERIAL"


# Derived on every command that names it (a SHA-1 each): the busy ones are kept.
@lru_cache(maxsize=65_536)
def item_policy_id(sku: str) -> UUID:
    return uuid5(ITEM_NAMESPACE, sku)


def change_refused(current: Tracking, wanted: Tracking, holds_stock: bool) -> str | None:
    """Why ``current -> wanted`` is refused, or None when it is allowed.

    Setting the same tracking again is always allowed (a no-op). Leaving NONE needs a SKU
    without stock (its history has no lots or serials to give it); LOT and SERIAL are never
    left, since movements, holds and serial indexes already name lots or units.
    """
    if wanted == current:
        return None
    if current != Tracking.NONE:
        return f"tracking {current} cannot be changed"
    if holds_stock:
        return f"tracking can leave {current} only while the SKU holds no stock"
    return None


class ItemPolicy(Aggregate):
    """A SKU without an ItemPolicy aggregate is tracked NONE."""

    class Created(Aggregate.Created):
        sku: str
        recorded_at: datetime

    class Set(Aggregate.Event):
        tracking: str
        recorded_at: datetime
        request_id: str
        correlation_id: str
        actor: str

        def apply(self, aggregate: Any) -> None:
            aggregate.tracking = Tracking(self.tracking)
            aggregate.updated_at = self.recorded_at

    @staticmethod
    def create_id(sku: str) -> UUID:
        return item_policy_id(sku)

    def __init__(self, sku: str, recorded_at: datetime) -> None:
        self.sku = sku
        self.tracking = Tracking.NONE
        self.updated_at = recorded_at


def holds_stock(position: Any, now: datetime) -> bool:
    """Whether a position holds any unit: in a bucket, inbound, or held for a reservation.

    A negative on_hand (oversold) counts too: those units are owed and would have no lot.
    """
    buckets = (
        position.on_hand,
        position.receiving,
        position.quarantine,
        position.damaged,
        position.in_transit_inbound,
        position.reserved(now),
        position.allocated(),
    )
    return any(buckets)
