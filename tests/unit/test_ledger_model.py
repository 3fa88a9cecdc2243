"""Stateful property test: the ledger against the reference model of contract §2.

Hypothesis drives random movements, policies and reservations (with expiry through an
injected clock) into a real ``LedgerService`` on a fresh SQLite file and into
``tests.model.reference.ReferenceLedger`` in lockstep. After every step it compares, for
every (sku, location) of a deliberately tiny universe, every bucket, ``available``, the
fences and ``available_to`` of each channel (also dated: at the horizons of every known ETA,
just before it, and now), and the status and shipped quantities of every reservation. A
rule also compares ``GetAvailability``'s STRONG ``projected_available`` at a drawn horizon.

Runs 50 examples locally; with ``CI`` set, 100 derandomized examples of 50 steps.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

from ledger.domain.errors import FenceExceedsAvailable, IllegalTransition, InsufficientAvailability
from ledger.domain.movements import Disposition, FromBucket, Movement, MovementType
from ledger.domain.position import position_id
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput, ReserveLine
from projections.queries import ReadModelQueries
from projections.store import ReadModelStore
from tests.model.reference import ReferenceLedger

SKUS = ("A", "B")
LOCATIONS = ("L1", "L2", "L3")
CHANNELS = ("web", "market")
SOURCES = ("wms-east", "erp")
UNIVERSE = tuple(itertools.product(SKUS, LOCATIONS))
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MICRO = timedelta(microseconds=1)

skus = st.sampled_from(SKUS)
locations = st.sampled_from(LOCATIONS)
channels = st.sampled_from(CHANNELS)
sources = st.sampled_from(SOURCES)
quantities = st.integers(1, 20)
ttls = st.sampled_from(
    [
        timedelta(seconds=1),
        timedelta(seconds=30),
        timedelta(minutes=5),
        timedelta(minutes=15),
        timedelta(hours=2),
    ]
)
# ETA of a dispatch, after the dispatch's own time (None: no expected_at).
etas = st.sampled_from([None, timedelta(0), timedelta(hours=1), timedelta(days=2)])
clock_steps = st.sampled_from(
    [
        MICRO,
        timedelta(seconds=1),
        timedelta(seconds=29),
        timedelta(minutes=1),
        timedelta(minutes=5),
        timedelta(minutes=16),
        timedelta(hours=1),
    ]
)


@st.composite
def reserve_lines(draw: st.DrawFn) -> list[tuple[str, str, int]]:
    """1 to 3 explicit-location lines; often two of them on the same position."""
    lines = draw(st.lists(st.tuples(skus, locations, quantities), min_size=1, max_size=3))
    if len(lines) >= 2 and draw(st.booleans()):
        sku, loc, _ = lines[0]
        lines[1] = (sku, loc, lines[1][2])
    return lines


def _settings() -> settings:
    ci = bool(os.environ.get("CI"))
    return settings(
        max_examples=100 if ci else 50,
        stateful_step_count=50,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


class LedgerModelMachine(RuleBasedStateMachine):
    reservations = Bundle("reservations")
    sent = Bundle("sent")

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.tmpdir = tempfile.mkdtemp(prefix="ledger-model-")
        url = "sqlite:///" + os.path.join(self.tmpdir, "ledger.db")
        self.service = LedgerService.open(url, clock=lambda: self.now)
        # CONSISTENCY_STRONG reads (the aggregates); the read-model tables stay empty.
        self.store = ReadModelStore(url)
        self.queries = ReadModelQueries(self.service, self.store)
        self.ctx = CallContext("tester", "corr")
        self.model = ReferenceLedger()
        self.counter = itertools.count(1)
        self.used_keys: set[tuple[str, str]] = set()
        # transfer_id -> (sku, from, to) of transfers whose dispatch or receipt was sent
        self.transfers: dict[str, tuple[str, str, str]] = {}
        self.reserve_requests: dict[str, ReserveInput] = {}
        self.positions: dict[tuple[str, str], int] = {}  # (source, message_id) -> ledger position

    def teardown(self) -> None:
        self.service.close()
        self.store.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    # ---- helpers -----------------------------------------------------------------------------

    def _message_id(self, source: str, reuse: bool) -> str:
        """A fresh (source, message_id); with ``reuse``, an id another source already used."""
        if reuse:
            for other, mid in sorted(self.used_keys):
                if other != source and (source, mid) not in self.used_keys:
                    self.used_keys.add((source, mid))
                    return mid
        mid = f"msg-{next(self.counter)}"
        self.used_keys.add((source, mid))
        return mid

    def _record(self, movement: Movement, **model_kwargs: object) -> Movement:
        results = self.service.record_movements(self.ctx, [movement]).result()
        assert [r.outcome for r in results] == ["RECORDED"], results
        assert results[0].ledger_position > 0
        self.positions[movement.source, movement.message_id] = results[0].ledger_position
        exceptions = self.model.apply_movement(
            movement.type.value,
            movement.sku,
            movement.location_id,
            now=self.now,
            occurred_at=movement.occurred_at,
            reservation_id=movement.reservation_id,
            transfer_id=movement.transfer_id,
            to_location_id=movement.to_location_id,
            expected_at=movement.expected_at,
            putaway_pending=movement.putaway_pending,
            final=movement.final,
            **model_kwargs,  # type: ignore[arg-type]
        )
        for name in sorted(set(exceptions)):
            event(f"{movement.type.value}: {name}")
        return movement

    def _movement(
        self, kind: MovementType, sku: str, loc: str, source: str, reuse: bool, **fields: object
    ) -> Movement:
        return Movement(
            source=source,
            message_id=self._message_id(source, reuse),
            type=kind,
            sku=sku,
            location_id=loc,
            **fields,  # type: ignore[arg-type]
        )

    # ---- facts -------------------------------------------------------------------------------

    @rule(
        target=sent,
        sku=skus,
        loc=locations,
        qty=quantities,
        pending=st.booleans(),
        source=sources,
        reuse=st.booleans(),
    )
    def receipt(
        self, sku: str, loc: str, qty: int, pending: bool, source: str, reuse: bool
    ) -> Movement:
        mv = self._movement(
            MovementType.RECEIPT, sku, loc, source, reuse, qty=qty, putaway_pending=pending
        )
        return self._record(mv, qty=qty)

    @rule(target=sent, sku=skus, loc=locations, qty=quantities, source=sources)
    def putaway(self, sku: str, loc: str, qty: int, source: str) -> Movement:
        mv = self._movement(MovementType.PUTAWAY, sku, loc, source, False, qty=qty)
        return self._record(mv, qty=qty)

    @rule(target=sent, sku=skus, loc=locations, qty=quantities, unknown_reservation=st.booleans())
    def shipment(self, sku: str, loc: str, qty: int, unknown_reservation: bool) -> Movement:
        rid = str(uuid.UUID(int=next(self.counter))) if unknown_reservation else None
        mv = self._movement(
            MovementType.SHIPMENT, sku, loc, "wms-east", False, qty=qty, reservation_id=rid
        )
        return self._record(mv, qty=qty)

    def _pick_reservation(self, data: st.DataObject, live: tuple[str, ...]) -> str:
        """Any reservation, with those whose status is in ``live`` twice as likely.

        Creation order, not sorted ids: ids are random uuid4s and draws must be reproducible.
        """
        everything = list(self.model.reservations)
        preferred = [
            rid for rid in everything if self.model.reservations[rid].status_at(self.now) in live
        ]
        return data.draw(st.sampled_from([*preferred, *everything]), label="reservation")

    @precondition(lambda self: bool(self.model.reservations))
    @rule(target=sent, data=st.data(), qty=quantities)
    def shipment_against_reservation(self, data: st.DataObject, qty: int) -> Movement:
        rid = self._pick_reservation(data, ("ACTIVE", "COMMITTED"))
        own = sorted(self.model.reservations[rid].held)
        sku, loc = data.draw(st.sampled_from([*own, *own, *UNIVERSE]), label="position")
        mv = self._movement(
            MovementType.SHIPMENT, sku, loc, "wms-east", False, qty=qty, reservation_id=rid
        )
        reservation = self.model.reservations[rid]
        before = (reservation.status_at(self.now), sum(reservation.shipped.values()))
        self._record(mv, qty=qty)
        consumed = sum(reservation.shipped.values()) > before[1]
        event(f"shipment vs {before[0]} reservation: {'consumed' if consumed else 'no effect'}")
        return mv

    @rule(
        target=sent,
        sku=skus,
        loc=locations,
        delta=st.one_of(st.integers(-20, -1), st.integers(1, 20)),
        source=sources,
    )
    def adjustment(self, sku: str, loc: str, delta: int, source: str) -> Movement:
        mv = self._movement(
            MovementType.ADJUSTMENT, sku, loc, source, False, delta=delta, reason="recount"
        )
        return self._record(mv, delta=delta)

    @rule(
        target=sent,
        sku=skus,
        loc=locations,
        counted=st.integers(0, 40),
        when=st.sampled_from(["now", "now", "past", "same_as_last", "just_before_last"]),
        back=st.integers(1, 7200),
    )
    def cycle_count(self, sku: str, loc: str, counted: int, when: str, back: int) -> Movement:
        last = self.model.pos(sku, loc).last_count_at
        occurred_at: datetime | None = None
        if when == "past":
            occurred_at = self.now - timedelta(seconds=back)
        elif when == "same_as_last" and last is not None:
            occurred_at = last
        elif when == "just_before_last" and last is not None:
            occurred_at = last - MICRO
        mv = self._movement(
            MovementType.CYCLE_COUNT,
            sku,
            loc,
            "wms-east",
            False,
            counted=counted,
            occurred_at=occurred_at,
        )
        return self._record(mv, counted=counted)

    @rule(
        target=sent,
        kind=st.sampled_from(
            [
                MovementType.QUARANTINE,
                MovementType.QUARANTINE_RELEASE,
                MovementType.DAMAGE,
                MovementType.WRITE_OFF,
                MovementType.RETURN_RECEIPT,
            ]
        ),
        sku=skus,
        loc=locations,
        qty=quantities,
        from_bucket=st.sampled_from([None, FromBucket.ON_HAND, FromBucket.QUARANTINE]),
        disposition=st.sampled_from(list(Disposition)),
    )
    def bucket_move(
        self,
        kind: MovementType,
        sku: str,
        loc: str,
        qty: int,
        from_bucket: FromBucket | None,
        disposition: Disposition,
    ) -> Movement:
        """quarantine, quarantine_release, damage (from_bucket), write_off, return_receipt."""
        fields: dict[str, object] = {"qty": qty}
        model: dict[str, object] = {"qty": qty}
        if kind is MovementType.DAMAGE:
            fields["from_bucket"] = from_bucket
            model["from_bucket"] = (from_bucket or FromBucket.ON_HAND).value
        elif kind is MovementType.RETURN_RECEIPT:
            fields["disposition"] = disposition
            model["disposition"] = disposition.value
        mv = self._movement(kind, sku, loc, "erp", False, **fields)
        return self._record(mv, **model)

    @rule(target=sent, data=st.data(), qty=quantities, eta=etas)
    def transfer_dispatch(self, data: st.DataObject, qty: int, eta: timedelta | None) -> Movement:
        # An existing transfer may be dispatched again: in waves, after an early receipt,
        # after an over-receipt, or after final=true (a new leg under the same id).
        again = sorted(self.transfers)
        choice = data.draw(st.sampled_from(["new", *again]), label="transfer")
        if choice == "new":
            sku = data.draw(skus, label="sku")
            source, to = data.draw(
                st.permutations(LOCATIONS).map(lambda p: (p[0], p[1])), label="route"
            )
            tid = f"T{next(self.counter)}"
            self.transfers[tid] = (sku, source, to)
        else:
            tid = choice
            sku, source, to = self.transfers[tid]
        event(f"transfer_dispatch: {'new' if choice == 'new' else 'again'}")
        mv = self._movement(
            MovementType.TRANSFER_DISPATCH,
            sku,
            source,
            "erp",
            False,
            qty=qty,
            transfer_id=tid,
            to_location_id=to,
            expected_at=None if eta is None else self.now + eta,
        )
        return self._record(mv, qty=qty)

    @rule(target=sent, data=st.data(), qty=quantities, final=st.booleans())
    def transfer_receipt(self, data: st.DataObject, qty: int, final: bool) -> Movement:
        choice = data.draw(st.sampled_from(["early", *sorted(self.transfers)]), label="transfer")
        event(f"transfer_receipt: {'early' if choice == 'early' else 'known transfer'}")
        if choice == "early":
            # Received before any dispatch of its transfer (documented: outstanding 0).
            sku = data.draw(skus, label="sku")
            source, to = data.draw(
                st.permutations(LOCATIONS).map(lambda p: (p[0], p[1])), label="route"
            )
            tid = f"T{next(self.counter)}"
            self.transfers[tid] = (sku, source, to)
        else:
            tid = choice
            sku, source, to = self.transfers[tid]
        mv = self._movement(
            MovementType.TRANSFER_RECEIPT,
            sku,
            to,
            "wms-east",
            False,
            qty=qty,
            transfer_id=tid,
            final=final,
        )
        return self._record(mv, qty=qty)

    @rule(movement=sent, with_fresh=st.booleans())
    def redeliver(self, movement: Movement, with_fresh: bool) -> None:
        """Same source + message_id + payload: DUPLICATE, and nothing changes."""
        batch = [movement]
        if with_fresh:
            fresh = self._movement(MovementType.RECEIPT, "A", "L1", "erp", False, qty=1)
            batch.append(fresh)
        results = self.service.record_movements(self.ctx, batch).result()
        expected = ["DUPLICATE", "RECORDED"] if with_fresh else ["DUPLICATE"]
        assert [r.outcome for r in results] == expected, results
        # A duplicate answers with the original ledger position (docs/decisions.md).
        assert results[0].ledger_position == self.positions[movement.source, movement.message_id]
        if with_fresh:
            self.model.apply_movement("receipt", "A", "L1", now=self.now, qty=1)

    @rule(sku=skus, loc=locations, qty=quantities)
    def same_message_twice_in_one_request(self, sku: str, loc: str, qty: int) -> None:
        mv = self._movement(MovementType.RECEIPT, sku, loc, "erp", False, qty=qty)
        results = self.service.record_movements(self.ctx, [mv, mv]).result()
        assert [r.outcome for r in results] == ["RECORDED", "DUPLICATE"], results
        self.model.apply_movement("receipt", sku, loc, now=self.now, qty=qty)

    # ---- policies ----------------------------------------------------------------------------

    @rule(sku=skus, loc=locations, qty=st.integers(0, 15))
    def set_safety_stock(self, sku: str, loc: str, qty: int) -> None:
        rid = f"ss-{next(self.counter)}"
        view = self.service.set_safety_stock(self.ctx, rid, sku, loc, qty).result()
        assert view.safety_stock == qty
        self.model.set_safety_stock(sku, loc, qty)

    @rule(
        sku=skus,
        loc=locations,
        channel=channels,
        qty=st.integers(0, 20),
        near_limit=st.sampled_from([None, 0, 1]),
    )
    def set_channel_fence(
        self, sku: str, loc: str, channel: str, qty: int, near_limit: int | None
    ) -> None:
        if near_limit is not None:
            # The largest fence the model allows (when above the current one), plus 0 or 1.
            allowed_up_to = max(
                q for q in range(41) if self.model.fence_allowed(sku, loc, channel, q, self.now)
            )
            qty = allowed_up_to + near_limit
        allowed = self.model.fence_allowed(sku, loc, channel, qty, self.now)
        rid = f"fence-{next(self.counter)}"
        try:
            self.service.set_channel_fence(self.ctx, rid, sku, loc, channel, qty).result()
        except FenceExceedsAvailable:
            assert not allowed, "ledger refused a fence the model allows"
            event("fence: refused")
            return
        event("fence: set")
        assert allowed, "ledger accepted a fence raise the model refuses"
        assert self.model.set_channel_fence(sku, loc, channel, qty, self.now)

    @rule(channel=channels, eligible=st.lists(locations, unique=True, max_size=3))
    def set_channel_policy(self, channel: str, eligible: list[str]) -> None:
        rid = f"policy-{next(self.counter)}"
        view = self.service.set_channel_policy(
            self.ctx, rid, channel, sorted(eligible), 100, 0, 0
        ).result()
        assert view.eligible_location_ids == sorted(eligible)
        self.model.set_channel_policy(channel, sorted(eligible))

    # ---- reservations ------------------------------------------------------------------------

    @rule(target=reservations, channel=channels, lines=reserve_lines(), ttl=ttls)
    def reserve(self, channel: str, lines: list[tuple[str, str, int]], ttl: timedelta) -> object:
        allowed = self.model.reserve_allowed(channel, lines, self.now)
        request = ReserveInput(
            request_id=f"reserve-{next(self.counter)}",
            channel=channel,
            order_ref=f"order-{next(self.counter)}",
            lines=tuple(ReserveLine(s, loc, q) for s, loc, q in lines),
            ttl=ttl,
        )
        try:
            view = self.service.reserve(self.ctx, request).result()
        except InsufficientAvailability:
            assert not allowed, f"ledger refused a reservation the model allows: {lines}"
            event("reserve: refused")
            return multiple()
        event("reserve: placed")
        assert allowed, f"ledger accepted a reservation the model refuses: {lines}"
        assert view.status == "ACTIVE"
        assert view.expires_at == self.now + ttl
        assert self.model.reserve(view.reservation_id, channel, lines, self.now, ttl)
        self.reserve_requests[view.reservation_id] = request
        return view.reservation_id

    @rule(
        target=reservations,
        channel=channels,
        data=st.data(),
        offset=st.sampled_from([-1, 0, 0, 1]),
        split=st.booleans(),
        ttl=ttls,
    )
    def reserve_near_limit(
        self, channel: str, data: st.DataObject, offset: int, split: bool, ttl: timedelta
    ) -> object:
        """Ask for available_to(channel) + offset at a position with stock, maybe as 2 lines.

        Positions fenced for this channel are favoured (fence and demand interact there).
        """
        stocked = [key for key in UNIVERSE if self.model.available_to(key, channel, self.now) > 0]
        fenced = [
            key
            for key in UNIVERSE
            if key in self.model.positions and self.model.positions[key].fences.get(channel)
        ]
        candidates = [*fenced, *fenced, *stocked] or list(UNIVERSE)
        sku, loc = data.draw(st.sampled_from(candidates), label="position")
        qty = max(1, self.model.available_to((sku, loc), channel, self.now) + offset)
        if split and qty >= 2:
            first = data.draw(st.integers(1, qty - 1), label="first line")
            lines = [(sku, loc, first), (sku, loc, qty - first)]
        else:
            lines = [(sku, loc, qty)]
        return self.reserve(channel, lines, ttl)

    @rule(rid=reservations)
    def replay_reserve(self, rid: str) -> None:
        """The same request_id and payload returns the first result and changes nothing."""
        view = self.service.reserve(self.ctx, self.reserve_requests[rid]).result()
        assert view.reservation_id == rid

    @precondition(lambda self: bool(self.model.reservations))
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        rid = self._pick_reservation(data, ("ACTIVE",))
        allowed = self.model.reservations[rid].status_at(self.now) == "ACTIVE"
        channel = self.model.reservations[rid].channel
        try:
            view = self.service.commit(self.ctx, f"commit-{next(self.counter)}", rid, channel)
            view = view.result()
        except IllegalTransition:
            assert not allowed, "ledger refused a legal commit"
            assert not self.model.commit(rid, self.now)
            event(f"commit: illegal ({self.model.reservations[rid].status_at(self.now)})")
            return
        event("commit: ok")
        assert allowed, f"ledger committed a {self.model.reservations[rid].status_at(self.now)}"
        assert view.status == "COMMITTED"
        assert self.model.commit(rid, self.now)

    @rule(target=reservations, rid=consumes(reservations), keep=st.booleans())
    def release(self, rid: str, keep: bool) -> object:
        allowed = self.model.reservations[rid].status_at(self.now) in ("ACTIVE", "COMMITTED")
        channel = self.model.reservations[rid].channel
        try:
            view = self.service.release(self.ctx, f"release-{next(self.counter)}", rid, channel)
            view = view.result()
        except IllegalTransition:
            assert not allowed, "ledger refused a legal release"
            assert not self.model.release(rid, self.now)
            event(f"release: illegal ({self.model.reservations[rid].status_at(self.now)})")
        else:
            event("release: ok")
            assert allowed, f"ledger released a {self.model.reservations[rid].status_at(self.now)}"
            assert view.status == "RELEASED"
            assert self.model.release(rid, self.now)
        # Mostly keep it around: later commits/releases/shipments must be refused or no-ops.
        return rid if keep else multiple()

    # ---- time --------------------------------------------------------------------------------

    @rule(step=clock_steps)
    def advance_clock(self, step: timedelta) -> None:
        self.now += step

    @precondition(lambda self: bool(self.model.reservations))
    @rule(data=st.data(), offset=st.sampled_from([-MICRO, timedelta(0), timedelta(0), MICRO]))
    def advance_to_expiry(self, data: st.DataObject, offset: timedelta) -> None:
        """Land right on a reservation's expiry boundary (hold counts until expires_at)."""
        rid = self._pick_reservation(data, ("ACTIVE",))
        target = self.model.reservations[rid].expires_at + offset
        if target > self.now:
            self.now = target

    @rule()
    def expire_sweep(self) -> None:
        before = {key: self.service.get_position(*key) for key in UNIVERSE}
        expired = set(self.service.expire_due_reservations())
        assert expired == self.model.expire_due(self.now)
        event(f"sweep: {'expired some' if expired else 'nothing due'}")
        for key in UNIVERSE:
            after = self.service.get_position(*key)
            for name in ("reserved", "allocated", "available", "on_hand"):
                assert getattr(after, name) == getattr(before[key], name), (key, name)

    # ---- the comparison ----------------------------------------------------------------------

    @invariant()
    def positions_match_model(self) -> None:
        for sku, loc in UNIVERSE:
            view = self.service.get_position(sku, loc)
            actual = {
                "on_hand": view.on_hand,
                "receiving": view.receiving,
                "quarantine": view.quarantine,
                "damaged": view.damaged,
                "in_transit_inbound": view.in_transit_inbound,
                "reserved": view.reserved,
                "allocated": view.allocated,
                "safety_stock": view.safety_stock,
                "available": view.available,
                "fences": {c: q for c, q in view.fences.items() if q},
            }
            expected = self.model.buckets((sku, loc), self.now)
            assert actual == expected, f"{sku}@{loc} at {self.now}: {actual} != {expected}"
            aggregate = self.service.app.find(position_id(sku, loc))
            for channel in CHANNELS:
                got = 0 if aggregate is None else aggregate.available_to(channel, self.now)
                want = self.model.available_to((sku, loc), channel, self.now)
                assert got == want, f"available_to({channel}) at {sku}@{loc}: {got} != {want}"
                for horizon in self._horizons():
                    got = (
                        0
                        if aggregate is None
                        else aggregate.projected_available_to(channel, self.now, horizon)
                    )
                    want = self.model.projected_available_to((sku, loc), channel, self.now, horizon)
                    assert got == want, (
                        f"projected_available_to({channel}, {horizon}) at {sku}@{loc}: "
                        f"{got} != {want}"
                    )

    def _horizons(self) -> list[datetime]:
        """Now, and each open transfer's ETA and the instant before it (the ETA boundary)."""
        etas = {
            t.expected_at
            for p in self.model.positions.values()
            for t in p.inbound.values()
            if t.expected_at is not None and t.outstanding
        }
        return sorted({self.now, *etas, *(eta - MICRO for eta in etas)})

    @rule(
        sku=skus,
        channel=channels,
        data=st.data(),
        offset=st.sampled_from([-MICRO, timedelta(0), timedelta(hours=1), timedelta(days=3)]),
    )
    def dated_availability(
        self, sku: str, channel: str, data: st.DataObject, offset: timedelta
    ) -> None:
        """GetAvailability's STRONG path with a horizon against the model: at an ETA (or just
        before it) when one is open, else relative to now."""
        etas = [h for h in self._horizons() if h > self.now]
        base = data.draw(st.sampled_from(etas), label="eta") if etas else self.now
        horizon = base + offset
        view = self.queries.availability(sku, channel, strong=True, horizon=horizon)
        want = self.model.projected_channel_available(sku, channel, self.now, horizon)
        assert view.projected_available == want, (sku, channel, horizon, view, want)
        event(f"dated availability: {'above' if want > view.channel_available else 'same'}")

    @invariant()
    def reservations_match_model(self) -> None:
        for rid, expected in self.model.reservations.items():
            view = self.service.get_reservation(rid)
            assert view.status == expected.status_at(self.now), (rid, view.status)
            held: dict[tuple[str, str], int] = {}
            shipped: dict[tuple[str, str], int] = {}
            for line in view.lines:
                key = (line.sku, line.location_id)
                held[key] = held.get(key, 0) + line.qty
                shipped[key] = shipped.get(key, 0) + line.shipped
            assert held == expected.held, (rid, held)
            want_shipped = {k: expected.shipped.get(k, 0) for k in expected.held}
            assert shipped == want_shipped, (rid, shipped, want_shipped)


class TestLedgerModel(LedgerModelMachine.TestCase):  # type: ignore[misc,valid-type]
    settings = _settings()
    # Passing runs take well under a minute; a failure's shrinking may take Hypothesis up to
    # its own 5-minute cap, which must end before pytest-timeout (300 s suite-wide) does.
    pytestmark = pytest.mark.timeout(600)
