"""The running balance of a position's ledger entries, as an edge client sees them.

``ledger audit history`` and the console's stock-ledger page list a position's entries
(``AuditService.ListMovements``) with the balance of each bucket after each entry. This
module is that fold over the gRPC ``LedgerEntry`` messages alone (no ledger internals), pure
and in memory: the bucket effects of contract §2 ("Movement types"), the holds of
reservations, the inbound transfers, and the cycle-count rule.

Entries folded in the order ``ListMovements`` gives on an axis — ledger order on the recorded
axis, ``(occurred_at, ledger order)`` on the effective one — give after each entry the
position as ``GetPositionAsOf`` answers on that axis at that entry's time, holds judged at
that time (an ACTIVE hold counts while ``time < expires_at``). For a LOT SKU ``available``
here is ``on_hand - reserved - allocated - safety_stock``: expired lots are not taken out (the
as-of answer's ``expired`` and ``lots`` say how much that is).

It also carries the RFC 3339 instant parsing the audit CLI and the console share.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from inventory.ledger.v1 import audit_service_pb2, movement_pb2

# The buckets of a running balance, in the order tables show them (Position's field names).
BUCKETS = (
    "on_hand",
    "receiving",
    "quarantine",
    "damaged",
    "in_transit_inbound",
    "reserved",
    "allocated",
    "safety_stock",
    "available",
)
AXES = ("recorded", "effective")
# A settled inbound transfer is forgotten this long after its last entry (the ledger's rule:
# a later receipt under the same id then counts as a new one).
TRANSFER_RETENTION = dt.timedelta(days=30)

_TYPE = audit_service_pb2.EntryType
_ENTRY_TYPE_PREFIX = "ENTRY_TYPE_"


class InstantError(ValueError):
    """Raised when a command-line or form instant is not RFC 3339 with a zone."""


def parse_instant(text: str, name: str = "time") -> dt.datetime:
    """``2026-03-31T23:59:00Z`` or with an offset → an aware UTC datetime."""
    value = text.strip()
    if value[-1:] in ("z", "Z"):
        value = value[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InstantError(
            f"{name} {text!r} is not an RFC 3339 time such as 2026-03-31T23:59:00Z"
        ) from None
    if parsed.tzinfo is None or "T" not in value.upper():
        raise InstantError(
            f"{name} {text!r} needs a date, a time and a zone, e.g. 2026-03-31T23:59:00Z"
        )
    return parsed.astimezone(dt.UTC)


def format_instant(value: dt.datetime | None) -> str:
    """RFC 3339 in UTC with microseconds only when there are some; '' for None."""
    if value is None:
        return ""
    text = value.astimezone(dt.UTC).isoformat()
    return text.replace("+00:00", "Z")


def entry_time(entry: Any, axis: str) -> dt.datetime:
    """The entry's time on ``axis`` ("recorded" or "effective")."""
    stamp = entry.recorded_at if axis == "recorded" else entry.occurred_at
    return _datetime(stamp)


def entry_type_name(entry: Any) -> str:
    """``receipt``, ``hold_placed``, ... (the EntryType without its prefix, lower case)."""
    return str(_TYPE.Name(entry.type)).removeprefix(_ENTRY_TYPE_PREFIX).lower()


@dataclass(frozen=True)
class Balance:
    """A position's buckets at one point of the fold (Position's field names)."""

    on_hand: int = 0
    receiving: int = 0
    quarantine: int = 0
    damaged: int = 0
    in_transit_inbound: int = 0
    reserved: int = 0
    allocated: int = 0
    safety_stock: int = 0
    available: int = 0

    def as_dict(self) -> dict[str, int]:
        return {bucket: getattr(self, bucket) for bucket in BUCKETS}


@dataclass(frozen=True)
class BalanceRow:
    """One ledger entry and the position's balance once it is folded."""

    entry: Any  # inventory.ledger.v1.LedgerEntry
    balance: Balance
    late: bool  # occurred before an entry earlier in ledger order (a backdated fact)
    stale_count: bool  # a cycle count older than the newest count folded: it changed nothing


