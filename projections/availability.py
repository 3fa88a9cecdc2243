"""Channel availability of one SKU from position states (contract §2, §4.1, §4.3): pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ledger.domain.channel_policy import channel_available


class PositionLike(Protocol):
    location_id: str

    def available(self, now: datetime) -> int: ...
    def available_to(self, channel: str, now: datetime) -> int: ...
    def projected_available_to(self, channel: str, now: datetime, horizon: datetime) -> int: ...


@dataclass(frozen=True)
class PolicyTerms:
    """A channel's publishing policy; the defaults are the contract's "no policy"."""

    eligible_location_ids: list[str] = field(default_factory=list)
    share_percent: int = 100
    buffer: int = 0
    max_publish: int = 0

    def is_eligible(self, location_id: str) -> bool:
        return not self.eligible_location_ids or location_id in self.eligible_location_ids

    def publish(self, available_to_by_location: dict[str, int]) -> int:
        return channel_available(
            available_to_by_location,
            self.eligible_location_ids,
            self.share_percent,
            self.buffer,
            self.max_publish,
        )


@dataclass(frozen=True)
class LocationFigures:
    location_id: str
    available_to: int
    eligible: bool
    projected_available: int


@dataclass(frozen=True)
class AvailabilityView:
    sku: str
    channel: str
    channel_available: int
    network_available: int
    locations: list[LocationFigures]
    projection_position: int
    projected_available: int


def compute_availability(
    sku: str,
    channel: str,
    positions: list[Any],
    terms: PolicyTerms,
    now: datetime,
    projection_position: int,
    horizon: datetime | None = None,
) -> AvailabilityView:
    """``positions``: every position of ``sku``, aggregates (STRONG) or projected states
    (EVENTUAL) alike; both answer with the domain's formulas, so the two paths agree."""
    locations = []
    for position in sorted(positions, key=lambda p: p.location_id):
        free = position.available_to(channel, now)
        # Without a horizon there is no dated figure: 0, like the channel's.
        dated = position.projected_available_to(channel, now, horizon) if horizon is not None else 0
        locations.append(
            LocationFigures(
                position.location_id, free, terms.is_eligible(position.location_id), dated
            )
        )
    return AvailabilityView(
        sku=sku,
        channel=channel,
        channel_available=terms.publish({f.location_id: f.available_to for f in locations}),
        network_available=sum(max(0, p.available(now)) for p in positions),
        locations=locations,
        projection_position=projection_position,
        projected_available=(
            terms.publish({f.location_id: f.projected_available for f in locations})
            if horizon is not None
            else 0
        ),
    )
