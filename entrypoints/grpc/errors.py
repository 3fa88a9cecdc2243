"""The one mapping from failures to gRPC statuses with google.rpc details (contract §4.5).

Every servicer method goes through :func:`status_for`; nothing else decides a status code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from eventsourcing.persistence import InterfaceError, OperationalError
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ledger.domain.errors import (
    ConcurrencyConflict,
    FenceExceedsAvailable,
    IllegalTransition,
    InsufficientAvailability,
    InvalidCommand,
    ItemTrackingLocked,
    RequestIdReused,
    ReservationNotFound,
    SerialNotFound,
    StoreUnavailable,
    TrackingMismatch,
)
from ledger.metrics.definitions import RPC_ERRORS
from ledger.pipeline import PipelineOverloaded
from projections.queries import ProjectionBehind

# The logger name its lines had before the edge left ledger/ (ledger/api/), kept for
# log filters and alerts (docs/decisions.md, issue 18).
log = logging.getLogger("ledger.api.errors")

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


def _pack(*messages: Message) -> list[any_pb2.Any]:
    packed = []
    for message in messages:
        container = any_pb2.Any()
        container.Pack(message)
        packed.append(container)
    return packed


def _info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)


def _status(code: int, message: str, *details: Message) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message, details=_pack(*details))


StatusBuilder = Callable[[Any, str], status_pb2.Status]
"""Builds the status of one exception type from the error and the call's correlation id."""


def status_for(error: BaseException, correlation_id: str) -> status_pb2.Status:
    """A google.rpc.Status for ``error``; unknown errors are logged and hidden (INTERNAL)."""
    build = _builder_for(type(error))
    if build is None:
        log.error("internal error (correlation id %s)", correlation_id, exc_info=error)
        return _status(
            code_pb2.INTERNAL,
            f"internal error; quote correlation id {correlation_id}",
            _info("INTERNAL"),
        )
    return build(error, correlation_id)


def _builder_for(kind: type[BaseException]) -> StatusBuilder | None:
    """The row of the nearest class along ``kind``'s MRO, so a subclass maps like its base."""
    for cls in kind.__mro__:
        build = STATUS_BUILDERS.get(cls)
        if build is not None:
            return build
    return None


# ---- one builder per row of the table -------------------------------------------------------


# The status travels in trailing metadata, which gRPC clients cap at 16 KiB by default: a
# request with hundreds of bad fields (500 movements without a reason) made the client see
# RESOURCE_EXHAUSTED instead of INVALID_ARGUMENT. The first ones say what is wrong.
VIOLATIONS_LISTED_MAX = 50
VIOLATIONS_IN_MESSAGE_MAX = 5


def _invalid_request(error: InvalidRequest, correlation_id: str) -> status_pb2.Status:
    listed = error.violations[:VIOLATIONS_LISTED_MAX]
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in listed
        ]
    )
    first = error.violations[0][0] if error.violations else "request"
    shown = "; ".join(f"{f}: {d}" for f, d in error.violations[:VIOLATIONS_IN_MESSAGE_MAX])
    more = len(error.violations) - VIOLATIONS_IN_MESSAGE_MAX
    if more > 0:
        shown += f"; and {more} more (the first {len(listed)} in BadRequest)"
    return _status(
        code_pb2.INVALID_ARGUMENT,
        f"invalid request: {shown}",
        _info("INVALID_ARGUMENT", field=first),
        bad_request,
    )


def _invalid_command(error: InvalidCommand, correlation_id: str) -> status_pb2.Status:
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


def _insufficient_availability(
    error: InsufficientAvailability, correlation_id: str
) -> status_pb2.Status:
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


def _reservation_not_found(error: ReservationNotFound, correlation_id: str) -> status_pb2.Status:
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


def _serial_not_found(error: SerialNotFound, correlation_id: str) -> status_pb2.Status:
    return _status(
        code_pb2.NOT_FOUND,
        str(error),
        _info(error.reason, sku=error.sku, serialNumber=error.serial_number),
        error_details_pb2.ResourceInfo(
            resource_type="inventory.ledger.v1.SerialUnit",
            resource_name=f"{error.sku}/{error.serial_number}",
            description="the serial index has no entry for this unit",
        ),
    )


def _request_id_reused(error: RequestIdReused, correlation_id: str) -> status_pb2.Status:
    return _status(code_pb2.ALREADY_EXISTS, str(error), _info(error.reason, requestId=error.key))


def _illegal_transition(error: IllegalTransition, correlation_id: str) -> status_pb2.Status:
    return _status(
        code_pb2.FAILED_PRECONDITION,
        str(error),
        _info(error.reason, reservationId=error.reservation_id, status=error.current_status),
        error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type="RESERVATION_STATUS",
                    subject=error.reservation_id,
                    description=f"{error.action} is not allowed in status {error.current_status}",
                )
            ]
        ),
    )


