"""Typed Python client of the inventory ledger (``inventory.ledger.v1`` over gRPC).

* :class:`LedgerClient` (sync) and :class:`AsyncLedgerClient` (asyncio), the same methods;
* results are the generated protobuf messages of :mod:`inventory.ledger.v1`;
* failures raise :class:`LedgerError` subclasses, one per gRPC status, with the
  ``google.rpc`` details unpacked (:class:`InsufficientAvailability` has ``short_lines``);
* writes carry a ``request_id`` (given or a fresh UUID4) that every retry repeats; only
  ``UNAVAILABLE`` and ``ABORTED`` are retried, with jittered exponential back-off;
* every call has a deadline and an ``x-correlation-id`` (given or generated).

See ``docs/clients.md`` in the repository.
"""

from inventory_ledger_client._core import (
    DEFAULT_STREAM_TIMEOUT,
    DEFAULT_TIMEOUT,
    CallInfo,
    new_correlation_id,
    new_request_id,
)
from inventory_ledger_client._requests import line, movement
from inventory_ledger_client.aio import AsyncLedgerClient, AsyncLedgerStream
from inventory_ledger_client.client import LedgerClient, LedgerStream
from inventory_ledger_client.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InsufficientAvailability,
    Internal,
    InvalidArgument,
    LedgerError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    PreconditionViolation,
    ResourceExhausted,
    ShortLine,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from inventory_ledger_client.retry import RETRYABLE_CODES, RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_STREAM_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "RETRYABLE_CODES",
    "Aborted",
    "AlreadyExists",
    "AsyncLedgerClient",
    "AsyncLedgerStream",
    "CallInfo",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InsufficientAvailability",
    "Internal",
    "InvalidArgument",
    "LedgerClient",
    "LedgerError",
    "LedgerStream",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PreconditionViolation",
    "ResourceExhausted",
    "RetryPolicy",
    "ShortLine",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "line",
    "movement",
    "new_correlation_id",
    "new_request_id",
]
