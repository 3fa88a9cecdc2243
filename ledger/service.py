"""The ledger's use-case façade: writes go through the pipeline, reads straight to the store.

This is the composition the gRPC servicers (and CLI, tools, tests) talk to.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, TypeVar

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent

from ledger.application import InventoryLedger
from ledger.audit import trace, verify
from ledger.audit.as_of import AsOfReader, Axis
from ledger.audit.entries import LedgerEntryView, decode_event, entry_view, ledger_entries
from ledger.config import GroupCommit, eventsourcing_env
from ledger.domain.errors import ReservationNotFound, SerialNotFound, StoreUnavailable
from ledger.domain.item_policy import ItemPolicy, Tracking, item_policy_id
from ledger.domain.lot_record import LotRecord, lot_record_id
from ledger.domain.movements import Movement
from ledger.domain.position import Position, position_id
from ledger.domain.reservation import Reservation, parse_reservation_id
from ledger.domain.serial_unit import SerialUnit, serial_unit_id
from ledger.pipeline import CommandPipeline
from ledger.read_cache import ReadCache
from ledger.store.index_ops import EventRange, to_micros
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput
from ledger.views import (
    ChannelPolicyView,
    ItemPolicyView,
    MovementResultView,
    Page,
    PositionView,
    ReservationView,
    SerialUnitView,
)
from ledger.writer.local import LocalWriter, Writer

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
T = TypeVar("T")
EXPIRY_BATCH_MAX = 100
DEFAULT_GROUP_COMMIT = GroupCommit()


def system_clock() -> datetime:
    return datetime.now(UTC)


class LedgerService:
    def __init__(
        self,
        app: InventoryLedger,
        clock: Clock = system_clock,
        group_commit: GroupCommit = DEFAULT_GROUP_COMMIT,
        writer: Writer | None = None,
    ) -> None:
        """Writes go to ``writer`` (a writer process's client), or by default to a pipeline on
        a thread of this process."""
        self.app = app
        self.clock = clock
        self.writer: Writer = writer or LocalWriter(
            CommandPipeline(
                app,
                clock,
                linger_seconds=group_commit.linger_seconds,
                batch_max=group_commit.max_commands,
            )
        )
        self.as_of = AsOfReader(app)
        # Positions for strongly consistent reads (GetPosition, ListPositions, STRONG
        # GetAvailability): fast-forwarded per read, shared without copies (issue 20).
        self.reads = ReadCache(app)
        self._sweeper_stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    @property
    def pipeline(self) -> CommandPipeline:
        """This process's command pipeline (AttributeError where a writer process writes)."""
        if not isinstance(self.writer, LocalWriter):
            raise AttributeError("this service writes through a writer process")
        return self.writer.pipeline

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Called after every commit that wrote events (on a writer-side thread)."""
        self.writer.add_commit_listener(listener)

    @classmethod
    def open(
        cls,
        database_url: str,
        clock: Clock = system_clock,
        group_commit: GroupCommit = DEFAULT_GROUP_COMMIT,
        writer: Writer | None = None,
    ) -> LedgerService:
        return cls(InventoryLedger(eventsourcing_env(database_url)), clock, group_commit, writer)

    def close(self) -> None:
        self.stop_expiry_sweeper()
        self.writer.close()
        self.app.close()

    # ---- writes (each returns a Future; use .result() or asyncio.wrap_future) -----------------

    def _submit(self, ctx: CallContext, use_case: str, *args: Any, **kwargs: Any) -> Future[Any]:
        """Queue a write (by use-case name: it may cross to a writer process); one that
        cannot be reached before the caller's deadline is refused now (RESOURCE_EXHAUSTED)
        rather than left to time out."""
        return self.writer.submit(ctx, use_case, args, kwargs)

    def record_movements(
        self, ctx: CallContext, items: Sequence[Movement], *, reject_reused: bool = True
    ) -> Future[list[MovementResultView]]:
        return self._submit(ctx, "record_movements", list(items), reject_reused=reject_reused)

    def reserve(self, ctx: CallContext, request: ReserveInput) -> Future[ReservationView]:
        return self._submit(ctx, "reserve", request)

    def commit(
        self, ctx: CallContext, request_id: str, reservation_id: str, channel: str
    ) -> Future[ReservationView]:
        return self._submit(ctx, "commit", request_id, reservation_id, channel)

    def release(
        self, ctx: CallContext, request_id: str, reservation_id: str, channel: str
    ) -> Future[ReservationView]:
        return self._submit(ctx, "release", request_id, reservation_id, channel)

    def set_safety_stock(
        self, ctx: CallContext, request_id: str, sku: str, location_id: str, qty: int
    ) -> Future[PositionView]:
        return self._submit(ctx, "set_safety_stock", request_id, sku, location_id, qty)

    def set_channel_fence(
        self, ctx: CallContext, request_id: str, sku: str, location_id: str, channel: str, qty: int
    ) -> Future[PositionView]:
        return self._submit(ctx, "set_channel_fence", request_id, sku, location_id, channel, qty)

    def set_channel_policy(
        self,
        ctx: CallContext,
        request_id: str,
        channel: str,
        eligible_location_ids: list[str],
        share_percent: int,
        buffer: int,
        max_publish: int,
    ) -> Future[ChannelPolicyView]:
        return self._submit(
            ctx,
            "set_channel_policy",
            request_id,
            channel,
            eligible_location_ids,
            share_percent,
            buffer,
            max_publish,
        )

    def set_item_policy(
        self, ctx: CallContext, request_id: str, sku: str, tracking: Tracking
    ) -> Future[ItemPolicyView]:
        return self._submit(ctx, "set_item_policy", request_id, sku, tracking)

    # ---- reads (strongly consistent: from the aggregates) -------------------------------------

    def get_item_policy(self, sku: str) -> ItemPolicyView:
        """The item master's answer for ``sku``: an unknown SKU is tracked NONE."""
        policy = self.app.find(item_policy_id(sku))
        if not isinstance(policy, ItemPolicy):
            return ItemPolicyView(sku=sku)
        return ItemPolicyView.of(policy)

    def get_serial(self, sku: str, serial_number: str) -> SerialUnitView:
        """Where one unit is, and its history, from the serial index's aggregate."""
        unit = self.app.find(serial_unit_id(sku, serial_number))
        if not isinstance(unit, SerialUnit) or unit.state is None:
            raise SerialNotFound(sku, serial_number)
        return SerialUnitView.of(unit)

    def get_position(
        self, sku: str, location_id: str, *, include_holds: bool = False
    ) -> PositionView:
        return self._position_view(
            sku, location_id, self.reads.get(position_id(sku, location_id)), include_holds
        )

    async def get_position_async(
        self,
        sku: str,
        location_id: str,
        select: Callable[[Sequence[EventRange]], Awaitable[list[StoredEvent]]],
        *,
        include_holds: bool = False,
    ) -> PositionView:
        """``get_position`` with its store read awaited (``select``: an AsyncRangeReader's)."""
        (position,) = await self.reads.get_many_async([position_id(sku, location_id)], select)
        return self._position_view(sku, location_id, position, include_holds)

    def _position_view(
        self, sku: str, location_id: str, position: object, include_holds: bool
    ) -> PositionView:
        # One published (never mutated) aggregate: figures and holds agree.
        if not isinstance(position, Position):
            return PositionView(sku=sku, location_id=location_id)
        return PositionView.of(position, self.clock(), include_holds=include_holds)

    def list_positions(
        self,
        *,
        sku: str | None,
        location_id: str | None,
        after: tuple[str, str],
        page_size: int,
        include_holds: bool = False,
    ) -> Page[PositionView]:
        keys = self.app.select_positions(
            sku=sku, location_id=location_id, after=after, limit=page_size + 1
        )
        page = keys[:page_size]
        # The page's positions fast-forwarded in one statement.
        found = self.reads.get_many([position_id(s, loc) for s, loc in page])
        views = [
            self._position_view(s, loc, position, include_holds)
            for (s, loc), position in zip(page, found, strict=True)
        ]
        next_after = keys[page_size - 1] if len(keys) > page_size else None
        return Page(views, next_after)

    def get_reservation(self, reservation_id: str, channel: str = "") -> ReservationView:
        reservation = self.app.find(parse_reservation_id(reservation_id))
        if not isinstance(reservation, Reservation) or (channel and reservation.channel != channel):
            raise ReservationNotFound(reservation_id)
        return ReservationView.of(reservation, self.clock(), expiry_of=self._lot_expiry)

    def _lot_expiry(self, sku: str, lot_id: str) -> datetime | None:
        record = self.app.find(lot_record_id(sku, lot_id))
        return record.expires_at if isinstance(record, LotRecord) else None

    def list_reservations(
        self, *, channel: str, order_ref: str | None, after: tuple[int, str], page_size: int
    ) -> Page[ReservationView]:
        """Oldest first (creation time, then id), keyset-paged."""
        rows = self.app.select_reservations(
            channel=channel, order_ref=order_ref, after=after, limit=page_size + 1
        )
        views = [self.get_reservation(row.reservation_id) for row in rows[:page_size]]
        last = rows[page_size - 1] if len(rows) > page_size else None
        next_after = (last.created_at_us, last.reservation_id) if last else None
        return Page(views, next_after)

    def head_position(self) -> int:
        return self.app.head_position()

    # ---- audit (contract §3, §4.4) ------------------------------------------------------------

    def position_as_of(
        self,
        sku: str,
        location_id: str,
        as_of: datetime,
        axis: Axis,
        known_at: datetime | None = None,
        *,
        include_holds: bool = False,
    ) -> PositionView:
        return self.as_of.position_as_of(
            sku, location_id, as_of, axis, known_at, include_holds=include_holds
        )

    def list_movements(
        self,
        sku: str,
        location_id: str,
        *,
        axis: Axis,
        start: datetime | None,
        end: datetime | None,
        after: tuple[int, int],
        page_size: int,
    ) -> Page[LedgerEntryView]:
        """Entries with start <= time < end on the axis, by (time, ledger order)."""
        column = "recorded_at_us" if axis is Axis.RECORDED else "occurred_at_us"
        rows = self.app.ledger_recorder.select_entries_between(
            position_id(sku, location_id),
            column=column,
            from_us=to_micros(start) if start else -(2**62),
            to_us=to_micros(end) if end else 2**62,
            after=after,
            limit=page_size + 1,
        )
        items = [entry_view(row, decode_event(self.app, row)) for row in rows[:page_size]]
        next_after = None
        if len(rows) > page_size:
            last = rows[page_size - 1]
            time_us = last.recorded_at_us if axis is Axis.RECORDED else last.occurred_at_us
            next_after = (time_us, last.version)
        return Page(items, next_after)

    def trace_lot(
        self,
        sku: str,
        lot_id: str,
        *,
        as_of: datetime | None = None,
        after_position: int = 0,
        page_size: int = 100,
    ) -> trace.LotTrace:
        """The recall trace of one lot (contract §2): its entries in ledger order, paged by
        global position, and its buckets per location (now, or as of ``as_of``)."""
        return trace.trace_lot(
            self.app,
            self.as_of,
            sku,
            lot_id,
            now=self.clock(),
            as_of=as_of,
            after_position=after_position,
            page_size=page_size,
        )

    def ledger_entries(self, after_position: int, limit: int) -> list[LedgerEntryView]:
        return list(ledger_entries(self.app, after_position=after_position, limit=limit))

    def ledger_head(self) -> int:
        """The newest entry's ``position`` (0 for an empty ledger)."""
        return self.app.entry_head()[0]

    def verify_position(self, sku: str, location_id: str) -> verify.VerifyProgress:
        return verify.verify_position(self.app, sku, location_id)

    def verify_ledger(self) -> Iterator[verify.VerifyProgress]:
        return verify.verify_ledger(self.app)

    # ---- expiry sweeper ------------------------------------------------------------------------

    def expire_due_reservations(self) -> list[str]:
        """Record EXPIRED for every reservation past its expiry (bounded batches)."""
        expired: list[str] = []
        while True:
            due = self.app.select_due_reservations(
                now_us=to_micros(self.clock()), limit=EXPIRY_BATCH_MAX
            )
            if not due:
                return expired
            done: list[str] = self._submit(CallContext("system"), "expire_due", due).result()
            expired.extend(done)
            if len(due) < EXPIRY_BATCH_MAX:
                return expired

    def start_expiry_sweeper(self, interval_seconds: float) -> None:
        def loop() -> None:
            while not self._sweeper_stop.wait(interval_seconds):
                try:
                    expired = self.expire_due_reservations()
                    if expired:
                        log.info("recorded expiry of %d reservation(s)", len(expired))
                except (StoreUnavailable, OperationalError, InterfaceError) as error:
                    # Expired holds stop counting regardless; recording them can wait.
                    log.warning("expiry sweep skipped, database unavailable: %s", error)
                except Exception:  # keep sweeping; the next pass retries
                    log.exception("expiry sweep failed; will retry")

        self._sweeper = threading.Thread(target=loop, name="expiry-sweeper", daemon=True)
        self._sweeper.start()

    def stop_expiry_sweeper(self) -> None:
        self._sweeper_stop.set()
        if self._sweeper is not None:
            self._sweeper.join(5)
