"""``ledger dev``: nats-server with JetStream, the gRPC service and the ingest bridge in one
process, on the embedded SQLite default (issue 4)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
from inventory.ledger.v1 import query_service_pb2 as qs
from inventory.ledger.v1 import query_service_pb2_grpc as qs_grpc

from ingest.bridge import publish_movement
from testbed.processes import free_tcp_port
from testbed.server import LedgerProcess


def test_dev_stack_ingests_published_movements_and_stops_cleanly(tmp_path: Path) -> None:
    nats_listen = f"127.0.0.1:{free_tcp_port()}"
    nats_dir = tmp_path / "nats"
    dev = LedgerProcess(
        f"sqlite:///{tmp_path / 'ledger.db'}",
        command="dev",
        extra_args=["--nats-listen", nats_listen, "--nats-dir", str(nats_dir)],
    )
    dev.start()
    try:
        payload = {
            "message_id": "dev-1",
            "source": "wms-dev",
            "type": "receipt",
            "sku": "SKU-DEV",
            "location_id": "DC-1",
            "qty": 7,
            "occurred_at": "2026-11-22T10:15:00Z",
        }

        async def publish() -> None:
            nc = await nats.connect(f"nats://{nats_listen}")
            try:
                await publish_movement(nc.jetstream(), payload)
            finally:
                await nc.drain()

        asyncio.run(publish())
        stub = dev.stub(qs_grpc.InventoryQueryServiceStub)
        deadline = time.monotonic() + 20
        while True:
            position = stub.GetPosition(qs.GetPositionRequest(sku="SKU-DEV", location_id="DC-1"))
            if position.on_hand == 7 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert position.on_hand == 7
        assert (nats_dir / "jetstream").is_dir()  # JetStream file storage, not memory
        assert "sync_interval: always" in (nats_dir / "nats-server.conf").read_text()
        assert dev.stop() == 0, dev.log_text()
        log = dev.log_text()
        assert "ingest stopped: 1 recorded" in log, log
        assert "Traceback" not in log, log
    finally:
        dev.close()
    # The nats-server went with it: its port is free again.
    host, port = nats_listen.rsplit(":", 1)
    import socket

    with socket.socket() as probe:
        assert probe.connect_ex((host, int(port))) != 0
