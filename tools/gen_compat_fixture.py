"""Write the compatibility fixture: a ledger written by the release before lots.

    python -m tools.gen_compat_fixture --out tests/fixtures/compat/v1

Drives the current code in process (``bootstrap.open_ledger_app`` + ``LedgerService`` with a
fixed clock, fixed request and message ids) through one deterministic history on SQLite and on
an embedded PostgreSQL, then writes:

- ``ledger.db``: the SQLite ledger file;
- ``postgres.sql.gz``: a plain-SQL dump (``pg_dump --inserts``) of the PostgreSQL database;
- ``expected.json``: what a real ``ledger serve`` answers on each (GetPosition of every
  position, GetPositionAsOf at fixed instants on both axes, VerifyLedger, head hashes).

The answers are captured, not assumed: recorded_at comes from the clock, and reservation ids
are the release's own. The fixture is generated ONCE; never regenerate it (it is the old
release's data that newer code must keep reading).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp
from inventory.ledger.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
)

from entrypoints import bootstrap
from ledger.config import Settings
from ledger.inputs import MovementModel, movement_of
from ledger.service import LedgerService
from ledger.use_cases.context import CallContext
from ledger.use_cases.reservations import ReserveInput, ReserveLine
from testbed.postgres import EmbeddedPostgres
from testbed.postgres_binaries import binaries_for, system_user
from testbed.server import LedgerProcess

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
STEP = timedelta(minutes=1)
SNAPSHOT_ROUNDS = 110  # receipt + shipment per round: 220 events, past the interval of 200
POSITIONS = [("SKU-A", "DC-1"), ("SKU-A", "DC-2"), ("SKU-B", "DC-1"), ("SKU-C", "DC-1")]
# (as_of, axis, known_at) — instants on the fixed clock; EFFECTIVE also sees the backdated fact.
AS_OF_QUERIES: list[tuple[datetime, str, datetime | None]] = [
    (T0 + 5 * STEP, "AXIS_RECORDED", None),
    (T0 + 30 * STEP, "AXIS_RECORDED", None),
    (T0 - timedelta(hours=1), "AXIS_EFFECTIVE", None),
    (T0 + 12 * STEP, "AXIS_EFFECTIVE", None),
    (T0 + 12 * STEP, "AXIS_EFFECTIVE", T0 + 8 * STEP),
    (T0 + timedelta(days=1), "AXIS_EFFECTIVE", None),
]


class SteppingClock:
    """Moves only when told: every recorded_at in the fixture is a fixed instant."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, by: timedelta = STEP) -> None:
        self.now += by


class History:
    def __init__(self, service: LedgerService, clock: SteppingClock) -> None:
        self.service, self.clock, self.ctx = service, clock, CallContext("compat-fixture")
        self._n = 0

    def move(self, kind: str, sku: str, location: str, **fields: Any) -> None:
        self.moves([dict(type=kind, sku=sku, location_id=location, **fields)])

    def moves(self, items: list[dict[str, Any]]) -> None:
        movements = []
        for item in items:
            self._n += 1
            model = MovementModel(source="compat", message_id=f"m-{self._n:04d}", **item)
            movements.append(movement_of(model))
        self.service.record_movements(self.ctx, movements).result()
        self.clock.tick()

    def reserve(self, request_id: str, sku: str, location: str, qty: int) -> str:
        request = ReserveInput(
            request_id,
            "web",
            f"order-{request_id}",
            (ReserveLine(sku, location, qty),),
            timedelta(minutes=15),
        )
        view = self.service.reserve(self.ctx, request).result()
        self.clock.tick()
        return view.reservation_id


def write_history(service: LedgerService, clock: SteppingClock) -> None:
    h, ctx = History(service, clock), CallContext("compat-fixture")
    h.move("receipt", "SKU-A", "DC-1", qty=100, putaway_pending=True)
    h.move("putaway", "SKU-A", "DC-1", qty=100)
    h.move("receipt", "SKU-B", "DC-1", qty=50)
    h.move("receipt", "SKU-A", "DC-2", qty=20)
    service.set_safety_stock(ctx, "p-1", "SKU-A", "DC-1", 5).result()
    service.set_channel_fence(ctx, "p-2", "SKU-A", "DC-1", "web", 10).result()
    service.set_channel_policy(ctx, "p-3", "web", ["DC-1", "DC-2"], 80, 2, 1000).result()
    clock.tick()
    shipped = h.reserve("r-1", "SKU-A", "DC-1", 10)
    service.commit(ctx, "c-1", shipped, "web").result()
    clock.tick()
    h.move("shipment", "SKU-A", "DC-1", qty=10, reservation_id=shipped)
    released = h.reserve("r-2", "SKU-B", "DC-1", 5)
    service.release(ctx, "x-1", released, "web").result()
    clock.tick()
    h.reserve("r-3", "SKU-A", "DC-1", 3)
    clock.tick(timedelta(hours=1))  # past its 15-minute TTL: the sweep records EXPIRED
    assert len(service.expire_due_reservations()) == 1
    clock.tick()
    h.move("shipment", "SKU-B", "DC-1", qty=4)
    h.move(
        "transfer_dispatch",
        "SKU-A",
        "DC-1",
        qty=30,
        transfer_id="TR-1",
        to_location_id="DC-2",
        expected_at=T0 + timedelta(days=2),
    )
    h.move("transfer_receipt", "SKU-A", "DC-2", qty=20, transfer_id="TR-1")
    h.move("adjustment", "SKU-B", "DC-1", delta=-2, reason="found broken")
    h.move("cycle_count", "SKU-B", "DC-1", counted=40)
    h.move("quarantine", "SKU-A", "DC-1", qty=5)
    h.move("quarantine_release", "SKU-A", "DC-1", qty=2)
    h.move("return_receipt", "SKU-A", "DC-1", qty=1, disposition="restock")
    # A late fact: recorded now, effective two hours before the first receipt.
    h.move("receipt", "SKU-B", "DC-1", qty=7, occurred_at=T0 - timedelta(hours=2))
    for start in range(0, SNAPSHOT_ROUNDS, 10):
        batch = []
        for _ in range(start, start + 10):
            batch.append(dict(type="receipt", sku="SKU-C", location_id="DC-1", qty=2))
            batch.append(dict(type="shipment", sku="SKU-C", location_id="DC-1", qty=1))
        h.moves(batch)


