"""Audit commands on an existing ledger: ``ledger export`` and ``ledger reconcile``."""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

from entrypoints import bootstrap
from ledger.config import ConfigError, Settings

log = logging.getLogger("ledger")


def _open_ledger(settings: Settings) -> Any:
    """The service on an existing ledger: a mistyped SQLite path must not create an empty
    ledger and report (or post) every count as a variance."""
    from ledger.config import eventsourcing_env

    env = eventsourcing_env(settings.database_url)
    path = env.get("SQLITE_DBNAME")
    if path and path != ":memory:" and not os.path.exists(path):
        raise ConfigError(f"no ledger database at {path}")
    return bootstrap.open_service(settings)


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    """``ledger export OUT``: a JSON summary on stdout."""
    from ledger.audit.export import export_ledger
    from ledger.progress import progress_on_stderr

    if args.lot is not None:
        return _export_lot(args, settings)
    service = _open_ledger(settings)
    try:
        with progress_on_stderr() as progress:
            written = export_ledger(service, args.out, args.sku, args.location_id, progress)
    finally:
        service.close()
    print(json.dumps({"entries": written, "file": args.out}))
    return 0


def _export_lot(args: argparse.Namespace, settings: Settings) -> int:
    """``ledger export OUT --sku S --lot L [--as-of T]``: the lot's recall trace."""
    from pydantic import ValidationError

    from ledger.audit.export import export_lot
    from ledger.inputs import TraceLotModel, field_violations

    try:
        TraceLotModel.model_validate({"sku": args.sku, "lot_id": args.lot, "as_of": args.as_of})
    except ValidationError as error:
        field, problem = field_violations(error)[0]
        log.error("--%s: %s", {"lot_id": "lot"}.get(field, field), problem)
        return 2
    service = _open_ledger(settings)
    try:
        written, locations = export_lot(service, args.out, args.sku, args.lot, args.as_of)
    finally:
        service.close()
    print(json.dumps({"entries": written, "locations": locations, "file": args.out}))
    return 0


def run_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """``ledger reconcile SNAPSHOT --as-of T``: exit 0 no variances, 1 variances, 2 bad input."""
    from ledger.audit.reconcile import SnapshotError, reconcile, summary_text
    from ledger.progress import progress_on_stderr

    service = _open_ledger(settings)
    try:
        with progress_on_stderr() as progress:
            result = reconcile(
                service,
                args.snapshot,
                args.as_of,
                post=args.post,
                report_dir=args.report_dir,
                progress=progress,
            )
    except SnapshotError as error:
        log.error("%s: cannot reconcile", error.path)
        for text in error.describe()[:50]:
            log.error("%s", text)
        if len(error.problems) > 50:
            log.error("... and %d more bad lines", len(error.problems) - 50)
        return 2
    finally:
        service.close()
    print(summary_text(result), end="")
    return result.exit_code
