"""RecordMovements: facts from warehouses, idempotent on (source, message_id)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from eventsourcing.application import Recording

from ledger.domain import availability
from ledger.domain.errors import RequestIdReused
from ledger.domain.idempotency import IdempotencyKey, fingerprint, movement_key_id
from ledger.domain.movements import Movement, MovementType
from ledger.domain.position import EventMeta, Position, position_id
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
        for movement in movements:
            key_id = movement_key_id(movement.source, movement.message_id)
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
                )
                for movement, outcome, known, events in outcomes
            ]

        return finish

    keys = tuple(movement_key_id(m.source, m.message_id) for m in movements)
    positions = tuple(position_id(m.sku, m.location_id) for m in movements)
    return declare_reads(command, Reads(keys=keys, aggregates=positions))


def apply_movement(uow: UnitOfWork, ctx: CallContext, movement: Movement) -> None:
    meta = ctx.meta(
        uow.now,
        source=movement.source,
        message_id=movement.message_id,
        occurred_at=movement.occurred_at,
    )
    position = uow.position(movement.sku, movement.location_id, meta)
    if movement.type is MovementType.SHIPMENT and movement.reservation_id:
        _ship_against_reservation(uow, position, movement, meta)
    position.record(movement, meta)
    if movement.type is MovementType.TRANSFER_DISPATCH:
        # Both legs in the same unit of work, hence the same transaction.
        destination = uow.position(movement.sku, movement.to_location_id or "", meta)
        destination.record_inbound_transfer(movement, meta)


def _ship_against_reservation(
    uow: UnitOfWork, position: Position, movement: Movement, meta: EventMeta
) -> None:
    """Mirror the shipment's effect on the hold onto the reservation's lines."""
    hold = position.holds.get(movement.reservation_id or "")
    if hold is None or not availability.hold_blocks(hold, meta.recorded_at):
        return
    try:
        reservation = uow.reservation(uuid.UUID(movement.reservation_id))
    except ValueError:
        return
    if reservation is None:
        return
    take = min(movement.qty or 0, hold["qty"] - hold["shipped"])
    if take <= 0:
        return
    before = reservation.status
    reservation.record_shipment(movement.sku, movement.location_id, take, meta)
    if reservation.status != before:
        uow.index_ops.append(index_op(reservation))
