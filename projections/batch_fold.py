"""Folding a batch of notifications in memory into position states, channel policies and
exceptions, continuing the rows stored before it (loaded in one round trip) or the states
the runner kept from its own previous batch."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from ledger.application import InventoryLedger
from ledger.domain.channel_policy import ChannelPolicy
from ledger.domain.item_policy import ItemPolicy, Tracking
from ledger.domain.position import Position
from projections.availability import PolicyTerms
from projections.position_state import LedgerExceptionRecord, ProjectedPosition
from projections.rows import ItemRow, PolicyRow, PositionRow

# Folded states kept between batches (saves loading and parsing rows the runner wrote
# itself); dropped whenever the runner's position moves other than by its own commit.
STATE_CACHE_MAX = 100_000
_POSITION_TOPIC = f"{Position.__module__}:{Position.__qualname__}."
_POLICY_TOPIC = f"{ChannelPolicy.__module__}:{ChannelPolicy.__qualname__}."
_ITEM_TOPIC = f"{ItemPolicy.__module__}:{ItemPolicy.__qualname__}."
_OPENED_TOPIC = get_topic(Position.Opened)
_POLICY_CREATED_TOPIC = get_topic(ChannelPolicy.Created)

S = TypeVar("S")

Loader = Callable[
    [Collection[str], Collection[str]], tuple[dict[str, PositionRow], dict[str, PolicyRow]]
]


class StateCache:
    """Folded states as of the runner's applied position (valid only while nobody else
    writes its generation: cleared on any conflict, failure or switch)."""

    def __init__(self) -> None:
        self.positions: dict[str, ProjectedPosition] = {}
        self.policies: dict[str, tuple[str, PolicyTerms]] = {}

    def clear(self) -> None:
        self.positions.clear()
        self.policies.clear()

    def keep(self, batch: FoldedBatch) -> None:
        """After ``batch`` committed: its states are the stored ones."""
        if len(self.positions) + len(batch.positions) > STATE_CACHE_MAX:
            self.positions.clear()  # simple bound; the rows are reloaded when needed
        self.positions.update(batch.positions)
        self.policies.update(batch.policies)


class FoldedBatch:
    """The in-memory side of one batch: folded states, policies and exceptions."""

    def __init__(self, cache: StateCache | None = None) -> None:
        self.cache = cache or StateCache()
        self.positions: dict[str, ProjectedPosition] = {}
        self.policies: dict[str, tuple[str, PolicyTerms]] = {}
        self.exceptions: list[LedgerExceptionRecord] = []
        # Item-master rows need no load: each event carries the whole new value, and a Set
        # updates the row its Created (this batch or earlier) inserted.
        self.items: dict[str, ItemRow] = {}

    def add_all(self, app: InventoryLedger, notes: Sequence[Notification], load: Loader) -> None:
        """Fold ``notes``; the stored rows they continue are loaded in one round trip."""
        wanted_positions: set[str] = set()
        wanted_policies: set[str] = set()
        created: set[str] = set()  # created in these notes: nothing stored to load
        relevant: list[tuple[Notification, bool]] = []
        for note in notes:
            topic = note.topic
            if topic.startswith(_POSITION_TOPIC):
                key = _key(note.originator_id)
                if topic == _OPENED_TOPIC:
                    created.add(key)
                else:
                    _start_from(key, self.positions, self.cache.positions, wanted_positions)
                relevant.append((note, True))
            elif topic.startswith(_POLICY_TOPIC):
                key = _key(note.originator_id)
                if topic == _POLICY_CREATED_TOPIC:
                    created.add(key)
                else:
                    _start_from(key, self.policies, self.cache.policies, wanted_policies)
                relevant.append((note, False))
            elif topic.startswith(_ITEM_TOPIC):
                self._item(app.mapper.to_domain_event(note), note.id)
        wanted_positions -= created
        wanted_policies -= created
        if wanted_positions or wanted_policies:
            positions, policies = load(wanted_positions, wanted_policies)
            for key, row in positions.items():
                self.positions[key] = ProjectedPosition.from_json(
                    row.sku, row.location_id, row.state_json
                )
            for key, policy in policies.items():
                self.policies[key] = (
                    policy.channel,
                    PolicyTerms(**json.loads(policy.terms_json)),
                )
        for note, is_position in relevant:
            event = app.mapper.to_domain_event(note)
            if is_position:
                self.exceptions.extend(self._position(event).fold(event, note.id))
            else:
                self._policy(event)

    def _position(self, event: Any) -> ProjectedPosition:
        key = event.originator_id.hex
        position = self.positions.get(key)
        if position is None:
            if not isinstance(event, Position.Opened):
                raise AssertionError(f"position {key} has events but no Opened")
            position = self.positions[key] = ProjectedPosition(event.sku, event.location_id)
        return position

    def _policy(self, event: Any) -> None:
        key = event.originator_id.hex
        if isinstance(event, ChannelPolicy.Created):
            self.policies[key] = (event.channel, PolicyTerms())
            return
        if key not in self.policies:
            raise AssertionError(f"channel policy {key} has events but no Created")
        channel = self.policies[key][0]
        self.policies[key] = (
            channel,
            PolicyTerms(
                eligible_location_ids=list(event.eligible_location_ids),
                share_percent=event.share_percent,
                buffer=event.buffer,
                max_publish=event.max_publish,
            ),
        )

    def _item(self, event: Any, ledger_position: int) -> None:
        key = event.originator_id.hex
        sku: str | None
        if isinstance(event, ItemPolicy.Created):
            sku, tracking = event.sku, str(Tracking.NONE)
        else:
            earlier = self.items.get(key)
            sku, tracking = (earlier.sku if earlier else None), event.tracking
        # Versions count the sets, as GetItemPolicy answers (the Created event is not one).
        version = event.originator_version - 1
        self.items[key] = ItemRow(key, sku, tracking, version, ledger_position)

    def item_rows(self) -> list[ItemRow]:
        return list(self.items.values())

    def position_rows(self) -> list[PositionRow]:
        return [
            PositionRow(key, p.sku, p.location_id, p.to_json()) for key, p in self.positions.items()
        ]

    def policy_rows(self) -> list[PolicyRow]:
        return [
            PolicyRow(key, channel, json.dumps(asdict(terms), sort_keys=True))
            for key, (channel, terms) in self.policies.items()
        ]


def _key(originator_id: UUID | str) -> str:
    # The ledger's recorders always return UUIDs; the library's type also allows a string.
    return originator_id.hex if isinstance(originator_id, UUID) else UUID(originator_id).hex


def _start_from(key: str, folded: dict[str, S], cached: dict[str, S], wanted: set[str]) -> None:
    """Where a state this batch continues starts: the batch's own, the cache's, or its stored
    row (``wanted``: loaded for the whole batch in one round trip)."""
    if key in folded:
        return
    state = cached.get(key)
    if state is None:
        wanted.add(key)
    else:
        folded[key] = state
