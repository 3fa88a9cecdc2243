"""Operator tools for the dead-letter stream ``INVENTORY_DLQ`` (contract §5).

Dead letters are read with direct gets by sequence (``js.get_msg``), never through a
consumer, so looking at them changes nothing. :func:`replay` re-publishes one to its original
subject with a NEW ``Nats-Msg-Id`` (``replay-<dlq seq>-<original msg id>``) and deletes it
from the DLQ only after the publish was acknowledged. Exactly-once application is still the
ledger's ``(source, message_id)`` dedupe: replaying a payload that was applied before yields a
DUPLICATE, never a second effect.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from nats.js.errors import NotFoundError

from ingest.dlq_headers import (
    HEADER_DESCRIPTION,
    HEADER_FIELD,
    HEADER_MSG_ID,
    HEADER_REASON,
    HEADER_SEQUENCE,
    HEADER_SUBJECT,
    MSG_ID,
)
from ingest.streams import StreamNames, is_token
from ledger.progress import QUIET, Progress


class DeadLetterNotFound(LookupError):
    """No dead letter with that sequence in the DLQ stream."""


@dataclass(frozen=True)
class DeadLetter:
    sequence: int
    subject: str
    reason: str | None
    field: str | None
    description: str | None
    original_subject: str | None
    original_msg_id: str | None
    original_sequence: int | None
    received_at: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReplayResult:
    sequence: int  # the dead letter's DLQ sequence (now deleted)
    subject: str  # where it was re-published
    msg_id: str
    stream_sequence: int  # its new sequence in the movements stream
    duplicate: bool  # the broker dropped it as a duplicate of an earlier replay

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _entry(raw: Any) -> DeadLetter:
    headers = raw.headers or {}
    original_sequence = headers.get(HEADER_SEQUENCE)
    return DeadLetter(
        sequence=int(raw.seq),
        subject=str(raw.subject),
        reason=headers.get(HEADER_REASON),
        field=headers.get(HEADER_FIELD),
        description=headers.get(HEADER_DESCRIPTION),
        original_subject=headers.get(HEADER_SUBJECT),
        original_msg_id=headers.get(HEADER_MSG_ID),
        original_sequence=int(original_sequence)
        if original_sequence and original_sequence.isdigit()
        else None,
        received_at=raw.time.isoformat() if raw.time is not None else None,
    )


async def _get(js: Any, names: StreamNames, sequence: int) -> Any:
    if sequence < 1:
        raise DeadLetterNotFound(f"no dead letter with sequence {sequence}")
    try:
        return await js.get_msg(names.dlq_stream, sequence)
    except NotFoundError:
        raise DeadLetterNotFound(f"no dead letter with sequence {sequence}") from None


async def list_dead_letters(
    js: Any, prefix: str = "", source: str | None = None, limit: int = 100
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters in sequence order, optionally of one ``source`` only."""
    names = StreamNames(prefix)
    if source is not None and not is_token(source):
        raise ValueError(f"source {source!r} is not a valid subject token")
    subject = names.dlq_subject(source) if source is not None else names.dlq_filter
    entries: list[DeadLetter] = []
    sequence = 1
    while len(entries) < limit:
        try:
            raw = await js.get_msg(names.dlq_stream, sequence, subject=subject, next=True)
        except NotFoundError:
            break
        entries.append(_entry(raw))
        sequence = int(raw.seq) + 1
    return entries


async def newest_dead_letters(
    js: Any, prefix: str = "", before: int | None = None, limit: int = 20, scan_max: int = 200
) -> tuple[list[DeadLetter], int | None]:
    """Up to ``limit`` dead letters newest first, of sequences below ``before`` (None: from the
    newest), and the ``before`` of the next, older page (None: there is none).

    Direct gets by sequence downwards from the stream's last; a sequence deleted by a replay
    is skipped, and at most ``scan_max`` sequences are tried per call (a shorter page then
    comes with its ``before``). A missing DLQ stream means nothing was dead-lettered yet."""
    names = StreamNames(prefix)
    try:
        info = await js.stream_info(names.dlq_stream)
    except NotFoundError:
        return [], None
    first, last = int(info.state.first_seq), int(info.state.last_seq)
    sequence = last if before is None else min(last, before - 1)
    entries: list[DeadLetter] = []
    tried = 0
    while sequence >= max(first, 1) and len(entries) < limit and tried < scan_max:
        tried += 1
        with contextlib.suppress(NotFoundError):  # replayed (deleted) meanwhile
            entries.append(_entry(await js.get_msg(names.dlq_stream, sequence)))
        sequence -= 1
    return entries, (sequence + 1 if sequence >= max(first, 1) else None)


@dataclass(frozen=True)
class DeadLetterMessage:
    """One dead letter as stored: its entry, original payload bytes and every header."""

    entry: DeadLetter
    payload: bytes
    headers: dict[str, str]


async def read(js: Any, prefix: str, sequence: int) -> DeadLetterMessage:
    """Dead letter ``sequence`` with its payload and headers (:class:`DeadLetterNotFound`)."""
    raw = await _get(js, StreamNames(prefix), sequence)
    headers = {str(name): str(value) for name, value in (raw.headers or {}).items()}
    return DeadLetterMessage(_entry(raw), raw.data or b"", headers)


async def show(js: Any, prefix: str, sequence: int) -> tuple[DeadLetter, bytes]:
    """One dead letter and its original payload bytes."""
    message = await read(js, prefix, sequence)
    return message.entry, message.payload


def replay_msg_id(sequence: int, original_msg_id: str | None) -> str:
    return f"replay-{sequence}-{original_msg_id or 'none'}"


async def replay(
    js: Any,
    prefix: str,
    sequence: int,
    payload: bytes | None = None,
    progress: Progress = QUIET,
) -> ReplayResult:
    """Re-publish dead letter ``sequence`` (or the operator's fixed ``payload``) to its
    original subject, then delete it from the DLQ once the publish is acknowledged.
    ``progress`` sees one item, done once the dead letter is deleted."""
    progress.phase(f"replay dead letter {sequence}", 1)
    names = StreamNames(prefix)
    raw = await _get(js, names, sequence)
    entry = _entry(raw)
    if payload is not None:
        try:
            value = json.loads(payload)
        except ValueError as error:
            raise ValueError(f"the fixed payload is not JSON: {error}") from None
        if not isinstance(value, dict):
            raise ValueError("the fixed payload must be a JSON object")
    subject = entry.original_subject
    if subject is None or not subject.startswith(names.movements_root + "."):
        raise ValueError(
            f"dead letter {sequence} has no original subject under {names.movements_root}:"
            f" {subject!r}"
        )
    headers = {
        name: value
        for name, value in (raw.headers or {}).items()
        if not name.lower().startswith(("ledger-", "nats-"))
    }
    msg_id = replay_msg_id(sequence, entry.original_msg_id)
    headers[MSG_ID] = msg_id
    ack = await js.publish(
        subject,
        (raw.data or b"") if payload is None else payload,
        headers=headers,
        stream=names.movements_stream,
    )
    # Acknowledged: now (and only now) the dead letter may go.
    with contextlib.suppress(NotFoundError):  # deleted meanwhile by a concurrent replay
        await js.delete_msg(names.dlq_stream, sequence)
    progress.advance()
    return ReplayResult(
        sequence=sequence,
        subject=subject,
        msg_id=msg_id,
        stream_sequence=int(ack.seq),
        duplicate=bool(ack.duplicate),
    )
