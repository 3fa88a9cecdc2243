"""Smoke test for ``python -m tools.bench --quick``: it runs end to end on the suite's
PostgreSQL and NATS, writes every figure, baseline, ratio and check, and the oversell check
passes. No timing assertions: the figures of a quick run on a shared machine mean nothing."""

from __future__ import annotations

import json

import pytest

from testbed.nats import NatsStartError
from testbed.postgres import PostgresStartError
from tools.bench.__main__ import main

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(240)]

BASELINES = {"grpc_echo", "pg_txn_per_call", "pg_group_commit", "jetstream_fetch_ack"}
FIGURES = {
    *(
        f"reserve_{positions}_c{clients}_p{processes}"
        for positions in ("distinct", "hot")
        for clients in (64, 256)
        for processes in (1, 2)
    ),
    "reserve_distinct_best",
    "reserve_half_load",
    "reserve_saturation",
    "reserve_drain",
    "record_movements_single",
    "record_movements_batch",
    "ingest",
    "get_position",
    "get_position_c16",
    "get_position_as_of",
    "get_availability_c16",
    "get_availability_strong_c16",
    "projection_lag",
}
RATIOS = {
    "reserve_distinct_vs_group_commit_writer": 0.70,
    "reserve_distinct_vs_txn_per_call": 1.0,
    "hot_vs_distinct_c256_p2": 0.80,
    "ingest_vs_jetstream_fetch_ack": 0.50,
    "reserve_vs_grpc_echo": None,
    "get_position_c16_vs_grpc_echo": None,
    "get_availability_c16_vs_grpc_echo": None,
    "get_availability_strong_c16_vs_grpc_echo": None,
}

TARGETS = {
    "half_load_p50_ms": "<=10",
    "half_load_p99_ms": "<=50",
    "saturation_timeout_share": "<=0.01",
}


@pytest.fixture
def servers(request):
    try:
        database = request.getfixturevalue("postgres_database_url")
        nats = request.getfixturevalue("nats_url")
    except (PostgresStartError, NatsStartError, OSError) as error:
        pytest.skip(f"PostgreSQL or NATS could not start here: {error}")
    return database, nats


def test_quick_benchmark_writes_every_figure_ratio_and_check(servers, tmp_path, capsys):
    database, nats = servers
    out = tmp_path / "bench.json"
    # Half-second windows: the smoke test checks the harness, not the figures.
    argv = ["--quick", "--seconds", "0.5", "--json", str(out)]
    code = main([*argv, "--database", database, "--nats", nats])
    printed = capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["failures"] == {}, printed.err[-5000:]
    assert code == 0, printed.err[-5000:]

    assert result["mode"] == "quick"
    assert set(result["baselines"]) == BASELINES
    # The open loops run again on the process count the best distinct figure did not use.
    other = 3 - result["figures"]["reserve_distinct_best"]["processes"]
    assert set(result["figures"]) == FIGURES | {
        f"reserve_half_load_p{other}",
        f"reserve_saturation_p{other}",
    }
    for name, figure in {**result["baselines"], **result["figures"]}.items():
        assert "rate" in figure and "unit" in figure, name
    assert {name: r["target"] for name, r in result["ratios"].items()} == RATIOS
    assert {name: t["target"] for name, t in result["targets"].items()} == {
        **TARGETS,
        **{f"{name}_p{other}": target for name, target in TARGETS.items()},
    }
    saturation = result["targets"]["saturation_timeout_share"]
    assert saturation["value"] is not None and saturation["met"] == (saturation["value"] <= 0.01)

    oversell = result["checks"]["no_oversell"]
    assert oversell["passed"] is True
    checked = {check["figure"] for check in oversell["positions"]}
    assert checked == {key for key in FIGURES if key.startswith("reserve_hot_")} | {"reserve_drain"}
    assert all(c["reserved"] <= c["on_hand"] for c in oversell["positions"])
    assert result["checks"]["ingest_durable"] is True
    agreed = result["checks"]["eventual_equals_strong"]
    assert agreed["passed"] is True and agreed["positions"] > 0, agreed
    assert agreed["mismatches"] == [] and agreed["unjudged"] == []

    # The table: every figure and ratio, targets next to ratios; progress went to stderr.
    for name in FIGURES | BASELINES | set(RATIOS) | set(TARGETS):
        assert name in printed.out, name
    assert ">=0.70" in printed.out
    assert "reserve_distinct_c64_p1:" in printed.err
