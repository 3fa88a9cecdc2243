"""Ratios to the baselines, the printed table and the JSON document.

JSON (``schema`` 1): ``mode``, ``started_at``, ``elapsed_s``, ``machine``, ``git``,
``settings``, then

* ``baselines``: ``grpc_echo``, ``pg_txn_per_call``, ``pg_group_commit``,
  ``jetstream_fetch_ack`` — each with ``rate`` and ``unit``;
* ``figures``: ``reserve_{distinct,hot}_c{64,256}_p{1,2}``, ``reserve_distinct_best``,
  ``reserve_half_load``, ``reserve_saturation`` (on the best distinct figure's processes)
  and ``reserve_half_load_pN``, ``reserve_saturation_pN`` (the other process count),
  ``reserve_drain``,
  ``record_movements_single``, ``record_movements_batch``, ``ingest``, ``get_position``,
  ``get_position_c16``, ``get_position_as_of``, ``get_availability_c16`` (eventual),
  ``get_availability_strong_c16``, ``projection_lag`` — each with ``rate``,
  ``unit``; load-generated ones also ``ok``, ``errors`` (status code -> count, OK calls
  aside), ``p50_ms``/``p90_ms``/``p99_ms``/``max_ms`` (OK calls in the window),
  ``seconds``, ``processes``, ``clients`` or ``offered_rate``, ``ok_qty``/``ambiguous_qty``
  (units), ``loadgen_cpu`` (per worker, cores), ``cpu_cores`` (servers, projections,
  loadgen, postgres, nats-server), ``server_commits`` (per server: ``commits``,
  ``reservations``, ``group_commits``, ``commands_per_group_commit``,
  ``transaction_ms_mean``, ``turns``, ``turn_ms_mean``) and, for writes,
  ``projection_lag`` (``lag_positions_p50/p99/max``, ``lag_seconds_p50/p99/max``); hot and
  drain figures ``no_oversell``; open-loop ones ``codes`` (OK included),
  ``client_dropped``, ``schedule_lag_p99_ms``, ``reserved_without_ok_answer``;
* ``ratios``: name -> ``value``, ``target`` (None: for information), ``met``,
  ``numerator``, ``denominator``;
* ``targets``: ``half_load_p50_ms``, ``half_load_p99_ms``, ``saturation_timeout_share``
  (and each with ``_pN`` for the other process count's open loops)
  (DEADLINE_EXCEEDED over every answer at saturation; with ``resource_exhausted`` and
  ``deadline_exceeded`` counts) — each ``value``, ``target`` (text), ``met``;
* ``checks``: ``no_oversell`` (``passed`` and each position checked), ``ingest_durable``,
  ``eventual_equals_strong`` (``passed``, ``positions`` compared at lag 0, ``mismatches``,
  ``unjudged``);
* ``failures``: figures that could not be measured (name -> error), empty on a clean run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BASELINE_KEYS = ("grpc_echo", "pg_txn_per_call", "pg_group_commit", "jetstream_fetch_ack")

# (name, numerator figure, denominator: "baselines.X" or a figure, target or None)
RATIOS: tuple[tuple[str, str, str, float | None], ...] = (
    (
        "reserve_distinct_vs_group_commit_writer",
        "reserve_distinct_best",
        "baselines.pg_group_commit",
        0.70,
    ),
    ("reserve_distinct_vs_txn_per_call", "reserve_distinct_best", "baselines.pg_txn_per_call", 1.0),
    ("hot_vs_distinct_c256_p2", "reserve_hot_c256_p2", "reserve_distinct_c256_p2", 0.80),
    ("ingest_vs_jetstream_fetch_ack", "ingest", "baselines.jetstream_fetch_ack", 0.50),
    ("reserve_vs_grpc_echo", "reserve_distinct_best", "baselines.grpc_echo", None),
    ("get_position_c16_vs_grpc_echo", "get_position_c16", "baselines.grpc_echo", None),
    ("get_availability_c16_vs_grpc_echo", "get_availability_c16", "baselines.grpc_echo", None),
    (
        "get_availability_strong_c16_vs_grpc_echo",
        "get_availability_strong_c16",
        "baselines.grpc_echo",
        None,
    ),
)
RATIO_KEYS = tuple(name for name, *_ in RATIOS)


def _lookup(document: Mapping[str, Any], ref: str) -> Mapping[str, Any] | None:
    if ref.startswith("baselines."):
        return document["baselines"].get(ref.removeprefix("baselines."))
    return document["figures"].get(ref)


def ratios(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, numerator, denominator, target in RATIOS:
        top, bottom = _lookup(document, numerator), _lookup(document, denominator)
        value = None
        if top and bottom and top.get("rate") and bottom.get("rate"):
            value = round(top["rate"] / bottom["rate"], 3)
        out[name] = {
            "value": value,
            "target": target,
            "met": None if target is None or value is None else value >= target,
            "numerator": numerator,
            "denominator": denominator,
        }
    return out


# Must-show 3 of issue 8: latency at half the measured maximum, and back-pressure rather
# than timeouts at saturation (timeouts at most this share of the calls answered).
HALF_LOAD_P50_MS = 10.0
HALF_P = "reserve_half_load_p"
HALF_LOAD_P99_MS = 50.0
SATURATION_TIMEOUT_SHARE = 0.01


def targets(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The latency and back-pressure targets: name -> ``value``, ``target`` (text),
    ``met`` (None when the figure is missing). Unsuffixed: the open loops on the best
    distinct figure's processes; ``_pN`` (where measured): on the other process count."""
    figures = document["figures"]
    out: dict[str, dict[str, Any]] = {}
    other = sorted(k.removeprefix("reserve_half_load") for k in figures if k.startswith(HALF_P))
    suffixes = ["", *other]
    for suffix in suffixes:
        half = figures.get(f"reserve_half_load{suffix}") or {}
        saturation = figures.get(f"reserve_saturation{suffix}") or {}
        out.update(_open_loop_targets(half, saturation, suffix))
    return out


