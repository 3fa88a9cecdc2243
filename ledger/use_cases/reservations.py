"""Reserve, Commit, Release and expiry: all-or-nothing holds across positions."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import Recording

from ledger.domain import lots
from ledger.domain.channel_policy import ChannelPolicy, channel_policy_id
from ledger.domain.errors import (
    InsufficientAvailability,
    ReservationNotFound,
    ShortLine,
    TrackingMismatch,
)
from ledger.domain.item_policy import Tracking, item_policy_id
from ledger.domain.position import EventMeta, Position, position_id
from ledger.domain.reservation import Reservation, parse_reservation_id
from ledger.ids import new_uuid4
from ledger.metrics.definitions import count_reservation
from ledger.store.index_ops import ReservationIndexed, to_micros
from ledger.unit_of_work import (
    Command,
    Finisher,
    Reads,
    UnitOfWork,
    declare_reads,
)
from ledger.use_cases.context import CallContext
from ledger.use_cases.idempotent import previous_result, replayed, request_key, written
from ledger.views import ReservationView


@dataclass(frozen=True)
class ReserveLine:
    sku: str
    location_id: str  # "" lets the service choose
    qty: int
    # LOT SKUs only (contract §4.2): bind only lots expiring strictly after this instant,
    # or exactly this one lot.
    min_expires_at: datetime | None = None
    lot_id: str | None = None


@dataclass(frozen=True)
class ReserveInput:
    request_id: str
    channel: str
    order_ref: str
    lines: tuple[ReserveLine, ...]
    ttl: timedelta
    allow_split: bool = False

    def payload(self) -> dict[str, Any]:
        data = asdict(self)
        data["ttl"] = self.ttl.total_seconds()
        # Lot terms appear only when given: an untracked request keeps the fingerprint it had
        # before they existed, so its replay after an upgrade is still a replay.
        for line in data["lines"]:
            for name in ("min_expires_at", "lot_id"):
                if line[name] is None:
                    del line[name]
            if "min_expires_at" in line:
                line["min_expires_at"] = line["min_expires_at"].isoformat()
        return data


def _counted(outcome: str, channel: str, finish: Finisher) -> Finisher:
    """Count ``outcome`` of ``channel`` in ``ledger_reservations_total`` once committed
    (``finish`` runs only after the commit; idempotent replays finish with ``replayed`` and
    are not counted)."""

    def counted(recordings: list[Recording]) -> Any:
        result = finish(recordings)
        count_reservation(outcome, channel)
        return result

    return counted


def index_op(reservation: Reservation) -> ReservationIndexed:
    """The reservation's row in the lookup index (written with its events)."""
    return ReservationIndexed(
        str(reservation.id),
        reservation.channel,
        reservation.order_ref,
        reservation.status,
        to_micros(reservation.expires_at),
        to_micros(reservation.created_at),
    )


# ---- Reserve ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """A planned share of a line: a location and, for a LOT SKU, the lots bound to it."""

    sku: str
    location_id: str
    qty: int
    lots: tuple[tuple[str, int], ...] | None = None


