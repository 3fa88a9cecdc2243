"""tools.bench.compare: runs side by side, each figure and ratio in its own column."""

from __future__ import annotations

from tools.bench.compare import compare


def _run(rate: float, ratio: float) -> dict[str, object]:
    return {
        "baselines": {"grpc_echo": {"rate": 4000.0, "unit": "calls/s"}},
        "figures": {
            "reserve_distinct_c64_p1": {"rate": rate, "unit": "reservations/s"},
            "reserve_half_load": {
                "rate": 500.0, "unit": "reservations/s", "offered_rate": 500.0,
                "p50_ms": 12.4, "p99_ms": 60.0,
            },
        },
        "ratios": {"reserve_vs_grpc_echo": {"value": ratio, "target": None}},
        "targets": {"half_load_p50_ms": {"value": 12.4, "target": "<=10"}},
    }  # fmt: skip


def test_each_run_is_a_column_of_every_figure_ratio_and_target() -> None:
    table = compare([_run(900.0, 0.225), _run(1100.0, 0.275)])
    lines = table.splitlines()
    assert "| `reserve_distinct_c64_p1` | 900 | 1,100 | reservations/s |" in lines
    assert "| `grpc_echo` (baseline) | 4,000 | 4,000 | calls/s |" in lines
    assert "| `reserve_vs_grpc_echo` | 0.225 | 0.275 | - |" in lines
    assert "| `half_load_p50_ms` | 12.400 | 12.400 | <=10 |" in lines
    assert any("500 (p50 12 / p99 60 ms)" in line for line in lines)
