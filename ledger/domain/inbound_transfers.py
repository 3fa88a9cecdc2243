"""A position's inbound transfers (``position.inbound``): one record per transfer_id of what
was dispatched towards it and received, kept until settled and quiet for TRANSFER_RETENTION."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ledger.domain.availability import inbound_outstanding

# How long a settled transfer (nothing left in transit) is remembered after its last event.
TRANSFER_RETENTION = timedelta(days=30)


def inbound_key(transfer_id: str, lot_id: str | None) -> str:
    """A LOT SKU's transfer is kept per (transfer_id, lot): one truck may carry several lots.
    Identifiers hold no control characters, so the separator cannot be ambiguous."""
    return f"{transfer_id}\x1f{lot_id}" if lot_id else transfer_id


def inbound_transfer(position: Any, transfer_id: str, lot_id: str | None = None) -> dict[str, Any]:
    key = inbound_key(transfer_id, lot_id)
    transfer = position.inbound.get(key)
    if transfer is None:
        transfer = {
            "from_location_id": "",
            "dispatched": 0,
            "received": 0,
            "closed": False,
            "expected_at": None,
            "dispatched_at": None,
            "last_at": None,
        }
        if lot_id:
            # Untracked records keep exactly the fields they always had.
            transfer["transfer_id"] = transfer_id
            transfer["lot_id"] = lot_id
        position.inbound[key] = transfer
    return transfer


def prune_settled_transfers(position: Any, now: datetime) -> None:
    """Keep state bounded: forget transfers with nothing in transit and no activity for
    TRANSFER_RETENTION. Until then a late or split receipt still nets against its transfer,
    so the in-transit figure never depends on how the receipts were split. Decided from the
    event's own ``recorded_at``, so every replay prunes identically."""
    horizon = now - TRANSFER_RETENTION
    settled = [
        transfer_id
        for transfer_id, t in position.inbound.items()
        if inbound_outstanding(t) == 0 and t["last_at"] is not None and t["last_at"] < horizon
    ]
    for transfer_id in settled:
        del position.inbound[transfer_id]
