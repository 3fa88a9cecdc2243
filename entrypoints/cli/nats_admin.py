"""NATS admin commands: ``ledger dlq``, ``ledger publish`` and ``ledger import-snapshot|
import-wms``."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger("ledger")


async def run_dlq(args: argparse.Namespace, nats_url: str) -> int:
    """``ledger dlq list|show|replay``: JSON lines on stdout."""
    import base64

    from ingest import dlq
    from ledger.nats_connect import close, connect_once

    nc = await connect_once(nats_url, "ledger-dlq")
    try:
        js = nc.jetstream()
        try:
            if args.action == "list":
                for entry in await dlq.list_dead_letters(js, args.prefix, args.source, args.limit):
                    print(json.dumps(entry.to_json()))
            elif args.action == "show":
                entry, payload = await dlq.show(js, args.prefix, args.sequence)
                record = entry.to_json()
                try:
                    record["payload"] = payload.decode("utf-8")
                except UnicodeDecodeError:
                    record["payload_base64"] = base64.b64encode(payload).decode("ascii")
                print(json.dumps(record))
            else:
                from ledger.progress import progress_on_stderr

                fixed = None
                if args.payload_file:
                    with open(args.payload_file, "rb") as file:
                        fixed = file.read().strip()
                with progress_on_stderr() as progress:
                    result = await dlq.replay(js, args.prefix, args.sequence, fixed, progress)
                print(json.dumps(result.to_json()))
        except (dlq.DeadLetterNotFound, ValueError) as error:
            log.error("%s", error)
            return 1
    finally:
        await close(nc)
    return 0


async def run_publish(
    path: str, nats_url: str, prefix: str = "", units_path: str | None = None
) -> int:
    """``ledger publish FILE``: a JSON summary on stdout; exit 1 if a line was invalid."""
    from ingest.publish import publish_file
    from ingest.units import UnitTable
    from ledger.nats_connect import close, connect_once
    from ledger.progress import progress_on_stderr

    units = UnitTable.from_json_file(units_path) if units_path else None
    nc = await connect_once(nats_url, "ledger-publish")
    try:
        with progress_on_stderr() as progress:
            report = await publish_file(nc.jetstream(), path, prefix, units, progress)
    finally:
        await close(nc)
    for line, error in report.invalid:
        log.error("line %d skipped: %s", line, error)
    print(json.dumps(report.to_json()))
    return 1 if report.invalid else 0


async def run_import(args: argparse.Namespace, nats_url: str) -> int:
    """``ledger import-snapshot|import-wms FILE``: a JSON report on stdout; exit 1 if a record
    was invalid."""
    from ingest.adapters.base import Adapter
    from ingest.adapters.publish import publish_adapter
    from ingest.adapters.threepl_snapshot import ThreePLSnapshotAdapter, parse_column_mapping
    from ingest.adapters.wms_transactions import WmsTransactionAdapter
    from ingest.units import UnitTable
    from ledger.nats_connect import close, connect_once
    from ledger.progress import progress_on_stderr

    adapter: Adapter
    if args.command == "import-snapshot":
        try:
            columns = parse_column_mapping(args.column)
        except ValueError as error:
            log.error("%s", error)
            return 2
        adapter = ThreePLSnapshotAdapter(args.source, args.as_of, columns)
    else:
        adapter = WmsTransactionAdapter(args.source)
    units = UnitTable.from_json_file(args.units) if args.units else None
    nc = await connect_once(nats_url, f"ledger-{args.command}")
    try:
        with progress_on_stderr() as progress:
            js = nc.jetstream()
            report = await publish_adapter(js, adapter, args.file, args.prefix, units, progress)
    finally:
        await close(nc)
    for problem in report.invalid:
        log.error("skipped: %s", problem)
    print(json.dumps(report.to_json()))
    return 1 if report.invalid else 0
