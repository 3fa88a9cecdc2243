"""What crosses the writer socket comes back whole (ledger.writer.wire)."""

from __future__ import annotations

import pickle

import pytest

from ledger.domain.errors import ReservationNotFound, StoreUnavailable
from ledger.pipeline import PipelineOverloaded
from ledger.writer import wire
from ledger.writer.use_cases import WRITE_USE_CASES


@pytest.mark.parametrize(
    "error",
    [
        PipelineOverloaded("write queue is full", retry_after_seconds=2.5),
        ReservationNotFound("res-1"),
        StoreUnavailable("down"),
        ValueError("plain"),
    ],
)
def test_errors_cross_with_their_class_args_and_attributes(error: BaseException) -> None:
    again = wire.rebuilt(pickle.loads(pickle.dumps(wire.portable(error))))
    assert type(again) is type(error)
    assert again.args == error.args
    assert vars(again) == vars(error)
    assert str(again) == str(error)


def test_an_error_class_from_elsewhere_arrives_as_a_runtime_error() -> None:
    again = wire.rebuilt(("some.plugin", "Boom", ("bang",), {}))
    assert isinstance(again, RuntimeError)
    assert "some.plugin.Boom: bang" in str(again)


def test_unpicklable_attributes_and_args_are_dropped_or_stringified() -> None:
    error = ValueError(lambda: None)
    error.callback = lambda: None  # type: ignore[attr-defined]
    again = wire.rebuilt(wire.portable(error))
    assert isinstance(again.args[0], str) and "lambda" in again.args[0]
    assert not hasattr(again, "callback")


def test_every_service_write_has_a_use_case() -> None:
    import inspect

    from ledger.service import LedgerService

    source = inspect.getsource(LedgerService)
    named = {name for name in WRITE_USE_CASES if f'"{name}"' in source}
    assert named == set(WRITE_USE_CASES)
