"""Read-model rebuild throughput next to raw notification-log read speed, in the same run.

    python -m tools.bench_rebuild [--database sqlite|postgres|URL] [--events 50000]
                                  [--rounds 3] [--batch-size 2000] [--json PATH] [--profile]

Writes ``--events`` ledger events (notifications) in-process — ``bootstrap.open_service``
and ``record_movements`` with 500 movements per call: receipts, shipments (some driving
on_hand negative), adjustments, cycle counts and transfers over 1,000 SKUs at 4 locations,
plus channel policies — then builds the read models incrementally
(``ProjectionRunner.catch_up``, batches of 500) and measures, ``--rounds`` times
interleaved, with the median reported:

* ``raw select``: ``app.recorder.select_notifications`` in batches of 500, start to head;
* ``select + decode``: the same plus ``app.mapper.to_domain_event`` on every notification;
* ``rebuild``: ``projections.rebuild.rebuild`` — a new generation from position 0, swapped
  in, the previous one dropped.

Every rebuilt generation is compared row by row with the incremental one (positions,
policies, exceptions, tracking position); any difference exits with status 1. The table
gives events/s (notifications per second: every stage reads every notification) and the
ratios to the raw and to the decoded read speed (a rebuild decodes the position and policy
events — about 57 % of the notifications here; the rest are idempotency keys and
reservations). ``--profile`` also prints a cProfile of one more rebuild.

``--database`` defaults to a SQLite file in a temp dir; ``postgres`` starts a throwaway
embedded PostgreSQL (testbed.postgres; ``LEDGER_TEST_POSTGRES_DSN`` is honoured);
anything else is used as a database URL as is (use an empty database).

Run from the repository root (``postgres`` imports the test support package).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from entrypoints import bootstrap
from ledger.config import Settings
from ledger.domain.movements import Movement, MovementType
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from projections.rebuild import REBUILD_BATCH_MAX, rebuild
from projections.runner import ProjectionRunner
from projections.store import ReadModelRows
from tools.bench_support import database

MOVEMENTS_PER_CALL = 500
READ_BATCH = 500
SKUS = 1_000
LOCATIONS = ("DC-1", "DC-2", "STORE-3", "STORE-4")
CHANNELS = ("web", "market", "b2b")
SOURCE = "bench"


# ---- database ------------------------------------------------------------------------------


# ---- writing -------------------------------------------------------------------------------


def _movements(rng: random.Random, first: int, count: int) -> list[Movement]:
    now = datetime.now(UTC)
    found = []
    for number in range(first, first + count):
        sku = f"SKU-{rng.randrange(SKUS):05d}"
        location = rng.choice(LOCATIONS)
        message_id = f"m-{number}"
        kind = rng.random()
        if kind < 0.40:
            movement = Movement(
                SOURCE, message_id, MovementType.RECEIPT, sku, location, qty=rng.randint(1, 50)
            )
        elif kind < 0.70:
            movement = Movement(
                SOURCE, message_id, MovementType.SHIPMENT, sku, location, qty=rng.randint(1, 40)
            )
        elif kind < 0.80:
            movement = Movement(
                SOURCE,
                message_id,
                MovementType.ADJUSTMENT,
                sku,
                location,
                delta=rng.choice([-1, 1]) * rng.randint(1, 9),
                reason="recount",
            )
        elif kind < 0.85:
            movement = Movement(
                SOURCE,
                message_id,
                MovementType.CYCLE_COUNT,
                sku,
                location,
                counted=rng.randint(0, 60),
                occurred_at=now - timedelta(hours=rng.choice([0, 0, 30])),
            )
        else:
            movement = Movement(
                SOURCE,
                message_id,
                MovementType.TRANSFER_DISPATCH,
                sku,
                location,
                qty=rng.randint(1, 10),
                transfer_id=f"T-{number}",
                to_location_id=rng.choice([loc for loc in LOCATIONS if loc != location]),
                expected_at=now + timedelta(days=rng.randint(0, 5)),
            )
        found.append(movement)
    return found


def write(service: LedgerService, events: int, seed: int = 50_000) -> tuple[int, float]:
    """Write until the ledger head reaches ``events``; returns (movements, seconds)."""
    rng = random.Random(seed)
    ctx = CallContext(principal="bench")
    began = time.perf_counter()
    written = 0
    for number, channel in enumerate(CHANNELS):
        service.set_channel_policy(
            ctx, f"policy-{channel}", channel, list(LOCATIONS[: number + 2]), 90, 1, 0
        ).result()
    while service.app.head_position() < events:
        service.record_movements(ctx, _movements(rng, written, MOVEMENTS_PER_CALL)).result()
        written += MOVEMENTS_PER_CALL
        if written % 10_000 == 0:
            print(
                f"  {written} movements written (head {service.app.head_position()})",
                file=sys.stderr,
                flush=True,
            )
    return written, time.perf_counter() - began


# ---- measuring -----------------------------------------------------------------------------


def raw_read(service: LedgerService, *, decode: bool) -> tuple[int, float]:
    """Read the whole notification log in batches of 500; (notifications, seconds)."""
    recorder, mapper = service.app.recorder, service.app.mapper
    began = time.perf_counter()
    count = 0
    start = 0
    while notes := recorder.select_notifications(
        start=start, limit=READ_BATCH, inclusive_of_start=False
    ):
        if decode:
            for note in notes:
                mapper.to_domain_event(note)
        count += len(notes)
        start = notes[-1].id
    return count, time.perf_counter() - began


def differences(actual: ReadModelRows, expected: ReadModelRows) -> list[str]:
    found = []
    if actual.position != expected.position:
        found.append(f"tracking position {actual.position} != {expected.position}")
    for table in ("positions", "policies", "exceptions", "items"):
        got, want = getattr(actual, table), getattr(expected, table)
        if len(got) != len(want):
            found.append(f"{table}: {len(got)} rows, not {len(want)}")
        for index, (row, wanted) in enumerate(zip(got, want, strict=False)):
            if row != wanted:
                found.append(f"{table} row {index}: {row!r} != {wanted!r}")
                break
    return found


def render(kind: str, result: dict[str, Any]) -> str:
    raw = result["stages"]["raw select"]["events_per_second"]
    decoded = result["stages"]["select + decode"]["events_per_second"]
    header = f"{'stage':<28} {'seconds':>8} {'events/s':>10} {'vs raw':>7} {'vs decode':>9}"
    lines = [
        f"rebuild vs raw log read ({kind}): {result['notifications']:,} notifications,"
        f" {result['movements']:,} movements, {result['positions']:,} positions,"
        f" median of {result['rounds']} rounds",
        header,
        "-" * len(header),
    ]
    for stage, figures in result["stages"].items():
        lines.append(
            f"{stage:<28} {figures['seconds']:>8.3f} {figures['events_per_second']:>10,.0f}"
            f" {figures['events_per_second'] / raw:>7.2f}"
            f" {figures['events_per_second'] / decoded:>9.2f}"
        )
    lines.append(f"rebuilt rows identical to incremental: {'yes' if result['identical'] else 'NO'}")
    return "\n".join(lines)


def _timed_rounds(
    service: Any, store: Any, incremental: Any, *, rounds: int, batch_size: int
) -> tuple[dict[str, list[float]], int, list[str]]:
    """Each round: the raw and the decoding log reads, then a rebuild checked against the
    incrementally built rows. Returns the timings by stage, the notifications read and the
    differences found."""
    timings: dict[str, list[float]] = {
        "raw select": [],
        "select + decode": [],
        f"rebuild (batch {batch_size})": [],
    }
    problems: list[str] = []
    count = 0
    for number in range(1, rounds + 1):
        print(f"round {number}/{rounds} ...", file=sys.stderr, flush=True)
        for stage, decode in (("raw select", False), ("select + decode", True)):
            count, seconds = raw_read(service, decode=decode)
            timings[stage].append(seconds)
        report = rebuild(service.app, store, batch_max=batch_size)
        timings[f"rebuild (batch {batch_size})"].append(report.seconds)
        problems += differences(store.rows(), incremental)
    return timings, count, problems


def _profiled_rebuild(service: Any, store: Any, batch_size: int) -> str:
    """One more rebuild under cProfile: the 30 costliest calls, cumulative."""
    profiler = cProfile.Profile()
    profiler.enable()
    rebuild(service.app, store, batch_max=batch_size)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
    return out.getvalue()


def _stages(
    timings: dict[str, list[float]], count: int, incremental_seconds: float
) -> dict[str, dict[str, float]]:
    """Median seconds and events/s per stage, and the one incremental build's."""
    stages = {
        stage: {
            "seconds": round(statistics.median(values), 4),
            "events_per_second": round(count / statistics.median(values), 1),
        }
        for stage, values in timings.items()
    }
    stages["incremental (batch 500)"] = {
        "seconds": round(incremental_seconds, 4),
        "events_per_second": round(count / incremental_seconds, 1),
    }
    return stages


