"""A position as the projection keeps it: the domain's own folds over a plain object.

The projection never re-implements the arithmetic: it calls each event's ``apply`` (the
pure fold the aggregate uses) on a :class:`ProjectedPosition`, and watches the fold for the
exceptions of contract §5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.domain import availability
from ledger.domain.inbound_transfers import inbound_key
from ledger.domain.lots import lot_of, lots_of
from ledger.domain.position import Position, inbound_outstanding
from ledger.domain.position_state import PositionState, is_stale_count

BUCKETS = ("on_hand", "receiving", "quarantine", "damaged", "in_transit_inbound")

NEGATIVE_BUCKET = "NEGATIVE_BUCKET"
STALE_COUNT = "STALE_COUNT"
TRANSFER_SHORTAGE = "TRANSFER_SHORTAGE"
UNKNOWN_RESERVATION = "UNKNOWN_RESERVATION"
LOT_EXPIRY_CONFLICT = "LOT_EXPIRY_CONFLICT"
SERIAL_CONFLICT = "SERIAL_CONFLICT"


@dataclass(frozen=True)
class LedgerExceptionRecord:
    ledger_position: int
    type: str
    sku: str
    location_id: str
    bucket: str
    quantity: int
    detail: str
    source: str
    message_id: str
    occurred_at: datetime
    recorded_at: datetime
    seq: int = 0  # order among the exceptions raised by the same ledger event


class ProjectedPosition(PositionState):
    """The aggregate's state plus the projection's exception watch."""

    def fold(self, event: Any, ledger_position: int) -> list[LedgerExceptionRecord]:
        """Apply one position event; return the exceptions it raises."""
        if event.originator_version != self.version + 1:
            raise AssertionError(
                f"{self.sku}@{self.location_id}: event v{event.originator_version}"
                f" after v{self.version}"
            )
        self.version = event.originator_version
        if isinstance(event, Position.Opened):
            self.updated_at = event.recorded_at
            return []
        found = self._exceptions_before(event)
        before = {bucket: getattr(self, bucket) for bucket in BUCKETS}
        lot_id = event.lot_id
        lot_before = dict(lots_of(self).get(lot_id) or lot_of(self, lot_id)) if lot_id else None
        event.apply(self)
        for bucket in BUCKETS:
            after = getattr(self, bucket)
            if after < 0 and after < before[bucket]:
                found.append((NEGATIVE_BUCKET, bucket, after, f"{bucket} fell to {after}"))
            elif lot_before is not None:
                # A lot can go below zero while the position's sum stays positive.
                lot_after = lots_of(self)[lot_id][bucket]
                if lot_after < 0 and lot_after < lot_before[bucket]:
                    found.append(
                        (
                            NEGATIVE_BUCKET,
                            bucket,
                            lot_after,
                            f"{bucket} of lot {lot_id} fell to {lot_after}",
                        )
                    )
        return [
            LedgerExceptionRecord(
                ledger_position=ledger_position,
                type=kind,
                sku=self.sku,
                location_id=self.location_id,
                bucket=bucket,
                quantity=quantity,
                detail=detail,
                source=event.source,
                message_id=event.message_id,
                occurred_at=event.occurred_at,
                recorded_at=event.recorded_at,
            )
            for kind, bucket, quantity, detail in found
        ]

    def _exceptions_before(self, event: Any) -> list[tuple[str, str, int, str]]:
        found: list[tuple[str, str, int, str]] = []
        if isinstance(event, Position.Counted) and is_stale_count(
            self, event.occurred_at, event.lot_id
        ):
            of_lot = f" of lot {event.lot_id}" if event.lot_id else ""
            found.append(
                (
                    STALE_COUNT,
                    "on_hand",
                    event.counted,
                    f"count older than the newest count{of_lot}",
                )
            )
        if event.stated_expires_at is not None:
            found.append(
                (
                    LOT_EXPIRY_CONFLICT,
                    "",
                    event.qty,
                    f"lot {event.lot_id} expires {event.lot_expires_at.isoformat()};"
                    f" stated {event.stated_expires_at.isoformat()} ignored",
                )
            )
        if event.serial_conflicts:
            found.append(
                (
                    SERIAL_CONFLICT,
                    "",
                    len(event.serial_conflicts),
                    "serial index kept its entry for " + ", ".join(event.serial_conflicts),
                )
            )
        if isinstance(event, Position.Shipped) and event.reservation_id:
            hold = self.holds.get(event.reservation_id)
            if hold is None or not availability.hold_blocks(hold, event.recorded_at):
                found.append(
                    (
                        UNKNOWN_RESERVATION,
                        "",
                        event.qty,
                        f"no open hold of reservation {event.reservation_id} here",
                    )
                )
        if isinstance(event, Position.TransferReceived) and event.final:
            transfer = self.inbound.get(inbound_key(event.transfer_id, event.lot_id))
            outstanding = inbound_outstanding(transfer) if transfer else 0
            short = max(0, outstanding - event.qty)
            if short:
                found.append(
                    (
                        TRANSFER_SHORTAGE,
                        "in_transit_inbound",
                        short,
                        f"transfer {event.transfer_id} closed {short} short",
                    )
                )
        return found

    # ---- rows ---------------------------------------------------------------------------------

    def to_json(self) -> str:
        # Lots only when there are some: an untracked row is stored exactly as before.
        lots = {"lots": self.lots} if lots_of(self) else {}
        return json.dumps(
            {
                **lots,
                "version": self.version,
                "on_hand": self.on_hand,
                "receiving": self.receiving,
                "quarantine": self.quarantine,
                "damaged": self.damaged,
                "in_transit_inbound": self.in_transit_inbound,
                "safety_stock": self.safety_stock,
                "fences": self.fences,
                "holds": self.holds,
                "inbound": self.inbound,
                "last_count_at": self.last_count_at,
                "updated_at": self.updated_at,
            },
            default=_encode,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, sku: str, location_id: str, text: str) -> ProjectedPosition:
        data = json.loads(text, object_hook=_decode)
        position = cls(sku, location_id)
        for name, value in data.items():
            setattr(position, name, value)
        return position


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    raise TypeError(f"cannot encode {type(value)}")


def _decode(obj: dict[str, Any]) -> Any:
    if set(obj) == {"$dt"}:
        return datetime.fromisoformat(obj["$dt"])
    return obj
