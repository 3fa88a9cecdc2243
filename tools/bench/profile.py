"""Run settings: the full run (~5-10 minutes) and ``--quick`` (under a minute, small N)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    seconds: float  # measured window of each timed figure
    warmup: float  # before each window (connections, caches, JIT-free but cold paths)
    clients: tuple[int, ...] = (64, 256)
    processes: tuple[int, ...] = (1, 2)
    workers: int = 2  # load-generator processes (one per core)
    positions: int = 4096  # distinct SKU-locations of the Reserve figures
    distinct_stock: int = 1_000_000
    hot_stock: int = 1_000_000_000
    drain_stock: int = 2_000  # the oversell check: less than the clients will ask for
    ttl_seconds: int = 600
    record_positions: int = 1024
    record_batch: int = 100  # movements per RecordMovements call (batched variant)
    ingest_messages: int = 20_000  # also the JetStream baseline's N
    ingest_batch: int = 500  # `ledger ingest --batch-size`, like the fetch(500) baseline
    echo_in_flight: int = 16
    pg_connections: int = 16  # one-transaction-per-call baseline
    group_commit_size: int = 100  # reservations per transaction (raw writer)
    half_load: float = 0.5
    overload: float = 2.0
    overload_deadline: float = 1.0  # seconds: the saturation run's client deadline
    call_timeout: float = 30.0  # closed-loop calls: long, so deadlines never cut a figure
    lag_interval: float = 0.1
    prebuild: int = 20_000  # requests serialised before a run, per worker
    cancel_tail: bool = False  # stop closed-loop runs at the window's end (not the drain)
    settle_max: float = 30.0  # closed loop: wait past warmup for every client's 1st answer
    read_seconds: float | None = None  # GetPosition / as-of windows (default: seconds / 2)
    # `ledger serve --writer`: "process" gives each server a writer child (one holds the
    # ledger's writer seat, every server and the ingest bridge write through it).
    writer: str = "thread"
    api_processes: int = 1  # `ledger serve --api-processes` (above 1 needs writer process)

    @property
    def reads_window(self) -> float:
        return self.read_seconds if self.read_seconds is not None else max(1.0, self.seconds / 2)

    def with_seconds(self, seconds: float | None) -> Profile:
        return self if seconds is None else dataclasses.replace(self, seconds=seconds)

    def with_writer(self, writer: str | None, api_processes: int | None) -> Profile:
        profile = self if writer is None else dataclasses.replace(self, writer=writer)
        if api_processes is None:
            return profile
        return dataclasses.replace(profile, api_processes=api_processes)


FULL = Profile(name="full", seconds=10.0, warmup=2.0)
QUICK = Profile(
    name="quick",
    seconds=1.0,
    warmup=0.4,
    positions=512,
    drain_stock=200,
    record_positions=256,
    ingest_messages=1_000,
    read_seconds=0.5,
    prebuild=2_000,
    cancel_tail=True,
    settle_max=1.0,
)
