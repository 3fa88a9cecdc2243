"""Publish the ledger's exceptions on ``inventory.exceptions.<type>`` (contract §5).

The projection runner raises exceptions while it folds facts and keeps them queryable in the
read model (``ListExceptions``); this publisher tails that table in ledger order and puts each
exception on JetStream stream ``INVENTORY_EXCEPTIONS``. It keeps no state of its own: the
last message of the stream carries the key ``(ledger_position, seq)`` of the newest exception
published, so a restarted publisher resumes right after it. Each message's ``Nats-Msg-Id`` is
that key, so a crash between publish and the next read, or two ingest processes publishing
side by side, leave one copy per exception within the broker's duplicate window; subscribers
that must be exact dedupe on the ``Ledger-Exception-Key`` header.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from nats.js.errors import NotFoundError

from ingest.bridge import MSG_ID, pause
from ingest.streams import StreamNames
from ledger.logs import one_line
from ledger.metrics import definitions as metrics
from projections.position_state import LedgerExceptionRecord
from projections.store import ReadModelStore

log = logging.getLogger(__name__)

HEADER_KEY = "Ledger-Exception-Key"
BATCH = 500


def exception_key(record: LedgerExceptionRecord) -> str:
    return f"{record.ledger_position}:{record.seq}"


def exception_payload(record: LedgerExceptionRecord) -> bytes:
    return json.dumps(
        {
            "type": record.type,
            "sku": record.sku,
            "location_id": record.location_id,
            "bucket": record.bucket,
            "quantity": record.quantity,
            "detail": record.detail,
            "source": record.source,
            "message_id": record.message_id,
            "occurred_at": record.occurred_at.isoformat(),
            "recorded_at": record.recorded_at.isoformat(),
            "ledger_position": record.ledger_position,
            "seq": record.seq,
        },
        sort_keys=True,
        ensure_ascii=False,
    ).encode()


class ExceptionPublisher:
    def __init__(
        self,
        store: ReadModelStore,
        js: Any,
        *,
        names: StreamNames | None = None,
        poll_seconds: float = 0.5,
    ) -> None:
        self.store = store
        self.js = js
        self.names = names or StreamNames()
        self.poll_seconds = poll_seconds
        self.published = 0
        self._cursor: tuple[int, int] | None = None

    async def _last_published(self) -> tuple[int, int]:
        """The key in the stream's last message; (0, -1) for an empty stream."""
        info = await self.js.stream_info(self.names.exceptions_stream)
        if not info.state.last_seq:
            return (0, -1)
        try:
            last = await self.js.get_msg(self.names.exceptions_stream, info.state.last_seq)
        except NotFoundError:  # purged: start over; the broker's dedupe covers the window
            return (0, -1)
        position, seq = str((last.headers or {})[HEADER_KEY]).split(":")
        return (int(position), int(seq))

    async def publish_pending(self) -> int:
        """Publish every exception after the cursor; returns how many were published."""
        if self._cursor is None:
            self._cursor = await self._last_published()
        count = 0
        while True:
            records = await asyncio.to_thread(
                self.store.exceptions,
                exception_type=None,
                sku=None,
                location_id=None,
                after=self._cursor,
                limit=BATCH,
            )
            for record in records:
                key = exception_key(record)
                ack = await self.js.publish(
                    self.names.exception_subject(record.type),
                    exception_payload(record),
                    stream=self.names.exceptions_stream,
                    headers={MSG_ID: f"exception-{key}", HEADER_KEY: key},
                )
                self._cursor = (record.ledger_position, record.seq)
                count += 1
                if not ack.duplicate:  # a copy the broker dropped was counted before
                    metrics.EXCEPTIONS_PUBLISHED.labels(record.type).inc()
            if len(records) < BATCH:
                break
        self.published += count
        return count

    async def run(self, stop_event: asyncio.Event) -> None:
        while not stop_event.is_set():
            try:
                await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # broker or read model down: try again later
                log.warning("exception publishing failed: %s", one_line(error))
                self._cursor = None  # re-read the stream: a publish may have landed
            await pause(stop_event, self.poll_seconds)
