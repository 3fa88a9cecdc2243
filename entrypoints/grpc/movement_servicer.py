"""MovementService: the synchronous path for systems that do not publish to NATS."""

from __future__ import annotations

import time

from inventory.ledger.v1 import movement_service_pb2, movement_service_pb2_grpc

from entrypoints.grpc import convert
from entrypoints.grpc.rpc import settled, unary
from ledger import inputs
from ledger.metrics import definitions as metrics
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from ledger.use_cases.movements import RECORDED


class MovementServicer(movement_service_pb2_grpc.MovementServiceServicer):
    def __init__(self, service: LedgerService) -> None:
        self._service = service

    @unary
    async def RecordMovements(
        self, request: movement_service_pb2.RecordMovementsRequest, ctx: CallContext
    ) -> movement_service_pb2.RecordMovementsResponse:
        received = time.time()
        model = convert.validate(
            inputs.RecordMovementsModel,
            {"movements": [convert.movement_values(m) for m in request.movements]},
        )
        movements = [inputs.movement_of(m) for m in model.movements]
        results = await settled(self._service.record_movements(ctx, movements))
        committed = time.time()
        for movement, result in zip(movements, results, strict=True):
            if result.outcome == RECORDED:
                metrics.observe_recorded(
                    movement.source, "api", received, movement.occurred_at, committed
                )
        return movement_service_pb2.RecordMovementsResponse(
            results=[convert.movement_result_message(r) for r in results]
        )
