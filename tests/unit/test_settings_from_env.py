"""Settings are read from the environment by ledger/config.py alone and passed down."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.config import (
    DEFAULT_INGEST_ACK_WAIT_SECONDS,
    ConfigError,
    GroupCommit,
    ProcessTuning,
    ingest_ack_wait_from_env,
)

REPO = Path(__file__).resolve().parents[2]


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = {
        path.relative_to(REPO).as_posix()
        for package in ("ledger", "projections", "ingest")
        for path in (REPO / package).rglob("*.py")
        if "os.environ" in path.read_text(encoding="utf-8")
    }
    assert readers == {"ledger/config.py"}


def test_group_commit_defaults_and_linger_in_milliseconds() -> None:
    assert GroupCommit.from_env({}) == GroupCommit(linger_seconds=0.001, max_commands=256)
    read = GroupCommit.from_env(
        {"LEDGER_GROUP_COMMIT_LINGER_MS": "50", "LEDGER_GROUP_COMMIT_MAX": "10"}
    )
    assert read == GroupCommit(linger_seconds=0.05, max_commands=10)


@pytest.mark.parametrize(
    "environ",
    [
        {"LEDGER_GROUP_COMMIT_LINGER_MS": "101"},
        {"LEDGER_GROUP_COMMIT_MAX": "0"},
        {"LEDGER_GROUP_COMMIT_LINGER_MS": "soon"},
        {"LEDGER_GROUP_COMMIT_MAX": "2.5"},
    ],
)
def test_group_commit_out_of_range_is_refused(environ: dict[str, str]) -> None:
    # A ConfigError: one line and exit 2 on the command line, like every malformed setting.
    with pytest.raises(ConfigError, match="LEDGER_GROUP_COMMIT_LINGER_MS must be 0-100"):
        GroupCommit.from_env(environ)


def test_process_tuning_reads_both_settings() -> None:
    assert ProcessTuning.from_env({}) == ProcessTuning()
    read = ProcessTuning.from_env({"LEDGER_GC_THRESHOLDS": "1,2,3", "LEDGER_GIL_SWITCH_MS": "1"})
    assert read == ProcessTuning(gc_thresholds=(1, 2, 3), gil_switch_ms=1.0)


def test_ingest_ack_wait() -> None:
    assert ingest_ack_wait_from_env({}) == DEFAULT_INGEST_ACK_WAIT_SECONDS == 30.0
    assert ingest_ack_wait_from_env({"LEDGER_INGEST_ACK_WAIT_SECONDS": " 5 "}) == 5.0


@pytest.mark.parametrize("text", ["0.5", "3601", "soon", "nan"])
def test_ingest_ack_wait_out_of_range_is_one_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="LEDGER_INGEST_ACK_WAIT_SECONDS must be 1-3600"):
        ingest_ack_wait_from_env({"LEDGER_INGEST_ACK_WAIT_SECONDS": text})
