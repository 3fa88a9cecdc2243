"""The parent's side of the load-generator workers: start them once, hand each a job,
start them together, merge what they saw."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from tools.bench.stats import latency_summary, rate

READY_TIMEOUT_SECONDS = 120.0  # building requests and connecting
RESULT_GRACE_SECONDS = 120.0  # past warmup + window: in-flight calls finishing


class WorkerError(RuntimeError):
    """A worker failed a job or died (the message carries its stderr tail)."""


class Worker:
    def __init__(self, index: int, log_dir: Path) -> None:
        self.index = index
        self.log_path = log_dir / f"loadgen-{index}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tools.bench.loadgen"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise WorkerError(f"loadgen {self.index}: no answer in {timeout:.0f} s")
        line = self.process.stdout.readline()
        if not line:
            raise WorkerError(f"loadgen {self.index} exited:\n{self.log_tail()}")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise WorkerError(f"loadgen {self.index}: {message['error']}\n{self.log_tail()}")
        return message

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.send({"exit": True})
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class WorkerPool:
    """``size`` worker processes, kept for the whole run (a Python start per job would cost
    a second each)."""

    def __init__(self, size: int) -> None:
        self._log_dir = tempfile.TemporaryDirectory(prefix="ledger-bench-loadgen-")
        self.workers = [Worker(i, Path(self._log_dir.name)) for i in range(size)]
        self._jobs = 0

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers]

    def run(
        self,
        jobs: Sequence[dict[str, Any]],
        during: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """One job per worker (the first ``len(jobs)`` workers); ``during`` is entered
        once every worker has started and left when all have answered."""
        if len(jobs) > len(self.workers):
            raise ValueError(f"{len(jobs)} jobs for {len(self.workers)} workers")
        self._jobs += 1
        busy = self.workers[: len(jobs)]
        for worker, job in zip(busy, jobs, strict=True):
            worker.send({"job": {**job, "tag": f"{job['tag']}-j{self._jobs}-w{worker.index}"}})
        for worker in busy:
            worker.receive(READY_TIMEOUT_SECONDS)
        longest = max(float(job["warmup"]) + float(job["seconds"]) for job in jobs)
        with during() if during is not None else contextlib.nullcontext():
            for worker in busy:
                worker.send({"go": True})
            deadline = time.monotonic() + longest + RESULT_GRACE_SECONDS
            return [
                worker.receive(max(1.0, deadline - time.monotonic()))["result"] for worker in busy
            ]

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self._log_dir.cleanup()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def pool(size: int) -> Iterator[WorkerPool]:
    workers = WorkerPool(size)
    try:
        yield workers
    finally:
        workers.close()


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One figure from the workers' results: OK calls per second of the window, latency
    percentiles of the OK calls, every other status code counted."""
    codes: Counter[str] = Counter()
    latencies: list[float] = []
    for result in results:
        codes.update(result["codes"])
        latencies.extend(result["latencies_ms"])
    window = max(float(result["window_s"]) for result in results)
    ok = codes.pop("OK", 0)
    merged: dict[str, Any] = {
        "rate": rate(ok, window),
        "ok": ok,
        "errors": dict(sorted(codes.items())),
        **latency_summary(latencies),
        "seconds": window,
        "ok_qty": sum(result["ok_qty"] for result in results),
        "ambiguous_qty": sum(result["ambiguous_qty"] for result in results),
        # A worker near 1.0 (one core) would be the bottleneck itself.
        "loadgen_cpu": [
            round(result["cpu_s"] / result["wall_s"], 2) if result["wall_s"] else 0.0
            for result in results
        ],
    }
    if any("dropped" in result for result in results):
        merged["client_dropped"] = sum(result.get("dropped", 0) for result in results)
        merged["schedule_lag_p99_ms"] = max(
            result.get("schedule_lag_p99_ms", 0) for result in results
        )
    return merged
