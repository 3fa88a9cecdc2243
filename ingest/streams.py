"""JetStream topology of the ingest (SPEC §5): streams, subjects and the durable consumer.

Everything here is idempotent: creating what exists binds to it (and brings a stream's
configuration up to date). A non-empty ``prefix`` isolates a whole topology on a shared server
(tests): stream names become ``<prefix>_INVENTORY_MOVEMENTS`` and subject roots
``<prefix>.inventory.movements`` etc.
"""

from __future__ import annotations

import contextlib
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

MOVEMENTS_STREAM = "INVENTORY_MOVEMENTS"
DLQ_STREAM = "INVENTORY_DLQ"
MOVEMENTS_ROOT = "inventory.movements"
DLQ_ROOT = "inventory.dlq"
DURABLE = "ledger-ingest"
DUPLICATE_WINDOW_SECONDS = 120.0
ACK_WAIT_SECONDS = 30.0
# Deliveries before JetStream gives up on a message; nak back-off is capped at ~5 s, so this
# rides out an outage of many hours. Poison messages never get here: they are term()-ed.
MAX_DELIVER = 10_000

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)


def is_token(text: str) -> bool:
    """A single, safe subject token (also what a ``source`` must look like on a subject)."""
    return bool(_TOKEN.fullmatch(text))


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
    def movements_root(self) -> str:
        return self._root(MOVEMENTS_ROOT)

    @property
    def dlq_root(self) -> str:
        return self._root(DLQ_ROOT)

    @property
    def movements_filter(self) -> str:
        return f"{self.movements_root}.>"

    @property
    def dlq_filter(self) -> str:
        return f"{self.dlq_root}.>"

    def movement_subject(self, source: str) -> str:
        if not is_token(source):
            raise ValueError(f"source {source!r} is not a valid subject token")
        return f"{self.movements_root}.{source}"

    def dlq_subject(self, source: str | None) -> str:
        """``inventory.dlq.<source>``, or ``inventory.dlq._invalid`` for an unusable source."""
        token = source if source is not None and is_token(source) else "_invalid"
        return f"{self.dlq_root}.{token}"


def movements_stream_config(names: StreamNames) -> StreamConfig:
    return StreamConfig(
        name=names.movements_stream,
        subjects=[names.movements_filter],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
    )


def dlq_stream_config(names: StreamNames) -> StreamConfig:
    return StreamConfig(
        name=names.dlq_stream,
        subjects=[names.dlq_filter],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
    )


def consumer_config(names: StreamNames, durable: str = DURABLE) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ACK_WAIT_SECONDS,
        max_deliver=MAX_DELIVER,
        filter_subject=names.movements_filter,
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


async def ensure_streams(
    js: Any, names: StreamNames | None = None
) -> tuple[StreamInfo, StreamInfo]:
    """Create (or bind to) the movements stream and the DLQ stream."""
    names = names or StreamNames()
    movements = await _ensure_stream(js, movements_stream_config(names))
    dlq = await _ensure_stream(js, dlq_stream_config(names))
    return movements, dlq


async def ensure_consumer(
    js: Any, names: StreamNames | None = None, durable: str = DURABLE
) -> ConsumerInfo:
    """Create (or bind to, updating what the server allows) the durable pull consumer."""
    names = names or StreamNames()
    return await js.add_consumer(names.movements_stream, consumer_config(names, durable))


async def ensure_topology(
    js: Any, names: StreamNames | None = None, durable: str = DURABLE
) -> ConsumerInfo:
    names = names or StreamNames()
    await ensure_streams(js, names)
    return await ensure_consumer(js, names, durable)


async def delete_topology(js: Any, names: StreamNames) -> None:
    """Delete both streams (tests); missing streams are ignored."""
    for stream in (names.movements_stream, names.dlq_stream):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(stream)