class _Planner:
    """Chooses locations (and, for LOT SKUs, lots) line by line, counting what earlier lines
    of the same request took."""

    def __init__(self, uow: UnitOfWork, channel: str, policy: ChannelPolicy | None) -> None:
        self.uow = uow
        self.channel = channel
        self.policy = policy
        self.taken: dict[tuple[str, str], int] = defaultdict(int)
        self.taken_lots: dict[tuple[str, str, str], int] = defaultdict(int)

    def headroom(self, sku: str, location_id: str) -> int:
        if self.policy is not None and not self.policy.is_eligible(location_id):
            return 0
        position = self.uow.find_position(sku, location_id)
        if position is None:
            return 0
        free = position.available_to(self.channel, self.uow.now)
        return max(0, free - self.taken[(sku, location_id)])

    def lot_room(self, line: ReserveLine, location_id: str) -> list[tuple[str, int]]:
        """(lot, what this request may still bind of it) of the line's eligible lots at the
        location, in FEFO order; only the named lot when the line names one."""
        position = self.uow.find_position(line.sku, location_id)
        if position is None:
            return []
        room = []
        for lot_id, free in lots.eligible_lots(position, self.uow.now, line.min_expires_at):
            if line.lot_id is not None and lot_id != line.lot_id:
                continue
            left = free - self.taken_lots[(line.sku, location_id, lot_id)]
            if left > 0:
                room.append((lot_id, left))
        return room

    def capacity(self, line: ReserveLine, location_id: str, lot_tracked: bool) -> int:
        free = self.headroom(line.sku, location_id)
        if not lot_tracked or free == 0:
            return free
        room = self.lot_room(line, location_id)
        if line.lot_id is not None:
            # A named lot must cover the whole line by itself.
            return min(free, room[0][1]) if room else 0
        return min(free, sum(left for _, left in room))

    def plan(
        self, index: int, line: ReserveLine, allow_split: bool, lot_tracked: bool
    ) -> list[_Part] | ShortLine:
        if line.location_id:
            free = self.capacity(line, line.location_id, lot_tracked)
            if line.qty > free:
                return ShortLine(index, line.sku, line.location_id, line.qty, free)
            return self._take(line, [(line.location_id, line.qty)], lot_tracked)
        # Greatest headroom first; ties go to the smallest location_id.
        ranked = sorted(
            (
                (self.capacity(line, loc, lot_tracked), loc)
                for loc in self.uow.locations_of(line.sku)
            ),
            key=lambda pair: (-pair[0], pair[1]),
        )
        ranked = [(free, loc) for free, loc in ranked if free > 0]
        if ranked and ranked[0][0] >= line.qty:
            return self._take(line, [(ranked[0][1], line.qty)], lot_tracked)
        total = sum(free for free, _ in ranked)
        if not allow_split or total < line.qty:
            best = total if allow_split else (ranked[0][0] if ranked else 0)
            return ShortLine(index, line.sku, "", line.qty, best)
        shares = _greedy([(loc, free) for free, loc in ranked], line.qty)
        return self._take(line, shares, lot_tracked)

    def _take(
        self, line: ReserveLine, shares: list[tuple[str, int]], lot_tracked: bool
    ) -> list[_Part]:
        parts = []
        for location_id, qty in shares:
            self.taken[(line.sku, location_id)] += qty
            bound = self._bind(line, location_id, qty) if lot_tracked else None
            parts.append(_Part(line.sku, location_id, qty, bound))
        return parts

    def _bind(self, line: ReserveLine, location_id: str, qty: int) -> tuple[tuple[str, int], ...]:
        """First expiry first out: each eligible lot up to what it has left."""
        bound = _greedy(self.lot_room(line, location_id), qty)
        for lot_id, take in bound:
            self.taken_lots[(line.sku, location_id, lot_id)] += take
        return tuple(bound)


def _greedy(room: list[tuple[str, int]], qty: int) -> list[tuple[str, int]]:
    """Take ``qty`` from ``room`` in its order, each (key, capacity) up to its capacity."""
    taken, remaining = [], qty
    for key, capacity in room:
        if remaining == 0:
            break
        take = min(capacity, remaining)
        taken.append((key, take))
        remaining -= take
    return taken


def _check_lot_terms(index: int, line: ReserveLine, lot_tracked: bool) -> None:
    if lot_tracked:
        return
    for name in ("lot_id", "min_expires_at"):
        if getattr(line, name) is not None:
            raise TrackingMismatch(
                f"lines[{index}].{name}", f"SKU {line.sku!r} is not tracked by lot"
            )


