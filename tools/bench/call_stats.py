"""One row of the read benches (bench_get_position, bench_as_of): a call's latency figures."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from tools.bench.stats import percentile


@dataclass(frozen=True)
class CallStats:
    label: str
    version: int  # the version the call reads (GetPosition: the head)
    samples: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    first_call_ms: float  # cold: before the read cache (and any checkpoint) holds the position

    @classmethod
    def of(
        cls, label: str, version: int, seconds: Sequence[float], first_call_ms: float
    ) -> CallStats:
        """From a non-empty sample of call durations in seconds."""
        ordered = sorted(seconds)
        return cls(
            label=label,
            version=version,
            samples=len(ordered),
            p50_ms=_ms(ordered, 50),
            p90_ms=_ms(ordered, 90),
            p99_ms=_ms(ordered, 99),
            mean_ms=statistics.fmean(ordered) * 1e3,
            min_ms=ordered[0] * 1e3,
            max_ms=ordered[-1] * 1e3,
            first_call_ms=first_call_ms,
        )


def _ms(ordered: Sequence[float], pct: float) -> float:
    seconds = percentile(ordered, pct)
    if seconds is None:
        raise ValueError("no samples")
    return seconds * 1e3
