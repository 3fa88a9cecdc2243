"""``python -m tools.bench.under_load [--figures A,B] [--seconds N] [--py-spy PATH] [--out DIR]
[--writer thread|process]``

Profiles one ``ledger serve`` while the bench's load runs against it: starts the embedded
PostgreSQL, one ``ledger serve`` and ``ledger projections`` (as ``tools.bench`` does), seeds
the distinct positions, then for each figure runs its load for ``--seconds`` while
``py-spy record --format raw --threads --nonblocking --rate 100 --gil`` samples the server
process (``--gil``: the thread holding the interpreter, which is where a GIL-bound server's
CPU goes), and prints where the samples went (``summarise``). The figures run in the order
given; put a Reserve figure first so the read figures meet positions with holds, as in a
full bench run.

Figures: ``reserve_distinct_c64``, ``reserve_hot_c64``, ``record_movements_batch``,
``get_position_c16``, ``get_availability_c16``, ``get_availability_strong_c16``.
``python -m tools.bench.under_load --summarise FILE`` only summarises an existing raw
profile. py-spy is not a dependency: give its path. ``--writer process`` also profiles
the serve's writer child (``NAME-writer.txt``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tools.bench import figures, infra
from tools.bench.driver import WorkerPool
from tools.bench.figures import Bench
from tools.bench.profile import FULL
from tools.bench.progress import progress
from tools.bench.service import LOCATION, Cluster, Layout, receive

# figure -> (load kind, calls in flight, extra params)
FIGURES: dict[str, tuple[str, int, dict[str, str]]] = {
    "reserve_distinct_c64": ("reserve", 64, {}),
    # Every call on one position (the bench's hot figures).
    "reserve_hot_c64": ("reserve", 64, {"hot": "1"}),
    # RecordMovements of 100 receipts, 4 calls in flight (the bench's batched figure).
    "record_movements_batch": ("record", 4, {}),
    "get_position_c16": ("get_position", 16, {}),
    "get_availability_c16": ("availability", 16, {"channel": "web"}),
    "get_availability_strong_c16": (
        "availability",
        16,
        {"channel": "web", "consistency": "CONSISTENCY_STRONG"},
    ),
}

# Where a sample's time belongs: the innermost frame matching a group, walking out from the
# leaf (a stdlib leaf such as json or uuid counts for the code that called it). Frames are
# py-spy's "function (file:line)".
GROUPS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "interceptors/auth/metrics/logging",
        re.compile(
            r"entrypoints/grpc/(auth|metrics_interceptor|load_shedding|errors|tokens)\.py"
            r"|logging/|ledger/logs\.py|prometheus_client|ledger/metrics/"
        ),
    ),
    (
        "protobuf<->domain, validation",
        re.compile(r"entrypoints/grpc/convert\.py|ledger/inputs\.py|pydantic|google/protobuf"),
    ),
    ("event transcoding (JSON)", re.compile(r"Transcod|DatetimeAsISO|UUIDAsHex")),
    ("database round trips (psycopg)", re.compile(r"psycopg")),
    ("projection reads", re.compile(r"projections/")),
    (
        "writer (pipeline, domain, store, events)",
        re.compile(
            r"ledger/(pipeline|application|unit_of_work|service)\.py|ledger/(domain|use_cases|store)/"
            r"|eventsourcing/"
        ),
    ),
    (
        "handler (servicers)",
        re.compile(r"entrypoints/grpc/\w+_servicer\.py|entrypoints/grpc/rpc\.py"),
    ),
    ("thread-pool hops", re.compile(r"concurrent/futures|threading\.py|asyncio/threads\.py")),
    ("gRPC/asyncio machinery", re.compile(r"grpc|asyncio/|selectors\.py|_cython")),
)
# Frames under which everything runs: left out of the "total" tables.
ROOTS = re.compile(
    r"_bootstrap|Thread\.run \(|_worker \(|runpy|cli/(main|__main__)\.py|runners\.py"
    r"|run_until_complete|run_forever|_run_once"
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def group_of(frames: Sequence[str]) -> str:
    """The group of the innermost frame that has one."""
    for frame in reversed(frames):
        for name, pattern in GROUPS:
            if pattern.search(frame):
                return name
    return "other"


def _short(frame: str) -> str:
    """``func (path/to/mod.py:12)`` -> ``func (to/mod.py)``: lines merged, paths trimmed."""
    found = _FRAME.match(frame)
    if not found:
        return frame
    parts = found["file"].split("/")
    return f"{found['func']} ({'/'.join(parts[-2:])})"


def summarise(path: Path, top: int = 15) -> str:
    """Self and total share of the samples per function and per group, and per thread."""
    self_fn: Counter[str] = Counter()
    total_fn: Counter[str] = Counter()
    self_group: Counter[str] = Counter()
    total_group: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread ")), "thread ?")
        code = [f for f in frames if not f.startswith(("thread ", "process "))]
        if not code:
            continue
        samples += count
        threads[re.sub(r"^thread \(\d+\): ?", "", thread) or thread] += count
        self_fn[_short(code[-1])] += count
        self_group[group_of(code)] += count
        inner = [f for f in code if not ROOTS.search(f)]
        for name in {_short(f) for f in inner}:
            total_fn[name] += count
        for name in {group_of(code[: i + 1]) for i, f in enumerate(code) if not ROOTS.search(f)}:
            total_group[name] += count
    if not samples:
        return f"{path}: no samples"

    def pct(n: int) -> str:
        return f"{100 * n / samples:5.1f}%"

    out = [f"{path}: {samples} samples", "", "groups (self, total):"]
    out += [f"  {pct(n)} {pct(total_group[g])}  {g}" for g, n in self_group.most_common()]
    out += ["", "threads:"] + [f"  {pct(n)}  {t}" for t, n in threads.most_common(8)]
    out += ["", "top self:"] + [f"  {pct(n)}  {f}" for f, n in self_fn.most_common(top)]
    out += ["", "top total:"] + [f"  {pct(n)}  {f}" for f, n in total_fn.most_common(top)]
    return "\n".join(out)


def _params(bench: Bench, kind: str, extra: dict[str, str]) -> dict[str, object]:
    skus = bench.layout.distinct
    if kind == "reserve":
        return {
            "skus": skus[:1] if extra.get("hot") else skus,
            "location": LOCATION,
            "qty": [1],
            "ttl_seconds": bench.profile.ttl_seconds,
            "channel": "web",
        }
    if kind == "record":
        return {"skus": bench.layout.record, "location": LOCATION, "per_call": 100}
    return {"skus": skus[:256], "location": LOCATION, **extra}


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux), e.g. the `ledger writer` of a serve."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def run(
    names: Sequence[str],
    seconds: float,
    py_spy: str,
    out: Path,
    mode: list[str],
    writer: str,
    api_processes: int = 1,
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    profile = replace(FULL, seconds=seconds, processes=(1,))
    with WorkerPool(profile.workers) as pool, infra.postgres(None) as database:
        cluster = Cluster(database, 1, writer, api_processes)
        try:
            cluster.start()
            layout = Layout.make(profile.positions, [], profile.record_positions)
            bench = Bench(profile, pool, cluster, layout)
            progress(f"seeding {len(layout.distinct):,} positions")
            receive(cluster, [(sku, profile.distinct_stock) for sku in layout.distinct])
            pid = cluster.server_pids[0]
            for name in names:
                kind, in_flight, extra = FIGURES[name]
                if kind not in ("reserve", "record"):
                    figures.wait_for_projections(bench)
                # The serve, and with --writer process its writer child too (name-writer.txt).
                targets = [(pid, out / f"{name}.txt")]
                targets += [(child, out / f"{name}-writer.txt") for child in _children(pid)]
                recorders = []
                for target, raw in targets:
                    # Starts once the load generators have warmed up, ends with the window.
                    command = [py_spy, "record", "--pid", str(target), "--format", "raw"]
                    # --nonblocking: no pauses of the server (py-spy refuses it with --native).
                    pause = [] if "--native" in mode else ["--nonblocking"]
                    command += ["--threads", "--rate", "100", *pause]
                    command += ["--duration", str(int(seconds)), "-o", str(raw), *mode]
                    progress(f"{name}: {in_flight} in flight, {' '.join(command)}")
                    recorders.append(
                        subprocess.Popen(
                            ["sh", "-c", f"sleep {profile.warmup}; exec {' '.join(command)}"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                        )
                    )
                figure = bench.load(
                    kind,
                    _params(bench, kind, extra),
                    processes=1,
                    clients=in_flight,
                    split_skus=kind == "reserve",
                    tag=f"profile-{name}",
                )
                progress(f"  {figure['rate']:,.0f}/s p50 {figure.get('p50_ms')} ms"
                         f" cpu {figure.get('cpu_cores')}")  # fmt: skip
                for recorder, (_, raw) in zip(recorders, targets, strict=True):
                    _, errors = recorder.communicate(timeout=seconds + 60)
                    if recorder.returncode != 0:
                        progress(f"  py-spy failed: {errors.decode(errors='replace')[-2000:]}")
                        return 1
                    print(f"== {raw.stem}: {figure['rate']:,.0f} calls/s,"
                          f" p50 {figure.get('p50_ms')} ms")  # fmt: skip
                    print(summarise(raw))
                    print()
        finally:
            cluster.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.under_load", description=__doc__)
    parser.add_argument("--figures", default=",".join(FIGURES), help="comma-separated, in order")
    parser.add_argument("--seconds", type=float, default=20.0, help="profiled window per figure")
    parser.add_argument("--py-spy", default="py-spy", help="path of the py-spy binary")
    parser.add_argument(
        "--mode",
        default="--gil",
        help="py-spy sampling flags (default --gil: only the thread holding the GIL, i.e. "
        "where the interpreter's CPU goes; '--idle' for wall time of every thread)",
    )
    parser.add_argument("--out", default="profiles", help="directory of the raw profiles")
    parser.add_argument(
        "--writer",
        choices=("thread", "process"),
        default="thread",
        help="`ledger serve --writer`; process: its writer child is profiled too",
    )
    parser.add_argument(
        "--api-processes",
        type=int,
        default=1,
        help="`ledger serve --api-processes` (above 1 needs --writer process); the API "
        "children are profiled like the writer child",
    )
    parser.add_argument("--summarise", help="only summarise this raw profile")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(Path(args.summarise)))
        return 0
    names = [name for name in args.figures.split(",") if name]
    unknown = [name for name in names if name not in FIGURES]
    if unknown:
        parser.error(f"unknown figures {unknown}; known: {', '.join(FIGURES)}")
    mode = args.mode.split()
    out = Path(args.out)
    return run(names, args.seconds, args.py_spy, out, mode, args.writer, args.api_processes)


if __name__ == "__main__":
    sys.exit(main())
