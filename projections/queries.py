"""Reads served from the read models (and, for CONSISTENCY_STRONG, from the ledger)."""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger.domain.channel_policy import ChannelPolicy, channel_policy_id
from ledger.domain.item_policy import Tracking
from ledger.domain.lots import lots_of
from ledger.domain.position import Position, inbound_outstanding, position_id
from ledger.service import LedgerService
from projections.availability import AvailabilityView, PolicyTerms, compute_availability
from projections.availability_cache import AvailabilityCache, scope_of
from projections.position_state import LedgerExceptionRecord, ProjectedPosition
from projections.runner import ProjectionRunner
from projections.store import PositionRow, ReadModelStore

WAIT_POLL_SECONDS = 0.02

LOT_EXPIRING = "LOT_EXPIRING"
# A lot still "holds stock" for LOT_EXPIRING when one of these buckets is positive.
EXPIRING_LOT_BUCKETS = ("on_hand", "receiving", "quarantine", "in_transit_inbound")
# Page key of the expiring-lots listing: (expires_at, sku, location_id, lot_id).
ExpiringLotKey = tuple[datetime, str, str, str]


class ProjectionBehind(Exception):
    """Raised when the projection has not reached ``min_position`` within the deadline."""

    reason = "PROJECTION_BEHIND"

    def __init__(self, wanted: int, applied: int) -> None:
        super().__init__(f"projection at {applied} has not reached {wanted} in time")
        self.wanted = wanted
        self.applied = applied


@dataclass(frozen=True)
class InTransitView:
    transfer_id: str
    sku: str
    from_location_id: str
    to_location_id: str
    dispatched: int
    received: int
    dispatched_at: datetime | None
    expected_at: datetime | None
    lot_id: str = ""  # LOT SKUs: a transfer is listed once per lot it carries


@dataclass(frozen=True)
class ProjectionStatusView:
    head_position: int
    applied_position: int

    @property
    def lag(self) -> int:
        return max(0, self.head_position - self.applied_position)


