"""Who is calling and under which correlation id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.domain.position import EventMeta

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class CallContext:
    principal: str = ANONYMOUS
    correlation_id: str = ""
    # Seconds left before the caller's deadline (None: no deadline).
    time_remaining_seconds: float | None = None
    # Channels the principal may act for (None: every channel; docs/security.md).
    channels: frozenset[str] | None = None

    def may_act_for(self, channel: str) -> bool:
        return self.channels is None or channel in self.channels

    def meta(
        self,
        now: datetime,
        *,
        request_id: str = "",
        source: str = "api",
        message_id: str = "",
        occurred_at: datetime | None = None,
    ) -> EventMeta:
        return EventMeta(
            occurred_at=occurred_at or now,
            recorded_at=now,
            source=source,
            message_id=message_id,
            request_id=request_id,
            correlation_id=self.correlation_id,
            actor=self.principal,
        )
