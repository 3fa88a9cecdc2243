"""``python -m tools.bench [--quick] [--json OUT] [--seconds N] [--database URL] [--nats URL]``

Starts PostgreSQL and nats-server (embedded unless given), measures the raw baselines, then
two ``ledger serve`` processes (plus ``ledger projections``) on one database, and prints a
table of every figure with its ratio to its baseline; the JSON (``report`` documents its
keys) goes to ``--json``. Progress goes to stderr. Exit status: 0 when every figure was
measured and the oversell, ingest and eventual == STRONG checks passed, 1 otherwise, 3
when PostgreSQL or NATS could not be started. Run from the repository root (it uses testbed/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tools.bench import baselines, figures, infra, report
from tools.bench.driver import WorkerPool
from tools.bench.figures import Bench
from tools.bench.ingest_run import bodies, ingest, messages
from tools.bench.profile import FULL, QUICK, Profile
from tools.bench.progress import progress, restart_clock
from tools.bench.sampling import SERVER_TREES, listener_pid
from tools.bench.service import Cluster, Layout, receive

DEFAULT_JSON = "bench-results.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds per figure, small N")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"output (default {DEFAULT_JSON})")
    parser.add_argument("--seconds", type=float, help="measured window of each timed figure")
    parser.add_argument(
        "--database", help="an EMPTY PostgreSQL database URL (default: embedded PostgreSQL)"
    )
    parser.add_argument("--nats", help="nats-server URL with JetStream (default: embedded)")
    parser.add_argument(
        "--writer",
        choices=("thread", "process"),
        help="`ledger serve --writer` of the servers (default thread); process: the servers and"
        " the ingest bridge write through one `ledger writer` child (docs/performance.md)",
    )
    parser.add_argument(
        "--api-processes",
        type=int,
        help="`ledger serve --api-processes` of each server (default 1; above 1 needs"
        " --writer process)",
    )
    return parser


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": commit, "dirty": bool(dirty)}


def _document(profile: Profile) -> dict[str, Any]:
    return {
        "schema": 1,
        "tool": "tools.bench",
        "mode": profile.name,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": None,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "git": _git(),
        "settings": {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in vars(profile).items()
        },
        "baselines": {},
        "figures": {},
        "ratios": {},
        "targets": {},
        "checks": {
            "no_oversell": {"passed": False, "positions": []},
            "ingest_durable": False,
            "eventual_equals_strong": {"passed": False, "positions": 0},
        },
        "failures": {},
    }


class Steps:
    """Runs each part; a failure is recorded (and the run goes on) instead of losing
    every other figure."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def run(self, name: str, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except Exception as error:
            progress(f"{name} FAILED: {type(error).__name__}: {error}")
            traceback.print_exc(file=sys.stderr)
            self.document["failures"][name] = f"{type(error).__name__}: {error}"[:2000]
            return None


def _baselines(steps: Steps, doc: dict[str, Any], profile: Profile, pool: WorkerPool,
               database: str, nats_url: str) -> None:  # fmt: skip
    out = doc["baselines"]
    progress("baseline grpc_echo")
    out["grpc_echo"] = steps.run("grpc_echo", lambda: baselines.grpc_echo(profile, pool))
    progress("baseline pg_txn_per_call")
    out["pg_txn_per_call"] = steps.run(
        "pg_txn_per_call", lambda: asyncio.run(baselines.pg_txn_per_call(database, profile))
    )
    progress("baseline pg_group_commit")
    out["pg_group_commit"] = steps.run(
        "pg_group_commit", lambda: asyncio.run(baselines.pg_group_commit(database, profile))
    )
    progress("baseline jetstream_fetch_ack")
    # The same messages the ingest figure publishes.
    sample = bodies(messages(profile.ingest_messages, ["JS-1"], "js"))
    out["jetstream_fetch_ack"] = steps.run(
        "jetstream_fetch_ack",
        lambda: asyncio.run(baselines.jetstream_fetch_ack(nats_url, profile, sample)),
    )
    for name in list(out):
        if out[name] is None:
            del out[name]
        else:
            progress(f"  {name}: {out[name]['rate']:,.0f} {out[name]['unit']}")


