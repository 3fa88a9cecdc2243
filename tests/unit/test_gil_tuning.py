"""LEDGER_GIL_SWITCH_MS: the switch interval of the long-running processes."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from ledger.config import ConfigError
from ledger.gil_tuning import DEFAULT_SWITCH_MS, switch_ms_from_env, tune_switch_interval


@pytest.fixture
def restored_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_default_and_parse() -> None:
    assert switch_ms_from_env({}) == DEFAULT_SWITCH_MS
    assert switch_ms_from_env({"LEDGER_GIL_SWITCH_MS": " 1.5 "}) == 1.5


@pytest.mark.parametrize("text", ["fast", "0", "-1", "1000"])
def test_a_bad_setting_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigError, match="LEDGER_GIL_SWITCH_MS"):
        switch_ms_from_env({"LEDGER_GIL_SWITCH_MS": text})


def test_the_interval_is_applied(restored_interval: None) -> None:
    assert tune_switch_interval(switch_ms_from_env({"LEDGER_GIL_SWITCH_MS": "0.5"})) == 0.5
    assert sys.getswitchinterval() == pytest.approx(0.0005)
