"""AIP-155 semantics for request ids, shared by every mutating use case."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ledger.domain.errors import RequestIdReused
from ledger.domain.idempotency import IdempotencyKey, fingerprint, request_key_id
from ledger.unit_of_work import UnitOfWork
from ledger.use_cases.context import CallContext


@dataclass(frozen=True)
class RequestKey:
    key_id: UUID
    request_id: str
    fingerprint: str


def request_key(
    ctx: CallContext, request_id: str, kind: str, payload: dict[str, Any]
) -> RequestKey:
    return RequestKey(
        key_id=request_key_id(ctx.principal, request_id),
        request_id=request_id,
        fingerprint=fingerprint(kind, payload),
    )


def previous_result(uow: UnitOfWork, key: RequestKey) -> tuple[dict[str, Any], int] | None:
    """The first result and its ledger position, or None if the key is new.

    Raises RequestIdReused when the key was used for a different payload.
    """
    stored = uow.idempotency_key(key.key_id)
    if stored is None:
        return None
    if stored.fingerprint != key.fingerprint:
        raise RequestIdReused(key.request_id)
    return stored.result, uow.app.notification_id_of(key.key_id, 1) or 0


def remember(uow: UnitOfWork, key: RequestKey, result: dict[str, Any]) -> None:
    uow.remember(
        IdempotencyKey.remember(key.key_id, key.request_id, key.fingerprint, result, uow.now)
    )
