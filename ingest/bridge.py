"""JetStream → ledger bridge (contract §5).

Two durable pull consumers, one per lane (``ingest.streams.Lane``): the live lane is always
served first; the bulk lane (snapshot files, backfills) gets a batch only when the live lane
is caught up (its last batch was not full), so a backfill delays a shipment by at most one
bulk batch. Each fetched batch is handled as follows:

1. every message is parsed with :func:`~ingest.message.parse_message`; an invalid one is
   published to ``inventory.dlq.<source>`` (payload and headers kept, error in
   ``Ledger-Error-*`` headers) and, only once that publish is acknowledged, ``term()``-ed;
2. all valid messages go to the ledger in ONE ``record_movements(..., reject_reused=False)``
   call, i.e. one database transaction; while it runs the messages get ``in_progress()``
   every ``heartbeat_seconds`` (default: a third of AckWait, at most 10 s) so a slow commit
   is not redelivered under our feet;
3. after the call returned (the transaction committed) RECORDED and DUPLICATE messages are
   acked (each RECORDED one observed in ``ledger_movement_lag_seconds``: from its JetStream
   stream timestamp to now) and REUSED ones (same ``source``/``message_id``, other payload)
   are dead-lettered with reason ``MESSAGE_ID_REUSED``, INVALID ones (the movement does not
   fit its SKU's item tracking, which only the writer knows) with ``TRACKING_MISMATCH``;
4. if the store fails (``StoreUnavailable`` or anything else), every valid message of the
   batch is ``nak(delay=...)``-ed with exponential back-off and never dead-lettered: nothing
   was committed, and the ledger's ``(source, message_id)`` dedupe makes redelivery safe.

A crash anywhere (before commit, between commit and ack) therefore only causes redelivery,
which the ledger turns into DUPLICATE outcomes.

:meth:`IngestBridge.run` overlaps step 1 of the next batch with steps 2-3 of the current
one (issue 20): while the ledger commits a batch, the next is fetched and parsed (and held
by heartbeats from its fetch on); it is handed to the ledger as soon as the current one is
answered (committed or failed; its acks then run beside the next commit), so the ledger
still sees one batch at a time, in fetch order. If the store failed (step 4), the waiting
batch is nak-ed untried with the same delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ingest.message import InvalidMessage, parse_message
from ingest.streams import (
    ACK_WAIT_SECONDS,
    DURABLE,
    Lane,
    StreamNames,
    is_token,
    lane_durable,
)
from ingest.units import UnitTable
from ledger.domain.errors import TrackingMismatch
from ledger.domain.movements import Movement
from ledger.logs import one_line
from ledger.metrics import definitions as metrics
from ledger.use_cases.context import CallContext
from ledger.use_cases.movements import DUPLICATE, INVALID, RECORDED, REUSED

log = logging.getLogger(__name__)

HEADER_REASON = "Ledger-Error-Reason"
HEADER_FIELD = "Ledger-Error-Field"
HEADER_DESCRIPTION = "Ledger-Error-Description"
HEADER_SUBJECT = "Ledger-Original-Subject"
HEADER_SEQUENCE = "Ledger-Original-Sequence"
HEADER_MSG_ID = "Ledger-Original-Msg-Id"
MSG_ID = "Nats-Msg-Id"
REASON_REUSED = "MESSAGE_ID_REUSED"
REASON_TRACKING = TrackingMismatch.reason_code
HEADER_VALUE_MAX = 1024
# How long a fetch waits on a lane the bridge expects to find empty, when the other lane may
# have work: short, so neither lane waits on the other's idle long-poll.
QUICK_FETCH_SECONDS = 0.05
# in_progress() at most this far apart, and at least three times per AckWait, so one late or
# lost heartbeat does not get a slow batch redelivered (a fixed 10 s let any AckWait under
# 10 s redeliver every batch slower than it).
HEARTBEAT_MAX_SECONDS = 10.0


def default_heartbeat_seconds(ack_wait_seconds: float = ACK_WAIT_SECONDS) -> float:
    """``min(10 s, AckWait / 3)``; AckWait is ``LEDGER_INGEST_ACK_WAIT_SECONDS`` in ``ledger
    ingest`` (ledger.config.ingest_ack_wait_from_env)."""
    return min(HEARTBEAT_MAX_SECONDS, ack_wait_seconds / 3)


@dataclass
class BridgeCounters:
    processed: int = 0  # RECORDED
    duplicates: int = 0  # DUPLICATE
    dead_lettered: int = 0
    redeliveries: int = 0  # messages seen with num_delivered > 1
    store_failures: int = 0  # batches nak-ed because the store failed
    batches: int = 0


@dataclass
class _Batch:
    """One fetch: its valid messages (parsed) and the heartbeat that holds them."""

    lane: Lane
    fetched: int  # messages in the fetch, dead-lettered ones included
    started: float  # perf_counter at the fetch (ledger_ingest_batch_seconds)
    valid: list[tuple[Any, Movement]] = dataclasses.field(default_factory=list)
    heartbeat: asyncio.Task[None] | None = None
    # Set by IngestBridge._apply once the ledger answered (True: committed, False: the store
    # failed and the batch is nak-ed), before the acks: the next batch may go to the ledger.
    answered: asyncio.Future[bool] | None = None

    async def stop_heartbeat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.heartbeat
            self.heartbeat = None


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def publish_movement(
    js: Any,
    payload: Mapping[str, Any],
    prefix: str = "",
    *,
    timeout: float | None = None,
    lane: Lane = Lane.LIVE,
) -> Any:
    """Publish one canonical message on ``inventory.movements.<source>`` (or
    ``inventory.movements.bulk.<source>``), with ``Nats-Msg-Id`` = ``message_id`` (the
    broker's dedupe window; the ledger's own dedupe is the guarantee). Returns the PubAck."""
    names = StreamNames(prefix)
    return await js.publish(
        names.movement_subject(str(payload["source"]), lane),
        canonical_json(payload),
        timeout=timeout,
        stream=names.movements_stream,
        headers={MSG_ID: str(payload["message_id"])},
    )


async def pause(stop_event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop_event`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop_event.wait(), seconds)


# A JetStream v1 ack subject: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
# seq>.<timestamp ns>.<pending> (nats-py's Msg.Metadata reads the same tokens).
_V1_ACK_TOKENS = 9


def _delivery(msg: Any) -> tuple[int, float]:
    """How many times the message was delivered, and its stream timestamp (Unix seconds):
    read off the ack subject directly for the common v1 form (Msg.metadata builds a datetime
    and two dataclasses per message), else through nats-py."""
    reply = msg.reply
    if reply and reply.startswith("$JS.ACK."):
        tokens = reply.split(".")
        if len(tokens) == _V1_ACK_TOKENS:
            return int(tokens[4]), int(tokens[7]) / 1_000_000_000
    metadata = msg.metadata
    return metadata.num_delivered, metadata.timestamp.timestamp()


def _header_value(text: str) -> str:
    flat = " ".join(str(text).split())
    return flat[:HEADER_VALUE_MAX]


def _payload_source(raw: bytes) -> str | None:
    """Best effort: the ``source`` of a payload that may well be garbage."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    source = value.get("source") if isinstance(value, dict) else None
    return source if isinstance(source, str) and is_token(source) else None


