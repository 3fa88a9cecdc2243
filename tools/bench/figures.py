"""The service's figures: the Reserve matrix (distinct / hot positions x clients x server
processes), open-loop runs at half and at twice the best throughput, the oversell check,
RecordMovements, read latency (GetPosition, GetPositionAsOf) and read throughput
(GetPosition, GetAvailability eventual and STRONG), and the eventual == STRONG check."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import text_format
from inventory.ledger.v1 import availability_pb2, query_service_pb2

from tools.bench.driver import WorkerPool, merge
from tools.bench.profile import Profile
from tools.bench.progress import progress
from tools.bench.sampling import sampler
from tools.bench.service import CALL_TIMEOUT_SECONDS, LOCATION, Cluster, Layout


@dataclass
class Bench:
    """What every figure needs: the settings, the load generators and the service."""

    profile: Profile
    pool: WorkerPool
    cluster: Cluster
    layout: Layout
    checks: list[dict[str, Any]] = field(default_factory=list)  # the oversell checks

    def load(
        self,
        kind: str,
        params: dict[str, Any],
        *,
        processes: int,
        clients: int = 0,
        rate: float = 0.0,
        timeout: float | None = None,
        workers: int | None = None,
        seconds: float | None = None,
        split_skus: bool = True,
        lag: bool = False,
        exact: bool = False,
        tag: str,
    ) -> dict[str, Any]:
        """One timed run: ``clients`` closed-loop calls in flight, or ``rate`` arrivals/s
        (open loop), split evenly over the workers; worker w talks to server
        ``w % processes``. With ``split_skus`` each worker gets its own share of
        ``params["skus"]``, so two processes never contend for a position by accident.
        ``exact``: wait for every call (the oversell check wants no ambiguous outcome)."""
        profile = self.profile
        count = workers or profile.workers
        if clients:
            count = min(count, clients)
        addresses = self.cluster.addresses[:processes]
        jobs = []
        for w in range(count):
            skus = params["skus"]
            share = skus[w::count] if split_skus and len(skus) >= count else skus
            jobs.append(
                {
                    "kind": kind,
                    "params": {**params, "skus": share},
                    "targets": [addresses[w % len(addresses)]],
                    "channels": 2,
                    "mode": "open" if rate else "closed",
                    "concurrency": max(1, clients // count),
                    "rate": rate / count,
                    "max_in_flight": 4096,
                    "warmup": profile.warmup,
                    "seconds": seconds or profile.seconds,
                    "timeout": timeout or profile.call_timeout,
                    "tag": tag,
                    "cancel_tail": profile.cancel_tail and not exact,
                    "settle_max": profile.settle_max,
                    # Bigger requests cost more to build; beyond these, built on demand.
                    "prebuild": max(100, profile.prebuild // int(params.get("per_call", 1))),
                }
            )
        sampling, during = sampler(
            lambda: {
                "servers": self.cluster.server_pids[:processes],
                "projections": [pid for pid in [self.cluster.projections_pid] if pid],
                "loadgen": self.pool.pids[:count],
            },
            lag_channel=self.cluster.channel() if lag else None,
            lag_interval=profile.lag_interval,
            metrics_urls=self.cluster.metrics_urls[:processes],
        )
        figure = merge(self.pool.run(jobs, during))
        return {**figure, **sampling.summary(), "processes": processes}


def stock(bench: Bench) -> list[tuple[str, int]]:
    """Every position the figures use, with its opening receipt."""
    profile, layout = bench.profile, bench.layout
    return [
        *((sku, profile.distinct_stock) for sku in layout.distinct),
        *(
            (sku, profile.drain_stock if key == "drain" else profile.hot_stock)
            for key, sku in layout.hot.items()
        ),
    ]


def reserve_key(positions: str, clients: int, processes: int) -> str:
    return f"reserve_{positions}_c{clients}_p{processes}"


def hot_keys(profile: Profile) -> list[str]:
    return [
        f"c{clients}_p{processes}" for processes in profile.processes for clients in profile.clients
    ] + ["drain"]


def _reserve_params(bench: Bench, skus: Sequence[str], qty: Sequence[int] = (1,)) -> dict[str, Any]:
    return {
        "skus": list(skus),
        "location": LOCATION,
        "qty": list(qty),
        "ttl_seconds": bench.profile.ttl_seconds,
        "channel": "web",
    }


def check_no_oversell(bench: Bench, sku: str, figure: dict[str, Any], label: str) -> dict[str, Any]:
    """The ledger's own word, right after the run (before any hold can expire): reserved
    never above on_hand, and exactly what the OK answers add up to (calls that ended
    ambiguously, e.g. DEADLINE_EXCEEDED, may or may not have reserved)."""
    position = bench.cluster.position(sku)
    ok_qty, ambiguous = figure["ok_qty"], figure["ambiguous_qty"]
    passed = (
        position.reserved <= position.on_hand
        and position.available >= 0
        and ok_qty <= position.reserved <= ok_qty + ambiguous
    )
    check = {
        "figure": label,
        "sku": sku,
        "on_hand": position.on_hand,
        "reserved": position.reserved,
        "available": position.available,
        "ok_qty": ok_qty,
        "ambiguous_qty": ambiguous,
        "passed": passed,
    }
    bench.checks.append(check)
    if not passed:
        progress(f"  OVERSELL CHECK FAILED: {check}")
    return check


def reserve_matrix(bench: Bench) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {}
    profile = bench.profile
    for positions in ("distinct", "hot"):
        for processes in profile.processes:
            for clients in profile.clients:
                key = reserve_key(positions, clients, processes)
                hot_sku = bench.layout.hot[f"c{clients}_p{processes}"]
                skus = bench.layout.distinct if positions == "distinct" else [hot_sku]
                progress(f"{key}: {clients} clients, {processes} server process(es)")
                figure = bench.load(
                    "reserve",
                    _reserve_params(bench, skus),
                    processes=processes,
                    clients=clients,
                    lag=True,
                    tag=key,
                )
                figure.update(unit="reservations/s", clients=clients, positions=positions)
                if positions == "hot":
                    figure["no_oversell"] = check_no_oversell(bench, hot_sku, figure, key)["passed"]
                figures[key] = figure
                progress(f"  {_brief(figure)}")
    return figures


def best_distinct(figures: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    candidates = {k: v for k, v in figures.items() if k.startswith("reserve_distinct_c")}
    key = max(candidates, key=lambda k: candidates[k]["rate"])
    return key, candidates[key]


def open_loop(
    bench: Bench, best: dict[str, Any], factor: float, deadline: float, key: str
) -> dict[str, Any]:
    """Fixed arrival rate at ``factor`` x the best distinct throughput, on that figure's
    server processes."""
    offered = max(1.0, best["rate"] * factor)
    progress(f"{key}: open loop at {offered:,.0f}/s ({factor:.0%} of best), deadline {deadline}s")
    figure = bench.load(
        "reserve",
        _reserve_params(bench, bench.layout.distinct),
        processes=best["processes"],
        rate=offered,
        timeout=deadline,
        lag=True,
        tag=key,
    )
    figure.update(unit="reservations/s", offered_rate=round(offered, 1), deadline_s=deadline)
    figure["codes"] = {"OK": figure["ok"], **figure["errors"]}
    # Reservations the ledger made whose caller had given up (deadline): they hold stock
    # until their ttl. Every request asks for 1 unit, so units = reservations.
    made = sum(server.get("reservations", 0) for server in figure.get("server_commits", []))
    figure["reserved_without_ok_answer"] = max(0, made - figure["ok_qty"])
    progress(f"  {_brief(figure)}")
    return figure


def drain(bench: Bench) -> dict[str, Any]:
    """More demand than stock on one position, from every client over every process: the
    ledger must refuse (FAILED_PRECONDITION) rather than oversell."""
    profile = bench.profile
    sku = bench.layout.hot["drain"]
    clients, processes = max(profile.clients), max(profile.processes)
    progress(f"reserve_drain: {clients} clients on {profile.drain_stock} units of one position")
    figure = bench.load(
        "reserve",
        _reserve_params(bench, [sku], qty=(1, 2, 3)),
        processes=processes,
        clients=clients,
        exact=True,
        tag="drain",
    )
    figure.update(unit="reservations/s", clients=clients, stock=profile.drain_stock)
    figure["no_oversell"] = check_no_oversell(bench, sku, figure, "reserve_drain")["passed"]
    progress(f"  {_brief(figure)}")
    return figure


def record_movements(bench: Bench) -> dict[str, dict[str, Any]]:
    """Receipts through RecordMovements on one server: one movement per call (64 clients)
    and batches of ``record_batch`` (4 clients: a batch takes a while, and the window must
    see several complete)."""
    figures: dict[str, dict[str, Any]] = {}
    for key, per_call, clients in (
        ("record_movements_single", 1, 64),
        ("record_movements_batch", bench.profile.record_batch, 4),
    ):
        progress(f"{key}: {clients} clients, {per_call} movement(s) per call")
        params = {"skus": bench.layout.record, "location": LOCATION, "per_call": per_call}
        figure = bench.load("record", params, processes=1, clients=clients, lag=True, tag=key)
        calls = figure["rate"]
        figure.update(
            rate=round(calls * per_call, 1),
            unit="movements/s",
            calls_per_s=calls,
            movements_per_call=per_call,
            clients=clients,
        )
        figures[key] = figure
        progress(f"  {_brief(figure)}")
    return figures


def reads(bench: Bench) -> dict[str, dict[str, Any]]:
    """Latency one call at a time (GetPosition, GetPositionAsOf at now on the recorded axis),
    and throughput at the echo baseline's 16 calls in flight of GetPosition and of
    GetAvailability, eventual (the read model) and STRONG (the ledger), all on one server,
    the projections caught up first (reads write nothing, so they stay caught up)."""
    profile = bench.profile
    skus = bench.layout.distinct[: min(256, len(bench.layout.distinct))]
    base = {"skus": skus, "location": LOCATION}
    available = {"skus": skus, "channel": "web"}
    wait_for_projections(bench)
    figures: dict[str, dict[str, Any]] = {}
    for key, kind, in_flight, params in (
        ("get_position", "get_position", 1, base),
        ("get_position_c16", "get_position", profile.echo_in_flight, base),
        ("get_position_as_of", "as_of", 1, base),
        ("get_availability_c16", "availability", profile.echo_in_flight, available),
        (
            "get_availability_strong_c16",
            "availability",
            profile.echo_in_flight,
            {**available, "consistency": "CONSISTENCY_STRONG"},
        ),
    ):
        progress(f"{key}: {in_flight} call(s) in flight")
        figure = bench.load(
            kind,
            params,
            processes=1,
            clients=in_flight,
            seconds=profile.reads_window,
            split_skus=False,
            tag=key,
        )
        figure.update(unit="calls/s", in_flight=in_flight)
        figures[key] = figure
        progress(f"  {_brief(figure)}")
    return figures


def _status(bench: Bench) -> tuple[int, int]:
    """(head, applied) from the first server."""
    status = bench.cluster.queries().GetProjectionStatus(
        query_service_pb2.GetProjectionStatusRequest(), timeout=CALL_TIMEOUT_SECONDS
    )
    return status.head_position, status.applied_position


def wait_for_projections(bench: Bench, timeout: float = 60.0) -> float:
    """Until the read models have applied the ledger's head; returns the seconds waited."""
    began = time.monotonic()
    while True:
        head, applied = _status(bench)
        if applied >= head:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"projections still at {applied} of {head} after {timeout:g} s")
        time.sleep(0.05)


