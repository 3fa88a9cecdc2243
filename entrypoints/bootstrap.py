"""The composition root: the one place that turns :class:`~ledger.config.Settings` into the
objects a process runs.

``ledger serve`` and ``ledger dev`` (:func:`start_api`), ``ledger projections``
(:func:`open_projection_runner`, :func:`follow_commits`, :func:`projection_metrics`),
``ledger ingest`` (:func:`open_service`, :func:`open_read_models`, :func:`ingest_workers`), the
one-shot commands, and the tools and tests that run the same parts in-process. Like
cosmicpython's ``bootstrap()``, a builder takes its settings and, optionally, ready-made
dependencies to use instead of opening its own. Lifecycles (signals, waiting, what is logged)
stay with the commands in ``entrypoints.cli``.

Heavy imports are inside the builders so ``ledger --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ledger.config import GroupCommit, Settings, eventsourcing_env, projections_in_process

if TYPE_CHECKING:
    from entrypoints.grpc.server import RunningServer
    from ingest.bridge import IngestBridge
    from ingest.exceptions import ExceptionPublisher
    from ingest.streams import StreamNames
    from ingest.units import UnitTable
    from ledger.application import InventoryLedger
    from ledger.metrics.endpoint import MetricsEndpoint
    from ledger.service import LedgerService
    from ledger.writer.local import LocalWriter
    from projections.commit_listener import CommitListener
    from projections.runner import ProjectionRunner
    from projections.store import ReadModelStore

log = logging.getLogger("ledger")


def configure_metric_labels(settings: Settings) -> None:
    from ledger.metrics.labels import configure_labels

    configure_labels(settings.metrics_channels, settings.metrics_sources)


def open_service(
    settings: Settings, group_commit: GroupCommit | None = None, *, wait_for_writer: bool = True
) -> LedgerService:
    """The ledger service on ``settings.database_url`` with ``settings.group_commit`` (or the
    one given). With ``settings.writer`` other than "thread" its writes go to the holder of
    the ledger's writer seat (``ledger writer``), reached before this returns unless
    ``wait_for_writer`` is false."""
    from ledger.service import LedgerService

    group_commit = group_commit or settings.group_commit
    writer = None
    if settings.writer != "thread":
        from ledger.writer.client import RemoteWriter
        from ledger.writer.election import read_advert

        writer = RemoteWriter(functools.partial(read_advert, settings.database_url))
    service = LedgerService.open(settings.database_url, group_commit=group_commit, writer=writer)
    if wait_for_writer:
        try:
            await_writer(service, None)
        except BaseException:
            service.close()
            raise
    return service


def open_writer(settings: Settings) -> tuple[InventoryLedger, LocalWriter]:
    """What ``ledger writer`` runs: the application and its command pipeline."""
    from ledger.pipeline import CommandPipeline
    from ledger.service import system_clock
    from ledger.writer.local import LocalWriter

    app = open_ledger_app(settings)
    pipeline = CommandPipeline(
        app,
        system_clock,
        linger_seconds=settings.group_commit.linger_seconds,
        batch_max=settings.group_commit.max_commands,
    )
    return app, LocalWriter(pipeline)


def start_metrics(settings: Settings) -> MetricsEndpoint | None:
    """The /metrics endpoint of a process without projections (None when disabled)."""
    from ledger.metrics.endpoint import start_endpoint

    return start_endpoint(settings.metrics_listen)


# How long `ledger serve` waits for its writes to have somewhere to go before it listens.
WRITER_WAIT_SECONDS = 60.0


def start_writer_process(settings: Settings) -> subprocess.Popen[bytes]:
    """``ledger serve --writer process``: a ``ledger writer`` child on a free loopback port
    that takes the ledger's writer seat or waits for it as a standby, and stops with us."""
    import os
    import sys

    command = [sys.executable, "-m", "entrypoints.cli", "writer"]
    command += ["--exit-with-parent", str(os.getpid())]
    if settings.metrics_listen:
        # Its own endpoint (the write path's metrics), on a free port of the same host.
        host = settings.metrics_listen.rsplit(":", 1)[0]
        command += ["--metrics-listen", f"{host}:0"]
    environ = {**os.environ, "LEDGER_DATABASE_URL": settings.database_url}
    return subprocess.Popen(command, env=environ)


