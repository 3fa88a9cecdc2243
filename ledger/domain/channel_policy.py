"""Per-channel publishing policy (contract §4.3): eligible locations, share, buffer, cap."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

CHANNEL_NAMESPACE = UUID("a3d5c3c4-52a9-4bd4-8f3c-7f1de0b6a0c2")


# Derived on every command that names it (a SHA-1 each): the busy ones are kept.
@lru_cache(maxsize=65_536)
def channel_policy_id(channel: str) -> UUID:
    return uuid5(CHANNEL_NAMESPACE, channel)


class ChannelPolicy(Aggregate):
    """No policy means: every location, 100 %, no buffer, no cap."""

    class Created(Aggregate.Created):
        channel: str
        recorded_at: datetime

    class Set(Aggregate.Event):
        eligible_location_ids: list[str]
        share_percent: int
        buffer: int
        max_publish: int
        recorded_at: datetime
        request_id: str
        correlation_id: str
        actor: str

        def apply(self, aggregate: Any) -> None:
            aggregate.eligible_location_ids = list(self.eligible_location_ids)
            aggregate.share_percent = self.share_percent
            aggregate.buffer = self.buffer
            aggregate.max_publish = self.max_publish
            aggregate.updated_at = self.recorded_at

    @staticmethod
    def create_id(channel: str) -> UUID:
        return channel_policy_id(channel)

    def __init__(self, channel: str, recorded_at: datetime) -> None:
        self.channel = channel
        self.eligible_location_ids: list[str] = []
        self.share_percent = 100
        self.buffer = 0
        self.max_publish = 0
        self.updated_at = recorded_at

    def is_eligible(self, location_id: str) -> bool:
        return not self.eligible_location_ids or location_id in self.eligible_location_ids

    def channel_available(self, available_to_by_location: dict[str, int]) -> int:
        return channel_available(
            available_to_by_location,
            self.eligible_location_ids,
            self.share_percent,
            self.buffer,
            self.max_publish,
        )


def channel_available(
    available_to_by_location: dict[str, int],
    eligible_location_ids: list[str],
    share_percent: int = 100,
    buffer: int = 0,
    max_publish: int = 0,
) -> int:
    """clamp(floor(sum(eligible available_to) * share / 100) - buffer, 0, max_publish).

    No eligible list means every location; max_publish 0 means no cap (contract §4.3).
    """
    eligible = set(eligible_location_ids)
    total = sum(q for loc, q in available_to_by_location.items() if not eligible or loc in eligible)
    value = max(0, total * share_percent // 100 - buffer)
    return min(value, max_publish) if max_publish else value
