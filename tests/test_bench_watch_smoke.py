"""Smoke test for tools/bench_watch.py: it runs end to end (no timing assertions)."""

from __future__ import annotations

import json
import re

from tools.bench_watch import main


def test_watch_benchmark_runs_and_reports_percentiles(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code = main(["--changes", "10", "--warmup", "2", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    assert "WatchAvailability delay in ms (sqlite, projections in-process)" in printed.out
    number = r"\s+-?\d+\.\d\d"
    for label in ("commit to delivery", "write to delivery"):
        assert re.search(rf"^{label}\s+10{number * 4}$", printed.out, re.MULTILINE), printed.out

    result = json.loads(out.read_text())
    assert (result["database"], result["projections"], result["changes"]) == (
        "sqlite",
        "in-process",
        10,
    )
    for delays in result["delays"].values():
        assert delays["samples"] == 10
        assert delays["median_ms"] <= delays["p90_ms"] <= delays["p99_ms"] <= delays["max_ms"]
