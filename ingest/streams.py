"""JetStream topology of the ingest (contract §5): streams, subjects and the durable consumer.

Everything here is idempotent: creating what exists binds to it (and brings a stream's
configuration up to date). A non-empty ``prefix`` isolates a whole topology on a shared server
(tests): stream names become ``<prefix>_INVENTORY_MOVEMENTS`` and subject roots
``<prefix>.inventory.movements`` etc.
"""

from __future__ import annotations

import contextlib
import enum
import re
from dataclasses import dataclass
from typing import Any

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import NotFoundError

from ledger.config import DEFAULT_INGEST_ACK_WAIT_SECONDS

MOVEMENTS_STREAM = "INVENTORY_MOVEMENTS"
DLQ_STREAM = "INVENTORY_DLQ"
EXCEPTIONS_STREAM = "INVENTORY_EXCEPTIONS"
MOVEMENTS_ROOT = "inventory.movements"
DLQ_ROOT = "inventory.dlq"
EXCEPTIONS_ROOT = "inventory.exceptions"
DURABLE = "ledger-ingest"
# Bulk feeds (snapshot files, backfills) travel on inventory.movements.bulk.<source> and have
# their own durable consumer, so the bridge can serve the live lane first. A source may still
# be called "bulk": its live subject inventory.movements.bulk has one token fewer.
BULK_TOKEN = "bulk"
DUPLICATE_WINDOW_SECONDS = 120.0
# How long JetStream waits for an ack before redelivering (LEDGER_INGEST_ACK_WAIT_SECONDS):
# longer than the slowest batch commit, short enough that a killed bridge's unacked
# messages come back soon.
ACK_WAIT_SECONDS = DEFAULT_INGEST_ACK_WAIT_SECONDS
# Deliveries before JetStream gives up on a message; nak back-off is capped at ~5 s, so this
# rides out an outage of many hours. Poison messages never get here: they are term()-ed.
MAX_DELIVER = 10_000

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)


def is_token(text: str) -> bool:
    """A single, safe subject token (also what a ``source`` must look like on a subject)."""
    return bool(_TOKEN.fullmatch(text))


class Lane(enum.Enum):
    """Ingest lanes: LIVE (shipments, receipts, reservation-linked movements) is served
    before BULK (snapshot files, backfills)."""

    LIVE = "live"
    BULK = "bulk"


def lane_durable(durable: str, lane: Lane) -> str:
    """The durable consumer of a lane: ``ledger-ingest`` and ``ledger-ingest-bulk``."""
    return f"{durable}-{BULK_TOKEN}" if lane is Lane.BULK else durable