def reserve(ctx: CallContext, request: ReserveInput) -> Command[ReservationView]:
    key = request_key(ctx, request.request_id, "Reserve", request.payload())

    def command(uow: UnitOfWork) -> Finisher:
        stored = previous_result(uow, key)
        if stored is not None:
            return replayed(stored, ReservationView.from_dict)
        mark = uow.mark()
        planner = _Planner(uow, request.channel, uow.channel_policy(request.channel))
        planned: list[_Part] = []
        short: list[ShortLine] = []
        for index, line in enumerate(request.lines):
            policy = uow.item_policy(line.sku)
            lot_tracked = policy is not None and policy.tracking is Tracking.LOT
            _check_lot_terms(index, line, lot_tracked)
            outcome = planner.plan(index, line, request.allow_split, lot_tracked)
            if isinstance(outcome, ShortLine):
                short.append(outcome)
            else:
                planned.extend(outcome)
        if short:
            count_reservation("insufficient", request.channel)
            raise InsufficientAvailability(request.channel, short)

        meta = ctx.meta(uow.now, request_id=request.request_id)
        expires_at = uow.now + request.ttl
        reservation = Reservation.create(
            new_uuid4(),
            request.channel,
            request.order_ref,
            [_line_of(uow, part) for part in planned],
            expires_at,
            meta,
        )
        uow.add(reservation)
        per_position: dict[tuple[str, str], int] = defaultdict(int)
        per_lot: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for part in planned:
            per_position[(part.sku, part.location_id)] += part.qty
            for lot_id, qty in part.lots or ():
                bound = per_lot[(part.sku, part.location_id)]
                bound[lot_id] = bound.get(lot_id, 0) + qty
        for (sku, location_id), qty in sorted(per_position.items()):
            position = uow.position(sku, location_id, meta)
            claims = per_lot.get((sku, location_id))
            position.place_hold(
                str(reservation.id),
                request.channel,
                request.order_ref,
                qty,
                expires_at,
                meta,
                _in_fefo_order(position, claims) if claims is not None else None,
            )
        uow.index_ops.append(index_op(reservation))
        return _counted(
            "reserved",
            request.channel,
            written(uow, key, _view(uow, reservation), mark),
        )

    named = tuple(position_id(ln.sku, ln.location_id) for ln in request.lines if ln.location_id)
    items = tuple(item_policy_id(ln.sku) for ln in request.lines)
    return declare_reads(
        command,
        Reads(
            keys=(key.key_id,),
            positions=named,
            aggregates=(channel_policy_id(request.channel), *items),
        ),
    )


def _view(uow: UnitOfWork, reservation: Reservation) -> ReservationView:
    """The answer, with the current expiry of lots bound before they had one."""

    def expiry_of(sku: str, lot_id: str) -> datetime | None:
        record = uow.lot_record(sku, lot_id)
        return record.expires_at if record is not None else None

    return ReservationView.of(reservation, uow.now, expiry_of=expiry_of)


def _line_of(uow: UnitOfWork, part: _Part) -> dict[str, Any]:
    line: dict[str, Any] = {"sku": part.sku, "location_id": part.location_id, "qty": part.qty}
    if part.lots is not None:
        position = uow.find_position(part.sku, part.location_id)
        expiries = lots.lots_of(position) if position is not None else {}
        line["lots"] = [
            {"lot_id": lot_id, "qty": qty, "expires_at": expiries[lot_id]["expires_at"]}
            for lot_id, qty in part.lots
        ]
    return line


def _in_fefo_order(position: Position, claims: dict[str, int]) -> list[tuple[str, int]]:
    """A hold's lot claims in binding order (lines of one request may interleave lots)."""
    expiries = lots.lots_of(position)
    return sorted(
        claims.items(), key=lambda pair: lots.fefo_key(pair[0], expiries[pair[0]]["expires_at"])
    )


# ---- Commit / Release ----------------------------------------------------------------------------


