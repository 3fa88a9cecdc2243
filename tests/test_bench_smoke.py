"""Smoke test for tools/bench_get_position.py: it runs end to end (no timing assertions)."""

from __future__ import annotations

import json
import re

from tools.bench_get_position import main


def test_benchmark_runs_and_prints_both_rows_and_a_ratio(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code = main(["--events", "300", "--samples", "50", "--warmup", "5", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    assert re.search(r"^big\s+301\s+50\s", printed.out, re.MULTILINE), printed.out
    assert re.search(r"^small\s+2\s+50\s", printed.out, re.MULTILINE), printed.out
    assert re.search(r"^ratio\s+big/small(\s+\d+\.\d\d){4}$", printed.out, re.MULTILINE)
    assert "movements written" in printed.err  # progress while writing

    result = json.loads(out.read_text())
    assert result["database"] == "sqlite"
    assert set(result["positions"]) == {"big", "small"}
    assert result["positions"]["big"]["version"] == 301
    assert result["positions"]["big"]["samples"] == 50
    assert set(result["ratio"]) == {"p50", "p90", "p99", "mean"}
    assert all(value > 0 for value in result["ratio"].values())
