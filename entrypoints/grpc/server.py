"""The gRPC server: servicers, health, reflection, limits and graceful shutdown."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from inventory.ledger.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    movement_service_pb2,
    movement_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
    reservation_service_pb2,
    reservation_service_pb2_grpc,
)

from entrypoints.grpc.audit_servicer import AuditServicer
from entrypoints.grpc.auth import CallGuard, GuardedServer
from entrypoints.grpc.movement_servicer import MovementServicer
from entrypoints.grpc.page_tokens import PageTokens
from entrypoints.grpc.policy_servicer import PolicyServicer
from entrypoints.grpc.query_servicer import QueryServicer
from entrypoints.grpc.reservation_servicer import ReservationServicer
from entrypoints.grpc.transport import bind
from ledger.audit.tail import LedgerTail
from ledger.config import Settings
from ledger.service import LedgerService
from ledger.store.async_ranges import AsyncRangeReader
from projections.commit_listener import CommitListener
from projections.queries import ReadModelQueries
from projections.watch import WatchHub

SERVICE_NAMES = (
    query_service_pb2.DESCRIPTOR.services_by_name["InventoryQueryService"].full_name,
    reservation_service_pb2.DESCRIPTOR.services_by_name["ReservationService"].full_name,
    movement_service_pb2.DESCRIPTOR.services_by_name["MovementService"].full_name,
    policy_service_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    watch_hub: WatchHub | None = None
    commit_listener: CommitListener | None = None
    ledger_listener: CommitListener | None = None
    guard: CallGuard | None = None  # authentication; .reload() re-reads the token file
    read_models: ReadModelQueries | None = None  # stops its availability cache's poll
    position_reads: AsyncRangeReader | None = None  # its connections close after the calls

    async def stop(self, grace_seconds: float) -> None:
        """Report NOT_SERVING first so load balancers drain us, then finish in-flight calls.

        Watch streams never finish by themselves: they end at once (UNAVAILABLE, watch again).
        """
        await self.health.enter_graceful_shutdown()
        for listener in (self.commit_listener, self.ledger_listener):
            if listener is not None:
                await asyncio.to_thread(listener.stop)
        if self.read_models is not None:
            await asyncio.to_thread(self.read_models.cache.stop)
        if self.watch_hub is not None:
            await self.watch_hub.close()
        await self.server.stop(grace_seconds)
        if self.position_reads is not None:
            await self.position_reads.close()


async def start_server(
    service: LedgerService, read_models: ReadModelQueries, settings: Settings
) -> RunningServer:
    # Metrics, load shedding, authentication, scopes, rate limits and the access log
    # (docs/security.md): one wrapper per call, put around each handler as it is registered.
    guard = CallGuard.from_settings(settings)
    server = GuardedServer(
        grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # Shared only between the API processes of one `ledger serve`: otherwise a
                # second server on the same port is refused (exit 2), not load-balanced.
                ("grpc.so_reuseport", int(settings.api_processes > 1 or settings.api_worker)),
            ],
        ),
        guard,
    )
    tokens = PageTokens(settings.page_token_secret)
    # WatchAvailability: follows the in-process runner if there is one, else polls.
    watch_hub = WatchHub(read_models.store, service.clock, runner=read_models.runner)
    watch_hub.start(asyncio.get_running_loop())
    listener = None
    if read_models.runner is None and settings.database_url.startswith("postgres"):
        # The projection runs in another process: its NOTIFY per batch wakes the hub and
        # names the SKUs the availability cache drops.
        listener = CommitListener(
            settings.database_url,
            read_models.store.applied_channel,
            watch_hub.wake,
            read_models.on_notify,
        )
        listener.start()
    if read_models.runner is None:
        read_models.follow_read_model(notified=listener is not None)
    # StreamLedger followers: woken by this process's commits and, on PostgreSQL, by the
    # events table's NOTIFY (writes of other replicas and of ingest).
    tail = LedgerTail()
    tail.start(asyncio.get_running_loop())
    service.add_commit_listener(tail.wake)
    ledger_listener = None
    if settings.database_url.startswith("postgres"):
        ledger_listener = CommitListener(
            settings.database_url,
            service.app.commit_channel(),
            tail.wake,
        )
        ledger_listener.start()
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(service, tokens, tail), server
    )
    position_reads = service.app.ledger_recorder.async_range_reader()
    query_service_pb2_grpc.add_InventoryQueryServiceServicer_to_server(
        QueryServicer(service, read_models, tokens, watch_hub, position_reads), server
    )
    reservation_service_pb2_grpc.add_ReservationServiceServicer_to_server(
        ReservationServicer(service, tokens), server
    )
    movement_service_pb2_grpc.add_MovementServiceServicer_to_server(
        MovementServicer(service), server
    )
    policy_service_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyServicer(service), server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = bind(server, settings)  # TLS / mutual TLS when configured
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(
        server,
        port,
        health_servicer,
        watch_hub,
        listener,
        ledger_listener,
        guard,
        read_models,
        position_reads,
    )
