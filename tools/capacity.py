"""``python -m tools.capacity [bench-results.json]``: where each scaling limit is reached.

Reads one ``tools.bench`` run and turns its measured figures into the capacity model of
docs/scaling.md: what one API core, one PostgreSQL core, one ingest core and one
projection core carry, the ceiling of one ledger's serial commit order (the events table
lock every commit holds), and so how many API replicas, ingest bridges and ledger
partitions a target rate needs. The arithmetic lives in :func:`model` (tested); the
command only loads the JSON and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A group commit takes at most this many commands (LEDGER_GROUP_COMMIT_MAX's default).
BATCH_MAX = 256
# The figure whose per-core costs the model uses: one process, the writer kept busy.
REFERENCE = "reserve_distinct_c256_p1"


@dataclass(frozen=True)
class Capacity:
    reserve_per_api_core: float  # reservations/s one core of `ledger serve` carries
    pg_core_ms_per_reserve: float  # PostgreSQL CPU per reservation (ms of one core)
    transaction_ms: float  # mean serial section: writer turn (or the events table lock's hold)
    commands_per_transaction: float  # measured mean at the reference load
    lock_fixed_ms: float  # a write transaction's cost whatever its size ...
    lock_ms_per_command: float  # ... plus this per command (fitted, see lock_cost)
    single_log_reserves_per_s: float  # one ledger's ceiling: full batches back to back
    ingest_per_core: float  # movement messages/s per core of `ledger ingest`
    reads_per_api_core: float  # GetPosition calls/s per core of `ledger serve`

    def api_replicas_for(self, rate: float, cores_per_replica: int) -> int:
        return math.ceil(rate / (self.reserve_per_api_core * cores_per_replica))

    def pg_cores_for(self, rate: float) -> float:
        return rate * self.pg_core_ms_per_reserve / 1000

    def partitions_for(self, rate: float) -> int | None:
        """None when the run did not measure transaction times (an older JSON)."""
        if self.single_log_reserves_per_s <= 0:
            return None
        return max(1, math.ceil(rate / self.single_log_reserves_per_s))

    def ingest_bridges_for(self, rate: float, cores_per_bridge: int) -> int:
        return math.ceil(rate / (self.ingest_per_core * cores_per_bridge))


def _cores(figure: Mapping[str, Any], key: str) -> float:
    value = figure.get("cpu_cores", {}).get(key, 0.0)
    return float(sum(value)) if isinstance(value, list) else float(value or 0.0)


def _server_cores(figure: Mapping[str, Any]) -> float:
    """CPU of the whole `ledger serve` (its writer child and extra API processes included)
    where the run measured it, else of the serving process alone (older runs)."""
    return _cores(figure, "server_trees") or _cores(figure, "servers")


def _transactions(figure: Mapping[str, Any]) -> tuple[float, float] | None:
    """(reservations per serial section, its mean ms) of the first server. The serial
    section is the writer's turn (the writer mutex's hold: stamp, fast-forward, apply,
    commit) where the run measured it, else the write transaction (the events table lock)."""
    servers = figure.get("server_commits") or []
    if not servers:
        return None
    first = servers[0]
    reservations = float(first.get("reservations", 0))
    if first.get("turn_ms_mean"):
        turns = max(float(first.get("turns") or 0), 1.0)
        return reservations / turns, float(first["turn_ms_mean"])
    if not first.get("transaction_ms_mean"):
        return None
    transactions = max(float(first.get("commits") or 0), 1.0)
    return reservations / transactions, float(first["transaction_ms_mean"])


def lock_cost(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(fixed ms, ms per command) of a write transaction, fitted through the measured
    (commands, ms) points; with fewer than two distinct sizes, or a fit that makes no
    sense, all of it is charged per command (the pessimistic reading)."""
    points = sorted(p for p in points if p[0] > 0)
    if len(points) >= 2 and points[-1][0] > points[0][0]:
        (n1, t1), (n2, t2) = points[0], points[-1]
        slope = (t2 - t1) / (n2 - n1)
        fixed = t1 - slope * n1
        if slope > 0 and fixed >= 0:
            return fixed, slope
    if not points:
        return 0.0, 0.0
    n, t = points[-1]
    return 0.0, t / n


def model(document: Mapping[str, Any]) -> Capacity:
    figures = document["figures"]
    reference = figures[REFERENCE]
    rate = float(reference["rate"])
    measured = [
        point
        for key in ("reserve_distinct_c64_p1", REFERENCE)
        if key in figures and (point := _transactions(figures[key])) is not None
    ]
    fixed_ms, per_command_ms = lock_cost(measured)
    full_batch_ms = fixed_ms + per_command_ms * BATCH_MAX
    per_transaction, transaction_ms = measured[-1] if measured else (1.0, 0.0)
    ingest = figures.get("ingest", {})
    reads = figures.get("get_position_c16", {})
    return Capacity(
        reserve_per_api_core=rate / max(_server_cores(reference), 1e-9),
        pg_core_ms_per_reserve=1000 * _cores(reference, "postgres") / rate,
        transaction_ms=transaction_ms,
        commands_per_transaction=per_transaction,
        lock_fixed_ms=fixed_ms,
        lock_ms_per_command=per_command_ms,
        single_log_reserves_per_s=1000 * BATCH_MAX / full_batch_ms if full_batch_ms else 0.0,
        ingest_per_core=float(ingest.get("rate", 0.0))
        / max(_cores(ingest, "ingest") + _cores(ingest, "server_trees"), 1e-9),
        reads_per_api_core=float(reads.get("rate", 0.0)) / max(_server_cores(reads), 1e-9),
    )


def table(capacity: Capacity, targets: tuple[float, ...]) -> str:
    c = capacity
    lines = [
        f"per API core:          {c.reserve_per_api_core:>9,.0f} reservations/s",
        f"per API core (reads):  {c.reads_per_api_core:>9,.0f} GetPosition/s",
        f"PostgreSQL CPU:        {c.pg_core_ms_per_reserve:>9.3f} core-ms per reservation",
        f"serial write section:  {c.transaction_ms:>9.2f} ms mean"
        f" at {c.commands_per_transaction:.0f} reservations"
        f" (fit: {c.lock_fixed_ms:.2f} ms + {c.lock_ms_per_command:.3f} ms each)",
        f"one ledger's ceiling:  {c.single_log_reserves_per_s:>9,.0f} reservations/s"
        f" (turns of {BATCH_MAX} commands back to back, one writer at a time)",
        f"per ingest core:       {c.ingest_per_core:>9,.0f} messages/s",
        "",
        "target/s    API replicas (4 cores)   PG cores   ledger partitions"
        "   ingest bridges (2 cores)",
    ]
    for rate in targets:
        lines.append(
            f"{rate:>8,.0f}    {c.api_replicas_for(rate, 4):>20}   {c.pg_cores_for(rate):>8.1f}"
            f"   {c.partitions_for(rate) or '?':>17}   {c.ingest_bridges_for(rate, 2):>22}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.capacity", description=__doc__)
    parser.add_argument("results", nargs="?", default="bench-results.json")
    parser.add_argument(
        "--target", type=float, action="append", help="rates to size for (reservations/s)"
    )
    args = parser.parse_args(argv)
    document = json.loads(Path(args.results).read_text())
    print(table(model(document), tuple(args.target or (1_000, 5_000, 20_000, 100_000))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