def generate(database_url: str) -> None:
    clock = SteppingClock()
    app = bootstrap.open_ledger_app(Settings(database_url=database_url))
    service = LedgerService(app, clock)
    try:
        write_history(service, clock)
    finally:
        service.close()


# ---- answers of a real server ---------------------------------------------------------------


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def as_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def as_of_request(
    sku: str, location: str, as_of: str, axis: str, known_at: str | None
) -> audit_service_pb2.GetPositionAsOfRequest:
    request = audit_service_pb2.GetPositionAsOfRequest(
        sku=sku, location_id=location, axis=audit_service_pb2.Axis.Value(axis)
    )
    request.as_of.FromJsonString(as_of)
    if known_at:
        request.known_at.FromJsonString(known_at)
    return request


def as_of_queries() -> Iterator[dict[str, Any]]:
    for sku, location in POSITIONS:
        for as_of, axis, known_at in AS_OF_QUERIES:
            yield {
                "sku": sku,
                "location_id": location,
                "as_of": timestamp(as_of).ToJsonString(),
                "axis": axis,
                "known_at": timestamp(known_at).ToJsonString() if known_at else None,
            }


def answers(channel: grpc.Channel) -> dict[str, Any]:
    """Everything expected.json stores, as the server answers it (proto field names)."""
    query = query_service_pb2_grpc.InventoryQueryServiceStub(channel)
    audit = audit_service_pb2_grpc.AuditServiceStub(channel)
    positions = [
        as_dict(query.GetPosition(query_service_pb2.GetPositionRequest(sku=s, location_id=loc)))
        for s, loc in POSITIONS
    ]
    as_of = []
    for q in as_of_queries():
        request = as_of_request(q["sku"], q["location_id"], q["as_of"], q["axis"], q["known_at"])
        as_of.append({**q, "position": as_dict(audit.GetPositionAsOf(request))})
    verify = list(audit.VerifyLedger(audit_service_pb2.VerifyLedgerRequest()))
    entries = list(audit.StreamLedger(audit_service_pb2.StreamLedgerRequest(from_position=0)))
    heads = {f"{e.sku}@{e.location_id}": {"version": e.version, "hash": e.hash} for e in entries}
    return {
        "positions": positions,
        "as_of": as_of,
        "verify": as_dict(verify[-1]),
        "head": {"position": entries[-1].position, "hash": entries[-1].hash},
        "position_heads": dict(sorted(heads.items())),
    }


def served_answers(database_url: str) -> dict[str, Any]:
    with LedgerProcess(database_url) as ledger:
        return answers(ledger.channel())


# ---- PostgreSQL dump and restore ------------------------------------------------------------


def dump_postgres(server: EmbeddedPostgres, dbname: str) -> str:
    pg_dump = binaries_for(system_user()) / "bin" / "pg_dump"
    argv = [str(pg_dump), "--inserts", "--no-owner", "--no-privileges", server.dsn(dbname)]
    text = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return "".join(line for line in text.splitlines(keepends=True) if not _unportable(line))


def _unportable(line: str) -> bool:
    """psql meta-commands (pg_dump 18's \\restrict guard) are not SQL, and servers before 17
    refuse transaction_timeout: dropped so psycopg can restore into any supported server."""
    return line.startswith("\\") or line.startswith("SET transaction_timeout")


def restore_postgres(dsn: str, sql_text: str) -> None:
    """Load a dump written by ``dump_postgres`` (plain SQL, no COPY) into an empty database."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql_text.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty; the fixture is never regenerated", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    expected: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = out / "ledger.db"
        generate(f"sqlite:///{db}")
        served = Path(tmp) / "served.db"
        shutil.copy(db, served)  # serving may write (sweeps); the fixture stays as written
        expected["sqlite"] = served_answers(f"sqlite:///{served}")
    server = EmbeddedPostgres()
    server.start()
    try:
        url = server.create_database("compat_v1")
        generate(url)
        sql_text = dump_postgres(server, "compat_v1")
        (out / "postgres.sql.gz").write_bytes(gzip.compress(sql_text.encode(), mtime=0))
        restored = server.create_database("compat_v1_restored")
        restore_postgres(restored, sql_text)
        expected["postgres"] = served_answers(restored)
    finally:
        server.cleanup()
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
