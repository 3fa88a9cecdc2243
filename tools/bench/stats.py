"""Percentiles and rates over raw samples (no numpy: a sort is cheap at these sizes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(ordered: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted sample (None when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, Any]:
    """p50/p99/max of latencies in ms, rounded for the report."""
    ordered = sorted(latencies_ms)
    return {
        "samples": len(ordered),
        "p50_ms": _round(percentile(ordered, 50)),
        "p90_ms": _round(percentile(ordered, 90)),
        "p99_ms": _round(percentile(ordered, 99)),
        "max_ms": _round(ordered[-1] if ordered else None),
    }


def prefixed(summary: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``latency_summary`` keys for a unit other than calls: ``commit_p50_ms``, ...,
    and ``commits`` for the sample count."""
    return {f"{prefix}s" if k == "samples" else f"{prefix}_{k}": v for k, v in summary.items()}


def rate(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
