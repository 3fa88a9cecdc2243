"""``ledger serve --api-processes N``: N gRPC processes on one port, one writer behind them.

The first process (the one started by the operator) opens the port, starts the writer child
(``--writer process``) and its own gRPC server, then starts N-1 copies of itself with the
same arguments plus the chosen port, ``--writer external`` (they write through the seat's
holder: this process's writer) and ``--projections external``. The kernel spreads incoming
connections over the processes (SO_REUSEPORT), so the gRPC work, which is bound by one
interpreter per process, uses every core; writes still go through one writer, so nothing
about ordering, idempotency or back-pressure changes. Each process keeps its own caches and
its own rate-limit buckets (a principal's limit applies per process, as per replica).

A copy stops when its parent is gone; the parent stops every copy on SIGTERM, and stops
itself (exit 1) when a copy dies: an orchestrator restarts the whole ``serve``, which is
simpler to reason about than a half-sized one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from ledger.config import Settings

log = logging.getLogger("ledger")

CHECK_SECONDS = 0.5


def worker_argv(argv: Sequence[str], settings: Settings, port: int) -> list[str]:
    """The operator's own arguments, then what differs (argparse: the last one wins)."""
    host = settings.listen.rsplit(":", 1)[0]
    extra = ["--listen", f"{host}:{port}", "--writer", "external", "--projections", "external"]
    extra += ["--api-processes", "1", "--api-worker", str(os.getpid())]
    if settings.metrics_listen:
        extra += ["--metrics-listen", f"{settings.metrics_listen.rsplit(':', 1)[0]}:0"]
    return [sys.executable, "-m", "entrypoints.cli", *argv, *extra]


class ApiWorkers:
    def __init__(self, argv: Sequence[str], settings: Settings, port: int) -> None:
        count = settings.api_processes - 1
        self._children = [subprocess.Popen(worker_argv(argv, settings, port)) for _ in range(count)]
        self.failed: int | None = None

    async def watch(self, stop: asyncio.Event) -> None:
        """Until ``stop``: a copy that exits stops the whole serve (exit 1)."""
        while not stop.is_set():
            for child in self._children:
                if child.poll() is not None:
                    log.error(
                        "API process %d exited with status %d: stopping",
                        child.pid,
                        child.returncode,
                    )
                    self.failed = child.returncode
                    stop.set()
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECK_SECONDS)

    def stop(self, grace_seconds: float) -> None:
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self._children:
            try:
                child.wait(grace_seconds + 5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


class ChildWatch:
    """Stops the serve (exit 1) when a child it cannot do without exits: its writer."""

    def __init__(self, child: subprocess.Popen[bytes], what: str) -> None:
        self.child = child
        self.what = what
        self.failed = False

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.child.poll() is not None:
                log.error(
                    "%s process %d exited with status %d: stopping",
                    self.what,
                    self.child.pid,
                    self.child.returncode,
                )
                self.failed = True
                stop.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECK_SECONDS)


async def watch_parent(stop: asyncio.Event, parent: int) -> None:
    """A copy stops when the process that started it (``parent``, given on its command line
    so a parent that died during the copy's start-up is noticed too) is gone."""
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("the first API process is gone: stopping")
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CHECK_SECONDS)