def stop_writer_process(child: subprocess.Popen[bytes], grace_seconds: float) -> None:
    child.terminate()
    try:
        child.wait(grace_seconds + 5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def await_writer(service: LedgerService, child: subprocess.Popen[bytes] | None) -> None:
    """Block until the service reaches a writer (ConfigError if it cannot, or if our own
    writer child exited: its own log line said why)."""
    import time

    from ledger.config import ConfigError
    from ledger.writer.client import RemoteWriter

    writer = service.writer
    if not isinstance(writer, RemoteWriter):
        return
    deadline = time.monotonic() + WRITER_WAIT_SECONDS
    while not writer.wait_connected(0.2):
        if child is not None and child.poll() is not None:
            raise ConfigError(f"the writer process exited with status {child.returncode}")
        if time.monotonic() > deadline:
            raise ConfigError(
                f"no writer holds the ledger's writer seat after {WRITER_WAIT_SECONDS:.0f} s"
                " (start `ledger writer`, or serve with --writer process)"
            )


def open_ledger_app(settings: Settings) -> InventoryLedger:
    """The event-sourced application alone (readers of the ledger: projections, status)."""
    from ledger.application import InventoryLedger

    return InventoryLedger(eventsourcing_env(settings.database_url))


def open_read_models(settings: Settings) -> ReadModelStore:
    from projections.store import ReadModelStore

    return ReadModelStore(settings.database_url)


@dataclass
class Api:
    """What ``ledger serve`` runs: the service, its read models, the gRPC server."""

    service: LedgerService
    store: ReadModelStore
    runner: ProjectionRunner | None  # projections in-process
    running: RunningServer
    metrics: MetricsEndpoint | None = None  # when --metrics-listen is set
    writer_process: subprocess.Popen[bytes] | None = None  # --writer process


async def start_api(
    settings: Settings,
    *,
    service: LedgerService | None = None,
    store: ReadModelStore | None = None,
) -> Api:
    """Open (or take) the service and read models, then start projections (if in-process),
    metrics and the gRPC server. Exposure is checked before anything is opened. A service or
    store passed in is handed over: the returned Api owns it and stop_api closes it."""
    from entrypoints.grpc.server import start_server
    from entrypoints.grpc.transport import check_exposure
    from ledger.metrics.endpoint import start_endpoint
    from projections.queries import ReadModelQueries
    from projections.runner import ProjectionRunner

    check_exposure(settings)  # before anything is opened: ConfigError -> exit 2
    configure_metric_labels(settings)
    in_process = projections_in_process(settings)
    writer_process = start_writer_process(settings) if settings.writer == "process" else None
    try:
        if service is None:
            service = await asyncio.to_thread(
                functools.partial(open_service, settings, wait_for_writer=False)
            )
        await asyncio.to_thread(await_writer, service, writer_process)
    except BaseException:
        if writer_process is not None:
            stop_writer_process(writer_process, 0)
        raise
    if store is None:
        store = await asyncio.to_thread(open_read_models, settings)
    runner = ProjectionRunner(service.app, store) if in_process else None
    if runner is not None:
        service.add_commit_listener(runner.wake)
        runner.start()
    read_models = ReadModelQueries(
        service, store, runner, cache_skus=settings.availability_cache_skus
    )
    metrics = start_endpoint(settings.metrics_listen, projection_status=read_models.status)
    running = await start_server(service, read_models, settings)
    service.start_expiry_sweeper(settings.expiry_sweep_seconds)
    return Api(service, store, runner, running, metrics, writer_process)


async def stop_api(api: Api, settings: Settings) -> None:
    """Drain calls within the grace period, then close in reverse order of opening."""
    log.info("shutting down: draining in-flight calls (grace %.0fs)", settings.grace_seconds)
    await api.running.stop(settings.grace_seconds)
    if api.metrics is not None:
        await asyncio.to_thread(api.metrics.close)
    if api.runner is not None:
        await asyncio.to_thread(api.runner.stop)
    await asyncio.to_thread(api.service.close)
    await asyncio.to_thread(api.store.close)
    if api.writer_process is not None:
        await asyncio.to_thread(stop_writer_process, api.writer_process, settings.grace_seconds)


def open_projection_runner(
    app: InventoryLedger, store: ReadModelStore, batch_size: int | None = None
) -> ProjectionRunner:
    """The runner of ``ledger projections`` (not started)."""
    from projections.runner import BATCH_MAX, ProjectionRunner

    return ProjectionRunner(app, store, batch_max=batch_size or BATCH_MAX)


def follow_commits(
    settings: Settings, app: InventoryLedger, runner: ProjectionRunner
) -> CommitListener | None:
    """On PostgreSQL, the events table's NOTIFY wakes the runner (started); None on SQLite."""
    if not settings.database_url.startswith("postgres"):
        return None
    from projections.commit_listener import CommitListener

    listener = CommitListener(settings.database_url, app.commit_channel(), runner.wake)
    listener.start()
    return listener


def projection_metrics(
    settings: Settings, app: InventoryLedger, runner: ProjectionRunner
) -> MetricsEndpoint | None:
    """The /metrics endpoint of ``ledger projections``, with its lag (None when disabled)."""
    from ledger.metrics.endpoint import start_endpoint
    from projections.queries import ProjectionStatusView

    return start_endpoint(
        settings.metrics_listen,
        projection_status=lambda: ProjectionStatusView(
            app.head_position(), runner.applied_position
        ),
    )


def ingest_workers(
    service: LedgerService,
    store: ReadModelStore,
    js: Any,
    names: StreamNames,
    units: UnitTable | None,
    ack_wait_seconds: float,
) -> tuple[IngestBridge, ExceptionPublisher]:
    """The JetStream bridge into the ledger and the exceptions publisher of ``ledger ingest``."""
    from ingest.bridge import IngestBridge
    from ingest.exceptions import ExceptionPublisher

    bridge = IngestBridge(service, js, names=names, units=units, ack_wait_seconds=ack_wait_seconds)
    return bridge, ExceptionPublisher(store, js, names=names)