@dataclass
class _Hold:
    status: str  # "ACTIVE" or "COMMITTED"
    qty: int
    expires_at: dt.datetime
    shipped: int = 0

    @property
    def open_qty(self) -> int:
        return self.qty - self.shipped

    def blocks(self, now: dt.datetime) -> bool:
        return self.status == "COMMITTED" or (self.status == "ACTIVE" and now < self.expires_at)


@dataclass
class _Inbound:
    dispatched: int = 0
    received: int = 0
    closed: bool = False
    last_at: dt.datetime | None = None

    @property
    def outstanding(self) -> int:
        return 0 if self.closed else max(0, self.dispatched - self.received)


@dataclass
class PositionFold:
    """The fold's state: feed entries with :meth:`apply`, read :meth:`balance`."""

    buckets: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("on_hand", "receiving", "quarantine", "damaged", "in_transit_inbound"), 0
        )
    )
    safety_stock: int = 0
    holds: dict[str, _Hold] = field(default_factory=dict)
    inbound: dict[tuple[str, str], _Inbound] = field(default_factory=dict)
    last_count_at: dict[str, dt.datetime] = field(default_factory=dict)  # lot ('' = none) ->
    lot_on_hand: dict[str, int] = field(default_factory=dict)

    def balance(self, now: dt.datetime) -> Balance:
        """The buckets with holds judged at ``now``."""
        reserved = sum(
            h.open_qty for h in self.holds.values() if h.status == "ACTIVE" and now < h.expires_at
        )
        allocated = sum(h.open_qty for h in self.holds.values() if h.status == "COMMITTED")
        on_hand = self.buckets["on_hand"]
        return Balance(
            **self.buckets,
            reserved=reserved,
            allocated=allocated,
            safety_stock=self.safety_stock,
            available=on_hand - reserved - allocated - self.safety_stock,
        )

    def apply(self, entry: Any) -> bool:
        """Fold one entry; False when it is a stale cycle count (recorded, changed nothing)."""
        kind = entry_type_name(entry)
        qty = int(entry.qty)
        if kind == "receipt":
            self._move(entry, {"receiving" if entry.putaway_pending else "on_hand": qty})
        elif kind == "putaway":
            self._move(entry, {"receiving": -qty, "on_hand": qty})
        elif kind == "shipment":
            self._ship(entry, qty)
        elif kind == "adjustment":
            self._move(entry, {"on_hand": int(entry.delta)})
        elif kind == "cycle_count":
            return self._count(entry)
        elif kind == "quarantine":
            self._move(entry, {"on_hand": -qty, "quarantine": qty})
        elif kind == "quarantine_release":
            self._move(entry, {"quarantine": -qty, "on_hand": qty})
        elif kind == "damage":
            quarantined = entry.from_bucket == movement_pb2.FROM_BUCKET_QUARANTINE
            self._move(entry, {"quarantine" if quarantined else "on_hand": -qty, "damaged": qty})
        elif kind == "write_off":
            self._move(entry, {"damaged": -qty})
        elif kind == "transfer_dispatch":
            self._move(entry, {"on_hand": -qty})
        elif kind in ("transfer_inbound", "transfer_receipt"):
            self._transfer(entry, kind, qty)
        elif kind == "return_receipt":
            bucket = {
                movement_pb2.DISPOSITION_QUARANTINE: "quarantine",
                movement_pb2.DISPOSITION_DAMAGED: "damaged",
            }.get(entry.disposition, "on_hand")
            self._move(entry, {bucket: qty})
        elif kind == "safety_stock_set":
            self.safety_stock = qty
        elif kind == "hold_placed":
            self.holds[entry.reservation_id] = _Hold("ACTIVE", qty, _datetime(entry.expires_at))
        elif kind == "hold_committed":
            hold = self.holds.get(entry.reservation_id)
            if hold is not None:
                hold.status = "COMMITTED"
        elif kind == "hold_released":
            self.holds.pop(entry.reservation_id, None)
        # opened, channel_fence_set, lot_expiry_fixed: no bucket changes.
        return True

    def _move(self, entry: Any, changes: dict[str, int]) -> None:
        for bucket, delta in changes.items():
            self.buckets[bucket] += delta
        if entry.lot_id and "on_hand" in changes:
            lot = entry.lot_id
            self.lot_on_hand[lot] = self.lot_on_hand.get(lot, 0) + changes["on_hand"]

    def _ship(self, entry: Any, qty: int) -> None:
        self._move(entry, {"on_hand": -qty})
        hold = self.holds.get(entry.reservation_id) if entry.reservation_id else None
        # An expired ACTIVE hold holds nothing: a shipment against it consumes nothing.
        if hold is not None and hold.blocks(_datetime(entry.recorded_at)):
            hold.shipped += min(qty, hold.open_qty)
            if hold.open_qty == 0:
                del self.holds[entry.reservation_id]

    def _count(self, entry: Any) -> bool:
        lot = entry.lot_id
        occurred_at = _datetime(entry.occurred_at)
        last = self.last_count_at.get(lot)
        if last is not None and occurred_at < last:
            return False
        self.last_count_at[lot] = occurred_at
        counted = int(entry.counted)
        if not lot:
            self.buckets["on_hand"] = counted
            return True
        # A lot count sets that lot alone; the position keeps the sum of its lots.
        self.buckets["on_hand"] += counted - self.lot_on_hand.get(lot, 0)
        self.lot_on_hand[lot] = counted
        return True

    def _transfer(self, entry: Any, kind: str, qty: int) -> None:
        key = (entry.transfer_id, entry.lot_id)
        recorded_at = _datetime(entry.recorded_at)
        if kind == "transfer_inbound" and key in self.inbound and self.inbound[key].closed:
            del self.inbound[key]  # a dispatch after a final receipt starts a new leg
        transfer = self.inbound.setdefault(key, _Inbound())
        before = transfer.outstanding
        if kind == "transfer_inbound":
            transfer.dispatched += qty
        else:
            transfer.received += qty
            transfer.closed = transfer.closed or entry.final
        transfer.last_at = recorded_at
        changes = {"in_transit_inbound": transfer.outstanding - before}
        if kind == "transfer_receipt":
            changes["on_hand"] = qty
        self._move(entry, changes)
        horizon = recorded_at - TRANSFER_RETENTION
        for settled in [
            k
            for k, t in self.inbound.items()
            if t.outstanding == 0 and t.last_at is not None and t.last_at < horizon
        ]:
            del self.inbound[settled]


def late_positions(entries: Iterable[Any]) -> set[int]:
    """The ``position`` of every entry that occurred before an entry earlier in ledger order
    (a late, backdated fact)."""
    late: set[int] = set()
    newest: dt.datetime | None = None
    for entry in sorted(entries, key=lambda e: e.position):
        occurred_at = _datetime(entry.occurred_at)
        if newest is not None and occurred_at < newest:
            late.add(entry.position)
        if newest is None or occurred_at > newest:
            newest = occurred_at
    return late


def running_balances(entries: Sequence[Any], axis: str) -> list[BalanceRow]:
    """Each entry, in the order given (``ListMovements`` order on ``axis``), with the balance
    after it, holds judged at the entry's time on ``axis``."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, not {axis!r}")
    late = late_positions(entries)
    fold = PositionFold()
    rows = []
    for entry in entries:
        changed = fold.apply(entry)
        rows.append(
            BalanceRow(
                entry=entry,
                balance=fold.balance(entry_time(entry, axis)),
                late=entry.position in late,
                stale_count=not changed,
            )
        )
    return rows


def _datetime(stamp: Any) -> dt.datetime:
    return stamp.ToDatetime(tzinfo=dt.UTC)
