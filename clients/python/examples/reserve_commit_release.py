"""Reserve, commit and release against a running ledger, with nothing but this client installed.

    pip install ./clients/python
    python clients/python/examples/reserve_commit_release.py --target 127.0.0.1:50051

It receives stock for a fresh SKU (``RecordMovements``), reserves part of it, commits that
reservation, releases it, asks for more than there is (``InsufficientAvailability``), and
prints one ``key=value`` line per step.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

from inventory.ledger.v1 import reservation_pb2
from inventory_ledger_client import InsufficientAvailability, LedgerClient, movement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=os.environ.get("LEDGER_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("LEDGER_TOKEN"))
    parser.add_argument("--channel", default="web")
    parser.add_argument("--location", default="DC-EAST")
    arguments = parser.parse_args(argv)

    sku = f"EXAMPLE-{uuid.uuid4().hex[:8]}"
    location = arguments.location
    with LedgerClient(arguments.target, token=arguments.token, timeout=10) as ledger:
        ledger.record_movements(
            [movement("receipt", source="example", sku=sku, location_id=location, qty=10)]
        )
        print(f"received sku={sku} on_hand={ledger.get_position(sku, location).on_hand}")

        reservation = ledger.reserve(
            arguments.channel, [(sku, location, 4)], order_ref="example-order-1", ttl=600
        )
        position = ledger.get_position(sku, location)
        print(
            f"reserved id={reservation.reservation_id} status={status(reservation)}"
            f" reserved={position.reserved} available={position.available}"
        )

        committed = ledger.commit(reservation.reservation_id)
        position = ledger.get_position(sku, location)
        print(
            f"committed status={status(committed)}"
            f" allocated={position.allocated} available={position.available}"
        )

        released = ledger.release(reservation.reservation_id)
        position = ledger.get_position(sku, location)
        print(
            f"released status={status(released)} reserved={position.reserved}"
            f" allocated={position.allocated} available={position.available}"
        )

        try:
            ledger.reserve(arguments.channel, [(sku, location, 99)], order_ref="example-order-2")
        except InsufficientAvailability as short:
            [line] = short.short_lines
            print(
                f"short sku={line.sku} requested={line.requested} available={line.available}"
                f" correlation_id={short.correlation_id}"
            )
    return 0


def status(reservation: reservation_pb2.Reservation) -> str:
    name = reservation_pb2.ReservationStatus.Name(reservation.status)
    return name.removeprefix("RESERVATION_STATUS_")


if __name__ == "__main__":
    sys.exit(main())
