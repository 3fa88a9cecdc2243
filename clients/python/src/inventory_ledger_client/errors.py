"""One exception class per gRPC status, with the ``google.rpc`` details unpacked (contract §4.5).

Every failed call raises a subclass of :class:`LedgerError`; the original ``grpc.RpcError`` is
its ``__cause__``. The server sends a ``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer; its details are unpacked into :attr:`LedgerError.details` and into typed attributes:

* ``ErrorInfo``           → :attr:`LedgerError.reason`, :attr:`~LedgerError.domain`,
  :attr:`~LedgerError.metadata`
* ``BadRequest``          → :attr:`InvalidArgument.field_violations`
* ``PreconditionFailure`` → :attr:`FailedPrecondition.violations`, and for
  ``INSUFFICIENT_AVAILABILITY`` :attr:`InsufficientAvailability.short_lines`
* ``ResourceInfo``        → :attr:`NotFound.resource_type`, :attr:`NotFound.resource_name`
* ``RetryInfo``           → :attr:`LedgerError.retry_after` (seconds)
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
CORRELATION_HEADER = "x-correlation-id"

# The detail messages the ledger sends (entrypoints/grpc/errors.py) and a few more of google.rpc.
_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.DebugInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


@dataclass(frozen=True)
class FieldViolation:
    """One ``google.rpc.BadRequest.FieldViolation``: the field path (``lines[2].qty``) and why."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One ``google.rpc.PreconditionFailure.Violation``."""

    type: str
    subject: str
    description: str


@dataclass(frozen=True)
class ShortLine:
    """A request line the ledger could not cover (``INSUFFICIENT_AVAILABILITY``).

    ``line_index`` is the index into the request's ``lines``; ``location_id`` is ``""`` when the
    line let the service choose the location. ``available`` is what the channel could have had
    at the time (``None`` if the server's description could not be read).
    """

    line_index: int
    sku: str
    location_id: str
    requested: int
    available: int | None
    description: str = ""


class LedgerError(Exception):
    """A failed ledger call.

    Attributes:
        code: the ``grpc.StatusCode``.
        message: the status message.
        reason: ``ErrorInfo.reason`` (``INSUFFICIENT_AVAILABILITY``, ``RATE_LIMITED``, ...) or
            ``""`` when the status had no ``ErrorInfo`` (for instance one made by gRPC itself).
        domain: ``ErrorInfo.domain`` (``inventory.ledger.v1``).
        metadata: ``ErrorInfo.metadata``.
        details: every detail message, unpacked (unknown types stay ``google.protobuf.Any``).
        retry_after: ``RetryInfo.retry_delay`` in seconds, or ``None``.
        correlation_id: the id the server echoed (or, if no answer arrived, the one sent).
        request_id: the idempotency key of the call (``None`` for calls without one).
        method: ``"ReservationService/Reserve"`` etc.
        attempts: how many attempts the client made before giving up.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: Sequence[Message] = (),
        correlation_id: str | None = None,
        request_id: str | None = None,
        method: str = "",
        attempts: int = 1,
        request: Message | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code if code is not None else type(self).code
        self.message = message
        self.details: list[Message] = list(details)
        self.correlation_id = correlation_id
        self.request_id = request_id
        self.method = method
        self.attempts = attempts
        info = self.detail(error_details_pb2.ErrorInfo)
        self.reason: str = info.reason if info is not None else ""
        self.domain: str = info.domain if info is not None else ""
        self.metadata: dict[str, str] = dict(info.metadata) if info is not None else {}
        retry = self.detail(error_details_pb2.RetryInfo)
        self.retry_after: float | None = (
            retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9 if retry is not None else None
        )
        self._unpack(request)

    def _unpack(self, request: Message | None) -> None:
        """Subclasses read their own details here."""

    def detail(self, kind: type[Any]) -> Any:
        """The first detail of type ``kind`` (e.g. ``error_details_pb2.RetryInfo``), or None."""
        for detail in self.details:
            if isinstance(detail, kind):
                return detail
        return None

    @property
    def retryable(self) -> bool:
        """Whether the client's retry policy retries this status (UNAVAILABLE, ABORTED)."""
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)

    def __str__(self) -> str:
        reason = f" [{self.reason}]" if self.reason else ""
        correlation = f" (correlation id {self.correlation_id})" if self.correlation_id else ""
        return f"{self.code.name}{reason}: {self.message}{correlation}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r}, correlation_id={self.correlation_id!r})"
        )


