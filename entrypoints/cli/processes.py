"""The long-running processes: ``ledger serve``, ``ledger projections``, ``ledger ingest`` and
``ledger dev``, from start-up to a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any

from entrypoints import bootstrap
from ledger.config import (
    ProcessTuning,
    Settings,
)
from ledger.logs import redacted, retry_delay

log = logging.getLogger("ledger")


def _log_security(settings: Settings, guard: Any) -> None:
    from entrypoints.grpc.transport import transport_name

    if guard is not None and guard.registry is not None:
        # SIGHUP re-reads the token file (it is also re-read when it changes).
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, guard.reload)
        log.info(
            "authentication: %d principals from %s (reloaded on change and SIGHUP); %s",
            len(guard.registry.principals),
            settings.token_file,
            transport_name(settings),
        )
    else:
        log.info("authentication: none (open mode); %s", transport_name(settings))


async def _start_api(settings: Settings) -> bootstrap.Api:
    api = await bootstrap.start_api(settings)
    _log_security(settings, api.running.guard)
    host = settings.listen.rsplit(":", 1)[0]
    log.info(
        "ledger listening on %s:%d (database %s, projections %s)",
        host,
        api.running.port,
        redacted(settings.database_url),
        "in-process" if api.runner is not None else "external",
    )
    return api


def tune_process(tuning: ProcessTuning) -> None:
    """Once a long-running process has built what it keeps: garbage collector and the
    interpreter's switch interval (ledger.gc_tuning, ledger.gil_tuning)."""
    from ledger.gc_tuning import tune_after_startup
    from ledger.gil_tuning import tune_switch_interval

    tune_after_startup(tuning.gc_thresholds)
    tune_switch_interval(tuning.gil_switch_ms)


async def serve(settings: Settings, argv: Sequence[str] = ()) -> int:
    """Exit status 0 after a clean stop; 1 when one of its API processes died."""
    from entrypoints.cli.api_processes import ApiWorkers, ChildWatch, watch_parent

    stop = stop_on_signals()  # first: a signal during start-up stops the start
    api = await _start_api(settings)
    tune_process(settings.tuning)
    writer_watch = None
    if api.writer_process is not None:
        writer_watch = ChildWatch(api.writer_process, "writer")
        writer_task = asyncio.create_task(writer_watch.watch(stop))
    workers = None
    if settings.api_worker:
        watcher = asyncio.create_task(watch_parent(stop, settings.api_worker))
    elif settings.api_processes > 1:
        workers = ApiWorkers(argv, settings, api.running.port)
        watcher = asyncio.create_task(workers.watch(stop))
        log.info(
            "%d more API processes share port %d", settings.api_processes - 1, api.running.port
        )
    await stop.wait()
    if workers is not None:
        await asyncio.to_thread(workers.stop, settings.grace_seconds)
    if settings.api_worker or workers is not None:
        watcher.cancel()
    if writer_watch is not None:
        writer_task.cancel()
    await bootstrap.stop_api(api, settings)
    log.info("stopped")
    failed = workers is not None and workers.failed is not None
    return 1 if failed or (writer_watch is not None and writer_watch.failed) else 0


async def run_projections(settings: Settings, batch_size: int | None = None) -> None:
    stop = stop_on_signals()  # first: a signal during start-up stops the start
    app = await asyncio.to_thread(bootstrap.open_ledger_app, settings)
    store = await asyncio.to_thread(bootstrap.open_read_models, settings)
    runner = await asyncio.to_thread(bootstrap.open_projection_runner, app, store, batch_size)
    runner.start()
    tune_process(settings.tuning)
    listener = bootstrap.follow_commits(settings, app, runner)
    metrics = bootstrap.projection_metrics(settings, app, runner)
    log.info(
        "projections following %s from position %d (generation %d)",
        redacted(settings.database_url),
        runner.applied_position,
        runner.generation,
    )
    await stop.wait()
    if metrics is not None:
        await asyncio.to_thread(metrics.close)
    if listener is not None:
        await asyncio.to_thread(listener.stop)
    await asyncio.to_thread(runner.stop)
    await asyncio.to_thread(store.close)
    app.close()
    log.info("stopped")