def _service(steps: Steps, doc: dict[str, Any], bench: Bench, nats_url: str) -> None:
    profile, layout, out = bench.profile, bench.layout, doc["figures"]
    stock = figures.stock(bench)
    progress(f"seeding {len(stock):,} positions")
    receive(bench.cluster, stock)
    matrix = steps.run("reserve_matrix", lambda: figures.reserve_matrix(bench)) or {}
    out.update(matrix)
    if any(key.startswith("reserve_distinct_c") for key in matrix):
        best_key, best = figures.best_distinct(matrix)
        out["reserve_distinct_best"] = {
            "rate": best["rate"],
            "unit": best["unit"],
            "p50_ms": best["p50_ms"],
            "p99_ms": best["p99_ms"],
            "from": best_key,
            "processes": best["processes"],
        }
        half = steps.run(
            "reserve_half_load",
            lambda: figures.open_loop(
                bench, best, profile.half_load, profile.call_timeout, "reserve_half_load"
            ),
        )
        if half is not None:
            out["reserve_half_load"] = half
        saturation = steps.run(
            "reserve_saturation",
            lambda: figures.open_loop(
                bench, best, profile.overload, profile.overload_deadline, "reserve_saturation"
            ),
        )
        if saturation is not None:
            out["reserve_saturation"] = saturation
        # The same two open loops on the other process count (one `ledger serve`, or two),
        # each at its own best distinct figure.
        for processes in profile.processes:
            if processes == best["processes"]:
                continue
            own = {k: v for k, v in matrix.items() if v.get("processes") == processes}
            if not any(k.startswith("reserve_distinct_c") for k in own):
                continue
            _, own_best = figures.best_distinct(own)
            for name, factor, deadline in (
                (f"reserve_half_load_p{processes}", profile.half_load, profile.call_timeout),
                (f"reserve_saturation_p{processes}", profile.overload, profile.overload_deadline),
            ):
                measured = steps.run(
                    name,
                    functools.partial(figures.open_loop, bench, own_best, factor, deadline, name),
                )
                if measured is not None:
                    out[name] = measured
        heaviest = figures.reserve_key("distinct", max(profile.clients), max(profile.processes))
        lags = [f["projection_lag"] for f in matrix.values() if f.get("projection_lag")]
        if heaviest in matrix and lags:
            out["projection_lag"] = {
                **matrix[heaviest]["projection_lag"],
                "rate": None,
                "unit": "",
                "from": heaviest,
                "worst_lag_seconds_p99": max(lag.get("lag_seconds_p99", 0) for lag in lags),
                "worst_lag_positions_max": max(lag.get("lag_positions_max", 0) for lag in lags),
            }
    drained = steps.run("reserve_drain", lambda: figures.drain(bench))
    if drained is not None:
        out["reserve_drain"] = drained
    out.update(steps.run("record_movements", lambda: figures.record_movements(bench)) or {})
    out.update(steps.run("reads", lambda: figures.reads(bench)) or {})
    progress("eventual_equals_strong: GetAvailability EVENTUAL vs STRONG at lag 0")
    agreed = steps.run("eventual_equals_strong", lambda: figures.eventual_equals_strong(bench))
    if agreed is not None:
        doc["checks"]["eventual_equals_strong"] = agreed
    ingested = steps.run("ingest", lambda: ingest(bench.cluster, nats_url, profile, layout.ingest))
    if ingested is not None:
        out["ingest"] = ingested
        doc["checks"]["ingest_durable"] = ingested["durable_in_ledger"]
        durable = ingested["durable_in_ledger"]
        progress(f"  ingest: {ingested['rate']:,.0f} messages/s, durable {durable}")
    doc["checks"]["no_oversell"] = {
        "passed": bool(bench.checks) and all(check["passed"] for check in bench.checks),
        "positions": bench.checks,
    }


def run(profile: Profile, json_path: str, database: str | None, nats_url: str | None) -> int:
    restart_clock()
    began = time.monotonic()
    doc = _document(profile)
    steps = Steps(doc)
    progress(f"tools.bench ({profile.name}): {profile.seconds:g} s per figure")
    try:
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(WorkerPool(profile.workers))  # importing meanwhile
            db = stack.enter_context(infra.postgres(database))
            nats = stack.enter_context(infra.nats(nats_url))
            # CPU of the servers this run did not start as children (when local).
            for name, url in (("postgres", db), ("nats-server", nats)):
                pid = listener_pid(urlsplit(url).port)
                if pid is not None:
                    SERVER_TREES[name] = pid
            _baselines(steps, doc, profile, pool, db, nats)
            progress("starting the ledger")
            cluster = Cluster(db, max(profile.processes), profile.writer, profile.api_processes)
            stack.callback(cluster.close)
            if steps.run("ledger_start", cluster.start) is not None:
                layout = Layout.make(
                    profile.positions, figures.hot_keys(profile), profile.record_positions
                )
                bench = Bench(profile, pool, cluster, layout)
                steps.run("service", lambda: _service(steps, doc, bench, nats))
    except infra.InfraUnavailable as error:
        print(f"tools.bench: cannot run here: {error}", file=sys.stderr)
        return 3
    doc["ratios"] = report.ratios(doc)
    doc["targets"] = report.targets(doc)
    doc["elapsed_s"] = round(time.monotonic() - began, 1)
    report.write(doc, json_path)
    print(report.table(doc))
    progress(f"done in {doc['elapsed_s']:.0f} s; JSON in {json_path}")
    checks = doc["checks"]
    clean = (
        not doc["failures"]
        and checks["no_oversell"]["passed"]
        and checks["ingest_durable"]
        and checks["eventual_equals_strong"]["passed"]
    )
    return 0 if clean else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    profile = (
        (QUICK if args.quick else FULL)
        .with_seconds(args.seconds)
        .with_writer(args.writer, args.api_processes)
    )
    if profile.writer != "thread":
        os.environ["LEDGER_WRITER"] = profile.writer  # `ledger ingest` writes through it too
    return run(profile, args.json, args.database, args.nats)


if __name__ == "__main__":
    sys.exit(main())