def run(
    database_spec: str | None,
    events: int,
    *,
    rounds: int = 3,
    batch_size: int = REBUILD_BATCH_MAX,
    profile: bool = False,
) -> dict[str, Any]:
    with database(database_spec) as (kind, url):
        settings = Settings(database_url=url)
        service = bootstrap.open_service(settings)
        store = bootstrap.open_read_models(settings)
        try:
            print(f"writing {events:,} events ({kind}) ...", file=sys.stderr, flush=True)
            movements, write_seconds = write(service, events)
            notifications = service.app.head_position()
            print("building the read models incrementally ...", file=sys.stderr, flush=True)
            runner = ProjectionRunner(service.app, store)
            began = time.perf_counter()
            runner.catch_up()
            incremental_seconds = time.perf_counter() - began
            incremental = store.rows()
            timings, count, problems = _timed_rounds(
                service, store, incremental, rounds=rounds, batch_size=batch_size
            )
            profile_text = _profiled_rebuild(service, store, batch_size) if profile else ""
        finally:
            store.close()
            service.close()
    stages = _stages(timings, count, incremental_seconds)
    result: dict[str, Any] = {
        "database": kind,
        "notifications": count,  # as read from the log (ids may have gaps)
        "head": notifications,
        "movements": movements,
        "positions": len(incremental.positions),
        "exceptions": len(incremental.exceptions),
        "write_seconds": round(write_seconds, 3),
        "rounds": rounds,
        "batch_size": batch_size,
        "stages": stages,
        "rebuild_vs_decode": round(
            stages[f"rebuild (batch {batch_size})"]["events_per_second"]
            / stages["select + decode"]["events_per_second"],
            3,
        ),
        "rebuild_vs_raw": round(
            stages[f"rebuild (batch {batch_size})"]["events_per_second"]
            / stages["raw select"]["events_per_second"],
            3,
        ),
        "identical": not problems,
        "differences": problems[:20],
    }
    result["table"] = render(kind, result)
    if profile_text:
        result["profile"] = profile_text
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_rebuild", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--database",
        default=None,
        help="sqlite (default: temp file), postgres (embedded server), or a database URL",
    )
    parser.add_argument("--events", type=int, default=50_000, help="ledger events to write")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument(
        "--batch-size", type=int, default=REBUILD_BATCH_MAX, help="rebuild batch size"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--profile", action="store_true", help="cProfile one more rebuild")
    args = parser.parse_args(argv)
    if args.events < 1 or args.rounds < 1 or args.batch_size < 1:
        parser.error("--events, --rounds and --batch-size must be >= 1")

    result = run(
        args.database,
        args.events,
        rounds=args.rounds,
        batch_size=args.batch_size,
        profile=args.profile,
    )
    print(
        f"wrote {result['movements']:,} movements ({result['notifications']:,} events)"
        f" in {result['write_seconds']:.1f} s"
    )
    print(result["table"])
    if args.profile:
        print(result["profile"])
    if args.json is not None:
        args.json.write_text(
            json.dumps({k: v for k, v in result.items() if k != "profile"}, indent=2) + "\n"
        )
    if not result["identical"]:
        print("rebuilt read models differ from the incremental ones:", file=sys.stderr)
        for line in result["differences"]:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
