"""GetPosition latency on a long-lived (10,000-event) position against a fresh one.

    python -m tools.bench_get_position [--database URL|postgres] [--events 10000]
                                       [--samples 2000] [--json PATH]

Starts a real ``ledger serve`` process (testbed.server.LedgerProcess), writes one
position with ``--events`` movements (RecordMovements, up to 500 per request, receipts and
adjustments alternating) and a second position with a single movement, then measures
GetPosition over one channel: warm-up first, then ``--samples`` calls per position,
interleaved big/small so drift and noise hit both alike.  Prints p50/p90/p99/mean in ms
for each and the big/small ratio.  Both are measured in the same run.  The "1st ms" column
is each position's first read (the server's read cache is cold: snapshot + later events).

``--database`` defaults to a SQLite file in a temp dir; ``postgres`` starts a throwaway
embedded PostgreSQL (testbed.postgres; ``LEDGER_TEST_POSTGRES_DSN`` is honoured);
anything else is passed to ``ledger serve --database`` as is (use an empty database).

Run from the repository root (it imports the test support package).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from inventory.ledger.v1 import (
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
)

from ledger.domain.limits import MOVEMENTS_PER_REQUEST_MAX
from testbed.server import LedgerProcess
from tools.bench.call_stats import CallStats
from tools.bench_support import database

SOURCE = "bench"
LOCATION = "BENCH-DC"
WARMUP_CALLS = 200
CALL_TIMEOUT_SECONDS = 60.0


# ---- database ------------------------------------------------------------------------------


# ---- writing -------------------------------------------------------------------------------


def _movement(run: str, sku: str, index: int) -> movement_pb2.Movement:
    common = {
        "message_id": f"{run}-{sku}-{index}",
        "source": SOURCE,
        "sku": sku,
        "location_id": LOCATION,
    }
    if index % 2 == 0:
        return movement_pb2.Movement(type=movement_pb2.MOVEMENT_TYPE_RECEIPT, qty=2, **common)
    return movement_pb2.Movement(
        type=movement_pb2.MOVEMENT_TYPE_ADJUSTMENT, delta=-1, reason="bench", **common
    )


def write_position(
    stub: movement_service_pb2_grpc.MovementServiceStub,
    run: str,
    sku: str,
    movements: int,
    batch: int,
) -> float:
    """Write ``movements`` movements to one position; returns the seconds it took."""
    began = time.perf_counter()
    last_report = began
    for start in range(0, movements, batch):
        stop = min(movements, start + batch)
        request = movement_service_pb2.RecordMovementsRequest(
            movements=[_movement(run, sku, i) for i in range(start, stop)]
        )
        response = stub.RecordMovements(request, timeout=CALL_TIMEOUT_SECONDS)
        recorded = sum(
            r.outcome == movement_service_pb2.MOVEMENT_OUTCOME_RECORDED for r in response.results
        )
        if recorded != stop - start:
            raise RuntimeError(f"only {recorded} of {stop - start} movements recorded")
        now = time.perf_counter()
        if movements > 1 and (now - last_report > 1.0 or stop == movements):
            last_report = now
            rate = stop / (now - began)
            print(
                f"  {sku}: {stop:>6}/{movements} movements written ({rate:,.0f}/s)",
                file=sys.stderr,
                flush=True,
            )
    return time.perf_counter() - began


# ---- measuring -----------------------------------------------------------------------------


def measure(
    stub: query_service_pb2_grpc.InventoryQueryServiceStub,
    skus: dict[str, str],
    samples: int,
    warmup: int,
) -> dict[str, list[float]]:
    """Sequential GetPosition calls, alternating between the positions (order flipped every
    other round so neither always goes first)."""
    labels = list(skus)
    requests = {
        label: query_service_pb2.GetPositionRequest(sku=sku, location_id=LOCATION)
        for label, sku in skus.items()
    }
    timings: dict[str, list[float]] = {label: [] for label in labels}
    for round_no in range(warmup + samples):
        order = labels if round_no % 2 == 0 else labels[::-1]
        for label in order:
            began = time.perf_counter()
            stub.GetPosition(requests[label], timeout=CALL_TIMEOUT_SECONDS)
            elapsed = time.perf_counter() - began
            if round_no >= warmup:
                timings[label].append(elapsed)
    return timings


# ---- report --------------------------------------------------------------------------------


def render(kind: str, rows: list[CallStats], ratio: dict[str, float]) -> str:
    header = (
        f"{'position':<10} {'version':>8} {'samples':>8} "
        f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'max ms':>8} {'1st ms':>8}"
    )
    lines = [f"GetPosition latency ({kind})", header, "-" * len(header)]
    for s in rows:
        lines.append(
            f"{s.label:<10} {s.version:>8} {s.samples:>8} "
            f"{s.p50_ms:>8.3f} {s.p90_ms:>8.3f} {s.p99_ms:>8.3f} {s.mean_ms:>8.3f} {s.max_ms:>8.3f}"
            f" {s.first_call_ms:>8.3f}"
        )
    lines.append(
        f"{'ratio':<10} {'big/small':>17} "
        f"{ratio['p50']:>8.2f} {ratio['p90']:>8.2f} {ratio['p99']:>8.2f} {ratio['mean']:>8.2f}"
    )
    return "\n".join(lines)


def run(
    database_spec: str | None,
    events: int,
    samples: int,
    *,
    warmup: int = WARMUP_CALLS,
    batch: int = MOVEMENTS_PER_REQUEST_MAX,
) -> dict[str, object]:
    run_id = uuid.uuid4().hex[:8]
    skus = {"big": f"BENCH-BIG-{run_id}", "small": f"BENCH-SMALL-{run_id}"}
    with database(database_spec) as (kind, url), LedgerProcess(url) as ledger:
        channel = ledger.channel()
        movements = movement_service_pb2_grpc.MovementServiceStub(channel)
        query = query_service_pb2_grpc.InventoryQueryServiceStub(channel)
        print(
            f"writing {events} movements to {skus['big']} and 1 to {skus['small']} ({kind})",
            file=sys.stderr,
            flush=True,
        )
        write_seconds = write_position(movements, run_id, skus["big"], events, batch)
        write_position(movements, run_id, skus["small"], 1, batch)
        # The first read of each position misses the server's read cache: it is rebuilt
        # from the latest snapshot (if any) plus the events after it.
        versions: dict[str, int] = {}
        cold_ms: dict[str, float] = {}
        for label, sku in skus.items():
            began = time.perf_counter()
            position = query.GetPosition(
                query_service_pb2.GetPositionRequest(sku=sku, location_id=LOCATION),
                timeout=CALL_TIMEOUT_SECONDS,
            )
            cold_ms[label] = (time.perf_counter() - began) * 1e3
            versions[label] = position.version
        print(
            f"measuring: {warmup} warm-up + {samples} samples per position, interleaved",
            file=sys.stderr,
            flush=True,
        )
        timings = measure(query, skus, samples, warmup)
    rows = [CallStats.of(label, versions[label], timings[label], cold_ms[label]) for label in skus]
    big, small = rows
    ratio = {
        "p50": big.p50_ms / small.p50_ms,
        "p90": big.p90_ms / small.p90_ms,
        "p99": big.p99_ms / small.p99_ms,
        "mean": big.mean_ms / small.mean_ms,
    }
    return {
        "database": kind,
        "events": events,
        "samples": samples,
        "warmup": warmup,
        "write_seconds": round(write_seconds, 3),
        "positions": {s.label: asdict(s) for s in rows},
        "ratio": ratio,
        "table": render(kind, rows, ratio),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_get_position", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--database",
        default=None,
        help="sqlite (default: temp file), postgres (embedded server), or a database URL",
    )
    parser.add_argument("--events", type=int, default=10_000, help="movements on the big one")
    parser.add_argument("--samples", type=int, default=2000, help="timed calls per position")
    parser.add_argument("--warmup", type=int, default=WARMUP_CALLS, help="untimed calls first")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.events < 1 or args.samples < 1 or args.warmup < 0:
        parser.error("--events and --samples must be >= 1, --warmup >= 0")

    result = run(args.database, args.events, args.samples, warmup=args.warmup)
    print(
        f"wrote {args.events} movements in {result['write_seconds']:.1f} s "
        f"({args.events / max(result['write_seconds'], 1e-9):,.0f}/s)"
    )
    print(result["table"])
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
