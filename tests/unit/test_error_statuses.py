"""The table from exceptions to gRPC statuses (entrypoints/grpc/errors.py): every error type the
ledger raises on purpose has a row, so a new one cannot silently become INTERNAL."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError
from google.rpc import code_pb2, error_details_pb2, status_pb2

from entrypoints.grpc import errors as api_errors
from entrypoints.grpc.errors import (
    STATUS_BUILDERS,
    DeadlineExceeded,
    InvalidRequest,
    PermissionDenied,
    RateLimited,
    ServerOverloaded,
    Unauthenticated,
    status_for,
)
from ledger.domain import errors as domain_errors
from ledger.domain.errors import (
    ConcurrencyConflict,
    FenceExceedsAvailable,
    IllegalTransition,
    InsufficientAvailability,
    InvalidCommand,
    ItemTrackingLocked,
    LedgerError,
    RequestIdReused,
    ReservationNotFound,
    SerialNotFound,
    ShortLine,
    StoreUnavailable,
    TrackingMismatch,
)
from ledger.pipeline import PipelineOverloaded
from projections.queries import ProjectionBehind

# One instance per row, with the status code and ErrorInfo reason callers rely on.
SAMPLES: list[tuple[BaseException, int, str]] = [
    (InvalidRequest([("lines[0].sku", "required")]), code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (InvalidCommand("lines[0].qty", "too big"), code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (
        TrackingMismatch("movements[0].lot_id", "SKU 'S' is lot-tracked: name the lot"),
        code_pb2.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    ),
    (
        InsufficientAvailability("web", [ShortLine(0, "S", "L", 5, 2)]),
        code_pb2.FAILED_PRECONDITION,
        "INSUFFICIENT_AVAILABILITY",
    ),
    (ReservationNotFound("r-1"), code_pb2.NOT_FOUND, "RESERVATION_NOT_FOUND"),
    (RequestIdReused("k-1"), code_pb2.ALREADY_EXISTS, "REQUEST_ID_REUSED"),
    (
        IllegalTransition("r-1", "CONFIRMED", "cancel"),
        code_pb2.FAILED_PRECONDITION,
        "ILLEGAL_RESERVATION_TRANSITION",
    ),
    (
        FenceExceedsAvailable("S", "L", "web", 5, 7, 3),
        code_pb2.FAILED_PRECONDITION,
        "FENCE_EXCEEDS_AVAILABLE",
    ),
    (
        ItemTrackingLocked("S", "NONE", "LOT", "the SKU holds stock"),
        code_pb2.FAILED_PRECONDITION,
        "ITEM_TRACKING_LOCKED",
    ),
    (SerialNotFound("S", "SN-1"), code_pb2.NOT_FOUND, "SERIAL_NOT_FOUND"),
    (ProjectionBehind(10, 4), code_pb2.DEADLINE_EXCEEDED, "PROJECTION_BEHIND"),
    (ConcurrencyConflict(3), code_pb2.ABORTED, "CONCURRENCY_CONFLICT"),
    (Unauthenticated("no token"), code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (
        PermissionDenied("MISSING_SCOPE", "needs write", scope="write"),
        code_pb2.PERMISSION_DENIED,
        "MISSING_SCOPE",
    ),
    (RateLimited("bob", 0.25), code_pb2.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
    (ServerOverloaded("busy", 0.1), code_pb2.RESOURCE_EXHAUSTED, "SERVER_OVERLOADED"),
    (DeadlineExceeded("late"), code_pb2.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
    (PipelineOverloaded("queue full"), code_pb2.RESOURCE_EXHAUSTED, "WRITE_QUEUE_FULL"),
    (StoreUnavailable("down"), code_pb2.UNAVAILABLE, "STORE_UNAVAILABLE"),
    (OperationalError("refused"), code_pb2.UNAVAILABLE, "STORE_UNAVAILABLE"),
    (InterfaceError("closed"), code_pb2.UNAVAILABLE, "STORE_UNAVAILABLE"),
]


def _exceptions_defined_in(module: ModuleType) -> set[type[BaseException]]:
    return {
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == module.__name__
    }


def _reason(status: status_pb2.Status) -> str:
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.reason


def test_every_error_type_of_the_domain_and_the_edge_has_a_row() -> None:
    # LedgerError itself is only a base class: raised bare it is a bug, hence INTERNAL.
    expected = (_exceptions_defined_in(domain_errors) | _exceptions_defined_in(api_errors)) - {
        LedgerError
    }
    expected |= {PipelineOverloaded, ProjectionBehind, OperationalError, InterfaceError}
    missing = sorted(cls.__name__ for cls in expected - STATUS_BUILDERS.keys())
    assert missing == []


def test_every_row_has_a_sample() -> None:
    assert {type(error) for error, _, _ in SAMPLES} == set(STATUS_BUILDERS)


@pytest.mark.parametrize(
    ("error", "code", "reason"), SAMPLES, ids=[type(s[0]).__name__ for s in SAMPLES]
)
def test_each_row_builds_its_status(error: BaseException, code: int, reason: str) -> None:
    status = status_for(error, "corr-1")
    assert (status.code, _reason(status)) == (code, reason)


def test_a_subclass_maps_like_its_nearest_mapped_base() -> None:
    class StricterCommand(InvalidCommand):
        pass

    class DriverGone(OperationalError):
        pass

    assert status_for(StricterCommand("f", "d"), "c") == status_for(InvalidCommand("f", "d"), "c")
    assert status_for(DriverGone("x"), "c").code == code_pb2.UNAVAILABLE


@pytest.mark.parametrize(
    "error", [LedgerError("bare"), IntegrityError("duplicate"), ValueError("boom")]
)
def test_errors_without_a_row_are_hidden_as_internal(error: BaseException) -> None:
    status = status_for(error, "corr-9")
    assert status.code == code_pb2.INTERNAL
    assert status.message == "internal error; quote correlation id corr-9"
    assert _reason(status) == "INTERNAL"