def _fence_exceeds_available(
    error: FenceExceedsAvailable, correlation_id: str
) -> status_pb2.Status:
    return _status(
        code_pb2.FAILED_PRECONDITION,
        str(error),
        _info(error.reason, sku=error.sku, locationId=error.location_id, channel=error.channel),
    )


def _item_tracking_locked(error: ItemTrackingLocked, correlation_id: str) -> status_pb2.Status:
    return _status(
        code_pb2.FAILED_PRECONDITION,
        str(error),
        _info(error.reason, sku=error.sku, tracking=error.current, requested=error.requested),
        error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type="ITEM_TRACKING", subject=error.sku, description=error.why
                )
            ]
        ),
    )


def _projection_behind(error: ProjectionBehind, correlation_id: str) -> status_pb2.Status:
    return _status(
        code_pb2.DEADLINE_EXCEEDED,
        str(error),
        _info(error.reason, wanted=str(error.wanted), applied=str(error.applied)),
    )


def _concurrency_conflict(error: ConcurrencyConflict, correlation_id: str) -> status_pb2.Status:
    return _status(code_pb2.ABORTED, str(error), _info(error.reason))


def _unauthenticated(error: Unauthenticated, correlation_id: str) -> status_pb2.Status:
    return _status(code_pb2.UNAUTHENTICATED, str(error), _info(error.reason))


def _permission_denied(error: PermissionDenied, correlation_id: str) -> status_pb2.Status:
    return _status(code_pb2.PERMISSION_DENIED, str(error), _info(error.reason, **error.metadata))


def _rate_limited(error: RateLimited, correlation_id: str) -> status_pb2.Status:
    delay = max(error.retry_after_seconds, 0.001)
    return _status(
        code_pb2.RESOURCE_EXHAUSTED,
        str(error),
        _info(error.reason, principal=error.principal),
        _retry_info(delay),
    )


def _server_overloaded(error: ServerOverloaded, correlation_id: str) -> status_pb2.Status:
    return _status(
        code_pb2.RESOURCE_EXHAUSTED,
        str(error),
        _info(error.reason),
        _retry_info(error.retry_after_seconds),
    )


def _deadline_exceeded(error: DeadlineExceeded, correlation_id: str) -> status_pb2.Status:
    return _status(code_pb2.DEADLINE_EXCEEDED, str(error), _info(error.reason))


def _pipeline_overloaded(error: PipelineOverloaded, correlation_id: str) -> status_pb2.Status:
    return _status(
        code_pb2.RESOURCE_EXHAUSTED,
        str(error),
        _info("WRITE_QUEUE_FULL"),
        _retry_info(error.retry_after_seconds),
    )


def _store_unavailable(error: Exception, correlation_id: str) -> status_pb2.Status:
    # The store's own text stays in the log: the caller only learns to retry.
    log.warning("store unavailable (correlation id %s): %s", correlation_id, error)
    return _status(
        code_pb2.UNAVAILABLE,
        "the ledger's database is unavailable; retry with the same request_id",
        _info(StoreUnavailable.reason),
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)),
    )


# The whole mapping: exception type -> its status. Looked up along the error's MRO (see
# _builder_for); LedgerError itself and other PersistenceErrors (IntegrityError, ...) have no
# row on purpose: they are bugs, reported as INTERNAL. tests/unit/test_error_statuses.py fails
# when an exception type of the domain or this module has no row.
STATUS_BUILDERS: dict[type[BaseException], StatusBuilder] = {
    InvalidRequest: _invalid_request,
    InvalidCommand: _invalid_command,
    TrackingMismatch: _invalid_command,
    InsufficientAvailability: _insufficient_availability,
    ReservationNotFound: _reservation_not_found,
    SerialNotFound: _serial_not_found,
    RequestIdReused: _request_id_reused,
    IllegalTransition: _illegal_transition,
    FenceExceedsAvailable: _fence_exceeds_available,
    ItemTrackingLocked: _item_tracking_locked,
    ProjectionBehind: _projection_behind,
    ConcurrencyConflict: _concurrency_conflict,
    Unauthenticated: _unauthenticated,
    PermissionDenied: _permission_denied,
    RateLimited: _rate_limited,
    ServerOverloaded: _server_overloaded,
    DeadlineExceeded: _deadline_exceeded,
    PipelineOverloaded: _pipeline_overloaded,
    StoreUnavailable: _store_unavailable,
    OperationalError: _store_unavailable,
    InterfaceError: _store_unavailable,
}


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
