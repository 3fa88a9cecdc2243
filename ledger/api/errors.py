"""The one mapping from failures to gRPC statuses with google.rpc details (contract §4.5).

Every servicer method goes through :func:`status_for`; nothing else decides a status code.
"""

from __future__ import annotations

import logging

import grpc
from eventsourcing.persistence import InterfaceError, OperationalError
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ledger.domain.errors import (
    ConcurrencyConflict,
    FenceExceedsAvailable,
    IllegalTransition,
    InsufficientAvailability,
    InvalidCommand,
    RequestIdReused,
    ReservationNotFound,
    StoreUnavailable,
)
from ledger.metrics.definitions import RPC_ERRORS
from ledger.pipeline import PipelineOverloaded
from projections.queries import ProjectionBehind

log = logging.getLogger(__name__)

ERROR_DOMAIN = "inventory.ledger.v1"


class InvalidRequest(Exception):
    """Raised by the edge when a request fails validation."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))
        self.violations = violations


class Unauthenticated(Exception):
    """No bearer token, or one the token file does not know (UNAUTHENTICATED)."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(Exception):
    """The caller lacks the method's scope (MISSING_SCOPE) or the request's channel
    (CHANNEL_NOT_ALLOWED): PERMISSION_DENIED."""

    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = metadata


class RateLimited(Exception):
    """The caller's token bucket is empty (RESOURCE_EXHAUSTED with RetryInfo)."""

    reason = "RATE_LIMITED"

    def __init__(self, principal: str, retry_after_seconds: float) -> None:
        super().__init__(f"rate limit of principal {principal!r} exceeded; retry later")
        self.principal = principal
        self.retry_after_seconds = retry_after_seconds


class ServerOverloaded(Exception):
    """More unary calls in flight than the server's limit (RESOURCE_EXHAUSTED with RetryInfo):
    shed at once, before any work, so the calls already admitted still finish in time."""

    reason = "SERVER_OVERLOADED"

    def __init__(self, why: str, retry_after_seconds: float) -> None:
        super().__init__(f"{why}; retry shortly (another replica may have room)")
        self.retry_after_seconds = min(max(retry_after_seconds, 0.01), 5.0)


class DeadlineExceeded(Exception):
    """The caller's deadline passed before the work was done."""

    reason = "DEADLINE_EXCEEDED"


def _pack(*messages: object) -> list[any_pb2.Any]:
    packed = []
    for message in messages:
        container = any_pb2.Any()
        container.Pack(message)
        packed.append(container)
    return packed


def _info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)


def _status(code: int, message: str, *details: object) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message, details=_pack(*details))


