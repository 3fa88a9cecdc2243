"""The rows of the read-model tables, as the store hands them out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PositionRow:
    position_id: str
    sku: str
    location_id: str
    state_json: str


@dataclass(frozen=True)
class PolicyRow:
    policy_id: str
    channel: str
    terms_json: str


@dataclass(frozen=True)
class ItemRow:
    """An item-master change: ``sku`` is None for a Set whose row already exists."""

    item_id: str
    sku: str | None
    tracking: str
    version: int
    ledger_position: int


@dataclass(frozen=True)
class ReadModelRows:
    """Every row of one generation, in key order (comparisons, tests, benchmarks)."""

    generation: int
    position: int
    positions: list[tuple[Any, ...]]
    policies: list[tuple[Any, ...]]
    exceptions: list[tuple[Any, ...]]
    items: list[tuple[Any, ...]] = field(default_factory=list)
