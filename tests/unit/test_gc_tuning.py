"""LEDGER_GC_THRESHOLDS and the startup freeze of the long-running processes."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ledger.config import ConfigError
from ledger.gc_tuning import DEFAULT_THRESHOLDS, thresholds_from_env, tune_after_startup


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_thresholds_default_and_parse() -> None:
    assert thresholds_from_env({}) == DEFAULT_THRESHOLDS
    assert thresholds_from_env({"LEDGER_GC_THRESHOLDS": " 700,10,10 "}) == (700, 10, 10)


@pytest.mark.parametrize("text", ["700,10", "a,b,c", "700,10,10,10", "-1,10,10"])
def test_a_bad_setting_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigError, match="LEDGER_GC_THRESHOLDS"):
        thresholds_from_env({"LEDGER_GC_THRESHOLDS": text})


def test_startup_objects_are_frozen_and_thresholds_applied(restored_gc: None) -> None:
    kept = [{"startup": n} for n in range(1000)]
    thresholds = thresholds_from_env({"LEDGER_GC_THRESHOLDS": "12345,6,7"})
    assert tune_after_startup(thresholds) == (12345, 6, 7)
    assert gc.get_threshold() == (12345, 6, 7)
    assert gc.get_freeze_count() >= len(kept)


def test_the_cli_refuses_a_bad_setting_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    from entrypoints.cli.main import main

    monkeypatch.setenv("LEDGER_GC_THRESHOLDS", "nonsense")
    assert main(["serve", "--database", "sqlite:///:memory:"]) == 2
