"""The as-of page's chart as plain geometry for a server-rendered SVG (templates/as_of.html):
step lines of on_hand and available over a window, one pair per time axis, so a late fact
shows as the effective line moving where the recorded one did not."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from entrypoints.ledger_fold import format_instant

WIDTH = 800
HEIGHT = 320
MARGIN_LEFT = 56
MARGIN_RIGHT = 16
MARGIN_TOP = 16
MARGIN_BOTTOM = 40
Y_TICKS = 5
X_TICKS = 4


@dataclass(frozen=True)
class Series:
    """One line: a bucket's value at instants on one axis."""

    axis: str  # "recorded" or "effective"
    bucket: str  # "on_hand" or "available"
    values: list[tuple[dt.datetime, int]]


def _nice_scale(low: int, high: int) -> tuple[int, int, int]:
    """(low, high, step): the range widened to include 0 and to whole steps of 1, 2 or 5
    times a power of ten, about :data:`Y_TICKS` of them."""
    low, high = min(low, 0), max(high, 0)
    span = max(high - low, 1)
    magnitude = 10 ** max(len(str(-(-span // Y_TICKS))) - 1, 0)
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude * Y_TICKS >= span)
    low, high = (low // step) * step, -(-high // step) * step
    return low, max(high, low + step), step


def chart_geometry(
    series: list[Series],
    start: dt.datetime,
    end: dt.datetime,
    marker: dt.datetime | None,
    dots_at: set[dt.datetime] | None = None,
) -> dict[str, Any]:
    """Coordinates in a WIDTH x HEIGHT view box: ``lines`` (SVG polyline points, step
    after), ``dots`` (every sample, with its axis, bucket, instant and value for tests and
    tooltips; only at ``dots_at`` when given), ticks, and the x of ``marker`` (the as-of
    instant) when inside the window."""
    if end <= start:
        raise ValueError("the chart's window must end after it starts")
    values = [value for line in series for _, value in line.values]
    low, high, step_y = _nice_scale(min(values, default=0), max(values, default=0))
    plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    span = (end - start).total_seconds()

    def x(instant: dt.datetime) -> float:
        return round(MARGIN_LEFT + plot_width * (instant - start).total_seconds() / span, 2)

    def y(value: float) -> float:
        return round(MARGIN_TOP + plot_height * (high - value) / (high - low), 2)

    lines, dots = [], []
    for line in series:
        points: list[str] = []
        for index, (instant, value) in enumerate(line.values):
            if index:
                points.append(f"{x(instant)},{y(line.values[index - 1][1])}")
            points.append(f"{x(instant)},{y(value)}")
            if dots_at is not None and instant not in dots_at:
                continue
            dots.append(
                {
                    "x": x(instant),
                    "y": y(value),
                    "axis": line.axis,
                    "bucket": line.bucket,
                    "at": format_instant(instant),
                    "value": value,
                }
            )
        lines.append({"axis": line.axis, "bucket": line.bucket, "points": " ".join(points)})
    y_ticks = [{"y": y(value), "label": str(value)} for value in range(low, high + 1, step_y)]
    x_ticks = [
        {
            "x": x(start + (end - start) * i / X_TICKS),
            "label": _time_label(start + (end - start) * i / X_TICKS),
        }
        for i in range(X_TICKS + 1)
    ]
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "plot": {
            "left": MARGIN_LEFT,
            "top": MARGIN_TOP,
            "right": WIDTH - MARGIN_RIGHT,
            "bottom": HEIGHT - MARGIN_BOTTOM,
        },
        "zero_y": y(0),
        "lines": lines,
        "dots": dots,
        "y_ticks": y_ticks,
        "x_ticks": x_ticks,
        "marker_x": x(marker) if marker is not None and start <= marker <= end else None,
        "start": format_instant(start),
        "end": format_instant(end),
    }


def _time_label(instant: dt.datetime) -> str:
    return instant.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")
