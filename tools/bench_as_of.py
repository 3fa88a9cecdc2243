"""GetPositionAsOf latency at the start, middle and end of a long (50,000-event) position,
next to a plain GetPosition, in the same run.

    python -m tools.bench_as_of [--database URL|postgres] [--events 50000] [--late 0]
                                [--samples 300] [--warmup 20] [--json PATH]

Starts a real ``ledger serve`` process (testbed.server.LedgerProcess) and writes one
position with ``--events`` movements (RecordMovements, up to 500 per request, receipts of 2
and adjustments of -1 alternating), movement k occurring at ``base + k`` seconds (base: two
days ago), so every instant maps to a known version.  Requests are cut at the start (1%),
middle (50%) and end (99.9%) versions, and the position's ``updated_at`` after each cut is
the RECORDED instant of that version.

``--late N`` then records N late facts (receipts of 3 and adjustments of -1 alternating)
whose occurred_at lies between 40% and 60% of the history: the effective axis must re-fold
from before them (the first such query is cold), later queries start from the in-memory
effective checkpoints the first one left.

Measured over one channel: one first call per variant (table order, so a later row's first
call may reuse checkpoints an earlier one left), ``--warmup`` untimed rounds, then
``--samples`` rounds, each calling every variant once in an order rotated per round so
drift and noise hit all alike.  Variants: GetPosition (current), and GetPositionAsOf
RECORDED / EFFECTIVE at start, middle and end.  Prints p50/p90/p99/mean in ms per variant
and each as-of row's p50 and p99 over GetPosition's.  Every answer's on_hand (and version
where it is defined by the instant alone) is checked against what was written: a wrong
figure makes the exit status 1.

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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2
from inventory.ledger.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
    position_pb2,
    query_service_pb2,
    query_service_pb2_grpc,
)

from ledger.domain.limits import MOVEMENTS_PER_REQUEST_MAX
from testbed.server import LedgerProcess
from tools.bench.call_stats import CallStats
from tools.bench_support import database

SOURCE = "bench"
LOCATION = "BENCH-DC"
WARMUP_ROUNDS = 20
CALL_TIMEOUT_SECONDS = 120.0  # a cold effective fold over a long stretch takes a while
POINTS = {"start": 0.01, "middle": 0.5, "end": 0.999}  # share of the position's versions
LATE_WINDOW = (0.4, 0.6)  # where late facts land in the history (share of its movements)
MICROS = 1_000_000
MAX_ERRORS_SHOWN = 10


# ---- the history and what it should add up to ----------------------------------------------


@dataclass(frozen=True)
class History:
    """What was written: main movement k (version k + 2; version 1 is the position's
    opening entry, same occurred_at as movement 0) occurs at ``base + k`` s; late fact j
    (version events + 2 + j) at ``base + late_offsets_us[j]``."""

    base: datetime
    events: int
    late_offsets_us: tuple[int, ...]

    @property
    def head_version(self) -> int:
        return 1 + self.events + len(self.late_offsets_us)

    @staticmethod
    def main_on_hand(movements: int) -> int:
        """on_hand after the first ``movements`` main movements (+2, -1, +2, ...)."""
        return 2 * ((movements + 1) // 2) - movements // 2

    @staticmethod
    def late_delta(j: int) -> int:
        return 3 if j % 2 == 0 else -1

    def recorded_on_hand(self, version: int) -> int:
        """RECORDED at a version of the main history (late facts are recorded after it)."""
        return self.main_on_hand(version - 1)

    def effective_on_hand(self, offset_us: int) -> int:
        """EFFECTIVE at ``base + offset_us``: every fact that occurred by then."""
        main = min(self.events, offset_us // MICROS + 1) if offset_us >= 0 else 0
        late = sum(
            self.late_delta(j) for j, at in enumerate(self.late_offsets_us) if at <= offset_us
        )
        return self.main_on_hand(main) + late

    def total_on_hand(self) -> int:
        return self.effective_on_hand(2**62)


def target_versions(events: int) -> dict[str, int]:
    """Versions of the main history at the start, middle and end points (>= 2: a movement)."""
    head = events + 1
    return {name: max(2, min(head, round(share * head))) for name, share in POINTS.items()}


def late_offsets(events: int, late: int) -> tuple[int, ...]:
    """Spread over the late window, half a second off the main grid so none ties."""
    lo, hi = (int(share * events) for share in LATE_WINDOW)
    span_us = max(1, hi - lo) * MICROS
    return tuple(lo * MICROS + j * span_us // late + MICROS // 2 for j in range(late))


# ---- writing -------------------------------------------------------------------------------


def _stamp(at: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _movement(
    run: str, sku: str, key: str, receipt: bool, qty_or_delta: int, at: datetime
) -> movement_pb2.Movement:
    common = {
        "message_id": f"{run}-{sku}-{key}",
        "source": SOURCE,
        "sku": sku,
        "location_id": LOCATION,
        "occurred_at": _stamp(at),
    }
    if receipt:
        return movement_pb2.Movement(
            type=movement_pb2.MOVEMENT_TYPE_RECEIPT, qty=qty_or_delta, **common
        )
    return movement_pb2.Movement(
        type=movement_pb2.MOVEMENT_TYPE_ADJUSTMENT, delta=qty_or_delta, reason="bench", **common
    )


def _record(
    stub: movement_service_pb2_grpc.MovementServiceStub, movements: list[movement_pb2.Movement]
) -> None:
    request = movement_service_pb2.RecordMovementsRequest(movements=movements)
    response = stub.RecordMovements(request, timeout=CALL_TIMEOUT_SECONDS)
    recorded = sum(
        r.outcome == movement_service_pb2.MOVEMENT_OUTCOME_RECORDED for r in response.results
    )
    if recorded != len(movements):
        raise RuntimeError(f"only {recorded} of {len(movements)} movements recorded")


def write_history(
    movements: movement_service_pb2_grpc.MovementServiceStub,
    query: query_service_pb2_grpc.InventoryQueryServiceStub,
    run: str,
    sku: str,
    history: History,
    cut_versions: Sequence[int],
    batch: int,
) -> tuple[float, dict[int, timestamp_pb2.Timestamp]]:
    """Write the main history, then the late facts; returns the seconds it took and the
    recorded_at of each cut version (the position's updated_at right after it)."""
    began = time.perf_counter()
    last_report = began
    # Movement counts after which a request must end: head version = count + 1.
    cuts = sorted({v - 1 for v in cut_versions})
    recorded_at: dict[int, timestamp_pb2.Timestamp] = {}
    written = 0
    while written < history.events:
        stop = min(history.events, written + batch, *(c for c in cuts if c > written))
        _record(
            movements,
            [
                _movement(
                    run,
                    sku,
                    str(k),
                    k % 2 == 0,
                    2 if k % 2 == 0 else -1,
                    history.base + timedelta(seconds=k),
                )
                for k in range(written, stop)
            ],
        )
        written = stop
        if written in cuts:
            position = query.GetPosition(
                query_service_pb2.GetPositionRequest(sku=sku, location_id=LOCATION),
                timeout=CALL_TIMEOUT_SECONDS,
            )
            if position.version != written + 1:
                raise RuntimeError(f"version {position.version} after {written} movements")
            recorded_at[written + 1] = position.updated_at
        now = time.perf_counter()
        if now - last_report > 1.0 or written == history.events:
            last_report = now
            print(
                f"  {sku}: {written:>6}/{history.events} movements written "
                f"({written / (now - began):,.0f}/s)",
                file=sys.stderr,
                flush=True,
            )
    late = history.late_offsets_us
    for start in range(0, len(late), batch):
        _record(
            movements,
            [
                _movement(
                    run,
                    sku,
                    f"late-{j}",
                    j % 2 == 0,
                    history.late_delta(j),
                    history.base + timedelta(microseconds=late[j]),
                )
                for j in range(start, min(len(late), start + batch))
            ],
        )
    if late:
        print(f"  {sku}: {len(late)} late facts written", file=sys.stderr, flush=True)
    return time.perf_counter() - began, recorded_at


# ---- measuring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    version: int
    call: Callable[[], position_pb2.Position]
    on_hand: int  # expected
    expect_version: int | None  # expected, where the instant alone defines it


def variants(
    query: query_service_pb2_grpc.InventoryQueryServiceStub,
    audit: audit_service_pb2_grpc.AuditServiceStub,
    sku: str,
    history: History,
    targets: dict[str, int],
    recorded_at: dict[int, timestamp_pb2.Timestamp],
) -> list[Variant]:
    current = query_service_pb2.GetPositionRequest(sku=sku, location_id=LOCATION)

    def get_position() -> position_pb2.Position:
        return query.GetPosition(current, timeout=CALL_TIMEOUT_SECONDS)

    def as_of(request: audit_service_pb2.GetPositionAsOfRequest) -> Callable[[], Any]:
        return lambda: audit.GetPositionAsOf(request, timeout=CALL_TIMEOUT_SECONDS)

    head = history.head_version
    found = [
        Variant("get_position", "GetPosition", head, get_position, history.total_on_hand(), head)
    ]
    for name, version in targets.items():
        request = audit_service_pb2.GetPositionAsOfRequest(
            sku=sku, location_id=LOCATION, axis=audit_service_pb2.AXIS_RECORDED
        )
        request.as_of.CopyFrom(recorded_at[version])
        found.append(
            Variant(
                f"recorded_{name}",
                f"RECORDED {name}",
                version,
                as_of(request),
                history.recorded_on_hand(version),
                version,
            )
        )
    for name, version in targets.items():
        offset_us = (version - 2) * MICROS  # when movement version - 2 occurred
        request = audit_service_pb2.GetPositionAsOfRequest(
            sku=sku,
            location_id=LOCATION,
            axis=audit_service_pb2.AXIS_EFFECTIVE,
            as_of=_stamp(history.base + timedelta(microseconds=offset_us)),
        )
        # Its version is the highest one folded, which late facts move: only on_hand is
        # fixed by the instant when late facts exist.
        found.append(
            Variant(
                f"effective_{name}",
                f"EFFECTIVE {name}",
                version,
                as_of(request),
                history.effective_on_hand(offset_us),
                None if history.late_offsets_us else version,
            )
        )
    return found


def check(variant: Variant, answer: position_pb2.Position, errors: list[str]) -> None:
    if answer.on_hand != variant.on_hand:
        errors.append(f"{variant.label}: on_hand {answer.on_hand}, expected {variant.on_hand}")
    if variant.expect_version is not None and answer.version != variant.expect_version:
        errors.append(
            f"{variant.label}: version {answer.version}, expected {variant.expect_version}"
        )


def timed(variant: Variant, errors: list[str]) -> float:
    began = time.perf_counter()
    answer = variant.call()
    elapsed = time.perf_counter() - began
    check(variant, answer, errors)
    return elapsed


def measure(
    found: Sequence[Variant], samples: int, warmup: int, errors: list[str]
) -> dict[str, list[float]]:
    """Rounds of one call per variant; the order rotates every round so no variant always
    runs first (or right after the most expensive one)."""
    timings: dict[str, list[float]] = {v.key: [] for v in found}
    for round_no in range(warmup + samples):
        shift = round_no % len(found)
        for variant in [*found[shift:], *found[:shift]]:
            elapsed = timed(variant, errors)
            if round_no >= warmup:
                timings[variant.key].append(elapsed)
    return timings


def check_head(
    query: query_service_pb2_grpc.InventoryQueryServiceStub,
    audit: audit_service_pb2_grpc.AuditServiceStub,
    sku: str,
    history: History,
    errors: list[str],
) -> None:
    """Both axes at the head instant agree with GetPosition (run after the first calls:
    an effective fold to the head would leave checkpoints for them)."""
    position = query.GetPosition(
        query_service_pb2.GetPositionRequest(sku=sku, location_id=LOCATION),
        timeout=CALL_TIMEOUT_SECONDS,
    )
    for axis, name in (
        (audit_service_pb2.AXIS_RECORDED, "RECORDED head"),
        (audit_service_pb2.AXIS_EFFECTIVE, "EFFECTIVE head"),
    ):
        request = audit_service_pb2.GetPositionAsOfRequest(sku=sku, location_id=LOCATION, axis=axis)
        request.as_of.CopyFrom(position.updated_at)
        answer = audit.GetPositionAsOf(request, timeout=CALL_TIMEOUT_SECONDS)
        if (answer.on_hand, answer.version) != (position.on_hand, position.version):
            errors.append(
                f"{name}: on_hand {answer.on_hand} v{answer.version}, GetPosition says "
                f"{position.on_hand} v{position.version}"
            )


# ---- report --------------------------------------------------------------------------------


def render(kind: str, events: int, late: int, rows: list[CallStats], ratio: dict[str, Any]) -> str:
    header = (
        f"{'variant':<17} {'version':>8} {'samples':>7} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'mean ms':>8} {'1st ms':>9} {'p50 x':>6} {'p99 x':>6}"
    )
    title = f"GetPositionAsOf vs GetPosition ({kind}, {events} events, {late} late facts)"
    lines = [title, header, "-" * len(header)]
    for s in rows:
        line = (
            f"{s.label:<17} {s.version:>8} {s.samples:>7} {s.p50_ms:>8.3f} {s.p90_ms:>8.3f} "
            f"{s.p99_ms:>8.3f} {s.mean_ms:>8.3f} {s.first_call_ms:>9.3f}"
        )
        if s.label in ratio:
            line += f" {ratio[s.label]['p50']:>6.2f} {ratio[s.label]['p99']:>6.2f}"
        lines.append(line)
    lines.append("p50 x, p99 x: the row's percentile over GetPosition's, same run")
    return "\n".join(lines)


def run(
    database_spec: str | None,
    events: int,
    samples: int,
    *,
    late: int = 0,
    warmup: int = WARMUP_ROUNDS,
    batch: int = MOVEMENTS_PER_REQUEST_MAX,
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    sku = f"BENCH-ASOF-{run_id}"
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    history = History(base, events, late_offsets(events, late) if late else ())
    targets = target_versions(events)
    errors: list[str] = []
    with database(database_spec) as (kind, url), LedgerProcess(url) as ledger:
        channel = ledger.channel()
        movements = movement_service_pb2_grpc.MovementServiceStub(channel)
        query = query_service_pb2_grpc.InventoryQueryServiceStub(channel)
        audit = audit_service_pb2_grpc.AuditServiceStub(channel)
        print(
            f"writing {events} movements and {late} late facts to {sku} ({kind})",
            file=sys.stderr,
            flush=True,
        )
        write_seconds, recorded_at = write_history(
            movements, query, run_id, sku, history, list(targets.values()), batch
        )
        found = variants(query, audit, sku, history, targets, recorded_at)
        cold_ms = {v.key: timed(v, errors) * 1e3 for v in found}
        check_head(query, audit, sku, history, errors)
        print(
            f"measuring: {warmup} warm-up + {samples} rounds of {len(found)} variants, "
            "order rotated per round",
            file=sys.stderr,
            flush=True,
        )
        timings = measure(found, samples, warmup, errors)
    rows = [CallStats.of(v.label, v.version, timings[v.key], cold_ms[v.key]) for v in found]
    plain = rows[0]
    ratio = {
        s.label: {"p50": s.p50_ms / plain.p50_ms, "p99": s.p99_ms / plain.p99_ms} for s in rows[1:]
    }
    return {
        "database": kind,
        "events": events,
        "late": late,
        "samples": samples,
        "warmup": warmup,
        "write_seconds": round(write_seconds, 3),
        "variants": {v.key: asdict(s) for v, s in zip(found, rows, strict=True)},
        "ratio_to_get_position": {
            v.key: ratio[s.label] for v, s in zip(found[1:], rows[1:], strict=True)
        },
        "checks": len(found) * (1 + warmup + samples) + 2,
        "errors": errors,
        "table": render(kind, events, late, rows, ratio),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench_as_of", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--database",
        default=None,
        help="sqlite (default: temp file), postgres (embedded server), or a database URL",
    )
    parser.add_argument("--events", type=int, default=50_000, help="movements on the position")
    parser.add_argument("--late", type=int, default=0, help="late facts recorded afterwards")
    parser.add_argument("--samples", type=int, default=300, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=WARMUP_ROUNDS, help="untimed rounds first")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.events < 100 or args.samples < 1 or args.warmup < 0 or args.late < 0:
        parser.error("--events must be >= 100, --samples >= 1, --warmup and --late >= 0")

    result = run(args.database, args.events, args.samples, late=args.late, warmup=args.warmup)
    written = args.events + args.late
    print(
        f"wrote {written} movements in {result['write_seconds']:.1f} s "
        f"({written / max(result['write_seconds'], 1e-9):,.0f}/s)"
    )
    print(result["table"])
    errors = result["errors"]
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    if errors:
        print(f"WRONG FIGURES: {len(errors)} of {result['checks']} answers", file=sys.stderr)
        for line in errors[:MAX_ERRORS_SHOWN]:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"all {result['checks']} answers checked: on_hand (and version) as written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
