"""Point-in-time replay equals a reference fold written from contract §3.

Hypothesis draws a history at one position — facts whose ``occurred_at`` lags their
recording by up to three days (so late and out-of-order facts are common), a transfer
inbound from another location, reservations that are committed, released, shipped against
or left to expire, safety stock — and records it through the real service (SQLite file,
fake clock). Then, at many instants T, ``position_as_of`` on both axes (and EFFECTIVE with
``known_at``) must equal the independent reference model (tests/model/reference.py) fed:

* RECORDED at T: the operations recorded at or before T, in ledger order;
* EFFECTIVE at T (known at K): the operations that occurred at or before T (and were
  recorded by K), ordered by (occurred_at, ledger order);

with every figure judged at ``now = T`` (an unexpired hold at T counts, an expired one
does not, whether or not its expiry was ever recorded).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.audit.as_of import AsOfReader, Axis
from ledger.domain.errors import IllegalTransition, InsufficientAvailability
from ledger.domain.movements import Movement, MovementType
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput, ReserveLine
from tests.model.reference import ReferenceLedger, ReservationModel

SKU, LOC, ORIGIN = "S", "L", "L0"
CTX = CallContext("auditor", "corr")
START = datetime(2026, 3, 1, tzinfo=UTC)
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

qty = st.integers(1, 9)
lag = st.integers(0, 3 * 24 * 60)  # minutes between occurrence and recording
fact = st.one_of(
    st.tuples(st.just("receipt"), qty, lag),
    st.tuples(st.just("receipt"), qty, lag),
    st.tuples(st.just("shipment"), qty, lag),
    st.tuples(st.just("adjustment"), st.integers(-6, 6).filter(bool), lag),
    st.tuples(st.just("cycle_count"), st.integers(0, 20), lag),
    st.tuples(st.just("quarantine"), qty, lag),
    st.tuples(st.just("damage"), qty, lag),
    st.tuples(st.just("dispatch"), qty, lag),
    st.tuples(st.just("transfer_receipt"), qty, lag, st.booleans()),
)
hold_step = st.one_of(
    st.tuples(st.just("reserve"), qty, st.integers(1, 240)),
    st.tuples(st.just("commit"), st.integers(0, 9)),
    st.tuples(st.just("release"), st.integers(0, 9)),
    st.tuples(st.just("ship_reserved"), st.integers(0, 9), qty, lag),
    st.tuples(st.just("safety"), st.integers(0, 4)),
)
step = st.tuples(st.integers(1, 180), st.one_of(fact, fact, hold_step))  # minutes to advance
histories = st.lists(step, min_size=4, max_size=28)


@dataclass
class Op:
    """One operation the ledger accepted, as the reference model replays it."""

    recorded_at: datetime
    occurred_at: datetime
    apply: Any  # (ReferenceLedger) -> None
    index: int = 0


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    reservations: list[str] = field(default_factory=list)


_numbers = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def _movement(kind: MovementType, location_id: str, **fields: Any) -> Movement:
    return Movement("audit", f"m-{next(_numbers)}", kind, SKU, location_id, **fields)


def _record(service: LedgerService, clock: Clock, history: History, item: tuple) -> None:
    kind = item[0]
    now = clock.now

    def fact_op(occurred: datetime, apply: Any) -> None:
        history.ops.append(Op(now, occurred, apply))

    if kind in ("receipt", "shipment", "quarantine", "damage"):
        _, q, minutes = item
        occurred = now - timedelta(minutes=minutes)
        service.record_movements(
            CTX, [_movement(MovementType(kind), LOC, qty=q, occurred_at=occurred)]
        ).result()
        fact_op(occurred, lambda r, k=kind, q=q, t=now: r.apply_movement(k, SKU, LOC, now=t, qty=q))
    elif kind == "adjustment":
        _, d, minutes = item
        occurred = now - timedelta(minutes=minutes)
        service.record_movements(
            CTX,
            [
                _movement(
                    MovementType.ADJUSTMENT, LOC, delta=d, reason="audit", occurred_at=occurred
                )
            ],
        ).result()
        fact_op(
            occurred, lambda r, d=d, t=now: r.apply_movement("adjustment", SKU, LOC, now=t, delta=d)
        )
    elif kind == "cycle_count":
        _, counted, minutes = item
        occurred = now - timedelta(minutes=minutes)
        service.record_movements(
            CTX, [_movement(MovementType.CYCLE_COUNT, LOC, counted=counted, occurred_at=occurred)]
        ).result()
        fact_op(
            occurred,
            lambda r, c=counted, o=occurred, t=now: r.apply_movement(
                "cycle_count", SKU, LOC, now=t, counted=c, occurred_at=o
            ),
        )
    elif kind == "dispatch":
        _, q, minutes = item
        occurred = now - timedelta(minutes=minutes)
        service.record_movements(
            CTX,
            [
                _movement(
                    MovementType.TRANSFER_DISPATCH,
                    ORIGIN,
                    qty=q,
                    transfer_id="T1",
                    to_location_id=LOC,
                    occurred_at=occurred,
                )
            ],
        ).result()
        fact_op(
            occurred,
            lambda r, q=q, t=now: r.apply_movement(
                "transfer_dispatch", SKU, ORIGIN, now=t, qty=q, transfer_id="T1", to_location_id=LOC
            ),
        )
    elif kind == "transfer_receipt":
        _, q, minutes, final = item
        occurred = now - timedelta(minutes=minutes)
        service.record_movements(
            CTX,
            [
                _movement(
                    MovementType.TRANSFER_RECEIPT,
                    LOC,
                    qty=q,
                    transfer_id="T1",
                    final=final,
                    occurred_at=occurred,
                )
            ],
        ).result()
        fact_op(
            occurred,
            lambda r, q=q, f=final, t=now: r.apply_movement(
                "transfer_receipt", SKU, LOC, now=t, qty=q, transfer_id="T1", final=f
            ),
        )
    elif kind == "reserve":
        _, q, ttl_minutes = item
        ttl = timedelta(minutes=ttl_minutes)
        try:
            view = service.reserve(
                CTX,
                ReserveInput(f"r-{next(_numbers)}", "web", "o", (ReserveLine(SKU, LOC, q),), ttl),
            ).result()
        except InsufficientAvailability:
            return
        rid = view.reservation_id
        history.reservations.append(rid)

        def place(
            r: ReferenceLedger, rid: str = rid, q: int = q, expires: datetime = now + ttl
        ) -> None:
            r.reservations[rid] = ReservationModel("web", [(SKU, LOC, q)], expires)

        fact_op(now, place)
    elif kind in ("commit", "release"):
        _, pick = item
        if not history.reservations:
            return
        rid = history.reservations[pick % len(history.reservations)]
        action = service.commit if kind == "commit" else service.release
        try:
            action(CTX, f"{kind}-{next(_numbers)}", rid, "").result()
        except IllegalTransition:
            return
        status = "COMMITTED" if kind == "commit" else "RELEASED"

        def transition(r: ReferenceLedger, rid: str = rid, status: str = status) -> None:
            r.reservations[rid].status = status

        fact_op(now, transition)
    elif kind == "ship_reserved":
        _, pick, q, minutes = item
        if not history.reservations:
            return
        rid = history.reservations[pick % len(history.reservations)]
        occurred = now - timedelta(minutes=minutes)
        service.record_movements(
            CTX,
            [
                _movement(
                    MovementType.SHIPMENT, LOC, qty=q, reservation_id=rid, occurred_at=occurred
                )
            ],
        ).result()
        fact_op(
            occurred,
            lambda r, q=q, rid=rid, t=now: r.apply_movement(
                "shipment", SKU, LOC, now=t, qty=q, reservation_id=rid
            ),
        )
    elif kind == "safety":
        _, q = item
        service.set_safety_stock(CTX, f"s-{next(_numbers)}", SKU, LOC, q).result()
        fact_op(now, lambda r, q=q: r.set_safety_stock(SKU, LOC, q))
    else:  # pragma: no cover
        raise AssertionError(kind)


def _reference(
    ops: list[Op], at: datetime, axis: Axis, known_at: datetime | None
) -> dict[str, Any]:
    if axis is Axis.RECORDED:
        chosen = [op for op in ops if op.recorded_at <= at]
    else:
        chosen = [
            op
            for op in ops
            if op.occurred_at <= at and (known_at is None or op.recorded_at <= known_at)
        ]
        chosen.sort(key=lambda op: (op.occurred_at, op.index))
    model = ReferenceLedger()
    for op in chosen:
        op.apply(model)
    figures = model.buckets((SKU, LOC), at)
    return {name: figures[name] for name in BUCKETS}


def _ledger(
    service: LedgerService, at: datetime, axis: Axis, known_at: datetime | None
) -> dict[str, Any]:
    view = service.position_as_of(SKU, LOC, at, axis, known_at)
    return {name: getattr(view, name) for name in BUCKETS}


@dataclass
class Backend:
    """One service per backend for the whole module; every example gets a position of its
    own and a clock that starts after the previous example ended (recorded_at never goes
    backwards along the ledger, so a later example cannot start in the past)."""

    service: LedgerService
    clock: Clock


def _open_backend(url: str, clock: Clock) -> Backend:
    return Backend(LedgerService.open(url, clock), clock)


@pytest.fixture(scope="module")
def sqlite_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    backend = _open_backend(f"sqlite:///{tmp_path_factory.mktemp('as-of') / 'ledger.db'}", Clock())
    try:
        yield backend
    finally:
        backend.service.close()


@pytest.fixture(scope="module")
def postgres_backend(postgres_server: Any) -> Iterator[Backend]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    backend = _open_backend(postgres_server.create_database(name), Clock())
    try:
        yield backend
    finally:
        backend.service.close()
        postgres_server.drop_database(name)


# The recorders' SQL differs per backend; the fold logic does not, so PostgreSQL gets fewer.
SQLITE_EXAMPLES = int(os.environ.get("LEDGER_AS_OF_EXAMPLES", "40"))
POSTGRES_EXAMPLES = int(os.environ.get("LEDGER_AS_OF_PG_EXAMPLES", "15"))
_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@settings(max_examples=SQLITE_EXAMPLES, **_SETTINGS)
@given(history_steps=histories, data=st.data())
def test_as_of_matches_reference_fold_on_both_axes_sqlite(
    sqlite_backend: Backend, history_steps: list, data: st.DataObject
) -> None:
    _run_example(sqlite_backend, history_steps, data)


@pytest.mark.postgres
@settings(max_examples=POSTGRES_EXAMPLES, **_SETTINGS)
@given(history_steps=histories, data=st.data())
def test_as_of_matches_reference_fold_on_both_axes_postgres(
    postgres_backend: Backend, history_steps: list, data: st.DataObject
) -> None:
    _run_example(postgres_backend, history_steps, data)


def _run_example(backend: Backend, history_steps: list, data: st.DataObject) -> None:
    global SKU
    SKU = f"S{next(_numbers)}"  # a fresh position for this example
    service, clock = backend.service, backend.clock
    clock.now += timedelta(days=30)
    # Checkpoints every few events, so the checkpoint path is exercised (and reused by later
    # queries of the same example) and not only the ledger-prefix path.
    service.as_of = AsOfReader(
        service.app, checkpoint_every=data.draw(st.sampled_from([2, 3, 1000]))
    )
    history = History()
    for minutes, item in history_steps:
        clock.now += timedelta(minutes=minutes)
        _record(service, clock, history, item)
        if history.ops and data.draw(st.booleans()):
            # Mid-history queries leave checkpoints behind that later late facts must
            # invalidate.
            _check(service, history, clock, data, full=False)
    if history.ops:
        _check(service, history, clock, data, full=True)


def _check(
    service: LedgerService, history: History, clock: Clock, data: st.DataObject, *, full: bool
) -> None:
    for index, op in enumerate(history.ops):
        op.index = index
    times = sorted({op.recorded_at for op in history.ops} | {op.occurred_at for op in history.ops})
    span = st.integers(0, int((clock.now - times[0]).total_seconds()) + 7200)
    # Exactly at event times (boundaries are inclusive), just before them, and anywhere.
    instants = [
        times[0] - timedelta(hours=1) + timedelta(seconds=s)
        for s in data.draw(st.lists(span, min_size=1, max_size=8 if full else 2))
    ]
    if full:
        instants += [*times, *(t - timedelta(microseconds=1) for t in times)]
    for at in instants:
        for axis in (Axis.RECORDED, Axis.EFFECTIVE):
            assert _ledger(service, at, axis, None) == _reference(history.ops, at, axis, None), (
                axis,
                at,
            )
        known_at = data.draw(st.sampled_from(times))
        assert _ledger(service, at, Axis.EFFECTIVE, known_at) == _reference(
            history.ops, at, Axis.EFFECTIVE, known_at
        ), ("known_at", at, known_at)