async def run_ingest(
    settings: Settings,
    nats_url: str,
    batch_size: int = 100,
    units_path: str | None = None,
    prefix: str = "",
) -> None:
    """``ledger ingest``: the JetStream bridge until SIGTERM/SIGINT."""
    from ledger.metrics.endpoint import start_endpoint

    stop = stop_on_signals()  # first: a signal during start-up stops the start
    bootstrap.configure_metric_labels(settings)
    service = await asyncio.to_thread(bootstrap.open_service, settings)
    store = await asyncio.to_thread(bootstrap.open_read_models, settings)
    metrics = None
    try:
        metrics = start_endpoint(settings.metrics_listen)
        tune_process(settings.tuning)
        await _ingest_until(
            stop,
            service,
            store,
            nats_url,
            settings.ingest_ack_wait_seconds,
            batch_size,
            units_path,
            prefix,
        )
    finally:
        if metrics is not None:
            await asyncio.to_thread(metrics.close)
        await asyncio.to_thread(service.close)
        await asyncio.to_thread(store.close)
    log.info("stopped")


async def _ingest_until(
    stop: asyncio.Event,
    service: Any,
    store: Any,
    nats_url: str,
    ack_wait_seconds: float,
    batch_size: int = 100,
    units_path: str | None = None,
    prefix: str = "",
) -> None:
    """The bridge and the exception publisher, on an open ledger, until ``stop`` is set.
    Waits for NATS (one line per attempt, with back-off) and rides out its outages."""
    from ingest.streams import StreamNames, ensure_topology
    from ingest.units import UnitTable
    from ledger.nats_connect import close, connect_patiently

    units = UnitTable.from_json_file(units_path) if units_path else None
    names = StreamNames(prefix)
    nc = await connect_patiently(nats_url, "ledger-ingest", stop)
    if nc is None:
        log.info("ingest stopped before NATS at %s answered", redacted(nats_url))
        return
    try:
        js = nc.jetstream()

        def topology() -> Any:
            return ensure_topology(js, names, ack_wait_seconds=ack_wait_seconds)

        if not await _until_done(stop, topology, "ingest streams"):
            return
        bridge, publisher = bootstrap.ingest_workers(
            service, store, js, names, units, ack_wait_seconds
        )
        log.info(
            "ingest from %s (%s), batches of %d; exceptions on %s",
            redacted(nats_url),
            names.movements_stream,
            batch_size,
            names.exceptions_filter,
        )
        await asyncio.gather(bridge.run(stop, batch_size), publisher.run(stop))
        await bridge.close()
        counters = bridge.counters
        log.info(
            "ingest stopped: %d recorded, %d duplicates, %d dead-lettered, %d redeliveries,"
            " %d store failures, %d exceptions published",
            counters.processed,
            counters.duplicates,
            counters.dead_lettered,
            counters.redeliveries,
            counters.store_failures,
            publisher.published,
        )
    finally:
        await close(nc)


async def _until_done(stop: asyncio.Event, step: Any, what: str) -> bool:
    """Retry ``step()`` (a coroutine function) with back-off until it succeeds (True) or
    ``stop`` is set (False); one warning line per failed attempt."""
    from ledger.nats_connect import describe, sleep_unless_stopped, unless_stopped

    attempt = 0
    while not stop.is_set():
        try:
            await unless_stopped(stop, step())
        except Exception as error:  # the broker went away meanwhile: it comes back
            attempt += 1
            log.warning(
                "%s: %s (attempt %d); retrying in %.1f s",
                what,
                describe(error),
                attempt,
                retry_delay(attempt),
            )
            await sleep_unless_stopped(stop, retry_delay(attempt))
            continue
        return not stop.is_set()
    return False


async def run_dev(settings: Settings, nats_listen: str, data_dir: str) -> None:
    """``ledger dev``: a local nats-server with JetStream, the gRPC service with in-process
    projections, and the ingest bridge, in one process over one ledger (the embedded SQLite
    ledger serves one process). Ctrl-C stops them in reverse order: ingest, service,
    nats-server (which has its own process group, so the terminal's SIGINT reaches only us)."""
    from pathlib import Path

    from ingest.streams import ensure_topology
    from ledger.local_nats import start_local_nats, stop_local_nats
    from ledger.nats_connect import close, connect_once

    stop = stop_on_signals()
    nats_url = f"nats://{nats_listen}"
    nats_server = await asyncio.to_thread(start_local_nats, nats_listen, Path(data_dir))
    log.info("nats-server with JetStream on %s (files in %s)", nats_url, data_dir)
    try:
        # The streams exist before the service says it listens: a publisher may start then.
        nc = await connect_once(nats_url, "ledger-dev")
        try:
            await ensure_topology(nc.jetstream(), ack_wait_seconds=settings.ingest_ack_wait_seconds)
        finally:
            await close(nc)
        if not stop.is_set():
            api = await _start_api(settings)
            try:
                await _ingest_until(
                    stop, api.service, api.store, nats_url, settings.ingest_ack_wait_seconds
                )
            finally:
                await bootstrap.stop_api(api, settings)
    finally:
        await asyncio.to_thread(stop_local_nats, nats_server)
    log.info("stopped")


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    return stopping
