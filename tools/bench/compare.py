"""``python -m tools.bench.compare RUN.json...``: bench runs side by side, as Markdown.

For docs/performance.md: every figure's rate, the ratios to the same run's baselines (with
their targets) and the latency/back-pressure targets, one column per run, so figures that
move between runs on the same machine show their spread.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _number(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _row(name: str, cells: Sequence[str], extra: str = "") -> str:
    return "| " + " | ".join([name, *cells, *([extra] if extra else [])]) + " |"


def compare(runs: Sequence[Mapping[str, Any]]) -> str:
    heads = [f"run {i + 1}" for i in range(len(runs))]
    lines = ["| figure | " + " | ".join(heads) + " | unit |"]
    lines.append("| --- |" + " ---: |" * len(runs) + " --- |")
    baselines = list(dict.fromkeys(k for run in runs for k in run.get("baselines", {})))
    figures = list(dict.fromkeys(k for run in runs for k in run.get("figures", {})))
    for section, names in (("baselines", baselines), ("figures", figures)):
        for name in names:
            cells, unit = [], ""
            for run in runs:
                figure = run.get(section, {}).get(name) or {}
                rate = figure.get("rate")
                cell = _number(rate, 0)
                if figure.get("p50_ms") is not None and figure.get("offered_rate"):
                    cell += f" (p50 {figure['p50_ms']:,.0f} / p99 {figure['p99_ms']:,.0f} ms)"
                cells.append(cell)
                unit = unit or str(figure.get("unit", ""))
            label = f"`{name}`" + (" (baseline)" if section == "baselines" else "")
            lines.append(_row(label, cells, unit or " "))
    lines += ["", "| ratio | " + " | ".join(heads) + " | target |"]
    lines.append("| --- |" + " ---: |" * len(runs) + " --- |")
    ratios = list(dict.fromkeys(k for run in runs for k in run.get("ratios", {})))
    for name in ratios:
        cells = [_number((run.get("ratios", {}).get(name) or {}).get("value"), 3) for run in runs]
        target = next(
            (r["ratios"][name].get("target") for r in runs if name in r.get("ratios", {})), None
        )
        lines.append(_row(f"`{name}`", cells, f">= {target}" if target is not None else "-"))
    targets = list(dict.fromkeys(k for run in runs for k in run.get("targets", {})))
    for name in targets:
        cells = [_number((run.get("targets", {}).get(name) or {}).get("value"), 3) for run in runs]
        target = next(
            (r["targets"][name].get("target") for r in runs if name in r.get("targets", {})), ""
        )
        lines.append(_row(f"`{name}`", cells, str(target)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.compare", description=__doc__)
    parser.add_argument("runs", nargs="+", help="bench JSON documents (tools.bench --json)")
    args = parser.parse_args(argv)
    print(compare([json.loads(Path(path).read_text()) for path in args.runs]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