@dataclass(frozen=True)
class StreamNames:
    """Stream names and subject roots, optionally isolated by a prefix."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if self.prefix and not is_token(self.prefix):
            raise ValueError(f"prefix must match [A-Za-z0-9_-]{{1,64}}, not {self.prefix!r}")

    def _stream(self, name: str) -> str:
        return f"{self.prefix}_{name}" if self.prefix else name

    def _root(self, root: str) -> str:
        return f"{self.prefix}.{root}" if self.prefix else root

    @property
    def movements_stream(self) -> str:
        return self._stream(MOVEMENTS_STREAM)

    @property
    def dlq_stream(self) -> str:
        return self._stream(DLQ_STREAM)

    @property
    def exceptions_stream(self) -> str:
        return self._stream(EXCEPTIONS_STREAM)

    @property
    def exceptions_root(self) -> str:
        return self._root(EXCEPTIONS_ROOT)

    @property
    def exceptions_filter(self) -> str:
        return f"{self.exceptions_root}.>"

    def exception_subject(self, exception_type: str) -> str:
        """``inventory.exceptions.<type>`` (types are the ledger's own upper-case names)."""
        if not is_token(exception_type):
            raise ValueError(f"exception type {exception_type!r} is not a subject token")
        return f"{self.exceptions_root}.{exception_type}"

    @property
    def movements_root(self) -> str:
        return self._root(MOVEMENTS_ROOT)

    @property
    def dlq_root(self) -> str:
        return self._root(DLQ_ROOT)

    @property
    def movements_filter(self) -> str:
        """Both lanes (the stream's subjects)."""
        return f"{self.movements_root}.>"

    @property
    def live_filter(self) -> str:
        return f"{self.movements_root}.*"

    @property
    def bulk_filter(self) -> str:
        return f"{self.movements_root}.{BULK_TOKEN}.>"

    def lane_filter(self, lane: Lane) -> str:
        return self.bulk_filter if lane is Lane.BULK else self.live_filter

    @property
    def dlq_filter(self) -> str:
        return f"{self.dlq_root}.>"

    def movement_subject(self, source: str, lane: Lane | None = None) -> str:
        """``inventory.movements.<source>`` (live) or ``inventory.movements.bulk.<source>``."""
        if not is_token(source):
            raise ValueError(f"source {source!r} is not a valid subject token")
        if lane is Lane.BULK:
            return f"{self.movements_root}.{BULK_TOKEN}.{source}"
        return f"{self.movements_root}.{source}"

    def source_of_subject(self, subject: str) -> str | None:
        """The ``<source>`` token of a movement subject of either lane, if it is one."""
        tail = subject.removeprefix(self.movements_root + ".")
        if tail == subject:
            return None
        tail = tail.removeprefix(BULK_TOKEN + ".") if tail.count(".") == 1 else tail
        return tail if is_token(tail) else None

    def dlq_subject(self, source: str | None) -> str:
        """``inventory.dlq.<source>``, or ``inventory.dlq._invalid`` for an unusable source."""
        token = source if source is not None and is_token(source) else "_invalid"
        return f"{self.dlq_root}.{token}"


def stream_configs(names: StreamNames) -> list[StreamConfig]:
    """The movements, DLQ and exceptions streams: file storage, the same duplicate window."""
    return [
        StreamConfig(
            name=name,
            subjects=[subjects],
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
        )
        for name, subjects in (
            (names.movements_stream, names.movements_filter),
            (names.dlq_stream, names.dlq_filter),
            (names.exceptions_stream, names.exceptions_filter),
        )
    ]


def consumer_config(
    names: StreamNames,
    durable: str = DURABLE,
    lane: Lane = Lane.LIVE,
    ack_wait_seconds: float = ACK_WAIT_SECONDS,
) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=lane_durable(durable, lane),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_seconds,
        max_deliver=MAX_DELIVER,
        filter_subject=names.lane_filter(lane),
    )


async def _ensure_stream(js: Any, config: StreamConfig) -> StreamInfo:
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        return await js.add_stream(config)
    current = info.config
    if (
        sorted(current.subjects or []) != sorted(config.subjects or [])
        or current.duplicate_window != config.duplicate_window
    ):
        return await js.update_stream(config)
    return info


async def ensure_streams(js: Any, names: StreamNames | None = None) -> list[StreamInfo]:
    """Create (or bind to) the movements, DLQ and exceptions streams."""
    names = names or StreamNames()
    return [await _ensure_stream(js, config) for config in stream_configs(names)]


async def ensure_consumers(
    js: Any,
    names: StreamNames | None = None,
    durable: str = DURABLE,
    ack_wait_seconds: float = ACK_WAIT_SECONDS,
) -> dict[Lane, ConsumerInfo]:
    """Create (or bind to, updating what the server allows, the filter subject included)
    one durable pull consumer per lane."""
    names = names or StreamNames()
    return {
        lane: await js.add_consumer(
            names.movements_stream, consumer_config(names, durable, lane, ack_wait_seconds)
        )
        for lane in Lane
    }


async def ensure_topology(
    js: Any,
    names: StreamNames | None = None,
    durable: str = DURABLE,
    ack_wait_seconds: float = ACK_WAIT_SECONDS,
) -> dict[Lane, ConsumerInfo]:
    names = names or StreamNames()
    await ensure_streams(js, names)
    return await ensure_consumers(js, names, durable, ack_wait_seconds)


async def delete_topology(js: Any, names: StreamNames) -> None:
    """Delete the streams (tests); missing streams are ignored."""
    for stream in (names.movements_stream, names.dlq_stream, names.exceptions_stream):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(stream)
