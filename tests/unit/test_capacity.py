"""tools.capacity: the scaling arithmetic of docs/scaling.md, from a bench JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import capacity


def _figure(rate: float, servers: float, reservations: int, commits: int, ms: float) -> dict:
    return {
        "rate": rate,
        "cpu_cores": {"servers": [servers], "postgres": 0.2},
        "server_commits": [
            {"commits": commits, "reservations": reservations, "transaction_ms_mean": ms}
        ],
    }


DOCUMENT = {
    "baselines": {},
    "figures": {
        "reserve_distinct_c64_p1": _figure(400, 1.0, 500, 20, 5.0),  # 25 per transaction
        "reserve_distinct_c256_p1": _figure(500, 1.0, 700, 10, 8.0),  # 70 per transaction
        "ingest": {"rate": 800, "cpu_cores": {"ingest": [0.8]}},
        "get_position_c16": {"rate": 450, "cpu_cores": {"servers": [0.9]}},
    },
}


def test_the_lock_cost_is_fitted_through_two_batch_sizes() -> None:
    fixed, per_command = capacity.lock_cost([(25, 5.0), (70, 8.0)])
    assert per_command == pytest.approx(3 / 45)
    assert fixed == pytest.approx(5.0 - 25 * 3 / 45)


def test_a_nonsensical_fit_charges_everything_per_command() -> None:
    # Bigger batches measured faster (noise): no negative slope is extrapolated.
    assert capacity.lock_cost([(25, 8.0), (70, 5.0)]) == (0.0, pytest.approx(5.0 / 70))
    assert capacity.lock_cost([]) == (0.0, 0.0)


def test_the_model_sizes_replicas_partitions_and_bridges() -> None:
    model = capacity.model(DOCUMENT)
    assert model.reserve_per_api_core == 500
    assert model.pg_core_ms_per_reserve == pytest.approx(0.4)
    assert model.ingest_per_core == pytest.approx(1000)
    assert model.reads_per_api_core == pytest.approx(500)
    full_batch_ms = (5.0 - 25 * 3 / 45) + 3 / 45 * capacity.BATCH_MAX
    assert model.single_log_reserves_per_s == pytest.approx(1000 * 256 / full_batch_ms)
    assert model.api_replicas_for(5_000, 4) == 3  # 2,000 per 4-core replica
    assert model.partitions_for(model.single_log_reserves_per_s * 2.5) == 3
    assert model.ingest_bridges_for(5_000, 2) == 3
    assert model.pg_cores_for(10_000) == pytest.approx(4.0)


def test_the_writer_turn_is_the_serial_section_when_measured() -> None:
    figure = _figure(500, 1.0, 700, 10, 8.0)
    assert capacity._transactions(figure) == (70.0, 8.0)  # no turns: the transaction
    figure["server_commits"][0].update(turns=14, turn_ms_mean=12.5)
    assert capacity._transactions(figure) == (50.0, 12.5)


def test_the_command_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(DOCUMENT))
    assert capacity.main([str(path), "--target", "5000"]) == 0
    out = capsys.readouterr().out
    assert "one ledger's ceiling" in out
    assert out.strip().splitlines()[-1].split()[:2] == ["5,000", "3"]
