"""An independent reference model of contract §2 "Serials (SERIAL SKUs)".

Like ``tests.model.lots`` (which it extends) it imports nothing from ``ledger``: it is the
auditor ``tests/unit/test_lot_model.py`` compares the real ledger's serial index against.
A SKU marked with :meth:`SerialReferenceLedger.set_serial_tracked` keeps the untracked
rules for its quantities (serial SKUs have no lots; reservations hold quantities only) and,
per SKU, a map serial number -> :class:`Unit` (status, location, bucket, order_ref).

Modelling decisions (the contract's text plus the readings in docs/decisions.md,
"Lots, serials and expiry (issue 19)"):

* A unit is *in stock* when ``IN_STOCK`` (some bucket of some location) or ``IN_TRANSIT``
  (counted in its destination's ``in_transit_inbound``); ``SHIPPED`` and ``WRITTEN_OFF``
  units are out of stock, and so is a serial never seen.
* What each movement needs of a listed unit, and where it puts it, is the table
  :data:`ARRIVE`, :data:`MOVE`, :data:`LEAVE` below; ``transfer_dispatch`` takes it from
  ``on_hand`` into transit towards ``to_location_id`` (location = the destination),
  ``transfer_receipt`` needs it in transit towards the receiving location and puts it in
  ``on_hand``, whatever ``transfer_id`` carried it.
* A ``cycle_count`` lists the units counted there: one in stock at that location (any
  bucket) stays as it is, with no history step; one out of stock is found there
  (``on_hand``); one in stock elsewhere, in transit included (also towards here), conflicts.
* A listed unit whose need is not met is a conflict: its entry (and history) stays as it
  was, the fact's quantities move all the same, and the fact's entry names the conflicting
  serials in listing order. A serial known only from conflicting facts has no entry.
* A shipment's ``order_ref`` is the order of the reservation it names (known to the
  caller), empty without one or for an unknown reservation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.model.lots import LotReferenceLedger

SERIAL_CONFLICT = "SERIAL_CONFLICT"

IN_STOCK = "IN_STOCK"
IN_TRANSIT = "IN_TRANSIT"
SHIPPED = "SHIPPED"
WRITTEN_OFF = "WRITTEN_OFF"
IN_TRANSIT_BUCKET = "in_transit_inbound"

# Arrivals: the unit must be out of stock; it lands in this bucket at the location.
RETURN_BUCKET = {"restock": "on_hand", "quarantine": "quarantine", "damaged": "damaged"}
# Moves within a location: (bucket it must be in there, bucket it goes to).
MOVE = {
    "putaway": ("receiving", "on_hand"),
    "quarantine": ("on_hand", "quarantine"),
    "quarantine_release": ("quarantine", "on_hand"),
}
# Exits: (bucket it must be in there, status after; location = where it left from).
LEAVE = {
    "shipment": ("on_hand", SHIPPED),
    "write_off": ("damaged", WRITTEN_OFF),
    "adjustment-": ("on_hand", WRITTEN_OFF),
}
ARRIVE = ("receipt", "return_receipt", "adjustment+")


@dataclass(frozen=True)
class Unit:
    """One unit's entry in the serial index."""

    status: str
    location_id: str
    bucket: str
    order_ref: str = ""

    @property
    def in_stock(self) -> bool:
        return self.status in (IN_STOCK, IN_TRANSIT)


@dataclass(frozen=True)
class Step:
    """One history step: the movement and the unit's state after it."""

    type: str
    message_id: str
    unit: Unit


