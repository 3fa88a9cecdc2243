"""What the sync and asyncio clients share: options, channels, metadata, ids, conversions."""

from __future__ import annotations

import datetime as dt
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from inventory_ledger_client.errors import (
    CORRELATION_HEADER,
    DeadlineExceeded,
    LedgerError,
    correlation_id_in,
    error_for,
    status_of,
)

DEFAULT_TIMEOUT = 10.0
DEFAULT_STREAM_TIMEOUT = 300.0
# What the server accepts as x-correlation-id (entrypoints/grpc/rpc.py); anything else it replaces.
CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")

Token = str | Callable[[], str] | None
Pem = bytes | str | os.PathLike[str] | None
Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class CallInfo:
    """One logical call as the client saw it, passed to the client's ``on_call`` hook.

    ``correlation_id`` is the one the server echoed (the sent one when no answer arrived);
    ``attempts`` counts retries too; ``code`` is ``OK`` or the final failure's code. For a
    stream, the hook runs when the stream ends.
    """

    method: str
    request_id: str | None
    correlation_id: str
    attempts: int
    code: grpc.StatusCode
    duration: float


OnCall = Callable[[CallInfo], None] | None


def new_request_id() -> str:
    """A fresh idempotency key (UUID4)."""
    return str(uuid.uuid4())


def new_correlation_id() -> str:
    """A fresh correlation id (32 hex digits; the server's own format)."""
    return uuid.uuid4().hex


def check_correlation_id(value: str) -> str:
    if not CORRELATION_ID.match(value):
        raise ValueError(
            f"correlation id {value!r} is not 1-128 characters of [A-Za-z0-9._:/-]; "
            "the server would replace it"
        )
    return value


def check_timeout(timeout: float | None, default: float | None) -> float | None:
    value = default if timeout is None else timeout
    if value is not None and value <= 0:
        raise ValueError(f"timeout must be > 0 seconds, not {value!r}")
    return value


def _read_pem(value: Pem) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode("ascii")
    return Path(value).read_bytes()


def channel_credentials(
    *,
    tls: bool,
    root_certificates: Pem,
    private_key: Pem,
    certificate_chain: Pem,
    credentials: grpc.ChannelCredentials | None,
) -> grpc.ChannelCredentials | None:
    """The TLS credentials the options ask for, or None for plaintext."""
    if credentials is not None:
        return credentials
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("mutual TLS needs both private_key and certificate_chain")
    if not (tls or root_certificates is not None or private_key is not None):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(root_certificates),
        private_key=_read_pem(private_key),
        certificate_chain=_read_pem(certificate_chain),
    )


def channel_options(
    options: Sequence[tuple[str, Any]], server_name: str | None
) -> list[tuple[str, Any]]:
    merged = list(options)
    if server_name is not None:
        merged.append(("grpc.ssl_target_name_override", server_name))
    return merged


def call_metadata(
    correlation_id: str, token: Token, extra: Metadata
) -> tuple[tuple[str, str | bytes], ...]:
    metadata: list[tuple[str, str | bytes]] = [(CORRELATION_HEADER, correlation_id)]
    if token is not None:
        value = token() if callable(token) else token
        metadata.append(("authorization", f"Bearer {value}"))
    metadata.extend(extra)
    return tuple(metadata)


class Deadline:
    """The absolute deadline of one logical call (shared by all its attempts)."""

    def __init__(self, timeout: float | None) -> None:
        self.started = time.monotonic()
        self.at = None if timeout is None else self.started + timeout

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def allows_sleep(self, seconds: float) -> bool:
        return self.at is None or time.monotonic() + seconds < self.at

    def elapsed(self) -> float:
        return time.monotonic() - self.started


async def call_unary_async(multicallable: Any, request: Message, **options: Any) -> tuple[Any, Any]:
    """Await one ``grpc.aio`` attempt: ``(response, call)``, the call for its metadata."""
    call = multicallable(request, **options)
    return await call, call


def call_unary(multicallable: Any, request: Message, **options: Any) -> tuple[Any, Any]:
    """One blocking attempt: ``(response, call)``, as :func:`call_unary_async` gives asyncio."""
    return multicallable.with_call(request, **options)


def rpc_error(
    error: grpc.RpcError,
    *,
    method: str,
    correlation_id: str,
    request_id: str | None,
    attempts: int,
    request: Message | None,
) -> LedgerError:
    """The typed exception for a failed attempt (sync ``grpc.Call`` or ``AioRpcError``)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    trailing = _safe(error, "trailing_metadata")
    initial = _safe(error, "initial_metadata")
    echoed = correlation_id_in(initial) or correlation_id_in(trailing)
    return error_for(
        code,
        details or code.name,
        status=status_of(trailing),
        correlation_id=echoed or correlation_id,
        request_id=request_id,
        method=method,
        attempts=attempts,
        request=request,
    )


def local_deadline_error(
    *, method: str, correlation_id: str, request_id: str | None, attempts: int
) -> DeadlineExceeded:
    return DeadlineExceeded(
        "the call's deadline passed before an attempt could be made",
        correlation_id=correlation_id,
        request_id=request_id,
        method=method,
        attempts=attempts,
    )


def _safe(error: grpc.RpcError, name: str) -> Any:
    getter = getattr(error, name, None)
    if getter is None:
        return None
    try:
        return getter()
    except Exception:  # a call that never got an answer may not have metadata
        return None


# ---- conversions -----------------------------------------------------------------------------


def duration(value: float | dt.timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: give a timezone (e.g. datetime.UTC)")
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(dt.UTC))
    return message


def enum_value(value: int | str, prefix: str, enum: Any) -> Any:
    """``"recorded"`` / ``"AXIS_RECORDED"`` / ``1`` → the enum's value (an ``int``)."""
    if isinstance(value, int):
        return value
    name = value.upper()
    if not name.startswith(prefix):
        name = prefix + name
    return enum.Value(name)
