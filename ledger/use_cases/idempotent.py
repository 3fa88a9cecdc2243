"""AIP-155 semantics for request ids, shared by every mutating use case."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from eventsourcing.application import Recording

from ledger.domain.errors import RequestIdReused
from ledger.domain.idempotency import IdempotencyKey, fingerprint, request_key_id
from ledger.unit_of_work import (
    EventRef,
    Finisher,
    Mark,
    PendingInThisCommit,
    UnitOfWork,
    position_of,
    recorded_position,
)
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
    """The first result and the ledger position of its last event, or None if the key is new.

    Raises RequestIdReused when the key was used for a different payload.
    """
    if uow.is_pending_key(key.key_id):
        # A batch-mate used this request id: answer after its commit, from the next batch.
        raise PendingInThisCommit(key.request_id)
    stored = uow.idempotency_key(key.key_id)
    if stored is None:
        return None
    if stored.fingerprint != key.fingerprint:
        raise RequestIdReused(key.request_id)
    events = [(hex_id, version) for hex_id, version in stored.result["events"]]
    return stored.result["view"], recorded_position(uow.app, events)


def remember(
    uow: UnitOfWork, key: RequestKey, view: dict[str, Any], events: list[EventRef]
) -> None:
    """Store the result with the events it wrote, in the same transaction as those events."""
    result = {"view": view, "events": [list(ref) for ref in events]}
    uow.remember(
        IdempotencyKey.remember(key.key_id, key.request_id, key.fingerprint, result, uow.now)
    )


# The answer views below are frozen dataclasses with ``to_dict`` and a ``ledger_position``.


def replayed(
    stored: tuple[dict[str, Any], int], from_dict: Callable[[dict[str, Any]], Any]
) -> Finisher:
    """The first answer (``previous_result``), with the ledger position of the events the
    first call wrote."""
    result, position = stored
    view = replace(from_dict(result), ledger_position=position)
    return lambda _: view


def written(uow: UnitOfWork, key: RequestKey, view: Any, mark: Mark) -> Finisher:
    """Remember ``view`` with the events written since ``mark``; once committed, answer it
    with their ledger position (what ``min_position`` takes)."""
    events = uow.written_since(mark)
    remember(uow, key, view.to_dict(), events)

    def finish(recordings: list[Recording]) -> Any:
        return replace(view, ledger_position=position_of(recordings, events))

    return finish
