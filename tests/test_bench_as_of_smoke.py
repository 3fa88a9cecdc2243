"""Smoke test for tools/bench_as_of.py: it runs end to end (no timing assertions)."""

from __future__ import annotations

import json
import re

from tools.bench_as_of import main

LABELS = {
    "get_position": "GetPosition",
    "recorded_start": "RECORDED start",
    "recorded_middle": "RECORDED middle",
    "recorded_end": "RECORDED end",
    "effective_start": "EFFECTIVE start",
    "effective_middle": "EFFECTIVE middle",
    "effective_end": "EFFECTIVE end",
}


def test_as_of_benchmark_runs_checks_answers_and_prints_every_variant(capsys, tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--events", "600", "--samples", "20", "--warmup", "3", "--late", "20"]
    code = main([*argv, "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    number = r"\s+\d+\.\d{3}"
    # 600 movements + the opening entry + 20 late facts; as-of rows at 1%, 50%, 99.9%.
    assert re.search(rf"^GetPosition\s+621\s+20{number * 5}$", printed.out, re.MULTILINE)
    for label, version in [("start", 6), ("middle", 300), ("end", 600)]:
        for axis in ("RECORDED", "EFFECTIVE"):
            row = rf"^{axis} {label}\s+{version}\s+20{number * 5}(\s+\d+\.\d\d){{2}}$"
            assert re.search(row, printed.out, re.MULTILINE), printed.out
    assert "answers checked" in printed.out
    assert "movements written" in printed.err  # progress while writing
    assert "20 late facts written" in printed.err

    result = json.loads(out.read_text())
    assert (result["database"], result["events"], result["late"]) == ("sqlite", 600, 20)
    assert result["errors"] == []
    assert set(result["variants"]) == set(LABELS)
    for key, stats in result["variants"].items():
        assert stats["label"] == LABELS[key]
        assert stats["samples"] == 20
        for figure in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "first_call_ms"):
            assert stats[figure] > 0, (key, figure)
    assert set(result["ratio_to_get_position"]) == set(LABELS) - {"get_position"}
    for ratios in result["ratio_to_get_position"].values():
        assert set(ratios) == {"p50", "p99"}
        assert all(value > 0 for value in ratios.values())