@dataclass
class SerialIndex:
    """Per SKU: serial number -> unit, and each unit's history (oldest first)."""

    units: dict[str, dict[str, Unit]] = field(default_factory=dict)
    history: dict[tuple[str, str], list[Step]] = field(default_factory=dict)

    def get(self, sku: str, serial: str) -> Unit | None:
        return self.units.get(sku, {}).get(serial)

    def after(
        self,
        kind: str,
        current: Unit | None,
        here: str,
        *,
        putaway_pending: bool,
        disposition: str,
        from_bucket: str,
        to_location_id: str,
        order_ref: str,
    ) -> Unit | None:
        """The unit's entry after the movement, or None for a conflict. ``kind``: the
        movement type, with ``adjustment+`` / ``adjustment-`` told apart by the sign."""

        def at(bucket: str) -> bool:
            return (
                current is not None
                and current.status == IN_STOCK
                and current.location_id == here
                and current.bucket == bucket
            )

        out_of_stock = current is None or not current.in_stock
        if kind in ARRIVE:
            if not out_of_stock:
                return None
            if kind == "receipt":
                return Unit(IN_STOCK, here, "receiving" if putaway_pending else "on_hand")
            if kind == "return_receipt":
                return Unit(IN_STOCK, here, RETURN_BUCKET[disposition])
            return Unit(IN_STOCK, here, "on_hand")
        if kind in MOVE:
            source, target = MOVE[kind]
            return Unit(IN_STOCK, here, target) if at(source) else None
        if kind == "damage":
            return Unit(IN_STOCK, here, "damaged") if at(from_bucket) else None
        if kind in LEAVE:
            source, status = LEAVE[kind]
            if not at(source):
                return None
            return Unit(status, here, "", order_ref if kind == "shipment" else "")
        if kind == "transfer_dispatch":
            return Unit(IN_TRANSIT, to_location_id, IN_TRANSIT_BUCKET) if at("on_hand") else None
        if kind == "transfer_receipt":
            if current is None or current.status != IN_TRANSIT or current.location_id != here:
                return None
            return Unit(IN_STOCK, here, "on_hand")
        if kind == "cycle_count":
            if current is not None and current.status == IN_STOCK and current.location_id == here:
                return current  # counted where it is: unchanged
            return Unit(IN_STOCK, here, "on_hand") if out_of_stock else None
        raise ValueError(f"unknown movement type {kind!r}")


class SerialReferenceLedger(LotReferenceLedger):
    """The lot model plus SERIAL SKUs: untracked quantities, and the serial index."""

    def __init__(self) -> None:
        super().__init__()
        self.serial_tracked: set[str] = set()
        self.index = SerialIndex()

    def set_serial_tracked(self, sku: str) -> None:
        self.serial_tracked.add(sku)

    def is_serial(self, sku: str) -> bool:
        return sku in self.serial_tracked

    def unit(self, sku: str, serial: str) -> Unit | None:
        return self.index.get(sku, serial)

    def units_of(self, sku: str) -> dict[str, Unit]:
        return dict(self.index.units.get(sku, {}))

    def apply_serial_movement(
        self,
        kind: str,
        sku: str,
        location_id: str,
        serials: tuple[str, ...],
        *,
        message_id: str,
        order_ref: str = "",
        delta: int = 0,
        putaway_pending: bool = False,
        disposition: str = "restock",
        from_bucket: str = "on_hand",
        to_location_id: str | None = None,
        **fields: Any,
    ) -> tuple[list[str], list[str]]:
        """Apply one fact of a SERIAL SKU listing ``serials``; returns (the exception types
        it raises, the conflicting serials in listing order). The quantities move by the
        untracked rules (:meth:`ReferenceLedger.apply_movement`, which also takes
        ``fields``) whatever the units do."""
        assert self.is_serial(sku), sku
        assert len(set(serials)) == len(serials), serials
        exceptions = self.apply_movement(
            kind,
            sku,
            location_id,
            delta=delta,
            putaway_pending=putaway_pending,
            disposition=disposition,
            from_bucket=from_bucket,
            to_location_id=to_location_id,
            **fields,
        )
        rule = kind
        if kind == "adjustment":
            rule = "adjustment+" if delta > 0 else "adjustment-"
        units = self.index.units.setdefault(sku, {})
        conflicts: list[str] = []
        for serial in serials:
            current = units.get(serial)
            after = self.index.after(
                rule,
                current,
                location_id,
                putaway_pending=putaway_pending,
                disposition=disposition,
                from_bucket=from_bucket,
                to_location_id=to_location_id or "",
                order_ref=order_ref,
            )
            if after is None:
                conflicts.append(serial)
            elif after != current:  # a count of a unit where it is leaves no step
                units[serial] = after
                self.index.history.setdefault((sku, serial), []).append(
                    Step(kind, message_id, after)
                )
        if conflicts:
            exceptions.append(SERIAL_CONFLICT)
        return exceptions, conflicts