class IngestBridge:
    """Moves canonical movement messages from the durable consumer into the ledger."""

    def __init__(
        self,
        service: Any,
        js: Any,
        *,
        names: StreamNames | None = None,
        durable: str = DURABLE,
        units: UnitTable | None = None,
        ctx: CallContext | None = None,
        fetch_timeout: float = 1.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 5.0,
        heartbeat_seconds: float | None = None,
        ack_wait_seconds: float = ACK_WAIT_SECONDS,
    ) -> None:
        self.service = service
        self.js = js
        self.names = names or StreamNames()
        self.durable = durable
        self.units = units
        self.ctx = ctx or CallContext("ingest")
        self.fetch_timeout = fetch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.heartbeat_seconds = (
            default_heartbeat_seconds(ack_wait_seconds)
            if heartbeat_seconds is None
            else heartbeat_seconds
        )
        self.counters = BridgeCounters()
        self._consecutive_failures = 0
        self._subscriptions: dict[Lane, Any] = {}

    # counters as attributes, for callers that do not care about the dataclass
    @property
    def processed(self) -> int:
        return self.counters.processed

    @property
    def duplicates(self) -> int:
        return self.counters.duplicates

    @property
    def dead_lettered(self) -> int:
        return self.counters.dead_lettered

    @property
    def redeliveries(self) -> int:
        return self.counters.redeliveries

    async def _subscription(self, lane: Lane) -> Any:
        if lane not in self._subscriptions:
            self._subscriptions[lane] = await self.js.pull_subscribe(
                self.names.lane_filter(lane),
                durable=lane_durable(self.durable, lane),
                stream=self.names.movements_stream,
            )
        return self._subscriptions[lane]

    async def close(self) -> None:
        for subscription in self._subscriptions.values():
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions.clear()

    def next_backoff(self) -> float:
        """Delay for the current run of store failures: initial · 2^(n-1), capped."""
        exponent = max(0, self._consecutive_failures - 1)
        return min(self.backoff_max, self.backoff_initial * (2 ** min(exponent, 30)))

    # ---- one batch -----------------------------------------------------------------------------

    async def run_once(
        self, batch_size: int = 100, lane: Lane = Lane.LIVE, timeout: float | None = None
    ) -> int:
        """Fetch and handle one batch of a lane; returns how many messages it held (0: none
        arrived within ``timeout``, default ``fetch_timeout``). Raises only for broker
        problems (fetch/DLQ publish)."""
        batch = await self._fetch(batch_size, lane, timeout)
        if batch is None:
            return 0
        await self._apply(batch)
        return batch.fetched

    async def _fetch(self, batch_size: int, lane: Lane, timeout: float | None) -> _Batch | None:
        """Fetch a batch, dead-letter its invalid messages and start the heartbeat of the
        others; None when no message arrived within ``timeout``."""
        psub = await self._subscription(lane)
        try:
            messages = await psub.fetch(
                batch_size, timeout=self.fetch_timeout if timeout is None else timeout
            )
        except TimeoutError:  # nats-py also raises the builtin one when the fetch's deadline
            return None  # runs out just as the server answers "no messages": not broker trouble
        if not messages:
            return None
        self.counters.batches += 1
        batch = _Batch(lane, len(messages), time.perf_counter())
        redelivered = 0
        for msg in messages:
            if _delivery(msg)[0] > 1:
                redelivered += 1
            try:
                movement = parse_message(msg.data, self.units)
            except InvalidMessage as error:
                await self._dead_letter(
                    msg, error.reason_code, error.field, error.description, lane
                )
                continue
            batch.valid.append((msg, movement))
        if redelivered:
            self.counters.redeliveries += redelivered
            metrics.INGEST_REDELIVERIES.labels(lane.value).inc(redelivered)
        if batch.valid:
            # From now until its acks: a batch waiting for the one before it is held too.
            batch.heartbeat = asyncio.get_running_loop().create_task(
                self._heartbeat([msg for msg, _ in batch.valid])
            )
        return batch

    async def _apply(self, batch: _Batch) -> bool:
        """Record the batch's valid messages in one call, then settle each; False (and every
        valid message nak-ed) when the store failed."""
        try:
            return await self._record(batch) if batch.valid else True
        finally:
            # Conservative if it ended otherwise (cancelled, a bug): nothing overtakes it.
            self._answer(batch, False)
            await batch.stop_heartbeat()
            metrics.INGEST_BATCH_SECONDS.labels(batch.lane.value).observe(
                time.perf_counter() - batch.started
            )

    async def _record(self, batch: _Batch) -> bool:
        valid, lane = batch.valid, batch.lane
        try:
            future = self.service.record_movements(
                self.ctx, [movement for _, movement in valid], reject_reused=False
            )
            results = await asyncio.wrap_future(future)
            committed = time.time()
        except Exception as error:  # nothing committed: retry later, never dead-letter
            self._consecutive_failures += 1
            self.counters.store_failures += 1
            metrics.INGEST_STORE_FAILURES.labels(lane.value).inc()
            delay = self.next_backoff()
            log.warning(
                "store failed applying %d message(s), nak with %.2fs delay: %s",
                len(valid),
                delay,
                one_line(error),
            )
            await self._nak_all(batch, delay)
            self._answer(batch, False)
            return False
        self._consecutive_failures = 0
        self._answer(batch, True)
        # Committed: now (and only now) acknowledge.
        processed = duplicates = 0
        recorded: list[tuple[str, float, datetime | None]] = []
        try:
            for (msg, movement), result in zip(valid, results, strict=True):
                outcome = result.outcome
                if outcome == RECORDED:
                    processed += 1
                    recorded.append((movement.source, _delivery(msg)[1], movement.occurred_at))
                elif outcome == DUPLICATE:
                    duplicates += 1
                elif outcome == INVALID:
                    # Only the writer knows the SKU's tracking: poison like a schema violation.
                    await self._dead_letter(
                        msg, REASON_TRACKING, result.field, result.description, lane
                    )
                    continue
                elif outcome == REUSED:
                    await self._dead_letter(
                        msg,
                        REASON_REUSED,
                        "message_id",
                        f"{movement.source}/{movement.message_id} was recorded before with another"
                        " payload",
                        lane,
                    )
                    continue
                await msg.ack()
        finally:  # one metric update per batch, even when an ack failed midway
            metrics.observe_recorded_batch(lane.value, committed, recorded)
            if processed:
                self.counters.processed += processed
                metrics.INGEST_MESSAGES.labels(lane.value, "processed").inc(processed)
            if duplicates:
                self.counters.duplicates += duplicates
                metrics.INGEST_MESSAGES.labels(lane.value, "duplicate").inc(duplicates)
        return True

    @staticmethod
    def _answer(batch: _Batch, stored: bool) -> None:
        if batch.answered is not None and not batch.answered.done():
            batch.answered.set_result(stored)

    @staticmethod
    async def _nak_all(batch: _Batch, delay: float) -> None:
        for msg, _ in batch.valid:
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)

    async def _heartbeat(self, messages: Sequence[Any]) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            for msg in messages:
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def _dead_letter(
        self, msg: Any, reason: str, field: str, description: str, lane: Lane = Lane.LIVE
    ) -> None:
        """Publish to the DLQ, then term() the original; if the publish is not acknowledged
        the original is nak-ed instead (and dead-lettered on its redelivery)."""
        source = _payload_source(msg.data) or self.names.source_of_subject(msg.subject)
        headers = {
            name: value
            for name, value in (msg.headers or {}).items()
            if not name.lower().startswith("nats-")
        }
        original_id = (msg.headers or {}).get(MSG_ID)
        if original_id is not None:
            headers[HEADER_MSG_ID] = original_id
        sequence = msg.metadata.sequence.stream
        headers.update(
            {
                HEADER_REASON: _header_value(reason),
                HEADER_FIELD: _header_value(field),
                HEADER_DESCRIPTION: _header_value(description),
                HEADER_SUBJECT: msg.subject,
                HEADER_SEQUENCE: str(sequence),
                # A redelivery of the same original (crash before term) is deduped by the DLQ.
                MSG_ID: f"dlq-{self.names.movements_stream}-{sequence}",
            }
        )
        try:
            await self.js.publish(
                self.names.dlq_subject(source),
                msg.data,
                headers=headers,
                stream=self.names.dlq_stream,
            )
        except Exception as error:
            log.warning("DLQ publish failed, nak the original instead: %s", one_line(error))
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.backoff_max)
            return
        await msg.term()
        self.counters.dead_lettered += 1
        metrics.INGEST_MESSAGES.labels(lane.value, "dead_lettered").inc()
        metrics.count_dead_letter(source, reason)
        log.info("dead-lettered %s seq %d: %s %s", msg.subject, sequence, reason, field)

    async def _has_pending(self, lane: Lane) -> bool:
        """Whether the lane's consumer may have work: undelivered messages, or unacknowledged
        ones (nak-ed with a delay after a store failure, or held by another bridge), which
        come back through a fetch only."""
        info = await (await self._subscription(lane)).consumer_info()
        return bool(info.num_pending or info.num_ack_pending)

    # ---- the loop ------------------------------------------------------------------------------

    async def run(
        self, stop_event: asyncio.Event, batch_size: int = 100, bulk_batch_size: int | None = None
    ) -> None:
        """Handle batches until ``stop_event`` is set: live first, bulk when live is caught
        up (see the module docstring).

        Pipelined one batch deep: the next batch is fetched, parsed and its invalid messages
        dead-lettered while the ledger commits the one before; it is handed to the ledger as
        soon as that one is answered (the acks of a committed batch then run beside the next
        commit, in the task of their batch), so batches still reach the ledger one at a time
        and in fetch order. If the store failed, the waiting batch is nak-ed with the same
        delay, untried, and the lanes are read again after the back-off."""
        bulk_batch_size = bulk_batch_size or batch_size
        bulk_may_have_work = True
        bulk_next = False  # the live lane came back short: the bulk lane gets the next fetch
        in_ledger: _Batch | None = None  # handed to the ledger, not answered yet
        tasks: set[asyncio.Task[bool]] = set()  # one per batch handed over, until acked
        try:
            while not stop_event.is_set():
                batch: _Batch | None = None
                broker_trouble = False
                try:
                    if bulk_next:
                        bulk_next = False
                        batch = await self._fetch(bulk_batch_size, Lane.BULK, QUICK_FETCH_SECONDS)
                        bulk_may_have_work = batch is not None
                    elif bulk_may_have_work and not await self._has_pending(Lane.LIVE):
                        bulk_next = True  # one consumer-info round trip, not an idle long-poll
                        continue
                    else:
                        timeout = QUICK_FETCH_SECONDS if bulk_may_have_work else self.fetch_timeout
                        batch = await self._fetch(batch_size, Lane.LIVE, timeout)
                        bulk_next = (batch.fetched if batch is not None else 0) < batch_size
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # broker trouble: settle, wait a moment, carry on
                    log.warning("ingest batch failed: %s", one_line(error))
                    broker_trouble = True
                    bulk_next = False
                stored = True
                if in_ledger is not None:
                    try:
                        assert in_ledger.answered is not None
                        stored = await asyncio.shield(in_ledger.answered)
                    except BaseException:
                        if batch is not None:  # cancelled: it comes back after AckWait
                            await asyncio.shield(batch.stop_heartbeat())
                        raise
                    in_ledger = None
                broker_trouble |= self._reap(tasks)
                if not stored:
                    if batch is not None:
                        await self._release(batch, self.next_backoff())
                    bulk_next = False
                    await pause(stop_event, self.next_backoff())
                    continue
                if batch is not None:
                    batch.answered = asyncio.get_running_loop().create_future()
                    tasks.add(asyncio.create_task(self._apply(batch)))
                    in_ledger = batch
                if broker_trouble:
                    await pause(stop_event, self.backoff_max)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        if tasks:  # stopping: the last batches' commits and acks
            await asyncio.wait(tasks)
        self._reap(tasks)

    @staticmethod
    def _reap(tasks: set[asyncio.Task[bool]]) -> bool:
        """Forget the batches fully handled; True if the broker failed while one was acked
        or dead-lettered (logged here)."""
        trouble = False
        for task in [task for task in tasks if task.done()]:
            tasks.discard(task)
            error = None if task.cancelled() else task.exception()
            if error is not None:
                log.warning("ingest batch failed: %s", one_line(error))
                trouble = True
        return trouble

    async def _release(self, batch: _Batch, delay: float) -> None:
        """A fetched batch that is not tried now (the one before it failed): nak-ed untried,
        so it comes back after the batch before it."""
        await batch.stop_heartbeat()
        await self._nak_all(batch, delay)
