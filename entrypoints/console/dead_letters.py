"""Dead-lettered ingest messages on the operations page: a list (newest first, paged) and one
dead letter with its original payload and headers (docs/console.md, "Operations").

Dead letters live in the NATS JetStream stream ``INVENTORY_DLQ``, which the gRPC API does not
expose, so with ``ledger console --nats URL`` the console reads them itself, through the
reading code of ``ingest.dlq`` (direct gets by sequence: looking changes nothing). It never
replays or deletes one; that stays ``ledger dlq replay``. The connection is opened on the
first page that needs it and kept; a failure (no server, no stream, a timeout) becomes a
"dead letters unavailable" block on the page, never a 500, and the next page tries again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from entrypoints.console.app import InputError, Visit
from ingest import dlq
from ledger.nats_connect import NatsUnreachable, close, connect_once, describe

log = logging.getLogger("ledger.console")

CONNECT_SECONDS = 2.0
READ_SECONDS = 8.0  # one page's reads in all
PAGE_SIZE = 20
SEQUENCE_MAX = 2**63


@dataclass
class Unavailable(Exception):
    """NATS could not be asked; ``reason`` says why (shown on the page)."""

    reason: str

    def __str__(self) -> str:
        return self.reason


class DeadLetterSource:
    """The console's own NATS connection, opened lazily, for reading the DLQ (``url`` None:
    dead letters are not shown)."""

    def __init__(self, url: str | None, prefix: str = "") -> None:
        self.url = url or None
        self.prefix = prefix
        self._nc: Any = None
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.url is not None

    async def _jetstream(self) -> Any:
        async with self._lock:
            if self._nc is not None and not self._nc.is_connected:
                stale, self._nc = self._nc, None
                await close(stale)
            if self._nc is None:
                assert self.url is not None
                self._nc = await connect_once(self.url, "ledger-console", CONNECT_SECONDS)
            return self._nc.jetstream()

    async def _ask(self, reading: Any) -> Any:
        """``await reading(js)`` within :data:`READ_SECONDS`, failures as :class:`Unavailable`
        (the connection is dropped then, so the next page reconnects)."""
        if self.url is None:
            raise Unavailable("the console was started without --nats")
        try:
            js = await asyncio.wait_for(self._jetstream(), CONNECT_SECONDS * 2)
            return await asyncio.wait_for(reading(js), READ_SECONDS)
        except dlq.DeadLetterNotFound:
            raise
        except NatsUnreachable as error:
            await self._drop()
            raise Unavailable(f"cannot reach NATS at {self.url}: {error.reason}") from None
        except Exception as error:  # a timeout, JetStream off, a lost connection: say so
            log.warning("dead letters unavailable: %s", describe(error))
            await self._drop()
            raise Unavailable(describe(error)) from None

    async def newest(self, before: int | None) -> tuple[list[dlq.DeadLetter], int | None]:
        result: tuple[list[dlq.DeadLetter], int | None] = await self._ask(
            lambda js: dlq.newest_dead_letters(js, self.prefix, before, PAGE_SIZE)
        )
        return result

    async def read(self, sequence: int) -> dlq.DeadLetterMessage:
        message: dlq.DeadLetterMessage = await self._ask(
            lambda js: dlq.read(js, self.prefix, sequence)
        )
        return message

    async def _drop(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            await close(nc)

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


def source_of(request: Request) -> DeadLetterSource:
    source: DeadLetterSource = request.app.state.dead_letters
    return source


def _when(text: str | None) -> str:
    return (text or "").replace("+00:00", "Z")


def _row(entry: dlq.DeadLetter) -> dict[str, Any]:
    return {
        "sequence": entry.sequence,
        "received_at": _when(entry.received_at),
        "original_subject": entry.original_subject or "",
        "reason": entry.reason or "",
        "field": entry.field or "",
        "description": entry.description or "",
        "message_id": entry.original_msg_id or "",
    }


async def listing(request: Request, before: int | None = None) -> dict[str, Any]:
    """The dead-letter block's context: ``enabled``, ``problem`` (why not shown), ``rows``
    (newest first) and ``older`` (the next page's ``before``, or None)."""
    source = source_of(request)
    block: dict[str, Any] = {"enabled": source.enabled, "problem": "", "rows": [], "older": None}
    if not source.enabled:
        return block
    try:
        entries, older = await source.newest(before)
    except Unavailable as error:
        block["problem"] = str(error)
        return block
    block["rows"] = [_row(entry) for entry in entries]
    block["older"] = older
    return block


def _sequence(text: str, name: str) -> int:
    if not text.isdigit() or not 0 < int(text) < SEQUENCE_MAX:
        raise InputError(f"{name} must be a DLQ stream sequence (a positive whole number)")
    return int(text)


async def dead_letters(request: Request, visit: Visit) -> Response:
    """``/operations/dead-letters?before=N``: one page of the list, newest first."""
    await visit.client.get_projection_status()  # the operations page's scope (query)
    text = request.query_params.get("before", "")
    before = _sequence(text, "before") if text else None
    return visit.console.render(
        request,
        visit.session,
        "dead_letters.html",
        {"dead_letters": await listing(request, before), "before": before},
    )


def payload_view(payload: bytes) -> dict[str, Any]:
    """The payload as text to show: pretty-printed JSON when it parses, else the text as it
    came, else (not UTF-8) base64; the template escapes it."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return {"format": "base64", "text": base64.b64encode(payload).decode("ascii")}
    try:
        value = json.loads(text)
    except ValueError:
        return {"format": "text", "text": text}
    return {"format": "json", "text": json.dumps(value, indent=2, ensure_ascii=False)}


async def dead_letter(request: Request, visit: Visit) -> Response:
    """``/operations/dead-letters/{sequence}``: one dead letter, its payload and headers."""
    await visit.client.get_projection_status()  # the operations page's scope (query)
    sequence = _sequence(str(request.path_params["sequence"]), "the sequence")
    source = source_of(request)
    context: dict[str, Any] = {"sequence": sequence, "enabled": source.enabled, "problem": ""}
    if source.enabled:
        try:
            message = await source.read(sequence)
        except dlq.DeadLetterNotFound:
            return visit.console.error_page(
                request,
                visit.session,
                404,
                "Not found",
                f"No dead letter with sequence {sequence} (replayed, or never there).",
            )
        except Unavailable as error:
            context["problem"] = str(error)
        else:
            context["entry"] = _row(message.entry)
            context["original_sequence"] = message.entry.original_sequence
            context["payload"] = payload_view(message.payload)
            context["size"] = len(message.payload)
            context["headers"] = sorted(message.headers.items())
    return visit.console.render(request, visit.session, "dead_letter.html", context)
