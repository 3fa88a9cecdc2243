"""RecordMovements: facts from warehouses, idempotent on (source, message_id)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from eventsourcing.application import Recording

from ledger.domain import availability
from ledger.domain.errors import RequestIdReused, TrackingMismatch
from ledger.domain.idempotency import IdempotencyKey, fingerprint, movement_key_id
from ledger.domain.item_policy import Tracking, item_policy_id
from ledger.domain.lot_record import LotRecord, expiry_stated_by, lot_record_id
from ledger.domain.lots import lots_of
from ledger.domain.movements import Movement, MovementType
from ledger.domain.position import EventMeta, Position, position_id
from ledger.domain.position_state import is_stale_count
from ledger.domain.reservation import Reservation
from ledger.domain.serial_unit import SerialUnit, serial_after, serial_unit_id
from ledger.unit_of_work import (
    Command,
    EventRef,
    Finisher,
    Reads,
    UnitOfWork,
    declare_reads,
    position_of,
    recorded_position,
)
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import index_op
from ledger.views import MovementResultView

RECORDED = "RECORDED"
DUPLICATE = "DUPLICATE"
# Only with reject_reused=False (ingest): this message id came with another payload before.
REUSED = "REUSED"
# Only with reject_reused=False (ingest): the movement does not fit its SKU's tracking.
INVALID = "INVALID"


def record_movements(
    ctx: CallContext, movements: Sequence[Movement], *, reject_reused: bool = True
) -> Command[list[MovementResultView]]:
    """All movements in one transaction. A reused id with another payload fails the whole
    request (nothing applied), or — ``reject_reused=False``, for ingest batches whose other
    messages must still apply — is reported as REUSED and skipped."""

    def command(uow: UnitOfWork) -> Finisher:
        # Per movement: its outcome, and either its ledger position (an earlier request's
        # duplicate) or the events this commit writes for it.
        outcomes: list[tuple[Movement, str, int, list[EventRef]]] = []
        invalid = _tracking_mismatches(uow, movements, keys)
        if reject_reused and invalid:
            # Refuse before applying anything: a command that raises after changing
            # aggregates makes the pipeline re-run its whole batch one command at a time.
            index, error = next(iter(invalid.items()))
            raise TrackingMismatch(f"movements[{index}].{error.field_path}", error.description)
        for index, movement in enumerate(movements):
            key_id = keys[index]
            digest = fingerprint("movement", movement.fingerprint_fields())
            stored = uow.idempotency_key(key_id)
            if stored is not None:
                if stored.fingerprint != digest:
                    if reject_reused:
                        raise RequestIdReused(f"{movement.source}/{movement.message_id}")
                    outcomes.append((movement, REUSED, 0, []))
                    continue
                events = [(hex_id, version) for hex_id, version in stored.result["events"]]
                known = 0 if uow.is_pending_key(key_id) else recorded_position(uow.app, events)
                outcomes.append((movement, DUPLICATE, known, events))
                continue
            if index in invalid:
                outcomes.append((movement, INVALID, 0, []))
                continue
            mark = uow.mark()
            apply_movement(uow, ctx, movement)
            events = uow.written_since(mark)
            uow.remember(
                IdempotencyKey.remember(
                    key_id,
                    f"{movement.source}/{movement.message_id}",
                    digest,
                    {"view": {"outcome": RECORDED}, "events": [list(e) for e in events]},
                    uow.now,
                )
            )
            outcomes.append((movement, RECORDED, 0, events))

        def finish(recordings: list[Recording]) -> list[MovementResultView]:
            return [
                MovementResultView(
                    movement.source,
                    movement.message_id,
                    outcome,
                    known or (position_of(recordings, events) if events else 0),
                    *((invalid[i].field_path, invalid[i].description) if i in invalid else ()),
                )
                for i, (movement, outcome, known, events) in enumerate(outcomes)
            ]

        return finish

    keys = tuple(movement_key_id(m.source, m.message_id) for m in movements)
    positions = tuple(position_id(m.sku, m.location_id) for m in movements)
    # The item master of every SKU (absent for most: remembered as absent, no read each time)
    # and the ledger-wide record of every lot named.
    others = [item_policy_id(m.sku) for m in movements]
    others.extend(lot_record_id(m.sku, m.lot_id) for m in movements if m.lot_id)
    # The serial index entry of every unit listed.
    others.extend(serial_unit_id(m.sku, s) for m in movements for s in m.serial_numbers)
    reads = Reads(keys=keys, positions=positions, aggregates=tuple(others))
    return declare_reads(command, reads)


def _tracking_mismatches(
    uow: UnitOfWork, movements: Sequence[Movement], keys: Sequence[uuid.UUID]
) -> dict[int, TrackingMismatch]:
    """By index, the new movements that do not fit their SKU's tracking, in order (a
    replayed one answers DUPLICATE whatever the tracking is now). ``keys``: each
    movement's idempotency key id."""
    found: dict[int, TrackingMismatch] = {}
    for index, movement in enumerate(movements):
        if uow.idempotency_key(keys[index]):
            continue
        try:
            check_tracking(uow, movement)
        except TrackingMismatch as error:
            found[index] = error
    return found


