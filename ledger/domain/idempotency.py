"""Durable idempotency keys, stored as aggregates with deterministic ids.

A key's first event is written in the same transaction as the command's effects, so the
event store's uniqueness on (id, version) makes "applied at most once" a database fact.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

IDEMPOTENCY_NAMESPACE = UUID("0b8f8a1e-7f7d-4f5e-8d1e-3c8f2a6b9e41")


def request_key_id(principal: str, request_id: str) -> UUID:
    """AIP-155 keys are scoped to the calling principal."""
    return uuid5(IDEMPOTENCY_NAMESPACE, f"request\x1f{principal}\x1f{request_id}")


def movement_key_id(source: str, message_id: str) -> UUID:
    """Movements are idempotent on (source, message_id), whoever sends them."""
    return uuid5(IDEMPOTENCY_NAMESPACE, f"movement\x1f{source}\x1f{message_id}")


def fingerprint(kind: str, payload: dict[str, Any]) -> str:
    canonical = json.dumps([kind, payload], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyKey(Aggregate):
    """Remembers a successful command: its payload fingerprint and its result."""

    class Created(Aggregate.Created):
        key: str
        fingerprint: str
        result: dict[str, Any]
        recorded_at: datetime

    def __init__(
        self, key: str, fingerprint: str, result: dict[str, Any], recorded_at: datetime
    ) -> None:
        self.key = key
        self.fingerprint = fingerprint
        self.result = result
        self.recorded_at = recorded_at

    @classmethod
    def remember(
        cls,
        key_id: UUID,
        key: str,
        fingerprint: str,
        result: dict[str, Any],
        recorded_at: datetime,
    ) -> IdempotencyKey:
        return cls._create(
            cls.Created,
            id=key_id,
            key=key,
            fingerprint=fingerprint,
            result=result,
            recorded_at=recorded_at,
        )
