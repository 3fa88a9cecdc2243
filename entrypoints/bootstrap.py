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
import logging
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
    from projections.commit_listener import CommitListener
    from projections.runner import ProjectionRunner
    from projections.store import ReadModelStore

log = logging.getLogger("ledger")


def configure_metric_labels(settings: Settings) -> None:
    from ledger.metrics.labels import configure_labels

    configure_labels(settings.metrics_channels, settings.metrics_sources)


def open_service(settings: Settings, group_commit: GroupCommit | None = None) -> LedgerService:
    """The ledger service on ``settings.database_url`` with ``settings.group_commit`` (or the
    one given)."""
    from ledger.service import LedgerService

    group_commit = group_commit or settings.group_commit
    return LedgerService.open(settings.database_url, group_commit=group_commit)


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
    if service is None:
        service = await asyncio.to_thread(open_service, settings)
    if store is None:
        store = await asyncio.to_thread(open_read_models, settings)
    runner = ProjectionRunner(service.app, store) if in_process else None
    if runner is not None:
        service.pipeline.add_commit_listener(runner.wake)
        runner.start()
    read_models = ReadModelQueries(
        service, store, runner, cache_skus=settings.availability_cache_skus
    )
    metrics = start_endpoint(settings.metrics_listen, projection_status=read_models.status)
    running = await start_server(service, read_models, settings)
    service.start_expiry_sweeper(settings.expiry_sweep_seconds)
    return Api(service, store, runner, running, metrics)


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
