"""The canonical movement (contract §2, §5): a fact from a warehouse, ERP or 3PL, validated."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class MovementType(StrEnum):
    RECEIPT = "receipt"
    PUTAWAY = "putaway"
    SHIPMENT = "shipment"
    ADJUSTMENT = "adjustment"
    CYCLE_COUNT = "cycle_count"
    QUARANTINE = "quarantine"
    QUARANTINE_RELEASE = "quarantine_release"
    DAMAGE = "damage"
    WRITE_OFF = "write_off"
    TRANSFER_DISPATCH = "transfer_dispatch"
    TRANSFER_RECEIPT = "transfer_receipt"
    RETURN_RECEIPT = "return_receipt"


class Disposition(StrEnum):
    RESTOCK = "restock"
    QUARANTINE = "quarantine"
    DAMAGED = "damaged"


class FromBucket(StrEnum):
    ON_HAND = "on_hand"
    QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Movement:
    """A validated movement in base units. Field presence follows the movement type.

    ``occurred_at`` is None when the source did not say; the ledger then uses its recording time.
    """

    source: str
    message_id: str
    type: MovementType
    sku: str
    location_id: str
    qty: int | None = None
    delta: int | None = None
    counted: int | None = None
    occurred_at: datetime | None = None
    reservation_id: str | None = None
    transfer_id: str | None = None
    to_location_id: str | None = None
    reason: str | None = None
    disposition: Disposition | None = None
    putaway_pending: bool = False
    final: bool = False
    expected_at: datetime | None = None
    from_bucket: FromBucket | None = None

    def fingerprint_fields(self) -> dict[str, Any]:
        """Every field that defines the fact, as JSON-friendly values (for idempotency)."""
        fields = asdict(self)
        for name, value in fields.items():
            if isinstance(value, datetime):
                fields[name] = value.isoformat()
            elif isinstance(value, StrEnum):
                fields[name] = value.value
        return fields
