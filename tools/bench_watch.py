"""WatchAvailability delay: from a write's commit to the delivery of its AvailabilityChange.

    python -m tools.bench_watch [--database sqlite|postgres|URL] [--changes 500]
                                [--projections in-process|external] [--pause-ms 0]
                                [--json PATH]

Starts a real ``ledger serve`` (testbed.server.LedgerProcess). On SQLite the projection
runner is in-process by default (the watch follows its batches); on PostgreSQL a separate
``ledger projections`` process keeps the read models and the API runs with
``--projections external`` (the watch polls the read model's applied position). Then it opens
one watcher on one SKU and performs ``--changes`` writes, one at a time: a RecordMovements
receipt of 1 on the watched SKU, waiting for its change (channel_available + 1) to arrive
before the next write. ``--pause-ms P`` waits a random 0-P ms before each write, so that
the writes do not fall into step with a poll interval (the external projection process polls
the ledger every 200 ms: back-to-back writes then each wait a whole interval).

Per write it measures
  * commit → delivery: from the moment the RecordMovements response is in (the events are
    committed) to the moment the client has the AvailabilityChange. It can be slightly
    negative when the change overtakes the response;
  * write → delivery: from sending the write to the delivery (an upper bound of the above
    plus the write's own latency).
and prints median, p90, p99 and max in ms (the JSON with ``--json`` has more).

``--database`` defaults to a SQLite file in a temp dir; ``postgres`` starts a throwaway
embedded PostgreSQL (testbed.postgres; ``LEDGER_TEST_POSTGRES_DSN`` is honoured).
Run from the repository root (it imports the test support package).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import queue
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from inventory.ledger.v1 import (
    availability_pb2,
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
)

from testbed.projections import ProjectionsProcess
from testbed.server import LedgerProcess
from tools.bench_support import database

SOURCE = "bench-watch"
LOCATION = "BENCH-DC"
CHANNEL = "web"
WARMUP_WRITES = 20
CALL_TIMEOUT_SECONDS = 30.0
START_TIMEOUT_SECONDS = 30.0
_FOLLOWING = "projections following"


@contextlib.contextmanager
def serving(
    database_url: str, *, external: bool, env: dict[str, str] | None = None
) -> Iterator[LedgerProcess]:
    """A running ``ledger serve``; with ``external`` its read models are kept by a separate
    ``ledger projections`` process (started first, stopped last)."""
    with contextlib.ExitStack() as stack:
        args: list[str] = []
        if external:
            stack.enter_context(ProjectionsProcess(database_url, env=env))
            args = ["--projections", "external"]
        else:
            args = ["--projections", "in-process"]
        ledger = stack.enter_context(LedgerProcess(database_url, env=env, extra_args=args))
        yield ledger


class ChangeReader:
    """Reads a WatchAvailability stream on a thread, stamping each message on arrival."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.received: queue.Queue[tuple[float, availability_pb2.AvailabilityChange]] = (
            queue.Queue()
        )
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._read, name="watch-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for change in self.call:
                self.received.put((time.perf_counter(), change))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error

    def next(self, timeout: float = CALL_TIMEOUT_SECONDS) -> tuple[float, Any]:
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"no change within {timeout} s (stream error: {self.error})"
            ) from None

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(5)