def check_tracking(uow: UnitOfWork, movement: Movement) -> None:
    """A movement must carry exactly what its SKU's tracking needs (contract §2)."""
    policy = uow.item_policy(movement.sku)
    tracking = policy.tracking if policy is not None else Tracking.NONE
    if tracking is Tracking.LOT:
        if movement.lot_id is None:
            raise TrackingMismatch("lot_id", f"SKU {movement.sku!r} is lot-tracked: name the lot")
        if movement.serial_numbers:
            raise TrackingMismatch(
                "serial_numbers", f"SKU {movement.sku!r} is lot-tracked, not serial-tracked"
            )
    elif tracking is Tracking.SERIAL:
        if movement.lot_id is not None or movement.expires_at is not None:
            raise TrackingMismatch(
                "lot_id", f"SKU {movement.sku!r} is serial-tracked: it has no lots"
            )
        if not movement.serial_numbers and not _counts_nothing(movement):
            raise TrackingMismatch(
                "serial_numbers", f"SKU {movement.sku!r} is serial-tracked: list the units"
            )
    else:
        for name in ("lot_id", "expires_at", "serial_numbers"):
            if getattr(movement, name):
                raise TrackingMismatch(
                    name, f"SKU {movement.sku!r} is not tracked by lot or serial"
                )


def _counts_nothing(movement: Movement) -> bool:
    """A count of zero lists no units."""
    return movement.type is MovementType.CYCLE_COUNT and movement.counted == 0


def apply_movement(uow: UnitOfWork, ctx: CallContext, movement: Movement) -> None:
    meta = ctx.meta(
        uow.now,
        source=movement.source,
        message_id=movement.message_id,
        occurred_at=movement.occurred_at,
    )
    position = uow.position(movement.sku, movement.location_id, meta)
    lot_expires_at = _lot_expiry(uow, movement, meta) if movement.lot_id is not None else None
    # Before the shipment consumes the hold that names the order.
    conflicts = (
        _move_serials(uow, position, movement, meta)
        if movement.serial_numbers and not _is_stale(position, movement, meta)
        else []
    )
    if movement.type is MovementType.SHIPMENT and movement.reservation_id:
        _ship_against_reservation(uow, position, movement, meta)
    position.record(movement, meta, lot_expires_at, serial_conflicts=conflicts)
    if movement.type is MovementType.TRANSFER_DISPATCH:
        # Both legs in the same unit of work, hence the same transaction.
        destination = uow.position(movement.sku, movement.to_location_id or "", meta)
        destination.record_inbound_transfer(movement, meta, lot_expires_at)


def _is_stale(position: Position, movement: Movement, meta: EventMeta) -> bool:
    """A stale count changes nothing: not the buckets, and not the serial index either."""
    return movement.type is MovementType.CYCLE_COUNT and is_stale_count(
        position, meta.occurred_at, movement.lot_id
    )


def _move_serials(
    uow: UnitOfWork, position: Position, movement: Movement, meta: EventMeta
) -> list[str]:
    """Step each listed unit's index entry in this unit of work (contract §2 "Serials");
    returns the units the index cannot accept, whose entries are left as they were."""
    order_ref = _order_ref(uow, position, movement)
    conflicts: list[str] = []
    for serial_number in movement.serial_numbers:
        unit = uow.serial_unit(movement.sku, serial_number)
        current = unit.state if unit is not None else None
        after = serial_after(movement, current, order_ref)
        if after is None:
            conflicts.append(serial_number)
            continue
        if after == current:
            continue  # counted where it already is
        if unit is None:
            unit = SerialUnit.first_seen(movement.sku, serial_number)
            uow.add(unit)
        unit.step(
            movement.type.value,
            after,
            source=meta.source,
            message_id=meta.message_id,
            occurred_at=meta.occurred_at,
            recorded_at=meta.recorded_at,
        )
    return conflicts


def _order_ref(uow: UnitOfWork, position: Position, movement: Movement) -> str:
    """A shipment's order: from its reservation's hold here, else the reservation itself."""
    if movement.type is not MovementType.SHIPMENT or not movement.reservation_id:
        return ""
    hold = position.holds.get(movement.reservation_id)
    if hold is not None:
        return str(hold["order_ref"])
    reservation = _reservation_named(uow, movement)
    return reservation.order_ref if reservation is not None else ""


def _reservation_named(uow: UnitOfWork, movement: Movement) -> Reservation | None:
    """The reservation a shipment names; an id that is not a UUID names none."""
    try:
        return uow.reservation(uuid.UUID(movement.reservation_id))
    except ValueError:
        return None


def _lot_expiry(uow: UnitOfWork, movement: Movement, meta: EventMeta) -> datetime | None:
    """The lot's ledger-wide expiry after this movement: the first receipt or return that
    states one fixes it. Units of the lot already at other positions are told in the same
    transaction (``Position.LotExpiryFixed``), so every position's fold knows its expiry."""
    sku, lot_id = movement.sku, movement.lot_id or ""
    stated = movement.expires_at if expiry_stated_by(movement.type.value) else None
    record = uow.lot_record(sku, lot_id)
    if record is None:
        uow.add(LotRecord.first_seen(sku, lot_id, stated, movement.location_id, uow.now))
        return stated
    if record.expires_at is not None or stated is None:
        return record.expires_at
    record.fix_expiry(stated, movement.location_id, uow.now)
    for location_id in uow.locations_of(sku):
        other = uow.find_position(sku, location_id) if location_id != movement.location_id else None
        if other is not None and lot_id in lots_of(other):
            other.fix_lot_expiry(lot_id, stated, meta)
    return stated


def _ship_against_reservation(
    uow: UnitOfWork, position: Position, movement: Movement, meta: EventMeta
) -> None:
    """Mirror the shipment's effect on the hold onto the reservation's lines."""
    hold = position.holds.get(movement.reservation_id or "")
    if hold is None or not availability.hold_blocks(hold, meta.recorded_at):
        return
    reservation = _reservation_named(uow, movement)
    if reservation is None:
        return
    take = min(movement.qty or 0, hold["qty"] - hold["shipped"])
    if take <= 0:
        return
    before = reservation.status
    reservation.record_shipment(movement.sku, movement.location_id, take, meta)
    if reservation.status != before:
        uow.index_ops.append(index_op(reservation))