class Cancelled(LedgerError):
    code = grpc.StatusCode.CANCELLED


class Unknown(LedgerError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(LedgerError):
    """Bad input; :attr:`field_violations` names the fields (``lines[2].qty``)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def _unpack(self, request: Message | None) -> None:
        bad = self.detail(error_details_pb2.BadRequest)
        self.field_violations: list[FieldViolation] = (
            [FieldViolation(v.field, v.description) for v in bad.field_violations]
            if bad is not None
            else []
        )

    @property
    def fields(self) -> list[str]:
        """The violated field paths, in the server's order."""
        return [violation.field for violation in self.field_violations]


class DeadlineExceeded(LedgerError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(LedgerError):
    """Unknown reservation (or one of another channel: existence is not leaked)."""

    code = grpc.StatusCode.NOT_FOUND

    def _unpack(self, request: Message | None) -> None:
        info = self.detail(error_details_pb2.ResourceInfo)
        self.resource_type: str = info.resource_type if info is not None else ""
        self.resource_name: str = info.resource_name if info is not None else ""


class AlreadyExists(LedgerError):
    """The ``request_id`` was used before with a different payload."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(LedgerError):
    """The token lacks the method's scope (``MISSING_SCOPE``) or the channel
    (``CHANNEL_NOT_ALLOWED``)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(LedgerError):
    """Rate limited (``RATE_LIMITED``), write queue full (``WRITE_QUEUE_FULL``), too many
    watchers, or a message over the size limit. Not retried by the client; see
    :attr:`retry_after`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(LedgerError):
    """The request is valid but the ledger's state refuses it; :attr:`violations` says why."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def _unpack(self, request: Message | None) -> None:
        failure = self.detail(error_details_pb2.PreconditionFailure)
        self.violations: list[PreconditionViolation] = (
            [PreconditionViolation(v.type, v.subject, v.description) for v in failure.violations]
            if failure is not None
            else []
        )


# "sku 'SKU-1' at 'DC-EAST': requested 5, available 2" (entrypoints/grpc/errors.py); the names are
# Python reprs, and a line without a location says 'any location'.
_SHORT_LINE = re.compile(
    r"^sku (?P<sku>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\") "
    r"at (?P<location>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"): "
    r"requested (?P<requested>-?\d+), available (?P<available>-?\d+)$"
)
_LINE_SUBJECT = re.compile(r"^lines\[(?P<index>\d+)\]$")
_ANY_LOCATION = "any location"


def _literal(text: str) -> str:
    value = ast.literal_eval(text)
    return value if isinstance(value, str) else text


def parse_short_lines(
    violations: Iterable[PreconditionViolation], request: Message | None = None
) -> list[ShortLine]:
    """Short lines from the ``PreconditionFailure`` of ``INSUFFICIENT_AVAILABILITY``.

    The server names each line by ``subject="lines[i]"`` and describes it; the request (when
    known) fills in anything the description does not carry.
    """
    request_lines: Sequence[Any] = getattr(request, "lines", ()) if request is not None else ()
    short = []
    for violation in violations:
        if violation.type != "INSUFFICIENT_AVAILABILITY":
            continue
        subject = _LINE_SUBJECT.match(violation.subject)
        index = int(subject["index"]) if subject else -1
        line = request_lines[index] if 0 <= index < len(request_lines) else None
        sku = line.sku if line is not None else ""
        location_id = line.location_id if line is not None else ""
        requested = int(line.qty) if line is not None else 0
        available: int | None = None
        described = _SHORT_LINE.match(violation.description)
        if described:
            try:
                sku = _literal(described["sku"])
                location = _literal(described["location"])
            except (ValueError, SyntaxError):
                pass
            else:
                location_id = "" if location == _ANY_LOCATION else location
            requested = int(described["requested"])
            available = int(described["available"])
        short.append(
            ShortLine(index, sku, location_id, requested, available, violation.description)
        )
    return short


class InsufficientAvailability(FailedPrecondition):
    """``FAILED_PRECONDITION`` with ``ErrorInfo(reason=INSUFFICIENT_AVAILABILITY)``: nothing was
    reserved; :attr:`short_lines` lists each line that could not be covered."""

    def _unpack(self, request: Message | None) -> None:
        super()._unpack(request)
        self.channel: str = self.metadata.get("channel", "")
        self.short_lines: list[ShortLine] = parse_short_lines(self.violations, request)


class Aborted(LedgerError):
    """A conflict still unresolved after the server's own retries; retried by the client."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(LedgerError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(LedgerError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(LedgerError):
    """A server bug; quote :attr:`correlation_id` when reporting it."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(LedgerError):
    """Server, store or network down (or a TLS handshake refused); retried by the client."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(LedgerError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(LedgerError):
    """No token, not ``Bearer``, or a token the server does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


ERROR_CLASSES: dict[grpc.StatusCode, type[LedgerError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}
# Refinements by (code, ErrorInfo.reason).
REASON_CLASSES: dict[tuple[grpc.StatusCode, str], type[LedgerError]] = {
    (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_AVAILABILITY"): InsufficientAvailability,
}


def unpack_details(details: Iterable[any_pb2.Any]) -> list[Message]:
    """Unpack each ``Any`` into its ``google.rpc`` message; unknown types stay ``Any``."""
    unpacked: list[Message] = []
    for container in details:
        for kind in _DETAIL_TYPES:
            if container.TypeName() == kind.DESCRIPTOR.full_name:
                message = kind()
                if container.Unpack(message):
                    unpacked.append(message)
                    break
        else:
            unpacked.append(container)
    return unpacked


def _metadata_value(metadata: Any, key: str) -> str | bytes | None:
    for item in metadata or ():
        name, value = item[0], item[1]
        if name == key:
            return value
    return None


def status_of(trailing_metadata: Any) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` of a call's trailing metadata, if the server sent one."""
    raw = _metadata_value(trailing_metadata, STATUS_DETAILS_KEY)
    if not isinstance(raw, bytes):
        return None
    try:
        return status_pb2.Status.FromString(raw)
    except DecodeError:
        return None


def error_for(
    code: grpc.StatusCode,
    message: str,
    *,
    status: status_pb2.Status | None = None,
    correlation_id: str | None = None,
    request_id: str | None = None,
    method: str = "",
    attempts: int = 1,
    request: Message | None = None,
) -> LedgerError:
    """Build the exception for a status; ``status`` (google.rpc) supplies message and details."""
    details = unpack_details(status.details) if status is not None else []
    if status is not None and status.message:
        message = status.message
    reason = ""
    for detail in details:
        if isinstance(detail, error_details_pb2.ErrorInfo):
            reason = detail.reason
            break
    cls = REASON_CLASSES.get((code, reason)) or ERROR_CLASSES.get(code, LedgerError)
    return cls(
        message,
        code=code,
        details=details,
        correlation_id=correlation_id,
        request_id=request_id,
        method=method,
        attempts=attempts,
        request=request,
    )


def correlation_id_in(metadata: Any) -> str | None:
    value = _metadata_value(metadata, CORRELATION_HEADER)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value


__all__ = [
    "ERROR_CLASSES",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InsufficientAvailability",
    "Internal",
    "InvalidArgument",
    "LedgerError",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PreconditionViolation",
    "ResourceExhausted",
    "ShortLine",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "error_for",
    "parse_short_lines",
    "status_of",
    "unpack_details",
]
