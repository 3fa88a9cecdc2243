"""A lot, ledger-wide (contract §2): which SKU it belongs to and its expiry.

A lot's expiry belongs to the whole ledger, not to one position: the first receipt or
return of the lot, at any location, that states an expiry fixes it, and units of the lot
already elsewhere expire with it. One aggregate per (SKU, lot), created by the first
movement that names the lot, is what makes "first" exact across replicas: two writers
creating or fixing it at once conflict on its version, and the loser re-runs and sees the
winner's expiry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

LOT_NAMESPACE = UUID("0d7f5a0e-8b4c-4b7e-9f59-3a1c2e6d4b71")


def lot_record_id(sku: str, lot_id: str) -> UUID:
    return uuid5(LOT_NAMESPACE, f"{len(sku)}:{sku}|{lot_id}")


class LotRecord(Aggregate):
    class Created(Aggregate.Created):
        sku: str
        lot_id: str
        expires_at: datetime | None
        location_id: str  # where the lot was first seen
        recorded_at: datetime

    class ExpiryFixed(Aggregate.Event):
        """The first receipt or return stating an expiry, after the lot was seen without."""

        expires_at: datetime
        location_id: str
        recorded_at: datetime

        def apply(self, aggregate: Any) -> None:
            aggregate.expires_at = self.expires_at

    @staticmethod
    def create_id(sku: str, lot_id: str) -> UUID:
        return lot_record_id(sku, lot_id)

    def __init__(
        self,
        sku: str,
        lot_id: str,
        expires_at: datetime | None,
        location_id: str,
        recorded_at: datetime,
    ) -> None:
        self.sku = sku
        self.lot_id = lot_id
        self.expires_at = expires_at
        self.first_location_id = location_id

    @classmethod
    def first_seen(
        cls,
        sku: str,
        lot_id: str,
        expires_at: datetime | None,
        location_id: str,
        recorded_at: datetime,
    ) -> LotRecord:
        return cls._create(
            cls.Created,
            sku=sku,
            lot_id=lot_id,
            expires_at=expires_at,
            location_id=location_id,
            recorded_at=recorded_at,
        )

    def fix_expiry(self, expires_at: datetime, location_id: str, recorded_at: datetime) -> None:
        if self.expires_at is not None:
            raise AssertionError("a lot's expiry is fixed once")
        self.trigger_event(
            self.ExpiryFixed,
            expires_at=expires_at,
            location_id=location_id,
            recorded_at=recorded_at,
        )


def expiry_stated_by(movement_type: str) -> bool:
    """Only receipts and returns state a lot's expiry."""
    return movement_type in ("receipt", "return_receipt")