class ReadModelQueries:
    def __init__(
        self,
        service: LedgerService,
        store: ReadModelStore,
        runner: ProjectionRunner | None = None,
        *,
        cache_skus: int = 0,
    ) -> None:
        """``cache_skus``: bound of the eventual-availability cache (0: no cache). With a
        runner it follows the runner's batches; else :meth:`follow_read_model` starts it."""
        self.service = service
        self.store = store
        self.runner = runner  # in-process runner, if any: waits without polling the table
        self.cache = AvailabilityCache(cache_skus)
        if runner is not None and self.cache.enabled:
            runner.add_change_listener(self.cache.apply)
            self.cache.follow(runner.generation, runner.applied_position)

    def follow_read_model(self, *, notified: bool) -> None:
        """The projection runs in another process: keep the cache current from its NOTIFY
        payloads (``notified``: :meth:`on_notify` gets them) and a poll of the tracking row."""
        self.cache.poll(self.store.tracking, feed=notified)

    def on_notify(self, payload: str) -> None:
        """A NOTIFY of the read models' ``applied_channel`` (the listener's thread)."""
        self.cache.apply_payload(payload, scope_of(self.store.schema, self.store.prefix))

    # ---- availability -------------------------------------------------------------------------

    def availability(
        self,
        sku: str,
        channel: str,
        *,
        strong: bool = False,
        min_position: int = 0,
        horizon: datetime | None = None,
        timeout: float = 5.0,
    ) -> AvailabilityView:
        if strong:
            return self._strong_availability(sku, channel, horizon)
        if min_position:
            self.wait_for(min_position, timeout)
        generation, applied, rows, terms_json = self.store.availability_inputs(sku, channel)
        terms = PolicyTerms(**json.loads(terms_json)) if terms_json else PolicyTerms()
        positions = [_state(row) for row in rows]
        view = compute_availability(
            sku, channel, positions, terms, self.service.clock(), applied, horizon
        )
        # Shared only now, after the first computation converted them (holds to a book).
        self.cache.fill(generation, applied, sku, positions, channel, terms)
        return view

    def cached_availability(
        self,
        sku: str,
        channel: str,
        *,
        min_position: int = 0,
        horizon: datetime | None = None,
    ) -> AvailabilityView | None:
        """An eventual answer from memory (no I/O: fit for the event loop), or None when the
        cache does not hold ``sku`` and ``channel`` at ``min_position`` or later. Computed
        now from the cached states, like the database path computes it from the rows."""
        found = self.cache.lookup(sku, channel, min_position)
        if found is None:
            return None
        return compute_availability(
            sku, channel, found.states, found.terms, self.service.clock(), found.position, horizon
        )

    def _strong_availability(
        self, sku: str, channel: str, horizon: datetime | None
    ) -> AvailabilityView:
        app = self.service.app
        head = app.head_position()
        locations = app.locations_of(sku)
        # The positions and the channel's policy, fast-forwarded in one statement from the
        # service's read cache (no copies: the aggregates are only read).
        *positions, policy = self.service.reads.get_many(
            [*(position_id(sku, location) for location in locations), channel_policy_id(channel)]
        )
        terms = (
            PolicyTerms(
                list(policy.eligible_location_ids),
                policy.share_percent,
                policy.buffer,
                policy.max_publish,
            )
            if isinstance(policy, ChannelPolicy)
            else PolicyTerms()
        )
        found = [p for p in positions if isinstance(p, Position)]
        return compute_availability(sku, channel, found, terms, self.service.clock(), head, horizon)

    def wait_for(self, position: int, timeout: float) -> None:
        if self.runner is not None:
            if not self.runner.wait_for(position, timeout):
                raise ProjectionBehind(position, self.runner.applied_position)
            return
        deadline = time.monotonic() + timeout
        while (applied := self.store.applied_position()) < position:
            if time.monotonic() >= deadline:
                raise ProjectionBehind(position, applied)
            time.sleep(WAIT_POLL_SECONDS)

    # ---- item master -----------------------------------------------------------------------------

    def tracking_of(self, skus: Collection[str], *, min_position: int = 0) -> dict[str, Tracking]:
        """Each SKU's item tracking from the item-master read model (one read for the whole
        batch; a SKU without an item policy is NONE), after ``min_position`` is applied."""
        if min_position:
            self.wait_for(min_position, 5.0)
        return self.store.tracking_of(skus)

    # ---- in transit, exceptions, status --------------------------------------------------------

    def in_transit(self, *, sku: str | None, to_location_id: str | None) -> list[InTransitView]:
        """Open transfers, ordered by (destination, sku, transfer_id) or (sku, ...)."""
        rows = (
            self.store.positions_of_sku(sku)[1]
            if sku is not None
            else self.store.positions_at_location(to_location_id or "")
        )
        found = []
        for row in rows:
            state = _state(row)
            for key, transfer in sorted(state.inbound.items()):
                if inbound_outstanding(transfer) <= 0:
                    continue
                found.append(
                    InTransitView(
                        transfer_id=transfer.get("transfer_id", key),
                        lot_id=transfer.get("lot_id", ""),
                        sku=row.sku,
                        from_location_id=transfer["from_location_id"],
                        to_location_id=row.location_id,
                        dispatched=transfer["dispatched"],
                        received=transfer["received"],
                        dispatched_at=transfer["dispatched_at"],
                        expected_at=transfer["expected_at"],
                    )
                )
        return found

    def exceptions(
        self,
        *,
        exception_type: str | None,
        sku: str | None,
        location_id: str | None,
        after: tuple[int, int],
        limit: int,
    ) -> list[tuple[tuple[int, int], LedgerExceptionRecord]]:
        """Exceptions with their page keys (ledger position, index within the event)."""
        records = self.store.exceptions(
            exception_type=exception_type,
            sku=sku,
            location_id=location_id,
            after=after,
            limit=limit,
        )
        return [((r.ledger_position, r.seq), r) for r in records]

    def expiring_lots(
        self,
        *,
        within: timedelta,
        sku: str | None,
        location_id: str | None,
        after: ExpiringLotKey | None,
        limit: int,
    ) -> list[tuple[ExpiringLotKey, LedgerExceptionRecord]]:
        """The lots expiring in (now, now + within] that still hold stock at a position, as
        LOT_EXPIRING exceptions with their page keys (expiry, sku, location, lot), computed
        now from the read model; ``after``: the last key of the previous page."""
        now = self.service.clock()
        applied, rows = self.store.lot_positions(sku=sku, location_id=location_id)
        found: list[tuple[ExpiringLotKey, LedgerExceptionRecord]] = []
        for row in rows:
            for lot_id, lot in lots_of(_state(row)).items():
                expires_at = lot.get("expires_at")
                if expires_at is None or not now < expires_at <= now + within:
                    continue
                # Damaged stock is not counted: it cannot be sold before the expiry anyway.
                held = {b: lot.get(b, 0) for b in EXPIRING_LOT_BUCKETS if lot.get(b, 0) > 0}
                if not held:
                    continue
                key = (expires_at, row.sku, row.location_id, lot_id)
                if after is not None and key <= after:
                    continue
                found.append((key, _expiring_lot(key, lot.get("on_hand", 0), held, applied, now)))
        found.sort(key=lambda item: item[0])
        return found[:limit]

    def status(self) -> ProjectionStatusView:
        applied = (
            self.runner.applied_position
            if self.runner is not None
            else self.store.applied_position()
        )
        return ProjectionStatusView(self.service.app.head_position(), applied)


def _expiring_lot(
    key: ExpiringLotKey, on_hand: int, held: dict[str, int], applied: int, now: datetime
) -> LedgerExceptionRecord:
    expires_at, sku, location_id, lot_id = key
    others = ", ".join(f"{b} {q}" for b, q in held.items() if b != "on_hand")
    return LedgerExceptionRecord(
        ledger_position=applied,
        type=LOT_EXPIRING,
        sku=sku,
        location_id=location_id,
        bucket="on_hand",
        quantity=on_hand,
        detail=f"lot {lot_id} expires {expires_at.isoformat()}" + (f"; {others}" if others else ""),
        source="",
        message_id="",
        occurred_at=expires_at,
        recorded_at=now,  # not recorded: computed at the time of the call
    )


def _state(row: PositionRow) -> ProjectedPosition:
    return ProjectedPosition.from_json(row.sku, row.location_id, row.state_json)