def status_for(error: BaseException, correlation_id: str) -> status_pb2.Status:
    """A google.rpc.Status for ``error``; unknown errors are logged and hidden (INTERNAL)."""
    if isinstance(error, InvalidRequest):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in error.violations
            ]
        )
        first = error.violations[0][0] if error.violations else "request"
        return _status(
            code_pb2.INVALID_ARGUMENT,
            f"invalid request: {error}",
            _info("INVALID_ARGUMENT", field=first),
            bad_request,
        )
    if isinstance(error, InvalidCommand):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=error.field_path, description=error.description
                )
            ]
        )
        return _status(
            code_pb2.INVALID_ARGUMENT,
            str(error),
            _info("INVALID_ARGUMENT", field=error.field_path),
            bad_request,
        )
    if isinstance(error, InsufficientAvailability):
        # One PreconditionFailure violation per short line; ErrorInfo carries the count.
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type="INSUFFICIENT_AVAILABILITY",
                    subject=f"lines[{line.line_index}]",
                    description=(
                        f"sku {line.sku!r} at {line.location_id or 'any location'!r}: "
                        f"requested {line.requested}, available {line.available}"
                    ),
                )
                for line in error.short_lines
            ]
        )
        return _status(
            code_pb2.FAILED_PRECONDITION,
            str(error),
            _info(
                error.reason,
                channel=error.channel,
                shortLines=",".join(str(line.line_index) for line in error.short_lines),
            ),
            failure,
        )
    if isinstance(error, ReservationNotFound):
        return _status(
            code_pb2.NOT_FOUND,
            str(error),
            _info(error.reason, reservationId=error.reservation_id),
            error_details_pb2.ResourceInfo(
                resource_type="inventory.ledger.v1.Reservation",
                resource_name=error.reservation_id,
                description="no such reservation for this caller",
            ),
        )
    if isinstance(error, RequestIdReused):
        return _status(
            code_pb2.ALREADY_EXISTS, str(error), _info(error.reason, requestId=error.key)
        )
    if isinstance(error, IllegalTransition):
        return _status(
            code_pb2.FAILED_PRECONDITION,
            str(error),
            _info(error.reason, reservationId=error.reservation_id, status=error.current_status),
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type="RESERVATION_STATUS",
                        subject=error.reservation_id,
                        description=(
                            f"{error.action} is not allowed in status {error.current_status}"
                        ),
                    )
                ]
            ),
        )
    if isinstance(error, FenceExceedsAvailable):
        return _status(
            code_pb2.FAILED_PRECONDITION,
            str(error),
            _info(error.reason, sku=error.sku, locationId=error.location_id, channel=error.channel),
        )
    if isinstance(error, ProjectionBehind):
        return _status(
            code_pb2.DEADLINE_EXCEEDED,
            str(error),
            _info(error.reason, wanted=str(error.wanted), applied=str(error.applied)),
        )
    if isinstance(error, ConcurrencyConflict):
        return _status(code_pb2.ABORTED, str(error), _info(error.reason))
    if isinstance(error, Unauthenticated):
        return _status(code_pb2.UNAUTHENTICATED, str(error), _info(error.reason))
    if isinstance(error, PermissionDenied):
        return _status(
            code_pb2.PERMISSION_DENIED, str(error), _info(error.reason, **error.metadata)
        )
    if isinstance(error, RateLimited):
        delay = max(error.retry_after_seconds, 0.001)
        return _status(
            code_pb2.RESOURCE_EXHAUSTED,
            str(error),
            _info(error.reason, principal=error.principal),
            _retry_info(delay),
        )
    if isinstance(error, ServerOverloaded):
        return _status(
            code_pb2.RESOURCE_EXHAUSTED,
            str(error),
            _info(error.reason),
            _retry_info(error.retry_after_seconds),
        )
    if isinstance(error, DeadlineExceeded):
        return _status(code_pb2.DEADLINE_EXCEEDED, str(error), _info(error.reason))
    if isinstance(error, PipelineOverloaded):
        return _status(
            code_pb2.RESOURCE_EXHAUSTED,
            str(error),
            _info("WRITE_QUEUE_FULL"),
            _retry_info(error.retry_after_seconds),
        )
    if isinstance(error, (StoreUnavailable, OperationalError, InterfaceError)):
        log.warning("store unavailable (correlation id %s): %s", correlation_id, error)
        return _status(
            code_pb2.UNAVAILABLE,
            "the ledger's database is unavailable; retry with the same request_id",
            _info(StoreUnavailable.reason),
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)),
        )
    log.error("internal error (correlation id %s)", correlation_id, exc_info=error)
    return _status(
        code_pb2.INTERNAL,
        f"internal error; quote correlation id {correlation_id}",
        _info("INTERNAL"),
    )


def counted(status: status_pb2.Status) -> status_pb2.Status:
    """Count an error status in ``ledger_rpc_errors_total`` by its ErrorInfo reason (every
    status built here carries one) and return it; the servicers and the auth interceptor
    pass each status they abort with through this, once."""
    reason = "UNKNOWN"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason or reason
            break
    RPC_ERRORS.labels(reason).inc()
    return status


def grpc_code(status: status_pb2.Status) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == status.code:
            return code
    return grpc.StatusCode.UNKNOWN


def _retry_info(delay_seconds: float) -> error_details_pb2.RetryInfo:
    whole = int(delay_seconds)
    return error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=whole, nanos=int((delay_seconds - whole) * 1e9))
    )