def _load_for(uow: UnitOfWork, reservation_id: str, channel: str, ctx: CallContext) -> Reservation:
    """A reservation of another channel (the request's or, without one, any the caller may
    not act for) answers 'not found': existence is not leaked."""
    reservation = uow.reservation(parse_reservation_id(reservation_id))
    if (
        reservation is None
        or (channel and reservation.channel != channel)
        or not ctx.may_act_for(reservation.channel)
    ):
        raise ReservationNotFound(reservation_id)
    return reservation


_OUTCOME_OF = {"Commit": "committed", "Release": "released"}


def _transition(
    ctx: CallContext,
    request_id: str,
    reservation_id: str,
    channel: str,
    kind: str,
    apply: Callable[[Reservation, UnitOfWork, EventMeta], None],
) -> Command[ReservationView]:
    """Commit or release: move the reservation and mirror it on each of its positions."""
    key = request_key(ctx, request_id, kind, {"reservation_id": reservation_id, "channel": channel})

    def command(uow: UnitOfWork) -> Finisher:
        stored = previous_result(uow, key)
        if stored is not None:
            return replayed(stored, ReservationView.from_dict)
        mark = uow.mark()
        reservation = _load_for(uow, reservation_id, channel, ctx)
        apply(reservation, uow, ctx.meta(uow.now, request_id=request_id))
        uow.index_ops.append(index_op(reservation))
        return _counted(
            _OUTCOME_OF[kind],
            reservation.channel,
            written(uow, key, _view(uow, reservation), mark),
        )

    try:
        aggregates: tuple[UUID, ...] = (parse_reservation_id(reservation_id),)
    except ReservationNotFound:
        aggregates = ()  # the command reports it
    return declare_reads(command, Reads(keys=(key.key_id,), aggregates=aggregates))


def commit(
    ctx: CallContext, request_id: str, reservation_id: str, channel: str
) -> Command[ReservationView]:
    """ACTIVE → COMMITTED: each hold moves from reserved to allocated."""

    def apply(reservation: Reservation, uow: UnitOfWork, meta: EventMeta) -> None:
        reservation.commit(uow.now, meta)
        for sku, location_id in reservation.positions():
            uow.position(sku, location_id, meta).commit_hold(str(reservation.id), meta)

    return _transition(ctx, request_id, reservation_id, channel, "Commit", apply)


def release(
    ctx: CallContext, request_id: str, reservation_id: str, channel: str
) -> Command[ReservationView]:
    """ACTIVE|COMMITTED → RELEASED: the holds disappear."""

    def apply(reservation: Reservation, uow: UnitOfWork, meta: EventMeta) -> None:
        reservation.release(uow.now, meta)
        for sku, location_id in reservation.positions():
            position = uow.position(sku, location_id, meta)
            position.release_hold(str(reservation.id), "released", meta)

    return _transition(ctx, request_id, reservation_id, channel, "Release", apply)


def expire_due(ctx: CallContext, reservation_ids: list[str]) -> Command[list[str]]:
    """Record EXPIRED for reservations whose time has passed (the sweeper's command).

    Holds already stopped counting at ``expires_at``; this only writes the fact down. A
    reservation committed or released meanwhile is skipped, so re-running is harmless.
    """

    def command(uow: UnitOfWork) -> Finisher:
        expired: list[str] = []
        channels: list[str] = []  # of the expired ones, for ledger_reservations_total
        for reservation_id in reservation_ids:
            reservation = uow.reservation(UUID(reservation_id))
            if reservation is None or not (
                reservation.status == "ACTIVE" and uow.now >= reservation.expires_at
            ):
                continue
            meta = ctx.meta(uow.now, source="expiry-sweeper")
            reservation.expire(uow.now, meta)
            for sku, location_id in reservation.positions():
                uow.position(sku, location_id, meta).release_hold(
                    str(reservation.id), "expired", meta
                )
            uow.index_ops.append(index_op(reservation))
            expired.append(reservation_id)
            channels.append(reservation.channel)

        def finish(_: list[Recording]) -> list[str]:
            for channel in channels:
                count_reservation("expired", channel)
            return expired

        return finish

    return command