def _percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sample."""
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(seconds: Sequence[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "samples": len(ordered),
        "median_ms": statistics.median(ordered) * 1e3,
        "p90_ms": _percentile(ordered, 90) * 1e3,
        "p99_ms": _percentile(ordered, 99) * 1e3,
        "max_ms": ordered[-1] * 1e3,
        "min_ms": ordered[0] * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
    }


def measure(
    ledger: LedgerProcess, changes: int, warmup: int, pause_ms: float = 0.0
) -> dict[str, list[float]]:
    run_id = uuid.uuid4().hex[:8]
    sku = f"BENCH-WATCH-{run_id}"
    channel = ledger.channel()
    movements = movement_service_pb2_grpc.MovementServiceStub(channel)
    query = query_service_pb2_grpc.InventoryQueryServiceStub(channel)
    reader = ChangeReader(
        query.WatchAvailability(
            query_service_pb2.WatchAvailabilityRequest(channel=CHANNEL, skus=[sku])
        )
    )
    try:
        _, first = reader.next()
        if not first.initial or first.channel_available != 0:
            raise RuntimeError(f"unexpected first message {first}")
        commit_to_delivery: list[float] = []
        write_to_delivery: list[float] = []
        for index in range(1, warmup + changes + 1):
            request = movement_service_pb2.RecordMovementsRequest(
                movements=[
                    movement_pb2.Movement(
                        type=movement_pb2.MOVEMENT_TYPE_RECEIPT,
                        message_id=f"{run_id}-{index}",
                        source=SOURCE,
                        sku=sku,
                        location_id=LOCATION,
                        qty=1,
                    )
                ]
            )
            if pause_ms:
                time.sleep(random.uniform(0, pause_ms) / 1e3)
            sent = time.perf_counter()
            movements.RecordMovements(request, timeout=CALL_TIMEOUT_SECONDS)
            committed = time.perf_counter()
            arrived, change = reader.next()
            if change.channel_available != index or change.previous_channel_available != index - 1:
                raise RuntimeError(f"write {index}: unexpected change {change}")
            if index > warmup:
                commit_to_delivery.append(arrived - committed)
                write_to_delivery.append(arrived - sent)
            if (index - warmup) % 100 == 0 and index > warmup:
                print(f"  {index - warmup:>6}/{changes} changes", file=sys.stderr, flush=True)
        with contextlib.suppress(queue.Empty):
            extra = reader.received.get(timeout=0.3)
            raise RuntimeError(f"unexpected extra change {extra[1]}")
    finally:
        reader.close()
    if reader.error is not None:
        raise RuntimeError(f"watch stream failed: {reader.error}")
    return {"commit_to_delivery": commit_to_delivery, "write_to_delivery": write_to_delivery}


def render(kind: str, mode: str, rows: dict[str, dict[str, float]]) -> str:
    header = f"{'delay':<20} {'samples':>8} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8}"
    lines = [f"WatchAvailability delay in ms ({kind}, projections {mode})", header]
    lines.append("-" * len(header))
    for label, s in rows.items():
        lines.append(
            f"{label:<20} {s['samples']:>8} {s['median_ms']:>8.2f} {s['p90_ms']:>8.2f}"
            f" {s['p99_ms']:>8.2f} {s['max_ms']:>8.2f}"
        )
    return "\n".join(lines)


def run(
    database_spec: str | None,
    changes: int,
    *,
    projections: str | None = None,
    warmup: int = WARMUP_WRITES,
    pause_ms: float = 0.0,
) -> dict[str, Any]:
    with database(database_spec) as (kind, url):
        mode = projections or ("in-process" if kind == "sqlite" else "external")
        with serving(url, external=mode == "external") as ledger:
            print(
                f"{changes} sequential writes on one watched SKU ({kind}, projections {mode})",
                file=sys.stderr,
                flush=True,
            )
            timings = measure(ledger, changes, warmup, pause_ms)
    rows = {label: summary(values) for label, values in timings.items()}
    return {
        "database": kind,
        "projections": mode,
        "changes": changes,
        "warmup": warmup,
        "pause_ms": pause_ms,
        "delays": rows,
        "table": render(kind, mode, {label.replace("_", " "): s for label, s in rows.items()}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_watch", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--database",
        default=None,
        help="sqlite (default: temp file), postgres (embedded server), or a database URL",
    )
    parser.add_argument("--changes", type=int, default=500, help="timed writes (and changes)")
    parser.add_argument("--warmup", type=int, default=WARMUP_WRITES, help="untimed writes first")
    parser.add_argument(
        "--projections",
        choices=("in-process", "external"),
        default=None,
        help="default: in-process on SQLite, external (separate process) on PostgreSQL",
    )
    parser.add_argument(
        "--pause-ms", type=float, default=0.0, help="random 0..P ms pause before each write"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.changes < 1 or args.warmup < 0 or args.pause_ms < 0:
        parser.error("--changes must be >= 1, --warmup and --pause-ms >= 0")
    result = run(
        args.database,
        args.changes,
        projections=args.projections,
        warmup=args.warmup,
        pause_ms=args.pause_ms,
    )
    print(result["table"])
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