def _open_loop_targets(
    half: Mapping[str, Any], saturation: Mapping[str, Any], suffix: str
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, value, limit in (
        ("half_load_p50_ms", half.get("p50_ms"), HALF_LOAD_P50_MS),
        ("half_load_p99_ms", half.get("p99_ms"), HALF_LOAD_P99_MS),
    ):
        out[name + suffix] = {
            "value": value,
            "target": f"<={limit:g}",
            "met": None if value is None else value <= limit,
        }
    codes = saturation.get("codes") or {}
    answered = sum(codes.values())
    timeouts = codes.get("DEADLINE_EXCEEDED", 0)
    share = round(timeouts / answered, 4) if answered else None
    out["saturation_timeout_share" + suffix] = {
        "value": share,
        "target": f"<={SATURATION_TIMEOUT_SHARE:g}",
        "met": None if share is None else share <= SATURATION_TIMEOUT_SHARE,
        "resource_exhausted": codes.get("RESOURCE_EXHAUSTED", 0),
        "deadline_exceeded": timeouts,
    }
    return out


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _errors(figure: Mapping[str, Any]) -> str:
    errors = figure.get("errors") or {}
    return " ".join(f"{code}={n}" for code, n in errors.items()) or "-"


def _cpu(cores: Mapping[str, Any] | None) -> str:
    """Where the CPU went (cores): a server near 1.0 is one Python process at its limit."""
    if not cores:
        return ""
    parts = []
    for group, label in (("servers", "srv"), ("server", "srv"), ("ingest", "ingest")):
        if cores.get(group):
            parts.append(f"{label} {'+'.join(f'{c:.2f}' for c in cores[group])}")
    if cores.get("postgres"):
        parts.append(f"pg {cores['postgres']:.2f}")
    return f"  [cpu {' '.join(parts)}]" if parts else ""


def table(document: Mapping[str, Any]) -> str:
    rows = [("figure", "rate", "unit", "p50 ms", "p99 ms", "errors / notes")]
    for section in ("baselines", "figures"):
        for name, figure in document[section].items():
            note = _errors(figure)
            if name == "projection_lag":
                seconds, interval = figure.get("lag_seconds_p99"), figure.get("interval_s", 0)
                behind = (
                    f"< {interval:g} s (the poll interval)"
                    if seconds is not None and seconds < interval
                    else f"{_cell(seconds, 3)} s"
                )
                note = (
                    f"lag p99 {_cell(figure.get('lag_positions_p99'))} positions, {behind}"
                    f" (from {figure.get('from')}; worst run p99"
                    f" {_cell(figure.get('worst_lag_seconds_p99'), 3)} s)"
                )
            elif name == "reserve_distinct_best":
                note = f"= {figure.get('from')}"
            elif "no_oversell" in figure:
                note = f"{note}  no-oversell {'ok' if figure['no_oversell'] else 'FAILED'}"
            elif name == "ingest":
                note = f"durable {'ok' if figure.get('durable_in_ledger') else 'MISSING'}"
            if figure.get("reserved_without_ok_answer"):
                note += f"  reserved without OK: {figure['reserved_without_ok_answer']}"
            note += _cpu(figure.get("cpu_cores"))
            rows.append(
                (
                    name,
                    _cell(figure.get("rate")),
                    str(figure.get("unit", "")),
                    _cell(figure.get("p50_ms", figure.get("commit_p50_ms")), 2),
                    _cell(figure.get("p99_ms", figure.get("commit_p99_ms")), 2),
                    note,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(
            cell.ljust(w) if i in (0, 2) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row[:5], widths, strict=True))
        )
        + f"  {row[5]}"
        for row in rows
    ]
    lines.append("")
    lines.append(f"{'ratio':<42}{'value':>8}{'target':>9}  met")
    for name, ratio in document["ratios"].items():
        target = ratio["target"]
        met = {True: "yes", False: "NO", None: "-"}[ratio["met"]]
        lines.append(
            f"{name:<42}{_cell(ratio['value'], 3):>8}"
            f"{(f'>={target:.2f}' if target is not None else '-'):>9}  {met}"
        )
    for name, item in document.get("targets", {}).items():
        met = {True: "yes", False: "NO", None: "-"}[item["met"]]
        lines.append(f"{name:<42}{_cell(item['value'], 3):>8}{item['target']:>9}  {met}")
    checks = document["checks"]
    agreed = checks.get("eventual_equals_strong") or {}
    lines.append("")
    lines.append(
        f"no oversell: {'passed' if checks['no_oversell']['passed'] else 'FAILED'}"
        f" ({len(checks['no_oversell']['positions'])} positions checked);"
        f" ingest durable: {'yes' if checks['ingest_durable'] else 'NO'};"
        f" eventual == STRONG: {'yes' if agreed.get('passed') else 'NO'}"
        f" ({agreed.get('positions', 0)} SKUs at lag 0)"
    )
    for name, error in document.get("failures", {}).items():
        lines.append(f"FAILED {name}: {error}")
    return "\n".join(lines)


def write(document: Mapping[str, Any], path: str | Path) -> None:
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    partial.replace(target)
