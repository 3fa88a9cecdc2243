"""The README's five-minute tour as a script: receive stock, reserve, commit, ship.

Usage: ``python -m tools.tour [--target 127.0.0.1:50051]`` against a running ``ledger serve``.
"""

from __future__ import annotations

import argparse
import uuid

import grpc
from google.protobuf import duration_pb2
from inventory.ledger.v1 import (
    movement_pb2,
    movement_service_pb2,
    movement_service_pb2_grpc,
    position_pb2,
    query_service_pb2,
    query_service_pb2_grpc,
    reservation_pb2,
    reservation_service_pb2,
    reservation_service_pb2_grpc,
)


class _Tour:
    """One SKU at one location, and the calls the tour makes about it."""

    def __init__(self, channel: grpc.Channel, sku: str, location: str) -> None:
        self.movements = movement_service_pb2_grpc.MovementServiceStub(channel)
        self.reservations = reservation_service_pb2_grpc.ReservationServiceStub(channel)
        self.queries = query_service_pb2_grpc.InventoryQueryServiceStub(channel)
        self.sku = sku
        self.location = location

    def record(self, kind: int, **fields: object) -> None:
        movement = movement_pb2.Movement(
            message_id=f"tour-{uuid.uuid4().hex}",
            source="tour",
            type=kind,
            sku=self.sku,
            location_id=self.location,
            **fields,
        )
        self.movements.RecordMovements(
            movement_service_pb2.RecordMovementsRequest(movements=[movement])
        )

    def position(self) -> position_pb2.Position:
        return self.queries.GetPosition(
            query_service_pb2.GetPositionRequest(sku=self.sku, location_id=self.location)
        )

    def reserve(self, qty: int) -> reservation_pb2.Reservation:
        return self.reservations.Reserve(
            reservation_service_pb2.ReserveRequest(
                request_id=str(uuid.uuid4()),
                channel="web",
                order_ref="order-1",
                lines=[reservation_service_pb2.ReserveLine(sku=self.sku, qty=qty)],
                ttl=duration_pb2.Duration(seconds=900),
            )
        )

    def commit(self, reservation_id: str) -> None:
        self.reservations.Commit(
            reservation_service_pb2.CommitRequest(
                request_id=str(uuid.uuid4()), reservation_id=reservation_id
            )
        )


def run(target: str) -> dict[str, int]:
    """Walk the tour; returns the figures it printed (for the README test)."""
    run_id = uuid.uuid4().hex[:8]
    with grpc.insecure_channel(target) as channel:
        tour = _Tour(channel, f"TOUR-{run_id}", "DC-EAST")
        tour.record(movement_pb2.MOVEMENT_TYPE_RECEIPT, qty=12)
        position = tour.position()
        print(f"after receipt:     on_hand={position.on_hand} available={position.available}")

        reservation = tour.reserve(5)
        print(
            f"reserved:          {reservation.reservation_id} at {reservation.lines[0].location_id}"
        )
        position = tour.position()
        print(f"after reserve:     reserved={position.reserved} available={position.available}")

        tour.commit(reservation.reservation_id)
        tour.record(
            movement_pb2.MOVEMENT_TYPE_SHIPMENT, qty=5, reservation_id=reservation.reservation_id
        )
        position = tour.position()
        print(
            f"after ship:        on_hand={position.on_hand} allocated={position.allocated}"
            f" available={position.available}"
        )
        return {
            "on_hand": position.on_hand,
            "allocated": position.allocated,
            "available": position.available,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:50051")
    run(parser.parse_args().target)


if __name__ == "__main__":
    main()