def eventual_equals_strong(bench: Bench, attempts: int = 20, chunk: int = 32) -> dict[str, Any]:
    """With the lag at 0, GetAvailability EVENTUAL answers exactly what STRONG answers (every
    field, ``projection_position`` included) for the SKUs the figures touched: distinct ones
    with holds, the hot and drain positions, the received ones. Pairs are judged only when
    the head did not move around their reads (an expiring hold would move it); else they are
    read again."""
    layout = bench.layout
    skus = [
        *layout.distinct[: min(256, len(layout.distinct))],
        *layout.hot.values(),
        *layout.record[:32],
    ]
    stub = bench.cluster.queries()

    def read(sku: str, consistency: str) -> availability_pb2.Availability:
        return stub.GetAvailability(
            query_service_pb2.GetAvailabilityRequest(
                sku=sku, channel="web", consistency=consistency
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    mismatches: list[dict[str, Any]] = []
    unjudged: list[str] = []
    wait_for_projections(bench)
    # In chunks: the head read before and after a chunk vouches for every pair in it.
    for start in range(0, len(skus), chunk):
        part = skus[start : start + chunk]
        for _ in range(attempts):
            head, applied = _status(bench)
            pairs = [
                (sku, read(sku, "CONSISTENCY_EVENTUAL"), read(sku, "CONSISTENCY_STRONG"))
                for sku in part
            ]
            if applied == head and _status(bench) == (head, applied):
                mismatches += [
                    {
                        "sku": sku,
                        "eventual": text_format.MessageToString(eventual, as_one_line=True),
                        "strong": text_format.MessageToString(strong, as_one_line=True),
                    }
                    for sku, eventual, strong in pairs
                    if eventual != strong
                ]
                break
            wait_for_projections(bench)
        else:
            unjudged += part
    check = {
        "passed": not mismatches and not unjudged,
        "positions": len(skus),
        "mismatches": mismatches[:20],
        "unjudged": unjudged[:20],
    }
    if not check["passed"]:
        progress(f"  EVENTUAL != STRONG: {check}")
    else:
        progress(f"  eventual == strong for {len(skus)} SKUs")
    return check


def _brief(figure: dict[str, Any]) -> str:
    errors = ", ".join(f"{code} {n}" for code, n in figure.get("errors", {}).items()) or "none"
    return (
        f"{figure['rate']:,.0f} {figure.get('unit', '')}  p50 {figure.get('p50_ms')} ms"
        f"  p99 {figure.get('p99_ms')} ms  errors: {errors}"
    )
